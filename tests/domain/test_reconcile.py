"""Reconciliation plans: the seed's retroactivity, release policies, flags, and the properties of §3."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.audience import SharedThrough, audience
from gateway.domain.model import Participant, ParticipantRole, ReadSync, Release
from gateway.domain.readsync import SyncedFlag
from gateway.domain.reconcile import (
    Backfill,
    ExistingCopy,
    Kept,
    MessageFacts,
    MessagePlan,
    ReleasePolicy,
    Revoked,
    plan_message,
)
from tests.domain.test_audience import SEED_MEMBERS, SEED_PORTFOLIO, SEED_RELEASES, ids, names
from tests.seed import SEEN_BY

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
TO = ParticipantRole.TO
WITH_GF = next(r for r in SEED_RELEASES if r.name == "Kunde B mit GF")
WITHOUT_GF = tuple(r for r in SEED_RELEASES if r is not WITH_GF)


def message(
    number: int, person: str, *, age_days: int = 1, copies: tuple[ExistingCopy, ...] = ()
) -> MessageFacts:
    member = SEED_MEMBERS[person].id
    return MessageFacts(
        number, SEED_PORTFOLIO, NOW - dt.timedelta(days=age_days), (Participant(member, TO),), copies
    )


def delivered(facts: MessageFacts, releases: tuple[Release, ...]) -> MessageFacts:
    """The message with a live copy for exactly its audience under ``releases``."""
    allowed = audience(facts.portfolio_id, facts.participants, releases)

    def via(member_id: int) -> int | None:
        shared = [r.release_id for r in allowed.via(member_id) if isinstance(r, SharedThrough)]
        return None if len(shared) < len(allowed.via(member_id)) else shared[0]

    return dataclasses.replace(
        facts, copies=tuple(ExistingCopy(m, shared_via=via(m)) for m in sorted(allowed.members))
    )


def applied(facts: MessageFacts, plan: MessagePlan) -> MessageFacts:
    """What the storage layer makes of the plan: new copies live, revoked ones not."""
    copies = {c.member_id: c for c in facts.copies}
    for b in plan.backfill:
        copies[b.member_id] = ExistingCopy(
            b.member_id,
            seen=SyncedFlag.SEEN in b.flags,
            answered=SyncedFlag.ANSWERED in b.flags,
            shared_via=b.via,
        )
    for r in plan.revoke:
        copies[r.member_id] = dataclasses.replace(copies[r.member_id], live=False)
    return dataclasses.replace(facts, copies=tuple(copies.values()))


def live(facts: MessageFacts) -> set[str]:
    return names(c.member_id for c in facts.copies if c.live)


# --- the seed's example: "Kunde B mit GF" created, then GF-B taken out again ---------------------------


def test_creating_the_release_backfills_exactly_what_section_3_predicts() -> None:
    before = {p: delivered(message(n, p), WITHOUT_GF) for n, p in enumerate(SEEN_BY, 1)}
    assert live(before["SB-B1"]) == {"SB-B1", "SB-B2"}, "without the release GF-B does not see it"
    assert live(before["GF-B"]) == {"GF-B", "GF-A"}

    backfilled = {}
    for person, facts in before.items():
        plan = plan_message(facts, SEED_RELEASES, {}, NOW)
        assert plan.revoke == ()
        backfilled[person] = names(b.member_id for b in plan.backfill)
        assert live(applied(facts, plan)) == SEEN_BY[person]
    assert backfilled == {
        "SB-A1": set(),
        "SB-A2": set(),
        "SB-B1": {"GF-B"},
        "SB-B2": {"GF-B"},
        "GF-A": set(),  # not transitive: GF-A's own mail stays with the managing directors
        "GF-B": {"SB-B1", "SB-B2"},
    }
    (gf_b,) = plan_message(before["SB-B1"], SEED_RELEASES, {}, NOW).backfill
    assert gf_b.via == WITH_GF.id


def test_taking_gf_b_out_again_revokes_exactly_those_copies() -> None:
    shrunk = dataclasses.replace(WITH_GF, member_ids=ids("SB-B1", "SB-B2"))
    after_removal = (*WITHOUT_GF, shrunk)
    revoked = {}
    for number, person in enumerate(SEEN_BY, 1):
        facts = delivered(message(number, person), SEED_RELEASES)
        plan = plan_message(facts, after_removal, {}, NOW)
        assert plan.backfill == ()
        revoked[person] = names(r.member_id for r in plan.revoke)
    assert revoked == {
        "SB-A1": set(),
        "SB-A2": set(),
        "SB-B1": {"GF-B"},
        "SB-B2": {"GF-B"},
        "GF-A": set(),
        "GF-B": {"SB-B1", "SB-B2"},  # GF-B keeps its own; the clerks lose what the release gave them
    }


def test_switching_sharing_off_and_deleting_the_release_revoke_alike() -> None:
    facts = delivered(message(1, "GF-B"), SEED_RELEASES)
    off = (*WITHOUT_GF, dataclasses.replace(WITH_GF, share_vorgaenge=False))
    for releases in (off, WITHOUT_GF):
        plan = plan_message(facts, releases, {}, NOW)
        assert names(r.member_id for r in plan.revoke) == {"SB-B1", "SB-B2"}


# --- release policies -----------------------------------------------------------------------------------


def test_backfill_settings_of_the_granting_release() -> None:
    old = delivered(message(1, "SB-B1", age_days=40), WITHOUT_GF)
    recent = delivered(message(2, "SB-B1", age_days=3), WITHOUT_GF)
    for setting, expected in [("all", (True, True)), ("days:30", (False, True)), ("none", (False, False))]:
        policies = {WITH_GF.id: ReleasePolicy(backfill=Backfill.parse(setting))}
        got = tuple(bool(plan_message(f, SEED_RELEASES, policies, NOW).backfill) for f in (old, recent))
        assert got == expected, setting
    plan = plan_message(old, SEED_RELEASES, {WITH_GF.id: ReleasePolicy(backfill=Backfill.parse("none"))}, NOW)
    (skipped,) = plan.not_backfilled
    assert names([skipped.member_id]) == {"GF-B"}
    assert skipped.why == "backfill none of the releases that grant it"


def test_one_admitting_release_is_enough_and_participants_always_get_theirs() -> None:
    second = Release(99, SEED_PORTFOLIO, "Schaden B", False, True, member_ids=ids("SB-B1", "GF-B"))
    facts = delivered(message(1, "SB-B1"), WITHOUT_GF)
    policies = {WITH_GF.id: ReleasePolicy(backfill=Backfill(enabled=False))}
    (gf_b,) = plan_message(facts, (*SEED_RELEASES, second), policies, NOW).backfill
    assert gf_b.via == second.id

    # SB-B1's own copy was revoked earlier; SB-B1 takes part, so no release setting can withhold it.
    lost = dataclasses.replace(
        facts,
        copies=tuple(
            dataclasses.replace(c, live=c.member_id != SEED_MEMBERS["SB-B1"].id) for c in facts.copies
        ),
    )
    none = {r.id: ReleasePolicy(backfill=Backfill(enabled=False)) for r in SEED_RELEASES}
    (own,) = plan_message(lost, WITHOUT_GF, none, NOW).backfill
    assert names([own.member_id]) == {"SB-B1"}
    assert own.via is None


def test_a_release_that_keeps_revoked_copies_keeps_them_also_once_deleted() -> None:
    facts = delivered(message(1, "SB-B1"), SEED_RELEASES)
    facts = dataclasses.replace(
        facts,
        copies=tuple(
            dataclasses.replace(c, shared_via=WITH_GF.id) if c.member_id == SEED_MEMBERS["GF-B"].id else c
            for c in facts.copies
        ),
    )
    keep = ReleasePolicy(remove_revoked=False)
    gf_b = SEED_MEMBERS["GF-B"].id
    shrunk = (*WITHOUT_GF, dataclasses.replace(WITH_GF, member_ids=ids("SB-B1", "SB-B2")))
    assert plan_message(facts, shrunk, {WITH_GF.id: keep}, NOW).kept == (Kept(gf_b, WITH_GF.id),)
    assert plan_message(facts, WITHOUT_GF, {}, NOW, gone={WITH_GF.id: keep}).kept == (Kept(gf_b, WITH_GF.id),)
    assert plan_message(facts, WITHOUT_GF, {}, NOW).revoke == (Revoked(gf_b, WITH_GF.id),)


def test_backfill_parsing() -> None:
    assert str(Backfill.parse("ALL")) == "all"
    assert str(Backfill.parse(" days:7 ")) == "days:7"
    assert str(Backfill.parse("none")) == "none"
    for bad in ("", "some", "days:0", "days:-1", "days:100000", "days:7d", "days"):
        with pytest.raises(ValueError, match='"all", "none" or "days:N"'):
            Backfill.parse(bad)


# --- flags of back-filled copies ------------------------------------------------------------------------


def test_backfilled_copies_carry_the_shared_flags() -> None:
    facts = delivered(message(1, "SB-B1"), WITHOUT_GF)
    sb_b1, sb_b2 = SEED_MEMBERS["SB-B1"].id, SEED_MEMBERS["SB-B2"].id

    def with_flags(**flags: dict[int, bool]) -> MessageFacts:
        return dataclasses.replace(
            facts,
            copies=tuple(
                dataclasses.replace(c, **{k: v.get(c.member_id, False) for k, v in flags.items()})
                for c in facts.copies
            ),
        )

    def flags_for_gf_b(f: MessageFacts, releases: tuple[Release, ...]) -> frozenset[SyncedFlag]:
        (b,) = plan_message(f, releases, {}, NOW).backfill
        return b.flags

    assert flags_for_gf_b(facts, SEED_RELEASES) == frozenset()
    assert flags_for_gf_b(with_flags(answered={sb_b2: True}), SEED_RELEASES) == {SyncedFlag.ANSWERED}
    read = with_flags(seen={sb_b1: True})
    assert flags_for_gf_b(read, SEED_RELEASES) == frozenset(), "read_sync answered: \\Seen stays personal"
    seen_sync = (*WITHOUT_GF, dataclasses.replace(WITH_GF, read_sync=ReadSync.SEEN))
    assert flags_for_gf_b(read, seen_sync) == {SyncedFlag.SEEN}


# --- properties -------------------------------------------------------------------------------------------

MEMBER_IDS = sorted(m.id for m in SEED_MEMBERS.values())
member_sets = st.frozensets(st.sampled_from(MEMBER_IDS), max_size=len(MEMBER_IDS))
release_sets = st.lists(
    st.builds(
        lambda n, share, members: Release(100 + n, SEED_PORTFOLIO, f"R{n}", False, share, member_ids=members),
        st.integers(0, 5),
        st.booleans(),
        member_sets,
    ),
    max_size=5,
    unique_by=lambda r: r.id,
).map(tuple)


@given(
    participants=st.frozensets(st.sampled_from(MEMBER_IDS), min_size=1, max_size=3),
    before=release_sets,
    after=release_sets,
    keep=st.booleans(),
)
def test_a_plan_converges_on_the_audience_and_never_takes_an_entitled_copy(
    participants: frozenset[int], before: tuple[Release, ...], after: tuple[Release, ...], keep: bool
) -> None:
    facts = MessageFacts(1, SEED_PORTFOLIO, NOW, tuple(Participant(m, TO) for m in sorted(participants)))
    facts = delivered(facts, before)
    policies = {r.id: ReleasePolicy(remove_revoked=not keep) for r in after}
    plan = plan_message(facts, after, policies, NOW)
    entitled = audience(SEED_PORTFOLIO, facts.participants, after).members
    assert not {r.member_id for r in plan.revoke} & entitled
    assert {b.member_id for b in plan.backfill} <= entitled
    result = applied(facts, plan)
    now_live = {c.member_id for c in result.copies if c.live}
    assert entitled <= now_live, "every entitled member has a copy (backfill all is the default)"
    assert participants <= now_live
    # Copies delivered as participants or through unknown releases are never kept by a release's setting.
    assert now_live - entitled == {k.member_id for k in plan.kept}
    again = plan_message(result, after, policies, NOW)
    assert not again.changes, "reconciling twice changes nothing"


def test_the_author_of_a_members_mail_gets_no_copy_but_keeps_the_rights_it_gives() -> None:
    """The reply path copies a member's mail to the audience but not to its author (their client keeps it
    in Sent); reconciliation must not hand the author a copy later, while the author still brings the
    release's co-members in."""
    gf_b = SEED_MEMBERS["GF-B"].id
    facts = MessageFacts(7, SEED_PORTFOLIO, NOW, (Participant(gf_b, ParticipantRole.SENDER),), author=gf_b)
    plan = plan_message(facts, SEED_RELEASES, {}, NOW)
    assert names(b.member_id for b in plan.backfill) == {"GF-A", "SB-B1", "SB-B2"}
    assert plan.revoke == ()
