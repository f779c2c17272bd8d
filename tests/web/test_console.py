"""The console over HTTP: login, sessions, CSRF, headers, languages, the pages of the foundation."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.web.routes import ConsoleRoute
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


def session_cookie(response: httpx.Response) -> str:
    return next(v for v in response.headers.get_list("set-cookie") if v.startswith("gw_session="))


async def test_login_with_the_right_password_opens_a_session(web: ConsoleUnderTest, browser: Browser) -> None:
    response = await browser.login(OPERATOR, OPERATOR_PASSWORD)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    assert "gw_session=" in session_cookie(response)
    overview = await browser.client.get("/")
    assert overview.status_code == 200
    assert f'href="/portfolios/{MUSTER}"' in overview.text
    assert f'href="/portfolios/{OTHER}"' in overview.text
    assert [e["actor"] for e in await web.events("admin.login")] == [f"web:{OPERATOR}"]
    # Only a hash of the cookie's token is stored.
    token = browser.client.cookies["gw_session"]
    assert await web.sql("SELECT id FROM admin_sessions WHERE token_hash = :t", t=token) == []
    assert len(await web.sql("SELECT id FROM admin_sessions")) == 1


@pytest.mark.parametrize("login", [OPERATOR, "nobody"])
async def test_a_wrong_password_or_unknown_login_gets_the_same_clear_answer(
    web: ConsoleUnderTest, browser: Browser, login: str
) -> None:
    response = await browser.login(login, "falsches-passwort")
    assert response.status_code == 401
    assert "Benutzername oder Passwort ist falsch." in response.text
    assert "gw_session=" not in response.headers.get("set-cookie", "")
    assert (await browser.client.get("/")).status_code == 303
    [failed] = await web.events("admin.login_failed")
    assert failed["detail"]["login"] == login
    assert failed["detail"]["known_login"] is (login == OPERATOR)
    assert await web.events("admin.login") == []


async def test_a_proxy_only_account_cannot_log_in_with_a_password(
    web: ConsoleUnderTest, browser: Browser
) -> None:
    await asyncio.to_thread(web.cli, "admin", "add", "proxy-only", "--role", "operator", "--no-password")
    response = await browser.login("proxy-only", "")
    assert response.status_code == 401


async def test_logins_are_throttled_after_too_many_failures(web: ConsoleUnderTest, browser: Browser) -> None:
    for _ in range(4):  # TEST_LIMITS.per_address
        assert (await browser.login(OPERATOR, "falsch-falsch")).status_code == 401
    refused = await browser.login(OPERATOR, OPERATOR_PASSWORD)
    assert refused.status_code == 429
    assert "Zu viele fehlgeschlagene Anmeldungen" in refused.text
    assert "gw_session=" not in refused.headers.get("set-cookie", "")
    [throttled] = await web.events("admin.login_throttled")
    assert throttled["detail"]["throttles"] == ["address"]
    # Another address still logs in: the limit is per client address (and per login, from those addresses).
    elsewhere = web.make(client="127.0.0.2")
    elsewhere.console.failures = browser.console.failures
    assert (await elsewhere.login(OPERATOR, OPERATOR_PASSWORD)).status_code == 303


async def test_logout_ends_the_session(web: ConsoleUnderTest, browser: Browser) -> None:
    await browser.login(ZWEI, ZWEI_PASSWORD)
    old = browser.client.cookies["gw_session"]
    response = await browser.post("/logout")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")
    assert await web.sql("SELECT id FROM admin_sessions") == []
    assert [e["actor"] for e in await web.events("admin.logout")] == [f"web:{ZWEI}"]
    browser.client.cookies.set("gw_session", old)  # a copy of the cookie kept elsewhere
    assert (await browser.client.get("/")).status_code == 303


@pytest.mark.parametrize("ago", [{"last_seen": 31 * 60}, {"created": 12 * 3600 + 1}])
async def test_an_idle_or_too_old_session_has_expired(
    web: ConsoleUnderTest, browser: Browser, ago: dict[str, float]
) -> None:
    await browser.login(OPERATOR, OPERATOR_PASSWORD)
    assert (await browser.client.get("/")).status_code == 200
    await web.age_sessions(**ago)
    response = await browser.client.get(f"/portfolios/{MUSTER}")
    assert response.status_code == 303
    assert response.headers["location"] == f"/login?next=/portfolios/{MUSTER}"
    assert await web.sql("SELECT id FROM admin_sessions") == []


async def test_expired_sessions_are_removed_when_the_next_one_opens(web: ConsoleUnderTest) -> None:
    first = web.make()
    await first.login(OPERATOR, OPERATOR_PASSWORD)
    await web.age_sessions(last_seen=31 * 60)  # the browser was closed and never came back
    await web.make().login(ZWEI, ZWEI_PASSWORD)
    assert [
        row[0]
        for row in await web.sql(
            "SELECT a.login FROM admin_sessions s JOIN admin_accounts a ON a.id = s.account_id"
        )
    ] == [ZWEI]


async def test_a_session_used_within_the_idle_timeout_lives_on(
    web: ConsoleUnderTest, browser: Browser
) -> None:
    await browser.login(OPERATOR, OPERATOR_PASSWORD)
    await web.age_sessions(last_seen=29 * 60)
    assert (await browser.client.get("/")).status_code == 200
    await web.age_sessions(created=60)  # touched just now: the idle clock started again
    assert (await browser.client.get("/")).status_code == 200


@pytest.mark.parametrize("tls", [False, True])
async def test_cookie_attributes(web: ConsoleUnderTest, tls: bool) -> None:
    browser = web.make(tls=tls)
    cookie = session_cookie(await browser.login(OPERATOR, OPERATOR_PASSWORD)).lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert ("; secure" in cookie) is tls
    assert "path=/" in cookie


@pytest.mark.parametrize("token", [None, "", "forged-token"])
async def test_a_post_without_the_right_csrf_token_is_refused(
    web: ConsoleUnderTest, browser: Browser, token: str | None
) -> None:
    await browser.login(OPERATOR, OPERATOR_PASSWORD)
    data = {} if token is None else {"csrf": token}
    response = await browser.client.post("/logout", data=data)
    assert response.status_code == 403
    assert "Das Formular war nicht mehr gültig" in response.text
    assert len(await web.sql("SELECT id FROM admin_sessions")) == 1  # not logged out
    # The login form has its own token too.
    fresh = web.make()
    refused = await fresh.client.post("/login", data={"login": OPERATOR, "password": OPERATOR_PASSWORD})
    assert refused.status_code == 403
    assert len(await web.events("admin.login")) == 1  # the first login only


async def test_security_headers_on_pages_errors_and_the_stylesheet(browser: Browser) -> None:
    await browser.login(OPERATOR, OPERATOR_PASSWORD)
    for path, status in (("/", 200), ("/login", 303), ("/nowhere", 404), (f"/portfolios/{OTHER}", 200)):
        response = await browser.client.get(path)
        assert response.status_code == status, path
        headers = response.headers
        assert "default-src 'self'" in headers["content-security-policy"]
        assert "unsafe-inline" not in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-store"
        assert "server" not in headers
    css = await browser.client.get("/static/console.css")
    assert css.status_code == 200
    assert css.headers["x-content-type-options"] == "nosniff"
    assert ":focus-visible" in css.text
    page = (await browser.client.get("/")).text
    assert "<script" not in page
    assert "style=" not in page


async def test_german_by_default_and_english_on_request(browser: Browser) -> None:
    login_page = await browser.client.get("/login")
    assert '<html lang="de">' in login_page.text
    assert "Anmelden" in login_page.text
    switched = await browser.post("/language", {"language": "en", "next": "/login"}, from_page="/login")
    assert switched.status_code == 303
    assert switched.headers["location"] == "/login"
    assert "gw_lang=en" in switched.headers["set-cookie"]
    english = await browser.client.get("/login")
    assert '<html lang="en">' in english.text
    assert "Log in" in english.text
    await browser.login(OPERATOR, OPERATOR_PASSWORD)
    portfolio = await browser.client.get(f"/portfolios/{MUSTER}")
    assert "Releases (Freischaltungen)" in portfolio.text
    # A foreign site as the target is not followed.
    away = await browser.post("/language", {"language": "de", "next": "//evil.example/"})
    assert away.headers["location"] == "/"
    assert "Freischaltungen" in (await browser.client.get(f"/portfolios/{MUSTER}")).text


async def test_the_portfolio_page_shows_back_offices_releases_and_members(browser: Browser) -> None:
    await browser.login(OPERATOR, OPERATOR_PASSWORD)
    page = (await browser.client.get(f"/portfolios/{MUSTER}")).text
    assert "Makler Muster GmbH" in page
    assert "4.8.0.64470" in page
    assert "ams@makler-muster.example" in page
    assert f'href="/portfolios/{MUSTER}/releases/Kunde%20B%20mit%20GF"' in page
    assert "gf-b@kunde-b.example" in page
    assert "Hauptfreischaltung" in page


async def test_a_portfolio_admin_sees_only_their_portfolios(browser: Browser) -> None:
    await browser.login(ZWEI, ZWEI_PASSWORD)
    overview = (await browser.client.get("/")).text
    assert f'href="/portfolios/{OTHER}"' in overview
    assert MUSTER not in overview
    assert (await browser.client.get(f"/portfolios/{OTHER}")).status_code == 200
    hidden = await browser.client.get(f"/portfolios/{MUSTER}")
    missing = await browser.client.get("/portfolios/gibt-es-nicht")
    assert hidden.status_code == missing.status_code == 404
    # Nothing but the path tells an existing portfolio from a missing one.
    assert hidden.text.replace(MUSTER, "X") == missing.text.replace("gibt-es-nicht", "X")


async def test_an_operator_gets_404_for_a_portfolio_that_does_not_exist(browser: Browser) -> None:
    await browser.login(OPERATOR, OPERATOR_PASSWORD)
    response = await browser.client.get("/portfolios/gibt-es-nicht")
    assert response.status_code == 404
    assert "Diese Seite gibt es nicht" in response.text


async def test_a_trusted_proxy_header_logs_in_only_from_the_proxy(web: ConsoleUnderTest) -> None:
    settings = {"trusted_proxy_header": "X-Remote-User", "trusted_proxies": ("127.0.0.1",)}
    proxied = web.make(client="127.0.0.1", **settings)
    response = await proxied.client.get("/", headers={"X-Remote-User": ZWEI})
    assert response.status_code == 200
    assert f'href="/portfolios/{OTHER}"' in response.text
    assert [e["actor"] for e in await web.events("admin.login")] == [f"web:{ZWEI}"]
    direct = web.make(client="10.9.9.9", **settings)
    assert (await direct.client.get("/", headers={"X-Remote-User": OPERATOR})).status_code == 303
    fresh = web.make(client="127.0.0.1", **settings)
    unknown = await fresh.client.get("/", headers={"X-Remote-User": "nobody"})
    assert unknown.status_code == 303  # a login that is no account: nobody is logged in


async def test_a_body_over_the_limit_is_refused(web: ConsoleUnderTest) -> None:
    small = web.make(max_upload_size=1000)
    response = await small.client.post("/login", content=b"x" * 5000)
    assert response.status_code == 413


async def test_every_route_declares_a_scope(browser: Browser) -> None:
    from gateway.web.app import areas

    routes = [r for a in areas() for r in a.routes]
    assert routes
    assert all(isinstance(r, ConsoleRoute) for r in routes)
    assert {r.path for r in routes} >= {"/", "/login", "/logout", "/language", "/portfolios/{portfolio}"}
