"""Which Vorgang a message belongs to, from its headers, its subject and the rules (DESIGN.md §6).

The order, first hit wins: an explicit Vorgang header; In-Reply-To/References naming a known message of
the portfolio; a ``[VG-…]`` tag in the subject; a rule-derived key; else a new Vorgang. This module is
pure: :func:`vorgang_hints` says what to look up, the caller looks it up within the message's portfolio
only, and :func:`choose_vorgang` decides on what was found and says which step decided.

A reference is ``VG-YYYY-NNNNNN``: the year in four digits and the number in six, zero-padded. A number
beyond 999999 widens (``VG-2026-1000000``) instead of wrapping, so such a number is written with more
than six digits and without a leading zero; every (year, number) therefore has exactly one spelling.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "MAX_THREAD_IDS",
    "REFERENCE_PATTERN",
    "Found",
    "VorgangHints",
    "choose_vorgang",
    "format_reference",
    "parse_reference",
    "subject_references",
    "tagged_subject",
    "vorgang_hints",
]

# [0-9], not \d: \d also matches other scripts' digits, which nobody types into a reference on purpose.
# The look-arounds keep a reference from being read out of a longer token such as "XVG-2026-0000012".
REFERENCE_PATTERN: re.Pattern[str] = re.compile(
    r"(?<![A-Za-z0-9])VG-([0-9]{4})-([0-9]{6}|[1-9][0-9]{6,})(?![0-9])", re.IGNORECASE
)
_SUBJECT_TAG = re.compile(r"\[(" + REFERENCE_PATTERN.pattern + r")\]", re.IGNORECASE)

# A reply deep in a long thread carries every ancestor in References; the newest ones decide, and a
# hostile message with thousands of ids must not turn into thousands of lookups.
MAX_THREAD_IDS = 100

_NOTHING_KNOWN: Mapping[str, int] = MappingProxyType({})


class Found(StrEnum):
    """Which step of DESIGN.md §6 found the Vorgang; recorded with the routing decision."""

    EXPLICIT = "explicit header"
    THREAD = "in-reply-to/references"
    SUBJECT = "subject tag"
    KEY = "rule key"
    NEW = "new vorgang"


@dataclass(frozen=True, slots=True)
class VorgangHints:
    """What a message says about its Vorgang, in the form the lookups need."""

    explicit: str | None
    message_ids: tuple[str, ...]
    subject_references: tuple[str, ...]
    key: str | None = None


def format_reference(year: int, number: int) -> str:
    """``VG-2026-000123`` for (2026, 123); numbers above 999999 get more digits."""
    if not 0 <= year <= 9999:
        raise ValueError(f"a reference year has four digits, not {year}")
    if number < 0:
        raise ValueError(f"a reference number is not negative, not {number}")
    return f"VG-{year:04d}-{number:06d}"


def parse_reference(text: str) -> str | None:
    """The canonical reference if ``text``, stripped, is exactly one reference (any case); else None."""
    match = REFERENCE_PATTERN.fullmatch(text.strip())
    return f"VG-{match.group(1)}-{match.group(2)}" if match else None


def subject_references(subject: str) -> tuple[str, ...]:
    """Every ``[VG-…]`` tag in ``subject`` (any case), canonical, in order of appearance, each once."""
    found = (f"VG-{m.group(2)}-{m.group(3)}" for m in _SUBJECT_TAG.finditer(subject))
    return tuple(dict.fromkeys(found))


def vorgang_hints(
    *,
    explicit_header: str | None,
    in_reply_to: Sequence[str],
    references: Sequence[str],
    subject: str,
    key: str | None = None,
) -> VorgangHints:
    """The lookups for one message: its explicit reference, thread ids, subject tags and rule key.

    Message ids come In-Reply-To first, then References newest (last) first, each once, at most
    :data:`MAX_THREAD_IDS` of them: the closer an ancestor, the likelier it is the right Vorgang.
    """
    explicit = parse_reference(explicit_header) if explicit_header is not None else None
    ids = dict.fromkeys((*in_reply_to, *reversed(references)))
    return VorgangHints(
        explicit=explicit,
        message_ids=tuple(ids)[:MAX_THREAD_IDS],
        subject_references=subject_references(subject),
        key=key,
    )


def choose_vorgang(
    hints: VorgangHints,
    *,
    known_references: Mapping[str, int],
    known_message_ids: Mapping[str, int],
    known_keys: Mapping[str, int] = _NOTHING_KNOWN,
) -> tuple[Found, int | None]:
    """The Vorgang id of the first step that hits, and which step; ``(Found.NEW, None)`` if none does.

    The mappings hold what the caller found of the hints within the message's portfolio (reference,
    message id or key to Vorgang id). A hint that names nothing known falls through to the next step:
    an explicit header naming another portfolio's Vorgang must not stop threading by References.
    """
    if hints.explicit is not None and hints.explicit in known_references:
        return Found.EXPLICIT, known_references[hints.explicit]
    for message_id in hints.message_ids:
        if message_id in known_message_ids:
            return Found.THREAD, known_message_ids[message_id]
    for reference in hints.subject_references:
        if reference in known_references:
            return Found.SUBJECT, known_references[reference]
    if hints.key is not None and hints.key in known_keys:
        return Found.KEY, known_keys[hints.key]
    return Found.NEW, None


def tagged_subject(subject: str, reference: str) -> str:
    """``[VG-…] subject``, unless the subject already carries that tag in any case."""
    canonical = parse_reference(reference)
    if canonical is None:
        raise ValueError(f"not a Vorgang reference: {reference!r}")
    if canonical in subject_references(subject):
        return subject
    return f"[{canonical}] {subject}" if subject.strip() else f"[{canonical}]"
