"""Reading rules files: every problem at FILE:LINE:COL, files in name order, the example vs. the seed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.domain.rules import DirectoryNames, FieldName, FieldTest, PatternKind, Submitted, Verdict
from gateway.errors import RulesFileError
from gateway.routing.files import directory_problems, load_rules, rules_files
from tests.seed import ADDRESS

REPOSITORY = Path(__file__).parent.parent.parent
SEED = DirectoryNames(
    members={"makler-muster": frozenset(ADDRESS.values())},
    backoffices={"makler-muster": frozenset({"ams"})},
)


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems_of(tmp_path: Path, text: str) -> list[str]:
    write(tmp_path / "rules", "10-test.yaml", text)
    with pytest.raises(RulesFileError) as caught:
        load_rules(tmp_path / "rules")
    prefix = f"{tmp_path / 'rules' / '10-test.yaml'}:"
    assert all(str(p).startswith(prefix) for p in caught.value.problems)
    return [str(p).removeprefix(prefix) for p in caught.value.problems]


def test_the_example_is_valid_against_the_seeds_directory() -> None:
    loaded = load_rules(REPOSITORY / "rules")
    assert [r.name for r in loaded.rule_set.rules] == [
        "claim-number",
        "urgent-b-to-gf",
        "spam-from-ams",
        "foreign-sender",
    ]
    assert directory_problems(loaded.references, SEED) == []
    decision = loaded.rule_set.decide(
        Submitted(
            "ams@makler-muster.example", (ADDRESS["SB-B1"],), "Schadennummer 2026-4711", backoffice="ams"
        )
    )
    assert decision.vorgang_key == "claim-2026-4711"
    assert decision.set_headers == (("X-Claim-Number", "2026-4711"),)


def test_a_full_rule(tmp_path: Path) -> None:
    write(
        tmp_path / "rules",
        "a.yaml",
        """
        version: 1
        rules:
          - name: everything
            match:
              sender: ams@makler-muster.example
              sender_domain: {glob: "makler-*.example"}
              recipient: {regex: '^sb-'}
              recipient_domain: kunde-b.example
              subject: {regex: 'Schaden (?P<claim_no>[0-9]+)', ignore_case: true}
              header: {name: X-Prio, exact: "1"}
              backoffice: ams
              listener: submission
              size: {over: 1KiB, under: 10MiB}
              any: [{header: {name: X-A}}, {not: {subject: x}}]
            portfolio: makler-muster
            vorgang_key: "claim-{claim_no}"
            participants: [gf-b@kunde-b.example, {address: GF-A@kunde-a.example, role: to}]
            set_headers: {X-Claim: "{claim_no}"}
            strip_headers: X-Internal
            reject: {code: 451, status: 4.7.1, text: "Not now"}
            then: continue
        """,
    )
    [rule] = load_rules(tmp_path / "rules").rule_set.rules
    assert rule.portfolio == "makler-muster"
    assert rule.vorgang_key == "claim-{claim_no}"
    assert [(p.address, p.role) for p in rule.participants] == [
        ("gf-b@kunde-b.example", "cc"),
        ("gf-a@kunde-a.example", "to"),
    ]
    assert rule.set_headers == (("X-Claim", "{claim_no}"),)
    assert rule.strip_headers == ("X-Internal",)
    assert rule.verdict is Verdict.REJECT
    assert str(rule.answer) == "451 4.7.1 Not now"
    assert rule.stops is False
    assert str(rule.where).endswith("a.yaml:3:5")
    message = Submitted(
        "ams@makler-muster.example",
        ("sb-b1@kunde-b.example",),
        "schaden 12",
        (("X-Prio", "1"),),
        "ams",
        "submission",
        2000,
    )
    assert load_rules(tmp_path / "rules").rule_set.decide(message).vorgang_key == "claim-12"


def test_a_header_test_with_only_a_name_asks_for_presence(tmp_path: Path) -> None:
    write(tmp_path / "rules", "a.yaml", "rules: [{name: h, match: {header: {name: X-A}}, accept: true}]\n")
    [rule] = load_rules(tmp_path / "rules").rule_set.rules
    assert isinstance(rule.match, FieldTest)
    assert rule.match.field is FieldName.HEADER
    assert rule.match.pattern.kind is PatternKind.REGEX


def test_files_load_in_name_order_and_hidden_files_are_left_out(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    write(rules, "20-b.yaml", "rules: [{name: b, match: {}}]\n")
    write(rules, "10-a.yml", "rules: [{name: a, match: {}}]\n")
    write(rules, ".#20-b.yaml", "not: valid: yaml: [\n")
    write(rules, "notes.txt", "not rules")
    write(rules, "30-empty.yaml", "")
    assert [p.name for p in rules_files(rules)] == ["10-a.yml", "20-b.yaml", "30-empty.yaml"]
    loaded = load_rules(rules)
    assert [r.name for r in loaded.rule_set.rules] == ["a", "b"]
    assert len(loaded.rule_set.digest) == 16


def test_no_directory_is_no_rules(tmp_path: Path) -> None:
    loaded = load_rules(tmp_path / "absent")
    assert loaded.rule_set.rules == ()


def test_the_digest_changes_with_the_bytes(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    write(rules, "a.yaml", "rules: [{name: a, match: {}}]\n")
    before = load_rules(rules).rule_set.digest
    write(rules, "a.yaml", "rules: [{name: a, match: {}}]  # comment\n")
    assert load_rules(rules).rule_set.digest != before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "rules:\n  - name: x\n    match: {subjekt: hallo}\n",
            [
                "3:13: unknown key 'subjekt' in match (known keys: sender, sender_domain, recipient, "
                "recipient_domain, subject, backoffice, listener, header, size, all, any, not)"
            ],
        ),
        (
            "rules:\n  - name: x\n    match: {}\n    acept: true\n",
            [
                "4:5: unknown key 'acept' in a rule (known keys: name, match, portfolio, vorgang_key, "
                "participants, set_headers, strip_headers, accept, reject, quarantine, then)"
            ],
        ),
        (
            "rules:\n  - name: x\n    match:\n      subject: {regex: 'Schaden (?P<n>[0-9]+'}\n",
            ["4:24: subject: bad regular expression at position 8: missing ), unterminated subpattern"],
        ),
        (
            "rules:\n  - name: x\n    match: {subject: {regex: '(?P<claim>[0-9]+)'}}\n"
            '    vorgang_key: "claim-{claim_no}"\n',
            [
                "4:18: vorgang_key uses {claim_no}, which no regex of this rule's match defines outside "
                "a 'not' (named groups defined: claim)"
            ],
        ),
        (
            "rules:\n  - name: x\n    match: {not: {subject: {regex: '(?P<n>1)'}}}\n"
            "    vorgang_key: 'k-{n}'\n",
            [
                "4:18: vorgang_key uses {n}, which no regex of this rule's match defines outside a 'not' "
                "(named groups defined: none)"
            ],
        ),
        (
            "rules:\n  - name: x\n    match: {}\n    reject: {code: 550, status: 4.7.1, text: Nein}\n",
            ["4:13: the enhanced status code 4.7.1 is of class 4, the code 550 of class 5; they must agree"],
        ),
        (
            "rules:\n  - name: x\n    match: {}\n    reject: {code: 250, status: 2.0.0, text: Ja}\n",
            ["4:13: a rejection's code is 4xx (try again later) or 5xx (refused), not 250"],
        ),
        (
            "rules:\n  - name: x\n    match: {}\n    reject: {code: '550', status: 5.7.1}\n",
            ["4:13: reject lacks the required key 'text'"],
        ),
        (
            "rules:\n  - name: x\n    match: {}\n    accept: true\n    quarantine: true\n",
            ["5:17: a rule has one verdict; this one has accept and quarantine"],
        ),
        (
            "rules:\n  - name: x\n    match: {}\n    set_headers: {Reply-To: x@y.example}\n",
            [
                "4:19: set_headers cannot change Reply-To: the gateway's own headers and the reply path "
                "are not for rules"
            ],
        ),
        (
            "rules:\n  - name: x\n    match: {}\n    strip_headers: [X-Gateway-Vorgang, 'bad name']\n",
            [
                "4:21: strip_headers cannot change X-Gateway-Vorgang: the gateway's own headers and the "
                "reply path are not for rules",
                "4:40: 'bad name' is not a header name (printable ASCII without spaces or colons)",
            ],
        ),
        (
            "rules:\n  - name: x\n    match: {}\n    participants: [not-an-address]\n",
            ["4:20: participant: 'not-an-address' is not a valid mail address"],
        ),
        (
            "rules:\n  - name: x\n    match: {}\n    then: later\n",
            ["4:11: then must be stop or continue, not 'later'"],
        ),
        (
            "rules:\n  - name: x\n    match: {size: {over: lots}}\n",
            ["3:26: size over must be a number of bytes or a size such as 10MiB, 512KiB, 2MB"],
        ),
        (
            "rules:\n  - name: x\n    match: {any: []}\n",
            ["3:18: any needs at least one condition"],
        ),
        (
            "rules:\n  - name: x\n    match: {sender: {glob: '*', regex: x}}\n",
            ["3:21: sender needs exactly one of exact, glob or regex"],
        ),
        (
            # A match with a problem says it once: its groups are unknown, so the key is not judged.
            "rules:\n  - name: x\n    match: {subjekt: {regex: '(?P<n>1)'}}\n    vorgang_key: 'k-{n}'\n",
            ["3:13: unknown key 'subjekt' in match"],
        ),
        (
            "rules:\n  - match: {}\n",
            ["2:5: a rule lacks the required key 'name'"],
        ),
        (
            "rules:\n  - name: x\n    match: {}\n  - name: x\n    match: {subject: a}\n",
            ["4:5: a rule named 'x' exists already at "],
        ),
        (
            "rules: [\n",
            ["2:1: YAML syntax: expected the node content, but found '<stream end>'"],
        ),
        (
            "version: 2\nrules: []\n",
            ["1:10: unsupported version; this gateway reads version 1"],
        ),
    ],
)
def test_problems_name_line_and_column(tmp_path: Path, text: str, expected: list[str]) -> None:
    found = problems_of(tmp_path, text)
    assert len(found) == len(expected), found
    for got, want in zip(found, expected, strict=True):
        assert got.startswith(want), (got, want)


def test_a_rule_after_a_stopping_catch_all_is_unreachable(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        """
        rules:
          - name: continue-is-fine
            match: {}
            set_headers: {X-A: "1"}
          - name: catch-all
            match: {subject: {glob: "*"}}
            accept: true
          - name: too-late
            match: {subject: Hallo}
            reject: {code: 550, status: 5.7.1, text: Nein}
        """,
    )
    assert found == [
        "8:5: rule 'too-late' is never reached: rule 'catch-all' at "
        f"{tmp_path / 'rules' / '10-test.yaml'}:5:5 matches every message and stops"
    ]


def test_every_problem_of_every_file_at_once(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    write(rules, "a.yaml", "rules:\n  - name: a\n    match: {subjekt: x}\n")
    write(rules, "b.yaml", "rules:\n  - name: b\n    match: {}\n    accept: maybe\n")
    with pytest.raises(RulesFileError) as caught:
        load_rules(rules)
    assert [p.where for p in caught.value.problems] == [
        f"{rules / 'a.yaml'}:3:13",
        f"{rules / 'b.yaml'}:4:13",
    ]


def test_names_the_directory_lacks(tmp_path: Path) -> None:
    write(
        tmp_path / "rules",
        "a.yaml",
        """
        rules:
          - name: a
            match: {backoffice: bms, recipient: nobody@kunde-a.example}
            portfolio: makler-muster
            participants: [gf-b@kunde-b.example, sb-z@kunde-b.example]
          - name: b
            match: {}
            portfolio: makler-mustr
            participants: [sb-y@kunde-b.example]
        """,
    )
    loaded = load_rules(tmp_path / "rules")
    found = [str(p).split("a.yaml:")[1] for p in directory_problems(loaded.references, SEED)]
    assert found == [
        "3:25: there is no back office bms in any portfolio",
        "3:41: there is no member nobody@kunde-a.example in any portfolio",
        "5:42: there is no member sb-z@kunde-b.example in portfolio makler-muster",
        "8:16: there is no portfolio makler-mustr (known: makler-muster)",
    ]
