"""Read notifications end to end: a real ``gateway serve``, the back office writing with smtplib and
asking for a notification, members reading in their mail clients (a Maildir rename to ``:2,S``), and
the back office's SMTP server (an aiosmtpd sink) receiving exactly one RFC 8098 MDN from <>.
"""

from __future__ import annotations

import os
import re
import smtplib
import time
from collections.abc import Iterator
from email.message import EmailMessage, Message
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from gateway.db.models import EventRow
from gateway.db.writer import sync_url
from tests.conftest import EXAMPLE_DIRECTORY
from tests.e2e.conftest import LOGIN, PASSWORD, PORTFOLIO, BackOfficeSink, RunningGateway, prepare
from tests.seed import ADDRESS

BACKOFFICE = "ams@makler-muster.example"
HOSTNAME = "gateway.test.example"  # [gateway] hostname of the configuration prepare() writes


@pytest.fixture
def gateway(tmp_path: Path, database_url: str, sink: BackOfficeSink) -> Iterator[RunningGateway]:
    running = prepare(tmp_path, database_url)
    # The seed's directory with the back office's relay pointed at the sink.
    directory = tmp_path / "directory.yaml"
    directory.write_text(
        EXAMPLE_DIRECTORY.read_text(encoding="utf-8").replace("port: 2526", f"port: {sink.port}"),
        encoding="utf-8",
    )
    running.cli("directory", "load", str(directory))
    running.start()
    yield running
    if running.process is not None and running.process.poll() is None:
        running.stop()
    print("".join(running.log))  # shown by pytest when the test failed


def send_asking(gateway: RunningGateway, subject: str, message_id: str) -> None:
    """The back office's mail to SB-B1, asking for a read notification at its own address."""
    message = EmailMessage()
    message["From"] = f"Makler Muster <{BACKOFFICE}>"
    message["To"] = f"SB-B1 <{ADDRESS['SB-B1']}>"
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message["Disposition-Notification-To"] = f"Makler Muster <{BACKOFFICE}>"
    message.set_content("Bitte bestätigen Sie den Eingang.\n")
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.login(LOGIN, PASSWORD)
        client.send_message(message)  # MAIL FROM:<ams@makler-muster.example>, the DNT address


def copy_file(gateway: RunningGateway, person: str, message_id: str, timeout: float = 20) -> Path:
    """The file of ``person``'s copy of the message in their Maildir, once the fan-out wrote it."""
    home = gateway.maildir_root / PORTFOLIO / ADDRESS[person]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in home.rglob("*") if home.exists() else ():
            if (
                path.is_file()
                and path.parent.name in ("new", "cur")
                and message_id.encode() in path.read_bytes()
            ):
                return path
        time.sleep(0.05)
    raise AssertionError(f"no copy of {message_id} for {person}")


def client_reads(path: Path) -> None:
    """What a mail client does when its member opens the message: cur/ with the Seen letter."""
    base = path.name.partition(":")[0]
    os.rename(path, path.parent.parent / "cur" / f"{base}:2,S")


def seen_by(database_url: str) -> list[object]:
    """Who the gateway has recorded setting \\Seen on their own copy, in order."""
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            # One query: the gateway goes on recording while the test reads.
            rows = connection.execute(
                select(EventRow.actor, EventRow.detail)
                .where(EventRow.kind == "flag.set")
                .order_by(EventRow.id)
            )
            return [actor for actor, detail in rows if detail["flag"] == "\\Seen"]
    finally:
        engine.dispose()


def wait_until(condition: object, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(condition())  # type: ignore[operator]


def test_the_first_reader_sends_the_back_office_one_notification(
    gateway: RunningGateway, sink: BackOfficeSink, database_url: str
) -> None:
    original = "<lesebestaetigung-1@ams.example>"
    send_asking(gateway, "Eingang bestätigen", original)
    first = copy_file(gateway, "SB-B1", original)
    second = copy_file(gateway, "SB-B2", original)
    copy_file(gateway, "GF-B", original)
    # The behaviour under test is an absence over time: flag sync looks at the mailboxes (every second
    # by default) and finds nothing read, so no notification is queued; no queue shows that look.
    time.sleep(1.5)
    assert sink.received == [], "no notification before anybody read the mail"

    client_reads(first)
    (received,) = sink.wait_for(1)
    assert received.mail_from == "<>", "RFC 8098 §3: MAIL FROM:<> (aiosmtpd keeps it as <>)"
    assert received.rcpt_tos == [BACKOFFICE]
    mdn = received.message
    assert mdn.get_content_type() == "multipart/report"
    assert mdn.get_param("report-type") == "disposition-notification"
    assert mdn["To"] == BACKOFFICE
    assert mdn["From"].addresses[0].addr_spec == ADDRESS["SB-B1"]
    assert mdn["From"].addresses[0].display_name == "SB-B1"
    assert str(mdn["Subject"]) == "Gelesen / Read: Eingang bestätigen"
    assert mdn["In-Reply-To"] == original
    assert mdn["Auto-Submitted"] == "auto-replied"
    text, report, headers = mdn.get_payload()  # type: ignore[misc]
    assert f"SB-B1 <{ADDRESS['SB-B1']}>" in text.get_content()
    assert report.get_content_type() == "message/disposition-notification"
    (fields,) = report.get_payload()
    assert isinstance(fields, Message)
    assert {k.lower(): str(v) for k, v in fields.items()} == {
        "reporting-ua": f"{HOSTNAME}; vorgang-gateway",
        "original-recipient": f"rfc822;{ADDRESS['SB-B1']}",
        "final-recipient": f"rfc822;{ADDRESS['SB-B1']}",
        "original-message-id": original,
        "disposition": "manual-action/MDN-sent-automatically; displayed",
    }
    assert headers.get_content_type() == "text/rfc822-headers"
    assert re.search(r"^Disposition-Notification-To: ", str(headers.get_payload()), re.M)

    # SB-B2 reads it too: recorded as SB-B2's read, and nothing more reaches the back office.
    client_reads(second)
    assert wait_until(
        lambda: seen_by(database_url) == [f"member:{ADDRESS['SB-B1']}", f"member:{ADDRESS['SB-B2']}"]
    )
    gateway.settled()  # a second notification would have reached the back office now
    assert len(sink.received) == 1, [r.message["Subject"] for r in sink.received]


def test_a_mail_that_did_not_ask_gets_no_notification(
    gateway: RunningGateway, sink: BackOfficeSink, database_url: str
) -> None:
    message = EmailMessage()
    message["From"] = f"Makler Muster <{BACKOFFICE}>"
    message["To"] = ADDRESS["SB-B1"]
    message["Subject"] = "Ohne Lesebestätigung"
    message["Message-ID"] = "<ohne-1@ams.example>"
    message.set_content("Zur Kenntnis.\n")
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.login(LOGIN, PASSWORD)
        client.send_message(message)
    client_reads(copy_file(gateway, "SB-B1", "<ohne-1@ams.example>"))
    assert wait_until(lambda: seen_by(database_url) == [f"member:{ADDRESS['SB-B1']}"])
    gateway.settled()  # a notification would have reached the back office now
    assert sink.received == []
