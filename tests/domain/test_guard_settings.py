"""The collision guard's settings in the directory file: read with their lines, written back, checked."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.admin.directory_file import dump_directory, parse_directory
from gateway.domain.collision import AfterTimeout, CollisionGuard
from gateway.domain.directory import Change, ReleaseSpec, check_portfolio, plan_changes
from gateway.errors import DirectoryFileError

FILE = """\
version: 1
portfolios:
  - name: mm
    share_vorgaenge_available: true
    releases:
      - name: Team
        share_vorgaenge: true
        collision_guard: notify
        hold_timeout: 4h
        after_hold_timeout: withdraw
      - {name: Shared, share_vorgaenge: true}
      - {name: Plain}
    members: []
"""


def test_settings_are_read_defaulted_and_written_back() -> None:
    spec = parse_directory(FILE, "d.yaml")
    team, shared, plain = spec.portfolios[0].releases
    assert (team.collision_guard, team.hold_timeout, team.after_hold_timeout) == (
        CollisionGuard.NOTIFY,
        14400,
        AfterTimeout.WITHDRAW,
    )
    # Not set: hold where Vorgänge are shared, off where not; 24 hours, then sent.
    assert (shared.collision_guard, shared.guard) == (None, CollisionGuard.HOLD)
    assert (plain.collision_guard, plain.guard) == (None, CollisionGuard.OFF)
    assert (plain.hold_timeout, plain.after_hold_timeout) == (86400, AfterTimeout.RELEASE)
    written = dump_directory(spec)
    assert "collision_guard: notify" in written
    assert "hold_timeout: 4h" in written
    assert written.count("collision_guard") == 1, "a default is not written as if it were set"
    again = parse_directory(written, "again.yaml")
    assert [
        (r.collision_guard, r.hold_timeout, r.after_hold_timeout) for r in again.portfolios[0].releases
    ] == [(r.collision_guard, r.hold_timeout, r.after_hold_timeout) for r in spec.portfolios[0].releases]


@pytest.mark.parametrize(
    ("old", "new", "line", "reason"),
    [
        ("notify", "maybe", 8, "collision_guard 'maybe' is not one of off, hold, notify"),
        ("4h", "90d", 9, "a hold timeout is between 1m and 30d, not '90d'"),
        ("4h", "soon", 9, "a hold timeout is a number and a unit (s, m, h, d) such as 4h, not 'soon'"),
        ("withdraw", "never", 10, "after_hold_timeout 'never' is not one of release, withdraw"),
    ],
)
def test_a_bad_setting_is_reported_with_its_line(old: str, new: str, line: int, reason: str) -> None:
    text = FILE.replace(f": {old}\n", f": {new}\n", 1)
    with pytest.raises(DirectoryFileError) as caught:
        parse_directory(text, "d.yaml")
    assert [str(p) for p in caught.value.problems] == [f"d.yaml:{line}: {reason}"]


def test_a_guard_where_nothing_is_shared_is_refused_with_its_line() -> None:
    with pytest.raises(DirectoryFileError) as caught:
        parse_directory(FILE.replace("{name: Plain}", "{name: Plain, collision_guard: hold}"), "d.yaml")
    (problem,) = caught.value.problems
    assert str(problem).startswith('d.yaml:12: release "Plain" of portfolio mm has collision_guard hold but')
    # "off" says what the default says: allowed.
    off = parse_directory(FILE.replace("{name: Plain}", "{name: Plain, collision_guard: off}"), "d.yaml")
    assert check_portfolio(off.portfolios[0]) == []


def test_a_change_of_the_guard_is_planned_as_a_release_update() -> None:
    spec = parse_directory(FILE, "d.yaml").portfolios[0]
    team = spec.releases[0]
    wanted = dataclasses.replace(
        spec, releases=(dataclasses.replace(team, collision_guard=CollisionGuard.OFF), *spec.releases[1:])
    )
    (change,) = plan_changes(spec, wanted)
    assert change.describe() == "update release Team (collision_guard=off)"
    assert ReleaseSpec("x").guard is CollisionGuard.OFF


def test_a_change_shows_the_hold_timeout_as_it_is_written() -> None:
    change = Change(
        "update", "release", "Kunde B mit GF", (("hold_timeout", 14400), ("after_hold_timeout", "withdraw"))
    )
    assert change.describe() == "update release Kunde B mit GF (hold_timeout=4h, after_hold_timeout=withdraw)"
