"""The fold of reconciliation's plans into a preview, and the directory a change would leave."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.directory import MemberSpec, PortfolioSpec, ReleaseSpec
from gateway.domain.model import ReadSync
from gateway.domain.preview import Planned, fold, planned_directory
from gateway.domain.reconcile import (
    Backfill,
    Backfilled,
    Kept,
    MessagePlan,
    NotBackfilled,
    Revoked,
    RevokedCopies,
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
