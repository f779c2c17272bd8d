"""Reads messages and Vorgänge back by their public ids (``gw-…``, ``VG-…``) for admins."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import CopyRow, MemberRow, MessageRow, ParticipantRow, RelayRow, ReleaseRow, VorgangRow
from gateway.domain.model import Participant, ParticipantRole
from gateway.errors import NotFound


def new_gateway_id() -> str:
    """A public message id that reveals nothing about volume or order (unlike the row id)."""
    return "gw-" + secrets.token_hex(12)


async def get_message(session: AsyncSession, gateway_id: str) -> MessageRow:
    row = await session.scalar(select(MessageRow).where(MessageRow.gateway_id == gateway_id))
    if row is None:
        raise NotFound(f"there is no message with id {gateway_id!r}")
    return row


async def participants_of(session: AsyncSession, message: MessageRow) -> list[Participant]:
    rows = await session.execute(
        select(ParticipantRow.member_id, ParticipantRow.role).where(
            ParticipantRow.message_id == message.id, ParticipantRow.portfolio_id == message.portfolio_id
        )
    )
    return [Participant(member_id, ParticipantRole(role)) for member_id, role in rows]


@dataclass(frozen=True, slots=True)
class CopyState:
    copy_id: str
    address: str
    state: str
    attempts: int
    shared_via: str | None
    mailbox_ref: str | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class RelayState:
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
    copies: tuple[CopyState, ...]
    kind: str = "message"
    author: str | None = None  # the member who wrote a reply or opened the Vorgang
    relay: RelayState | None = None


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
        raise NotFound(f"there is no Vorgang {reference} in portfolio {portfolio}")
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
    copies: dict[int, list[CopyState]] = {m[0]: [] for m in messages}
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
        )
        .join(MemberRow, MemberRow.id == CopyRow.member_id)
        .outerjoin(ReleaseRow, ReleaseRow.id == CopyRow.shared_via_release_id)
        .where(CopyRow.message_id.in_(list(copies)), CopyRow.portfolio_id == portfolio_id)
        .order_by(CopyRow.id)
    )
    for message_pk, copy_id, address, state, attempts, shared_via, ref, error in rows:
        copies[message_pk].append(CopyState(copy_id, address, state, attempts, shared_via, ref, error))
    relays = {
        message_pk: RelayState(tuple(to), state, attempts, reply, error)
        for message_pk, to, state, attempts, reply, error in await session.execute(
            select(
                RelayRow.message_id,
                RelayRow.recipients,
                RelayRow.state,
                RelayRow.attempts,
                RelayRow.last_reply,
                RelayRow.last_error,
            ).where(RelayRow.message_id.in_(list(copies)), RelayRow.portfolio_id == portfolio_id)
        )
    }
    return VorgangView(
        portfolio,
        vorgang.reference,
        vorgang.subject,
        tuple(
            MessageView(
                gid, direction, at.isoformat(), subject, mid, tuple(copies[pk]), kind, author, relays.get(pk)
            )
            for pk, gid, direction, at, subject, mid, kind, author in messages
        ),
    )
