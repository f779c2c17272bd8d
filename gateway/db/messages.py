"""Messages in the database: stored with their participants (``insert_messages``), and read back by
their public ids (``gw-…``, ``VG-…``) for admins."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    LargeBinary,
    TextClause,
    bindparam,
    case,
    exists,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db import bulk
from gateway.db.models import (
    MESSAGES,
    PARTICIPANTS,
    VORGAENGE,
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
    RelayRow,
    ReleaseRow,
    VorgangRow,
    utc,
)
from gateway.domain.model import Participant, ParticipantRole
from gateway.domain.parsing import MAX_HEADER_BYTES
from gateway.domain.rules import CopyHeaders
from gateway.domain.submitters import address_that_fits, ids_that_fit
from gateway.domain.trace import Trace
from gateway.errors import InputError, NotFound


def new_gateway_id() -> str:
    """A public message id that reveals nothing about volume or order (unlike the row id)."""
    return "gw-" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to store: the bytes kept, and what routing, threading and the admins read of it."""

    gateway_id: str
    portfolio_id: int
    vorgang_id: int
    direction: Direction
    raw: bytes  # what is kept: the whole mail, or the head of one only recorded
    sha256: str  # of ``raw``: a re-sent mail is recognised by it
    message_id: str  # the mail's own, or one the gateway assigned (``message_id_assigned``)
    message_id_assigned: bool
    subject: str
    envelope_sender: str
    received_at: dt.datetime
    in_reply_to: Sequence[str] = ()  # kept as far as whole ids fit the column
    references: Sequence[str] = ()
    from_address: str | None = None  # kept when it fits the column
    backoffice_id: int | None = None
    kind: MessageKind = MessageKind.MESSAGE
    size: int | None = None  # of the mail as received, when ``raw`` is only its head
    sender_member_id: int | None = None  # a member's mail: who wrote it
    answers_message_id: int | None = None  # a reply: the message answered
    copy_headers: CopyHeaders = field(default_factory=CopyHeaders)
    trace: Trace | None = None
    # Who sent it and whom it addressed (each member and role is recorded once).
    participants: Sequence[Participant] = ()


def insert_messages(connection: Connection, messages: Sequence[NewMessage]) -> list[int]:
    """Store ``messages`` and their participants (one statement each); the messages' new ids, in order."""
    if not messages:
        return []
    rows = [
        {
            "gateway_id": m.gateway_id,
            "portfolio_id": m.portfolio_id,
            "vorgang_id": m.vorgang_id,
            "direction": m.direction.value,
            "backoffice_id": m.backoffice_id,
            "raw": m.raw,
            "size": len(m.raw) if m.size is None else m.size,
            "sha256": m.sha256,
            "message_id": m.message_id,
            "message_id_assigned": m.message_id_assigned,
            "in_reply_to": ids_that_fit(m.in_reply_to),
            "references": " ".join(m.references) or None,
            "subject": m.subject,
            "from_address": address_that_fits(m.from_address),
            "envelope_sender": m.envelope_sender,
            "received_at": m.received_at,
            "kind": m.kind.value,
            "sender_member_id": m.sender_member_id,
            "answers_message_id": m.answers_message_id,
            "copy_headers": m.copy_headers.to_json() if m.copy_headers else None,
            "trace": m.trace.to_json() if m.trace is not None else None,
        }
        for m in messages
    ]
    if connection.dialect.name == "postgresql":
        return _insert_messages_postgresql(connection, messages, rows)
    # Matched by gateway id: one multi-row statement, where sort_by_parameter_order would make SQLAlchemy
    # insert row by row (gateway.db.copies.insert_copies).
    result = connection.execute(insert(MESSAGES).returning(MESSAGES.c.id, MESSAGES.c.gateway_id), rows)
    by_gateway_id = {str(gateway_id): int(pk) for pk, gateway_id in result}
    pks = [by_gateway_id[m.gateway_id] for m in messages]
    taking_part = [
        {"message_id": pk, "member_id": p.member_id, "role": p.role.value, "portfolio_id": m.portfolio_id}
        for m, pk in zip(messages, pks, strict=True)
        for p in dict.fromkeys(m.participants)
    ]
    if taking_part:
        connection.execute(insert(PARTICIPANTS), taking_part)
    _note_last_messages(connection, messages)
    return pks


# A participant as the one statement of ``insert_messages`` takes it: its message by gateway id.
_PARTICIPANT_SOURCE = (
    MESSAGES.c.gateway_id,
    PARTICIPANTS.c.member_id,
    PARTICIPANTS.c.role,
    PARTICIPANTS.c.portfolio_id,
)
_STORE: dict[tuple[str, ...], TextClause] = {}


def _store_statement(dialect: Dialect, columns: Sequence[str]) -> TextClause:
    """The messages, their participants and their Vorgänge's ``last_message_at`` in one statement.

    The parts of one ``WITH`` run as one statement (one round trip); the participants find their
    message's new id by its gateway id. The Vorgänge are locked in the order of their ids before they
    are updated, as the executemany path updates them, so two nodes never wait for each other in a
    circle; and only moved forward, never back.
    """
    key = (dialect.name, *columns)
    statement = _STORE.get(key)
    if statement is None:
        quote = dialect.identifier_preparer.quote
        names = ", ".join(quote(column) for column in columns)
        messages = bulk.unnest([MESSAGES.c[column] for column in columns], dialect, "m")
        participants = bulk.unnest(
            _PARTICIPANT_SOURCE, dialect, "p", ["gateway_id", "member_id", "role", "portfolio_id"]
        )
        latest = bulk.unnest([VORGAENGE.c.id, VORGAENGE.c.last_message_at], dialect, "l", ["id", "at"])
        statement = _STORE[key] = text(
            f"WITH new AS (INSERT INTO messages ({names}) SELECT {names} FROM {messages} "
            "ORDER BY ordinality RETURNING id, gateway_id), "
            "taking_part AS (INSERT INTO participants (message_id, member_id, role, portfolio_id) "
            f"SELECT new.id, p.member_id, p.role, p.portfolio_id FROM {participants} "
            "JOIN new ON new.gateway_id = p.gateway_id), "
            f"locked AS (SELECT vorgaenge.id FROM vorgaenge JOIN {latest} ON l.id = vorgaenge.id "
            "ORDER BY vorgaenge.id FOR NO KEY UPDATE OF vorgaenge), "
            f"moved AS (UPDATE vorgaenge SET last_message_at = l.at FROM {latest} "
            "WHERE vorgaenge.id = l.id AND vorgaenge.id IN (SELECT id FROM locked) "
            "AND vorgaenge.last_message_at < l.at) "
            "SELECT id, gateway_id FROM new"
        )
    return statement


def _insert_messages_postgresql(
    connection: Connection, messages: Sequence[NewMessage], rows: Sequence[dict[str, Any]]
) -> list[int]:
    """``insert_messages`` on PostgreSQL: one statement, one round trip, whatever the batch's size."""
    dialect = connection.dialect
    columns = list(rows[0])
    taking_part = [
        (m.gateway_id, p.member_id, p.role.value, m.portfolio_id)
        for m in messages
        for p in dict.fromkeys(m.participants)
    ]
    newest: dict[int, dt.datetime] = {}
    for m in messages:
        if m.vorgang_id not in newest or m.received_at > newest[m.vorgang_id]:
            newest[m.vorgang_id] = m.received_at
    params = bulk.arrays(
        [MESSAGES.c[column] for column in columns],
        [[row[column] for column in columns] for row in rows],
        dialect,
        "m",
    )
    params |= bulk.arrays(_PARTICIPANT_SOURCE, taking_part, dialect, "p")
    params |= bulk.arrays([VORGAENGE.c.id, VORGAENGE.c.last_message_at], list(newest.items()), dialect, "l")
    stored = connection.execute(_store_statement(dialect, columns), params)
    ids = {str(gateway_id): int(pk) for pk, gateway_id in stored}
    return [ids[m.gateway_id] for m in messages]


def _note_last_messages(connection: Connection, messages: Sequence[NewMessage]) -> None:
    """Move each Vorgang's ``last_message_at`` up to its newest message of the batch, one UPDATE per
    Vorgang in the storing transaction; never back, so a late-stored older message leaves it as it is."""
    newest: dict[int, dt.datetime] = {}
    for m in messages:
        if m.vorgang_id not in newest or m.received_at > newest[m.vorgang_id]:
            newest[m.vorgang_id] = m.received_at
    connection.execute(
        update(VORGAENGE)
        .where(VORGAENGE.c.id == bindparam("vorgang"), VORGAENGE.c.last_message_at < bindparam("at"))
        .values(last_message_at=bindparam("at")),
        [{"vorgang": vorgang_id, "at": at} for vorgang_id, at in sorted(newest.items())],
    )


def recount_last_message(connection: Connection, vorgang_id: int) -> None:
    """Set the Vorgang's ``last_message_at`` from the messages it has (a message of it was deleted):
    its newest one's, or when it was opened if none is left."""
    newest = (
        select(func.max(MessageRow.received_at)).where(MessageRow.vorgang_id == vorgang_id).scalar_subquery()
    )
    connection.execute(
        update(VORGAENGE)
        .where(VORGAENGE.c.id == vorgang_id)
        .values(last_message_at=func.coalesce(newest, VORGAENGE.c.created_at))
    )


def insert_message(connection: Connection, message: NewMessage) -> int:
    """Store one message with its participants; its new id."""
    (message_pk,) = insert_messages(connection, [message])
    return message_pk


@dataclass(frozen=True, slots=True)
class MessageHead:
    """A stored message as a notice or a read notification about it needs it: its header section, not
    its body (a large message's body stays in the database)."""

    pk: int
    gateway_id: str
    portfolio_id: int
    vorgang_id: int
    direction: str
    kind: str
    backoffice_id: int | None
    envelope_sender: str
    from_address: str | None
    subject: str
    head: bytes  # the first MAX_HEADER_BYTES of the stored bytes


def find_message_head(connection: Connection, *where: ColumnElement[bool]) -> MessageHead | None:
    """The head of the one message that meets ``where``; None when none does."""
    row = connection.execute(
        select(
            MessageRow.id,
            MessageRow.gateway_id,
            MessageRow.portfolio_id,
            MessageRow.vorgang_id,
            MessageRow.direction,
            MessageRow.kind,
            MessageRow.backoffice_id,
            MessageRow.envelope_sender,
            MessageRow.from_address,
            MessageRow.subject,
            func.substr(MessageRow.raw, 1, MAX_HEADER_BYTES, type_=LargeBinary),
        ).where(*where)
    ).first()
    return None if row is None else MessageHead(*row[:9], row[9] or "", bytes(row[10]))


def message_head(connection: Connection, message_pk: int) -> MessageHead:
    found = find_message_head(connection, MessageRow.id == message_pk)
    if found is None:
        raise NotFound(f"there is no message {message_pk}")
    return found


async def get_message(session: AsyncSession, gateway_id: str) -> MessageRow:
    row = await session.scalar(select(MessageRow).where(MessageRow.gateway_id == gateway_id))
    if row is None:
        raise NotFound(f"there is no message with id {gateway_id!r}")
    return row


async def has_messages(session: AsyncSession, portfolio_id: int) -> bool:
    """Whether the portfolio has any stored message."""
    found = await session.scalar(
        select(MessageRow.id).where(MessageRow.portfolio_id == portfolio_id).limit(1)
    )
    return found is not None


async def participants_of(session: AsyncSession, message: MessageRow) -> list[Participant]:
    rows = await session.execute(
        select(ParticipantRow.member_id, ParticipantRow.role).where(
            ParticipantRow.message_id == message.id, ParticipantRow.portfolio_id == message.portfolio_id
        )
    )
    return [Participant(member_id, ParticipantRole(role)) for member_id, role in rows]


@dataclass(frozen=True, slots=True)
class CopyView:
    copy_id: str
    address: str
    state: str
    attempts: int
    shared_via: str | None
    mailbox_ref: str | None
    last_error: str | None
    seen: bool = False
    answered: bool = False


@dataclass(frozen=True, slots=True)
class RelayView:
    """Where a member's mail to the back office stands."""

    to: tuple[str, ...]
    state: str
    attempts: int
    last_reply: str | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class MessageView:
    gateway_id: str
    direction: str
    received_at: str
    subject: str
    message_id: str | None
    copies: tuple[CopyView, ...]
    kind: str = "message"
    author: str | None = None  # the member who wrote a reply or opened the Vorgang
    relay: RelayView | None = None


@dataclass(frozen=True, slots=True)
class VorgangView:
    portfolio: str
    reference: str
    subject: str
    messages: tuple[MessageView, ...]


async def vorgang_view(
    session: AsyncSession, portfolio_id: int, portfolio: str, reference: str
) -> VorgangView:
    """A Vorgang's messages, oldest first, each with where its copies stand."""
    vorgang = await session.scalar(
        select(VorgangRow).where(
            VorgangRow.portfolio_id == portfolio_id, VorgangRow.reference == reference.upper()
        )
    )
    if vorgang is None:
        raise NotFound(
            f"there is no Vorgang {reference} in portfolio {portfolio} "
            f"(`gateway vorgang list -p {portfolio}` lists them)"
        )
    messages = list(
        await session.execute(
            select(
                MessageRow.id,
                MessageRow.gateway_id,
                MessageRow.direction,
                MessageRow.received_at,
                MessageRow.subject,
                MessageRow.message_id,
                MessageRow.kind,
                MemberRow.address,
            )
            .outerjoin(MemberRow, MemberRow.id == MessageRow.sender_member_id)
            .where(MessageRow.vorgang_id == vorgang.id, MessageRow.portfolio_id == portfolio_id)
            .order_by(MessageRow.received_at, MessageRow.id)
        )
    )
    copies: dict[int, list[CopyView]] = {m[0]: [] for m in messages}
    rows = await session.execute(
        select(
            CopyRow.message_id,
            CopyRow.copy_id,
            MemberRow.address,
            CopyRow.state,
            CopyRow.attempts,
            ReleaseRow.name,
            CopyRow.mailbox_ref,
            CopyRow.last_error,
            CopyRow.seen,
            CopyRow.answered,
        )
        .join(MemberRow, MemberRow.id == CopyRow.member_id)
        .outerjoin(ReleaseRow, ReleaseRow.id == CopyRow.shared_via_release_id)
        .where(CopyRow.message_id.in_(list(copies)), CopyRow.portfolio_id == portfolio_id)
        .order_by(CopyRow.id)
    )
    for message_pk, copy_id, address, state, attempts, shared_via, ref, error, seen, answered in rows:
        copies[message_pk].append(
            CopyView(copy_id, address, state, attempts, shared_via, ref, error, bool(seen), bool(answered))
        )
    relays = {
        message_pk: RelayView(tuple(to), state, attempts, reply, error)
        for message_pk, to, state, attempts, reply, error in await session.execute(
            select(
                RelayRow.message_id,
                RelayRow.recipients,
                RelayRow.state,
                RelayRow.attempts,
                RelayRow.last_reply,
                RelayRow.last_error,
            ).where(
                RelayRow.message_id.in_(list(copies)),
                RelayRow.portfolio_id == portfolio_id,
                RelayRow.purpose == "mail",
            )
        )
    }
    return VorgangView(
        portfolio,
        vorgang.reference,
        vorgang.subject,
        tuple(
            MessageView(
                gid,
                direction,
                utc(at).isoformat(timespec="seconds"),
                subject,
                mid,
                tuple(copies[pk]),
                kind,
                author,
                relays.get(pk),
            )
            for pk, gid, direction, at, subject, mid, kind, author in messages
        ),
    )


# What ``list_vorgaenge`` can filter by: Vorgänge with a copy in one of these states, or a held message.
QUARANTINED = "quarantined"
VORGANG_STATES: tuple[str, ...] = (*(s.value for s in CopyState), QUARANTINED)


async def backoffice_id(session: AsyncSession, portfolio_id: int, name: str) -> int | None:
    """The id of the portfolio's back office ``name``; None when it has none of that name."""
    found = await session.scalar(
        select(BackOfficeRow.id).where(BackOfficeRow.portfolio_id == portfolio_id, BackOfficeRow.name == name)
    )
    return None if found is None else int(found)


@dataclass(frozen=True, slots=True)
class VorgangSummary:
    """One line of ``gateway vorgang list``: a Vorgang with its size and whether its copies are through."""

    reference: str
    key: str | None
    subject: str
    created_at: str
    last_message_at: str | None
    messages: int
    quarantined: int
    copies: dict[str, int]  # copy state → how many copies of the Vorgang's messages are in it


async def list_vorgaenge(
    session: AsyncSession,
    portfolio_id: int,
    *,
    member_id: int | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    search: str | None = None,
    backoffice_id: int | None = None,
    state: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[VorgangSummary]:
    """The portfolio's Vorgänge with mail in [since, until), most recently active first, ``offset`` of
    them skipped.

    With ``member_id`` only those with a message the member has a copy of (revoked ones excepted) or
    took part in. With ``backoffice_id`` only those with a message of that back office; with ``state``
    (one of ``VORGANG_STATES``) only those with a copy in that state, or with a quarantined message.
    ``search`` matches the subject, reference or key, case-insensitively. The sizes and copy counts are
    read for the page shown only.
    """
    # The order is each Vorgang's stored last activity, read backwards off (portfolio_id, last_message_at,
    # id) until the page is full, and the counts are read for the page shown only: grouping every message
    # of the portfolio before the LIMIT cost 174 ms at 100,000 messages, a probe of the messages per
    # Vorgang and a sort of them all about 100 ms.
    active = VorgangRow.last_message_at
    query = (
        select(VorgangRow.id, VorgangRow.reference, VorgangRow.key, VorgangRow.subject, VorgangRow.created_at)
        .where(VorgangRow.portfolio_id == portfolio_id)
        .order_by(active.desc(), VorgangRow.id.desc())
        .limit(limit)
        .offset(offset)
    )
    if since is not None:
        query = query.where(active >= since)
    if until is not None:
        query = query.where(active < until)
    if search:
        # The admin's text as it is: a % or _ in it is no wildcard.
        text = search.lower()
        query = query.where(
            func.lower(VorgangRow.subject).contains(text, autoescape=True)
            | func.lower(VorgangRow.reference).contains(text, autoescape=True)
            | func.lower(func.coalesce(VorgangRow.key, "")).contains(text, autoescape=True)
        )
    if backoffice_id is not None:
        query = query.where(
            VorgangRow.id.in_(
                select(MessageRow.vorgang_id).where(
                    MessageRow.backoffice_id == backoffice_id, MessageRow.portfolio_id == portfolio_id
                )
            )
        )
    if state == QUARANTINED:
        query = query.where(
            VorgangRow.id.in_(
                select(MessageRow.vorgang_id).where(
                    MessageRow.portfolio_id == portfolio_id, MessageRow.kind == MessageKind.QUARANTINED
                )
            )
        )
    elif state is not None:
        query = query.where(
            VorgangRow.id.in_(
                select(MessageRow.vorgang_id)
                .join(CopyRow, CopyRow.message_id == MessageRow.id)
                .where(CopyRow.state == state, CopyRow.portfolio_id == portfolio_id)
            )
        )
    if member_id is not None:
        # Tested per Vorgang as the index hands them out, so the first page stops after the Vorgänge it
        # needs. Nested, so the Vorgang's own messages are read first and each is probed for the member's
        # row (message_id, member_id): as one join, SQLite without statistics started from all the
        # member's copies for every Vorgang (4 s at 100,000 messages); an IN over them read every one
        # first, and PostgreSQL answered one OR over two IN lists by testing every message.
        has_copy = exists().where(
            CopyRow.message_id == MessageRow.id,
            CopyRow.member_id == member_id,
            CopyRow.state.not_in((CopyState.REVOKING, CopyState.REVOKED)),
        )
        took_part = exists().where(
            ParticipantRow.message_id == MessageRow.id, ParticipantRow.member_id == member_id
        )
        query = query.where(exists().where(MessageRow.vorgang_id == VorgangRow.id, has_copy | took_part))
    found = list(await session.execute(query))
    shown = [int(row[0]) for row in found]
    sizes: dict[int, tuple[dt.datetime, int, int]] = {}
    counts: dict[int, dict[str, int]] = {vid: {} for vid in shown}
    if shown:
        # By the shown Vorgänge' ids alone (they are the portfolio's): with the portfolio's id too,
        # SQLite without statistics read every message of the portfolio (70 ms at 100,000).
        for vorgang_id, last_at, n, held in await session.execute(
            select(
                MessageRow.vorgang_id,
                func.max(MessageRow.received_at),
                func.count(MessageRow.id),
                func.sum(case((MessageRow.kind == MessageKind.QUARANTINED, 1), else_=0)),
            )
            .where(MessageRow.vorgang_id.in_(shown))
            .group_by(MessageRow.vorgang_id)
        ):
            sizes[int(vorgang_id)] = (last_at, int(n), int(held or 0))
        for vorgang_id, state, n in await session.execute(
            select(MessageRow.vorgang_id, CopyRow.state, func.count())
            .join(CopyRow, CopyRow.message_id == MessageRow.id)
            .where(MessageRow.vorgang_id.in_(shown))
            .group_by(MessageRow.vorgang_id, CopyRow.state)
        ):
            counts[int(vorgang_id)][str(state)] = int(n)
    summaries = []
    for vid, reference, key, subject, created in found:
        last_at, n, held = sizes.get(int(vid), (None, 0, 0))
        summaries.append(
            VorgangSummary(
                reference=str(reference),
                key=key,
                subject=str(subject),
                created_at=utc(created).isoformat(timespec="seconds"),
                last_message_at=utc(last_at).isoformat(timespec="seconds") if last_at is not None else None,
                messages=n,
                quarantined=held,
                copies=counts[int(vid)],
            )
        )
    return summaries


@dataclass(frozen=True, slots=True)
class VorgangLabel:
    """How a Vorgang is named to people: its reference and subject."""

    reference: str
    subject: str


async def vorgang_labels(
    session: AsyncSession, portfolio_id: int, ids: Sequence[int]
) -> dict[int, VorgangLabel]:
    """The reference and subject of each of the portfolio's Vorgänge ``ids``, read in bounded chunks."""
    found: dict[int, VorgangLabel] = {}
    wanted = sorted(set(ids))
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start : start + 1000]
        for vid, reference, subject in await session.execute(
            select(VorgangRow.id, VorgangRow.reference, VorgangRow.subject).where(
                VorgangRow.portfolio_id == portfolio_id, VorgangRow.id.in_(chunk)
            )
        ):
            found[int(vid)] = VorgangLabel(reference, subject)
    return found


@dataclass(frozen=True, slots=True)
class StoredSubmission:
    """A message a back office submitted, with the envelope it came in (``gateway rules test gw-…``)."""

    raw: bytes
    portfolio: str
    envelope_sender: str
    recipients: tuple[str, ...]
    listener: str
    login: str  # the back office's SMTP login


async def stored_submission(session: AsyncSession, gateway_id: str) -> StoredSubmission:
    """The bytes of the message ``gateway_id`` and its envelope: the sender is stored with the message,
    the recipients, listener and login with the event that recorded its acceptance or quarantine."""
    row = (
        await session.execute(
            select(
                MessageRow.id,
                MessageRow.raw,
                MessageRow.envelope_sender,
                MessageRow.direction,
                PortfolioRow.name,
            )
            .join(PortfolioRow, PortfolioRow.id == MessageRow.portfolio_id)
            .where(MessageRow.gateway_id == gateway_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"there is no message {gateway_id} (`gateway vorgang show` and `events` name them)")
    message_pk, raw, envelope_sender, direction, portfolio = row
    if direction != Direction.INBOUND:
        raise InputError(
            f"{gateway_id} is a member's {direction} mail, not a back office's submission: rules apply to "
            "what back offices submit"
        )
    event = (
        await session.execute(
            select(EventRow.actor, EventRow.detail)
            .where(
                EventRow.message_id == message_pk,
                EventRow.kind.in_(("message.accepted", "message.quarantined")),
            )
            .order_by(EventRow.id)
            .limit(1)
        )
    ).first()
    if event is None or not isinstance(event[1], dict) or not event[1].get("recipients"):
        raise InputError(
            f"the envelope of {gateway_id} was not recorded; save it with `gateway quarantine show "
            f"{gateway_id} -p {portfolio} --raw` and give --auth, --from and --to"
        )
    actor, detail = event
    return StoredSubmission(
        raw=bytes(raw),
        portfolio=str(portfolio),
        envelope_sender=str(envelope_sender or ""),
        recipients=tuple(str(r) for r in detail["recipients"]),
        listener=str(detail.get("listener") or "submission"),
        login=str(actor).removeprefix("backoffice:"),
    )
