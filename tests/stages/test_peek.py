"""`config check`'s look into the database without SQLAlchemy or Alembic (gateway.db.peek,
gateway.db.revisions) answers what the engine, Alembic and ``require_current`` answer, in the same
words, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.db.engine import create_engine, session_factory
from gateway.db.migrate import head_revision, known_revisions, upgrade
from gateway.db.peek import SENDER_AUTH_OFF, portfolios_without_sender_auth
from gateway.db.revisions import shipped
from gateway.db.schema_state import require_current
from gateway.db.senderauth import portfolios_without_sender_auth as by_engine
from gateway.domain.directory import SenderAuth
from gateway.errors import DatabaseNotReady
from tests.conftest import Gateway

PREVIOUS = "0009_content_trace"
FUTURE = "0099_from_a_newer_gateway"


def test_the_shipped_revisions_are_alembics() -> None:
    assert shipped().head == head_revision()
    assert shipped().known == known_revisions()
    assert SenderAuth.OFF.value == SENDER_AUTH_OFF


async def engine_answer(url: str) -> tuple[str | None, list[str] | None]:
    """(require_current's refusal, the portfolios with sender_auth off) as the engine reads them."""
    engine = create_engine(url)
    try:
        try:
            await require_current(engine)
        except DatabaseNotReady as exc:
            return str(exc), None
        async with session_factory(engine)() as session:
            return None, await by_engine(session)
    finally:
        await engine.dispose()


def peek_answer(url: str) -> tuple[str | None, list[str] | None]:
    try:
        return None, portfolios_without_sender_auth(url)
    except DatabaseNotReady as exc:
        return str(exc), None


def test_the_portfolios_without_sender_auth(seeded: Gateway, database_url: str) -> None:
    assert peek_answer(database_url) == (None, ["makler-muster"])
    assert peek_answer(database_url) == asyncio.run(engine_answer(database_url))
    seeded("portfolio", "set", "makler-muster", "--sender-auth", "verify")
    assert peek_answer(database_url) == (None, [])


async def at_revision(url: str, revision: str | None) -> None:
    engine = create_engine(url)
    try:
        if revision is not None:
            await upgrade(engine, PREVIOUS if revision == PREVIOUS else "head")
        if revision == FUTURE:
            async with engine.begin() as connection:
                await connection.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": FUTURE})
        if revision == "no row":
            async with engine.begin() as connection:
                await connection.execute(text("DELETE FROM alembic_version"))
    finally:
        await engine.dispose()


@pytest.mark.parametrize("revision", [None, "no row", PREVIOUS, FUTURE])
def test_a_database_at_another_schema_is_refused_in_the_same_words(
    empty_database_url: str, revision: str | None
) -> None:
    asyncio.run(at_revision(empty_database_url, revision))
    # The engine first: on SQLite it makes the empty file, which the peek never does (below).
    by_the_engine = asyncio.run(engine_answer(empty_database_url))
    refusal, _ = peek_answer(empty_database_url)
    assert refusal is not None
    assert (refusal, None) == by_the_engine


def test_a_missing_sqlite_file_is_not_made(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.db"
    refusal, _ = peek_answer(f"sqlite+aiosqlite:///{missing}")
    assert refusal is not None
    assert refusal.startswith(f"cannot open the database sqlite+aiosqlite:///{missing}")
    assert not missing.exists()


def test_an_unreachable_server_is_named_without_its_password() -> None:
    refusal, _ = peek_answer("postgresql+asyncpg://gw:s3cret@127.0.0.1:1/gateway?connect_timeout=2")
    assert refusal is not None
    assert refusal.startswith("cannot open the database postgresql+asyncpg://gw:***@127.0.0.1:1/gateway")
    assert "s3cret" not in refusal


def test_config_check_says_what_it_could_not_check(
    tmp_path: Path, empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\ndata_dir = "data"\n[database]\nurl = "{empty_database_url}"\n')
    monkeypatch.setenv("GATEWAY_LISTENERS__MX__HOST", "0.0.0.0")
    asyncio.run(at_revision(empty_database_url, PREVIOUS))
    result = Gateway(config)("config", "check")
    assert (
        f"# portfolios' sender_auth not checked (the database is at schema revision {PREVIOUS}, this "
        f"gateway needs {head_revision()}; run `gateway db upgrade` first); the MX listener binds to 0.0.0.0"
    ) in result.stderr
