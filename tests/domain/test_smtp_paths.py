"""The plain SMTP path (``<local@domain>``) read without the email package's parser, to its answer."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import event, given, settings
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


def dotted(alphabet: str) -> st.SearchStrategy[str]:
    """Atoms of ``alphabet`` joined by dots: what a plain path is made of."""
    return st.lists(st.text(alphabet, min_size=1, max_size=6), min_size=1, max_size=3).map(".".join)


# Half plain parts, half anything: most paths are plain, so the comparison below is reached, and the
# rest probe where the plain reading must step aside.
LOCAL = st.one_of(dotted(ATEXT), st.text(ATEXT + ODD, max_size=12))
DOMAIN = st.one_of(dotted("abcXYZ019-"), st.text(ATEXT + ODD, max_size=12))
REST = st.one_of(
    st.sampled_from(["", " SIZE=1024", "\t BODY=8BITMIME", "  SIZE=5 BODY=7BIT"]),
    st.text(ATEXT + ODD + "=", max_size=10),
)


@settings(max_examples=1000, deadline=None)
@given(local=LOCAL, domain=DOMAIN, rest=REST)
def test_where_the_plain_reading_answers_aiosmtpd_answers_the_same(
    local: str, domain: str, rest: str
) -> None:
    text = f"<{local}@{domain}>{rest}"
    plain = plain_path(text)
    event("read plainly" if plain is not None else "left to aiosmtpd")
    if plain is not None:
        assert aiosmtpd_reads(text) == plain
