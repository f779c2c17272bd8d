"""The event log over HTTP, on SQLite and PostgreSQL: a portfolio's events for its admins, every
portfolio's for operators, newest first, with the filters of `gateway events` and pages back."""

from __future__ import annotations

import asyncio
import html
import json
import re
from pathlib import Path

import pytest

from gateway.web import events
from tests.seed import ADDRESS
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

LOG = f"/portfolios/{MUSTER}/events"
EVENT = re.compile(r'<tr id="event-(\d+)">.*?<code>([a-z_.-]+)</code>', re.S)


@pytest.fixture
async def mail(web: ConsoleUnderTest, tmp_path: Path) -> Mail:
    return await send_mail(web, tmp_path)


@pytest.fixture
async def operator(browser: Browser) -> Browser:
    assert (await browser.login(OPERATOR, OPERATOR_PASSWORD)).status_code == 303
    return browser


async def shown(client: Browser, path: str = LOG, **query: str) -> list[tuple[int, str]]:
    page = await client.client.get(path, params=query)
    assert page.status_code == 200, page.text
    return [(int(i), kind) for i, kind in EVENT.findall(page.text)]


def cli_events(web: ConsoleUnderTest, *args: str) -> list[dict[str, object]]:
    return list(json.loads(web.cli("events", *args, "--limit", "1000", "--json").stdout))


async def test_the_portfolios_log_newest_first_as_the_cli_has_it(
    web: ConsoleUnderTest, operator: Browser, mail: Mail
) -> None:
    found = await shown(operator)
    expected = await asyncio.to_thread(cli_events, web, "-p", MUSTER)
    assert found == [(e["id"], e["kind"]) for e in reversed(expected)][: events.PAGE_SIZE]
    ids = [i for i, _ in found]
    assert ids == sorted(ids, reverse=True)


async def test_the_filters_of_gateway_events(web: ConsoleUnderTest, operator: Browser, mail: Mail) -> None:
    for query, args in (
        ({"kind": "message"}, ("--kind", "message")),
        ({"kind": "message.quarantined, release"}, ("--kind", "message.quarantined", "--kind", "release")),
        ({"vorgang": mail.claim.vorgang.lower()}, ("--vorgang", mail.claim.vorgang)),
        ({"message": mail.police.gateway_id}, ("--message", mail.police.gateway_id)),
        ({"member": ADDRESS["SB-B1"]}, ("--member", ADDRESS["SB-B1"])),
        ({"since": "1h", "kind": "reply"}, ("--since", "1h", "--kind", "reply")),
        ({"until": "2000-01-01"}, ("--until", "2000-01-01")),
    ):
        expected = await asyncio.to_thread(cli_events, web, "-p", MUSTER, *args)
        assert await shown(operator, **query) == [(e["id"], e["kind"]) for e in reversed(expected)], query
    assert {k for _, k in await shown(operator, kind="message")} == {
        "message.accepted",
        "message.quarantined",
    }
    assert await shown(operator, until="2000-01-01") == []
    page = await operator.client.get(LOG, params={"message": mail.held.gateway_id})
    assert "reason=foreign sender" in html.unescape(page.text), "the detail as `gateway events` prints it"
    assert f'href="/portfolios/{MUSTER}/vorgaenge/{mail.held.vorgang}"' in page.text


@pytest.mark.parametrize(
    ("query", "field", "says"),
    [
        ({"kind": "copy.gone"}, "kind", "Eine Ereignisart „copy.gone“ gibt es nicht."),
        ({"member": "nobody@kunde-b.example"}, "member", "nobody@kunde-b.example ist kein Mitglied"),
        ({"vorgang": "VG-1999-000001"}, "vorgang", "Einen Vorgang VG-1999-000001 gibt es hier nicht."),
        ({"message": "gw-nope"}, "message", "Eine Nachricht gw-nope gibt es hier nicht."),
        ({"since": "gestern"}, "since", "„gestern“ ist keine Zeit"),
    ],
)
async def test_a_filter_that_names_nothing_is_answered_next_to_it(
    operator: Browser, query: dict[str, str], field: str, says: str
) -> None:
    page = await operator.client.get(LOG, params=query)
    assert page.status_code == 400
    text = html.unescape(page.text)
    problem = re.search(rf'<p id="events-{field}-problem" class="problem" role="alert">([^<]*)</p>', text)
    assert problem, text
    assert says in problem.group(1)
    assert EVENT.findall(text) == []


async def test_pages_back_through_the_log(operator: Browser, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "PAGE_SIZE", 4)
    seen: list[int] = []
    path = LOG + "?kind=membership"
    while path:
        page = await operator.client.get(path)
        assert page.status_code == 200
        seen += [int(i) for i, _ in EVENT.findall(page.text)]
        older = re.search(r'<a href="([^"]+)" rel="next">', page.text)
        path = html.unescape(older.group(1)) if older else ""
        assert not older or "kind=membership" in path
    assert len(seen) == 9, "the seed's nine memberships (DESIGN.md §3)"
    assert seen == sorted(seen, reverse=True)
    assert (await operator.client.get(LOG, params={"before": "x"})).status_code == 400


async def test_a_portfolio_admin_sees_only_their_portfolios_events(browser: Browser, mail: Mail) -> None:
    assert (await browser.login(ZWEI, ZWEI_PASSWORD)).status_code == 303
    assert (await browser.client.get(LOG)).status_code == 404
    assert (await browser.client.get("/events")).status_code == 403
    own = await browser.client.get(f"/portfolios/{OTHER}/events")
    assert own.status_code == 200
    kinds = {k for _, k in EVENT.findall(own.text)}
    assert "portfolio.create" in kinds
    assert not kinds & {"message.accepted", "member.create", "reply.accepted"}
    assert MUSTER not in own.text.replace(f"/portfolios/{OTHER}", "")
    refused = await browser.client.get(
        f"/portfolios/{OTHER}/events", params={"message": mail.claim.gateway_id}
    )
    assert refused.status_code == 400
    assert "gibt es hier nicht" in html.unescape(refused.text)
    assert 'href="/events"' not in own.text, "no header link to the operators' log"


async def test_operators_read_every_portfolios_log(operator: Browser, mail: Mail) -> None:
    page = await operator.client.get("/events", params={"kind": "portfolio.create"})
    assert page.status_code == 200
    text = page.text
    assert f"<td>{MUSTER}</td>" in text
    assert f"<td>{OTHER}</td>" in text
    only = await operator.client.get("/events", params={"portfolio": OTHER, "kind": "portfolio"})
    assert f"<td>{MUSTER}</td>" not in only.text
    assert f"<td>{OTHER}</td>" in only.text
    unknown = await operator.client.get("/events", params={"portfolio": "nope"})
    assert unknown.status_code == 400
    assert "Einen Bestand „nope“ gibt es nicht." in html.unescape(unknown.text)
    assert 'href="/events"' in text
