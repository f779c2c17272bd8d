"""Flag sync on Maildir and IMAP, on SQLite and PostgreSQL: a member's flag reaches co-members per read_sync.

The member's mail client is played by renaming Maildir files as clients do (``cur/NAME:2,S``); the
fan-out then writes the propagated flags. The seed's release "Kunde B Sachbearbeiter" (SB-B1, SB-B2)
and "Kunde B mit GF" (SB-B1, SB-B2, GF-B) carry a message to SB-B1 to all three.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from gateway.config import FanoutSettings, FlagSyncSettings
from gateway.db.models import CopyRow, EventRow, MemberRow, MessageRow, ReleaseRow
from gateway.db.queue import CopyJob
from gateway.db.writer import Writer
from gateway.mailbox import Mailbox, MailboxOwner, MaildirMailbox
from gateway.mailbox.imap import ImapMailbox
from gateway.stages.acceptance import HandOff
from gateway.stages.fanout import FanOut
from gateway.stages.flagsync import FlagSync, ReadNotifications
from tests.dovecot import Dovecot
from tests.stages.conftest import PORTFOLIO, accept

SB_B1, SB_B2, GF_B = "sb-b1@kunde-b.example", "sb-b2@kunde-b.example", "gf-b@kunde-b.example"
NOTIFICATIONS = ReadNotifications(hostname="gw.example", lifetime=3600)


class World:
    def __init__(self, writer: Writer, root: Path, mailbox: Mailbox | None = None) -> None:
        self.writer = writer
        self.maildir = MaildirMailbox(root)
        self.mailbox: Mailbox = mailbox or self.maildir
        self.fanout = FanOut(
            writer,
            self.mailbox,
            FanoutSettings(),
            node="n1",
            vorgang_header="X-Gateway-Vorgang",
            tag_subject=True,
        )
        self.flagsync = FlagSync(
            writer, self.mailbox, FlagSyncSettings(), node="n1", notifications=NOTIFICATIONS
        )
        self.jobs: list[CopyJob] = []

    async def deliver(self, subject: str) -> None:
        await accept(
            self.writer, SB_B1, subject, f"<{subject}@ams.example>", HandOff("n1", 60, self.jobs.extend)
        )
        self.fanout.take(self.jobs)
        await self.fanout.run_once()

    def files(self, address: str) -> list[Path]:
        root = self.maildir.maildir_path(MailboxOwner(PORTFOLIO, address))
        return [p for p in root.rglob("*") if p.is_file() and p.parent.name in ("new", "cur")]

    def letters(self, address: str) -> str:
        (path,) = self.files(address)
        return path.name.partition(":2,")[2]

    def client_sets(self, address: str, letters: str) -> None:
        """What a mail client does to mark the copy: move it to cur/ with the flag letters in its name."""
        (path,) = self.files(address)
        base = path.name.partition(":")[0]
        os.rename(path, path.parent.parent / "cur" / f"{base}:2,{letters}")

    def client_moves(self, address: str, folder: str) -> None:
        (path,) = self.files(address)
        target = self.maildir.maildir_path(MailboxOwner(PORTFOLIO, address)) / f".{folder}"
        for sub in ("cur", "new", "tmp"):
            (target / sub).mkdir(parents=True, exist_ok=True)
        os.rename(path, target / "cur" / path.name)

    async def sync(self) -> int:
        propagated = await self.flagsync.run_once()
        self.fanout._claimed["flags"] = 0.0  # let the next run look for flags to write at once
        await self.fanout.run_once()
        return propagated

    async def events(self, kind: str) -> list[dict[str, object]]:
        rows = await self.writer.run(
            lambda c: list(
                c.scalars(select(EventRow.detail).where(EventRow.kind == kind).order_by(EventRow.id))
            )
        )
        return [dict(r) for r in rows]


@pytest.fixture
async def world(writer: Writer, tmp_path: Path) -> World:
    return World(writer, tmp_path / "mail")


async def read_sync(writer: Writer, value: str) -> None:
    await writer.run(lambda c: c.execute(update(ReleaseRow).values(read_sync=value)))


async def test_seen_reaches_co_members_also_in_another_folder(world: World) -> None:
    await read_sync(world.writer, "seen")
    await world.deliver("Seen")
    world.client_moves(GF_B, "Archiv")  # GF-B filed it away before anyone read it
    world.client_sets(SB_B1, "S")

    assert await world.sync() == 2
    assert world.letters(SB_B2) == "S"
    assert world.letters(GF_B) == "S"
    assert world.files(GF_B)[0].parent.parent.name == ".Archiv", "flagged where the member put it"
    (propagated_to_b2, propagated_to_gf) = await world.events("flag.propagated")
    assert {propagated_to_b2["from"], propagated_to_gf["from"]} == {SB_B1}

    assert await world.sync() == 0, "the gateway's own flags are not taken for members' actions (no echo)"
    assert len(await world.events("flag.set")) == 1


async def test_answered_shares_only_answered(world: World) -> None:
    await read_sync(world.writer, "answered")
    await world.deliver("Answered")
    world.client_sets(SB_B1, "S")
    assert await world.sync() == 0
    assert (world.letters(SB_B2), world.letters(GF_B)) == ("", "")
    world.client_sets(SB_B1, "RS")
    assert await world.sync() == 2
    assert (world.letters(SB_B2), world.letters(GF_B)) == ("R", "R")


async def test_off_shares_nothing(world: World) -> None:
    await read_sync(world.writer, "off")
    await world.deliver("Off")
    world.client_sets(SB_B1, "RS")
    assert await world.sync() == 0
    assert (world.letters(SB_B2), world.letters(GF_B)) == ("", "")
    assert len(await world.events("flag.set")) == 2, "still recorded for the member's own copy"


async def test_clearing_stays_local_and_a_second_read_counts_again(world: World) -> None:
    await read_sync(world.writer, "seen")
    await world.deliver("Clear")
    world.client_sets(SB_B1, "S")
    await world.sync()
    world.client_sets(SB_B1, "")  # SB-B1 marks it unread again
    assert await world.sync() == 0
    assert world.letters(SB_B2) == "S", "clearing is not propagated"
    assert [e["flag"] for e in await world.events("flag.cleared")] == ["\\Seen"]
    rows = await world.writer.run(
        lambda c: {r.member_id: r.seen for r in c.execute(select(CopyRow.member_id, CopyRow.seen))}
    )
    assert sorted(rows.values()) == [False, True, True]


# --- IMAP: polling plus IDLE on every mailbox, readers first -------------------------------------------


async def imap_world(writer: Writer, tmp_path: Path, dovecot: Dovecot, settings: FlagSyncSettings) -> World:
    for address in (SB_B1, SB_B2, GF_B):
        dovecot.add_user(address)
    imap = ImapMailbox.from_settings(dovecot.imap_settings(), timeout=5)
    world = World(writer, tmp_path / "mail", imap)
    world.flagsync = FlagSync(writer, imap, settings, node="n1", notifications=NOTIFICATIONS)
    return world


async def test_every_mailbox_is_watched_so_a_first_flag_travels_before_the_next_poll(
    writer: Writer, tmp_path: Path, dovecot: Dovecot
) -> None:
    """The poll interval is five minutes here and the first poll finds nothing: SB-B1's first read
    reaches the co-members only because the watcher holds IDLE on every mailbox with copies
    (``idle_all``), not only on those of members a poll found reading."""
    world = await imap_world(writer, tmp_path, dovecot, FlagSyncSettings(poll_interval=300, idle_refresh=2))
    watching = None
    try:
        await read_sync(writer, "seen")
        await world.deliver("Erste")
        first = await copy_of(writer, SB_B1, "Erste")
        watching = asyncio.create_task(world.flagsync.run())  # its first look is the poll
        everyone = {MailboxOwner(PORTFOLIO, address) for address in (SB_B1, SB_B2, GF_B)}
        assert await until(lambda: world.flagsync.watched_closely == everyone, 30)
        assert await seen_count(writer) == 0
        await asyncio.sleep(0.5)  # the watches' IDLE is under way (a change before it is the poll's)

        await asyncio.to_thread(dovecot.member_stores, SB_B1, first, "+FLAGS", "(\\Seen)")
        # A generous bound for a loaded machine, far before the next poll (300 s): so through IDLE.
        assert await until(lambda: seen_count_now(writer, 3), 30), "propagated before the next poll"
    finally:
        if watching is not None:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
        await world.mailbox.close()
    assert not world.flagsync.watched_closely, "the watches end with the watcher"


async def test_beyond_idle_mailboxes_the_readers_get_the_watches(
    writer: Writer, tmp_path: Path, dovecot: Dovecot
) -> None:
    """Three mailboxes, two watches: one mailbox is only polled until its member reads; then that member
    has a watch (another mailbox makes room) and their next read travels through IDLE."""
    settings = FlagSyncSettings(poll_interval=300, idle_refresh=2, idle_mailboxes=2)
    world = await imap_world(writer, tmp_path, dovecot, settings)
    watching = None
    try:
        await read_sync(writer, "seen")
        await world.deliver("Erste")
        await world.deliver("Zweite")
        watching = asyncio.create_task(world.flagsync.run())
        assert await until(lambda: len(world.flagsync.watched_closely) == 2, 30)
        await asyncio.sleep(1.0)  # a third watch would have started by now
        assert len(world.flagsync.watched_closely) == 2, "never more watches than idle_mailboxes"
        (polled,) = {SB_B1, SB_B2, GF_B} - {owner.address for owner in world.flagsync.watched_closely}

        first = await copy_of(writer, polled, "Erste")
        await asyncio.to_thread(dovecot.member_stores, polled, first, "+FLAGS", "(\\Seen)")
        await world.flagsync.run_once()  # the poll finds it (the watches cannot: no IDLE there)
        assert await seen_count(writer) == 3
        assert MailboxOwner(PORTFOLIO, polled) in world.flagsync.watched_closely
        assert await until(lambda: len(world.flagsync.watched_closely) == 2, 30), "one made room"
        await asyncio.sleep(0.5)  # the new watch's IDLE is under way

        second = await copy_of(writer, polled, "Zweite")
        await asyncio.to_thread(dovecot.member_stores, polled, second, "+FLAGS", "(\\Seen)")
        assert await until(lambda: seen_count_now(writer, 6), 30), "propagated before the next poll"
    finally:
        if watching is not None:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
        await world.mailbox.close()


async def test_a_reading_member_is_watched_with_idle_between_polls(
    writer: Writer, tmp_path: Path, dovecot: Dovecot
) -> None:
    """Without ``idle_all``, and a poll interval of five minutes: after SB-B1's first read (found by the
    first poll), SB-B1's next read reaches the co-members through IDLE in about a second."""
    async with reading_member(writer, tmp_path, dovecot, idle_window=600, idle_refresh=2) as world:
        await asyncio.to_thread(dovecot.member_stores, SB_B1, world.second, "+FLAGS", "(\\Seen)")
        # A generous bound for a loaded machine, far before the next poll (300 s): so through IDLE.
        assert await until(lambda: seen_count_now(writer, 6), 30), "propagated before the next poll"
        assert MailboxOwner(PORTFOLIO, SB_B1) in world.flagsync.watched_closely


async def test_the_watch_of_a_reading_member_ends_with_the_window(
    writer: Writer, tmp_path: Path, dovecot: Dovecot
) -> None:
    """The window after SB-B1's last change ends the watch (and logs its connection out)."""
    async with reading_member(writer, tmp_path, dovecot, idle_window=3, idle_refresh=1) as world:
        assert await until(lambda: not world.flagsync.watched_closely, 60)


class ReadingMember(World):
    first: str
    second: str


@contextlib.asynccontextmanager
async def reading_member(
    writer: Writer, tmp_path: Path, dovecot: Dovecot, *, idle_window: float, idle_refresh: float
) -> AsyncIterator[ReadingMember]:
    """Two messages to SB-B1's release, SB-B1 read the first; the flag watcher (a poll every five
    minutes, IDLE only for readers) running, and its first poll found SB-B1's read and gave SB-B1 a
    watch. The window is long enough for a loaded machine: with 8 s, a run with four test workers and
    two builds beside it saw the watch end before SB-B1's second read."""
    for address in (SB_B1, SB_B2, GF_B):
        dovecot.add_user(address)
    imap = ImapMailbox.from_settings(dovecot.imap_settings(), timeout=5)
    world = ReadingMember(writer, tmp_path / "mail", imap)
    world.flagsync = FlagSync(
        writer,
        imap,
        FlagSyncSettings(
            poll_interval=300, idle_all=False, idle_window=idle_window, idle_refresh=idle_refresh
        ),
        node="n1",
        notifications=NOTIFICATIONS,
    )
    watching = None
    try:
        await read_sync(writer, "seen")
        await world.deliver("Erste")
        await world.deliver("Zweite")
        world.first, world.second = [await copy_of(writer, SB_B1, subject) for subject in ("Erste", "Zweite")]
        await asyncio.to_thread(dovecot.member_stores, SB_B1, world.first, "+FLAGS", "(\\Seen)")
        watching = asyncio.create_task(world.flagsync.run())  # its first look is the poll
        assert await until(lambda: MailboxOwner(PORTFOLIO, SB_B1) in world.flagsync.watched_closely, 30)
        assert await seen_count(writer) == 3
        yield world
    finally:
        if watching is not None:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
        await imap.close()


async def copy_of(writer: Writer, address: str, subject: str) -> str:
    """The copy id of ``address``'s copy of the message with ``subject``."""
    query = (
        select(CopyRow.copy_id)
        .join(MessageRow, MessageRow.id == CopyRow.message_id)
        .join(MemberRow, MemberRow.id == CopyRow.member_id)
        .where(MemberRow.address == address, MessageRow.subject == subject)
    )
    return str(await writer.run(lambda c: c.scalar(query)))


async def seen_count(writer: Writer) -> int:
    return int(
        await writer.run(lambda c: len(list(c.scalars(select(CopyRow.id).where(CopyRow.seen.is_(True))))))
    )


async def seen_count_now(writer: Writer, expected: int) -> bool:
    return await seen_count(writer) == expected


async def until(check: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = check()  # type: ignore[operator]
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return True
        await asyncio.sleep(0.05)
    return False
