"""The replay of a candidate rule set in chromium, on a real ``gateway serve``: mail submitted over SMTP
is stored under the live rules (``RULES`` of tests/browser/conftest.py); the operator edits the live file
in the rules page into a candidate that also holds inquiries, replays it, watches it run and reads the
difference: that message would be quarantined. The live rules stay in force."""

from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import RULES, Console, log_in, off_loop, screenshot
from tests.browser.test_ops import submit
from tests.seed import ADDRESS
from tests.web.conftest import OPERATOR, OPERATOR_PASSWORD

pytestmark = pytest.mark.browser


def test_an_edited_candidate_replays_over_the_stored_mail(page: Page, console: Console) -> None:
    gateway = console.gateway
    marker = f"Anfrage {uuid.uuid4().hex[:8]}"
    answer = submit(gateway, ADDRESS["SB-A1"], marker)
    assert "held for review" not in answer
    off_loop(gateway.settled)

    log_in(page, console, OPERATOR, OPERATOR_PASSWORD)
    page.get_by_role("link", name="Regeln").click()
    expect(page.get_by_role("heading", name="Kandidaten nachspielen")).to_be_visible()
    editor = page.locator("textarea[name=text]").first
    expect(editor).to_contain_text("invoices-to-accounting")
    editor.fill(RULES.replace("'^Rechnung'", "'^(Rechnung|Anfrage)'"))
    page.get_by_label("Zeitraum (30d, 12h, 2w oder ein Datum)").fill("1d")
    page.get_by_role("button", name="Nachspielen").click()

    expect(page.get_by_role("heading", name="Nachspielen des Kandidaten")).to_be_visible()
    expect(page.get_by_role("main")).to_contain_text("Der Kandidat ist nicht in Kraft")
    result = page.locator("pre[aria-labelledby=result]")
    expect(result).to_contain_text(f'"{marker}": accept -> quarantine', timeout=60_000)
    expect(result).to_contain_text("rule invoices-to-accounting (candidate/")
    screenshot(page, "rules_replay")

    # Not activated: the live rules still accept inquiries.
    assert "held for review" not in submit(gateway, ADDRESS["SB-A1"], f"Anfrage {uuid.uuid4().hex[:8]}")


def test_an_invalid_candidate_shows_its_problems_in_place(page: Page, console: Console) -> None:
    log_in(page, console, OPERATOR, OPERATOR_PASSWORD)
    page.get_by_role("link", name="Regeln").click()
    editor = page.locator("textarea[name=text]").first
    editor.fill(RULES.replace("quarantine:", "quarantaene:"))
    page.get_by_role("button", name="Nachspielen").click()
    problems = page.locator("#replay-problems")
    expect(problems).to_contain_text("Der Kandidat hat")
    expect(problems).to_contain_text("candidate/")
    expect(problems).to_contain_text(":5:5")
