"""Creates the async engine and session factory for a database URL (SQLite with WAL, or PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 10_000


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """An engine for ``url``; SQLite gets WAL, enforced foreign keys and a busy timeout on every connection.

    SQLite enforces foreign keys only when asked per connection, and without a busy timeout a second
    writer (the CLI next to a running gateway) fails at once instead of waiting its turn.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # One connection per process: SQLite has one writer at a time anyway (every transaction here
        # begins IMMEDIATE), and waiting for the pool is an asyncio wait, where waiting for SQLite's
        # lock would be its busy handler sleeping in steps of up to 100 ms.
        engine = create_async_engine(url, echo=echo, pool_size=1, max_overflow=0, pool_timeout=120)
        event.listen(engine.sync_engine, "connect", sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", sqlite_on_begin)
        return engine
    # The hot path runs on the writer's own connection (gateway/db/writer.py); this engine serves the
    # startup checks and the admin commands, for which SQLAlchemy's default pool is plenty.
    return create_async_engine(url, echo=echo, pool_pre_ping=True)


def sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Used by the async (aiosqlite) and the sync (pysqlite) engine alike. Leave the driver's implicit
    # transaction handling out of the way so BEGIN is ours (SQLAlchemy docs, "Serializable isolation /
    # Savepoints / Transactional DDL" for pysqlite).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # FULL: a commit is on disk before the client hears 250, even across a power cut; group
        # commit in the acceptance stage makes that one fsync per batch, not per message.
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def sqlite_on_begin(connection: Any) -> None:
    # Writers take the lock at BEGIN, so two writers queue on busy_timeout instead of one of them
    # failing with "database is locked" when it upgrades a read lock halfway through.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
