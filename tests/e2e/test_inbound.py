"""The inbound path end to end: a real SMTP client as the back office, the real gateway, the mailboxes.

Every test runs with both mailbox backends (Maildir, and IMAP into a private Dovecot read with imaplib).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest

from tests.e2e.clients import message, smtp
from tests.e2e.conftest import LOGIN, PASSWORD, RunningGateway
from tests.seed import ADDRESS, SEEN_BY

RELEASE_OF_SHARED = {
    # Who gets a copy through sharing, and through which release, for a message to the key person.
    "SB-A1": {"SB-A2": "Kunde A Sachbearbeiter"},
    "GF-A": {"GF-B": "Geschäftsführer"},
    "GF-B": {"GF-A": "Geschäftsführer", "SB-B1": "Kunde B mit GF", "SB-B2": "Kunde B mit GF"},
}


@pytest.fixture
def running(shared_running: RunningGateway) -> RunningGateway:
    """One gateway for the module: every test here sends mail with subjects of its own."""
    return shared_running


@pytest.mark.parametrize("person", sorted(SEEN_BY))
def test_a_message_to_each_person_reaches_exactly_the_audience(running: RunningGateway, person: str) -> None:
    marker = f"Schaden {uuid.uuid4().hex[:8]}"
    with smtp(running) as client:
        client.send_message(message(ADDRESS[person], marker))
    copies = running.wait_for_copies(marker, len(SEEN_BY[person]))
    names = {address: name for name, address in ADDRESS.items()}
    assert {names[a] for a in copies} == SEEN_BY[person]
    assert all(len(found) == 1 for found in copies.values()), "exactly one copy per member"
    references = {str(found[0]["X-Gateway-Vorgang"]) for found in copies.values()}
    assert len(references) == 1
    [reference] = references
    assert reference.startswith("VG-")
    copy_ids = {str(found[0]["X-Gateway-Copy-Id"]) for found in copies.values()}
    assert len(copy_ids) == len(copies), "every copy has its own id"
    for address, found in copies.items():
        copy = found[0]
        assert str(copy["Subject"]) == f"[{reference}] {marker}"
        shared = RELEASE_OF_SHARED.get(person, {}).get(names[address])
        if names[address] == person:
            assert copy["X-Gateway-Shared-Via"] is None
        elif shared:
            assert str(copy["X-Gateway-Shared-Via"]) == shared
        assert copy.get_content().startswith("Sehr geehrte")


def test_replies_join_the_vorgang_and_re_sends_are_stored_once(running: RunningGateway) -> None:
    first = message(ADDRESS["SB-A1"], "Kfz-Schaden 4711")
    with smtp(running) as client:
        client.send_message(first)
        client.send_message(first)  # the same message again: accepted, stored once
        follow_up = message(ADDRESS["SB-A1"], "Nachtrag", In_Reply_To=str(first["Message-ID"]))
        client.send_message(follow_up)
        tagged = message(ADDRESS["SB-A2"], "Re: [VG-0000-000000] Frage")
        client.send_message(tagged)
    copies = running.wait_for_copies("Kfz-Schaden 4711", 2)
    assert {a: len(c) for a, c in copies.items()} == {ADDRESS["SB-A1"]: 1, ADDRESS["SB-A2"]: 1}
    reference = str(copies[ADDRESS["SB-A1"]][0]["X-Gateway-Vorgang"])
    nachtrag = running.wait_for_copies("Nachtrag", 2)
    assert {str(c[0]["X-Gateway-Vorgang"]) for c in nachtrag.values()} == {reference}
    out = running.cli("vorgang", "show", reference, "-p", "makler-muster").stdout
    assert out.count("inbound") == 2
    assert out.count("delivered") == 4


def test_swaks_as_the_back_office(running: RunningGateway) -> None:
    swaks = shutil.which("swaks")
    assert swaks, "swaks is installed by .ci/run (Debian package swaks)"
    marker = f"swaks {uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [
            swaks,
            "--server",
            f"127.0.0.1:{running.port}",
            "--ehlo",
            "ams.makler-muster.example",
            "--auth",
            "LOGIN",
            "--auth-user",
            LOGIN,
            "--auth-password",
            PASSWORD,
            "--from",
            LOGIN,
            "--to",
            ADDRESS["GF-B"],
            "--header",
            f"Subject: {marker}",
            "--body",
            "Bitte um Rückruf.",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Accepted as gw-" in result.stdout
    copies = running.wait_for_copies(marker, 4)
    assert set(copies) == {ADDRESS[n] for n in SEEN_BY["GF-B"]}
