"""The mail relayed to the back office: headers replaced, body and MIME untouched, no token leaks."""

from __future__ import annotations

import email
import email.policy

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
    for gone in ("Received", "DKIM-Signature"):
        assert parsed[gone] is None
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
