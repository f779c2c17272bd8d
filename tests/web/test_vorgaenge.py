"""The Vorgänge pages over HTTP, on SQLite and PostgreSQL: the list with its search, filters and pages;
a Vorgang with its messages, each member's copy and flags, the relay of a reply; the raw message for
operators only; and what a portfolio admin reaches."""

from __future__ import annotations

import asyncio
import html
import re
from pathlib import Path

import pytest

from gateway.web import vorgaenge
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
from tests.web.views_mail import Mail, send_mail

LIST = f"/portfolios/{MUSTER}/vorgaenge"
LISTED = re.compile(rf'<th scope="row"><a href="{LIST}/([^"]+)">')


@pytest.fixture
async def mail(web: ConsoleUnderTest, tmp_path: Path) -> Mail:
    return await send_mail(web, tmp_path)


@pytest.fixture
async def operator(browser: Browser) -> Browser:
    assert (await browser.login(OPERATOR, OPERATOR_PASSWORD)).status_code == 303
    return browser


async def listed(client: Browser, **query: str) -> list[str]:
    page = await client.client.get(LIST, params=query)
    assert page.status_code == 200, page.text
    return LISTED.findall(page.text)


async def test_the_list_shows_every_vorgang_most_recently_active_first(operator: Browser, mail: Mail) -> None:
    page = await operator.client.get(LIST)
    assert page.status_code == 200
    assert LISTED.findall(page.text) == [
        mail.policy_vorgang,
        mail.held.vorgang,
        mail.police.vorgang,
        mail.claim.vorgang,
    ]
    assert mail.claim_again.vorgang == mail.claim.vorgang, "the claim number keyed one Vorgang"
    text = html.unescape(page.text)
    assert "Schadennummer 2026-4711 Kfz" in text
    assert "[claim-2026-4711]" in text
    assert "1 (1 in Quarantäne)" in text
    claim_copies = len(SEEN_BY["SB-B1"]) + len(SEEN_BY["GF-B"])
    assert f"{claim_copies} zugestellt" in text


async def test_search_member_back_office_state_and_time(
    web: ConsoleUnderTest, operator: Browser, mail: Mail
) -> None:
    assert await listed(operator, q="4711") == [mail.claim.vorgang]
    assert await listed(operator, q="CLAIM-2026") == [mail.claim.vorgang]
    assert await listed(operator, q=mail.police.vorgang.lower()) == [mail.police.vorgang]
    assert await listed(operator, q="%") == []
    # GF-A sees GF-B's mail about the claim, nothing of customer A's clerks or of B's clerks alone.
    assert await listed(operator, member=ADDRESS["GF-A"]) == [mail.claim.vorgang]
    assert await listed(operator, member=ADDRESS["SB-A2"]) == [mail.police.vorgang]
    assert set(await listed(operator, member=ADDRESS["SB-B2"])) == {
        mail.policy_vorgang,
        mail.held.vorgang,
        mail.claim.vorgang,
    }
    assert await listed(operator, state="quarantined") == [mail.held.vorgang]
    assert await listed(operator, state="pending") == [mail.policy_vorgang]
    assert await listed(operator, state="delivered") == [mail.police.vorgang, mail.claim.vorgang]
    assert await listed(operator, state="failed") == []
    assert len(await listed(operator, backoffice="ams")) == 4
    await asyncio.to_thread(web.cli, "backoffice", "add", "bipro", "-p", MUSTER)
    assert await listed(operator, backoffice="bipro") == []
    assert len(await listed(operator, since="1h")) == 4
    assert await listed(operator, until="2000-01-01") == []
    assert await listed(operator, q="4711", since="2000-01-01", state="delivered") == [mail.claim.vorgang]


@pytest.mark.parametrize(
    ("query", "field", "says"),
    [
        ({"member": "nobody@kunde-b.example"}, "member", "nobody@kunde-b.example ist kein Mitglied"),
        ({"member": "kaputt"}, "member", "kaputt ist kein Mitglied"),
        ({"backoffice": "gibtsnicht"}, "backoffice", "Ein Maklersystem „gibtsnicht“ gibt es"),
        ({"state": "verloren"}, "state", "Diesen Zustand gibt es nicht."),
        ({"since": "gestern"}, "since", "„gestern“ ist keine Zeit"),
        ({"until": "99999999999999999999d"}, "until", "ist keine Zeit"),
    ],
)
async def test_a_filter_that_names_nothing_is_answered_next_to_it(
    operator: Browser, mail: Mail, query: dict[str, str], field: str, says: str
) -> None:
    page = await operator.client.get(LIST, params=query)
    assert page.status_code == 400
    text = html.unescape(page.text)
    problem = re.search(rf'<p id="vorgaenge-{field}-problem" class="problem" role="alert">([^<]*)</p>', text)
    assert problem, text
    assert says in problem.group(1)
    assert LISTED.findall(page.text) == []
    value = next(iter(query.values()))
    if field != "backoffice" and field != "state":
        assert f'value="{value}"' in text, "the form keeps what was typed"


async def test_pages_of_the_list(operator: Browser, mail: Mail, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vorgaenge, "PAGE_SIZE", 3)
    first = await operator.client.get(LIST, params={"since": "1h"})
    assert LISTED.findall(first.text) == [mail.policy_vorgang, mail.held.vorgang, mail.police.vorgang]
    older = re.search(r'<a href="([^"]+)" rel="next">', first.text)
    assert older, first.text
    assert 'rel="prev"' not in first.text
    second = await operator.client.get(html.unescape(older.group(1)))
    assert LISTED.findall(second.text) == [mail.claim.vorgang]
    assert "since=1h" in html.unescape(older.group(1)), "the filters go along"
    assert 'rel="next"' not in second.text
    assert 'rel="prev"' in second.text
    for bad in ("0", "abc", str(vorgaenge.MAX_PAGE + 1)):
        refused = await operator.client.get(LIST, params={"page": bad})
        assert refused.status_code == 400
        assert "Diese Seite gibt es nicht" in refused.text


async def test_a_vorgang_with_its_messages_copies_and_flags(operator: Browser, mail: Mail) -> None:
    page = await operator.client.get(f"{LIST}/{mail.claim.vorgang}")
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert f"Vorgang {mail.claim.vorgang}" in text
    for accepted, person in ((mail.claim, "SB-B1"), (mail.claim_again, "GF-B")):
        section = text.split(f"<code>{accepted.gateway_id}</code>", 1)[1].split("</section>", 1)[0]
        rows = re.findall(r'<th scope="row">([^<]+)</th>\s*<td><span class="state state-(\w+)">', section)
        assert {address for address, _ in rows} == {ADDRESS[p] for p in SEEN_BY[person]}
        assert {state for _, state in rows} == {"delivered"}
    assert "Kunde B mit GF" in text, "a copy shared through the release names it"
    # The case lowercased in the path is the same Vorgang.
    assert (await operator.client.get(f"{LIST}/{mail.claim.vorgang.lower()}")).status_code == 200


async def test_a_reply_its_relay_and_answered_on_the_copies(operator: Browser, mail: Mail) -> None:
    page = await operator.client.get(f"{LIST}/{mail.policy_vorgang}")
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert "Antwort eines Mitglieds, geschrieben von sb-b2@kunde-b.example" in text
    assert "Weiterleitung an das Maklersystem" in text
    assert re.search(r"an [^:]+: ausstehend, 0 Versuch\(e\)", text), text
    policy = text.split("<h2", 2)[1]  # the first message: the back office's, answered
    rows = re.findall(
        r'<th scope="row">([^<]+)</th>\s*<td><span class="state state-(\w+)">[^<]*</span></td>\s*'
        r"<td>(ja|nein)</td>\s*<td>(ja|nein)</td>",
        policy,
    )
    assert {address for address, *_ in rows} == {ADDRESS[p] for p in SEEN_BY["SB-B1"]}
    assert {(state, seen, answered) for _, state, seen, answered in rows} == {("pending", "nein", "ja")}


async def test_the_raw_message_is_for_operators_only(
    web: ConsoleUnderTest, operator: Browser, mail: Mail, tmp_path: Path
) -> None:
    gateway_id = mail.claim.gateway_id
    [(stored,)] = await web.sql("SELECT raw FROM messages WHERE gateway_id = :g", g=gateway_id)
    raw = await operator.client.get(f"/messages/{gateway_id}/raw")
    assert raw.status_code == 200
    assert raw.content == bytes(stored)
    assert raw.headers["content-type"] == "text/plain"
    assert raw.headers["content-disposition"] == f'attachment; filename="{gateway_id}.eml"'
    assert raw.headers["x-content-type-options"] == "nosniff"
    page = await operator.client.get(f"{LIST}/{mail.claim.vorgang}")
    assert f'href="/messages/{gateway_id}/raw"' in page.text
    for unknown in ("gw-000000000000000000000000", "x1", "..%2Fetc", "a%20b"):
        assert (await operator.client.get(f"/messages/{unknown}/raw")).status_code == 404

    # An admin of makler-muster sees the Vorgang, not the raw bytes, and no link to them.
    secret = tmp_path / "muster.password"
    secret.write_text("muster-passwort-12\n", encoding="utf-8")
    await asyncio.to_thread(
        web.cli,
        "admin",
        "add",
        "muster",
        "--role",
        "portfolio_admin",
        "-p",
        MUSTER,
        "--password-file",
        str(secret),
    )
    admin = web.make()
    assert (await admin.login("muster", "muster-passwort-12")).status_code == 303
    own = await admin.client.get(f"{LIST}/{mail.claim.vorgang}")
    assert own.status_code == 200
    assert "/raw" not in own.text
    assert (await admin.client.get(f"/messages/{gateway_id}/raw")).status_code == 403


async def test_a_portfolio_admin_sees_only_their_portfolios_vorgaenge(browser: Browser, mail: Mail) -> None:
    assert (await browser.login(ZWEI, ZWEI_PASSWORD)).status_code == 303
    assert (await browser.client.get(LIST)).status_code == 404
    assert (await browser.client.get(f"{LIST}/{mail.claim.vorgang}")).status_code == 404
    own = await browser.client.get(f"/portfolios/{OTHER}/vorgaenge")
    assert own.status_code == 200
    assert "Dieser Bestand hat noch keine Vorgänge." in own.text
    # A Vorgang of makler-muster under their own portfolio's path does not exist.
    assert (
        await browser.client.get(f"/portfolios/{OTHER}/vorgaenge/{mail.claim.vorgang}")
    ).status_code == 404


async def test_made_up_values_are_not_found_for_an_operator(operator: Browser) -> None:
    for path in (
        f"{LIST}/x1",
        f"{LIST}/VG-2026-999999",
        "/portfolios/x1/vorgaenge",
        "/portfolios/x1/who-sees",
    ):
        assert (await operator.client.get(path)).status_code == 404, path
    assert (await operator.client.get("/portfolios/x1/events")).status_code == 404
