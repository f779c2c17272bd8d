"""Quarantined messages: list them, release them to their audience, or drop them (storage layer).

A routing rule's ``quarantine`` stores a message with its Vorgang and participants but without copies
(``messages.kind`` "quarantined", a ``quarantine`` row with the rule and reason). Releasing it makes the
copies its audience has *now* (DESIGN.md §3: the audience is computed from the current directory) as
pending rows, which the fan-out takes from the queue like any other; dropping it deletes the message.
Both are recorded in the event log. Each function is one transaction's work on a synchronous connection
(the writer thread, or ``session.run_sync``); ``gateway quarantine`` calls them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select, update

from gateway.db import acceptance
from gateway.db.copies import copies_for, insert_copies
from gateway.db.events import Event, EventKind, append_events
from gateway.db.messages import recount_last_message
from gateway.db.models import (
    QUARANTINE,
    CopyRow,
    MemberRow,
    MessageKind,
    MessageRow,
    ParticipantRow,
    PortfolioRow,
    QuarantineRow,
    VorgangRow,
    utc,
)
from gateway.domain.audience import Audience, audience
from gateway.domain.model import Participant
from gateway.errors import NotFound

__all__ = [
    "NewQuarantine",
    "Quarantined",
    "WouldSee",
    "drop",
    "hold",
    "list_quarantined",
    "release",
    "released_copies",
    "show",
    "would_see",
]


@dataclass(frozen=True, slots=True)
class NewQuarantine:
    """A message a routing rule quarantines as it is stored: the rule (``name (FILE:LINE:COL)``), the
    reason it gives, and its rule set."""

    message_pk: int
    portfolio_id: int
    rule: str
    reason: str
    rule_set: str


def hold(connection: Connection, held: Sequence[NewQuarantine], now: dt.datetime) -> None:
    """Record why these messages (stored with ``messages.kind`` quarantined) wait for an admin."""
    if held:
        connection.execute(
            insert(QUARANTINE),
            [
                {
                    "message_id": q.message_pk,
                    "portfolio_id": q.portfolio_id,
                    "rule": q.rule,
                    "reason": q.reason,
                    "rule_set": q.rule_set,
                    "quarantined_at": now,
                }
                for q in held
            ],
        )


@dataclass(frozen=True, slots=True)
class Quarantined:
    gateway_id: str
    portfolio: str
    vorgang: str
    subject: str
    envelope_sender: str
    size: int
    rule: str
    reason: str
    rule_set: str
    quarantined_at: dt.datetime


def list_quarantined(
    connection: Connection,
    portfolio: str | None = None,
    gateway_id: str | None = None,
    *,
    limit: int | None = None,
    offset: int = 0,
) -> list[Quarantined]:
    """The messages waiting for an admin, oldest first; of one portfolio, or of all (or the one named);
    a page of them with ``limit`` and ``offset`` (the console lists them page by page)."""
    query = (
        select(
            MessageRow.gateway_id,
            PortfolioRow.name,
            VorgangRow.reference,
            MessageRow.subject,
            MessageRow.envelope_sender,
            MessageRow.size,
            QuarantineRow.rule,
            QuarantineRow.reason,
            QuarantineRow.rule_set,
            QuarantineRow.quarantined_at,
        )
        .join(MessageRow, MessageRow.id == QuarantineRow.message_id)
        .join(PortfolioRow, PortfolioRow.id == QuarantineRow.portfolio_id)
        .join(VorgangRow, VorgangRow.id == MessageRow.vorgang_id)
        .order_by(QuarantineRow.quarantined_at, MessageRow.id)
    )
    if portfolio is not None:
        query = query.where(PortfolioRow.name == portfolio)
    if gateway_id is not None:
        query = query.where(MessageRow.gateway_id == gateway_id)
    if limit is not None:
        query = query.limit(limit).offset(offset)
    return [
        Quarantined(
            gateway_id=str(r[0]),
            portfolio=str(r[1]),
            vorgang=str(r[2]),
            subject=str(r[3]),
            envelope_sender=str(r[4]),
            size=int(r[5]),
            rule=str(r[6]),
            reason=str(r[7]),
            rule_set=str(r[8]),
            quarantined_at=utc(r[9]),
        )
        for r in connection.execute(query)
    ]


def show(connection: Connection, portfolio: str, gateway_id: str) -> tuple[Quarantined, bytes]:
    """One quarantined message with the bytes the back office sent, for an admin to decide on."""
    found = list_quarantined(connection, portfolio, gateway_id)
    if not found:
        raise NotFound(_not_held(portfolio, gateway_id))
    raw = connection.scalar(select(MessageRow.raw).where(MessageRow.gateway_id == gateway_id))
    return found[0], bytes(raw or b"")


def _not_held(portfolio: str, gateway_id: str) -> str:
    return (
        f"there is no quarantined message {gateway_id} in portfolio {portfolio} "
        "(`gateway quarantine list` shows what is held)"
    )


@dataclass(frozen=True, slots=True)
class _Held:
    message_pk: int
    portfolio_id: int
    vorgang_id: int
    rule: str
    reason: str


def _held(connection: Connection, portfolio: str, gateway_id: str) -> _Held:
    row = connection.execute(
        select(
            MessageRow.id,
            MessageRow.portfolio_id,
            MessageRow.vorgang_id,
            QuarantineRow.rule,
            QuarantineRow.reason,
        )
        .join(QuarantineRow, QuarantineRow.message_id == MessageRow.id)
        .join(PortfolioRow, PortfolioRow.id == MessageRow.portfolio_id)
        .where(MessageRow.gateway_id == gateway_id, PortfolioRow.name == portfolio)
    ).first()
    if row is None:
        raise NotFound(_not_held(portfolio, gateway_id))
    return _Held(int(row[0]), int(row[1]), int(row[2]), str(row[3]), str(row[4]))


def _audience(connection: Connection, held: _Held) -> Audience:
    """The audience the held message has under the directory as it is now (DESIGN.md §3)."""
    participants = [
        Participant(int(member_id), role)
        for member_id, role in connection.execute(
            select(ParticipantRow.member_id, ParticipantRow.role).where(
                ParticipantRow.message_id == held.message_pk
            )
        )
    ]
    releases = acceptance.sharing_releases(connection, held.portfolio_id, {p.member_id for p in participants})
    return audience(held.portfolio_id, participants, releases)


@dataclass(frozen=True, slots=True)
class WouldSee:
    """A member who would get a copy if the message were released now, with every reason why."""

    address: str
    reasons: tuple[str, ...]


def would_see(connection: Connection, portfolio: str, gateway_id: str) -> list[WouldSee]:
    """Who would get a copy of the quarantined message if it were released now (read only)."""
    held = _held(connection, portfolio, gateway_id)
    seen = _audience(connection, held)
    addresses = acceptance.member_addresses(connection, seen.members)

    def name_of(member_id: int) -> str:
        return addresses.get(member_id, f"member {member_id}")

    return [WouldSee(addresses[m], tuple(r.describe(name_of) for r in seen.via(m))) for m in seen.ordered()]


def release(
    connection: Connection, portfolio: str, gateway_id: str, actor: str, now: dt.datetime
) -> list[str]:
    """Give the quarantined message its copies for the audience it has now; their addresses."""
    held = _held(connection, portfolio, gateway_id)
    acceptance.hold_directory(connection, held.portfolio_id)
    seen = _audience(connection, held)
    # A copy row another stage made meanwhile (reconciliation after a directory change) is kept, not
    # duplicated: one copy per member and message.
    existing = {
        int(member_id)
        for (member_id,) in connection.execute(
            select(CopyRow.member_id).where(CopyRow.message_id == held.message_pk)
        )
    }
    insert_copies(connection, copies_for(held.message_pk, held.portfolio_id, seen, leaving_out=existing), now)
    connection.execute(
        update(MessageRow).where(MessageRow.id == held.message_pk).values(kind=MessageKind.MESSAGE)
    )
    connection.execute(delete(QuarantineRow).where(QuarantineRow.message_id == held.message_pk))
    addresses = acceptance.member_addresses(connection, seen.members)
    to = sorted(addresses[m] for m in seen.members)
    _event(
        connection, held, EventKind.MESSAGE_RELEASED, actor, now, {"gateway_id": gateway_id, "audience": to}
    )
    return to


def released_copies(connection: Connection, portfolio: str, gateway_id: str) -> list[tuple[str, str]]:
    """(member address, copy state) of every copy of a message of ``portfolio``, by address: what
    became of a released message. NotFound when the portfolio has no such message."""
    message_pk = connection.scalar(
        select(MessageRow.id)
        .join(PortfolioRow, PortfolioRow.id == MessageRow.portfolio_id)
        .where(MessageRow.gateway_id == gateway_id, PortfolioRow.name == portfolio)
    )
    if message_pk is None:
        raise NotFound(f"there is no message {gateway_id} in portfolio {portfolio}")
    rows = connection.execute(
        select(MemberRow.address, CopyRow.state)
        .join(MemberRow, MemberRow.id == CopyRow.member_id)
        .where(CopyRow.message_id == message_pk)
        .order_by(MemberRow.address)
    )
    return [(str(address), str(state)) for address, state in rows]


def drop(connection: Connection, portfolio: str, gateway_id: str, actor: str, now: dt.datetime) -> None:
    """Delete the quarantined message (its participants and quarantine row go with it)."""
    held = _held(connection, portfolio, gateway_id)
    _event(connection, held, EventKind.MESSAGE_DROPPED, actor, now, {"gateway_id": gateway_id})
    connection.execute(delete(MessageRow).where(MessageRow.id == held.message_pk))
    # The list orders by last activity: the dropped message no longer counts as the Vorgang's last.
    recount_last_message(connection, held.vorgang_id)


def _event(
    connection: Connection,
    held: _Held,
    kind: EventKind,
    actor: str,
    now: dt.datetime,
    detail: dict[str, object],
) -> None:
    event = Event(
        kind,
        actor,
        now,
        portfolio_id=held.portfolio_id,
        vorgang_id=held.vorgang_id,
        message_id=held.message_pk,
        detail=detail | {"rule": held.rule, "reason": held.reason},
    )
    append_events(connection, [event])
