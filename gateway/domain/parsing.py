"""Raw message bytes to the header facts ingress and routing need, without ever raising.

Only the header section is read: the body is never parsed here, so a 3 MB message with 3,000 MIME parts
costs no more than its headers. The header section itself is cut at :data:`MAX_HEADER_BYTES`, which keeps
time and memory bounded even for a message that never ends its headers.

Python's parser splits the header section into fields (``compat32``, because it never interprets a
value); every value is then decoded here, one header at a time, so that one broken header costs a defect
note and not the message: 8-bit bytes are read as UTF-8 or else as windows-1252, RFC 2047 encoded words
in any charset Python knows are decoded with undecodable bytes replaced, and control characters never
reach a caller, because a subject ends up in mailbox listings, logs and relayed mail.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email import errors
from email.parser import BytesParser
from email.policy import Compat32
from email.utils import getaddresses
from typing import TypeVar

from gateway.domain.headers import (
    CONTROLS_REMOVED,
    CONTROLS_TO_SPACE,
    bytes_to_text,
    decode_header_value,
    decode_words,
    unfold,
)

__all__ = [
    "MAX_HEADER_BYTES",
    "ParsedMessage",
    "decode_header_value",
    "extract_msg_ids",
    "header_fields",
    "parse_message",
]

# Far above any honest header section (Received chains and DKIM signatures stay well below 100 kB), far
# below what would make parsing slow; ingress refuses oversized headers with a clear answer before this.
MAX_HEADER_BYTES = 1024 * 1024

# A hostile message can be all defects; the first ones say what is wrong, the rest only cost memory.
_MAX_DEFECTS = 50

_T = TypeVar("_T")
_Addresses = tuple[tuple[str, str], ...]
_NO_IDS: tuple[str, ...] = ()
_NO_ADDRESSES: _Addresses = ()


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """What the gateway needs to know about one message, read from its header section.

    Addresses are bare addr-specs in lower case; message ids keep their angle brackets; every text is
    decoded and free of control characters. ``defects`` says, in short sentences, what was odd.
    """

    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    subject: str
    from_addresses: tuple[str, ...]
    from_display_name: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    vorgang_header: str | None
    received_count: int
    auto_submitted: str | None
    defects: tuple[str, ...]


class _RawValues(Compat32):
    """compat32, but values come back exactly as they were parsed, so that decoding them stays ours.

    Plain compat32 wraps a value with 8-bit bytes in a ``Header`` object that replaces those bytes;
    we want them, to read them as UTF-8 or windows-1252.
    """

    def header_fetch_parse(self, name: str, value: str) -> str:
        return value


_POLICY = _RawValues()

# A blank line: an empty first line, or a line end followed by another. "\r" followed by "\n" is one
# line end, never two, exactly as Python's parser splits lines.
_BLANK_LINE = re.compile(rb"(?:\A|\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")

_ADDR_SPEC = re.compile(r"[^\s@<>,;\ufffd]+@[^\s@<>,;\ufffd]+")

_PARSER_DEFECTS: dict[type[errors.MessageDefect], str] = {
    errors.MissingHeaderBodySeparatorDefect: "no blank line between header and body",
    errors.FirstHeaderLineIsContinuationDefect: "the header section starts with a continuation line",
    errors.MisplacedEnvelopeHeaderDefect: "a 'From ' envelope line inside the header section",
    errors.InvalidHeaderDefect: "a header line without a name",
}


class _Defects:
    """Collects defect notes, keeping the first :data:`_MAX_DEFECTS` and counting the rest."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.dropped = 0

    def add(self, note: str) -> None:
        if len(self.notes) < _MAX_DEFECTS:
            self.notes.append(note)
        else:
            self.dropped += 1

    def result(self) -> tuple[str, ...]:
        if self.dropped:
            return (*self.notes, f"{self.dropped} more defects not listed")
        return tuple(self.notes)


def parse_message(raw: bytes, *, vorgang_header: str = "X-Gateway-Vorgang") -> ParsedMessage:
    """The facts of ``raw``; never raises, whatever the bytes are.

    ``vorgang_header`` names the header that carries an explicit Vorgang reference (case-insensitive).
    """
    defects = _Defects()
    try:
        return _parse(bytes(raw), vorgang_header, defects)
    except Exception as exc:  # the promise is "never raises"; every header is guarded on its own too
        defects.add(f"the header section could not be read ({type(exc).__name__})")
        return ParsedMessage(None, (), (), "", (), "", (), (), None, 0, None, defects.result())


def header_fields(raw: bytes) -> tuple[tuple[str, str], ...]:
    """Every header field of ``raw`` as (name, decoded value), in the message's order; never raises.

    For routing rules, which may test any header: values are decoded as the subject is (RFC 2047 words,
    8-bit bytes as UTF-8 or windows-1252), unfolded, without control characters. A field that cannot
    be decoded is left out rather than failing the others.
    """
    try:
        head = _header_section(bytes(raw), _Defects())
        message = BytesParser(policy=_POLICY).parsebytes(head, headersonly=True)
        items = message.items()
    except Exception:  # the promise is "never raises"
        return ()
    fields: list[tuple[str, str]] = []
    for name, value in items:
        try:
            fields.append((name.strip(), unfold(_decode_value(value)).translate(CONTROLS_TO_SPACE).strip()))
        except Exception:
            continue
    return tuple(fields)


def extract_msg_ids(value: str) -> tuple[str, ...]:
    """The message ids in a Message-ID, In-Reply-To or References value, in order, as ``<local@domain>``.

    Sloppy writing is tolerated: ids run together or separated by commas, whitespace or control
    characters inside the brackets (left by bad folding), and a single bare id with no brackets at all.
    """
    ids: list[str] = []
    for match in re.finditer(r"<([^<>]*)>", value):
        inner = "".join(match.group(1).translate(CONTROLS_REMOVED).split())
        if inner:
            ids.append(f"<{inner}>")
    if ids:
        return tuple(ids)
    bare = value.translate(CONTROLS_TO_SPACE).strip().strip("<>").strip()
    if "@" in bare and not any(ch.isspace() or ch in "<>" for ch in bare):
        return (f"<{bare}>",)
    return ()


# --- the parse ---------------------------------------------------------------------------------------


def _parse(raw: bytes, vorgang_header: str, defects: _Defects) -> ParsedMessage:
    head = _header_section(raw, defects)
    message = BytesParser(policy=_POLICY).parsebytes(head, headersonly=True)
    for defect in message.defects:
        defects.add(_PARSER_DEFECTS.get(type(defect), type(defect).__name__))

    fields: dict[str, list[str]] = {}
    for name, value in message.items():
        fields.setdefault(name.strip().lower(), []).append(value)
    for name, values in fields.items():
        if any(not value.isascii() for value in values):
            defects.add(f"8-bit bytes in {name.title()}")

    def first(name: str) -> str | None:
        values = fields.get(name.lower())
        if not values:
            return None
        if len(values) > 1:
            defects.add(f"{len(values)} {name} headers; the first one was used")
        return values[0]

    def guarded(name: str, compute: Callable[[], _T], fallback: _T) -> _T:
        try:
            return compute()
        except Exception as exc:  # one broken header must not cost the others
            defects.add(f"{name} could not be read ({type(exc).__name__})")
            return fallback

    def msg_ids(name: str, values: Sequence[str]) -> tuple[str, ...]:
        found: list[str] = []
        for value in values:
            text = _header_text(value)
            ids = extract_msg_ids(text)
            if not ids and text.strip():
                defects.add(f"{name} holds no message id: {_excerpt(text)}")
            found.extend(ids)
        return tuple(found)

    message_id_value = first("Message-ID")
    message_ids = guarded(
        "Message-ID", lambda: msg_ids("Message-ID", [message_id_value] if message_id_value else []), _NO_IDS
    )
    in_reply_to_value = first("In-Reply-To")
    in_reply_to = guarded(
        "In-Reply-To",
        lambda: msg_ids("In-Reply-To", [in_reply_to_value] if in_reply_to_value else []),
        _NO_IDS,
    )
    references = guarded("References", lambda: msg_ids("References", fields.get("references", [])), _NO_IDS)

    subject_value = first("Subject")
    subject = guarded("Subject", lambda: _decode_value(subject_value), "")

    from_value = first("From")
    senders = guarded(
        "From", lambda: _addresses("From", [from_value] if from_value else [], defects), _NO_ADDRESSES
    )
    to = guarded("To", lambda: _addresses("To", fields.get("to", []), defects), _NO_ADDRESSES)
    cc = guarded("Cc", lambda: _addresses("Cc", fields.get("cc", []), defects), _NO_ADDRESSES)

    explicit_value = first(vorgang_header.strip())
    explicit = guarded(vorgang_header, lambda: _plain_value(explicit_value), None)
    auto_value = first("Auto-Submitted")
    auto_submitted = guarded("Auto-Submitted", lambda: _plain_value(auto_value), None)

    return ParsedMessage(
        message_id=message_ids[0] if message_ids else None,
        in_reply_to=in_reply_to,
        references=references,
        subject=subject,
        from_addresses=_unique(address for _, address in senders),
        from_display_name=senders[0][0] if senders else "",
        to=_unique(address for _, address in to),
        cc=_unique(address for _, address in cc),
        vorgang_header=explicit,
        received_count=len(fields.get("received", [])),
        auto_submitted=auto_submitted.lower() if auto_submitted is not None else None,
        defects=defects.result(),
    )


def _header_section(raw: bytes, defects: _Defects) -> bytes:
    # Up to and including the first blank line; the body never reaches the parser. A message without
    # a blank line is all header section to this search; Python's parser then finds where the body
    # really starts, within the cut.
    blank = _BLANK_LINE.search(raw, 0, MAX_HEADER_BYTES)
    if blank is not None:
        return raw[: blank.end()]
    if len(raw) > MAX_HEADER_BYTES:
        defects.add(f"the header section is longer than {MAX_HEADER_BYTES} bytes; the rest was not read")
    return raw[:MAX_HEADER_BYTES]


def _addresses(name: str, values: Sequence[str], defects: _Defects) -> _Addresses:
    """(display name, lower-case addr-spec) for every readable address; the others become defects."""
    found: list[tuple[str, str]] = []
    for value in values:
        # Non-ASCII addresses are real only as UTF-8 (SMTPUTF8); in legacy 8-bit they are garbage.
        international = value.isascii() or _is_utf8(_to_bytes(value))
        text = unfold(_header_text(value)).translate(CONTROLS_TO_SPACE)
        for display_name, address in getaddresses([text]):
            address = address.strip()
            if not address:
                # getaddresses says ('', '') for what it cannot read and for an empty group such as
                # "undisclosed-recipients:;"; only the first is worth a note.
                if display_name.strip():
                    defects.add(f"{name}: no address in {_excerpt(display_name)}")
                continue
            if not _ADDR_SPEC.fullmatch(address) or not (international or address.isascii()):
                defects.add(f"{name}: not an address: {_excerpt(address)}")
                continue
            decoded_name = decode_words(display_name).translate(CONTROLS_REMOVED).strip()
            found.append((decoded_name, address.lower()))
    return tuple(found)


def _decode_value(value: str | None) -> str:
    if value is None:
        return ""
    return decode_header_value(_to_bytes(value))


def _plain_value(value: str | None) -> str | None:
    # A token-like header (a reference, "auto-replied"): no encoded words, only the text, stripped.
    if value is None:
        return None
    return unfold(_header_text(value)).translate(CONTROLS_TO_SPACE).strip()


def _header_text(value: str) -> str:
    """A value as the parser hands it over (8-bit bytes as surrogates) to real text."""
    return bytes_to_text(_to_bytes(value)) if not value.isascii() else value


def _to_bytes(value: str) -> bytes:
    try:
        return value.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        # Cannot happen for what BytesParser produces; a str handed in some other way still must not fail.
        return value.encode("utf-8", "surrogateescape")


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _excerpt(text: str, limit: int = 60) -> str:
    text = text.translate(CONTROLS_TO_SPACE).strip()
    return repr(text if len(text) <= limit else text[:limit] + "…")
