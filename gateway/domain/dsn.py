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

import re
import unicodedata
from datetime import datetime
from email.utils import format_datetime

from gateway.domain.headers import bytes_to_text, decode_header_value
from gateway.domain.parsing import parse_message
from gateway.domain.reports import (
    HOST,
    MESSAGE_ID,
    address_header,
    as_bytes,
    checked,
    content_boundary,
    fold,
    header_section,
    is_ascii_address,
    lines,
    multipart_report,
    subject_header,
)

__all__ = ["build_failure_report", "report_subject"]

_STATUS = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})")
# An envelope id travels as xtext in the ENVID parameter (RFC 3461 4.4); one without "+" and "=" reads
# the same encoded or not, so it matches whichever way a remote MTA writes it back.
_ENVELOPE_ID = re.compile(r"[\x21-\x2a\x2c-\x3c\x3e-\x7e]{1,100}")

# A remote server's diagnostic is cut well below the hard line limit of 998 (RFC 5322 2.1.1), because
# one unbroken word must still fit on a line.
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
    subject: str | None = None,
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
    cut at its first blank line); ``to``, ``subject`` (text, or a raw header value; by default
    :func:`report_subject` of the original's decoded subject), ``message_id`` and an aware ``date`` are
    the report's own; ``explanation`` is the gateway's note to the member (for
    example how long it tried), shown as given. Raises ``ValueError`` for a value that cannot be written
    safely.
    """
    reporting_mta = checked("reporting_mta", reporting_mta)
    if not HOST.fullmatch(reporting_mta):
        raise ValueError(f"reporting_mta is a host name, not {reporting_mta!r}")
    if original_envelope_id is not None and not _ENVELOPE_ID.fullmatch(original_envelope_id):
        raise ValueError(
            f"original_envelope_id is 1 to 100 printable ASCII characters without '+' and '=', "
            f"not {original_envelope_id!r}"
        )
    recipient = checked("recipient", recipient).strip()
    if not is_ascii_address(recipient):
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
    if not MESSAGE_ID.fullmatch(checked("message_id", message_id)):
        raise ValueError(f"message_id is <local@domain>, not {message_id!r}")
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("date must be timezone-aware: a Date header without a zone is a lie")
    to_header = address_header("to", to)
    headers = header_section(original_headers)
    original = parse_message(headers + b"\r\n")
    # A subject is text for people: a raw header value (folded, encoded words, 8-bit) reads as it would
    # in a mail client, and no control character survives into the header line.
    if subject is None:
        subject = report_subject(action, original.subject)
    else:
        subject = decode_header_value(as_bytes(subject))
    # Text from a server reply may carry its 8-bit bytes as surrogates (surrogateescape); read them as
    # header bytes are read, so that no surrogate reaches the UTF-8 of the report.
    diagnostic = bytes_to_text(as_bytes(diagnostic))
    explanation = bytes_to_text(as_bytes(explanation))

    diagnostic_line = " ".join(diagnostic.split())[:_MAX_DIAGNOSTIC]
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
    boundary = content_boundary(
        "dsn",
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
        subject_header(subject),
        f"Date: {format_datetime(date)}",
        f"Message-ID: {message_id}",
    ]
    return multipart_report(
        top,
        original.message_id,
        report_type="delivery-status",
        what="delivery status notification",
        boundary=boundary,
        text=text,
        report=status_fields,
        headers=headers,
    )


def report_subject(action: str, original_subject: str) -> str:
    """The subject of a report about the mail whose subject was ``original_subject``.

    ``original_subject`` is text as :func:`gateway.domain.parsing.parse_message` reads it (8-bit bytes as
    UTF-8
    or windows-1252, encoded words decoded). Never hand in what ``email``'s default compat32 parser
    returns for an 8-bit subject: that is a ``Header`` whose text has each 8-bit byte replaced, so a
    subject ``Re: Rückfrage`` would read ``Re: R\ufffd\ufffdckfrage``.
    """
    lead = "Nicht zugestellt / Undelivered" if action == "failed" else "Verzögert / Delayed"
    return f"{lead}: {original_subject}".rstrip()


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
        per_recipient.extend(fold("Diagnostic-Code", f"{kind}; {_ascii(diagnostic)}"))
    return lines([*per_message, "", *per_recipient, ""])


def _reason(subject: str, detail: str) -> tuple[str, str]:
    return _REASONS.get(f"{int(subject)}.{int(detail)}") or _REASONS.get(str(int(subject))) or _UNKNOWN_REASON


def _ascii(text: str) -> str:
    # DSN fields are ASCII (RFC 3464 2.1.1); the human-readable part keeps the original characters.
    if text.isascii():
        return text
    bare = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    return bare.encode("ascii", "replace").decode("ascii")
