"""Back-office submission accounts: set a login's password hash, and find a login for SMTP AUTH."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Connection, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.events import Event, EventKind, record_event
from gateway.db.models import BackOfficeAccountRow, BackOfficeAddressRow, BackOfficeRow, PortfolioRow
from gateway.errors import DirectoryConflict, NotFound


@dataclass(frozen=True, slots=True)
class Account:
    """A back office as the submission listener knows it once it has logged in."""

    login: str
    password_hash: str
    backoffice_id: int
    backoffice: str
    portfolio_id: int
    portfolio: str
    # The back office's own addresses in the directory: the only ones it may send from (DESIGN.md §8).
    addresses: tuple[str, ...] = ()


def find_account(connection: Connection, login: str) -> Account | None:
    """The account of ``login`` (synchronous: the submission listener asks through the writer thread)."""
    row = (
        connection.execute(
            select(
                BackOfficeAccountRow.login,
                BackOfficeAccountRow.password_hash,
                BackOfficeAccountRow.backoffice_id,
                BackOfficeRow.name,
                BackOfficeAccountRow.portfolio_id,
                PortfolioRow.name,
            )
            .join(BackOfficeRow, BackOfficeRow.id == BackOfficeAccountRow.backoffice_id)
            .join(PortfolioRow, PortfolioRow.id == BackOfficeAccountRow.portfolio_id)
            .where(BackOfficeAccountRow.login == login)
        )
    ).first()
    if row is None:
        return None
    login_, password_hash, backoffice_id, backoffice, portfolio_id, portfolio = row
    addresses = connection.scalars(
        select(BackOfficeAddressRow.address)
        .where(BackOfficeAddressRow.backoffice_id == backoffice_id)
        .order_by(BackOfficeAddressRow.id)
    ).all()
    return Account(
        login_, password_hash, backoffice_id, backoffice, portfolio_id, portfolio, tuple(addresses)
    )


async def set_password(
    session: AsyncSession,
    portfolio: str,
    backoffice: str,
    login: str,
    password_hash: str,
    actor: str,
    *,
    if_missing: bool = False,
) -> bool | None:
    """Give ``login`` of the back office this password hash; True when the login is new, None when it
    exists and ``if_missing`` keeps its password (no change, no event)."""
    found = (
        await session.execute(
            select(BackOfficeRow)
            .join(PortfolioRow, PortfolioRow.id == BackOfficeRow.portfolio_id)
            .where(PortfolioRow.name == portfolio, BackOfficeRow.name == backoffice)
        )
    ).scalar_one_or_none()
    if found is None:
        raise NotFound(f"there is no back office {backoffice} in portfolio {portfolio}")
    account = await session.scalar(select(BackOfficeAccountRow).where(BackOfficeAccountRow.login == login))
    if account is not None and account.backoffice_id != found.id:
        raise DirectoryConflict(
            f"the login {login} belongs to another back office; choose another with --login"
        )
    if account is not None and if_missing:
        return None
    created = account is None
    if account is None:
        account = BackOfficeAccountRow(backoffice_id=found.id, portfolio_id=found.portfolio_id, login=login)
        session.add(account)
    account.password_hash = password_hash
    await session.flush()
    await record_event(
        session,
        Event(
            EventKind.BACKOFFICE_PASSWORD,
            actor,
            dt.datetime.now(dt.UTC),
            portfolio_id=found.portfolio_id,
            detail={"backoffice": backoffice, "login": login, "created": created},
        ),
    )
    return created
