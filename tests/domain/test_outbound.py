"""The mail relayed to the back office: headers replaced, body and MIME untouched, no token leaks."""

from __future__ import annotations

import email
import email.policy
import email.utils
from email import policy
from email.parser import BytesParser

import pytest

from gateway.domain.copies import render_copy
from gateway.domain.outbound import (
    RelayHeaders,
    address_field,
    recipients_kept,
    render_relay,
    threading_ids,
)

REPLY_DOMAIN = "reply.gw.example"
TOKEN_ID = "<c0123456789abcdef0123abcdefghijklmnop@reply.gw.example>"

# A reply as Thunderbird writes it, arriving through a border MTA: trace headers, a signature, our
# reply address in To, the token id in References, and a multipart body.
REPLY = (
    b"Received: from mx.kunde-b.example by gw.example; Fri, 27 Nov 2026 10:00:00 +0100\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; d=kunde-b.example; s=s1; b=AAAA\r\n"
    b'From: "SB-B2" <sb-b2@kunde-b.example>\r\n'
    b'To: "ams" <reply+c0123456789abcdef0123abcdefghijklmnop@reply.gw.example>\r\n'
    b"Cc: kollege@extern.example, sb-b1@kunde-b.example\r\n"
    b"Subject: Re: [VG-2026-000001] Schaden 4711\r\n"
    b"Message-ID: <reply-1@kunde-b.example>\r\n"
    b"In-Reply-To: <c0123456789abcdef0123abcdefghijklmnop@reply.gw.example>\r\n"
    b"References: <orig-1@ams.example> " + TOKEN_ID.encode() + b"\r\n"
    b"X-Gateway-Actual-Sender: forged@evil.example\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"Erledigt, Gr\xc3\xbc\xc3\x9fe\r\n> alter Text\r\n"
    b"--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Erledigt</p>\r\n--b1--\r\n"
)


def headers(**changes: object) -> RelayHeaders:
    values: dict[str, object] = {
        "from_address": "sb-b2@kunde-b.example",
        "from_name": "SB-B2",
        "to": ("ams@makler-muster.example",),
        "cc": ("kollege@extern.example",),
        "message_id": "<gw-abc@gw.example>",
        "in_reply_to": "<orig-1@ams.example>",
        "references": ("<orig-1@ams.example>",),
        "vorgang": "VG-2026-000001",
        "actual_sender": "sb-b2@kunde-b.example",
        "loop_marker": "gw1",
    }
    values.update(changes)
    return RelayHeaders(**values)  # type: ignore[arg-type]


def test_the_relayed_mail_has_our_headers_once_and_the_body_untouched() -> None:
    out = render_relay(REPLY, headers())
    parsed = email.message_from_bytes(out, policy=email.policy.default)
    assert parsed.get_all("From") == ["SB-B2 <sb-b2@kunde-b.example>"]
    assert parsed.get_all("To") == ["ams@makler-muster.example"]
    assert parsed.get_all("Cc") == ["kollege@extern.example"]
    assert parsed.get_all("Message-ID") == ["<gw-abc@gw.example>"]
    assert parsed.get_all("In-Reply-To") == ["<orig-1@ams.example>"]
    assert parsed.get_all("References") == ["<orig-1@ams.example>"]
    assert parsed.get_all("X-Gateway-Actual-Sender") == ["sb-b2@kunde-b.example"], "a forged one is gone"
    assert parsed["X-Gateway-Vorgang"] == "VG-2026-000001"
    assert parsed["Subject"] == "Re: [VG-2026-000001] Schaden 4711"
    assert parsed["DKIM-Signature"] is None
    # The trace stays (RFC 5321 4.4): a loop through the back office still adds up to the hop limit.
    assert parsed.get_all("Received") == [
        "from mx.kunde-b.example by gw.example; Fri, 27 Nov 2026 10:00:00 +0100"
    ]
    assert b"reply.gw.example" not in out, "no reply address and no token reaches the back office"
    body = REPLY[REPLY.index(b"\r\n\r\n") :]
    assert out.endswith(body), "body and MIME structure byte for byte"


def test_a_display_name_with_umlauts_is_encoded_the_address_is_not() -> None:
    field = address_field("Jürgen Müller, Schaden", "jm@kunde.example")
    assert field.isascii()
    assert field.endswith(b" <jm@kunde.example>")
    out = render_relay(REPLY, headers(from_name="Jürgen Müller, Schaden", from_address="jm@kunde.example"))
    parsed = email.message_from_bytes(out, policy=email.policy.default)
    (sender,) = parsed["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Jürgen Müller, Schaden", "jm@kunde.example")


def test_a_pre_encoded_header_value_must_be_printable_ascii() -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        render_copy(b"Subject: x\r\n\r\n", headers=[("From", b"a@b\r\nBcc: evil@example")])
    assert render_copy(
        b"Subject: x\r\n\r\n", headers=[("From", b"=?utf-8?q?J=C3=BCrgen?= <j@x>")]
    ).startswith(b"From: =?utf-8?q?J=C3=BCrgen?= <j@x>\r\n"), "kept as given, not encoded a second time"


@pytest.mark.parametrize(
    ("to", "cc", "expected"),
    [
        ((), (), (("bo@ams.example",), ())),
        (("reply+abc@reply.gw.example",), (), (("bo@ams.example",), ())),
        (
            ("REPLY@Reply.GW.example", "x@y.example"),
            ("bo@ams.example",),
            (("bo@ams.example", "x@y.example"), ()),
        ),
        (
            ("x@y.example",),
            ("x@y.example", "z@y.example"),
            (("bo@ams.example", "x@y.example"), ("z@y.example",)),
        ),
        (("BO@ams.example",), (), (("bo@ams.example",), ())),
    ],
)
def test_recipients_kept(
    to: tuple[str, ...], cc: tuple[str, ...], expected: tuple[tuple[str, ...], tuple[str, ...]]
) -> None:
    assert recipients_kept(to, cc, backoffice="bo@ams.example", reply_domain=REPLY_DOMAIN) == expected


def test_threading_drops_token_ids_and_ends_with_the_answered_message() -> None:
    assert threading_ids(
        "<orig-2@ams.example>", ["<orig-1@ams.example>", TOKEN_ID.upper()], reply_domain=REPLY_DOMAIN
    ) == ("<orig-2@ams.example>", ("<orig-1@ams.example>", "<orig-2@ams.example>"))
    assert threading_ids(None, [], reply_domain=REPLY_DOMAIN) == (None, ())
    assert threading_ids("<a@b>", ["<a@b>"], reply_domain=REPLY_DOMAIN) == ("<a@b>", ("<a@b>",))


def test_the_relayed_mail_keeps_the_trace_adds_ours_and_drops_forged_headers() -> None:
    raw = (
        b"Received: from laptop by mx.kunde-b.example; Mon, 7 Dec 2026 04:58:00 +0000\r\n"
        b"Received: from mx.kunde-b.example by relay.kunde-b.example; Mon, 7 Dec 2026 04:59:00 +0000\r\n"
        b"From : ceo3@bank.example\r\n"
        b"X-Gateway-Actual-Sender: ceo@bank.example\r\n"
        b"X-Gateway-Loop : elsewhere\r\n"
        b"Bcc: geheim@kunde-b.example\r\n"
        b"Subject: Re: Schaden\r\n\r\nbody\r\n"
    )
    ours = "from mx.kunde-b.example ([192.0.2.7]) by gw.example with ESMTPS id G1 for <ams@makler.example>; x"
    headers = RelayHeaders(
        from_address="sb-b2@kunde-b.example",
        from_name="SB-B2",
        to=("ams@makler.example",),
        cc=(),
        message_id="<G1@gw.example>",
        in_reply_to=None,
        references=(),
        vorgang="VG-2026-000001",
        actual_sender="sb-b2@kunde-b.example",
        loop_marker="node-1",
        received=ours,
    )
    relayed = render_relay(raw, headers)
    message = BytesParser(policy=policy.default).parsebytes(relayed)
    received = [" ".join(str(v).split()) for v in message.get_all("Received", [])]
    assert received[0] == ours
    assert len(received) == 3  # one more hop than it came with: a loop still adds up
    assert [str(v) for v in message.get_all("From", [])] == ["SB-B2 <sb-b2@kunde-b.example>"]
    assert [str(v) for v in message.get_all("X-Gateway-Actual-Sender", [])] == ["sb-b2@kunde-b.example"]
    assert [str(v) for v in message.get_all("X-Gateway-Loop", [])] == ["node-1"]
    assert message["Bcc"] is None
    for forged in (b"ceo3@", b"ceo@", b"elsewhere", b"geheim"):
        assert forged not in relayed


def test_reply_tokens_are_taken_out_of_the_trace_the_member_side_wrote() -> None:
    raw = (
        b"Received: from laptop by mx.kunde-b.example\r\n\tfor <"
        + TOKEN_ID[1:-1].replace("c0", "reply+c0", 1).encode()
        + b">; Mon, 7 Dec 2026 04:58:00 +0000\r\nSubject: x\r\n\r\nbody\r\n"
    )
    relayed = render_relay(raw, headers(reply_domain=REPLY_DOMAIN))
    parsed = email.message_from_bytes(relayed, policy=email.policy.default)
    assert [" ".join(str(v).split()) for v in parsed.get_all("Received")] == [
        f"from laptop by mx.kunde-b.example for <reply@{REPLY_DOMAIN}>; Mon, 7 Dec 2026 04:58:00 +0000"
    ]
    assert b"reply+" not in relayed


@pytest.mark.parametrize(
    "name",
    ["", "  ", "Max Mustermann", "Müller, Hans", 'A "quoted" name', "back\\slash", "ü" * 60, "=?utf-8?q?x?="],
)
def test_an_address_field_is_what_formataddr_writes(name: str) -> None:
    # The name's part is worked out once per name; the field must not change for it.
    for address in ("reply+abc@reply.example", "x@y.example"):
        expected = email.utils.formataddr((name.strip(), address), charset="utf-8").encode("ascii")
        assert address_field(name, address) == expected
