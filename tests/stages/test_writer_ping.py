"""The writer pings PostgreSQL only before a transaction on a connection that has been idle (issue 17).

A ping before every transaction was one more round trip for each of them. A connection used within
``ping_after`` seconds goes without; one idle longer is pinged, and replaced if the server dropped it.
"""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from gateway.db.writer import Writer
from tests.conftest import POSTGRES_URL

pytestmark = pytest.mark.postgres


def backend(connection: Connection) -> int:
    return int(connection.scalar(text("SELECT pg_backend_pid()")) or 0)


def terminate(pid: int) -> None:
    """End the server process of one connection, as a server restart or an idle timeout would."""
    dsn = make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        # Wait until it is gone, so the writer's next use meets a closed connection.
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            admin.execute("SELECT pg_sleep(0.01)")


async def test_an_idle_connection_the_server_dropped_is_replaced_before_the_next_transaction() -> None:
    writer = Writer(POSTGRES_URL, ping_after=0.0)
    try:
        first = await writer.run(backend)
        terminate(first)
        second = await writer.run(backend)  # pinged, found dead, replaced: the transaction runs
        assert second != first
    finally:
        await writer.close()


async def test_a_connection_used_just_now_is_not_pinged() -> None:
    writer = Writer(POSTGRES_URL, ping_after=3600.0)
    try:
        first = await writer.run(backend)
        terminate(first)
        # No ping: the transaction meets the lost connection and fails as a lost connection does
        # (the acceptance stage answers 451 for it) ...
        with pytest.raises(DBAPIError) as failed:
            await writer.run(backend)
        assert failed.value.connection_invalidated
        # ... and the next one runs on a new connection.
        assert await writer.run(backend) != first
    finally:
        await writer.close()
