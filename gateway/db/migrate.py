"""Schema migrations: brings a database to the code's schema (whether it is there: gateway.db.schema_state).

Alembic runs on the async engine's connection (Alembic's cookbook, "Programmatic API use with asyncio"),
so migrations, ``gateway serve`` and the tests all use one way of connecting.
"""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.schema_state import SchemaState, schema_state
from gateway.errors import DatabaseNotReady

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the package ships at least one migration"
    return head


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every revision this gateway ships; read once (the /readyz probe asks at every request)."""
    return frozenset(
        script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()
    )


async def upgrade(engine: AsyncEngine, revision: str = "head") -> SchemaState:
    """Migrate the database behind ``engine`` to ``revision`` in one transaction."""

    before = await schema_state(engine)
    if not before.known:
        # Alembic would fail with "Can't locate revision"; a downgrade is never done behind an admin's back.
        raise DatabaseNotReady(before.newer_than_code())

    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    try:
        async with engine.begin() as connection:
            await connection.run_sync(run)
    except SQLAlchemyError as exc:
        raise DatabaseNotReady(f"cannot migrate {engine.url.render_as_string()}: {exc}") from exc
    return await schema_state(engine)
