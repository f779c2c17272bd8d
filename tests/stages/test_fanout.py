"""Acceptance and fan-out as stages, on SQLite and PostgreSQL, with the in-memory mailbox.

The end-to-end tests show the happy path through real clients; these pin down what is hard to provoke
from outside: retries with backoff, held copies, a copy written just before a crash, re-sends.
"""

from __future__ import annotations

import datetime as dt
import errno

from sqlalchemy import Connection, Row, select, update

from gateway.config import FanoutSettings
from gateway.db.models import CopyRow, EventRow
from gateway.db.queue import CopyJob
from gateway.db.writer import Writer
from gateway.domain.retry import backoff
from gateway.mailbox import Flag, Located, MailboxError, MailboxOwner, MemoryMailbox
from gateway.stages.acceptance import HandOff
from gateway.stages.fanout import FanOut
from tests.stages.conftest import PORTFOLIO, accept

SETTINGS = FanoutSettings(retry_base=10.0, retry_max=60.0, max_attempts=3)


def copies(connection: Connection) -> list[Row[tuple[CopyRow]]]:
    return list(connection.execute(select(CopyRow.__table__).order_by(CopyRow.id)))


async def test_a_failed_copy_is_retried_with_backoff_then_held(writer: Writer) -> None:
    await accept(writer, "sb-a1@kunde-a.example", "Retry")
    mailbox = MemoryMailbox()
    fanout = FanOut(
        writer, mailbox, SETTINGS, node="n1", vorgang_header="X-Gateway-Vorgang", tag_subject=True
    )
    mailbox.fail_next(2, MailboxError(errno.ENOSPC, "disk full", "/x"))
    assert await fanout.run_once() == 2
    rows = await writer.run(copies)
    assert sorted(r.state for r in rows) == ["pending", "pending"]
    assert all(r.attempts == 1 and "disk full" in (r.last_error or "") for r in rows)
    now = dt.datetime.now(dt.UTC)
    for row in rows:
        due = row.next_attempt_at
        assert due is not None
        wait = (due.replace(tzinfo=dt.UTC) if due.tzinfo is None else due) - now
        assert (
            dt.timedelta(seconds=backoff(1, SETTINGS) - 2)
            < wait
            <= dt.timedelta(seconds=backoff(1, SETTINGS))
        )
    assert await fanout.run_once() == 0, "not due before the backoff ends"

    async def make_due() -> None:
        await writer.run(lambda s: s.execute(update(CopyRow).values(next_attempt_at=dt.datetime(2000, 1, 1))))

    for _ in (2, 3):
        mailbox.fail_next(2, MailboxError(errno.ENOSPC, "disk full", "/x"))
        await make_due()
        assert await fanout.run_once() == 2
    rows = await writer.run(copies)
    assert [r.state for r in rows] == ["held", "held"], "after max_attempts a copy is held for an admin"
    events = await writer.run(lambda c: list(c.scalars(select(EventRow.kind).order_by(EventRow.id))))
    assert events.count("copy.failed") == 4
    assert events.count("copy.held") == 2
    held_until = {r.next_attempt_at for r in rows}
    assert None not in held_until, "a held copy keeps a time for its mailbox's next probe"


async def test_a_copy_written_before_a_crash_is_found_not_written_again(writer: Writer) -> None:
    await accept(writer, "gf-a@kunde-a.example", "Crash")
    mailbox = MemoryMailbox()
    fanout = FanOut(
        writer, mailbox, SETTINGS, node="n1", vorgang_header="X-Gateway-Vorgang", tag_subject=True
    )
    # The first run claimed and wrote the copies, then the process died before recording it.
    jobs = await writer.run(
        lambda s: __import__("gateway.db.queue", fromlist=["claim"]).claim(
            s, "n1", dt.datetime.now(dt.UTC), 60, 100
        )
    )
    assert len(jobs) == 2
    for job in jobs:
        await mailbox.append(MailboxOwner(PORTFOLIO, job.address), job.copy_id, b"Subject: x\r\n\r\nx\r\n")
    assert await fanout.run_once() == 0, "leased copies wait for their lease"
    await fanout.start()  # the restarted node takes its own leases back at once
    assert await fanout.run_once() == 2
    for job in jobs:
        assert len(await mailbox.find(MailboxOwner(PORTFOLIO, job.address), job.copy_id)) == 1
    assert {r.state for r in await writer.run(copies)} == {"delivered"}


async def test_a_re_sent_message_is_stored_and_fanned_out_once(writer: Writer) -> None:
    first = await accept(writer, "sb-b1@kunde-b.example", "Once", "<once@ams.example>")
    again = await accept(writer, "sb-b1@kunde-b.example", "Once", "<once@ams.example>")
    assert first == again
    rows = await writer.run(copies)
    assert len(rows) == 3, "SB-B1, SB-B2 and GF-B, once each"


class RecordingMailbox(MemoryMailbox):
    """The fake mailbox, noting what each append was told about earlier attempts."""

    def __init__(self) -> None:
        super().__init__()
        self.first_attempts: list[bool] = []

    async def append(  # type: ignore[override]
        self, owner: MailboxOwner, copy_id: str, data: bytes, flags: frozenset[Flag] = frozenset(), **kw: bool
    ) -> Located:
        self.first_attempts.append(kw.get("first_attempt", False))
        return await super().append(owner, copy_id, data, flags, **kw)


async def test_fresh_copies_are_written_as_first_attempts_and_retries_are_not(writer: Writer) -> None:
    """A first attempt lets Maildir skip listing every folder; a retry must look (it may have written)."""
    await accept(writer, "sb-a1@kunde-a.example", "First")
    mailbox = RecordingMailbox()
    fanout = FanOut(
        writer, mailbox, SETTINGS, node="n1", vorgang_header="X-Gateway-Vorgang", tag_subject=True
    )
    mailbox.fail_next(1, MailboxError(errno.EIO, "i/o error", "/x"))
    await fanout.run_once()
    assert mailbox.first_attempts == [True, True]
    await writer.run(lambda s: s.execute(update(CopyRow).values(next_attempt_at=dt.datetime(2000, 1, 1))))
    await fanout.run_once()
    assert mailbox.first_attempts[2:] == [False]


async def test_copies_handed_over_in_memory_are_written_without_a_claim(writer: Writer) -> None:
    """Acceptance stores new copies leased to its own node and hands them over after the commit."""
    handed: list[CopyJob] = []
    await accept(writer, "sb-b1@kunde-b.example", "Handed", handoff=HandOff("n1", 60.0, handed.extend))
    assert sorted(j.address for j in handed) == [
        "gf-b@kunde-b.example",
        "sb-b1@kunde-b.example",
        "sb-b2@kunde-b.example",
    ]
    assert {j.address: j.shared_via for j in handed} == {
        "sb-b1@kunde-b.example": None,
        "sb-b2@kunde-b.example": "Kunde B Sachbearbeiter",
        "gf-b@kunde-b.example": "Kunde B mit GF",
    }
    rows = await writer.run(copies)
    assert {r.leased_by for r in rows} == {"n1"}, "stored already taken by the accepting node"
    other_node = FanOut(
        writer, MemoryMailbox(), SETTINGS, node="n2", vorgang_header="X-Gateway-Vorgang", tag_subject=True
    )
    assert await other_node.run_once() == 0, "leased: no other node takes them from the queue"

    mailbox = MemoryMailbox()
    fanout = FanOut(
        writer, mailbox, SETTINGS, node="n1", vorgang_header="X-Gateway-Vorgang", tag_subject=True
    )
    fanout.take(handed)
    assert await fanout.run_once() == 3
    rows = await writer.run(copies)
    assert {r.state for r in rows} == {"delivered"}
    assert {r.leased_by for r in rows} == {None}
    for job in handed:
        (found,) = await mailbox.find(MailboxOwner(PORTFOLIO, job.address), job.copy_id)
        data = mailbox.read(MailboxOwner(PORTFOLIO, job.address), found.ref)
        assert f"X-Gateway-Copy-Id: {job.copy_id}".encode() in data
        shared = f"X-Gateway-Shared-Via: {job.shared_via}".encode()
        assert (shared in data) == (job.shared_via is not None)


async def test_handed_over_copies_lost_with_the_process_come_back_from_the_queue(writer: Writer) -> None:
    """The process died after the commit, before writing: the restarted node takes its leases back."""
    handed: list[CopyJob] = []
    await accept(writer, "gf-a@kunde-a.example", "Lost", handoff=HandOff("n1", 60.0, handed.extend))
    assert len(handed) == 2
    mailbox = RecordingMailbox()
    restarted = FanOut(
        writer, mailbox, SETTINGS, node="n1", vorgang_header="X-Gateway-Vorgang", tag_subject=True
    )
    await restarted.start()
    assert await restarted.run_once() == 2
    assert mailbox.first_attempts == [False, False], "it may have written them before it died: look first"
    assert {r.state for r in await writer.run(copies)} == {"delivered"}


async def test_answered_flags_reach_delivered_copies_and_copies_written_meanwhile(writer: Writer) -> None:
    """``\\Answered`` set in the database reaches every copy: delivered ones through a flag catch-up,
    one whose write was under way when the answer came in through the record of that write."""
    from gateway.db.replies import mark_answered

    handed: list[CopyJob] = []
    await accept(writer, "sb-b1@kunde-b.example", "Answered", handoff=HandOff("n1", 60.0, handed.extend))
    mailbox = MemoryMailbox()
    fanout = FanOut(
        writer, mailbox, SETTINGS, node="n1", vorgang_header="X-Gateway-Vorgang", tag_subject=True
    )
    fanout.take(handed[:2])  # the third copy's write is "under way": it was taken before the answer
    assert await fanout.run_once() == 2
    message_pk, portfolio_id = handed[0].message_pk, handed[0].portfolio_id
    changed = await writer.run(mark_answered, portfolio_id, message_pk, dt.datetime.now(dt.UTC))
    assert changed == 3
    fanout.take(handed[2:])  # written without the flag (its job predates the answer)
    assert await fanout.run_once() >= 1
    # No waiting for anything to fall due: a flag that came in meanwhile is due at once.
    fanout._claimed["flags"] = 0.0
    await fanout.run_once()
    for job in handed:
        (found,) = await mailbox.find(MailboxOwner(PORTFOLIO, job.address), job.copy_id)
        assert Flag.ANSWERED in found.flags, job.address
    rows = await writer.run(copies)
    assert [(r.answered, r.flags_pending) for r in rows] == [(True, False)] * 3
