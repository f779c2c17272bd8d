"""Routing rules, pure: patterns, conditions, templates, answers, and how the hits of a rule set combine."""

from __future__ import annotations

import fnmatch
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.rules import (
    AddedParticipant,
    AllOf,
    Answer,
    AnyOf,
    FieldName,
    FieldTest,
    InvalidAnswer,
    InvalidTemplate,
    NotOf,
    Pattern,
    PatternKind,
    Rule,
    RuleSet,
    SizeTest,
    Submitted,
    Verdict,
    Where,
    always_matches,
    check,
    defined_groups,
    digest_of,
    is_protected_header,
    render_template,
    template_fields,
    unreachable,
)

MAIL = Submitted(
    sender="AMS@Makler-Muster.example",
    recipients=("sb-a1@kunde-a.example", "gf-b@kunde-b.example"),
    subject="Schadennummer 2026-4711: Kfz",
    headers=(("X-Spam-Flag", "NO"), ("Importance", "High"), ("X-Tag", "eins"), ("x-tag", "zwei")),
    backoffice="ams",
    listener="submission",
    size=2048,
)


def regex(text: str, *, ignore_case: bool = False) -> Pattern:
    return Pattern(PatternKind.REGEX, text, ignore_case)


def exact(text: str, *, ignore_case: bool = False) -> Pattern:
    return Pattern(PatternKind.EXACT, text, ignore_case)


def glob(text: str, *, ignore_case: bool = False) -> Pattern:
    return Pattern(PatternKind.GLOB, text, ignore_case)


def on(field: FieldName, pattern: Pattern, header: str = "") -> FieldTest:
    return FieldTest(field, pattern, header=header)


# --- patterns ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        (exact("ams"), "ams", True),
        (exact("ams"), "ams2", False),
        (exact("AMS"), "ams", False),
        (exact("AMS", ignore_case=True), "ams", True),
        (exact("a.b"), "axb", False),  # exact means exact: a dot is a dot
        (glob("*@kunde-?.example"), "sb-a1@kunde-a.example", True),
        (glob("*@kunde-?.example"), "sb-a1@kunde-ab.example", False),
        (glob("kunde-[ab].example"), "kunde-c.example", False),
        (regex("4711"), "Schaden 4711 Kfz", True),  # a regex matches anywhere
        (regex("^4711"), "Schaden 4711 Kfz", False),
        (regex("schaden"), "Schaden", False),
        (regex("schaden", ignore_case=True), "Schaden", True),
    ],
)
def test_patterns(pattern: Pattern, value: str, matches: bool) -> None:
    assert (pattern.match(value) is not None) is matches


def test_a_regex_hands_over_only_the_named_groups_that_took_part() -> None:
    pattern = regex(r"(?P<claim>[0-9]+)|(?P<policy>P-[0-9]+)")
    assert pattern.match("Schaden 4711") == {"claim": "4711"}
    assert pattern.match("Vertrag P-12") == {"policy": "P-12"}
    assert pattern.groups == {"claim", "policy"}


def test_an_invalid_regex_raises_re_error() -> None:
    with pytest.raises(re.error):
        regex("(unclosed")


@given(st.text(max_size=20), st.text(max_size=20))
def test_exact_matches_its_own_text_and_nothing_else(text: str, other: str) -> None:
    assert exact(text).match(text) == {}
    assert (exact(text).match(other) is not None) is (other == text)


@given(st.text(alphabet="ab*?.", max_size=8), st.text(alphabet="ab.", max_size=8))
def test_glob_agrees_with_fnmatchcase(pattern: str, value: str) -> None:
    assert (glob(pattern).match(value) is not None) is fnmatch.fnmatchcase(value, pattern)


@given(st.text(max_size=30))
def test_what_claims_to_match_everything_does(value: str) -> None:
    for pattern in (glob("*"), glob("**"), regex(""), regex(".*")):
        assert pattern.matches_everything
        assert pattern.match(value) is not None
    assert not exact("").matches_everything
    assert not regex("^$").matches_everything


# --- field tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field_test", "matches"),
    [
        (on(FieldName.SENDER, exact("ams@makler-muster.example")), True),  # addresses in lower case
        (on(FieldName.SENDER_DOMAIN, exact("makler-muster.example")), True),
        (on(FieldName.RECIPIENT, exact("gf-b@kunde-b.example")), True),  # any recipient will do
        (on(FieldName.RECIPIENT, exact("sb-b1@kunde-b.example")), False),
        (on(FieldName.RECIPIENT_DOMAIN, glob("kunde-b.*")), True),
        (on(FieldName.SUBJECT, regex("Kfz$")), True),
        (on(FieldName.SUBJECT, exact("schadennummer 2026-4711: kfz")), False),
        (on(FieldName.SUBJECT, exact("schadennummer 2026-4711: kfz", ignore_case=True)), True),
        (on(FieldName.BACKOFFICE, exact("ams")), True),
        (on(FieldName.LISTENER, exact("mx")), False),
        (on(FieldName.HEADER, exact("NO"), "x-spam-flag"), True),  # header names in any case
        (on(FieldName.HEADER, exact("zwei"), "X-Tag"), True),  # any of a repeated header
        (on(FieldName.HEADER, regex(""), "X-Absent"), False),  # absent: no value can match
    ],
)
def test_field_tests(field_test: FieldTest, matches: bool) -> None:
    assert check(field_test, MAIL).matched is matches


def test_the_null_sender_has_no_domain() -> None:
    bounce = Submitted(sender="", recipients=("a@b.example",))
    assert check(on(FieldName.SENDER_DOMAIN, exact("")), bounce).matched
    assert not check(on(FieldName.SENDER_DOMAIN, glob("?*")), bounce).matched


def test_a_check_says_why_in_words() -> None:
    hit = check(on(FieldName.SUBJECT, regex(r"(?P<claim_no>[0-9]{4}-[0-9]+)")), MAIL)
    assert hit.why == (
        'subject "Schadennummer 2026-4711: Kfz" matches regex "(?P<claim_no>[0-9]{4}-[0-9]+)" '
        "(claim_no=2026-4711)",
    )
    miss = check(on(FieldName.RECIPIENT, exact("x@y.example")), MAIL)
    assert miss.why == (
        'recipient "sb-a1@kunde-a.example", "gf-b@kunde-b.example" does not match "x@y.example"',
    )
    absent = check(on(FieldName.HEADER, exact("1"), "X-Priority"), MAIL)
    assert absent.why == ("header X-Priority: not in the message",)


@pytest.mark.parametrize(
    ("size_test", "matches"),
    [
        (SizeTest(over=2047), True),
        (SizeTest(over=2048), False),
        (SizeTest(under=2049), True),
        (SizeTest(under=2048), False),
        (SizeTest(over=1000, under=3000), True),
        (SizeTest(over=3000, under=4000), False),
        (SizeTest(), True),
    ],
)
def test_size(size_test: SizeTest, matches: bool) -> None:
    assert check(size_test, MAIL).matched is matches


# --- combinators -------------------------------------------------------------------------------------

YES = on(FieldName.BACKOFFICE, exact("ams"))
NO = on(FieldName.BACKOFFICE, exact("other"))


def test_all_any_not() -> None:
    assert check(AllOf((YES, YES)), MAIL).matched
    assert not check(AllOf((YES, NO)), MAIL).matched
    assert check(AllOf(()), MAIL).matched  # the explicit catch-all
    assert check(AnyOf((NO, YES)), MAIL).matched
    assert not check(AnyOf((NO, NO)), MAIL).matched
    assert check(NotOf(NO), MAIL).matched
    assert not check(NotOf(YES), MAIL).matched


def test_groups_flow_through_all_and_any_but_not_through_not() -> None:
    claim = on(FieldName.SUBJECT, regex(r"(?P<claim_no>[0-9]{4}-[0-9]+)"))
    to = on(FieldName.RECIPIENT, regex(r"^(?P<who>[^@]+)@kunde-b"))
    assert dict(check(AllOf((claim, to)), MAIL).groups) == {"claim_no": "2026-4711", "who": "gf-b"}
    assert dict(check(AnyOf((NO, to, claim)), MAIL).groups) == {"who": "gf-b"}
    assert dict(check(NotOf(NotOf(claim)), MAIL).groups) == {}
    assert defined_groups(AllOf((claim, NotOf(to)))) == {"claim_no"}
    assert defined_groups(AnyOf((claim, to))) == {"claim_no", "who"}


leaves = st.sampled_from([YES, NO])
conditions = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda cs: AllOf(tuple(cs))),
        st.lists(inner, min_size=1, max_size=3).map(lambda cs: AnyOf(tuple(cs))),
        inner.map(NotOf),
    ),
    max_leaves=8,
)


def _truth(condition: object) -> bool:
    if condition is YES:
        return True
    if condition is NO:
        return False
    if isinstance(condition, AllOf):
        return all(_truth(c) for c in condition.conditions)
    if isinstance(condition, AnyOf):
        return any(_truth(c) for c in condition.conditions)
    assert isinstance(condition, NotOf)
    return not _truth(condition.condition)


@given(conditions)
def test_combinators_are_boolean_logic(condition: AllOf | AnyOf | NotOf | FieldTest) -> None:
    assert check(condition, MAIL).matched is _truth(condition)
    assert check(NotOf(NotOf(condition)), MAIL).matched is _truth(condition)


@given(conditions)
def test_a_recognised_catch_all_matches_every_message(condition: AllOf | AnyOf | NotOf | FieldTest) -> None:
    if always_matches(condition):
        assert check(condition, MAIL).matched
        assert check(condition, Submitted(sender="", recipients=("x@y.example",), backoffice="")).matched


def test_catch_alls() -> None:
    assert always_matches(AllOf(()))
    assert always_matches(on(FieldName.SUBJECT, glob("*")))
    assert always_matches(AnyOf((NO, on(FieldName.SENDER, regex(".*")))))
    assert always_matches(SizeTest())
    assert not always_matches(on(FieldName.HEADER, regex(""), "X-Any"))  # a header may be absent
    assert not always_matches(AllOf((YES,)))
    assert not always_matches(NotOf(NO))  # true here, but not recognised: a False proves nothing


# --- templates and answers -------------------------------------------------------------------------------


def test_templates() -> None:
    assert template_fields("claim-{claim_no}") == ("claim_no",)
    assert template_fields("{a}-{b}-{a}") == ("a", "b")
    assert template_fields("{{literal}}") == ()
    assert render_template("claim-{claim_no}", {"claim_no": "4711"}) == "claim-4711"
    assert render_template("{{x}}-{a}", {"a": "1"}) == "{x}-1"
    assert render_template("claim-{claim_no}", {}) is None


@pytest.mark.parametrize("template", ["{0}", "{a.b}", "{a[0]}", "{a!r}", "{a:>5}", "{", "}", "{}"])
def test_templates_take_only_group_names(template: str) -> None:
    with pytest.raises(InvalidTemplate):
        template_fields(template)


@given(st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=20))
def test_group_values_are_not_templates_again(value: str) -> None:
    assert render_template("k-{g}", {"g": value + "{x}"}) == f"k-{value}{{x}}"


def test_answers() -> None:
    answer = Answer(550, "5.7.1", "Refused as spam")
    assert str(answer) == "550 5.7.1 Refused as spam"
    assert not answer.temporary
    assert Answer(451, "4.7.1", "Later").temporary


@pytest.mark.parametrize(
    ("code", "status", "text", "complaint"),
    [
        (250, "2.0.0", "OK", "4xx"),
        (354, "3.0.0", "x", "4xx"),
        (600, "5.0.0", "x", "4xx"),
        (550, "4.7.1", "x", "class 4, the code 550 of class 5"),
        (450, "5.7.1", "x", "class 5, the code 450 of class 4"),
        (550, "5.7", "x", "not of the form"),
        (550, "5.7.1.2", "x", "not of the form"),
        (550, "5.7.1", "", "printable"),
        (550, "5.7.1", "two\r\nlines", "printable"),
        (550, "5.7.1", "Ümlaut", "printable"),
    ],
)
def test_answers_that_are_no_answers(code: int, status: str, text: str, complaint: str) -> None:
    with pytest.raises(InvalidAnswer, match=re.escape(complaint)):
        Answer(code, status, text)


def test_protected_headers() -> None:
    for name in ("From", "reply-to", "X-Gateway-Vorgang", "x-gateway-anything", "Message-ID", "References"):
        assert is_protected_header(name)
    for name in ("X-Claim-Number", "Subject", "X-AMS-Routing"):
        assert not is_protected_header(name)


# --- rule sets ---------------------------------------------------------------------------------------------

CLAIM = on(FieldName.SUBJECT, regex(r"Schaden\w*\s+(?P<claim_no>[0-9]{4}-[0-9]+)"))


def rule(name: str, match: object = YES, line: int = 1, **actions: object) -> Rule:
    return Rule(name, match, Where("rules/t.yaml", line, 5), **actions)  # type: ignore[arg-type]


def test_no_rules_accept_as_before() -> None:
    decision = RuleSet().decide(MAIL)
    assert decision.verdict is Verdict.ACCEPT
    assert decision.hits == ()
    assert decision.misses == ()
    assert decision.vorgang_key is None
    assert decision.decided_by is None


def test_a_claim_number_keys_the_vorgang() -> None:
    rules = RuleSet((rule("claims", CLAIM, vorgang_key="claim-{claim_no}"),), "abc")
    decision = rules.decide(MAIL)
    assert decision.vorgang_key == "claim-2026-4711"
    assert decision.rule_set == "abc"
    assert decision.routed_by == ["claims (rules/t.yaml:1:5)"]
    other = rules.decide(Submitted("a@b.example", ("c@d.example",), subject="Hallo"))
    assert other.vorgang_key is None
    assert [m.rule.name for m in other.misses] == ["claims"]


def test_a_rule_without_verdict_continues_and_one_with_a_verdict_stops() -> None:
    rules = RuleSet(
        (
            rule("key", CLAIM, vorgang_key="claim-{claim_no}"),
            rule("cc-gf", participants=(AddedParticipant("gf-b@kunde-b.example"),)),
            rule("reject", answer=Answer(550, "5.7.1", "No"), verdict=Verdict.REJECT),
            rule("never-tried", verdict=Verdict.QUARANTINE),
        )
    )
    decision = rules.decide(MAIL)
    assert [h.rule.name for h in decision.hits] == ["key", "cc-gf", "reject"]
    assert decision.verdict is Verdict.REJECT
    assert str(decision.answer) == "550 5.7.1 No"
    assert decision.decided_by is not None
    assert decision.decided_by.name == "reject"
    assert decision.vorgang_key == "claim-2026-4711"
    assert decision.participants == (AddedParticipant("gf-b@kunde-b.example"),)


def test_then_overrides_the_default() -> None:
    rules = RuleSet(
        (
            rule("accept-but-go-on", verdict=Verdict.ACCEPT, stop=False),
            rule("stop-here", set_headers=(("X-A", "1"),), stop=True),
            rule("not-reached", set_headers=(("X-B", "2"),)),
        )
    )
    decision = rules.decide(MAIL)
    assert [h.rule.name for h in decision.hits] == ["accept-but-go-on", "stop-here"]
    assert decision.set_headers == (("X-A", "1"),)


def test_the_first_hit_decides_what_it_sets() -> None:
    rules = RuleSet(
        (
            rule("first", portfolio="p1", vorgang_key="k1", set_headers=(("X-A", "1"),)),
            rule("second", portfolio="p2", vorgang_key="k2", set_headers=(("x-a", "2"), ("X-B", "3"))),
            rule("quarantine", verdict=Verdict.QUARANTINE, reason="look", stop=False),
            rule("reject", verdict=Verdict.REJECT, answer=Answer(550, "5.7.1", "No")),
        )
    )
    decision = rules.decide(MAIL)
    assert decision.portfolio == "p1"
    assert decision.vorgang_key == "k1"
    assert decision.set_headers == (("X-A", "1"), ("X-B", "3"))
    assert decision.verdict is Verdict.QUARANTINE
    assert decision.reason == "look"
    assert any("portfolio p2 ignored" in note for note in decision.notes)


def test_participants_and_stripped_headers_add_up_and_a_set_header_is_not_stripped() -> None:
    rules = RuleSet(
        (
            rule("a", participants=(AddedParticipant("x@k.example", "to"),), strip_headers=("X-One",)),
            rule("b", participants=(AddedParticipant("x@k.example"), AddedParticipant("y@k.example"))),
            rule("c", strip_headers=("x-one", "X-Two", "X-Set"), set_headers=(("X-Set", "v"),)),
        )
    )
    decision = rules.decide(MAIL)
    assert decision.participants == (AddedParticipant("x@k.example", "to"), AddedParticipant("y@k.example"))
    assert decision.strip_headers == ("X-One", "X-Two")
    assert decision.set_headers == (("X-Set", "v"),)


def test_a_key_whose_group_did_not_take_part_keys_nothing_and_says_so() -> None:
    either = AnyOf((on(FieldName.SUBJECT, regex("(?P<claim_no>9999)")), YES))
    decision = RuleSet((rule("k", either, vorgang_key="claim-{claim_no}"),)).decide(MAIL)
    assert decision.vorgang_key is None
    assert decision.notes == (
        "k (rules/t.yaml:1:5): vorgang_key needs claim_no, which did not match; not keyed",
    )


def test_an_overlong_key_is_not_used() -> None:
    long = Submitted("a@b.example", ("c@d.example",), subject="x" * 300)
    decision = RuleSet((rule("k", on(FieldName.SUBJECT, regex("(?P<s>.+)")), vorgang_key="{s}"),)).decide(
        long
    )
    assert decision.vorgang_key is None
    assert decision.notes


def test_the_quarantine_reason_may_use_groups() -> None:
    decision = RuleSet((rule("q", CLAIM, verdict=Verdict.QUARANTINE, reason="claim {claim_no}"),)).decide(
        MAIL
    )
    assert decision.reason == "claim 2026-4711"


@given(st.lists(st.sampled_from([YES, NO]), max_size=6), st.lists(st.booleans(), min_size=6, max_size=6))
def test_hits_and_misses_are_the_tried_rules_in_order(matches: list[FieldTest], stops: list[bool]) -> None:
    rules = [rule(f"r{i}", m, stop=s) for i, (m, s) in enumerate(zip(matches, stops, strict=False))]
    decision = RuleSet(tuple(rules)).decide(MAIL)
    tried = [h.rule.name for h in decision.hits] + [m.rule.name for m in decision.misses]
    expected: list[str] = []
    for r in rules:
        expected.append(r.name)
        if r.match is YES and r.stops:
            break
    assert sorted(tried) == sorted(expected)
    assert [h.rule.name for h in decision.hits] == [n for n in expected if rules[int(n[1:])].match is YES]


def test_unreachable_rules_after_a_stopping_catch_all() -> None:
    rules = [
        rule("specific", CLAIM, verdict=Verdict.REJECT, answer=Answer(550, "5.7.1", "x")),
        rule("all-but-continue", AllOf(()), set_headers=(("X-A", "1"),)),
        rule("catch-all", AllOf(()), verdict=Verdict.ACCEPT),
        rule("late"),
        rule("later"),
    ]
    assert [(r.name, b.name) for r, b in unreachable(rules)] == [
        ("late", "catch-all"),
        ("later", "catch-all"),
    ]
    assert unreachable(rules[:3]) == []


def test_needs_headers() -> None:
    assert not RuleSet((rule("s", CLAIM),)).needs_headers
    assert RuleSet((rule("h", NotOf(AnyOf((NO, on(FieldName.HEADER, regex(""), "X-A"))))),)).needs_headers


def test_digest_depends_on_names_and_bytes() -> None:
    one = digest_of([("a.yaml", b"rules: []\n")])
    assert one == digest_of([("a.yaml", b"rules: []\n")])
    assert one != digest_of([("b.yaml", b"rules: []\n")])
    assert one != digest_of([("a.yaml", b"rules: [] \n")])
    assert digest_of([("a", b"bc")]) != digest_of([("ab", b"c")])


# --- participants: To, Cc and blind ----------------------------------------------------------------------


def test_envelope_recipients_the_header_does_not_name_are_blind_participants() -> None:
    from gateway.domain.model import Participant, ParticipantRole
    from gateway.domain.rules import route_participants

    members = {"sb-b1@kunde-b.example": 1, "sb-b2@kunde-b.example": 2, "gf-a@kunde-a.example": 3}
    found, skipped = route_participants(
        ["sb-b1@kunde-b.example", "sb-b2@kunde-b.example", "gf-a@kunde-a.example"],
        {"SB-B2@Kunde-B.example"},
        members,
        to=("sb-b1@KUNDE-B.example",),
    )
    assert found == [
        Participant(1, ParticipantRole.TO),
        Participant(2, ParticipantRole.CC),
        Participant(3, ParticipantRole.BCC),
    ]
    assert skipped == []
    # Without the header's To (callers that do not know it), every recipient not in Cc is in To.
    found, _ = route_participants(["gf-a@kunde-a.example"], set(), members)
    assert found == [Participant(3, ParticipantRole.TO)]
