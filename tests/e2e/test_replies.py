"""The reply path end to end: the seed's flow with real clients, refusals, the relay queue, not-answers.

The gateway runs as ``gateway serve``; the back office writes with smtplib; members answer with mails that
real clients built (Thunderbird, Outlook and Apple Mail replies from the talon corpus, readdressed); the
back office's SMTP server is an aiosmtpd sink.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import smtplib
import time
from email.encoders import encode_quopri
from email.message import EmailMessage, Message
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_DIRECTORY
from tests.e2e.conftest import (
    LOGIN,
    PASSWORD,
    PORTFOLIO,
    REPLY_DOMAIN,
    BackOfficeSink,
    RunningGateway,
    prepare,
)
from tests.seed import ADDRESS

BACKOFFICE = "ams@makler-muster.example"
CORPUS_REPLIES = "client-replies/talon/standard_replies"


def corpus() -> Path:
    folder = os.environ.get("GATEWAY_TEST_CORPORA")
    assert folder, "GATEWAY_TEST_CORPORA names the mail corpora (make test and .ci/run set it)"
    return Path(folder)


def configure(
    gateway: RunningGateway, sink: BackOfficeSink, tmp_path: Path, ams_version: str = "4.8.0.64470"
) -> None:
    """The example directory with the back office's relay pointed at the sink, at this ams version."""
    text = EXAMPLE_DIRECTORY.read_text(encoding="utf-8")
    text = text.replace("port: 2526", f"port: {sink.port}")
    text = re.sub(r"ams_version: [\d.]+", f"ams_version: {ams_version}", text)
    directory = tmp_path / "directory.yaml"
    directory.write_text(text, encoding="utf-8")
    gateway.cli("directory", "load", str(directory))


@pytest.fixture
def gateway(tmp_path: Path, database_url: str, sink: BackOfficeSink) -> RunningGateway:
    running = prepare(tmp_path, database_url)
    configure(running, sink, tmp_path)
    running.start()
    yield running  # type: ignore[misc]
    if running.process is not None and running.process.poll() is None:
        running.stop()


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


def flags_of(gateway: RunningGateway, person: str, message_id: str) -> list[str]:
    """The Maildir flag letters of every copy of the message ``message_id`` in ``person``'s mailbox."""
    root = gateway.maildir_root / PORTFOLIO / ADDRESS[person]
    line = f"\nMessage-ID: {message_id}\r\n".encode()
    letters = []
    for path in root.rglob("*"):
        if path.is_file() and path.parent.name in ("new", "cur") and line in path.read_bytes():
            letters.append(path.name.partition(":2,")[2])
    return letters


def wait_until(condition: object, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(condition())  # type: ignore[operator]


@pytest.mark.parametrize("client", ["thunderbird", "outlook", "apple_mail"])
def test_the_seeds_flow(gateway: RunningGateway, sink: BackOfficeSink, client: str) -> None:
    marker = f"Schaden {client}"
    send_from_backoffice(gateway, ADDRESS["SB-B1"], marker, f"<orig-{client}@ams.example>")
    copy = copy_for(gateway, "SB-B2", marker)
    assert reply_address_of(copy).startswith("reply+")
    assert reply_address_of(copy).endswith("@" + REPLY_DOMAIN)
    (shown,) = copy["From"].addresses
    assert shown.addr_spec == reply_address_of(copy), "From is the reply address too"
    assert shown.display_name == "Makler Muster", "with the original display name"
    assert copy["X-Gateway-Original-From"] == f"Makler Muster <{BACKOFFICE}>"
    assert f"@{REPLY_DOMAIN}>" in str(copy["References"]), "the token as a message id"

    raw = client_reply(client, author=ADDRESS["SB-B2"], copy=copy, subject=marker)
    code, text = send_reply(gateway, raw, reply_address_of(copy), ADDRESS["SB-B2"])
    assert code == 250, text

    (relayed,) = sink.wait_for(1)
    assert relayed.rcpt_tos == [BACKOFFICE]
    message = relayed.message
    assert message["From"].addresses[0].addr_spec == ADDRESS["SB-B2"]
    assert message["X-Gateway-Actual-Sender"] == ADDRESS["SB-B2"]
    assert message["In-Reply-To"] == f"<orig-{client}@ams.example>"
    assert f"<orig-{client}@ams.example>" in str(message["References"])
    assert REPLY_DOMAIN.encode() not in relayed.data, "no reply address or token reaches the back office"
    assert re.fullmatch(r"VG-\d{4}-\d{6}", str(message["X-Gateway-Vorgang"]))
    assert message["To"] == BACKOFFICE

    original = f"<orig-{client}@ams.example>"
    for person in ("SB-B1", "SB-B2", "GF-B"):
        assert wait_until(lambda p=person: flags_of(gateway, p, original) == ["R"]), (
            f"{person}: {flags_of(gateway, person, original)}"
        )
    reply_copies = gateway.wait_for_copies("Re: [", 2)
    holders = sorted(
        address for address, found in reply_copies.items() for m in found if marker in str(m["Subject"])
    )
    assert holders == sorted([ADDRESS["SB-B1"], ADDRESS["GF-B"]]), "the reply reaches SB-B1 and GF-B"


@pytest.mark.parametrize(
    ("ams_version", "expected_from"), [("4.8.0.64469", "SB-B1"), ("4.8.0.64470", "SB-B2")]
)
def test_legacy_ams_gets_the_original_participant_as_from(
    tmp_path: Path, database_url: str, sink: BackOfficeSink, ams_version: str, expected_from: str
) -> None:
    gateway = prepare(tmp_path, database_url)
    configure(gateway, sink, tmp_path, ams_version=ams_version)
    gateway.start()
    try:
        send_from_backoffice(gateway, ADDRESS["SB-B1"], "Legacy", "<legacy@ams.example>")
        copy = copy_for(gateway, "SB-B2", "Legacy")
        raw = client_reply("thunderbird", author=ADDRESS["SB-B2"], copy=copy, subject="Legacy")
        code, text = send_reply(gateway, raw, reply_address_of(copy), ADDRESS["SB-B2"])
        assert code == 250, text
        (relayed,) = sink.wait_for(1)
        assert relayed.message["From"].addresses[0].addr_spec == ADDRESS[expected_from]
        assert relayed.message["X-Gateway-Actual-Sender"] == ADDRESS["SB-B2"]
    finally:
        gateway.stop()
