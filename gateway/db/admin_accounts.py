"""Admin accounts of the web console: who may log in, with which role and for which portfolios.

Each change is recorded as an event with the acting person (``cli:<login>`` or ``web:<login>``).
Functions take an open session and leave committing to the caller.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.admin_sessions import close_sessions_of
from gateway.db.events import Event, EventKind, record_event
from gateway.db.models import AdminAccountPortfolioRow, AdminAccountRow, AdminRole, PortfolioRow
from gateway.errors import DirectoryConflict, NotFound


@dataclass(frozen=True, slots=True)
class AdminAccount:
    """An admin account as the console and ``gateway admin list`` see it."""

    id: int
    login: str
    role: AdminRole
    portfolios: tuple[str, ...]  # what a portfolio admin administers; empty for operators
    password_hash: str | None  # None: logs in only through a trusted reverse proxy

    @property
    def is_operator(self) -> bool:
        return self.role is AdminRole.OPERATOR

    def administers(self, portfolio: str) -> bool:
        return self.is_operator or portfolio in self.portfolios


async def find_account(session: AsyncSession, login: str) -> AdminAccount | None:
    row = await session.scalar(select(AdminAccountRow).where(AdminAccountRow.login == login))
    return None if row is None else await _account(session, row)


async def account_by_id(session: AsyncSession, account_id: int) -> AdminAccount | None:
    row = await session.get(AdminAccountRow, account_id)
    return None if row is None else await _account(session, row)


async def list_accounts(session: AsyncSession) -> list[AdminAccount]:
    rows = (await session.scalars(select(AdminAccountRow).order_by(AdminAccountRow.login))).all()
    return [await _account(session, row) for row in rows]


async def add_account(
    session: AsyncSession,
    login: str,
    *,
    role: AdminRole,
    password_hash: str | None,
    portfolios: Sequence[str],
    actor: str,
) -> AdminAccount:
    if await session.scalar(select(AdminAccountRow.id).where(AdminAccountRow.login == login)) is not None:
        raise DirectoryConflict(f"admin account {login} exists already")
    row = AdminAccountRow(login=login, role=role.value, password_hash=password_hash)
    session.add(row)
    await session.flush()
    await _set_portfolios(session, row.id, portfolios)
    await _record(session, EventKind.ADMIN_ACCOUNT_CREATE, actor, login, role, portfolios)
    return await _account(session, row)


async def set_account(
    session: AsyncSession,
    login: str,
    *,
    role: AdminRole | None = None,
    password_hash: str | None = None,
    clear_password: bool = False,
    portfolios: Sequence[str] | None = None,
    actor: str,
) -> AdminAccount:
    """Change what is given; ``clear_password`` makes the account a proxy-only one."""
    row = await session.scalar(select(AdminAccountRow).where(AdminAccountRow.login == login))
    if row is None:
        raise NotFound(f"there is no admin account {login}")
    if role is not None:
        row.role = role.value
    if password_hash is not None:
        row.password_hash = password_hash
    elif clear_password:
        row.password_hash = None
    if portfolios is not None:
        await _set_portfolios(session, row.id, portfolios)
    await session.flush()
    account = await _account(session, row)
    await _record(
        session,
        EventKind.ADMIN_ACCOUNT_UPDATE,
        actor,
        login,
        account.role,
        account.portfolios,
        password_changed=password_hash is not None or clear_password,
    )
    if password_hash is not None or clear_password or role is not None or portfolios is not None:
        # Whoever was logged in with the old password or rights logs in again with the new ones.
        await close_sessions_of(session, row.id)
    return account


async def remove_account(session: AsyncSession, login: str, *, actor: str) -> None:
    row = await session.scalar(select(AdminAccountRow).where(AdminAccountRow.login == login))
    if row is None:
        raise NotFound(f"there is no admin account {login}")
    account = await _account(session, row)
    await session.delete(row)
    await session.flush()
    await _record(session, EventKind.ADMIN_ACCOUNT_DELETE, actor, login, account.role, account.portfolios)


async def _set_portfolios(session: AsyncSession, account_id: int, names: Sequence[str]) -> None:
    ids: list[int] = []
    for name in dict.fromkeys(names):
        found = await session.scalar(select(PortfolioRow.id).where(PortfolioRow.name == name))
        if found is None:
            raise NotFound(f"there is no portfolio {name}")
        ids.append(found)
    await session.execute(
        delete(AdminAccountPortfolioRow).where(AdminAccountPortfolioRow.account_id == account_id)
    )
    session.add_all(AdminAccountPortfolioRow(account_id=account_id, portfolio_id=i) for i in ids)
    await session.flush()


async def _account(session: AsyncSession, row: AdminAccountRow) -> AdminAccount:
    names = (
        await session.scalars(
            select(PortfolioRow.name)
            .join(AdminAccountPortfolioRow, AdminAccountPortfolioRow.portfolio_id == PortfolioRow.id)
            .where(AdminAccountPortfolioRow.account_id == row.id)
            .order_by(PortfolioRow.name)
        )
    ).all()
    return AdminAccount(row.id, row.login, AdminRole(row.role), tuple(names), row.password_hash)


async def _record(
    session: AsyncSession,
    kind: EventKind,
    actor: str,
    login: str,
    role: AdminRole,
    portfolios: Sequence[str],
    **more: object,
) -> None:
    detail = {"login": login, "role": role.value, "portfolios": list(portfolios), **more}
    await record_event(session, Event(kind, actor, dt.datetime.now(dt.UTC), detail=detail))
