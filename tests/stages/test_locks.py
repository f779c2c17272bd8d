"""No node stalls another, and each message gets its own answer, on PostgreSQL (issue 17, items 2 and 4).

A stalled node is played by a connection of its own that runs what the node would run and then
neither commits nor rolls back: an acceptance transaction (its new Vorgang, messages and copies), or a
transaction that touched the Vorgang counter or a copy row. The node under test is the real acceptance
stage on a writer of its own, as a second `gateway serve` would run it. Bounds on waiting are guards
against a hang (``asyncio.wait_for``), not speed measurements.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Connection, bindparam, func, select, text, update
from sqlalchemy.exc import DBAPIError

from gateway.config import DatabaseSettings, FlagSyncSettings
from gateway.db import flagsync as flagsync_db
from gateway.db.accounts import find_account
from gateway.db.engine import create_engine
from gateway.db.models import CopyRow, MessageRow, VorgangCounterRow, VorgangRow
from gateway.db.writer import Writer
from gateway.domain.parsing import parse_message
from gateway.errors import NotStored
from gateway.mailbox import MailboxOwner
from gateway.stages.acceptance import Acceptance, Accepted, Submission, _accept_batch, _first_line
from gateway.stages.flagsync import FlagSync, _apply
from tests.conftest import Gateway
from tests.stages.conftest import PORTFOLIO
from tests.stages.test_flagsync import NOTIFICATIONS, SB_B1, World, read_sync

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

LOGIN = "ams@makler-muster.example"
TO = "sb-b1@kunde-b.example"
# A guard against a hang: far above any wait the test expects, far below "forever".
HANG = 30.0
# What no log line may carry: the subjects and bodies of the test's mail.
SECRET = "Geheimer-Inhalt"


async def submission(writer: Writer, subject: str, *, message_id: str | None = None) -> Submission:
    account = await writer.run(find_account, LOGIN)
    assert account is not None
    message_id = message_id or f"<{subject.replace(' ', '-')}@ams.example>"
    raw = (
        f"From: {LOGIN}\r\nTo: {TO}\r\nSubject: {subject} {SECRET}\r\n"
        f"Message-ID: {message_id}\r\n\r\nText {SECRET}\r\n"
    ).encode()
    return Submission(account, LOGIN, (TO,), raw, parse_message(raw), "submission", "x")


class Node:
    """One node's acceptance stage: its own writer (connections) and its worker task."""

    def __init__(self, writer: Writer, *, busy_wait: float = 5.0) -> None:
        self.writer = writer
        self.acceptance = Acceptance(writer, hostname="gw.example", busy_wait=busy_wait)
        self.task = asyncio.create_task(self.acceptance.run())

    async def accept(self, *subs: Submission) -> list[Accepted | BaseException]:
        return list(
            await asyncio.wait_for(
                asyncio.gather(*(self.acceptance.submit(s) for s in subs), return_exceptions=True), HANG
            )
        )

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def node(writer: Writer) -> AsyncIterator[Node]:
    n = Node(writer)
    yield n
    await n.close()


@pytest.fixture
async def other_writer(writer: Writer, database_url: str) -> AsyncIterator[Writer]:
    """The connections of another node on the same database."""
    w = Writer(database_url)
    yield w
    await w.close()


@contextmanager
def stalled(writer: Writer) -> Iterator[Connection]:
    """A transaction of another node that stalls: whatever the test runs on it stays uncommitted, and
    its locks held, until the block ends (then it is rolled back, as the server would on its death)."""
    with writer.engine.connect() as connection:
        connection.begin()
        try:
            yield connection
        finally:
            connection.rollback()


def stored(connection: Connection) -> dict[str, int]:
    return {
        "messages": int(connection.scalar(select(func.count()).select_from(MessageRow)) or 0),
        "vorgaenge": int(connection.scalar(select(func.count()).select_from(VorgangRow)) or 0),
    }


# --- item 2: a stalled node does not stall the others --------------------------------------------------


async def test_a_stalled_acceptance_holds_no_other_node_up(
    with_login: Gateway, node: Node, other_writer: Writer
) -> None:
    """The other node's acceptance transaction opened a Vorgang (took a number), stored its message and
    touched an existing copy, then froze. New mail, opening Vorgänge of the same portfolio, is stored
    at once: before issue 17 it waited on the counter row for as long as the other node was frozen."""
    (first,) = await node.accept(await submission(node.writer, "vorher"))
    assert isinstance(first, Accepted)
    frozen_sub = await submission(node.writer, "eingefroren")
    with stalled(other_writer) as frozen:
        (frozen_result,), _ = _accept_batch(frozen, [frozen_sub], "gw2.example")
        assert isinstance(frozen_result, Accepted)
        frozen.execute(update(CopyRow).values(updated_at=func.now()))  # every existing copy row

        results = await node.accept(*[await submission(node.writer, f"neu {i}") for i in range(5)])

        assert all(isinstance(r, Accepted) and not r.duplicate for r in results), results
        numbers = [int(r.vorgang.rsplit("-", 1)[1]) for r in results if isinstance(r, Accepted)]
        frozen_number = int(frozen_result.vorgang.rsplit("-", 1)[1])
        assert len(set(numbers)) == 5, numbers
        assert min(numbers) > frozen_number, (numbers, frozen_number)
    # The frozen transaction is gone (rolled back): its number stays unused, a documented gap.
    counts = await node.writer.run(stored)
    assert counts == {"messages": 6, "vorgaenge": 6}


async def test_mail_into_a_vorgang_a_stalled_node_writes_waits_alone(
    with_login: Gateway, node: Node, other_writer: Writer
) -> None:
    """The other node stored a message into an existing Vorgang and stalls before its commit (holding
    the Vorgang's row). This node's mail into that Vorgang waits for it; its other mail is stored at
    once; after the other node's commit the waiting message joins the Vorgang."""
    (first,) = await node.accept(await submission(node.writer, "Schaden"))
    assert isinstance(first, Accepted)
    tagged = f"[{first.vorgang}] Nachtrag"
    with other_writer.engine.connect() as other:
        transaction = other.begin()
        (theirs,), _ = _accept_batch(
            other, [await submission(node.writer, tagged, message_id="<n1@ams.example>")], "gw2"
        )
        assert isinstance(theirs, Accepted)
        assert theirs.vorgang == first.vorgang
        submit = node.acceptance.submit
        joining = asyncio.create_task(submit(await submission(node.writer, tagged, message_id="<n2@x>")))
        others = [await submission(node.writer, f"anderes {i}") for i in range(3)]
        stored_meanwhile = await asyncio.wait_for(asyncio.gather(*(submit(s) for s in others)), HANG)
        assert all(r.vorgang != first.vorgang for r in stored_meanwhile)
        assert not joining.done(), "mail into the Vorgang the other node writes waits for it"
        transaction.commit()
    joined = await asyncio.wait_for(joining, HANG)
    assert joined.vorgang == first.vorgang
    assert not joined.duplicate


async def test_a_lock_held_past_lock_timeout_is_answered_451(
    with_login: Gateway, database_url: str, other_writer: Writer
) -> None:
    """A transaction that holds the Vorgang counter itself (an older node, or one frozen mid-statement)
    and never ends: new mail waits for ``lock_timeout``, then hears 451 4.3.0; it never hangs."""
    writer = Writer(database_url, database=DatabaseSettings(lock_timeout=0.5))
    n = Node(writer)
    try:
        (warm,) = await n.accept(await submission(writer, "vorher"))
        assert isinstance(warm, Accepted)  # the counter row of this year exists now
        with stalled(other_writer) as holder:
            holder.execute(update(VorgangCounterRow).values(last_number=VorgangCounterRow.last_number))
            (result,) = await n.accept(await submission(writer, "wartet"))
            assert isinstance(result, NotStored), result
        (after,) = await n.accept(await submission(writer, "wartet"))
        assert isinstance(after, Accepted), "stored once the lock is gone"
        assert not after.duplicate
    finally:
        await n.close()
        await writer.close()


# What the frozen node last sent: one statement, or an ``executemany`` (psycopg pipelines it; its closing
# Flush had left the server's idle timeout disarmed, and a node frozen after one held its rows until it
# resumed).
TOUCH_COUNTER = (
    update(VorgangCounterRow)
    .where(VorgangCounterRow.last_number >= bindparam("b_least"))
    .values(last_number=VorgangCounterRow.last_number)
)


@pytest.mark.parametrize("rows", [[{"b_least": 0}], [{"b_least": 0}, {"b_least": 0}]], ids=["one", "many"])
async def test_a_frozen_transaction_is_ended_by_the_server(
    with_login: Gateway, database_url: str, rows: list[dict[str, int]]
) -> None:
    """A node frozen in a transaction holding the counter: after ``idle_in_transaction_timeout`` the
    server ends its session and frees the lock, and the waiting node goes on (a lock timeout longer
    than that: it is the server that ends the wait, not the waiter giving up)."""
    frozen_node = Writer(database_url, database=DatabaseSettings(idle_in_transaction_timeout=0.5))
    waiting = Writer(database_url, database=DatabaseSettings(lock_timeout=HANG))
    try:
        n = Node(waiting)
        (warm,) = await n.accept(await submission(waiting, "vorher"))
        assert isinstance(warm, Accepted)
        with frozen_node.engine.connect() as frozen:
            frozen.begin()
            frozen.execute(TOUCH_COUNTER, rows)
            (result,) = await asyncio.wait_for(n.accept(await submission(waiting, "danach")), HANG)
            assert isinstance(result, Accepted), result
            with pytest.raises(Exception, match="idle-in-transaction timeout"):
                frozen.execute(text("SELECT 1"))
            frozen.rollback()
        await n.close()
    finally:
        await frozen_node.close()
        await waiting.close()


SHOWN = (
    "lock_timeout",
    "statement_timeout",
    "idle_in_transaction_session_timeout",
    "tcp_keepalives_idle",
    "tcp_keepalives_interval",
    "tcp_keepalives_count",
)


async def test_every_connection_bounds_its_waits(database_url: str) -> None:
    """[database] reaches every connection: the writer's (serving work, with a statement timeout) and
    the engine's (migrations and admin commands, without one)."""
    settings = DatabaseSettings(
        lock_timeout=1.5,
        statement_timeout=20,
        idle_in_transaction_timeout=7,
        keepalives_idle=4,
        keepalives_interval=3,
        keepalives_count=2,
    )

    def show(connection: Connection) -> dict[str, str]:
        return {name: str(connection.exec_driver_sql(f"SHOW {name}").scalar()) for name in SHOWN}

    writer = Writer(database_url, database=settings)
    try:
        assert await writer.run(show) == {
            "lock_timeout": "1500ms",
            "statement_timeout": "20s",
            "idle_in_transaction_session_timeout": "7s",
            "tcp_keepalives_idle": "4",
            "tcp_keepalives_interval": "3",
            "tcp_keepalives_count": "2",
        }
    finally:
        await writer.close()
    engine = create_engine(database_url, database=settings)
    try:
        async with engine.connect() as connection:
            shown = await connection.run_sync(show)
    finally:
        await engine.dispose()
    assert shown["lock_timeout"] == "1500ms"
    assert shown["idle_in_transaction_session_timeout"] == "7s"
    assert shown["tcp_keepalives_count"] == "2"
    assert shown["statement_timeout"] == "0", "a migration may take long"


async def test_database_errors_carry_no_mail_content(database_url: str) -> None:
    """A statement the database refuses: the exception names the statement but not its parameters (every
    engine is made with hide_parameters), and what acceptance logs of it drops the values PostgreSQL
    quotes in its own message (here the invalid input itself)."""

    def refused(connection: Connection) -> None:
        connection.execute(text("SELECT CAST(:v AS integer), :w"), {"v": SECRET, "w": f"{SECRET}-Betreff"})

    writer = Writer(database_url)
    try:
        with pytest.raises(DBAPIError) as caught:
            await writer.run(refused)
    finally:
        await writer.close()
    assert f"{SECRET}-Betreff" not in str(caught.value)
    assert "parameters hidden" in str(caught.value)
    assert SECRET not in _first_line(caught.value)
    assert _first_line(caught.value).startswith("invalid input syntax for type integer")

    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            with pytest.raises(DBAPIError) as caught:
                await connection.run_sync(refused)
    finally:
        await engine.dispose()
    assert f"{SECRET}-Betreff" not in str(caught.value)


# --- item 4: the same bytes on two nodes at once; each message its own answer ------------------------------


async def test_a_message_another_node_is_storing_waits_for_it_alone(
    with_login: Gateway, node: Node, other_writer: Writer, caplog: pytest.LogCaptureFixture
) -> None:
    """The other node took three messages into its transaction and stalls; this node gets those three
    and five others. The five are stored at once; the three wait, and once the other node commits
    they are answered as the re-sends they are, with the other node's gateway ids."""
    caplog.set_level(logging.DEBUG)
    shared = [await submission(node.writer, f"beide {i}") for i in range(3)]
    own = [await submission(node.writer, f"nur hier {i}") for i in range(5)]
    with other_writer.engine.connect() as other:
        transaction = other.begin()
        theirs, _ = _accept_batch(other, shared, "gw2.example")

        submit = node.acceptance.submit
        waiting = [asyncio.create_task(submit(s)) for s in shared]
        # The five are stored while the other transaction is still open: that is the point.
        own_results = await asyncio.wait_for(asyncio.gather(*(submit(s) for s in own)), HANG)
        assert not any(task.done() for task in waiting), "the three wait for the node storing them"
        transaction.commit()
    shared_results = await asyncio.wait_for(asyncio.gather(*waiting), HANG)
    assert not any(r.duplicate for r in own_results)
    assert all(r.duplicate and r.found == "re-send" for r in shared_results), shared_results
    assert [r.gateway_id for r in shared_results] == [t.gateway_id for t in theirs if isinstance(t, Accepted)]
    assert await node.writer.run(stored) == {"messages": 8, "vorgaenge": 8}
    assert SECRET not in caplog.text


async def test_a_message_held_by_a_stalled_node_alone_is_answered_451(
    with_login: Gateway, writer: Writer, other_writer: Writer
) -> None:
    """The other node never commits: the message it holds is answered 451 after ``busy_wait``, the rest
    of its batch is stored."""
    n = Node(writer, busy_wait=0.3)
    try:
        shared = await submission(writer, "festgehalten")
        with stalled(other_writer) as other:
            _accept_batch(other, [shared], "gw2.example")
            results = await n.accept(shared, *[await submission(writer, f"frei {i}") for i in range(3)])
        assert isinstance(results[0], NotStored), results[0]
        assert all(isinstance(r, Accepted) and not r.duplicate for r in results[1:]), results
    finally:
        await n.close()


async def test_two_nodes_storing_overlapping_batches_answer_each_message(
    with_login: Gateway, node: Node, other_writer: Writer, caplog: pytest.LogCaptureFixture
) -> None:
    """A back office hands the same 96 messages to both nodes (both MX hosts), over eight sessions
    each, in opposite order, and 48 others to each, so the two nodes' batches keep overlapping. Every
    session hears 250; each message is stored once, and its two answers name the same gateway id, one
    of them as the re-send; no log line carries content. Before issue 17 a second conflict in the
    retry answered a whole batch 451."""
    caplog.set_level(logging.DEBUG)
    other = Node(other_writer)
    try:
        both = [await submission(node.writer, f"beide {i}") for i in range(96)]
        mine = [await submission(node.writer, f"eins {i}") for i in range(48)]
        theirs = [await submission(node.writer, f"zwei {i}") for i in range(48)]
        # Eight sessions on each node take the shared mail in turn, so the batches of both nodes hold
        # the same messages at the same time, in opposite order; four more sessions bring the others.
        backwards = [m for k in range(0, 96, 8) for m in reversed(both[k : k + 8])]
        here, there = await asyncio.gather(
            in_sessions(node, both, mine), in_sessions(other, backwards, theirs)
        )
    finally:
        await other.close()
    failed = [r for r in [*here.values(), *there.values()] if not isinstance(r, Accepted)]
    assert failed == [], failed
    assert await node.writer.run(stored) == {"messages": 192, "vorgaenge": 192}
    for s in both:
        a, b = here[s.parsed.message_id], there[s.parsed.message_id]
        assert isinstance(a, Accepted)
        assert isinstance(b, Accepted)
        assert (a.gateway_id, a.vorgang) == (b.gateway_id, b.vorgang)
        assert a.duplicate != b.duplicate, (a, b)
    assert SECRET not in caplog.text


async def in_sessions(
    n: Node, shared: list[Submission], own: list[Submission]
) -> dict[str | None, Accepted | BaseException]:
    """Submit ``shared`` over eight sessions (session k sends messages k, k + 8, …) and ``own`` over
    four, each session one message after the other as SMTP does; the answer to each, by Message-ID."""
    answers: dict[str | None, Accepted | BaseException] = {}

    async def session(part: list[Submission]) -> None:
        for s in part:
            try:
                answers[s.parsed.message_id] = await n.acceptance.submit(s)
            except NotStored as exc:
                answers[s.parsed.message_id] = exc

    parts = [shared[k::8] for k in range(8)] + [own[k::4] for k in range(4)]
    await asyncio.wait_for(asyncio.gather(*(session(part) for part in parts)), HANG)
    return answers


# --- item 4: two flag watchers record a member's change once -----------------------------------------------


async def test_two_flag_watchers_record_one_change_once(
    with_login: Gateway, writer: Writer, other_writer: Writer, tmp_path: Path
) -> None:
    """Two nodes see SB-B1 answer a message in the same look at the mailbox. The first records it and
    stalls before its commit; the second's update waits for it, then finds the flag recorded and
    changes nothing: one ``flag.set``, one ``flag.propagated`` per co-member (before issue 17: two
    ``flag.set`` for the one change)."""
    world = World(writer, tmp_path / "mail")
    await read_sync(writer, "answered")
    await world.deliver("Beantwortet")
    world.client_sets(SB_B1, "R")
    (mailbox,) = [m for m in await writer.run(flagsync_db.watched) if m.address == SB_B1]
    changes, _ = await world.mailbox.flag_changes(MailboxOwner(PORTFOLIO, SB_B1), None)

    with other_writer.engine.connect() as first:
        transaction = first.begin()
        by_first = _apply(first, mailbox, changes, "n1", NOTIFICATIONS)
        second = asyncio.create_task(writer.run(_apply, mailbox, changes, "n2", NOTIFICATIONS))
        await waiting_for_a_lock(other_writer)
        transaction.commit()
    by_second = await asyncio.wait_for(second, HANG)

    assert (by_first.by_member, by_first.propagated) == (1, 2)
    assert (by_second.by_member, by_second.propagated) == (0, 0)
    assert len(await world.events("flag.set")) == 1
    assert len(await world.events("flag.propagated")) == 2


async def test_two_flag_watchers_at_once_record_each_change_once(
    with_login: Gateway, writer: Writer, other_writer: Writer, tmp_path: Path
) -> None:
    """The round of issue 17 that counted 20 ``flag.set`` for 10 copies: two flag watchers (nodes) look
    at the mailboxes at the same time after SB-B1 answered ten messages."""
    world = World(writer, tmp_path / "mail")
    await read_sync(writer, "answered")
    for i in range(10):
        await world.deliver(f"Runde {i}")
    for path in world.files(SB_B1):
        base = path.name.partition(":")[0]
        os.rename(path, path.parent.parent / "cur" / f"{base}:2,R")
    watchers = [
        FlagSync(w, world.mailbox, FlagSyncSettings(), node=node, notifications=NOTIFICATIONS)
        for w, node in ((writer, "n1"), (other_writer, "n2"))
    ]
    propagated = await asyncio.wait_for(asyncio.gather(*(w.run_once() for w in watchers)), HANG)

    assert sum(propagated) == 20, propagated
    assert len(await world.events("flag.set")) == 10
    assert len(await world.events("flag.propagated")) == 20


async def waiting_for_a_lock(writer: Writer) -> None:
    """Return once a session of the test's database waits for a lock (polled on a connection of
    ``writer`` that is not in use)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    with writer.engine.connect() as connection:
        for _ in range(int(HANG / 0.01)):
            if connection.scalar(query):
                return
            connection.rollback()
            await asyncio.sleep(0.01)
    raise AssertionError("no session waited for a lock")
