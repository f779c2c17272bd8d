"""The notice to a member whose reply crossed a co-member's answer: who answered when, and what to do.

The collision guard (``gateway.domain.collision``) holds such a reply (or, with ``notify``, relays it and
tells afterwards). The member learns it in their own mailbox, in the Vorgang's thread (In-Reply-To and
References of the message they answered), in German and English: who answered and when (the stored
acceptance time, never a client's Date), the first lines of that answer, and for a held reply two reply
addresses: "send mine anyway" and "withdraw mine" (``gateway.domain.tokens.held_address``). Answering
either with any mail does it, once.

Like the delivery report (``gateway.domain.dsn``) it comes from the gateway with ``Auto-Submitted:
auto-replied``; every value from outside is made one line or refused with ``ValueError``, and the bytes
are a function of the arguments, so a retried write puts the same notice into the mailbox.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from dataclasses import dataclass
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime

from gateway.domain.headers import bytes_to_text, decode_header_value
from gateway.domain.reports import (
    MESSAGE_ID,
    as_bytes,
    is_ascii_address,
    lines,
    mailbox_header,
    quoted_printable,
    subject_header,
)

__all__ = ["HeldNotice", "answer_excerpt", "build_held_notice"]

# How much of the earlier answer the notice quotes: enough to recognise it, not a second copy.
EXCERPT_LINES = 8
EXCERPT_CHARACTERS = 600
_MAX_PART_BYTES = 256 * 1024  # of the answer's text read for the excerpt; the rest is never decoded


@dataclass(frozen=True, slots=True)
class HeldNotice:
    """What the notice says. ``send_address`` and ``withdraw_address`` are None for ``notify``."""

    gateway_host: str
    to_address: str
    to_name: str
    vorgang: str
    answered_subject: str
    answered_message_id: str | None
    answered_references: tuple[str, ...]
    other_name: str
    other_address: str
    other_accepted_at: dt.datetime
    excerpt: str
    message_id: str
    date: dt.datetime
    send_address: str | None = None
    withdraw_address: str | None = None
    due_at: dt.datetime | None = None
    after_timeout: str = "release"


def answer_excerpt(raw: bytes) -> str:
    """The first lines of a mail's text (its first ``text/plain`` part), quoted lines left out."""
    message = email.message_from_bytes(raw[: _MAX_PART_BYTES * 2], policy=email.policy.default)
    text = ""
    if isinstance(message, EmailMessage):
        part = message.get_body(preferencelist=("plain",))
        if part is not None:
            text = _text_of(part)
    kept: list[str] = []
    for line in text[:_MAX_PART_BYTES].splitlines():
        stripped = line.rstrip()
        if stripped.startswith(">"):
            continue  # the quoted mail they answered: the member has it already
        if not stripped and (not kept or not kept[-1]):
            continue
        kept.append("".join(ch if ch.isprintable() else " " for ch in stripped))
        if len(kept) >= EXCERPT_LINES:
            break
    excerpt = "\n".join(kept).strip()
    return excerpt[:EXCERPT_CHARACTERS] + ("…" if len(excerpt) > EXCERPT_CHARACTERS else "")


def _text_of(part: MIMEPart) -> str:
    """A text part's text: in its declared charset, else UTF-8, else windows-1252 (mail without a
    charset is often 8-bit anyway)."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset()
    if charset:
        try:
            return payload.decode(charset, "replace")
        except LookupError:
            pass
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("windows-1252", "replace")


def build_held_notice(notice: HeldNotice) -> bytes:
    """The notice's bytes (CRLF, quoted-printable UTF-8 text); ``ValueError`` for an unsafe value."""
    for name, address in (
        ("to_address", notice.to_address),
        ("other_address", notice.other_address),
        ("send_address", notice.send_address or "a@b"),
        ("withdraw_address", notice.withdraw_address or "a@b"),
    ):
        if not is_ascii_address(address):
            raise ValueError(f"{name} is an ASCII address, not {address!r}")
    if not MESSAGE_ID.fullmatch(notice.message_id):
        raise ValueError(f"message_id is <local@domain>, not {notice.message_id!r}")
    for moment in (notice.date, notice.other_accepted_at):
        if moment.tzinfo is None:
            raise ValueError("times must be timezone-aware")
    held = notice.send_address is not None and notice.withdraw_address is not None
    subject = _one_line(decode_header_value(as_bytes(notice.answered_subject)))
    lead = "Zurückgehalten / Held" if held else "Überschneidung / Crossed"
    thread = [i for i in notice.answered_references if MESSAGE_ID.fullmatch(i)]
    answering = notice.answered_message_id
    if answering is not None and MESSAGE_ID.fullmatch(answering):
        thread.append(answering)
    else:
        answering = None
    top = [
        f"From: Vorgang-Gateway <postmaster@{notice.gateway_host}>",
        mailbox_header("To", _one_line(notice.to_name), notice.to_address),
        subject_header(f"{lead}: [{notice.vorgang}] {subject}".rstrip()),
        f"Date: {format_datetime(notice.date)}",
        f"Message-ID: {notice.message_id}",
    ]
    if answering is not None:
        top += [f"In-Reply-To: {answering}", "References: " + "\r\n ".join(dict.fromkeys(thread))]
    # No Reply-To: a plain "Reply" must not pick one of the two choices for the member; both
    # addresses are in the text, each to be written to on purpose.
    top += [
        f"X-Gateway-Vorgang: {notice.vorgang}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: quoted-printable",
        "Content-Language: de, en",
        f"X-Gateway-Notice: {'held' if held else 'crossed'}",
    ]
    return lines([*top, ""]) + quoted_printable(_text(notice, held, subject))


def _text(notice: HeldNotice, held: bool, subject: str) -> str:
    who = _one_line(notice.other_name) or notice.other_address
    who = f"{who} <{notice.other_address}>" if who != notice.other_address else who
    at_de = notice.other_accepted_at.astimezone(dt.UTC).strftime("%d.%m.%Y %H:%M UTC")
    at_en = notice.other_accepted_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    what_de = f"„{subject}“ ({notice.vorgang})" if subject else notice.vorgang
    what_en = f'"{subject}" ({notice.vorgang})' if subject else notice.vorgang
    quoted = "\n".join(f"| {line}" for line in notice.excerpt.splitlines()) or "| (kein Text / no text)"
    if held:
        due_de = due_en = ""
        if notice.due_at is not None:
            then_de = "gesendet" if notice.after_timeout == "release" else "zurückgezogen"
            then_en = "sent" if notice.after_timeout == "release" else "withdrawn"
            due = notice.due_at.astimezone(dt.UTC)
            due_de = f"\nOhne Entscheidung wird sie am {due.strftime('%d.%m.%Y %H:%M UTC')} {then_de}."
            due_en = f"\nWithout a decision it will be {then_en} at {due.strftime('%Y-%m-%d %H:%M UTC')}."
        paragraphs = [
            "Diese Nachricht wurde automatisch erstellt.\nThis message was generated automatically.",
            f"Ihre Antwort auf {what_de} wurde zurückgehalten: {who} hat am {at_de} bereits "
            f"geantwortet, nachdem die Nachricht bei Ihnen angekommen war.{due_de}\n"
            f"Trotzdem senden: eine beliebige E-Mail an {notice.send_address}\n"
            f"Zurückziehen: eine beliebige E-Mail an {notice.withdraw_address}",
            f"Your reply to {what_en} was held: {who} answered at {at_en}, after the message "
            f"had reached you.{due_en}\n"
            f"Send mine anyway: any mail to {notice.send_address}\n"
            f"Withdraw mine: any mail to {notice.withdraw_address}",
        ]
    else:
        paragraphs = [
            "Diese Nachricht wurde automatisch erstellt.\nThis message was generated automatically.",
            f"Ihre Antwort auf {what_de} wurde gesendet. {who} hatte am {at_de} bereits geantwortet, "
            "nachdem die Nachricht bei Ihnen angekommen war.",
            f"Your reply to {what_en} was sent. {who} had answered at {at_en}, after the message had "
            "reached you.",
        ]
    paragraphs.append(f"Die Antwort von {who} beginnt so / The answer of {who} begins:\n{quoted}")
    return "\n\n".join(paragraphs) + "\n"


def _one_line(text: str) -> str:
    return " ".join(bytes_to_text(as_bytes(text)).split())
