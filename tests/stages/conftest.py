"""Fixtures of the stage tests: a seeded database with a back-office login, and its writer thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.acceptance import Acceptance, HandOff, Submission
from gateway.db.accounts import find_account
from gateway.db.writer import Writer
from gateway.parsing import parse_message
from tests.conftest import Gateway

PORTFOLIO = "makler-muster"


@pytest.fixture
def with_login(seeded: Gateway, tmp_path: Path) -> Gateway:
    password = tmp_path / "pw"
    password.write_text("stage-test-password\n", encoding="utf-8")
    seeded("backoffice", "password", "ams", "-p", PORTFOLIO, "--password-file", str(password))
    return seeded


@pytest.fixture
async def writer(with_login: Gateway, database_url: str) -> AsyncIterator[Writer]:
    w = Writer(database_url)
    try:
        yield w
    finally:
        await w.close()


async def accept(
    writer: Writer, to: str, subject: str, message_id: str | None = None, handoff: HandOff | None = None
) -> str:
    account = await writer.run(find_account, "ams@makler-muster.example")
    assert account is not None
    mid = f"Message-ID: {message_id}\r\n" if message_id else ""
    raw = f"From: ams@makler-muster.example\r\nTo: {to}\r\nSubject: {subject}\r\n{mid}\r\nText\r\n".encode()
    acceptance = Acceptance(writer, hostname="gw.example", handoff=handoff)
    submission = Submission(
        account, "ams@makler-muster.example", (to,), raw, parse_message(raw), "submission", "x"
    )
    await acceptance._store([(submission, fut := _future())])
    return (await fut).gateway_id


def _future() -> object:
    return asyncio.get_running_loop().create_future()
