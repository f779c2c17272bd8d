"""The bytes of one member's copy of a stored message: our headers on top, everything else as it was.

A copy is the stored raw message with a few changes in its header section and nowhere else: the
gateway's headers added at the top, headers of given names removed (so that a back office cannot smuggle
our own ``X-Gateway-…`` headers into a copy), and the Vorgang tag put in front of the subject. Every other
byte stays as it came, 8-bit, NUL and broken MIME included; the body is never decoded, let alone
re-encoded, so a signature over it stays valid and nothing a parser does not understand is lost.

The header section is split into lines and fields the way Python's email parser does it (a line ends at
CRLF, CR or LF; a field line is a name of printable ASCII and a colon; a line starting with a space or a
tab continues the field before it). Readers disagree on where the header section ends and on what a
field is, and a header any one of them reads must not survive a removal, so removal takes the widest
view of them all:

- the obsolete ``Name : value`` form (RFC 5322 4.5) is a field: Python's parser takes it for the start
  of the body (or, as ``From : x``, for an mbox envelope line) but Dovecot and many mail readers take it
  for a header;
- the section does not end at a line that is no header (Python's parser starts the body there, Dovecot
  reads on), nor at an empty line that only Python sees (after a lone CR, which ends no line for
  Dovecot): it ends at the first empty line every reader sees, or at the end of the message.

A field there whose name is removed goes, wherever it stands; every other line stays as it came.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from email.header import Header
from typing import Literal

from gateway.domain.headers import decode_header_value

__all__ = ["CopyTemplate", "header_values", "render_copy"]

_LINE_END = re.compile(rb"\r\n|\r|\n")
# Python's header line (email.feedparser.headerRE without its "From " and continuation cases).
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]*):")
_OBSOLETE_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]+:")
_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
# Where reading goes on after lines that are no field: the start of a line that may be a field (either
# form) or is empty. Only Dovecot still reads headers there, and its lines start after LF only.
_NEXT_CANDIDATE = re.compile(rb"\n(?=[\x21-\x39\x3b-\x7e]++[ \t]*+:|\r?\n)")

# What may never reach a header line from a value: C0 and C1 controls (CR, LF and NUL among them) and
# the Unicode line and paragraph separators.
_CONTROLS: dict[int, None] = dict.fromkeys((*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029))
_SURROGATES = re.compile("[\ud800-\udfff]")

# RFC 5322 2.1.1: lines SHOULD stay within 78 characters; values longer than that are folded.
_LINE_LENGTH = 78


_Kind = Literal["field", "envelope", "orphan", "nameless", "junk"]


@dataclass(slots=True)
class _Item:
    """One field of the header section with its continuation lines, or a line that is no field.

    ``kind`` is ``field``; ``envelope`` (an mbox ``From `` line); ``orphan`` (continuation lines with
    nothing to continue); ``nameless`` (a line starting with a colon, which Python's parser skips); or
    ``junk`` (lines that are no field, where Python's parser has started the body and others read on).
    """

    kind: _Kind
    name: str
    start: int
    first_line_end: int  # where the first line's text ends, before its line end
    end: int  # after the last line's line end
    eol: bytes  # the first line's line end
    visible: bool  # Python's parser reads it as a header (false after an obsolete-form field)


def render_copy(
    raw: bytes,
    *,
    headers: Sequence[tuple[str, str | bytes]],
    remove: Collection[str] = (),
    remove_prefixes: Collection[str] = (),
    subject_prefix: str | None = None,
) -> bytes:
    """The copy of ``raw`` with ``headers`` added on top, ``remove`` removed and the subject prefixed.

    Header values lose every control character (so no value can start a header of its own) and are
    RFC 2047 encoded when not ASCII, folded when long. ``remove`` names headers case-insensitively,
    ``remove_prefixes`` the beginnings of names (``X-Gateway-``); each goes with its continuation lines,
    in every form and place any reader takes for a header (see the module). ``subject_prefix`` goes in
    front of the first Subject's raw value, which stays as it was, encoded words and folding included,
    unless the decoded subject already contains the prefix in any case; a message without a Subject
    gets ``Subject: <prefix>``. Added lines end in CRLF if the message's first header line does, else
    in LF.

    A value given as ``bytes`` is taken as already encoded (an address field with an RFC 2047 display
    name, say): it is only folded, and must be printable ASCII.

    Raises ``ValueError`` for a header name that cannot be one (empty, spaces, a colon, non-ASCII), or a
    pre-encoded value that is not printable ASCII.
    """
    return CopyTemplate.of(
        raw, remove=remove, remove_prefixes=remove_prefixes, subject_prefix=subject_prefix
    ).render(headers)


@dataclass(frozen=True, slots=True)
class CopyTemplate:
    """What every copy of one message shares: the message read, the removals made and the subject
    prefixed once (``of``); each copy then adds only its own headers on top (``render``). The copies
    of one message differ only in those, so the fan-out reads a message once for all its copies."""

    head: bytes  # what stays above our headers (an mbox "From " line, orphan continuation lines)
    pieces: tuple[bytes, ...]  # the kept header items, then the body
    eol: bytes  # the line end of added lines
    subject: bytes | None  # a Subject line to add (the message had none), else None
    rest: bytes  # the pieces joined below added lines

    @classmethod
    def of(
        cls,
        raw: bytes,
        *,
        remove: Collection[str] = (),
        remove_prefixes: Collection[str] = (),
        subject_prefix: str | None = None,
    ) -> CopyTemplate:
        """``raw`` read for ``render_copy``'s ``remove``, ``remove_prefixes`` and ``subject_prefix``."""
        raw = bytes(raw)
        removing = {name.strip().lower() for name in remove}
        prefixes = tuple(p.strip().lower() for p in remove_prefixes if p.strip())
        prefix = _clean(subject_prefix) if subject_prefix is not None else ""

        items, section_end = _header_items(raw)

        # Our headers go above the first field: after an mbox "From " line (which Python's parser takes
        # as the envelope only on the very first line) and after continuation lines that continue
        # nothing, which would otherwise become part of our last header's value.
        skip = 0
        while skip < len(items) and (
            items[skip].kind == "orphan" or (items[skip].kind == "envelope" and items[skip].start == 0)
        ):
            skip += 1
        insert_at = items[skip - 1].end if skip else 0

        fields = [item for item in items if item.kind == "field"]
        eol = b"\r\n" if fields and fields[0].eol == b"\r\n" else b"\n"
        kept = [
            item
            for item in items[skip:]
            if not (item.kind == "field" and (item.name in removing or item.name.startswith(prefixes)))
        ]
        subject = next((i for i in kept if i.kind == "field" and i.visible and i.name == "subject"), None)

        subject_line: bytes | None = None
        rewritten: bytes | None = None
        if prefix and subject is None:
            subject_line = _header_line("Subject", prefix, eol)
        elif prefix and subject is not None:
            rewritten = _prefixed_subject(raw, subject, prefix)
        pieces = (
            *(
                rewritten if item is subject and rewritten is not None else raw[item.start : item.end]
                for item in kept
            ),
            raw[section_end:],
        )
        # Below added lines, which end in a line end, the pieces join as they do after any line.
        rest = bytearray()
        for piece in pieces:
            _join(rest, piece)
        return cls(raw[:insert_at], pieces, eol, subject_line, bytes(rest))

    def render(self, headers: Sequence[tuple[str, str | bytes]]) -> bytes:
        """One copy: ``headers`` added on top (see ``render_copy``)."""
        for name, _ in headers:
            if not _NAME.fullmatch(name):
                raise ValueError(f"not a header name: {name!r}")
        added = [_header_line(name, value, self.eol) for name, value in headers]
        if self.subject is not None:
            added.append(self.subject)
        out = bytearray(self.head)
        if not added:
            for piece in self.pieces:
                _join(out, piece)
            return bytes(out)
        if out.endswith(b"\r"):
            out += b"\n"  # a lone CR ends no line for Dovecot: our first header would join the skipped one
        elif out and not out.endswith(b"\n"):
            out += self.eol  # the skipped line was the last one and had no line end of its own
        out += b"".join(added)
        out += self.rest
        return bytes(out)


def header_values(raw: bytes, name: str) -> list[bytes]:
    """The raw values of every ``name`` field any reader finds in ``raw``'s header section, in order,
    unfolded (line ends removed), without the space after the colon."""
    wanted = name.strip().lower()
    items, _ = _header_items(bytes(raw))
    values: list[bytes] = []
    for item in items:
        if item.kind == "field" and item.name == wanted:
            value = raw[raw.index(b":", item.start, item.first_line_end) + 1 : item.end]
            values.append(_LINE_END.sub(b"", value).strip(b" \t"))
    return values


def _join(out: bytearray, piece: bytes) -> None:
    if out.endswith(b"\r") and piece.startswith(b"\n"):
        # A removed field stood between a line ending in a lone CR and an empty line; joined, they
        # would read as one CRLF and the empty line would be gone, moving the body into the header.
        out += b"\n"
    out += piece


def _header_items(raw: bytes) -> tuple[list[_Item], int]:
    """The header section's items in order, and the offset where the section ends for every reader."""
    items: list[_Item] = []
    position = 0
    visible = True  # still in the header section as Python's parser reads it
    while position < len(raw):
        line_end = _LINE_END.search(raw, position)
        text_end, end = (line_end.start(), line_end.end()) if line_end else (len(raw), len(raw))
        eol = raw[text_end:end]
        if text_end == position:
            if eol != b"\r" and (position == 0 or raw[position - 1] == 0x0A):
                break  # the blank line between header and body, for every reader
            # Empty for Python (after or as a lone CR), but no line of its own for Dovecot, which
            # ends lines at LF only and reads on: the body has begun for Python only.
            visible = False
            position = _append_junk(raw, items, position, end, eol)
            continue
        first = raw[position]
        if first in b" \t":
            if items:
                items[-1].end = end
            else:
                items.append(_Item("orphan", "", position, text_end, end, eol, visible))
            position = end
            continue
        kind: _Kind
        name = ""
        if match := _FIELD.match(raw, position, text_end):
            kind = "field" if match.group(1) else "nameless"
            name = match.group(1).decode("ascii").lower()
        elif match := _OBSOLETE_FIELD.match(raw, position, text_end):
            # ``From : x`` is an envelope line to Python, which reads on; any other ends its header.
            visible = visible and raw.startswith(b"From ", position)
            kind, name = "field", match.group(1).decode("ascii").lower()
            items.append(_Item(kind, name, position, text_end, end, eol, False))
            position = end
            continue
        elif raw.startswith(b"From ", position):
            kind = "envelope"
        else:
            # No header: Python's body starts here without a blank line, but Dovecot reads on.
            visible = False
            position = _append_junk(raw, items, position, end, eol)
            continue
        items.append(_Item(kind, name, position, text_end, end, eol, visible))
        position = end
    return items, position


def _append_junk(raw: bytes, items: list[_Item], start: int, end: int, eol: bytes) -> int:
    """A line that is no field, kept as it is, with the lines after it up to the next one that may
    be a field or an empty line (a body without a blank line before it is passed over at C speed);
    runs of them are one item. Returns where the next line to read starts."""
    following = _NEXT_CANDIDATE.search(raw, max(end - len(eol), start))
    stop = following.end() if following is not None else len(raw)
    stop = max(stop, end)
    if items and items[-1].kind == "junk" and items[-1].end == start:
        items[-1].end = stop
    else:
        items.append(_Item("junk", "", start, end - len(eol), stop, eol, False))
    return stop


def _prefixed_subject(raw: bytes, subject: _Item, prefix: str) -> bytes | None:
    """The Subject field's bytes with ``prefix`` in front of its value; None if it already has it."""
    colon = raw.index(b":", subject.start, subject.first_line_end)
    if prefix.casefold() in decode_header_value(raw[colon + 1 : subject.end]).casefold():
        return None
    rest = raw[colon + 1 : subject.first_line_end]
    text = rest.lstrip(b" \t")
    space = rest[: len(rest) - len(text)] or b" "
    line = raw[subject.start : colon + 1] + space + _encoded(prefix) + (b" " + text if text else b"")
    return line + raw[subject.first_line_end : subject.end]


def _header_line(name: str, value: str | bytes, eol: bytes) -> bytes:
    """``Name: value`` and its line end, folded if long, RFC 2047 encoded if not plain ASCII."""
    if isinstance(value, bytes):
        if not _PRINTABLE.fullmatch(value):
            raise ValueError(f"a pre-encoded {name} value must be printable ASCII: {value!r}")
        return eol.join(_fold(f"{name}: ".encode("ascii") + value.strip())) + eol
    text = _clean(value)
    if text.isascii() and "=?" not in text:
        line = f"{name}: {text}".encode("ascii")
        # Most of our values (ids, tokens, addresses, the trace) fit on one line as they are.
        if len(line) <= _LINE_LENGTH and not line.endswith(b" "):
            return line + eol
        return eol.join(_fold(line)) + eol
    # Header folds between encoded words and may open with an empty line when the name is long;
    # empty lines are dropped, because a line of only whitespace ends the header section for some
    # readers. What is left is ASCII: encoded words and the spaces between them.
    pieces = [
        piece.strip() for piece in Header(text, "utf-8", header_name=name).encode(linesep="\n").split("\n")
    ]
    words = [piece.encode("ascii") for piece in pieces if piece]
    return eol.join([f"{name}: ".encode("ascii") + words[0], *(b" " + word for word in words[1:])]) + eol


def _fold(line: bytes) -> list[bytes]:
    """An ASCII header line folded before spaces so that lines stay short where the words allow.

    A fold goes before the last space of a run only, so every continuation line has text on it.
    """
    tokens = re.findall(rb" *[^ ]+", line)
    if not tokens:
        return [line]
    lines = [tokens[0]]
    for token in tokens[1:]:
        if len(lines[-1]) + len(token) > _LINE_LENGTH:
            spaces = len(token) - len(token.lstrip(b" "))
            lines[-1] += token[: spaces - 1]
            lines.append(token[spaces - 1 :])
        else:
            lines[-1] += token
    return lines


def _encoded(prefix: str) -> bytes:
    # A prefix is normally a plain "[VG-…]" tag; anything else is encoded on one line, because it goes
    # into the middle of an existing subject line that we do not re-fold.
    if prefix.isascii() and "=?" not in prefix:
        return prefix.encode("ascii")
    return Header(prefix, "utf-8").encode(maxlinelen=0).encode("ascii")


def _clean(value: str) -> str:
    if value.isascii() and value.isprintable():
        # No control character and no surrogate to take out: the translation would change nothing.
        return value.strip()
    return _SURROGATES.sub("\ufffd", value).translate(_CONTROLS).strip()
