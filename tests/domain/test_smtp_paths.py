"""The plain SMTP path (``<local@domain>``) read without the email package's parser, to its answer."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.addresses import plain_path


def aiosmtpd_reads(text: str) -> tuple[str | None, str | None]:
    """What aiosmtpd's own SMTP._getaddr makes of a MAIL or RCPT argument."""
    server = SMTP.__new__(SMTP)
    server.local_part_limit = 0
    return SMTP._getaddr(server, text)


ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
# Besides atext, what can make a path not plain or end it: dots, brackets, quotes, white space, comments.
ODD = '.@<>"\\[]():;, \t\r\n\u2003ü'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<sb-a1@kunde-a.example>", ("sb-a1@kunde-a.example", "")),
        ("<ams@makler.example> SIZE=1024 BODY=8BITMIME", ("ams@makler.example", "SIZE=1024 BODY=8BITMIME")),
        ("<first.last+tag@sub.example.org>\t SIZE=5", ("first.last+tag@sub.example.org", "SIZE=5")),
    ],
)
def test_a_plain_path_gives_the_address_and_the_parameters(text: str, expected: tuple[str, str]) -> None:
    assert plain_path(text) == expected
    assert aiosmtpd_reads(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "<>",
        " <a@b.example>",
        '<"a b"@b.example>',
        "<a@[192.0.2.1]>",
        "<@relay.example:a@b.example>",
        "<a..b@b.example>",
        "<a@b.example.>",
        "<a @b.example>",
        "<a@b.example> (a comment) SIZE=1",
        "<a@b.example>(a comment)",
        "<jürgen@b.example>",
        "a@b.example",
    ],
)
def test_every_other_form_is_left_to_aiosmtpd(text: str) -> None:
    assert plain_path(text) is None


@settings(max_examples=2000, deadline=None)
@given(
    local=st.text(ATEXT + ODD, min_size=0, max_size=12),
    domain=st.text(ATEXT + ODD, min_size=0, max_size=12),
    rest=st.text(ATEXT + ODD + "=", max_size=10),
)
def test_where_the_plain_reading_answers_aiosmtpd_answers_the_same(
    local: str, domain: str, rest: str
) -> None:
    text = f"<{local}@{domain}>{rest}"
    plain = plain_path(text)
    if plain is not None:
        assert aiosmtpd_reads(text) == plain
