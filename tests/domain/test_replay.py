"""Rule replay's worlds (``gateway.domain.replay``): stored mail is made here the way acceptance makes
it (``plan_submission`` message after message, the store learning each Vorgang and key), then replayed.

The properties: the live rules replay what was stored with no difference at all; a candidate's world
threads the messages exactly as acceptance would have threaded them under the candidate (the same
partition into Vorgänge), carrying its own assignments forward; the report attributes and bounds.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.parsing import parse_message
from gateway.domain.replay import (
    BatchFacts,
    Change,
    ChangeKind,
    History,
    Replay,
    Report,
    World,
)
from gateway.domain.routing_plan import Routed, RoutingFacts, plan_submission
from gateway.domain.rules import AllOf, Decision, Hit, Rule, Where

MEMBERS = {"sb-a1@kunde-a.example": 1}
KEYS = st.sampled_from([None, "claim-1", "claim-2", "claim-3"])
RULE = Rule("claims", match=AllOf(()), where=Where("rules/10-claims.yaml", 2, 5), vorgang_key="claim-{n}")


@dataclass(frozen=True)
class Mail:
    key: str | None
    candidate_key: str | None
    answers: int | None  # the index of an earlier mail it answers by In-Reply-To


def routed(index: int, mail: Mail, key: str | None) -> Routed:
    answers = f"In-Reply-To: <m{mail.answers}@ams>\r\n" if mail.answers is not None else ""
    raw = (
        f"From: ams@makler-muster.example\r\nTo: sb-a1@kunde-a.example\r\nSubject: Mail {index}\r\n"
        f"Message-ID: <m{index}@ams>\r\n{answers}\r\nText\r\n"
    ).encode()
    # The key comes from the claims rule, which the report then names.
    hits = (Hit(RULE, {}, ()),) if key is not None else ()
    decision = Decision(rule_set="t", vorgang_key=key, hits=hits)
    return Routed(("sb-a1@kunde-a.example",), parse_message(raw), decision, f"<m{index}@ams>")


def accept(mails: list[Mail], candidate: bool = False) -> list[History]:
    """What acceptance stores for ``mails``, one batch each, in order: the Vorgang of each."""
    by_message_id: dict[str, int] = {}
    by_key: dict[str, int] = {}
    stored: list[History] = []
    next_id = 100
    for index, mail in enumerate(mails):
        message = routed(index, mail, mail.candidate_key if candidate else mail.key)
        plan = plan_submission(
            message,
            RoutingFacts(1, "p", MEMBERS, (), {}, dict(by_message_id), dict(by_key)),
        )
        if plan.opens_vorgang:
            next_id += 1
            vorgang = next_id
            if plan.key is not None:
                by_key[plan.key] = vorgang
        else:
            vorgang = plan.vorgang_id
        by_message_id[message.message_id] = vorgang
        stored.append(
            History(
                row=index + 1,
                gateway_id=f"gw-{index}",
                message_id=message.message_id,
                subject=f"Mail {index}",
                vorgang_id=vorgang,
                opened=plan.opens_vorgang,
                key=plan.key if plan.opens_vorgang else None,
                quarantined=False,
                participants=frozenset((p.member_id, p.role.value) for p in plan.participants),
                copies=frozenset(plan.copies),
            )
        )
    return stored


def facts_of(stored: list[History]) -> BatchFacts:
    """Everything the store knows, with the rows that made it known (one batch holds all here)."""
    first: dict[int, int] = {}
    for h in stored:
        first.setdefault(h.vorgang_id, h.row)
    return BatchFacts(
        1,
        "p",
        members=MEMBERS,
        by_message_id={h.message_id: (h.row, h.vorgang_id) for h in stored},
        by_key={h.key: (first[h.vorgang_id], h.vorgang_id) for h in stored if h.key is not None},
    )


@st.composite
def mails(draw: st.DrawFn) -> list[Mail]:
    count = draw(st.integers(1, 14))
    found = []
    for index in range(count):
        answers = draw(st.one_of(st.none(), st.integers(0, index - 1))) if index else None
        found.append(Mail(draw(KEYS), draw(KEYS), answers))
    return found


def partition(labels: list[object]) -> set[frozenset[int]]:
    groups: dict[object, set[int]] = defaultdict(set)
    for index, label in enumerate(labels):
        groups[label].add(index)
    return {frozenset(g) for g in groups.values()}


@given(mails())
def test_the_live_rules_replay_what_was_stored_with_no_difference(batch: list[Mail]) -> None:
    stored = accept(batch)
    facts = facts_of(stored)
    report = Report()
    run = Replay(report)
    for index, (mail, history) in enumerate(zip(batch, stored, strict=True)):
        message = routed(index, mail, mail.key)
        run.message(message, message, history, facts)
    assert report.counts == {}
    assert report.not_reproduced == {}
    assert run.live.departures == run.candidate.departures == 0


@given(mails())
def test_a_candidate_world_threads_as_acceptance_would_have_under_the_candidate(batch: list[Mail]) -> None:
    stored = accept(batch)
    facts = facts_of(stored)
    world = World()
    placed = [
        world.step(routed(index, mail, mail.candidate_key), history, facts).vorgang
        for index, (mail, history) in enumerate(zip(batch, stored, strict=True))
    ]
    under_candidate = [h.vorgang_id for h in accept(batch, candidate=True)]
    assert partition(placed) == partition(under_candidate)
    # Its memory holds only where it departs from the store.
    departed = sum(1 for p, h in zip(placed, stored, strict=True) if p != h.vorgang_id)
    assert len(world._moved) == departed


def test_a_reply_follows_the_message_a_rekeying_rule_moved_and_is_blamed_on_that_rule() -> None:
    batch = [
        Mail("claim-1", "claim-1", None),
        Mail("claim-1-2", "claim-1", None),  # re-keyed: joins mail 0's Vorgang
        Mail(None, None, 1),  # answers mail 1: follows it
        Mail(None, None, None),
    ]
    stored = accept(batch)
    facts = facts_of(stored)
    report = Report()
    run = Replay(report)
    for index, (mail, history) in enumerate(zip(batch, stored, strict=True)):
        run.message(routed(index, mail, mail.key), routed(index, mail, mail.candidate_key), history, facts)
    label = RULE.label()
    assert {(rule, kind) for rule, kind, _, _ in report.groups()} == {
        (label, ChangeKind.VORGANG),
        (label, ChangeKind.KEY),
    }
    moved = report.examples[(label, ChangeKind.VORGANG)]
    assert [c.gateway_id for c in moved] == ["gw-1", "gw-2"]
    assert moved[0].before == stored[1].vorgang_id
    assert moved[0].after == stored[0].vorgang_id
    assert report.changed == 2


def test_a_message_is_planned_only_on_what_was_stored_before_it() -> None:
    # Mail 0 carries the key mail 1 opened in the store; at mail 0's time nobody knew it.
    batch = [Mail("claim-9", "claim-9", None), Mail("claim-9", "claim-9", None)]
    stored = accept(batch)
    facts = facts_of(stored)
    world = World()
    first = world.step(routed(0, batch[0], "claim-9"), stored[0], facts)
    assert first.plan.opens_vorgang
    assert first.vorgang == stored[0].vorgang_id


def test_the_report_keeps_a_few_examples_and_counts_all() -> None:
    report = Report(limit=2)
    for n in range(5):
        report.add([Change(ChangeKind.VERDICT, "r", f"gw-{n}", "s", "accept", "reject")])
    report.add([])
    assert report.messages == 6
    assert report.changed == 5
    [(rule, kind, count, examples)] = report.groups()
    assert (rule, kind, count) == ("r", ChangeKind.VERDICT, 5)
    assert [c.gateway_id for c in examples] == ["gw-0", "gw-1"]
