"""The schema watch (gateway.stages.schema_watch) on a real database, SQLite and PostgreSQL: a revision
this node does not know is warned about once per change, with both revisions, and sets the gauge; the
revision it knows again is said once at INFO and clears it. tests/e2e/test_schema_watch.py does the same
through a running `gateway serve`, /readyz and /metrics."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection

from gateway.db.revisions import shipped
from gateway.db.writer import Writer
from gateway.metrics import Metrics
from gateway.stages.schema_watch import SchemaWatch

NEWER = "0013_from_a_newer_node"


@pytest.fixture
async def writer(database_url: str) -> AsyncIterator[Writer]:
    w = Writer(database_url)
    try:
        yield w
    finally:
        await w.close()


def stamp(connection: Connection, revision: str) -> None:
    connection.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})


def gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("gateway_schema_newer_than_node")


async def test_a_newer_schema_is_said_once_per_change(
    writer: Writer, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    watch = SchemaWatch(writer, 30.0, metrics)
    caplog.set_level(logging.INFO, logger="gateway.stages.schema_watch")

    assert await watch.look() is None
    assert gauge(metrics) == 0
    assert caplog.records == []

    await writer.run(stamp, NEWER)
    for _ in range(3):
        assert await watch.look() == NEWER
    assert gauge(metrics) == 1
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING
    assert f"revision {NEWER}, newer than this node's {shipped().head}" in warning.getMessage()
    assert "upgrade this node" in warning.getMessage()

    await writer.run(stamp, shipped().head)
    for _ in range(2):
        assert await watch.look() is None
    assert gauge(metrics) == 0
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]
