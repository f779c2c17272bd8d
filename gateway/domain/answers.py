"""Whether mail arriving at a reply address is a member's answer, or an auto-reply, a bounce or a loop.

Only answers are relayed to the back office and set ``\\Answered``; everything else is recorded in the
Vorgang and goes no further (DESIGN.md §5). :func:`classify` decides on the raw message and its envelope
sender, and says why in a sentence a person understands. :func:`delivery_report` reads what a delivery
status notification (RFC 3464) says about which mail failed for whom, so that a bounce can be matched to
the mail the gateway relayed.

The rules, first hit wins (:data:`RULES`):

1. loop: the gateway's loop marker header, or more Received headers than allowed;
2. bounce by content: a ``multipart/report`` of report-type ``delivery-status``, a bare
   ``message/delivery-status``, or such a part anywhere outside an enclosed message (a bounce forwarded
   as an attachment is a person's mail);
3. auto-reply by content: a ``multipart/report`` of any other type (read receipts, feedback reports);
4. bounce marks: ``X-Failed-Recipients``, MAILER-DAEMON as sender, a delivery-failure subject;
5. auto-reply marks: ``Auto-Submitted`` other than ``no``, ``X-Autoreply``, ``X-Autorespond``,
   ``X-MS-Exchange-Inbox-Rules-Loop``, ``Precedence`` bulk/junk/list/auto_reply, an out-of-office subject;
6. bounce by envelope: a null reverse-path, when nothing above said what the message is;
7. otherwise an answer.

Two orderings are deliberate. A delivery report decides over ``Auto-Submitted``, because Postfix, Exim,
Exchange and Gmail put ``Auto-Submitted: auto-replied`` on their bounces; plain-text bounces are told
apart from auto-replies by their bounce marks for the same reason. And a null reverse-path decides last,
because RFC 3834 §3.3 asks auto-responders to send from the null reverse-path too, and they do: four of
the six real auto-replies in the shared corpus came from ``<>``. Either way the message is not relayed;
the order only decides what is recorded and whether a bounce is matched to a relayed mail.

``X-Auto-Response-Suppress`` is not a signal. It asks others not to answer automatically and says
nothing about the message itself; ticket systems and some clients set it on mail people wrote.

Nothing here raises on any bytes: every rule reads the message on its own, and a rule that cannot read
what it needs does not fire.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import Compat32
from email.utils import collapse_rfc2231_value, getaddresses
from enum import StrEnum
from typing import TypeVar

from gateway.domain.headers import bytes_to_text, decode_header_value
from gateway.domain.parsing import extract_msg_ids

__all__ = [
    "MAX_READ_BYTES",
    "RULES",
    "Classification",
    "DeliveryReport",
    "Kind",
    "RecipientStatus",
    "classify",
    "delivery_report",
    "read_arrival_kind",
]

# What a report says sits in its header section and its first parts; an attachment beyond this adds
# nothing, and the cap keeps a 50 MB answer from costing more than a 2 MB one.
MAX_READ_BYTES = 2 * 1024 * 1024

# Reports nest a level or two (multipart/mixed > multipart/report > message/delivery-status); a hostile
# message with thousands of parts must not cost thousands of looks.
_MAX_PARTS = 200
_MAX_DEPTH = 8
_MAX_RECIPIENTS = 1000
# A DSN whose MIME is too broken to parse is read as text (see _text_report); its fields come early.
_MAX_TEXT_REPORT_CHARS = 256 * 1024

_T = TypeVar("_T")

_STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_RETURNED_HEADER_TYPES = frozenset({"text/rfc822-headers"})
_RETURNED_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global", "message/global-headers"})


class Kind(StrEnum):
    """What arrived at a reply address. The values are what ``messages.kind`` stores: an answer is a
    ``message`` like every other mail in a Vorgang."""

    ANSWER = "message"
    AUTO_REPLY = "auto-reply"
    BOUNCE = "bounce"
    LOOP = "loop"


@dataclass(frozen=True, slots=True)
class Classification:
    """The kind of a message and the reason, e.g. ``Auto-Submitted: auto-replied``; recorded with it."""

    kind: Kind
    reason: str


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """One per-recipient block of a delivery report.

    ``final_recipient`` and ``original_recipient`` are bare addresses in lower case (the address type
    such as ``rfc822;`` removed); ``final_recipient`` is the original recipient where a broken report
    names only that. ``action`` is lower case (``failed``, ``delayed``, ``delivered``, ``relayed``,
    ``expanded``) and decides whether delivery failed: an MTA that gives up after days says ``failed``
    with a 4.x.x status. ``status`` is the enhanced status code (``5.1.1``), or the field as written when
    it holds none. ``diagnostic_code`` is the remote server's words without the diagnostic type.
    """

    final_recipient: str
    original_recipient: str | None
    action: str
    status: str
    diagnostic_code: str | None

    @property
    def failed(self) -> bool:
        return self.action == "failed"


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What a delivery status notification says, in the form needed to find the mail it is about.

    ``original_message_id`` keeps its angle brackets; it is the Message-ID of the returned message or
    its headers, else the report's ``X-Original-Message-ID`` (Gmail), else the report's own In-Reply-To
    or the last of its References.
    """

    original_envelope_id: str | None
    original_message_id: str | None
    reporting_mta: str | None
    recipients: tuple[RecipientStatus, ...]


# --- the rules ---------------------------------------------------------------------------------------


class _RawValues(Compat32):
    """compat32, but header values come back exactly as parsed (8-bit bytes as surrogates), so that
    decoding them stays with :func:`decode_header_value`."""

    def header_fetch_parse(self, name: str, value: str) -> str:
        return value


_POLICY = _RawValues()


@dataclass(frozen=True, slots=True)
class _Arrival:
    """One message at a reply address, as the rules see it."""

    message: Message
    envelope_sender: str
    max_received: int
    loop_marker: str


_Rule = Callable[[_Arrival], Classification | None]


def _loop_marker(arrival: _Arrival) -> Classification | None:
    # The gateway stamps what it sends; seeing the stamp again means its own mail came back to it.
    if arrival.message.get(arrival.loop_marker) is None:
        return None
    return Classification(Kind.LOOP, f"{arrival.loop_marker} header: mail the gateway sent came back")


def _hop_count(arrival: _Arrival) -> Classification | None:
    count = len(arrival.message.get_all("Received", []))
    if count <= arrival.max_received:
        return None
    return Classification(Kind.LOOP, f"{count} Received headers (limit {arrival.max_received})")


def _delivery_status(arrival: _Arrival) -> Classification | None:
    report = _find_report(arrival.message)
    return Classification(Kind.BOUNCE, report.reason) if report is not None else None


def _other_report(arrival: _Arrival) -> Classification | None:
    # A multipart/report is always written by a program: a read receipt (disposition-notification), an
    # abuse report (feedback-report) and the like. Delivery reports were taken by the rule before.
    if arrival.message.get_content_type() != "multipart/report":
        return None
    report_type = _report_type(arrival.message)
    if not report_type:
        return Classification(Kind.AUTO_REPLY, "multipart/report without report-type")
    return Classification(Kind.AUTO_REPLY, f"multipart/report; report-type={report_type}")


def _failed_recipients(arrival: _Arrival) -> Classification | None:
    # Exim and Gmail name the failed addresses here, also in bounces without a DSN part.
    if arrival.message.get("X-Failed-Recipients") is None:
        return None
    return Classification(Kind.BOUNCE, "X-Failed-Recipients header")


def _mailer_daemon(arrival: _Arrival) -> Classification | None:
    # MAILER-DAEMON is the mail system itself, never a person; some MTAs send bounces from it instead
    # of the null reverse-path (sendmail records the null reverse-path as <MAILER-DAEMON>).
    if _local_part(_bare(arrival.envelope_sender)) == "mailer-daemon":
        return Classification(Kind.BOUNCE, "reverse-path MAILER-DAEMON")
    value = arrival.message.get("From")
    if value is not None:
        for _, address in getaddresses([_text(value)]):
            if _local_part(address) == "mailer-daemon":
                return Classification(Kind.BOUNCE, "From MAILER-DAEMON")
    return None


# The subjects MTAs give their plain-text bounces, as the leading words (any case). A person's mail
# about a bounce says "Fwd:", "WG:", "Re:" or "AW:" first.
_FAILURE_SUBJECT = (
    r"undeliver(?:able|ed)|returned mail|mail delivery (?:failed|failure)|delivery failure"
    r"|delivery (?:status )?notification|delivery has failed|failure notice|mail failure|mail failed"
    r"|delayed mail|mail system error|unzustellbar|nicht zustellbar|zustellung fehlgeschlagen"
    r"|non remis|non distribuable"
)


def _auto_submitted(arrival: _Arrival) -> Classification | None:
    # RFC 3834: "no" is the only value that says a person sent it; a comment may follow the keyword,
    # as in sendmail's "auto-generated (failure)". An empty field says nothing either way.
    keyword = _keyword(arrival.message, "Auto-Submitted")
    if not keyword or keyword == "no":
        return None
    return Classification(Kind.AUTO_REPLY, f"Auto-Submitted: {keyword}")


# Headers that only automatic responders write. Exchange sets X-MS-Exchange-Inbox-Rules-Loop on what an
# inbox rule sends, and out-of-office replies are such rules; a person's reply never carries it.
_AUTO_REPLY_HEADERS = ("X-Autoreply", "X-Autorespond", "X-MS-Exchange-Inbox-Rules-Loop")


def _auto_reply_header(arrival: _Arrival) -> Classification | None:
    for name in _AUTO_REPLY_HEADERS:
        if arrival.message.get(name) is not None:
            return Classification(Kind.AUTO_REPLY, f"{name} header")
    return None


_BULK_PRECEDENCE = frozenset({"bulk", "junk", "list", "auto_reply", "auto-reply"})


def _precedence(arrival: _Arrival) -> Classification | None:
    keyword = _keyword(arrival.message, "Precedence")
    if keyword not in _BULK_PRECEDENCE:
        return None
    return Classification(Kind.AUTO_REPLY, f"Precedence: {keyword}")


# Out-of-office subjects as the leading words (any case), in the forms mail systems write them:
# Outlook's "Automatic reply:" / "Automatische Antwort:" (and its French, Spanish, Italian and Dutch
# twins), Sieve vacation's "Auto:", "Autoreply", "Out of Office", and German notices people set up
# themselves ("Abwesenheitsnotiz", "Abwesend", "Urlaub", "Außer Haus"). "Auto" alone is German for car,
# so only "Auto:" with its colon counts; answers start with "Re:" or "AW:", never with these.
_ABSENCE_SUBJECT = (
    r"out[ -]of[ -](?:the[ -])?office|auto(?:matic)?[ -]?(?:reply|replied|response|respon\w*|antwort)"
    r"|auto:|automatische (?:antwort|abwesenheitsnotiz)|abwesenheit\w*|abwesend|urlaub"
    r"|au(?:ß|ss)er haus|réponse automatique|respuesta automática|risposta automatica"
    r"|automatisch antwoord"
)


def _subject_rule(kind: Kind, what: str, leading_words: str) -> _Rule:
    """The rule that gives ``kind`` to mail whose subject starts with ``leading_words`` (alternatives of a
    regular expression, in any case, ending at a word's end), saying ``what`` and the words it found."""
    pattern = re.compile(f"(?:{leading_words})(?!\\w)", re.IGNORECASE)

    def rule(arrival: _Arrival) -> Classification | None:
        match = pattern.match(_subject(arrival.message))
        return None if match is None else Classification(kind, f'{what} ("{match.group(0)}")')

    return rule


def _null_sender(arrival: _Arrival) -> Classification | None:
    # RFC 5321 4.5.5: notifications go out from the null reverse-path so that they are never answered.
    if _bare(arrival.envelope_sender):
        return None
    return Classification(Kind.BOUNCE, "null reverse-path")


RULES: tuple[_Rule, ...] = (
    _loop_marker,
    _hop_count,
    _delivery_status,
    _other_report,
    _failed_recipients,
    _mailer_daemon,
    _subject_rule(Kind.BOUNCE, "delivery-failure subject", _FAILURE_SUBJECT),
    _auto_submitted,
    _auto_reply_header,
    _precedence,
    _subject_rule(Kind.AUTO_REPLY, "out-of-office subject", _ABSENCE_SUBJECT),
    _null_sender,
)
"""The rules in the order they are tried; the first that fires decides (see the module docstring)."""

_ANSWER = Classification(Kind.ANSWER, "no sign of an automatic message")


def classify(
    raw: bytes, *, envelope_sender: str, max_received: int, loop_marker: str = "X-Gateway-Loop"
) -> Classification:
    """What ``raw``, which arrived from ``envelope_sender`` (``""`` or ``"<>"`` for the null reverse-path),
    is; never raises on any bytes.

    ``max_received`` is the most Received headers an honest message has; ``loop_marker`` names the
    header the gateway puts on what it sends (case-insensitive). A rule that cannot read what it needs
    does not fire; a message nothing can be read from is an answer, so that a person's mail is never
    dropped for being badly written (the Received limit at ingress still stops loops).
    """
    message = _read(raw, max_received, loop_marker)
    if isinstance(message, Classification):
        return message
    return _classify(message, envelope_sender, max_received, loop_marker)


def read_arrival_kind(
    raw: bytes, *, envelope_sender: str, max_received: int, loop_marker: str = "X-Gateway-Loop"
) -> tuple[Classification, DeliveryReport | None]:
    """:func:`classify` and :func:`delivery_report` of ``raw`` from one parse (the costly part of both)."""
    message = _read(raw, max_received, loop_marker)
    if isinstance(message, Classification):
        return message, None
    return _classify(message, envelope_sender, max_received, loop_marker), _report_of(message, raw)


def _read(raw: bytes, max_received: int, loop_marker: str) -> Message | Classification:
    """``raw`` parsed, once the arguments are checked; an answer saying why when it cannot be read."""
    if max_received < 0:
        raise ValueError(f"max_received is a number of headers, not {max_received}")
    if not loop_marker.strip():
        raise ValueError("loop_marker names a header; it is empty")
    try:
        return _parse(raw)
    except Exception as exc:  # the promise is "never raises"; the parser is not known to, but bytes are bytes
        return Classification(Kind.ANSWER, f"the message could not be read ({type(exc).__name__})")


def _classify(message: Message, envelope_sender: str, max_received: int, loop_marker: str) -> Classification:
    arrival = _Arrival(message, envelope_sender, max_received, loop_marker.strip())
    for rule in RULES:
        try:
            found = rule(arrival)
        except Exception:  # one unreadable header costs its rule, not the classification
            continue
        if found is not None:
            return found
    return _ANSWER


# --- delivery reports --------------------------------------------------------------------------------


def delivery_report(raw: bytes) -> DeliveryReport | None:
    """The fields of the delivery status notification ``raw``, or None if it is none; never raises.

    A DSN is what :func:`classify` calls a bounce by content. A ``multipart/report`` whose parts cannot be
    found (broken boundaries) is read as text for its status fields.
    """
    try:
        message = _parse(raw)
    except Exception:  # the promise is "never raises"
        return None
    return _report_of(message, raw)


def _report_of(message: Message, raw: bytes) -> DeliveryReport | None:
    try:
        report = _find_report(message)
    except Exception:  # the promise is "never raises"
        return None
    if report is None:
        return None

    no_blocks: list[dict[str, str]] = []
    blocks = _guarded(lambda: _status_blocks(report.status_parts), no_blocks)
    text_blocks = no_blocks
    if not any(_is_recipient_block(block) for block in blocks):
        # Boundaries that do not match (seen in the wild) hide every part; the fields are still there.
        found = _guarded(lambda: _text_report(bytes(raw)), no_blocks)
        if any(_is_recipient_block(block) for block in found):
            text_blocks = found
            blocks = [block for block in found if _is_status_block(block)]

    per_message: dict[str, str] = {}
    recipients: list[RecipientStatus] = []
    for block in blocks:
        if _is_recipient_block(block):
            if len(recipients) < _MAX_RECIPIENTS:
                recipients.append(_recipient(block))
        else:
            for name, value in block.items():
                per_message.setdefault(name, value)

    envelope_id = per_message.get("original-envelope-id", "").strip() or None
    reporting_mta = _after_type(per_message.get("reporting-mta", "")) or None
    message_id = (
        _guarded(lambda: _returned_message_id(report.root), None)
        or _guarded(lambda: _text_returned_message_id(text_blocks), None)
        or _first_id(per_message.get("x-original-message-id", ""))
        or _guarded(lambda: _own_thread_id(message), None)
    )
    return DeliveryReport(envelope_id, message_id, reporting_mta, tuple(recipients))


@dataclass(frozen=True, slots=True)
class _Report:
    root: Message
    status_parts: tuple[Message, ...]
    reason: str


def _find_report(message: Message) -> _Report | None:
    top = message.get_content_type()
    status_parts = tuple(part for part in _parts(message) if part.get_content_type() in _STATUS_TYPES)
    if top in _STATUS_TYPES:
        return _Report(message, status_parts, f"bare {top}")
    if top == "multipart/report" and _report_type(message) == "delivery-status":
        return _Report(message, status_parts, "multipart/report; report-type=delivery-status")
    if status_parts:
        return _Report(message, status_parts, f"{status_parts[0].get_content_type()} part")
    return None


def _parts(root: Message) -> Iterator[Message]:
    """``root`` and its parts, depth first, never into an enclosed message, within the limits."""
    stack: list[tuple[Message, int]] = [(root, 0)]
    seen = 0
    while stack and seen < _MAX_PARTS:
        part, depth = stack.pop()
        seen += 1
        yield part
        if depth < _MAX_DEPTH and part.get_content_maintype() == "multipart":
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend((child, depth + 1) for child in reversed(payload) if isinstance(child, Message))


def _status_blocks(parts: Sequence[Message]) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    for part in parts:
        payload = part.get_payload()
        if not isinstance(payload, list):
            blocks.extend(_text_blocks(_body_text(part)))
            continue
        if part.get_content_type() == "message/delivery-status":
            # Python's parser splits message/delivery-status into one header block per field group.
            blocks.extend(_fields(block.items()) for block in payload if isinstance(block, Message))
        elif payload and isinstance(payload[0], Message):
            # message/global-delivery-status (RFC 6533) is parsed like an enclosed message: its first
            # field group as headers, the rest as the body.
            first = payload[0]
            blocks.append(_fields(first.items()))
            blocks.extend(_text_blocks(_body_text(first)))
    return [block for block in blocks if block]


_FIELD_LINE = re.compile(r"([\x21-\x39\x3b-\x7e]+)[ \t]*:(.*)")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _text_blocks(text: str) -> list[dict[str, str]]:
    """Groups of ``Name: value`` lines separated by blank lines; continuation lines unfolded."""
    blocks: list[dict[str, str]] = []
    current: list[list[str]] = []
    for line in _LINE_BREAK.split(text):
        if not line.strip():
            if current:
                blocks.append(_fields((name, value) for name, value in current))
                current = []
        elif line[0] in " \t" and current:
            current[-1][1] += " " + line.strip()
        elif (match := _FIELD_LINE.match(line)) is not None:
            current.append([match.group(1), match.group(2)])
    if current:
        blocks.append(_fields((name, value) for name, value in current))
    return blocks


def _fields(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Lower-case names to decoded one-line values, runs of spaces left by folding made one; the first
    of each name wins."""
    fields: dict[str, str] = {}
    for name, value in items:
        fields.setdefault(name.strip().lower(), " ".join(_text(value).split()))
    return fields


def _body_text(part: Message) -> str:
    # get_payload() without decoding would read 8-bit bytes in the part's charset, ASCII by default, and
    # replace them; UTF-8 is what RFC 6533 reports carry, so the bytes are read as headers are.
    data = part.get_payload(decode=True)
    return bytes_to_text(data) if isinstance(data, bytes) else ""


_PER_MESSAGE_FIELDS = frozenset({"reporting-mta", "original-envelope-id", "dsn-gateway", "arrival-date"})
_RECIPIENT_FIELDS = frozenset({"final-recipient", "original-recipient"})


def _is_recipient_block(block: dict[str, str]) -> bool:
    return not _RECIPIENT_FIELDS.isdisjoint(block)


def _is_status_block(block: dict[str, str]) -> bool:
    return _is_recipient_block(block) or not _PER_MESSAGE_FIELDS.isdisjoint(block)


_STATUS_CODE = re.compile(r"(?<![0-9.])[245]\.[0-9]{1,3}\.[0-9]{1,3}(?![0-9.])")


def _recipient(block: dict[str, str]) -> RecipientStatus:
    original = _address(block.get("original-recipient", "")) or None
    final = _address(block.get("final-recipient", "")) or original or ""
    words = block.get("action", "").split()
    status = block.get("status", "").strip()
    code = _STATUS_CODE.search(status)
    diagnostic = block.get("diagnostic-code")
    return RecipientStatus(
        final_recipient=final,
        original_recipient=original,
        action=words[0].lower() if words else "",
        status=code.group(0) if code else status,
        diagnostic_code=_after_type(diagnostic) if diagnostic is not None else None,
    )


def _returned_message_id(root: Message) -> str | None:
    """The Message-ID of the returned message or returned headers in the report."""
    for part in _parts(root):
        ctype = part.get_content_type()
        value: str | None = None
        if ctype in _RETURNED_HEADER_TYPES:
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                value = BytesParser(policy=_POLICY).parsebytes(data, headersonly=True).get("Message-ID")
        elif ctype in _RETURNED_MESSAGE_TYPES:
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                value = payload[0].get("Message-ID")
        if value is not None and (found := _first_id(_text(value))):
            return found
    return None


# A blank line: an empty first line, or a line end followed by another; CR LF is one line end, never two.
_BLANK_LINE = re.compile(rb"(?:\A|\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")


def _text_report(raw: bytes) -> list[dict[str, str]]:
    """The field groups of a report's body read as plain text (for MIME too broken to find parts in)."""
    blank = _BLANK_LINE.search(raw, 0, MAX_READ_BYTES)
    if blank is None:
        return []
    return _text_blocks(bytes_to_text(raw[blank.end() : blank.end() + _MAX_TEXT_REPORT_CHARS]))


def _text_returned_message_id(blocks: Sequence[dict[str, str]]) -> str | None:
    # In a report read as text, the returned headers are the first group after the status groups that
    # carries a Message-ID.
    last_status = max((i for i, block in enumerate(blocks) if _is_status_block(block)), default=None)
    if last_status is None:
        return None
    for block in blocks[last_status + 1 :]:
        if "message-id" in block and (found := _first_id(block["message-id"])):
            return found
    return None


def _own_thread_id(message: Message) -> str | None:
    # The report answers the returned mail: In-Reply-To names it, else the last of References does.
    value = message.get("In-Reply-To")
    if value is not None and (found := _first_id(_text(value))):
        return found
    references = extract_msg_ids(" ".join(_text(v) for v in message.get_all("References", [])))
    return references[-1] if references else None


# --- small readers -----------------------------------------------------------------------------------


def _parse(raw: bytes) -> Message:
    return BytesParser(policy=_POLICY).parsebytes(bytes(raw[:MAX_READ_BYTES]))


def _text(value: object) -> str:
    """A raw header or field value as one line of text (8-bit and RFC 2047 decoded)."""
    text = value if isinstance(value, str) else str(value)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte; the parser makes none, but str is str
        raw = text.encode("utf-8", "replace")
    return decode_header_value(raw)


def _subject(message: Message) -> str:
    value = message.get("Subject")
    return _text(value) if value is not None else ""


def _keyword(message: Message, name: str) -> str:
    """The first word of the token-like field ``name``, lower case ("" without the field):
    "auto-generated (failure)" -> "auto-generated"."""
    value = message.get(name)
    if value is None:
        return ""
    words = re.split(r"[\s;(]+", _text(value), maxsplit=1)
    return words[0].lower() if words else ""


def _report_type(message: Message) -> str:
    value = message.get_param("report-type", header="content-type")
    if value is None:
        return ""
    # A quote left open is still the value it meant.
    return _text(collapse_rfc2231_value(value)).strip().strip('"').strip().lower()


def _bare(path: str) -> str:
    """A reverse-path without its angle brackets and spaces: "<>" -> ""."""
    return path.strip().removeprefix("<").removesuffix(">").strip()


def _local_part(address: str) -> str:
    return address.rpartition("@")[0].lower() if "@" in address else address.lower()


def _after_type(value: str) -> str:
    """A typed DSN value without its type: "rfc822; a@b" -> "a@b", "smtp; 550 …" -> "550 …"."""
    kind, separator, rest = value.partition(";")
    return (rest if separator else kind).strip()


def _address(value: str) -> str:
    return _after_type(value).strip("<> \t").lower()


def _first_id(value: str) -> str | None:
    ids = extract_msg_ids(value)
    return ids[0] if ids else None


def _guarded(compute: Callable[[], _T], fallback: _T) -> _T:
    try:
        return compute()
    except Exception:  # one unreadable piece of a report costs that piece, not the report
        return fallback
