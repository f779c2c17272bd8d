"""Header values as people read them: unfolded, RFC 2047 decoded in any charset, one line of text.

Pure text handling shared by parsing (what routing sees) and copy rendering (whether a subject already
carries its tag), so both read a subject exactly alike. Never raises on any input.
"""

from __future__ import annotations

import binascii
import codecs
import re

# An RFC 2047 encoded word, read liberally as every mail client does: also inside a word, also with
# spaces in the encoded text. The text excludes "?", so a search never scans past the next word.
_ENCODED_WORD = re.compile(r"=\?([^?\s*]{1,64})(?:\*[^?\s]{0,64})?\?([bBqQ])\?([\x20-\x3e\x40-\x7e]*)\?=")
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")

# C0 and C1 control characters and the Unicode line and paragraph separators.
_CONTROLS = (*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
CONTROLS_TO_SPACE = dict.fromkeys(_CONTROLS, " ")
CONTROLS_REMOVED: dict[int, None] = dict.fromkeys(_CONTROLS)

# Mail that says latin-1 (or ASCII) is nearly always windows-1252, which only adds printable characters
# (€, „, “, –) where latin-1 has C1 controls; browsers read these labels the same way.
_AS_WINDOWS_1252 = frozenset({"iso-8859-1", "iso8859-1", "iso_8859-1", "latin1", "latin-1", "l1", "us-ascii"})
_AS_8BIT = frozenset({"unknown-8bit", "x-unknown", "unknown", "8bit", "x-user-defined"})
# Text codecs that interpret their input instead of merely decoding it.
_NOT_CHARSETS = frozenset({"unicode_escape", "raw_unicode_escape", "punycode", "idna"})

_REPLACEMENT = "\ufffd"
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")


def decode_header_value(raw: bytes) -> str:
    """A raw header value as people read it, one line of text: what a subject line shows.

    Folding is undone, 8-bit bytes are read as UTF-8 or else windows-1252, RFC 2047 encoded words are
    decoded (undecodable bytes replaced), every control character becomes a space, and the ends are
    stripped. Never raises.
    """
    return decode_words(unfold(bytes_to_text(raw))).translate(CONTROLS_TO_SPACE).strip()


def bytes_to_text(raw: bytes) -> str:
    """8-bit header bytes as text: UTF-8 where they mostly are, else windows-1252 (replacing the rest)."""
    if raw.isascii():
        return raw.decode("ascii")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # UTF-8 with a damaged character (a header cut in the middle of one) is still UTF-8; legacy 8-bit
    # text almost never forms a valid UTF-8 sequence at all, so more good characters than bad decides.
    as_utf8 = raw.decode("utf-8", "replace")
    bad = as_utf8.count(_REPLACEMENT)
    if sum(1 for ch in as_utf8 if ord(ch) > 0x7F) - bad > bad:
        return as_utf8
    return raw.decode("cp1252", "replace")


def unfold(text: str) -> str:
    # RFC 5322 2.2.3: unfolding removes the line breaks and keeps the whitespace after them.
    return _LINE_BREAKS.sub("", text)


def decode_words(text: str) -> str:
    """``text`` with its RFC 2047 encoded words decoded; everything else stays as it is."""
    if "=?" not in text:
        return text
    # Whitespace between two encoded words is dropped (RFC 2047 6.2), and adjacent words of one charset
    # are joined before decoding, because encoders split multi-byte characters across words.
    pieces: list[str | tuple[str, bytes]] = []
    position = 0
    for match in _ENCODED_WORD.finditer(text):
        between = text[position : match.start()]
        previous_encoded = bool(pieces) and isinstance(pieces[-1], tuple)
        if between and not (previous_encoded and between.isspace()):
            pieces.append(between)
        position = match.end()
        charset, encoding, encoded = match.groups()
        if encoding in "bB":
            data = _decode_b(encoded)
        else:
            data = binascii.a2b_qp(encoded.encode("ascii"), header=True)
        last = pieces[-1] if pieces else None
        if isinstance(last, tuple) and last[0] == charset.lower():
            pieces[-1] = (last[0], last[1] + data)
        else:
            pieces.append((charset.lower(), data))
    pieces.append(text[position:])
    return "".join(piece if isinstance(piece, str) else _decode_charset(*piece) for piece in pieces)


def _decode_b(encoded: str) -> bytes:
    # Lenient like mail clients: stray characters are dropped, missing padding is added, and a final
    # lone character (which cannot carry a whole byte) is ignored.
    data = _NOT_BASE64.sub("", encoded)
    if len(data) % 4 == 1:
        data = data[:-1]
    return binascii.a2b_base64((data + "=" * (-len(data) % 4)).encode("ascii"))


def _decode_charset(charset: str, data: bytes) -> str:
    if charset in _AS_WINDOWS_1252:
        charset = "cp1252"
    if charset in _AS_8BIT:
        return bytes_to_text(data)
    try:
        if codecs.lookup(charset).name in _NOT_CHARSETS:
            return bytes_to_text(data)
        return data.decode(charset, "replace")
    except (LookupError, UnicodeError, ValueError):
        return bytes_to_text(data)
