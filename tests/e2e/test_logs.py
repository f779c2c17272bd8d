"""What an admin follows: the log of a real `gateway serve` run through the seed's flow, and the times
the admin commands print about it (issue 16, item 4).

One back-office mail, its copies, a member's reply and its relay; then the log must have said each step
once, in words an admin greps for, and every time the CLI prints must carry its UTC offset.
"""

from __future__ import annotations

import json
import re
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.e2e.clients import copy_for, reply_address_of, send_from_backoffice, send_reply
from tests.e2e.conftest import PORTFOLIO, BackOfficeSink, RunningGateway, configure, prepare
from tests.seed import ADDRESS, SEEN_BY

BACKOFFICE = "ams@makler-muster.example"
# A date and time as the CLI prints them, and the offset that must follow.
TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?P<offset>[+-]\d\d:\d\d|Z)?")


@pytest.fixture
def flowed(tmp_path: Path, database_url: str, sink: BackOfficeSink) -> tuple[RunningGateway, str]:
    """A gateway that took one back-office mail and one member's reply to it and relayed the reply;
    stopped, so its log is complete. Yields it with the mail's subject."""
    gateway = prepare(tmp_path, database_url)
    configure(gateway, sink, tmp_path)
    gateway.start()
    try:
        marker = f"Logzeilen {uuid.uuid4().hex[:8]}"
        send_from_backoffice(gateway, ADDRESS["SB-B1"], marker, f"<log-{uuid.uuid4().hex}@ams.example>")
        copy = copy_for(gateway, "SB-B2", marker)
        reply = EmailMessage()
        reply["From"] = ADDRESS["SB-B2"]
        reply["To"] = reply_address_of(copy)
        reply["Subject"] = f"Re: {copy['Subject']}"
        reply["Message-ID"] = f"<answer-{uuid.uuid4().hex}@kunde-b.example>"
        reply["In-Reply-To"] = str(copy["Message-ID"])
        reply["References"] = str(copy["References"])
        reply.set_content("Fotos folgen.\n")
        code, text = send_reply(gateway, reply.as_bytes(), reply_address_of(copy), ADDRESS["SB-B2"])
        assert code == 250, text
        sink.wait_for(1)
        gateway.settled()
    finally:
        gateway.stop()
    print("".join(gateway.log))  # shown by pytest when the test failed
    return gateway, marker


def _lines(gateway: RunningGateway, pattern: str) -> list[re.Match[str]]:
    return [m for line in gateway.log if (m := re.search(pattern, line))]


def test_each_step_is_one_line_of_the_log_and_the_commands_print_times_with_offset(
    flowed: tuple[RunningGateway, str],
) -> None:
    gateway, marker = flowed
    # Accepted from the back office, with the address the client connected from.
    (accepted,) = _lines(
        gateway,
        r"accepted (gw-\S+) from ams@makler-muster\.example \(peer 127\.0\.0\.1:\d+\) vorgang (VG-\S+)",
    )
    vorgang = accepted.group(2)
    # The fan-out says per member how many copies it wrote: the back-office mail's audience once each,
    # and the reply's (everyone who may see it but its author) once more.
    written = [m.group(1) for m in _lines(gateway, r"wrote \d+ cop(?:y|ies) for (\S+) in makler-muster")]
    first_audience = {ADDRESS[p] for p in SEEN_BY["SB-B1"]}
    assert set(written) == first_audience
    wrote = sum(int(m.group(1)) for m in _lines(gateway, r"wrote (\d+) cop"))
    assert wrote == len(first_audience) + len(first_audience - {ADDRESS["SB-B2"]})
    # The reply is queued for relay when stored; the relay worker then says it went out, and at which try.
    assert _lines(
        gateway,
        rf"accepted reply (gw-\S+) from {re.escape(ADDRESS['SB-B2'])} \(peer 127\.0\.0\.1:\d+\) in "
        rf"{vorgang}: \d+ copies, queued for relay$",
    ), "the reply is said to be queued, once"
    assert not _lines(gateway, r"relayed$|, relayed\b"), "nothing claims a relay before it happened"
    (relayed,) = _lines(gateway, rf"relayed (\S+) to {re.escape(BACKOFFICE)} \(attempt 1\): 250 ")
    assert relayed
    assert not [line for line in gateway.log if ",:" in line], "no stray ',:'"

    # What the admin commands print about that run: every time with its offset.
    cli = gateway.cli
    listed = cli("vorgang", "list", "-p", PORTFOLIO).stdout
    (vorgang,) = re.findall(rf"(VG-\S+) .*{marker}", listed)
    # A directory change that can change audiences records a reconcile run for `reconcile status`.
    cli("release", "remove-member", "Kunde B mit GF", ADDRESS["GF-B"], "-p", PORTFOLIO)
    outputs = {
        "vorgang list": listed,
        "vorgang show": cli("vorgang", "show", vorgang, "-p", PORTFOLIO).stdout,
        "events": cli("events", "-p", PORTFOLIO, "--vorgang", vorgang).stdout,
        "reconcile status": cli("reconcile", "status").stdout,
        "queue list": cli("queue", "list").stdout,
    }
    for name, out in outputs.items():
        times = list(TIME.finditer(out))
        assert times or name == "queue list", f"{name} printed no time:\n{out}"
        naive = [m.group(0) for m in times if not m.group("offset")]
        assert not naive, f"{name} printed times without their offset: {naive}\n{out}"
    assert re.search(r"finished|updated", outputs["reconcile status"])
    # --json carries the offset as well, in the ISO form scripts parse.
    shown = json.loads(cli("vorgang", "show", vorgang, "-p", PORTFOLIO, "--json").stdout)
    for message in shown["messages"]:
        assert TIME.fullmatch(message["received_at"]).group("offset") == "+00:00"  # type: ignore[union-attr]


def test_quarantine_list_prints_its_times_with_offset(tmp_path: Path, database_url: str) -> None:
    """Held by a rule, listed and shown: the time it was held carries its offset."""
    gateway = prepare(tmp_path, database_url)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "hold.yaml").write_text(
        "rules:\n  - name: hold\n    match: {subject: {regex: 'Halten'}}\n    quarantine: 'zur Prüfung'\n",
        encoding="utf-8",
    )
    with gateway.config.open("a", encoding="utf-8") as file:
        file.write(f'\n[rules]\ndir = "{rules}"\n')
    gateway.start()
    try:
        send_from_backoffice(gateway, ADDRESS["SB-A1"], "Halten bitte", f"<q-{uuid.uuid4().hex}@ams.example>")
    finally:
        gateway.stop()
    out = gateway.cli("quarantine", "list").stdout
    times = list(TIME.finditer(out))
    assert times, out
    assert all(m.group("offset") for m in times), out
