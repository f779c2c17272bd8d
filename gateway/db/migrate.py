"""Schema migrations: brings a database to the code's schema and tells whether it is there.

Alembic runs on the async engine's connection (Alembic's cookbook, "Programmatic API use with asyncio"),
so migrations, ``gateway serve`` and the tests all use one way of connecting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

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


@dataclass(frozen=True, slots=True)
class SchemaState:
    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


async def upgrade(engine: AsyncEngine, revision: str = "head") -> SchemaState:
    """Migrate the database behind ``engine`` to ``revision`` in one transaction."""

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


async def schema_state(engine: AsyncEngine) -> SchemaState:
    def current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    try:
        async with engine.connect() as connection:
            revision = await connection.run_sync(current)
    except (SQLAlchemyError, OSError) as exc:
        raise DatabaseNotReady(f"cannot open the database {engine.url.render_as_string()}: {exc}") from exc
    return SchemaState(current=revision, head=head_revision())


async def require_current(engine: AsyncEngine) -> None:
    """Refuse to work on a database that is not at the code's schema, naming the command that fixes it."""
    state = await schema_state(engine)
    if state.current is None:
        raise DatabaseNotReady(
            f"the database {engine.url.render_as_string()} has no gateway schema yet; "
            "run `gateway db upgrade` first"
        )
    if not state.up_to_date:
        raise DatabaseNotReady(
            f"the database is at schema revision {state.current}, this gateway needs {state.head}; "
            "run `gateway db upgrade` first"
        )
