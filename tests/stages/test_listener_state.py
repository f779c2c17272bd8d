"""What one listener remembers of its clients stays bounded (gateway.stages.ingress.ListenerState)."""

from __future__ import annotations

import logging

import pytest

from gateway.stages.ingress import ListenerState


def test_the_message_rate_history_forgets_addresses_after_their_minute() -> None:
    state = ListenerState("mx", 100, 20, max_messages_per_minute=3)
    for n in range(5000):
        assert state.allow_message(f"10.0.{n // 250}.{n % 250}", now=1000.0 + n * 0.001)
    assert len(state.recent) == 5000, "all within their minute"
    assert state.allow_message("192.0.2.1", now=1070.0)
    assert list(state.recent) == ["192.0.2.1"], "a minute later the others are forgotten"


def test_the_history_never_exceeds_its_bound_even_within_one_minute() -> None:
    state = ListenerState("mx", 100, 20, max_messages_per_minute=3, max_recent_clients=1000)
    for n in range(20_000):
        state.allow_message(f"2001:db8:{n:x}::1", now=1000.0)
        assert len(state.recent) <= 1000
    assert "2001:db8:4e1f::/64" in state.recent, "the most recent addresses are the ones kept"


def test_the_rate_still_applies_to_an_address_that_keeps_sending() -> None:
    state = ListenerState("mx", 100, 20, max_messages_per_minute=3, max_recent_clients=10)
    for n in range(3):
        assert state.allow_message("192.0.2.1", now=1000.0 + n)
        state.allow_message(f"198.51.100.{n}", now=1000.0 + n)
    assert not state.allow_message("192.0.2.1", now=1010.0)
    assert state.allow_message("192.0.2.1", now=1061.0), "its first message left the window"


def test_ipv6_clients_share_the_rate_of_their_64() -> None:
    state = ListenerState("mx", 100, 20, max_messages_per_minute=2)
    assert state.allow_message("2001:db8::1", now=0.0)
    assert state.allow_message("2001:db8::2", now=0.0)
    assert not state.allow_message("2001:db8::ffff", now=0.0)


def test_the_data_budget_holds_until_released() -> None:
    state = ListenerState("mx", 100, 20, max_data_memory=1000)
    assert state.hold(600)
    assert not state.hold(500), "would exceed the budget"
    assert state.data_held == 600, "a refused hold counts nothing"
    state.release(600)
    assert state.hold(1000)


def test_limits_hit_in_a_flood_are_logged_as_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    state = ListenerState("mx", 100, 20)
    with caplog.at_level(logging.WARNING, logger="gateway.stages.ingress"):
        for n in range(1000):
            state.note("refused: listener full", f"192.0.2.{n % 200}", now=100.0 + n * 0.001)
        assert len(caplog.records) == 1, "the first is told at once, the rest counted"
        state.note("refused: listener full", "198.51.100.1", now=111.0)
    assert len(caplog.records) == 2
    assert "refused: listener full (1000x)" in caplog.records[1].getMessage()
