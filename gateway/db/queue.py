"""The copy queue in the database: take due copies with a lease, and record how each attempt went.

On PostgreSQL several gateway processes share the queue: ``FOR UPDATE SKIP LOCKED`` lets each take
different copies without waiting for the others. SQLite has one writer at a time, and the clause is
left out there by SQLAlchemy; the lease (``next_attempt_at`` in the future plus ``leased_by``) does the
rest on both.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy import Connection, Table, bindparam, case, literal, or_, select, update

from gateway.db.models import CopyRow, MemberRow, MessageRow, PortfolioRow, ReleaseRow, VorgangRow
from gateway.domain.rules import CopyHeaders
from gateway.domain.trace import Trace

# Executemany updates go through the Core table: the ORM would treat a list of parameters as its own
# bulk-update-by-primary-key, which has no WHERE of ours.
COPIES = cast(Table, CopyRow.__table__)


@dataclass(frozen=True, slots=True)
class CopyJob:
    """Everything needed to write one copy, read in the claiming transaction."""

    id: int
    copy_id: str
    attempts: int
    portfolio_id: int
    portfolio: str
    member_id: int
    address: str
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
        .where(CopyRow.state == "pending", CopyRow.leased_by == node)
        .values(next_attempt_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _lease(connection: Connection, ids: Sequence[int], node: str, now: dt.datetime, lease: float) -> None:
    """Reserve taken copies for ``node`` until the lease ends (every kind of job on the copy queue)."""
    connection.execute(
        update(CopyRow)
        .where(CopyRow.id.in_(ids))
        .values(next_attempt_at=now + dt.timedelta(seconds=lease), leased_by=node)
    )


def claim(connection: Connection, node: str, now: dt.datetime, lease: float, limit: int) -> list[CopyJob]:
    # A comprehension, not dict(result): a Result has keys() and would be read as a mapping.
    taken: dict[int, str | None] = {
        int(copy_pk): leased_by
        for copy_pk, leased_by in connection.execute(
            select(CopyRow.id, CopyRow.leased_by)
            .where(CopyRow.state == "pending", CopyRow.next_attempt_at <= now)
            .order_by(CopyRow.next_attempt_at, CopyRow.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    }
    ids = list(taken)
    if not ids:
        return []
    _lease(connection, ids, node, now, lease)
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
        )
        for f in facts
    ]


def record(
    connection: Connection,
    outcomes: Sequence[Outcome],
    now: dt.datetime,
    retry_at: dict[int, dt.datetime | None],
) -> None:
    """Store how each attempt went; ``retry_at`` maps a failed copy to its next attempt (None: hold it)."""
    # Only a copy still pending is recorded: reconciliation may have revoked it while it was being
    # written (it waited for this lease to end), and a revoked copy must not turn delivered again.
    delivered = [o for o in outcomes if o.error is None]
    if delivered:
        # Flags set while the write was under way (an answer came in) are caught up by claim_flags,
        # which takes them once due: at once, not never (NULL).
        flags_changed = or_(
            COPIES.c.answered != bindparam("b_answered"), COPIES.c.seen != bindparam("b_seen")
        )
        due_now = literal(now, COPIES.c.next_attempt_at.type)
        connection.execute(
            update(COPIES)
            .where(COPIES.c.id == bindparam("b_id"), COPIES.c.state == "pending")
            .values(
                state="delivered",
                flags_pending=flags_changed,
                mailbox_ref=bindparam("b_ref"),
                attempts=COPIES.c.attempts + 1,
                next_attempt_at=case((flags_changed, due_now), else_=None),
                leased_by=None,
                last_error=None,
                updated_at=now,
            ),
            [
                {"b_id": o.job.id, "b_ref": o.mailbox_ref, "b_answered": o.job.answered, "b_seen": o.job.seen}
                for o in delivered
            ],
        )
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        connection.execute(
            update(COPIES)
            .where(COPIES.c.id == bindparam("b_id"), COPIES.c.state == "pending")
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
                    "b_state": "pending" if retry_at[o.job.id] else "held",
                    "b_next": retry_at[o.job.id],
                    "b_error": (o.error or "")[:2000],
                }
                for o in failed
            ],
        )


@dataclass(frozen=True, slots=True)
class FlagJob:
    """A delivered copy whose mailbox flags must catch up with the database (``flags_pending``)."""

    id: int
    copy_id: str
    attempts: int
    portfolio_id: int
    portfolio: str
    member_id: int
    address: str
    seen: bool
    answered: bool


def claim_flags(
    connection: Connection, node: str, now: dt.datetime, lease: float, limit: int
) -> list[FlagJob]:
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
                CopyRow.seen,
                CopyRow.answered,
            )
            .join(PortfolioRow, PortfolioRow.id == CopyRow.portfolio_id)
            .join(MemberRow, MemberRow.id == CopyRow.member_id)
            .where(
                CopyRow.state == "delivered",
                CopyRow.flags_pending.is_(True),
                CopyRow.next_attempt_at <= now,
            )
            .order_by(CopyRow.next_attempt_at, CopyRow.id)
            .limit(limit)
            .with_for_update(of=CopyRow, skip_locked=True)
        )
    )
    if not rows:
        return []
    _lease(connection, [r[0] for r in rows], node, now, lease)
    return [FlagJob(*row) for row in rows]


def record_flags(
    connection: Connection,
    done: Sequence[FlagJob],
    failed: Sequence[tuple[FlagJob, str, dt.datetime]],
    now: dt.datetime,
) -> None:
    """Flags written (``done``), or not (with the error and the next attempt)."""
    if done:
        # Only what was written counts: a flag set in the database meanwhile keeps the copy pending.
        # Also only a copy still delivered: one revoked meanwhile keeps the removal's due time.
        connection.execute(
            update(COPIES)
            .where(
                COPIES.c.id == bindparam("b_id"),
                COPIES.c.state == "delivered",
                COPIES.c.seen == bindparam("b_seen"),
                COPIES.c.answered == bindparam("b_answered"),
            )
            .values(
                flags_pending=False, next_attempt_at=None, leased_by=None, last_error=None, updated_at=now
            ),
            [{"b_id": j.id, "b_seen": j.seen, "b_answered": j.answered} for j in done],
        )
        connection.execute(
            update(COPIES)
            .where(
                COPIES.c.id == bindparam("b_id"),
                COPIES.c.state == "delivered",
                COPIES.c.flags_pending.is_(True),
            )
            .values(next_attempt_at=now, leased_by=None),
            [{"b_id": j.id} for j in done],
        )
    if failed:
        connection.execute(
            update(COPIES)
            .where(COPIES.c.id == bindparam("b_id"), COPIES.c.state == "delivered")
            .values(
                next_attempt_at=bindparam("b_next"),
                leased_by=None,
                last_error=bindparam("b_error"),
                updated_at=now,
            ),
            [{"b_id": j.id, "b_next": at, "b_error": error[:2000]} for j, error, at in failed],
        )


@dataclass(frozen=True, slots=True)
class RemovalJob:
    """A revoked copy to take out of its member's mailbox, from every folder (state ``revoking``)."""

    id: int
    copy_id: str
    attempts: int
    portfolio_id: int
    portfolio: str
    member_id: int
    address: str
    message_pk: int
    vorgang_id: int


def claim_removals(
    connection: Connection, node: str, now: dt.datetime, lease: float, limit: int
) -> list[RemovalJob]:
    """Take due ``revoking`` copies with a lease, like flag jobs (a copy still being written by the
    fan-out is not due before that write's lease ends; reconciliation set it so)."""
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
                CopyRow.message_id,
                MessageRow.vorgang_id,
            )
            .join(PortfolioRow, PortfolioRow.id == CopyRow.portfolio_id)
            .join(MemberRow, MemberRow.id == CopyRow.member_id)
            .join(MessageRow, MessageRow.id == CopyRow.message_id)
            .where(CopyRow.state == "revoking", CopyRow.next_attempt_at <= now)
            .order_by(CopyRow.next_attempt_at, CopyRow.id)
            .limit(limit)
            .with_for_update(of=CopyRow, skip_locked=True)
        )
    )
    if not rows:
        return []
    _lease(connection, [r[0] for r in rows], node, now, lease)
    return [RemovalJob(*row) for row in rows]


def record_removals(
    connection: Connection,
    done: Sequence[RemovalJob],
    failed: Sequence[tuple[RemovalJob, str, dt.datetime]],
    now: dt.datetime,
) -> None:
    """Copies removed (``done``: now ``revoked``), or not (with the error and the next attempt).

    Only a copy still ``revoking`` is recorded: a member entitled again meanwhile has the row back as
    pending, and the fan-out writes it again once this lease has ended.
    """
    if done:
        connection.execute(
            update(COPIES)
            .where(COPIES.c.id == bindparam("b_id"), COPIES.c.state == "revoking")
            .values(
                state="revoked",
                attempts=COPIES.c.attempts + 1,
                next_attempt_at=None,
                leased_by=None,
                last_error=None,
                mailbox_ref=None,
                updated_at=now,
            ),
            [{"b_id": j.id} for j in done],
        )
    if failed:
        connection.execute(
            update(COPIES)
            .where(COPIES.c.id == bindparam("b_id"), COPIES.c.state == "revoking")
            .values(
                attempts=COPIES.c.attempts + 1,
                next_attempt_at=bindparam("b_next"),
                leased_by=None,
                last_error=bindparam("b_error"),
                updated_at=now,
            ),
            [{"b_id": j.id, "b_next": at, "b_error": error[:2000]} for j, error, at in failed],
        )
