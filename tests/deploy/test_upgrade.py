"""What a gateway does with a database at another schema revision than its own (docs/deploy.md,
Upgrading): an older one is migrated in order by `gateway db upgrade` and refused by `serve` until then;
a newer one (another node was upgraded first) is refused with what to do, and never "downgraded"."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.config import load_settings
from gateway.db.engine import create_engine
from gateway.db.migrate import head_revision, known_revisions, upgrade
from gateway.errors import DatabaseNotReady
from gateway.service import Service
from tests.conftest import Gateway

PREVIOUS = "0009_content_trace"
FUTURE = "0099_from_a_newer_gateway"


def configured(tmp_path: Path, database_url: str) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\ndata_dir = "data"\n[database]\nurl = "{database_url}"\n')
    Gateway(config)("secrets", "init")
    return config


async def set_revision(database_url: str, revision: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade(engine, PREVIOUS if revision == PREVIOUS else "head")
        if revision == FUTURE:
            async with engine.begin() as connection:
                await connection.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": FUTURE})
    finally:
        await engine.dispose()


async def start(config: Path) -> str:
    service = Service(load_settings(config, {}))
    try:
        with pytest.raises(DatabaseNotReady) as refused:
            await service.startup()
    finally:
        await service.shutdown(grace=1)
    return str(refused.value)


def test_the_migrations_are_one_line_in_order() -> None:
    assert PREVIOUS in known_revisions()
    assert head_revision() == max(known_revisions())


def test_an_older_database_is_refused_by_serve_then_migrated_in_order(
    tmp_path: Path, empty_database_url: str
) -> None:
    asyncio.run(set_revision(empty_database_url, PREVIOUS))
    config = configured(tmp_path, empty_database_url)
    gateway = Gateway(config)

    refusal = asyncio.run(start(config))
    assert refusal == (
        f"the database is at schema revision {PREVIOUS}, this gateway needs {head_revision()}; "
        "run `gateway db upgrade` first"
    )
    assert gateway("db", "status", expect=1).stdout.startswith(
        f"database is at {PREVIOUS}, this gateway needs"
    )
    assert gateway("db", "upgrade").stdout == f"database migrated from {PREVIOUS} to {head_revision()}\n"
    assert gateway("db", "status").stdout.startswith("database is up to date")


def test_a_database_a_newer_gateway_migrated_is_refused_and_left_alone(
    tmp_path: Path, empty_database_url: str
) -> None:
    asyncio.run(set_revision(empty_database_url, FUTURE))
    config = configured(tmp_path, empty_database_url)
    gateway = Gateway(config)
    why = (
        f"the database is at schema revision {FUTURE}, which this gateway (at most {head_revision()}) does "
        "not know: a newer gateway version migrated it; run that version on this node too "
        "(docs/deploy.md, Upgrading)"
    )
    assert asyncio.run(start(config)) == why
    assert gateway("db", "status", expect=1).stdout == why + "\n"
    result = gateway("db", "upgrade", expect=1)
    assert result.stderr == f"gateway: error: {why}\n"
    assert '"known": false' in gateway("db", "status", "--json").stdout

    async def revision() -> str:
        engine = create_engine(empty_database_url)
        try:
            async with engine.connect() as connection:
                return str(
                    (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar()
                )
        finally:
            await engine.dispose()

    assert asyncio.run(revision()) == FUTURE, "nothing was changed"
