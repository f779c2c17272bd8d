"""Which flag changes on a member's copy of a message propagate to whose copies, and why (DESIGN.md §4).

A member's client sets or clears ``\\Seen`` or ``\\Answered`` on the member's own copy; flag sync sees
the change and asks :func:`propagation` which other copies of the same message should get the flag too.
The answer is a :class:`Plan`: one :class:`Propagation` per member whose copy gets the flag, each with
every release that carried it there, and for everyone else in the audience the reason they got nothing.

The rule, for a change by member A to flag F on A's copy of message m:

1. Only setting a flag propagates. Clearing one stays on A's copy.
2. A change the gateway made itself (``FlagEvent.by_gateway``: it set the flag while carrying out an
   earlier plan, or marking a message answered through the gateway) never propagates again. Together with
   rule 3 this is what keeps propagation from echoing back or looping: every plan is one release edge
   deep, and what it causes is marked as the gateway's own.
3. Member T's copy gets F when T is in the audience of m (DESIGN.md §3, from the directory as it is now),
   T is not A, and some release of m's portfolio with ``share_vorgaenge`` on has both A and T as members
   and a ``read_sync`` that carries F:

   - ``off`` carries nothing: the release shares no read state;
   - ``answered`` carries ``\\Answered``: a member answering marks it answered for the co-members;
   - ``seen`` carries ``\\Answered`` and ``\\Seen``: a member reading it marks it read for them too.

   ``seen`` includes ``\\Answered`` because DESIGN.md calls ``answered`` "share ``\\Answered`` only": the
   settings are steps, each sharing more than the one before.
4. Never for a copy that already carries F, and only for members who have a copy (a key in ``copies``).
5. A, too, must be in the audience of m now. A member whose copy is only waiting to be revoked may still
   flag it, but shares nothing any more, as they may no longer answer it either (DESIGN.md §5, §8).
6. A must not see m only as a blind (Bcc) participant: the others must not learn that A got it, and a
   flag that appears on their copies would tell them (DESIGN.md §3).

What rule 3 decides, spelled out:

- Releases are edges between two members, never paths: A's change reaches A's co-members and stops
  there; it never goes on to their co-members. That a co-member's copy got the flag is a change by the
  gateway (rule 2).
- The release that carries F need not be the one that lets A or T see m; both need only be in the
  audience. On GF-B's message, which the clerks of B see through "Kunde B mit GF", SB-B1 reading marks it
  read for SB-B2 when "Kunde B Sachbearbeiter" says ``seen``, whatever "Kunde B mit GF" says. A release
  setting is about how its members work together, not about one message.
- Two members linked by several releases are linked when any one of them carries F: ``off`` on one
  release takes nothing away that another release shares. Every release that carried F is named.
- When the only release linking A and T is ``off``, T gets neither flag from A, ``\\Answered`` included.
- Members in the audience who share no release with A get nothing from A, even as participants of m:
  a message from SB-A1 to SB-B1 is read by SB-A1 for SB-A2 at most, never for SB-B1 (and the reverse).
  On GF-B's message GF-A's reading reaches GF-B but not the clerks of B, who share no release with GF-A.
- A release without ``share_vorgaenge`` links nobody, whatever its ``read_sync``: it grants no
  visibility, so it has no edges to widen (DESIGN.md §4, "along the same release edges").

Out of scope here: an answer *through the gateway* (a reply the reply stage accepted and relayed) marks
every copy of the answered message in its audience ``\\Answered``, independent of any release (DESIGN.md
§4, first point; ``gateway.db.replies.mark_answered``). What this module decides is only how far a flag
that a member's client set travels. A copy that reconciliation delivers later is not this module's
business either: rule 4 plans only for copies that exist.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gateway.domain.audience import AsParticipant, audience
from gateway.domain.model import Participant, ReadSync, Release

__all__ = [
    "CARRIES",
    "CarriedBy",
    "FlagEvent",
    "Held",
    "Plan",
    "Propagation",
    "Skip",
    "Skipped",
    "SyncedFlag",
    "propagation",
]


class SyncedFlag(enum.StrEnum):
    """The flags flag sync shares; the values are IMAP's spelling, as the mailbox layer's flags."""

    SEEN = "\\Seen"
    ANSWERED = "\\Answered"


CARRIES: Mapping[ReadSync, frozenset[SyncedFlag]] = MappingProxyType(
    {
        ReadSync.OFF: frozenset(),
        ReadSync.ANSWERED: frozenset({SyncedFlag.ANSWERED}),
        ReadSync.SEEN: frozenset({SyncedFlag.ANSWERED, SyncedFlag.SEEN}),
    }
)
"""Which flags a release with this ``read_sync`` carries between its members."""


@dataclass(frozen=True, slots=True)
class FlagEvent:
    """``member_id`` set (``added``) or cleared ``flag`` on their copy of a message of ``portfolio_id``.

    ``by_gateway`` says the gateway made the change itself, so it is the end of a propagation, not the
    start of one.
    """

    member_id: int
    portfolio_id: int
    flag: SyncedFlag
    added: bool
    by_gateway: bool = False


@dataclass(frozen=True, slots=True)
class CarriedBy:
    """A release that links the acting member with the one whose copy gets the flag."""

    release_id: int
    release_name: str
    read_sync: ReadSync

    def describe(self) -> str:
        """``release "Kunde B mit GF" (read_sync seen)``."""
        return f'release "{self.release_name}" (read_sync {self.read_sync.value})'


@dataclass(frozen=True, slots=True)
class Propagation:
    """Set ``flag`` on ``member_id``'s copy, because of every release in ``via`` (at least one)."""

    member_id: int
    flag: SyncedFlag
    via: tuple[CarriedBy, ...]

    def __post_init__(self) -> None:
        if not self.via:
            raise ValueError(f"propagation to member {self.member_id} without a release that carries it")
        # Sorted and without repeats, so that equal plans compare, hash and print alike.
        ordered = tuple(sorted(set(self.via), key=lambda c: (c.release_name, c.release_id)))
        object.__setattr__(self, "via", ordered)

    def describe(self, name_of: Callable[[int], str]) -> str:
        """``\\Seen for SB-B2, carried by release "Kunde B Sachbearbeiter" (read_sync seen)``."""
        carried = " and ".join(c.describe() for c in self.via)
        return f"{self.flag.value} for {name_of(self.member_id)}, carried by {carried}"


class Held(enum.StrEnum):
    """Why a change stays on the acting member's copy altogether."""

    CLEARED = "cleared"
    BY_GATEWAY = "by-gateway"
    NOT_IN_AUDIENCE = "not-in-audience"
    BLIND = "blind"

    def describe(self) -> str:
        """The reason as a sentence."""
        return _HELD_SENTENCES[self]


class Skip(enum.StrEnum):
    """Why one member of the audience gets nothing from a change that does propagate."""

    NOT_CARRIED = "not-carried"
    NO_COPY = "no-copy"
    ALREADY_SET = "already-set"

    def describe(self) -> str:
        """The reason as a sentence."""
        return _SKIP_SENTENCES[self]


_HELD_SENTENCES: Mapping[Held, str] = MappingProxyType(
    {
        Held.CLEARED: "clearing a flag stays on the member's own copy",
        Held.BY_GATEWAY: "the gateway set this flag itself; passing it on again would echo",
        Held.NOT_IN_AUDIENCE: "the member may not see the message any more, so shares nothing about it",
        Held.BLIND: "the member got the message blind (Bcc); sharing a flag would tell the others",
    }
)
_SKIP_SENTENCES: Mapping[Skip, str] = MappingProxyType(
    {
        Skip.NOT_CARRIED: "no release shared with the acting member carries this flag",
        Skip.NO_COPY: "the member has no copy of the message yet",
        Skip.ALREADY_SET: "the copy already carries the flag",
    }
)


@dataclass(frozen=True, slots=True)
class Skipped:
    """A member of the audience other than the acting one whose copy is left as it is, and why."""

    member_id: int
    why: Skip


@dataclass(frozen=True, slots=True)
class Plan:
    """What one flag change propagates to: nothing when ``held``, else ``propagations``.

    Both ``propagations`` and ``skipped`` follow the order of the audience (participants first, see
    :meth:`gateway.domain.audience.Audience.ordered`); together they name every member of the audience
    but the acting one, unless the change is ``held``, when both are empty.
    """

    event: FlagEvent
    propagations: tuple[Propagation, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    held: Held | None = None

    @property
    def members(self) -> frozenset[int]:
        """The members whose copies get the flag."""
        return frozenset(p.member_id for p in self.propagations)

    def to(self, member_id: int) -> Propagation | None:
        """The propagation to ``member_id``, if there is one."""
        return next((p for p in self.propagations if p.member_id == member_id), None)


def propagation(
    event: FlagEvent,
    participants: Iterable[Participant],
    releases: Iterable[Release],
    copies: Mapping[int, Collection[str]],
) -> Plan:
    """The copies ``event`` propagates to, for a message with these participants under these releases.

    ``copies`` maps each member who has a copy of the message to the flags that copy carries now, in
    IMAP's spelling; the mailbox layer's flag sets can be passed as they are. Flags other than the
    synced ones are ignored. Releases of other portfolios are ignored, as by
    :func:`gateway.domain.audience.audience`.
    """
    if not event.added:
        return Plan(event, held=Held.CLEARED)
    if event.by_gateway:
        return Plan(event, held=Held.BY_GATEWAY)

    releases = tuple(releases)
    seen_by = audience(event.portfolio_id, participants, releases)
    actor = event.member_id
    if actor not in seen_by:
        return Plan(event, held=Held.NOT_IN_AUDIENCE)
    if all(isinstance(r, AsParticipant) and not r.role.visible for r in seen_by.via(actor)):
        return Plan(event, held=Held.BLIND)

    # The releases that link the actor with anyone for this flag; each is one edge from the actor.
    carrying: dict[int, list[CarriedBy]] = {}
    for release in releases:
        if (
            release.portfolio_id == event.portfolio_id
            and release.share_vorgaenge
            and actor in release.member_ids
            and event.flag in CARRIES[release.read_sync]
        ):
            for member_id in release.member_ids - {actor}:
                carrying.setdefault(member_id, []).append(
                    CarriedBy(release.id, release.name, release.read_sync)
                )

    propagations: list[Propagation] = []
    skipped: list[Skipped] = []
    for member_id in seen_by.ordered():
        if member_id == actor:
            continue
        if member_id not in carrying:
            skipped.append(Skipped(member_id, Skip.NOT_CARRIED))
        elif member_id not in copies:
            skipped.append(Skipped(member_id, Skip.NO_COPY))
        elif event.flag in copies[member_id]:
            skipped.append(Skipped(member_id, Skip.ALREADY_SET))
        else:
            propagations.append(Propagation(member_id, event.flag, tuple(carrying[member_id])))
    return Plan(event, tuple(propagations), tuple(skipped))
