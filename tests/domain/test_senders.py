"""Who a relayed reply names as sender: ams versions read and compared, legacy ams, the stand-in sender."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.senders import (
    FIRST_CURRENT_AMS,
    InvalidVersion,
    RelaySender,
    is_legacy_ams,
    parse_ams_version,
    relay_sender,
)

MEMBER = "anna.schmidt@kunde.example"
ORIGINAL = "einkauf@kunde.example"

# --- versions ------------------------------------------------------------------------------------------


def test_the_first_current_version() -> None:
    assert FIRST_CURRENT_AMS == (4, 8, 0, 64470)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4.8.0.64470", (4, 8, 0, 64470)),
        ("4.8.0.064470", (4, 8, 0, 64470)),
        ("04.08.00.0064470", (4, 8, 0, 64470)),
        ("0.0.0.0", (0, 0, 0, 0)),
        ("000.0.0.0", (0, 0, 0, 0)),
        ("4.10.0.1", (4, 10, 0, 1)),
        ("12.345.6789.123456789", (12, 345, 6789, 123456789)),
        ("4.8.0." + "0" * 5000 + "64470", (4, 8, 0, 64470)),  # leading zeros are no digits that count
    ],
)
def test_parse_ams_version(text: str, expected: tuple[int, int, int, int]) -> None:
    assert parse_ams_version(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "4",
        "4.8",
        "4.8.0",  # shorter
        "4.8.0.64470.1",  # longer
        "4.8.0.64470.",
        ".4.8.0.64470",
        "4.8..64470",
        "4..8.0.64470",
        "4.8.0.64470 ",
        " 4.8.0.64470",
        "4.8.0.64470\n",
        "v4.8.0.64470",
        "ams 4.8.0.64470",
        "4.8.0.64470-beta",
        "4.8.0.-1",
        "+4.8.0.1",
        "4.8.0.6_4470",  # int() would take it
        "4.8.0.1e5",
        "4,8,0,64470",
        "4-8-0-64470",
        "4.8.0.0x10",
        "٤.٨.٠.٦٤٤٧٠",  # Arabic-Indic digits, which int() would read
        "4.8.0.６４４７０",  # fullwidth digits
        "4.8.0.²",  # a digit to str.isdigit(), not to int()
        "unknown",
        "4.8.0." + "9" * 5000,  # more digits than int() reads
    ],
)
def test_what_is_not_four_numbers_is_an_invalid_version(text: str) -> None:
    with pytest.raises(InvalidVersion, match="is not an ams version") as raised:
        parse_ams_version(text)
    assert isinstance(raised.value, ValueError)
    assert repr(text[:60]).rstrip("'\"") in str(raised.value)  # the message names the text


def test_an_invalid_version_is_named_briefly() -> None:
    with pytest.raises(InvalidVersion) as raised:
        parse_ams_version("x" * 10_000)
    assert len(str(raised.value)) < 200


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("4.8.0.64469", "4.8.0.64470"),
        ("4.8.0.64470", "4.10.0.1"),  # 10 > 8 as numbers, though not as text
        ("4.8.0.9", "4.8.0.10"),
        ("4.8.0.99999", "4.8.1.0"),
        ("4.9.0.0", "4.10.0.0"),
        ("3.99.99.99999", "4.0.0.0"),
        ("9.0.0.0", "10.0.0.0"),
    ],
)
def test_versions_compare_as_numbers(older: str, newer: str) -> None:
    assert parse_ams_version(older) < parse_ams_version(newer)


@given(st.tuples(*[st.integers(0, 10**12)] * 4), st.tuples(*[st.integers(0, 3)] * 4))
def test_every_version_reads_back_whatever_its_leading_zeros(
    numbers: tuple[int, int, int, int], zeros: tuple[int, int, int, int]
) -> None:
    text = ".".join("0" * z + str(n) for n, z in zip(numbers, zeros, strict=True))
    assert parse_ams_version(text) == numbers
    assert is_legacy_ams(text) == (numbers < FIRST_CURRENT_AMS)


# --- legacy ams ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "legacy"),
    [
        ("4.8.0.64469", True),
        ("4.8.0.064469", True),
        ("4.8.0.64470", False),
        ("4.8.0.064470", False),
        ("4.8.0.64471", False),
        ("4.8.0.0", True),
        ("4.7.99.99999", True),
        ("4.8.1.0", False),
        ("4.10.0.1", False),
        ("3.99.99.99999", True),
        ("5.0.0.0", False),
        ("0.0.0.0", True),
        ("", False),  # unknown counts as current
    ],
)
def test_is_legacy_ams(version: str, legacy: bool) -> None:
    assert is_legacy_ams(version) is legacy


@pytest.mark.parametrize("version", [" ", "4.8", "4.8.0.64469.0", "latest"])
def test_is_legacy_ams_refuses_what_is_no_version(version: str) -> None:
    with pytest.raises(InvalidVersion):
        is_legacy_ams(version)


# --- the sender of a relayed reply ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "participant", "expected"),
    [
        # legacy: the original participant stands in, when there is one
        ("4.8.0.64469", ORIGINAL, RelaySender(ORIGINAL, MEMBER, legacy=True)),
        ("4.8.0.0", ORIGINAL, RelaySender(ORIGINAL, MEMBER, legacy=True)),
        ("4.8.0.64469", None, RelaySender(MEMBER, MEMBER, legacy=True)),
        ("4.8.0.64469", "", RelaySender(MEMBER, MEMBER, legacy=True)),
        ("4.8.0.64469", MEMBER, RelaySender(MEMBER, MEMBER, legacy=True)),
        # current or unknown: always the actual sender
        ("4.8.0.64470", ORIGINAL, RelaySender(MEMBER, MEMBER, legacy=False)),
        ("4.10.0.1", ORIGINAL, RelaySender(MEMBER, MEMBER, legacy=False)),
        ("4.8.0.64470", None, RelaySender(MEMBER, MEMBER, legacy=False)),
        ("", ORIGINAL, RelaySender(MEMBER, MEMBER, legacy=False)),
        ("", None, RelaySender(MEMBER, MEMBER, legacy=False)),
    ],
)
def test_relay_sender(version: str, participant: str | None, expected: RelaySender) -> None:
    assert (
        relay_sender(actual_sender=MEMBER, original_participant=participant, ams_version=version) == expected
    )


@given(
    st.emails(),
    st.none() | st.emails(),
    st.tuples(*[st.integers(0, 99_999)] * 4).map(lambda v: ".".join(map(str, v))) | st.just(""),
)
def test_the_actual_sender_always_travels(actual: str, participant: str | None, version: str) -> None:
    sender = relay_sender(actual_sender=actual, original_participant=participant, ams_version=version)
    assert sender.actual_sender == actual
    assert sender.legacy == is_legacy_ams(version)
    assert sender.from_address in {actual, participant}
    assert (sender.from_address == actual) or sender.legacy


def test_relay_sender_refuses_an_invalid_version() -> None:
    with pytest.raises(InvalidVersion, match=re.escape("'4.8'")):
        relay_sender(actual_sender=MEMBER, original_participant=ORIGINAL, ams_version="4.8")


def test_relay_sender_is_frozen() -> None:
    sender = relay_sender(actual_sender=MEMBER, original_participant=ORIGINAL, ams_version="4.8.0.1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        sender.from_address = MEMBER  # type: ignore[misc]
