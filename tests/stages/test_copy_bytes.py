"""One copy's header section as the fan-out builds it: our Received on top, the reply path, and nothing
a sender supplied under the gateway's names, in Bcc, or in a form only some readers see."""

from __future__ import annotations

import datetime as dt
from email import policy
from email.parser import BytesParser

from gateway.db.queue import CopyJob
from gateway.domain.tokens import TokenKeys
from gateway.domain.trace import Arrival, Trace
from gateway.stages.fanout import ReplyPath, copy_bytes

RAW = (
    b"Received: from ams-intern by mail.makler.example; Mon, 7 Dec 2026 04:00:00 +0000\r\n"
    b"From: Makler <ams@makler.example>\r\n"
    b"From : attacker@evil.example\r\n"
    b"To: sb-b1@kunde-b.example\r\n"
    b"Bcc: gf-a@kunde-a.example\r\n"
    b"Return-Path: <elsewhere@evil.example>\r\n"
    b"X-Gateway-Copy-Id: forged\r\n"
    b"X-Gateway-Actual-Sender: ceo@bank.example\r\n"
    b"X-Vorgang: VG-1999-000001\r\n"
    b"Subject: Schaden\r\n"
    b"junk line\r\n"
    b"Reply-To: attacker@evil.example\r\n"
    b"\r\nText\r\n"
)


def job(**changes: object) -> CopyJob:
    values: dict[str, object] = {
        "id": 1,
        "copy_id": "c0123456789abcdef0123",
        "attempts": 0,
        "portfolio_id": 1,
        "portfolio": "makler-muster",
        "member_id": 5,
        "address": "sb-b2@kunde-b.example",
        "message_pk": 1,
        "gateway_id": "gw-1",
        "message_id": "<m@ams>",
        "message_id_assigned": False,
        "vorgang_id": 1,
        "vorgang": "VG-2026-000001",
        "shared_via": "Kunde B Sachbearbeiter",
        "seen": False,
        "answered": False,
        "raw": RAW,
        "trace": Trace(
            Arrival("mail.makler.example", "192.0.2.10", "ESMTPSA"),
            "gw.example",
            "gw-1",
            dt.datetime(2026, 12, 7, 5, 0, tzinfo=dt.UTC),
        ),
    }
    values.update(changes)
    return CopyJob(**values)  # type: ignore[arg-type]


def test_a_copy_has_our_trace_on_top_and_only_our_from() -> None:
    keys = TokenKeys([b"k" * 32])
    data = copy_bytes(
        job(), vorgang_header="X-Vorgang", tag_subject=True, reply_path=ReplyPath(keys, "reply.gw.example")
    )
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert message.keys()[0] == "Received"
    received = [" ".join(str(v).split()) for v in message.get_all("Received")]
    assert received == [
        "from mail.makler.example ([192.0.2.10]) by gw.example with ESMTPSA id gw-1"
        " for <sb-b2@kunde-b.example>; Mon, 07 Dec 2026 05:00:00 +0000",
        "from ams-intern by mail.makler.example; Mon, 7 Dec 2026 04:00:00 +0000",
    ]
    (from_,) = message.get_all("From")
    assert str(from_).startswith("Makler <reply+c0123456789abcdef0123")
    assert [str(v) for v in message.get_all("Reply-To")] == [str(from_)]
    assert message.get_all("X-Gateway-Copy-Id") == ["c0123456789abcdef0123"]
    assert message["X-Gateway-Original-From"] == "Makler <ams@makler.example>"
    for gone in ("Bcc", "Return-Path", "X-Gateway-Actual-Sender", "X-Vorgang", "Sender"):
        assert message[gone] is None, gone
    for forged in (b"attacker", b"gf-a", b"elsewhere", b"ceo@", b"forged", b"VG-1999"):
        assert forged not in data, forged


def test_a_message_stored_without_a_trace_gets_no_received_line_of_ours() -> None:
    data = copy_bytes(job(trace=None), vorgang_header="X-Vorgang", tag_subject=False)
    received = BytesParser(policy=policy.default).parsebytes(data).get_all("Received")
    assert [str(v).split(";")[0] for v in received] == ["from ams-intern by mail.makler.example"]
