"""kill -9 in the middle of a burst: every message that got 250 reaches its whole audience exactly once.

Clients keep sending while the gateway is killed and started again; a message that got no 250 may or may
not be stored (its commit can precede the kill), but never half: then it too reaches its whole audience.
"""

from __future__ import annotations

import asyncio
import signal
import smtplib
import threading
import time
from pathlib import Path

from sqlalchemy import func, select

from gateway.db.engine import create_engine, session_factory
from gateway.db.models import CopyRow, MessageRow
from tests.e2e.conftest import LOGIN, PASSWORD, RunningGateway, free_port, prepare
from tests.seed import ADDRESS, SEEN_BY

MESSAGES = 300
CLIENTS = 4
PEOPLE = sorted(SEEN_BY)


class Sender(threading.Thread):
    """Sends its share of the burst, reconnecting while the gateway is down; notes every 250."""

    def __init__(self, port: int, numbers: list[int]) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.numbers = numbers
        self.accepted: set[int] = set()
        self.unanswered: set[int] = set()

    def run(self) -> None:
        client: smtplib.SMTP | None = None
        deadline = time.monotonic() + 120
        for number in self.numbers:
            while time.monotonic() < deadline:
                try:
                    if client is None:
                        client = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
                        client.login(LOGIN, PASSWORD)
                    person = PEOPLE[number % len(PEOPLE)]
                    client.sendmail(LOGIN, [ADDRESS[person]], message(number, person))
                    self.accepted.add(number)
                    break
                except (OSError, smtplib.SMTPException):
                    # No 250: the message may or may not have been committed before the kill.
                    self.unanswered.add(number)
                    if client is not None:
                        client.close()
                    client = None
                    time.sleep(0.2)
        if client is not None:
            client.quit()


def message(number: int, person: str) -> bytes:
    return (
        f"From: ams@makler-muster.example\r\nTo: {ADDRESS[person]}\r\nSubject: burst {number:04d}\r\n"
        f"Message-ID: <burst-{number}@ams.example>\r\n\r\nNachricht {number}\r\n"
    ).encode()


def stop_during_a_burst(
    tmp_path: Path, database_url: str, sig: int
) -> tuple[list[Sender], int, RunningGateway]:
    """Start a gateway and the senders, stop it with ``sig`` a third of the way in, start it again."""
    port = free_port()
    gateway = prepare(tmp_path, database_url)
    gateway.config.write_text(
        gateway.config.read_text(encoding="utf-8").replace(
            "[listeners.submission]\nport = 0", f"[listeners.submission]\nport = {port}"
        ),
        encoding="utf-8",
    )
    gateway.start()
    senders = [Sender(port, list(range(i, MESSAGES, CLIENTS))) for i in range(CLIENTS)]
    for sender in senders:
        sender.start()
    while sum(len(s.accepted) for s in senders) < MESSAGES // 3:
        time.sleep(0.01)
    code = gateway.stop(sig)
    assert sig != signal.SIGTERM or any("gateway stopped" in line for line in gateway.log)
    time.sleep(0.5)
    restarted = RunningGateway(gateway.config, gateway.maildir_root, gateway.cli)
    restarted.start()
    return senders, code, restarted


def assert_every_message_reached_its_audience(
    senders: list[Sender], gateway: RunningGateway, database_url: str
) -> None:
    for sender in senders:
        sender.join(timeout=150)
    accepted = set().union(*(s.accepted for s in senders))
    assert len(accepted) == MESSAGES, "every message got its 250 in the end (resent after the restart)"
    expected = sum(len(SEEN_BY[PEOPLE[n % len(PEOPLE)]]) for n in range(MESSAGES))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and count_files(gateway.maildir_root) < expected:
        time.sleep(0.2)
    time.sleep(0.5)
    files = copies_by_subject(gateway.maildir_root)
    for number in range(MESSAGES):
        person = PEOPLE[number % len(PEOPLE)]
        holders = files.get(f"burst {number:04d}", [])
        assert sorted(holders) == sorted(ADDRESS[p] for p in SEEN_BY[person]), (
            f"message {number} to {person}: copies in {holders}"
        )
    assert_nothing_half_stored(database_url)


def test_kill_9_during_a_burst(tmp_path: Path, database_url: str) -> None:
    senders, code, restarted = stop_during_a_burst(tmp_path, database_url, signal.SIGKILL)
    try:
        assert code == -signal.SIGKILL
        assert_every_message_reached_its_audience(senders, restarted, database_url)
        interrupted = set().union(*(s.unanswered for s in senders))
        assert interrupted, "the kill interrupted messages in flight (the clients never pause)"
        print(f"{len(interrupted)} message(s) got no answer during the kill and were sent again")
    finally:
        restarted.stop()


def test_sigterm_during_a_burst_stops_cleanly(tmp_path: Path, database_url: str) -> None:
    """SIGTERM: stop taking mail, finish what is in flight, exit 0; nothing that got 250 is lost."""
    senders, code, restarted = stop_during_a_burst(tmp_path, database_url, signal.SIGTERM)
    try:
        assert code == 0, "a clean stop exits 0"
        assert_every_message_reached_its_audience(senders, restarted, database_url)
    finally:
        restarted.stop()


def count_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file() and p.parent.name in ("new", "cur"))


def copies_by_subject(root: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if path.is_file() and path.parent.name in ("new", "cur"):
            for line in path.read_bytes().split(b"\r\n"):
                if line.startswith(b"Subject: "):
                    subject = line.decode().split("] ", 1)[-1]
                    member = path.parent.parent.name
                    found.setdefault(subject, []).append(member)
                    break
    return found


def assert_nothing_half_stored(database_url: str) -> None:
    async def check() -> tuple[int, int, list[int]]:
        engine = create_engine(database_url)
        try:
            async with session_factory(engine)() as session:
                messages = await session.scalar(select(func.count()).select_from(MessageRow))
                pending = await session.scalar(
                    select(func.count()).select_from(CopyRow).where(CopyRow.state != "delivered")
                )
                without_copies = list(
                    await session.scalars(
                        select(MessageRow.id).where(~MessageRow.id.in_(select(CopyRow.message_id)))
                    )
                )
                return int(messages or 0), int(pending or 0), without_copies
        finally:
            await engine.dispose()

    messages, pending, without_copies = asyncio.run(check())
    assert messages == MESSAGES, "each message stored once, re-sends recognised"
    assert pending == 0
    assert without_copies == []
