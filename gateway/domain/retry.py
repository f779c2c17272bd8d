"""The retry policy every queue worker shares: how long to wait before the next attempt, and how a
failure is written down.

Copies, flag jobs, removals and relayed mail all follow it (CONVENTIONS.md 4): one item is one
outcome; a failure, expected or not, is recorded with a message an admin can act on and retried
with exponential backoff; only then does each queue apply its own limit (copies are held, relayed
mail ends with a failure report when its lifetime is over, removals are never given up).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Schedule", "backoff", "describe"]

# A stored error is cut here: long enough for a server's multi-line reply, short enough for a list.
MAX_ERROR = 2000


class Schedule(Protocol):
    """The two settings a retry schedule is made of ([fanout] and [relay] both have them)."""

    @property
    def retry_base(self) -> float: ...

    @property
    def retry_max(self) -> float: ...


def backoff(attempts: int, schedule: Schedule) -> float:
    """Seconds before attempt ``attempts + 1``: retry_base doubled per attempt, capped at retry_max."""
    # The exponent is capped too: 2 ** 10_000 is a float overflow, and no schedule waits that long.
    return float(min(schedule.retry_max, schedule.retry_base * 2 ** min(max(attempts - 1, 0), 64)))


def describe(exc: BaseException) -> str:
    """One line for the queue's ``last_error``: the kind of error and what it says, never empty."""
    text = " ".join(str(exc).split())
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:MAX_ERROR]
