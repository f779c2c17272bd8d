"""The web console over HTTP: the real ASGI app on a test's own database (SQLite and PostgreSQL), with
the seed's directory, a portfolio ``makler-zwei``, an operator ``op`` and a portfolio admin ``zwei`` of
makler-zwei, all written by the CLI (once per worker; each test gets a copy)."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import AdminHttpSettings
from gateway.db.engine import create_engine, session_factory
from gateway.domain.logins import LoginLimits
from gateway.web.app import create_app
from gateway.web.console import Console
from tests.conftest import Gateway, load_example_directory, seed_database

OPERATOR, OPERATOR_PASSWORD = "op", "betrieb-passwort-1"
ZWEI, ZWEI_PASSWORD = "zwei", "zwei-passwort-12"
OTHER = "makler-zwei"
MUSTER = "makler-muster"

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def seed_console(gateway: Gateway, tmp_path: Path) -> None:
    load_example_directory(gateway)
    gateway("portfolio", "create", OTHER, "--display-name", "Makler Zwei KG")
    for login, password, role in ((OPERATOR, OPERATOR_PASSWORD, "operator"), (ZWEI, ZWEI_PASSWORD, None)):
        file = tmp_path / f"{login}.password"
        file.write_text(password + "\n", encoding="utf-8")
        options = ["--role", role] if role else ["--role", "portfolio_admin", "-p", OTHER]
        gateway("admin", "add", login, *options, "--password-file", str(file))


@pytest.fixture
def console_seeded(gateway: Gateway, database_url: str, tmp_path: Path) -> Gateway:
    seed_database(database_url, "web", lambda: seed_console(gateway, tmp_path))
    return gateway


@dataclass
class Browser:
    """An HTTP client of the console that keeps cookies, as a browser does."""

    client: httpx.AsyncClient
    console: Console

    async def csrf(self, path: str = "/login") -> str:
        page = await self.client.get(path)
        found = CSRF_RE.search(page.text)
        assert found, page.text
        return found.group(1)

    async def login(self, login: str, password: str) -> httpx.Response:
        token = await self.csrf("/login")
        return await self.client.post(
            "/login", data={"csrf": token, "login": login, "password": password, "next": "/"}
        )

    async def post(
        self, path: str, data: dict[str, str] | None = None, *, from_page: str = "/"
    ) -> httpx.Response:
        token = await self.csrf(from_page)
        return await self.client.post(path, data={"csrf": token, **(data or {})})


@dataclass
class ConsoleUnderTest:
    database_url: str
    engine: AsyncEngine
    make: Callable[..., Browser]
    cli: Gateway

    async def sql(self, statement: str, **params: Any) -> list[Any]:
        async with self.engine.begin() as connection:
            result = await connection.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    async def events(self, kind: str) -> list[dict[str, Any]]:
        rows = await self.sql("SELECT actor, detail FROM events WHERE kind = :kind ORDER BY id", kind=kind)
        # SQLite hands JSON back as text, PostgreSQL as data.
        return [
            {"actor": actor, "detail": json.loads(detail) if isinstance(detail, str) else detail}
            for actor, detail in rows
        ]

    async def age_sessions(self, **ago: float) -> None:
        """Move every session's times back (``last_seen``/``created`` seconds), as if time had passed."""
        past = dt.datetime.now(dt.UTC)
        async with self.engine.begin() as connection:
            if "last_seen" in ago:
                await connection.execute(
                    text("UPDATE admin_sessions SET last_seen_at = :t"),
                    {"t": past - dt.timedelta(seconds=ago["last_seen"])},
                )
            if "created" in ago:
                await connection.execute(
                    text("UPDATE admin_sessions SET created_at = :t"),
                    {"t": past - dt.timedelta(seconds=ago["created"])},
                )


# Fast failures: the doubling delay of a wrong password is the login limiter's, tested in tests/domain.
TEST_LIMITS = LoginLimits(delay=0.0, max_delay=0.0, per_address=4, per_login=30)


@pytest.fixture
async def web(console_seeded: Gateway, database_url: str) -> AsyncIterator[ConsoleUnderTest]:
    engine = create_engine(database_url)
    clients: list[httpx.AsyncClient] = []

    def make(
        *, client: str = "127.0.0.1", tls: bool = False, limits: LoginLimits = TEST_LIMITS, **settings: Any
    ) -> Browser:
        console = Console(
            AdminHttpSettings(**settings), session_factory(engine), limits, node="test", tls=tls
        )
        transport = httpx.ASGITransport(app=create_app(console), client=(client, 40000))
        base = "https://console.test" if tls else "http://console.test"
        http = httpx.AsyncClient(transport=transport, base_url=base)
        clients.append(http)
        return Browser(http, console)

    try:
        yield ConsoleUnderTest(database_url, engine, make, console_seeded)
    finally:
        for http in clients:
            await http.aclose()
        await engine.dispose()


@pytest.fixture
def browser(web: ConsoleUnderTest) -> Browser:
    return web.make()
