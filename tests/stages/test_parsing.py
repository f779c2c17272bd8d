"""Raw bytes to message facts: decoding in any charset, sloppy threading headers, and no input that raises."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.parsing import MAX_HEADER_BYTES, decode_header_value, extract_msg_ids, parse_message

DATA = Path(__file__).parent.parent / "data"


def sample(name: str) -> bytes:
    return (DATA / name).read_bytes()


def has_controls(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" or ch in "\u2028\u2029" for ch in text)


# --- subjects ----------------------------------------------------------------------------------------


def test_iso_8859_1_encoded_words_are_decoded() -> None:
    parsed = parse_message(sample("latin1-subject.eml"))
    assert parsed.subject == "Schaden vom 3. März: Grüße"
    assert parsed.from_display_name == "Jürgen Müller"
    assert parsed.from_addresses == ("juergen.mueller@makler.example",)
    assert parsed.defects == ()


def test_windows_1252_encoded_words_are_decoded() -> None:
    assert parse_message(sample("windows-1252-subject.eml")).subject == "„Angebot“ – 100 €"


def test_latin_1_label_is_read_as_windows_1252_like_browsers_do() -> None:
    # 0x80 and 0x93 are C1 controls in latin-1 but the euro sign and a quote in windows-1252, which is
    # what a sender who says latin-1 means.
    assert parse_message(b"Subject: =?ISO-8859-1?Q?=93x=94_=80?=\n\n").subject == "“x” €"


def test_decoded_newline_in_encoded_word_becomes_a_space() -> None:
    parsed = parse_message(sample("newline-in-encoded-word.eml"))
    assert parsed.subject == "Zeile eins  Bcc: evil@attacker.example and a NUL  too"
    assert not has_controls(parsed.subject)


@pytest.mark.parametrize(
    ("raw", "subject"),
    [
        pytest.param(b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n\n", "Grüße", id="utf-8 q"),
        pytest.param(b"Subject: =?UTF-8?B?R3LDvMOfZQ==?=\n\n", "Grüße", id="utf-8 b"),
        pytest.param(b"Subject: =?utf-8?b?R3LDvMOfZQ?=\n\n", "Grüße", id="b without padding"),
        pytest.param(b"Subject: =?utf-8?q?a?= =?utf-8?q?b?=\n\n", "ab", id="space between words dropped"),
        pytest.param(b"Subject: x =?utf-8?q?a?= y\n\n", "x a y", id="space next to text kept"),
        pytest.param(b"Subject: =?utf-8?b?4oI=?= =?utf-8?b?rA==?=\n\n", "€", id="character split over words"),
        pytest.param(b"Subject: =?utf-8*de?q?Hallo?=\n\n", "Hallo", id="rfc 2231 language"),
        pytest.param(b"Subject: =?x-nonsense?q?Gr=C3=BC=C3=9Fe?=\n\n", "Grüße", id="unknown charset"),
        pytest.param(b"Subject: =?utf-8?q?bad=FF?=\n\n", "bad\ufffd", id="undecodable byte replaced"),
        pytest.param(b"Subject: =?rot13?q?uryyb?=\n\n", "uryyb", id="not a text codec"),
        pytest.param(b"Subject: =?utf-8?q?broken\n\n", "=?utf-8?q?broken", id="unfinished word kept"),
        pytest.param(b"Subject: folded\r\n\tover\r\n  lines\r\n\r\n", "folded over  lines", id="fold"),
        pytest.param(b"Subject:   \n\n", "", id="empty"),
    ],
)
def test_subject_decoding(raw: bytes, subject: str) -> None:
    assert parse_message(raw).subject == subject


def test_raw_8bit_header_bytes_are_read_as_utf8_or_windows_1252() -> None:
    parsed = parse_message(sample("8bit-headers.eml"))
    assert parsed.subject == "Schäden und Grüße"  # latin-1 bytes
    assert parsed.from_display_name == "Jürgen Müller"
    assert parsed.to == ("gf-a@kunde-a.example",)  # its display name was UTF-8
    assert "8-bit bytes in Subject" in parsed.defects


def test_utf8_with_one_damaged_character_stays_utf8() -> None:
    assert parse_message("Subject: Юникод".encode() + b"\xd0\n\n").subject == "Юникод\ufffd"


def test_nul_bytes_in_headers_become_spaces() -> None:
    parsed = parse_message(sample("nul-bytes.eml"))
    assert parsed.subject == "before after"
    assert parsed.vorgang_header == "VG-2026-000007"


def test_decode_header_value_is_the_subject_rule() -> None:
    assert decode_header_value(b" =?utf-8?q?a=0Db?=\r\n c\x00 ") == "a b c"


# --- line endings and structure ------------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_any_line_ending(eol: bytes) -> None:
    raw = eol.join(
        [b"From: a@b.example", b"Subject: hi", b" there", b"Received: x", b"Received: y", b"", b"body"]
    )
    parsed = parse_message(raw)
    assert (parsed.subject, parsed.from_addresses, parsed.received_count) == ("hi there", ("a@b.example",), 2)


def test_message_without_separator() -> None:
    parsed = parse_message(sample("no-separator.eml"))
    assert parsed.subject == "no blank line"
    assert "no blank line between header and body" in parsed.defects


def test_message_that_is_only_body() -> None:
    parsed = parse_message(b"<html><body>Hi: there</body></html>\n")
    assert parsed.subject == ""
    assert parsed.from_addresses == ()


def test_mbox_envelope_line_is_not_a_header() -> None:
    parsed = parse_message(b"From MAILER-DAEMON Mon Sep 20 2010\nSubject: x\n\n")
    assert parsed.subject == "x"
    assert parsed.defects == ()


def test_body_is_not_read() -> None:
    # A header lookalike in the body must not count, however the body is built.
    raw = b"Subject: real\n\nSubject: fake\nReceived: fake\n"
    assert (parse_message(raw).subject, parse_message(raw).received_count) == ("real", 0)


def test_huge_header_section_is_cut_and_noted() -> None:
    raw = b"Subject: big\n" + b"X-Filler: " + b"a" * (MAX_HEADER_BYTES + 10) + b"\n\nbody"
    # How long it takes is not asserted: a test that timed it failed whenever the machine was busy.
    parsed = parse_message(raw)
    assert parsed.subject == "big"
    assert any("longer than" in defect for defect in parsed.defects)


def test_many_defects_are_capped() -> None:
    raw = b"".join(b"To: nobody%d\n" % i for i in range(500)) + b"\n"
    defects = parse_message(raw).defects
    assert len(defects) <= 51
    assert defects[-1].endswith("more defects not listed")


def test_duplicate_headers_use_the_first_and_say_so() -> None:
    parsed = parse_message(b"Subject: one\nSubject: two\n\n")
    assert parsed.subject == "one"
    assert "2 Subject headers; the first one was used" in parsed.defects


# --- message ids -------------------------------------------------------------------------------------


def test_missing_message_id_is_none() -> None:
    assert parse_message(b"Subject: x\n\n").message_id is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(" <a@b.example> ", "<a@b.example>", id="spaces"),
        pytest.param("<a@b.example> <c@d.example>", "<a@b.example>", id="first of two"),
        pytest.param("a@b.example", "<a@b.example>", id="bare"),
        pytest.param("(comment) <a@b.example>", "<a@b.example>", id="comment"),
        pytest.param("no id here", None, id="garbage"),
    ],
)
def test_message_id(value: str, expected: str | None) -> None:
    assert parse_message(f"Message-ID: {value}\n\n".encode()).message_id == expected


def test_sloppy_references() -> None:
    parsed = parse_message(sample("sloppy-references.eml"))
    assert parsed.in_reply_to == ("<orig.1@makler.example>",)
    assert parsed.references == (
        "<orig.0@makler.example>",
        "<orig.1@makler.example>",
        "<orig.2@makler.example>",
    )


@pytest.mark.parametrize(
    ("value", "ids"),
    [
        ("<a@b> <c@d>", ("<a@b>", "<c@d>")),
        ("<a@b>,<c@d>", ("<a@b>", "<c@d>")),
        ("<a@b><c@d>", ("<a@b>", "<c@d>")),
        ("\t<a@b>\r\n <c@d>", ("<a@b>", "<c@d>")),
        ("<a @b\x00>", ("<a@b>",)),
        ("a@b", ("<a@b>",)),
        ("<a@b", ("<a@b>",)),
        ("a@b c@d", ()),
        ("<> <>", ()),
        ("", ()),
        ("nothing", ()),
    ],
)
def test_extract_msg_ids(value: str, ids: tuple[str, ...]) -> None:
    assert extract_msg_ids(value) == ids


def test_multiple_references_headers_are_joined() -> None:
    parsed = parse_message(b"References: <a@b>\nReferences: <c@d>\n\n")
    assert parsed.references == ("<a@b>", "<c@d>")


# --- addresses and the rest ----------------------------------------------------------------------------


def test_addresses_are_lower_cased_and_bad_ones_skipped_with_a_note() -> None:
    parsed = parse_message(
        b"From: =?utf-8?q?M=C3=BCller=0A?= <Mueller@Makler.Example>\n"
        b"To: A@X.example, not-an-address, undisclosed-recipients:;\n"
        b'Cc: "Doe, Jane" <JANE@y.example>, jane@y.example\n\n'
    )
    assert parsed.from_addresses == ("mueller@makler.example",)
    assert parsed.from_display_name == "Müller"
    assert parsed.to == ("a@x.example",)
    assert parsed.cc == ("jane@y.example",)
    assert "To: not an address: 'not-an-address'" in parsed.defects


def test_explicit_header_name_is_configurable_and_case_insensitive() -> None:
    raw = b"x-ams-vorgang:  VG-2026-000001 \nX-Gateway-Vorgang: VG-2026-000002\n\n"
    assert parse_message(raw, vorgang_header="X-AMS-Vorgang").vorgang_header == "VG-2026-000001"
    assert parse_message(raw).vorgang_header == "VG-2026-000002"
    assert parse_message(b"\n").vorgang_header is None


def test_auto_submitted_and_received_count() -> None:
    parsed = parse_message(b"Received: a\nAuto-Submitted:  Auto-Replied \nReceived: b\nReceived: c\n\n")
    assert (parsed.auto_submitted, parsed.received_count) == ("auto-replied", 3)


# --- never raises --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00" * 100,
        b"\n\n\n",
        b":\n:no name\n\n",
        b" \n\tcontinuation first\n\n",
        b"From: <<<@@@>>>\nTo: ,,,;;;\nMessage-ID: <<<>>>\n\n",
        b"Subject: =?\n\n",
        b"Subject: " + b"=?utf-8?q?" * 20000 + b"\n\n",
        b"\xff\xfe\xfd: \xff\n\n",
        b"To: " + b"a@b, " * 50000 + b"\n\n",
    ],
)
def test_hostile_inputs_do_not_raise(raw: bytes) -> None:
    parsed = parse_message(raw)
    assert not has_controls(parsed.subject)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    parsed = parse_message(raw)
    assert not has_controls(parsed.subject)
    assert not has_controls(parsed.from_display_name)


header_lines = st.lists(
    st.tuples(
        st.sampled_from(["Subject", "From", "To", "Cc", "Message-ID", "References", "In-Reply-To", "X"]),
        st.binary(max_size=80),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(header_lines, st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_arbitrary_header_values_never_raise(lines: list[tuple[str, bytes]], eol: bytes) -> None:
    raw = b"".join(name.encode() + b": " + value + eol for name, value in lines) + eol + b"body"
    parsed = parse_message(raw)
    assert not has_controls(parsed.subject)
    assert all(address == address.lower() and "@" in address for address in parsed.to + parsed.cc)
    assert all(i.startswith("<") and i.endswith(">") for i in (*parsed.references, *parsed.in_reply_to))
