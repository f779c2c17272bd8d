"""The permission matrix, over every route the console registers (so routes added later are covered):
a portfolio admin of makler-zwei gets 404 for every makler-muster URL and form post, 403 for every
operator page; nobody logged out gets past the login."""

from __future__ import annotations

import re

import pytest
from starlette.routing import Mount

from gateway.web.app import areas, create_app
from gateway.web.routes import ConsoleRoute, Scope
from tests.web.conftest import MUSTER, OTHER, ZWEI, ZWEI_PASSWORD, Browser, ConsoleUnderTest


def url_of(route: ConsoleRoute, portfolio: str) -> str:
    """The route's path with ``portfolio`` and a made-up value for every other parameter."""
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: portfolio if m.group(1) == "portfolio" else "x1", route.path)


def console_routes() -> list[tuple[ConsoleRoute, str]]:
    return [(r, m) for a in areas() for r in a.routes for m in sorted(r.methods or ()) if m != "HEAD"]


async def test_every_registered_route_is_a_scoped_console_route(browser: Browser) -> None:
    app = create_app(browser.console)
    for route in app.routes:
        if isinstance(route, Mount):
            assert route.path == "/static"  # the stylesheet, public by nature
            continue
        assert isinstance(route, ConsoleRoute), route
        assert isinstance(route.scope, Scope)


async def test_a_portfolio_admin_reaches_nothing_of_another_portfolio_or_of_operators(
    web: ConsoleUnderTest, browser: Browser
) -> None:
    assert (await browser.login(ZWEI, ZWEI_PASSWORD)).status_code == 303
    checked = 0
    for route, method in console_routes():
        if route.scope not in (Scope.PORTFOLIO, Scope.OPERATOR):
            continue
        url = url_of(route, MUSTER)
        if method == "GET":
            response = await browser.client.get(url)
        else:
            # A valid CSRF token, so that the refusal is the scope's, not the token's.
            response = await browser.post(url, {"portfolio": MUSTER}, from_page="/")
        expected = 404 if route.scope is Scope.PORTFOLIO else 403
        assert response.status_code == expected, f"{method} {url}: {response.status_code}"
        checked += 1
    assert checked >= 1
    # Nothing changed in makler-muster meanwhile: no event names it since the seed.
    assert (
        await web.sql(
            "SELECT e.id FROM events e JOIN portfolios p ON p.id = e.portfolio_id "
            "WHERE p.name = :p AND e.actor LIKE 'web:%'",
            p=MUSTER,
        )
        == []
    )
    # Their own portfolio they reach.
    assert (await browser.client.get(f"/portfolios/{OTHER}")).status_code == 200


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_logged_out_visitors_are_sent_to_the_login(browser: Browser, method: str) -> None:
    for route, route_method in console_routes():
        if route.scope is Scope.PUBLIC or route_method != method:
            continue
        url = url_of(route, MUSTER)
        response = await browser.client.request(method, url)
        assert response.status_code == 303, f"{method} {url}"
        assert response.headers["location"].startswith("/login")
