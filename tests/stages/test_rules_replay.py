"""``gateway rules replay``: a candidate rule folder over the stored mail, against the live rules.

Mail is stored by the real acceptance (``submit_raw``) under the live rules, then the CLI replays a
candidate folder over it: a rule that re-keys claim numbers moves exactly the messages it would move
(and the reply that follows one of them, since threading carries forward); the unchanged rules replay
with no difference; a directory change since is reported apart; invalid rules are refused with
FILE:LINE:COL before a message is read; --since and --portfolio filter; --json parses; progress shows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, text, update
from sqlalchemy.exc import DBAPIError

from gateway.db.models import MessageRow
from gateway.db.replay import reading_engine
from gateway.db.writer import Writer
from tests.conftest import Gateway
from tests.seed import ADDRESS
from tests.stages.conftest import PORTFOLIO, rules_in, submit_raw

LIVE = """
rules:
  - name: claims
    match:
      subject: {regex: 'Schaden (?P<claim_no>[0-9-]+)'}
    vorgang_key: "claim-{claim_no}"
"""
# The re-keying candidate: "Schaden 100-2" is now claim 100, so it joins claim 100's Vorgang.
REKEYED = LIVE.replace("[0-9-]+", "[0-9]+")


def mail(number: int, subject: str, to: str, extra: str = "") -> tuple[tuple[str, ...], bytes]:
    raw = (
        f"From: ams@makler-muster.example\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <replay-{number}@ams>\r\n{extra}\r\nText\r\n"
    ).encode()
    return (to,), raw


MAILS = [
    mail(1, "Schaden 100", ADDRESS["SB-A1"]),
    mail(2, "Schaden 100-2", ADDRESS["SB-A1"]),
    # Follows message 2 by In-Reply-To, with no claim number of its own.
    mail(3, "Rückfrage", ADDRESS["SB-A1"], extra="In-Reply-To: <replay-2@ams>\r\n"),
    mail(4, "Schaden 100-2 Nachtrag", ADDRESS["SB-B1"]),
    mail(5, "Schaden 200", ADDRESS["GF-A"]),
    mail(6, "Allgemeines", ADDRESS["SB-B2"]),
]


async def store(writer: Writer, tmp_path: Path) -> list[str]:
    """The six mails stored one batch each under the live rules; their gateway ids."""
    rules = rules_in(tmp_path, LIVE)
    ids = []
    for recipients_raw in MAILS:
        [accepted] = await submit_raw(writer, rules, recipients_raw)
        ids.append(accepted.gateway_id)
    return ids


def candidate(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "candidate"
    folder.mkdir(exist_ok=True)
    (folder / "10-test.yaml").write_text(text.lstrip("\n"), encoding="utf-8")
    return folder


async def replay(gateway: Gateway, *args: str, expect: int = 0) -> Any:
    return await asyncio.to_thread(gateway, "rules", "replay", *args, expect=expect)


def changed(report: dict[str, Any], kind: str) -> dict[str, set[str]]:
    """Per rule, the messages with a change of ``kind`` (every example: the groups here are small)."""
    return {
        group["rule"]: {example["message"] for example in group["examples"]}
        for group in report["changes"]
        if group["kind"] == kind
    }


async def test_a_rekeying_rule_moves_exactly_the_messages_it_would_move(
    writer: Writer, with_login: Gateway, tmp_path: Path
) -> None:
    ids = await store(writer, tmp_path)
    result = await replay(with_login, "--rules", str(candidate(tmp_path, REKEYED)), "--json")
    report = json.loads(result.stdout)

    assert report["messages"] == 6
    assert report["changed_messages"] == 3
    rule = "claims (" + str(tmp_path / "candidate" / "10-test.yaml") + ":2:5)"
    # 2 and 4 re-keyed into claim 100's Vorgang; 3 follows 2 there although its own routing is unchanged.
    assert changed(report, "vorgang") == {rule: {ids[1], ids[2], ids[3]}}
    assert changed(report, "vorgang key") == {rule: {ids[1], ids[3]}}
    assert {g["kind"] for g in report["changes"]} == {"vorgang", "vorgang key"}
    moved = next(g for g in report["changes"] if g["kind"] == "vorgang")
    assert moved["count"] == 3
    year = dt.datetime.now(dt.UTC).year
    assert {(e["before"], e["after"]) for e in moved["examples"]} == {
        (f"VG-{year}-000002", f"VG-{year}-000001")
    }
    keyed = next(g for g in report["changes"] if g["kind"] == "vorgang key")
    assert {(e["before"], e["after"]) for e in keyed["examples"]} == {("claim-100-2", "claim-100")}
    assert report["not_reproduced_by_live_rules"] == []

    text = (await replay(with_login, "--rules", str(candidate(tmp_path, REKEYED)))).stdout
    assert f"rule {rule}:" in text
    assert "  vorgang: 3 message(s)" in text
    assert f'{ids[2]} "Rückfrage":' in text


async def test_the_unchanged_rules_replay_with_no_difference(
    writer: Writer, with_login: Gateway, tmp_path: Path
) -> None:
    await store(writer, tmp_path)
    same = tmp_path / "same"
    shutil.copytree(tmp_path / "rules", same)
    result = await replay(with_login, "--rules", str(same), "--json")
    report = json.loads(result.stdout)
    assert report["messages"] == 6
    assert report["changed_messages"] == 0
    assert report["changes"] == []
    assert report["not_reproduced_by_live_rules"] == []
    text = (await replay(with_login, "--rules", str(same))).stdout
    assert "no differences" in text


async def test_a_directory_change_since_is_reported_apart_not_counted(
    writer: Writer, with_login: Gateway, tmp_path: Path
) -> None:
    ids = await store(writer, tmp_path)
    # GF-B leaves "Kunde B mit GF": mail to SB-B1 and SB-B2 no longer reaches GF-B, whichever rules.
    await asyncio.to_thread(
        with_login, "release", "remove-member", "Kunde B mit GF", ADDRESS["GF-B"], "-p", PORTFOLIO
    )
    same = tmp_path / "same"
    shutil.copytree(tmp_path / "rules", same)
    report = json.loads((await replay(with_login, "--rules", str(same), "--json")).stdout)
    assert report["changes"] == []
    [audience] = report["not_reproduced_by_live_rules"]
    assert audience["kind"] == "audience"
    assert {e["message"] for e in audience["examples"]} == {ids[3], ids[5]}
    assert all(
        ADDRESS["GF-B"] in e["before"] and ADDRESS["GF-B"] not in e["after"] for e in audience["examples"]
    )


async def test_invalid_rules_are_refused_with_file_line_col_before_anything_runs(
    writer: Writer, with_login: Gateway, tmp_path: Path
) -> None:
    await store(writer, tmp_path)
    broken = candidate(tmp_path, LIVE.replace("[0-9-]+)'", "[0-9-+)'"))
    result = await replay(with_login, "--rules", str(broken), expect=2)
    assert f"{broken / '10-test.yaml'}:4:" in result.stderr
    assert result.stdout == ""
    assert "replayed" not in result.stderr  # no message was read
    missing = await replay(with_login, "--rules", str(tmp_path / "no-such-folder"), expect=2)
    assert "does not exist" in missing.stderr


async def test_a_rule_naming_no_portfolio_member_is_refused_too(
    writer: Writer, with_login: Gateway, tmp_path: Path
) -> None:
    await store(writer, tmp_path)
    folder = candidate(
        tmp_path, LIVE + "    participants: [nobody@kunde-a.example]\n    portfolio: no-such-portfolio\n"
    )
    result = await replay(with_login, "--rules", str(folder), expect=2)
    assert f"{folder / '10-test.yaml'}:" in result.stderr
    assert "replayed" not in result.stderr


def _age(connection: Connection, gateway_ids: list[str], days: int) -> None:
    connection.execute(
        update(MessageRow)
        .where(MessageRow.gateway_id.in_(gateway_ids))
        .values(received_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=days))
    )


async def test_since_and_portfolio_filter(writer: Writer, with_login: Gateway, tmp_path: Path) -> None:
    ids = await store(writer, tmp_path)
    await writer.run(_age, ids[:2], 40)  # claim 100 and 100-2 were stored 40 days ago
    folder = candidate(tmp_path, REKEYED)

    recent = json.loads((await replay(with_login, "--rules", str(folder), "--since", "30d", "--json")).stdout)
    assert recent["messages"] == 4
    # Without message 1 in the span, 4 finds no Vorgang of claim 100 and opens one; 3 no longer moves
    # (2 is not replayed).
    assert changed(recent, "vorgang") == {next(iter(changed(recent, "vorgang"))): {ids[3]}}

    everything = json.loads(
        (await replay(with_login, "--rules", str(folder), "--since", "60d", "--json")).stdout
    )
    assert everything["messages"] == 6
    dated = json.loads(
        (await replay(with_login, "--rules", str(folder), "--since", "2000-01-01", "--json")).stdout
    )
    assert dated["messages"] == 6

    mine = json.loads(
        (await replay(with_login, "--rules", str(folder), "-p", PORTFOLIO, "--json")).stdout
    )  # default: 30d
    assert mine["portfolios"] == [PORTFOLIO]
    assert mine["messages"] == 4
    other = await replay(with_login, "--rules", str(folder), "-p", "no-such", expect=2)
    assert "no portfolio no-such" in other.stderr
    wrong = await replay(with_login, "--rules", str(folder), "--since", "lately", expect=2)
    assert "--since 'lately'" in wrong.stderr


async def test_progress_on_stderr(writer: Writer, with_login: Gateway, tmp_path: Path) -> None:
    await store(writer, tmp_path)
    result = await replay(with_login, "--rules", str(candidate(tmp_path, REKEYED)), "--batch", "2", "--json")
    json.loads(result.stdout)  # progress never mixes into the JSON
    assert "replayed 6 of 6 messages" in result.stderr


async def test_verdict_and_participant_changes_are_put_down_to_their_rules(
    writer: Writer, with_login: Gateway, tmp_path: Path
) -> None:
    ids = await store(writer, tmp_path)
    folder = candidate(
        tmp_path,
        LIVE
        + """
  - name: no-general-mail
    match: {subject: {regex: '^Allgemeines'}}
    reject: {code: 550, status: 5.7.1, text: "not here"}
  - name: gf-b-sees-claim-200
    match: {subject: {regex: 'Schaden 200'}}
    participants: [gf-b@kunde-b.example]
""",
    )
    report = json.loads((await replay(with_login, "--rules", str(folder), "--json")).stdout)
    at = str(folder / "10-test.yaml")
    assert changed(report, "verdict") == {f"no-general-mail ({at}:7:5)": {ids[5]}}
    assert changed(report, "participants") == {f"gf-b-sees-claim-200 ({at}:10:5)": {ids[4]}}
    assert changed(report, "audience") == {f"gf-b-sees-claim-200 ({at}:10:5)": {ids[4]}}
    # The refused message is not stored in the candidate's world: no Vorgang either.
    assert changed(report, "vorgang") == {f"no-general-mail ({at}:7:5)": {ids[5]}}
    verdict = next(g for g in report["changes"] if g["kind"] == "verdict")
    assert [(e["before"], e["after"]) for e in verdict["examples"]] == [
        ("accept", "refused (a rule rejects it)")
    ]
    audience = next(g for g in report["changes"] if g["kind"] == "audience")
    [example] = audience["examples"]
    # GF-B saw GF-A's mail already (Geschäftsführer); as a participant GF-B brings in "Kunde B mit GF".
    assert ADDRESS["SB-B1"] not in example["before"]
    assert ADDRESS["SB-B1"] in example["after"]
    assert report["changed_messages"] == 2


def test_the_replay_reads_through_a_connection_that_cannot_write(database_url: str) -> None:
    engine = reading_engine(database_url)
    try:
        with pytest.raises(DBAPIError), engine.begin() as connection:
            connection.execute(text("DELETE FROM portfolios"))
    finally:
        engine.dispose()
