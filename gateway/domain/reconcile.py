"""Reconciliation: what one message's copies must become after the directory changed (DESIGN.md §3).

Visibility is computed from the current directory, so it applies retroactively: when a member joins a
release that shares Vorgänge, or sharing is switched on, existing messages become visible to more
members (their copies are back-filled); when a member leaves, a release stops sharing or is deleted,
copies that nothing allows any more are revoked, in whatever folder the member put them.

:func:`plan_message` compares a message's copies with its audience under the directory as it is now and
says, per member, what to do, with the reason. It is pure: the storage layer hands it the message's
facts and the portfolio's releases and applies the plan in the same transaction it read them in, so a
copy the member is still entitled to can never be revoked (the audience is the one authority for that).

Per release, an admin chooses what a newly entitled member receives (``backfill``: ``all``, the default,
because the seed's feature applies to existing Vorgänge; ``days:N``, messages received in the last N
days; ``none``) and whether copies a member loses through that release are removed (the default) or
kept. A participant always has a copy, whatever any release says: the message was theirs.

Flags of a back-filled copy are the shared state of the message now: ``\\Answered`` when any copy of
the audience is answered (it is shared with everyone, DESIGN.md §4), ``\\Seen`` when a co-member of a
release with ``read_sync = seen`` that links the two has read it.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.domain.audience import AsParticipant, Reason, SharedThrough, audience
from gateway.domain.model import Participant, ReadSync, Release
from gateway.domain.readsync import SyncedFlag

__all__ = [
    "Backfill",
    "Backfilled",
    "ExistingCopy",
    "Kept",
    "MessageFacts",
    "MessagePlan",
    "NotBackfilled",
    "ReleasePolicy",
    "Revoked",
    "RevokedCopies",
    "plan_message",
]

_DAYS = re.compile(r"days:([1-9][0-9]{0,4})")


@dataclass(frozen=True, slots=True)
class Backfill:
    """What a member newly entitled through a release receives of the existing messages.

    ``days`` None with ``enabled``: every message (``all``); a number: messages received in the last
    that many days (``days:N``); not ``enabled``: none (``none``).
    """

    enabled: bool = True
    days: int | None = None

    @classmethod
    def parse(cls, text: str) -> Backfill:
        """``all``, ``none`` or ``days:N`` (N from 1 to 99999); anything else is a ValueError."""
        value = text.strip().lower()
        if value == "all":
            return cls()
        if value == "none":
            return cls(enabled=False)
        if match := _DAYS.fullmatch(value):
            return cls(days=int(match.group(1)))
        raise ValueError(f'backfill must be "all", "none" or "days:N" (N from 1 to 99999), not {text!r}')

    def __str__(self) -> str:
        if not self.enabled:
            return "none"
        return "all" if self.days is None else f"days:{self.days}"

    def admits(self, received_at: dt.datetime, now: dt.datetime) -> bool:
        if not self.enabled:
            return False
        return self.days is None or received_at >= now - dt.timedelta(days=self.days)


class RevokedCopies(enum.StrEnum):
    """What happens to the copies a member loses through a release (the directory's ``revoked_copies``)."""

    REMOVE = "remove"
    KEEP = "keep"


@dataclass(frozen=True, slots=True)
class ReleasePolicy:
    """A release's reconciliation settings; the defaults are what the seed's feature asks for."""

    backfill: Backfill = field(default_factory=Backfill)
    remove_revoked: bool = True

    @classmethod
    def of(cls, backfill: str, revoked_copies: str) -> ReleasePolicy:
        """The policy as the directory stores it (``"days:30"``, ``"keep"``)."""
        return cls(Backfill.parse(backfill), RevokedCopies(revoked_copies) is RevokedCopies.REMOVE)

    @property
    def revoked_copies(self) -> RevokedCopies:
        return RevokedCopies.REMOVE if self.remove_revoked else RevokedCopies.KEEP


@dataclass(frozen=True, slots=True)
class ExistingCopy:
    """A member's copy of the message as stored: ``live`` unless it was revoked before."""

    member_id: int
    live: bool = True
    seen: bool = False
    answered: bool = False
    shared_via: int | None = None
    """The release the copy was delivered through (None: as a participant, or not known)."""


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """One message as reconciliation needs it."""

    message_id: int
    portfolio_id: int
    received_at: dt.datetime
    participants: tuple[Participant, ...]
    copies: tuple[ExistingCopy, ...] = ()
    author: int | None = None
    """The member who wrote the message through the gateway (a reply, a new Vorgang): their own mail
    client keeps it in Sent, so they get no copy, though they are in the audience as its sender."""


@dataclass(frozen=True, slots=True)
class Backfilled:
    """Give ``member_id`` a copy (with ``flags``), because of ``reasons``; ``via`` is the release to name."""

    member_id: int
    reasons: tuple[Reason, ...]
    flags: frozenset[SyncedFlag]
    via: int | None


@dataclass(frozen=True, slots=True)
class NotBackfilled:
    """``member_id`` may see the message now but gets no copy: every release that grants it says so."""

    member_id: int
    why: str


@dataclass(frozen=True, slots=True)
class Revoked:
    """Remove ``member_id``'s copy from every folder of their mailbox; nothing allows it any more."""

    member_id: int
    shared_via: int | None


@dataclass(frozen=True, slots=True)
class Kept:
    """``member_id`` may no longer see the message, but the release it came through keeps such copies."""

    member_id: int
    shared_via: int


@dataclass(frozen=True, slots=True)
class MessagePlan:
    message_id: int
    backfill: tuple[Backfilled, ...] = ()
    revoke: tuple[Revoked, ...] = ()
    kept: tuple[Kept, ...] = ()
    not_backfilled: tuple[NotBackfilled, ...] = ()

    @property
    def changes(self) -> bool:
        """Whether applying the plan changes anything in a mailbox."""
        return bool(self.backfill or self.revoke)


def plan_message(
    facts: MessageFacts,
    releases: Iterable[Release],
    policies: Mapping[int, ReleasePolicy],
    now: dt.datetime,
    *,
    gone: Mapping[int, ReleasePolicy] | None = None,
) -> MessagePlan:
    """The plan for one message under ``releases`` as they are now.

    ``policies`` are the settings of those releases (a release without an entry has the defaults);
    ``gone`` the settings of releases deleted since the copies were made, so that a deleted release
    that kept its copies still keeps them. Members are planned in id order, so equal input gives an
    equal plan.
    """
    current = tuple(releases)
    allowed = audience(facts.portfolio_id, facts.participants, current)
    live = {c.member_id: c for c in facts.copies if c.live}
    backfill: list[Backfilled] = []
    not_backfilled: list[NotBackfilled] = []
    for member_id in sorted(allowed.members - live.keys() - {facts.author}):
        reasons = allowed.via(member_id)
        if any(isinstance(r, AsParticipant) for r in reasons):
            backfill.append(Backfilled(member_id, reasons, _flags(member_id, live, current), None))
            continue
        granting = [r for r in reasons if isinstance(r, SharedThrough)]
        admitting = [
            r
            for r in granting
            if policies.get(r.release_id, _DEFAULT).backfill.admits(facts.received_at, now)
        ]
        if admitting:
            backfill.append(
                Backfilled(member_id, reasons, _flags(member_id, live, current), admitting[0].release_id)
            )
        else:
            settings = sorted({str(policies.get(r.release_id, _DEFAULT).backfill) for r in granting})
            not_backfilled.append(
                NotBackfilled(member_id, f"backfill {' / '.join(settings)} of the releases that grant it")
            )
    revoke: list[Revoked] = []
    kept: list[Kept] = []
    for member_id in sorted(live.keys() - allowed.members):
        via = live[member_id].shared_via
        policy = _policy_of(via, policies, gone or {})
        if via is not None and not policy.remove_revoked:
            kept.append(Kept(member_id, via))
        else:
            revoke.append(Revoked(member_id, via))
    return MessagePlan(facts.message_id, tuple(backfill), tuple(revoke), tuple(kept), tuple(not_backfilled))


_DEFAULT = ReleasePolicy()


def _policy_of(
    release_id: int | None, policies: Mapping[int, ReleasePolicy], gone: Mapping[int, ReleasePolicy]
) -> ReleasePolicy:
    if release_id is None:
        return _DEFAULT
    return policies.get(release_id) or gone.get(release_id) or _DEFAULT


def _flags(
    member_id: int, live: Mapping[int, ExistingCopy], releases: Sequence[Release]
) -> frozenset[SyncedFlag]:
    """The shared flags a new copy of ``member_id`` starts with (see the module docstring)."""
    flags: set[SyncedFlag] = set()
    if any(copy.answered for copy in live.values()):
        flags.add(SyncedFlag.ANSWERED)
    for release in releases:
        if release.read_sync != ReadSync.SEEN or member_id not in release.member_ids:
            continue
        if any(live[other].seen for other in release.member_ids if other in live and other != member_id):
            flags.add(SyncedFlag.SEEN)
            break
    return frozenset(flags)
