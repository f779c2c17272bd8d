"""The collision guard's decision: which earlier answer a reply crosses, and what the release says to do."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.collision import (
    AfterTimeout,
    CollisionGuard,
    EarlierAnswer,
    GuardedRelease,
    NewReply,
    Verdict,
    decide,
    default_guard,
    format_duration,
    hold_expired,
    parse_duration,
)

T0 = dt.datetime(2026, 12, 7, 9, 0, tzinfo=dt.UTC)
B1, B2, GF = 1, 2, 3
SACHBEARBEITER = GuardedRelease("Kunde B Sachbearbeiter", True, CollisionGuard.HOLD, frozenset({B1, B2}))


def at(minutes: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def reply(
    accepted: int = 30,
    delivered: int | None = 0,
    names: frozenset[str] = frozenset(),
    pk: int = 100,
    author: int = B1,
) -> NewReply:
    return NewReply(pk, author, at(accepted), names, at(-5), None if delivered is None else at(delivered))


def answer(accepted: int = 10, pk: int = 50, author: int = B2, withdrawn: bool = False) -> EarlierAnswer:
    return EarlierAnswer(pk, author, at(accepted), f"<a{pk}@b2.example>", withdrawn)


def test_the_seed_case_is_held() -> None:
    decision = decide(reply(), [answer()], [SACHBEARBEITER])
    assert decision.verdict is Verdict.HOLD
    assert decision.collides_with == answer()
    assert decision.release == SACHBEARBEITER


def test_no_earlier_answer_relays() -> None:
    assert decide(reply(), [], [SACHBEARBEITER]).verdict is Verdict.RELAY


# Every order of: the copy's delivery (d), the co-member's answer (a), the new reply (r), with ties.
@pytest.mark.parametrize(
    ("delivered", "answered", "replied", "pk_answer", "expected"),
    [
        (0, 10, 30, 50, Verdict.HOLD),  # d < a < r: the replier could not have seen it
        (10, 10, 30, 50, Verdict.HOLD),  # a at the delivery's moment: counted as after (cautious)
        (20, 10, 30, 50, Verdict.RELAY),  # a < d: the copy came with \Answered
        (0, 30, 30, 50, Verdict.HOLD),  # same acceptance time: the smaller id went first
        (0, 30, 30, 150, Verdict.RELAY),  # same time, larger id: the new reply was first
        (0, 40, 30, 50, Verdict.RELAY),  # accepted after the new reply: not earlier
        (None, 10, 30, 50, Verdict.HOLD),  # no delivery stored: the copy's creation (-5) stands in
    ],
)
def test_orders(
    delivered: int | None, answered: int, replied: int, pk_answer: int, expected: Verdict
) -> None:
    got = decide(reply(replied, delivered), [answer(answered, pk_answer)], [SACHBEARBEITER])
    assert got.verdict is expected


def test_a_reply_that_references_the_answer_does_not_collide() -> None:
    seen = reply(names=frozenset({"<a50@b2.example>"}))
    assert decide(seen, [answer()], [SACHBEARBEITER]).verdict is Verdict.RELAY
    other = reply(names=frozenset({"<something@else>"}))
    assert decide(other, [answer()], [SACHBEARBEITER]).verdict is Verdict.HOLD


def test_own_and_withdrawn_answers_do_not_collide() -> None:
    assert decide(reply(), [answer(author=B1)], [SACHBEARBEITER]).verdict is Verdict.RELAY
    assert decide(reply(), [answer(withdrawn=True)], [SACHBEARBEITER]).verdict is Verdict.RELAY


@pytest.mark.parametrize(
    ("guard", "expected"),
    [
        (CollisionGuard.OFF, Verdict.RELAY),
        (CollisionGuard.HOLD, Verdict.HOLD),
        (CollisionGuard.NOTIFY, Verdict.NOTIFY),
    ],
)
def test_the_release_mode(guard: CollisionGuard, expected: Verdict) -> None:
    release = GuardedRelease("R", True, guard, frozenset({B1, B2}))
    assert decide(reply(), [answer()], [release]).verdict is expected


def test_only_sharing_releases_holding_both_members_count() -> None:
    not_sharing = GuardedRelease("R", False, CollisionGuard.HOLD, frozenset({B1, B2}))
    only_one = GuardedRelease("S", True, CollisionGuard.HOLD, frozenset({B1, GF}))
    assert decide(reply(), [answer()], [not_sharing, only_one]).verdict is Verdict.RELAY


def test_the_strictest_release_decides() -> None:
    notify = GuardedRelease("Kunde B mit GF", True, CollisionGuard.NOTIFY, frozenset({B1, B2, GF}))
    long = GuardedRelease("Long", True, CollisionGuard.HOLD, frozenset({B1, B2}), 7200, AfterTimeout.RELEASE)
    short = GuardedRelease(
        "Short", True, CollisionGuard.HOLD, frozenset({B1, B2}), 3600, AfterTimeout.RELEASE
    )
    short_w = GuardedRelease(
        "ShortW", True, CollisionGuard.HOLD, frozenset({B1, B2}), 3600, AfterTimeout.WITHDRAW
    )
    for releases in itertools.permutations([notify, long, short, short_w]):
        assert decide(reply(), [answer()], list(releases)).release == short_w
    assert decide(reply(), [answer()], [notify]).verdict is Verdict.NOTIFY


def test_the_first_colliding_answer_is_named() -> None:
    answers = [answer(20, 60), answer(10, 70, author=GF), answer(10, 55)]
    gf = GuardedRelease("GF", True, CollisionGuard.HOLD, frozenset({B1, B2, GF}))
    assert decide(reply(), answers, [gf]).collides_with == answer(10, 55)
    # An answer whose author shares no guarding release with the replier is passed over.
    assert decide(
        reply(), [answer(5, 40, author=GF), answer(20, 60)], [SACHBEARBEITER]
    ).collides_with == answer(20, 60)


def test_defaults_and_durations() -> None:
    assert default_guard(True) is CollisionGuard.HOLD
    assert default_guard(False) is CollisionGuard.OFF
    assert parse_duration("4h") == 14400
    assert parse_duration(" 30M ") == 1800
    assert parse_duration("2d") == 172800
    for bad in ("", "4", "h", "0h", "59s", "31d", "4 h", "-1h", "1.5h", "4w"):
        with pytest.raises(ValueError, match="hold timeout"):
            parse_duration(bad)
    assert format_duration(86400) == "1d"
    assert format_duration(5400) == "90m"
    assert format_duration(61) == "61s"
    assert not hold_expired(at(0), 3600, at(59))
    assert hold_expired(at(0), 3600, at(60))


@given(st.integers(min_value=60, max_value=30 * 86400))
def test_durations_read_back(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


# --- properties ----------------------------------------------------------------------------------------

minutes = st.integers(min_value=0, max_value=20)


@given(
    delivered_1=minutes,
    delivered_2=minutes,
    accepted_1=minutes,
    accepted_2=minutes,
    pk_1=st.integers(1, 1000),
    pk_2=st.integers(1, 1000),
)
def test_of_two_crossing_answers_exactly_the_later_one_collides(
    delivered_1: int, delivered_2: int, accepted_1: int, accepted_2: int, pk_1: int, pk_2: int
) -> None:
    """Both members had their copies before either answered (one batch, or one second): whatever the
    times and ids, the answer accepted first goes through and the other is held; never both, never none."""
    if pk_1 == pk_2:
        pk_2 += 1000
    start = max(delivered_1, delivered_2)
    accepted_1, accepted_2 = start + accepted_1, start + accepted_2
    one = NewReply(pk_1, B1, at(accepted_1), frozenset(), at(-5), at(delivered_1))
    two = NewReply(pk_2, B2, at(accepted_2), frozenset(), at(-5), at(delivered_2))
    as_answer = {
        pk_1: EarlierAnswer(pk_1, B1, at(accepted_1), "<one@x>"),
        pk_2: EarlierAnswer(pk_2, B2, at(accepted_2), "<two@x>"),
    }
    verdicts = [
        decide(one, as_answer.values(), [SACHBEARBEITER]).verdict,
        decide(two, as_answer.values(), [SACHBEARBEITER]).verdict,
    ]
    assert sorted(verdicts) == [Verdict.HOLD, Verdict.RELAY]
    first = min((accepted_1, pk_1, 0), (accepted_2, pk_2, 1))[2]
    assert verdicts[first] is Verdict.RELAY


@given(
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(1, 99), st.sampled_from([B1, B2, GF]), st.booleans()),
        max_size=6,
        unique_by=lambda t: t[1],
    ),
    st.integers(0, 40),
    st.integers(0, 40),
    st.sampled_from(list(CollisionGuard)),
    st.data(),
)
def test_the_decision_follows_its_rules(
    raw: list[tuple[int, int, int, bool]],
    delivered: int,
    accepted: int,
    guard: CollisionGuard,
    data: st.DataObject,
) -> None:
    answers = [EarlierAnswer(pk, author, at(t), f"<{pk}@x>", withdrawn) for t, pk, author, withdrawn in raw]
    names = frozenset(data.draw(st.sets(st.sampled_from([f"<{pk}@x>" for pk in range(1, 100)]), max_size=3)))
    new = NewReply(100, B1, at(accepted), names, at(-5), at(delivered))
    release = GuardedRelease("R", True, guard, frozenset({B1, B2, GF}))
    decision = decide(new, answers, [release])
    # The order of the stored answers does not matter.
    assert decide(new, list(reversed(answers)), [release]) == decision
    crossing = [
        a
        for a in answers
        if a.author_id != B1
        and not a.withdrawn
        and delivered <= (a.accepted_at - T0).total_seconds() / 60 <= accepted  # ties: smaller id first
        and a.message_id not in names
    ]
    if guard is CollisionGuard.OFF or not crossing:
        assert decision.verdict is Verdict.RELAY
        assert decision.collides_with is None
    else:
        assert decision.verdict is (Verdict.HOLD if guard is CollisionGuard.HOLD else Verdict.NOTIFY)
        assert decision.collides_with == min(crossing, key=lambda a: (a.accepted_at, a.message_pk))
    # Off never holds; referencing everything never holds.
    everything = NewReply(
        100, B1, at(accepted), frozenset(a.message_id or "" for a in answers), at(-5), at(delivered)
    )
    assert decide(everything, answers, [release]).verdict is Verdict.RELAY
