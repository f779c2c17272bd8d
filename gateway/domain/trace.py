"""The Received line the gateway adds to every copy and every relayed mail (RFC 5321 4.4), and its facts.

A message is received once, in one SMTP session; its copies are written later, one per member, and a
reply is relayed to the back office later still. So the facts of the session (the client's HELO name
and address, the protocol) are stored with the message as a :class:`Trace`, and each rendering adds the
line with the one recipient it goes to:

    Received: from mx.kunde-b.example ([192.0.2.7])
            by gateway.example with ESMTPS id G-…
            for <sb-b2@kunde-b.example>; Mon, 07 Dec 2026 05:00:00 +0000

``for`` names the mailbox or back office that copy goes to and nobody else, so a copy never tells
whom else (blind recipients included) the message went to. The protocol is written as RFC 3848 says:
ESMTP, with S when the session used TLS and A when the client authenticated.

Every Received line a message came with stays (a relay adds its own and removes none), so the hop
count at ingress (``max_received_hops``) still sees a loop grow by one line per pass through us.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import format_datetime

# What the From-domain may be (RFC 5321 4.1.2's Domain or address-literal); anything else a client
# says in HELO is not written: it is the sender's text, and a header is no place for it.
_DOMAIN = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*"
)
_LITERAL = re.compile(r"\[(?:IPv6:)?[0-9A-Fa-f:.]{2,45}\]")
_PROTOCOLS = frozenset({"SMTP", "ESMTP", "ESMTPS", "ESMTPA", "ESMTPSA"})
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def protocol(*, extended: bool, tls: bool, authenticated: bool) -> str:
    """The ``with`` keyword for a session (RFC 3848): SMTP after HELO, else ESMTP with S and A added."""
    if not extended:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")


@dataclass(frozen=True, slots=True)
class Arrival:
    """What the SMTP session said about the client: its HELO name, its address, the protocol."""

    helo: str
    address: str
    protocol: str


@dataclass(frozen=True, slots=True)
class Trace:
    """One message's arrival at this gateway: who handed it over, to which host, how, as what, when."""

    arrival: Arrival
    by: str
    id: str
    at: dt.datetime

    def received(self, for_address: str | None = None) -> str:
        """The value of the Received line for the copy or relayed mail that goes to ``for_address``."""
        return received(self, for_address)

    def to_json(self) -> dict[str, str]:
        return {
            "helo": self.arrival.helo,
            "address": self.arrival.address,
            "protocol": self.arrival.protocol,
            "by": self.by,
            "id": self.id,
            "at": self.at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object] | None) -> Trace | None:
        """The stored trace; None for a message stored without one (before traces were kept) or with
        one that cannot be read (a copy then goes out without our Received line rather than not at all)."""
        if not data:
            return None
        try:
            at = dt.datetime.fromisoformat(str(data["at"]))
            return cls(
                Arrival(
                    str(data.get("helo", "")), str(data.get("address", "")), str(data.get("protocol", ""))
                ),
                str(data["by"]),
                str(data["id"]),
                at if at.tzinfo else at.replace(tzinfo=dt.UTC),
            )
        except (KeyError, TypeError, ValueError):
            return None


def received(trace: Trace, for_address: str | None = None) -> str:
    """``from HELO ([address]) by HOST with PROTOCOL id ID for <address>; DATE``: every part the
    session did not give, or gave in a form a header must not carry, is left out."""
    head, date = _session_parts(trace)
    if for_address and "<" not in for_address and ">" not in for_address and " " not in for_address:
        return f"{head} for <{for_address}>; {date}"
    return f"{head}; {date}"


# A message's copies are rendered one after another, each with its own ``for``: the session's part of
# the line (an address parsed, a date formatted) is the same for all of them and is worked out once.
@functools.lru_cache(maxsize=1024)
def _session_parts(trace: Trace) -> tuple[str, str]:
    """The line up to ``for`` and the date after it."""
    parts: list[str] = []
    literal = _address_literal(trace.arrival.address)
    helo = trace.arrival.helo.strip()
    if _DOMAIN.fullmatch(helo) or _LITERAL.fullmatch(helo):
        parts.append(f"from {helo}" + (f" ({literal})" if literal else ""))
    elif literal:
        parts.append(f"from {literal}")
    parts.append(f"by {trace.by}")
    if trace.arrival.protocol in _PROTOCOLS:
        parts.append(f"with {trace.arrival.protocol}")
    if _ID.fullmatch(trace.id):
        parts.append(f"id {trace.id}")
    return " ".join(parts), format_datetime(trace.at.astimezone(dt.UTC))


def _address_literal(address: str) -> str | None:
    """``[192.0.2.7]`` or ``[IPv6:2001:db8::7]`` for a client's IP address; None for anything else."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return None
    return f"[{ip}]" if ip.version == 4 else f"[IPv6:{ip}]"
