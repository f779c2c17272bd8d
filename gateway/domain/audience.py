"""Who may see a message, and why (DESIGN.md §3).

    audience(m) = participants(m)
                ∪ ⋃ { members(r) : r in releases of portfolio(m), r.share_vorgaenge,
                                   members(r) ∩ visible(m) ≠ ∅ }

where visible(m) are the participants everyone can see: the sender and those named in To or Cc. A
blind participant (an envelope recipient the header does not name: Bcc) gets a copy of their own, but
brings nobody in: their co-members must not learn they got it, let alone get it because of them. A
blind participant who is also co-member of a visible one is in the audience for both reasons.

The result keeps every reason a member is in the audience, not just the fact, so that fan-out can say
why a copy was delivered, reconciliation can tell which copies lose their last reason when the directory
changes, and an admin can ask "why does GF-A see this?" and get a sentence back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeAlias

from gateway.domain.model import Participant, ParticipantRole, Release

# The enum's declaration order is the order of precedence (sender, to, cc); index it once.
_ROLE_RANK: Mapping[ParticipantRole, int] = MappingProxyType(
    {role: i for i, role in enumerate(ParticipantRole)}
)


@dataclass(frozen=True, slots=True)
class AsParticipant:
    """The member sent the message or was addressed by it."""

    role: ParticipantRole

    def describe(self, name_of: Callable[[int], str]) -> str:
        """``participant (to)``; ``name_of`` is accepted so every reason can be described alike."""
        return f"participant ({self.role.value})"


@dataclass(frozen=True, slots=True)
class SharedThrough:
    """The member shares a release with ``share_vorgaenge`` on with the participant ``because_of``."""

    release_id: int
    release_name: str
    because_of: int

    def describe(self, name_of: Callable[[int], str]) -> str:
        """``shared through release "Kunde B mit GF" because GF-B takes part``."""
        return f'shared through release "{self.release_name}" because {name_of(self.because_of)} takes part'


Reason: TypeAlias = AsParticipant | SharedThrough


def _reason_key(reason: Reason) -> tuple[int, int, str, int, int]:
    # Participant reasons come first, in role order; shared reasons by release name and then by the
    # participant who brings the release in. The release id only breaks ties between releases that
    # happen to carry the same name, so that the order never depends on the order of the input.
    if isinstance(reason, AsParticipant):
        return (0, _ROLE_RANK[reason.role], "", 0, 0)
    return (1, 0, reason.release_name, reason.because_of, reason.release_id)


def _member_key(member_id: int, reasons: tuple[Reason, ...]) -> tuple[int, int, str, int]:
    # Reasons are sorted, so the first one is the member's strongest role or, for a shared-only member,
    # the release that comes first by name.
    first = reasons[0]
    if isinstance(first, AsParticipant):
        return (0, _ROLE_RANK[first.role], "", member_id)
    return (1, 0, first.release_name, member_id)


@dataclass(frozen=True, slots=True)
class Audience:
    """Every member who may see one message of one portfolio, each with every reason why."""

    portfolio_id: int
    # Left out of the hash because a mapping is not hashable; equal audiences still hash equally.
    reasons: Mapping[int, tuple[Reason, ...]] = field(hash=False)

    def __post_init__(self) -> None:
        # Normalise into a read-only copy: the caller's dict must not be able to change a frozen value,
        # and storing members and reasons in their documented order makes repr and iteration stable.
        normalised = {
            member_id: tuple(sorted(set(rs), key=_reason_key)) for member_id, rs in self.reasons.items()
        }
        if empty := sorted(member_id for member_id, rs in normalised.items() if not rs):
            raise ValueError(f"audience members without a reason: {empty}")
        ordered = sorted(normalised, key=lambda member_id: _member_key(member_id, normalised[member_id]))
        object.__setattr__(self, "reasons", MappingProxyType({m: normalised[m] for m in ordered}))

    @property
    def members(self) -> frozenset[int]:
        """The ids of every member who may see the message."""
        return frozenset(self.reasons)

    def __contains__(self, member_id: object) -> bool:
        return member_id in self.reasons

    def via(self, member_id: int) -> tuple[Reason, ...]:
        """Every reason ``member_id`` may see the message; empty if it may not."""
        return self.reasons.get(member_id, ())

    def shared_only(self) -> frozenset[int]:
        """The members who see the message only because of a release, not as participants."""
        return frozenset(
            member_id
            for member_id, reasons in self.reasons.items()
            if not any(isinstance(r, AsParticipant) for r in reasons)
        )

    def ordered(self) -> tuple[int, ...]:
        """Participants (sender, to, cc, then by id), then shared-only members by release name and id."""
        return tuple(self.reasons)


def audience(portfolio_id: int, participants: Iterable[Participant], releases: Iterable[Release]) -> Audience:
    """The audience of a message of ``portfolio_id`` with these participants under these releases.

    Only visible participants (sender, To, Cc) bring in the members of their sharing releases.

    Releases of other portfolios are ignored rather than rejected: the caller may hand over a wider
    slice of the directory than one portfolio, and nothing ever crosses portfolios (DESIGN.md §1).
    """
    participants = tuple(participants)
    found: dict[int, set[Reason]] = {}
    for participant in participants:
        # A set keeps each role once when the same member is, say, both in To and in Cc twice.
        found.setdefault(participant.member_id, set()).add(AsParticipant(participant.role))
    participant_ids = frozenset(p.member_id for p in participants if p.role.visible)

    for release in releases:
        if release.portfolio_id != portfolio_id or not release.share_vorgaenge:
            continue
        for because_of in release.member_ids & participant_ids:
            for member_id in release.member_ids:
                # "Because I take part myself" is already said by AsParticipant; repeating it as a
                # release reason would only make a participant look reachable through that release.
                if member_id != because_of:
                    found.setdefault(member_id, set()).add(
                        SharedThrough(release.id, release.name, because_of)
                    )

    return Audience(portfolio_id, {member_id: tuple(reasons) for member_id, reasons in found.items()})
