"""kill -9 in the middle of a burst: every message that got 250 reaches its whole audience exactly once.

Clients keep sending while the gateway is killed and started again; a message that got no 250 may or may
not be stored (its commit can precede the kill), but never half: then it too reaches its whole audience.
The same for the mailboxes' server: Dovecot stopped in the middle of a burst and started again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import smtplib
import threading
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select

from gateway.db.engine import create_engine, session_factory
from gateway.db.models import CopyRow, EventRow, MemberRow, MessageRow
from tests.dovecot import Dovecot
from tests.e2e.conftest import LOGIN, PASSWORD, RunningGateway, free_port, prepare
from tests.seed import ADDRESS, SEEN_BY

MESSAGES = 300
CLIENTS = 4
PEOPLE = sorted(SEEN_BY)


class Sender(threading.Thread):
    """Sends its share of the burst, reconnecting while the gateway is down; notes every 250."""

    def __init__(self, port: int, numbers: list[int], pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.numbers = numbers
        self.pause = pause
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
                    time.sleep(self.pause)
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
    return senders, code, gateway.restarted()


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


def assert_nothing_half_stored(database_url: str, count: int = MESSAGES) -> None:
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
    assert messages == count, "each message stored once, re-sends recognised"
    assert pending == 0
    assert without_copies == []


# --- Dovecot down during a burst --------------------------------------------------------------------------

BURST = 200


def test_dovecot_stopped_during_a_burst_every_copy_arrives_exactly_once(
    tmp_path: Path, database_url: str, dovecot: Dovecot
) -> None:
    """The mailboxes' server goes away for a few seconds while the back office keeps sending.

    The gateway keeps answering 250 (it accepts into its database), retries the copies it could not
    write, and once Dovecot is back every copy is there exactly once: an APPEND that Dovecot stored just
    before it stopped, unanswered, is found by its copy id on the retry rather than written again.
    """
    gateway = prepare(tmp_path, database_url, dovecot=dovecot)
    # Retries at most a second apart, and enough of them that no copy is held during the outage.
    gateway.config.write_text(
        gateway.config.read_text(encoding="utf-8").replace(
            "[fanout]\n", "[fanout]\nretry_max = 1.0\nmax_attempts = 100\n"
        ),
        encoding="utf-8",
    )
    gateway.start()
    started = time.monotonic()
    try:
        # Paced so that the burst goes on while Dovecot is down and after it is back.
        senders = [Sender(gateway.port, list(range(i, BURST, CLIENTS)), pause=0.05) for i in range(CLIENTS)]
        for sender in senders:
            sender.start()
        wait_for_accepted(senders, BURST // 3)
        dovecot.stop()
        stopped_at = accepted(senders)
        time.sleep(3.0)
        down_until = accepted(senders)
        dovecot.start()
        back = dt.datetime.now()
        restarted_at = time.monotonic() - started
        for sender in senders:
            sender.join(timeout=120)
        sent_at = time.monotonic() - started
        assert not any(s.unanswered for s in senders), "no SMTP client saw a failure"
        assert accepted(senders) == BURST
        assert down_until > stopped_at, "the gateway took mail while Dovecot was down"

        audience = {
            f"<burst-{n}@ams.example>": {ADDRESS[p] for p in SEEN_BY[PEOPLE[n % len(PEOPLE)]]}
            for n in range(BURST)
        }
        expected = Counter((a, m) for m, addresses in audience.items() for a in addresses)
        wait_for_copy_count(dovecot, expected.total(), timeout=60)
        print(
            f"Dovecot down {stopped_at}-{down_until} of {BURST} accepted, back at {restarted_at:.1f} s; "
            f"all accepted at {sent_at:.1f} s, all {expected.total()} copies in at "
            f"{time.monotonic() - started:.1f} s"
        )
        gateway.settled()  # a late duplicate would be in its mailbox now

        delivered = delivered_copies(database_url)
        assert len(delivered) == expected.total(), "every copy delivered in the database's view"
        for address in ADDRESS.values():
            counts = dovecot.copy_counts(address)
            theirs = {copy_id for copy_id, owner in delivered.items() if owner == address}
            assert set(counts) == theirs, f"{address}: the copies the gateway delivered, no other"
            assert set(counts.values()) <= {1}, f"{address}: copies twice: {counts - Counter(theirs)}"
        found = Counter(
            (address, str(copy.message["Message-ID"]))
            for address in ADDRESS.values()
            for copy in gateway.stored(address)
        )
        assert found == expected, f"missing {expected - found}, extra {found - expected}"

        # The gateway asks again soon after the server is back: its pool's backoff doubled once per
        # failed round during the outage, not once per connection that was under way when it began.
        again = next((line for line in gateway.log if "reachable again" in line), "")
        assert again, "the gateway said when it reached Dovecot again"
        noticed = dt.datetime.strptime(again[:23], "%Y-%m-%d %H:%M:%S,%f")
        assert (noticed - back).total_seconds() < 10, f"Dovecot back at {back}, noticed: {again}"

        failed, held = copy_events(database_url)
        assert failed > 0, "the outage made deliveries fail (and be retried)"
        assert held == 0
        assert_nothing_half_stored(database_url, BURST)
    finally:
        gateway.stop()
        dovecot.start()  # for the fixture's own stop, should the test have failed while it was down


def accepted(senders: list[Sender]) -> int:
    return sum(len(s.accepted) for s in senders)


def wait_for_accepted(senders: list[Sender], count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while accepted(senders) < count:
        assert time.monotonic() < deadline, f"only {accepted(senders)} of {count} messages accepted"
        time.sleep(0.01)


def wait_for_copy_count(dovecot: Dovecot, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(dovecot.copy_counts(a).total() for a in ADDRESS.values()) >= count:
            return
        time.sleep(0.5)


def delivered_copies(database_url: str) -> dict[str, str]:
    """Copy id -> member address of every delivered copy."""

    async def read() -> dict[str, str]:
        engine = create_engine(database_url)
        try:
            async with session_factory(engine)() as session:
                rows = await session.execute(
                    select(CopyRow.copy_id, MemberRow.address)
                    .join(MemberRow, MemberRow.id == CopyRow.member_id)
                    .where(CopyRow.state == "delivered")
                )
                return {row.copy_id: row.address for row in rows}
        finally:
            await engine.dispose()

    return asyncio.run(read())


def copy_events(database_url: str) -> tuple[int, int]:
    """How many copy.failed and copy.held events the fan-out recorded."""

    async def read() -> tuple[int, int]:
        engine = create_engine(database_url)
        try:
            async with session_factory(engine)() as session:
                counts = dict(
                    (
                        await session.execute(
                            select(EventRow.kind, func.count())
                            .where(EventRow.kind.in_(["copy.failed", "copy.held"]))
                            .group_by(EventRow.kind)
                        )
                    ).all()
                )
                return int(counts.get("copy.failed", 0)), int(counts.get("copy.held", 0))
        finally:
            await engine.dispose()

    return asyncio.run(read())
