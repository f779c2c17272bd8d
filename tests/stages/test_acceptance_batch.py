"""One message the database refuses never fails the others of its group commit (DESIGN.md §8, issue 12).

The listeners refuse every value known to be too long for the records before a message is queued
(tests/e2e/test_senders_and_storage.py), so these tests hand the acceptance stage what the listeners
never let through: an envelope sender with a lone surrogate (neither driver can encode it) and, on
PostgreSQL, one longer than its column. In a batch with six good messages of another portfolio, only the
bad one is answered 451, and the six are stored.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import Connection, func, select

from gateway.db.accounts import find_account
from gateway.db.models import MessageRow
from gateway.db.writer import Writer
from gateway.domain.parsing import parse_message
from gateway.errors import NotStored
from gateway.stages.acceptance import Acceptance, Accepted, Submission
from tests.conftest import Gateway

ZWEI_LOGIN = "ams@makler-zwei.example"


@pytest.fixture
def with_zwei(with_login: Gateway, tmp_path: Path) -> Gateway:
    directory = tmp_path / "zwei.yaml"
    directory.write_text(
        "version: 1\nportfolios:\n  - name: makler-zwei\n    backoffices:\n"
        f"      - {{name: ams2, ams_version: 4.8.0.64470, addresses: [{ZWEI_LOGIN}]}}\n"
        "    members:\n      - {address: kunde@zwei.example, name: Zwei}\n",
        encoding="utf-8",
    )
    with_login("directory", "load", str(directory))
    password = tmp_path / "zwei.password"
    password.write_text("zwei-password-123\n", encoding="utf-8")
    with_login("backoffice", "password", "ams2", "-p", "makler-zwei", "--password-file", str(password))
    return with_login


async def submission(writer: Writer, login: str, sender: str, to: str, subject: str) -> Submission:
    account = await writer.run(find_account, login)
    assert account is not None
    raw = (
        f"From: {login}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@ams.example>\r\n\r\nText\r\n"
    ).encode()
    return Submission(account, sender, (to,), raw, parse_message(raw), "submission", "x")


def bad_senders(database_url: str) -> list[str]:
    senders = ["ams\udcff@makler-muster.example"]  # what no driver can encode
    if database_url.startswith("postgresql"):
        senders.append("a" * 400 + "@makler-muster.example")  # longer than its column
    return senders


async def test_a_message_the_database_refuses_fails_alone(
    with_zwei: Gateway, writer: Writer, database_url: str
) -> None:
    for n, bad_sender in enumerate(bad_senders(database_url)):
        good = [
            await submission(writer, ZWEI_LOGIN, ZWEI_LOGIN, "kunde@zwei.example", f"gut {n} {i}")
            for i in range(6)
        ]
        bad = await submission(
            writer, "ams@makler-muster.example", bad_sender, "sb-b1@kunde-b.example", f"schlecht {n}"
        )
        batch = [*good[:3], bad, *good[3:]]
        loop = asyncio.get_running_loop()
        waiting = [(s, loop.create_future()) for s in batch]
        await Acceptance(writer, hostname="gw.example")._store(waiting)

        outcomes = [f.exception() or f.result() for _, f in waiting]
        assert isinstance(outcomes[3], NotStored), outcomes[3]
        stored = [o for i, o in enumerate(outcomes) if i != 3]
        assert all(isinstance(o, Accepted) and not o.duplicate for o in stored), stored

        assert await writer.run(count_subjects, f"gut {n} %") == 6
        assert await writer.run(count_subjects, f"schlecht {n}") == 0


def count_subjects(connection: Connection, pattern: str) -> int:
    query = select(func.count()).select_from(MessageRow).where(MessageRow.subject.like(pattern))
    return int(connection.scalar(query) or 0)
