"""The views in chromium: "Wer sieht was" for GF-B with its reasons, a Vorgang with its copies' states
after the running gateway wrote them, and the event log; each page's screenshot for docs/web.md."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Console, log_in, screenshot
from tests.e2e.clients import send_from_backoffice
from tests.seed import ADDRESS, SEEN_BY
from tests.web.conftest import MUSTER, OPERATOR, OPERATOR_PASSWORD

pytestmark = pytest.mark.browser


def logged_in(page: Page, console: Console) -> None:
    log_in(page, console, OPERATOR, OPERATOR_PASSWORD)
    expect(page.get_by_role("heading", name="Übersicht")).to_be_visible()


def send_and_wait(console: Console, subject: str) -> None:
    """Mail from the back office to GF-B, written into every mailbox of its audience. In a thread of
    its own: the gateway's CLI runs an event loop, and Playwright's runs in the test's thread."""
    gateway = console.gateway

    def run() -> None:
        send_from_backoffice(gateway, ADDRESS["GF-B"], subject, "<browser-views@ams>")
        gateway.wait_for_copies(subject, len(SEEN_BY["GF-B"]))

    with ThreadPoolExecutor(1) as pool:
        pool.submit(run).result()


def test_who_sees_a_message_to_gf_b(page: Page, console: Console) -> None:
    logged_in(page, console)
    page.goto(f"{console.url}/portfolios/{MUSTER}")
    page.get_by_role("link", name="Wer sieht was").click()
    page.get_by_label("An", exact=True).fill(ADDRESS["GF-B"])
    page.get_by_label("An", exact=True).press("Enter")
    answer = page.get_by_role("table").filter(has_text="Warum")
    expect(answer.get_by_role("row")).to_have_count(1 + len(SEEN_BY["GF-B"]))
    for person in SEEN_BY["GF-B"]:
        expect(answer.get_by_role("row").filter(has_text=ADDRESS[person])).to_have_count(1)
    expect(answer.get_by_role("row").filter(has_text=ADDRESS["GF-A"])).to_contain_text(
        "über die Freischaltung „Geschäftsführer“"
    )
    expect(answer.get_by_role("row").filter(has_text=ADDRESS["SB-B1"])).to_contain_text(
        "über die Freischaltung „Kunde B mit GF“"
    )
    expect(page.locator("pre.cli")).to_contain_text("is seen by 4 member(s)")
    screenshot(page, "who-sees")


def test_a_vorgang_with_its_copies_and_the_event_log(page: Page, console: Console) -> None:
    send_and_wait(console, "Schadenmeldung Kfz Browser")
    logged_in(page, console)
    page.goto(f"{console.url}/portfolios/{MUSTER}")
    page.get_by_role("link", name="Vorgänge").click()
    page.get_by_label("Aktenzeichen, Betreff oder Schlüssel enthält").fill("Browser")
    page.get_by_role("button", name="Anzeigen").click()
    page.get_by_role("link", name="VG-").first.click()
    expect(page.get_by_role("heading", name="Vorgang VG-")).to_be_visible()
    copies = page.get_by_role("table").filter(has_text="Gelesen")
    expect(copies.get_by_role("row")).to_have_count(1 + len(SEEN_BY["GF-B"]))
    for person in SEEN_BY["GF-B"]:
        expect(copies.get_by_role("row").filter(has_text=ADDRESS[person])).to_contain_text("zugestellt")
    expect(page.get_by_role("link", name="Rohdaten herunterladen")).to_be_visible()
    screenshot(page, "vorgang")
    page.get_by_role("link", name="Ereignisse dieses Vorgangs").click()
    expect(page.get_by_role("heading", name=f"Ereignisprotokoll des Bestands {MUSTER}")).to_be_visible()
    expect(page.get_by_role("row").filter(has_text="message.accepted")).to_have_count(1)
    page.get_by_role("link", name="Ereignisprotokoll").first.click()
    expect(page.get_by_role("heading", name="Ereignisprotokoll aller Bestände")).to_be_visible()
    page.get_by_label("Art").fill("message")
    page.get_by_role("button", name="Anzeigen").click()
    expect(page.get_by_role("row").filter(has_text="message.accepted").first).to_be_visible()
    screenshot(page, "events")
