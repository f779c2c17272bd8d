"""Who may see a message, and why: the seed's example and the properties of DESIGN.md §3."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

from gateway.domain.audience import AsParticipant, Audience, SharedThrough, audience
from gateway.domain.model import Member, Participant, ParticipantRole, Release
from tests.seed import ADDRESS, RELEASES, SEEN_BY

SENDER, TO, CC, BCC = ParticipantRole.SENDER, ParticipantRole.TO, ParticipantRole.CC, ParticipantRole.BCC

# --- the seed's example (DESIGN.md §3) ---------------------------------------------------------------

SEED_PORTFOLIO = 1
SEED_MEMBERS = {
    name: Member(number, SEED_PORTFOLIO, address, name)
    for number, (name, address) in enumerate(ADDRESS.items(), 1)
}
NAME_OF = {m.id: name for name, m in SEED_MEMBERS.items()}


def ids(*names: str) -> frozenset[int]:
    return frozenset(SEED_MEMBERS[name].id for name in names)


def names(member_ids: Iterable[int]) -> set[str]:
    return {NAME_OF[member_id] for member_id in member_ids}


SEED_RELEASES = tuple(
    Release(number, SEED_PORTFOLIO, name, primary, share, member_ids=ids(*members))
    for number, (name, (primary, share, members)) in enumerate(RELEASES.items(), 11)
)
RELEASE = {r.name: r for r in SEED_RELEASES}


def seed_audience(name: str, role: ParticipantRole) -> Audience:
    return audience(SEED_PORTFOLIO, [Participant(SEED_MEMBERS[name].id, role)], SEED_RELEASES)


@pytest.mark.parametrize(
    ("name", "role"),
    [
        pytest.param(name, role, id=f"{'by' if role is SENDER else 'to'}-{name}")
        for name in SEEN_BY
        for role in (TO, SENDER)
    ],
)
def test_seed_example(name: str, role: ParticipantRole) -> None:
    assert names(seed_audience(name, role).members) == SEEN_BY[name]


def test_seed_explains_why_gf_b_is_seen_by_whom() -> None:
    seen = seed_audience("GF-B", TO)
    gf_b = SEED_MEMBERS["GF-B"].id

    assert seen.via(gf_b) == (AsParticipant(TO),)
    assert seen.via(SEED_MEMBERS["GF-A"].id) == (SharedThrough(13, "Geschäftsführer", gf_b),)
    for clerk in ("SB-B1", "SB-B2"):
        assert seen.via(SEED_MEMBERS[clerk].id) == (SharedThrough(14, "Kunde B mit GF", gf_b),)
    assert names(seen.shared_only()) == {"GF-A", "SB-B1", "SB-B2"}
    assert [NAME_OF[m] for m in seen.ordered()] == ["GF-B", "GF-A", "SB-B1", "SB-B2"]
    assert [r.describe(NAME_OF.__getitem__) for r in seen.via(SEED_MEMBERS["SB-B1"].id)] == [
        'shared through release "Kunde B mit GF" because GF-B takes part'
    ]


def test_seed_clerks_of_b_never_see_gf_a_own_messages() -> None:
    seen = seed_audience("GF-A", SENDER)
    assert not ids("SB-B1", "SB-B2") & seen.members
    assert seen.via(SEED_MEMBERS["SB-B1"].id) == ()


# --- blind (Bcc) participants ------------------------------------------------------------------------


def test_a_blind_recipient_sees_the_message_but_brings_no_co_member_in() -> None:
    # Bcc to GF-A alone: GF-B, GF-A's co-member in "Geschäftsführer", does not get it because of GF-A.
    seen = seed_audience("GF-A", BCC)
    assert names(seen.members) == {"GF-A"}
    assert seen.via(SEED_MEMBERS["GF-A"].id) == (AsParticipant(BCC),)


def test_a_blind_recipient_leaves_no_trace_in_the_reasons_of_the_others() -> None:
    # To SB-B1, Bcc GF-A: the audience of SB-B1's message, and GF-A; nobody sees it because of GF-A.
    gf_a = SEED_MEMBERS["GF-A"].id
    participants = [Participant(SEED_MEMBERS["SB-B1"].id, TO), Participant(gf_a, BCC)]
    seen = audience(SEED_PORTFOLIO, participants, SEED_RELEASES)
    assert names(seen.members) == {"SB-B1", "SB-B2", "GF-B", "GF-A"}
    assert seen.via(gf_a) == (AsParticipant(BCC),)
    for member_id in seen.members - {gf_a}:
        assert all(getattr(reason, "because_of", None) != gf_a for reason in seen.via(member_id))
    assert AsParticipant(BCC).describe(NAME_OF.__getitem__) == "participant (bcc)"


def test_a_blind_recipient_who_is_also_a_co_member_keeps_both_reasons() -> None:
    # To GF-B, Bcc GF-A: GF-A would see GF-B's message anyway, through "Geschäftsführer".
    gf_a, gf_b = SEED_MEMBERS["GF-A"].id, SEED_MEMBERS["GF-B"].id
    seen = audience(SEED_PORTFOLIO, [Participant(gf_b, TO), Participant(gf_a, BCC)], SEED_RELEASES)
    assert seen.via(gf_a) == (AsParticipant(BCC), SharedThrough(13, "Geschäftsführer", gf_b))
    assert names(seen.members) == SEEN_BY["GF-B"]


# --- small explicit cases ----------------------------------------------------------------------------


def test_describe() -> None:
    name_of = {7: "GF-B"}.__getitem__
    assert AsParticipant(TO).describe(name_of) == "participant (to)"
    assert AsParticipant(SENDER).describe(name_of) == "participant (sender)"
    assert (
        SharedThrough(14, "Kunde B mit GF", 7).describe(name_of)
        == 'shared through release "Kunde B mit GF" because GF-B takes part'
    )


def test_member_with_several_roles_keeps_each_role_once() -> None:
    seen = audience(
        1, [Participant(5, CC), Participant(5, TO), Participant(5, CC), Participant(5, SENDER)], []
    )
    assert seen.via(5) == (AsParticipant(SENDER), AsParticipant(TO), AsParticipant(CC))
    assert seen.members == {5}
    assert seen.shared_only() == frozenset()


def test_one_reason_per_release_and_participant() -> None:
    releases = [
        Release(2, 1, "Beta", False, True, member_ids=frozenset({1, 2, 9})),
        Release(1, 1, "Alpha", False, True, member_ids=frozenset({1, 2, 9})),
    ]
    seen = audience(1, [Participant(2, CC), Participant(1, TO)], releases)
    assert seen.via(9) == (
        SharedThrough(1, "Alpha", 1),
        SharedThrough(1, "Alpha", 2),
        SharedThrough(2, "Beta", 1),
        SharedThrough(2, "Beta", 2),
    )
    # Participants reach each other through the releases too, but never "because of" themselves.
    assert seen.via(1) == (AsParticipant(TO), SharedThrough(1, "Alpha", 2), SharedThrough(2, "Beta", 2))
    assert seen.ordered() == (1, 2, 9)
    assert seen.shared_only() == {9}


def test_release_without_sharing_grants_nothing() -> None:
    releases = [Release(1, 1, "Kunde", True, False, member_ids=frozenset({1, 2}))]
    assert audience(1, [Participant(1, TO)], releases).members == {1}


def test_release_of_another_portfolio_is_ignored() -> None:
    releases = [Release(1, 2, "Fremd", True, True, member_ids=frozenset({1, 2}))]
    seen = audience(1, [Participant(1, TO)], releases)
    assert seen.members == {1}
    assert seen.portfolio_id == 1


def test_ordered_puts_participants_by_role_then_shared_by_release_name() -> None:
    releases = [
        Release(1, 1, "Zulu", False, True, member_ids=frozenset({3, 20})),
        Release(2, 1, "Alpha", False, True, member_ids=frozenset({4, 30, 31})),
        Release(3, 1, "Mike", False, True, member_ids=frozenset({4, 10, 31})),
    ]
    participants = [Participant(4, CC), Participant(3, TO), Participant(8, SENDER), Participant(2, TO)]
    seen = audience(1, participants, releases)
    # 31 is brought in by "Alpha" and "Mike"; the first release by name decides its place.
    assert seen.ordered() == (8, 2, 3, 4, 30, 31, 10, 20)
    assert seen.via(31) == (SharedThrough(2, "Alpha", 4), SharedThrough(3, "Mike", 4))


def test_membership_queries() -> None:
    seen = seed_audience("SB-A1", TO)
    assert SEED_MEMBERS["SB-A2"].id in seen
    assert SEED_MEMBERS["SB-B1"].id not in seen
    assert seen.via(SEED_MEMBERS["SB-B1"].id) == ()


def test_audience_does_not_share_the_callers_mapping() -> None:
    reasons: dict[int, tuple[AsParticipant | SharedThrough, ...]] = {1: (AsParticipant(TO),)}
    seen = Audience(1, reasons)
    reasons[2] = (AsParticipant(CC),)
    assert seen.members == {1}
    assert hash(seen) == hash(Audience(1, {1: (AsParticipant(TO),)}))


def test_audience_rejects_a_member_without_a_reason() -> None:
    with pytest.raises(ValueError, match="without a reason"):
        Audience(1, {1: ()})


def test_visibility_is_not_transitive() -> None:
    x, y, z = 1, 2, 3
    releases = [
        Release(1, 1, "R1", False, True, member_ids=frozenset({x, y})),
        Release(2, 1, "R2", False, True, member_ids=frozenset({y, z})),
    ]
    seen = audience(1, [Participant(x, TO)], releases)
    assert seen.members == {x, y}
    assert z not in seen
    assert seen.shared_only() == {y}

    # Y sees X's message only through R1; a message to Y reaches further, so Y's audience is no proxy
    # for the audience of the messages Y can see.
    assert audience(1, [Participant(y, TO)], releases).members == {x, y, z}


# --- properties over random directories --------------------------------------------------------------

PORTFOLIOS = (1, 2, 3)
# Few names, so that releases sharing a name (and the tie-break by id) actually occur.
RELEASE_NAMES = ("Alpha", "Beta", "Geschäftsführer", "Kunde B mit GF")


@dataclass(frozen=True)
class Directory:
    portfolio_of: dict[int, int]
    releases: tuple[Release, ...]

    def members_of(self, portfolio_id: int) -> list[int]:
        return sorted(m for m, p in self.portfolio_of.items() if p == portfolio_id)


@dataclass(frozen=True)
class Message:
    portfolio_id: int
    participants: tuple[Participant, ...]

    @property
    def participant_ids(self) -> frozenset[int]:
        return frozenset(p.member_id for p in self.participants)

    @property
    def visible_ids(self) -> frozenset[int]:
        """The participants the others can see: everyone but those only in Bcc."""
        return frozenset(p.member_id for p in self.participants if p.role is not BCC)

    def audience(self, releases: Iterable[Release]) -> Audience:
        return audience(self.portfolio_id, self.participants, releases)


@st.composite
def releases_of(
    draw: st.DrawFn, portfolio_id: int, candidates: Sequence[int], first_id: int, max_count: int = 4
) -> tuple[Release, ...]:
    count = draw(st.integers(0, max_count))
    member_sets = (
        st.frozensets(st.sampled_from(candidates), max_size=5) if candidates else st.just(frozenset())
    )
    return tuple(
        Release(
            id=first_id + i,
            portfolio_id=portfolio_id,
            name=draw(st.sampled_from(RELEASE_NAMES)),
            primary=draw(st.booleans()),
            share_vorgaenge=draw(st.booleans()),
            member_ids=draw(member_sets),
        )
        for i in range(count)
    )


@st.composite
def directories(draw: st.DrawFn) -> Directory:
    member_count = draw(st.integers(1, 12))
    portfolio_of = {m: draw(st.sampled_from(PORTFOLIOS)) for m in range(1, member_count + 1)}
    releases: list[Release] = []
    for portfolio_id in PORTFOLIOS:
        candidates = sorted(m for m, p in portfolio_of.items() if p == portfolio_id)
        releases += draw(releases_of(portfolio_id, candidates, first_id=100 * portfolio_id))
    return Directory(portfolio_of, tuple(releases))


@st.composite
def messages(draw: st.DrawFn, directory: Directory) -> Message:
    portfolio_id = draw(st.sampled_from(sorted(set(directory.portfolio_of.values()))))
    participant = st.builds(
        Participant, st.sampled_from(directory.members_of(portfolio_id)), st.sampled_from(ParticipantRole)
    )
    return Message(portfolio_id, tuple(draw(st.lists(participant, min_size=1, max_size=5))))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Directory, list[Message]]:
    directory = draw(directories())
    return directory, draw(st.lists(messages(directory), min_size=1, max_size=6))


@st.composite
def one_message(draw: st.DrawFn) -> tuple[Directory, Message]:
    directory = draw(directories())
    return directory, draw(messages(directory))


def by_formula(message: Message, releases: Iterable[Release]) -> frozenset[int]:
    """DESIGN.md §3 written out as literally as possible, to check the real thing against."""
    seen = set(message.participant_ids)
    for release in releases:
        same_portfolio = release.portfolio_id == message.portfolio_id
        if same_portfolio and release.share_vorgaenge and release.member_ids & message.visible_ids:
            seen |= release.member_ids
    return frozenset(seen)


@given(one_message())
def test_audience_is_the_formula(case: tuple[Directory, Message]) -> None:
    directory, message = case
    assert message.audience(directory.releases).members == by_formula(message, directory.releases)


@given(one_message())
def test_participants_always_see_the_message(case: tuple[Directory, Message]) -> None:
    directory, message = case
    seen = message.audience(directory.releases)
    for participant in message.participants:
        assert participant.member_id in seen
        assert AsParticipant(participant.role) in seen.via(participant.member_id)
    assert seen.members - seen.shared_only() == message.participant_ids


@given(one_message())
def test_every_reason_is_sound(case: tuple[Directory, Message]) -> None:
    directory, message = case
    seen = message.audience(directory.releases)
    releases = {r.id: r for r in directory.releases}
    for member_id in seen.members:
        reasons = seen.via(member_id)
        assert reasons, member_id
        assert len(set(reasons)) == len(reasons)
        for reason in reasons:
            if isinstance(reason, AsParticipant):
                assert Participant(member_id, reason.role) in message.participants
                continue
            release = releases[reason.release_id]
            assert release.name == reason.release_name
            assert release.portfolio_id == message.portfolio_id
            assert release.share_vorgaenge
            assert {member_id, reason.because_of} <= release.member_ids
            assert reason.because_of in message.visible_ids
            assert reason.because_of != member_id


@given(one_message())
def test_every_release_and_participant_pair_gives_a_reason(case: tuple[Directory, Message]) -> None:
    directory, message = case
    seen = message.audience(directory.releases)
    for release in directory.releases:
        if release.portfolio_id != message.portfolio_id or not release.share_vorgaenge:
            continue
        for because_of in release.member_ids & message.visible_ids:
            for member_id in release.member_ids - {because_of}:
                assert SharedThrough(release.id, release.name, because_of) in seen.via(member_id)


@given(one_message(), st.randoms(use_true_random=False))
def test_order_of_the_inputs_does_not_matter(case: tuple[Directory, Message], rnd: random.Random) -> None:
    directory, message = case
    participants = rnd.sample(message.participants, len(message.participants))
    releases = rnd.sample(directory.releases, len(directory.releases))
    before = message.audience(directory.releases)
    after = audience(message.portfolio_id, participants, releases)
    assert after == before
    assert after.ordered() == before.ordered()
    assert repr(after) == repr(before)
    assert set(before.ordered()) == before.members
    assert len(before.ordered()) == len(before.members)


@given(scenarios(), st.data())
def test_removing_a_member_from_a_release_never_widens(
    case: tuple[Directory, list[Message]], data: st.DataObject
) -> None:
    directory, message_list = case
    filled = [i for i, r in enumerate(directory.releases) if r.member_ids]
    assume(filled)
    index = data.draw(st.sampled_from(filled))
    release = directory.releases[index]
    removed = data.draw(st.sampled_from(sorted(release.member_ids)))
    changed = list(directory.releases)
    changed[index] = dataclasses.replace(release, member_ids=release.member_ids - {removed})
    for message in message_list:
        after, before = message.audience(changed).members, message.audience(directory.releases).members
        assert after <= before
        event("narrower" if after < before else "the same")


@given(scenarios(), st.data())
def test_switching_sharing_off_never_widens(
    case: tuple[Directory, list[Message]], data: st.DataObject
) -> None:
    directory, message_list = case
    assume(directory.releases)
    index = data.draw(st.integers(0, len(directory.releases) - 1))
    changed = list(directory.releases)
    changed[index] = dataclasses.replace(changed[index], share_vorgaenge=False)
    for message in message_list:
        after, before = message.audience(changed).members, message.audience(directory.releases).members
        assert after <= before
        event("narrower" if after < before else "the same")


@given(one_message(), st.data())
def test_releases_of_other_portfolios_change_nothing(
    case: tuple[Directory, Message], data: st.DataObject
) -> None:
    directory, message = case
    own = [r for r in directory.releases if r.portfolio_id == message.portfolio_id]
    foreign = [r for r in directory.releases if r.portfolio_id != message.portfolio_id]
    # Changed foreign releases may even name this message's participants: they must still not count.
    any_member = sorted(directory.portfolio_of)
    changed = [
        dataclasses.replace(
            r,
            share_vorgaenge=data.draw(st.booleans()),
            member_ids=r.member_ids | data.draw(st.frozensets(st.sampled_from(any_member), max_size=3)),
        )
        for r in foreign
    ]
    other = data.draw(st.sampled_from([p for p in PORTFOLIOS if p != message.portfolio_id]))
    added = data.draw(releases_of(other, any_member, first_id=1000))

    expected = message.audience(own)
    assert message.audience(directory.releases) == expected
    assert message.audience([*own, *changed]) == expected
    assert message.audience([*added, *own, *foreign]) == expected
