"""Migrations on SQLite and PostgreSQL, and the refusal to work on a database that is not migrated."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from gateway.db.engine import create_engine
from gateway.db.migrate import alembic_config, head_revision, schema_state, upgrade
from gateway.db.models import Base
from tests.conftest import Gateway


def _config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[gateway]\ndata_dir = "data"\n\n[database]\nurl = "{url}"\n', encoding="utf-8")
    return path


async def test_upgrade_creates_every_table_and_downgrade_removes_them(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    try:
        assert (await schema_state(engine)).current is None
        state = await upgrade(engine)
        assert state.up_to_date
        assert state.current == head_revision()

        def tables(connection: Connection) -> set[str]:
            return set(inspect(connection).get_table_names())

        async with engine.connect() as connection:
            assert set(Base.metadata.tables) <= await connection.run_sync(tables)

        def downgrade(connection: Connection) -> None:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "base")

        async with engine.begin() as connection:
            await connection.run_sync(downgrade)
        async with engine.connect() as connection:
            assert not set(Base.metadata.tables) & await connection.run_sync(tables)
        assert (await upgrade(engine)).up_to_date
    finally:
        await engine.dispose()


def test_models_and_migrations_agree(database_url: str) -> None:
    """A model changed without a migration would show up here as a difference."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    async def diff() -> list[object]:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(
                    lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
                )
        finally:
            await engine.dispose()

    assert asyncio.run(diff()) == []


def test_db_commands(tmp_path: Path, empty_database_url: str) -> None:
    gateway = Gateway(_config(tmp_path, empty_database_url))
    result = gateway("db", "status", expect=1)
    assert "run `gateway db upgrade`" in result.stdout
    result = gateway("portfolio", "list", expect=1)
    assert "has no gateway schema yet; run `gateway db upgrade` first" in result.stderr
    assert "migrated from empty to" in gateway("db", "upgrade").stdout
    assert "up to date" in gateway("db", "upgrade").stdout
    assert "up to date" in gateway("db", "status").stdout


def test_unreachable_database_is_a_failure_not_a_traceback(tmp_path: Path) -> None:
    gateway = Gateway(_config(tmp_path, "postgresql+asyncpg://nobody@127.0.0.1:1/none"))
    result = gateway("portfolio", "list", expect=1)
    assert "cannot open the database" in result.stderr
    assert "Traceback" not in result.stderr
