"""The preview of a directory change: who would gain and lose copies of which Vorgänge, before it is made.

An admin about to tick "Vorgänge teilen" or to take a member out of a release sees first what
reconciliation will do about the existing messages (issue 15). The preview is not an estimate: every
message is planned by ``gateway.domain.reconcile.plan_message``, the planner reconciliation itself runs,
over the releases as the change would leave them (:func:`planned_directory`), and the plans are folded
into counts per member and Vorgang (:func:`fold`). Counts and not message lists, so that the preview of
a change over a portfolio of 100,000 messages stays as small as its answer.

The directory after the change is computed here, from the wanted spec, rather than written and rolled
back: a preview then takes no write lock (SQLite has one writer; the acceptance of mail would wait for
a scan of the whole portfolio) and writes no event, and the web console can show one on every form.
Releases and members the change creates have no database id yet; they get negative ones, which no row
has, so they cannot be confused with stored ones.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.domain.directory import Change, PortfolioSpec, ReleaseSpec, audience_changes
from gateway.domain.model import Release
from gateway.domain.reconcile import MessageFacts, MessagePlan, ReleasePolicy, RevokedCopies, plan_message

__all__ = [
    "Batch",
    "Involved",
    "MemberPreview",
    "PlannedDirectory",
    "Preview",
    "Tally",
    "fold",
    "involved",
    "plan_batches",
    "planned_directory",
]


@dataclass(frozen=True, slots=True)
class PlannedDirectory:
    """The portfolio's releases as a change would leave them, in the terms the planner takes."""

    releases: tuple[Release, ...]
    policies: Mapping[int, ReleasePolicy]
    gone: Mapping[int, ReleasePolicy]
    """The settings of releases the change deletes: a deleted release that keeps revoked copies keeps them."""
    member_ids: Mapping[str, int]
    """Every member of the result by address; members the change creates have negative ids."""


def planned_directory(
    current: PortfolioSpec | None,
    result: PortfolioSpec,
    portfolio_id: int,
    release_ids: Mapping[str, int],
    member_ids: Mapping[str, int],
) -> PlannedDirectory:
    """The releases of ``result`` with the stored ids of ``release_ids``/``member_ids`` (by name/address)."""
    ids = dict(member_ids)
    new_members = [m.address for m in result.members if m.address not in ids]
    ids.update({address: -1 - n for n, address in enumerate(new_members)})
    new_release = iter(range(-1, -1 - len(result.releases) - 1, -1))
    releases: list[Release] = []
    policies: dict[int, ReleasePolicy] = {}
    for spec in result.releases:
        rid = release_ids.get(spec.name)
        if rid is None:
            rid = next(new_release)
        members = frozenset(ids[m.address] for m in result.members if spec.name in m.releases)
        releases.append(
            Release(rid, portfolio_id, spec.name, spec.primary, spec.share_vorgaenge, spec.read_sync, members)
        )
        policies[rid] = _policy(spec)
    kept_names = {r.name for r in result.releases}
    gone = {
        release_ids[spec.name]: _policy(spec)
        for spec in (current.releases if current is not None else ())
        if spec.name not in kept_names and spec.name in release_ids
    }
    return PlannedDirectory(tuple(releases), policies, gone, ids)


def _policy(spec: ReleaseSpec) -> ReleasePolicy:
    return ReleasePolicy(spec.backfill, RevokedCopies(spec.revoked_copies) is RevokedCopies.REMOVE)


@dataclass(frozen=True, slots=True)
class Involved:
    """The messages whose plan a change can alter: those with a participant among ``members``, or a copy
    through one of ``releases``. The other messages keep the plan they had, so a preview need not read
    them."""

    members: frozenset[int]
    releases: frozenset[int] = frozenset()


def involved(
    current: PortfolioSpec | None,
    result: PortfolioSpec,
    changes: Sequence[Change],
    release_ids: Mapping[str, int],
    member_ids: Mapping[str, int],
) -> Involved:
    """Who a change involves: the members before and after the change of every release it touches.

    A message's audience is its participants and the members of sharing releases that contain one of
    them (DESIGN.md §3), so a release whose members or sharing change alters only the audience of
    messages with a participant among its members, before or after; a deleted member leaves each of its
    releases. The audience is not all a plan takes: a copy a former member kept through a release is
    revoked once that release removes revoked copies, whoever took part, so a release whose
    ``revoked_copies`` changes is named in ``releases``, sharing or not. Backfill settings act only on
    members the audience gains, who come through a participant again. ``release_ids``/``member_ids``
    are the stored ids by name/address (new ones need none: nothing stored names them).
    """
    if current is None:
        return Involved(frozenset())
    touched: set[str] = set()
    for change in audience_changes(current, result, changes):
        if change.kind == "membership":
            touched.add(change.release)
        elif change.kind == "release":
            touched.add(change.name)
        elif change.kind == "member":
            touched.update(
                m for spec in current.members if spec.address == change.name for m in spec.releases
            )
    # Kept copies through a release that now removes them are revoked, whether the release shares or not.
    revocation = {
        c.name for c in changes if c.kind == "release" and any(key == "revoked_copies" for key, _ in c.fields)
    }
    addresses = {
        spec.address
        for directory in (current, result)
        for spec in directory.members
        if touched.intersection(spec.releases)
    }
    return Involved(
        frozenset(member_ids[a] for a in addresses if a in member_ids),
        frozenset(release_ids[name] for name in revocation if name in release_ids),
    )


@dataclass(frozen=True, slots=True)
class Batch:
    """Messages of one portfolio as storage reads them for reconciliation, with each one's Vorgang."""

    messages: tuple[tuple[int, MessageFacts], ...]
    """(Vorgang id, the message's facts), in message id order."""
    gone: Mapping[int, ReleasePolicy] = field(default_factory=dict)
    """Releases deleted earlier that kept their copies (as ``work_batch`` finds them)."""


@dataclass(frozen=True, slots=True)
class Planned:
    vorgang_id: int
    plan: MessagePlan


def plan_batches(
    batches: Iterable[Batch], directory: PlannedDirectory, now: dt.datetime
) -> Iterator[Planned]:
    """Each message's plan under ``directory``, one batch at a time (a generator: nothing accumulates)."""
    for batch in batches:
        gone = {**batch.gone, **directory.gone}
        for vorgang_id, facts in batch.messages:
            plan = plan_message(facts, directory.releases, directory.policies, now, gone=gone)
            yield Planned(vorgang_id, plan)


@dataclass(frozen=True, slots=True)
class MemberPreview:
    """What one member would gain and lose, per Vorgang id (messages per Vorgang)."""

    member_id: int
    gains: Mapping[int, int] = field(default_factory=dict)
    """Copies back-filled: messages the member may see now and will get."""
    loses: Mapping[int, int] = field(default_factory=dict)
    """Copies revoked: removed from every folder of the member's mailbox."""
    keeps: Mapping[int, int] = field(default_factory=dict)
    """Copies the member may no longer see but keeps, as the release that gave them keeps such copies."""
    held_back: Mapping[int, int] = field(default_factory=dict)
    """Messages the member may see now but gets no copy of: the granting releases' backfill says so."""

    @property
    def gained(self) -> int:
        return sum(self.gains.values())

    @property
    def lost(self) -> int:
        return sum(self.loses.values())

    @property
    def kept(self) -> int:
        return sum(self.keeps.values())

    @property
    def not_backfilled(self) -> int:
        return sum(self.held_back.values())


@dataclass(frozen=True, slots=True)
class Preview:
    """The fold of every message's plan: per member (in id order, only those concerned) and in total."""

    messages: int = 0
    members: tuple[MemberPreview, ...] = ()

    @property
    def gained(self) -> int:
        return sum(m.gained for m in self.members)

    @property
    def lost(self) -> int:
        return sum(m.lost for m in self.members)

    @property
    def kept(self) -> int:
        return sum(m.kept for m in self.members)

    @property
    def not_backfilled(self) -> int:
        return sum(m.not_backfilled for m in self.members)

    @property
    def changes(self) -> bool:
        """Whether reconciliation would change anything in a mailbox."""
        return bool(self.gained or self.lost)

    def vorgaenge(self) -> frozenset[int]:
        """Every Vorgang the preview names."""
        return frozenset(
            v for m in self.members for counts in (m.gains, m.loses, m.keeps, m.held_back) for v in counts
        )


class Tally:
    """The fold of plans as they come, batch by batch: a preview computed in steps, with its count so far."""

    def __init__(self) -> None:
        self.messages = 0
        self._tallies: dict[int, tuple[Counter[int], Counter[int], Counter[int], Counter[int]]] = defaultdict(
            lambda: (Counter(), Counter(), Counter(), Counter())
        )

    def add(self, planned: Iterable[Planned]) -> None:
        """Count each plan's back-filled, revoked, kept and held-back copies per member and Vorgang."""
        tallies = self._tallies
        for item in planned:
            self.messages += 1
            plan, vorgang = item.plan, item.vorgang_id
            for b in plan.backfill:
                tallies[b.member_id][0][vorgang] += 1
            for r in plan.revoke:
                tallies[r.member_id][1][vorgang] += 1
            for k in plan.kept:
                tallies[k.member_id][2][vorgang] += 1
            for n in plan.not_backfilled:
                tallies[n.member_id][3][vorgang] += 1

    def preview(self) -> Preview:
        members = tuple(
            MemberPreview(member_id, *(dict(sorted(c.items())) for c in self._tallies[member_id]))
            for member_id in sorted(self._tallies)
        )
        return Preview(self.messages, members)


def fold(planned: Iterable[Planned]) -> Preview:
    """Count each plan's back-filled, revoked, kept and held-back copies per member and Vorgang."""
    tally = Tally()
    tally.add(planned)
    return tally.preview()
