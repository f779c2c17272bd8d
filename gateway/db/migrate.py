"""Schema migrations: brings a database to the code's schema and tells whether it is there.

Alembic runs on the async engine's connection (Alembic's cookbook, "Programmatic API use with asyncio"),
so migrations, ``gateway serve`` and the tests all use one way of connecting.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.revisions import behind_code, newer_than_code, no_schema
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


@dataclass(frozen=True, slots=True)
class SchemaState:
    current: str | None
    head: str
    known: bool = True
    """False when ``current`` is no revision of this gateway's: a newer gateway migrated the database."""

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    def newer_than_code(self) -> str:
        """Why this gateway cannot work on a database a newer one migrated, and what to do."""
        return newer_than_code(str(self.current), self.head)


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


async def schema_state(engine: AsyncEngine) -> SchemaState:
    def current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    try:
        async with engine.connect() as connection:
            revision = await connection.run_sync(current)
    except (SQLAlchemyError, OSError) as exc:
        raise DatabaseNotReady(f"cannot open the database {engine.url.render_as_string()}: {exc}") from exc
    return SchemaState(
        current=revision, head=head_revision(), known=revision is None or revision in known_revisions()
    )


def stored_revision(connection: Connection) -> str | None:
    """The database's schema revision, in one statement (the running service asks every half minute,
    gateway.stages.schema_watch); None when there is none."""
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


async def require_current(engine: AsyncEngine) -> None:
    """Refuse to work on a database that is not at the code's schema, naming the command that fixes it."""
    state = await schema_state(engine)
    if state.current is None:
        raise DatabaseNotReady(no_schema(engine.url.render_as_string()))
    if not state.known:
        raise DatabaseNotReady(state.newer_than_code())
    if not state.up_to_date:
        raise DatabaseNotReady(behind_code(state.current, state.head))
