"""Fixtures of the stage tests: a seeded database with a back-office login, its writer thread, and mail
accepted the way ingress accepts it (routed by rules, or not)."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.db.accounts import find_account
from gateway.db.writer import Writer
from gateway.domain.parsing import parse_message
from gateway.domain.rules import RuleSet
from gateway.routing.files import load_rules
from gateway.routing.live import decide
from gateway.stages.acceptance import Acceptance, Accepted, HandOff, Submission
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


def rules_in(tmp_path: Path, text: str) -> RuleSet:
    """The rule set of one rules file with ``text`` in a fresh rules directory under ``tmp_path``."""
    directory = tmp_path / "rules"
    directory.mkdir(exist_ok=True)
    (directory / "10-test.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    return load_rules(directory).rule_set


async def submit(
    writer: Writer,
    rules: RuleSet,
    *mails: tuple[str, str],
    sender: str = "ams@makler-muster.example",
    headers: str = "",
) -> list[Accepted]:
    """Accept (recipient, subject) mails in one batch, each routed by ``rules`` as ingress does."""
    return await submit_raw(
        writer,
        rules,
        *(
            (
                (to,),
                f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
                f"Message-ID: <{subject.replace(' ', '.')}-{n}@ams>\r\n{headers}\r\nText\r\n".encode(),
            )
            for n, (to, subject) in enumerate(mails)
        ),
        sender=sender,
    )


async def submit_raw(
    writer: Writer,
    rules: RuleSet,
    *mails: tuple[tuple[str, ...], bytes],
    sender: str = "ams@makler-muster.example",
) -> list[Accepted]:
    """Accept (recipients, raw message) mails in one batch, each decided by ``rules`` as ingress decides
    and planned as acceptance plans every batch (``gateway.domain.routing_plan``)."""
    account = await writer.run(find_account, "ams@makler-muster.example")
    assert account is not None
    waiting = []
    for recipients, raw in mails:
        parsed = parse_message(raw)
        decision = decide(
            rules,
            backoffice=account.backoffice,
            envelope_sender=sender,
            recipients=recipients,
            raw=raw,
            parsed=parsed,
            listener="submission",
        )
        submission = Submission(
            account, sender, recipients, raw, parsed, "submission", "x", decision=decision
        )
        waiting.append((submission, asyncio.get_running_loop().create_future()))
    await Acceptance(writer, hostname="gw.example")._store(waiting)
    return [await future for _, future in waiting]
