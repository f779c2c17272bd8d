"""Reply-address tokens: make them, read them back from addresses and References, verify them (HMAC).

Every copy the gateway puts in a member's mailbox carries ``reply+TOKEN@<reply domain>`` in From and
Reply-To, and ``<TOKEN@<reply domain>>`` in References, so that a reply whose address lost its ``+TOKEN``
(some clients and servers drop sub-addresses) still names the copy it answers (DESIGN.md §5).

A token is the copy id followed by a MAC, both lower-case letters and digits only::

    c0123456789abcdef0123 5mzl2yxq4kzxb6d7rfa3g2ue
    └──── copy id ──────┘ └──── MAC, 24 chars ────┘   (written without the space)

The MAC is HMAC-SHA256 under a secret key over the portfolio's name and the copy id, cut to its first 120
bits and written in RFC 4648 base32, lower-case. 120 bits are 24 base32 characters exactly, with no
padding and no spare bits, so every MAC has exactly one spelling. Binding the portfolio in keeps a token
from ever naming a copy of another portfolio, even if copy ids were to repeat across portfolios.

Only letters and digits, so that case is all a mail system can change: some upper-case local parts, and
every reading here folds case first. The MAC has a fixed length, so no separator is needed; the copy id
stays in clear, which lets a log reader see at once which copy a reply was meant for.

Several keys can be configured (:class:`TokenKeys`): the first signs new tokens, every one of them is
tried when verifying, so a key can be replaced without invalidating the tokens in mailboxes today.
"""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "LOCAL_PART",
    "MAC_LENGTH",
    "MAX_COPY_ID_LENGTH",
    "MIN_KEY_BYTES",
    "HeldAction",
    "TokenKeys",
    "TokenParts",
    "held_token",
    "is_reply_address",
    "make_token",
    "parse_token",
    "read_held_token",
    "reference_id",
    "reply_address",
    "token_from_address",
    "token_from_references",
    "verify_held_token",
]

LOCAL_PART = "reply"
"""The local part of every reply address; the token follows it after a ``+``."""

MIN_KEY_BYTES = 16
"""The shortest key accepted: 128 bits, so a key is never the weak point of a 120-bit MAC."""

_MAC_BYTES = 15  # 120 bits: comfortably above the 80 bits asked for, and a whole number of base32 digits
MAC_LENGTH = _MAC_BYTES * 8 // 5
"""Characters of the MAC at the end of every token (24)."""

# RFC 5321 4.5.3.1.1: a local part has at most 64 octets. Some servers refuse longer ones outright.
_MAX_LOCAL_PART = 64
MAX_COPY_ID_LENGTH = _MAX_LOCAL_PART - len(LOCAL_PART) - 1 - MAC_LENGTH
"""The longest copy id a token can carry (34); the gateway's own are 21 characters long."""

# Changing this string invalidates every token in every mailbox; it separates our MACs from any other
# use of the same key and leaves room for a second token format.
_PURPOSE = b"vorgang-gateway reply token v1\x00"

# Explicit classes with re.ASCII, never \w or \d: they would admit letters and digits of other scripts.
_COPY_ID = re.compile(r"[a-z0-9]+", re.ASCII)
_MAC = re.compile(r"[a-z2-7]+", re.ASCII)
_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?", re.ASCII)


@dataclass(frozen=True, slots=True, init=False, repr=False)
class TokenKeys:
    """The configured token keys in order: the first signs new tokens, every one verifies.

    Built from a sequence of at least one key of at least :data:`MIN_KEY_BYTES` bytes; anything else
    raises ``ValueError`` (``TypeError`` for a key that is not bytes). The keys never show in ``repr``.
    """

    keys: tuple[bytes, ...]

    def __init__(self, keys: Iterable[bytes]) -> None:
        # One bytes object is an iterable of ints, and bytes(32) is 32 zero bytes: both would make a
        # "key" nobody meant, so they are refused rather than converted.
        if isinstance(keys, bytes | bytearray | str):
            raise TypeError("TokenKeys takes a sequence of keys, not a single key")
        checked: list[bytes] = []
        for number, key in enumerate(keys, start=1):
            if not isinstance(key, bytes):
                raise TypeError(f"token key {number} is a {type(key).__name__}, not bytes")
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(
                    f"token key {number} has {len(key)} bytes; a token key needs at least {MIN_KEY_BYTES}"
                )
            checked.append(key)
        if not checked:
            raise ValueError("at least one token key is needed to sign reply tokens")
        object.__setattr__(self, "keys", tuple(checked))

    def __repr__(self) -> str:
        return f"TokenKeys(<{len(self.keys)} key{'s' if len(self.keys) != 1 else ''}>)"


@dataclass(frozen=True, slots=True)
class TokenParts:
    """A token read back, in lower case: the copy it names and its MAC, not yet verified."""

    copy_id: str
    mac: str

    @property
    def token(self) -> str:
        """The token in its canonical (lower-case) spelling."""
        return self.copy_id + self.mac


def make_token(keys: TokenKeys, *, portfolio: str, copy_id: str) -> str:
    """The token for copy ``copy_id`` of ``portfolio``, signed with the first key.

    Raises ``ValueError`` for an empty portfolio name or a copy id that a token cannot carry (anything
    but 1 to :data:`MAX_COPY_ID_LENGTH` lower-case ASCII letters and digits).
    """
    if not (len(copy_id) <= MAX_COPY_ID_LENGTH and _COPY_ID.fullmatch(copy_id)):
        raise ValueError(
            f"a reply token cannot carry the copy id {copy_id!r}: it must be 1 to {MAX_COPY_ID_LENGTH} "
            "lower-case letters and digits"
        )
    return copy_id + _mac(keys.keys[0], portfolio, copy_id)


def parse_token(text: str) -> TokenParts | None:
    """The parts of ``text`` if it is spelled like a token, in any case; None if it is not one.

    Syntax only: whether the MAC is right is for :func:`verify_token` to say.
    """
    if not (MAC_LENGTH < len(text) <= MAC_LENGTH + MAX_COPY_ID_LENGTH and text.isascii()):
        return None
    # isascii() first: str.lower() turns a few non-ASCII letters into ASCII ones (KELVIN SIGN into "k"),
    # which would give one token several spellings outside the case folding we promise.
    folded = text.lower()
    copy_id, mac = folded[:-MAC_LENGTH], folded[-MAC_LENGTH:]
    if not (_COPY_ID.fullmatch(copy_id) and _MAC.fullmatch(mac)):
        return None
    return TokenParts(copy_id=copy_id, mac=mac)


def verify_token(keys: TokenKeys, parts: TokenParts, *, portfolio: str) -> bool:
    """Whether ``parts`` carries the MAC of its copy id in ``portfolio`` under any of ``keys``."""
    # Every key is tried, even after a match, and each comparison takes the same time whatever the
    # MACs hold, so the time taken says nothing about how close a forged MAC came.
    valid = False
    for key in keys.keys:
        valid |= hmac.compare_digest(_mac(key, portfolio, parts.copy_id), parts.mac)
    return valid


def reply_address(token: str, reply_domain: str) -> str:
    """``reply+TOKEN@reply_domain``, both in lower case; ``ValueError`` if ``token`` is no token."""
    return f"{LOCAL_PART}+{_canonical(token)}@{_domain(reply_domain)}"


def reference_id(token: str, reply_domain: str) -> str:
    """``<TOKEN@reply_domain>``, the message id that carries the token in References."""
    return f"<{_canonical(token)}@{_domain(reply_domain)}>"


def token_from_address(address: str, reply_domain: str) -> str | None:
    """The token of ``reply+TOKEN@reply_domain``, lower-case, in any case of any part; else None.

    None for every other address: another domain, another local part, the bare ``reply@…``, and a
    ``reply+…`` whose text after the ``+`` is not spelled like a token. ``address`` is a bare addr-spec
    as an SMTP envelope gives it, without angle brackets or display name.
    """
    local = _reply_local_part(address, reply_domain)
    if local is None or not local.startswith(LOCAL_PART + "+"):
        return None
    parts = parse_token(local[len(LOCAL_PART) + 1 :])
    return parts.token if parts is not None else None


def is_reply_address(address: str, reply_domain: str) -> bool:
    """Whether ``address`` is addressed to the reply path: ``reply@`` or ``reply+anything@`` the domain.

    True also when the token is missing or malformed: such a mail was meant as a reply, and deserves
    the reply path's own refusal (or a match by References) rather than "no such user".
    """
    local = _reply_local_part(address, reply_domain)
    return local is not None and (local == LOCAL_PART or local.startswith(LOCAL_PART + "+"))


def token_from_references(message_ids: Sequence[str], reply_domain: str) -> str | None:
    """The token of the last ``<TOKEN@reply_domain>`` among ``message_ids`` whose TOKEN parses, or None.

    ``message_ids`` are in the ``<local@domain>`` form the parser gives (References, then In-Reply-To if
    the caller wants those too). The last one wins because References lists the newest ancestor last.
    """
    domain = reply_domain.lower()
    for message_id in reversed(message_ids):
        if not (message_id.startswith("<") and message_id.endswith(">")):
            continue
        local, at, id_domain = message_id[1:-1].rpartition("@")
        if not at or not id_domain.isascii() or id_domain.lower() != domain:
            continue
        parts = parse_token(local)
        if parts is not None:
            return parts.token
    return None


# The collision guard's notice (gateway.domain.held_notice) names two addresses per held reply, "send
# mine anyway" and "withdraw mine", spelled like reply tokens: the action's letter and the held reply's
# id (which starts with "h", as no copy id does), then a MAC. The MAC has its own purpose string and
# binds the member too, so such a token never verifies as a copy's token, nor for another member.
_HELD_PURPOSE = b"vorgang-gateway held reply v1\x00"
_HELD_ID = re.compile(r"h[a-z0-9]{4,30}", re.ASCII)


class HeldAction(str):
    """``s`` (send anyway) or ``w`` (withdraw)."""

    SEND = "s"
    WITHDRAW = "w"


def held_token(keys: TokenKeys, *, portfolio: str, held_id: str, member_id: int, action: str) -> str:
    """The token of the address that does ``action`` (``HeldAction``) to the held reply ``held_id``."""
    if action not in (HeldAction.SEND, HeldAction.WITHDRAW) or not _HELD_ID.fullmatch(held_id):
        raise ValueError(f"no held-reply token for action {action!r} and id {held_id!r}")
    name = action + held_id
    return name + _held_mac(keys.keys[0], portfolio, name, member_id)


def read_held_token(parts: TokenParts) -> tuple[str, str] | None:
    """(action, held id) when ``parts`` is spelled like a held-reply token, else None (a copy's token)."""
    action, held_id = parts.copy_id[:1], parts.copy_id[1:]
    if action in (HeldAction.SEND, HeldAction.WITHDRAW) and _HELD_ID.fullmatch(held_id):
        return action, held_id
    return None


def verify_held_token(keys: TokenKeys, parts: TokenParts, *, portfolio: str, member_id: int) -> bool:
    """Whether ``parts`` is the held-reply token of its id for ``member_id`` in ``portfolio``."""
    valid = False
    for key in keys.keys:
        valid |= hmac.compare_digest(_held_mac(key, portfolio, parts.copy_id, member_id), parts.mac)
    return valid


def _held_mac(key: bytes, portfolio: str, name: str, member_id: int) -> str:
    if not portfolio:
        raise ValueError("a held-reply token needs the name of its portfolio")
    encoded = portfolio.encode("utf-8", "surrogatepass")
    message = (
        _HELD_PURPOSE
        + len(encoded).to_bytes(4, "big")
        + encoded
        + member_id.to_bytes(8, "big", signed=True)
        + name.encode("ascii")
    )
    digest = hmac.digest(key, message, "sha256")[:_MAC_BYTES]
    return base64.b32encode(digest).decode("ascii").lower()


def _mac(key: bytes, portfolio: str, copy_id: str) -> str:
    if not portfolio:
        # A caller that lost the portfolio would otherwise sign every copy for the same empty one.
        raise ValueError("a reply token needs the name of the copy's portfolio")
    name = portfolio.encode("utf-8", "surrogatepass")
    # The name goes in with its length, so that no (portfolio, copy id) pair reads like another.
    message = _PURPOSE + len(name).to_bytes(4, "big") + name + copy_id.encode("ascii")
    # hmac.digest: the same MAC in one call to OpenSSL, without an HMAC object per copy.
    digest = hmac.digest(key, message, "sha256")[:_MAC_BYTES]
    return base64.b32encode(digest).decode("ascii").lower()


def _canonical(token: str) -> str:
    parts = parse_token(token)
    if parts is None:
        raise ValueError(f"not a reply token: {token!r}")
    return parts.token


def _domain(reply_domain: str) -> str:
    # The domain goes into an address and a message id; anything that could end either early is refused.
    domain = reply_domain.lower()
    if not _DOMAIN.fullmatch(domain):
        raise ValueError(f"not a reply domain: {reply_domain!r}")
    return domain


def _reply_local_part(address: str, reply_domain: str) -> str | None:
    """The lower-case local part of ``address`` if its domain is ``reply_domain``, else None."""
    if not address.isascii():
        return None
    local, at, domain = address.rpartition("@")
    if not at or domain.lower() != reply_domain.lower():
        return None
    return local.lower()
