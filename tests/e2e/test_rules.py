"""Routing rules in a real ``gateway serve``: smtplib as the back office, rules files edited while it runs.

A claim number in the subject keys mail into one Vorgang, rules reject and quarantine with their answers,
and an invalid edit (announced with SIGHUP) leaves the previous rules working, as mail sent before and
after it shows; a valid edit is picked up by the gateway's look at the files, without a signal. An admin
releases one quarantined message and drops another while the gateway runs, on Maildir and on Dovecot.
"""

from __future__ import annotations

import json
import re
import signal
import smtplib
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_DIRECTORY
from tests.dovecot import Dovecot
from tests.e2e.clients import message, smtp
from tests.e2e.conftest import PORTFOLIO, RunningGateway, prepare
from tests.seed import ADDRESS, SEEN_BY

RULES = """
rules:
  - name: claim-number
    match:
      subject: {regex: 'Schaden(?:nummer|-?nr\\.?)?[ :]*(?P<claim_no>[0-9]{4}-[0-9]+)', ignore_case: true}
    vorgang_key: "claim-{claim_no}"
    set_headers: {X-Claim-Number: "{claim_no}"}
  - name: spam
    match: {header: {name: X-Spam-Flag, exact: "yes", ignore_case: true}}
    reject: {code: 550, status: 5.7.1, text: "Refused: marked as spam"}
  - name: foreign
    match: {not: {sender_domain: makler-muster.example}}
    quarantine: "foreign sender"
"""


def with_billing(gateway: RunningGateway, tmp_path: Path) -> RunningGateway:
    """ams with a second address outside its portfolio's domain, billing@fremd.example (a billing
    service sending in its name): the directory allows it, so the "foreign" rule is what holds it."""
    text = EXAMPLE_DIRECTORY.read_text(encoding="utf-8").replace(
        "addresses: [ams@makler-muster.example]",
        "addresses: [ams@makler-muster.example, billing@fremd.example]",
    )
    directory = tmp_path / "billing.yaml"
    directory.write_text(text, encoding="utf-8")
    gateway.cli("directory", "load", str(directory))
    return gateway


def write_rules(gateway: RunningGateway, text: str) -> Path:
    directory = gateway.config.parent / "rules"
    directory.mkdir(exist_ok=True)
    path = directory / "10-routing.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def wait_for_log(gateway: RunningGateway, pattern: str, after: int, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = "".join(gateway.log[after:])
        if re.search(pattern, text):
            return text
        time.sleep(0.05)
    raise AssertionError(f"no log line matching {pattern!r}:\n" + "".join(gateway.log[after:]))


def send_spam(gateway: RunningGateway) -> smtplib.SMTPDataError:
    with smtp(gateway) as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.send_message(message(ADDRESS["SB-A1"], "Gewinnspiel", X_Spam_Flag="YES"))
    return refused.value


@pytest.fixture
def gateway(tmp_path: Path, database_url: str) -> Iterator[RunningGateway]:
    running = with_billing(prepare(tmp_path, database_url), tmp_path)
    write_rules(running, RULES)
    running.start()
    try:
        yield running
    finally:
        if running.process is not None and running.process.poll() is None:
            running.stop()


def test_rules_route_reject_quarantine_and_survive_a_bad_edit(gateway: RunningGateway) -> None:
    claim = f"2026-{uuid.uuid4().int % 10**6}"
    with smtp(gateway) as client:
        client.send_message(message(ADDRESS["SB-A1"], f"Schadennummer {claim}: Kfz"))
        client.send_message(message(ADDRESS["GF-A"], f"Gutachten zu Schaden {claim}"))
        # A foreign sender is quarantined: 250 with the review note, but nobody gets a copy.
        held = message(ADDRESS["SB-A2"], "Rechnung quarantäne")
        held.replace_header("From", "billing@fremd.example")
        assert client.send_message(held) == {}
    first = gateway.wait_for_copies(claim, 4)  # SB-A1 and SB-A2; GF-A and GF-B
    assert set(first) == {ADDRESS[n] for n in ("SB-A1", "SB-A2", "GF-A", "GF-B")}
    vorgaenge = {str(c["X-Gateway-Vorgang"]) for copies in first.values() for c in copies}
    assert len(vorgaenge) == 1, "both mails about the claim are in one Vorgang"
    assert {str(c["X-Claim-Number"]) for copies in first.values() for c in copies} == {claim}
    assert gateway.copies_of("quarantäne") == {}

    refused = send_spam(gateway)
    assert (refused.smtp_code, refused.smtp_error) == (550, b"5.7.1 Refused: marked as spam")

    # An invalid edit, announced with SIGHUP: refused with FILE:LINE:COL in the log, old rules in force.
    mark = len(gateway.log)
    bad = write_rules(gateway, RULES.replace("subject: {regex:", "subjekt: {regex:"))
    assert gateway.process is not None
    gateway.process.send_signal(signal.SIGHUP)
    logged = wait_for_log(gateway, "rules not reloaded", mark)
    assert f"{bad}:4:7: unknown key 'subjekt' in match" in logged
    with smtp(gateway) as client:
        client.send_message(message(ADDRESS["SB-B1"], f"Re: Schaden-Nr. {claim} Nachtrag"))
    after = gateway.wait_for_copies("Nachtrag", 3)
    assert {str(c["X-Gateway-Vorgang"]) for copies in after.values() for c in copies} == vorgaenge
    assert send_spam(gateway).smtp_error == b"5.7.1 Refused: marked as spam"

    # A valid edit is noticed without a signal (the gateway looks at the files every 2 s).
    mark = len(gateway.log)
    write_rules(gateway, RULES.replace("Refused: marked as spam", "Refused: spam, says your filter"))
    wait_for_log(gateway, r"rules reloaded: 3 rule\(s\)", mark)
    assert send_spam(gateway).smtp_error == b"5.7.1 Refused: spam, says your filter"
    assert gateway.stop() == 0


def test_quarantine_answer_names_the_review(tmp_path: Path, database_url: str) -> None:
    running = with_billing(prepare(tmp_path, database_url), tmp_path)
    write_rules(running, RULES)
    running.start()
    try:
        held = message(ADDRESS["SB-A1"], "Rechnung")
        held.replace_header("From", "billing@fremd.example")
        with smtp(running) as client:
            client.mail("billing@fremd.example")
            client.rcpt(ADDRESS["SB-A1"])
            code, answer = client.data(held.as_bytes())
        assert code == 250
        assert re.fullmatch(rb"2\.0\.0 Accepted as \S+; held for review", answer), answer
    finally:
        running.stop()


def test_invalid_rules_keep_the_gateway_from_starting(tmp_path: Path, database_url: str) -> None:
    running = with_billing(prepare(tmp_path, database_url), tmp_path)
    bad = write_rules(running, "rules:\n  - name: x\n    match: {subjekt: y}\n")
    with pytest.raises(AssertionError, match="did not start"):
        running.start()  # it exits at once; the limit is for a gateway that hangs
    assert running.stop() == 2  # also closes the pipe the log came through
    assert f"{bad}:3:13: unknown key 'subjekt'" in "".join(running.log)
    assert "Traceback" not in "".join(running.log)


def test_a_released_message_reaches_its_audience_a_dropped_one_nobody(
    tmp_path: Path, database_url: str, mailbox_server: Dovecot | None
) -> None:
    """Quarantine from the admin's side while ``gateway serve`` runs: the held messages are listed,
    the released one reaches exactly the audience DESIGN.md §3 gives it, the dropped one nobody."""
    running = with_billing(prepare(tmp_path, database_url, dovecot=mailbox_server), tmp_path)
    write_rules(running, RULES)
    running.start()
    try:
        with smtp(running) as client:
            for to, subject in (("SB-B1", "Rechnung freigeben"), ("GF-A", "Rechnung verwerfen")):
                held = message(ADDRESS[to], subject)
                held.replace_header("From", "billing@fremd.example")
                client.send_message(held)
        listed = json.loads(running.cli("quarantine", "list", "--json").stdout)
        by_subject = {q["subject"]: q["gateway_id"] for q in listed}
        assert set(by_subject) == {"Rechnung freigeben", "Rechnung verwerfen"}
        # The log tells an operator that an admin has to act, and how.
        for gateway_id in by_subject.values():
            logged = wait_for_log(
                running, re.escape(f"WARNING gateway.stages.ingress: quarantined {gateway_id}"), 0
            )
            line = next(x for x in logged.splitlines() if f"quarantined {gateway_id}" in x)
            assert f"by foreign ({running.config.parent / 'rules' / '10-routing.yaml'}:" in line
            assert line.endswith(
                f": foreign sender; `gateway quarantine show {gateway_id} -p {PORTFOLIO}` shows it, "
                "`gateway quarantine release|drop` decides"
            )
        assert running.copies_of("Rechnung") == {}

        running.cli("quarantine", "release", by_subject["Rechnung freigeben"], "-p", PORTFOLIO)
        running.cli("quarantine", "drop", by_subject["Rechnung verwerfen"], "-p", PORTFOLIO, "--yes")
        audience = {ADDRESS[n] for n in SEEN_BY["SB-B1"]}
        copies = running.wait_for_copies("Rechnung freigeben", len(audience))
        assert {a: len(c) for a, c in copies.items()} == dict.fromkeys(audience, 1)
        running.settled()  # a copy of the dropped message would be in its mailbox now
        assert running.copies_of("Rechnung verwerfen") == {}
        assert running.cli("quarantine", "list").stdout == "nothing is quarantined\n"
        assert running.stop() == 0
    finally:
        if running.process is not None and running.process.poll() is None:
            running.stop()
