"""How a command reaches the database: sessions, one transaction, or the writer, on a migrated database.

Kept apart from ``root.py`` so that ``gateway --help``, ``--version`` and the commands that need no
database never import SQLAlchemy and the storage layer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

import click
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.cli.root import Context
from gateway.db.directory import RECONCILE_RUNS
from gateway.db.engine import create_engine, session_factory
from gateway.db.schema_state import require_current
from gateway.db.writer import Writer
from gateway.errors import StorageError

T = TypeVar("T")


@asynccontextmanager
async def database(ctx: Context) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on the configured, migrated database, for a command that needs more than one."""
    settings = ctx.settings
    engine = create_engine(settings.database_url, echo=settings.database.echo, database=settings.database)
    try:
        await require_current(engine)
        yield session_factory(engine)
    finally:
        await engine.dispose()


async def in_transaction(
    ctx: Context, work: Callable[[AsyncSession], Awaitable[T]], *, write: bool = True
) -> T:
    """Run ``work`` in one transaction on the configured, migrated database; commit only if it succeeds."""
    async with database(ctx) as sessions, sessions() as session:
        try:
            result = await work(session)
            if write:
                await session.commit()
                _tell_about_runs(session.info.get(RECONCILE_RUNS, []))
            return result
        except (DBAPIError, SQLAlchemyError) as exc:
            raise StorageError(f"the database refused the change: {exc}") from exc


async def on_writer(ctx: Context, work: Callable[[Connection], T]) -> T:
    """Run ``work`` in one transaction on the writer's Core connection, on the migrated database."""
    settings = ctx.settings
    engine = create_engine(settings.database_url, echo=settings.database.echo, database=settings.database)
    try:
        await require_current(engine)
    finally:
        await engine.dispose()
    writer = Writer(settings.database_url, echo=settings.database.echo, database=settings.database)
    try:
        return await writer.run(work)
    except (DBAPIError, SQLAlchemyError) as exc:
        raise StorageError(f"the database refused the work: {exc}") from exc
    finally:
        await writer.close()


def _tell_about_runs(runs: Sequence[tuple[str, int, bool]]) -> None:
    """Tell the admin that existing copies follow a directory change (DESIGN.md §3), and where to watch;
    on stderr, so that output for scripts (--json) stays what it is."""
    for portfolio, run_id, restarted in runs:
        what = "started over" if restarted else "recorded"
        click.echo(
            f"reconcile run {run_id} {what} for portfolio {portfolio}: existing copies follow the change "
            "(`gateway reconcile status` shows the progress)",
            err=True,
        )


async def require_migrated(ctx: Context) -> None:
    """Refuse to go on unless the configured database is migrated to the code's schema."""
    settings = ctx.settings
    engine = create_engine(settings.database_url, echo=settings.database.echo, database=settings.database)
    try:
        await require_current(engine)
    finally:
        await engine.dispose()
