"""Read notifications (RFC 8098 MDNs) to the back office: whether a mail asks for one, and its bytes.

A back office may ask to learn when its mail was read, with ``Disposition-Notification-To``. The
gateway answers for the members: when the first member reads a copy (sets ``\\Seen`` in their own mail
client), it sends one notification naming that member. Members are not asked first, which is what
``MDN-sent-automatically`` says in the report (RFC 8098 §3.2.6.2).

:func:`notification_request` decides whether a back-office mail asks, and where the answer may go, and
says why when it may not go anywhere. The rules, first hit wins:

1. no ``Disposition-Notification-To`` field: nothing was asked;
2. the field more than once, or not exactly one valid ASCII address in it: a request that cannot be
   read is no request (RFC 8098 §2.1 allows a list, but one back office has one inbox for these);
3. the mail came from the null reverse-path, says ``Auto-Submitted`` other than ``no``, or is itself a
   ``multipart/report``: notifications are never answered with notifications (RFC 3834 §2);
4. the address is neither the envelope sender (the Return-Path) nor the From address of the mail: an
   automatic MDN goes nowhere else (RFC 8098 §2.1 and §6.2: otherwise anybody who can send a message
   could make the gateway mail a third party).

Rule 4 widens RFC 8098 §2.1, which compares with the Return-Path only, by the From address: back
offices send from a bounce address of their own (VERP) and ask for the notification at the address
they write from, and the gateway relays members' replies to that From address already. The MDN
travels only through the back office's own SMTP server, like those replies. Addresses are compared in
the gateway's canonical form (``gateway.domain.addresses``: case-folded), not RFC 8098's case-sensitive
local part, because every address the gateway keeps is folded alike.

:func:`build_read_notification` writes the notification as a ``multipart/report;
report-type=disposition-notification`` (RFC 8098 §3, RFC 6522) with three parts:

1. ``text/plain`` for people, in German and English: who opened the message, and what that means;
2. ``message/disposition-notification`` for programs: Reporting-UA (the gateway's host name;
   ``vorgang-gateway``), Original-Recipient (only when the member was an addressee of the mail; a
   colleague who sees it through a shared release was not, and RFC 8098 §3.2.3 forbids guessing),
   Final-Recipient (the member), Original-Message-ID, and ``Disposition:
   manual-action/MDN-sent-automatically; displayed`` (the member displayed it; the gateway sent the
   report without asking them);
3. ``text/rfc822-headers``: the header section of the back office's mail.

From is the member who read the mail, with their display name, because RFC 8098 §3 asks for "the
address of the person for whom the message disposition notification is being issued"; the gateway
sends it on their behalf, as it relays their replies. To is the requested address; Subject is
``Gelesen / Read: <subject>``; In-Reply-To and References name the mail read, so the back office's
client threads it; ``Auto-Submitted: auto-replied`` keeps auto-responders quiet, and it asks for no
notification itself (RFC 8098 §3). Line ends are CRLF; the bytes are a function of the arguments alone,
and every value that could write a header line of its own is refused with ``ValueError``
(``gateway.domain.reports``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import AddressHeader, HeaderRegistry
from email.parser import BytesHeaderParser
from email.policy import Compat32
from email.utils import format_datetime

from gateway.domain.addresses import InvalidAddress, normalise_address
from gateway.domain.headers import bytes_to_text, unfold
from gateway.domain.parsing import parse_message
from gateway.domain.reports import (
    HOST,
    MESSAGE_ID,
    address_header,
    checked,
    content_boundary,
    header_section,
    is_ascii_address,
    lines,
    mailbox_header,
    multipart_report,
    subject_header,
)

__all__ = ["PRODUCT", "NotificationRequest", "build_read_notification", "notification_request"]

PRODUCT = "vorgang-gateway"
REQUEST_HEADER = "Disposition-Notification-To"
DISPOSITION = "manual-action/MDN-sent-automatically; displayed"

_ADDRESSES = HeaderRegistry()
# The registry mixes BaseHeader into the class it is given; typeshed wants the mixed class already.
_ADDRESSES.map_to_type(REQUEST_HEADER.lower(), AddressHeader)  # type: ignore[arg-type]


class _RawValues(Compat32):
    """compat32, but 8-bit values come back as parsed (bytes as surrogates), not replaced in a Header."""

    def header_fetch_parse(self, name: str, value: str) -> str:
        return value


_POLICY = _RawValues()


@dataclass(frozen=True, slots=True)
class NotificationRequest:
    """What a back-office mail asks for: the address to notify, or None and why not.

    ``asked`` says whether the mail carried ``Disposition-Notification-To`` at all, so a caller records
    a refused request without recording every mail that asked for nothing.
    """

    address: str | None
    reason: str
    asked: bool


def notification_request(
    raw: bytes, *, envelope_sender: str, from_address: str | None
) -> NotificationRequest:
    """Whether the back-office mail ``raw`` (its header section is enough) asks for a read notification
    that may be sent automatically, and to which address. Never raises."""
    head = header_section(raw)
    fields = BytesHeaderParser(policy=_POLICY).parsebytes(head + b"\r\n")
    values = fields.get_all(REQUEST_HEADER) or []
    if not values:
        return NotificationRequest(None, f"the mail asks for no read notification ({REQUEST_HEADER})", False)
    if len(values) > 1:
        return _refused(f"{REQUEST_HEADER} appears {len(values)} times")
    requested = _one_address(str(values[0]))
    if isinstance(requested, _Unreadable):
        return _refused(f"{REQUEST_HEADER} {requested.why}")

    if not envelope_sender.strip():
        return _refused("the mail came from the null reverse-path (<>): it is a notification itself")
    auto = fields.get("Auto-Submitted")
    if auto is not None and _text(str(auto)).split(";")[0].strip().lower() != "no":
        return _refused("the mail was sent automatically (Auto-Submitted): it is not answered automatically")
    if fields.get_content_type() == "multipart/report":
        return _refused("the mail is a report (multipart/report) itself")

    senders = {_canonical(envelope_sender), _canonical(from_address or "")} - {None}
    if requested not in senders:
        return _refused(
            f"{requested} is neither the envelope sender ({envelope_sender}) nor the From address "
            f"({from_address or 'none'}) of the mail; RFC 8098 §2.1 forbids an automatic notification"
        )
    return NotificationRequest(requested, f"the back office asked for it at {requested}", True)


def build_read_notification(
    *,
    reporting_ua: str,
    reader: str,
    reader_name: str,
    original_recipient: str | None,
    to: str,
    original_headers: bytes,
    message_id: str,
    date: datetime,
) -> bytes:
    """The bytes of the notification to ``to`` that the member ``reader`` displayed a back-office mail.

    ``reporting_ua`` is the gateway's host name; ``reader`` the member's address and ``reader_name``
    their display name (may be empty, may be any language); ``original_recipient`` the member's address
    when the mail was addressed to them, else None; ``original_headers`` the header section of the mail
    read (a whole message is cut at its first blank line: its Message-ID and Subject are read from
    there); ``message_id`` and an aware ``date`` are the notification's own. Raises ``ValueError`` for
    a value that cannot be written safely.
    """
    reporting_ua = checked("reporting_ua", reporting_ua)
    if not HOST.fullmatch(reporting_ua):
        raise ValueError(f"reporting_ua is a host name, not {reporting_ua!r}")
    reader = checked("reader", reader).strip()
    if not is_ascii_address(reader):
        raise ValueError(f"reader is an ASCII address, not {reader!r}")
    reader_name = " ".join(checked("reader_name", reader_name).split())
    if original_recipient is not None:
        original_recipient = checked("original_recipient", original_recipient).strip()
        if not is_ascii_address(original_recipient):
            raise ValueError(f"original_recipient is an ASCII address, not {original_recipient!r}")
    to_header = address_header("to", to)
    if not MESSAGE_ID.fullmatch(checked("message_id", message_id)):
        raise ValueError(f"message_id is <local@domain>, not {message_id!r}")
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("date must be timezone-aware: a Date header without a zone is a lie")

    headers = header_section(original_headers)
    original = parse_message(headers + b"\r\n")
    # parse_message hands back a decoded subject without control characters, and message ids without
    # whitespace inside the brackets; an id that still does not look like one is left out.
    original_id = (
        original.message_id if original.message_id and MESSAGE_ID.fullmatch(original.message_id) else None
    )

    fields = [f"Reporting-UA: {reporting_ua}; {PRODUCT}"]
    if original_recipient is not None:
        fields.append(f"Original-Recipient: rfc822;{original_recipient}")
    fields.append(f"Final-Recipient: rfc822;{reader}")
    if original_id is not None:
        fields.append(f"Original-Message-ID: {original_id}")
    fields.append(f"Disposition: {DISPOSITION}")

    text = _human_text(reader=reader, reader_name=reader_name, original_subject=original.subject)
    boundary = content_boundary(
        "mdn",
        reporting_ua,
        reader,
        reader_name,
        original_recipient or "",
        to,
        message_id,
        date.isoformat(),
        headers,
    )
    top = [
        mailbox_header("From", reader_name, reader),
        f"To: {to_header}",
        subject_header(f"Gelesen / Read: {original.subject}".rstrip()),
        f"Date: {format_datetime(date)}",
        f"Message-ID: {message_id}",
    ]
    return multipart_report(
        top,
        original_id,
        report_type="disposition-notification",
        what="message disposition notification",
        boundary=boundary,
        text=text,
        report=lines([*fields, ""]),
        headers=headers,
    )


def _human_text(*, reader: str, reader_name: str, original_subject: str) -> str:
    who = f"{reader_name} <{reader}>" if reader_name else reader
    name = reader_name or reader
    what_de = f"Ihre Nachricht „{original_subject}“" if original_subject else "Ihre Nachricht"
    what_en = f'Your message "{original_subject}"' if original_subject else "Your message"
    paragraphs = [
        "Diese Nachricht wurde automatisch erstellt.\nThis message was generated automatically.",
        f"{what_de} wurde von {who} geöffnet.\n"
        "Das heißt nur, dass sie angezeigt wurde, nicht, dass sie gelesen oder verstanden wurde.",
        f"{what_en} was opened by {who}.\n"
        "This only means that it was displayed, not that it was read or understood.",
        f"Das Gateway hat diese Lesebestätigung für {name} versandt, ohne nachzufragen.\n"
        f"The gateway sent this read notification on behalf of {name} without asking them.",
        "Die Kopfzeilen Ihrer Nachricht sind angehängt.\nThe headers of your message are attached.",
    ]
    return "\n\n".join(paragraphs) + "\n"


@dataclass(frozen=True, slots=True)
class _Unreadable:
    why: str


def _one_address(value: str) -> str | _Unreadable:
    text = _text(value)
    try:
        parsed = _ADDRESSES(REQUEST_HEADER, text)
    except Exception:  # the RFC 5322 parser is strict and may fail on hostile input in ways of its own
        return _Unreadable(f"cannot be read: {_excerpt(text)}")
    addresses = list(getattr(parsed, "addresses", ()))
    groups = list(getattr(parsed, "groups", ()))
    if parsed.defects or any(group.display_name is not None for group in groups):
        return _Unreadable(f"is not a list of addresses: {_excerpt(text)}")
    if len(addresses) != 1:
        return _Unreadable(f"names {len(addresses)} addresses, not one: {_excerpt(text)}")
    canonical = _canonical(addresses[0].addr_spec)
    if canonical is None or not is_ascii_address(canonical):
        return _Unreadable(f"is not a valid ASCII address: {_excerpt(text)}")
    return canonical


def _canonical(address: str) -> str | None:
    try:
        return normalise_address(address.strip().strip("<>"))
    except InvalidAddress:
        return None


def _text(value: str) -> str:
    """A header value as one line of text: 8-bit bytes (surrogates here) read as UTF-8 or windows-1252."""
    raw = value.encode("ascii", "surrogateescape") if not value.isascii() else value.encode("ascii")
    return unfold(bytes_to_text(raw)).strip()


def _refused(reason: str) -> NotificationRequest:
    return NotificationRequest(None, reason, True)


def _excerpt(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "…")
