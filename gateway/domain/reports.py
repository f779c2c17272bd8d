"""What the gateway's own reports have in common: safe header lines, CRLF, a boundary from their content.

The delivery status notification to a member (``gateway.domain.dsn``) and the read notification to a
back office (``gateway.domain.mdn``) are both ``multipart/report`` mails the gateway writes itself from
values it did not choose (addresses, subjects, a remote server's words). Both hold to the same rules,
kept here once: a value that would write a header line of its own is refused with ``ValueError``; a
text for people (a subject) is made one line; every line ends in CRLF; and the bytes are a function of
the arguments alone, the MIME boundary included, so a retried build writes the same mail.
"""

from __future__ import annotations

import hashlib
import quopri
import re
import textwrap
from email import base64mime, quoprimime
from email.header import Header
from email.utils import formataddr, parseaddr

CRLF = "\r\n"
# RFC 5322 2.1.1: lines stay within 78 characters where they can.
LINE_LENGTH = 78

MESSAGE_ID = re.compile(r"<[^<>\s]+@[^<>\s]+>")
HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]|\[IPv6:[0-9A-Fa-f:.]+\]")
ADDR_SPEC = re.compile(r"[^\s@<>()\[\],;:\"]+@[A-Za-z0-9.\[\]:-]+")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_BLANK_LINE = re.compile(rb"(?:\A|\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_LINE_END = re.compile(rb"\r\n|\r|\n")


def checked(name: str, value: str) -> str:
    """``value`` when it is one line without control characters; else ``ValueError`` naming ``name``."""
    if _CONTROLS.search(value):
        raise ValueError(f"{name} must be one line without control characters: {value!r}")
    return value


def is_ascii_address(address: str) -> bool:
    return address.isascii() and ADDR_SPEC.fullmatch(address) is not None


def address_header(name: str, value: str) -> str:
    """An address with or without a display name as a header value; non-ASCII names as encoded words."""
    display_name, address = parseaddr(checked(name, value))
    if not is_ascii_address(address):
        raise ValueError(f"{name} is an ASCII address, with or without a display name, not {value!r}")
    return formataddr((display_name, address), charset="utf-8")


def subject_header(subject: str) -> str:
    """``Subject: …`` with CRLF folding, for a subject that is already one line of text."""
    # Plain ASCII where it can be read as it is; encoded words where it cannot: non-ASCII text, text that
    # a reader would take for an encoded word, and words too long for a line, which only encoded words
    # may split.
    plain = subject.isascii() and "=?" not in subject and all(len(word) <= 60 for word in subject.split())
    charset = "us-ascii" if plain else "utf-8"
    # Header counts a continuation line's leading space in maxlinelen; one less than 78 keeps each
    # encoded word within RFC 2047's 75 characters.
    header = Header(subject, charset, maxlinelen=LINE_LENGTH - 2, header_name="Subject")
    return "Subject: " + header.encode(linesep=CRLF)


def fold(name: str, value: str) -> list[str]:
    """``Name: value`` as lines of at most 78 characters, broken at spaces only."""
    lines = textwrap.wrap(
        f"{name}: {value}",
        width=LINE_LENGTH,
        subsequent_indent=" ",
        break_long_words=False,
        break_on_hyphens=False,
    )
    return lines or [f"{name}:"]


def header_section(raw: bytes) -> bytes:
    """The header section of ``raw`` with CRLF line ends, without NUL bytes and the blank line."""
    blank = _BLANK_LINE.search(raw)
    head = raw[: blank.start()] if blank is not None else raw
    head = head.replace(b"\x00", b"").strip(b"\r\n")
    if not head:
        return b""
    return _LINE_END.sub(b"\r\n", head) + b"\r\n"


def as_bytes(text: str) -> bytes:
    """Text back to the bytes it was read from (8-bit bytes kept as surrogates come back as bytes)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return text.encode("utf-8", "replace")


def quoted_printable(text: str) -> bytes:
    # quopri wraps at 76 characters with soft breaks and ends lines with LF only; the result holds no
    # CR of its own (a CR in the text would be written =0D), so every LF becomes CRLF safely.
    encoded = quopri.encodestring(text.encode("utf-8"), quotetabs=False)
    return encoded.replace(b"\n", b"\r\n")


def content_boundary(kind: str, *parts: str | bytes) -> str:
    """A MIME boundary that is a function of the report's content: ``=_<kind>_<hash>``."""
    digest = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big") + data)
    # "=_" cannot occur in quoted-printable text, and the hash of all content cannot occur in it either.
    return f"=_{kind}_{digest.hexdigest()[:40]}"


def lines(items: list[str]) -> bytes:
    return "".join(line + CRLF for line in items).encode("utf-8")


def text_part(boundary: str, text: str) -> bytes:
    """A report's first part, for people: ``text`` (German and English) as quoted-printable UTF-8."""
    return lines(
        [
            f"--{boundary}",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: quoted-printable",
            "Content-Language: de, en",
            "",
        ]
    ) + quoted_printable(text)


def headers_part(boundary_line: str, headers: bytes) -> bytes:
    """The ``text/rfc822-headers`` part holding an original's header section (RFC 6522 §4)."""
    part = [boundary_line, "Content-Type: text/rfc822-headers"]
    if not headers.isascii():
        part.append("Content-Transfer-Encoding: 8bit")
    # The line end before a boundary belongs to the boundary (RFC 2046 5.1.1): the blank line keeps
    # the last header line's own.
    return lines([*part, ""]) + headers + b"\r\n"


def multipart_report(
    top: list[str],
    answering: str | None,
    *,
    report_type: str,
    what: str,
    boundary: str,
    text: str,
    report: bytes,
    headers: bytes,
) -> bytes:
    """A ``multipart/report; report-type=<report_type>`` mail (RFC 6522) about the mail ``answering``
    names by its message id (None: not threaded under it).

    ``top`` are its first header lines (From to Message-ID); ``what`` names the report for a reader
    without MIME. Its parts: ``text`` for people (:func:`text_part`), the ``message/<report_type>`` part
    ``report`` for programs, and the original's ``headers`` where there are any (:func:`headers_part`).
    """
    if answering is not None:
        top = [*top, f"In-Reply-To: {answering}", f"References: {answering}"]
    top = [
        *top,
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f"Content-Type: multipart/report; report-type={report_type};",
        f' boundary="{boundary}"',
    ]
    out = bytearray(lines(top))
    out += lines(["", f"This is a {what} in MIME format.", ""])
    out += text_part(boundary, text)
    out += lines([f"--{boundary}", f"Content-Type: message/{report_type}", ""])
    out += report
    if headers:
        out += headers_part(f"--{boundary}", headers)
    out += lines([f"--{boundary}--"])
    return bytes(out)


def mailbox_header(name: str, display_name: str, address: str) -> str:
    """``Name: display name <address>`` for a checked one-line name and an ASCII address.

    An ASCII name is quoted where it needs to be (``formataddr``). A non-ASCII name is written as
    RFC 2047 encoded words of at most 72 characters, one per line, so every line stays within 78.
    Words are split only at the name's spaces, each space kept at the end of the word before it: RFC
    2047 readers drop the folding between two encoded words and read the name exactly, and Python's,
    which keeps the folding as a space, reads no word broken in two (only a single word too long for
    one encoded word is split inside).
    """
    if not display_name:
        return f"{name}: {address}"
    if display_name.isascii() and "=?" not in display_name:
        return f"{name}: {formataddr((display_name, address))}"
    # Text that looks like an encoded word is encoded too, or a reader would decode it.
    words = _encoded_words(display_name, room=LINE_LENGTH - len(f"{name}: "))
    last_line = len(f"{name}: " if len(words) == 1 else " ") + len(words[-1])
    gap = " " if last_line + len(f" <{address}>") <= LINE_LENGTH else f"{CRLF} "
    return f"{name}: " + f"{CRLF} ".join(words) + f"{gap}<{address}>"


def _encoded_words(text: str, *, room: int) -> list[str]:
    chunks: list[str] = []
    for piece in text.split(" "):
        candidate = f"{chunks[-1]} {piece}" if chunks else piece
        if chunks and len(_encoded_word(candidate)) <= room:
            chunks[-1] = candidate
        elif chunks:
            chunks[-1] += " "
            chunks.append(piece)
        else:
            chunks.append(piece)
    words: list[str] = []
    for chunk in chunks:
        while len(_encoded_word(chunk)) > room:
            # One word too long for an encoded word of its own: the longest head that fits.
            cut = max(n for n in range(1, len(chunk)) if len(_encoded_word(chunk[:n])) <= room)
            words.append(_encoded_word(chunk[:cut]))
            chunk = chunk[cut:]
        words.append(_encoded_word(chunk))
    return words


def _encoded_word(text: str) -> str:
    data = text.encode("utf-8")
    q = quoprimime.header_encode(data, "utf-8")
    b = base64mime.header_encode(data, "utf-8")
    return q if len(q) <= len(b) else b
