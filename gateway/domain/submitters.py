"""What a mail may claim before it is stored: a back office's own addresses, and values that fit the records.

A back office speaks only for itself (DESIGN.md §8): with its login it may send from the addresses the
directory gives it and from no other, in the envelope (MAIL FROM) and in From:/Sender:. The null sender
(``MAIL FROM:<>``) is allowed: it names nobody (RFC 5321 §4.5.5 keeps it for notifications, such as a back
office's own auto-replies), and the From: header, which members see, is checked all the same.

Values a client sends are checked where they arrive against the lengths the records hold, so that one
oversized value is refused with a clear permanent answer instead of failing a transaction that stores
other messages too (issue 12):

- an envelope address (MAIL FROM, RCPT TO) is at most 256 octets with its angle brackets
  (RFC 5321 §4.5.3.1.3); the records hold 320;
- a Message-ID is at most 998 characters (RFC 5322 §2.1.1's line limit); it is indexed, for threading and
  for recognising re-sends, so it is refused when longer rather than stored cut off or hashed;
- In-Reply-To is kept in the record as far as whole ids fit its 998 characters (``ids_that_fit``); the
  stored message keeps every byte and threading reads the ids from the parsed message, not the record;
- a From address that only describes a mail (bounces, loops) is recorded when it fits 320 characters
  (``address_that_fits``); the message keeps it either way.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

MAX_PATH = 256  # octets of an envelope path with its angle brackets, RFC 5321 §4.5.3.1.3
MAX_ADDRESS = 320  # characters of an address column (64 + "@" + 255)
MAX_MESSAGE_ID = 998  # characters of a Message-ID column (RFC 5322 §2.1.1's line limit)


def not_utf8(address: str) -> bool:
    """True when ``address`` holds bytes that were not UTF-8 (the listener keeps them as surrogates):
    no database can store such text, so the address is refused where it arrives."""
    return any("\udc80" <= c <= "\udcff" for c in address)


def path_too_long(address: str) -> bool:
    """True when ``address`` (MAIL FROM or RCPT TO, without brackets) exceeds RFC 5321's path limit."""
    return len(address.encode("utf-8", "surrogateescape")) + 2 > MAX_PATH


def message_id_too_long(message_id: str | None) -> bool:
    return message_id is not None and len(message_id) > MAX_MESSAGE_ID


def ids_that_fit(ids: Sequence[str], limit: int = MAX_MESSAGE_ID) -> str | None:
    """The leading whole ids of ``ids`` joined by spaces, as many as fit in ``limit`` characters."""
    kept: list[str] = []
    length = -1
    for message_id in ids:
        length += len(message_id) + 1
        if length > limit:
            break
        kept.append(message_id)
    return " ".join(kept) or None


def address_that_fits(address: str | None) -> str | None:
    return address if address is not None and len(address) <= MAX_ADDRESS else None


def foreign_senders(own: Collection[str], claimed: Sequence[str]) -> list[str]:
    """The addresses of ``claimed`` that are not among ``own`` (the back office's directory addresses).

    Both sides are compared case-folded, as the directory stores addresses (``domain.addresses``).
    """
    allowed = {a.lower() for a in own}
    return [a for a in dict.fromkeys(claimed) if a.lower() not in allowed]


def allowed_text(own: Collection[str]) -> str:
    """How a refusal names the addresses a back office may send from."""
    if not own:
        return "this back office has no sender address in the directory"
    return "it may send only from " + ", ".join(sorted(own))
