"""Which Vorgang a message belongs to: references, subject tags, hints and the order of DESIGN.md §6."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.threading import (
    MAX_THREAD_IDS,
    REFERENCE_PATTERN,
    Found,
    VorgangHints,
    choose_vorgang,
    format_reference,
    parse_reference,
    subject_references,
    tagged_subject,
    vorgang_hints,
)

REF_1 = "VG-2026-000001"
REF_2 = "VG-2026-000002"

# --- references --------------------------------------------------------------------------------------


def test_format_reference() -> None:
    assert format_reference(2026, 123) == "VG-2026-000123"
    assert format_reference(2026, 999_999) == "VG-2026-999999"
    assert format_reference(2026, 1_000_000) == "VG-2026-1000000"


@pytest.mark.parametrize(("year", "number"), [(-1, 1), (10_000, 1), (2026, -1)])
def test_format_reference_refuses_what_has_no_spelling(year: int, number: int) -> None:
    with pytest.raises(ValueError, match="reference"):
        format_reference(year, number)


@given(st.integers(0, 9999), st.integers(0, 10**12))
def test_every_formatted_reference_parses_back_to_itself(year: int, number: int) -> None:
    reference = format_reference(year, number)
    assert parse_reference(reference) == reference
    assert parse_reference(f"  {reference.lower()}\t") == reference
    assert subject_references(f"Re: [{reference.lower()}] x") == (reference,)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("VG-2026-000123", "VG-2026-000123"),
        (" vg-2026-000123 ", "VG-2026-000123"),
        ("Vg-2026-000123", "VG-2026-000123"),
        ("VG-2026-1234567", "VG-2026-1234567"),
        ("VG-2026-0123456", None),  # seven digits with a leading zero: not how any number is written
        ("VG-2026-00123", None),
        ("VG-26-000123", None),
        ("VG-02026-000123", None),
        ("[VG-2026-000123]", None),
        ("VG-2026-000123 VG-2026-000124", None),
        ("VG-٢٠٢٦-000123", None),  # digits of another script
        ("XVG-2026-000123", None),
        ("", None),
    ],
)
def test_parse_reference(text: str, expected: str | None) -> None:
    assert parse_reference(text) == expected


def test_reference_pattern_finds_references_in_text_case_insensitively() -> None:
    found = [
        m.group(0)
        for m in REFERENCE_PATTERN.finditer("see vg-2026-000001, VG-2026-0000022 and AVG-2026-000003")
    ]
    assert found == ["vg-2026-000001"]


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("[VG-2026-000001] Schaden", (REF_1,)),
        ("Re: AW: [vg-2026-000001] Schaden", (REF_1,)),
        ("[VG-2026-000002] Fwd: [VG-2026-000001] x [vg-2026-000002]", (REF_2, REF_1)),
        ("VG-2026-000001 without brackets", ()),
        ("[VG-2026-000001 ] space", ()),
        ("[VG-2026-00000] short", ()),
        ("[VG-2026-0000001] long with leading zero", ()),
        ("", ()),
    ],
)
def test_subject_references(subject: str, expected: tuple[str, ...]) -> None:
    assert subject_references(subject) == expected


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Schaden", "[VG-2026-000001] Schaden"),
        ("Re: [vg-2026-000001] Schaden", "Re: [vg-2026-000001] Schaden"),
        ("[VG-2026-000002] Schaden", "[VG-2026-000001] [VG-2026-000002] Schaden"),
        ("", "[VG-2026-000001]"),
    ],
)
def test_tagged_subject(subject: str, expected: str) -> None:
    assert tagged_subject(subject, REF_1) == expected


def test_tagged_subject_is_idempotent_and_refuses_non_references() -> None:
    once = tagged_subject("x", "vg-2026-000001")
    assert once == "[VG-2026-000001] x"
    assert tagged_subject(once, REF_1) == once
    with pytest.raises(ValueError, match="not a Vorgang reference"):
        tagged_subject("x", "VG-1")


# --- hints -------------------------------------------------------------------------------------------


def test_hints_order_thread_ids_in_reply_to_then_newest_reference_first() -> None:
    hints = vorgang_hints(
        explicit_header=" vg-2026-000001 ",
        in_reply_to=["<c@x>"],
        references=["<a@x>", "<b@x>", "<c@x>"],
        subject="Re: [VG-2026-000002] x",
        key="claim 42",
    )
    assert hints == VorgangHints(
        explicit=REF_1, message_ids=("<c@x>", "<b@x>", "<a@x>"), subject_references=(REF_2,), key="claim 42"
    )


@pytest.mark.parametrize("header", [None, "", "Schaden 42", "[VG-2026-000001]"])
def test_hints_without_a_usable_explicit_header(header: str | None) -> None:
    hints = vorgang_hints(explicit_header=header, in_reply_to=(), references=(), subject="")
    assert hints == VorgangHints(None, (), ())


def test_hints_cap_the_thread_lookups_keeping_the_newest() -> None:
    references = [f"<{i}@x>" for i in range(1000)]
    hints = vorgang_hints(explicit_header=None, in_reply_to=["<r@x>"], references=references, subject="")
    assert len(hints.message_ids) == MAX_THREAD_IDS
    assert hints.message_ids[:3] == ("<r@x>", "<999@x>", "<998@x>")


# --- choosing ------------------------------------------------------------------------------------------

FULL = VorgangHints(explicit=REF_1, message_ids=("<new@x>", "<old@x>"), subject_references=(REF_2,), key="k")
KNOWN_REFS = {REF_1: 10, REF_2: 20}
KNOWN_IDS = {"<new@x>": 30, "<old@x>": 31}
KNOWN_KEYS = {"k": 40}


@pytest.mark.parametrize(
    ("refs", "ids", "keys", "expected"),
    [
        pytest.param(KNOWN_REFS, KNOWN_IDS, KNOWN_KEYS, (Found.EXPLICIT, 10), id="explicit first"),
        pytest.param({REF_2: 20}, KNOWN_IDS, KNOWN_KEYS, (Found.THREAD, 30), id="then thread"),
        pytest.param({REF_2: 20}, {"<old@x>": 31}, KNOWN_KEYS, (Found.THREAD, 31), id="older ancestor"),
        pytest.param({REF_2: 20}, {}, KNOWN_KEYS, (Found.SUBJECT, 20), id="then subject"),
        pytest.param({}, {}, KNOWN_KEYS, (Found.KEY, 40), id="then key"),
        pytest.param({}, {}, {}, (Found.NEW, None), id="else new"),
        pytest.param(
            {"VG-2026-999999": 1}, {"<other@x>": 2}, {"other": 3}, (Found.NEW, None), id="unrelated"
        ),
    ],
)
def test_choose_vorgang_first_hit_wins(
    refs: dict[str, int], ids: dict[str, int], keys: dict[str, int], expected: tuple[Found, int | None]
) -> None:
    assert choose_vorgang(FULL, known_references=refs, known_message_ids=ids, known_keys=keys) == expected


def test_choose_vorgang_without_keys_and_with_empty_hints() -> None:
    assert choose_vorgang(VorgangHints(None, (), ()), known_references={}, known_message_ids={}) == (
        Found.NEW,
        None,
    )
    hints = VorgangHints(None, (), (), key="k")
    assert choose_vorgang(hints, known_references={}, known_message_ids={}) == (Found.NEW, None)


def test_subject_tags_are_tried_in_order() -> None:
    hints = VorgangHints(None, (), (REF_1, REF_2))
    assert choose_vorgang(hints, known_references={REF_2: 20}, known_message_ids={}) == (Found.SUBJECT, 20)
    assert choose_vorgang(hints, known_references=KNOWN_REFS, known_message_ids={}) == (Found.SUBJECT, 10)


def test_found_says_which_step_in_words() -> None:
    assert [str(step) for step in Found] == [
        "explicit header",
        "in-reply-to/references",
        "subject tag",
        "rule key",
        "new vorgang",
    ]


@given(
    st.lists(st.sampled_from(["<a@x>", "<b@x>", "<c@x>", "<d@x>"]), max_size=6),
    st.lists(st.sampled_from(["<a@x>", "<b@x>", "<c@x>", "<d@x>"]), max_size=6),
    st.dictionaries(st.sampled_from(["<a@x>", "<b@x>", "<c@x>", "<d@x>"]), st.integers(1, 9)),
)
def test_thread_hit_is_the_first_known_id_in_hint_order(
    in_reply_to: list[str], references: list[str], known: dict[str, int]
) -> None:
    hints = vorgang_hints(explicit_header=None, in_reply_to=in_reply_to, references=references, subject="")
    assert len(set(hints.message_ids)) == len(hints.message_ids)
    assert set(hints.message_ids) == set(in_reply_to) | set(references)
    found, vorgang = choose_vorgang(hints, known_references={}, known_message_ids=known)
    hits = [known[i] for i in (*in_reply_to, *reversed(references)) if i in known]
    assert (found, vorgang) == ((Found.THREAD, hits[0]) if hits else (Found.NEW, None))
