"""The delivery status notification (RFC 3464) that tells a member their mail did not reach the back office.

When relaying a member's reply fails for good (or is delayed for long), the member must learn it from
their own mailbox (DESIGN.md §8): :func:`build_failure_report` writes the bounce an MTA would write, as a
``multipart/report; report-type=delivery-status`` with three parts:

1. ``text/plain`` for people, in German and English: what failed, for which recipient, and why;
2. ``message/delivery-status`` for programs: the per-message and the per-recipient fields;
3. ``text/rfc822-headers``: the header section of the member's mail, so that it can be recognised.

It comes from ``MAILER-DAEMON@<reporting MTA>`` with ``Auto-Submitted: auto-replied`` (so that no
auto-responder answers it), answers the member's mail in In-Reply-To/References (so that mail clients
show it in the thread), and has CRLF line endings throughout. The bytes are a function of the arguments
alone, the MIME boundary included, so a retried build writes the same report.

Nothing the caller passes can write a header line of its own. Addresses, host name, ids, status and
action are checked and refused with ``ValueError`` when malformed or carrying a line break; the texts
are made one line instead: the subject is read as a mail client shows it (a raw, folded or RFC 2047
encoded value is fine), and the remote server's diagnostic, which may span several reply lines, is
joined into one.
"""

from __future__ import annotations

import hashlib
import quopri
import re
import textwrap
import unicodedata
from datetime import datetime
from email.header import Header
from email.utils import format_datetime, formataddr, parseaddr

from gateway.domain.headers import bytes_to_text, decode_header_value
from gateway.parsing import parse_message

__all__ = ["build_failure_report"]

_CRLF = "\r\n"
_STATUS = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})")
_MESSAGE_ID = re.compile(r"<[^<>\s]+@[^<>\s]+>")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]|\[IPv6:[0-9A-Fa-f:.]+\]")
_ADDR_SPEC = re.compile(r"[^\s@<>()\[\],;:\"]+@[A-Za-z0-9.\[\]:-]+")
# An envelope id travels as xtext in the ENVID parameter (RFC 3461 4.4); one without "+" and "=" reads
# the same encoded or not, so it matches whichever way a remote MTA writes it back.
_ENVELOPE_ID = re.compile(r"[\x21-\x2a\x2c-\x3c\x3e-\x7e]{1,100}")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_BLANK_LINE = re.compile(rb"(?:\A|\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_LINE_END = re.compile(rb"\r\n|\r|\n")

# RFC 5322 2.1.1: lines stay within 78 characters where they can; a remote server's diagnostic is cut
# well below the hard limit of 998, because one unbroken word must still fit on a line.
_LINE_LENGTH = 78
_MAX_DIAGNOSTIC = 900

# What the enhanced status code (RFC 3463) means, by subject.detail, then by subject alone.
_REASONS: dict[str, tuple[str, str]] = {
    "1.1": ("Die Empfängeradresse gibt es nicht.", "The recipient address does not exist."),
    "1.2": (
        "Die Domain der Empfängeradresse gibt es nicht, oder sie nimmt keine E-Mail an.",
        "The recipient's domain does not exist or does not accept mail.",
    ),
    "1": ("Die Empfängeradresse wurde nicht angenommen.", "The recipient address was not accepted."),
    "2.2": ("Das Postfach des Empfängers ist voll.", "The recipient's mailbox is full."),
    "2": (
        "Das Postfach des Empfängers nimmt keine Nachrichten an.",
        "The recipient's mailbox accepts no mail.",
    ),
    "3.4": ("Die Nachricht ist zu groß.", "The message is too large."),
    "3": ("Das Mailsystem des Empfängers hat ein Problem.", "The recipient's mail system has a problem."),
    "4.7": ("Die Zustellung hat zu lange gedauert.", "Delivery took too long."),
    "4": (
        "Der Server des Empfängers war nicht erreichbar.",
        "The recipient's server could not be reached.",
    ),
    "5": ("Bei der Übertragung trat ein Protokollfehler auf.", "The transfer failed with a protocol error."),
    "6": (
        "Der Inhalt der Nachricht konnte nicht übertragen werden.",
        "The content of the message could not be transferred.",
    ),
    "7": (
        "Der Server des Empfängers hat die Nachricht aus Sicherheits- oder Richtliniengründen abgelehnt.",
        "The recipient's server refused the message for security or policy reasons.",
    ),
}
_UNKNOWN_REASON = ("Die Zustellung ist fehlgeschlagen.", "Delivery failed.")


def build_failure_report(
    *,
    reporting_mta: str,
    original_envelope_id: str | None,
    recipient: str,
    status: str,
    action: str,
    diagnostic: str,
    original_headers: bytes,
    to: str,
    subject: str,
    message_id: str,
    date: datetime,
    explanation: str,
) -> bytes:
    """The bytes of a delivery status notification to the member ``to`` about their mail to ``recipient``.

    ``reporting_mta`` is the gateway's host name; ``original_envelope_id`` the ENVID the gateway gave the
    relayed mail, if any; ``status`` an enhanced status code (``5.1.1``); ``action`` ``failed`` (4.x.x or
    5.x.x) or ``delayed`` (4.x.x); ``diagnostic`` the remote server's reply, or the gateway's words when
    there was none (an SMTP reply starts with its three-digit code and is typed ``smtp``, anything else
    ``X-Gateway``); ``original_headers`` the header section of the member's mail (a whole message is
    cut at its first blank line); ``to``, ``subject`` (text, or a raw header value), ``message_id`` and
    an aware ``date`` are the report's own; ``explanation`` is the gateway's note to the member (for
    example how long it tried), shown as given. Raises ``ValueError`` for a value that cannot be written
    safely.
    """
    reporting_mta = _checked("reporting_mta", reporting_mta)
    if not _HOST.fullmatch(reporting_mta):
        raise ValueError(f"reporting_mta is a host name, not {reporting_mta!r}")
    if original_envelope_id is not None and not _ENVELOPE_ID.fullmatch(original_envelope_id):
        raise ValueError(
            f"original_envelope_id is 1 to 100 printable ASCII characters without '+' and '=', "
            f"not {original_envelope_id!r}"
        )
    recipient = _checked("recipient", recipient).strip()
    if not (recipient.isascii() and _ADDR_SPEC.fullmatch(recipient)):
        raise ValueError(f"recipient is an ASCII address, not {recipient!r}")
    status_match = _STATUS.fullmatch(status)
    if status_match is None:
        raise ValueError(f"status is an enhanced status code such as 5.1.1, not {status!r}")
    if action not in ("failed", "delayed"):
        raise ValueError(f"action is 'failed' or 'delayed', not {action!r}")
    if action == "delayed" and status_match.group(1) != "4":
        raise ValueError(f"a delayed delivery has a 4.x.x status, not {status}")
    if action == "failed" and status_match.group(1) == "2":
        raise ValueError(f"a failed delivery has a 4.x.x or 5.x.x status, not {status}")
    if not _MESSAGE_ID.fullmatch(_checked("message_id", message_id)):
        raise ValueError(f"message_id is <local@domain>, not {message_id!r}")
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("date must be timezone-aware: a Date header without a zone is a lie")
    to_header = _address_header("to", to)
    # A subject is text for people: a raw header value (folded, encoded words, 8-bit) reads as it would
    # in a mail client, and no control character survives into the header line.
    subject = decode_header_value(_as_bytes(subject))
    # Text from a server reply may carry its 8-bit bytes as surrogates (surrogateescape); read them as
    # header bytes are read, so that no surrogate reaches the UTF-8 of the report.
    diagnostic = bytes_to_text(_as_bytes(diagnostic))
    explanation = bytes_to_text(_as_bytes(explanation))

    diagnostic_line = " ".join(diagnostic.split())[:_MAX_DIAGNOSTIC]
    headers = _header_section(original_headers)
    original = parse_message(headers + b"\r\n")
    reason_de, reason_en = _reason(status_match.group(2), status_match.group(3))

    text = _human_text(
        action=action,
        recipient=recipient,
        status=status,
        diagnostic=diagnostic_line,
        original_subject=original.subject,
        reasons=(reason_de, reason_en),
        explanation=explanation,
    )
    status_fields = _status_fields(
        reporting_mta=reporting_mta,
        original_envelope_id=original_envelope_id,
        recipient=recipient,
        action=action,
        status=status,
        diagnostic=diagnostic_line,
    )
    boundary = _boundary(
        reporting_mta,
        original_envelope_id or "",
        recipient,
        status,
        action,
        diagnostic,
        to,
        subject,
        message_id,
        date.isoformat(),
        explanation,
        headers,
    )

    top = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: {to_header}",
        _subject_header(subject),
        f"Date: {format_datetime(date)}",
        f"Message-ID: {message_id}",
    ]
    if original.message_id is not None:
        top += [f"In-Reply-To: {original.message_id}", f"References: {original.message_id}"]
    top += [
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f' boundary="{boundary}"',
    ]

    out = bytearray(_lines(top))
    out += _lines(["", "This is a delivery status notification in MIME format.", ""])
    out += _lines(
        [
            f"--{boundary}",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: quoted-printable",
            "Content-Language: de, en",
            "",
        ]
    )
    out += _quoted_printable(text)
    out += _lines([f"--{boundary}", "Content-Type: message/delivery-status", ""])
    out += status_fields
    if headers:
        part = [f"--{boundary}", "Content-Type: text/rfc822-headers"]
        if not headers.isascii():
            part.append("Content-Transfer-Encoding: 8bit")
        out += _lines([*part, ""])
        # The line end before a boundary belongs to the boundary (RFC 2046 5.1.1): the blank line keeps
        # the last header line's own.
        out += headers + b"\r\n"
    out += _lines([f"--{boundary}--"])
    return bytes(out)


def _human_text(
    *,
    action: str,
    recipient: str,
    status: str,
    diagnostic: str,
    original_subject: str,
    reasons: tuple[str, str],
    explanation: str,
) -> str:
    what_de = f"Ihre Nachricht „{original_subject}“" if original_subject else "Ihre Nachricht"
    what_en = f'Your message "{original_subject}"' if original_subject else "Your message"
    if action == "failed":
        lead_de = f"{what_de} an {recipient} konnte nicht zugestellt werden."
        lead_en = f"{what_en} to {recipient} could not be delivered."
    else:
        lead_de = f"{what_de} an {recipient} ist noch nicht zugestellt; es wird weiter versucht."
        lead_en = f"{what_en} to {recipient} has not been delivered yet; delivery will be retried."
    said_de = f"Status {status}; der Server meldete: {diagnostic}" if diagnostic else f"Status {status}"
    said_en = f"Status {status}; the server said: {diagnostic}" if diagnostic else f"Status {status}"
    paragraphs = [
        "Diese Nachricht wurde automatisch erstellt.\nThis message was generated automatically.",
        f"{lead_de}\nGrund: {reasons[0]}\n{said_de}",
        f"{lead_en}\nReason: {reasons[1]}\n{said_en}",
    ]
    note = "\n".join(
        line.rstrip() for line in explanation.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    )
    if note.strip():
        paragraphs.append(note.strip("\n"))
    paragraphs.append(
        "Die Kopfzeilen Ihrer Nachricht sind angehängt.\nThe headers of your message are attached."
    )
    return "\n\n".join(paragraphs) + "\n"


def _status_fields(
    *,
    reporting_mta: str,
    original_envelope_id: str | None,
    recipient: str,
    action: str,
    status: str,
    diagnostic: str,
) -> bytes:
    per_message = [f"Reporting-MTA: dns; {reporting_mta}"]
    if original_envelope_id is not None:
        per_message.append(f"Original-Envelope-Id: {original_envelope_id}")
    per_recipient = [f"Final-Recipient: rfc822; {recipient}", f"Action: {action}", f"Status: {status}"]
    if diagnostic:
        # RFC 3464 2.3.6: "smtp" types the reply of an SMTP server; anything else (a refused connection,
        # a name that does not resolve) is the gateway's own words.
        kind = "smtp" if re.match(r"[245][0-9][0-9](?![0-9])", diagnostic) else "X-Gateway"
        per_recipient.extend(_fold("Diagnostic-Code", f"{kind}; {_ascii(diagnostic)}"))
    return _lines([*per_message, "", *per_recipient, ""])


def _header_section(raw: bytes) -> bytes:
    """The header section of ``raw`` with CRLF line ends, without NUL bytes and the blank line."""
    blank = _BLANK_LINE.search(raw)
    head = raw[: blank.start()] if blank is not None else raw
    head = head.replace(b"\x00", b"").strip(b"\r\n")
    if not head:
        return b""
    return _LINE_END.sub(b"\r\n", head) + b"\r\n"


def _reason(subject: str, detail: str) -> tuple[str, str]:
    return _REASONS.get(f"{int(subject)}.{int(detail)}") or _REASONS.get(str(int(subject))) or _UNKNOWN_REASON


def _as_bytes(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return text.encode("utf-8", "replace")


def _checked(name: str, value: str) -> str:
    if _CONTROLS.search(value):
        raise ValueError(f"{name} must be one line without control characters: {value!r}")
    return value


def _address_header(name: str, value: str) -> str:
    display_name, address = parseaddr(_checked(name, value))
    if not (address.isascii() and _ADDR_SPEC.fullmatch(address)):
        raise ValueError(f"{name} is an ASCII address, with or without a display name, not {value!r}")
    return formataddr((display_name, address), charset="utf-8")


def _subject_header(subject: str) -> str:
    # Plain ASCII where it can be read as it is; encoded words where it cannot: non-ASCII text, text that
    # a reader would take for an encoded word, and words too long for a line, which only encoded words
    # may split.
    plain = subject.isascii() and "=?" not in subject and all(len(word) <= 60 for word in subject.split())
    charset = "us-ascii" if plain else "utf-8"
    header = Header(subject, charset, maxlinelen=_LINE_LENGTH, header_name="Subject")
    return "Subject: " + header.encode(linesep=_CRLF)


def _fold(name: str, value: str) -> list[str]:
    """``Name: value`` as lines of at most 78 characters, broken at spaces only."""
    lines = textwrap.wrap(
        f"{name}: {value}",
        width=_LINE_LENGTH,
        subsequent_indent=" ",
        break_long_words=False,
        break_on_hyphens=False,
    )
    return lines or [f"{name}:"]


def _ascii(text: str) -> str:
    # DSN fields are ASCII (RFC 3464 2.1.1); the human-readable part keeps the original characters.
    if text.isascii():
        return text
    bare = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    return bare.encode("ascii", "replace").decode("ascii")


def _quoted_printable(text: str) -> bytes:
    # quopri wraps at 76 characters with soft breaks and ends lines with LF only; the result holds no
    # CR of its own (a CR in the text would be written =0D), so every LF becomes CRLF safely.
    encoded = quopri.encodestring(text.encode("utf-8"), quotetabs=False)
    return encoded.replace(b"\n", b"\r\n")


def _boundary(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big") + data)
    # "=_" cannot occur in quoted-printable text, and the hash of all content cannot occur in it either.
    return f"=_dsn_{digest.hexdigest()[:40]}"


def _lines(lines: list[str]) -> bytes:
    return "".join(line + _CRLF for line in lines).encode("utf-8")
