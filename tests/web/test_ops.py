"""The console's quarantine, queues and rules pages over HTTP, on SQLite and PostgreSQL: the same
functions and events as ``gateway quarantine``, ``gateway queue`` and ``gateway rules``, actor
``web:<login>``; what a portfolio admin may and may not do; make-believe ids answer 404."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import html
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, select, update

from gateway.config import AdminHttpSettings, FanoutSettings, Settings
from gateway.db.engine import session_factory
from gateway.db.models import BackOfficeRow, CopyRow, MemberRow, MessageRow, RelayRow
from gateway.db.writer import Writer
from gateway.errors import MailboxError
from gateway.mailbox.memory import MemoryMailbox
from gateway.routing.files import load_rules
from gateway.stages.acceptance import Accepted
from gateway.stages.fanout import FanOut
from gateway.web.app import areas, create_app
from gateway.web.console import Console, Operations
from gateway.web.routes import Scope
from tests.seed import ADDRESS, SEEN_BY
from tests.stages.conftest import submit
from tests.web.conftest import (
    MUSTER,
    OPERATOR,
    OPERATOR_PASSWORD,
    OTHER,
    TEST_LIMITS,
    ZWEI,
    ZWEI_PASSWORD,
    Browser,
    ConsoleUnderTest,
)

RULES = """\
version: 1
rules:
  - name: foreign
    match: {subject: {regex: '^Rechnung'}}
    quarantine: "Rechnungen prüft die Buchhaltung"
"""
BROKEN = """\
version: 1
rules:
  - name: typo
    match: {subjekt: x}
    accept: true
"""
DISK_FULL = MailboxError(errno.ENOSPC, "No space left on device", "/srv/mail")
FAST = FanoutSettings(retry_base=0.01, retry_max=0.01, max_attempts=2, held_retry=3600.0, poll_interval=0.01)
EML = (
    b"From: ams@makler-muster.example\r\nTo: sb-b1@kunde-b.example\r\nSubject: Rechnung 17\r\n"
    b"Message-ID: <upload-1@ams>\r\n\r\nText\r\n"
)


@dataclass
class Ops:
    web: ConsoleUnderTest
    writer: Writer
    rules_dir: Path
    wakes: list[int] = field(default_factory=list)

    def browser(self, **settings: Any) -> Browser:
        """A browser on a console that has this writer, rules directory and wake, as gateway serve's."""
        operations = Operations(
            Settings(rules={"dir": self.rules_dir}), self.writer, None, lambda: self.wakes.append(1)
        )
        console = Console(
            AdminHttpSettings(**settings),
            session_factory(self.web.engine),
            TEST_LIMITS,
            node="test",
            operations=operations,
        )
        transport = httpx.ASGITransport(app=create_app(console), client=("127.0.0.1", 40000))
        return Browser(httpx.AsyncClient(transport=transport, base_url="http://console.test"), console)

    async def send(self, to: str, subject: str) -> Accepted:
        rules = load_rules(self.rules_dir).rule_set
        (accepted,) = await submit(self.writer, rules, (to, subject))
        return accepted


@pytest.fixture
async def ops(web: ConsoleUnderTest, database_url: str, tmp_path: Path) -> AsyncIterator[Ops]:
    password = tmp_path / "ams.password"
    password.write_text("backoffice-password\n", encoding="utf-8")
    await asyncio.to_thread(
        web.cli, "backoffice", "password", "ams", "-p", MUSTER, "--password-file", str(password)
    )
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "10-held.yaml").write_text(RULES, encoding="utf-8")
    writer = Writer(database_url)
    try:
        yield Ops(web, writer, rules_dir)
    finally:
        await writer.close()


async def logged_in(
    ops: Ops, login: str = OPERATOR, password: str = OPERATOR_PASSWORD, **settings: Any
) -> Browser:
    browser = ops.browser(**settings)
    assert (await browser.login(login, password)).status_code == 303
    return browser


def text_of(page: str) -> str:
    """A page's text without tags, as a person reads it."""
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def pre_of(page: str) -> str:
    """The dry run's lines as the page shows them in its result block."""
    found = re.search(r'<pre class="ops-text" aria-labelledby="result">(.*?)</pre>', page, re.S)
    assert found, page
    return html.unescape(found.group(1))


# --- quarantine ----------------------------------------------------------------------------------------


async def test_quarantine_lists_shows_and_releases_a_held_message(ops: Ops) -> None:
    held = await ops.send(ADDRESS["SB-B1"], "Rechnung 2026-11")
    assert held.quarantined
    browser = await logged_in(ops)
    base = f"/portfolios/{MUSTER}/quarantine"

    listed = await browser.client.get(base)
    assert listed.status_code == 200
    assert f'href="{base}/{held.gateway_id}"' in listed.text
    assert "Rechnungen prüft die Buchhaltung" in text_of(listed.text)

    shown = await browser.client.get(f"{base}/{held.gateway_id}")
    assert shown.status_code == 200
    page = text_of(shown.text)
    assert "Subject: Rechnung 2026-11" in page
    assert "foreign (" in page
    assert "10-held.yaml:3:5" in page  # the rule that held it, with its FILE:LINE:COL
    would = {ADDRESS[n] for n in SEEN_BY["SB-B1"]}
    assert {a for a in would if a in page} == would
    assert 'shared through release "Kunde B mit GF"' in page

    released = await browser.post(f"{base}/{held.gateway_id}/release", from_page=f"{base}/{held.gateway_id}")
    assert released.status_code == 303
    assert released.headers["location"] == f"{base}/{held.gateway_id}/released"
    assert ops.wakes == [1], "the fan-out was told at once"
    copies = await ops.web.sql(
        "SELECT m.address, c.state FROM copies c JOIN members m ON m.id = c.member_id "
        "JOIN messages g ON g.id = c.message_id WHERE g.gateway_id = :g",
        g=held.gateway_id,
    )
    assert sorted(copies) == sorted((a, "pending") for a in would)
    [event] = await ops.web.events("message.released")
    assert event["actor"] == f"web:{OPERATOR}"
    assert sorted(event["detail"]["audience"]) == sorted(would)

    result = await browser.client.get(released.headers["location"])
    assert result.status_code == 200
    assert f"{len(would)} Kopie(n)" in text_of(result.text)
    # Released is released: no second time, and the list is empty.
    again = await browser.post(f"{base}/{held.gateway_id}/release")
    assert again.status_code == 404
    assert "In der Quarantäne liegt nichts." in (await browser.client.get(base)).text


async def test_dropping_needs_a_confirmation_and_is_recorded(ops: Ops) -> None:
    held = await ops.send(ADDRESS["SB-A1"], "Rechnung 5")
    browser = await logged_in(ops)
    at = f"/portfolios/{MUSTER}/quarantine/{held.gateway_id}"
    unconfirmed = await browser.post(f"{at}/drop", from_page=at)
    assert unconfirmed.status_code == 400
    assert "Bitte bestätigen Sie das Verwerfen" in unconfirmed.text
    assert 'aria-invalid="true"' in unconfirmed.text, "the problem is marked at the checkbox"
    assert await ops.web.events("message.dropped") == []

    dropped = await browser.post(f"{at}/drop", {"confirm": "yes"}, from_page=at)
    assert dropped.status_code == 303
    notice = await browser.client.get(dropped.headers["location"])
    assert f"Die Nachricht {held.gateway_id} wurde verworfen." in notice.text
    assert await ops.web.sql("SELECT id FROM messages WHERE gateway_id = :g", g=held.gateway_id) == []
    [event] = await ops.web.events("message.dropped")
    assert event["actor"] == f"web:{OPERATOR}"
    assert (await browser.client.get(at)).status_code == 404


async def test_a_portfolio_admin_decides_on_their_own_quarantine_only(ops: Ops) -> None:
    held = await ops.send(ADDRESS["SB-B1"], "Rechnung 9")
    zwei = await logged_in(ops, ZWEI, ZWEI_PASSWORD)
    own = await zwei.client.get(f"/portfolios/{OTHER}/quarantine")
    assert own.status_code == 200
    assert "In der Quarantäne liegt nichts." in own.text
    assert (await zwei.client.get(f"/portfolios/{OTHER}")).text.count(f"/portfolios/{OTHER}/quarantine") == 1
    assert (await zwei.client.get(f"/portfolios/{MUSTER}/quarantine")).status_code == 404
    assert (await zwei.client.get(f"/portfolios/{MUSTER}/quarantine/{held.gateway_id}")).status_code == 404
    # makler-muster's message under their own portfolio's path is not theirs either.
    assert (await zwei.client.get(f"/portfolios/{OTHER}/quarantine/{held.gateway_id}")).status_code == 404
    for action in ("release", "drop"):
        for portfolio in (MUSTER, OTHER):
            refused = await zwei.post(
                f"/portfolios/{portfolio}/quarantine/{held.gateway_id}/{action}", {"confirm": "yes"}
            )
            assert refused.status_code == 404, (action, portfolio)
    assert await ops.web.sql("SELECT id FROM copies") == []
    assert await ops.web.events("message.released") == await ops.web.events("message.dropped") == []
    assert (await zwei.client.get("/queues")).status_code == 403
    assert (await zwei.client.get("/rules")).status_code == 403
    nav = (await zwei.client.get("/")).text
    assert 'href="/queues"' not in nav
    assert 'href="/rules"' not in nav


# --- the queues --------------------------------------------------------------------------------------------


async def _held_copies_and_a_failed_relay(ops: Ops) -> None:
    await ops.send(ADDRESS["SB-A1"], "Stau im Postfach")  # SB-A1 and SB-A2 get a copy
    mailbox = MemoryMailbox()
    fanout = FanOut(
        ops.writer, mailbox, FAST, node="n1", vorgang_header="X-Gateway-Vorgang", tag_subject=True
    )
    for _ in range(FAST.max_attempts):
        mailbox.fail_next(2, DISK_FULL)
        await ops.writer.run(
            lambda c: c.execute(update(CopyRow).values(next_attempt_at=dt.datetime(2000, 1, 1)))
        )
        await fanout.run_once()

    def relay_given_up(connection: Connection) -> None:
        now = dt.datetime.now(dt.UTC)
        office = connection.scalar(select(BackOfficeRow.id).where(BackOfficeRow.name == "ams"))
        member = connection.scalar(select(MemberRow.id).where(MemberRow.address == ADDRESS["SB-A1"]))
        message = connection.execute(select(MessageRow.id, MessageRow.portfolio_id)).first()
        assert message is not None
        connection.execute(
            RelayRow.__table__.insert().values(  # type: ignore[attr-defined]
                portfolio_id=message.portfolio_id, message_id=message.id, backoffice_id=office,
                member_id=member, envelope_sender=ADDRESS["SB-A1"], recipients=["ams@makler-muster.example"],
                relay_message_id="<r1@gw.example>", data=b"Subject: r1\r\n\r\nText\r\n", state="failed",
                attempts=7, last_error="451 4.3.0 back office busy", next_attempt_at=None,
                expires_at=now, created_at=now, updated_at=now,
            )
        )  # fmt: skip

    await ops.writer.run(relay_given_up)


async def test_the_queues_list_filter_show_retry_and_drop(ops: Ops) -> None:
    await _held_copies_and_a_failed_relay(ops)
    browser = await logged_in(ops)
    listed = await browser.client.get("/queues")
    assert listed.status_code == 200
    ids = re.findall(r'href="/queues/((?:copy|relay)-\d+)"', listed.text)
    copies = [i for i in ids if i.startswith("copy-")]
    [relay] = [i for i in ids if i.startswith("relay-")]
    assert len(copies) == 2
    assert "No space left on device" in listed.text
    assert "451 4.3.0 back office busy" in listed.text

    held = await browser.client.get("/queues", params={"state": "held"})
    assert re.findall(r'href="/queues/((?:copy|relay)-\d+)"', held.text) == copies
    relays = await browser.client.get("/queues", params={"kind": "relay", "member": ADDRESS["SB-A1"]})
    assert re.findall(r'href="/queues/((?:copy|relay)-\d+)"', relays.text) == [relay]
    bad = await browser.client.get("/queues", params={"kind": "postkarte"})
    assert bad.status_code == 400
    assert "Diese Art gibt es nicht." in bad.text

    shown = await browser.client.get(f"/queues/{copies[0]}")
    assert shown.status_code == 200
    assert "No space left on device" in shown.text
    assert ADDRESS["SB-A1"] in shown.text

    retried = await browser.post(f"/queues/{copies[0]}/retry", from_page=f"/queues/{copies[0]}")
    assert retried.status_code == 303
    assert "wird jetzt erneut versucht" in (await browser.client.get(retried.headers["location"])).text
    assert ops.wakes == [1]
    states = await ops.web.sql("SELECT id, state FROM copies ORDER BY id")
    assert [s for _, s in states] == ["pending", "held"]

    unconfirmed = await browser.post(f"/queues/{relay}/drop", from_page=f"/queues/{relay}")
    assert unconfirmed.status_code == 400
    assert "Bitte bestätigen Sie das Verwerfen" in unconfirmed.text
    dropped = await browser.post(f"/queues/{relay}/drop", {"confirm": "yes"})
    assert dropped.status_code == 303
    assert await ops.web.sql("SELECT state FROM relays") == [("dropped",)]
    events = [*await ops.web.events("queue.retried"), *await ops.web.events("queue.dropped")]
    assert [(e["actor"], e["detail"]["item"]) for e in events] == [
        (f"web:{OPERATOR}", copies[0]),
        (f"web:{OPERATOR}", relay),
    ]
    # Dropped is gone from the queues: its page is a 404, like any id no queue holds.
    assert (await browser.client.get(f"/queues/{relay}")).status_code == 404


async def test_made_up_values_in_every_ops_route_answer_404(ops: Ops) -> None:
    browser = await logged_in(ops)
    ours = [
        r
        for a in areas()
        if a.name in ("quarantine", "queues", "rules")
        for r in a.routes
        if "{" in r.path.replace("{portfolio}", "")
    ]
    assert len(ours) >= 6
    for route in ours:
        for made_up in ("x1", "copy-99999999", "gw-0000"):
            url = route.path.replace("{portfolio}", MUSTER)
            url = re.sub(r"\{\w+\}", made_up, url)
            for method in sorted(route.methods or ()):
                if method == "HEAD":
                    continue
                if method == "GET":
                    response = await browser.client.get(url)
                else:
                    response = await browser.post(url, {"confirm": "yes"})
                assert response.status_code == 404, f"{method} {url}: {response.status_code}"
    assert {r.scope for a in areas() if a.name in ("queues", "rules") for r in a.routes} == {Scope.OPERATOR}


# --- the rules -----------------------------------------------------------------------------------------


async def test_the_rules_page_shows_the_files_their_check_and_the_set_in_force(ops: Ops) -> None:
    browser = await logged_in(ops)
    page = await browser.client.get("/rules")
    assert page.status_code == 200
    shown = text_of(page.text)
    assert "Gültig: 1 Regel(n)" in shown
    assert f"foreign ({ops.rules_dir / '10-held.yaml'}:3:5)" in shown
    assert "Aus den Dateien geladen" in shown

    (ops.rules_dir / "20-broken.yaml").write_text(BROKEN, encoding="utf-8")
    broken = text_of((await browser.client.get("/rules")).text)
    assert f"{ops.rules_dir / '20-broken.yaml'}:4:13" in broken
    assert "unknown key 'subjekt' in match" in broken
    assert "1 Problem(e)" in broken
    # The same lines as `gateway rules check`.
    check = await asyncio.to_thread(
        ops.web.cli, "rules", "check", "--dir", str(ops.rules_dir), "--files-only", expect=2
    )
    assert check.stdout.strip() in broken


async def test_testing_an_uploaded_message_prints_what_gateway_rules_test_prints(
    ops: Ops, tmp_path: Path
) -> None:
    browser = await logged_in(ops)
    token = await browser.csrf("/rules")
    answer = await browser.client.post(
        "/rules/test",
        data={"csrf": token, "auth": "ams@makler-muster.example"},
        files={"message": ("rechnung.eml", EML, "message/rfc822")},
    )
    assert answer.status_code == 200, answer.text
    eml = tmp_path / "rechnung.eml"
    eml.write_bytes(EML)
    cli = await asyncio.to_thread(
        ops.web.cli,
        "rules",
        "test",
        str(eml),
        "--auth",
        "ams@makler-muster.example",
        "--dir",
        str(ops.rules_dir),
    )
    assert pre_of(answer.text) == cli.stdout.rstrip("\n")
    assert "verdict: quarantine (by foreign" in cli.stdout
    assert await ops.web.sql("SELECT id FROM messages") == [], "a dry run stores nothing"


async def test_testing_a_stored_message_by_its_id(ops: Ops) -> None:
    stored = await ops.send(ADDRESS["GF-B"], "Rechnung 12")
    browser = await logged_in(ops)
    answer = await browser.post("/rules/test", {"gateway_id": stored.gateway_id}, from_page="/rules")
    assert answer.status_code == 200
    lines = pre_of(answer.text)
    assert "portfolio makler-muster" in lines
    assert "verdict: quarantine" in lines
    unknown = await browser.post("/rules/test", {"gateway_id": "gw-ffff"}, from_page="/rules")
    assert unknown.status_code == 400
    assert "Eine Nachricht mit dieser Kennung gibt es nicht." in unknown.text
    nothing = await browser.post("/rules/test", {}, from_page="/rules")
    assert nothing.status_code == 400
    assert "Bitte laden Sie eine .eml-Datei hoch" in nothing.text
    no_portfolio = await browser.post("/rules/test", {"gateway_id": stored.gateway_id, "auth": "nobody"})
    assert no_portfolio.status_code == 400
    assert "Der Test lief nicht:" in no_portfolio.text


async def test_an_upload_over_the_limit_gets_a_clear_413_page(ops: Ops) -> None:
    browser = await logged_in(ops, max_upload_size=4096)
    token = await browser.csrf("/rules")
    big = EML + b"x" * 8192
    answer = await browser.client.post(
        "/rules/test", data={"csrf": token}, files={"message": ("big.eml", big, "message/rfc822")}
    )
    assert answer.status_code == 413
    assert "Die gesendeten Daten sind zu groß." in answer.text
