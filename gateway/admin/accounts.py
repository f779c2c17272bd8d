"""The admin API for web console accounts: checks what a person typed, hashes passwords, stores.

``gateway admin`` and the console call these; the rows and events are ``gateway.db.admin_accounts``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db import admin_accounts as db
from gateway.db.admin_accounts import AdminAccount
from gateway.db.models import AdminRole
from gateway.domain.passwords import MIN_LENGTH, WeakPassword, hash_password
from gateway.errors import InputError

__all__ = ["AdminAccount", "AdminRole", "add", "find", "hashed", "list_all", "remove", "set_account"]

_LOGIN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}")


def login_name(text: str) -> str:
    """A login as typed, checked: letters, digits and ``. _ @ + -``, compared case-insensitively."""
    login = text.strip().lower()
    if not _LOGIN_RE.fullmatch(login):
        raise InputError(
            f"admin login {text!r} must be letters, digits and . _ @ + - (like anna or anna@makler.example)"
        )
    return login


def role_of(text: str) -> AdminRole:
    try:
        return AdminRole(text)
    except ValueError:
        raise InputError(f"role {text!r} must be operator or portfolio_admin") from None


def hashed(password: str) -> str:
    try:
        return hash_password(password)
    except WeakPassword:
        raise InputError(f"an admin password needs at least {MIN_LENGTH} characters") from None


def _check_portfolios(role: AdminRole, portfolios: Sequence[str]) -> None:
    if role is AdminRole.OPERATOR and portfolios:
        raise InputError("an operator administers every portfolio: give no --portfolio")
    if role is AdminRole.PORTFOLIO_ADMIN and not portfolios:
        raise InputError("a portfolio admin needs at least one --portfolio to administer")


async def add(
    session: AsyncSession,
    login: str,
    *,
    role: AdminRole,
    password: str | None,
    portfolios: Sequence[str],
    actor: str,
) -> AdminAccount:
    """A new account; ``password`` None makes it one that logs in only through a trusted proxy."""
    _check_portfolios(role, portfolios)
    return await db.add_account(
        session,
        login_name(login),
        role=role,
        password_hash=None if password is None else hashed(password),
        portfolios=portfolios,
        actor=actor,
    )


async def set_account(
    session: AsyncSession,
    login: str,
    *,
    role: AdminRole | None = None,
    password: str | None = None,
    clear_password: bool = False,
    portfolios: Sequence[str] | None = None,
    actor: str,
) -> AdminAccount:
    login = login_name(login)
    current = await db.find_account(session, login)
    if current is not None and (role is not None or portfolios is not None):
        # An operator made portfolio admin needs portfolios; a portfolio admin made operator drops them.
        new_role = role or current.role
        kept = current.portfolios if new_role is AdminRole.PORTFOLIO_ADMIN else ()
        _check_portfolios(new_role, kept if portfolios is None else portfolios)
    return await db.set_account(
        session,
        login,
        role=role,
        password_hash=None if password is None else hashed(password),
        clear_password=clear_password,
        portfolios=[] if role is AdminRole.OPERATOR and portfolios is None else portfolios,
        actor=actor,
    )


async def remove(session: AsyncSession, login: str, *, actor: str) -> None:
    await db.remove_account(session, login_name(login), actor=actor)


async def find(session: AsyncSession, login: str) -> AdminAccount | None:
    return await db.find_account(session, login.strip().lower())


async def list_all(session: AsyncSession) -> list[AdminAccount]:
    return await db.list_accounts(session)
