"""The event log: appends to it (who changed what, which message went where) and reads it back for admins.

Every event is written by ``append_events`` (or ``record_event`` from an async session) as an ``Event``
of one ``EventKind``; the log is append-only (database triggers refuse UPDATE and DELETE);
``read_events`` is what ``gateway events`` shows.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, func, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db import bulk
from gateway.db.models import EVENTS, EventRow, MemberRow, MessageRow, PortfolioRow, VorgangRow, utc


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the log. ``actor`` says who: ``gateway:<node>``, ``member:<address>``,
    ``backoffice:<login>``, ``cli:<login>`` or ``web:<login>`` (the web console); the ids say what it
    is about (no foreign keys: the log outlives what it names)."""

    kind: EventKind
    actor: str
    at: dt.datetime
    portfolio_id: int | None = None
    member_id: int | None = None
    vorgang_id: int | None = None
    message_id: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


class EventKind(StrEnum):
    """Every kind of event the gateway writes. The value is what the log stores and what
    ``gateway events --kind`` matches (a family is the part before the first dot: ``copy``)."""

    # A back office's mail (gateway.stages.acceptance) and what an admin does with quarantined mail.
    MESSAGE_ACCEPTED = "message.accepted"
    MESSAGE_QUARANTINED = "message.quarantined"
    MESSAGE_RELEASED = "message.released"
    MESSAGE_DROPPED = "message.dropped"
    # Members' mail at the MX listener (gateway.stages.reply).
    REPLY_ACCEPTED = "reply.accepted"
    INTAKE_ACCEPTED = "intake.accepted"  # a member opened a Vorgang at an intake address
    REPLY_NOT_AN_ANSWER = "reply.not_an_answer"
    REPLY_REFUSED = "reply.refused"
    # The collision guard (docs/collisions.md): a reply held, and what became of it.
    REPLY_HELD = "reply.held"
    REPLY_RELEASED = "reply.released"
    REPLY_WITHDRAWN = "reply.withdrawn"
    REPLY_NOTICE = "reply.notice"  # the notice written into the author's mailbox
    # Copies (gateway.stages.fanout, gateway.stages.notices).
    COPY_FAILED = "copy.failed"
    COPY_HELD = "copy.held"
    COPY_GIVEN_UP = "copy.given_up"
    COPY_REVOKED = "copy.revoked"
    COPY_REVOKE_FAILED = "copy.revoke_failed"
    # Flags and read notifications (gateway.stages.flagsync).
    FLAG_SET = "flag.set"
    FLAG_CLEARED = "flag.cleared"
    FLAG_PROPAGATED = "flag.propagated"
    MDN_QUEUED = "mdn.queued"
    MDN_NOT_SENT = "mdn.not_sent"
    # Mail to back offices (gateway.stages.relay, gateway.stages.notices).
    RELAY_SENT = "relay.sent"
    RELAY_DEFERRED = "relay.deferred"
    RELAY_FAILED = "relay.failed"
    RELAY_BOUNCED = "relay.bounced"
    NOTICE_DELAYED = "notice.delayed"
    NOTICE_FAILED = "notice.failed"
    NOTICE_DELAYED_NOT_SENT = "notice.delayed.not_sent"
    NOTICE_FAILED_NOT_SENT = "notice.failed.not_sent"
    # Logins at the submission listener (gateway.stages.ingress) and their passwords.
    AUTH_FAILED = "auth.failed"
    AUTH_THROTTLED = "auth.throttled"
    BACKOFFICE_PASSWORD = "backoffice.password"
    # The web console (gateway.web): logins and admin accounts (`gateway admin`).
    ADMIN_LOGIN = "admin.login"
    ADMIN_LOGIN_FAILED = "admin.login_failed"
    ADMIN_LOGIN_THROTTLED = "admin.login_throttled"
    ADMIN_LOGOUT = "admin.logout"
    ADMIN_ACCOUNT_CREATE = "admin.account_create"
    ADMIN_ACCOUNT_UPDATE = "admin.account_update"
    ADMIN_ACCOUNT_DELETE = "admin.account_delete"
    # What admins do to the queues (`gateway queue`).
    QUEUE_RETRIED = "queue.retried"
    QUEUE_DROPPED = "queue.dropped"
    # Reconciliation (gateway.db.reconcile).
    RECONCILE_REQUESTED = "reconcile.requested"
    RECONCILE_RESTARTED = "reconcile.restarted"
    RECONCILE_BATCH = "reconcile.batch"
    RECONCILE_FINISHED = "reconcile.finished"
    # Directory changes: "<kind>.<action>" of ``gateway.domain.directory.Change``.
    PORTFOLIO_CREATE = "portfolio.create"
    PORTFOLIO_UPDATE = "portfolio.update"
    BACKOFFICE_CREATE = "backoffice.create"
    BACKOFFICE_UPDATE = "backoffice.update"
    BACKOFFICE_DELETE = "backoffice.delete"
    RELEASE_CREATE = "release.create"
    RELEASE_UPDATE = "release.update"
    RELEASE_DELETE = "release.delete"
    MEMBER_CREATE = "member.create"
    MEMBER_UPDATE = "member.update"
    MEMBER_DELETE = "member.delete"
    MEMBERSHIP_ADD = "membership.add"
    MEMBERSHIP_REMOVE = "membership.remove"


def append_events(connection: Connection, events: Iterable[Event]) -> None:
    """Add ``events`` to the log in the caller's transaction (one statement), so they stand or fall with
    the change they describe."""
    rows = [
        {
            "at": e.at,
            "portfolio_id": e.portfolio_id,
            "actor": e.actor,
            "kind": e.kind.value,
            "member_id": e.member_id,
            "vorgang_id": e.vorgang_id,
            "message_id": e.message_id,
            "detail": dict(e.detail),
        }
        for e in events
    ]
    if rows and connection.dialect.name == "postgresql":
        bulk.insert_rows(connection, EVENTS, rows)  # one statement for any number (gateway.db.bulk)
    elif rows:
        connection.execute(insert(EVENTS), rows)


async def record_event(session: AsyncSession, event: Event) -> None:
    """``append_events`` for one event in an async session's transaction (the admin path)."""
    await session.run_sync(lambda s: append_events(s.connection(), [event]))


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
    before_id: int | None = None  # keyset for paging back through the log, newest first (the console)


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

    def detail_text(self) -> str:
        """The detail as ``key=value`` pairs, as `gateway events` and the console show it."""
        return "  ".join(
            f"{k}={v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)}"
            for k, v in self.detail.items()
        )


def kind_known(kind: str) -> bool:
    """Whether ``kind`` names an ``EventKind`` or a family of them (``copy``, ``copy.*``)."""
    family = kind.removesuffix(".*").removesuffix(".")
    return any(k.value == kind or k.value.startswith(family + ".") for k in EventKind)


async def read_events(session: AsyncSession, where: EventFilter, limit: int) -> list[EventView]:
    """The newest ``limit`` events that pass the filter, oldest first (as a log reads).

    With ``after_id`` the oldest ``limit`` events after that one instead, so a script can page forward;
    with ``before_id`` only events older than that one (the next page back).
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
    if where.before_id is not None:
        query = query.where(EventRow.id < where.before_id)
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
