"""Failed logins counted per client address and per login: how long a failure's answer waits, who is refused.

Guessing a back office's password must be slow and visible, and must never lock the back office out
(issue 12, item 4). Three rules, over a sliding window of ``window`` seconds:

1. Each failure's answer is held back ``delay`` seconds, doubling with every further failure from the
   same address, up to ``max_delay``: one connection guesses slowly.
2. An address with ``per_address`` failures is refused outright, before any password check: many
   connections from one address do not guess faster.
3. A login with ``per_login`` failures from all addresses together is refused to every address that
   failed for it (or has an attempt for it under way): a guesser spread over many addresses gets one
   try per address and window. An address that has not failed for the login still gets through, so the
   back office's own server keeps logging in while someone elsewhere guesses its password.

Attempts under way count as failures until they end, so that twenty connections opened at once cannot
all reach the password check before the first failure is counted. A right password clears the address's
failures for that login. What is kept is bounded: old failures fall out of the window, and beyond
``max_tracked`` addresses or logins the oldest are forgotten.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["FailedLogins", "Failure", "LoginLimits"]

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """The settings of ``[limits]`` that govern failed logins (see gateway/config/sections.py)."""

    delay: float = 1.0
    max_delay: float = 16.0
    window: float = 900.0
    per_address: int = 10
    per_login: int = 30
    max_tracked: int = 100_000


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed login as counted: how long its answer waits, the counts, and what it newly throttles."""

    delay: float
    address_failures: int
    login_failures: int
    throttles: tuple[str, ...]  # "address", "login": limits this failure reached


@dataclass
class FailedLogins:
    """The failures of one listener; every method takes ``now`` (monotonic seconds) and does no I/O."""

    limits: LoginLimits = field(default_factory=LoginLimits)
    _by_address: dict[str, deque[float]] = field(default_factory=dict)
    _by_login: dict[str, deque[tuple[float, str]]] = field(default_factory=dict)
    _pending_address: Counter[str] = field(default_factory=Counter)
    _pending_login: Counter[tuple[str, str]] = field(default_factory=Counter)

    def admit(self, login: str, address: str, now: float) -> str | None:
        """Start an attempt; None when it may reach the password check, else why it is refused.

        An admitted attempt must be ended with :meth:`failed` or :meth:`succeeded`, then :meth:`end`.
        """
        limits = self.limits
        by_address = self._expire(self._by_address, address, now, keep=False)
        if len(by_address) + self._pending_address[address] >= limits.per_address:
            return f"{len(by_address)} failed logins from {address} in {limits.window:.0f} s"
        by_login = self._expire_login(login, now, keep=False)
        pending_here = sum(n for (name, _), n in self._pending_login.items() if name == login)
        if len(by_login) + pending_here >= limits.per_login:
            tried_here = self._pending_login[(login, address)] or any(a == address for _, a in by_login)
            if tried_here:
                return f"{len(by_login)} failed logins for {login} in {limits.window:.0f} s"
        self._pending_address[address] += 1
        self._pending_login[(login, address)] += 1
        return None

    def end(self, login: str, address: str) -> None:
        """The attempt admitted for ``login`` from ``address`` is over (whatever its outcome)."""
        _decrement(self._pending_address, address)
        _decrement(self._pending_login, (login, address))

    def failed(self, login: str, address: str, now: float) -> Failure:
        """Count a wrong password (or unknown login) from ``address``."""
        limits = self.limits
        by_address = self._expire(self._by_address, address, now)
        by_login = self._expire_login(login, now)
        by_address.append(now)
        by_login.append((now, address))
        self._bound()
        throttles = tuple(
            what
            for what, count, limit in (
                ("address", len(by_address), limits.per_address),
                ("login", len(by_login), limits.per_login),
            )
            if count == limit
        )
        delay = min(limits.delay * 2 ** (len(by_address) - 1), limits.max_delay)
        return Failure(delay, len(by_address), len(by_login), throttles)

    def succeeded(self, login: str, address: str) -> None:
        """The right password: this address's failures for ``login`` are forgiven."""
        by_login = self._by_login.get(login)
        if by_login is None:
            return
        forgiven = sum(1 for _, a in by_login if a == address)
        kept = deque((t, a) for t, a in by_login if a != address)
        if kept:
            self._by_login[login] = kept
        else:
            del self._by_login[login]
        by_address = self._by_address.get(address)
        if by_address is not None:
            for _ in range(min(forgiven, len(by_address))):
                by_address.pop()
            if not by_address:
                del self._by_address[address]

    def _expire(
        self, table: dict[str, deque[float]], key: str, now: float, *, keep: bool = True
    ) -> deque[float]:
        """The failures of ``key`` within the window; with ``keep`` False none is stored for a new key."""
        times = table.setdefault(key, deque()) if keep else table.get(key, deque())
        while times and times[0] <= now - self.limits.window:
            times.popleft()
        if not times and not keep:
            table.pop(key, None)
        return times

    def _expire_login(self, login: str, now: float, *, keep: bool = True) -> deque[tuple[float, str]]:
        times = self._by_login.setdefault(login, deque()) if keep else self._by_login.get(login, deque())
        while times and times[0][0] <= now - self.limits.window:
            times.popleft()
        if not times and not keep:
            self._by_login.pop(login, None)
        return times

    def _bound(self) -> None:
        # Beyond the bound the oldest keys (dicts keep insertion order) are forgotten; a guesser who can
        # make us forget must have used max_tracked addresses or login names within the window.
        for table in (self._by_address, self._by_login):
            while len(table) > self.limits.max_tracked:
                del table[next(iter(table))]


def _decrement(counter: Counter[K], key: K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
