"""The directory and message facts the pure decisions work on, as frozen dataclasses.

These are what the storage layer hands to ``gateway.domain``: plain values, no sessions, no lazy loading.
Ids are the database's primary keys; they only have to be unique within one portfolio's data, but the
storage layer keeps them unique globally, which makes mixing portfolios impossible to miss.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ReadSync(enum.StrEnum):
    """How far a release shares read state along its edges (DESIGN.md §4)."""

    ANSWERED = "answered"
    SEEN = "seen"
    OFF = "off"


class ParticipantRole(enum.StrEnum):
    """Why a member takes part in a message; the order of the members is the order of precedence.

    ``BCC``: an envelope recipient the message's To and Cc do not name. Such a member gets a copy, but
    is invisible to everyone else: no release brings co-members in because of them (DESIGN.md §3).
    """

    SENDER = "sender"
    TO = "to"
    CC = "cc"
    BCC = "bcc"

    @property
    def visible(self) -> bool:
        """Whether the other recipients can see that this participant takes part."""
        return self is not ParticipantRole.BCC


@dataclass(frozen=True, slots=True)
class Member:
    """A person on the customer side with one address inside one portfolio."""

    id: int
    portfolio_id: int
    address: str
    display_name: str = ""

    def label(self) -> str:
        """The member as people write it: ``"SB-A1" <sb-a1@kunde-a.example>`` or the bare address."""
        return f'"{self.display_name}" <{self.address}>' if self.display_name else self.address


@dataclass(frozen=True, slots=True)
class Release:
    """A group of members of one portfolio (Freischaltung) with its flags and current members."""

    id: int
    portfolio_id: int
    name: str
    primary: bool
    share_vorgaenge: bool
    read_sync: ReadSync = ReadSync.ANSWERED
    member_ids: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class Participant:
    """A member who sent a message or was addressed by it."""

    member_id: int
    role: ParticipantRole
