"""Rule replay: what a candidate rule set would have made of stored mail, against the live rules.

``gateway rules replay`` (``gateway.routing.replay``) reads a portfolio's stored back-office messages in
order and hands each here twice, on the same facts: once decided by the live rules and once by the
candidate. Each :class:`World` plans with the one routing plan acceptance uses
(``gateway.domain.routing_plan.plan_submission``) and carries its own Vorgang assignments forward: a rule
that re-keys claim numbers moves a message, and every later message answering it or carrying its key
moves with it, in that world only. A world keeps only where it departs from what was stored (an overlay
over the stored Vorgänge), so its memory grows with the differences, never with the span.

The difference between the two worlds is the candidate's doing: it is attributed to rules and counted
(:class:`Report`). Where even the live world no longer reproduces what was stored (the directory changed
since, or the live rules did), that is reported apart and not counted as the candidate's.

A Vorgang is named across worlds by :data:`VorgangRef`: the id of a stored Vorgang, or, for one a world
opens that was never stored, ``"new:"`` and the gateway id of the message that opens it. A Vorgang a
world opens with the same message that opened it in the store is that stored Vorgang.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway.domain.model import Release
from gateway.domain.routing_plan import Routed, RoutingFacts, RoutingPlan, lookups, plan_submission
from gateway.domain.rules import Decision, Rule

__all__ = [
    "BatchFacts",
    "Change",
    "ChangeKind",
    "History",
    "Outcome",
    "Replay",
    "Report",
    "VorgangRef",
    "World",
    "changes",
    "stored_outcome",
]

VorgangRef = int | str
"""A stored Vorgang's id, or ``"new:<gateway id>"``: one that message opens, never stored."""

EXAMPLES = 5  # examples kept per rule and kind of change
NO_RULE = "(no rule)"


class ChangeKind(enum.StrEnum):
    """What differs for one message between two plans, in the order reports list them."""

    VERDICT = "verdict"
    VORGANG = "vorgang"
    KEY = "vorgang key"
    PARTICIPANTS = "participants"
    AUDIENCE = "audience"


@dataclass(frozen=True, slots=True)
class History:
    """What happened to one stored message: what acceptance stored, as it stands in the database now.

    ``opened`` says whether this message opened its Vorgang (it is the Vorgang's first message);
    ``key`` is then the Vorgang's rule-derived key. ``copies`` are the members holding a copy that is
    not revoked.
    """

    row: int  # the message's row id: the order of acceptance
    gateway_id: str
    message_id: str
    subject: str
    vorgang_id: int
    opened: bool
    key: str | None
    quarantined: bool
    participants: frozenset[tuple[int, str]]
    copies: frozenset[int]


@dataclass(frozen=True, slots=True)
class BatchFacts:
    """What the plans of one batch of messages may look up, read once for the batch.

    The stored Vorgänge are known with the row of the message that made them known (a Message-ID with
    its message's row, a key with the row of its Vorgang's first message): a message is planned only on
    what was stored before it. Members and releases are the directory as it is now, as for acceptance.
    """

    portfolio_id: int
    portfolio: str
    members: Mapping[str, int] = field(default_factory=dict)
    releases: tuple[Release, ...] = ()
    by_reference: Mapping[str, int] = field(default_factory=dict)
    by_message_id: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # (row, Vorgang)
    by_key: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # (first row, Vorgang)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One message's plan in one world, in the terms the worlds are compared in."""

    plan: RoutingPlan
    vorgang: VorgangRef | None  # None: not stored (refused)

    @property
    def verdict(self) -> str:
        if self.plan.refused is not None:
            return f"refused ({self.plan.refused.value})"
        return self.plan.decision.verdict.value

    @property
    def participants(self) -> frozenset[tuple[int, str]]:
        return frozenset((p.member_id, p.role.value) for p in self.plan.participants)

    @property
    def audience(self) -> frozenset[int]:
        return frozenset(self.plan.audience.members)

    @property
    def opened_key(self) -> str | None:
        """The key of the Vorgang this message opens in its world, if it opens one with a key."""
        return self.plan.key if self.vorgang is not None and self.plan.opens_vorgang else None


def stored_outcome(history: History) -> dict[ChangeKind, object]:
    """The stored facts of a message in the comparable terms of :meth:`World.outcome_terms`."""
    return {
        ChangeKind.VERDICT: "quarantine" if history.quarantined else "accept",
        ChangeKind.VORGANG: history.vorgang_id,
        ChangeKind.KEY: history.key if history.opened else None,
        ChangeKind.PARTICIPANTS: history.participants,
        ChangeKind.AUDIENCE: history.copies,
    }


class World:
    """One rule set's replay of the stored mail: plans each message and carries its Vorgänge forward.

    ``_moved`` and ``_keys`` hold only where this world departs from the store: the Vorgang of a
    message it placed elsewhere (None: it did not store it), and a key it opened elsewhere or not at
    all. ``_cause`` remembers which rule moved a message, so mail that follows it names the same rule.
    """

    def __init__(self) -> None:
        self._moved: dict[str, VorgangRef | None] = {}
        self._keys: dict[str, VorgangRef | None] = {}
        self._cause: dict[str, str] = {}
        self._virtual: dict[str, int] = {}  # "new:gw-…" -> the negative id plans see it by
        self._named: dict[int, str] = {}

    @property
    def departures(self) -> int:
        """How many messages and keys this world holds apart from the store (its memory)."""
        return len(self._moved) + len(self._keys)

    def _id(self, ref: VorgangRef) -> int:
        if isinstance(ref, int):
            return ref
        # -1 is what a plan calls the Vorgang it opens itself; worlds' own start at -2.
        number = self._virtual.setdefault(ref, -(len(self._virtual) + 2))
        self._named[number] = ref
        return number

    def facts(self, message: Routed, history: History, batch: BatchFacts) -> RoutingFacts:
        """The facts ``message`` is planned on in this world: what was stored before it, and this
        world's own departures from that."""
        wanted = lookups([message])
        by_message_id: dict[str, int] = {}
        for message_id in wanted.message_ids:
            if message_id in self._moved:
                moved = self._moved[message_id]
                if moved is not None:
                    by_message_id[message_id] = self._id(moved)
            elif (known := batch.by_message_id.get(message_id)) is not None and known[0] < history.row:
                by_message_id[message_id] = known[1]
        by_key: dict[str, int] = {}
        for key in wanted.keys:
            if key in self._keys:
                opened = self._keys[key]
                if opened is not None:
                    by_key[key] = self._id(opened)
            elif (stored := batch.by_key.get(key)) is not None and stored[0] < history.row:
                by_key[key] = stored[1]
        members = {a: batch.members[a] for a in wanted.addresses if a in batch.members}
        ids = set(members.values())
        return RoutingFacts(
            batch.portfolio_id,
            batch.portfolio,
            members=members,
            releases=tuple(r for r in batch.releases if r.member_ids & ids),
            vorgaenge_by_reference={
                r: batch.by_reference[r] for r in wanted.references if r in batch.by_reference
            },
            vorgaenge_by_message_id=by_message_id,
            vorgaenge_by_key=by_key,
        )

    def step(self, message: Routed, history: History, batch: BatchFacts) -> Outcome:
        """Plan ``message`` in this world and carry its Vorgang forward."""
        plan = plan_submission(message, self.facts(message, history, batch))
        vorgang: VorgangRef | None
        if plan.refused is not None:
            vorgang = None
        elif plan.opens_vorgang:
            vorgang = history.vorgang_id if history.opened else f"new:{history.gateway_id}"
        elif plan.vorgang_id < 0:
            vorgang = self._named[plan.vorgang_id]
        else:
            vorgang = plan.vorgang_id
        outcome = Outcome(plan, vorgang)
        if vorgang != history.vorgang_id:
            self._moved[history.message_id] = vorgang
        else:
            self._moved.pop(history.message_id, None)
            self._cause.pop(history.message_id, None)
        stored_key = history.key if history.opened else None
        opened_key = outcome.opened_key
        if opened_key != stored_key:
            if stored_key is not None and stored_key not in self._keys:
                self._keys[stored_key] = None
            if opened_key is not None:
                self._keys[opened_key] = vorgang
        return outcome

    def blame_move(self, history: History, rule: str) -> None:
        """Remember ``rule`` as what moved this message, for the mail that follows it."""
        if history.message_id in self._moved:
            self._cause[history.message_id] = rule

    def followed(self, message: Routed) -> str | None:
        """The rule that moved an earlier message this one answers, if it was moved."""
        for message_id in message.hints.message_ids:
            if message_id in self._cause:
                return self._cause[message_id]
        return None

    def terms(self, outcome: Outcome) -> dict[ChangeKind, object]:
        """The outcome in the terms :func:`stored_outcome` gives the stored facts."""
        return {
            ChangeKind.VERDICT: outcome.verdict,
            ChangeKind.VORGANG: outcome.vorgang,
            ChangeKind.KEY: outcome.opened_key,
            ChangeKind.PARTICIPANTS: outcome.participants,
            ChangeKind.AUDIENCE: frozenset(outcome.plan.copies),
        }


@dataclass(frozen=True, slots=True)
class Change:
    """One way one message fares differently: ``before`` in the live world, ``after`` in the candidate
    (for the report of what the live rules no longer reproduce: before as stored, after as replayed)."""

    kind: ChangeKind
    rule: str
    gateway_id: str
    subject: str
    before: object
    after: object


def _rule_of(decision: Decision, kind: ChangeKind) -> Rule | None:
    """The rule in ``decision`` that gave what ``kind`` is about."""
    if kind is ChangeKind.VERDICT:
        return decision.decided_by
    for hit in decision.hits:
        rule = hit.rule
        if kind in (ChangeKind.KEY, ChangeKind.VORGANG) and rule.vorgang_key is not None:
            return rule
        if kind in (ChangeKind.PARTICIPANTS, ChangeKind.AUDIENCE) and rule.participants:
            return rule
    return None


def blame(live: Decision, candidate: Decision, kind: ChangeKind) -> str:
    """The rule a change of ``kind`` is put down to: the candidate's rule that gave it, else the live
    rule that gave it and that the candidate no longer applies."""
    rule = _rule_of(candidate, kind)
    if rule is not None:
        return rule.label()
    rule = _rule_of(live, kind)
    if rule is not None:
        return f"{rule.label()}, no longer applied"
    return NO_RULE


def changes(live: Outcome, candidate: Outcome, history: History, *, moved_by: str | None) -> list[Change]:
    """How ``candidate`` differs from ``live`` for one message, each difference attributed to a rule.

    A Vorgang change with no key change and no verdict change of its own follows an earlier message
    (``moved_by`` names the rule that moved that one)."""
    found: list[Change] = []
    pairs: list[tuple[ChangeKind, object, object]] = [
        (ChangeKind.VERDICT, live.verdict, candidate.verdict),
        (ChangeKind.VORGANG, live.vorgang, candidate.vorgang),
        (ChangeKind.KEY, live.plan.decision.vorgang_key, candidate.plan.decision.vorgang_key),
        (ChangeKind.PARTICIPANTS, live.participants, candidate.participants),
        (ChangeKind.AUDIENCE, frozenset(live.plan.copies), frozenset(candidate.plan.copies)),
    ]
    kinds = {kind for kind, before, after in pairs if before != after}
    for kind, before, after in pairs:
        if kind not in kinds:
            continue
        if (
            kind is ChangeKind.VORGANG
            and moved_by is not None
            and not kinds & {ChangeKind.KEY, ChangeKind.VERDICT}
        ):
            rule = moved_by
        else:
            rule = blame(live.plan.decision, candidate.plan.decision, kind)
            if rule == NO_RULE and ChangeKind.VERDICT in kinds:
                # Not stored, or quarantined: the Vorgang and the copies go with the verdict's rule.
                rule = blame(live.plan.decision, candidate.plan.decision, ChangeKind.VERDICT)
        found.append(Change(kind, rule, history.gateway_id, history.subject, before, after))
    return found


def unreproduced(live: Outcome, world: World, history: History) -> list[Change]:
    """Where the live world's plan is not what was stored: the directory or the live rules changed since."""
    stored = stored_outcome(history)
    replayed = world.terms(live)
    return [
        Change(kind, "live rules", history.gateway_id, history.subject, stored[kind], replayed[kind])
        for kind in ChangeKind
        if stored[kind] != replayed[kind]
    ]


class Replay:
    """Both worlds of one portfolio's replay and the report they fill, one message at a time."""

    def __init__(self, report: Report) -> None:
        self.live = World()
        self.candidate = World()
        self.report = report

    def message(self, live: Routed, candidate: Routed, history: History, batch: BatchFacts) -> None:
        """Replay one stored message: ``live`` and ``candidate`` are it with each rule set's decision."""
        moved_by = self.candidate.followed(candidate)
        live_outcome = self.live.step(live, history, batch)
        candidate_outcome = self.candidate.step(candidate, history, batch)
        found = changes(live_outcome, candidate_outcome, history, moved_by=moved_by)
        for change in found:
            if change.kind is ChangeKind.VORGANG:
                self.candidate.blame_move(history, change.rule)
        self.report.add(found)
        self.report.add_unreproduced(unreproduced(live_outcome, self.live, history))


@dataclass
class Report:
    """The replay's result: changes counted by (rule, kind) with a few examples each, and, apart, where
    the live rules no longer reproduce what was stored (by kind). Bounded: ``examples`` per group."""

    messages: int = 0
    changed: int = 0  # messages with at least one change
    counts: Counter[tuple[str, ChangeKind]] = field(default_factory=Counter)
    examples: dict[tuple[str, ChangeKind], list[Change]] = field(default_factory=dict)
    not_reproduced: Counter[ChangeKind] = field(default_factory=Counter)
    not_reproduced_examples: dict[ChangeKind, list[Change]] = field(default_factory=dict)
    unreadable: int = 0  # stored messages that could not be parsed again (counted, skipped)
    limit: int = EXAMPLES

    def add(self, found: Iterable[Change]) -> None:
        self.messages += 1
        any_change = False
        for change in found:
            any_change = True
            group = (change.rule, change.kind)
            self.counts[group] += 1
            kept = self.examples.setdefault(group, [])
            if len(kept) < self.limit:
                kept.append(change)
        self.changed += any_change

    def add_unreproduced(self, found: Iterable[Change]) -> None:
        for change in found:
            self.not_reproduced[change.kind] += 1
            kept = self.not_reproduced_examples.setdefault(change.kind, [])
            if len(kept) < self.limit:
                kept.append(change)

    def groups(self) -> list[tuple[str, ChangeKind, int, list[Change]]]:
        """(rule, kind, count, examples), by rule and then in :class:`ChangeKind`'s order."""
        order = list(ChangeKind)
        return [
            (rule, kind, count, self.examples[(rule, kind)])
            for (rule, kind), count in sorted(
                self.counts.items(), key=lambda g: (g[0][0], order.index(g[0][1]))
            )
        ]
