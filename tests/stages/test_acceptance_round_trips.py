"""A batch of accepted mail, and its fan-out, cost PostgreSQL the same statements however many messages
it holds (issue 17).

On PostgreSQL each statement is a round trip to the server. The messages with their participants and
their Vorgänge's last activity, the events and the copies each go in one statement of the same text
for any number of rows (``gateway.db.bulk``); SQLite keeps the executemany path, where a statement
costs a function call, but sends no statement per message or copy either. Either way the rows stored
are the ones the plans say. The fan-out's lease check and record of a batch of copies are one
statement each, as arrays too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, event, func, select

from gateway.db import queue
from gateway.db.accounts import Account, find_account
from gateway.db.models import CopyRow, EventRow, MessageRow, ParticipantRow, VorgangRow
from gateway.db.queue import CopyJob
from gateway.db.writer import Writer
from gateway.domain.parsing import parse_message
from gateway.stages.acceptance import Acceptance, Accepted, HandOff, Submission
from tests.conftest import Gateway

LOGIN = "ams@makler-muster.example"
# Each to one person of DESIGN.md §3 in turn, with the size of their audience.
PEOPLE = {
    "sb-a1@kunde-a.example": 2,
    "sb-a2@kunde-a.example": 2,
    "gf-a@kunde-a.example": 2,
    "sb-b1@kunde-b.example": 3,
    "sb-b2@kunde-b.example": 3,
    "gf-b@kunde-b.example": 4,
}


@contextmanager
def statements(writer: Writer) -> Iterator[list[str]]:
    """The statements the writer's connection sends while the block runs (one round trip each)."""
    sent: list[str] = []

    def note(_c: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(" ".join(statement.split()[:3]))

    event.listen(writer.engine, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        event.remove(writer.engine, "before_cursor_execute", note)


async def store(
    writer: Writer, account: Account, numbers: range, handoff: HandOff | None = None
) -> list[Accepted]:
    waiting = []
    for n in numbers:
        to = list(PEOPLE)[n % len(PEOPLE)]
        raw = (
            f"From: {LOGIN}\r\nTo: {to}\r\nSubject: batch {n}\r\nMessage-ID: <batch-{n}@ams>\r\n\r\nText\r\n"
        )
        submission = Submission(
            account, LOGIN, (to,), raw.encode(), parse_message(raw.encode()), "submission", "x"
        )
        waiting.append((submission, asyncio.get_running_loop().create_future()))
    await Acceptance(writer, hostname="gw.example", handoff=handoff)._store(waiting)
    return [future.result() for _, future in waiting]


def stored(connection: Connection, first: int, count: int) -> dict[str, Any]:
    """What the messages "batch <first>" … "batch <first + count - 1>" left in the database."""
    subjects = [f"batch {n}" for n in range(first, first + count)]
    ids = select(MessageRow.id).where(MessageRow.subject.in_(subjects)).scalar_subquery()
    copies = dict(
        connection.execute(
            select(MessageRow.subject, func.count(CopyRow.id))
            .join(CopyRow, CopyRow.message_id == MessageRow.id)
            .where(MessageRow.id.in_(ids))
            .group_by(MessageRow.subject)
        ).all()
    )
    behind = connection.scalar(
        select(func.count())
        .select_from(VorgangRow)
        .join(MessageRow, MessageRow.vorgang_id == VorgangRow.id)
        .where(MessageRow.id.in_(ids), VorgangRow.last_message_at != MessageRow.received_at)
    )
    return {
        "copies": copies,
        "participants": connection.scalar(
            select(func.count()).select_from(ParticipantRow).where(ParticipantRow.message_id.in_(ids))
        ),
        "events": connection.scalar(
            select(func.count()).select_from(EventRow).where(EventRow.message_id.in_(ids))
        ),
        "vorgaenge behind their last message": behind,
    }


async def test_a_batch_costs_postgresql_the_same_statements_whatever_its_size(
    with_login: Gateway, writer: Writer, database_url: str
) -> None:
    account = await writer.run(find_account, LOGIN)
    assert account is not None
    with statements(writer) as one:
        (alone,) = await store(writer, account, range(0, 1))
    with statements(writer) as twenty:
        batch = await store(writer, account, range(1, 21))

    assert not alone.duplicate
    assert not any(a.duplicate for a in batch)
    assert [a.audience for a in batch] == [PEOPLE[list(PEOPLE)[n % 6]] for n in range(1, 21)]
    if database_url.startswith("postgresql"):
        assert twenty == one, (one, twenty)
        # The locks on the messages' bytes (so that two nodes storing the same mail do not wait on each
        # other), reading (re-sends, the directory, members, releases with their members' addresses),
        # numbering and opening the Vorgänge, and the three writes: messages, events, copies.
        assert len(twenty) <= 10, twenty
    else:
        # SQLite: no statement per message or copy either (multi-row inserts, their ids matched by key).
        assert len(twenty) == len(one), (one, twenty)
    facts = await writer.run(stored, 1, 20)
    assert facts == {
        "copies": {f"batch {n}": PEOPLE[list(PEOPLE)[n % 6]] for n in range(1, 21)},
        "participants": 20,
        "events": 20,
        "vorgaenge behind their last message": 0,
    }


async def fan_out_database_work(writer: Writer, jobs: list[CopyJob]) -> None:
    """What the fan-out asks of the database for a batch of handed copies: the lease check before
    writing, then the record of the copies written."""
    now = dt.datetime.now(dt.UTC)
    held = await writer.run(queue.confirm, queue.JobKind.COPY, jobs, "n1", now, 60.0)
    assert held == {job.id for job in jobs}
    outcomes = [queue.Outcome(job, mailbox_ref=f"new/{job.copy_id}") for job in jobs]
    recorded = await writer.run(queue.record, outcomes, now, {}, node="n1")
    assert recorded.lost == frozenset()


async def test_the_fan_out_of_a_batch_costs_postgresql_two_statements_whatever_its_size(
    with_login: Gateway, writer: Writer, database_url: str
) -> None:
    account = await writer.run(find_account, LOGIN)
    assert account is not None
    handed: list[CopyJob] = []
    await store(writer, account, range(100, 101), HandOff("n1", 60.0, handed.extend))
    with statements(writer) as one:
        await fan_out_database_work(writer, handed)
    handed.clear()
    await store(writer, account, range(101, 121), HandOff("n1", 60.0, handed.extend))
    with statements(writer) as twenty:
        await fan_out_database_work(writer, handed)

    if database_url.startswith("postgresql"):
        # The lease check (read, not written: the leases are fresh) and the record (locks, delivered,
        # held copies of those mailboxes released) each one statement of the same text.
        assert twenty == one == ["WITH extended AS", "WITH commit_mode AS"], (one, twenty)
    delivered = await writer.run(
        lambda c: c.scalar(select(func.count()).select_from(CopyRow).where(CopyRow.state == "delivered"))
    )
    assert delivered == sum(PEOPLE[list(PEOPLE)[n % 6]] for n in range(100, 121))
