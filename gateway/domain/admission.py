"""Who gets a connection slot at an SMTP listener, and whose idle slot a newcomer may take (DESIGN.md §8).

A listener has ``max_connections`` slots. One client address may hold ``max_per_client`` of them (an
IPv6 client counts by its /64, the block one subscriber gets). Sessions that have not logged in may hold
``max_unauthenticated`` (on submission fewer than all, so logged-in back offices always find a slot;
on MX nobody logs in and the cap is the listener's size). When the listener is full, a newcomer takes
the slot of the session that has been silent longest, if that session has not logged in, is not
sending a message, and has been silent for ``evict_idle_after`` seconds: idle connections cannot keep
a client from another address out, but a session that is busy or has logged in is never cut for one.
Only when no such slot exists is the newcomer told the listener is busy.

Each refusal has its own reason, so the client hears the truth: its own address holds too many
connections, or the gateway as a whole is busy, or it is shutting down.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


def client_key(address: str) -> str:
    """What connection limits count by: the IPv4 address, or the /64 network of an IPv6 address.

    One IPv6 subscriber usually holds a whole /64; counting single addresses would give an attacker
    2**64 fresh "clients". An IPv4 address mapped into IPv6 counts as itself.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address  # a Unix socket or an unknown peer: counted by its name
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(frozen=True)
class SlotLimits:
    """The connection limits of one listener."""

    max_connections: int
    max_per_client: int
    max_unauthenticated: int
    evict_idle_after: float


@dataclass(frozen=True)
class Occupant:
    """What admission needs to know of a session holding a slot."""

    authenticated: bool
    in_data: bool
    silent_since: float | None
    """When the gateway last answered and began to wait for the client; None while a command is handled."""


class Verdict(enum.Enum):
    ADMIT = "admit"
    TOO_MANY_FROM_CLIENT = "too many connections from the client's address"
    BUSY = "listener full"
    SHUTTING_DOWN = "shutting down"


@dataclass(frozen=True)
class Admission(Generic[T]):
    verdict: Verdict
    evict: T | None = None
    """The session whose slot the newcomer takes (it is told so and closed)."""


def admit(
    key: str,
    *,
    per_client: Mapping[str, int],
    occupants: Mapping[T, Occupant],
    limits: SlotLimits,
    now: float,
    closing: bool = False,
) -> Admission[T]:
    """Decide whether a new connection from ``key`` (see :func:`client_key`) gets a slot."""
    if closing:
        return Admission(Verdict.SHUTTING_DOWN)
    if per_client.get(key, 0) >= limits.max_per_client:
        return Admission(Verdict.TOO_MANY_FROM_CLIENT)
    unauthenticated = sum(1 for o in occupants.values() if not o.authenticated)
    if len(occupants) < limits.max_connections and unauthenticated < limits.max_unauthenticated:
        return Admission(Verdict.ADMIT)
    victim = longest_idle(occupants, now=now, at_least=limits.evict_idle_after)
    if victim is None:
        return Admission(Verdict.BUSY)
    return Admission(Verdict.ADMIT, evict=victim)


def longest_idle(occupants: Mapping[T, Occupant], *, now: float, at_least: float) -> T | None:
    """The session not logged in and not in DATA that has been silent longest, at least ``at_least`` s."""
    victim: T | None = None
    oldest = now - at_least
    for session, occupant in occupants.items():
        if occupant.authenticated or occupant.in_data or occupant.silent_since is None:
            continue
        if occupant.silent_since <= oldest:
            victim, oldest = session, occupant.silent_since
    return victim
