"""The SQL of accepting a message: re-send detection, Vorgang lookups and numbers, and the inserts.

Core statements through the caller's session: the accept path runs many of these per second, and the
ORM's unit of work would cost more than the statements themselves. Every statement is scoped to the
portfolio of the authenticated back office.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import (
    CopyRow,
    EventRow,
    MemberRow,
    MessageRow,
    ParticipantRow,
    VorgangCounterRow,
    VorgangRow,
)
from gateway.domain.model import Participant
from gateway.domain.threading import format_reference


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    gateway_id: str
    vorgang_id: int
    vorgang: str


async def find_resend(
    session: AsyncSession, backoffice_id: int, message_id: str, sha256: str
) -> StoredMessage | None:
    row = (
        await session.execute(
            select(MessageRow.id, MessageRow.gateway_id, MessageRow.vorgang_id, VorgangRow.reference)
            .join(VorgangRow, VorgangRow.id == MessageRow.vorgang_id)
            .where(
                MessageRow.backoffice_id == backoffice_id,
                MessageRow.message_id == message_id,
                MessageRow.sha256 == sha256,
            )
        )
    ).first()
    return StoredMessage(row[0], row[1], row[2], row[3]) if row else None


async def vorgaenge_by_reference(
    session: AsyncSession, portfolio_id: int, references: Collection[str]
) -> dict[str, int]:
    if not references:
        return {}
    rows = await session.execute(
        select(VorgangRow.reference, VorgangRow.id).where(
            VorgangRow.portfolio_id == portfolio_id, VorgangRow.reference.in_(list(references))
        )
    )
    return {str(reference): int(vorgang_id) for reference, vorgang_id in rows}


async def vorgaenge_by_message_id(
    session: AsyncSession, portfolio_id: int, message_ids: Collection[str]
) -> dict[str, int]:
    if not message_ids:
        return {}
    rows = await session.execute(
        select(MessageRow.message_id, MessageRow.vorgang_id).where(
            MessageRow.portfolio_id == portfolio_id, MessageRow.message_id.in_(list(message_ids))
        )
    )
    return {message_id: vorgang_id for message_id, vorgang_id in rows if message_id is not None}


async def vorgang_reference(session: AsyncSession, vorgang_id: int) -> str:
    return str(
        (await session.execute(select(VorgangRow.reference).where(VorgangRow.id == vorgang_id))).scalar_one()
    )


async def new_vorgang(
    session: AsyncSession, portfolio_id: int, subject: str, now: dt.datetime
) -> tuple[int, str]:
    """Open a Vorgang with the portfolio's next number of this year.

    One upsert takes the number: the row lock it holds until commit makes concurrent sessions and
    processes queue for it on PostgreSQL; on SQLite the write lock does the same.
    """
    dialect = session.get_bind().dialect.name
    upsert: Any = (postgresql if dialect == "postgresql" else sqlite).insert(VorgangCounterRow)
    number = (
        await session.execute(
            upsert.values(portfolio_id=portfolio_id, year=now.year, last_number=1)
            .on_conflict_do_update(
                index_elements=["portfolio_id", "year"],
                set_={"last_number": VorgangCounterRow.last_number + 1},
            )
            .returning(VorgangCounterRow.last_number)
        )
    ).scalar_one()
    reference = format_reference(now.year, int(number))
    vorgang_id = (
        await session.execute(
            insert(VorgangRow)
            .values(portfolio_id=portfolio_id, reference=reference, subject=subject[:1000], created_at=now)
            .returning(VorgangRow.id)
        )
    ).scalar_one()
    return int(vorgang_id), reference


async def member_ids(session: AsyncSession, portfolio_id: int, addresses: Collection[str]) -> dict[str, int]:
    rows = await session.execute(
        select(MemberRow.address, MemberRow.id).where(
            MemberRow.portfolio_id == portfolio_id, MemberRow.address.in_(list(addresses))
        )
    )
    return {str(address): int(member_id) for address, member_id in rows}


async def insert_message(session: AsyncSession, values: dict[str, Any]) -> int:
    return int(
        (await session.execute(insert(MessageRow).values(**values).returning(MessageRow.id))).scalar_one()
    )


async def insert_participants(
    session: AsyncSession, message_id: int, portfolio_id: int, participants: Sequence[Participant]
) -> None:
    if participants:
        await session.execute(
            insert(ParticipantRow),
            [
                {
                    "message_id": message_id,
                    "member_id": p.member_id,
                    "role": p.role,
                    "portfolio_id": portfolio_id,
                }
                for p in participants
            ],
        )


async def insert_copies(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await session.execute(insert(CopyRow), list(rows))


async def insert_event(session: AsyncSession, values: dict[str, Any]) -> None:
    await session.execute(insert(EventRow).values(**values))


async def insert_events(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await session.execute(insert(EventRow), list(rows))
