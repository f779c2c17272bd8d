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
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

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


class Writer:
    """One thread with one synchronous engine; ``await writer.run(work, ...)`` runs ``work(connection, ...)``
    in a transaction there and returns its result (or raises its exception).

    The work gets a Core ``Connection``, not an ORM session: the hot transactions are a handful of
    set-based statements, and the session's unit of work and ORM execution added a third to each.
    """

    def __init__(self, url: str, *, echo: bool = False, database: DatabaseSettings | None = None) -> None:
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
                pool_pre_ping=True,
                connect_args=postgres_connect_args(target, database or DatabaseSettings(), serving=True),
            )
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
