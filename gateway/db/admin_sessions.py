"""Web console sessions in the database, so that every node of the gateway knows who is logged in.

A row holds the hash of the cookie's token (never the token), the session's CSRF token for its forms,
and when it began and was last used; ``gateway.domain.admin_sessions`` decides when it has expired.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import AdminSessionRow, utc


@dataclass(frozen=True, slots=True)
class StoredSession:
    id: int
    account_id: int
    csrf_token: str
    created_at: dt.datetime
    last_seen_at: dt.datetime


async def open_session(
    session: AsyncSession, account_id: int, token_hash: str, csrf_token: str, now: dt.datetime
) -> None:
    row = AdminSessionRow(token_hash=token_hash, account_id=account_id, csrf_token=csrf_token)
    row.created_at = row.last_seen_at = now
    session.add(row)
    await session.flush()


async def find_session(session: AsyncSession, token_hash: str) -> StoredSession | None:
    row = await session.scalar(select(AdminSessionRow).where(AdminSessionRow.token_hash == token_hash))
    if row is None:
        return None
    return StoredSession(row.id, row.account_id, row.csrf_token, utc(row.created_at), utc(row.last_seen_at))


async def touch_session(session: AsyncSession, session_id: int, now: dt.datetime) -> None:
    await session.execute(
        update(AdminSessionRow).where(AdminSessionRow.id == session_id).values(last_seen_at=now)
    )


async def close_session(session: AsyncSession, token_hash: str) -> bool:
    """Forget the session; False when there was none."""
    result = await session.execute(delete(AdminSessionRow).where(AdminSessionRow.token_hash == token_hash))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def close_sessions_of(session: AsyncSession, account_id: int) -> None:
    await session.execute(delete(AdminSessionRow).where(AdminSessionRow.account_id == account_id))


async def close_expired(
    session: AsyncSession, *, idle_before: dt.datetime, created_before: dt.datetime
) -> None:
    """Forget every session idle since ``idle_before`` or begun before ``created_before``."""
    await session.execute(
        delete(AdminSessionRow).where(
            or_(AdminSessionRow.last_seen_at < idle_before, AdminSessionRow.created_at < created_before)
        )
    )
