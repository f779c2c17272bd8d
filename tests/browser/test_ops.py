"""Quarantine, queues and rules in chromium, on a real ``gateway serve``: a rule in the gateway's rules
directory (``RULES`` in tests/browser/conftest.py) quarantines mail submitted over SMTP; an operator
releases it in the console and its copies arrive in the members' Maildirs on disk. Screenshots of the
three pages for docs/web.md."""

from __future__ import annotations

import re
import smtplib
import uuid
from email.message import EmailMessage

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Console, log_in, off_loop, screenshot
from tests.e2e.clients import BACKOFFICE
from tests.e2e.conftest import PASSWORD, RunningGateway
from tests.seed import ADDRESS, SEEN_BY
from tests.web.conftest import MUSTER, OPERATOR, OPERATOR_PASSWORD

pytestmark = pytest.mark.browser


def submit(gateway: RunningGateway, to: str, subject: str) -> str:
    """Send as the back office over SMTP; the gateway's answer to DATA."""
    message = EmailMessage()
    message["From"] = f"Makler Muster <{BACKOFFICE}>"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{uuid.uuid4().hex}@ams.example>"
    message.set_content("Anbei die Rechnung.\n")
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.login(BACKOFFICE, PASSWORD)
        client.mail(BACKOFFICE)
        client.rcpt(to)
        code, answer = client.data(message.as_bytes())
    assert code == 250, answer
    return answer.decode()


def test_a_released_message_reaches_the_members_maildirs(page: Page, console: Console) -> None:
    gateway = console.gateway
    marker = f"Rechnung {uuid.uuid4().hex[:8]}"
    answer = submit(gateway, ADDRESS["SB-B1"], marker)
    assert "held for review" in answer
    gateway_id = re.search(r"gw-[0-9a-f]+", answer)
    assert gateway_id is not None
    off_loop(gateway.settled)
    assert gateway.copies_of(marker) == {}, "nothing is delivered while it is held"

    log_in(page, console, OPERATOR, OPERATOR_PASSWORD)
    page.get_by_role("link", name=MUSTER).click()
    page.get_by_role("link", name="Quarantäne").click()
    expect(page.get_by_role("heading", name=f"Quarantäne von {MUSTER}")).to_be_visible()
    row = page.get_by_role("row").filter(has_text=marker)
    expect(row).to_contain_text("Rechnungen prüft die Buchhaltung")
    screenshot(page, "quarantine")
    row.get_by_role("link", name=gateway_id.group(0)).click()
    expect(page.get_by_role("heading", name="Wer eine Kopie bekäme")).to_be_visible()
    for person in SEEN_BY["SB-B1"]:
        expect(page.get_by_role("main")).to_contain_text(ADDRESS[person])
    screenshot(page, "quarantine-message")
    page.get_by_role("button", name="Freigeben und zustellen").click()
    expect(page.get_by_role("status")).to_contain_text("Die Nachricht ist freigegeben")

    expected = {ADDRESS[person] for person in SEEN_BY["SB-B1"]}
    copies = off_loop(lambda: gateway.wait_for_copies(marker, len(expected)))
    assert set(copies) == expected
    assert all(len(found) == 1 for found in copies.values())
    # On disk, in each member's Maildir, as the fan-out wrote them.
    for address in expected:
        files = list((gateway.maildir_root / MUSTER / address).glob("*/*"))
        assert any(marker in f.read_text("utf-8", "replace") for f in files if f.is_file()), address
    page.reload()
    expect(page.get_by_role("table")).to_contain_text("zugestellt")
    screenshot(page, "quarantine-released")


def test_the_queues_and_the_rules_pages(page: Page, console: Console) -> None:
    log_in(page, console, OPERATOR, OPERATOR_PASSWORD)
    page.get_by_role("link", name="Warteschlangen").click()
    expect(page.get_by_role("heading", name="Warteschlangen")).to_be_visible()
    page.get_by_label("Art").select_option("copy")
    page.get_by_label("Zustand").select_option("held")
    page.get_by_role("button", name="Filtern").click()
    assert "kind=copy" in page.url
    screenshot(page, "queues")

    page.get_by_role("link", name="Regeln").click()
    expect(page.get_by_role("heading", name="Routing-Regeln")).to_be_visible()
    expect(page.get_by_role("main")).to_contain_text("Das laufende Gateway routet nach Regelsatz")
    expect(page.get_by_role("main")).to_contain_text("invoices-to-accounting")
    message = console.gateway.config.parent / "probe.eml"
    message.write_bytes(
        b"From: ams@makler-muster.example\r\nTo: gf-b@kunde-b.example\r\nSubject: Rechnung 42\r\n\r\nText\r\n"
    )
    page.get_by_label("Nachricht (.eml)").set_input_files(str(message))
    page.get_by_label("Maklersystem (Login oder Name)").fill(BACKOFFICE)
    page.get_by_role("button", name="Testen").click()
    result = page.locator("pre[aria-labelledby=result]")
    expect(result).to_contain_text("verdict: quarantine (by invoices-to-accounting")
    expect(result).to_contain_text("gf-b@kunde-b.example")
    screenshot(page, "rules")
