"""A release in chromium: "Vorgänge teilen" ticked on "Kunde B mit GF", its preview, the confirmation and
the run's live progress, then the back-filled copies in the members' Maildirs on disk; the
primary-release conflict shown next to the field."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Console, log_in, screenshot
from tests.e2e.clients import send_from_backoffice
from tests.web.conftest import MUSTER, OPERATOR, OPERATOR_PASSWORD

pytestmark = pytest.mark.browser

WITH_GF = "Kunde B mit GF"
GF_B = "gf-b@kunde-b.example"
GF_A = "gf-a@kunde-a.example"
SB_B1 = "sb-b1@kunde-b.example"
SB_B2 = "sb-b2@kunde-b.example"
RELEASE = f"/portfolios/{MUSTER}/releases/Kunde%20B%20mit%20GF"
T = TypeVar("T")


def outside(work: Callable[..., T], *args: object) -> T:
    """Run ``work`` in another thread: the CLI runs its own event loop, and Playwright's runs in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(work, *args).result()


def mail_files(root: Path, address: str) -> set[Path]:
    """Every message file in the member's Maildir, in every folder (``<root>/<portfolio>/<address>/``)."""
    return {p for p in root.glob(f"*/{address}/**/*") if p.is_file() and p.parent.name in ("cur", "new")}


def test_the_primary_conflict_is_shown_next_to_the_field(page: Page, console: Console) -> None:
    log_in(page, console, OPERATOR, OPERATOR_PASSWORD)
    expect(page.get_by_role("heading", name="Übersicht")).to_be_visible()
    page.goto(console.url + RELEASE)
    page.get_by_label("Hauptfreischaltung").check()
    page.get_by_role("button", name="Speichern").click()
    problem = page.locator("#primary-problem")
    expect(problem).to_contain_text(f"{GF_B} wäre zugleich in den Hauptfreischaltungen")
    expect(problem).to_contain_text("nur in einer Hauptfreischaltung")
    # The field points at its problem, and the form is kept as sent.
    expect(page.get_by_label("Hauptfreischaltung")).to_be_checked()
    expect(page.get_by_label("Hauptfreischaltung")).to_have_attribute("aria-invalid", "true")
    screenshot(page, "release-conflict")


def test_ticking_vorgaenge_teilen_previews_confirms_and_back_fills_the_maildirs(
    page: Page, console: Console
) -> None:
    gateway = console.gateway
    outside(gateway.cli, "release", "set", WITH_GF, "--no-share-vorgaenge", "-p", MUSTER)
    marker = "Teilen"  # no other browser test sends a subject with it
    send_from_backoffice(gateway, SB_B1, f"{marker} Schaden SB-B1", f"<{marker}.sb-b1@makler-muster.example>")
    send_from_backoffice(gateway, GF_B, f"{marker} Vertrag GF-B", f"<{marker}.gf-b@makler-muster.example>")
    delivered = outside(gateway.wait_for_copies, marker, 4)
    # Without "Kunde B mit GF": SB-B1's reaches the clerks of B, GF-B's the managing directors.
    assert {a: len(c) for a, c in delivered.items()} == {SB_B1: 1, SB_B2: 1, GF_B: 1, GF_A: 1}
    root = gateway.maildir_root
    before = {a: mail_files(root, a) for a in (GF_B, SB_B1, SB_B2)}

    log_in(page, console, OPERATOR, OPERATOR_PASSWORD)
    expect(page.get_by_role("heading", name="Übersicht")).to_be_visible()
    page.goto(console.url + RELEASE)
    sharing = page.get_by_label("Vorgänge teilen")
    expect(sharing).not_to_be_checked()
    screenshot(page, "release")
    sharing.check()
    page.get_by_role("button", name="Speichern").click()

    expect(page.get_by_role("heading", name="Vorschau der Änderung")).to_be_visible()
    # The preview is planned in the background; its page's script shows it when it is done.
    expect(page.get_by_role("button", name="Bestätigen und ändern")).to_be_visible(timeout=60_000)
    table = page.get_by_role("table")
    expect(table.get_by_role("row").filter(has_text=GF_B)).to_contain_text(f"{marker} Schaden SB-B1")
    expect(table.get_by_role("row").filter(has_text=SB_B2)).to_contain_text(f"{marker} Vertrag GF-B")
    screenshot(page, "release-preview")
    page.get_by_role("button", name="Bestätigen und ändern").click()

    expect(page.get_by_role("heading", name="Abgleich")).to_be_visible()
    # The page follows the run by itself (its script polls) until it is done.
    expect(page.get_by_role("status")).to_contain_text("Fertig", timeout=60_000)
    screenshot(page, "release-progress")

    copies = outside(gateway.wait_for_copies, marker, 7)
    # GF-B gains SB-B1's, the clerks of B gain GF-B's (DESIGN.md §3); GF-A gains nothing.
    assert {a: len(c) for a, c in copies.items()} == {SB_B1: 2, SB_B2: 2, GF_B: 2, GF_A: 1}
    for address in (GF_B, SB_B1, SB_B2):
        new = mail_files(root, address) - before[address]
        assert len(new) == 1, (address, new)  # the back-filled copy, a file that was not there before
    gf_b_new = (mail_files(root, GF_B) - before[GF_B]).pop().read_bytes()
    assert f"{marker} Schaden SB-B1".encode() in gf_b_new
