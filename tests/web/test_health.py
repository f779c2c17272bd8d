"""/readyz against a real Dovecot and the failed-login counter on /metrics, through the console's app
on SQLite and PostgreSQL.

/readyz's IMAP check logs in as the fan-out does (the master user, for a member of the directory), so
a wrong master password, a stopped server and a certificate nobody trusts each answer 503 naming the
step; /metrics is parsed with prometheus_client's parser of the text format.
"""

from __future__ import annotations

import datetime as dt

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import ImapMemberSettings, MailboxSettings
from gateway.db.gauges import StoredState, stored_state
from gateway.web.exposition import Exposition
from gateway.web.readiness import Readiness
from tests.dovecot import Dovecot
from tests.e2e.clients import wait_until
from tests.web.conftest import OPERATOR, Browser, ConsoleUnderTest

TIMEOUT = 5.0


async def first_member(web: ConsoleUnderTest) -> str:
    """The member /readyz logs in for: the first address of the directory (none has a server of its own)."""
    [(address,)] = await web.sql("SELECT min(address) FROM members")
    assert isinstance(address, str)
    return address


def readiness_browser(web: ConsoleUnderTest, dovecot: Dovecot, *, tls: str, trusted: bool = True) -> Browser:
    browser = web.make()
    browser.console.readiness = Readiness(
        web.engine,
        MailboxSettings(backend="imap", imap=dovecot.imap_settings(tls=tls)),
        lambda: [],
        timeout=TIMEOUT,
        ssl_context=dovecot.ssl_context() if trusted else None,
    )
    return browser


async def readyz(browser: Browser) -> tuple[int, str]:
    answer = await browser.client.get("/readyz")
    return answer.status_code, answer.text


@pytest.mark.parametrize("tls", ["none", "starttls", "tls"])
async def test_readyz_logs_in_to_imap_with_the_master_password(
    web: ConsoleUnderTest, dovecot: Dovecot, tls: str
) -> None:
    member = await first_member(web)
    dovecot.add_user(member)
    browser = readiness_browser(web, dovecot, tls=tls)

    assert await readyz(browser) == (200, "ready\n")

    # Logged in for the member (with the master password: the member's own is not in the settings) and
    # out again, not just greeted. Dovecot's log process writes these lines a moment after the answers.
    assert wait_until(
        lambda: f"Login: user=<{member}>" in (log := dovecot.log_text()) and "Disconnected: Logged out" in log
    ), dovecot.log_text()


@pytest.mark.parametrize("tls", ["starttls", "tls"])
async def test_readyz_names_the_login_when_the_master_password_is_wrong(
    web: ConsoleUnderTest, dovecot: Dovecot, tls: str
) -> None:
    dovecot.add_user(await first_member(web))
    browser = readiness_browser(web, dovecot, tls=tls)
    wrong = "not-the-master-password"
    dovecot.master_password_file.write_text(wrong + "\n")

    status, text = await readyz(browser)

    assert status == 503
    assert text.startswith("not ready:\nmailboxes: IMAP login failed: ")
    assert "master_user" in text
    assert wrong not in text
    assert dovecot.master_password not in text
    assert await first_member(web) not in text  # no member's address to the network


async def test_readyz_names_the_connection_while_dovecot_is_stopped_and_recovers(
    web: ConsoleUnderTest, dovecot: Dovecot
) -> None:
    dovecot.add_user(await first_member(web))
    browser = readiness_browser(web, dovecot, tls="starttls")
    dovecot.stop()

    status, text = await readyz(browser)
    assert status == 503
    assert text.startswith("not ready:\nmailboxes: IMAP connect failed: the server is not reachable")

    dovecot.start()
    assert await readyz(browser) == (200, "ready\n")


@pytest.mark.parametrize("tls", ["starttls", "tls"])
async def test_readyz_names_tls_when_the_certificate_is_not_trusted(
    web: ConsoleUnderTest, dovecot: Dovecot, tls: str
) -> None:
    dovecot.add_user(await first_member(web))
    # The system's certificates, as in production: the test instance's self-signed one is not among them.
    browser = readiness_browser(web, dovecot, tls=tls, trusted=False)

    status, text = await readyz(browser)

    assert status == 503
    assert text.startswith("not ready:\nmailboxes: IMAP TLS failed: ")


async def test_readyz_names_tls_when_implicit_tls_meets_a_plain_port(
    web: ConsoleUnderTest, dovecot: Dovecot
) -> None:
    dovecot.add_user(await first_member(web))
    settings = dovecot.imap_settings(tls="tls").model_copy(update={"port": dovecot.port})
    browser = web.make()
    browser.console.readiness = Readiness(
        web.engine,
        MailboxSettings(backend="imap", imap=settings),
        lambda: [],
        timeout=TIMEOUT,
        ssl_context=dovecot.ssl_context(),
    )

    status, text = await readyz(browser)

    assert status == 503
    assert text.startswith("not ready:\nmailboxes: IMAP TLS failed: ")


async def test_readyz_names_the_password_when_its_file_is_gone(
    web: ConsoleUnderTest, dovecot: Dovecot
) -> None:
    dovecot.add_user(await first_member(web))
    browser = readiness_browser(web, dovecot, tls="starttls")
    dovecot.master_password_file.unlink()

    status, text = await readyz(browser)

    assert status == 503
    assert text.startswith("not ready:\nmailboxes: IMAP password failed: the master password cannot be read")
    assert str(dovecot.master_password_file) not in text


async def test_readyz_logs_in_for_no_member_with_a_server_of_its_own(
    web: ConsoleUnderTest, dovecot: Dovecot
) -> None:
    """Members with a table under [mailbox.imap.members] are not logged in for; with only those there is
    nobody to log in for, and connecting (with STARTTLS) is all that is checked: a wrong master password
    goes unnoticed there, as the operations page says."""
    addresses = [address for (address,) in await web.sql("SELECT DISTINCT address FROM members")]
    settings = dovecot.imap_settings(tls="starttls").model_copy(
        update={"members": {a: ImapMemberSettings(folder="Elsewhere") for a in addresses}}
    )
    browser = web.make()
    browser.console.readiness = Readiness(
        web.engine,
        MailboxSettings(backend="imap", imap=settings),
        lambda: [],
        timeout=TIMEOUT,
        ssl_context=dovecot.ssl_context(),
    )
    dovecot.master_password_file.write_text("not-the-master-password\n")

    assert await readyz(browser) == (200, "ready\n")
    assert "Login: user=" not in dovecot.log_text()

    dovecot.stop()
    status, text = await readyz(browser)
    assert status == 503
    assert text.startswith("not ready:\nmailboxes: IMAP connect failed: ")


# --- the failed-login counter --------------------------------------------------------------------------


def failed_logins(page: str, service: str) -> float:
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == "gateway_logins_failed_total" and sample.labels == {"service": service}:
                return sample.value
    return 0.0


async def test_a_wrong_console_password_moves_the_failed_logins_counter_by_one(web: ConsoleUnderTest) -> None:
    browser = web.make()

    async def read_state() -> StoredState:
        async with web.engine.connect() as connection:
            return await connection.run_sync(stored_state, dt.datetime.now(dt.UTC))

    browser.console.exposition = Exposition(browser.console.metrics, read_state)

    async def scrape() -> str:
        answer = await browser.client.get("/metrics")
        assert answer.status_code == 200
        return answer.text

    before = failed_logins(await scrape(), "console")

    refused = await browser.login(OPERATOR, "not-the-password")
    assert refused.status_code != 303, "a wrong password logged in"

    after = await scrape()
    assert failed_logins(after, "console") == before + 1
    assert failed_logins(after, "smtp") == 0
