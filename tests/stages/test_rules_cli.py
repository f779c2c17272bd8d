"""``gateway rules check`` and ``gateway rules test``, as typed, against the seed's directory."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from tests.conftest import Gateway
from tests.seed import ADDRESS

REPOSITORY = Path(__file__).parent.parent.parent


def rules_dir(gateway: Gateway) -> Path:
    """The configured rules directory of the test's configuration: ``rules`` next to it (the default)."""
    return gateway.config.parent / "rules"


def write_rules(gateway: Gateway, text: str, name: str = "10-test.yaml") -> Path:
    directory = rules_dir(gateway)
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def eml(tmp_path: Path, subject: str, to: str = ADDRESS["SB-B1"], **headers: str) -> Path:
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    path = tmp_path / "message.eml"
    path.write_bytes(
        (
            f"From: AMS <ams@makler-muster.example>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <m1@ams.example>\r\n{extra}\r\nText\r\n"
        ).encode()
    )
    return path


def test_check_accepts_the_example(seeded: Gateway) -> None:
    shutil.copytree(REPOSITORY / "rules", rules_dir(seeded))
    result = seeded("rules", "check")
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{rules_dir(seeded)}: 4 rule(s) in 1 file(s), valid; rule set ")
    assert lines[1] == f"  claim-number ({rules_dir(seeded) / 'example.yaml'}:16:5)"
    data = json.loads(seeded("rules", "check", "--json").stdout)
    assert data["valid"] is True
    assert [r["name"] for r in data["rules"]] == [
        "claim-number",
        "urgent-b-to-gf",
        "spam-from-ams",
        "foreign-sender",
    ]


def test_check_names_file_line_and_column_of_every_problem_and_exits_2(seeded: Gateway) -> None:
    path = write_rules(
        seeded,
        """
        rules:
          - name: typo
            match: {subjekt: Hallo}
          - name: bad-regex
            match: {subject: {regex: '(?P<claim>[0-9]+'}}
          - name: catch-all
            match: {}
            accept: true
          - name: late
            match: {subject: x}
        """,
    )
    result = seeded("rules", "check", expect=2)
    assert result.stdout.splitlines() == [
        f"{path}:3:13: unknown key 'subjekt' in match (known keys: sender, sender_domain, recipient, "
        "recipient_domain, subject, backoffice, listener, header, size, all, any, not)",
        f"{path}:5:30: subject: bad regular expression at position 0: missing ), unterminated subpattern",
        f"{path}:9:5: rule 'late' is never reached: rule 'catch-all' at {path}:6:5 matches every message "
        "and stops",
    ]
    assert "3 problems in the rules" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_check_reports_an_unreachable_rule(seeded: Gateway) -> None:
    path = write_rules(
        seeded,
        """
        rules:
          - name: catch-all
            match: {}
            accept: true
          - name: late
            match: {subject: x}
        """,
    )
    result = seeded("rules", "check", expect=2)
    assert result.stdout == (
        f"{path}:5:5: rule 'late' is never reached: rule 'catch-all' at {path}:2:5 matches every "
        "message and stops\n"
    )


def test_check_refuses_names_the_directory_lacks(seeded: Gateway) -> None:
    path = write_rules(
        seeded,
        """
        rules:
          - name: a
            match: {backoffice: bms}
            portfolio: makler-mustr
            participants: [gf-c@kunde-c.example]
        """,
    )
    result = seeded("rules", "check", expect=2)
    assert result.stdout.splitlines() == [
        f"{path}:3:25: there is no back office bms in any portfolio",
        f"{path}:4:16: there is no portfolio makler-mustr (known: makler-muster)",
    ]
    # The member is not checked against a portfolio that does not exist: one problem, said once.
    # The files themselves are fine; --files-only does not ask the database.
    assert "valid" in seeded("rules", "check", "--files-only").stdout


def test_check_without_rules(seeded: Gateway) -> None:
    assert "0 rule(s) in 0 file(s), valid" in seeded("rules", "check").stdout


CLAIMS = """
rules:
  - name: claim-number
    match:
      subject: {regex: 'Schaden(?:nummer)?[ :]*(?P<claim_no>[0-9]{4}-[0-9]+)', ignore_case: true}
    vorgang_key: "claim-{claim_no}"
    set_headers: {X-Claim-Number: "{claim_no}"}
  - name: urgent-b-to-gf
    match:
      recipient_domain: kunde-b.example
      header: {name: Importance, exact: high, ignore_case: true}
    participants: [gf-b@kunde-b.example]
  - name: spam
    match: {header: {name: X-Spam-Flag, exact: "yes", ignore_case: true}}
    reject: {code: 550, status: 5.7.1, text: "Refused: marked as spam"}
  - name: foreign
    match: {not: {sender_domain: makler-muster.example}}
    quarantine: "foreign sender {x}"
"""


def test_dry_run_of_a_claim(seeded: Gateway, tmp_path: Path) -> None:
    write_rules(seeded, CLAIMS.replace(" {x}", ""))
    message = eml(tmp_path, "Schadennummer 2026-4711", Importance="High")
    result = seeded("rules", "test", str(message), "--auth", "ams")
    out = result.stdout
    assert "back office ams, portfolio makler-muster, listener submission" in out
    assert "  hit   claim-number (" in out
    assert "(claim_no=2026-4711)" in out
    assert "  hit   urgent-b-to-gf (" in out
    assert "  miss  spam (" in out
    assert "          header X-Spam-Flag: not in the message" in out
    assert "  miss  foreign (" in out
    assert "verdict: accept (no rule gave a verdict)" in out
    assert "vorgang: a new Vorgang, key claim-2026-4711" in out
    assert "copies: set X-Claim-Number: 2026-4711" in out
    # SB-B1 is addressed and GF-B added: the audience of DESIGN.md §3 for both, each with its reasons.
    assert "audience (4):" in out
    assert "  GF-B <gf-b@kunde-b.example>\n      participant (cc)\n" in out
    assert (
        "  GF-A <gf-a@kunde-a.example>\n"
        '      shared through release "Geschäftsführer" because GF-B takes part\n' in out
    )
    assert out.endswith("answer: 250 2.0.0 Accepted as <gateway id> in a new Vorgang\n")


def test_dry_run_of_a_rejection_and_a_quarantine(seeded: Gateway, tmp_path: Path) -> None:
    write_rules(seeded, CLAIMS.replace(" {x}", ""))
    spam = eml(tmp_path, "Gewinn", X_Spam_Flag="YES")
    out = seeded("rules", "test", str(spam), "--auth", "ams").stdout
    assert "verdict: reject (by spam (" in out
    assert "nothing is stored" in out
    assert out.endswith("answer: 550 5.7.1 Refused: marked as spam\n")
    data = json.loads(
        seeded("rules", "test", str(spam), "--auth", "ams", "--from", "x@evil.example", "--json").stdout
    )
    assert data["answer"] == "550 5.7.1 Refused: marked as spam"  # the first verdict stops
    assert data["not_tried"] == [data["not_tried"][0]]
    assert data["not_tried"][0].startswith("foreign (")
    plain = eml(tmp_path, "Hallo")
    data = json.loads(
        seeded("rules", "test", str(plain), "--auth", "ams", "--from", "x@evil.example", "--json").stdout
    )
    assert data["verdict"] == "quarantine"
    assert data["stored"] is True
    assert data["answer"] == "250 2.0.0 Accepted as <gateway id>; held for review"
    assert data["decided_by"].startswith("foreign (")
    assert [m["address"] for m in data["audience"]] == [ADDRESS["SB-B1"], ADDRESS["SB-B2"], ADDRESS["GF-B"]]


def test_dry_run_says_which_recipients_rcpt_refuses(seeded: Gateway, tmp_path: Path) -> None:
    message = eml(tmp_path, "Hallo")
    out = seeded(
        "rules", "test", str(message), "-p", "makler-muster", "--to", "nobody@kunde-a.example"
    ).stdout
    assert "RCPT TO:<nobody@kunde-a.example> would be answered: 550 5.1.1" in out
    assert "every RCPT TO is refused" in out


def test_dry_run_of_a_rule_naming_another_portfolio(seeded: Gateway, tmp_path: Path) -> None:
    seeded("portfolio", "create", "anderer-makler")
    write_rules(seeded, "rules: [{name: elsewhere, match: {}, portfolio: anderer-makler}]\n")
    out = seeded("rules", "test", str(eml(tmp_path, "Hallo")), "--auth", "ams").stdout
    assert (
        "answer: 550 5.7.1 Routing rules assign this message to portfolio anderer-makler; this back office "
        "submits into makler-muster" in out
    )


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--auth", "bms"], "there is no back office or login bms"),
        ([], "no portfolio: name the back office with --auth"),
    ],
)
def test_dry_run_input_errors_are_sentences(
    seeded: Gateway, tmp_path: Path, args: list[str], complaint: str
) -> None:
    result = seeded("rules", "test", str(eml(tmp_path, "Hallo")), *args, expect=2)
    assert complaint in result.stderr
    assert "Traceback" not in result.stderr


def test_dry_run_of_invalid_rules_names_the_problems(seeded: Gateway, tmp_path: Path) -> None:
    path = write_rules(seeded, "rules:\n  - name: x\n    match: {subjekt: y}\n")
    result = seeded("rules", "test", str(eml(tmp_path, "Hallo")), "--auth", "ams", expect=2)
    assert f"{path}:3:13: unknown key 'subjekt'" in result.stderr


def test_dry_run_of_a_missing_file(seeded: Gateway, tmp_path: Path) -> None:
    result = seeded("rules", "test", str(tmp_path / "nope.eml"), "--auth", "ams", expect=2)
    assert "cannot read" in result.stderr


def test_dry_run_on_another_listener_says_rules_do_not_apply_there(seeded: Gateway, tmp_path: Path) -> None:
    write_rules(seeded, "rules: [{name: mx-only, match: {listener: mx}, vorgang_key: mx}]\n")
    out = seeded("rules", "test", str(eml(tmp_path, "Hallo")), "--auth", "ams", "--listener", "mx").stdout
    assert "  hit   mx-only (" in out
    assert (
        "note: the running gateway applies routing rules to back-office mail on the submission listener"
        in out
    )
