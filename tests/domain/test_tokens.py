"""Reply tokens: made, read back from addresses and References, verified, refused when altered or foreign."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.tokens import (
    LOCAL_PART,
    MAC_LENGTH,
    MAX_COPY_ID_LENGTH,
    MIN_KEY_BYTES,
    HeldAction,
    TokenKeys,
    TokenParts,
    held_token,
    is_reply_address,
    make_token,
    parse_token,
    read_held_token,
    reference_id,
    reply_address,
    token_from_address,
    token_from_references,
    verify_held_token,
    verify_token,
)

KEY_OLD = b"old key: sixteen bytes or more..."
KEY_NEW = b"new key: sixteen bytes or more..."
KEYS = TokenKeys([KEY_NEW])
PORTFOLIO = "makler-muster"
COPY_ID = "c0123456789abcdef0123"
DOMAIN = "reply.gateway.example"
TOKEN_ALPHABET = string.ascii_lowercase + string.digits

# Copy ids as gateway.stages.acceptance.new_copy_id makes them: "c" and 20 lower-case hex digits.
gateway_copy_ids = st.text("0123456789abcdef", min_size=20, max_size=20).map(lambda hex_: "c" + hex_)
portfolios = st.text(min_size=1, max_size=100)


def token(keys: TokenKeys = KEYS, portfolio: str = PORTFOLIO, copy_id: str = COPY_ID) -> str:
    return make_token(keys, portfolio=portfolio, copy_id=copy_id)


def verifies(text: str, keys: TokenKeys = KEYS, portfolio: str = PORTFOLIO) -> bool:
    parts = parse_token(text)
    return parts is not None and verify_token(keys, parts, portfolio=portfolio)


MAC = token()[len(COPY_ID) :]


# --- keys ----------------------------------------------------------------------------------------------


def test_keys_keep_their_order() -> None:
    assert TokenKeys([KEY_NEW, KEY_OLD]).keys == (KEY_NEW, KEY_OLD)
    assert TokenKeys(iter([KEY_OLD])).keys == (KEY_OLD,)


def test_a_key_of_the_minimum_length_is_enough() -> None:
    assert TokenKeys([b"k" * MIN_KEY_BYTES]).keys == (b"k" * MIN_KEY_BYTES,)
    assert MIN_KEY_BYTES >= 16


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([], "at least one token key"),
        ([b"k" * (MIN_KEY_BYTES - 1)], r"token key 1 has 15 bytes; a token key needs at least 16"),
        ([KEY_NEW, b""], r"token key 2 has 0 bytes"),
    ],
)
def test_too_few_or_too_short_keys_are_refused(keys: list[bytes], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenKeys(keys)


@pytest.mark.parametrize("keys", [KEY_NEW, bytearray(KEY_NEW), "a text of more than sixteen characters"])
def test_a_single_key_instead_of_a_sequence_is_refused(keys: object) -> None:
    with pytest.raises(TypeError, match="not a single key"):
        TokenKeys(keys)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["a text of more than sixteen characters", 32, bytearray(32)])
def test_a_key_that_is_not_bytes_is_refused(key: object) -> None:
    with pytest.raises(TypeError, match="token key 2 is a"):
        TokenKeys([KEY_NEW, key])  # type: ignore[list-item]


def test_keys_never_show_in_repr() -> None:
    keys = TokenKeys([KEY_NEW, KEY_OLD])
    assert repr(keys) == "TokenKeys(<2 keys>)"
    assert repr(TokenKeys([KEY_NEW])) == "TokenKeys(<1 key>)"
    assert "sixteen" not in str(keys)


def test_keys_are_frozen() -> None:
    keys = TokenKeys([KEY_NEW])
    with pytest.raises(AttributeError):
        keys.keys = (KEY_OLD,)  # type: ignore[misc]


# --- making and verifying ------------------------------------------------------------------------------


def test_a_token_is_the_copy_id_and_a_lower_case_base32_mac() -> None:
    made = token()
    assert made.startswith(COPY_ID)
    assert len(made) == len(COPY_ID) + MAC_LENGTH == 45
    assert set(made[len(COPY_ID) :]) <= set(string.ascii_lowercase + "234567")
    assert MAC_LENGTH * 5 >= 80  # bits of MAC


def test_the_token_format_is_pinned() -> None:
    # Tokens live on in mailboxes for years: a change of format or MAC input invalidates every one, and
    # must be a decision, not an accident. Checked against a separate hmac/base32 computation.
    keys = TokenKeys([bytes(range(32))])
    assert make_token(keys, portfolio="Bestand Müller", copy_id=COPY_ID) == (
        "c0123456789abcdef0123qxzhdzeft6q5ctgwihodxqid"
    )


def test_round_trip() -> None:
    parts = parse_token(token())
    assert parts == TokenParts(copy_id=COPY_ID, mac=token()[len(COPY_ID) :])
    assert parts.token == token()
    assert verify_token(KEYS, parts, portfolio=PORTFOLIO)


@given(gateway_copy_ids, portfolios)
def test_round_trip_for_any_gateway_copy_and_portfolio(copy_id: str, portfolio: str) -> None:
    made = make_token(KEYS, portfolio=portfolio, copy_id=copy_id)
    parts = parse_token(made)
    assert parts is not None
    assert parts.copy_id == copy_id
    assert verify_token(KEYS, parts, portfolio=portfolio)


def test_the_same_copy_always_gets_the_same_token() -> None:
    # A retried fan-out must write the same address into the copy it writes again.
    assert token() == token()
    assert token(copy_id="c0123456789abcdef0124") != token()


def test_a_token_is_bound_to_its_portfolio() -> None:
    made = token(portfolio="portfolio-a")
    assert verifies(made, portfolio="portfolio-a")
    assert not verifies(made, portfolio="portfolio-b")
    assert not verifies(made, portfolio="Portfolio-A")  # the name as stored, not folded


def test_portfolio_and_copy_id_cannot_be_shifted_into_each_other() -> None:
    # Without the portfolio name's length in the MAC input, ("x1", "c2…") and ("x", "1c2…") would sign
    # the same bytes, and a member of portfolio x1 could answer copy 1c2… of portfolio x.
    made = make_token(KEYS, portfolio="x1", copy_id="c2")
    shifted = "1" + made
    assert parse_token(shifted) == TokenParts(copy_id="1c2", mac=made[-MAC_LENGTH:])
    assert not verifies(shifted, portfolio="x")


@given(portfolios, portfolios)
def test_a_token_for_one_portfolio_fails_for_any_other(portfolio_a: str, portfolio_b: str) -> None:
    made = token(portfolio=portfolio_a)
    assert verifies(made, portfolio=portfolio_b) == (portfolio_a == portfolio_b)


def test_upper_and_mixed_case_tokens_verify() -> None:
    made = token()
    assert verifies(made.upper())
    assert verifies(made[:10].upper() + made[10:])
    assert parse_token(made.upper()) == parse_token(made)


def test_every_single_character_change_fails_verification() -> None:
    made = token()
    for position, original in enumerate(made):
        for replacement in TOKEN_ALPHABET:
            if replacement != original:
                changed = made[:position] + replacement + made[position + 1 :]
                assert not verifies(changed), changed


@settings(max_examples=300)
@given(gateway_copy_ids, portfolios, st.data())
def test_any_single_character_change_of_any_token_fails_verification(
    copy_id: str, portfolio: str, data: st.DataObject
) -> None:
    made = make_token(KEYS, portfolio=portfolio, copy_id=copy_id)
    position = data.draw(st.integers(0, len(made) - 1), label="position")
    # Any character at all, not only token characters: a changed token must never verify, whether it
    # still parses or not. Only a change of case is no change.
    replacement = data.draw(
        st.characters(codec="utf-8").filter(lambda c: c.lower() != made[position]), label="replacement"
    )
    changed = made[:position] + replacement + made[position + 1 :]
    assert not verifies(changed, portfolio=portfolio)


@given(gateway_copy_ids, st.data())
def test_a_token_with_a_character_removed_or_added_fails(copy_id: str, data: st.DataObject) -> None:
    made = make_token(KEYS, portfolio=PORTFOLIO, copy_id=copy_id)
    position = data.draw(st.integers(0, len(made) - 1))
    assert not verifies(made[:position] + made[position + 1 :])
    extra = data.draw(st.sampled_from(TOKEN_ALPHABET))
    assert not verifies(made[:position] + extra + made[position:])


def test_an_old_key_still_verifies_after_a_new_key_is_put_first() -> None:
    old_token = token(keys=TokenKeys([KEY_OLD]))
    rotated = TokenKeys([KEY_NEW, KEY_OLD])
    assert verifies(old_token, keys=rotated)
    # New tokens are signed with the new key only, so they keep working once the old key is dropped.
    new_token = token(keys=rotated)
    assert new_token == token(keys=TokenKeys([KEY_NEW]))
    assert verifies(new_token, keys=TokenKeys([KEY_NEW]))
    assert not verifies(new_token, keys=TokenKeys([KEY_OLD]))


def test_a_token_under_an_unknown_key_fails() -> None:
    stranger = token(keys=TokenKeys([b"somebody else's key, long enough"]))
    assert not verifies(stranger, keys=TokenKeys([KEY_NEW, KEY_OLD]))


def test_a_dropped_key_no_longer_verifies() -> None:
    assert not verifies(token(keys=TokenKeys([KEY_OLD])), keys=TokenKeys([KEY_NEW]))


@given(gateway_copy_ids)
def test_the_local_part_fits_in_64_characters_for_every_gateway_copy_id(copy_id: str) -> None:
    address = reply_address(make_token(KEYS, portfolio=PORTFOLIO, copy_id=copy_id), DOMAIN)
    local_part = address.rpartition("@")[0]
    assert local_part.startswith(LOCAL_PART + "+")
    assert len(local_part) <= 64


def test_the_longest_copy_id_fills_the_local_part_exactly() -> None:
    longest = "c" * MAX_COPY_ID_LENGTH
    address = reply_address(token(copy_id=longest), DOMAIN)
    assert len(address.rpartition("@")[0]) == 64
    assert verifies(token(copy_id=longest))
    assert verifies(token(copy_id="1"))


@pytest.mark.parametrize(
    "copy_id",
    ["", "c" * (MAX_COPY_ID_LENGTH + 1), "C0123456789ABCDEF0123", "c-1", "c 1", "c\n", "cé", "c١"],
)
def test_a_copy_id_a_token_cannot_carry_is_refused(copy_id: str) -> None:
    with pytest.raises(ValueError, match="cannot carry the copy id"):
        token(copy_id=copy_id)


def test_a_portfolio_name_is_required() -> None:
    with pytest.raises(ValueError, match="portfolio"):
        token(portfolio="")
    parts = parse_token(token())
    assert parts is not None
    with pytest.raises(ValueError, match="portfolio"):
        verify_token(KEYS, parts, portfolio="")


# --- parsing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        MAC,  # no copy id
        COPY_ID,  # no MAC
        "c" + MAC[:-1],  # too short for a MAC and a copy id
        COPY_ID[:3] + "1" + MAC[:-1],  # the same, with a "1" (no base32 digit) where the MAC would start
        "x" * (MAX_COPY_ID_LENGTH + 1) + MAC,  # too long for a local part
        COPY_ID + MAC[:-1] + "1",  # 0, 1, 8 and 9 are no base32 digits
        COPY_ID + MAC[:-1] + "8",
        "c-1" + MAC,
        " " + token(),
        token() + "\n",
        "c\u212a" + MAC,  # KELVIN SIGN, which lower() turns into "k"
        "c١٢" + MAC,  # digits of another script
        COPY_ID + MAC[:-1] + "é",
        "reply+" + token(),
    ],
)
def test_what_is_not_spelled_like_a_token_does_not_parse(text: str) -> None:
    assert parse_token(text) is None


def test_parsing_folds_case() -> None:
    assert parse_token(token().upper()) == TokenParts(copy_id=COPY_ID, mac=MAC)


COPY_ID_ALPHABET = string.ascii_lowercase + string.digits
MAC_ALPHABET = string.ascii_lowercase + "234567"


@st.composite
def spelled_like_tokens(draw: st.DrawFn) -> str:
    """Any copy id the syntax allows and any MAC-shaped tail (right or wrong), in any mix of cases."""
    copy_id = draw(st.text(COPY_ID_ALPHABET, min_size=1, max_size=MAX_COPY_ID_LENGTH))
    mac = draw(st.text(MAC_ALPHABET, min_size=MAC_LENGTH, max_size=MAC_LENGTH))
    upper = draw(st.lists(st.booleans(), min_size=len(copy_id + mac), max_size=len(copy_id + mac)))
    return "".join(c.upper() if up else c for c, up in zip(copy_id + mac, upper, strict=True))


@given(spelled_like_tokens())
def test_parse_is_syntax_only_and_canonical(text: str) -> None:
    parts = parse_token(text)
    assert parts is not None  # syntax only: no key is asked whether the MAC is right
    assert parts.token == text.lower()
    assert (parts.copy_id, parts.mac) == (text.lower()[:-MAC_LENGTH], text.lower()[-MAC_LENGTH:])
    assert parse_token(parts.token) == parts
    assert len(parts.mac) == MAC_LENGTH


@given(spelled_like_tokens(), st.data())
def test_one_character_outside_its_alphabet_spoils_the_spelling(text: str, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(text) - 1))
    alphabet = MAC_ALPHABET if index >= len(text) - MAC_LENGTH else COPY_ID_ALPHABET
    # Upper case is no mistake; any other character is, even one that lower() turns into ASCII (KELVIN).
    wrong = data.draw(st.characters(exclude_characters=alphabet + alphabet.upper()))
    assert parse_token(text[:index] + wrong + text[index + 1 :]) is None


@given(spelled_like_tokens(), st.data())
def test_a_spelling_too_long_for_a_local_part_does_not_parse(text: str, data: st.DataObject) -> None:
    too_many = MAX_COPY_ID_LENGTH + MAC_LENGTH + 1 - len(text)
    more = data.draw(st.text(COPY_ID_ALPHABET, min_size=max(1, too_many), max_size=max(1, too_many) + 10))
    assert parse_token(more + text) is None


# --- addresses -----------------------------------------------------------------------------------------


def test_reply_address() -> None:
    assert reply_address(token(), DOMAIN) == f"reply+{token()}@{DOMAIN}"
    assert reply_address(token().upper(), DOMAIN.upper()) == f"reply+{token()}@{DOMAIN}"


@pytest.mark.parametrize(("token_text", "domain"), [("nope", DOMAIN), ("", DOMAIN)])
def test_reply_address_refuses_what_is_no_token(token_text: str, domain: str) -> None:
    with pytest.raises(ValueError, match="not a reply token"):
        reply_address(token_text, domain)


@pytest.mark.parametrize("domain", ["", "a b.example", "x@example", "example>", "-example", "exämple.de"])
def test_reply_address_refuses_what_is_no_domain(domain: str) -> None:
    with pytest.raises(ValueError, match="not a reply domain"):
        reply_address(token(), domain)
    with pytest.raises(ValueError, match="not a reply domain"):
        reference_id(token(), domain)


@pytest.mark.parametrize(
    "address",
    [
        f"reply+{token()}@{DOMAIN}",
        f"REPLY+{token().upper()}@{DOMAIN.upper()}",
        f"Reply+{token()}@Reply.Gateway.Example",
    ],
)
def test_token_from_address(address: str) -> None:
    assert token_from_address(address, DOMAIN) == token()
    assert is_reply_address(address, DOMAIN)


@given(gateway_copy_ids)
def test_token_from_address_gives_back_the_token_of_every_reply_address(copy_id: str) -> None:
    made = token(copy_id=copy_id)
    assert token_from_address(reply_address(made, DOMAIN), DOMAIN) == made


@pytest.mark.parametrize(
    "address",
    [
        f"reply+{token()}@other.example",
        f"reply+{token()}@sub.{DOMAIN}",
        f"reply+{token()}@x{DOMAIN}",
        f"reply+{token()}@{DOMAIN}.evil.example",
        f"reply+{token()}@{DOMAIN}.",
        f"reply+{token()}",
        f"noreply+{token()}@{DOMAIN}",
        f"replies+{token()}@{DOMAIN}",
        f"reply-{token()}@{DOMAIN}",
        f"{token()}@{DOMAIN}",
        f"ams@{DOMAIN}",
        "",
        "@",
        f"@{DOMAIN}",
        f" reply+{token()}@{DOMAIN}",
        f"<reply+{token()}@{DOMAIN}>",
        f"reply+{token()}@reply.gateway.exa\u212ample",  # KELVIN SIGN in the domain
    ],
)
def test_other_addresses_are_no_reply_addresses(address: str) -> None:
    assert token_from_address(address, DOMAIN) is None
    assert not is_reply_address(address, DOMAIN)


@pytest.mark.parametrize(
    "address",
    [
        f"reply@{DOMAIN}",
        f"REPLY@{DOMAIN.upper()}",
        f"reply+@{DOMAIN}",
        f"reply+nonsense@{DOMAIN}",
        f"reply+{COPY_ID}@{DOMAIN}",
        f"reply+{COPY_ID}{MAC[:-1]}1@{DOMAIN}",
        f"reply+{token()}+extra@{DOMAIN}",
        f"reply+{token()}1@{DOMAIN}",
    ],
)
def test_reply_addresses_without_a_token_give_none_but_are_reply_addresses(address: str) -> None:
    # Meant as replies: the reply path refuses them itself, or finds the copy by References.
    assert token_from_address(address, DOMAIN) is None
    assert is_reply_address(address, DOMAIN)


# --- References ----------------------------------------------------------------------------------------


def test_reference_id() -> None:
    assert reference_id(token(), DOMAIN) == f"<{token()}@{DOMAIN}>"
    assert reference_id(token().upper(), DOMAIN.upper()) == f"<{token()}@{DOMAIN}>"


def test_references_parsing_picks_the_token_id_among_other_ids() -> None:
    ids = [
        "<original@ams.makler.example>",
        reference_id(token(), DOMAIN),
        "<CAF=reply-from-client@mail.gmail.com>",
    ]
    assert token_from_references(ids, DOMAIN) == token()


def test_references_parsing_takes_the_last_token_id() -> None:
    older, newer = token(copy_id="c" + "1" * 20), token(copy_id="c" + "2" * 20)
    ids = [reference_id(older, DOMAIN), "<x@ams.example>", reference_id(newer, DOMAIN), "<y@ams.example>"]
    assert token_from_references(ids, DOMAIN) == newer


def test_references_parsing_skips_ids_at_the_reply_domain_that_are_no_token() -> None:
    ids = [reference_id(token(), DOMAIN), f"<not-a-token@{DOMAIN}>", f"<{COPY_ID}@{DOMAIN}>"]
    assert token_from_references(ids, DOMAIN) == token()


def test_references_parsing_folds_case() -> None:
    ids = [f"<{token().upper()}@{DOMAIN.upper()}>"]
    assert token_from_references(ids, DOMAIN) == token()


@pytest.mark.parametrize(
    "ids",
    [
        [],
        ["<original@ams.makler.example>"],
        [f"<{token()}@other.example>"],
        [f"<{token()}@sub.{DOMAIN}>"],
        [f"{token()}@{DOMAIN}"],  # the parser always gives ids in angle brackets
        [f"<{token()}@{DOMAIN}"],
        [f"<{token()}>"],
        [f"<reply+{token()}@{DOMAIN}>"],
        ["<>", "", "<@>"],
    ],
)
def test_references_without_a_token_id_give_none(ids: list[str]) -> None:
    assert token_from_references(ids, DOMAIN) is None


@given(gateway_copy_ids, st.lists(st.emails().map(lambda a: f"<{a}>"), max_size=5))
def test_the_token_id_is_found_among_any_other_ids(copy_id: str, others: list[str]) -> None:
    made = token(copy_id=copy_id)
    assert token_from_references([*others, reference_id(made, DOMAIN), *others], DOMAIN) == made


# --- the collision notice's addresses (docs/collisions.md) ----------------------------------------------


def test_held_tokens_are_bound_to_their_reply_member_and_action() -> None:
    keys = TokenKeys([b"k" * 32])
    token = held_token(
        keys, portfolio="mm", held_id="h0123456789abcdef0123", member_id=7, action=HeldAction.SEND
    )
    parts = parse_token(token)
    assert parts is not None
    assert token_from_address(reply_address(token, "reply.example"), "reply.example") == token
    assert read_held_token(parts) == ("s", "h0123456789abcdef0123")
    assert verify_held_token(keys, parts, portfolio="mm", member_id=7)
    # Not for another member, another portfolio, under another key; never as a copy's token.
    assert not verify_held_token(keys, parts, portfolio="mm", member_id=8)
    assert not verify_held_token(keys, parts, portfolio="other", member_id=7)
    assert not verify_held_token(TokenKeys([b"x" * 32]), parts, portfolio="mm", member_id=7)
    assert not verify_token(keys, parts, portfolio="mm")
    # The other action's address is another token; swapping the letter breaks the MAC.
    withdraw = held_token(
        keys, portfolio="mm", held_id="h0123456789abcdef0123", member_id=7, action=HeldAction.WITHDRAW
    )
    assert withdraw != token
    swapped = parse_token("w" + token[1:])
    assert swapped is not None
    assert not verify_held_token(keys, swapped, portfolio="mm", member_id=7)
    # A copy's token is no held token.
    copy = parse_token(make_token(keys, portfolio="mm", copy_id="c0123456789abcdef0123"))
    assert copy is not None
    assert read_held_token(copy) is None
    with pytest.raises(ValueError, match="held-reply token"):
        held_token(keys, portfolio="mm", held_id="c01234", member_id=7, action=HeldAction.SEND)
