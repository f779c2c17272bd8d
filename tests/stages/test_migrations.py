"""Migrations on SQLite and PostgreSQL, and the refusal to work on a database that is not migrated."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from gateway.db.engine import create_engine
from gateway.db.migrate import alembic_config, head_revision, upgrade
from gateway.db.models import Base
from gateway.db.schema_state import schema_state
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


async def test_the_schema_state_reads_what_alembic_reads(empty_database_url: str) -> None:
    """``schema_state`` reads the revision without Alembic (gateway.db.schema_state); Alembic's migration
    context and script directory say the same of a database never migrated, one at an older revision,
    one at the head, one downgraded to nothing (the version table empty) and one a newer gateway
    migrated."""
    from alembic.runtime.migration import MigrationContext

    from gateway.db.migrate import known_revisions

    engine = create_engine(empty_database_url)

    def alembics(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    def set_revision(connection: Connection, revision: str) -> None:
        connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})

    def to(revision: str) -> Callable[[Connection], None]:
        def run(connection: Connection) -> None:
            config = alembic_config()
            config.attributes["connection"] = connection
            if revision == "base":
                command.downgrade(config, revision)
            else:
                command.upgrade(config, revision)

        return run

    async def both() -> tuple[tuple[str | None, bool, str], tuple[str | None, bool, str]]:
        state = await schema_state(engine)
        async with engine.connect() as connection:
            current = await connection.run_sync(alembics)
        return (state.current, state.known, state.head), (
            current,
            current is None or current in known_revisions(),
            head_revision(),
        )

    try:
        seen = []
        for step in ("0003", "head", "base"):
            if not seen:
                mine, theirs = await both()
                assert mine == theirs
                seen.append(mine[0])
            async with engine.begin() as connection:
                await connection.run_sync(to(step))
            mine, theirs = await both()
            assert mine == theirs
            seen.append(mine[0])
        async with engine.begin() as connection:
            await connection.run_sync(to("head"))
            await connection.run_sync(set_revision, "0099_from_a_newer_gateway")
        mine, theirs = await both()
        assert mine == theirs
        seen.append(mine[0])
        assert seen == [None, "0003", head_revision(), None, "0099_from_a_newer_gateway"]
        assert mine[1] is False, "a newer gateway's revision is not known"
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


# Rows of the first schema, written as plain SQL so they do not depend on today's models.
_FIRST_ROWS = (
    "INSERT INTO portfolios (id, name, display_name, share_vorgaenge_available, created_at) "
    "VALUES (1, 'p', '', false, CURRENT_TIMESTAMP)",
    "INSERT INTO members (id, portfolio_id, address, display_name, created_at) "
    "VALUES (1, 1, 'm@x.example', '', CURRENT_TIMESTAMP)",
    "INSERT INTO vorgaenge (id, portfolio_id, reference, subject, created_at) "
    "VALUES (1, 1, 'VG-2026-000001', 's', CURRENT_TIMESTAMP)",
    "INSERT INTO messages (id, gateway_id, portfolio_id, vorgang_id, direction, raw, size, sha256, subject, "
    "envelope_sender, received_at) "
    "VALUES (1, 'gw-1', 1, 1, 'inbound', :raw, 1, 'h', 's', '', CURRENT_TIMESTAMP)",
    "INSERT INTO participants (message_id, member_id, role, portfolio_id) VALUES (1, 1, 'to', 1)",
    "INSERT INTO copies (id, copy_id, message_id, member_id, portfolio_id, state, attempts, seen, answered, "
    "created_at, updated_at) VALUES (1, 'c1', 1, 1, 1, 'delivered', 1, false, false, CURRENT_TIMESTAMP, "
    "CURRENT_TIMESTAMP)",
)


async def test_every_migration_keeps_the_rows_there_are(empty_database_url: str) -> None:
    """Up from the first schema and down again, no row is lost.

    On SQLite, Alembic rebuilds a table for some changes (an added column whose default is an SQL
    expression, a dropped column); the rebuild drops the old table, and ON DELETE CASCADE would then
    empty every table that refers to it. The migrations alter in place instead.
    """
    from sqlalchemy import text

    engine = create_engine(empty_database_url)

    def migrate(connection: Connection, action: str, revision: str) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)

    async def counts() -> list[int]:
        async with engine.connect() as connection:
            return [
                int(await connection.scalar(text(f"SELECT count(*) FROM {table}")) or 0)
                for table in ("messages", "participants", "copies")
            ]

    try:
        await upgrade(engine, "0001")
        async with engine.begin() as connection:
            for statement in _FIRST_ROWS:
                await connection.execute(text(statement), {"raw": b"x"})
        await upgrade(engine)
        assert await counts() == [1, 1, 1]
        async with engine.connect() as connection:
            row = (await connection.execute(text("SELECT kind, message_id_assigned FROM messages"))).one()
            assert (row[0], bool(row[1])) == ("message", False)
            assert not await connection.scalar(text("SELECT flags_pending FROM copies"))
        async with engine.begin() as connection:
            await connection.run_sync(migrate, "downgrade", "0001")
        assert await counts() == [1, 1, 1]
    finally:
        await engine.dispose()


async def test_0012_stores_each_vorgangs_last_message_from_its_messages(empty_database_url: str) -> None:
    """A Vorgang gets its newest message's time, not its oldest's; one without messages its opening."""
    from sqlalchemy import text

    engine = create_engine(empty_database_url)
    rows = (
        "INSERT INTO portfolios (id, name, display_name, share_vorgaenge_available, created_at) "
        "VALUES (1, 'p', '', false, '2026-01-01 08:00:00')",
        "INSERT INTO vorgaenge (id, portfolio_id, reference, subject, created_at) "
        "VALUES (1, 1, 'VG-2026-000001', 's', '2026-01-01 09:00:00')",
        "INSERT INTO vorgaenge (id, portfolio_id, reference, subject, created_at) "
        "VALUES (2, 1, 'VG-2026-000002', 'leer', '2026-01-02 09:00:00')",
        *(
            "INSERT INTO messages (id, gateway_id, portfolio_id, vorgang_id, direction, raw, size, sha256, "
            f"subject, envelope_sender, received_at) VALUES ({n}, 'gw-{n}', 1, 1, 'inbound', :raw, 1, "
            f"'h{n}', 's', '', '{at}')"
            for n, at in ((1, "2026-01-01 09:00:00"), (2, "2026-03-01 10:00:00"), (3, "2026-02-01 10:00:00"))
        ),
    )
    try:
        await upgrade(engine, "0011_console_indexes")
        async with engine.begin() as connection:
            for statement in rows:
                await connection.execute(text(statement), {"raw": b"x"})
        await upgrade(engine)
        async with engine.connect() as connection:
            newest = await connection.scalar(
                text(
                    "SELECT count(*) FROM vorgaenge JOIN messages ON messages.id = 2 "
                    "WHERE vorgaenge.id = 1 AND vorgaenge.last_message_at = messages.received_at"
                )
            )
            opened = await connection.scalar(
                text("SELECT count(*) FROM vorgaenge WHERE id = 2 AND last_message_at = created_at")
            )
        assert (newest, opened) == (1, 1)
    finally:
        await engine.dispose()
