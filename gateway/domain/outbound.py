"""The mail relayed to a back office from a member's reply: its sender, recipients, threading, and bytes.

The member's mail goes out as the member wrote it (body, MIME structure and subject byte for byte), with
a header section the back office can rely on: From names the member who actually wrote (or, for legacy
ams, the Vorgang's original participant, ``gateway.domain.senders``), To is the back-office address that
sent the answered message, the other people the member addressed stay in To/Cc for the record,
In-Reply-To/References thread to the back office's own Message-IDs, and the gateway's headers say which
Vorgang and who really wrote. Headers that only made sense on the way in (signatures, our reply
addresses, tokens in References, Bcc) are dropped: the back office must never learn a reply token.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formataddr

from gateway.domain import gateway_headers as own
from gateway.domain.copies import header_values, render_copy
from gateway.domain.headers import bytes_to_text

# Removed from the member's header section before ours go on top. Signatures would no longer verify
# once From and the threading headers change; authentication results describe the hop into the
# gateway, not the mail the back office receives. Received lines are written again under ours without
# reply tokens (``render_relay``). Every X-Gateway-… header goes as well (``remove_prefixes``): only
# the gateway's own values reach the back office.
REPLACED_HEADERS = (
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    *own.DROPPED,
    "Message-ID",
    "In-Reply-To",
    "References",
    "Delivered-To",
    "DKIM-Signature",
    "ARC-Seal",
    "ARC-Message-Signature",
    "ARC-Authentication-Results",
    "Authentication-Results",
    "Received-SPF",
)


@dataclass(frozen=True, slots=True)
class RelayHeaders:
    """What the relayed mail says about itself; ``render_relay`` writes it over the member's mail."""

    from_address: str
    from_name: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    message_id: str
    in_reply_to: str | None
    references: tuple[str, ...]
    vorgang: str
    actual_sender: str
    loop_marker: str  # our node name: a relayed mail that comes back to us is recognised as a loop
    received: str | None = None  # our Received line's value (``gateway.domain.trace``), on top
    # Addresses of this domain (reply addresses, with their tokens) are taken out of the Received lines
    # the mail came with, which the member's servers wrote "for <reply+TOKEN@…>".
    reply_domain: str = ""


def recipients_kept(
    to: Sequence[str], cc: Sequence[str], *, backoffice: str, reply_domain: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """To and Cc for the relayed mail: the back office first in To, then whom the member added.

    Addresses of the reply domain (our reply addresses, in any form) never go out; each address
    appears once, in the first place it was named.
    """
    domain = "@" + reply_domain.lower()
    seen = {backoffice.lower()}
    kept_to = [backoffice]
    kept_cc: list[str] = []
    for field, kept in ((to, kept_to), (cc, kept_cc)):
        for address in field:
            lowered = address.lower()
            if lowered.endswith(domain) or lowered in seen:
                continue
            seen.add(lowered)
            kept.append(address)
    return tuple(kept_to), tuple(kept_cc)


def threading_ids(
    answered_message_id: str | None, answered_references: Sequence[str], *, reply_domain: str
) -> tuple[str | None, tuple[str, ...]]:
    """In-Reply-To and References threading to the answered message, without our own token ids."""
    suffix = "@" + reply_domain.lower() + ">"
    references = [r for r in answered_references if not r.lower().endswith(suffix)]
    if answered_message_id and answered_message_id not in references:
        references.append(answered_message_id)
    return answered_message_id, tuple(dict.fromkeys(references))


def render_relay(raw: bytes, headers: RelayHeaders) -> bytes:
    """The member's mail ``raw`` with the header section the back office receives (see the module)."""
    fields: list[tuple[str, str | bytes]] = []
    if headers.received is not None:
        fields.append(("Received", headers.received))
    # The trace the mail came with stays, in its order under ours (RFC 5321 4.4), so a loop through
    # the back office and back still adds up to max_received_hops; only reply tokens are taken out.
    fields += [
        ("Received", _without_reply_addresses(" ".join(bytes_to_text(value).split()), headers.reply_domain))
        for value in header_values(raw, "Received")
    ]
    fields += [
        ("From", address_field(headers.from_name, headers.from_address)),
        ("To", ", ".join(headers.to)),
    ]
    if headers.cc:
        fields.append(("Cc", ", ".join(headers.cc)))
    fields.append(("Message-ID", headers.message_id))
    if headers.in_reply_to:
        fields.append(("In-Reply-To", headers.in_reply_to))
    if headers.references:
        fields.append(("References", " ".join(headers.references)))
    fields += [
        (own.VORGANG, headers.vorgang),
        (own.ACTUAL_SENDER, headers.actual_sender),
        (own.LOOP, headers.loop_marker),
    ]
    return render_copy(
        raw, headers=fields, remove=[*REPLACED_HEADERS, "Received"], remove_prefixes=[own.PREFIX]
    )


def _without_reply_addresses(value: str, reply_domain: str) -> str:
    """``value`` with every address of ``reply_domain`` written as ``reply@<reply_domain>``."""
    if not reply_domain:
        return value
    return re.sub(
        r"[^\s<>;,\"']+@" + re.escape(reply_domain) + r"\b", f"reply@{reply_domain}", value, flags=re.I
    )


def address_field(display_name: str, address: str) -> bytes:
    """``"Name" <address>`` as header bytes, the name RFC 2047 encoded when it is not ASCII."""
    name = display_name.strip()
    if not name:
        return formataddr(("", address)).encode("ascii")
    return f"{_shown_name(name)} <{address}>".encode("ascii")


# Every copy of a message shows the sender's name with its own reply address: the name is quoted or
# encoded once for all of them.
_PLACEHOLDER = "a@b"


@functools.lru_cache(maxsize=1024)
def _shown_name(name: str) -> str:
    """``name`` as formataddr writes it before the address: quoted where it must be, RFC 2047 encoded
    when it is not ASCII. (formataddr encodes only the name, never the address itself, so the name's
    part does not depend on the address.)"""
    return formataddr((name, _PLACEHOLDER), charset="utf-8").removesuffix(f" <{_PLACEHOLDER}>")
