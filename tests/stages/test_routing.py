"""Routing rules in the accept path, on SQLite and PostgreSQL: keyed Vorgänge, added participants, header
changes on copies, quarantine (and its release and drop in the storage layer), and reloading rule files."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, insert, select

from gateway.config import FanoutSettings
from gateway.db import quarantine
from gateway.db.models import (
    CopyRow,
    EventRow,
    MemberRow,
    MessageRow,
    PortfolioRow,
    QuarantineRow,
    VorgangRow,
)
from gateway.db.names import directory_names
from gateway.db.writer import Writer
from gateway.domain.rules import RuleSet
from gateway.errors import NotFound, RulesFileError
from gateway.mailbox import MailboxOwner, MemoryMailbox
from gateway.routing.live import RoutingRules
from gateway.stages.fanout import FanOut
from tests.conftest import Gateway
from tests.seed import ADDRESS
from tests.stages.conftest import PORTFOLIO, rules_in, submit

RULES = """
rules:
  - name: claim-number
    match:
      subject: {regex: 'Schaden(?:nummer|-?nr\\.?)?[ :]*(?P<claim_no>[0-9]{4}-[0-9]+)', ignore_case: true}
    vorgang_key: "claim-{claim_no}"
    set_headers: {X-Claim-Number: "{claim_no}"}
    strip_headers: [X-AMS-Routing]
  - name: urgent-b-to-gf
    match:
      recipient_domain: kunde-b.example
      header: {name: Importance, exact: high, ignore_case: true}
    participants: [gf-b@kunde-b.example]
  - name: foreign
    match: {not: {sender_domain: makler-muster.example}}
    quarantine: "foreign sender"
"""


def rule_set(tmp_path: Path, text: str = RULES) -> RuleSet:
    return rules_in(tmp_path, text)


async def test_a_claim_number_keys_all_mail_about_it_into_one_vorgang(writer: Writer, tmp_path: Path) -> None:
    rules = rule_set(tmp_path)
    first = await submit(
        writer,
        rules,
        (ADDRESS["SB-A1"], "Schadennummer 2026-4711"),
        (ADDRESS["SB-A2"], "Nachtrag zu Schaden 2026-4711"),  # same batch: joins the Vorgang just opened
        (ADDRESS["SB-A1"], "Schadennummer 2026-0815"),
    )
    later = await submit(writer, rules, (ADDRESS["GF-A"], "Re: Schaden-Nr. 2026-4711 Gutachten"))
    unrelated = await submit(writer, rules, (ADDRESS["SB-A1"], "Kein Schaden"))
    assert first[0].found == "new vorgang"
    assert first[1].vorgang == first[0].vorgang
    assert first[1].found == "rule key"
    assert first[2].vorgang != first[0].vorgang
    assert later[0].vorgang == first[0].vorgang
    assert later[0].found == "rule key"
    assert unrelated[0].vorgang not in {first[0].vorgang, first[2].vorgang}

    def keys(connection: Connection) -> dict[str, str | None]:
        return {str(r): k for r, k in connection.execute(select(VorgangRow.reference, VorgangRow.key))}

    assert await writer.run(keys) == {
        first[0].vorgang: "claim-2026-4711",
        first[2].vorgang: "claim-2026-0815",
        unrelated[0].vorgang: None,
    }

    def accepted_events(connection: Connection) -> list[dict[str, object]]:
        return [
            d
            for (d,) in connection.execute(
                select(EventRow.detail).where(EventRow.kind == "message.accepted").order_by(EventRow.id)
            )
        ]

    events = await writer.run(accepted_events)
    assert [e.get("vorgang_key", None) for e in events] == [
        "claim-2026-4711",
        "claim-2026-4711",
        "claim-2026-0815",
        "claim-2026-4711",
        None,
    ]
    assert all(e["rule_set"] == rules.digest for e in events)
    assert events[0]["rules"] == [f"claim-number ({tmp_path / 'rules' / '10-test.yaml'}:3:5)"]
    assert events[4]["rules"] == []


async def test_the_vorgang_header_thread_and_tag_come_before_the_key(writer: Writer, tmp_path: Path) -> None:
    rules = rule_set(tmp_path)
    [other] = await submit(writer, rules, (ADDRESS["SB-A1"], "Allgemeines"))
    [keyed] = await submit(writer, rules, (ADDRESS["SB-A1"], "Schadennummer 2026-1"))
    [tagged] = await submit(writer, rules, (ADDRESS["SB-A1"], f"[{other.vorgang}] Schadennummer 2026-1"))
    assert tagged.vorgang == other.vorgang
    assert tagged.found == "subject tag"
    [again] = await submit(writer, rules, (ADDRESS["SB-A1"], "Schadennummer 2026-1 again"))
    assert again.vorgang == keyed.vorgang  # the tagged message did not re-key the other Vorgang


async def test_a_key_is_per_portfolio(writer: Writer, tmp_path: Path) -> None:
    def other_portfolio_with_the_key(connection: Connection) -> None:
        now = dt.datetime.now(dt.UTC)
        pid = connection.execute(
            insert(PortfolioRow).values(name="anderer", created_at=now).returning(PortfolioRow.id)
        ).scalar_one()
        connection.execute(
            insert(VorgangRow).values(
                portfolio_id=pid, reference="VG-2026-000900", key="claim-2026-9", subject="x", created_at=now
            )
        )

    await writer.run(other_portfolio_with_the_key)
    [one] = await submit(writer, rule_set(tmp_path), (ADDRESS["SB-A1"], "Schadennummer 2026-9"))
    assert one.found == "new vorgang"
    assert one.vorgang != "VG-2026-000900"


async def test_added_participants_and_copy_headers(writer: Writer, tmp_path: Path) -> None:
    rules = rule_set(tmp_path)
    [accepted] = await submit(
        writer,
        rules,
        (ADDRESS["SB-B1"], "Schadennummer 2026-4711"),
        headers="Importance: High\r\nX-AMS-Routing: queue 7\r\n",
    )
    # SB-B1 addressed, GF-B added in Cc: the audience of both (DESIGN.md §3).
    assert accepted.audience == 4

    def copy_addresses(connection: Connection) -> set[str]:
        return {
            str(a)
            for (a,) in connection.execute(
                select(MemberRow.address).join(CopyRow, CopyRow.member_id == MemberRow.id)
            )
        }

    assert await writer.run(copy_addresses) == {ADDRESS[n] for n in ("SB-B1", "SB-B2", "GF-B", "GF-A")}
    mailbox = MemoryMailbox()
    fanout = FanOut(
        writer, mailbox, FanoutSettings(), node="n", vorgang_header="X-Gateway-Vorgang", tag_subject=True
    )
    assert await fanout.run_once() == 4
    copy = _only_copy(mailbox, ADDRESS["GF-A"])
    assert b"\nX-Claim-Number: 2026-4711\r\n" in b"\n" + copy
    assert b"X-AMS-Routing" not in copy
    assert b"Importance: High" in copy

    def stored(connection: Connection) -> bytes:
        return bytes(connection.execute(select(MessageRow.raw)).scalar_one())

    raw = await writer.run(stored)
    assert b"X-AMS-Routing: queue 7" in raw
    assert b"X-Claim-Number" not in raw


def _only_copy(mailbox: MemoryMailbox, address: str) -> bytes:
    owner = MailboxOwner(PORTFOLIO, address)
    found = list(mailbox._instances(owner))
    assert len(found) == 1
    return bytes(found[0][1].data)


async def test_quarantine_stores_without_copies_then_release_and_drop(writer: Writer, tmp_path: Path) -> None:
    rules = rule_set(tmp_path)
    held = await submit(
        writer,
        rules,
        (ADDRESS["SB-A1"], "Rechnung"),
        (ADDRESS["GF-B"], "Mahnung"),
        sender="billing@fremd.example",
    )
    assert all(a.quarantined and a.audience == 0 for a in held)

    def state(connection: Connection) -> tuple[list[str], int, int]:
        kinds = [str(k) for (k,) in connection.execute(select(MessageRow.kind).order_by(MessageRow.id))]
        copies = len(list(connection.execute(select(CopyRow.id))))
        rows = len(list(connection.execute(select(QuarantineRow.message_id))))
        return kinds, copies, rows

    assert await writer.run(state) == (["quarantined", "quarantined"], 0, 2)
    listed = await writer.run(quarantine.list_quarantined, PORTFOLIO)
    assert [q.gateway_id for q in listed] == [a.gateway_id for a in held]
    assert listed[0].rule == f"foreign ({tmp_path / 'rules' / '10-test.yaml'}:14:5)"
    assert listed[0].reason == "foreign sender"
    assert listed[0].rule_set == rules.digest
    assert listed[0].vorgang == held[0].vorgang

    now = dt.datetime.now(dt.UTC)
    to = await writer.run(quarantine.release, PORTFOLIO, held[0].gateway_id, "cli:admin", now)
    assert to == sorted([ADDRESS["SB-A1"], ADDRESS["SB-A2"]])
    await writer.run(quarantine.drop, PORTFOLIO, held[1].gateway_id, "cli:admin", now)
    assert await writer.run(state) == (["message"], 2, 0)
    assert await writer.run(quarantine.list_quarantined, None) == []
    with pytest.raises(NotFound, match="no quarantined message"):
        await writer.run(quarantine.release, PORTFOLIO, held[0].gateway_id, "cli:admin", now)

    mailbox = MemoryMailbox()
    fanout = FanOut(
        writer, mailbox, FanoutSettings(), node="n", vorgang_header="X-Gateway-Vorgang", tag_subject=True
    )
    assert await fanout.run_once() == 2
    assert b"Rechnung" in _only_copy(mailbox, ADDRESS["SB-A2"])

    def events(connection: Connection) -> list[tuple[str, str]]:
        return [
            (str(k), str(d["gateway_id"]))
            for k, d in connection.execute(select(EventRow.kind, EventRow.detail).order_by(EventRow.id))
            if str(k).startswith("message.")
        ]

    assert await writer.run(events) == [
        ("message.quarantined", held[0].gateway_id),
        ("message.quarantined", held[1].gateway_id),
        ("message.released", held[0].gateway_id),
        ("message.dropped", held[1].gateway_id),
    ]


async def test_a_quarantined_message_sent_again_is_not_stored_twice(writer: Writer, tmp_path: Path) -> None:
    rules = rule_set(tmp_path)
    mails = ((ADDRESS["SB-A1"], "Rechnung"),)
    [first] = await submit(writer, rules, *mails, sender="x@fremd.example")
    [again] = await submit(writer, rules, *mails, sender="x@fremd.example")
    assert again.duplicate
    assert again.gateway_id == first.gateway_id
    assert again.quarantined, "the same answer: held for review"


# --- reloading ---------------------------------------------------------------------------------------------


def write(directory: Path, text: str, name: str = "10-test.yaml", mtime: float | None = None) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


async def test_reload_takes_valid_files_and_keeps_the_rules_when_new_ones_are_invalid(
    writer: Writer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "rules"
    write(directory, "rules: [{name: a, match: {subject: x}, reject: {code: 550, status: 5.7.1, text: A}}]\n")
    routing = RoutingRules(directory, interval=0.05, names=lambda: writer.run(directory_names))
    first = await routing.load()
    assert [r.name for r in first.rules] == ["a"]

    write(directory, "rules: [{name: b, match: {subject: y}}]\n")
    assert await routing.reload()
    assert [r.name for r in routing.current.rules] == ["b"]
    second = routing.current

    caplog.set_level(logging.ERROR, "gateway.routing.live")
    bad = write(directory, "rules:\n  - name: c\n    match: {subjekt: y}\n")
    assert not await routing.reload()
    assert routing.current is second
    assert f"{bad}:3:13: unknown key 'subjekt'" in caplog.text
    assert f"rule set {second.digest} stays in force" in caplog.text

    # A name the directory lacks is refused the same way.
    write(directory, "rules: [{name: d, match: {}, participants: [nobody@kunde-a.example]}]\n")
    assert not await routing.reload()
    assert f"{bad}:1:45: there is no member nobody@kunde-a.example" in caplog.text
    assert routing.current is second


async def test_the_watcher_notices_changed_files_and_sighup_asks_for_a_reload(
    writer: Writer, tmp_path: Path
) -> None:
    directory = tmp_path / "rules"
    routing = RoutingRules(directory, interval=0.05, names=lambda: writer.run(directory_names))
    await routing.load()  # no directory yet: no rules
    assert routing.current.rules == ()
    watcher = asyncio.create_task(routing.watch())
    try:
        write(directory, "rules: [{name: a, match: {}}]\n")
        await _until(lambda: [r.name for r in routing.current.rules] == ["a"])
        write(directory, "rules: [{name: bb, match: {}}]\n", mtime=1_000_000)
        await _until(lambda: [r.name for r in routing.current.rules] == ["bb"])
        loads = routing.reloads
        routing.request_reload()
        await _until(lambda: routing.reloads == loads + 1)
    finally:
        watcher.cancel()


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 (the watcher sets plain attributes, no event)
            await asyncio.sleep(0.02)


async def test_startup_takes_rules_naming_what_the_directory_lacks_and_says_so(
    writer: Writer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "rules"
    path = write(directory, "rules: [{name: a, match: {}, participants: [gone@kunde-a.example]}]\n")
    caplog.set_level(logging.ERROR, "gateway.routing.live")
    loaded = await RoutingRules(directory, names=lambda: writer.run(directory_names)).load()
    assert [r.name for r in loaded.rules] == ["a"]
    assert f"{path}:1:45: there is no member gone@kunde-a.example in any portfolio" in caplog.text


async def test_startup_refuses_invalid_rules(writer: Writer, tmp_path: Path) -> None:
    directory = tmp_path / "rules"
    write(directory, "rules: [{name: a}]\n")
    with pytest.raises(RulesFileError, match="1 problem"):
        await RoutingRules(directory, names=lambda: writer.run(directory_names)).load()


async def test_a_dry_run_finds_the_vorgang_a_key_opened(
    writer: Writer, with_login: Gateway, tmp_path: Path
) -> None:
    rules = rule_set(tmp_path)  # the configuration's rules directory: rules/ next to it
    [stored] = await submit(writer, rules, (ADDRESS["SB-A1"], "Schadennummer 2026-4711"))
    message = tmp_path / "again.eml"
    message.write_bytes(
        b"From: ams@makler-muster.example\r\nTo: sb-a2@kunde-a.example\r\n"
        b"Subject: Re: Schaden-Nr. 2026-4711\r\n\r\nText\r\n"
    )
    result = await asyncio.to_thread(
        with_login, "rules", "test", str(message), "--auth", "ams@makler-muster.example"
    )
    assert f"vorgang: {stored.vorgang} (found by rule key, key claim-2026-4711)" in result.stdout
    assert result.stdout.endswith(f"answer: 250 2.0.0 Accepted as <gateway id> in {stored.vorgang}\n")
