"""Appends to the event log: who changed what, and which message went where."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import EventRow


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
