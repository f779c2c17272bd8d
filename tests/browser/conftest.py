"""The console in a real browser: a real ``gateway serve`` (the e2e helpers) with its admin_http listener
on a free port, and Debian's chromium driven by Playwright (``executable_path``; Playwright's own browser
downloads are never used).

Starting a gateway and a chromium is most of a browser test's cost, so every browser module shares them:
one gateway per database kind (``console``) and one chromium for the session (issue 14, item 7). Each
test gets a fresh browser context (no cookies of another test) and sends mail with a subject of its own.
A test that changes the gateway's directory puts it back before it ends; the one that needs the
gateway's mail to itself (test_releases.py) runs first (``pytest_collection_modifyitems``), and
pytest-xdist runs the browser tests of one database kind on one worker (tests/conftest.py, ``shared_group``).

With ``GATEWAY_SCREENSHOTS=docs/web`` set, ``screenshot()`` writes PNGs for docs/web.md there.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.e2e.conftest import RunningGateway, a_shared_gateway, running_sink
from tests.web.conftest import OPERATOR, OPERATOR_PASSWORD, OTHER, ZWEI, ZWEI_PASSWORD

T = TypeVar("T")
CHROMIUM = os.environ.get("GATEWAY_TEST_CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parent.parent.parent


@dataclass
class Console:
    gateway: RunningGateway
    url: str


# The rule of test_ops.py: the console's gateway quarantines invoices. No other browser test sends one.
RULES = """\
version: 1
rules:
  - name: invoices-to-accounting
    match: {subject: {regex: '^Rechnung'}}
    quarantine: "Rechnungen prüft die Buchhaltung vor dem Versand"
"""


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
    rules = gateway.config.parent / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "10-invoices.yaml").write_text(RULES, encoding="utf-8")


def off_loop(work: Callable[..., T], *args: object) -> T:
    """Run ``work`` in a thread of its own: Playwright's sync API keeps an event loop running in the
    test's thread, and the gateway's CLI and database setup each run one of their own (asyncio.run)."""
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        return thread.submit(work, *args).result()


@contextlib.contextmanager
def running_console(
    tmp_path_factory: pytest.TempPathFactory,
    kind: str,
    request: pytest.FixtureRequest,
    before_start: Callable[[RunningGateway, Path], None] = _add_console,
) -> Iterator[Console]:
    """A running gateway with the seed's directory and what ``before_start`` adds, and its console.

    Set up and stopped off the test's thread (``off_loop``), so it may come and go while chromium runs.
    """
    # The back office's relay goes to a sink of its own: left at the example directory's fixed port, a
    # relayed reply (test_held.py) stayed pending unless something else happened to listen there, and
    # every later test's settled() waited for it in vain (issue 14, item 8).
    sink = running_sink()
    shared = a_shared_gateway(
        tmp_path_factory, kind, "maildir", request, off_loop(sink.__enter__), before_start=before_start
    )
    gateway = off_loop(shared.__enter__)
    try:
        found = [
            m for line in gateway.log if (m := re.search(r"listening: admin_http on ([\d.]+):(\d+)", line))
        ]
        assert found, "".join(gateway.log)
        host, port = found[0].groups()
        yield Console(gateway, f"http://{host}:{port}")
    finally:
        off_loop(shared.__exit__, None, None, None)
        off_loop(sink.__exit__, None, None, None)


@pytest.fixture(scope="package", params=["sqlite", "postgresql"])
def console_database_kind(request: pytest.FixtureRequest) -> str:
    """The database of the console's gateway; every browser test runs once with each."""
    return str(request.param)


@pytest.fixture(scope="package")
def console(
    tmp_path_factory: pytest.TempPathFactory, console_database_kind: str, request: pytest.FixtureRequest
) -> Iterator[Console]:
    """A running gateway with the seed's directory, makler-zwei, ``op`` and ``zwei``, the invoice rule
    (``RULES``), and its console; shared by every browser test on this database kind."""
    with running_console(tmp_path_factory, console_database_kind, request) as console:
        yield console


@pytest.fixture(scope="package")
def playwright(request: pytest.FixtureRequest) -> Iterator[Playwright]:
    # Playwright's sync API keeps an event loop running in this thread while it lives, and every
    # asyncio.run in the same worker fails meanwhile: so it lives for the browser tests only (package
    # scope; xdist runs a database kind's browser tests on one worker as one unit, see tests/conftest.py),
    # and the database fixtures, whose setup and teardown use asyncio.run, are set up before it.
    kinds = {
        getattr(item, "callspec", None) and item.callspec.params.get("console_database_kind")
        for item in request.session.items
    }
    for kind, fixture in (("sqlite", "sqlite_template"), ("postgresql", "postgres_pool")):
        if kind in kinds:
            request.getfixturevalue(fixture)
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def chromium(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
    yield browser
    browser.close()


# test_releases.py counts every message the release's run back-fills, so it runs before any other browser
# test has mail delivered by the shared gateway; the others look only at mail of their own.
FIRST = ("tests/browser/test_releases.py",)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Within each database kind, test_releases.py first; pytest has grouped the items by kind already."""
    places = [n for n, item in enumerate(items) if item.nodeid.startswith("tests/browser/")]

    def order(n: int) -> tuple[str, bool, int]:
        callspec = getattr(items[n], "callspec", None)
        kind = str(callspec.params.get("console_database_kind", "")) if callspec else ""
        return (kind, not items[n].nodeid.startswith(FIRST), n)

    browser = [items[n] for n in sorted(places, key=order)]
    for place, item in zip(places, browser, strict=True):
        items[place] = item


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
