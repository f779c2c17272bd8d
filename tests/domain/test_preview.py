"""The fold of reconciliation's plans into a preview, and the directory a change would leave."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.directory import (
    MemberSpec,
    PortfolioSpec,
    ReleaseSpec,
    audience_changes,
    merge_portfolio,
    plan_changes,
)
from gateway.domain.model import Participant, ParticipantRole, ReadSync
from gateway.domain.preview import (
    Batch,
    Involved,
    Planned,
    PlannedDirectory,
    fold,
    involved,
    plan_batches,
    planned_directory,
)
from gateway.domain.reconcile import (
    Backfill,
    Backfilled,
    ExistingCopy,
    Kept,
    MessageFacts,
    MessagePlan,
    NotBackfilled,
    Revoked,
    RevokedCopies,
    plan_message,
)

MEMBERS = st.integers(min_value=1, max_value=6)


@st.composite
def plans(draw: st.DrawFn) -> Planned:
    members = draw(st.lists(MEMBERS, unique=True, max_size=6))
    kinds = draw(st.lists(st.sampled_from("brkn"), min_size=len(members), max_size=len(members)))
    chosen = dict(zip(members, kinds, strict=True))
    return Planned(
        draw(st.integers(min_value=1, max_value=4)),
        MessagePlan(
            draw(st.integers(min_value=1)),
            backfill=tuple(Backfilled(m, (), frozenset(), 1) for m, k in chosen.items() if k == "b"),
            revoke=tuple(Revoked(m, 1) for m, k in chosen.items() if k == "r"),
            kept=tuple(Kept(m, 1) for m, k in chosen.items() if k == "k"),
            not_backfilled=tuple(NotBackfilled(m, "backfill none") for m, k in chosen.items() if k == "n"),
        ),
    )


@given(st.lists(plans(), max_size=30))
def test_the_fold_counts_every_planned_copy_once_per_member_and_vorgang(planned: list[Planned]) -> None:
    preview = fold(planned)
    assert preview.messages == len(planned)
    assert preview.gained == sum(len(p.plan.backfill) for p in planned)
    assert preview.lost == sum(len(p.plan.revoke) for p in planned)
    assert preview.kept == sum(len(p.plan.kept) for p in planned)
    assert preview.not_backfilled == sum(len(p.plan.not_backfilled) for p in planned)
    assert preview.changes == any(p.plan.changes for p in planned)
    for member in preview.members:
        for vorgang, n in member.gains.items():
            assert n == sum(
                1
                for p in planned
                if p.vorgang_id == vorgang and any(b.member_id == member.member_id for b in p.plan.backfill)
            )
    assert [m.member_id for m in preview.members] == sorted(m.member_id for m in preview.members)


def test_an_empty_portfolio_previews_nothing() -> None:
    preview = fold([])
    assert (preview.messages, preview.members, preview.changes) == (0, (), False)


def test_the_planned_directory_names_new_objects_with_ids_no_row_has_and_keeps_deleted_policies() -> None:
    kept = ReleaseSpec("Alt", False, True, ReadSync.ANSWERED, revoked_copies=RevokedCopies.KEEP)
    current = PortfolioSpec(
        "p",
        share_vorgaenge_available=True,
        releases=(kept, ReleaseSpec("Bleibt", False, True, ReadSync.ANSWERED)),
        members=(MemberSpec("a@x.example", releases=("Alt", "Bleibt")),),
    )
    result = PortfolioSpec(
        "p",
        share_vorgaenge_available=True,
        releases=(
            ReleaseSpec("Bleibt", False, True, ReadSync.ANSWERED, backfill=Backfill(days=30)),
            ReleaseSpec("Neu", False, True, ReadSync.SEEN, backfill=Backfill(enabled=False)),
        ),
        members=(
            MemberSpec("a@x.example", releases=("Bleibt", "Neu")),
            MemberSpec("b@x.example", releases=("Neu",)),
            MemberSpec("c@x.example", releases=("Neu",)),
        ),
    )
    planned = planned_directory(current, result, 7, {"Alt": 10, "Bleibt": 11}, {"a@x.example": 3})
    assert planned.member_ids == {"a@x.example": 3, "b@x.example": -1, "c@x.example": -2}
    bleibt, neu = planned.releases
    assert (bleibt.id, bleibt.member_ids, bleibt.portfolio_id) == (11, frozenset({3}), 7)
    assert neu.id < 0
    assert neu.member_ids == frozenset({3, -1, -2})
    assert planned.policies[11].backfill.admits(
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    )
    assert not planned.policies[neu.id].backfill.enabled
    assert set(planned.gone) == {10}
    assert planned.gone[10].remove_revoked is False


# --- the restriction of a preview to the messages a change involves ----------------------------------------

ADDRESSES = tuple(f"m{n}@kunde.example" for n in range(1, 6))
STORED_MEMBERS = {address: n for n, address in enumerate(ADDRESSES, start=1)}
RELEASE_NAMES = ("R1", "R2", "R3")
STORED_RELEASES = {name: 10 + n for n, name in enumerate(RELEASE_NAMES)}
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


@st.composite
def directories(draw: st.DrawFn, *, everyone: bool) -> PortfolioSpec:
    """A portfolio of up to three non-primary releases over the five members (all of them, or some)."""
    names = RELEASE_NAMES if everyone else draw(st.sets(st.sampled_from(RELEASE_NAMES)).map(sorted))
    releases = tuple(
        ReleaseSpec(
            name,
            share_vorgaenge=draw(st.booleans()),
            backfill=draw(st.sampled_from((Backfill(), Backfill(enabled=False), Backfill(days=30)))),
            revoked_copies=draw(st.sampled_from(RevokedCopies)),
        )
        for name in names
    )
    addresses = ADDRESSES if everyone else draw(st.sets(st.sampled_from(ADDRESSES)).map(sorted))
    members = tuple(
        MemberSpec(
            address, releases=tuple(draw(st.sets(st.sampled_from(names)).map(sorted)) if names else ())
        )
        for address in addresses
    )
    return PortfolioSpec("p", share_vorgaenge_available=True, releases=releases, members=members)


@st.composite
def messages(draw: st.DrawFn) -> tuple[int, MessageFacts]:
    members = st.sampled_from(sorted(STORED_MEMBERS.values()))
    participants = draw(st.sets(members, min_size=1, max_size=3))
    author = draw(st.none() | st.sampled_from(sorted(participants)))
    received = NOW - dt.timedelta(days=draw(st.sampled_from((1, 60))))
    facts = MessageFacts(
        draw(st.integers(min_value=1, max_value=10_000)),
        7,
        received,
        tuple(Participant(m, ParticipantRole.TO) for m in sorted(participants)),
        author=author,
    )
    return draw(st.integers(min_value=1, max_value=3)), facts


def reconciled(facts: MessageFacts, directory: PlannedDirectory) -> MessageFacts:
    """The message's copies as a reconcile run under ``directory`` leaves them."""
    plan = plan_message(facts, directory.releases, directory.policies, NOW, gone=directory.gone)
    copies = {c.member_id: c for c in facts.copies}
    for b in plan.backfill:
        copies[b.member_id] = ExistingCopy(b.member_id, shared_via=b.via)
    for r in plan.revoke:
        copies[r.member_id] = replace(copies[r.member_id], live=False)
    return replace(facts, copies=tuple(copies.values()))


def chosen(facts: MessageFacts, only: Involved) -> bool:
    """What storage reads with ``only`` (gateway.db.reconcile._involving), in memory."""
    return any(p.member_id in only.members for p in facts.participants) or any(
        c.shared_via in only.releases for c in facts.copies
    )


@settings(max_examples=300, deadline=None)
@given(
    directories(everyone=True),
    directories(everyone=True),
    directories(everyone=False),
    st.lists(messages(), max_size=8),
)
def test_the_messages_a_preview_leaves_out_plan_as_before_so_the_preview_is_unchanged(
    earlier: PortfolioSpec,
    current: PortfolioSpec,
    wanted: PortfolioSpec,
    stored: list[tuple[int, MessageFacts]],
) -> None:
    # The copies are as two reconcile runs left them (an earlier directory, then the current one), so
    # there are kept and revoked copies through releases as well as live ones.
    before = planned_directory(earlier, current, 7, STORED_RELEASES, STORED_MEMBERS)
    now = planned_directory(current, current, 7, STORED_RELEASES, STORED_MEMBERS)
    first = planned_directory(earlier, earlier, 7, STORED_RELEASES, STORED_MEMBERS)
    state = [
        (vorgang, reconciled(reconciled(reconciled(facts, first), before), now)) for vorgang, facts in stored
    ]
    result = merge_portfolio(current, wanted, prune=True)
    changes = plan_changes(current, result)
    after = planned_directory(current, result, 7, STORED_RELEASES, STORED_MEMBERS)
    only = involved(current, result, changes, STORED_RELEASES, STORED_MEMBERS)

    everything = list(plan_batches([Batch(tuple(state))], after, NOW))
    restricted = list(plan_batches([Batch(tuple(m for m in state if chosen(m[1], only)))], after, NOW))
    for (_, facts), planned in zip(state, everything, strict=True):
        if not chosen(facts, only):
            unchanged = plan_message(facts, now.releases, now.policies, NOW, gone=now.gone)
            assert planned.plan == unchanged, "a message left out would plan as it did before the change"
            assert not planned.plan.changes, "and so, reconciled, changes no mailbox"
    full, shown = fold(everything), fold(restricted)
    assert [(m.member_id, m.gains, m.loses) for m in full.members if m.gains or m.loses] == [
        (m.member_id, m.gains, m.loses) for m in shown.members if m.gains or m.loses
    ]
    if not audience_changes(current, result, changes):
        assert only.members == frozenset(), "a change that alters no audience involves no participant"
