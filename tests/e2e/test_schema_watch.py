"""A running `gateway serve` notices when another node migrates the database past it (a rolling
upgrade, docs/deploy.md "Upgrading"): one warning naming both revisions and what to do, /readyz stays
200 with a warning line, /metrics' gateway_schema_newer_than_node turns 1, and mail still flows. Here
"another node" stamps a newer revision into alembic_version, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.db.engine import create_engine
from gateway.db.revisions import shipped
from tests.e2e.clients import SB_A1, login, message, wait_until
from tests.e2e.conftest import RunningGateway, prepare
from tests.e2e.test_operations import get, scrape, value

NEWER = "0013_from_a_newer_node"
WARNING = (
    f"the database's schema is at revision {NEWER}, newer than this node's {shipped().head}: another node "
    "migrated it; upgrade this node (docs/deploy.md, Upgrading)"
)


def stamp(database_url: str, revision: str) -> None:
    """What `gateway db upgrade` of a newer node leaves in the table Alembic keeps the revision in."""

    async def update() -> None:
        engine = create_engine(database_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
        finally:
            await engine.dispose()

    asyncio.run(update())


@pytest.fixture
def gateway(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningGateway]:
    # A look every 0.2 s instead of 30: the test waits for what the log, /readyz and /metrics say.
    monkeypatch.setenv("GATEWAY_DATABASE__SCHEMA_CHECK_INTERVAL", "0.2")
    gateway = prepare(tmp_path, database_url)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def warnings(gateway: RunningGateway) -> list[str]:
    return [line for line in gateway.log if WARNING in line]


def test_a_running_node_notices_a_newer_schema(gateway: RunningGateway) -> None:
    assert get(gateway, "/readyz") == (200, "ready\n")
    assert value(scrape(gateway), "gateway_schema_newer_than_node") == 0

    stamp(gateway.database_url, NEWER)
    assert wait_until(lambda: warnings(gateway)), "no warning:\n" + "".join(gateway.log)
    [line] = warnings(gateway)
    assert "WARNING" in line
    assert value(scrape(gateway), "gateway_schema_newer_than_node") == 1
    assert get(gateway, "/readyz") == (
        200,
        f"ready\nwarning: database: schema {NEWER} is newer than this node's {shipped().head} "
        "(another node migrated it): upgrade this node\n",
    )

    # It goes on working: the newer node's migrations only added.
    with login(gateway) as client:
        client.send_message(message(SB_A1, "During the rolling upgrade"))

    # (Not gateway.settled(): the CLI of this node's version refuses the newer schema, as it should.)
    def delivered() -> bool:
        subjects = [str(copy.message["Subject"]) for copy in gateway.mailboxes.read(SB_A1)]
        return any("During the rolling upgrade" in subject for subject in subjects)

    assert wait_until(delivered, timeout=30), "".join(gateway.log)

    # The newer node's release was rolled back (its backup restored): the node says so, once.
    stamp(gateway.database_url, shipped().head)
    assert wait_until(lambda: any("which this node knows" in line for line in gateway.log))
    assert value(scrape(gateway), "gateway_schema_newer_than_node") == 0
    assert get(gateway, "/readyz") == (200, "ready\n")
    assert len(warnings(gateway)) == 1, "one warning for one change"
