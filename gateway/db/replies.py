"""The SQL of the reply path: what a reply token points at, who may answer now, and the answered flags.

Synchronous functions on a Core ``Connection``: the reply stage runs them on the writer thread, inside
the transaction that stores the reply (``gateway.db.membermail``), so the audience it checks is the one
it stores against.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Connection, and_, select, update

from gateway.db.acceptance import sharing_releases
from gateway.db.models import (
    BackOfficeAddressRow,
    BackOfficeRow,
    CopyRow,
    CopyState,
    Direction,
    MemberRow,
    MessageRow,
    ParticipantRow,
    PortfolioRow,
    VorgangRow,
)
from gateway.domain.audience import Audience, audience
from gateway.domain.model import Participant, ParticipantRole


@dataclass(frozen=True, slots=True)
class Answered:
    """The copy a reply token names, and the message it is a copy of."""

    copy_pk: int
    copy_id: str
    member_id: int
    portfolio_id: int
    portfolio: str
    message_pk: int
    message_id: str | None
    references: tuple[str, ...]
    from_address: str | None
    backoffice_id: int | None
    ams_version: str
    vorgang_id: int
    vorgang: str
    direction: str = Direction.INBOUND
    # The copy's state: revoking or revoked when reconciliation took it away (its token stops working).
    copy_state: str = CopyState.DELIVERED


def answered_by_copy(connection: Connection, copy_id: str) -> Answered | None:
    row = connection.execute(
        select(
            CopyRow.id,
            CopyRow.copy_id,
            CopyRow.member_id,
            CopyRow.portfolio_id,
            PortfolioRow.name,
            MessageRow.id,
            MessageRow.message_id,
            MessageRow.references,
            MessageRow.from_address,
            MessageRow.backoffice_id,
            BackOfficeRow.ams_version,
            VorgangRow.id,
            VorgangRow.reference,
            MessageRow.direction,
            CopyRow.state,
        )
        .join(PortfolioRow, PortfolioRow.id == CopyRow.portfolio_id)
        .join(MessageRow, MessageRow.id == CopyRow.message_id)
        .join(VorgangRow, VorgangRow.id == MessageRow.vorgang_id)
        .outerjoin(BackOfficeRow, BackOfficeRow.id == MessageRow.backoffice_id)
        .where(CopyRow.copy_id == copy_id)
    ).first()
    if row is None:
        return None
    return Answered(
        copy_pk=row[0],
        copy_id=row[1],
        member_id=row[2],
        portfolio_id=row[3],
        portfolio=row[4],
        message_pk=row[5],
        message_id=row[6],
        references=tuple((row[7] or "").split()),
        from_address=row[8],
        backoffice_id=row[9],
        ams_version=row[10] or "",
        vorgang_id=row[11],
        vorgang=row[12],
        direction=row[13],
        copy_state=row[14],
    )


def answered_of_message(connection: Connection, message_pk: int, member_id: int) -> Answered | None:
    """A copy of the message ``message_pk`` as ``answered_by_copy`` reads it: ``member_id``'s own
    copy where there is one, else the first (a held reply's author may have answered from another's)."""
    copy_id = connection.scalars(
        select(CopyRow.copy_id)
        .where(CopyRow.message_id == message_pk)
        .order_by((CopyRow.member_id != member_id), CopyRow.id)
        .limit(1)
    ).first()
    return None if copy_id is None else answered_by_copy(connection, copy_id)


@dataclass(frozen=True, slots=True)
class ThreadTarget:
    """The back-office mail a reply answers on the back office's side: whom to send to, how to thread."""

    message_id: str | None
    references: tuple[str, ...]
    backoffice_address: str | None
    backoffice_id: int | None
    ams_version: str


def thread_target(connection: Connection, answered: Answered) -> ThreadTarget | None:
    """The answered message itself when the back office sent it; when a member answers a colleague's
    reply, the Vorgang's latest mail from the back office (the back office never saw the colleague's
    copy, only the relayed mail, which threads to that same back-office mail)."""
    if answered.direction == Direction.INBOUND:
        return ThreadTarget(
            answered.message_id,
            answered.references,
            backoffice_address(connection, answered.backoffice_id, answered.from_address),
            answered.backoffice_id,
            answered.ams_version,
        )
    row = connection.execute(
        select(
            MessageRow.message_id,
            MessageRow.references,
            MessageRow.from_address,
            MessageRow.backoffice_id,
            BackOfficeRow.ams_version,
        )
        .outerjoin(BackOfficeRow, BackOfficeRow.id == MessageRow.backoffice_id)
        .where(
            MessageRow.portfolio_id == answered.portfolio_id,
            MessageRow.vorgang_id == answered.vorgang_id,
            MessageRow.direction == Direction.INBOUND,
        )
        .order_by(MessageRow.received_at.desc(), MessageRow.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    address = backoffice_address(connection, row[3], row[2])
    return ThreadTarget(row[0], tuple((row[1] or "").split()), address, row[3], row[4] or "")


def backoffice_address(
    connection: Connection, backoffice_id: int | None, sent_from: str | None
) -> str | None:
    """Where a reply to the back office's mail goes: one of the back office's own addresses in the
    directory, never an address taken from a header (DESIGN.md §8). The one the mail came from when it
    is among them (a back office with several addresses hears back at the one it wrote from), else the
    first; None when the back office has none (or the message is not a back office's)."""
    if backoffice_id is None:
        return None
    addresses = [
        str(a)
        for a in connection.scalars(
            select(BackOfficeAddressRow.address)
            .where(BackOfficeAddressRow.backoffice_id == backoffice_id)
            .order_by(BackOfficeAddressRow.id)
        )
    ]
    if sent_from is not None and sent_from.lower() in (a.lower() for a in addresses):
        return next(a for a in addresses if a.lower() == sent_from.lower())
    return addresses[0] if addresses else None


def member_mail_by_digest(
    connection: Connection, portfolio_id: int, message_id: str, sha256: str
) -> tuple[str, str, str] | None:
    """A member's mail already stored with this Message-ID and digest: its gateway id, Vorgang and kind."""
    row = connection.execute(
        select(MessageRow.gateway_id, VorgangRow.reference, MessageRow.kind)
        .join(VorgangRow, VorgangRow.id == MessageRow.vorgang_id)
        .where(
            MessageRow.portfolio_id == portfolio_id,
            MessageRow.message_id == message_id,
            MessageRow.sha256 == sha256,
            MessageRow.direction.in_((Direction.REPLY, Direction.INTAKE)),
        )
        .order_by(MessageRow.id)
        .limit(1)
    ).first()
    return None if row is None else (str(row[0]), str(row[1]), str(row[2]))


@dataclass(frozen=True, slots=True)
class Author:
    """The member who wrote a reply, as the reply path needs them."""

    id: int
    address: str
    display_name: str


def member_by_address(connection: Connection, portfolio_id: int, address: str) -> Author | None:
    row = connection.execute(
        select(MemberRow.id, MemberRow.address, MemberRow.display_name).where(
            MemberRow.portfolio_id == portfolio_id, MemberRow.address == address
        )
    ).first()
    return None if row is None else Author(row[0], row[1], row[2])


def members_by_address(connection: Connection, portfolio_id: int, addresses: set[str]) -> dict[str, int]:
    if not addresses:
        return {}
    rows = connection.execute(
        select(MemberRow.address, MemberRow.id).where(
            MemberRow.portfolio_id == portfolio_id, MemberRow.address.in_(addresses)
        )
    )
    return {str(address): int(member_id) for address, member_id in rows}


def participants(connection: Connection, portfolio_id: int, message_pk: int) -> list[Participant]:
    rows = connection.execute(
        select(ParticipantRow.member_id, ParticipantRow.role).where(
            ParticipantRow.message_id == message_pk, ParticipantRow.portfolio_id == portfolio_id
        )
    )
    return [Participant(int(member_id), ParticipantRole(role)) for member_id, role in rows]


def audience_now(connection: Connection, portfolio_id: int, message_pk: int) -> Audience:
    """Who may see the message under today's directory (DESIGN.md §3), not when it was delivered."""
    taking_part = participants(connection, portfolio_id, message_pk)
    releases = sharing_releases(connection, portfolio_id, {p.member_id for p in taking_part})
    return audience(portfolio_id, taking_part, releases)


def original_participant(connection: Connection, portfolio_id: int, vorgang_id: int) -> str | None:
    """The member the back office first wrote to in the Vorgang (the legacy-ams From, DESIGN.md §5)."""
    row = connection.execute(
        select(MemberRow.address)
        .join(
            ParticipantRow,
            and_(ParticipantRow.member_id == MemberRow.id, ParticipantRow.portfolio_id == portfolio_id),
        )
        .join(MessageRow, MessageRow.id == ParticipantRow.message_id)
        .where(
            MessageRow.portfolio_id == portfolio_id,
            MessageRow.vorgang_id == vorgang_id,
            MessageRow.direction == Direction.INBOUND,
            ParticipantRow.role == ParticipantRole.TO.value,
        )
        .order_by(MessageRow.received_at, MessageRow.id, MemberRow.id)
        .limit(1)
    ).first()
    return None if row is None else str(row[0])


def mark_answered(
    connection: Connection,
    portfolio_id: int,
    message_pk: int,
    now: dt.datetime,
    *,
    only_member: int | None = None,
) -> int:
    """``\\Answered`` on every copy of the message: in the database at once, in the mailboxes by the
    fan-out (copies still pending get it with their first write). Returns how many copies changed.

    ``only_member``: the copy of this member alone (a blind recipient's answer, which the others must
    not learn of)."""
    unanswered = and_(
        CopyRow.portfolio_id == portfolio_id, CopyRow.message_id == message_pk, CopyRow.answered.is_(False)
    )
    if only_member is not None:
        unanswered = and_(unanswered, CopyRow.member_id == only_member)
    # A delivered copy is due at once for its flag; a pending one keeps its lease and retry time and
    # is written with the flag (or caught up by the fan-out's record, if its write was under way).
    delivered = connection.execute(
        update(CopyRow)
        .where(unanswered, CopyRow.state == CopyState.DELIVERED)
        .values(answered=True, flags_pending=True, next_attempt_at=now, updated_at=now)
    )
    others = connection.execute(update(CopyRow).where(unanswered).values(answered=True, updated_at=now))
    return sum(int(getattr(r, "rowcount", 0) or 0) for r in (delivered, others))


@dataclass(frozen=True, slots=True)
class Portfolio:
    id: int
    name: str


def portfolio_by_name(connection: Connection, name: str) -> Portfolio | None:
    row = connection.execute(
        select(PortfolioRow.id, PortfolioRow.name).where(PortfolioRow.name == name)
    ).first()
    return None if row is None else Portfolio(int(row[0]), str(row[1]))


def portfolio_target(connection: Connection, portfolio_id: int) -> ThreadTarget | None:
    """Where a Vorgang a member opens goes: the portfolio's first back office that takes replies (it has
    relay settings), at its first address; nothing to thread to yet."""
    row = connection.execute(
        select(BackOfficeRow.id, BackOfficeAddressRow.address, BackOfficeRow.ams_version)
        .join(BackOfficeAddressRow, BackOfficeAddressRow.backoffice_id == BackOfficeRow.id)
        .where(BackOfficeRow.portfolio_id == portfolio_id, BackOfficeRow.relay_host.is_not(None))
        .order_by(BackOfficeRow.id, BackOfficeAddressRow.id)
        .limit(1)
    ).first()
    if row is None:
        return None
    return ThreadTarget(None, (), str(row[1]), int(row[0]), row[2] or "")
