"""The console in chromium: logging in, the portfolios an account sees, a portfolio's releases, logout."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Console, log_in, screenshot
from tests.web.conftest import MUSTER, OPERATOR, OPERATOR_PASSWORD, OTHER, ZWEI, ZWEI_PASSWORD

pytestmark = pytest.mark.browser


def test_an_operator_sees_the_portfolios_and_the_release_kunde_b_mit_gf(page: Page, console: Console) -> None:
    page.goto(console.url + "/login")
    screenshot(page, "login")
    log_in(page, console, OPERATOR, OPERATOR_PASSWORD)
    expect(page.get_by_role("heading", name="Übersicht")).to_be_visible()
    expect(page.get_by_role("link", name=MUSTER)).to_be_visible()
    expect(page.get_by_role("link", name=OTHER)).to_be_visible()
    screenshot(page, "overview")
    page.get_by_role("link", name=MUSTER).click()
    expect(page.get_by_role("heading", name=f"Bestand {MUSTER}")).to_be_visible()
    releases = page.get_by_role("table").filter(has_text="Hauptfreischaltung")
    row = releases.get_by_role("row").filter(has_text="Kunde B mit GF")
    expect(row).to_contain_text("sb-b1@kunde-b.example")
    expect(row.get_by_role("link", name="Kunde B mit GF")).to_have_attribute(
        "href", f"/portfolios/{MUSTER}/releases/Kunde%20B%20mit%20GF"
    )
    screenshot(page, "portfolio")
    page.get_by_role("button", name="Abmelden").click()
    expect(page.get_by_text("Sie sind abgemeldet.")).to_be_visible()
    page.goto(console.url + f"/portfolios/{MUSTER}")
    expect(page.get_by_role("heading", name="Anmelden")).to_be_visible()


def test_a_portfolio_admin_cannot_reach_another_portfolio(page: Page, console: Console) -> None:
    log_in(page, console, ZWEI, ZWEI_PASSWORD)
    expect(page.get_by_role("link", name=OTHER)).to_be_visible()
    expect(page.get_by_role("link", name=MUSTER)).to_have_count(0)
    response = page.goto(console.url + f"/portfolios/{MUSTER}")
    assert response is not None
    assert response.status == 404
    expect(page.get_by_role("alert")).to_contain_text("Diese Seite gibt es nicht")
    screenshot(page, "not-found")
    page.get_by_role("button", name="Abmelden").click()
    expect(page.get_by_role("heading", name="Anmelden")).to_be_visible()


def test_english_on_request_and_a_visible_focus(page: Page, console: Console) -> None:
    page.goto(console.url + "/login")
    page.get_by_label("Sprache").select_option("en")
    page.get_by_role("button", name="Wechseln").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    log_in_field = page.get_by_label("Login")
    log_in_field.focus()
    outline = log_in_field.evaluate("e => getComputedStyle(e).outlineStyle")
    assert outline != "none"
