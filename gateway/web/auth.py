"""Logging in and out of the console, and who a request comes from (session cookie or trusted proxy).

A login checks the password with scrypt in a thread, limited per client address and per login by
``gateway.domain.logins`` as the submission listener is; an unknown login is checked against a dummy
hash, so the answer takes as long as for a known one. Each login, failure, refusal and logout is an
event. A session is a random token in an HttpOnly, SameSite=Strict cookie (Secure under TLS); the
database keeps its hash (``gateway.db.admin_sessions``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response

from gateway.db import admin_accounts, admin_sessions
from gateway.db.events import Event, EventKind, record_event
from gateway.domain.admin_sessions import Expiry, expiry, new_token, token_hash, worth_touching
from gateway.domain.passwords import hash_password, verify_password
from gateway.web.console import Console, Visitor

log = logging.getLogger("gateway.web")

SESSION_COOKIE = "gw_session"
FORM_COOKIE = "gw_form"  # the login form's CSRF token, before there is a session


class Outcome(StrEnum):
    LOGGED_IN = "logged_in"
    FAILED = "failed"
    THROTTLED = "throttled"


@dataclass(frozen=True, slots=True)
class LoginResult:
    outcome: Outcome
    token: str | None = None  # the new session's cookie value


@functools.cache
def dummy_hash() -> str:
    """A hash no password matches, checked for unknown logins (computed once, at startup)."""
    return hash_password(new_token())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def client_of(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


async def visitor(console: Console, request: Request) -> Visitor | None:
    """The logged-in admin of ``request``, or None; an expired session is deleted on the way."""
    token = request.cookies.get(SESSION_COOKIE)
    settings = console.settings
    async with console.sessions() as session:
        found: Visitor | None = None
        if token:
            found = await _session_visitor(console, session, token)
        header = settings.trusted_proxy_header
        if header is not None and settings.trusts(client_of(request)):
            login = request.headers.get(header, "").strip().lower()
            if login and (found is None or found.account.login != login):
                found = await _proxy_visitor(console, session, login, client_of(request))
        await session.commit()
        return found


async def _session_visitor(console: Console, session: AsyncSession, token: str) -> Visitor | None:
    hashed = token_hash(token)
    stored = await admin_sessions.find_session(session, hashed)
    if stored is None:
        return None
    now = _now()
    settings = console.settings
    state = expiry(
        stored.created_at,
        stored.last_seen_at,
        now,
        idle=settings.session_idle_timeout,
        max_age=settings.session_max_age,
    )
    if state is not Expiry.LIVE:
        await admin_sessions.close_session(session, hashed)
        return None
    account = await admin_accounts.account_by_id(session, stored.account_id)
    if account is None:
        return None
    if worth_touching(stored.last_seen_at, now, idle=settings.session_idle_timeout):
        await admin_sessions.touch_session(session, stored.id, now)
    return Visitor(account, stored.id, stored.csrf_token)


async def _proxy_visitor(console: Console, session: AsyncSession, login: str, client: str) -> Visitor | None:
    account = await admin_accounts.find_account(session, login)
    if account is None:
        log.warning("the trusted proxy at %s named %r, which is no admin account", client, login)
        return None
    token, csrf = new_token(), new_token()
    await _forget_expired(console, session)
    await admin_sessions.open_session(session, account.id, token_hash(token), csrf, _now())
    await record_event(
        session,
        Event(
            EventKind.ADMIN_LOGIN,
            f"web:{login}",
            _now(),
            detail={"login": login, "client": client, "via": "trusted proxy"},
        ),
    )
    stored = await admin_sessions.find_session(session, token_hash(token))
    assert stored is not None
    return Visitor(account, stored.id, csrf, new_cookie=token)


async def log_in(console: Console, login: str, password: str, client: str) -> LoginResult:
    name = login.strip().lower()
    failures = console.failures
    refused = failures.admit(name, client, time.monotonic())
    if refused is not None:
        log.debug("console login %r from %s refused: %s", name, client, refused)
        return LoginResult(Outcome.THROTTLED)
    try:
        async with console.sessions() as session:
            account = await admin_accounts.find_account(session, name)
        stored = account.password_hash if account is not None else None
        right = await asyncio.to_thread(verify_password, password.encode(), stored or dummy_hash())
        if account is not None and stored is not None and right:
            failures.succeeded(name, client)
            token = new_token()
            async with console.sessions() as session:
                await _forget_expired(console, session)
                await admin_sessions.open_session(session, account.id, token_hash(token), new_token(), _now())
                await record_event(
                    session,
                    Event(
                        EventKind.ADMIN_LOGIN, f"web:{name}", _now(), detail={"login": name, "client": client}
                    ),
                )
                await session.commit()
            log.info("console login %s from %s", name, client)
            return LoginResult(Outcome.LOGGED_IN, token)
        failure = failures.failed(name, client, time.monotonic())
        console.metrics.logins_failed.labels("console").inc()
    finally:
        failures.end(name, client)
    log.warning(
        "failed console login %r from %s (%d from this address, %d for this login)",
        name,
        client,
        failure.address_failures,
        failure.login_failures,
    )
    detail = {
        "login": name,
        "client": client,
        "known_login": account is not None,
        "failures_from_address": failure.address_failures,
        "failures_for_login": failure.login_failures,
    }
    async with console.sessions() as session:
        actor = f"gateway:{console.node}"
        await record_event(session, Event(EventKind.ADMIN_LOGIN_FAILED, actor, _now(), detail=detail))
        if failure.throttles:
            throttled = detail | {"throttles": list(failure.throttles)}
            await record_event(
                session, Event(EventKind.ADMIN_LOGIN_THROTTLED, actor, _now(), detail=throttled)
            )
        await session.commit()
    await asyncio.sleep(failure.delay)
    return LoginResult(Outcome.FAILED)


async def log_out(console: Console, request: Request, who: Visitor) -> None:
    token = request.cookies.get(SESSION_COOKIE) or who.new_cookie or ""
    login = who.account.login
    async with console.sessions() as session:
        await admin_sessions.close_session(session, token_hash(token))
        await record_event(
            session,
            Event(EventKind.ADMIN_LOGOUT, f"web:{login}", _now(), detail={"login": login}),
        )
        await session.commit()


async def _forget_expired(console: Console, session: AsyncSession) -> None:
    # Sessions nobody presents again (a closed browser) are removed when the next one opens, so the
    # table holds no more than the sessions of one max_age.
    now = _now()
    await admin_sessions.close_expired(
        session,
        idle_before=now - dt.timedelta(seconds=console.settings.session_idle_timeout),
        created_before=now - dt.timedelta(seconds=console.settings.session_max_age),
    )


def form_token(request: Request) -> str:
    """The CSRF token of forms shown before a login: the one in the form cookie, else a new one."""
    return request.cookies.get(FORM_COOKIE) or new_token()


def set_session_cookie(console: Console, response: Response, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(console.settings.session_max_age),
        path="/",
        secure=console.secure_cookies,
        httponly=True,
        samesite="strict",
    )


def clear_session_cookie(console: Console, response: Response) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/", secure=console.secure_cookies, httponly=True, samesite="strict"
    )


def set_form_cookie(console: Console, response: Response, token: str) -> None:
    response.set_cookie(
        FORM_COOKIE, token, path="/", secure=console.secure_cookies, httponly=True, samesite="strict"
    )
