"""Fixtures shared by every level of tests: a fresh migrated database per test, on SQLite and PostgreSQL.

Each test gets its own database: on SQLite a copy of a file migrated once per session, on PostgreSQL a
``CREATE DATABASE … TEMPLATE`` of a database migrated once per session. PostgreSQL is a real server
(127.0.0.1:5432 by default, ``GATEWAY_TEST_POSTGRES`` to change it); when it cannot be reached the
PostgreSQL half of the suite fails rather than being skipped.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, settings
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.cli import cli
from gateway.db.engine import create_engine, session_factory
from gateway.db.migrate import upgrade

# Property tests: a quick default for people, the thorough profile in CI (.ci/run sets
# HYPOTHESIS_PROFILE=ci). Neither has a deadline or the too-slow health check: both time the machine, and
# a test must not fail because the machine is busy (issue 14, item 8).
settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

POSTGRES_URL = os.environ.get(
    "GATEWAY_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
_counter = itertools.count()


def _pg_admin_dsn() -> str:
    url = make_url(POSTGRES_URL).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def _pg_url(database: str) -> str:
    return make_url(POSTGRES_URL).set(database=database).render_as_string(hide_password=False)


async def _pg_execute(*statements: str) -> None:
    connection = await asyncpg.connect(_pg_admin_dsn())
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "gateway.db"
    asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    name = f"gw_template_{os.getpid()}"
    try:
        asyncio.run(
            _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
        )
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is needed for the PostgreSQL half of the suite: {exc}")
    asyncio.run(_migrate(_pg_url(name)))
    yield name
    asyncio.run(_pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated, empty database of the parametrised kind, for this test only."""
    if request.param == "sqlite":
        path = tmp_path / "gateway.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    template = request.getfixturevalue("postgres_template")
    name = f"gw_test_{os.getpid()}_{next(_counter)}"
    asyncio.run(_pg_execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield _pg_url(name)
    asyncio.run(_pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database without any schema, for migration tests; SQLite and PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"gw_empty_{os.getpid()}_{next(_counter)}"
    try:
        asyncio.run(_pg_execute(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is needed for the PostgreSQL half of the suite: {exc}")
    yield _pg_url(name)
    asyncio.run(_pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


@pytest.fixture
def config_file(tmp_path: Path, database_url: str) -> Path:
    """A gateway configuration for this test, pointing at its own database and data directory."""
    path = tmp_path / "gateway.toml"
    path.write_text(f'[gateway]\ndata_dir = "data"\n\n[database]\nurl = "{database_url}"\n', encoding="utf-8")
    return path


class Gateway:
    """Runs ``gateway`` commands in-process against one configuration, as an admin would type them."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.runner = CliRunner()

    def __call__(self, *args: str, expect: int | None = 0) -> Result:
        result = self.runner.invoke(cli, ["--config", str(self.config), *args], catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, (
                f"gateway {' '.join(args)} exited {result.exit_code}, expected {expect}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result


@pytest.fixture
def gateway(config_file: Path) -> Gateway:
    return Gateway(config_file)


EXAMPLE_DIRECTORY = Path(__file__).parent.parent / "config" / "example" / "directory.yaml"


@pytest.fixture
def seeded(gateway: Gateway) -> Gateway:
    """The gateway with the seed's example directory (DESIGN.md §3) loaded through the CLI."""
    gateway("directory", "load", str(EXAMPLE_DIRECTORY))
    return gateway


from tests.dovecot_fixtures import dovecot  # noqa: E402, F401  (the private Dovecot for IMAP tests)
