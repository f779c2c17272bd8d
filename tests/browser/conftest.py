"""The console in a real browser: a real ``gateway serve`` (the e2e helpers) with its admin_http listener
on a free port, and Debian's chromium driven by Playwright (``executable_path``; Playwright's own browser
downloads are never used). Each test gets a fresh browser context (no cookies of another test).

With ``GATEWAY_SCREENSHOTS=docs/web`` set, ``screenshot()`` writes PNGs for docs/web.md there.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.e2e.conftest import RunningGateway, a_shared_gateway
from tests.web.conftest import OPERATOR, OPERATOR_PASSWORD, OTHER, ZWEI, ZWEI_PASSWORD

CHROMIUM = os.environ.get("GATEWAY_TEST_CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parent.parent.parent


@dataclass
class Console:
    gateway: RunningGateway
    url: str


def _add_console(gateway: RunningGateway, place: Path) -> None:
    # write_config (tests/e2e) has [listeners.admin_http] on port 0 already.
    gateway.cli("portfolio", "create", OTHER, "--display-name", "Makler Zwei KG")
    for login, password, options in (
        (OPERATOR, OPERATOR_PASSWORD, ["--role", "operator"]),
        (ZWEI, ZWEI_PASSWORD, ["--role", "portfolio_admin", "-p", OTHER]),
    ):
        secret = place / f"{login}.password"
        secret.write_text(password + "\n", encoding="utf-8")
        gateway.cli("admin", "add", login, *options, "--password-file", str(secret))


@contextlib.contextmanager
def running_console(
    tmp_path_factory: pytest.TempPathFactory,
    kind: str,
    request: pytest.FixtureRequest,
    before_start: Callable[[RunningGateway, Path], None] = _add_console,
) -> Iterator[Console]:
    """A running gateway with the seed's directory and what ``before_start`` adds, and its console."""
    with a_shared_gateway(tmp_path_factory, kind, "maildir", request, before_start=before_start) as gateway:
        found = [
            m for line in gateway.log if (m := re.search(r"listening: admin_http on ([\d.]+):(\d+)", line))
        ]
        assert found, "".join(gateway.log)
        host, port = found[0].groups()
        yield Console(gateway, f"http://{host}:{port}")


@pytest.fixture(scope="module")
def console(
    tmp_path_factory: pytest.TempPathFactory, module_database_kind: str, request: pytest.FixtureRequest
) -> Iterator[Console]:
    """A running gateway with the seed's directory, makler-zwei, ``op`` and ``zwei``, and its console."""
    with running_console(tmp_path_factory, module_database_kind, request) as console:
        yield console


@pytest.fixture(scope="module")
def playwright(console: Console) -> Iterator[Playwright]:
    # Playwright's sync API runs an event loop in this thread until it stops; the gateway's setup and
    # teardown (asyncio.run for the database) must happen outside it, so the console comes first.
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def chromium(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
    yield browser
    browser.close()


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(page: Page, name: str) -> None:
    """Keep what the page shows as ``<name>.png`` in $GATEWAY_SCREENSHOTS (docs/web), when set."""
    folder = os.environ.get("GATEWAY_SCREENSHOTS")
    if not folder:
        return
    target = Path(folder)
    if not target.is_absolute():
        target = REPO / target
    target.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target / f"{name}.png"), full_page=True)


def log_in(page: Page, console: Console, login: str, password: str) -> None:
    """Log in with the keyboard only, as someone without a mouse would."""
    page.goto(console.url + "/")
    assert page.url.startswith(console.url + "/login")
    page.get_by_label("Benutzername").focus()
    page.keyboard.type(login)
    page.keyboard.press("Tab")
    page.keyboard.type(password)
    # Wait for the answer to the form, not merely for the current page's load: a navigation started
    # right after would otherwise abort the login's own (net::ERR_ABORTED).
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.wait_for_load_state()
