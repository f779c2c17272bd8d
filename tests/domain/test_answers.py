"""What arrives at reply addresses: answers, auto-replies, bounces and loops, and what a bounce reports.

Hand-written samples live in ``tests/data/answers/``; the real-world ones come from the shared corpora
(``GATEWAY_TEST_CORPORA``, found by ``tests/corpora.py``: skipped with the reason when they are missing,
a failure where ``GATEWAY_REQUIRE_CORPORA=1``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain import answers
from gateway.domain.answers import (
    MAX_READ_BYTES,
    Classification,
    DeliveryReport,
    Kind,
    RecipientStatus,
    classify,
    delivery_report,
)
from tests import corpora
from tests.corpora import PROBLEM, ROOT, SAMPLES

DATA = Path(__file__).parent.parent / "data"
ANSWERS = DATA / "answers"
LIMIT = 30
SENDER = "sb-a1@kunde-a.example"


def sample(name: str) -> bytes:
    return (ANSWERS / name).read_bytes()


def kind_of(raw: bytes, *, sender: str = SENDER, max_received: int = LIMIT) -> Classification:
    return classify(raw, envelope_sender=sender, max_received=max_received)


def mail(*headers: str, body: str = "Hallo,\n\nanbei die Unterlagen.\n") -> bytes:
    """A plain message from a member with the given extra header lines."""
    base = [
        "From: SB-A1 <sb-a1@kunde-a.example>",
        "To: reply+c1.a1b2c3d4@reply.gateway.example",
        "Message-ID: <m.1@kunde-a.example>",
        "Date: Fri, 27 Nov 2026 09:00:00 +0100",
    ]
    if not any(h.lower().startswith("subject:") for h in headers):
        base.append("Subject: AW: [VG-2026-000001] Schadenmeldung")
    return ("\n".join([*base, *headers]) + "\n\n" + body).encode("utf-8")


DSN_BODY = (
    "--b\n"
    "Content-Type: text/plain\n\n"
    "Your message could not be delivered.\n\n"
    "--b\n"
    "Content-Type: message/delivery-status\n\n"
    "Reporting-MTA: dns; mx.makler.example\n\n"
    "Final-Recipient: rfc822; schaden@makler.example\n"
    "Action: failed\n"
    "Status: 5.1.1\n\n"
    "--b--\n"
)


def dsn(*headers: str, body: str = DSN_BODY) -> bytes:
    """A minimal multipart/report delivery report with the given extra header lines."""
    return mail(
        "MIME-Version: 1.0",
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"',
        *headers,
        body=body,
    )


# --- the contract with the rest of the gateway -------------------------------------------------------


def test_kind_values_are_what_messages_kind_stores() -> None:
    # gateway/db/models.py: "message", or "auto-reply", "bounce", "loop" for what is not an answer.
    assert [kind.value for kind in Kind] == ["message", "auto-reply", "bounce", "loop"]


def test_a_member_answer_is_an_answer() -> None:
    assert kind_of(mail()) == Classification(Kind.ANSWER, "no sign of an automatic message")


def test_hand_written_member_answer_is_an_answer_despite_auto_response_suppress() -> None:
    # X-Auto-Response-Suppress asks others not to auto-respond; Outlook and ticket systems set it on mail
    # people wrote. The subject mentions "Automatische Antwort" and "Urlaub", but not as leading words.
    assert kind_of(sample("member-answer.eml")).kind is Kind.ANSWER


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_received"):
        classify(mail(), envelope_sender=SENDER, max_received=-1)
    with pytest.raises(ValueError, match="loop_marker"):
        classify(mail(), envelope_sender=SENDER, max_received=LIMIT, loop_marker=" ")


# --- loops -------------------------------------------------------------------------------------------


def received(count: int) -> list[str]:
    return [
        f"Received: from hop{i}.example by hop{i + 1}.example; Fri, 27 Nov 2026 09:00:00 +0100"
        for i in range(count)
    ]


def test_received_headers_up_to_the_limit_are_no_loop() -> None:
    assert kind_of(mail(*received(LIMIT))).kind is Kind.ANSWER


def test_one_received_header_over_the_limit_is_a_loop() -> None:
    assert kind_of(mail(*received(LIMIT + 1))) == Classification(Kind.LOOP, "31 Received headers (limit 30)")


def test_the_limit_is_the_callers() -> None:
    assert kind_of(mail(*received(3)), max_received=2).reason == "3 Received headers (limit 2)"
    assert kind_of(mail(*received(3)), max_received=3).kind is Kind.ANSWER


@pytest.mark.parametrize(
    "header", ["X-Gateway-Loop: 1", "x-gateway-loop: gateway.example", "X-GATEWAY-LOOP:"]
)
def test_the_loop_marker_is_a_loop_in_any_case_and_with_any_value(header: str) -> None:
    assert kind_of(mail(header)) == Classification(
        Kind.LOOP, "X-Gateway-Loop header: mail the gateway sent came back"
    )


def test_the_loop_marker_is_configurable() -> None:
    raw = mail("X-Other-Loop: yes")
    assert classify(raw, envelope_sender=SENDER, max_received=LIMIT).kind is Kind.ANSWER
    found = classify(raw, envelope_sender=SENDER, max_received=LIMIT, loop_marker="X-Other-Loop")
    assert found == Classification(Kind.LOOP, "X-Other-Loop header: mail the gateway sent came back")


def test_a_marker_inside_an_enclosed_message_is_no_loop() -> None:
    raw = mail(
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="x"',
        body="--x\nContent-Type: message/rfc822\n\nX-Gateway-Loop: 1\nSubject: old\n\nold\n--x--\n",
    )
    assert kind_of(raw).kind is Kind.ANSWER


def test_a_loop_beats_a_bounce_and_an_auto_reply() -> None:
    raw = dsn("Auto-Submitted: auto-replied", *received(LIMIT + 5))
    assert kind_of(raw, sender="").kind is Kind.LOOP
    assert kind_of(dsn("X-Gateway-Loop: 1"), sender="").kind is Kind.LOOP


# --- bounces -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["", "<>", " <> ", "< >"])
def test_the_null_reverse_path_is_a_bounce(sender: str) -> None:
    assert kind_of(mail(), sender=sender) == Classification(Kind.BOUNCE, "null reverse-path")


def test_a_delivery_report_is_a_bounce_even_when_it_says_auto_submitted() -> None:
    # Postfix, Exim, Exchange and Gmail all write "Auto-Submitted: auto-replied" on their bounces.
    for raw in (dsn("Auto-Submitted: auto-replied"), sample("postfix-dsn-auto-submitted.eml")):
        assert kind_of(raw) == Classification(Kind.BOUNCE, "multipart/report; report-type=delivery-status")
        assert kind_of(raw, sender="").kind is Kind.BOUNCE


@pytest.mark.parametrize(
    "content_type",
    [
        'multipart/report; report-type=delivery-status; boundary="b"',
        'Multipart/Report; report-type="Delivery-Status"; boundary="b"',
        'multipart/report; boundary="b";\n\treport-type=delivery-status',
    ],
)
def test_report_type_is_read_in_any_spelling(content_type: str) -> None:
    raw = mail("MIME-Version: 1.0", f"Content-Type: {content_type}", body=DSN_BODY)
    assert kind_of(raw).reason == "multipart/report; report-type=delivery-status"


def test_a_declared_report_is_a_bounce_even_when_its_parts_are_unreadable() -> None:
    raw = dsn(body="no boundary anywhere\n")
    assert kind_of(raw).kind is Kind.BOUNCE


def test_a_bare_delivery_status_is_a_bounce() -> None:
    raw = (
        b"Content-Type: message/delivery-status\n\n"
        b"Reporting-MTA: dns; mx.makler.example\n\n"
        b"Final-Recipient: rfc822; schaden@makler.example\nAction: delayed\nStatus: 4.4.1\n"
    )
    assert kind_of(raw) == Classification(Kind.BOUNCE, "bare message/delivery-status")


def test_a_delivery_status_part_in_a_mixed_message_is_a_bounce() -> None:
    raw = mail(
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="b"',
        body=DSN_BODY,
    )
    assert kind_of(raw) == Classification(Kind.BOUNCE, "message/delivery-status part")


def test_a_bounce_a_member_forwards_as_attachment_is_their_answer() -> None:
    raw = sample("forwarded-bounce.eml")
    assert kind_of(raw).kind is Kind.ANSWER
    assert delivery_report(raw) is None


def test_failed_recipients_header_is_a_bounce() -> None:
    found = kind_of(mail("X-Failed-Recipients: schaden@makler.example"))
    assert found == Classification(Kind.BOUNCE, "X-Failed-Recipients header")


def test_a_plain_text_bounce_is_a_bounce_though_it_says_auto_submitted() -> None:
    # Exim's bounce without a DSN part: its bounce marks decide over its Auto-Submitted.
    raw = sample("exim-plain-bounce.eml")
    assert kind_of(raw) == Classification(Kind.BOUNCE, "X-Failed-Recipients header")
    assert delivery_report(raw) is None


@pytest.mark.parametrize(
    "sender", ["MAILER-DAEMON@mx.makler.example", "<mailer-daemon@mx.makler.example>", "MAILER-DAEMON"]
)
def test_mailer_daemon_as_reverse_path_is_a_bounce(sender: str) -> None:
    assert kind_of(mail(), sender=sender) == Classification(Kind.BOUNCE, "reverse-path MAILER-DAEMON")


@pytest.mark.parametrize(
    "from_",
    [
        "From: MAILER-DAEMON@mx.makler.example (Mail Delivery System)",
        "From: Mail Delivery System <Mailer-Daemon@mx.makler.example>",
    ],
)
def test_mailer_daemon_as_from_is_a_bounce(from_: str) -> None:
    raw = mail().replace(b"From: SB-A1 <sb-a1@kunde-a.example>", from_.encode())
    assert kind_of(raw) == Classification(Kind.BOUNCE, "From MAILER-DAEMON")


def test_a_person_called_daemon_is_no_bounce() -> None:
    raw = mail().replace(
        b"From: SB-A1 <sb-a1@kunde-a.example>", b"From: Mailer Daemon <m.daemon@kunde-a.example>"
    )
    assert kind_of(raw).kind is Kind.ANSWER


@pytest.mark.parametrize(
    ("subject", "words"),
    [
        ("Undeliverable: AW: [VG-2026-000001] Schaden", "Undeliverable"),
        ("Undelivered Mail Returned to Sender", "Undelivered"),
        ("Returned mail: see transcript for details", "Returned mail"),
        ("Mail delivery failed: returning message to sender", "Mail delivery failed"),
        ("Delivery Status Notification (Failure)", "Delivery Status Notification"),
        ("failure notice", "failure notice"),
        ("Unzustellbar: AW: Schaden", "Unzustellbar"),
        ("Nicht zustellbar: AW: Schaden", "Nicht zustellbar"),
        ("=?utf-8?Q?Unzustellbar:_AW:_Sch=C3=A4den?=", "Unzustellbar"),
    ],
)
def test_delivery_failure_subjects_are_bounces(subject: str, words: str) -> None:
    assert kind_of(mail(f"Subject: {subject}")) == Classification(
        Kind.BOUNCE, f'delivery-failure subject ("{words}")'
    )


@pytest.mark.parametrize(
    "subject",
    [
        "WG: Unzustellbar: AW: Schaden",
        "Fwd: Returned mail: see transcript for details",
        "AW: Undeliverable parcel for claim 4711",
        "Undeliverables from the warehouse",
    ],
)
def test_subjects_about_bounces_are_answers(subject: str) -> None:
    assert kind_of(mail(f"Subject: {subject}")).kind is Kind.ANSWER


# --- auto-replies ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "keyword"),
    [
        ("auto-replied", "auto-replied"),
        ("auto-generated", "auto-generated"),
        ("Auto-Replied", "auto-replied"),
        ("auto-generated (failure)", "auto-generated"),
        ("auto-replied; owner-email=sb-a1@kunde-a.example", "auto-replied"),
        ("auto-notified", "auto-notified"),
    ],
)
def test_auto_submitted_other_than_no_is_an_auto_reply(value: str, keyword: str) -> None:
    assert kind_of(mail(f"Auto-Submitted: {value}")) == Classification(
        Kind.AUTO_REPLY, f"Auto-Submitted: {keyword}"
    )


@pytest.mark.parametrize("value", ["no", "No", "no (a person wrote this)", ""])
def test_auto_submitted_no_or_empty_is_an_answer(value: str) -> None:
    assert kind_of(mail(f"Auto-Submitted: {value}")).kind is Kind.ANSWER


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("X-Autoreply: yes", "X-Autoreply header"),
        ("X-AutoReply: true", "X-Autoreply header"),
        ("X-Autorespond: Out of office", "X-Autorespond header"),
        ("X-MS-Exchange-Inbox-Rules-Loop: gf@kunde-a.example", "X-MS-Exchange-Inbox-Rules-Loop header"),
    ],
)
def test_auto_reply_headers_are_auto_replies(header: str, reason: str) -> None:
    assert kind_of(mail(header)) == Classification(Kind.AUTO_REPLY, reason)


def test_x_auto_response_suppress_alone_is_no_auto_reply() -> None:
    assert kind_of(mail("X-Auto-Response-Suppress: All")).kind is Kind.ANSWER


@pytest.mark.parametrize(
    ("value", "keyword"),
    [("bulk", "bulk"), ("junk", "junk"), ("list", "list"), ("auto_reply", "auto_reply"), ("Bulk", "bulk")],
)
def test_bulk_precedence_is_an_auto_reply(value: str, keyword: str) -> None:
    assert kind_of(mail(f"Precedence: {value}")) == Classification(Kind.AUTO_REPLY, f"Precedence: {keyword}")


@pytest.mark.parametrize("value", ["first-class", "normal", "urgent", ""])
def test_other_precedence_is_an_answer(value: str) -> None:
    assert kind_of(mail(f"Precedence: {value}")).kind is Kind.ANSWER


@pytest.mark.parametrize(
    ("subject", "words"),
    [
        ("Out of Office: [VG-2026-000001] Schaden", "Out of Office"),
        ("Out of office AutoReply: Schaden", "Out of office"),
        ("out-of-office", "out-of-office"),
        ("Automatic reply: [VG-2026-000001] Schaden", "Automatic reply"),
        ("AUTOMATIC REPLY: Schaden", "AUTOMATIC REPLY"),
        ("Auto: AW: [VG-2026-000001] Schaden", "Auto:"),
        ("Autoreply: Schaden", "Autoreply"),
        ("Auto-Reply: Schaden", "Auto-Reply"),
        ("Auto reply: Nyaan", "Auto reply"),
        ("AutoResponse - Schaden", "AutoResponse"),
        ("Abwesenheitsnotiz: Schaden", "Abwesenheitsnotiz"),
        ("Abwesenheit bis 3.12.", "Abwesenheit"),
        ("Automatische Antwort: Schaden", "Automatische Antwort"),
        ("Abwesend bis Montag", "Abwesend"),
        ("Urlaub bis 12. August", "Urlaub"),
        ("URLAUB", "URLAUB"),
        ("  Urlaub!", "Urlaub"),
        ("Außer Haus bis Freitag", "Außer Haus"),
        ("Réponse automatique : Schaden", "Réponse automatique"),
        ("=?utf-8?Q?Automatische_Antwort:_Sch=C3=A4den?=", "Automatische Antwort"),
        ("=?iso-8859-1?Q?Au=DFer_Haus?=", "Außer Haus"),
        ("=?UTF-8?B?QWJ3ZXNlbmhlaXRzbm90aXo6IFNjaMOkZGVu?=", "Abwesenheitsnotiz"),
    ],
)
def test_out_of_office_subjects_are_auto_replies(subject: str, words: str) -> None:
    assert kind_of(mail(f"Subject: {subject}")) == Classification(
        Kind.AUTO_REPLY, f'out-of-office subject ("{words}")'
    )


def test_an_8bit_out_of_office_subject_is_read_too() -> None:
    raw = mail().replace(
        b"Subject: AW: [VG-2026-000001] Schadenmeldung", b"Subject: Abwesend f\xfcr 2 Wochen"
    )
    assert kind_of(raw).reason == 'out-of-office subject ("Abwesend")'


@pytest.mark.parametrize(
    "subject",
    [
        "AW: Automatische Antwort: [VG-2026-000001] Schaden",
        "Re: Out of Office",
        "AW: Urlaub",
        "Urlaubsantrag für Juli",
        "Urlauber-Versicherung",
        "Auto Schaden vom 3. November",
        "Auto-Versicherung: Ihr Angebot",
        "Autounfall",
        "Automatically generated invoices",
        "Autorisierung",
        "",
    ],
)
def test_other_subjects_are_answers(subject: str) -> None:
    assert kind_of(mail(f"Subject: {subject}")).kind is Kind.ANSWER


def test_an_auto_reply_from_the_null_reverse_path_is_an_auto_reply() -> None:
    # RFC 3834 3.3: auto-responders send from <> too; only a message that says nothing else is a bounce.
    assert kind_of(mail("Auto-Submitted: auto-replied"), sender="").kind is Kind.AUTO_REPLY
    assert kind_of(mail("Subject: Automatic reply: Schaden"), sender="<>").kind is Kind.AUTO_REPLY


def test_bounce_marks_beat_auto_reply_marks() -> None:
    raw = mail("Auto-Submitted: auto-replied", "Subject: Undeliverable: Schaden")
    assert kind_of(raw).kind is Kind.BOUNCE


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("vacation-sieve.eml", "Auto-Submitted: auto-replied"),
        ("outlook-automatische-antwort.eml", "X-MS-Exchange-Inbox-Rules-Loop header"),
        ("abwesenheitsnotiz-plain.eml", 'out-of-office subject ("Abwesenheitsnotiz")'),
        ("read-receipt.eml", "multipart/report; report-type=disposition-notification"),
    ],
)
@pytest.mark.parametrize("sender", [SENDER, ""])
def test_hand_written_auto_replies(name: str, reason: str, sender: str) -> None:
    raw = sample(name)
    assert kind_of(raw, sender=sender) == Classification(Kind.AUTO_REPLY, reason)
    assert delivery_report(raw) is None


def test_a_report_of_no_type_is_an_auto_reply() -> None:
    raw = mail("MIME-Version: 1.0", 'Content-Type: multipart/report; boundary="b"', body="--b\n\nx\n--b--\n")
    assert kind_of(raw) == Classification(Kind.AUTO_REPLY, "multipart/report without report-type")


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(DATA.glob("*.eml")), ids=lambda path: path.name)
def test_the_broken_samples_are_read(path: Path) -> None:
    # 8-bit headers, NUL bytes, no blank line after the header: still classified, nothing raised.
    assert kind_of(path.read_bytes()).kind is Kind.ANSWER
    assert delivery_report(path.read_bytes()) is None


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"", Kind.ANSWER),
        (b"\x00\x00\x00", Kind.ANSWER),
        (b"Auto-Submitted: auto-replied\x00\n\nx", Kind.AUTO_REPLY),
        (b"Subject: \xff\xfe Urlaub\n\nx", Kind.ANSWER),
        (b"Subject: Urlaub \xff\xfe\n\nx", Kind.AUTO_REPLY),
        (b'Content-Type: multipart/report; report-type="delivery-status\n\n', Kind.BOUNCE),
        (b"Content-Type: multipart/report;;;; report-type = delivery-status ;\n\n", Kind.BOUNCE),
        (b"Content-Type: multipart/report; report-type=delivery-status\xff\n\n", Kind.AUTO_REPLY),
        (b"Content-Type: message/delivery-status\n\n\xff\x00:\n\n", Kind.BOUNCE),
        (b"From: =?utf-8?q?\xff?= <MAILER-DAEMON@x>\n\n", Kind.BOUNCE),
        (b'Content-Type: multipart/mixed; boundary="x"\n\n' + b"--x\n" * 5000, Kind.ANSWER),
    ],
)
def test_odd_bytes_are_classified(raw: bytes, kind: Kind) -> None:
    assert kind_of(raw).kind is kind


def test_a_rule_that_fails_costs_only_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(arrival: object) -> Classification | None:
        raise UnicodeError("no")

    monkeypatch.setattr(answers, "RULES", (broken, *answers.RULES))
    assert kind_of(mail("Precedence: bulk")).reason == "Precedence: bulk"


def test_a_message_that_cannot_be_read_is_an_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(raw: bytes) -> None:
        raise RecursionError("deep")

    monkeypatch.setattr(answers, "_parse", broken)
    assert kind_of(mail("Precedence: bulk")) == Classification(
        Kind.ANSWER, "the message could not be read (RecursionError)"
    )
    assert delivery_report(dsn()) is None


def test_what_lies_beyond_the_read_limit_is_not_read() -> None:
    # Headers decide as ever; a delivery-status part behind a huge first part is not looked for, which
    # keeps the cost of a 50 MB answer that of a 2 MB one.
    filler = "x" * MAX_READ_BYTES
    assert kind_of(mail("Precedence: bulk", body=filler + filler)).kind is Kind.AUTO_REPLY
    late = mail(
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="b"',
        body=f"--b\nContent-Type: text/plain\n\n{filler}\n" + DSN_BODY,
    )
    early = mail("MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="b"', body=DSN_BODY)
    assert kind_of(early).kind is Kind.BOUNCE
    assert kind_of(late).kind is Kind.ANSWER


_HEADER_NAMES = st.sampled_from(
    [
        "Subject",
        "From",
        "Content-Type",
        "Auto-Submitted",
        "Precedence",
        "Received",
        "X-Failed-Recipients",
        "In-Reply-To",
        "Content-Transfer-Encoding",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from(["", "<>", SENDER, "MAILER-DAEMON"]))
def test_no_bytes_make_classify_or_delivery_report_raise(raw: bytes, sender: str) -> None:
    assert isinstance(kind_of(raw, sender=sender), Classification)
    assert delivery_report(raw) is None or isinstance(delivery_report(raw), DeliveryReport)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_HEADER_NAMES, st.binary(max_size=80)), max_size=8), st.binary(max_size=500))
def test_no_header_values_make_classify_or_delivery_report_raise(
    headers: list[tuple[str, bytes]], body: bytes
) -> None:
    # The random fields come first, so they are the ones a rule reads; the report's own follow.
    raw = b"".join(name.encode() + b": " + value + b"\n" for name, value in headers) + dsn(
        body=body.decode("latin-1")
    )
    assert isinstance(kind_of(raw), Classification)
    report = delivery_report(raw)
    assert report is None or isinstance(report, DeliveryReport)


# --- delivery reports --------------------------------------------------------------------------------


def test_delivery_report_of_a_postfix_bounce() -> None:
    assert delivery_report(sample("postfix-dsn-auto-submitted.eml")) == DeliveryReport(
        original_envelope_id=None,
        original_message_id="<relay.42@gateway.example>",
        reporting_mta="mx.makler.example",
        recipients=(
            RecipientStatus(
                final_recipient="schaden@makler.example",
                original_recipient="schaden@makler.example",
                action="failed",
                status="5.1.1",
                diagnostic_code=(
                    "550 5.1.1 <schaden@makler.example>: Recipient address rejected: "
                    "User unknown in local recipient table"
                ),
            ),
        ),
    )


def test_delivery_report_with_envelope_id_two_recipients_and_crlf() -> None:
    raw = sample("exchange-report-crlf.eml")
    assert b"\r\n" in raw
    assert kind_of(raw).kind is Kind.BOUNCE
    report = delivery_report(raw)
    assert report is not None
    assert report.original_envelope_id == "relay-55"
    assert report.original_message_id == "<relay.55@gateway.example>"
    assert report.reporting_mta == "EX02.makler.example"
    first, second = report.recipients
    assert first == RecipientStatus(
        final_recipient="leistung-team@makler.example",
        original_recipient="leistung@makler.example",
        action="failed",
        status="5.2.2",
        diagnostic_code=(
            "554 5.2.2 mailbox full; "
            "STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded"
        ),
    )
    assert first.failed
    assert second == RecipientStatus("archiv@makler.example", None, "delayed", "4.4.1", None)
    assert not second.failed


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
def test_delivery_report_of_a_report_with_broken_boundaries_is_read_as_text(line_end: bytes) -> None:
    raw = sample("broken-boundary-dsn.eml").replace(b"\n", line_end)
    assert kind_of(raw, sender="").reason == "multipart/report; report-type=delivery-status"
    assert delivery_report(raw) == DeliveryReport(
        original_envelope_id="relay-77",
        original_message_id="<relay.77@gateway.example>",
        reporting_mta="relay.makler.example",
        recipients=(
            RecipientStatus(
                "vertrag@makler.example", None, "failed", "5.7.1", "554 5.7.1 Service unavailable"
            ),
        ),
    )


def test_delivery_report_of_an_internationalised_report() -> None:
    # RFC 6533: message/global-delivery-status with UTF-8 addresses and message/global-headers.
    raw = sample("global-dsn.eml")
    assert kind_of(raw).kind is Kind.BOUNCE
    assert delivery_report(raw) == DeliveryReport(
        original_envelope_id="relay-88",
        original_message_id="<relay.88@gateway.example>",
        reporting_mta="mx.makler.example",
        recipients=(
            RecipientStatus(
                "schäden@makler.example",
                None,
                "failed",
                "5.1.1",
                "550 5.1.1 Postfach unbekannt: schäden@makler.example",
            ),
        ),
    )


def test_delivery_report_of_a_bare_delivery_status() -> None:
    raw = (
        b"Content-Type: message/delivery-status\n\n"
        b"Reporting-MTA: dns; mx.makler.example\nOriginal-Envelope-Id: relay-9\n\n"
        b"Final-Recipient: rfc822; schaden@makler.example\nAction: failed\nStatus: 4.4.7\n"
    )
    assert delivery_report(raw) == DeliveryReport(
        "relay-9",
        None,
        "mx.makler.example",
        (RecipientStatus("schaden@makler.example", None, "failed", "4.4.7", None),),
    )


def status_body(*recipient_blocks: str, per_message: str = "Reporting-MTA: dns; mx.makler.example") -> str:
    blocks = "\n\n".join(recipient_blocks)
    return (
        "--b\nContent-Type: text/plain\n\nx\n\n"
        f"--b\nContent-Type: message/delivery-status\n\n{per_message}\n\n{blocks}\n\n--b--\n"
    )


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (
            "Final-Recipient: RFC822; <Schaden@Makler.Example>\nAction: Failed\n"
            "Status: 5.0.0 (permanent failure)",
            RecipientStatus("schaden@makler.example", None, "failed", "5.0.0", None),
        ),
        (
            "Original-Recipient: rfc822;schaden@makler.example\nAction: failed\nStatus: unknown",
            RecipientStatus("schaden@makler.example", "schaden@makler.example", "failed", "unknown", None),
        ),
        (
            "Final-Recipient: schaden@makler.example\nAction: delayed (retrying)\nStatus: 4.4.1",
            RecipientStatus("schaden@makler.example", None, "delayed", "4.4.1", None),
        ),
        (
            "Final-Recipient: rfc822; schaden@makler.example\n"
            "Diagnostic-Code: X-Postfix; connect to ams.makler.example[192.0.2.10]:25:\n"
            "    Connection refused",
            RecipientStatus(
                "schaden@makler.example",
                None,
                "",
                "",
                "connect to ams.makler.example[192.0.2.10]:25: Connection refused",
            ),
        ),
    ],
)
def test_recipient_fields_are_read_leniently(block: str, expected: RecipientStatus) -> None:
    report = delivery_report(dsn(body=status_body(block)))
    assert report is not None
    assert report.recipients == (expected,)


@pytest.mark.parametrize(
    ("headers", "returned", "per_message", "expected"),
    [
        pytest.param(
            ["In-Reply-To: <reply-to@x>"],
            "--b\nContent-Type: text/rfc822-headers\n\nMessage-ID: <returned@x>\nSubject: s\n\n",
            "X-Original-Message-ID: <gmail@x>",
            "<returned@x>",
            id="returned headers first",
        ),
        pytest.param(
            ["In-Reply-To: <reply-to@x>"],
            "--b\nContent-Type: message/rfc822\n\nMessage-ID: <enclosed@x>\nSubject: s\n\nbody\n\n",
            "",
            "<enclosed@x>",
            id="returned message",
        ),
        pytest.param(
            ["In-Reply-To: <reply-to@x>"],
            "--b\nContent-Type: text/rfc822-headers\nContent-Transfer-Encoding: base64\n\n"
            "TWVzc2FnZS1JRDogPGVuY29kZWRAeD4K\n\n",
            "",
            "<encoded@x>",
            id="returned headers base64",
        ),
        pytest.param(
            ["In-Reply-To: <reply-to@x>", "References: <a@x> <b@x>"],
            "--b\nContent-Type: text/rfc822-headers\n\nSubject: without an id\n\n",
            "X-Original-Message-ID: <gmail@x>",
            "<gmail@x>",
            id="x-original-message-id second",
        ),
        pytest.param(
            ["In-Reply-To: <reply-to@x>", "References: <a@x> <b@x>"],
            "",
            "",
            "<reply-to@x>",
            id="in-reply-to third",
        ),
        pytest.param(["References: <a@x>\n <b@x>"], "", "", "<b@x>", id="last reference fourth"),
        pytest.param([], "", "", None, id="none"),
    ],
)
def test_where_the_original_message_id_comes_from(
    headers: list[str], returned: str, per_message: str, expected: str | None
) -> None:
    body = (
        "--b\nContent-Type: message/delivery-status\n\n"
        f"Reporting-MTA: dns; mx.makler.example\n{per_message}\n\n"
        "Final-Recipient: rfc822; schaden@makler.example\nAction: failed\nStatus: 5.1.1\n\n"
        f"{returned}--b--\n"
    )
    raw = dsn(*headers, body=body).replace(b"Message-ID: <m.1@kunde-a.example>\n", b"")
    report = delivery_report(raw)
    assert report is not None
    assert report.original_message_id == expected


def test_a_forwarded_returned_message_inside_the_returned_message_is_not_read() -> None:
    # Only the report's own parts count; a DSN enclosed in the returned message is not this report.
    body = status_body("Final-Recipient: rfc822; a@x\nAction: failed\nStatus: 5.1.1").replace(
        "--b--\n",
        "--b\nContent-Type: message/rfc822\n\nMessage-ID: <outer@x>\nContent-Type: multipart/report; "
        'report-type=delivery-status; boundary="i"\n\n--i\nContent-Type: message/delivery-status\n\n'
        "Reporting-MTA: dns; inner\n\nFinal-Recipient: rfc822; inner@x\nAction: failed\nStatus: 5.0.0\n\n"
        "--i--\n--b--\n",
    )
    report = delivery_report(dsn(body=body))
    assert report is not None
    assert [r.final_recipient for r in report.recipients] == ["a@x"]
    assert report.original_message_id == "<outer@x>"
    assert report.reporting_mta == "mx.makler.example"


@pytest.mark.parametrize(
    "raw",
    [
        mail(),
        mail("Auto-Submitted: auto-replied"),
        mail("X-Failed-Recipients: a@x"),
        mail(
            "MIME-Version: 1.0",
            'Content-Type: multipart/report; report-type=disposition-notification; boundary="b"',
        ),
        b"",
    ],
)
def test_no_delivery_report_in_what_is_no_dsn(raw: bytes) -> None:
    assert delivery_report(raw) is None


def test_a_declared_report_with_nothing_readable_is_an_empty_report() -> None:
    assert delivery_report(dsn(body="nothing here\n")) == DeliveryReport(None, None, None, ())


# --- the shared corpora ------------------------------------------------------------------------------

# Samples in bounces/ that are no bounce to us, and why.
NOT_BOUNCES = {
    "bounces/sisimai/lhost-sendmail-14.eml": (
        "a person forwarding a bounce as quoted text ('Fwd: Returned mail'): From a person, no DSN part, no "
        "null sender, nothing automatic; arriving at a reply address it is that person's answer"
    ),
}
# not-bounces/ in sisimai's sense (no bounce it can read a recipient status from); what they are to us.
NOT_BOUNCE_KINDS = {
    "not-bounces/sisimai/is-not-bounce-01.eml": Kind.ANSWER,
    "not-bounces/sisimai/is-not-bounce-02.eml": Kind.ANSWER,
    # A mailbox's own "mailbox full" notice from <> with Auto-Submitted: automatic, never an answer.
    "not-bounces/sisimai/rb-issue-368-bug.eml": Kind.AUTO_REPLY,
}
# The delivery reports among CPython's samples (the corpora README names them).
CPYTHON_REPORTS = [f"edge-cases/cpython/msg_{n}.txt" for n in ("05", "16", "25", "43")]

_RETURN_PATH = re.compile(rb"^Return-Path:[ \t]*<([^>\r\n]*)>", re.IGNORECASE | re.MULTILINE)
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_DSN_PART = re.compile(
    rb"^Content-Type:[ \t]*message/(?:global-)?delivery-status", re.IGNORECASE | re.MULTILINE
)
_DSN_TOP = re.compile(
    rb"^Content-Type:[ \t]*multipart/report;[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*report-type=\"?delivery-status",
    re.IGNORECASE | re.MULTILINE,
)
UNKNOWN_SENDER = "unknown-sender@corpus.invalid"


def envelope_sender(raw: bytes) -> str:
    """The envelope sender the delivering MTA recorded in Return-Path; a placeholder when there is none,
    so that only the message itself decides."""
    head = _HEAD_END.split(raw, maxsplit=1)[0]
    match = _RETURN_PATH.search(head)
    return match.group(1).decode("ascii", "replace") if match else UNKNOWN_SENDER


def has_dsn_part(raw: bytes) -> bool:
    """Read with regular expressions, not with the code under test."""
    head = _HEAD_END.split(raw, maxsplit=1)[0]
    return bool(_DSN_PART.search(raw) or _DSN_TOP.search(head))


def corpus(folder: str, pattern: str = "*") -> list[str]:
    prefix = folder.rstrip("/") + "/"
    return [name for name in SAMPLES if name.startswith(prefix) and Path(name).match(pattern)]


if PROBLEM:

    def test_corpora_are_there() -> None:
        corpora.missing()

else:
    assert ROOT is not None
    CORPUS = ROOT

    def read(relative: str) -> bytes:
        return (CORPUS / relative).read_bytes()

    def corpus_kind(relative: str) -> Classification:
        raw = read(relative)
        return classify(raw, envelope_sender=envelope_sender(raw), max_received=LIMIT)

    def test_the_corpus_folders_are_all_there() -> None:
        # Guards the tests below against an emptied or renamed folder, which would let them pass empty.
        assert len(corpus("autoreplies")) == 6
        assert len(corpus("bounces")) == 85
        assert len(corpus("client-replies/talon/standard_replies", "*.eml")) == 12
        assert all(name in SAMPLES for name in [*NOT_BOUNCES, *NOT_BOUNCE_KINDS, *CPYTHON_REPORTS])

    @pytest.mark.parametrize("relative", corpus("autoreplies"))
    def test_corpus_auto_replies_are_auto_replies(relative: str) -> None:
        assert corpus_kind(relative).kind is Kind.AUTO_REPLY
        assert delivery_report(read(relative)) is None

    @pytest.mark.parametrize("relative", [name for name in corpus("bounces") if name not in NOT_BOUNCES])
    def test_corpus_bounces_are_bounces(relative: str) -> None:
        assert corpus_kind(relative).kind is Kind.BOUNCE

    @pytest.mark.parametrize(
        "relative",
        [name for name in corpus("bounces") if has_dsn_part(read(name)) or not envelope_sender(read(name))],
    )
    def test_corpus_bounces_with_a_dsn_part_or_null_sender_are_bounces_by_that(relative: str) -> None:
        raw = read(relative)
        found = corpus_kind(relative)
        assert found.kind is Kind.BOUNCE
        if has_dsn_part(raw):
            assert "delivery-status" in found.reason
            assert delivery_report(raw) is not None

    @pytest.mark.parametrize(
        "relative",
        [
            name
            for name in corpus("bounces")
            if has_dsn_part(read(name)) and re.search(rb"(?im)^Final-Recipient:", read(name))
        ],
    )
    def test_corpus_reports_name_their_recipients(relative: str) -> None:
        report = delivery_report(read(relative))
        assert report is not None
        assert report.recipients
        assert all(r.final_recipient and r.action for r in report.recipients)

    @pytest.mark.parametrize("relative", [name for name in corpus("bounces") if not has_dsn_part(read(name))])
    def test_corpus_bounces_without_a_dsn_part_have_no_delivery_report(relative: str) -> None:
        # Plain-text notices (even with status fields in their text, as rfc3464-34) are no DSN: what
        # they say about recipients is prose for people, matched by nothing.
        assert delivery_report(read(relative)) is None

    @pytest.mark.parametrize("relative", list(NOT_BOUNCES))
    def test_excluded_bounce_samples_are_what_the_exclusion_says(relative: str) -> None:
        assert corpus_kind(relative).kind is Kind.ANSWER

    @pytest.mark.parametrize("relative", list(NOT_BOUNCE_KINDS))
    def test_corpus_not_bounces(relative: str) -> None:
        assert corpus_kind(relative).kind is NOT_BOUNCE_KINDS[relative]

    @pytest.mark.parametrize("relative", corpus("client-replies/talon/standard_replies", "*.eml"))
    def test_corpus_client_replies_are_answers(relative: str) -> None:
        assert corpus_kind(relative) == Classification(Kind.ANSWER, "no sign of an automatic message")
        assert delivery_report(read(relative)) is None

    @pytest.mark.parametrize("relative", CPYTHON_REPORTS)
    def test_corpus_cpython_reports_are_bounces(relative: str) -> None:
        assert corpus_kind(relative).kind is Kind.BOUNCE
        assert delivery_report(read(relative)) is not None

    def test_a_gmail_report_is_matched_by_its_returned_message() -> None:
        report = delivery_report(read("bounces/sisimai/rfc3464-52.eml"))
        assert report is not None
        assert report.reporting_mta == "googlemail.com"
        assert [(r.action, r.status) for r in report.recipients] == [("failed", "4.0.0")]
        assert report.original_message_id is not None

    def test_a_report_that_gave_up_with_a_4xx_status_failed() -> None:
        # delayed.eml: "Action: failed" with 4.0.0 after five days: the action decides, not the class.
        report = delivery_report(read("bounces/flanker/delayed.eml"))
        assert report is not None
        assert [(r.status, r.failed) for r in report.recipients] == [("4.0.0", True)]

    @pytest.mark.parametrize("relative", SAMPLES)
    def test_nothing_in_the_corpora_raises(relative: str) -> None:
        raw = read(relative)
        # How long it takes is measured by bench/corpus.py, not asserted here (issue 14, item 8).
        for sender in ("", SENDER):
            assert classify(raw, envelope_sender=sender, max_received=LIMIT).kind in Kind
        report = delivery_report(raw)
        assert report is None or isinstance(report, DeliveryReport)
