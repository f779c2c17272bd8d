"""The routing plan (``gateway.domain.routing_plan``): refusals, Vorgang, participants and audience of a
submitted message, decided on facts read once; the seed's example of DESIGN.md §3 runs through it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from gateway.domain.audience import AsParticipant, SharedThrough, audience
from gateway.domain.model import Participant, ParticipantRole, Release
from gateway.domain.parsing import ParsedMessage
from gateway.domain.routing_plan import (
    Lookups,
    Refused,
    Routed,
    RoutingFacts,
    RoutingPlan,
    lookups,
    plan_submission,
    plan_submissions,
    rules_refusal,
)
from gateway.domain.rules import AddedParticipant, AllOf, Answer, Decision, Rule, Verdict
from gateway.domain.threading import Found
from tests.seed import ADDRESS, RELEASES, SEEN_BY

SENDER, TO, CC, BCC = ParticipantRole.SENDER, ParticipantRole.TO, ParticipantRole.CC, ParticipantRole.BCC

PORTFOLIO_ID = 1
PORTFOLIO = "makler-muster"
MEMBER_ID = {name: number for number, name in enumerate(ADDRESS, 1)}
NAME_OF = {number: name for name, number in MEMBER_ID.items()}
MEMBERS = {ADDRESS[name]: number for name, number in MEMBER_ID.items()}
RELEASE_LIST = tuple(
    Release(
        number,
        PORTFOLIO_ID,
        name,
        primary,
        share,
        member_ids=frozenset(MEMBER_ID[m] for m in members),
    )
    for number, (name, (primary, share, members)) in enumerate(RELEASES.items(), 11)
)
RELEASE = {r.name: r for r in RELEASE_LIST}
NO_RULES = Decision(rule_set="none")


def parsed(
    *,
    to: Sequence[str] = (),
    cc: Sequence[str] = (),
    subject: str = "Hallo",
    message_id: str | None = "<m@ams>",
    in_reply_to: Sequence[str] = (),
    references: Sequence[str] = (),
    vorgang_header: str | None = None,
) -> ParsedMessage:
    return ParsedMessage(
        message_id=message_id,
        in_reply_to=tuple(in_reply_to),
        references=tuple(references),
        subject=subject,
        from_addresses=("ams@makler-muster.example",),
        from_display_name="AMS",
        to=tuple(to),
        cc=tuple(cc),
        vorgang_header=vorgang_header,
        received_count=0,
        auto_submitted=None,
        defects=(),
    )


def routed(
    *recipients: str,
    decision: Decision = NO_RULES,
    message_id: str = "<m@ams>",
    to: Sequence[str] | None = None,
    cc: Sequence[str] = (),
    **header: str | Sequence[str] | None,
) -> Routed:
    """A message to ``recipients`` (named in To unless ``to``/``cc`` say otherwise)."""
    named_to = tuple(recipients) if to is None else tuple(to)
    message = parsed(to=named_to, cc=cc, message_id=message_id, **header)  # type: ignore[arg-type]
    return Routed(tuple(recipients), message, decision, message_id)


def facts(**changes: object) -> RoutingFacts:
    """The seed's directory, with nothing stored yet; ``changes`` replace fields."""
    base = RoutingFacts(PORTFOLIO_ID, PORTFOLIO, members=MEMBERS, releases=RELEASE_LIST)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def names(member_ids: object) -> set[str]:
    assert isinstance(member_ids, frozenset | tuple | set)
    return {NAME_OF[m] for m in member_ids}


def decided(**fields: object) -> Decision:
    return Decision(rule_set="abc", **fields)  # type: ignore[arg-type]


REJECTING = Rule(
    "spam", match=AllOf(()), verdict=Verdict.REJECT, answer=Answer(550, "5.7.1", "Refused: spam")
)
QUARANTINING = Rule("foreign", match=AllOf(()), verdict=Verdict.QUARANTINE, reason="foreign sender")


# --- the seed's example (DESIGN.md §3), through the plan ------------------------------------------------


@pytest.mark.parametrize("name", list(SEEN_BY))
def test_the_seed_example_through_the_plan(name: str) -> None:
    plan = plan_submission(routed(ADDRESS[name]), facts())
    assert plan.stored
    assert names(plan.audience.members) == SEEN_BY[name]
    assert plan.participants == (Participant(MEMBER_ID[name], TO),)
    assert names(plan.copies) == SEEN_BY[name]


def test_the_seed_example_explains_why_gf_b_is_seen_by_whom() -> None:
    plan = plan_submission(routed(ADDRESS["GF-B"]), facts())
    gf_b = MEMBER_ID["GF-B"]
    seen = plan.audience
    assert [NAME_OF[m] for m in seen.ordered()] == ["GF-B", "GF-A", "SB-B1", "SB-B2"]
    assert seen.via(gf_b) == (AsParticipant(TO),)
    assert seen.via(MEMBER_ID["GF-A"]) == (SharedThrough(13, "Geschäftsführer", gf_b),)
    assert seen.via(MEMBER_ID["SB-B1"]) == (SharedThrough(14, "Kunde B mit GF", gf_b),)
    assert [r.describe(lambda m: NAME_OF[m]) for r in seen.via(MEMBER_ID["SB-B2"])] == [
        'shared through release "Kunde B mit GF" because GF-B takes part'
    ]


def test_clerks_of_a_never_see_b_and_clerks_of_b_never_see_gf_a() -> None:
    to_b = plan_submission(routed(ADDRESS["SB-B1"]), facts())
    assert not {"SB-A1", "SB-A2"} & names(to_b.audience.members)
    to_gf_a = plan_submission(routed(ADDRESS["GF-A"]), facts())
    assert not {"SB-B1", "SB-B2"} & names(to_gf_a.audience.members)


def test_only_the_releases_the_read_returns_are_needed() -> None:
    """The storage layer reads only sharing releases that contain a named member; the plan is the same
    as with the whole directory."""
    for name in SEEN_BY:
        member = MEMBER_ID[name]
        read = tuple(r for r in RELEASE_LIST if r.share_vorgaenge and member in r.member_ids)
        whole = plan_submission(routed(ADDRESS[name]), facts())
        narrow = plan_submission(routed(ADDRESS[name]), facts(releases=read))
        assert narrow.audience == whole.audience


def test_releases_of_another_portfolio_and_without_sharing_bring_nobody_in() -> None:
    foreign = Release(99, 2, "Fremd", False, True, member_ids=frozenset(MEMBER_ID.values()))
    unshared = dataclasses.replace(RELEASE["Kunde A Sachbearbeiter"], share_vorgaenge=False)
    plan = plan_submission(routed(ADDRESS["SB-A1"]), facts(releases=(foreign, unshared)))
    assert names(plan.audience.members) == {"SB-A1"}


# --- refusals: what the session would answer ---------------------------------------------------------


def test_recipients_who_are_no_members_are_refused_at_rcpt() -> None:
    plan = plan_submission(routed("nobody@kunde-a.example", ADDRESS["SB-A1"], "x@y.example"), facts())
    assert plan.refused_recipients == ("nobody@kunde-a.example", "x@y.example")
    assert plan.refused is None
    assert plan.participants == (Participant(MEMBER_ID["SB-A1"], TO),)


def test_a_message_without_a_member_recipient_is_never_sent() -> None:
    plan = plan_submission(routed("nobody@kunde-a.example"), facts())
    assert plan.refused is Refused.NO_MEMBER
    assert not plan.stored
    assert plan.participants == ()
    assert plan.audience.members == frozenset()


def test_no_member_comes_before_what_the_rules_say() -> None:
    decision = decided(verdict=Verdict.REJECT, decided_by=REJECTING, answer=REJECTING.answer)
    plan = plan_submission(routed("nobody@kunde-a.example", decision=decision), facts())
    assert plan.refused is Refused.NO_MEMBER


def test_a_reject_rule_refuses() -> None:
    decision = decided(verdict=Verdict.REJECT, decided_by=REJECTING, answer=REJECTING.answer)
    plan = plan_submission(routed(ADDRESS["SB-A1"], decision=decision), facts())
    assert plan.refused is Refused.BY_RULE
    assert not plan.stored


def test_a_rule_naming_another_portfolio_refuses_and_the_own_one_does_not() -> None:
    elsewhere = plan_submission(routed(ADDRESS["SB-A1"], decision=decided(portfolio="anderer")), facts())
    assert elsewhere.refused is Refused.OTHER_PORTFOLIO
    own = plan_submission(routed(ADDRESS["SB-A1"], decision=decided(portfolio=PORTFOLIO)), facts())
    assert own.refused is None


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (NO_RULES, None),
        (decided(verdict=Verdict.REJECT, answer=REJECTING.answer), Refused.BY_RULE),
        (decided(verdict=Verdict.REJECT), None),  # a rejection without an answer never reaches here
        (decided(verdict=Verdict.QUARANTINE), None),
        (decided(portfolio="anderer"), Refused.OTHER_PORTFOLIO),
        (decided(portfolio=PORTFOLIO), None),
        (decided(verdict=Verdict.REJECT, answer=REJECTING.answer, portfolio="anderer"), Refused.BY_RULE),
    ],
)
def test_rules_refusal(decision: Decision, expected: Refused | None) -> None:
    assert rules_refusal(decision, PORTFOLIO) is expected


def test_a_quarantined_message_is_stored_with_its_audience_but_gets_no_copies() -> None:
    decision = decided(verdict=Verdict.QUARANTINE, decided_by=QUARANTINING, reason="foreign sender")
    plan = plan_submission(routed(ADDRESS["GF-B"], decision=decision), facts())
    assert plan.stored
    assert plan.quarantined
    assert names(plan.audience.members) == SEEN_BY["GF-B"]
    assert plan.copies == ()


# --- the Vorgang (DESIGN.md §6) ---------------------------------------------------------------------


KNOWN = facts(
    vorgaenge_by_reference={"VG-2026-000001": 101, "VG-2026-000002": 102},
    vorgaenge_by_message_id={"<earlier@ams>": 103},
    vorgaenge_by_key={"claim-1": 104},
)
KEYED = decided(vorgang_key="claim-1")


@pytest.mark.parametrize(
    ("header", "decision", "found", "vorgang_id"),
    [
        (
            {
                "vorgang_header": "VG-2026-000001",
                "in_reply_to": ["<earlier@ams>"],
                "subject": "[VG-2026-000002]",
            },
            KEYED,
            Found.EXPLICIT,
            101,
        ),
        ({"in_reply_to": ["<earlier@ams>"], "subject": "[VG-2026-000002]"}, KEYED, Found.THREAD, 103),
        ({"references": ["<x@y>", "<earlier@ams>"], "subject": "Re"}, KEYED, Found.THREAD, 103),
        ({"subject": "Re: [vg-2026-000002] Schaden"}, KEYED, Found.SUBJECT, 102),
        ({"subject": "Schaden"}, KEYED, Found.KEY, 104),
        ({"subject": "Schaden"}, NO_RULES, Found.NEW, -1),
        # Hints that name nothing known fall through to the next step.
        (
            {
                "vorgang_header": "VG-2026-000999",
                "in_reply_to": ["<unknown@ams>"],
                "subject": "[VG-2026-000998]",
            },
            KEYED,
            Found.KEY,
            104,
        ),
    ],
)
def test_the_vorgang_first_hit_wins(
    header: dict[str, object], decision: Decision, found: Found, vorgang_id: int
) -> None:
    plan = plan_submission(routed(ADDRESS["SB-A1"], decision=decision, **header), KNOWN)  # type: ignore[arg-type]
    assert (plan.found, plan.vorgang_id) == (found, vorgang_id)
    assert plan.opens_vorgang is (found is Found.NEW)
    assert plan.key is None


def test_a_new_vorgang_is_opened_with_the_rule_key() -> None:
    plan = plan_submission(routed(ADDRESS["SB-A1"], decision=decided(vorgang_key="claim-2")), KNOWN)
    assert (plan.found, plan.vorgang_id, plan.key) == (Found.NEW, -1, "claim-2")


def test_a_found_vorgang_is_not_keyed_again() -> None:
    plan = plan_submission(
        routed(ADDRESS["SB-A1"], decision=decided(vorgang_key="claim-2"), subject="[VG-2026-000001]"), KNOWN
    )
    assert (plan.found, plan.key) == (Found.SUBJECT, None)
    assert KNOWN.after(plan).vorgaenge_by_key == KNOWN.vorgaenge_by_key


# --- a batch: later messages find what earlier ones open ----------------------------------------------


def test_a_batch_joins_the_vorgang_an_earlier_message_opens_by_key() -> None:
    first, second, other = plan_submissions(
        [
            routed(ADDRESS["SB-A1"], decision=decided(vorgang_key="claim-9"), message_id="<1@ams>"),
            routed(ADDRESS["SB-A2"], decision=decided(vorgang_key="claim-9"), message_id="<2@ams>"),
            routed(ADDRESS["SB-A1"], decision=decided(vorgang_key="claim-8"), message_id="<3@ams>"),
        ],
        facts(),
    )
    assert (first.found, first.vorgang_id, first.key) == (Found.NEW, -1, "claim-9")
    assert (second.found, second.vorgang_id, second.key) == (Found.KEY, -1, None)
    assert (other.found, other.vorgang_id, other.key) == (Found.NEW, -2, "claim-8")


def test_a_batch_threads_an_answer_to_an_earlier_message() -> None:
    first, answer = plan_submissions(
        [
            routed(ADDRESS["SB-A1"], message_id="<1@ams>"),
            routed(ADDRESS["SB-A1"], message_id="<2@ams>", in_reply_to=["<1@ams>"]),
        ],
        facts(),
    )
    assert (first.found, first.vorgang_id) == (Found.NEW, -1)
    assert (answer.found, answer.vorgang_id) == (Found.THREAD, -1)


def test_a_batch_threads_to_a_stored_vorgang_through_an_earlier_message() -> None:
    first, answer = plan_submissions(
        [
            routed(ADDRESS["SB-A1"], message_id="<1@ams>", subject="[VG-2026-000002] Re"),
            routed(ADDRESS["SB-A1"], message_id="<2@ams>", references=["<1@ams>"]),
        ],
        KNOWN,
    )
    assert (first.found, first.vorgang_id) == (Found.SUBJECT, 102)
    assert (answer.found, answer.vorgang_id) == (Found.THREAD, 102)


def test_the_facts_after_a_plan() -> None:
    plan = plan_submission(
        routed(ADDRESS["SB-A1"], decision=decided(vorgang_key="k"), message_id="<n@a>"), facts()
    )
    after = facts().after(plan)
    assert after.vorgaenge_by_message_id == {"<n@a>": -1}
    assert after.vorgaenge_by_key == {"k": -1}
    assert after.opened == 1
    assert facts().opened == 0  # facts are values: the earlier ones are unchanged


def test_facts_keep_no_reference_to_the_callers_dicts() -> None:
    members = dict(MEMBERS)
    held = facts(members=members)
    members.clear()
    assert plan_submission(routed(ADDRESS["SB-A1"]), held).stored
    with pytest.raises(TypeError):
        held.members["x@y"] = 1  # type: ignore[index]


# --- participants ----------------------------------------------------------------------------------


def test_roles_come_from_the_header_and_a_blind_participant_brings_nobody_in() -> None:
    plan = plan_submission(
        routed(
            ADDRESS["SB-A1"], ADDRESS["GF-B"], ADDRESS["SB-B1"], to=[ADDRESS["SB-A1"]], cc=[ADDRESS["GF-B"]]
        ),
        facts(),
    )
    assert plan.participants == (
        Participant(MEMBER_ID["SB-A1"], TO),
        Participant(MEMBER_ID["GF-B"], CC),
        Participant(MEMBER_ID["SB-B1"], BCC),
    )
    # SB-B1 is blind: SB-B2 sees the message because GF-B (Cc) brings "Kunde B mit GF" in, not SB-B1.
    assert plan.audience.via(MEMBER_ID["SB-B2"]) == (SharedThrough(14, "Kunde B mit GF", MEMBER_ID["GF-B"]),)


def test_a_blind_participant_alone_sees_it_alone() -> None:
    plan = plan_submission(routed(ADDRESS["SB-B1"], to=["ams@makler-muster.example"]), facts())
    assert plan.participants == (Participant(MEMBER_ID["SB-B1"], BCC),)
    assert names(plan.audience.members) == {"SB-B1"}


def test_rules_add_members_and_leave_out_who_is_none() -> None:
    decision = decided(
        participants=(
            AddedParticipant(ADDRESS["GF-B"], "cc"),
            AddedParticipant("gone@kunde-b.example", "to"),
            AddedParticipant(ADDRESS["SB-A1"], "cc"),  # a recipient already: keeps its role
        )
    )
    plan = plan_submission(routed(ADDRESS["SB-A1"], decision=decision), facts())
    assert plan.participants == (Participant(MEMBER_ID["SB-A1"], TO), Participant(MEMBER_ID["GF-B"], CC))
    assert plan.skipped == ("gone@kunde-b.example",)
    assert names(plan.audience.members) == SEEN_BY["SB-A1"] | SEEN_BY["GF-B"]


# --- what the facts must hold ------------------------------------------------------------------------


def test_lookups_name_everything_the_plans_ask_for() -> None:
    wanted = lookups(
        [
            routed(
                ADDRESS["SB-A1"],
                decision=decided(vorgang_key="claim-1", participants=(AddedParticipant(ADDRESS["GF-B"]),)),
                vorgang_header="vg-2026-000001",
                in_reply_to=["<a@x>"],
                references=["<b@x>"],
                subject="[VG-2026-000002] [VG-2026-000003]",
            ),
            routed("nobody@kunde-a.example"),
        ]
    )
    assert wanted == Lookups(
        references=frozenset({"VG-2026-000001", "VG-2026-000002", "VG-2026-000003"}),
        message_ids=frozenset({"<a@x>", "<b@x>"}),
        keys=frozenset({"claim-1"}),
        addresses=frozenset({ADDRESS["SB-A1"], ADDRESS["GF-B"], "nobody@kunde-a.example"}),
    )
    assert lookups([]) == Lookups()


# --- properties ------------------------------------------------------------------------------------

ADDRESSES = [*ADDRESS.values(), "nobody@kunde-a.example", "x@fremd.example"]
KEYS = ["claim-1", "claim-2", "claim-3"]
IDS = [f"<{n}@ams>" for n in range(6)]


@st.composite
def messages(draw: st.DrawFn, number: int) -> Routed:
    recipients = tuple(draw(st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=4, unique=True)))
    to = draw(st.lists(st.sampled_from(recipients), unique=True))
    cc = draw(st.lists(st.sampled_from([a for a in recipients if a not in to] or ["-"]), unique=True))
    added = draw(st.lists(st.sampled_from(ADDRESSES), max_size=2, unique=True))
    decision = decided(
        vorgang_key=draw(st.none() | st.sampled_from(KEYS)),
        participants=tuple(AddedParticipant(a, draw(st.sampled_from(["to", "cc"]))) for a in added),
        verdict=draw(st.sampled_from([Verdict.ACCEPT, Verdict.QUARANTINE])),
    )
    return routed(
        *recipients,
        decision=decision,
        message_id=f"<m{number}@ams>",
        to=to,
        cc=[c for c in cc if c != "-"],
        in_reply_to=draw(
            st.lists(st.sampled_from([*IDS, *(f"<m{n}@ams>" for n in range(number))]), max_size=2)
        ),
        subject=draw(st.sampled_from(["Hallo", "[VG-2026-000001] Re", "[VG-2026-000009] Re"])),
    )


@st.composite
def batches(draw: st.DrawFn) -> list[Routed]:
    count = draw(st.integers(1, 6))
    return [draw(messages(n)) for n in range(count)]


@st.composite
def directories(draw: st.DrawFn) -> RoutingFacts:
    releases = tuple(
        Release(
            n,
            PORTFOLIO_ID,
            f"r{n}",
            False,
            draw(st.booleans()),
            member_ids=frozenset(draw(st.lists(st.sampled_from(list(MEMBER_ID.values())), max_size=4))),
        )
        for n in range(draw(st.integers(0, 4)))
    )
    known_ids = draw(st.dictionaries(st.sampled_from(IDS), st.integers(1, 5), max_size=3))
    known_keys = draw(st.dictionaries(st.sampled_from(KEYS), st.integers(1, 5), max_size=2))
    return facts(
        releases=releases,
        vorgaenge_by_reference={"VG-2026-000001": 1},
        vorgaenge_by_message_id=known_ids,
        vorgaenge_by_key=known_keys,
    )


@settings(max_examples=300, deadline=None)
@given(batches(), directories())
def test_a_batch_is_planned_as_one_message_after_another(batch: list[Routed], known: RoutingFacts) -> None:
    plans = plan_submissions(batch, known)
    current = known
    for message, plan in zip(batch, plans, strict=True):
        # What the statistics should show reached: every step of DESIGN.md §6, inside a batch too.
        event(f"found: {plan.found.value}{' in the batch' if plan.vorgang_id < 0 else ''}")
        assert plan == plan_submission(message, current)
        current = current.after(plan)
    # New Vorgänge are numbered -1, -2, … in the order they are opened, each by one message.
    openers = [p.vorgang_id for p in plans if p.opens_vorgang]
    assert openers == [-(n + 1) for n in range(len(openers))]
    assert all(p.vorgang_id in openers or p.vorgang_id > 0 for p in plans)


@settings(max_examples=300, deadline=None)
@given(batches(), directories())
def test_what_a_plan_says_of_each_message(batch: list[Routed], known: RoutingFacts) -> None:
    for message, plan in zip(batch, plan_submissions(batch, known), strict=True):
        recipients = set(message.recipients)
        assert set(plan.refused_recipients) == {a for a in recipients if a not in MEMBERS}
        assert (plan.refused is Refused.NO_MEMBER) is recipients.isdisjoint(MEMBERS)
        addressed = {p.member_id for p in plan.participants}
        assert {MEMBERS[a] for a in recipients if a in MEMBERS} <= addressed
        assert set(plan.skipped) == {
            p.address for p in message.decision.participants if p.address not in MEMBERS
        }
        assert len(plan.participants) == len(addressed)  # each member once
        assert addressed <= plan.audience.members
        assert plan.audience == audience(PORTFOLIO_ID, plan.participants, known.releases)
        assert plan.copies == (() if plan.quarantined else plan.audience.ordered())
        assert plan.quarantined is (message.decision.verdict is Verdict.QUARANTINE)


@settings(max_examples=200, deadline=None)
@given(batches(), directories())
def test_the_set_based_read_is_enough(batch: list[Routed], whole: RoutingFacts) -> None:
    """Facts narrowed to what ``lookups`` names (as gateway.db.acceptance.routing_facts reads them) give
    the same plans as the whole directory and everything stored."""
    wanted = lookups(batch)
    members = {a: m for a, m in whole.members.items() if a in wanted.addresses}
    narrow = facts(
        members=members,
        releases=tuple(
            r for r in whole.releases if r.share_vorgaenge and r.member_ids & set(members.values())
        ),
        vorgaenge_by_reference={
            r: v for r, v in whole.vorgaenge_by_reference.items() if r in wanted.references
        },
        vorgaenge_by_message_id={
            m: v for m, v in whole.vorgaenge_by_message_id.items() if m in wanted.message_ids
        },
        vorgaenge_by_key={k: v for k, v in whole.vorgaenge_by_key.items() if k in wanted.keys},
    )
    assert plan_submissions(batch, narrow) == plan_submissions(batch, whole)


def test_a_plan_is_a_value() -> None:
    plan = plan_submission(routed(ADDRESS["SB-A1"]), facts())
    assert isinstance(plan, RoutingPlan)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.vorgang_id = 5  # type: ignore[misc]
    assert plan == plan_submission(routed(ADDRESS["SB-A1"]), facts())
