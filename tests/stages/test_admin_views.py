"""The admin views through the CLI, on SQLite and PostgreSQL (issue 6, item 5).

``gateway vorgang list`` with its filters, ``gateway events`` filtered by portfolio, member, Vorgang,
message, kind and time, and ``gateway quarantine list|show|release|drop``; every expectation about who
sees what is computed from the seed's table (tests/seed.py), not written down a second time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import queue
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.db.writer import Writer
from gateway.stages.acceptance import Accepted
from tests.conftest import Gateway
from tests.e2e.conftest import GATEWAY
from tests.seed import ADDRESS, SEEN_BY
from tests.stages.conftest import PORTFOLIO, rules_in, submit

RULES = """
rules:
  - name: claim-number
    match:
      subject: {regex: 'Schaden(?:nummer)?[ :]*(?P<claim_no>[0-9]{4}-[0-9]+)', ignore_case: true}
    vorgang_key: "claim-{claim_no}"
  - name: foreign
    match: {not: {sender_domain: makler-muster.example}}
    quarantine: "foreign sender"
"""

NAME = {address: name for name, address in ADDRESS.items()}


@dataclass(frozen=True)
class Mail:
    to: str  # the seed's name of the member it is sent to
    subject: str
    accepted: Accepted


def send(database_url: str, tmp_path: Path, *mails: tuple[str, str], sender: str | None = None) -> list[Mail]:
    """Accept (member name, subject) mails as ingress does, routed by RULES."""

    async def run() -> list[Accepted]:
        writer = Writer(database_url)
        try:
            extra = {"sender": sender} if sender else {}
            rules = rules_in(tmp_path, RULES)
            return await submit(writer, rules, *((ADDRESS[to], subject) for to, subject in mails), **extra)
        finally:
            await writer.close()

    return [Mail(to, subject, a) for (to, subject), a in zip(mails, asyncio.run(run()), strict=True)]


def as_json(gateway: Gateway, *args: str) -> Any:
    return json.loads(gateway(*args, "--json").stdout)


@pytest.fixture
def mail(with_login: Gateway, database_url: str, tmp_path: Path) -> list[Mail]:
    """Two mails about claim 2026-4711 (to SB-B1, then GF-B), one to SB-A1, one held from a stranger."""
    sent = send(
        database_url,
        tmp_path,
        ("SB-B1", "Schadennummer 2026-4711 Kfz"),
        ("GF-B", "Gutachten Schaden 2026-4711"),
        ("SB-A1", "Police Kunde A"),
    )
    held = send(database_url, tmp_path, ("SB-B2", "Rechnung"), sender="billing@fremd.example")
    assert [m.accepted.quarantined for m in sent + held] == [False, False, False, True]
    return sent + held


# --- gateway vorgang list ----------------------------------------------------------------------------------


def test_vorgang_list_counts_messages_and_copies_per_vorgang(with_login: Gateway, mail: list[Mail]) -> None:
    claim, _, police, held = mail
    listed = as_json(with_login, "vorgang", "list", "-p", PORTFOLIO)
    by_ref = {v["reference"]: v for v in listed}
    assert set(by_ref) == {claim.accepted.vorgang, police.accepted.vorgang, held.accepted.vorgang}
    assert mail[1].accepted.vorgang == claim.accepted.vorgang, "the claim number keyed one Vorgang"
    keyed = by_ref[claim.accepted.vorgang]
    assert (keyed["key"], keyed["messages"], keyed["quarantined"]) == ("claim-2026-4711", 2, 0)
    # Nothing fanned out yet: every copy of the audience is pending, none for the held message.
    assert keyed["copies"] == {"pending": len(SEEN_BY["SB-B1"]) + len(SEEN_BY["GF-B"])}
    assert by_ref[police.accepted.vorgang]["copies"] == {"pending": len(SEEN_BY["SB-A1"])}
    assert by_ref[held.accepted.vorgang] | {"created_at": None, "last_message_at": None} == {
        "reference": held.accepted.vorgang,
        "key": None,
        "subject": "Rechnung",
        "created_at": None,
        "last_message_at": None,
        "messages": 1,
        "quarantined": 1,
        "copies": {},
    }
    # Most recently active first: the held message came last.
    assert listed[0]["reference"] == held.accepted.vorgang
    for v in listed:
        assert dt.datetime.fromisoformat(v["last_message_at"]).tzinfo is not None

    text = with_login("vorgang", "list", "-p", PORTFOLIO).stdout
    assert f"{claim.accepted.vorgang}  " in text
    assert "2 message(s)  copies: 7 pending  Schadennummer 2026-4711 Kfz [claim-2026-4711]" in text
    assert "1 message(s), 1 quarantined  copies: no copies  Rechnung" in text


@pytest.mark.parametrize("person", sorted(ADDRESS))
def test_vorgang_list_for_a_member_is_what_the_member_sees(
    with_login: Gateway, mail: list[Mail], person: str
) -> None:
    # A member's Vorgänge: those with a copy for the member, or the member took part in (the held
    # message's addressee, who has no copy yet).
    expected = {
        m.accepted.vorgang
        for m in mail
        if person == m.to or (not m.accepted.quarantined and person in SEEN_BY[m.to])
    }
    listed = as_json(with_login, "vorgang", "list", "-p", PORTFOLIO, "--member", ADDRESS[person])
    assert {v["reference"] for v in listed} == expected


def test_vorgang_list_search_time_and_limit(with_login: Gateway, mail: list[Mail]) -> None:
    args = ("vorgang", "list", "-p", PORTFOLIO)
    assert [v["reference"] for v in as_json(with_login, *args, "--search", "4711")] == [
        mail[0].accepted.vorgang
    ]
    assert [v["reference"] for v in as_json(with_login, *args, "--search", "CLAIM-2026")] == [
        mail[0].accepted.vorgang
    ]
    assert as_json(with_login, *args, "--search", "%") == [], "a % is no wildcard"
    assert as_json(with_login, *args, "--search", "_") == [], "nor is a _"
    assert len(as_json(with_login, *args, "--since", "1h")) == 3
    assert as_json(with_login, *args, "--until", "2000-01-01") == []
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date().isoformat()
    assert with_login(*args, "--since", tomorrow).stdout == "no Vorgang matches\n"
    limited = with_login(*args, "--limit", "1").stdout.splitlines()
    assert len(limited) == 2
    assert limited[1] == "(the first 1; --limit shows more, --since/--search narrow them)"


def test_vorgang_list_errors_name_what_to_do(with_login: Gateway, mail: list[Mail]) -> None:
    unknown = with_login("vorgang", "list", "-p", PORTFOLIO, "--member", "nobody@kunde-b.example", expect=2)
    assert "there is no member nobody@kunde-b.example in portfolio makler-muster" in unknown.stderr
    assert "gateway member list" in unknown.stderr
    portfolio = with_login("vorgang", "list", "-p", "nope", expect=2)
    assert "there is no portfolio 'nope' (portfolios: makler-muster)" in portfolio.stderr
    bad_time = with_login("vorgang", "list", "-p", PORTFOLIO, "--since", "gestern", expect=2)
    assert "'gestern' is neither a time like 2026-11-27" in bad_time.stderr
    assert "Traceback" not in unknown.stderr + portfolio.stderr + bad_time.stderr


# --- gateway events ----------------------------------------------------------------------------------------


def test_events_filtered_by_kind_vorgang_and_message(with_login: Gateway, mail: list[Mail]) -> None:
    claim, second, police, held = mail
    messages = as_json(with_login, "events", "-p", PORTFOLIO, "--kind", "message")
    assert [(e["kind"], e["message"]) for e in messages] == [
        ("message.accepted", claim.accepted.gateway_id),
        ("message.accepted", second.accepted.gateway_id),
        ("message.accepted", police.accepted.gateway_id),
        ("message.quarantined", held.accepted.gateway_id),
    ]
    assert [e["id"] for e in messages] == sorted(e["id"] for e in messages)
    assert all(e["actor"] == "backoffice:ams@makler-muster.example" for e in messages)
    assert messages[0]["detail"]["audience"] == sorted(ADDRESS[n] for n in SEEN_BY["SB-B1"])
    assert messages[3]["detail"]["reason"] == "foreign sender"

    of_claim = as_json(with_login, "events", "--vorgang", claim.accepted.vorgang.lower())
    assert {e["message"] for e in of_claim} == {claim.accepted.gateway_id, second.accepted.gateway_id}
    assert {e["vorgang"] for e in of_claim} == {claim.accepted.vorgang}

    of_message = as_json(with_login, "events", "--message", police.accepted.gateway_id)
    assert [(e["kind"], e["vorgang"]) for e in of_message] == [("message.accepted", police.accepted.vorgang)]
    exact = as_json(with_login, "events", "--kind", "message.quarantined", "--kind", "release.*")
    assert {e["kind"] for e in exact} == {"message.quarantined", "release.create"}


def test_events_of_a_member_time_and_paging(with_login: Gateway, mail: list[Mail]) -> None:
    sb_b1 = as_json(with_login, "events", "-p", PORTFOLIO, "--member", ADDRESS["SB-B1"], "--limit", "1000")
    # The directory load: the member created, then added to its two releases.
    assert [(e["kind"], e["member"]) for e in sb_b1] == [
        ("member.create", ADDRESS["SB-B1"]),
        ("membership.add", ADDRESS["SB-B1"]),
        ("membership.add", ADDRESS["SB-B1"]),
    ]
    everything = as_json(with_login, "events", "--limit", "1000")
    ids = [e["id"] for e in everything]
    assert ids == sorted(ids)
    assert [e["id"] for e in as_json(with_login, "events", "--limit", "2")] == ids[-2:]
    assert [e["id"] for e in as_json(with_login, "events", "--after", str(ids[3]), "--limit", "2")] == ids[
        4:6
    ]
    assert len(as_json(with_login, "events", "--since", "10m", "--limit", "1000")) == len(ids)
    assert as_json(with_login, "events", "--until", "2000-01-01T00:00+01:00") == []
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    assert with_login("events", "--since", tomorrow).stdout == "no events match\n"

    text = with_login("events", "--message", mail[2].accepted.gateway_id).stdout.splitlines()
    assert text[0].endswith(
        f"message.accepted       {PORTFOLIO}  {mail[2].accepted.vorgang}  {mail[2].accepted.gateway_id}"
        "  by backoffice:ams@makler-muster.example"
    )
    assert f"gateway_id={mail[2].accepted.gateway_id}" in text[1]
    assert 'audience=["sb-a1@kunde-a.example", "sb-a2@kunde-a.example"]' in text[1]


def test_events_errors_name_what_to_do(with_login: Gateway, mail: list[Mail]) -> None:
    vorgang = with_login("events", "-p", PORTFOLIO, "--vorgang", "VG-1999-000001", expect=2)
    assert "there is no Vorgang VG-1999-000001 in portfolio makler-muster" in vorgang.stderr
    message = with_login("events", "--message", "gw-nothing", expect=2)
    assert "there is no message with id 'gw-nothing'" in message.stderr


# --- gateway quarantine ------------------------------------------------------------------------------------


def test_quarantine_list_show_release_and_drop(
    with_login: Gateway, database_url: str, tmp_path: Path
) -> None:
    first, second = send(
        database_url,
        tmp_path,
        ("SB-A1", "Rechnung A"),
        ("GF-B", "Rechnung B"),
        sender="billing@fremd.example",
    )
    ids = [first.accepted.gateway_id, second.accepted.gateway_id]
    listed = as_json(with_login, "quarantine", "list")
    assert [q["gateway_id"] for q in listed] == ids
    assert {(q["portfolio"], q["reason"], q["envelope_sender"]) for q in listed} == {
        (PORTFOLIO, "foreign sender", "billing@fremd.example")
    }
    assert listed[0]["rule"].startswith("foreign (")
    assert listed[0]["vorgang"] == first.accepted.vorgang
    text = with_login("quarantine", "list", "-p", PORTFOLIO).stdout
    assert f"{ids[0]}  " in text
    assert "held by rule 'foreign (" in text
    assert "foreign sender" in text

    shown = with_login("quarantine", "show", ids[0], "-p", PORTFOLIO).stdout
    assert "Subject: Rechnung A" in shown
    assert ": foreign sender" in shown
    assert "Text" not in shown, "show prints the header; --raw the whole message"
    raw = with_login("quarantine", "show", ids[0], "-p", PORTFOLIO, "--raw").stdout_bytes
    assert raw.startswith(b"From: billing@fremd.example\r\nTo: sb-a1@kunde-a.example\r\n")
    assert raw.endswith(b"\r\n\r\nText\r\n")

    # All or nothing: an unknown id among them releases none.
    refused = with_login("quarantine", "release", ids[0], "gw-unknown", "-p", PORTFOLIO, expect=2)
    assert "there is no quarantined message gw-unknown in portfolio makler-muster" in refused.stderr
    assert "gateway quarantine list" in refused.stderr
    assert len(as_json(with_login, "quarantine", "list")) == 2

    released = as_json(with_login, "quarantine", "release", ids[0], "-p", PORTFOLIO)
    assert released == [{"gateway_id": ids[0], "audience": sorted(ADDRESS[n] for n in SEEN_BY["SB-A1"])}]
    copies = as_json(with_login, "vorgang", "show", first.accepted.vorgang, "-p", PORTFOLIO)["messages"][0]
    assert copies["kind"] == "message"
    assert {(c["address"], c["state"]) for c in copies["copies"]} == {
        (ADDRESS[n], "pending") for n in SEEN_BY["SB-A1"]
    }

    # Without a terminal to ask on, drop wants --yes; nothing is dropped without it.
    unasked = with_login("quarantine", "drop", ids[1], "-p", PORTFOLIO, expect=2)
    assert "add --yes" in unasked.stderr
    assert [q["gateway_id"] for q in as_json(with_login, "quarantine", "list")] == [ids[1]]
    assert with_login("quarantine", "drop", ids[1], "-p", PORTFOLIO, "--yes").stdout == f"dropped {ids[1]}\n"
    assert with_login("quarantine", "list").stdout == "nothing is quarantined\n"
    assert as_json(with_login, "vorgang", "show", second.accepted.vorgang, "-p", PORTFOLIO)["messages"] == []
    again = with_login("quarantine", "release", ids[1], "-p", PORTFOLIO, expect=2)
    assert f"there is no quarantined message {ids[1]}" in again.stderr

    decided = as_json(with_login, "events", "--kind", "message.released", "--kind", "message.dropped")
    assert [(e["kind"], e["message"]) for e in decided] == [
        ("message.released", ids[0]),
        ("message.dropped", None),
    ]
    assert all(e["actor"].startswith("cli:") for e in decided)
    assert decided[1]["detail"]["gateway_id"] == ids[1], "the dropped message is named in the log"
    assert decided[1]["vorgang"] == second.accepted.vorgang


def test_events_follow_prints_new_events_as_lines_until_ctrl_c(with_login: Gateway) -> None:
    """The real command in a process of its own, as an admin leaves it running in a terminal."""
    # --limit 2: the first page is the newest two; following goes on after them, never back to the
    # four older members' events the limit left out.
    command = ["events", "--kind", "member", "--limit", "2", "--follow", "--json", "--interval", "0.2"]
    with subprocess.Popen(
        [GATEWAY, "--config", str(with_login.config), *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as follow:
        assert follow.stdout is not None
        assert follow.stderr is not None
        printed: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [printed.put(line) for line in follow.stdout], daemon=True).start()

        def next_event() -> Any:
            return json.loads(printed.get(timeout=20))  # a follow that prints nothing fails, never hangs

        try:
            lines = [next_event() for _ in range(2)]
            assert [e["kind"] for e in lines] == ["member.create", "member.create"]
            assert {e["member"] for e in lines} < set(ADDRESS.values())
            with_login("member", "add", "neu@kunde-b.example", "--name", "Neu", "-p", PORTFOLIO)
            with_login("member", "set", "neu@kunde-b.example", "--name", "Neu B", "-p", PORTFOLIO)
            later = [next_event() for _ in range(2)]
            assert [(e["kind"], e["member"]) for e in later] == [
                ("member.create", "neu@kunde-b.example"),
                ("member.update", "neu@kunde-b.example"),
            ]
            assert later[0]["id"] > max(e["id"] for e in lines)
            follow.send_signal(signal.SIGINT)
            assert follow.wait(timeout=20) == 0, "Ctrl-C ends following with success"
            assert follow.stderr.read() == ""
            assert printed.empty()
        finally:
            if follow.poll() is None:
                follow.kill()
