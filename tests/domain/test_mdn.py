"""Read notifications to the back office: who may be asked for one, and the RFC 8098 report, safe."""

from __future__ import annotations

import quopri
import re
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import parseaddr
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.answers import Kind, classify
from gateway.domain.mdn import NotificationRequest, build_read_notification, notification_request

BACKOFFICE = "ams@makler-muster.example"
READER = "sb-b1@kunde-b.example"
ORIGINAL = (
    b"Received: from ams.makler-muster.example by gateway.example; Fri, 27 Nov 2026 09:00:01 +0100\r\n"
    b"From: Makler Muster <ams@makler-muster.example>\r\n"
    b"To: SB-B1 <sb-b1@kunde-b.example>\r\n"
    b"Subject: =?utf-8?q?[VG-2026-000001]_Sch=C3=A4den?=\r\n"
    b"Message-ID: <orig.42@ams.example>\r\n"
    b"Disposition-Notification-To: Makler Muster <ams@makler-muster.example>\r\n"
    b"\r\n"
    b"Bitte senden Sie uns die Schadenfotos.\r\n"
)
DATE = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)


# --- whether a mail asks, and where the answer may go ---------------------------------------------------


def mail(*headers: str, body: bytes = b"Text\r\n") -> bytes:
    return "".join(f"{h}\r\n" for h in headers).encode("utf-8") + b"\r\n" + body


def asked(
    raw: bytes, envelope_sender: str = BACKOFFICE, from_address: str | None = BACKOFFICE
) -> NotificationRequest:
    return notification_request(raw, envelope_sender=envelope_sender, from_address=from_address)


def test_a_mail_without_the_field_asks_for_nothing() -> None:
    request = asked(mail(f"From: {BACKOFFICE}", "Subject: x"))
    assert request == NotificationRequest(None, request.reason, asked=False)
    assert "Disposition-Notification-To" in request.reason


@pytest.mark.parametrize(
    "value",
    [
        BACKOFFICE,
        f"<{BACKOFFICE}>",
        f"Makler Muster <{BACKOFFICE}>",
        f'"Muster, Makler" <{BACKOFFICE}>',
        "AMS@Makler-Muster.EXAMPLE",  # the gateway folds addresses (gateway.domain.addresses)
        f"=?utf-8?q?Sch=C3=A4den?= <{BACKOFFICE}>",
        f"Schäden <{BACKOFFICE}>",  # raw UTF-8 in the display name (RFC 6532)
        f"Makler Muster\r\n <{BACKOFFICE}>",  # folded
        f"{BACKOFFICE} (Schadenabteilung)",
    ],
)
def test_one_address_equal_to_the_envelope_sender_is_asked_for(value: str) -> None:
    request = asked(mail(f"From: {BACKOFFICE}", f"Disposition-Notification-To: {value}"))
    assert request.address == BACKOFFICE
    assert request.asked


def test_the_from_address_counts_when_the_envelope_sender_is_a_bounce_address() -> None:
    raw = mail(f"From: {BACKOFFICE}", f"Disposition-Notification-To: {BACKOFFICE}")
    request = asked(raw, envelope_sender="bounces+4711@ams.example", from_address=BACKOFFICE)
    assert request.address == BACKOFFICE


def test_the_envelope_sender_counts_when_from_names_someone_else() -> None:
    raw = mail(
        "From: Sachbearbeiterin <anna@makler-muster.example>", f"Disposition-Notification-To: {BACKOFFICE}"
    )
    request = asked(raw, envelope_sender=BACKOFFICE, from_address="anna@makler-muster.example")
    assert request.address == BACKOFFICE


@pytest.mark.parametrize(
    ("envelope_sender", "from_address"),
    [("bounces@ams.example", "anna@makler-muster.example"), ("bounces@ams.example", None)],
)
def test_an_address_of_a_third_party_gets_no_automatic_notification(
    envelope_sender: str, from_address: str | None
) -> None:
    raw = mail(f"From: {BACKOFFICE}", "Disposition-Notification-To: victim@elsewhere.example")
    request = asked(raw, envelope_sender=envelope_sender, from_address=from_address)
    assert request.address is None
    assert request.asked
    assert "victim@elsewhere.example" in request.reason
    assert "RFC 8098" in request.reason


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        (
            (f"Disposition-Notification-To: {BACKOFFICE}", f"Disposition-Notification-To: {BACKOFFICE}"),
            "2 times",
        ),
        ((f"Disposition-Notification-To: {BACKOFFICE}, other@makler-muster.example",), "names 2 addresses"),
        (("Disposition-Notification-To: ",), "names 0 addresses"),
        (("Disposition-Notification-To: Makler Muster",), "not a list of addresses"),
        (("Disposition-Notification-To: ams@",), "cannot be read"),
        ((f"Disposition-Notification-To: Gruppe: {BACKOFFICE};",), "not a list of addresses"),
        ((f"Disposition-Notification-To: <{BACKOFFICE}> trailing",), "not a list of addresses"),
        (("Disposition-Notification-To: schäden@makler-muster.example",), "not a list of addresses"),
        (("Disposition-Notification-To: ams@makler-muster",), "not a valid ASCII address"),
    ],
)
def test_a_request_that_cannot_be_read_is_no_request(headers: tuple[str, ...], why: str) -> None:
    request = asked(mail(f"From: {BACKOFFICE}", *headers))
    assert request.address is None
    assert request.asked
    assert why in request.reason


def test_8bit_garbage_in_the_field_is_no_request() -> None:
    raw = b"From: ams@makler-muster.example\r\nDisposition-Notification-To: \xff\xfe@\x80\r\n\r\nx"
    request = asked(raw)
    assert (request.address, request.asked) == (None, True)


@pytest.mark.parametrize(
    ("headers", "envelope_sender", "why"),
    [
        ((), "", "null reverse-path"),
        (("Auto-Submitted: auto-generated",), BACKOFFICE, "Auto-Submitted"),
        (("Auto-Submitted: auto-replied; owner-email=x@y.example",), BACKOFFICE, "Auto-Submitted"),
        (
            ('Content-Type: multipart/report; report-type=disposition-notification; boundary="b"',),
            BACKOFFICE,
            "report",
        ),
    ],
)
def test_notifications_are_never_answered_with_notifications(
    headers: tuple[str, ...], envelope_sender: str, why: str
) -> None:
    raw = mail(f"From: {BACKOFFICE}", f"Disposition-Notification-To: {BACKOFFICE}", *headers)
    request = asked(raw, envelope_sender=envelope_sender)
    assert request.address is None
    assert why in request.reason


def test_auto_submitted_no_is_a_person_s_mail() -> None:
    raw = mail(f"From: {BACKOFFICE}", f"Disposition-Notification-To: {BACKOFFICE}", "Auto-Submitted: No")
    assert asked(raw).address == BACKOFFICE


def test_only_the_header_section_is_read() -> None:
    raw = mail(f"From: {BACKOFFICE}", body=f"Disposition-Notification-To: {BACKOFFICE}\r\n".encode())
    assert not asked(raw).asked


def test_a_line_break_smuggled_into_the_field_yields_no_other_address() -> None:
    # Bare CR inside the value: to the parser it ends the field; what follows is another header line.
    field = f"Disposition-Notification-To: {BACKOFFICE}\rBcc: evil@x.example"
    raw = f"From: {BACKOFFICE}\r\n{field}\r\n\r\n".encode()
    request = asked(raw)
    assert request.address in (BACKOFFICE, None)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.text(max_size=40), st.one_of(st.none(), st.text(max_size=40)))
def test_never_raises(raw: bytes, envelope_sender: str, from_address: str | None) -> None:
    request = notification_request(
        b"Disposition-Notification-To: " + raw, envelope_sender=envelope_sender, from_address=from_address
    )
    if request.address is not None:
        assert request.address.isascii()
        assert re.fullmatch(r"[^\s@<>]+@[^\s@<>]+", request.address)


# --- the notification ----------------------------------------------------------------------------------


def arguments(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "reporting_ua": "gateway.example",
        "reader": READER,
        "reader_name": "Sabine Bäcker",
        "original_recipient": READER,
        "to": BACKOFFICE,
        "original_headers": ORIGINAL,
        "message_id": "<mdn.1@gateway.example>",
        "date": DATE,
    }
    return {**base, **changes}


def build(**changes: Any) -> bytes:
    return build_read_notification(**arguments(**changes))


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def parts(raw: bytes) -> list[Message]:
    payload = parse(raw).get_payload()
    assert isinstance(payload, list)
    return [part for part in payload if isinstance(part, Message)]


def human_text(raw: bytes) -> str:
    part = parts(raw)[0]
    assert isinstance(part, EmailMessage)
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def disposition_fields(raw: bytes) -> dict[str, str]:
    """The fields of the message/disposition-notification part, each once, by lower-case name."""
    part = parts(raw)[1]
    payload = part.get_payload()
    # The email package reads message/* parts as an enclosed message: its headers are the fields.
    assert isinstance(payload, list)
    (block,) = payload
    assert isinstance(block, Message)
    names = [name.lower() for name in block]
    assert len(names) == len(set(names)), names
    return {name.lower(): str(value) for name, value in block.items()}


def test_the_notification_has_the_three_parts_of_rfc_8098_in_order() -> None:
    message = parse(build())
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "disposition-notification"
    assert [p.get_content_type() for p in parts(build())] == [
        "text/plain",
        "message/disposition-notification",
        "text/rfc822-headers",
    ]
    assert not message.defects
    assert all(not p.defects for p in parts(build()))


def test_the_disposition_fields_name_the_member_who_read_it() -> None:
    assert disposition_fields(build()) == {
        "reporting-ua": "gateway.example; vorgang-gateway",
        "original-recipient": f"rfc822;{READER}",
        "final-recipient": f"rfc822;{READER}",
        "original-message-id": "<orig.42@ams.example>",
        "disposition": "manual-action/MDN-sent-automatically; displayed",
    }


def test_a_member_who_sees_the_mail_through_a_release_is_no_original_recipient() -> None:
    fields = disposition_fields(build(reader="sb-b2@kunde-b.example", original_recipient=None))
    assert "original-recipient" not in fields
    assert fields["final-recipient"] == "rfc822;sb-b2@kunde-b.example"


def test_a_mail_without_message_id_is_named_by_its_headers_only() -> None:
    headers = re.sub(rb"Message-ID: [^\r]*\r\n", b"", ORIGINAL)
    raw = build(original_headers=headers)
    assert "original-message-id" not in disposition_fields(raw)
    message = parse(raw)
    assert message["In-Reply-To"] is None
    assert message["References"] is None


def test_the_header_fields_of_the_notification() -> None:
    message = parse(build())
    assert str(message["From"]) == f"Sabine Bäcker <{READER}>", "RFC 8098 §3: the person it is about"
    assert str(message["To"]) == BACKOFFICE
    assert str(message["Subject"]) == "Gelesen / Read: [VG-2026-000001] Schäden"
    assert message["Date"].datetime == DATE
    assert message["Message-ID"] == "<mdn.1@gateway.example>"
    assert message["In-Reply-To"] == "<orig.42@ams.example>"
    assert message["References"] == "<orig.42@ams.example>"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Disposition-Notification-To"] is None, "RFC 8098 §3: an MDN asks for no MDN"
    assert message["MIME-Version"] == "1.0"
    assert sorted(message.keys()) == sorted(
        [
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "In-Reply-To",
            "References",
            "Auto-Submitted",
            "MIME-Version",
            "Content-Type",
        ]
    )


def test_a_member_without_display_name_is_named_by_address() -> None:
    raw = build(reader_name="")
    assert str(parse(raw)["From"]) == READER
    assert f"von {READER} geöffnet" in human_text(raw)
    assert f"for {READER}" not in human_text(raw)


def test_the_text_says_in_german_and_english_who_opened_what() -> None:
    text = human_text(build())
    assert (
        "Ihre Nachricht „[VG-2026-000001] Schäden“ wurde von Sabine Bäcker <sb-b1@kunde-b.example> geöffnet."
        in text
    )
    assert (
        'Your message "[VG-2026-000001] Schäden" was opened by Sabine Bäcker <sb-b1@kunde-b.example>.' in text
    )
    assert "nicht, dass sie gelesen oder verstanden wurde" in text
    assert "not that it was read or understood" in text
    assert "für Sabine Bäcker versandt, ohne nachzufragen" in text
    assert "on behalf of Sabine Bäcker without asking them" in text
    assert parts(build())[0]["Content-Language"] == "de, en"


def test_the_original_header_section_is_attached_without_its_body() -> None:
    attached = parts(build())[2].get_payload()
    assert isinstance(attached, str)
    assert (
        attached.replace("\r\n", "\n") == ORIGINAL.split(b"\r\n\r\n")[0].decode().replace("\r\n", "\n") + "\n"
    )
    assert b"Schadenfotos" not in build()


def test_an_8bit_original_header_section_is_declared_8bit() -> None:
    headers = ORIGINAL.replace(
        b"Subject: =?utf-8?q?[VG-2026-000001]_Sch=C3=A4den?=", "Subject: Schäden".encode()
    )
    raw = build(original_headers=headers)
    assert parts(raw)[2]["Content-Transfer-Encoding"] == "8bit"
    assert str(parse(raw)["Subject"]) == "Gelesen / Read: Schäden"
    head = raw.split(b"\r\n--=_mdn_", 1)[0]
    assert head.isascii(), "only the attached header section may carry 8-bit bytes"
    assert raw.split(b"Content-Type: text/rfc822-headers", 1)[0].isascii()


def test_a_windows_1252_subject_reads_as_people_read_it() -> None:
    headers = ORIGINAL.replace(
        b"Subject: =?utf-8?q?[VG-2026-000001]_Sch=C3=A4den?=", b"Subject: Sch\xe4den \x84Kfz\x93"
    )
    assert str(parse(build(original_headers=headers))["Subject"]) == "Gelesen / Read: Schäden „Kfz“"


def test_a_mail_without_subject() -> None:
    headers = re.sub(rb"Subject: [^\r]*\r\n", b"", ORIGINAL)
    raw = build(original_headers=headers)
    assert str(parse(raw)["Subject"]) == "Gelesen / Read:"
    assert "Ihre Nachricht wurde von" in human_text(raw)
    assert "Your message was opened by" in human_text(raw)


def test_lines_end_in_crlf_and_stay_short() -> None:
    long_name = "Ä" * 120
    raw = build(
        reader_name=long_name, original_headers=ORIGINAL.replace(b"Subject: ", b"Subject: " + b"Lang " * 60)
    )
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    head = raw.split(b"--=_mdn_", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n")), head
    for word in re.findall(rb"=\?[^?]+\?[qQbB]\?[^?]*\?=", head):
        assert len(word) <= 75, word
    assert rfc2047_name(raw) == long_name
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


def rfc2047_name(raw: bytes) -> str:
    """The From display name as an RFC 2047 reader shows it (whitespace between encoded words dropped)."""
    value = str(BytesParser(policy=policy.compat32).parsebytes(raw, headersonly=True)["From"])
    display_name, _ = parseaddr(value)
    return str(make_header(decode_header(display_name)))


def test_a_long_name_is_split_between_its_words() -> None:
    name = "Sabine Bäcker-Müllerstraßenhausen Großkopf Überlänge Namenszusatz"
    raw = build(reader_name=name)
    assert rfc2047_name(raw) == name
    # Python's own reader keeps the folding as a space: still no word is broken in two.
    assert " ".join(str(parse(raw)["From"].addresses[0].display_name).split()) == name


def test_the_same_arguments_give_the_same_bytes() -> None:
    assert build() == build()
    assert build() != build(reader="sb-b2@kunde-b.example")
    boundaries = {re.search(rb'boundary="([^"]+)"', build(reader_name=n)).group(1) for n in ("A", "B")}  # type: ignore[union-attr]
    assert len(boundaries) == 2


def test_a_date_keeps_its_zone() -> None:
    berlin = DATE.astimezone(timezone(timedelta(hours=1)))
    assert parse(build(date=berlin))["Date"].datetime == berlin
    assert "+0100" in str(parse(build(date=berlin))["Date"])


def test_the_gateway_itself_reads_it_as_an_auto_reply_never_an_answer() -> None:
    # Should a back office send it back to a reply address, it is recorded and not relayed.
    result = classify(build(), envelope_sender="", max_received=30)
    assert result.kind is Kind.AUTO_REPLY


def test_the_text_part_is_quoted_printable_utf8() -> None:
    part = parts(build())[0]
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert part.get_content_charset() == "utf-8"
    encoded = part.get_payload(decode=False)
    assert isinstance(encoded, str)
    assert "Bäcker" in quopri.decodestring(encoded.encode()).decode("utf-8")


# --- what it refuses -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"reporting_ua": "gateway.example\r\nBcc: evil@x.example"},
        {"reporting_ua": "not a host"},
        {"reporting_ua": ""},
        {"reader": "sb-b1@kunde-b.example\r\nBcc: evil@x.example"},
        {"reader": "sb-b1"},
        {"reader": "jörg@kunde-b.example"},
        {"reader": "a b@kunde-b.example"},
        {"reader_name": "Sabine\r\nBcc: evil@x.example"},
        {"reader_name": "Sabine\nBcc: evil@x.example"},
        {"reader_name": "Sabine\x00"},
        {"reader_name": "Sabine\u2028Bcc: evil@x.example"},
        {"original_recipient": "x@y.example\r\nBcc: evil@x.example"},
        {"original_recipient": "nobody"},
        {"to": "ams@makler-muster.example\r\nBcc: evil@x.example"},
        {"to": "ams@makler-muster.example\nBcc: evil@x.example"},
        {"to": "not an address"},
        {"to": "schäden@makler-muster.example"},
        {"message_id": "<mdn.1@gateway.example>\r\nBcc: evil@x.example"},
        {"message_id": "mdn.1@gateway.example"},
        {"message_id": "<mdn 1@gateway.example>"},
        {"date": datetime(2026, 11, 27, 9, 30)},  # naive on purpose
    ],
)
def test_values_that_would_write_their_own_header_lines_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (the message varies by field)
        build(**changes)


def test_header_lines_hidden_in_the_original_stay_in_the_text() -> None:
    # An encoded word may encode CR LF; decoded, it must not become a header line of the notification.
    headers = ORIGINAL.replace(
        b"Subject: =?utf-8?q?[VG-2026-000001]_Sch=C3=A4den?=",
        b"Subject: =?utf-8?q?x=0D=0ABcc:_evil@x.example?=",
    )
    message = parse(build(original_headers=headers))
    assert message["Bcc"] is None
    assert "evil@x.example" in str(message["Subject"])
    assert "\n" not in str(message["Subject"])


def test_a_message_id_with_spaces_inside_is_read_without_them() -> None:
    headers = ORIGINAL.replace(
        b"Message-ID: <orig.42@ams.example>", b"Message-ID: <orig.42@ams.example\r\n >"
    )
    assert (
        disposition_fields(build(original_headers=headers))["original-message-id"] == "<orig.42@ams.example>"
    )


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=80),
    subject=st.binary(max_size=200).filter(lambda b: b"\r" not in b and b"\n" not in b),
)
def test_any_name_and_subject_give_a_well_formed_notification(name: str, subject: bytes) -> None:
    headers = b"From: ams@makler-muster.example\r\nSubject: " + subject + b"\r\nMessage-ID: <a@b.example>\r\n"
    raw = build(reader_name=name, original_headers=headers)
    message = parse(raw)
    assert not message.defects
    assert message["From"].addresses[0].addr_spec == READER
    assert rfc2047_name(raw) == " ".join(name.split())
    assert str(message["Subject"]).startswith("Gelesen / Read:")
    assert set(message.keys()) <= {
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "In-Reply-To",
        "References",
        "Auto-Submitted",
        "MIME-Version",
        "Content-Type",
    }
    assert disposition_fields(raw)["final-recipient"] == f"rfc822;{READER}"
    head = raw.split(b"--=_mdn_", 1)[0]
    assert head.isascii()
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


# --- the subject of the back office's mail, whatever its encoding (issue 13, item 8) --------------------


@pytest.mark.parametrize(
    "subject",
    [
        pytest.param("Rückfrage".encode(), id="8bit-utf8"),
        pytest.param("Rückfrage".encode("latin-1"), id="8bit-latin1"),
        pytest.param(b"=?utf-8?b?UsO8Y2tmcmFnZQ==?=", id="rfc2047-utf8"),
        pytest.param(b"=?iso-8859-1?q?R=FCckfrage?=", id="rfc2047-latin1"),
    ],
)
def test_the_subject_is_read_as_a_mail_client_shows_it(subject: bytes) -> None:
    original = ORIGINAL.replace(b"Subject: =?utf-8?q?[VG-2026-000001]_Sch=C3=A4den?=", b"Subject: " + subject)
    raw = build(original_headers=original)
    assert str(parse(raw)["Subject"]) == "Gelesen / Read: Rückfrage"
    assert "Ihre Nachricht „Rückfrage“ wurde von" in human_text(raw)
    assert 'Your message "Rückfrage" was opened by' in human_text(raw)
    assert "\ufffd" not in raw.decode("utf-8", "surrogateescape")
