"""A back office's own addresses, and the lengths the records hold (gateway.domain.submitters)."""

from __future__ import annotations

import pytest

from gateway.domain.submitters import (
    MAX_MESSAGE_ID,
    address_that_fits,
    allowed_text,
    foreign_senders,
    ids_that_fit,
    message_id_too_long,
    not_utf8,
    path_too_long,
)

OWN = ("ams@makler-muster.example", "post@makler-muster.example")


@pytest.mark.parametrize(
    ("claimed", "foreign"),
    [
        ((), []),
        (("ams@makler-muster.example",), []),
        (("AMS@Makler-Muster.example",), []),
        (("ams@makler-zwei.example",), ["ams@makler-zwei.example"]),
        (("post@makler-muster.example", "ceo@bank.example", "ceo@bank.example"), ["ceo@bank.example"]),
    ],
)
def test_foreign_senders(claimed: tuple[str, ...], foreign: list[str]) -> None:
    assert foreign_senders(OWN, claimed) == foreign


def test_allowed_text_names_the_own_addresses() -> None:
    assert (
        allowed_text(tuple(reversed(OWN)))
        == "it may send only from ams@makler-muster.example, post@makler-muster.example"
    )
    assert "no sender address" in allowed_text(())


def test_paths_count_octets_with_their_brackets() -> None:
    assert not path_too_long("a" * 254)
    assert path_too_long("a" * 255)
    assert path_too_long("ä" * 128)  # two octets each in UTF-8


def test_message_ids() -> None:
    assert not message_id_too_long(None)
    assert not message_id_too_long("<" + "x" * (MAX_MESSAGE_ID - 2) + ">")
    assert message_id_too_long("<" + "x" * (MAX_MESSAGE_ID - 1) + ">")


def test_ids_that_fit_keep_whole_ids() -> None:
    ids = [f"<{n}-{'x' * 90}@a.example>" for n in range(20)]
    kept = ids_that_fit(ids)
    assert kept is not None
    assert len(kept) <= MAX_MESSAGE_ID
    assert kept.split(" ") == ids[: len(kept.split(" "))]
    assert len(kept) + 1 + len(ids[len(kept.split(" "))]) > MAX_MESSAGE_ID, "as many as fit"
    assert ids_that_fit([]) is None
    assert ids_that_fit(["<" + "x" * 1200 + ">"]) is None
    assert ids_that_fit(["<a@b>", "<c@d>"]) == "<a@b> <c@d>"


def test_address_that_fits() -> None:
    assert address_that_fits(None) is None
    assert address_that_fits("a@b.example") == "a@b.example"
    assert address_that_fits("a" * 340 + "@b.example") is None


def test_addresses_that_were_not_utf8() -> None:
    assert not_utf8(b"sb-b2\xff@kunde-b.example".decode("utf-8", "surrogateescape"))
    assert not not_utf8("jürgen@kunde-b.example")
