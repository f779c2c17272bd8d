"""Release policies in the directory file, and which directory changes ask for a reconcile run."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.admin.directory_file import dump_directory, parse_directory
from gateway.domain.directory import (
    Change,
    MemberSpec,
    PortfolioSpec,
    ReleaseSpec,
    audience_changes,
    before_of,
    plan_changes,
)
from gateway.domain.reconcile import Backfill, RevokedCopies
from gateway.errors import DirectoryFileError

FILE = """\
version: 1
portfolios:
  - name: mm
    share_vorgaenge_available: true
    releases:
      - {name: Team, share_vorgaenge: true, backfill: "days:30", revoked_copies: keep}
      - name: Plain
        backfill: none
      - {name: Default}
    members: []
"""


def test_policies_are_read_dumped_and_read_back() -> None:
    spec = parse_directory(FILE, "d.yaml")
    team, plain, default = spec.portfolios[0].releases
    assert (team.backfill, team.revoked_copies) == (Backfill(days=30), RevokedCopies.KEEP)
    assert (plain.backfill, plain.revoked_copies) == (Backfill(enabled=False), RevokedCopies.REMOVE)
    assert (default.backfill, default.revoked_copies) == (Backfill(), RevokedCopies.REMOVE)
    again = parse_directory(dump_directory(spec), "again.yaml")
    assert [(r.backfill, r.revoked_copies) for r in again.portfolios[0].releases] == [
        (r.backfill, r.revoked_copies) for r in spec.portfolios[0].releases
    ]


@pytest.mark.parametrize(
    ("line", "value", "reason"),
    [
        (6, 'backfill: "days:0"', 'backfill must be "all", "none" or "days:N"'),
        (6, "backfill: sometimes", 'backfill must be "all", "none" or "days:N"'),
        (6, "revoked_copies: delete", "revoked_copies 'delete' is not one of remove, keep"),
    ],
)
def test_a_bad_policy_is_reported_with_its_line(line: int, value: str, reason: str) -> None:
    text = FILE.replace('backfill: "days:30", revoked_copies: keep', value)
    with pytest.raises(DirectoryFileError) as caught:
        parse_directory(text, "d.yaml")
    assert [str(p) for p in caught.value.problems] == [f"d.yaml:{line}: {p}" for p in [_full(reason, value)]]


def _full(reason: str, value: str) -> str:
    if reason.startswith("backfill"):
        given = value.split(": ", 1)[1].strip('"')
        return f"{reason} (N from 1 to 99999), not {given!r}"
    return reason


BEFORE = PortfolioSpec(
    "mm",
    share_vorgaenge_available=True,
    releases=(
        ReleaseSpec("Team", share_vorgaenge=True),
        ReleaseSpec("Quiet"),
        ReleaseSpec("Gone", True, True),
    ),
    members=(
        MemberSpec("a@x.example", releases=("Team", "Gone")),
        MemberSpec("b@x.example", releases=("Quiet",)),
        MemberSpec("c@x.example", releases=("Team",)),
    ),
)


def _counted(after: PortfolioSpec) -> list[str]:
    return [c.describe() for c in audience_changes(BEFORE, after, plan_changes(BEFORE, after))]


def _release(spec: PortfolioSpec, name: str, **changes: object) -> PortfolioSpec:
    releases = tuple(dataclasses.replace(r, **changes) if r.name == name else r for r in spec.releases)  # type: ignore[arg-type]
    return dataclasses.replace(spec, releases=releases)


def _members(spec: PortfolioSpec, *members: MemberSpec) -> PortfolioSpec:
    return dataclasses.replace(spec, members=members)


def test_changes_that_can_change_audiences_ask_for_a_run_and_others_do_not() -> None:
    # Names, primary and read_sync change nobody's audience; nor do memberships of a release that
    # does not share.
    assert _counted(_release(BEFORE, "Team", read_sync="seen")) == []
    assert _counted(_release(BEFORE, "Quiet", primary=True)) == []
    assert _counted(_release(BEFORE, "Quiet", backfill=Backfill(days=3))) == []
    assert _counted(_members(BEFORE, BEFORE.members[0], MemberSpec("b@x.example"), BEFORE.members[2])) == []
    # Memberships of sharing releases, sharing switched, policies of a sharing release, deletions.
    assert _counted(_members(BEFORE, BEFORE.members[0], BEFORE.members[1], MemberSpec("c@x.example"))) == [
        'remove member c@x.example from release "Team"'
    ]
    assert _counted(_release(BEFORE, "Quiet", share_vorgaenge=True)) == [
        "update release Quiet (share_vorgaenge=true)"
    ]
    assert _counted(_release(BEFORE, "Team", share_vorgaenge=False)) == [
        "update release Team (share_vorgaenge=false)"
    ]
    assert _counted(_release(BEFORE, "Team", backfill=Backfill(days=7))) == [
        "update release Team (backfill=days:7)"
    ]
    assert _counted(_release(BEFORE, "Team", revoked_copies=RevokedCopies.KEEP)) == [
        "update release Team (revoked_copies=keep)"
    ]
    without_gone = dataclasses.replace(
        BEFORE,
        releases=BEFORE.releases[:2],
        members=(MemberSpec("a@x.example", releases=("Team",)), *BEFORE.members[1:]),
    )
    assert _counted(without_gone) == ['remove member a@x.example from release "Gone"', "delete release Gone"]
    without_c = _members(BEFORE, *BEFORE.members[:2])
    assert _counted(without_c) == [
        'remove member c@x.example from release "Team"',
        "delete member c@x.example",
    ]


def test_a_new_release_reads_as_before_unless_its_policies_differ() -> None:
    after = dataclasses.replace(
        BEFORE,
        releases=(
            *BEFORE.releases,
            ReleaseSpec("Plain"),
            ReleaseSpec("Careful", backfill=Backfill(enabled=False), revoked_copies=RevokedCopies.KEEP),
        ),
    )
    assert [c.describe() for c in plan_changes(BEFORE, after)] == [
        "create release Plain (primary=false, share_vorgaenge=false, read_sync=answered)",
        "create release Careful (primary=false, share_vorgaenge=false, read_sync=answered, backfill=none, "
        "revoked_copies=keep)",
    ]


def test_an_update_knows_the_values_it_replaces() -> None:
    change = Change("update", "release", "Team", (("backfill", "days:7"), ("revoked_copies", "keep")))
    assert before_of(BEFORE, change) == {"backfill": "all", "revoked_copies": "remove"}
    assert before_of(None, change) == {}
