"""Exactly once under a stalled node (issue 17 item 1), on SQLite and PostgreSQL.

Two nodes, "n1" and "n2", share one database (each with its own writer connection) and one Maildir
root. n1 takes work and then stalls, as a process frozen with SIGSTOP would: its writer is held right
after the transaction that took the work committed. While n1 is frozen its lease runs out (the test
moves the lease's end into the past instead of waiting) and n2 takes the work over and does it. Then
n1 resumes: it must write, remove or send nothing, and record nothing over what n2 recorded. The same
for each kind of leased work: copies (handed over by acceptance or claimed from the queue), flag jobs,
removals of revoked copies, and mail relayed to a back office (a real aiosmtpd server).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, select, update

from gateway.config import FanoutSettings, RelaySettings
from gateway.db import queue, relayqueue
from gateway.db import reconcile as reconcile_rows
from gateway.db.models import CopyRow, EventRow, MemberRow, MessageRow, RelayRow, RelayState, utc
from gateway.db.queue import CopyJob, Outcome
from gateway.db.writer import Writer
from gateway.mailbox import Delivery, Flag, Located, MailboxError, MailboxOwner, MaildirMailbox
from gateway.mailbox.imap import ImapMailbox
from gateway.stages.acceptance import HandOff
from gateway.stages.fanout import FanOut
from gateway.stages.relay import Relay
from tests.conftest import Gateway
from tests.dovecot import Dovecot
from tests.e2e.conftest import BackOfficeSink, running_sink
from tests.stages.conftest import PORTFOLIO, accept

SETTINGS = FanoutSettings(retry_base=10.0, retry_max=60.0, max_attempts=3, poll_interval=0.01, lease=60.0)
PAST = dt.datetime(2000, 1, 1)


class Frozen:
    """A node's writer that freezes the node right after a transaction of ``work`` committed, until
    ``thaw()``: what SIGSTOP does to a node between taking work and doing it."""

    def __init__(self, writer: Writer, work: Callable[..., Any]) -> None:
        self.writer = writer
        self.work = work
        self.frozen = asyncio.Event()
        self._thawed = asyncio.Event()

    async def run(self, work: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = await self.writer.run(work, *args, **kwargs)
        if work is self.work and not self.frozen.is_set():
            self.frozen.set()
            await self._thawed.wait()
        return result

    def thaw(self) -> None:
        self._thawed.set()


class Watched(MaildirMailbox):
    """A node's view of the shared Maildir root, noting every copy id it was asked to touch."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.touched: list[str] = []

    async def append_batch(self, deliveries: Sequence[Delivery]) -> list[Located | Exception]:
        self.touched += [d.copy_id for d in deliveries]
        return await super().append_batch(deliveries)

    async def add_flags(self, owner: MailboxOwner, copy_id: str, flags: frozenset[Flag]) -> list[Located]:
        self.touched.append(copy_id)
        return await super().add_flags(owner, copy_id, flags)

    async def remove(self, owner: MailboxOwner, copy_id: str) -> int:
        self.touched.append(copy_id)
        return await super().remove(owner, copy_id)


@pytest.fixture
async def second_writer(writer: Writer, database_url: str) -> AsyncIterator[Writer]:
    """n2's own connection to the same database."""
    w = Writer(database_url)
    try:
        yield w
    finally:
        await w.close()


def fanout(writer: Any, mailbox: MaildirMailbox, node: str) -> FanOut:
    return FanOut(writer, mailbox, SETTINGS, node=node, vorgang_header="X-Gateway-Vorgang", tag_subject=True)


async def lease_runs_out(writer: Writer, node: str) -> None:
    """Every lease ``node`` holds ends now (the clock moved on while it was frozen)."""

    def expire(connection: Connection) -> None:
        connection.execute(update(CopyRow).where(CopyRow.leased_by == node).values(next_attempt_at=PAST))
        connection.execute(update(RelayRow).where(RelayRow.leased_by == node).values(next_attempt_at=PAST))

    await writer.run(expire)


def copy_rows(connection: Connection) -> list[Any]:
    return list(connection.execute(select(CopyRow.__table__).order_by(CopyRow.id)))


def files(root: Path, copy_id: str) -> list[str]:
    """Every file of the copy under the Maildir root, in any mailbox and folder."""
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob(f"{copy_id}.*")
        if path.parent.name in ("new", "cur")
    )


def events(connection: Connection) -> list[str]:
    return list(connection.scalars(select(EventRow.kind).order_by(EventRow.id)))


async def test_copies_handed_to_a_node_that_stalls_are_written_once_by_the_other(
    writer: Writer, second_writer: Writer, tmp_path: Path
) -> None:
    """Acceptance on n1 stored the copies leased to n1 and handed them over; n1 froze before writing."""
    handed: list[CopyJob] = []
    await accept(writer, "sb-b1@kunde-b.example", "Gestoppt", handoff=HandOff("n1", 60.0, handed.extend))
    assert len(handed) == 3
    assert all(job.first_attempt for job in handed)
    root = tmp_path / "mail"
    n1_box, n2_box = Watched(root), Watched(root)
    n2 = fanout(second_writer, n2_box, "n2")
    assert await n2.run_once() == 0, "leased to n1"

    await lease_runs_out(writer, "n1")
    assert await n2.run_once() == 3
    written = {r.copy_id: r.mailbox_ref for r in await writer.run(copy_rows)}
    assert set(written) == {job.copy_id for job in handed}

    n1 = fanout(writer, n1_box, "n1")
    n1.take(handed)  # n1 resumes with the copies acceptance handed it
    await n1.run_once()
    assert n1_box.touched == [], "n1 lost its leases: it must not even try to write"
    for job in handed:
        assert files(root, job.copy_id) == [f"{PORTFOLIO}/{job.address}/new/{job.copy_id}.gateway"]
    rows = await writer.run(copy_rows)
    assert {r.copy_id: (r.state, r.mailbox_ref, r.leased_by) for r in rows} == {
        copy_id: ("delivered", ref, None) for copy_id, ref in written.items()
    }
    assert "copy.failed" not in await writer.run(events)


async def test_a_node_frozen_after_its_claim_writes_nothing_the_other_took_over(
    writer: Writer, second_writer: Writer, tmp_path: Path
) -> None:
    await accept(writer, "gf-a@kunde-a.example", "Eingefroren")
    root = tmp_path / "mail"
    n1_box, n2_box = Watched(root), Watched(root)
    frozen = Frozen(writer, queue.claim)
    n1 = fanout(frozen, n1_box, "n1")
    n1_run = asyncio.create_task(n1.run_once())
    await frozen.frozen.wait()
    [first, second] = await writer.run(copy_rows)
    assert (first.leased_by, second.leased_by) == ("n1", "n1")

    await lease_runs_out(writer, "n1")
    # n2 takes both over; the mailbox refuses one of them for now, so that copy is still pending
    # (and due later) when n1 resumes: only the token tells n1 it is no longer its copy.
    n2 = fanout(second_writer, n2_box, "n2")
    refused = second.copy_id

    async def refuse_one(deliveries: Sequence[Delivery]) -> list[Located | Exception]:
        n2_box.touched += [d.copy_id for d in deliveries]
        results = await MaildirMailbox.append_batch(n2_box, [d for d in deliveries if d.copy_id != refused])
        by_id = dict(zip([d.copy_id for d in deliveries if d.copy_id != refused], results, strict=True))
        return [by_id.get(d.copy_id, MailboxError(errno.EIO, "i/o error", "/srv/mail")) for d in deliveries]

    n2_box.append_batch = refuse_one  # type: ignore[method-assign]
    assert await n2.run_once() == 2
    after_n2 = {
        r.copy_id: (r.state, r.attempts, r.leased_by, r.last_error) for r in await writer.run(copy_rows)
    }
    assert after_n2[first.copy_id][0] == "delivered"
    assert after_n2[refused][:3] == ("pending", 1, None)

    frozen.thaw()
    assert await n1_run == 2
    assert n1_box.touched == []
    assert len(files(root, first.copy_id)) == 1
    assert files(root, refused) == []
    after_n1 = {
        r.copy_id: (r.state, r.attempts, r.leased_by, r.last_error) for r in await writer.run(copy_rows)
    }
    assert after_n1 == after_n2, "n1 recorded nothing over n2's records"


async def test_a_copy_revoked_while_its_node_held_it_is_removed_once_the_node_gives_it_up(
    writer: Writer, tmp_path: Path
) -> None:
    # Reconciliation revokes a copy the fan-out holds for writing: its removal waits for that lease (the
    # write may be under way). The fan-out then finds the job lost before it writes anything; from
    # then on nothing is under way, and the removal is due at once, not when the minute's lease ends.
    await accept(writer, "gf-a@kunde-a.example", "Entzogen beim Schreiben")
    box = Watched(tmp_path / "mail")
    frozen = Frozen(writer, queue.claim)
    node = fanout(frozen, box, "n1")
    run = asyncio.create_task(node.run_once())
    await frozen.frozen.wait()
    [revoked, kept] = await writer.run(copy_rows)
    await writer.run(lambda c: reconcile_rows._revoke(c, [{"b_id": revoked.id}], dt.datetime.now(dt.UTC)))
    [waiting] = [r for r in await writer.run(copy_rows) if r.id == revoked.id]
    assert (waiting.state, waiting.leased_by) == ("revoking", "n1")
    assert utc(waiting.next_attempt_at) > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30), (
        "the lease's end"
    )

    frozen.thaw()
    assert await run == 2
    assert box.touched == [kept.copy_id], "the revoked copy was not written"
    [due] = [r for r in await writer.run(copy_rows) if r.id == revoked.id]
    assert utc(due.next_attempt_at) <= dt.datetime.now(dt.UTC), "due now that nothing is under way"
    assert await node.run_once() == 1, "the removal, at the next look"
    after = {r.copy_id: r.state for r in await writer.run(copy_rows)}
    assert after == {revoked.copy_id: "revoked", kept.copy_id: "delivered"}


async def test_copies_of_a_stalled_node_reach_an_imap_mailbox_once(
    writer: Writer, second_writer: Writer, dovecot: Dovecot
) -> None:
    """The same with the IMAP backend (a private Dovecot), where no file name can collide: the confirm
    alone keeps n1 from appending what n2 appended."""
    handed: list[CopyJob] = []
    await accept(writer, "sb-b1@kunde-b.example", "Gestoppt", handoff=HandOff("n1", 60.0, handed.extend))
    for job in handed:
        dovecot.add_user(job.address)
    n1_box, n2_box = (ImapMailbox.from_settings(dovecot.imap_settings(), timeout=10) for _ in range(2))
    try:
        await lease_runs_out(writer, "n1")
        assert await fanout(second_writer, n2_box, "n2").run_once() == 3
        n1 = fanout(writer, n1_box, "n1")
        n1.take(handed)
        await n1.run_once()
        for job in handed:
            found = await n2_box.find(MailboxOwner(PORTFOLIO, job.address), job.copy_id)
            assert len(found) == 1, job.address
        assert {r.state for r in await writer.run(copy_rows)} == {"delivered"}
    finally:
        await n1_box.close()
        await n2_box.close()


async def test_a_stale_record_does_not_overwrite_the_new_owner_s(
    writer: Writer, second_writer: Writer
) -> None:
    """n1 wrote (or failed) and froze before recording; n2 holds the copy now. n1's late record must
    neither mark it delivered nor free n2's lease for a third node."""
    await accept(writer, "sb-a1@kunde-a.example", "Spaet")
    now = dt.datetime.now(dt.UTC)
    n1_jobs = await writer.run(queue.claim, "n1", now, 60.0, 10)
    assert await writer.run(queue.confirm, queue.JobKind.COPY, n1_jobs, "n1", now, 60.0) == {
        j.id for j in n1_jobs
    }
    await lease_runs_out(writer, "n1")
    n2_jobs = await second_writer.run(queue.claim, "n2", dt.datetime.now(dt.UTC), 60.0, 10)
    assert {j.id for j in n2_jobs} == {j.id for j in n1_jobs}
    assert all(b.lease_token == a.lease_token + 1 for a, b in zip(n1_jobs, n2_jobs, strict=True))
    before = await writer.run(copy_rows)

    [delivered, failed] = n1_jobs
    outcomes = [Outcome(delivered, mailbox_ref="new/x.gateway"), Outcome(failed, error="disk full")]
    retry_at = {failed.id: (False, now + dt.timedelta(seconds=10))}
    recorded = await writer.run(queue.record, outcomes, now, retry_at, node="n1")
    assert await writer.run(copy_rows) == before, "leased to n2, pending, untouched"
    assert recorded.lost == {delivered.id, failed.id}
    # Nor can n1 confirm its old leases any more: the write would not even start.
    assert await writer.run(queue.confirm, queue.JobKind.COPY, n1_jobs, "n1", now, 60.0) == set()
    # n2's own record goes through.
    n2_outcomes = [Outcome(job, mailbox_ref=f"new/{job.copy_id}.gateway") for job in n2_jobs]
    assert (await second_writer.run(queue.record, n2_outcomes, now, {}, node="n2")).lost == frozenset()
    assert {r.state for r in await writer.run(copy_rows)} == {"delivered"}


async def _delivered(writer: Writer, box: MaildirMailbox, subject: str) -> tuple[Any, MailboxOwner]:
    """SB-A1's copy of a new mail (SB-A2 gets one too), written by a node "n0" that then went away;
    its row and its mailbox."""
    await accept(writer, "sb-a1@kunde-a.example", subject)
    assert await fanout(writer, box, "n0").run_once() == 2
    rows = await writer.run(copy_rows)
    assert {r.state for r in rows} == {"delivered"}
    member = await writer.run(
        lambda c: c.scalar(select(MemberRow.id).where(MemberRow.address == "sb-a1@kunde-a.example"))
    )
    [row] = [r for r in rows if r.member_id == member]
    return row, MailboxOwner(PORTFOLIO, "sb-a1@kunde-a.example")


async def test_a_flag_job_of_a_stalled_node_is_not_done_again_over_the_member_s_change(
    writer: Writer, second_writer: Writer, tmp_path: Path
) -> None:
    root = tmp_path / "mail"
    n1_box, n2_box = Watched(root), Watched(root)
    row, owner = await _delivered(writer, MaildirMailbox(root), "Gelesen")
    # A co-member read the mail and read_sync says so: \Seen is due on this copy (flag sync's doing).
    await writer.run(
        lambda c: c.execute(
            update(CopyRow)
            .where(CopyRow.id == row.id)
            .values(seen=True, flags_pending=True, next_attempt_at=PAST)
        )
    )
    frozen = Frozen(writer, queue.claim_flags)
    n1 = fanout(frozen, n1_box, "n1")
    n1_run = asyncio.create_task(n1.run_once())
    await frozen.frozen.wait()

    await lease_runs_out(writer, "n1")
    n2 = fanout(second_writer, n2_box, "n2")
    assert await n2.run_once() == 1
    [located] = await n2_box.find(owner, row.copy_id)
    assert Flag.SEEN in located.flags
    await n2_box.remove_flags(owner, row.copy_id, frozenset({Flag.SEEN}))  # the member: "unread" again

    frozen.thaw()
    await n1_run
    assert n1_box.touched == []
    [located] = await n2_box.find(owner, row.copy_id)
    assert Flag.SEEN not in located.flags, "clearing stays local: n1 must not set \\Seen again"
    [after] = [r for r in await writer.run(copy_rows) if r.id == row.id]
    assert (after.flags_pending, after.leased_by, after.attempts) == (False, None, row.attempts)


async def test_a_removal_by_a_stalled_node_does_not_take_out_a_copy_written_again(
    writer: Writer, second_writer: Writer, tmp_path: Path
) -> None:
    root = tmp_path / "mail"
    n1_box, n2_box = Watched(root), Watched(root)
    row, _ = await _delivered(writer, MaildirMailbox(root), "Entzogen")

    def revoke(connection: Connection) -> None:  # reconciliation: SB-A1 may no longer see it
        connection.execute(
            update(CopyRow).where(CopyRow.id == row.id).values(state="revoking", next_attempt_at=PAST)
        )

    await writer.run(revoke)
    frozen = Frozen(writer, queue.claim_removals)
    n1 = fanout(frozen, n1_box, "n1")
    n1_run = asyncio.create_task(n1.run_once())
    await frozen.frozen.wait()

    await lease_runs_out(writer, "n1")
    n2 = fanout(second_writer, n2_box, "n2")
    assert await n2.run_once() == 1
    assert files(root, row.copy_id) == []
    # SB-A1 is entitled again (reconciliation brings the row back as pending) and n2 writes it again.
    await writer.run(
        lambda c: c.execute(
            update(CopyRow).where(CopyRow.id == row.id).values(state="pending", next_attempt_at=PAST)
        )
    )
    assert await n2.run_once() == 1
    assert len(files(root, row.copy_id)) == 1

    frozen.thaw()
    await n1_run
    assert n1_box.touched == []
    assert len(files(root, row.copy_id)) == 1, "n1's stale removal must not take the copy out again"
    [after] = [r for r in await writer.run(copy_rows) if r.id == row.id]
    assert after.state == "delivered"
    kinds = await writer.run(events)
    assert kinds.count("copy.revoked") == 1


# --- the relay ------------------------------------------------------------------------------------------


@pytest.fixture
def sink() -> Iterator[BackOfficeSink]:
    with running_sink() as server:
        yield server


async def _queue_reply(writer: Writer) -> int:
    """A member's reply queued for the back office "ams", due now; its relay row id."""
    gateway_id = await accept(writer, "sb-a1@kunde-a.example", "Antwort")

    def queue_one(connection: Connection) -> int:
        now = dt.datetime.now(dt.UTC)
        message = connection.execute(
            select(MessageRow.id, MessageRow.portfolio_id, MessageRow.backoffice_id).where(
                MessageRow.gateway_id == gateway_id
            )
        ).one()
        member = connection.scalar(select(MemberRow.id).where(MemberRow.address == "sb-a1@kunde-a.example"))
        relay = relayqueue.NewRelay(
            portfolio_id=message.portfolio_id,
            message_pk=message.id,
            backoffice_id=message.backoffice_id,
            member_id=int(member or 0),
            envelope_sender="sb-a1@kunde-a.example",
            recipients=("ams@makler-muster.example",),
            relay_message_id="<antwort@gw.example>",
            data=b"From: sb-a1@kunde-a.example\r\nSubject: Antwort\r\n\r\nText\r\n",
        )
        assert relayqueue.queue_relay(connection, relay, now, 3600.0)
        return int(connection.scalar(select(RelayRow.id).where(RelayRow.message_id == message.id)) or 0)

    return await writer.run(queue_one)


def relay_row(connection: Connection) -> Any:
    return connection.execute(select(RelayRow.__table__)).one()


async def test_mail_taken_over_from_a_stalled_relay_reaches_the_back_office_once(
    with_login: Gateway, writer: Writer, second_writer: Writer, sink: BackOfficeSink
) -> None:
    await asyncio.to_thread(
        with_login, "backoffice", "set", "ams", "-p", PORTFOLIO, "--relay-port", str(sink.port)
    )
    await _queue_reply(writer)
    settings = RelaySettings(retry_base=30, retry_max=60, lease=300.0)
    frozen = Frozen(writer, relayqueue.claim)
    n1 = Relay(frozen, Watched(Path("/nonexistent")), settings, node="n1", hostname="gw1.example")
    n1_run = asyncio.create_task(n1.run_once())
    await frozen.frozen.wait()
    assert (await writer.run(relay_row)).leased_by == "n1"

    await lease_runs_out(writer, "n1")
    n2 = Relay(second_writer, Watched(Path("/nonexistent")), settings, node="n2", hostname="gw2.example")
    assert await n2.run_once() == 1
    assert len(await asyncio.to_thread(sink.wait_for, 1)) == 1
    sent = await writer.run(relay_row)
    assert (sent.state, sent.attempts, sent.leased_by) == ("sent", 1, None)

    frozen.thaw()
    assert await n1_run == 1
    assert sink.attempts == 1, "n1 lost its lease: it must not send the mail again"
    assert len(sink.received) == 1
    again = await writer.run(relay_row)
    assert (again.state, again.attempts, again.last_reply, again.sent_at) == (
        "sent",
        1,
        sent.last_reply,
        sent.sent_at,
    )
    assert (await writer.run(events)).count("relay.sent") == 1


async def test_a_stale_relay_record_does_not_overwrite_the_new_owner_s(
    writer: Writer, second_writer: Writer
) -> None:
    await _queue_reply(writer)
    now = dt.datetime.now(dt.UTC)
    [n1_job] = await writer.run(relayqueue.claim, "n1", now, 300.0, 10)
    await lease_runs_out(writer, "n1")
    [n2_job] = await second_writer.run(relayqueue.claim, "n2", dt.datetime.now(dt.UTC), 300.0, 10)
    assert n2_job.lease_token == n1_job.lease_token + 1
    assert await writer.run(relayqueue.confirm, [n1_job], "n1", now, 300.0) == set()
    before = await writer.run(relay_row)

    stale = relayqueue.RelayResult(n1_job, RelayState.SENT, reply="250 ok")
    assert await writer.run(relayqueue.record, [stale], now, node="n1") == []
    assert await writer.run(relay_row) == before, "still leased to n2, pending: n2 is sending it"
    mine = relayqueue.RelayResult(n2_job, RelayState.SENT, reply="250 ok")
    assert await second_writer.run(relayqueue.record, [mine], now, node="n2") == [mine]
    assert (await writer.run(relay_row)).state == "sent"
