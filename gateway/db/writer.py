"""The writer thread: runs the hot transactions (accepting mail, the copy queue) as plain synchronous code.

An async transaction of a dozen statements awaits a dozen times, and on a busy event loop every await
waits for whatever else is ready (SMTP sessions, mailbox writes) before it resumes: a batch that takes
12 ms alone took 40-60 ms under load. Here a whole transaction is one hop to a thread that owns a
synchronous engine; the database drivers release the GIL while they wait, so the loop keeps serving
SMTP sessions meanwhile. One thread also means one SQLite writer per process, queued in order, instead
of several connections sleeping in SQLite's busy handler.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from gateway.config import DatabaseSettings
from gateway.db.engine import postgres_connect_args, sqlite_on_begin, sqlite_on_connect

T = TypeVar("T")
P = ParamSpec("P")

# The synchronous driver for each asynchronous one the configuration may name.
SYNC_DRIVERS = {"sqlite+aiosqlite": "sqlite+pysqlite", "postgresql+asyncpg": "postgresql+psycopg"}


def sync_url(url: str) -> str:
    parsed = make_url(url)
    driver = SYNC_DRIVERS.get(parsed.drivername, parsed.drivername)
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


# A connection idle this long (seconds) is pinged before its next transaction.
PING_AFTER = 1.0


def ping_when_idle(engine: Engine, idle: float) -> None:
    """Ping the server before a transaction only when the connection has been idle ``idle`` seconds.

    SQLAlchemy's ``pool_pre_ping`` pings before every transaction: on PostgreSQL one more round trip for
    each of the writer's transactions, which follow each other within milliseconds under load. A
    connection that was just used is alive as far as a ping could tell; one that has waited (a server
    restart, a dropped TCP connection, an idle timeout) is pinged, and replaced if the ping fails
    (SQLAlchemy's pessimistic disconnect handling). If the server goes away within ``idle`` of the last
    transaction, the next one fails like any transaction that meets a lost connection: SQLAlchemy
    invalidates the connection, the callers answer as they do for a database fault (451 for mail), and
    the transaction after it runs on a new connection.
    """

    @event.listens_for(engine, "connect")
    def connected(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["used"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def checked_in(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["used"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def checked_out(
        dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
    ) -> None:
        if time.monotonic() - record.info.get("used", 0.0) < idle:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool drops this connection and checks out a new one (up to three times).
            raise DisconnectionError(f"the idle database connection is gone: {exc}") from exc


def keep_idle_timeout_armed(engine: Engine) -> None:
    """Follow every ``executemany`` on PostgreSQL with a statement of its own, so that the server's
    ``idle_in_transaction_session_timeout`` holds for what comes after it.

    psycopg sends an ``executemany`` as a pipeline that it ends with a Sync and then a Flush. The server
    arms that timeout when it answers a Sync, and disarms it when the next message arrives: the Flush,
    which does not arm it again. A node frozen (SIGSTOP) between such a statement and its commit then
    kept the rows it had locked for as long as it stayed frozen, hidden from the other nodes' queue
    claims (``SKIP LOCKED``), where the timeout is meant to free them within seconds (issue 17). One more
    round trip per ``executemany``; a batch's transaction has a few.
    """

    @event.listens_for(engine, "after_cursor_execute")
    def rearm(
        _connection: Connection,
        cursor: Any,
        _statement: str,
        _parameters: Any,
        _context: Any,
        executemany: bool,
    ) -> None:
        if executemany:
            cursor.connection.execute("SELECT 1")


class Writer:
    """One thread with one synchronous engine; ``await writer.run(work, ...)`` runs ``work(connection, ...)``
    in a transaction there and returns its result (or raises its exception).

    The work gets a Core ``Connection``, not an ORM session: the hot transactions are a handful of
    set-based statements, and the session's unit of work and ORM execution added a third to each.
    """

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        database: DatabaseSettings | None = None,
        ping_after: float = PING_AFTER,
    ) -> None:
        target = sync_url(url)
        if make_url(target).get_backend_name() == "sqlite":
            self.engine: Engine = create_engine(
                target, echo=echo, hide_parameters=True, pool_size=1, max_overflow=0
            )
            event.listen(self.engine, "connect", sqlite_on_connect)
            event.listen(self.engine, "begin", sqlite_on_begin)
        else:
            # Two connections: the transaction's, and the one on which the Vorgang numbers are taken
            # in short transactions of their own (gateway.db.acceptance.take_numbers), so that no
            # acceptance transaction holds the counter while it lasts.
            self.engine = create_engine(
                target,
                echo=echo,
                hide_parameters=True,
                pool_size=2,
                max_overflow=0,
                connect_args=postgres_connect_args(target, database or DatabaseSettings(), serving=True),
            )
            ping_when_idle(self.engine, ping_after)
            keep_idle_timeout_armed(self.engine)
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-writer")

    async def run(
        self, work: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``work(connection, *args, **kwargs)`` in one transaction on the writer thread; its result."""

        def transaction() -> T:
            with self.engine.begin() as connection:
                return work(connection, *args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(self._thread, transaction)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self.engine.dispose)
        self._thread.shutdown(wait=True)
