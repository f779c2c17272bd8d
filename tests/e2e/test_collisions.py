"""The collision guard end to end: ``gateway serve``, smtplib on both sides, Maildirs and a real Dovecot.

The seed's people: SB-B2 answers the back office's mail; SB-B1 answers the same mail from a client that
had not synced SB-B2's answer (its reply names only the back office's message). SB-B1's reply is held,
the notice arrives in SB-B1's mailbox in the Vorgang's thread, and SB-B1's mail to one of its addresses
sends the reply (once, with SB-B1 as the actual sender) or withdraws it (nothing relayed). An admin can
do the same with ``gateway held``. Runs on SQLite and PostgreSQL, with Maildirs and with Dovecot.
"""

from __future__ import annotations

import json
import re
import uuid
from email.message import EmailMessage

import pytest

from tests.e2e.clients import copy_for, reply_address_of, send_from_backoffice, send_reply, wait_until
from tests.e2e.conftest import BackOfficeSink, RunningGateway
from tests.seed import ADDRESS

SB_B1, SB_B2 = ADDRESS["SB-B1"], ADDRESS["SB-B2"]


@pytest.fixture
def gateway(shared_relaying: RunningGateway, backoffice: BackOfficeSink) -> RunningGateway:
    return shared_relaying


def answer(
    gateway: RunningGateway, author: str, copy: EmailMessage, text: str, *, to: str | None = None
) -> tuple[int, str]:
    """``author``'s answer to ``copy`` (naming only the back office's mail: the client had not synced)."""
    message = EmailMessage()
    message["From"] = author
    message["To"] = to or reply_address_of(copy)
    message["Subject"] = f"Re: {copy['Subject']}"
    message["Message-ID"] = f"<{uuid.uuid4().hex}@kunde-b.example>"
    message["In-Reply-To"] = str(copy["Message-ID"])
    message["References"] = str(copy["Message-ID"])
    message.set_content(text)
    raw = message.as_bytes().replace(b"\n", b"\r\n")
    code, said = send_reply(gateway, raw, to or reply_address_of(copy), author)
    return code, said.decode()


def crossed(gateway: RunningGateway, backoffice: BackOfficeSink) -> tuple[str, EmailMessage, EmailMessage]:
    """SB-B2 answers; SB-B1, who had the copy before that, answers too and is held. The marker and the
    two copies."""
    marker = f"Schaden {uuid.uuid4().hex[:8]}"
    send_from_backoffice(gateway, SB_B1, marker, f"<{marker.replace(' ', '-')}@ams.example>")
    b1, b2 = copy_for(gateway, "SB-B1", marker), copy_for(gateway, "SB-B2", marker)
    code, said = answer(gateway, SB_B2, b2, "Wir regulieren den Schaden.")
    assert code == 250, said
    assert len(backoffice.wait_for(1)) == 1
    code, said = answer(gateway, SB_B1, b1, "Bitte schicken Sie die Rechnung.")
    assert code == 250, said
    assert "held" in said, said
    return marker, b1, b2


def notice_of(gateway: RunningGateway, marker: str) -> EmailMessage:
    def found() -> list[EmailMessage]:
        return [m for m in gateway.mailbox(SB_B1) if m["X-Gateway-Notice"] and marker in str(m["Subject"])]

    assert wait_until(lambda: len(found()) == 1, timeout=30), [
        str(m["Subject"]) for m in gateway.mailbox(SB_B1)
    ]
    return found()[0]


def addresses(notice: EmailMessage) -> tuple[str, str]:
    text = notice.get_content()
    send = re.search(r"Send mine anyway: any mail to (\S+)", text)
    withdraw = re.search(r"Withdraw mine: any mail to (\S+)", text)
    assert send is not None, text
    assert withdraw is not None, text
    return send.group(1), withdraw.group(1)


def test_held_reply_notice_and_send_anyway_once(gateway: RunningGateway, backoffice: BackOfficeSink) -> None:
    marker, b1, _ = crossed(gateway, backoffice)
    notice = notice_of(gateway, marker)
    # In the Vorgang's thread, in both languages, with who answered first and the start of that answer.
    assert notice["In-Reply-To"] == b1["Message-ID"]
    text = notice.get_content()
    assert SB_B2 in text
    assert "Wir regulieren den Schaden." in text
    assert "zurückgehalten" in text
    assert "was held" in text
    send, _ = addresses(notice)
    gateway.settled()
    assert len(backoffice.received) == 1, "the held reply waits"

    code, said = answer(gateway, SB_B1, b1, "Ja, trotzdem senden.", to=send)
    assert code == 250, said
    relayed = backoffice.wait_for(2)
    assert len(relayed) == 2
    second = relayed[1].message
    assert second["From"].addresses[0].addr_spec == SB_B1
    assert second["X-Gateway-Actual-Sender"] == SB_B1
    assert "Bitte schicken Sie die Rechnung." in second.get_content()
    # Once: the same mail again changes nothing.
    code, said = answer(gateway, SB_B1, b1, "Nochmal.", to=send)
    assert code == 250, said
    assert "decided before" in said
    gateway.settled()
    assert len(backoffice.received) == 2


def test_withdraw_relays_nothing(gateway: RunningGateway, backoffice: BackOfficeSink) -> None:
    marker, b1, _ = crossed(gateway, backoffice)
    _, withdraw = addresses(notice_of(gateway, marker))
    code, said = answer(gateway, SB_B1, b1, "Zurückziehen.", to=withdraw)
    assert code == 250, said
    assert "withdrawn" in said
    gateway.settled()
    assert len(backoffice.received) == 1
    # Nor did the withdrawn reply reach SB-B2 or GF-B.
    assert not [
        m
        for m in gateway.mailbox(SB_B2)
        if marker in str(m["Subject"]) and "Bitte schicken Sie" in str(m.get_body())
    ]


def test_an_admin_releases_from_the_cli(gateway: RunningGateway, backoffice: BackOfficeSink) -> None:
    marker, _, _ = crossed(gateway, backoffice)
    listed = json.loads(gateway.cli("held", "list", "--json").stdout)
    (held,) = [h for h in listed if marker in h["subject"]]
    assert held["member"] == SB_B1
    assert held["crossed_answer_by"] == SB_B2
    assert held["state"] == "held"
    out = gateway.cli("held", "release", held["id"]).stdout
    assert f"released {held['id']}" in out
    relayed = backoffice.wait_for(2)
    assert relayed[1].message["X-Gateway-Actual-Sender"] == SB_B1
    # A second decision is refused, saying what happened.
    again = gateway.cli("held", "withdraw", held["id"], expect=2)
    assert "released already" in again.stderr
    missing = gateway.cli("held", "release", "h0000000000000000000", expect=2)
    assert "gateway held list" in missing.stderr


def test_an_admin_withdraws_from_the_cli(gateway: RunningGateway, backoffice: BackOfficeSink) -> None:
    marker, _, _ = crossed(gateway, backoffice)
    listed = json.loads(gateway.cli("held", "list", "--json").stdout)
    (held,) = [h for h in listed if marker in h["subject"]]
    out = gateway.cli("held", "withdraw", held["id"]).stdout
    assert f"withdrew {held['id']}" in out
    gateway.settled()
    assert len(backoffice.received) == 1, "a withdrawn reply is never relayed"
    after = json.loads(gateway.cli("held", "list", "--json", "--all").stdout)
    assert [h["state"] for h in after if h["id"] == held["id"]] == ["withdrawn"]
    # Nor did it reach the co-members.
    assert not [
        m
        for m in gateway.mailbox(SB_B2)
        if marker in str(m["Subject"]) and "Bitte schicken Sie" in str(m.get_body())
    ]
    again = gateway.cli("held", "release", held["id"], expect=2)
    assert "withdrawn already" in again.stderr
