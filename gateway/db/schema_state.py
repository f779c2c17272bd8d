"""Whether a database is at this gateway's schema: its revision in one statement, against the shipped ones.

Every start of ``gateway serve`` and every command asks this before it works. Alembic's migration
context and script directory answered it before, at the cost of importing Alembic (a tenth of a
``gateway serve`` start's CPU) and reading every migration file at each call; the shipped revisions are
read once from the files (``gateway.db.revisions``) and the stored one with one query. Alembic stays
the truth for migrating (``gateway.db.migrate``); tests/stages/test_migrations.py holds the two
answers side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.revisions import behind_code, newer_than_code, no_schema, shipped
from gateway.errors import DatabaseNotReady

VERSION_TABLE = "alembic_version"


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


def stored_revision(connection: Connection) -> str | None:
    """The database's schema revision, in one statement (the running service asks every half minute,
    gateway.stages.schema_watch); None when there is none."""
    return connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def current_revision(connection: Connection) -> str | None:
    """The database's schema revision; None when it has no version table (never migrated) or no row."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    return stored_revision(connection)


async def schema_state(engine: AsyncEngine) -> SchemaState:
    try:
        async with engine.connect() as connection:
            revision = await connection.run_sync(current_revision)
    except (SQLAlchemyError, OSError) as exc:
        raise DatabaseNotReady(f"cannot open the database {engine.url.render_as_string()}: {exc}") from exc
    schema = shipped()
    return SchemaState(current=revision, head=schema.head, known=revision is None or revision in schema.known)


async def require_current(engine: AsyncEngine) -> None:
    """Refuse to work on a database that is not at the code's schema, naming the command that fixes it."""
    state = await schema_state(engine)
    if state.current is None:
        raise DatabaseNotReady(no_schema(engine.url.render_as_string()))
    if not state.known:
        raise DatabaseNotReady(state.newer_than_code())
    if not state.up_to_date:
        raise DatabaseNotReady(behind_code(state.current, state.head))
