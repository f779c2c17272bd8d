"""What a copy and a relayed mail say about themselves, as members' clients and the back office read them.

Against the running gateway, with both mailbox backends (Maildirs read from the files; a private Dovecot
read as the member with FETCH ENVELOPE, the way an IMAP client builds its message list):

- Bcc stays blind: no copy carries Bcc, a blind recipient's co-members neither get the message because of
  them nor can tell they got it (DESIGN.md §3);
- one view of a header: sender-supplied From, Reply-To, Sender and X-Gateway-… headers in any form any
  reader takes for a header never survive the rewrite, for Dovecot and for Python's default policy;
- trace: every copy and every relayed mail carries the gateway's Received line, and the hop count still
  stops a loop through the back office.

The tests share one gateway (hop limit 3) and back-office sink per module (``shared_relaying`` and
``backoffice``): the subjects and Message-IDs of each test are its own, and the sink holds only what the
gateway relayed since the test began.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import imaplib
import re
import smtplib
from email.message import EmailMessage

import pytest
from sqlalchemy import select

from gateway.db.engine import create_engine, session_factory
from gateway.db.models import CopyRow, MemberRow, MessageRow
from tests.dovecot import Dovecot
from tests.e2e.clients import ANSWERED, NO_FLAGS, reply_address_of, send_reply, wait_until
from tests.e2e.conftest import (
    LOGIN,
    PASSWORD,
    REPLY_DOMAIN,
    BackOfficeSink,
    ImapMailboxes,
    RunningGateway,
)
from tests.seed import ADDRESS

BACKOFFICE = "ams@makler-muster.example"
HOSTNAME = "gateway.test.example"


@pytest.fixture(scope="module")
def shared_limits() -> dict[str, object]:
    """A hop limit low enough for a loop through the back office to reach it in a test."""
    return {"max_received_hops": 3}


@pytest.fixture
def gateway(shared_relaying: RunningGateway, backoffice: BackOfficeSink) -> RunningGateway:
    """The module's gateway, relaying to ``backoffice`` (``sink`` here)."""
    return shared_relaying


@pytest.fixture
def sink(backoffice: BackOfficeSink) -> BackOfficeSink:
    """The module's back-office sink, holding only what was relayed during this test."""
    return backoffice


@pytest.fixture
def mailbox_server(shared_relaying: RunningGateway, module_mailbox_backend: str) -> Dovecot | None:
    """The Dovecot of the module's gateway for "imap"; None for Maildir."""
    mailboxes = shared_relaying.mailboxes
    return mailboxes.dovecot if isinstance(mailboxes, ImapMailboxes) else None


@pytest.fixture
def database_url(shared_relaying: RunningGateway) -> str:
    """The database of the module's gateway."""
    return shared_relaying.database_url


def submit(gateway: RunningGateway, raw: bytes, recipients: list[str]) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo("ams.makler-muster.example")
        client.login(LOGIN, PASSWORD)
        client.mail(BACKOFFICE)
        for rcpt in recipients:
            code, text = client.rcpt(rcpt)
            assert code == 250, text
        return client.data(raw)


def raw_copies(gateway: RunningGateway, dovecot: Dovecot | None, person: str, marker: str) -> list[bytes]:
    """The bytes of every copy in ``person``'s mailbox whose subject contains ``marker``."""
    address = ADDRESS[person]
    if dovecot is None:
        found = []
        for path in sorted(gateway.maildir_root.glob(f"*/{address}/**/*")):
            if path.is_file() and path.parent.name in ("new", "cur") and marker.encode() in path.read_bytes():
                found.append(path.read_bytes())
        return found
    client = dovecot.client(address)
    try:
        client.select("INBOX", readonly=True)
        _, data = client.uid("SEARCH", "SUBJECT", f'"{marker}"')
        uids = data[0].split() if data and data[0] else []
        result = []
        for uid in uids:
            _, fetched = client.uid("FETCH", uid, "(BODY.PEEK[])")
            result += [item[1] for item in fetched if isinstance(item, tuple)]
        return result
    finally:
        client.logout()


def envelopes(dovecot: Dovecot, person: str, marker: str) -> list[bytes]:
    """Dovecot's ENVELOPE of each copy whose subject contains ``marker``, as the member's client gets it."""
    client: imaplib.IMAP4 = dovecot.client(ADDRESS[person])
    try:
        client.select("INBOX", readonly=True)
        _, data = client.uid("SEARCH", "SUBJECT", f'"{marker}"')
        found = []
        for uid in data[0].split() if data and data[0] else []:
            _, fetched = client.uid("FETCH", uid, "(ENVELOPE)")
            found += [item if isinstance(item, bytes) else b"".join(item) for item in fetched]
        return found
    finally:
        client.logout()


def parsed(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def wait_for_copy(gateway: RunningGateway, dovecot: Dovecot | None, person: str, marker: str) -> bytes:
    assert wait_until(lambda: raw_copies(gateway, dovecot, person, marker), timeout=20), (
        f"no copy for {person}"
    )
    (copy,) = raw_copies(gateway, dovecot, person, marker)
    return copy


# --- Bcc stays blind ----------------------------------------------------------------------------------------


def bcc_mail(to: str, subject: str) -> bytes:
    return (
        f"From: Makler Muster <{BACKOFFICE}>\r\nTo: {to}\r\n"
        f"Bcc: {ADDRESS['GF-A']}, geheim@kunde-a.example\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{subject.replace(' ', '-')}@ams.example>\r\n\r\nText\r\n"
    ).encode()


def answered(database_url: str, message_id: str) -> set[str]:
    """The members whose copy of ``message_id`` the database has marked \\Answered."""

    async def load() -> set[str]:
        engine = create_engine(database_url)
        try:
            async with session_factory(engine)() as session:
                rows = await session.execute(
                    select(MemberRow.address)
                    .join(CopyRow, CopyRow.member_id == MemberRow.id)
                    .join(MessageRow, MessageRow.id == CopyRow.message_id)
                    .where(MessageRow.message_id == message_id, CopyRow.answered.is_(True))
                )
                return {str(address) for (address,) in rows}
        finally:
            await engine.dispose()

    return asyncio.run(load())


def test_a_blind_recipient_gets_a_copy_and_nobody_learns_of_it(
    gateway: RunningGateway, mailbox_server: Dovecot | None, sink: BackOfficeSink, database_url: str
) -> None:
    # The mail: to SB-B1, Bcc GF-A (and someone outside the directory, named only in the header).
    code, text = submit(
        gateway, bcc_mail(ADDRESS["SB-B1"], "Blind eins"), [ADDRESS["SB-B1"], ADDRESS["GF-A"]]
    )
    assert code == 250, text
    for person in ("SB-B1", "SB-B2", "GF-B", "GF-A"):
        copy = wait_for_copy(gateway, mailbox_server, person, "Blind eins")
        assert parsed(copy)["Bcc"] is None
        assert b"geheim" not in copy
        if person != "GF-A":
            assert ADDRESS["GF-A"].encode() not in copy.lower(), f"{person}'s copy names GF-A"
    gf_a_copy = wait_for_copy(gateway, mailbox_server, "GF-A", "Blind eins")
    assert b"for <gf-a@kunde-a.example>" in gf_a_copy
    if mailbox_server is not None:
        (envelope,) = envelopes(mailbox_server, "SB-B2", "Blind eins")
        # ENVELOPE: date subject from sender reply-to to cc bcc in-reply-to message-id; bcc is NIL.
        assert b"gf-a" not in envelope.lower()
        assert b"geheim" not in envelope
        assert re.search(rb'\(\(NIL NIL "sb-b1" "kunde-b.example"\)\) NIL NIL', envelope), envelope

    # GF-A answers: the reply goes to the back office, but only GF-A's own copy is marked \Answered;
    # the others' copies would tell them somebody they cannot see got the message.
    answer = (
        f"From: {ADDRESS['GF-A']}\r\nTo: {reply_address_of(parsed(gf_a_copy))}\r\nSubject: Re: Blind eins\r\n"
        f"Message-ID: <blind-antwort@kunde-a.example>\r\nIn-Reply-To: <Blind-eins@ams.example>\r\n\r\nOK\r\n"
    ).encode()
    code, text = send_reply(gateway, answer, reply_address_of(parsed(gf_a_copy)), ADDRESS["GF-A"])
    assert code == 250, text
    assert len(sink.wait_for(1)) == 1
    assert wait_until(lambda: answered(database_url, "<Blind-eins@ams.example>") == {ADDRESS["GF-A"]})
    assert wait_until(lambda: gateway.flags_of(ADDRESS["GF-A"], "<Blind-eins@ams.example>") == [ANSWERED])
    for person in ("SB-B1", "SB-B2", "GF-B"):
        assert gateway.flags_of(ADDRESS[person], "<Blind-eins@ams.example>") == [NO_FLAGS], person

    # To SB-A1, Bcc GF-A: GF-B shares a release with GF-A, but does not get the message because of GF-A.
    code, text = submit(
        gateway, bcc_mail(ADDRESS["SB-A1"], "Blind zwei"), [ADDRESS["SB-A1"], ADDRESS["GF-A"]]
    )
    assert code == 250, text
    for person in ("SB-A1", "SB-A2", "GF-A"):
        wait_for_copy(gateway, mailbox_server, person, "Blind zwei")
    for person in ("GF-B", "SB-B1", "SB-B2"):
        assert raw_copies(gateway, mailbox_server, person, "Blind zwei") == [], f"{person} may not see it"
    sb_a2 = wait_for_copy(gateway, mailbox_server, "SB-A2", "Blind zwei")
    assert b"gf-a" not in sb_a2.lower()


# --- one view of a header ---------------------------------------------------------------------------------

FORGED = (
    b"From: Makler Muster <" + BACKOFFICE.encode() + b">\r\n"
    b"From : attacker@evil.example\r\n"
    b"To: " + ADDRESS["SB-A1"].encode() + b"\r\n"
    b"Subject: Kopf eins\r\n"
    b"Message-ID: <kopf-1@ams.example>\r\n"
    b"X-Gateway-Actual-Sender: ceo@bank.example\r\n"
    b"X-Gateway-Loop : elsewhere\r\n"
    b"X-Gateway-Copy-Id: forged-copy\r\n"
    b"X-Gateway-Vorgang: VG-2026-999999\r\n"
    b"Sender : attacker@evil.example\r\n"
    b"this line is no header\r\n"
    b"From: attacker@evil.example\r\n"
    b"Reply-To: attacker@evil.example\r\n"
    b"\r\n"
    b"Text\r\n"
)


def test_a_copy_has_exactly_the_from_reply_to_and_sender_the_gateway_set(
    gateway: RunningGateway, mailbox_server: Dovecot | None, sink: BackOfficeSink
) -> None:
    code, text = submit(gateway, FORGED, [ADDRESS["SB-A1"]])
    assert code == 250, text
    copy = wait_for_copy(gateway, mailbox_server, "SB-A1", "Kopf eins")
    for forged in (b"attacker", b"ceo@", b"elsewhere", b"forged-copy", b"VG-2026-999999"):
        assert forged not in copy, forged
    message = parsed(copy)
    (from_,) = message.get_all("From")
    assert from_.addresses[0].addr_spec.startswith("reply+")  # type: ignore[attr-defined]
    assert message.get_all("Reply-To") == [from_]
    assert message["Sender"] is None
    assert len(message.get_all("X-Gateway-Copy-Id") or []) == 1
    assert str(message["X-Gateway-Vorgang"]).startswith("VG-2026-")
    assert message["X-Gateway-Actual-Sender"] is None
    assert message["X-Gateway-Loop"] is None
    if mailbox_server is not None:
        (envelope,) = envelopes(mailbox_server, "SB-A1", "Kopf eins")
        token = reply_address_of(message).partition("@")[0].encode()
        ours = b'(("Makler Muster" NIL "' + token + b'" "' + REPLY_DOMAIN.encode() + b'"))'
        # from, sender (Dovecot gives From when there is none) and reply-to: the reply address alone.
        assert envelope.count(ours) == 3, envelope
        assert b"attacker" not in envelope

    # The member answers with a forged obsolete From and the gateway's headers; the relayed mail has none.
    answer = (
        b"From: " + ADDRESS["SB-A1"].encode() + b"\r\nFrom : ceo3@bank.example\r\n"
        b"To: " + reply_address_of(message).encode() + b"\r\nSubject: Re: Kopf eins\r\n"
        b"Message-ID: <antwort-1@kunde-a.example>\r\nIn-Reply-To: <kopf-1@ams.example>\r\n"
        b"X-Gateway-Actual-Sender: ceo@bank.example\r\nBcc: geheim@kunde-a.example\r\n\r\nErledigt\r\n"
    )
    code, text = send_reply(gateway, answer, reply_address_of(message), ADDRESS["SB-A1"])
    assert code == 250, text
    (relayed,) = sink.wait_for(1)
    for forged in (b"ceo3", b"ceo@", b"geheim"):
        assert forged not in relayed.data, forged
    out = relayed.message
    assert [a.addr_spec for a in out["From"].addresses] == [ADDRESS["SB-A1"]]  # type: ignore[attr-defined]
    assert out.get_all("X-Gateway-Actual-Sender") == [ADDRESS["SB-A1"]]


# --- trace -------------------------------------------------------------------------------------------------


def test_every_copy_and_every_relayed_mail_carries_our_received_line(
    gateway: RunningGateway, mailbox_server: Dovecot | None, sink: BackOfficeSink
) -> None:
    mail = (
        f"Received: from ams-intern by mail.makler-muster.example; Mon, 7 Dec 2026 04:00:00 +0000\r\n"
        f"From: Makler Muster <{BACKOFFICE}>\r\nTo: {ADDRESS['SB-B1']}\r\nSubject: Spur eins\r\n"
        f"Message-ID: <spur-1@ams.example>\r\n\r\nText\r\n"
    ).encode()
    code, text = submit(gateway, mail, [ADDRESS["SB-B1"]])
    assert code == 250, text
    (gateway_id,) = re.findall(r"gw-[0-9a-f]+", text.decode())
    for person in ("SB-B1", "SB-B2", "GF-B"):
        received = parsed(wait_for_copy(gateway, mailbox_server, person, "Spur eins")).get_all("Received")
        assert len(received) == 2, "ours on top, the back office's kept"
        line = " ".join(str(received[0]).split())
        assert re.fullmatch(
            rf"from ams\.makler-muster\.example \(\[127\.0\.0\.1\]\) by {re.escape(HOSTNAME)} with ESMTPA"
            rf" id {gateway_id} for <{re.escape(ADDRESS[person])}>;"
            r" \w\w\w, \d\d \w\w\w \d{4} [\d:]{8} \+0000",
            line,
        ), line
        assert str(received[1]).startswith("from ams-intern")

    # SB-B2 answers through a member-side server that wrote two trace lines; the relayed mail keeps them
    # under ours (reply token taken out), so its hop count is one more than it came with.
    copy = parsed(wait_for_copy(gateway, mailbox_server, "SB-B2", "Spur eins"))
    token_address = reply_address_of(copy)
    answer = (
        f"Received: from laptop by mx.kunde-b.example for <{token_address}>;"
        " Mon, 7 Dec 2026 05:00:00 +0000\r\n"
        f"Received: from pc by laptop; Mon, 7 Dec 2026 04:59:59 +0000\r\n"
        f"From: {ADDRESS['SB-B2']}\r\nTo: {token_address}\r\nSubject: Re: Spur eins\r\n"
        f"Message-ID: <spur-antwort@kunde-b.example>\r\nIn-Reply-To: <spur-1@ams.example>\r\n\r\nErledigt\r\n"
    ).encode()
    code, text = send_reply(gateway, answer, token_address, ADDRESS["SB-B2"])
    assert code == 250, text
    (relayed,) = sink.wait_for(1)
    trace = [" ".join(str(v).split()) for v in relayed.message.get_all("Received")]
    assert len(trace) == 3
    assert re.fullmatch(
        rf"from mx\.kunde-b\.example \(\[127\.0\.0\.1\]\) by {re.escape(HOSTNAME)} with ESMTP id \S+"
        rf" for <{BACKOFFICE}>; .*",
        trace[0],
    ), trace[0]
    assert trace[1].startswith(f"from laptop by mx.kunde-b.example for <reply@{REPLY_DOMAIN}>")
    assert token_address.encode() not in relayed.data

    # The back office's server sends it straight back in (a forwarding loop): one more trace line of its
    # own, and the gateway's hop limit (3 here) stops it at DATA.
    looped = (
        b"Received: from ams by mail.makler-muster.example; Mon, 7 Dec 2026 05:01:00 +0000\r\n" + relayed.data
    )
    code, text = submit(gateway, looped, [ADDRESS["SB-B1"]])
    assert (code, text[:5]) == (554, b"5.4.6"), text

    # The member-side copies of SB-B2's reply (SB-B1 and GF-B see it) carry the line of the MX hop.
    reply_copy = parsed(wait_for_copy(gateway, mailbox_server, "SB-B1", "Re: Spur eins"))
    first = " ".join(str(reply_copy.get_all("Received")[0]).split())
    assert first.startswith(f"from mx.kunde-b.example ([127.0.0.1]) by {HOSTNAME} with ESMTP id ")
    assert first.split(" for ")[1].startswith(f"<{ADDRESS['SB-B1']}>")
