"""Held replies in chromium, on a real ``gateway serve``: SB-B2 and SB-B1 answer one mail over SMTP, SB-B1's
reply is held by the collision guard, and an operator sends it from the console's "Zurückgehaltene
Antworten" page (docs/collisions.md)."""

from __future__ import annotations

import json
import uuid
from email.message import EmailMessage

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Console, log_in, off_loop, screenshot
from tests.browser.test_ops import submit
from tests.e2e.clients import copy_for, reply_address_of, send_reply
from tests.e2e.conftest import RunningGateway
from tests.seed import ADDRESS
from tests.web.conftest import MUSTER, OPERATOR, OPERATOR_PASSWORD

pytestmark = pytest.mark.browser


def answer(gateway: RunningGateway, person: str, copy: EmailMessage, text: str) -> str:
    message = EmailMessage()
    message["From"] = ADDRESS[person]
    message["To"] = reply_address_of(copy)
    message["Subject"] = f"Re: {copy['Subject']}"
    message["Message-ID"] = f"<{uuid.uuid4().hex}@kunde-b.example>"
    message["In-Reply-To"] = message["References"] = str(copy["Message-ID"])
    message.set_content(text)
    raw = message.as_bytes().replace(b"\n", b"\r\n")
    code, said = send_reply(gateway, raw, reply_address_of(copy), ADDRESS[person])
    assert code == 250, said
    return said.decode()


def crossed(gateway: RunningGateway, marker: str) -> None:
    submit(gateway, ADDRESS["SB-B1"], marker)
    b1, b2 = copy_for(gateway, "SB-B1", marker), copy_for(gateway, "SB-B2", marker)
    answer(gateway, "SB-B2", b2, "Übernommen.")
    assert "held" in answer(gateway, "SB-B1", b1, "Bitte die Rechnung.")


def test_an_operator_sends_a_held_reply(page: Page, console: Console) -> None:
    gateway = console.gateway
    marker = f"Schaden {uuid.uuid4().hex[:8]}"
    off_loop(crossed, gateway, marker)
    log_in(page, console, OPERATOR, OPERATOR_PASSWORD)
    page.get_by_role("link", name=MUSTER).click()
    page.get_by_role("link", name="Zurückgehaltene Antworten").click()
    expect(page.get_by_role("heading", name=f"Zurückgehaltene Antworten in {MUSTER}")).to_be_visible()
    row = page.get_by_role("row").filter(has_text=marker)
    expect(row).to_contain_text(ADDRESS["SB-B1"])
    expect(row).to_contain_text(f"mit der Antwort von {ADDRESS['SB-B2']}")
    screenshot(page, "held")
    row.get_by_role("button", name="Senden").click()
    expect(page.get_by_role("status")).to_contain_text("freigegeben, sie geht an das Maklersystem")
    expect(page.get_by_role("row").filter(has_text=marker)).to_have_count(0)
    listed = json.loads(off_loop(gateway.cli, "held", "list", "--all", "--json").stdout)
    (held,) = [h for h in listed if marker in h["subject"]]
    assert held["state"] == "released"
    assert held["decided_by"] == f"web:{OPERATOR}"
