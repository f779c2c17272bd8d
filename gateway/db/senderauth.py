"""Which portfolios take members' replies without authenticating their sender (``sender_auth: off``),
checked against where the gateway listens (gateway.domain.mx_exposure)."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.config import Settings, loopback_only
from gateway.db.models import PortfolioRow
from gateway.domain.directory import SenderAuth
from gateway.domain.mx_exposure import off_refusal


async def portfolios_without_sender_auth(session: AsyncSession) -> list[str]:
    return list(
        await session.scalars(
            select(PortfolioRow.name)
            .where(PortfolioRow.sender_auth == SenderAuth.OFF.value)
            .order_by(PortfolioRow.name)
        )
    )


async def sender_auth_refusal(
    session: AsyncSession, settings: Settings, only: Collection[str] | None = None
) -> str | None:
    """Why the portfolios' (``only`` these) sender_auth cannot stand with these settings; None if it can."""
    mx = settings.listeners.mx
    off = await portfolios_without_sender_auth(session)
    return off_refusal(
        [name for name in off if only is None or name in only],
        mx_enabled=mx.enabled,
        mx_host=mx.host,
        mx_loopback_only=loopback_only(mx),
        border_mta_authenticates=settings.replies.border_mta_authenticates,
    )
