"""Failed logins per address and per login: growing delay, refusal, and the back office never locked out."""

from __future__ import annotations

from gateway.domain.logins import FailedLogins, LoginLimits

LOGIN = "ams@makler-muster.example"
GUESSER = "198.51.100.7"
BACKOFFICE = "192.0.2.25"


def fail(logins: FailedLogins, login: str, address: str, now: float) -> float:
    assert logins.admit(login, address, now) is None
    failure = logins.failed(login, address, now)
    logins.end(login, address)
    return failure.delay


def test_the_delay_doubles_per_failure_from_an_address_up_to_its_maximum() -> None:
    logins = FailedLogins(LoginLimits(delay=1.0, max_delay=5.0, per_address=100, per_login=100))
    delays = [fail(logins, LOGIN, GUESSER, now=float(i)) for i in range(5)]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    # Another address starts at the first step.
    assert fail(logins, LOGIN, BACKOFFICE, now=5.0) == 1.0


def test_an_address_is_refused_after_its_failures_until_they_leave_the_window() -> None:
    logins = FailedLogins(LoginLimits(window=60.0, per_address=3, per_login=100))
    for i in range(3):
        fail(logins, f"guess{i}", GUESSER, now=float(i))
    refusal = logins.admit("another", GUESSER, now=10.0)
    assert refusal is not None
    assert "3 failed logins from 198.51.100.7" in refusal
    assert logins.admit(LOGIN, BACKOFFICE, now=10.0) is None  # other addresses are not concerned
    logins.end(LOGIN, BACKOFFICE)
    # The first failure (at 0) leaves the window at 60: one more try.
    assert logins.admit("another", GUESSER, now=60.5) is None


def test_attempts_under_way_count_so_parallel_connections_do_not_guess_faster() -> None:
    logins = FailedLogins(LoginLimits(per_address=3, per_login=100))
    admitted = [logins.admit(f"guess{i}", GUESSER, now=0.0) for i in range(5)]
    assert admitted[:3] == [None, None, None]
    assert all(refusal is not None for refusal in admitted[3:])


def test_a_login_under_attack_refuses_the_addresses_that_failed_for_it_but_not_the_back_office() -> None:
    logins = FailedLogins(LoginLimits(per_address=100, per_login=5))
    guessers = [f"203.0.113.{i}" for i in range(5)]
    for i, address in enumerate(guessers):
        fail(logins, LOGIN, address, now=float(i))
    for address in guessers:
        assert logins.admit(LOGIN, address, now=10.0) is not None
    # A new guessing address gets one try, then is refused too.
    fail(logins, LOGIN, "203.0.113.99", now=11.0)
    assert logins.admit(LOGIN, "203.0.113.99", now=12.0) is not None
    # The back office's own address never failed: it gets through, every time.
    for now in (12.0, 13.0, 14.0):
        assert logins.admit(LOGIN, BACKOFFICE, now=now) is None
        logins.succeeded(LOGIN, BACKOFFICE)
        logins.end(LOGIN, BACKOFFICE)


def test_a_right_password_forgives_the_address_its_failures_for_that_login() -> None:
    logins = FailedLogins(LoginLimits(delay=1.0, max_delay=60.0, per_address=3, per_login=100))
    fail(logins, LOGIN, BACKOFFICE, now=0.0)
    fail(logins, LOGIN, BACKOFFICE, now=1.0)
    assert logins.admit(LOGIN, BACKOFFICE, now=2.0) is None
    logins.succeeded(LOGIN, BACKOFFICE)
    logins.end(LOGIN, BACKOFFICE)
    # Counting starts again: the next failure waits the first step, and three more are allowed.
    assert fail(logins, LOGIN, BACKOFFICE, now=3.0) == 1.0


def test_reaching_a_limit_is_reported_once_by_the_failure_that_reaches_it() -> None:
    logins = FailedLogins(LoginLimits(per_address=2, per_login=3))
    reported = []
    for i, address in enumerate([GUESSER, GUESSER, BACKOFFICE, "203.0.113.1"]):
        if logins.admit(LOGIN, address, now=float(i)) is None:
            reported.append(logins.failed(LOGIN, address, now=float(i)).throttles)
            logins.end(LOGIN, address)
    assert reported == [(), ("address",), ("login",), ()]


def test_what_is_kept_stays_bounded() -> None:
    logins = FailedLogins(LoginLimits(per_address=100, per_login=100, max_tracked=50))
    for i in range(500):
        fail(logins, f"login{i}", f"10.0.{i // 250}.{i % 250}", now=float(i))
    assert len(logins._by_address) <= 50
    assert len(logins._by_login) <= 50
    # Refused attempts and attempts that ended leave nothing behind.
    assert not logins._pending_address
    assert not logins._pending_login
