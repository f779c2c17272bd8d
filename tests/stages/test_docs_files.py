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
