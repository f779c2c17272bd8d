"""The copy queue in the database: take due copies with a lease, and record how each attempt went.

On PostgreSQL several gateway processes share the queue: ``FOR UPDATE SKIP LOCKED`` lets each take
different copies without waiting for the others. SQLite has one writer at a time, and the clause is
left out there by SQLAlchemy; the lease (``next_attempt_at`` in the future plus ``leased_by``) does the
rest on both.

A lease can run out under a node that is still working: a process frozen (SIGSTOP, a VM paused, swap)
longer than the lease, while another node takes its copies over. Leases are therefore fenced: every
claim adds one to the row's ``lease_token`` and the job carries the new value. Before the fan-out
touches a mailbox it confirms the batch's leases in one statement (``confirm``) and drops the jobs it
lost; every record (``record``, ``record_flags``, ``record_removals``) applies only to rows still
leased to the node under the job's token, so a stale node never overwrites what the new owner recorded.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    case,
    func,
    literal,
    not_,
    or_,
    select,
    text,
    tuple_,
    union_all,
    update,
)

from gateway.db.events import Event, EventKind, append_events
from gateway.db.models import (
    COPIES,
    CopyRow,
    CopyState,
    MemberRow,
    MessageRow,
    PortfolioRow,
    RelayPurpose,
    RelayRow,
    RelayState,
    ReleaseRow,
    VorgangRow,
    utc,
)
from gateway.domain.parsing import ParsedMessage
from gateway.domain.rules import CopyHeaders
from gateway.domain.trace import Trace
from gateway.errors import InputError, NotFound


@dataclass(frozen=True, slots=True)
class TakenCopy:
    """A copy taken from the queue for a job on its member's mailbox: which copy, how often it was
    tried, and whose mailbox it is in."""

    id: int
    copy_id: str
    attempts: int
    portfolio_id: int
    portfolio: str
    member_id: int
    address: str


@dataclass(frozen=True, slots=True)
class CopyJob(TakenCopy):
    """Everything needed to write one copy, read in the claiming transaction."""

    message_pk: int
    gateway_id: str
    message_id: str | None
    message_id_assigned: bool
    vorgang_id: int
    vorgang: str
    shared_via: str | None
    seen: bool
    answered: bool
    raw: bytes
    # False when an earlier attempt may have written the copy (its lease was taken before).
    first_attempt: bool = False
    # Headers routing rules set or strip on the message's copies.
    copy_headers: CopyHeaders = field(default_factory=CopyHeaders)
    # How the message arrived: the copy's Received line (None: stored before traces were kept).
    trace: Trace | None = None
    # When the copy was queued (its message accepted, or the copy back-filled): the delivery latency.
    queued_at: dt.datetime | None = None
    # The row's lease token under this job's lease (``confirm``); a copy handed over by acceptance
    # (``gateway.db.copies.handed_job``) was stored leased with the first token, 0.
    lease_token: int = 0
    # The message's header facts as acceptance read them (in a parse worker), when it handed the copy
    # over: the fan-out then need not read the message again on the event loop. None when claimed.
    parsed: ParsedMessage | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Outcome:
    job: CopyJob
    mailbox_ref: str | None = None
    error: str | None = None


def release_own_leases(connection: Connection, node: str, now: dt.datetime) -> int:
    """Make copies this node had taken before it stopped due at once (after a crash or kill).

    ``leased_by`` stays set: it tells the next attempt that this one may have written the copy.
    """
    result = connection.execute(
        update(CopyRow)
        .where(CopyRow.state == CopyState.PENDING, CopyRow.leased_by == node)
        .values(next_attempt_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _lease(
    connection: Connection, ids: Sequence[int], node: str, now: dt.datetime, lease: float
) -> dict[int, int]:
    """Reserve taken copies for ``node`` until the lease ends (every kind of job on the copy queue);
    returns each copy's new lease token. The token grows on every claim, so a node whose lease was
    taken over, even by itself after a restart, holds a token no row has any more."""
    return {
        int(pk): int(token)
        for pk, token in connection.execute(
            update(CopyRow)
            .where(CopyRow.id.in_(ids))
            .values(
                next_attempt_at=now + dt.timedelta(seconds=lease),
                leased_by=node,
                lease_token=CopyRow.lease_token + 1,
            )
            .returning(CopyRow.id, CopyRow.lease_token)
        )
    }


class JobKind(enum.Enum):
    """The three jobs on the copy queue, by the state a copy is in while its job waits."""

    COPY = "copy"  # pending: write the copy
    FLAGS = "flags"  # delivered with flags_pending: set its flags in the mailbox
    REMOVAL = "removal"  # revoking: take it out of every folder


def _waiting_for(kind: JobKind) -> Any:
    """The row still waits for a job of ``kind``: a condition for rows already found by their ids.

    The state is compared as ``state || ''``, which no index serves: SQLite's planner would otherwise
    take the queue's index on ``state`` (it guesses an equality there finds a few rows) and read every
    pending copy of a backlog to find a batch's hundred by their ids (EXPLAIN QUERY PLAN shows which).
    """
    state = COPIES.c.state.concat("")
    if kind is JobKind.COPY:
        return state == CopyState.PENDING.value
    if kind is JobKind.FLAGS:
        return and_(state == CopyState.DELIVERED.value, COPIES.c.flags_pending.is_(True))
    return state == CopyState.REVOKING.value


def confirm(
    connection: Connection,
    kind: JobKind,
    jobs: Sequence[CopyJob | FlagJob | RemovalJob],
    node: str,
    now: dt.datetime,
    lease: float,
) -> set[int]:
    """Confirm, right before writing, that ``node`` still holds the leases of ``jobs``; returns the row
    ids still held. One statement for the whole batch on PostgreSQL, and one more when some were lost
    (``end_lost_leases``).

    A lease is held while the row is leased to ``node`` under the job's token and still waits for this
    kind of job. Another node that took the row over after the lease ran out has raised the token; a
    copy revoked, delivered or given up meanwhile waits for something else: either way the job is lost
    and must not touch the mailbox.

    A lease with less than half of ``lease`` left is extended to ``lease`` from ``now``, under the
    row's lock. One with more left is confirmed by reading it: no lease runs out in that half, and
    nothing else takes a row over but a node that is declared dead (``gateway.db.nodes``), which ends
    the lease (and leaves it to this branch's other half). Copies that acceptance just handed over
    hold a fresh lease, so their confirm writes nothing, and its commit does not wait for the disk.
    """
    if not jobs:
        return set()
    held = (
        # The ids alone as well: SQLite finds rows by a row-value IN only by scanning the table.
        COPIES.c.id.in_([j.id for j in jobs]),
        tuple_(COPIES.c.id, COPIES.c.lease_token).in_([(j.id, j.lease_token) for j in jobs]),
        COPIES.c.leased_by == node,
        _waiting_for(kind),
    )
    half = now + dt.timedelta(seconds=lease / 2)
    held_ids = _confirm_held(connection, held, now, half, lease)
    if len(held_ids) < len(jobs):
        end_lost_leases(connection, kind, [j for j in jobs if j.id not in held_ids], node, now)
    return held_ids


def _confirm_held(
    connection: Connection, held: tuple[Any, ...], now: dt.datetime, half: dt.datetime, lease: float
) -> set[int]:
    extend = (
        update(COPIES)
        .where(*held, COPIES.c.next_attempt_at < half)
        .values(next_attempt_at=now + dt.timedelta(seconds=lease))
        .returning(COPIES.c.id)
    )
    fresh = select(COPIES.c.id).where(*held, COPIES.c.next_attempt_at >= half)
    if connection.dialect.name == "postgresql":
        extended = extend.cte("extended")
        both = union_all(fresh, select(extended.c.id))
        return {int(pk) for pk in connection.scalars(both)}
    return {int(pk) for pk in connection.scalars(extend)} | {int(pk) for pk in connection.scalars(fresh)}


def end_lost_leases(
    connection: Connection,
    kind: JobKind,
    jobs: Sequence[CopyJob | FlagJob | RemovalJob],
    node: str,
    now: dt.datetime,
) -> None:
    """Make due at once the rows of ``jobs`` that still carry ``node``'s lease but no longer wait for a
    job of ``kind``: a copy reconciliation revoked while this node held it for writing waits for the end
    of that lease before its removal is due (the write might be under way); once this node has given
    the job up, unwritten or written, nothing is under way and the removal need not wait out the lease
    (a minute by default). Rows another node took over carry its lease, and are left alone."""
    if not jobs:
        return
    connection.execute(
        update(COPIES)
        .where(
            COPIES.c.id.in_([j.id for j in jobs]),
            tuple_(COPIES.c.id, COPIES.c.lease_token).in_([(j.id, j.lease_token) for j in jobs]),
            COPIES.c.leased_by == node,
            not_(_waiting_for(kind)),
            COPIES.c.next_attempt_at > now,
        )
        .values(next_attempt_at=now)
    )


def _still_held(
    connection: Connection, kind: JobKind, jobs: Sequence[CopyJob | FlagJob | RemovalJob], node: str
) -> set[int]:
    """The rows of ``jobs`` still leased to ``node`` under each job's token, locked until the commit
    (PostgreSQL; SQLite has one writer): what a record may change."""
    if not jobs:
        return set()
    return {
        int(pk)
        for pk in connection.scalars(
            select(COPIES.c.id)
            .where(
                # The ids alone as well: SQLite finds rows by a row-value IN only by scanning the table.
                COPIES.c.id.in_([j.id for j in jobs]),
                tuple_(COPIES.c.id, COPIES.c.lease_token).in_([(j.id, j.lease_token) for j in jobs]),
                COPIES.c.leased_by == node,
                _waiting_for(kind),
            )
            # In id order, as every record locks them: two records never wait for each other's rows.
            .order_by(COPIES.c.id)
            .with_for_update()
        )
    }


def claim(connection: Connection, node: str, now: dt.datetime, lease: float, limit: int) -> list[CopyJob]:
    # A comprehension, not dict(result): a Result has keys() and would be read as a mapping.
    taken: dict[int, str | None] = {
        int(copy_pk): leased_by
        for copy_pk, leased_by in connection.execute(
            select(CopyRow.id, CopyRow.leased_by)
            .where(CopyRow.state == CopyState.PENDING, CopyRow.next_attempt_at <= now)
            .order_by(CopyRow.next_attempt_at, CopyRow.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    }
    if len(taken) < limit:
        for copy_pk in _probes(connection, now, limit - len(taken)):
            taken[copy_pk] = None
    ids = list(taken)
    if not ids:
        return []
    tokens = _lease(connection, ids, node, now, lease)
    rows = connection.execute(
        select(
            CopyRow.id,
            CopyRow.copy_id,
            CopyRow.attempts,
            CopyRow.portfolio_id,
            PortfolioRow.name,
            CopyRow.member_id,
            MemberRow.address,
            MessageRow.id,
            MessageRow.gateway_id,
            MessageRow.message_id,
            MessageRow.message_id_assigned,
            VorgangRow.id,
            VorgangRow.reference,
            ReleaseRow.name,
            CopyRow.seen,
            CopyRow.answered,
            CopyRow.created_at,
        )
        .join(PortfolioRow, PortfolioRow.id == CopyRow.portfolio_id)
        .join(MemberRow, MemberRow.id == CopyRow.member_id)
        .join(MessageRow, MessageRow.id == CopyRow.message_id)
        .join(VorgangRow, VorgangRow.id == MessageRow.vorgang_id)
        .outerjoin(ReleaseRow, ReleaseRow.id == CopyRow.shared_via_release_id)
        .where(CopyRow.id.in_(ids))
        .order_by(CopyRow.id)
    )
    facts = list(rows)
    # Several copies share one message; read each message's bytes once.
    raws: dict[int, bytes] = {}
    edits: dict[int, CopyHeaders] = {}
    traces: dict[int, Trace | None] = {}
    for pk, raw, copy_headers, trace in connection.execute(
        select(MessageRow.id, MessageRow.raw, MessageRow.copy_headers, MessageRow.trace).where(
            MessageRow.id.in_({f[7] for f in facts})
        )
    ):
        raws[int(pk)] = bytes(raw)
        edits[int(pk)] = CopyHeaders.from_json(copy_headers)
        traces[int(pk)] = Trace.from_json(trace)
    return [
        CopyJob(
            id=f[0],
            copy_id=f[1],
            attempts=f[2],
            portfolio_id=f[3],
            portfolio=f[4],
            member_id=f[5],
            address=f[6],
            message_pk=f[7],
            gateway_id=f[8],
            message_id=f[9],
            message_id_assigned=f[10],
            vorgang_id=f[11],
            vorgang=f[12],
            shared_via=f[13],
            seen=f[14],
            answered=f[15],
            raw=raws[f[7]],
            first_attempt=f[2] == 0 and taken[f[0]] is None,
            copy_headers=edits[f[7]],
            trace=traces[f[7]],
            queued_at=utc(f[16]),
            lease_token=tokens[f[0]],
        )
        for f in facts
    ]


def _probes(connection: Connection, now: dt.datetime, limit: int) -> list[int]:
    """Take one due held copy per mailbox back into the queue, as a probe of that mailbox.

    Held copies wait for their mailbox, not for an admin: a disk that was full, a server that was
    away, comes back without anyone saying so. The probe goes out like any copy; when it is written,
    ``record`` makes the mailbox's other held copies due at once, and when it fails, they all wait
    another ``held_retry``.
    """
    oldest = list(
        connection.scalars(
            select(func.min(CopyRow.id))
            .where(CopyRow.state == CopyState.HELD, CopyRow.next_attempt_at <= now)
            .group_by(CopyRow.member_id)
            .order_by(func.min(CopyRow.id))
            .limit(limit)
        )
    )
    if not oldest:
        return []
    # The state in the WHERE makes the take atomic: another node probing at the same moment gets none.
    return [
        int(pk)
        for pk in connection.scalars(
            update(CopyRow)
            .where(CopyRow.id.in_(oldest), CopyRow.state == CopyState.HELD)
            .values(state=CopyState.PENDING)
            .returning(CopyRow.id)
        )
    ]


@dataclass(frozen=True, slots=True)
class Recorded:
    """What ``record`` did: held copies released because their mailbox took a copy, and the copies it
    left alone because this node no longer held them (another node took them over, or reconciliation
    revoked them while they were written)."""

    released: int = 0
    lost: frozenset[int] = frozenset()


def record(
    connection: Connection,
    outcomes: Sequence[Outcome],
    now: dt.datetime,
    retry_at: dict[int, tuple[bool, dt.datetime]],
    *,
    node: str,
) -> Recorded:
    """Store how each attempt went; ``retry_at`` maps a failed copy to (held?, its next attempt).

    A copy written releases the held copies of its mailbox (they are due at once); a copy held pushes
    the next try of its mailbox's other held copies to its own. Only copies still leased to ``node``
    under their job's token are recorded (fencing): a node that stalled past its lease must not
    overwrite what the node that took the copy over recorded."""
    # Only a copy still pending is recorded: reconciliation may have revoked it while it was being
    # written (it waited for this lease to end), and a revoked copy must not turn delivered again.
    postgresql = connection.dialect.name == "postgresql"
    released = 0
    if postgresql:
        # There the copies written are recorded by the statement that locks the batch's rows.
        held_now, released = _record_delivered_postgresql(connection, outcomes, now, node)
    else:
        held_now = _still_held(connection, JobKind.COPY, [o.job for o in outcomes], node)
    lost = frozenset(o.job.id for o in outcomes if o.job.id not in held_now)
    end_lost_leases(connection, JobKind.COPY, [o.job for o in outcomes if o.job.id in lost], node, now)
    outcomes = [o for o in outcomes if o.job.id in held_now]
    delivered = [] if postgresql else [o for o in outcomes if o.error is None]
    if delivered:
        # Flags set while the write was under way (an answer came in) are caught up by claim_flags,
        # which takes them once due: at once, not never (NULL).
        flags_changed = or_(
            COPIES.c.answered != bindparam("b_answered"), COPIES.c.seen != bindparam("b_seen")
        )
        due_now = literal(now, COPIES.c.next_attempt_at.type)
        connection.execute(
            update(COPIES)
            .where(
                COPIES.c.id == bindparam("b_id"),
                COPIES.c.lease_token == bindparam("b_token"),
                COPIES.c.state == CopyState.PENDING,
            )
            .values(
                state=CopyState.DELIVERED,
                delivered_at=now,
                flags_pending=flags_changed,
                mailbox_ref=bindparam("b_ref"),
                attempts=COPIES.c.attempts + 1,
                next_attempt_at=case((flags_changed, due_now), else_=None),
                leased_by=None,
                last_error=None,
                updated_at=now,
            ),
            [
                {
                    "b_id": o.job.id,
                    "b_token": o.job.lease_token,
                    "b_ref": o.mailbox_ref,
                    "b_answered": o.job.answered,
                    "b_seen": o.job.seen,
                }
                for o in delivered
            ],
        )
    if delivered:
        # The mailbox works again: what it held back is written now, not at the next probe.
        released = int(
            getattr(
                connection.execute(
                    update(COPIES)
                    .where(
                        COPIES.c.member_id.in_({o.job.member_id for o in delivered}),
                        COPIES.c.state == CopyState.HELD,
                    )
                    .values(state=CopyState.PENDING, next_attempt_at=now, updated_at=now)
                ),
                "rowcount",
                0,
            )
            or 0
        )
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        connection.execute(
            update(COPIES)
            .where(
                COPIES.c.id == bindparam("b_id"),
                COPIES.c.lease_token == bindparam("b_token"),
                COPIES.c.state == CopyState.PENDING,
            )
            .values(
                state=bindparam("b_state"),
                attempts=COPIES.c.attempts + 1,
                next_attempt_at=bindparam("b_next"),
                leased_by=None,
                last_error=bindparam("b_error"),
                updated_at=now,
            ),
            [
                {
                    "b_id": o.job.id,
                    "b_token": o.job.lease_token,
                    "b_state": CopyState.HELD if retry_at[o.job.id][0] else CopyState.PENDING,
                    "b_next": retry_at[o.job.id][1],
                    "b_error": (o.error or "")[:2000],
                }
                for o in failed
            ],
        )
        held = [o for o in failed if retry_at[o.job.id][0]]
        if held:
            # One probe per mailbox: its other held copies wait as long as the one that just failed.
            connection.execute(
                update(COPIES)
                .where(
                    COPIES.c.member_id == bindparam("b_member"),
                    COPIES.c.state == CopyState.HELD,
                    COPIES.c.next_attempt_at < bindparam("b_next"),
                )
                .values(next_attempt_at=bindparam("b_next")),
                [{"b_member": o.job.member_id, "b_next": retry_at[o.job.id][1]} for o in held],
            )
    return Recorded(released, lost)


def _record_delivered_postgresql(
    connection: Connection, outcomes: Sequence[Outcome], now: dt.datetime, node: str
) -> tuple[set[int], int]:
    """``record``'s work for the copies written, in one statement on PostgreSQL: lock every row of
    ``outcomes`` still leased to ``node`` under its job's token (in id order, as ``_still_held``),
    mark the written ones delivered, and make the held copies of their mailboxes due. Returns the
    rows still held (the failed ones among them are recorded by ``record``) and how many held
    copies were released.

    A batch that only wrote copies commits without waiting for the disk (``synchronous_commit`` off
    for this transaction alone). A server crash that loses the record leaves the copies pending and
    leased to this node, as a gateway crash after the write and before the record does: the next
    attempt (after the lease, or at once when the node starts again) finds each copy in its mailbox by
    its id and records it then, so nothing is written twice. Failures are recorded with their events,
    and wait for the disk as every other transaction does.
    """
    if not outcomes:
        return set(), 0
    delivered = [o for o in outcomes if o.error is None]
    params: dict[str, Any] = {
        "ids": [o.job.id for o in outcomes],
        "tokens": [o.job.lease_token for o in outcomes],
        "node": node,
        "now": now,
        "d_ids": [o.job.id for o in delivered],
        "d_tokens": [o.job.lease_token for o in delivered],
        "d_refs": [o.mailbox_ref for o in delivered],
        "d_answered": [o.job.answered for o in delivered],
        "d_seen": [o.job.seen for o in delivered],
        "asynchronous": len(delivered) == len(outcomes),
    }
    held: set[int] = set()
    released = 0
    for what, value in connection.execute(_RECORD_DELIVERED, params):
        if what == "held":
            held.add(int(value))
        elif what == "released":
            released = int(value)
    return held, released


# The rows locked in id order first (two records never wait for each other's rows), found by their
# ids (``state || ''``: the queue's index on the state would lead the planner to read every pending
# copy of a backlog, as ``_waiting_for`` says); the delivered ones updated from arrays (one text for
# any batch size); a copy whose flags changed while it was written is due at once for claim_flags;
# the held copies of the mailboxes that took a copy are due (found among the held ones, few, by the
# queue's index: ``member_id + 0`` keeps the planner off the index of every copy a member ever got).
_RECORD_DELIVERED = text(
    """
WITH commit_mode AS (
    SELECT set_config('synchronous_commit', 'off', true) WHERE CAST(:asynchronous AS boolean)
), held AS (
    SELECT copies.id FROM copies
    JOIN unnest(CAST(:ids AS bigint[]), CAST(:tokens AS bigint[])) AS job(id, token)
        ON copies.id = job.id AND copies.lease_token = job.token
    WHERE copies.id = ANY(CAST(:ids AS bigint[])) AND copies.leased_by = CAST(:node AS text)
        AND (copies.state || '') = 'pending'
    ORDER BY copies.id
    FOR UPDATE OF copies
), written AS (
    UPDATE copies SET
        state = 'delivered',
        delivered_at = CAST(:now AS timestamptz),
        flags_pending = (copies.answered <> d.answered OR copies.seen <> d.seen),
        mailbox_ref = d.ref,
        attempts = copies.attempts + 1,
        next_attempt_at = CASE WHEN copies.answered <> d.answered OR copies.seen <> d.seen
            THEN CAST(:now AS timestamptz) END,
        leased_by = NULL,
        last_error = NULL,
        updated_at = CAST(:now AS timestamptz)
    FROM unnest(
        CAST(:d_ids AS bigint[]), CAST(:d_tokens AS bigint[]), CAST(:d_refs AS text[]),
        CAST(:d_answered AS boolean[]), CAST(:d_seen AS boolean[])
    ) AS d(id, token, ref, answered, seen)
    WHERE copies.id = d.id AND copies.lease_token = d.token AND (copies.state || '') = 'pending'
        AND copies.id IN (SELECT id FROM held)
    RETURNING copies.member_id
), released AS (
    UPDATE copies SET state = 'pending', next_attempt_at = CAST(:now AS timestamptz),
        updated_at = CAST(:now AS timestamptz)
    WHERE copies.state = 'held' AND copies.member_id + 0 IN (SELECT member_id FROM written)
    RETURNING copies.id
)
SELECT 'held', id FROM held
UNION ALL
SELECT 'released', count(*) FROM released
UNION ALL
SELECT 'asynchronous', 0 FROM commit_mode
"""
)


@dataclass(frozen=True, slots=True)
class FlagJob(TakenCopy):
    """A delivered copy whose mailbox flags must catch up with the database (``flags_pending``)."""

    seen: bool
    answered: bool
    # When the flags became due: the row's last change before this claim (the flag propagation latency).
    pending_since: dt.datetime | None = None
    lease_token: int = 0  # the row's lease token under this job's lease (``confirm``)


def claim_flags(
    connection: Connection, node: str, now: dt.datetime, lease: float, limit: int
) -> list[FlagJob]:
    rows, tokens = _claim_jobs(
        connection,
        (CopyRow.seen, CopyRow.answered, CopyRow.updated_at),
        (CopyRow.state == CopyState.DELIVERED, CopyRow.flags_pending.is_(True)),
        node,
        now,
        lease,
        limit,
    )
    return [
        FlagJob(
            id=r[0],
            copy_id=r[1],
            attempts=r[2],
            portfolio_id=r[3],
            portfolio=r[4],
            member_id=r[5],
            address=r[6],
            seen=r[7],
            answered=r[8],
            pending_since=utc(r[9]),
            lease_token=tokens[r[0]],
        )
        for r in rows
    ]


def _claim_jobs(
    connection: Connection,
    extra: Sequence[Any],
    where: Sequence[Any],
    node: str,
    now: dt.datetime,
    lease: float,
    limit: int,
) -> tuple[list[Any], dict[int, int]]:
    """Take due copies that meet ``where`` with a lease: each with its id, copy id, attempts, portfolio
    (id, name), member (id, address), then the ``extra`` columns; and each one's new lease token."""
    rows = list(
        connection.execute(
            select(
                CopyRow.id,
                CopyRow.copy_id,
                CopyRow.attempts,
                CopyRow.portfolio_id,
                PortfolioRow.name,
                CopyRow.member_id,
                MemberRow.address,
                *extra,
            )
            .join(PortfolioRow, PortfolioRow.id == CopyRow.portfolio_id)
            .join(MemberRow, MemberRow.id == CopyRow.member_id)
            .join(MessageRow, MessageRow.id == CopyRow.message_id)
            .where(*where, CopyRow.next_attempt_at <= now)
            .order_by(CopyRow.next_attempt_at, CopyRow.id)
            .limit(limit)
            .with_for_update(of=CopyRow, skip_locked=True)
        )
    )
    if not rows:
        return [], {}
    return rows, _lease(connection, [r[0] for r in rows], node, now, lease)


def record_flags(
    connection: Connection,
    done: Sequence[FlagJob],
    failed: Sequence[tuple[FlagJob, str, dt.datetime]],
    now: dt.datetime,
    *,
    node: str,
) -> frozenset[int]:
    """Flags written (``done``), or not (with the error and the next attempt); only for copies still
    leased to ``node`` under the job's token. Returns the copies left alone (lost)."""
    held_now = _still_held(connection, JobKind.FLAGS, [*done, *(j for j, _, _ in failed)], node)
    lost = frozenset(j.id for j in done if j.id not in held_now) | {
        j.id for j, _, _ in failed if j.id not in held_now
    }
    done = [j for j in done if j.id in held_now]
    failed = [f for f in failed if f[0].id in held_now]
    if done:
        # Only what was written counts: a flag set in the database meanwhile keeps the copy pending.
        # Also only a copy still delivered: one revoked meanwhile keeps the removal's due time.
        connection.execute(
            update(COPIES)
            .where(
                COPIES.c.id == bindparam("b_id"),
                COPIES.c.lease_token == bindparam("b_token"),
                COPIES.c.state == CopyState.DELIVERED,
                COPIES.c.seen == bindparam("b_seen"),
                COPIES.c.answered == bindparam("b_answered"),
            )
            .values(
                flags_pending=False, next_attempt_at=None, leased_by=None, last_error=None, updated_at=now
            ),
            [
                {"b_id": j.id, "b_token": j.lease_token, "b_seen": j.seen, "b_answered": j.answered}
                for j in done
            ],
        )
        connection.execute(
            update(COPIES)
            .where(
                COPIES.c.id == bindparam("b_id"),
                COPIES.c.lease_token == bindparam("b_token"),
                COPIES.c.state == CopyState.DELIVERED,
                COPIES.c.flags_pending.is_(True),
            )
            .values(next_attempt_at=now, leased_by=None),
            [{"b_id": j.id, "b_token": j.lease_token} for j in done],
        )
    # Counted like a removal's, so the shared backoff grows for a flag job that keeps failing.
    _retry_later(
        connection, CopyState.DELIVERED, [(j.id, j.lease_token, error, at) for j, error, at in failed], now
    )
    return lost


def _retry_later(
    connection: Connection,
    state: CopyState,
    failed: Sequence[tuple[int, int, str, dt.datetime]],
    now: dt.datetime,
) -> None:
    """Record failed attempts at copies still in ``state`` (copy id, lease token, error, next attempt):
    a flag job or a removal is tried again, never given up."""
    if failed:
        connection.execute(
            update(COPIES)
            .where(
                COPIES.c.id == bindparam("b_id"),
                COPIES.c.lease_token == bindparam("b_token"),
                COPIES.c.state == state,
            )
            .values(
                attempts=COPIES.c.attempts + 1,
                next_attempt_at=bindparam("b_next"),
                leased_by=None,
                last_error=bindparam("b_error"),
                updated_at=now,
            ),
            [
                {"b_id": pk, "b_token": token, "b_next": at, "b_error": error[:2000]}
                for pk, token, error, at in failed
            ],
        )


@dataclass(frozen=True, slots=True)
class RemovalJob(TakenCopy):
    """A revoked copy to take out of its member's mailbox, from every folder (state ``revoking``)."""

    message_pk: int
    vorgang_id: int
    lease_token: int = 0  # the row's lease token under this job's lease (``confirm``)


def claim_removals(
    connection: Connection, node: str, now: dt.datetime, lease: float, limit: int
) -> list[RemovalJob]:
    """Take due ``revoking`` copies with a lease, like flag jobs (a copy still being written by the
    fan-out is not due before that write's lease ends; reconciliation set it so)."""
    rows, tokens = _claim_jobs(
        connection,
        (CopyRow.message_id, MessageRow.vorgang_id),
        (CopyRow.state == CopyState.REVOKING,),
        node,
        now,
        lease,
        limit,
    )
    return [
        RemovalJob(
            id=r[0],
            copy_id=r[1],
            attempts=r[2],
            portfolio_id=r[3],
            portfolio=r[4],
            member_id=r[5],
            address=r[6],
            message_pk=r[7],
            vorgang_id=r[8],
            lease_token=tokens[r[0]],
        )
        for r in rows
    ]


def record_removals(
    connection: Connection,
    done: Sequence[RemovalJob],
    failed: Sequence[tuple[RemovalJob, str, dt.datetime]],
    now: dt.datetime,
    *,
    node: str,
) -> frozenset[int]:
    """Copies removed (``done``: now ``revoked``), or not (with the error and the next attempt).

    Only a copy still ``revoking`` and leased to ``node`` under the job's token is recorded: a member
    entitled again meanwhile has the row back as pending, and the fan-out writes it again once this
    lease has ended. Returns the copies left alone (lost).
    """
    held_now = _still_held(connection, JobKind.REMOVAL, [*done, *(j for j, _, _ in failed)], node)
    lost = frozenset(j.id for j in done if j.id not in held_now) | {
        j.id for j, _, _ in failed if j.id not in held_now
    }
    done = [j for j in done if j.id in held_now]
    failed = [f for f in failed if f[0].id in held_now]
    if done:
        connection.execute(
            update(COPIES)
            .where(
                COPIES.c.id == bindparam("b_id"),
                COPIES.c.lease_token == bindparam("b_token"),
                COPIES.c.state == CopyState.REVOKING,
            )
            .values(
                state=CopyState.REVOKED,
                attempts=COPIES.c.attempts + 1,
                next_attempt_at=None,
                leased_by=None,
                last_error=None,
                mailbox_ref=None,
                updated_at=now,
            ),
            [{"b_id": j.id, "b_token": j.lease_token} for j in done],
        )
    _retry_later(
        connection, CopyState.REVOKING, [(j.id, j.lease_token, error, at) for j, error, at in failed], now
    )
    return lost


# --- copies that wait too long: given up, and the messages whose back office must hear of it -----------


@dataclass(frozen=True, slots=True)
class LateCopy:
    """A copy not yet delivered, as a notice to the back office names it."""

    id: int
    message_pk: int
    member_id: int
    address: str
    state: str
    created_at: dt.datetime
    last_error: str | None


def give_up(connection: Connection, before: dt.datetime, now: dt.datetime) -> list[LateCopy]:
    """Mark ``failed`` the copies created before ``before`` that are still not delivered (and not
    being written right now); returns them."""
    waiting = or_(
        CopyRow.state == CopyState.HELD,
        and_(CopyRow.state == CopyState.PENDING, CopyRow.next_attempt_at <= now),
    )
    found = _late(connection, waiting, CopyRow.created_at < before)
    if found:
        connection.execute(
            update(CopyRow)
            .where(CopyRow.id.in_([c.id for c in found]), waiting)
            .values(state=CopyState.FAILED, next_attempt_at=None, leased_by=None, updated_at=now)
        )
    return found


def late_copies(connection: Connection, message_pks: Sequence[int], states: Sequence[str]) -> list[LateCopy]:
    """The copies of these messages in one of ``states``."""
    return _late(connection, CopyRow.message_id.in_(message_pks), CopyRow.state.in_(states))


def _late(connection: Connection, *where: Any) -> list[LateCopy]:
    return [
        LateCopy(
            int(r[0]),
            int(r[1]),
            int(r[2]),
            r[3],
            r[4],
            r[5] if r[5].tzinfo else r[5].replace(tzinfo=dt.UTC),
            r[6],
        )
        for r in connection.execute(
            select(
                CopyRow.id,
                CopyRow.message_id,
                CopyRow.member_id,
                MemberRow.address,
                CopyRow.state,
                CopyRow.created_at,
                CopyRow.last_error,
            )
            .join(MemberRow, MemberRow.id == CopyRow.member_id)
            .where(*where)
            .order_by(CopyRow.id)
        )
    ]


def unnoticed_late_messages(connection: Connection, before: dt.datetime, limit: int) -> list[int]:
    """Back offices' messages with a copy waiting since before ``before`` and no delay or failure
    notice queued yet."""
    noticed = (
        select(RelayRow.id)
        .where(
            RelayRow.message_id == CopyRow.message_id,
            RelayRow.purpose.in_((RelayPurpose.DELAYED, RelayPurpose.FAILED)),
        )
        .exists()
    )
    return [
        int(pk)
        for pk in connection.scalars(
            select(CopyRow.message_id)
            .join(MessageRow, MessageRow.id == CopyRow.message_id)
            .where(
                CopyRow.state.in_((CopyState.PENDING, CopyState.HELD)),
                CopyRow.created_at < before,
                MessageRow.backoffice_id.is_not(None),
                MessageRow.envelope_sender != "",
                ~noticed,
            )
            .group_by(CopyRow.message_id)
            .order_by(CopyRow.message_id)
            .limit(limit)
        )
    ]


# --- what `gateway queue` shows and does (postqueue -p / -f for the gateway) ---------------------------

# What waits in the queues, by kind: a copy to write, flags to catch up on a delivered copy, a revoked
# copy to remove, and mail (or a notice) to relay to a back office.
KINDS = ("copy", "flags", "removal", "relay")
STATES = ("pending", "held", "failed")


@dataclass(frozen=True, slots=True)
class QueueItem:
    """One item in a queue as an admin sees it; ``id`` is ``copy-<n>`` or ``relay-<n>``."""

    id: str
    kind: str
    state: str
    portfolio: str
    member: str
    message: str  # the gateway id of the message it is about
    subject: str
    created_at: dt.datetime
    attempts: int
    next_attempt_at: dt.datetime | None
    last_error: str | None
    to: tuple[str, ...] = ()
    purpose: str = ""  # relays: "mail", "delayed", "failed"


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=dt.UTC)


def _copy_kind() -> Any:
    return case(
        (CopyRow.state == CopyState.REVOKING, literal("removal")),
        (CopyRow.state == CopyState.DELIVERED, literal("flags")),
        else_=literal("copy"),
    )


@dataclass(frozen=True, slots=True)
class QueueFilter:
    """Which queue items an admin means; every field given narrows them (``before``: created before)."""

    portfolio: str | None = None
    member: str | None = None
    state: str | None = None  # one of STATES
    kind: str | None = None  # one of KINDS
    before: dt.datetime | None = None


def queue_items(
    connection: Connection,
    where: QueueFilter = QueueFilter(),
    *,
    ids: Sequence[str] = (),
    limit: int = 1000,
) -> list[QueueItem]:
    """The items waiting in the queues, oldest first, that pass ``where`` (or have these ``ids``)."""
    portfolio, member, state, kind, before = (
        where.portfolio,
        where.member,
        where.state,
        where.kind,
        where.before,
    )
    copy_pks, relay_pks = _split_ids(ids)
    items: list[QueueItem] = []
    if kind in (None, "copy", "flags", "removal") and not (ids and not copy_pks):
        waiting = or_(
            CopyRow.state.in_((CopyState.PENDING, CopyState.HELD, CopyState.FAILED, CopyState.REVOKING)),
            and_(CopyRow.state == CopyState.DELIVERED, CopyRow.flags_pending.is_(True)),
        )
        query = (
            select(
                CopyRow.id,
                _copy_kind(),
                CopyRow.state,
                PortfolioRow.name,
                MemberRow.address,
                MessageRow.gateway_id,
                MessageRow.subject,
                CopyRow.created_at,
                CopyRow.attempts,
                CopyRow.next_attempt_at,
                CopyRow.last_error,
            )
            .join(PortfolioRow, PortfolioRow.id == CopyRow.portfolio_id)
            .join(MemberRow, MemberRow.id == CopyRow.member_id)
            .join(MessageRow, MessageRow.id == CopyRow.message_id)
            .where(waiting)
        )
        if copy_pks:
            query = query.where(CopyRow.id.in_(copy_pks))
        if kind is not None:
            query = query.where(_copy_kind() == kind)
        if portfolio is not None:
            query = query.where(PortfolioRow.name == portfolio)
        if member is not None:
            query = query.where(MemberRow.address == member.lower())
        if state is not None:
            # A flag job or a removal waits as "pending" (nothing else becomes of it).
            query = query.where(
                CopyRow.state.in_(
                    (state, CopyState.DELIVERED, CopyState.REVOKING) if state == "pending" else (state,)
                )
            )
        if before is not None:
            query = query.where(CopyRow.created_at < before)
        for r in connection.execute(query.order_by(CopyRow.created_at, CopyRow.id).limit(limit)):
            shown = "pending" if r[2] in (CopyState.DELIVERED, CopyState.REVOKING) else r[2]
            items.append(
                QueueItem(
                    f"copy-{r[0]}",
                    r[1],
                    shown,
                    r[3],
                    r[4],
                    r[5],
                    r[6] or "",
                    _aware(r[7]) or r[7],
                    r[8],
                    _aware(r[9]),
                    r[10],
                    (r[4],),
                )
            )
    if kind in (None, "relay") and not (ids and not relay_pks):
        query = (
            select(
                RelayRow.id,
                RelayRow.state,
                PortfolioRow.name,
                MemberRow.address,
                MessageRow.gateway_id,
                MessageRow.subject,
                RelayRow.created_at,
                RelayRow.attempts,
                RelayRow.next_attempt_at,
                RelayRow.last_error,
                RelayRow.recipients,
                RelayRow.purpose,
            )
            .join(PortfolioRow, PortfolioRow.id == RelayRow.portfolio_id)
            .join(MemberRow, MemberRow.id == RelayRow.member_id)
            .join(MessageRow, MessageRow.id == RelayRow.message_id)
            .where(RelayRow.state.in_((RelayState.PENDING, RelayState.FAILED)))
        )
        if relay_pks:
            query = query.where(RelayRow.id.in_(relay_pks))
        if portfolio is not None:
            query = query.where(PortfolioRow.name == portfolio)
        if member is not None:
            query = query.where(MemberRow.address == member.lower())
        if state is not None:
            query = query.where(RelayRow.state == state)
        if before is not None:
            query = query.where(RelayRow.created_at < before)
        for r in connection.execute(query.order_by(RelayRow.created_at, RelayRow.id).limit(limit)):
            items.append(
                QueueItem(
                    f"relay-{r[0]}",
                    "relay",
                    r[1],
                    r[2],
                    r[3],
                    r[4],
                    r[5] or "",
                    _aware(r[6]) or r[6],
                    r[7],
                    _aware(r[8]),
                    r[9],
                    tuple(r[10]),
                    r[11],
                )
            )
    items.sort(key=lambda i: (i.created_at, i.id))
    return items[:limit]


def _split_ids(ids: Sequence[str]) -> tuple[list[int], list[int]]:
    copies: list[int] = []
    relays: list[int] = []
    for item in ids:
        kind, _, number = item.partition("-")
        if kind not in ("copy", "relay") or not number.isdigit():
            raise ValueError(f"{item!r} is not a queue id such as copy-17 or relay-4 (`gateway queue list`)")
        (copies if kind == "copy" else relays).append(int(number))
    return copies, relays


def retry_items(
    connection: Connection, items: Sequence[QueueItem], now: dt.datetime, relay_lifetime: float
) -> list[QueueItem]:
    """Make ``items`` due at once (``postqueue -f``): held and given-up copies are pending again, and
    given-up relays get a new lifetime. Items being worked on right now are left to that attempt."""
    done: list[QueueItem] = []
    for item in items:
        pk = int(item.id.partition("-")[2])
        if item.kind == "relay":
            values: dict[str, object] = {
                "state": RelayState.PENDING,
                "next_attempt_at": now,
                "updated_at": now,
            }
            if item.state == "failed":
                values["expires_at"] = now + dt.timedelta(seconds=relay_lifetime)
            result = connection.execute(
                update(RelayRow)
                .where(
                    RelayRow.id == pk,
                    RelayRow.state.in_((RelayState.PENDING, RelayState.FAILED)),
                    _not_leased(RelayRow, now),
                )
                .values(**values)
            )
        else:
            # A copy keeps what it waits for (writing, flags, removal); held and failed ones are pending.
            new_state = case(
                (CopyRow.state.in_((CopyState.HELD, CopyState.FAILED)), literal(CopyState.PENDING.value)),
                else_=CopyRow.state,
            )
            result = connection.execute(
                update(CopyRow)
                .where(
                    CopyRow.id == pk,
                    or_(
                        CopyRow.state.in_(
                            (CopyState.PENDING, CopyState.HELD, CopyState.FAILED, CopyState.REVOKING)
                        ),
                        CopyRow.flags_pending.is_(True),
                    ),
                    _not_leased(CopyRow, now),
                )
                .values(state=new_state, next_attempt_at=now, updated_at=now)
            )
        if getattr(result, "rowcount", 0):
            done.append(item)
    return done


def drop_items(connection: Connection, items: Sequence[QueueItem], now: dt.datetime) -> list[QueueItem]:
    """Stop working on ``items``: a copy or a relayed mail becomes ``dropped`` (kept, never tried
    again), a flag job is forgotten. A removal cannot be dropped: a copy the member may no longer see
    must go (``ValueError``)."""
    if any(item.kind == "removal" for item in items):
        raise ValueError(
            "a removal cannot be dropped: the member may no longer see that copy, so it must leave the "
            "mailbox (`gateway queue retry` tries it now)"
        )
    done: list[QueueItem] = []
    for item in items:
        pk = int(item.id.partition("-")[2])
        if item.kind == "relay":
            table: Any = RelayRow
            values: dict[str, object] = {
                "state": RelayState.DROPPED,
                "next_attempt_at": None,
                "updated_at": now,
            }
            where: Any = RelayRow.state.in_((RelayState.PENDING, RelayState.FAILED))
        elif item.kind == "flags":
            table, values = CopyRow, {"flags_pending": False, "next_attempt_at": None, "updated_at": now}
            where = and_(CopyRow.state == CopyState.DELIVERED, CopyRow.flags_pending.is_(True))
        else:
            table = CopyRow
            values = {"state": CopyState.DROPPED, "next_attempt_at": None, "updated_at": now}
            where = CopyRow.state.in_((CopyState.PENDING, CopyState.HELD, CopyState.FAILED))
        result = connection.execute(
            update(table).where(table.id == pk, where, _not_leased(table, now)).values(**values)
        )
        if getattr(result, "rowcount", 0):
            done.append(item)
    return done


def _not_leased(table: Any, now: dt.datetime) -> Any:
    """Not taken by a worker right now (a lease is a next attempt in the future with leased_by set)."""
    return or_(table.leased_by.is_(None), table.next_attempt_at.is_(None), table.next_attempt_at <= now)


def portfolio_ids(connection: Connection, names: set[str]) -> list[tuple[str, int]]:
    """Portfolio names to ids (the event log records the id)."""
    return [
        (n, int(i))
        for n, i in connection.execute(
            select(PortfolioRow.name, PortfolioRow.id).where(PortfolioRow.name.in_(names))
        )
    ]


# --- an admin's hand on the queues (``gateway queue`` and the console's queues page) -----------------------


def find_items(connection: Connection, ids: Sequence[str]) -> list[QueueItem]:
    """The items named by ``ids`` (``copy-17``, ``relay-4``); NotFound names any that wait in no queue."""
    try:
        found = queue_items(connection, ids=ids)
    except ValueError as exc:
        raise NotFound(str(exc)) from None
    missing = set(ids) - {i.id for i in found}
    if missing:
        raise NotFound(
            f"not in any queue: {', '.join(sorted(missing))} (delivered, sent or dropped, or never there; "
            "`gateway queue list` shows what waits)"
        )
    return found


def retry(
    connection: Connection,
    items: Sequence[QueueItem],
    actor: str,
    now: dt.datetime,
    relay_lifetime: float,
) -> list[QueueItem]:
    """``retry_items``, with a ``queue.retried`` event per item done, naming ``actor``."""
    done = retry_items(connection, items, now, relay_lifetime)
    append_events(connection, _portfolio_events(connection, done, EventKind.QUEUE_RETRIED, actor, now))
    return done


def drop(connection: Connection, items: Sequence[QueueItem], actor: str, now: dt.datetime) -> list[QueueItem]:
    """``drop_items``, with a ``queue.dropped`` event per item done, naming ``actor``; a removal among
    them is an InputError (nothing is dropped)."""
    try:
        done = drop_items(connection, items, now)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    append_events(connection, _portfolio_events(connection, done, EventKind.QUEUE_DROPPED, actor, now))
    return done


def _portfolio_events(
    connection: Connection, items: Sequence[QueueItem], kind: EventKind, actor: str, now: dt.datetime
) -> list[Event]:
    ids = dict(portfolio_ids(connection, {i.portfolio for i in items}))
    return [
        Event(
            kind,
            actor,
            now,
            portfolio_id=ids[i.portfolio],
            detail={"item": i.id, "kind": i.kind, "state": i.state, "to": list(i.to), "message": i.message},
        )
        for i in items
    ]
