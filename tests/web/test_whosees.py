""" "Wer sieht was" over HTTP, on SQLite and PostgreSQL: the seed's table of DESIGN.md §3 through the
page, the very text `gateway who-can-see` prints for the same question, a stored message by its id, and
mistakes answered next to their field."""

from __future__ import annotations

import asyncio
import html
import re
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.seed import ADDRESS, SEEN_BY
from tests.web.conftest import (
    MUSTER,
    OPERATOR,
    OPERATOR_PASSWORD,
    OTHER,
    ZWEI,
    ZWEI_PASSWORD,
    Browser,
    ConsoleUnderTest,
)
from tests.web.views_mail import send_mail

PAGE = f"/portfolios/{MUSTER}/who-sees"
PRE = re.compile(r'<pre class="cli"[^>]*>(.*?)</pre>', re.S)
ROW = re.compile(r'<th scope="row">([^<]+)</th>')


def cli_text(page: str) -> str:
    found = PRE.search(page)
    assert found, page
    return html.unescape(found.group(1))


def audience_of(page: str) -> set[str]:
    table = page.split('<table class="audience">', 1)[1].split("</table>", 1)[0]
    return set(ROW.findall(table))


@pytest.fixture
async def operator(browser: Browser) -> Browser:
    assert (await browser.login(OPERATOR, OPERATOR_PASSWORD)).status_code == 303
    return browser


@pytest.mark.parametrize("person", ["SB-A1", "SB-B1", "GF-A", "GF-B"])
async def test_the_seeds_table_through_the_page_with_the_clis_text(
    web: ConsoleUnderTest, operator: Browser, person: str
) -> None:
    page = await operator.client.get(PAGE, params={"to": ADDRESS[person]})
    assert page.status_code == 200
    assert audience_of(page.text) == {ADDRESS[p] for p in SEEN_BY[person]}
    printed = await asyncio.to_thread(web.cli, "who-can-see", "-p", MUSTER, "--to", ADDRESS[person])
    assert cli_text(page.text) == printed.stdout
    assert "Teilnehmer (An)" in page.text


async def test_gf_b_sees_through_kunde_b_mit_gf_with_reasons(operator: Browser) -> None:
    page = await operator.client.get(PAGE, params={"to": ADDRESS["GF-B"]})
    text = html.unescape(page.text)
    assert "über die Freischaltung „Kunde B mit GF“, weil" in text
    assert "über die Freischaltung „Geschäftsführer“, weil" in text
    assert 'shared through release "Kunde B mit GF" because' in cli_text(page.text)


async def test_sender_and_several_recipients_give_the_clis_text(
    web: ConsoleUnderTest, operator: Browser
) -> None:
    query = {"from": ADDRESS["SB-A1"], "to": f"{ADDRESS['GF-A']}, {ADDRESS['SB-B2']}", "cc": ADDRESS["SB-A2"]}
    page = await operator.client.get(PAGE, params=query)
    assert page.status_code == 200
    expected = SEEN_BY["SB-A1"] | SEEN_BY["GF-A"] | SEEN_BY["SB-B2"]
    assert audience_of(page.text) == {ADDRESS[p] for p in expected}
    printed = await asyncio.to_thread(
        web.cli,
        "who-can-see",
        "-p",
        MUSTER,
        "--from",
        ADDRESS["SB-A1"],
        "--to",
        ADDRESS["GF-A"],
        "--to",
        ADDRESS["SB-B2"],
        "--cc",
        ADDRESS["SB-A2"],
    )
    assert cli_text(page.text) == printed.stdout
    # The form keeps what was asked.
    assert f'value="{html.escape(query["to"])}"' in page.text


async def test_a_stored_message_by_its_id(web: ConsoleUnderTest, operator: Browser, tmp_path: Path) -> None:
    mail = await send_mail(web, tmp_path)
    gateway_id = mail.claim_again.gateway_id
    page = await operator.client.get(PAGE, params={"message": gateway_id})
    assert page.status_code == 200
    assert audience_of(page.text) == {ADDRESS[p] for p in SEEN_BY["GF-B"]}
    printed = await asyncio.to_thread(web.cli, "who-can-see", gateway_id)
    assert cli_text(page.text) == printed.stdout
    assert printed.stdout.startswith(f"message {gateway_id} in portfolio {MUSTER} is seen by 4 member(s):")


async def test_a_portfolio_admin_asks_only_about_their_portfolio(
    web: ConsoleUnderTest, browser: Browser, tmp_path: Path
) -> None:
    mail = await send_mail(web, tmp_path)
    assert (await browser.login(ZWEI, ZWEI_PASSWORD)).status_code == 303
    assert (await browser.client.get(PAGE, params={"to": ADDRESS["GF-B"]})).status_code == 404
    # Another portfolio's message is answered as if it did not exist.
    own = await browser.client.get(f"/portfolios/{OTHER}/who-sees", params={"message": mail.claim.gateway_id})
    assert own.status_code == 400
    assert "gibt es in diesem Bestand nicht" in html.unescape(own.text)
    assert ADDRESS["SB-B1"] not in own.text
    # Nor does a member of another portfolio exist here.
    member = await browser.client.get(f"/portfolios/{OTHER}/who-sees", params={"to": ADDRESS["GF-B"]})
    assert member.status_code == 400
    assert f"{ADDRESS['GF-B']} ist kein Mitglied dieses Bestands." in member.text


@pytest.mark.parametrize(
    ("query", "field", "says"),
    [
        ({"to": "nobody@kunde-b.example"}, "to", "nobody@kunde-b.example ist kein Mitglied dieses Bestands."),
        ({"cc": "kein-at-zeichen"}, "cc", "„kein-at-zeichen“ ist keine gültige Adresse."),
        ({"from": f"{ADDRESS['SB-A1']} {ADDRESS['SB-A2']}"}, "from", "genau einen Absender"),
        ({"to": ADDRESS["GF-B"], "message": "gw-1"}, "message", "nicht beides"),
        ({"message": "gw-does-not-exist"}, "message", "Eine Nachricht gw-does-not-exist gibt es"),
        ({"to": " ".join(f"m{i}@x.example" for i in range(51))}, "to", "Höchstens 50 Adressen"),
    ],
    ids=["unknown-member", "invalid-address", "two-senders", "both", "unknown-message", "too-many"],
)
async def test_mistakes_are_answered_next_to_their_field(
    operator: Browser, query: dict[str, str], field: str, says: str
) -> None:
    page = await operator.client.get(f"{PAGE}?{urlencode(query)}")
    assert page.status_code == 400
    text = html.unescape(page.text)
    problem = re.search(rf'<p id="whosees-{field}-problem" class="problem" role="alert">([^<]*)</p>', text)
    assert problem, text
    assert says in problem.group(1)
    assert f'aria-errormessage="whosees-{field}-problem"' in text
    assert '<pre class="cli"' not in text
    assert "Traceback" not in text


async def test_the_empty_form_asks_and_the_portfolio_page_links_here(operator: Browser) -> None:
    page = await operator.client.get(PAGE)
    assert page.status_code == 200
    assert '<label for="whosees-to">An</label>' in page.text
    assert '<pre class="cli"' not in page.text
    portfolio = await operator.client.get(f"/portfolios/{MUSTER}")
    assert f'href="{PAGE}"' in portfolio.text
