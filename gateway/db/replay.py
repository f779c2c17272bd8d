"""The SQL of rule replay: stored back-office messages in batches, and the facts their plans look up.

Read only. Messages are read by keyset (``id > after ORDER BY id LIMIT n``) on the portfolio's
``(portfolio_id, id)`` index, so a replay holds one batch of bytes at a time however long its span; each
batch's envelopes, participants, copies and first messages are one statement of each kind.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, make_url, select

from gateway.config import DatabaseSettings
from gateway.db import acceptance
from gateway.db.engine import postgres_connect_args, sqlite_on_connect
from gateway.db.models import (
    BackOfficeRow,
    CopyRow,
    CopyState,
    Direction,
    EventRow,
    MemberRow,
    MessageKind,
    MessageRow,
    ParticipantRow,
    PortfolioRow,
    VorgangRow,
)
from gateway.db.writer import sync_url
from gateway.domain.replay import BatchFacts, History
from gateway.domain.routing_plan import Lookups

__all__ = [
    "StoredSubmission",
    "batch_facts",
    "count_submissions",
    "portfolios",
    "reading_engine",
    "submissions_after",
]

_GONE = (CopyState.REVOKING.value, CopyState.REVOKED.value, CopyState.DROPPED.value)
_ACCEPTED = ("message.accepted", "message.quarantined")
_ROLE_ORDER = {"to": 0, "cc": 1, "bcc": 2}


@dataclass(frozen=True, slots=True)
class StoredSubmission:
    """A back office's stored message with the envelope it came with and what became of it."""

    raw: bytes
    backoffice: str
    envelope_sender: str
    recipients: tuple[str, ...] | None  # None: not recorded (mail stored before it was)
    listener: str
    history: History


def reading_engine(url: str, database: DatabaseSettings | None = None) -> Engine:
    """A synchronous engine whose connections cannot write: SQLite with ``query_only``, PostgreSQL
    with read-only transactions. A replay changes nothing, and the database holds it to that."""
    target = sync_url(url)
    if make_url(target).get_backend_name() == "sqlite":
        engine = create_engine(target, hide_parameters=True, pool_size=1, max_overflow=0)

        def read_only(dbapi_connection: Any, record: Any) -> None:
            sqlite_on_connect(dbapi_connection, record)
            dbapi_connection.execute("PRAGMA query_only=ON")

        event.listen(engine, "connect", read_only)
        # A deferred BEGIN: each batch reads one snapshot, and takes no write lock.
        event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN"))
        return engine
    return create_engine(
        target,
        hide_parameters=True,
        pool_size=1,
        max_overflow=0,
        execution_options={"postgresql_readonly": True},
        connect_args=postgres_connect_args(target, database or DatabaseSettings(), serving=False),
    )


def portfolios(connection: Connection, name: str | None) -> list[tuple[int, str]]:
    """(id, name) of the portfolio ``name``, or of every portfolio, by name."""
    query = select(PortfolioRow.id, PortfolioRow.name).order_by(PortfolioRow.name)
    if name is not None:
        query = query.where(PortfolioRow.name == name)
    return [(int(pid), str(pname)) for pid, pname in connection.execute(query)]


def _submissions(portfolio_id: int, since: dt.datetime | None) -> Any:
    conditions = [
        MessageRow.portfolio_id == portfolio_id,
        MessageRow.direction == Direction.INBOUND.value,
        MessageRow.kind.in_((MessageKind.MESSAGE.value, MessageKind.QUARANTINED.value)),
    ]
    if since is not None:
        conditions.append(MessageRow.received_at >= since)
    return conditions


def count_submissions(connection: Connection, portfolio_id: int, since: dt.datetime | None) -> int:
    return int(connection.scalar(select(func.count()).where(*_submissions(portfolio_id, since))) or 0)


def submissions_after(
    connection: Connection, portfolio_id: int, since: dt.datetime | None, after: int, limit: int
) -> list[StoredSubmission]:
    """The next ``limit`` stored submissions of the portfolio after row ``after``, in the order stored."""
    rows = connection.execute(
        select(
            MessageRow.id,
            MessageRow.gateway_id,
            MessageRow.message_id,
            MessageRow.subject,
            MessageRow.vorgang_id,
            MessageRow.kind,
            MessageRow.raw,
            MessageRow.envelope_sender,
            BackOfficeRow.name,
            VorgangRow.key,
        )
        .outerjoin(BackOfficeRow, BackOfficeRow.id == MessageRow.backoffice_id)
        .join(VorgangRow, VorgangRow.id == MessageRow.vorgang_id)
        .where(*_submissions(portfolio_id, since), MessageRow.id > after)
        .order_by(MessageRow.id)
        .limit(limit)
    ).all()
    if not rows:
        return []
    ids = [int(r[0]) for r in rows]
    envelopes = _envelopes(connection, ids)
    participants: dict[int, set[tuple[int, str]]] = defaultdict(set)
    named: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for message_pk, member_id, role, address in connection.execute(
        select(ParticipantRow.message_id, ParticipantRow.member_id, ParticipantRow.role, MemberRow.address)
        .join(MemberRow, MemberRow.id == ParticipantRow.member_id)
        .where(ParticipantRow.message_id.in_(ids))
    ):
        role_name = str(getattr(role, "value", role))
        participants[int(message_pk)].add((int(member_id), role_name))
        named[int(message_pk)].append((role_name, str(address)))
    copies: dict[int, set[int]] = defaultdict(set)
    for message_pk, member_id in connection.execute(
        select(CopyRow.message_id, CopyRow.member_id).where(
            CopyRow.message_id.in_(ids), CopyRow.state.not_in(_GONE)
        )
    ):
        copies[int(message_pk)].add(int(member_id))
    first = _first_messages(connection, {int(r[4]) for r in rows})
    found: list[StoredSubmission] = []
    for pk, gateway_id, message_id, subject, vorgang_id, kind, raw, sender, backoffice, key in rows:
        recipients, listener = envelopes.get(int(pk), (None, "submission"))
        if recipients is None:
            # Stored before acceptance recorded the envelope: the stored participants stand in for it.
            people = sorted(named.get(int(pk), ()), key=lambda p: (_ROLE_ORDER.get(p[0], 3), p[1]))
            recipients = tuple(address for _, address in people) or None
        opened = first.get(int(vorgang_id)) == int(pk)
        history = History(
            row=int(pk),
            gateway_id=str(gateway_id),
            message_id=str(message_id or f"<{gateway_id}>"),
            subject=str(subject or ""),
            vorgang_id=int(vorgang_id),
            opened=opened,
            key=str(key) if key is not None and opened else None,
            quarantined=kind == MessageKind.QUARANTINED.value,
            participants=frozenset(participants.get(int(pk), ())),
            copies=frozenset(copies.get(int(pk), ())),
        )
        found.append(
            StoredSubmission(
                bytes(raw), str(backoffice or ""), str(sender or ""), recipients, listener, history
            )
        )
    return found


def _envelopes(connection: Connection, ids: Sequence[int]) -> dict[int, tuple[tuple[str, ...] | None, str]]:
    """The recipients and listener recorded with each message's acceptance (the first such event)."""
    found: dict[int, tuple[tuple[str, ...] | None, str]] = {}
    for message_pk, detail in connection.execute(
        select(EventRow.message_id, EventRow.detail)
        .where(EventRow.message_id.in_(ids), EventRow.kind.in_(_ACCEPTED))
        .order_by(EventRow.id)
    ):
        if int(message_pk) in found or not isinstance(detail, dict):
            continue
        listed = detail.get("recipients")
        recipients = tuple(str(r) for r in listed) if isinstance(listed, list) and listed else None
        found[int(message_pk)] = (recipients, str(detail.get("listener") or "submission"))
    return found


def _first_messages(connection: Connection, vorgang_ids: Collection[int]) -> dict[int, int]:
    """The row of each Vorgang's first message: the message that opened it."""
    if not vorgang_ids:
        return {}
    rows = connection.execute(
        select(MessageRow.vorgang_id, func.min(MessageRow.id))
        .where(MessageRow.vorgang_id.in_(list(vorgang_ids)))
        .group_by(MessageRow.vorgang_id)
    )
    return {int(vid): int(first) for vid, first in rows}


def batch_facts(connection: Connection, portfolio_id: int, portfolio: str, wanted: Lookups) -> BatchFacts:
    """What the replayed plans of one batch may look up (``gateway.domain.replay.BatchFacts``): the
    Vorgänge known by reference, by Message-ID (with the message's row) and by key (with the row of
    the Vorgang's first message), and the directory as acceptance reads it now."""
    by_message_id: dict[str, tuple[int, int]] = {}
    if wanted.message_ids:
        for message_id, row, vorgang_id in connection.execute(
            select(MessageRow.message_id, MessageRow.id, MessageRow.vorgang_id).where(
                MessageRow.portfolio_id == portfolio_id, MessageRow.message_id.in_(list(wanted.message_ids))
            )
        ):
            known = by_message_id.get(str(message_id))
            if known is None or int(row) < known[0]:
                by_message_id[str(message_id)] = (int(row), int(vorgang_id))
    by_key: dict[str, tuple[int, int]] = {}
    if wanted.keys:
        first = (
            select(func.min(MessageRow.id)).where(MessageRow.vorgang_id == VorgangRow.id).scalar_subquery()
        )
        for key, vorgang_id, row in connection.execute(
            select(VorgangRow.key, VorgangRow.id, first).where(
                VorgangRow.portfolio_id == portfolio_id, VorgangRow.key.in_(list(wanted.keys))
            )
        ):
            # A keyed Vorgang without messages (its only one dropped from quarantine) is known throughout.
            by_key[str(key)] = (int(row) if row is not None else 0, int(vorgang_id))
    members = acceptance.member_ids(connection, portfolio_id, wanted.addresses)
    return BatchFacts(
        portfolio_id,
        portfolio,
        members=members,
        releases=tuple(acceptance.sharing_releases(connection, portfolio_id, set(members.values()))),
        by_reference=acceptance.vorgaenge_by_reference(connection, portfolio_id, wanted.references),
        by_message_id=by_message_id,
        by_key=by_key,
    )
