"""Directory rules through the CLI: primary releases, sharing availability, portfolios, files, events."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from gateway.db.engine import create_engine, session_factory
from gateway.db.models import EventRow, MemberRow, ReleaseMemberRow, ReleaseRow
from tests.conftest import EXAMPLE_DIRECTORY, Gateway
from tests.seed import ADDRESS, RELEASES

P = ("-p", "makler-muster")


def seen_by(gateway: Gateway, *args: str) -> set[str]:
    out = gateway("who-can-see", *P, *args, "--json").stdout
    return {row["name"] for row in json.loads(out)["audience"]}


def export(gateway: Gateway) -> str:
    return gateway("directory", "export").stdout


# --- the seed's primary-release conflict --------------------------------------------------------------


def test_copying_gf_b_into_the_clerks_release_is_refused(seeded: Gateway) -> None:
    before = export(seeded)
    result = seeded("release", "add-member", "Kunde B Sachbearbeiter", "gf-b@kunde-b.example", *P, expect=2)
    assert '"Geschäftsführer"' in result.stderr
    assert '"Kunde B Sachbearbeiter"' in result.stderr
    assert "only one primary release per portfolio" in result.stderr
    assert "Traceback" not in result.stderr
    assert export(seeded) == before


def test_kunde_b_mit_gf_as_a_non_primary_release_works(gateway: Gateway, tmp_path: Path) -> None:
    without = EXAMPLE_DIRECTORY.read_text(encoding="utf-8")
    without = without.replace(
        "      - {name: Kunde B mit GF, primary: false, share_vorgaenge: true, read_sync: answered}\n", ""
    )
    without = without.replace(", Kunde B mit GF]", "]")
    path = tmp_path / "without.yaml"
    path.write_text(without, encoding="utf-8")
    gateway("directory", "load", str(path))
    assert seen_by(gateway, "--to", "gf-b@kunde-b.example") == {"GF-B", "GF-A"}
    assert seen_by(gateway, "--to", "sb-b1@kunde-b.example") == {"SB-B1", "SB-B2"}

    gateway("release", "create", "Kunde B mit GF", "--share-vorgaenge", *P)
    for member in ("sb-b1@kunde-b.example", "sb-b2@kunde-b.example", "gf-b@kunde-b.example"):
        gateway("release", "add-member", "Kunde B mit GF", member, *P)
    assert seen_by(gateway, "--to", "gf-b@kunde-b.example") == {"GF-B", "GF-A", "SB-B1", "SB-B2"}
    assert seen_by(gateway, "--to", "sb-b1@kunde-b.example") == {"SB-B1", "SB-B2", "GF-B"}
    assert seen_by(gateway, "--to", "gf-a@kunde-a.example") == {"GF-A", "GF-B"}
    # Now the directory is exactly the seed's example.
    releases = json.loads(gateway("release", "list", *P, "--json").stdout)
    names = {address: name for name, address in ADDRESS.items()}
    got = {
        r["name"]: (r["primary"], r["share_vorgaenge"], {names[a] for a in r["members"]}) for r in releases
    }
    assert got == RELEASES


def test_making_a_release_primary_checks_its_members(seeded: Gateway) -> None:
    result = seeded("release", "set", "Kunde B mit GF", "--primary", *P, expect=2)
    assert '"Kunde B mit GF"' in result.stderr
    assert '"Kunde B Sachbearbeiter"' in result.stderr


def test_moving_a_primary_flag_between_releases_in_one_load(seeded: Gateway, tmp_path: Path) -> None:
    text_ = EXAMPLE_DIRECTORY.read_text(encoding="utf-8")
    text_ = text_.replace("{name: Geschäftsführer, primary: true", "{name: Geschäftsführer, primary: false")
    text_ = text_.replace("{name: Kunde B mit GF, primary: false", "{name: Kunde B mit GF, primary: true")
    text_ = text_.replace(
        "{name: Kunde B Sachbearbeiter, primary: true", "{name: Kunde B Sachbearbeiter, primary: false"
    )
    path = tmp_path / "moved.yaml"
    path.write_text(text_, encoding="utf-8")
    seeded("directory", "load", str(path))
    releases = {r["name"]: r["primary"] for r in json.loads(seeded("release", "list", *P, "--json").stdout)}
    assert releases["Kunde B mit GF"] is True
    assert releases["Geschäftsführer"] is False


# --- sharing availability -------------------------------------------------------------------------------


def test_share_vorgaenge_needs_the_operator_switch(gateway: Gateway) -> None:
    gateway("portfolio", "create", "makler-zwei", "--display-name", "Makler Zwei")
    result = gateway("release", "create", "Team", "--share-vorgaenge", "-p", "makler-zwei", expect=2)
    assert "not available in portfolio makler-zwei" in result.stderr
    assert "gateway portfolio set makler-zwei --share-vorgaenge-available" in result.stderr
    gateway("release", "create", "Team", "-p", "makler-zwei")
    result = gateway("release", "set", "Team", "--share-vorgaenge", "-p", "makler-zwei", expect=2)
    assert "not available" in result.stderr

    gateway("portfolio", "set", "makler-zwei", "--share-vorgaenge-available")
    gateway("release", "set", "Team", "--share-vorgaenge", "-p", "makler-zwei")
    result = gateway("portfolio", "set", "makler-zwei", "--no-share-vorgaenge-available", expect=2)
    assert '"Team"' in result.stderr
    assert "switch sharing off" in result.stderr


# --- portfolios never mix ---------------------------------------------------------------------------------


def test_members_and_releases_stay_in_their_portfolio(seeded: Gateway) -> None:
    seeded("portfolio", "create", "makler-zwei")
    seeded("member", "add", "x@kunde-c.example", "--name", "X", "-p", "makler-zwei")
    seeded("release", "create", "Kunde C", "--primary", "-p", "makler-zwei")
    result = seeded(
        "release", "add-member", "Kunde C", "sb-a1@kunde-a.example", "-p", "makler-zwei", expect=2
    )
    assert "no member sb-a1@kunde-a.example in portfolio makler-zwei" in result.stderr
    result = seeded("release", "add-member", "Kunde C", "x@kunde-c.example", *P, expect=2)
    assert 'no release "Kunde C" in portfolio makler-muster' in result.stderr
    # The same address may be a member of two portfolios; each is its own member.
    seeded("member", "add", "sb-a1@kunde-a.example", "--name", "SB-A1 bei Zwei", "-p", "makler-zwei")
    seeded("release", "add-member", "Kunde C", "sb-a1@kunde-a.example", "-p", "makler-zwei")
    assert seen_by(seeded, "--to", "sb-a1@kunde-a.example") == {"SB-A1", "SB-A2"}


async def _cross_portfolio_membership(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            member = await session.scalar(select(MemberRow).where(MemberRow.address == "x@kunde-c.example"))
            release = await session.scalar(
                select(ReleaseRow).where(ReleaseRow.name == "Kunde A Sachbearbeiter")
            )
            assert member is not None
            assert release is not None
            session.add(
                ReleaseMemberRow(
                    release_id=release.id, member_id=member.id, portfolio_id=release.portfolio_id
                )
            )
            await session.commit()
    finally:
        await engine.dispose()


def test_the_database_refuses_a_cross_portfolio_membership(seeded: Gateway, database_url: str) -> None:
    seeded("portfolio", "create", "makler-zwei")
    seeded("member", "add", "x@kunde-c.example", "-p", "makler-zwei")
    with pytest.raises(DBAPIError):
        asyncio.run(_cross_portfolio_membership(database_url))


# --- directory files ----------------------------------------------------------------------------------------


BROKEN = """\
version: 1
portfolios:
  - name: makler-muster
    share_vorgaenge_available: true
    colour: blue
    releases:
      - {name: A, primary: true, share_vorgaenge: true}
      - {name: B, primary: true}
    members:
      - address: not-an-address
        name: Broken
      - address: ok@kunde.example
        releases: [A, Nowhere]
      - address: two@kunde.example
        releases: [A, B]
"""


def test_a_broken_directory_file_is_refused_as_a_whole(seeded: Gateway, tmp_path: Path) -> None:
    before = export(seeded)
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    result = seeded("directory", "load", str(path), expect=2)
    err = result.stderr
    assert f"{path}:5: unknown key 'colour' in a portfolio" in err
    assert f"{path}:10: member address: 'not-an-address' is not a valid mail address" in err
    assert f'{path}:13: member ok@kunde.example names the unknown release "Nowhere"' in err
    assert f'{path}:14: member two@kunde.example would be in the primary releases "A" and "B"' in err
    assert "nothing was changed" in err
    assert "Traceback" not in err
    assert export(seeded) == before


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("portfolios: [\n", ":2: YAML syntax"),
        ("", ":1: the file has no portfolios"),
        ("version: 2\nportfolios: []\n", ":1: unsupported version"),
        (
            "portfolios:\n  - name: p\n    members:\n      - {address: a@b.example, releases: x}\n",
            ":4: releases must be a list",
        ),
        (
            "portfolios:\n  - name: p\n    releases:\n      - {name: r, read_sync: sometimes}\n",
            ":4: read_sync 'sometimes'",
        ),
        (
            "portfolios:\n  - name: p\n    releases:\n      - {name: r, primary: maybe}\n",
            ":4: primary must be true or false",
        ),
        (
            "portfolios:\n  - name: p\n    releases:\n      - {name: r, share_vorgaenge: true}\n",
            ':4: release "r" cannot share Vorgänge: the feature is not available in portfolio p',
        ),
        (
            "portfolios:\n  - name: p\n    members:\n"
            "      - {address: a@b.example}\n      - {address: A@b.example}\n",
            ':5: member "a@b.example" appears more than once',
        ),
        (
            # The relay compares four numbers; "4.8" would silently count as a current ams.
            "portfolios:\n  - name: p\n    backoffices:\n      - {name: ams, ams_version: '4.8'}\n",
            ":4: ams_version '4.8' must be four numbers separated by dots",
        ),
    ],
)
def test_directory_file_problems_name_the_line(
    gateway: Gateway, tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "dir.yaml"
    path.write_text(content, encoding="utf-8")
    result = gateway("directory", "load", str(path), expect=2)
    assert f"{path}{expected}" in result.stderr
    assert json.loads(gateway("portfolio", "list", "--json").stdout) == []


def test_missing_directory_file(gateway: Gateway, tmp_path: Path) -> None:
    result = gateway("directory", "load", str(tmp_path / "nope.yaml"), expect=2)
    assert "cannot read" in result.stderr


def test_load_is_idempotent_and_export_round_trips(
    seeded: Gateway, tmp_path: Path, config_file: Path
) -> None:
    again = seeded("directory", "load", str(EXAMPLE_DIRECTORY))
    assert "portfolio makler-muster: 0 change(s)" in again.stdout
    exported = tmp_path / "exported.yaml"
    seeded("directory", "export", "-o", str(exported))
    assert "0 change(s)" in seeded("directory", "load", str(exported)).stdout
    assert export(seeded) == exported.read_text(encoding="utf-8")


def test_dry_run_changes_nothing(gateway: Gateway) -> None:
    out = gateway("directory", "load", str(EXAMPLE_DIRECTORY), "--dry-run").stdout
    assert "create portfolio makler-muster" in out
    assert 'add member gf-b@kunde-b.example to release "Kunde B mit GF"' in out
    assert json.loads(gateway("portfolio", "list", "--json").stdout) == []


def test_load_keeps_unnamed_objects_unless_pruned(seeded: Gateway, tmp_path: Path) -> None:
    seeded("member", "add", "extra@kunde-a.example", "--name", "Extra", *P)
    seeded("release", "add-member", "Kunde A Sachbearbeiter", "extra@kunde-a.example", *P)
    seeded("directory", "load", str(EXAMPLE_DIRECTORY))
    assert "Extra" in seen_by(seeded, "--to", "sb-a1@kunde-a.example")
    out = seeded("directory", "load", str(EXAMPLE_DIRECTORY), "--prune").stdout
    assert 'remove member extra@kunde-a.example from release "Kunde A Sachbearbeiter"' in out
    assert "delete member extra@kunde-a.example" in out
    assert seen_by(seeded, "--to", "sb-a1@kunde-a.example") == {"SB-A1", "SB-A2"}


# --- single commands ---------------------------------------------------------------------------------------


def test_single_commands(gateway: Gateway) -> None:
    gateway("portfolio", "create", "mm", "--display-name", "MM")
    gateway("portfolio", "set", "mm", "--share-vorgaenge-available")
    gateway("backoffice", "add", "ams", "--ams-version", "4.7.2.1", "--address", "AMS@MM.example", "-p", "mm")
    gateway(
        "backoffice",
        "set",
        "ams",
        "--ams-version",
        "4.8.0.64470",
        "--add-address",
        "ams2@mm.example",
        "-p",
        "mm",
    )
    backoffices = json.loads(gateway("backoffice", "list", "-p", "mm", "--json").stdout)
    assert backoffices == [
        {
            "name": "ams",
            "ams_version": "4.8.0.64470",
            "addresses": ["ams@mm.example", "ams2@mm.example"],
            "relay": None,
        }
    ]
    result = gateway("backoffice", "set", "ams", "--ams-version", "vier", "-p", "mm", expect=2)
    assert "must be four numbers separated by dots" in result.stderr

    gateway("member", "add", "Anna@Kunde.example", "--name", "Anna", "-p", "mm")
    gateway("member", "set", "anna@kunde.example", "--name", "Anna B.", "-p", "mm")
    result = gateway("member", "add", "anna@kunde.example", "-p", "mm", expect=2)
    assert "exists already" in result.stderr
    result = gateway("member", "add", "anna at kunde", "-p", "mm", expect=2)
    assert "is not a valid mail address" in result.stderr

    gateway("release", "create", "Team", "--primary", "--share-vorgaenge", "--read-sync", "seen", "-p", "mm")
    gateway("release", "add-member", "Team", "anna@kunde.example", "-p", "mm")
    shown = json.loads(gateway("release", "show", "Team", "-p", "mm", "--json").stdout)
    assert shown == {
        "name": "Team",
        "primary": True,
        "share_vorgaenge": True,
        "read_sync": "seen",
        "backfill": "all",
        "revoked_copies": "remove",
        "members": ["anna@kunde.example"],
        "portfolio": "mm",
    }
    text_out = gateway("release", "show", "Team", "-p", "mm").stdout
    assert 'release "Team": primary yes, share_vorgaenge yes, read_sync seen' in text_out
    assert "Anna B. <anna@kunde.example>" in text_out
    gateway("release", "remove-member", "Team", "anna@kunde.example", "-p", "mm")
    result = gateway("release", "remove-member", "Team", "anna@kunde.example", "-p", "mm", expect=2)
    assert "is not in release" in result.stderr
    gateway("release", "delete", "Team", "-p", "mm")
    gateway("member", "remove", "anna@kunde.example", "-p", "mm")
    gateway("backoffice", "remove", "ams", "-p", "mm")
    assert json.loads(gateway("portfolio", "show", "mm", "--json").stdout) == {
        "name": "mm",
        "display_name": "MM",
        "share_vorgaenge_available": True,
        "sender_auth": "off",
        "backoffices": [],
        "releases": [],
        "members": [],
    }
    result = gateway("portfolio", "show", "nope", expect=2)
    assert "there is no portfolio 'nope' (portfolios: mm)" in result.stderr


def test_usage_errors_exit_2(gateway: Gateway) -> None:
    result = gateway("release", "create", "X", expect=2)
    assert "--portfolio" in result.stderr
    result = gateway("release", "create", "X", "-p", "mm", "--read-sync", "never", expect=2)
    assert "never" in result.stderr


# --- the event log ------------------------------------------------------------------------------------------


async def _events(database_url: str) -> list[EventRow]:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            return list(await session.scalars(select(EventRow).order_by(EventRow.id)))
    finally:
        await engine.dispose()


async def _tamper(database_url: str, statement: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


def test_every_change_is_in_the_append_only_event_log(seeded: Gateway, database_url: str) -> None:
    seeded("release", "remove-member", "Kunde B mit GF", "gf-b@kunde-b.example", *P)
    events = asyncio.run(_events(database_url))
    kinds = [e.kind for e in events]
    assert kinds.count("member.create") == 6
    assert kinds.count("release.create") == 4
    assert kinds.count("membership.add") == 9
    last = events[-1]
    assert last.kind == "membership.remove"
    assert last.actor.startswith("cli:")
    assert last.detail["release"] == "Kunde B mit GF"
    assert last.member_id is not None
    for statement in ("UPDATE events SET actor = 'someone else'", "DELETE FROM events"):
        with pytest.raises(DBAPIError, match="append-only"):
            asyncio.run(_tamper(database_url, statement))
    assert len(asyncio.run(_events(database_url))) == len(events)
