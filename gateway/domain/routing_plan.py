"""The routing plan: what becomes of a submitted message, decided in one place from facts read once.

The chain, in the order the submission listener and acceptance go through it: which envelope
recipients RCPT TO refuses (no member of the portfolio); whether the rules refuse the message (a
``reject`` rule, or a portfolio other than the back office's own, DESIGN.md §1); the Vorgang it belongs
to (DESIGN.md §6); its participants, with the members a rule adds and the addresses a rule adds that are
no members (left out); its audience with every member's reasons (DESIGN.md §3); and whether it is
stored for fan-out or held in quarantine by a rule.

Acceptance plans every message of a batch with :func:`plan_submissions`, and ``gateway rules test``
prints the plan of one message from :func:`plan_submission`: the dry run shows by construction what
acceptance does. Nothing here reads anything. :func:`lookups` says what the plans of some messages need
to know, the storage layer reads exactly that into :class:`RoutingFacts` in one go
(``gateway.db.acceptance.routing_facts``), and the plans decide on those facts alone.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.domain.audience import Audience, audience
from gateway.domain.model import Participant, Release
from gateway.domain.parsing import ParsedMessage
from gateway.domain.rules import Decision, Verdict, route_participants
from gateway.domain.threading import Found, VorgangHints, choose_vorgang, vorgang_hints

__all__ = [
    "Lookups",
    "Refused",
    "Routed",
    "RoutingFacts",
    "RoutingPlan",
    "lookups",
    "plan_submission",
    "plan_submissions",
    "rules_refusal",
]


@dataclass(frozen=True, slots=True)
class Routed:
    """A submitted message as the plan sees it: its envelope recipients, its header, the rules' decision.

    ``message_id`` is the message's own Message-ID, or the one the gateway gives a message without one:
    a later message planned with it may answer it.
    """

    recipients: tuple[str, ...]
    parsed: ParsedMessage
    decision: Decision
    message_id: str

    @property
    def hints(self) -> VorgangHints:
        """What the message says about its Vorgang, with the key the rules derived."""
        return vorgang_hints(
            explicit_header=self.parsed.vorgang_header,
            in_reply_to=self.parsed.in_reply_to,
            references=self.parsed.references,
            subject=self.parsed.subject,
            key=self.decision.vorgang_key,
        )


@dataclass(frozen=True, slots=True)
class Lookups:
    """What the plans of some messages of one portfolio need read: the Vorgänge their references,
    thread ids and keys may name, and the member ids of their recipients and of the members rules add."""

    references: frozenset[str] = frozenset()
    message_ids: frozenset[str] = frozenset()
    keys: frozenset[str] = frozenset()
    addresses: frozenset[str] = frozenset()


def lookups(messages: Iterable[Routed]) -> Lookups:
    """Everything the plans of ``messages`` look up, for one set-based read of each kind."""
    references: set[str] = set()
    message_ids: set[str] = set()
    keys: set[str] = set()
    addresses: set[str] = set()
    for message in messages:
        hints = message.hints
        references.update(r for r in (hints.explicit, *hints.subject_references) if r)
        message_ids.update(hints.message_ids)
        if hints.key:
            keys.add(hints.key)
        addresses.update(message.recipients)
        addresses.update(p.address for p in message.decision.participants)
    return Lookups(frozenset(references), frozenset(message_ids), frozenset(keys), frozenset(addresses))


def _frozen(mapping: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class RoutingFacts:
    """What the directory and the stored Vorgänge of one portfolio say, as far as some plans need it.

    ``portfolio`` is the name of the portfolio the back office submits into. ``members`` maps addresses
    to member ids (at least those :class:`Lookups` named; any other address is no member). ``releases``
    holds at least every release that shares Vorgänge and contains one of those members: only such a
    release can widen an audience. The three ``vorgaenge_by_…`` mappings give the Vorgang id of each
    known reference, Message-ID and rule-derived key of the portfolio.

    ``opened`` counts the Vorgänge that plans made earlier on these facts open (see :meth:`after`).
    """

    portfolio_id: int
    portfolio: str
    members: Mapping[str, int] = field(default_factory=dict, hash=False)
    releases: tuple[Release, ...] = ()
    vorgaenge_by_reference: Mapping[str, int] = field(default_factory=dict, hash=False)
    vorgaenge_by_message_id: Mapping[str, int] = field(default_factory=dict, hash=False)
    vorgaenge_by_key: Mapping[str, int] = field(default_factory=dict, hash=False)
    opened: int = 0

    def __post_init__(self) -> None:
        # Read-only copies: the caller's dicts must not change facts a plan was made on.
        for name in ("members", "vorgaenge_by_reference", "vorgaenge_by_message_id", "vorgaenge_by_key"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        object.__setattr__(self, "releases", tuple(self.releases))

    def after(self, plan: RoutingPlan) -> RoutingFacts:
        """The facts as the next message of the same batch finds them once ``plan`` is carried out:
        its Message-ID names its Vorgang, and a Vorgang it opens is known (by its key, if it has one)."""
        by_message_id, by_key = dict(self.vorgaenge_by_message_id), dict(self.vorgaenge_by_key)
        _learn(plan, by_message_id, by_key)
        return dataclasses.replace(
            self,
            vorgaenge_by_message_id=by_message_id,
            vorgaenge_by_key=by_key,
            opened=self.opened + (1 if plan.opens_vorgang else 0),
        )


def _learn(plan: RoutingPlan, by_message_id: dict[str, int], by_key: dict[str, int]) -> None:
    """What the messages after ``plan`` in its batch know of it (``RoutingFacts.after``)."""
    by_message_id[plan.message_id] = plan.vorgang_id
    if plan.opens_vorgang and plan.key is not None:
        by_key[plan.key] = plan.vorgang_id


class Refused(enum.StrEnum):
    """Why the submission listener refuses a message instead of storing it."""

    NO_MEMBER = "no recipient is a member"  # every RCPT TO is refused: the message is never sent
    BY_RULE = "a rule rejects it"  # the rule's answer, at the end of DATA
    OTHER_PORTFOLIO = "a rule routes it to another portfolio"


def rules_refusal(decision: Decision, portfolio: str) -> Refused | None:
    """Why the rules refuse a message the back office submits into ``portfolio``; None: they do not.

    A rule naming another portfolio cannot move mail across tenants (DESIGN.md §1): such mail is refused
    rather than misfiled.
    """
    if decision.verdict is Verdict.REJECT and decision.answer is not None:
        return Refused.BY_RULE
    if decision.portfolio is not None and decision.portfolio != portfolio:
        return Refused.OTHER_PORTFOLIO
    return None


@dataclass(frozen=True, slots=True)
class RoutingPlan:
    """What becomes of one submitted message.

    ``vorgang_id`` is the Vorgang the message belongs to; a negative one is a Vorgang this message
    opens, numbered -1, -2, … in the order the plans of one batch open them, and stored with ``key``
    (the rule-derived key, or None). ``skipped`` are addresses a rule adds as participants that are no
    members of the portfolio; they are left out.
    """

    message_id: str
    decision: Decision
    refused_recipients: tuple[str, ...]
    refused: Refused | None
    found: Found
    vorgang_id: int
    key: str | None
    participants: tuple[Participant, ...]
    skipped: tuple[str, ...]
    audience: Audience

    @property
    def stored(self) -> bool:
        """Whether the message is stored (and answered 250), rather than refused in the session."""
        return self.refused is None

    @property
    def quarantined(self) -> bool:
        """Stored, but held for an admin: no copies until it is released."""
        return self.decision.verdict is Verdict.QUARANTINE

    @property
    def opens_vorgang(self) -> bool:
        """Whether this message opens its Vorgang (a later one of its batch may join it, by a negative id)."""
        return self.found is Found.NEW

    @property
    def copies(self) -> tuple[int, ...]:
        """The members who get a copy now, in the audience's order: none while it is quarantined."""
        return () if self.quarantined else self.audience.ordered()


def plan_submission(message: Routed, facts: RoutingFacts) -> RoutingPlan:
    """The plan of ``message`` on ``facts``; see the module docstring for the chain it decides."""
    return _plan(message, facts, facts.vorgaenge_by_message_id, facts.vorgaenge_by_key, facts.opened)


def plan_submissions(messages: Sequence[Routed], facts: RoutingFacts) -> list[RoutingPlan]:
    """The plans of messages submitted together, in order, on facts read once for all of them.

    Each message is planned as if the ones before it were stored already: a message answering an
    earlier one of the batch joins its Vorgang, and one with the key of a Vorgang an earlier one opens
    joins that. The result is ``plan_submission`` of each message on the facts ``RoutingFacts.after``
    the plans before it; what those add is kept in one pair of dicts here rather than copied per message.
    """
    by_message_id, by_key = dict(facts.vorgaenge_by_message_id), dict(facts.vorgaenge_by_key)
    opened = facts.opened
    plans: list[RoutingPlan] = []
    for message in messages:
        plan = _plan(message, facts, by_message_id, by_key, opened)
        plans.append(plan)
        _learn(plan, by_message_id, by_key)
        opened += 1 if plan.opens_vorgang else 0
    return plans


def _plan(
    message: Routed,
    facts: RoutingFacts,
    by_message_id: Mapping[str, int],
    by_key: Mapping[str, int],
    opened: int,
) -> RoutingPlan:
    """``plan_submission`` with the Vorgänge known by Message-ID and key, and the count of Vorgänge
    opened before, as the batch has them so far."""
    members = facts.members
    refused_recipients = tuple(a for a in message.recipients if a not in members)
    refused: Refused | None
    if len(refused_recipients) == len(message.recipients):
        refused = Refused.NO_MEMBER
    else:
        refused = rules_refusal(message.decision, facts.portfolio)

    hints = message.hints
    found, known = choose_vorgang(
        hints,
        known_references=facts.vorgaenge_by_reference,
        known_message_ids=by_message_id,
        known_keys=by_key,
    )
    vorgang_id, key = (known, None) if known is not None else (-(opened + 1), hints.key)

    parsed = message.parsed
    participants, skipped = route_participants(
        message.recipients, set(parsed.cc), members, message.decision.participants, to=parsed.to
    )
    return RoutingPlan(
        message_id=message.message_id,
        decision=message.decision,
        refused_recipients=refused_recipients,
        refused=refused,
        found=found,
        vorgang_id=vorgang_id,
        key=key,
        participants=tuple(participants),
        skipped=tuple(skipped),
        audience=audience(facts.portfolio_id, participants, facts.releases),
    )
