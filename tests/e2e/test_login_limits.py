"""Password guessing at the submission listener is limited and visible, and never locks the back office out.

Against the real ``gateway serve`` on SQLite and PostgreSQL; the guessers connect from other loopback
addresses (127.0.0.2 and up), the back office from 127.0.0.1.
"""

from __future__ import annotations

import json
import smtplib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import LOGIN, PASSWORD, RunningGateway, prepare

BACKOFFICE = "127.0.0.1"


def gateway_with(tmp_path: Path, database_url: str, **limits: object) -> Iterator[RunningGateway]:
    gateway = prepare(tmp_path, database_url, **limits)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def attempt(gateway: RunningGateway, login: str, password: str, address: str = BACKOFFICE) -> tuple[int, str]:
    """One AUTH PLAIN from ``address``; the answer's code and text."""
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=60, source_address=(address, 0)) as client:
        client.ehlo("ams.example")
        # One AUTH PLAIN; smtplib's login() would try LOGIN too after a failure, two guesses in one.
        client.user, client.password = login, password
        try:
            code, text = client.auth("PLAIN", client.auth_plain)
        except smtplib.SMTPAuthenticationError as exc:
            code, text = exc.smtp_code, exc.smtp_error
        return code, text.decode() if isinstance(text, bytes) else str(text)


def auth_events(gateway: RunningGateway) -> list[dict[str, object]]:
    result = gateway.cli("events", "--kind", "auth", "--json", "--limit", "1000")
    events: list[dict[str, object]] = json.loads(result.stdout)
    return events


@pytest.fixture
def throttling(tmp_path: Path, database_url: str) -> Iterator[RunningGateway]:
    yield from gateway_with(
        tmp_path,
        database_url,
        auth_failure_delay=0.05,
        auth_failure_max_delay=0.2,
        auth_max_failures_per_address=3,
        auth_max_failures_per_login=6,
    )


def test_guessing_from_one_address_reaches_454_and_is_recorded_with_the_address(
    throttling: RunningGateway,
) -> None:
    answers = [attempt(throttling, LOGIN, f"wrong-guess-{i}", "127.0.0.2") for i in range(3)]
    assert [code for code, _ in answers] == [535, 535, 535]
    # Refused before any password check: the right password from this address gets the same 454,
    # so the refusal tells a guesser nothing.
    for password in ("wrong-guess-4", PASSWORD):
        code, text = attempt(throttling, LOGIN, password, "127.0.0.2")
        assert (code, text[:5]) == (454, "4.7.0"), text
        assert "Too many failed logins" in text
    # The back office's own address is not concerned.
    assert attempt(throttling, LOGIN, PASSWORD)[0] == 235

    events = auth_events(throttling)
    failed = [e for e in events if e["kind"] == "auth.failed"]
    assert len(failed) == 3
    for event in failed:
        detail = event["detail"]
        assert isinstance(detail, dict)
        assert detail["client"] == "127.0.0.2"
        assert detail["login"] == LOGIN
        assert detail["known_login"] is True
    assert [e["detail"]["refusing"] for e in events if e["kind"] == "auth.throttled"] == ["address"]  # type: ignore[index]


def test_the_back_office_keeps_logging_in_while_its_login_is_being_guessed(
    throttling: RunningGateway,
) -> None:
    guessers = [f"127.0.0.{n}" for n in range(2, 12)]
    answers: list[int] = []
    stop = threading.Event()

    def guess() -> None:
        # Round after round over ten addresses, until the back office has logged in often enough.
        round_ = 0
        while not stop.is_set():
            for address in guessers:
                answers.append(attempt(throttling, LOGIN, f"guess-{round_}-{address}", address)[0])
            round_ += 1

    guesser = threading.Thread(target=guess)
    guesser.start()
    try:
        # First the guessing reaches the login's limit, then the back office logs in, during it.
        deadline = time.monotonic() + 60
        while 454 not in answers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 454 in answers, answers
        logins = []
        for _ in range(8):
            logins.append(attempt(throttling, LOGIN, PASSWORD)[0])
        assert guesser.is_alive()
    finally:
        stop.set()
        guesser.join(timeout=120)
    assert logins == [235] * 8
    # The login is under attack: after 6 failures, every guessing address that failed is refused.
    assert answers.count(535) <= 6 + len(guessers)
    failed = [e for e in auth_events(throttling) if e["kind"] == "auth.failed"]
    assert {e["detail"]["client"] for e in failed} <= set(guessers)  # type: ignore[index]


# That a failed login for an unknown name costs what one for a known name does is asserted without a
# clock in tests/stages/test_accounts.py; a timing comparison here failed whenever the machine was busy.
