"""The files the docs/ sessions load are there and do what the sessions say they do (issue 16, item 7)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Gateway

DOCS = Path(__file__).resolve().parent.parent.parent / "docs"


def test_the_reconcile_sessions_directory_files_make_the_changes_it_shows(seeded: Gateway) -> None:
    without = seeded("directory", "load", str(DOCS / "reconcile" / "without-kunde-b-mit-gf.yaml")).stdout
    assert "portfolio makler-muster: 3 change(s)" in without
    for member in ("sb-b1", "sb-b2", "gf-b"):
        assert f'remove member {member}@kunde-b.example from release "Kunde B mit GF"' in without
    seeded("directory", "load", str(DOCS.parent / "config" / "example" / "directory.yaml"))
    out = seeded("directory", "load", str(DOCS / "reconcile" / "gf-b-out.yaml")).stdout
    assert "portfolio makler-muster: 1 change(s)" in out
    assert 'remove member gf-b@kunde-b.example from release "Kunde B mit GF"' in out


def test_the_directory_sessions_broken_files_give_the_problems_it_shows(seeded: Gateway) -> None:
    broken = seeded("directory", "load", str(DOCS / "directory" / "broken.yaml"), expect=2).stderr
    assert "has 4 problem(s); nothing was changed" in broken
    for line, problem in (
        (5, "unknown key 'colour' in a portfolio"),
        (10, "member address: 'not-an-address' is not a valid mail address"),
        (13, 'member ok@kunde.example names the unknown release "Nowhere"'),
        (14, 'member two@kunde.example would be in the primary releases "A" and "B"'),
    ):
        assert f"broken.yaml:{line}: {problem}" in broken
    relay = seeded("directory", "load", str(DOCS / "directory" / "relay.yaml"), expect=2).stderr
    assert "has 3 problem(s); nothing was changed" in relay
    for line, problem in (
        (8, "relay port 70000 is not a TCP port"),
        (9, "relay tls 'ssl' is not one of none, starttls, tls"),
        (10, "the relay has a login but no password file"),
    ):
        assert f"relay.yaml:{line}: {problem}" in relay
    members = seeded("member", "list", "-p", "makler-muster").stdout
    assert "ok@kunde.example" not in members
    assert "two@kunde.example" not in members
