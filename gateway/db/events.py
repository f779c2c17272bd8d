"""The event log: appends to it (who changed what, which message went where) and reads it back for admins.

The log is append-only (database triggers refuse UPDATE and DELETE); ``read_events`` is what
``gateway events`` shows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import EventRow, MemberRow, MessageRow, PortfolioRow, VorgangRow, utc


async def record_event(
    session: AsyncSession,
    *,
    actor: str,
    kind: str,
    portfolio_id: int | None = None,
    member_id: int | None = None,
    vorgang_id: int | None = None,
    message_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add one event row in the caller's transaction, so the event stands or falls with the change."""
    session.add(
        EventRow(
            actor=actor,
            kind=kind,
            portfolio_id=portfolio_id,
            member_id=member_id,
            vorgang_id=vorgang_id,
            message_id=message_id,
            detail=detail or {},
        )
    )


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to read; every field given narrows the result, ids are the database's."""

    portfolio_id: int | None = None
    # A member address or Vorgang reference can name one in each portfolio: all of them are meant.
    member_ids: tuple[int, ...] | None = None
    # A Vorgang's events are its own and those of its messages (copies, flags, relays, replies).
    vorgang_ids: tuple[int, ...] | None = None
    message_id: int | None = None
    kinds: tuple[str, ...] = ()  # "copy.revoked", or a family such as "copy" or "copy.*"
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    after_id: int | None = None  # keyset for scripts that read the log in pieces or follow it


@dataclass(frozen=True, slots=True)
class EventView:
    id: int
    at: str
    portfolio: str | None
    actor: str
    kind: str
    member: str | None
    vorgang: str | None
    message: str | None  # the gateway id (gw-…)
    detail: dict[str, Any]


async def read_events(session: AsyncSession, where: EventFilter, limit: int) -> list[EventView]:
    """The newest ``limit`` events that pass the filter, oldest first (as a log reads).

    With ``after_id`` the oldest ``limit`` events after that one instead, so a script can page forward.
    """
    query = (
        select(
            EventRow.id,
            EventRow.at,
            PortfolioRow.name,
            EventRow.actor,
            EventRow.kind,
            MemberRow.address,
            VorgangRow.reference,
            MessageRow.gateway_id,
            EventRow.detail,
        )
        .outerjoin(PortfolioRow, PortfolioRow.id == EventRow.portfolio_id)
        .outerjoin(MemberRow, MemberRow.id == EventRow.member_id)
        .outerjoin(MessageRow, MessageRow.id == EventRow.message_id)
        .outerjoin(VorgangRow, VorgangRow.id == func.coalesce(EventRow.vorgang_id, MessageRow.vorgang_id))
    )
    if where.portfolio_id is not None:
        query = query.where(EventRow.portfolio_id == where.portfolio_id)
    if where.member_ids is not None:
        query = query.where(EventRow.member_id.in_(where.member_ids))
    if where.vorgang_ids is not None:
        of_vorgang = select(MessageRow.id).where(MessageRow.vorgang_id.in_(where.vorgang_ids))
        query = query.where(
            or_(EventRow.vorgang_id.in_(where.vorgang_ids), EventRow.message_id.in_(of_vorgang))
        )
    if where.message_id is not None:
        query = query.where(EventRow.message_id == where.message_id)
    if where.kinds:
        query = query.where(or_(*(_kind_matches(k) for k in where.kinds)))
    if where.since is not None:
        query = query.where(EventRow.at >= where.since)
    if where.until is not None:
        query = query.where(EventRow.at < where.until)
    if where.after_id is not None:
        query = query.where(EventRow.id > where.after_id).order_by(EventRow.id).limit(limit)
        rows = list(await session.execute(query))
    else:
        rows = list(await session.execute(query.order_by(EventRow.id.desc()).limit(limit)))[::-1]
    return [
        EventView(
            id=int(event_id),
            at=utc(at).isoformat(timespec="seconds"),
            portfolio=portfolio,
            actor=str(actor),
            kind=str(kind),
            member=member,
            vorgang=vorgang,
            message=message,
            detail=dict(detail or {}),
        )
        for event_id, at, portfolio, actor, kind, member, vorgang, message, detail in rows
    ]


def _kind_matches(kind: str) -> Any:
    family = kind.removesuffix(".*").removesuffix(".")
    if family != kind or "." not in kind:
        return or_(EventRow.kind == family, EventRow.kind.startswith(family + ".", autoescape=True))
    return EventRow.kind == kind
