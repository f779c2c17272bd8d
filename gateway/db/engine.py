"""Creates the async engine and session factory for a database URL (SQLite with WAL, or PostgreSQL).

Every engine is made with ``hide_parameters=True``: a failed statement's exception then names the
statement but not its values, which hold subjects, addresses and message bytes, so no log line or
error message built from it carries mail content. On PostgreSQL every connection bounds its waits
(``postgres_connect_args``), so that one stalled node cannot hold the others up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from gateway.config import DatabaseSettings

SQLITE_BUSY_TIMEOUT_MS = 10_000


def postgres_connect_args(url: str | URL, database: DatabaseSettings, *, serving: bool) -> dict[str, Any]:
    """The connection arguments that bound every wait of a PostgreSQL connection (issue 17).

    Session settings go to the server at connect (no extra round trip): ``lock_timeout`` ends a wait
    for a row another node holds, ``idle_in_transaction_session_timeout`` ends the transaction of a
    node that froze holding locks, and the server's TCP keepalives notice a node whose machine is
    gone. ``statement_timeout`` is for the serving work only (``serving``): a migration may take long.
    On psycopg libpq's keepalives notice a database server that is gone; asyncpg has no such option.
    """
    parsed = make_url(url)
    settings = {
        "lock_timeout": _ms(database.lock_timeout),
        "idle_in_transaction_session_timeout": _ms(database.idle_in_transaction_timeout),
        "tcp_keepalives_idle": str(database.keepalives_idle),
        "tcp_keepalives_interval": str(database.keepalives_interval),
        "tcp_keepalives_count": str(database.keepalives_count),
    }
    if serving:
        settings["statement_timeout"] = _ms(database.statement_timeout)
    if parsed.get_dialect().driver == "asyncpg":
        return {"server_settings": settings}
    # libpq's ``options``: kept from the URL when it names some, ours after them so ours win.
    given = parsed.query.get("options")
    options = " ".join([*([given] if isinstance(given, str) else given or ()), *_options(settings)])
    return {
        "options": options,
        "keepalives": 1,
        "keepalives_idle": database.keepalives_idle,
        "keepalives_interval": database.keepalives_interval,
        "keepalives_count": database.keepalives_count,
    }


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms" if seconds > 0 else "0"


def _options(settings: dict[str, str]) -> list[str]:
    return [f"-c {name}={value}" for name, value in settings.items()]


def create_engine(url: str, *, echo: bool = False, database: DatabaseSettings | None = None) -> AsyncEngine:
    """An engine for ``url``; SQLite gets WAL, enforced foreign keys and a busy timeout on every connection.

    SQLite enforces foreign keys only when asked per connection, and without a busy timeout a second
    writer (the CLI next to a running gateway) fails at once instead of waiting its turn. PostgreSQL
    connections bound their waits as ``database`` says (its defaults when None).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # One connection per process: SQLite has one writer at a time anyway (every transaction here
        # begins IMMEDIATE), and waiting for the pool is an asyncio wait, where waiting for SQLite's
        # lock would be its busy handler sleeping in steps of up to 100 ms.
        engine = create_async_engine(
            url, echo=echo, hide_parameters=True, pool_size=1, max_overflow=0, pool_timeout=120
        )
        event.listen(engine.sync_engine, "connect", sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", sqlite_on_begin)
        return engine
    # The hot path runs on the writer's own connection (gateway/db/writer.py); this engine serves the
    # startup checks and the admin commands, for which SQLAlchemy's default pool is plenty.
    connect_args = postgres_connect_args(parsed, database or DatabaseSettings(), serving=False)
    return create_async_engine(
        url, echo=echo, hide_parameters=True, pool_pre_ping=True, connect_args=connect_args
    )


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
