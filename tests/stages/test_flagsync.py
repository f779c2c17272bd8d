"""Flag sync on Maildir, on SQLite and PostgreSQL: a member's flag reaches co-members per read_sync.

The member's mail client is played by renaming Maildir files as clients do (``cur/NAME:2,S``); the
fan-out then writes the propagated flags. The seed's release "Kunde B Sachbearbeiter" (SB-B1, SB-B2)
and "Kunde B mit GF" (SB-B1, SB-B2, GF-B) carry a message to SB-B1 to all three.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import select, update

from gateway.acceptance import HandOff
from gateway.config import FanoutSettings, FlagSyncSettings
from gateway.db.models import CopyRow, EventRow, ReleaseRow
from gateway.db.queue import CopyJob
from gateway.db.writer import Writer
from gateway.fanout import FanOut
from gateway.flagsync import FlagSync
from gateway.mailbox import MailboxOwner, MaildirMailbox
from tests.stages.conftest import PORTFOLIO, accept

SB_B1, SB_B2, GF_B = "sb-b1@kunde-b.example", "sb-b2@kunde-b.example", "gf-b@kunde-b.example"


class World:
    def __init__(self, writer: Writer, root: Path) -> None:
        self.writer = writer
        self.mailbox = MaildirMailbox(root, hostname="gw1")
        self.fanout = FanOut(
            writer,
            self.mailbox,
            FanoutSettings(),
            node="n1",
            vorgang_header="X-Gateway-Vorgang",
            tag_subject=True,
        )
        self.flagsync = FlagSync(writer, self.mailbox, FlagSyncSettings(), node="n1")
        self.jobs: list[CopyJob] = []

    async def deliver(self, subject: str) -> None:
        await accept(
            self.writer, SB_B1, subject, f"<{subject}@ams.example>", HandOff("n1", 60, self.jobs.extend)
        )
        self.fanout.take(self.jobs)
        await self.fanout.run_once()

    def files(self, address: str) -> list[Path]:
        root = self.mailbox.maildir_path(MailboxOwner(PORTFOLIO, address))
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
        target = self.mailbox.maildir_path(MailboxOwner(PORTFOLIO, address)) / f".{folder}"
        for sub in ("cur", "new", "tmp"):
            (target / sub).mkdir(parents=True, exist_ok=True)
        os.rename(path, target / "cur" / path.name)

    async def sync(self) -> int:
        propagated = await self.flagsync.run_once()
        self.fanout._last_flag_claim = 0.0  # let the next run look for flags to write at once
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
