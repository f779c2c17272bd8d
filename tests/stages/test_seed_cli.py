"""DESIGN.md §3's two tables, reproduced through the CLI on a loaded directory, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.db.accounts import find_account
from gateway.db.writer import Writer
from gateway.domain.parsing import parse_message
from gateway.stages.acceptance import Acceptance, Submission
from tests.conftest import Gateway
from tests.seed import ADDRESS, RELEASES, SEEN_BY


def test_loaded_directory_is_the_first_table(seeded: Gateway) -> None:
    releases = json.loads(seeded("release", "list", "-p", "makler-muster", "--json").stdout)
    by_address = {v: k for k, v in ADDRESS.items()}
    got = {
        r["name"]: (r["primary"], r["share_vorgaenge"], {by_address[a] for a in r["members"]})
        for r in releases
    }
    assert got == RELEASES
    portfolio = json.loads(seeded("portfolio", "show", "makler-muster", "--json").stdout)
    assert portfolio["share_vorgaenge_available"] is True
    assert portfolio["sender_auth"] == "off"
    assert portfolio["backoffices"] == [
        {
            "name": "ams",
            "ams_version": "4.8.0.64470",
            "addresses": ["ams@makler-muster.example"],
            "relay": {"host": "127.0.0.1", "port": 2526, "tls": "none", "timeout": 30},
        }
    ]
    assert {m["name"]: m["address"] for m in portfolio["members"]} == ADDRESS


@pytest.mark.parametrize("direction", ["--to", "--from"])
@pytest.mark.parametrize("person", sorted(SEEN_BY))
def test_who_can_see_is_the_second_table(seeded: Gateway, person: str, direction: str) -> None:
    out = seeded("who-can-see", "-p", "makler-muster", direction, ADDRESS[person], "--json")
    seen = {row["name"] for row in json.loads(out.stdout)["audience"]}
    assert seen == SEEN_BY[person]


def test_who_can_see_explains_gf_b(seeded: Gateway) -> None:
    out = seeded("who-can-see", "-p", "makler-muster", "--to", "gf-b@kunde-b.example").stdout
    assert "such a message in portfolio makler-muster is seen by 4 member(s):" in out
    assert 'shared through release "Geschäftsführer" because GF-B takes part' in out
    assert 'shared through release "Kunde B mit GF" because GF-B takes part' in out
    rows = json.loads(
        seeded("who-can-see", "-p", "makler-muster", "--to", "gf-b@kunde-b.example", "--json").stdout
    )
    reasons = {row["name"]: row["reasons"] for row in rows["audience"]}
    assert reasons["GF-B"] == ["participant (to)"]
    assert reasons["GF-A"] == ['shared through release "Geschäftsführer" because GF-B takes part']
    assert reasons["SB-B1"] == ['shared through release "Kunde B mit GF" because GF-B takes part']


def test_clerks_of_b_never_see_gf_a(seeded: Gateway) -> None:
    out = seeded("who-can-see", "-p", "makler-muster", "--from", "gf-a@kunde-a.example", "--json").stdout
    assert not {row["name"] for row in json.loads(out)["audience"]} & {"SB-B1", "SB-B2", "SB-A1", "SB-A2"}


async def _store_message(database_url: str, recipient: str) -> str:
    """Accept a back-office message the way the submission listener does, and return its id."""
    writer = Writer(database_url)
    acceptance = Acceptance(writer, hostname="gw.example")
    task = asyncio.create_task(acceptance.run())
    try:
        account = await writer.run(find_account, "ams@makler-muster.example")
        assert account is not None
        raw = (
            f"From: ams@makler-muster.example\r\nTo: {recipient}\r\nSubject: Schaden\r\n\r\nText\r\n".encode()
        )
        submission = Submission(
            account, account.login, (recipient,), raw, parse_message(raw), "submission", "x"
        )
        return (await acceptance.submit(submission)).gateway_id
    finally:
        task.cancel()
        await writer.close()


@pytest.mark.parametrize("person", sorted(SEEN_BY))
def test_who_can_see_a_stored_message(
    seeded: Gateway, database_url: str, tmp_path: Path, person: str
) -> None:
    password = tmp_path / "pw"
    password.write_text("seed-test-password\n", encoding="utf-8")
    seeded("backoffice", "password", "ams", "-p", "makler-muster", "--password-file", str(password))
    gateway_id = asyncio.run(_store_message(database_url, ADDRESS[person]))
    out = json.loads(seeded("who-can-see", gateway_id, "--json").stdout)
    assert out["message"] == gateway_id
    assert {row["name"] for row in out["audience"]} == SEEN_BY[person]


def test_who_can_see_an_unknown_message(seeded: Gateway) -> None:
    result = seeded("who-can-see", "gw-doesnotexist", expect=2)
    assert "there is no message with id 'gw-doesnotexist'" in result.stderr
    assert "Traceback" not in result.stderr
