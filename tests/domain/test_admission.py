"""Connection slots: per-address and global limits with their own reasons, room kept for logins, and
idle sessions that give way to newcomers (gateway.domain.admission)."""

from __future__ import annotations

import pytest

from gateway.domain.admission import Occupant, SlotLimits, Verdict, admit, client_key, longest_idle

LIMITS = SlotLimits(max_connections=4, max_per_client=2, max_unauthenticated=3, evict_idle_after=10.0)
IDLE = Occupant(authenticated=False, in_data=False, silent_since=0.0)


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::/64"),
        ("unknown", "unknown"),
    ],
)
def test_clients_are_counted_by_address_and_ipv6_by_its_64(address: str, key: str) -> None:
    assert client_key(address) == key


def test_a_client_over_its_own_limit_is_told_so_even_when_the_listener_has_room() -> None:
    decision = admit("a", per_client={"a": 2}, occupants={1: IDLE, 2: IDLE}, limits=LIMITS, now=100.0)
    assert decision.verdict is Verdict.TOO_MANY_FROM_CLIENT


def test_a_full_listener_without_idle_sessions_is_busy_not_the_clients_fault() -> None:
    busy = Occupant(authenticated=False, in_data=False, silent_since=95.0)
    occupants = dict.fromkeys(range(3), busy) | {3: Occupant(True, False, 0.0)}
    decision = admit("fresh", per_client={"a": 2, "b": 2}, occupants=occupants, limits=LIMITS, now=100.0)
    assert decision.verdict is Verdict.BUSY


def test_the_longest_silent_session_makes_room_for_a_newcomer() -> None:
    occupants = {
        "recent": Occupant(False, False, 95.0),
        "old": Occupant(False, False, 20.0),
        "older": Occupant(False, False, 10.0),
        "logged-in": Occupant(True, False, 0.0),
    }
    decision = admit("fresh", per_client={}, occupants=occupants, limits=LIMITS, now=100.0)
    assert (decision.verdict, decision.evict) == (Verdict.ADMIT, "older")


def test_sessions_that_logged_in_are_sending_or_are_being_answered_are_never_cut() -> None:
    occupants = {
        "logged-in": Occupant(True, False, 0.0),
        "in-data": Occupant(False, True, 0.0),
        "being-answered": Occupant(False, False, None),
    }
    assert longest_idle(occupants, now=100.0, at_least=10.0) is None


def test_unauthenticated_sessions_cannot_take_the_slots_kept_for_logins() -> None:
    occupants = {i: Occupant(False, False, 99.0) for i in range(3)}
    decision = admit("fresh", per_client={}, occupants=occupants, limits=LIMITS, now=100.0)
    assert decision.verdict is Verdict.BUSY, "3 of 4 slots are the most sessions without login may hold"
    decision = admit(
        "fresh", per_client={}, occupants=dict(list(occupants.items())[:2]), limits=LIMITS, now=100.0
    )
    assert decision == type(decision)(Verdict.ADMIT)


def test_nobody_is_admitted_while_shutting_down() -> None:
    assert admit("a", per_client={}, occupants={}, limits=LIMITS, now=0.0, closing=True).verdict is (
        Verdict.SHUTTING_DOWN
    )
