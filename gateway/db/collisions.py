"""The SQL of the collision guard: the facts it decides on, held replies and the notices owed.

``gateway.domain.collision`` decides; these functions only read the facts for it (the replier's copy and
its stored times, the other stored answers to the same message, the releases' guards) and keep the
``held_replies`` rows: a reply held, released, withdrawn, and the notice to its author written or not.
The transactions that copy and relay a released reply are in ``gateway.db.membermail``.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, insert, or_, select, update
from sqlalchemy.orm import aliased

from gateway.db.models import (
    CopyRow,
    Direction,
    HeldReplyRow,
    HeldState,
    MemberRow,
    MessageKind,
    MessageRow,
    PortfolioRow,
    ReleaseMemberRow,
    ReleaseRow,
    VorgangRow,
    utc,
)
from gateway.domain.collision import (
    AfterTimeout,
    CollisionGuard,
    Decision,
    EarlierAnswer,
    GuardedRelease,
    NewReply,
    default_guard,
)

# How long a notice that could not be written waits before the next try.
NOTICE_RETRY = dt.timedelta(seconds=60)


def new_held_id() -> str:
    """The id a held reply's notice addresses carry: "h" and 20 hex digits (never a copy id)."""
    return "h" + secrets.token_hex(10)


def guarded_releases(connection: Connection, portfolio_id: int, member_id: int) -> list[GuardedRelease]:
    """The releases that share Vorgänge and hold ``member_id``, with their guards and all their members."""
    mine = select(ReleaseMemberRow.release_id).where(ReleaseMemberRow.member_id == member_id)
    rows = connection.execute(
        select(
            ReleaseRow.id,
            ReleaseRow.name,
            ReleaseRow.share_vorgaenge,
            ReleaseRow.collision_guard,
            ReleaseRow.hold_timeout,
            ReleaseRow.after_hold_timeout,
            ReleaseMemberRow.member_id,
        )
        .join(ReleaseMemberRow, ReleaseMemberRow.release_id == ReleaseRow.id)
        .where(
            ReleaseRow.portfolio_id == portfolio_id,
            ReleaseRow.share_vorgaenge.is_(True),
            ReleaseRow.id.in_(mine),
        )
    )
    members: dict[int, set[int]] = defaultdict(set)
    facts: dict[int, tuple[str, bool, str | None, int, str]] = {}
    for rid, name, share, guard, timeout, after, mid in rows:
        facts[rid] = (name, bool(share), guard, int(timeout), after)
        members[rid].add(int(mid))
    return [
        GuardedRelease(
            name,
            share,
            CollisionGuard(guard) if guard else default_guard(share),
            frozenset(members[rid]),
            timeout,
            AfterTimeout(after),
        )
        for rid, (name, share, guard, timeout, after) in sorted(facts.items())
    ]


def collision_facts(
    connection: Connection,
    portfolio_id: int,
    answered_pk: int,
    author_id: int,
    message_pk: int,
    accepted_at: dt.datetime,
    names: Sequence[str],
) -> tuple[NewReply, list[EarlierAnswer]]:
    """The new reply (already stored as ``message_pk``) with the author's copy of the answered message,
    and every other stored answer to that message, as the guard reads them."""
    copy = connection.execute(
        select(CopyRow.created_at, CopyRow.delivered_at).where(
            CopyRow.portfolio_id == portfolio_id,
            CopyRow.message_id == answered_pk,
            CopyRow.member_id == author_id,
        )
    ).first()
    # A member who answers without a copy of their own (From another audience member than the
    # token's): they had the message no earlier than now, so only later answers could cross it.
    created = utc(copy[0]) if copy is not None else accepted_at
    delivered = utc(copy[1]) if copy is not None and copy[1] is not None else None
    reply = NewReply(message_pk, author_id, accepted_at, frozenset(names), created, delivered)
    rows = connection.execute(
        select(
            MessageRow.id,
            MessageRow.sender_member_id,
            MessageRow.received_at,
            MessageRow.message_id,
            HeldReplyRow.state,
        )
        .outerjoin(HeldReplyRow, HeldReplyRow.message_id == MessageRow.id)
        .where(
            MessageRow.portfolio_id == portfolio_id,
            MessageRow.answers_message_id == answered_pk,
            MessageRow.direction == Direction.REPLY,
            MessageRow.kind == MessageKind.MESSAGE,
            MessageRow.id != message_pk,
            MessageRow.sender_member_id.is_not(None),
        )
    )
    earlier = [
        EarlierAnswer(int(pk), int(author or 0), utc(at), message_id, state == HeldState.WITHDRAWN)
        for pk, author, at, message_id, state in rows
    ]
    return reply, earlier


def insert_held(
    connection: Connection,
    *,
    portfolio_id: int,
    message_pk: int,
    member_id: int,
    answered_pk: int,
    decision: Decision,
    state: HeldState,
    now: dt.datetime,
    to: Sequence[str],
    cc: Sequence[str],
) -> str:
    """Record a reply the guard held (``held``) or let through with a notice owed (``notified``)."""
    assert decision.collides_with is not None
    assert decision.release is not None
    held_id = new_held_id()
    held = state is HeldState.HELD
    connection.execute(
        insert(HeldReplyRow).values(
            message_id=message_pk,
            portfolio_id=portfolio_id,
            held_id=held_id,
            member_id=member_id,
            answers_message_id=answered_pk,
            collides_with_message_id=decision.collides_with.message_pk,
            state=state.value,
            release_name=decision.release.name,
            after_hold_timeout=decision.release.after_timeout.value,
            held_at=now,
            due_at=now + dt.timedelta(seconds=decision.release.hold_timeout) if held else None,
            decided_at=None if held else now,
            decided_by=None,
            to_addresses=list(to),
            cc_addresses=list(cc),
            notice_next_at=now,
            notice_attempts=0,
        )
    )
    return held_id


@dataclass(frozen=True, slots=True)
class HeldReply:
    """A held (or once held) reply as the admin, the worker and the notice see it."""

    held_id: str
    message_pk: int
    portfolio_id: int
    portfolio: str
    state: HeldState
    member_id: int
    member: str
    member_name: str
    vorgang_id: int
    vorgang: str
    subject: str
    answered_pk: int
    collides_with_pk: int
    other: str
    other_name: str
    other_accepted_at: dt.datetime
    release: str
    after_timeout: AfterTimeout
    held_at: dt.datetime
    due_at: dt.datetime | None
    decided_at: dt.datetime | None
    decided_by: str | None
    to: tuple[str, ...]
    cc: tuple[str, ...]
    notice_written_at: dt.datetime | None

    def as_json(self) -> dict[str, object]:
        def when(value: dt.datetime | None) -> str | None:
            return value.isoformat(timespec="seconds") if value is not None else None

        return {
            "id": self.held_id,
            "portfolio": self.portfolio,
            "state": self.state.value,
            "member": self.member,
            "vorgang": self.vorgang,
            "subject": self.subject,
            "crossed_answer_by": self.other,
            "crossed_answer_accepted_at": when(self.other_accepted_at),
            "release": self.release,
            "after_timeout": self.after_timeout.value,
            "held_at": when(self.held_at),
            "due_at": when(self.due_at),
            "decided_at": when(self.decided_at),
            "decided_by": self.decided_by,
            "notice_written_at": when(self.notice_written_at),
        }


def _held_select() -> Any:
    author = aliased(MemberRow)
    other_member = aliased(MemberRow)
    other = aliased(MessageRow)
    return (
        select(
            HeldReplyRow.held_id,
            HeldReplyRow.message_id,
            HeldReplyRow.portfolio_id,
            PortfolioRow.name,
            HeldReplyRow.state,
            HeldReplyRow.member_id,
            author.address,
            author.display_name,
            VorgangRow.id,
            VorgangRow.reference,
            MessageRow.subject,
            HeldReplyRow.answers_message_id,
            HeldReplyRow.collides_with_message_id,
            other_member.address,
            other_member.display_name,
            other.received_at,
            HeldReplyRow.release_name,
            HeldReplyRow.after_hold_timeout,
            HeldReplyRow.held_at,
            HeldReplyRow.due_at,
            HeldReplyRow.decided_at,
            HeldReplyRow.decided_by,
            HeldReplyRow.to_addresses,
            HeldReplyRow.cc_addresses,
            HeldReplyRow.notice_written_at,
        )
        .join(MessageRow, MessageRow.id == HeldReplyRow.message_id)
        .join(PortfolioRow, PortfolioRow.id == HeldReplyRow.portfolio_id)
        .join(VorgangRow, VorgangRow.id == MessageRow.vorgang_id)
        .join(author, author.id == HeldReplyRow.member_id)
        .join(other, other.id == HeldReplyRow.collides_with_message_id)
        .outerjoin(other_member, other_member.id == other.sender_member_id)
    )


def _held(row: Sequence[object]) -> HeldReply:
    r = list(row)

    def when(value: object) -> dt.datetime | None:
        return utc(value) if isinstance(value, dt.datetime) else None

    return HeldReply(
        held_id=str(r[0]),
        message_pk=int(str(r[1])),
        portfolio_id=int(str(r[2])),
        portfolio=str(r[3]),
        state=HeldState(str(r[4])),
        member_id=int(str(r[5])),
        member=str(r[6]),
        member_name=str(r[7] or ""),
        vorgang_id=int(str(r[8])),
        vorgang=str(r[9]),
        subject=str(r[10] or ""),
        answered_pk=int(str(r[11])),
        collides_with_pk=int(str(r[12])),
        other=str(r[13] or ""),
        other_name=str(r[14] or ""),
        other_accepted_at=utc(r[15]) if isinstance(r[15], dt.datetime) else dt.datetime.now(dt.UTC),
        release=str(r[16]),
        after_timeout=AfterTimeout(str(r[17])),
        held_at=utc(r[18]) if isinstance(r[18], dt.datetime) else dt.datetime.now(dt.UTC),
        due_at=when(r[19]),
        decided_at=when(r[20]),
        decided_by=None if r[21] is None else str(r[21]),
        to=tuple(str(a) for a in (r[22] or [])),  # type: ignore[attr-defined]
        cc=tuple(str(a) for a in (r[23] or [])),  # type: ignore[attr-defined]
        notice_written_at=when(r[24]),
    )


def held_replies(
    connection: Connection, portfolio_ids: Sequence[int] | None = None, *, only_held: bool = True
) -> list[HeldReply]:
    """Held replies (``only_held``) or all that were ever held, oldest first; of some portfolios or all."""
    query = _held_select()
    if portfolio_ids is not None:
        query = query.where(HeldReplyRow.portfolio_id.in_(list(portfolio_ids)))
    if only_held:
        query = query.where(HeldReplyRow.state == HeldState.HELD)
    else:
        query = query.where(HeldReplyRow.state != HeldState.NOTIFIED)
    return [
        _held(r) for r in connection.execute(query.order_by(HeldReplyRow.held_at, HeldReplyRow.message_id))
    ]


def held_reply(connection: Connection, held_id: str) -> HeldReply | None:
    row = connection.execute(_held_select().where(HeldReplyRow.held_id == held_id)).first()
    return None if row is None else _held(row)


def take_decision(connection: Connection, held_id: str, state: HeldState, by: str, now: dt.datetime) -> bool:
    """Move a held reply to ``state`` if it is still held; whether this call did it (exactly once)."""
    result = connection.execute(
        update(HeldReplyRow)
        .where(HeldReplyRow.held_id == held_id, HeldReplyRow.state == HeldState.HELD)
        .values(state=state.value, decided_at=now, decided_by=by)
    )
    return int(getattr(result, "rowcount", 0) or 0) == 1


def due_holds(connection: Connection, now: dt.datetime, limit: int) -> list[tuple[str, AfterTimeout]]:
    """Held replies whose hold timeout has passed, and what their release says to do with them."""
    rows = connection.execute(
        select(HeldReplyRow.held_id, HeldReplyRow.after_hold_timeout)
        .where(HeldReplyRow.state == HeldState.HELD, HeldReplyRow.due_at <= now)
        .order_by(HeldReplyRow.due_at, HeldReplyRow.message_id)
        .limit(limit)
    )
    return [(str(h), AfterTimeout(str(a))) for h, a in rows]


def claim_notices(connection: Connection, now: dt.datetime, limit: int) -> list[HeldReply]:
    """Notices owed and due, taken for ``NOTICE_RETRY`` (no other node writes them meanwhile)."""
    due = and_(
        HeldReplyRow.notice_written_at.is_(None),
        or_(HeldReplyRow.notice_next_at.is_(None), HeldReplyRow.notice_next_at <= now),
    )
    ids = [
        str(h)
        for h in connection.scalars(
            select(HeldReplyRow.held_id).where(due).order_by(HeldReplyRow.held_at).limit(limit)
        )
    ]
    taken: list[str] = []
    for held_id in ids:
        result = connection.execute(
            update(HeldReplyRow)
            .where(HeldReplyRow.held_id == held_id, due)
            .values(notice_next_at=now + NOTICE_RETRY, notice_attempts=HeldReplyRow.notice_attempts + 1)
        )
        if int(getattr(result, "rowcount", 0) or 0) == 1:
            taken.append(held_id)
    found = [held_reply(connection, h) for h in taken]
    return [h for h in found if h is not None]


def notice_done(connection: Connection, held_id: str, now: dt.datetime, error: str | None) -> None:
    """The notice written (``error`` None), or why not (it is tried again after ``NOTICE_RETRY``)."""
    values: dict[str, object] = {"notice_error": error}
    if error is None:
        values["notice_written_at"] = now
    connection.execute(update(HeldReplyRow).where(HeldReplyRow.held_id == held_id).values(**values))


def message_raw(connection: Connection, message_pk: int) -> tuple[bytes, str | None, tuple[str, ...]]:
    """A message's bytes, Message-ID and References."""
    row = connection.execute(
        select(MessageRow.raw, MessageRow.message_id, MessageRow.references).where(
            MessageRow.id == message_pk
        )
    ).one()
    return bytes(row[0]), row[1], tuple((row[2] or "").split())
