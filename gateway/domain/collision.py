"""The collision guard: whether a member's reply crosses a co-member's earlier answer to the same message.

Sharing lets several members answer one back-office mail (DESIGN.md §3). When SB-B2 answers after SB-B1's
copy of the message was delivered, SB-B1's mail client may not have shown that answer yet: SB-B1 writes a
second answer, and the back office gets two that may contradict each other. :func:`decide` looks at the
facts as stored and says what becomes of the new reply:

- ``relay``: nothing collides (or the release's guard is off): it goes out as any reply;
- ``hold``: it waits; the replier gets a notice and decides (send anyway, withdraw), or an admin, or the
  release's hold timeout;
- ``notify``: it goes out, and the replier is told afterwards whose answer it crossed.

An earlier answer collides with the new reply when all of these hold:

1. it answers the same message, was written by another member, and was not withdrawn;
2. it was accepted before the new reply, in the gateway's acceptance order: stored acceptance time,
   then storage id, so two replies stored in one moment are still ordered, the first goes through and
   the second collides (never both, never neither);
3. it was accepted at or after the replier's copy was delivered (the stored delivery time, or the
   copy's stored creation when no delivery was recorded). An answer accepted earlier reached the copy
   with ``\\Answered`` on its first write, so the replier could see the message was handled;
4. the new reply does not name it in In-Reply-To or References. A reply that references the co-member's
   answer was written by someone who saw it: that is a follow-up, not a collision;
5. a release that shares Vorgänge holds both members and its ``collision_guard`` is not ``off``. Where
   several do, the strictest counts (``hold`` over ``notify``), and among holding releases the shortest
   hold timeout, ``withdraw`` before ``release`` at equal timeouts (the cautious one).

Only stored times count, never a client's Date header: a client's clock says nothing about what it had
synced. Of several colliding answers the first accepted is named (it is the one the replier missed first).
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_HOLD_TIMEOUT",
    "AfterTimeout",
    "CollisionGuard",
    "Decision",
    "EarlierAnswer",
    "GuardedRelease",
    "NewReply",
    "Outcome",
    "Verdict",
    "decide",
    "default_guard",
    "format_duration",
    "hold_expired",
    "parse_duration",
]


class CollisionGuard(enum.StrEnum):
    """What a release does with a reply that crosses a co-member's answer."""

    OFF = "off"
    HOLD = "hold"
    NOTIFY = "notify"


class AfterTimeout(enum.StrEnum):
    """What becomes of a held reply nobody decided on within the release's hold timeout."""

    RELEASE = "release"
    WITHDRAW = "withdraw"


class Verdict(enum.StrEnum):
    RELAY = "relay"
    HOLD = "hold"
    NOTIFY = "notify"


class Outcome(enum.StrEnum):
    """Where a held reply stands (``held_replies.state``)."""

    HELD = "held"
    RELEASED = "released"
    WITHDRAWN = "withdrawn"
    NOTIFIED = "notified"  # relayed at once (``notify``); only the notice was owed


# A day: long enough for someone who writes in the evening to read the notice the next morning.
DEFAULT_HOLD_TIMEOUT = 24 * 3600
MAX_HOLD_TIMEOUT = 30 * 24 * 3600
_STRICTNESS = {CollisionGuard.OFF: 0, CollisionGuard.NOTIFY: 1, CollisionGuard.HOLD: 2}
_DURATION = re.compile(r"([1-9][0-9]{0,6})([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def default_guard(share_vorgaenge: bool) -> CollisionGuard:
    """A release's guard when none is set: ``hold`` where members share Vorgänge, else ``off``."""
    return CollisionGuard.HOLD if share_vorgaenge else CollisionGuard.OFF


def parse_duration(text: str) -> int:
    """Seconds of ``90s``, ``30m``, ``4h``, ``2d`` (from 1 minute to 30 days); else a ValueError."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"a hold timeout is a number and a unit (s, m, h, d) such as 4h, not {text!r}")
    seconds = int(match.group(1)) * _UNIT[match.group(2)]
    if not 60 <= seconds <= MAX_HOLD_TIMEOUT:
        raise ValueError(f"a hold timeout is between 1m and 30d, not {text!r}")
    return seconds


def format_duration(seconds: int) -> str:
    """The shortest of ``Nd``, ``Nh``, ``Nm``, ``Ns`` that says ``seconds`` exactly."""
    for unit in ("d", "h", "m"):
        if seconds % _UNIT[unit] == 0:
            return f"{seconds // _UNIT[unit]}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True, slots=True)
class GuardedRelease:
    """A release's guard settings and members, as far as the guard needs them."""

    name: str
    share_vorgaenge: bool
    guard: CollisionGuard
    member_ids: frozenset[int]
    hold_timeout: int = DEFAULT_HOLD_TIMEOUT
    after_timeout: AfterTimeout = AfterTimeout.RELEASE


@dataclass(frozen=True, slots=True)
class EarlierAnswer:
    """A stored answer to the same message: who wrote it, when it was accepted, its storage id."""

    message_pk: int
    author_id: int
    accepted_at: dt.datetime
    message_id: str | None
    withdrawn: bool = False


@dataclass(frozen=True, slots=True)
class NewReply:
    """The reply being stored, and the replier's copy of the message it answers."""

    message_pk: int
    author_id: int
    accepted_at: dt.datetime
    # Every Message-ID in the reply's In-Reply-To and References.
    names: frozenset[str]
    copy_created_at: dt.datetime
    copy_delivered_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    collides_with: EarlierAnswer | None = None
    release: GuardedRelease | None = None  # the release whose guard decided
    why: str = ""


def decide(reply: NewReply, earlier: Iterable[EarlierAnswer], releases: Sequence[GuardedRelease]) -> Decision:
    """What becomes of ``reply`` given the other stored answers to its message and the releases."""
    seen_at = reply.copy_delivered_at or reply.copy_created_at
    order = (reply.accepted_at, reply.message_pk)
    colliding = sorted(
        (
            e
            for e in earlier
            if e.author_id != reply.author_id
            and e.message_pk != reply.message_pk
            and not e.withdrawn
            and (e.accepted_at, e.message_pk) < order
            and e.accepted_at >= seen_at
            and (e.message_id is None or e.message_id not in reply.names)
        ),
        key=lambda e: (e.accepted_at, e.message_pk),
    )
    for answer in colliding:
        release = _guarding(releases, reply.author_id, answer.author_id)
        if release is None or release.guard is CollisionGuard.OFF:
            continue
        verdict = Verdict.HOLD if release.guard is CollisionGuard.HOLD else Verdict.NOTIFY
        why = (
            f"another member's answer was accepted at {answer.accepted_at.isoformat(timespec='seconds')}, "
            f"after this member's copy was delivered at {seen_at.isoformat(timespec='seconds')}, and the "
            f'reply does not reference it (release "{release.name}": collision_guard {release.guard.value})'
        )
        return Decision(verdict, answer, release, why)
    return Decision(Verdict.RELAY, why="no co-member's answer crossed this reply")


def _guarding(releases: Sequence[GuardedRelease], a: int, b: int) -> GuardedRelease | None:
    """The strictest sharing release holding both members, or None."""
    both = [r for r in releases if r.share_vorgaenge and a in r.member_ids and b in r.member_ids]
    if not both:
        return None
    return min(
        both,
        key=lambda r: (
            -_STRICTNESS[r.guard],
            r.hold_timeout,
            r.after_timeout is not AfterTimeout.WITHDRAW,
            r.name,
        ),
    )


def hold_expired(held_at: dt.datetime, timeout: int, now: dt.datetime) -> bool:
    """Whether a reply held at ``held_at`` has waited its release's whole ``timeout`` (seconds) at ``now``."""
    return now >= held_at + dt.timedelta(seconds=timeout)
