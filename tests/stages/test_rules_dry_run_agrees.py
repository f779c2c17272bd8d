"""``gateway rules test`` prints what acceptance then does: for the same message, its Vorgang, how it
was found, its key, the rules that routed it, its audience and copies with their reasons, quarantine,
and the answer agree with what acceptance stores (both come from ``gateway.domain.routing_plan``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, select

from gateway.db.models import CopyRow, EventRow, MemberRow, MessageRow, ReleaseRow
from gateway.db.writer import Writer
from gateway.routing.live import stored_answer
from tests.conftest import Gateway
from tests.seed import ADDRESS
from tests.stages.conftest import rules_in, submit_raw

RULES = """
rules:
  - name: claim-number
    match:
      subject: {regex: 'Schaden(?:nummer|-?nr\\.?)?[ :]*(?P<claim_no>[0-9]{4}-[0-9]+)', ignore_case: true}
    vorgang_key: "claim-{claim_no}"
  - name: urgent-b-to-gf
    match:
      recipient_domain: kunde-b.example
      header: {name: Importance, exact: high, ignore_case: true}
    participants: [gf-b@kunde-b.example, gone@kunde-b.example]
  - name: foreign
    match: {not: {sender_domain: makler-muster.example}}
    quarantine: "foreign sender"
"""

AMS = "ams@makler-muster.example"


def message(number: int, subject: str, to: str, cc: str = "", extra: str = "", sender: str = AMS) -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\n{f'Cc: {cc}' + chr(13) + chr(10) if cc else ''}"
        f"Subject: {subject}\r\nMessage-ID: <agree-{number}@ams>\r\n{extra}\r\nText\r\n"
    ).encode()


def stored(
    connection: Connection, gateway_id: str
) -> tuple[dict[str, Any], str, list[tuple[str, str | None]]]:
    """The accepted (or quarantined) event of a message, its kind, and its copies: (address, shared via)."""
    pk, kind = connection.execute(
        select(MessageRow.id, MessageRow.kind).where(MessageRow.gateway_id == gateway_id)
    ).one()
    detail = connection.execute(
        select(EventRow.detail).where(
            EventRow.message_id == pk, EventRow.kind.in_(["message.accepted", "message.quarantined"])
        )
    ).scalar_one()
    copies = connection.execute(
        select(MemberRow.address, ReleaseRow.name)
        .select_from(CopyRow)
        .join(MemberRow, MemberRow.id == CopyRow.member_id)
        .outerjoin(ReleaseRow, ReleaseRow.id == CopyRow.shared_via_release_id)
        .where(CopyRow.message_id == pk)
        .order_by(CopyRow.id)
    ).all()
    return detail, str(kind), [(str(a), n) for a, n in copies]


@pytest.mark.parametrize(
    "runs",
    [
        pytest.param(
            [
                # A claim to SB-B1, urgent: a rule keys it and adds GF-B (and an address that is no member).
                (
                    message(1, "Schadennummer 2026-4711", ADDRESS["SB-B1"], extra="Importance: high\r\n"),
                    (),
                    AMS,
                ),
                # More about the claim, to SB-A1: found by the rule key.
                (message(2, "Re: Schaden-Nr. 2026-4711", ADDRESS["SB-A1"]), (), AMS),
                # An answer to the first: found by In-Reply-To; Cc'd GF-A, and SB-A2 blind.
                (
                    message(
                        3,
                        "Re: Rückfrage",
                        ADDRESS["SB-B2"],
                        cc=ADDRESS["GF-A"],
                        extra="In-Reply-To: <agree-1@ams>\r\n",
                    ),
                    (ADDRESS["SB-B2"], ADDRESS["GF-A"], ADDRESS["SB-A2"]),
                    AMS,
                ),
                # A foreign sender: quarantined, with the audience it would get.
                (message(4, "Hallo", ADDRESS["GF-B"], sender="x@fremd.example"), (), "x@fremd.example"),
                # A new Vorgang without rules' help.
                (message(5, "Allgemeines", ADDRESS["GF-A"]), (), AMS),
            ],
            id="claim-thread-quarantine",
        )
    ],
)
async def test_the_dry_run_says_what_acceptance_stores(
    writer: Writer,
    with_login: Gateway,
    tmp_path: Path,
    runs: list[tuple[bytes, tuple[str, ...], str]],
) -> None:
    rules = rules_in(tmp_path, RULES)  # the configuration's rules directory: rules/ next to it
    for number, (raw, rcpt_to, sender) in enumerate(runs, 1):
        path = tmp_path / f"m{number}.eml"
        path.write_bytes(raw)
        args = ["rules", "test", str(path), "--auth", AMS, "--from", sender, "--json"]
        for address in rcpt_to:
            args += ["--to", address]
        result = await asyncio.to_thread(with_login, *args)
        dry = json.loads(result.stdout)
        assert dry["stored"] is True

        [accepted] = await submit_raw(
            writer, rules, (tuple(dry["message"]["recipients"]), raw), sender=sender
        )
        event, kind, copies = await writer.run(stored, accepted.gateway_id)

        assert dry["found"] == event["found"] == accepted.found
        if dry["found"] == "new vorgang":
            assert dry["vorgang"] is None
        else:
            assert dry["vorgang"] == event["vorgang"] == accepted.vorgang
        assert dry["vorgang_key"] == event.get("vorgang_key")
        assert [h["rule"] for h in dry["hits"]] == event["rules"]
        assert dry["rule_set"] == event["rule_set"] == rules.digest
        audience = [m["address"] for m in dry["audience"]]
        assert sorted(audience) == event["audience"]
        quarantined = dry["verdict"] == "quarantine"
        assert kind == ("quarantined" if quarantined else "message")
        assert accepted.quarantined is quarantined
        if quarantined:
            assert copies == []
        else:
            # The copies are the audience, in its order, each shared through a release the dry run names.
            assert [address for address, _ in copies] == audience
            reasons = {m["address"]: m["reasons"] for m in dry["audience"]}
            for address, release in copies:
                if release is None:
                    assert any(r.startswith("participant (") for r in reasons[address])
                else:
                    assert not any(r.startswith("participant (") for r in reasons[address])
                    assert any(f'release "{release}"' in r for r in reasons[address])
            assert accepted.audience == len(audience)
        where = accepted.vorgang if dry["vorgang"] else "a new Vorgang"
        assert dry["answer"] == stored_answer("<gateway id>", where, quarantined=quarantined)
        assert stored_answer(accepted.gateway_id, accepted.vorgang, quarantined=quarantined) == dry[
            "answer"
        ].replace("<gateway id>", accepted.gateway_id).replace("a new Vorgang", accepted.vorgang)
        if number == 1:
            assert dry["skipped_participants"] == ["gone@kunde-b.example"]
            assert {ADDRESS["GF-B"], ADDRESS["GF-A"]} <= set(audience)
        if number == 3:
            assert dry["found"] == "in-reply-to/references"
