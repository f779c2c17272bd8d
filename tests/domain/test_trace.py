"""The Received line on copies and relayed mail: RFC 5321 4.4's fields, only safe text, one recipient."""

from __future__ import annotations

import datetime as dt
from email import policy
from email.parser import BytesParser

import pytest

from gateway.domain.copies import render_copy
from gateway.domain.trace import Arrival, Trace, protocol, received

AT = dt.datetime(2026, 12, 7, 5, 0, 0, tzinfo=dt.UTC)


def trace(helo: str = "mx.kunde-b.example", address: str = "192.0.2.7", with_: str = "ESMTPS") -> Trace:
    return Trace(Arrival(helo, address, with_), "gateway.example", "G2026abc", AT)


def test_the_line_names_client_host_protocol_id_recipient_and_date() -> None:
    assert trace().received("sb-b2@kunde-b.example") == (
        "from mx.kunde-b.example ([192.0.2.7]) by gateway.example with ESMTPS id G2026abc"
        " for <sb-b2@kunde-b.example>; Mon, 07 Dec 2026 05:00:00 +0000"
    )


@pytest.mark.parametrize(
    ("extended", "tls", "authenticated", "expected"),
    [
        (False, False, False, "SMTP"),
        (True, False, False, "ESMTP"),
        (True, True, False, "ESMTPS"),
        (True, False, True, "ESMTPA"),
        (True, True, True, "ESMTPSA"),
    ],
)
def test_protocol_follows_rfc_3848(extended: bool, tls: bool, authenticated: bool, expected: str) -> None:
    assert protocol(extended=extended, tls=tls, authenticated=authenticated) == expected


@pytest.mark.parametrize(
    ("helo", "address", "starts"),
    [
        ("[192.0.2.7]", "192.0.2.7", "from [192.0.2.7] ([192.0.2.7]) by"),
        ("evil; for <x@y>\r\nBcc: a@b", "192.0.2.7", "from [192.0.2.7] by"),
        ("", "2001:db8::7", "from [IPv6:2001:db8::7] by"),
        ("", "unknown", "by"),
        ("mx.example", "not an ip", "from mx.example by"),
    ],
)
def test_what_the_client_says_is_written_only_when_it_is_a_name_or_an_address(
    helo: str, address: str, starts: str
) -> None:
    assert trace(helo, address).received("a@b.example").startswith(starts)


def test_without_a_recipient_or_with_an_odd_one_there_is_no_for_clause() -> None:
    assert " for " not in received(trace())
    assert " for " not in trace().received("a b>@x")


def test_stored_and_read_back() -> None:
    original = trace()
    assert Trace.from_json(original.to_json()) == original
    assert Trace.from_json(None) is None
    assert Trace.from_json({"by": "gw.example"}) is None
    assert Trace.from_json(original.to_json() | {"at": "yesterday"}) is None
    naive = original.to_json() | {"at": "2026-12-07T05:00:00"}
    assert Trace.from_json(naive) == original


def test_a_copy_carries_the_line_on_top_as_one_received_header() -> None:
    raw = b"Received: from ams.example by mail.makler.example; 7 Dec 2026 04:59 +0000\r\nSubject: x\r\n\r\nb"
    copy = render_copy(raw, headers=[("Received", trace().received("sb-b2@kunde-b.example"))])
    message = BytesParser(policy=policy.default).parsebytes(copy)
    values = [" ".join(str(v).split()) for v in message.get_all("Received", [])]
    assert values[0] == trace().received("sb-b2@kunde-b.example")
    assert values[1].startswith("from ams.example")
    ours = copy[: copy.index(b"Received: from ams")]
    assert all(len(line) <= 78 for line in ours.split(b"\r\n"))
