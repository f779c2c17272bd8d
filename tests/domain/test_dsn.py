"""The bounce a member gets when their reply could not be relayed: RFC 3464 form, both languages, safe."""

from __future__ import annotations

import quopri
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.answers import DeliveryReport, Kind, RecipientStatus, classify, delivery_report
from gateway.domain.dsn import build_failure_report, report_subject

ORIGINAL_HEADERS = (
    b"Received: from mail.kunde-a.example by mx.gateway.example; Fri, 27 Nov 2026 09:00:01 +0100\n"
    b"From: SB-A1 <sb-a1@kunde-a.example>\n"
    b"To: schaden@makler.example\n"
    b"Subject: =?utf-8?q?AW:_[VG-2026-000001]_Sch=C3=A4den?=\n"
    b"Message-ID: <relay.42@gateway.example>\n"
    b"X-Gateway-Vorgang: VG-2026-000001\n"
)
DIAGNOSTIC = "550 5.1.1 <schaden@makler.example>: Recipient address rejected: User unknown"
DATE = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)


def arguments(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "reporting_mta": "gateway.example",
        "original_envelope_id": "relay-42",
        "recipient": "schaden@makler.example",
        "status": "5.1.1",
        "action": "failed",
        "diagnostic": DIAGNOSTIC,
        "original_headers": ORIGINAL_HEADERS,
        "to": "SB-A1 <sb-a1@kunde-a.example>",
        "subject": "Unzustellbar / Undeliverable: AW: [VG-2026-000001] Schäden",
        "message_id": "<dsn.1@gateway.example>",
        "date": DATE,
        "explanation": "Das Gateway hat es 5 Mal versucht.\nThe gateway tried 5 times.",
    }
    return {**base, **changes}


def build(**changes: Any) -> bytes:
    return build_failure_report(**arguments(**changes))


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


def status_blocks(raw: bytes) -> list[dict[str, str]]:
    payload = parts(raw)[1].get_payload()
    assert isinstance(payload, list)
    blocks = [block for block in payload if isinstance(block, Message)]
    return [{name.lower(): str(value) for name, value in block.items()} for block in blocks]


# --- round trip --------------------------------------------------------------------------------------


def test_the_report_reads_back_as_the_report_it_is() -> None:
    raw = build()
    assert delivery_report(raw) == DeliveryReport(
        original_envelope_id="relay-42",
        original_message_id="<relay.42@gateway.example>",
        reporting_mta="gateway.example",
        recipients=(
            RecipientStatus(
                final_recipient="schaden@makler.example",
                original_recipient=None,
                action="failed",
                status="5.1.1",
                diagnostic_code=DIAGNOSTIC,
            ),
        ),
    )


@pytest.mark.parametrize("sender", ["", "gateway@gateway.example"])
def test_the_report_is_a_bounce_whoever_sends_it(sender: str) -> None:
    # Its content decides, not the envelope, although it says Auto-Submitted.
    assert classify(build(), envelope_sender=sender, max_received=30).kind is Kind.BOUNCE
    assert classify(build(), envelope_sender=sender, max_received=30).reason == (
        "multipart/report; report-type=delivery-status"
    )


def test_a_delayed_report_reads_back_as_delayed() -> None:
    report = delivery_report(build(action="delayed", status="4.4.1", original_envelope_id=None))
    assert report is not None
    assert report.original_envelope_id is None
    assert [(r.action, r.status, r.failed) for r in report.recipients] == [("delayed", "4.4.1", False)]


# --- form --------------------------------------------------------------------------------------------


def test_the_report_has_the_three_parts_of_rfc_3464_in_order() -> None:
    message = parse(build())
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [part.get_content_type() for part in parts(build())] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]


def test_the_report_headers() -> None:
    message = parse(build())
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@gateway.example>"
    assert message["To"] == "SB-A1 <sb-a1@kunde-a.example>"
    assert message["Subject"] == "Unzustellbar / Undeliverable: AW: [VG-2026-000001] Schäden"
    assert message["Message-ID"] == "<dsn.1@gateway.example>"
    assert message["Date"].datetime == DATE
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"
    # It answers the member's mail, so that their client shows it in the thread.
    assert message["In-Reply-To"] == "<relay.42@gateway.example>"
    assert message["References"] == "<relay.42@gateway.example>"
    assert not message.defects


def test_a_display_name_with_umlauts_is_encoded() -> None:
    raw = build(to='"Jürgen Müller, GF" <gf@kunde-a.example>')
    assert raw.isascii()
    assert str(parse(raw)["To"]) == '"Jürgen Müller, GF" <gf@kunde-a.example>'


def test_a_bare_address_is_a_to_header_too() -> None:
    assert parse(build(to="sb-a1@kunde-a.example"))["To"] == "sb-a1@kunde-a.example"


def test_every_line_ends_in_crlf_and_stays_short() -> None:
    # The member's own header lines are returned as they were; the report's lines are ours to keep short.
    raw = build(
        diagnostic="550 " + "word " * 200,
        subject="Undeliverable: " + "lang " * 40,
        original_headers=b"From: a@kunde-a.example\nSubject: s\n",
    )
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    lines = raw.split(b"\r\n")
    assert max(len(line) for line in lines) <= 78
    assert raw.endswith(b"--\r\n")


@pytest.mark.parametrize(
    ("subject", "shown"),
    [
        (
            "Nicht zugestellt / Undelivered: =?utf-8?q?AW:_Sch=C3=A4den?=",
            "Nicht zugestellt / Undelivered: AW: Schäden",
        ),
        (
            "Undelivered: =?utf-8?q?AW:_[VG-2026-000001]?=\r\n =?utf-8?q?_Sch=C3=A4den?=",
            "Undelivered: AW: [VG-2026-000001] Schäden",
        ),
        ("Undelivered: AW: Sch\udcc3\udca4den", "Undelivered: AW: Schäden"),
        ("x\r\nBcc: evil@attacker.example", "xBcc: evil@attacker.example"),
        # Decoded once it reads like an encoded word; it is written so that it is not decoded twice.
        ("=?utf-8?q?=3D=3Futf-8=3Fq=3Fx=3F=3D?=", "=?utf-8?q?x?="),
        ("a\x00b\tc", "a b c"),
    ],
)
def test_a_raw_subject_value_is_shown_as_a_mail_client_shows_it(subject: str, shown: str) -> None:
    # A caller may hand over a raw Subject value; whatever it holds, it becomes one line of text and
    # writes no header of its own.
    message = parse(build(subject=subject))
    assert str(message["Subject"]) == shown
    assert message["Bcc"] is None


@pytest.mark.parametrize(
    "subject",
    [
        "Undeliverable: AW: Schaden",
        "Unzustellbar: AW: Schäden",
        "Undeliverable: " + "x" * 300,
        "  spaced   out  ",
    ],
)
def test_the_subject_reads_back_as_given_and_stays_within_the_line_limit(subject: str) -> None:
    raw = build(subject=subject)
    assert " ".join(str(parse(raw)["Subject"]).split()) == " ".join(subject.split())
    assert max(len(line) for line in raw.split(b"\r\n")) <= 90  # ORIGINAL_HEADERS has one 90-byte line


def test_the_report_is_7bit_when_the_original_headers_are() -> None:
    assert build().isascii()


def test_the_status_fields() -> None:
    per_message, per_recipient = status_blocks(build())
    assert per_message == {"reporting-mta": "dns; gateway.example", "original-envelope-id": "relay-42"}
    assert per_recipient == {
        "final-recipient": "rfc822; schaden@makler.example",
        "action": "failed",
        "status": "5.1.1",
        "diagnostic-code": f"smtp; {DIAGNOSTIC}",
    }


def test_without_an_envelope_id_there_is_no_such_field() -> None:
    per_message, _ = status_blocks(build(original_envelope_id=None))
    assert per_message == {"reporting-mta": "dns; gateway.example"}


@pytest.mark.parametrize(
    ("diagnostic", "field"),
    [
        ("550 5.1.1 User unknown", "smtp; 550 5.1.1 User unknown"),
        ("421 4.4.2 timeout", "smtp; 421 4.4.2 timeout"),
        (
            "connect to ams.makler.example:25: Connection refused",
            "X-Gateway; connect to ams.makler.example:25: Connection refused",
        ),
        ("5500 is no reply code", "X-Gateway; 5500 is no reply code"),
        ("550-5.1.1 first line\n550 5.1.1 second line", "smtp; 550-5.1.1 first line 550 5.1.1 second line"),
        ("554 5.7.1 Zurückgewiesen: Spam", "smtp; 554 5.7.1 Zuruckgewiesen: Spam"),
        ("554 5.7.1 ⛔ 拒否", "smtp; 554 5.7.1 ? ??"),
    ],
)
def test_the_diagnostic_is_typed_and_one_ascii_line(diagnostic: str, field: str) -> None:
    raw = build(diagnostic=diagnostic)
    _, per_recipient = status_blocks(raw)
    assert per_recipient["diagnostic-code"] == field
    # People read the server's own words.
    assert " ".join(diagnostic.split()) in human_text(raw)


def test_without_a_diagnostic_there_is_no_such_field() -> None:
    raw = build(diagnostic=" \n ")
    _, per_recipient = status_blocks(raw)
    assert "diagnostic-code" not in per_recipient
    assert "der Server meldete" not in human_text(raw)


def test_the_original_headers_are_returned_with_crlf_and_without_the_body() -> None:
    raw = build(original_headers=ORIGINAL_HEADERS + b"\nthe body must not be returned\n")
    returned = parts(raw)[2]
    content = returned.get_payload(decode=True)
    assert isinstance(content, bytes)
    assert content == ORIGINAL_HEADERS.replace(b"\n", b"\r\n")
    assert b"the body must not be returned" not in raw


def test_8bit_original_headers_are_returned_as_they_were_without_nul() -> None:
    raw = build(original_headers=b"From: J\xfcrgen <gf@kunde-a.example>\r\nSubject: a\x00b\r\n")
    assert b"Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" in raw
    assert b"From: J\xfcrgen <gf@kunde-a.example>\r\nSubject: ab\r\n" in raw
    assert b"\x00" not in raw


def test_without_original_headers_the_third_part_is_left_out() -> None:
    raw = build(original_headers=b"")
    assert [part.get_content_type() for part in parts(raw)] == ["text/plain", "message/delivery-status"]
    assert parse(raw)["In-Reply-To"] is None
    report = delivery_report(raw)
    assert report is not None
    assert report.original_message_id is None


def test_the_same_arguments_give_the_same_bytes() -> None:
    assert build() == build()
    assert build() != build(recipient="leistung@makler.example")
    boundary_1 = parse(build()).get_boundary()
    boundary_2 = parse(build(explanation="other")).get_boundary()
    assert boundary_1
    assert boundary_2
    assert boundary_1 != boundary_2


# --- what people read --------------------------------------------------------------------------------


def test_the_text_says_what_failed_and_why_in_german_and_english() -> None:
    text = human_text(build())
    for sentence in [
        "Ihre Nachricht „AW: [VG-2026-000001] Schäden“ an schaden@makler.example konnte nicht zugestellt "
        "werden.",
        "Grund: Die Empfängeradresse gibt es nicht.",
        'Your message "AW: [VG-2026-000001] Schäden" to schaden@makler.example could not be delivered.',
        "Reason: The recipient address does not exist.",
        "Status 5.1.1; der Server meldete: 550 5.1.1",
        "Status 5.1.1; the server said: 550 5.1.1",
        "Das Gateway hat es 5 Mal versucht.\nThe gateway tried 5 times.",
    ]:
        assert sentence in text


def test_the_text_part_is_declared_utf8_quoted_printable_in_both_languages() -> None:
    part = parts(build())[0]
    assert part.get_content_charset() == "utf-8"
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert part["Content-Language"] == "de, en"


def test_a_delay_says_delivery_goes_on() -> None:
    text = human_text(build(action="delayed", status="4.4.1"))
    assert "ist noch nicht zugestellt; es wird weiter versucht." in text
    assert "has not been delivered yet; delivery will be retried." in text
    assert "konnte nicht zugestellt werden" not in text


def test_without_an_original_subject_the_text_says_your_message() -> None:
    text = human_text(build(original_headers=b"From: a@kunde-a.example\r\n"))
    assert "Ihre Nachricht an schaden@makler.example konnte nicht" in text
    assert "Your message to schaden@makler.example could not" in text


@pytest.mark.parametrize(
    ("status", "german", "english"),
    [
        ("5.1.1", "Die Empfängeradresse gibt es nicht.", "The recipient address does not exist."),
        ("5.1.2", "Die Domain der Empfängeradresse gibt es nicht", "The recipient's domain does not exist"),
        ("5.1.10", "Die Empfängeradresse wurde nicht angenommen.", "The recipient address was not accepted."),
        ("5.2.2", "Das Postfach des Empfängers ist voll.", "The recipient's mailbox is full."),
        ("4.2.1", "nimmt keine Nachrichten an.", "The recipient's mailbox accepts no mail."),
        ("5.3.4", "Die Nachricht ist zu groß.", "The message is too large."),
        ("4.4.7", "Die Zustellung hat zu lange gedauert.", "Delivery took too long."),
        (
            "4.4.1",
            "Der Server des Empfängers war nicht erreichbar.",
            "The recipient's server could not be reached.",
        ),
        (
            "5.7.1",
            "aus Sicherheits- oder Richtliniengründen abgelehnt.",
            "refused the message for security or policy",
        ),
        ("5.0.0", "Die Zustellung ist fehlgeschlagen.", "Delivery failed."),
        ("5.9.9", "Die Zustellung ist fehlgeschlagen.", "Delivery failed."),
    ],
)
def test_the_status_code_is_explained(status: str, german: str, english: str) -> None:
    text = human_text(build(status=status))
    assert german in text
    assert english in text


def test_long_lines_of_the_explanation_survive_quoted_printable() -> None:
    explanation = "Ä" * 200 + "  \n\tend with a tab\t"
    raw = build(explanation=explanation)
    encoded = raw.split(b"Content-Language: de, en\r\n\r\n", 1)[1].split(b"\r\n--=_dsn_", 1)[0]
    assert max(len(line) for line in encoded.split(b"\r\n")) <= 76
    decoded = quopri.decodestring(encoded.replace(b"\r\n", b"\n")).decode("utf-8")
    assert "Ä" * 200 + "\n\tend with a tab" in decoded


# --- refusals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"to": "a@kunde-a.example\nBcc: evil@attacker.example"}, "to"),
        ({"to": "nobody"}, "to"),
        ({"to": "Jürgen <jürgen@kunde-a.example>"}, "to"),
        ({"recipient": "schaden@makler.example\r\nX: y"}, "recipient"),
        ({"recipient": "not an address"}, "recipient"),
        ({"recipient": "schäden@makler.example"}, "recipient"),
        ({"reporting_mta": "gateway.example\r\nX: y"}, "reporting_mta"),
        ({"reporting_mta": "gate way"}, "reporting_mta"),
        ({"reporting_mta": ""}, "reporting_mta"),
        ({"message_id": "dsn.1@gateway.example"}, "message_id"),
        ({"message_id": "<dsn.1@gateway.example>\r\nX: y"}, "message_id"),
        ({"original_envelope_id": "relay+42"}, "original_envelope_id"),
        ({"original_envelope_id": "relay 42"}, "original_envelope_id"),
        ({"original_envelope_id": ""}, "original_envelope_id"),
        ({"status": "5.1"}, "status"),
        ({"status": "6.1.1"}, "status"),
        ({"status": "5.1.1 "}, "status"),
        ({"action": "bounced"}, "action"),
        ({"action": "Failed"}, "action"),
        ({"action": "delayed", "status": "5.1.1"}, "delayed"),
        ({"action": "failed", "status": "2.0.0"}, "failed"),
        ({"date": datetime(2026, 11, 27, 9, 30)}, "timezone"),
    ],
)
def test_values_that_cannot_be_written_safely_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(**changes)


def test_a_failed_delivery_may_carry_a_4xx_status() -> None:
    # An MTA that gives up after days reports "failed" with the last temporary status.
    report = delivery_report(build(status="4.4.7"))
    assert report is not None
    assert report.recipients[0].failed


def test_a_date_in_any_zone_is_written_with_its_offset() -> None:
    date = datetime(2026, 11, 27, 10, 30, tzinfo=timezone(timedelta(hours=1)))
    assert b"Date: Fri, 27 Nov 2026 10:30:00 +0100\r\n" in build(date=date)


def test_8bit_bytes_of_a_server_reply_are_read_as_text() -> None:
    # aiosmtplib and friends hand over undecodable reply bytes as surrogates (surrogateescape).
    raw = build(
        diagnostic=b"550 5.1.1 Empf\xe4nger unbekannt".decode("ascii", "surrogateescape"),
        explanation="lone \ud800 surrogate",
        subject=b"Undelivered: Sch\xc3\xa4den".decode("ascii", "surrogateescape"),
    )
    assert "der Server meldete: 550 5.1.1 Empfänger unbekannt" in human_text(raw)
    assert "lone ? surrogate" in human_text(raw)
    assert status_blocks(raw)[1]["diagnostic-code"] == "smtp; 550 5.1.1 Empfanger unbekannt"
    assert str(parse(raw)["Subject"]) == "Undelivered: Schäden"


def test_a_diagnostic_cannot_write_headers() -> None:
    raw = build(diagnostic="550 no\r\nBcc: evil@attacker.example\r\n\r\nFinal-Recipient: rfc822; evil@x")
    message = parse(raw)
    assert message["Bcc"] is None
    blocks = status_blocks(raw)
    assert len(blocks) == 2
    assert blocks[1]["final-recipient"] == "rfc822; schaden@makler.example"
    report = delivery_report(raw)
    assert report is not None
    assert [r.final_recipient for r in report.recipients] == ["schaden@makler.example"]


_ONE_LINE = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\x85"), max_size=120
)


# Surrogates too: text decoded with surrogateescape (a server reply, a raw header value) carries them.
_ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=300)


@settings(max_examples=150, deadline=None)
@given(
    diagnostic=_ANY_TEXT,
    explanation=_ANY_TEXT,
    subject=_ONE_LINE,
    status=st.sampled_from(["5.1.1", "4.4.7", "5.7.26", "4.2.2"]),
    headers=st.binary(max_size=300),
)
def test_any_text_gives_a_report_that_reads_back(
    diagnostic: str, explanation: str, subject: str, status: str, headers: bytes
) -> None:
    raw = build(
        diagnostic=diagnostic,
        explanation=explanation,
        subject=subject,
        status=status,
        original_headers=headers,
    )
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert classify(raw, envelope_sender="", max_received=30).kind is Kind.BOUNCE
    report = delivery_report(raw)
    assert report is not None
    assert report.original_envelope_id == "relay-42"
    assert [(r.final_recipient, r.action, r.status) for r in report.recipients] == [
        ("schaden@makler.example", "failed", status)
    ]
    assert " ".join(str(parse(raw)["Subject"]).split()) == " ".join(subject.split())


# --- the subject of the member's mail, whatever its encoding (issue 13, item 8) ------------------------

# The same subject as a mail client may write it: raw 8-bit UTF-8 (RFC 6532), raw 8-bit latin-1 (old
# clients; read as windows-1252), and RFC 2047 encoded words in either charset.
SUBJECT_FORMS = [
    pytest.param("Re: Rückfrage".encode(), id="8bit-utf8"),
    pytest.param("Re: Rückfrage".encode("latin-1"), id="8bit-latin1"),
    pytest.param(b"=?utf-8?q?Re=3A_R=C3=BCckfrage?=", id="rfc2047-utf8"),
    pytest.param(b"Re: =?iso-8859-1?b?Uvxja2ZyYWdl?=", id="rfc2047-latin1"),
]


def headers_with_subject(subject: bytes) -> bytes:
    return (
        b"From: SB-A1 <sb-a1@kunde-a.example>\r\nTo: schaden@makler.example\r\n"
        b"Subject: " + subject + b"\r\nMessage-ID: <relay.42@gateway.example>\r\n"
    )


@pytest.mark.parametrize("subject", SUBJECT_FORMS)
def test_without_a_subject_the_report_is_named_after_the_decoded_subject_of_the_mail(subject: bytes) -> None:
    # relay.py once read the subject with compat32, whose Header for 8-bit bytes turns into text with
    # each byte replaced: "Nicht zugestellt / Undelivered: Re: R\ufffd\ufffdckfrage".
    raw = build(subject=None, original_headers=headers_with_subject(subject))
    assert str(parse(raw)["Subject"]) == "Nicht zugestellt / Undelivered: Re: Rückfrage"
    text = human_text(raw)
    assert "Ihre Nachricht „Re: Rückfrage“ an schaden@makler.example" in text
    assert 'Your message "Re: Rückfrage" to schaden@makler.example' in text
    assert "\ufffd" not in raw.decode("utf-8", "surrogateescape")


def test_a_delay_report_is_named_as_one() -> None:
    raw = build(
        subject=None, action="delayed", status="4.4.7", original_headers=headers_with_subject(b"Frage")
    )
    assert str(parse(raw)["Subject"]) == "Verzögert / Delayed: Frage"


def test_without_an_original_subject_the_report_subject_is_the_lead_alone() -> None:
    raw = build(subject=None, original_headers=b"From: sb-a1@kunde-a.example\r\n")
    assert str(parse(raw)["Subject"]) == "Nicht zugestellt / Undelivered:"


def test_report_subject_keeps_the_text_it_is_given() -> None:
    assert report_subject("failed", "Re: Rückfrage") == "Nicht zugestellt / Undelivered: Re: Rückfrage"
    assert report_subject("delayed", "") == "Verzögert / Delayed:"
