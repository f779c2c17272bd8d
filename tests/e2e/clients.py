"""What the end-to-end tests do as the gateway's clients: the back office submitting, members replying
from their mail clients, an attacker's bounce; and how they read back what the gateway stored.

Shared by the test modules (which used to copy them from one another) and importable by bench/.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
import time
import uuid
from email.encoders import encode_quopri
from email.message import EmailMessage, Message
from pathlib import Path

from sqlalchemy import select

from gateway.db.engine import create_engine, session_factory
from gateway.db.models import MessageRow
from tests import corpora
from tests.e2e.conftest import LOGIN, PASSWORD, REPLY_DOMAIN, RunningGateway
from tests.seed import ADDRESS

BACKOFFICE = "ams@makler-muster.example"
SB_A1 = ADDRESS["SB-A1"]
CORPUS_REPLIES = "client-replies/talon/standard_replies"
ANSWERED = frozenset({"\\Answered"})
NO_FLAGS: frozenset[str] = frozenset()


def corpus() -> Path:
    """The mail corpora; a test without them is skipped, or fails where they are required."""
    return corpora.folder()


def smtp(gateway: RunningGateway) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", gateway.port, timeout=30)
    client.ehlo("ams.makler-muster.example")
    client.login(LOGIN, PASSWORD)
    return client


def login(gateway: RunningGateway) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", gateway.port, timeout=30)
    client.ehlo("ams.example")
    client.login(LOGIN, PASSWORD)
    return client


def message(to: str, subject: str, **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "AMS Makler Muster <ams@makler-muster.example>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@ams.makler-muster.example>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Sehr geehrte Damen und Herren,\n\nanbei die Unterlagen.\n")
    return msg


def raw_message(subject: bytes, body: bytes = b"Text\r\n", extra: bytes = b"") -> bytes:
    return (
        b"From: ams@makler-muster.example\r\nTo: " + SB_A1.encode() + b"\r\nSubject: " + subject + b"\r\n"
        b"Message-ID: <" + uuid.uuid4().hex.encode() + b"@ams.example>\r\n" + extra + b"\r\n" + body
    )


def send_raw(client: smtplib.SMTP, data: bytes, to: str = SB_A1) -> tuple[int, bytes]:
    """Send DATA bytes exactly as given (smtplib would fix line endings); data must end in CRLF.CRLF."""
    client.mail(LOGIN)
    client.rcpt(to)
    client.putcmd("data")
    code, _ = client.getreply()
    assert code == 354
    assert client.sock is not None
    client.sock.sendall(data)
    return client.getreply()


def send_from_backoffice(gateway: RunningGateway, to: str, subject: str, message_id: str) -> None:
    message = EmailMessage()
    message["From"] = f"Makler Muster <{BACKOFFICE}>"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message.set_content("Bitte senden Sie uns die Schadenfotos.\n")
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.login(LOGIN, PASSWORD)
        client.send_message(message)


def copy_for(gateway: RunningGateway, person: str, marker: str) -> EmailMessage:
    copies = gateway.wait_for_copies(marker, 1)
    found = [m for m in copies.get(ADDRESS[person], []) if m["X-Gateway-Copy-Id"]]
    assert found, f"no copy for {person}: {sorted(copies)}"
    return found[0]


def client_reply(client: str, *, author: str, copy: EmailMessage, subject: str) -> bytes:
    """A reply as ``client`` writes it (its MIME structure and body), answering ``copy`` as ``author``."""
    sample = (corpus() / CORPUS_REPLIES / f"{client}.eml").read_bytes()
    message: Message = email.message_from_bytes(sample, policy=email.policy.compat32)
    for name in (
        "From",
        "To",
        "Cc",
        "Subject",
        "Message-ID",
        "In-Reply-To",
        "References",
        "Sender",
        "Reply-To",
    ):
        del message[name]
    message["From"] = f"Sachbearbeiter <{author}>"
    message["To"] = str(copy["Reply-To"])
    message["Subject"] = f"Re: {copy['Subject']}"
    message["Message-ID"] = f"<{client}-{time.monotonic_ns()}@kunde-b.example>"
    message["In-Reply-To"] = str(copy["Message-ID"])
    message["References"] = str(copy["References"])
    raw = message.as_bytes()
    if max(len(line) for line in raw.splitlines()) > 998:
        # The saved Outlook sample has a 1,523-character HTML line; over SMTP (at most 998) Outlook
        # sends such a part quoted-printable, as we do here.
        for part in message.walk():
            if not part.is_multipart():
                payload = part.get_payload(decode=True)
                del part["Content-Transfer-Encoding"]
                part.set_payload(payload)
                encode_quopri(part)
        raw = message.as_bytes()
    return raw


def send_reply(gateway: RunningGateway, raw: bytes, to: str, sender: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", gateway.mx_port, timeout=10) as client:
        client.ehlo("mx.kunde-b.example")
        client.mail(sender)
        code, text = client.rcpt(to)
        if code != 250:
            return code, text
        return client.data(raw)


def reply_address_of(copy: EmailMessage) -> str:
    (address,) = copy["Reply-To"].addresses
    return address.addr_spec


def flags_of(gateway: RunningGateway, person: str, message_id: str) -> list[frozenset[str]]:
    """The flags of every copy of the message ``message_id`` in ``person``'s mailbox."""
    return gateway.flags_of(ADDRESS[person], message_id)


def wait_until(condition: object, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(condition())  # type: ignore[operator]


def stored(database_url: str) -> list[MessageRow]:
    async def load() -> list[MessageRow]:
        engine = create_engine(database_url)
        try:
            async with session_factory(engine)() as session:
                return list(await session.scalars(select(MessageRow).order_by(MessageRow.id)))
        finally:
            await engine.dispose()

    return asyncio.run(load())


def events_of(database_url: str, kind: str) -> list[dict[str, object]]:
    """The event log's entries of ``kind``, read straight from the database."""
    from sqlalchemy import create_engine, select

    from gateway.db.models import EventRow
    from gateway.db.writer import sync_url

    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(EventRow.detail).where(EventRow.kind == kind).order_by(EventRow.id)
            )
            return [dict(detail) for (detail,) in rows]
    finally:
        engine.dispose()


def slow_bounce(size: int = 256 * 1024, depth: int = 600) -> bytes:
    """A delivery report as an attacker writes it: multiparts nested ``depth`` deep, then short parts.

    Python's parser tests every line against the boundary of every enclosing multipart, so the nesting
    makes each line costly to parse while it stays cheap to receive.
    """
    head = (
        b"From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@" + REPLY_DOMAIN.encode() + b"\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        b"Message-ID: <" + uuid.uuid4().hex.encode() + b"@mx.example.net>\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b0"\r\n\r\n'
    )
    nesting = b"".join(
        b'--b%d\r\nContent-Type: multipart/mixed; boundary="b%d"\r\n\r\n' % (level, level + 1)
        for level in range(depth)
    )
    part = b"--b%d\r\n\r\n%s\r\n" % (depth, b"x" * 60)
    parts = part * max(1, (size - len(head) - len(nesting)) // len(part))
    return head + nesting + parts + b"--b%d--\r\n" % depth
