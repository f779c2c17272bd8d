"""Who the back office is told wrote a reply: the actual sender, or for legacy ams the original participant.

DESIGN.md §5: ams before 4.8.0.64470 cannot tell the senders of one Vorgang apart; it files a reply from an
address it does not expect somewhere else than the Vorgang. For such a back office the relayed reply names
the Vorgang's original customer-side participant in From, and the member who actually wrote it travels in
``X-Gateway-Actual-Sender`` (and in the gateway's records). Every newer or unknown version gets the actual
sender in From.

An ams version is four dot-separated numbers, compared as numbers: 4.8.0.64469 < 4.8.0.64470 < 4.10.0.1,
and leading zeros mean nothing (4.8.0.064470 is 4.8.0.64470).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.domain import gateway_headers

__all__ = [
    "ACTUAL_SENDER_HEADER",
    "FIRST_CURRENT_AMS",
    "AmsVersion",
    "InvalidVersion",
    "RelaySender",
    "is_legacy_ams",
    "parse_ams_version",
    "relay_sender",
]

AmsVersion = tuple[int, int, int, int]

FIRST_CURRENT_AMS: AmsVersion = (4, 8, 0, 64470)
"""The first ams version that tells senders apart; every older one is legacy."""

ACTUAL_SENDER_HEADER = gateway_headers.ACTUAL_SENDER
"""The header that names the member who actually wrote a relayed reply."""

# [0-9], not \d: \d also takes digits of other scripts, which int() would then quietly read as numbers.
_VERSION = re.compile(r"([0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]+)")
_MAX_DIGITS = 30


class InvalidVersion(ValueError):
    """The text is not an ams version of four dot-separated numbers; the message quotes it."""


@dataclass(frozen=True, slots=True)
class RelaySender:
    """What a relayed reply says about its sender.

    ``from_address`` goes into From; ``actual_sender`` (always the member who wrote the reply) into
    ``X-Gateway-Actual-Sender``; ``legacy`` says whether the back office runs an ams older than
    :data:`FIRST_CURRENT_AMS`, whether or not a participant could stand in for the sender.
    """

    from_address: str
    actual_sender: str
    legacy: bool


def parse_ams_version(text: str) -> AmsVersion:
    """The four numbers of ``text`` such as ``4.8.0.64470``; :class:`InvalidVersion` for anything else.

    Strict: no surrounding space, no sign, no fifth part, no empty part, ASCII digits only.
    """
    match = _VERSION.fullmatch(text)
    if match is None:
        raise InvalidVersion(
            f"{_show(text)} is not an ams version: it must be four numbers separated by dots, "
            "like 4.8.0.64470"
        )
    digits = [part.lstrip("0") or "0" for part in match.groups()]
    # No ams version has numbers this long; the limit keeps int() (which refuses more than 4300 digits
    # by default) from raising its own ValueError, and the comparison cheap.
    if any(len(part) > _MAX_DIGITS for part in digits):
        raise InvalidVersion(
            f"{_show(text)} is not an ams version: a part has more than {_MAX_DIGITS} digits"
        )
    numbers = [int(part) for part in digits]
    return numbers[0], numbers[1], numbers[2], numbers[3]


def is_legacy_ams(version_text: str) -> bool:
    """Whether ams ``version_text`` is older than :data:`FIRST_CURRENT_AMS`.

    An empty version means the version is not known, and counts as current: naming someone else as
    sender is the exception, made only where a back office is known to need it. Any other text that is
    not a version raises :class:`InvalidVersion`.
    """
    if version_text == "":
        return False
    return parse_ams_version(version_text) < FIRST_CURRENT_AMS


def relay_sender(*, actual_sender: str, original_participant: str | None, ams_version: str) -> RelaySender:
    """The sender of a reply relayed to a back office running ams ``ams_version``.

    ``original_participant`` is the Vorgang's original customer-side participant, None (or empty) if it
    has none; a legacy back office then gets the actual sender in From after all, because a reply must
    name some sender and the actual one is the only one known. Raises :class:`InvalidVersion` like
    :func:`is_legacy_ams`.
    """
    legacy = is_legacy_ams(ams_version)
    stand_in = original_participant if legacy and original_participant else None
    return RelaySender(from_address=stand_in or actual_sender, actual_sender=actual_sender, legacy=legacy)


def _show(text: str) -> str:
    # Enough of the text to recognise it in a log line, never a whole pasted file.
    return repr(text if len(text) <= 60 else text[:60] + "…")
