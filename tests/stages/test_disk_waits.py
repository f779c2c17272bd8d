"""Which of the writer's commits wait for the disk on PostgreSQL, and that each still does its job (issue 17).

Every transaction of a node queues on one writer thread, and a commit that waits for the log to reach
the disk holds that thread for milliseconds. Acceptance must wait (the 250 follows a durable commit,
DESIGN.md §8); three others need not, and each test here shows why that is safe and that nothing else
changed: the lease check of copies just handed over writes nothing (a commit without a write does not
wait), a record of copies written commits asynchronously (lost in a server crash, the copies are found
in their mailboxes on the next attempt), and the Vorgang numbers' own commit comes before the
acceptance commit that makes it durable. On SQLite the same calls run (one writer, nothing to save)
and their results are checked the same way.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, select, text, update

from gateway.db import queue
from gateway.db.acceptance import take_numbers
from gateway.db.accounts import find_account
from gateway.db.models import CopyRow, PortfolioRow
from gateway.db.queue import CopyJob, Outcome
from gateway.db.writer import Writer
from gateway.domain.parsing import parse_message
from gateway.stages.acceptance import Accepted, HandOff, Submission, _accept_batch
from tests.stages.conftest import PORTFOLIO, accept

LEASE = 60.0


def commit_mode(connection: Connection) -> tuple[str, bool] | None:
    """On PostgreSQL, (``synchronous_commit`` for this transaction's commit, whether it wrote anything
    that its commit must flush); None on SQLite."""
    if connection.dialect.name != "postgresql":
        return None
    mode = connection.scalar(text("SELECT current_setting('synchronous_commit')"))
    wrote = connection.scalar(text("SELECT pg_current_xact_id_if_assigned() IS NOT NULL"))
    return str(mode), bool(wrote)


def leases(connection: Connection) -> dict[int, tuple[Any, str | None, int]]:
    return {
        int(pk): (until, node, int(token))
        for pk, until, node, token in connection.execute(
            select(CopyRow.id, CopyRow.next_attempt_at, CopyRow.leased_by, CopyRow.lease_token)
        )
    }


async def handed(writer: Writer, to: str = "gf-b@kunde-b.example") -> list[CopyJob]:
    """GF-B's audience of four: the copies acceptance hands to node "n1", leased for LEASE seconds."""
    jobs: list[CopyJob] = []
    await accept(writer, to, "Frisch", handoff=HandOff("n1", LEASE, jobs.extend))
    assert len(jobs) == 4
    return jobs


async def test_a_fresh_lease_is_confirmed_by_reading_and_one_half_gone_is_extended(
    writer: Writer, database_url: str
) -> None:
    jobs = await handed(writer)
    before = await writer.run(leases)
    now = dt.datetime.now(dt.UTC)

    def confirm(connection: Connection) -> tuple[set[int], tuple[str, bool] | None]:
        held = queue.confirm(connection, queue.JobKind.COPY, jobs, "n1", now, LEASE)
        return held, commit_mode(connection)

    held, mode = await writer.run(confirm)
    assert held == {j.id for j in jobs}
    assert await writer.run(leases) == before, "a fresh lease is read, not written"
    if database_url.startswith("postgresql"):
        assert mode == ("on", False), "nothing written: the commit has nothing to wait for"

    # One lease has less than half left (the node was busy), one was taken over by n2 meanwhile.
    short, taken, *rest = sorted(jobs, key=lambda j: j.id)
    soon = now + dt.timedelta(seconds=LEASE / 4)

    def age(connection: Connection) -> None:
        connection.execute(update(CopyRow).where(CopyRow.id == short.id).values(next_attempt_at=soon))
        connection.execute(
            update(CopyRow)
            .where(CopyRow.id == taken.id)
            .values(leased_by="n2", lease_token=CopyRow.lease_token + 1)
        )

    await writer.run(age)
    middle = await writer.run(leases)
    held, mode = await writer.run(confirm)
    assert held == {short.id, *(j.id for j in rest)}, "n2's copy is not n1's to write"
    after = await writer.run(leases)
    extended = after.pop(short.id)
    assert extended[1:] == middle.pop(short.id)[1:]
    assert abs((_aware(extended[0]) - now).total_seconds() - LEASE) < 1, "extended to a whole lease"
    assert after == middle, "the others untouched"
    if database_url.startswith("postgresql"):
        assert mode == ("on", True), "an extension is a write that waits for the disk"


async def test_a_record_of_written_copies_alone_does_not_wait_for_the_disk(
    writer: Writer, database_url: str
) -> None:
    written = await handed(writer)
    now = dt.datetime.now(dt.UTC)

    def record(
        connection: Connection, outcomes: list[Outcome], retry_at: dict[int, tuple[bool, dt.datetime]]
    ) -> tuple[queue.Recorded, tuple[str, bool] | None]:
        recorded = queue.record(connection, outcomes, now, retry_at, node="n1")
        return recorded, commit_mode(connection)

    first, *others = written
    outcomes = [Outcome(job, mailbox_ref=f"new/{job.copy_id}") for job in others]
    recorded, mode = await writer.run(record, outcomes, {})
    assert recorded.lost == frozenset()
    if database_url.startswith("postgresql"):
        assert mode == ("off", True), "copies written only: the record need not wait"

    # A batch with a failure records an event and an attempt: that commit waits, as before.
    retry_at = {first.id: (False, now + dt.timedelta(seconds=30))}
    recorded, mode = await writer.run(record, [Outcome(first, error="disk full")], retry_at)
    assert recorded.lost == frozenset()
    if database_url.startswith("postgresql"):
        assert mode == ("on", True)
    rows = {
        pk: (
            state,
            ref,
            node,
            delivered_at is not None and abs((_aware(delivered_at) - now).total_seconds()) < 1,
        )
        for pk, state, ref, node, delivered_at in await writer.run(
            lambda c: list(
                c.execute(
                    select(
                        CopyRow.id,
                        CopyRow.state,
                        CopyRow.mailbox_ref,
                        CopyRow.leased_by,
                        CopyRow.delivered_at,
                    )
                )
            )
        )
    }
    # The delivery time is what the collision guard compares answers with (docs/collisions.md).
    assert rows == {
        first.id: ("pending", None, None, False),
        **{job.id: ("delivered", f"new/{job.copy_id}", None, True) for job in others},
    }


async def test_vorgang_numbers_leave_the_acceptance_commit_waiting_for_the_disk(
    writer: Writer, database_url: str
) -> None:
    def take(connection: Connection) -> tuple[int, int, tuple[str, bool] | None]:
        portfolio = connection.scalar(select(PortfolioRow.id).where(PortfolioRow.name == PORTFOLIO))
        assert portfolio is not None
        first = take_numbers(connection, portfolio, 2031, 3)
        second = take_numbers(connection, portfolio, 2031, 2)
        return first, second, commit_mode(connection)

    first, second, mode = await writer.run(take)
    assert (first, second) == (3, 5)
    if database_url.startswith("postgresql"):
        # Taken on the engine's other connection and committed there: this transaction wrote
        # nothing, and its commit mode is the server's, not the numbers' asynchronous one.
        assert mode == ("on", False)
    # Whichever connection took the numbers serves the next acceptance, and its commit waits.
    account = await writer.run(find_account, "ams@makler-muster.example")
    assert account is not None
    for n in range(2):
        raw = f"From: ams@makler-muster.example\r\nTo: sb-a1@kunde-a.example\r\nSubject: {n}\r\n\r\nText\r\n"
        to, data = ("sb-a1@kunde-a.example",), raw.encode()
        submission = Submission(account, account.login, to, data, parse_message(data), "s", "x")
        vorgang, mode = await writer.run(store, submission)
        assert vorgang.startswith("VG-")
        if database_url.startswith("postgresql"):
            assert mode == ("on", True)


def store(connection: Connection, submission: Submission) -> tuple[str, tuple[str, bool] | None]:
    """Accept ``submission`` alone; its Vorgang, and how the acceptance transaction will commit."""
    [accepted], _ = _accept_batch(connection, [submission], "gw.example")
    assert isinstance(accepted, Accepted)
    return accepted.vorgang, commit_mode(connection)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
