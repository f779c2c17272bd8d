"""The reply path end to end: the seed's flow with real clients, refusals, the relay queue, not-answers.

The gateway runs as ``gateway serve``; the back office writes with smtplib; members answer with mails that
real clients built (Thunderbird, Outlook and Apple Mail replies from the talon corpus, readdressed); the
back office's SMTP server is an aiosmtpd sink. Every test that involves a member's mailbox runs with
both backends: Maildirs in the gateway's data directory, and a private Dovecot read with imaplib.

Most tests share one gateway and sink per module (``gateway`` with ``backoffice``): each sends mail with a
subject and Message-IDs of its own, counts only events logged since it began, and finds the sink emptied
once earlier tests' relays are done. A test that changes the directory or the configuration, or kills the
gateway, starts its own (``own_gateway``, or ``prepare`` in the test).
"""

from __future__ import annotations

import re
import smtplib
import ssl
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.domain.refusals import NOT_ENTITLED_TO_ANSWER, NOT_ENTITLED_TO_OPEN
from tests.conftest import EXAMPLE_DIRECTORY
from tests.dovecot import Dovecot
from tests.e2e.clients import (
    ANSWERED,
    NO_FLAGS,
    client_reply,
    copy_for,
    corpus,
    events_of,
    flags_of,
    reply_address_of,
    send_from_backoffice,
    send_reply,
    wait_until,
)
from tests.e2e.conftest import (
    INTAKE,
    PORTFOLIO,
    REPLY_DOMAIN,
    BackOfficeSink,
    RunningGateway,
    configure,
    prepare,
)
from tests.seed import ADDRESS

BACKOFFICE = "ams@makler-muster.example"


@pytest.fixture
def gateway(shared_relaying: RunningGateway, backoffice: BackOfficeSink) -> RunningGateway:
    """The module's gateway, relaying to ``backoffice``."""
    return shared_relaying


def unique(name: str) -> str:
    """``name`` with a suffix of this test's own, for a subject or the local part of a Message-ID."""
    return f"{name} {uuid.uuid4().hex[:8]}"


def since(database_url: str, kind: str, before: int) -> list[dict[str, object]]:
    """The events of ``kind`` logged after the first ``before``: those of the test that counted them."""
    return events_of(database_url, kind)[before:]


@pytest.fixture
def own_gateway(
    tmp_path: Path, database_url: str, sink: BackOfficeSink, mailbox_server: Dovecot | None
) -> Iterator[RunningGateway]:
    running = prepare(tmp_path, database_url, dovecot=mailbox_server)
    configure(running, sink, tmp_path)
    running.start()
    yield running
    if running.process is not None and running.process.poll() is None:
        running.stop()
    running.mailboxes.close()
    print("".join(running.log))  # shown by pytest when the test failed


@pytest.mark.parametrize("client", ["thunderbird", "outlook", "apple_mail"])
def test_the_seeds_flow(gateway: RunningGateway, backoffice: BackOfficeSink, client: str) -> None:
    marker = unique(f"Schaden {client}")
    original = f"<orig-{marker.replace(' ', '-')}@ams.example>"
    send_from_backoffice(gateway, ADDRESS["SB-B1"], marker, original)
    copy = copy_for(gateway, "SB-B2", marker)
    assert reply_address_of(copy).startswith("reply+")
    assert reply_address_of(copy).endswith("@" + REPLY_DOMAIN)
    (shown,) = copy["From"].addresses
    assert shown.addr_spec == reply_address_of(copy), "From is the reply address too"
    assert shown.display_name == "Makler Muster", "with the original display name"
    assert copy["X-Gateway-Original-From"] == f"Makler Muster <{BACKOFFICE}>"
    assert f"@{REPLY_DOMAIN}>" in str(copy["References"]), "the token as a message id"

    raw = client_reply(client, author=ADDRESS["SB-B2"], copy=copy, subject=marker)
    code, text = send_reply(gateway, raw, reply_address_of(copy), ADDRESS["SB-B2"])
    assert code == 250, text

    (relayed,) = backoffice.wait_for(1)
    assert relayed.rcpt_tos == [BACKOFFICE]
    message = relayed.message
    assert message["From"].addresses[0].addr_spec == ADDRESS["SB-B2"]
    assert message["X-Gateway-Actual-Sender"] == ADDRESS["SB-B2"]
    assert message["In-Reply-To"] == original
    assert original in str(message["References"])
    assert REPLY_DOMAIN.encode() not in relayed.data, "no reply address or token reaches the back office"
    assert re.fullmatch(r"VG-\d{4}-\d{6}", str(message["X-Gateway-Vorgang"]))
    assert message["To"] == BACKOFFICE

    for person in ("SB-B1", "SB-B2", "GF-B"):
        assert wait_until(lambda p=person: flags_of(gateway, p, original) == [ANSWERED]), (
            f"{person}: {flags_of(gateway, person, original)}"
        )

    def holders() -> list[str]:
        reply_copies = gateway.copies_of(marker)
        return sorted(
            address for address, found in reply_copies.items() for m in found if "Re: [" in str(m["Subject"])
        )

    assert wait_until(lambda: len(holders()) >= 2, timeout=20), holders()
    gateway.settled("copy")  # a late extra copy would be in its mailbox now
    assert holders() == sorted([ADDRESS["SB-B1"], ADDRESS["GF-B"]]), "the reply reaches SB-B1 and GF-B"


@pytest.mark.parametrize(
    ("ams_version", "expected_from"), [("4.8.0.64469", "SB-B1"), ("4.8.0.64470", "SB-B2")]
)
def test_legacy_ams_gets_the_original_participant_as_from(
    gateway: RunningGateway,
    backoffice: BackOfficeSink,
    tmp_path: Path,
    ams_version: str,
    expected_from: str,
) -> None:
    # The module's gateway at this ams version for the test, and back at the one it has (configure's).
    configure(gateway, backoffice, tmp_path, ams_version=ams_version)
    try:
        marker = unique("Legacy")
        original = f"<legacy-{marker.replace(' ', '-')}@ams.example>"
        send_from_backoffice(gateway, ADDRESS["SB-B1"], marker, original)
        copy = copy_for(gateway, "SB-B2", marker)
        raw = client_reply("thunderbird", author=ADDRESS["SB-B2"], copy=copy, subject=marker)
        code, text = send_reply(gateway, raw, reply_address_of(copy), ADDRESS["SB-B2"])
        assert code == 250, text
        (relayed,) = backoffice.wait_for(1)
        assert relayed.message["From"].addresses[0].addr_spec == ADDRESS[expected_from]
        assert relayed.message["X-Gateway-Actual-Sender"] == ADDRESS["SB-B2"]
    finally:
        configure(gateway, backoffice, tmp_path)


# --- refusals -------------------------------------------------------------------------------------------


def tampered(address: str) -> str:
    """The reply address with one character of its token changed."""
    local, _, domain = address.partition("@")
    position = len(local) - 5
    changed = "a" if local[position] != "a" else "b"
    return f"{local[:position]}{changed}{local[position + 1 :]}@{domain}"


def test_refusals_each_with_its_code_and_an_event(
    own_gateway: RunningGateway, sink: BackOfficeSink, database_url: str, tmp_path: Path
) -> None:
    send_from_backoffice(own_gateway, ADDRESS["SB-B1"], "Refusals", "<refusals@ams.example>")
    copy = copy_for(own_gateway, "SB-B1", "Refusals")
    address = reply_address_of(copy)

    def reply_as(person: str, to: str) -> tuple[int, bytes]:
        raw = client_reply("thunderbird", author=ADDRESS[person], copy=copy, subject="Refusals")
        return send_reply(own_gateway, raw, to, ADDRESS[person])

    code, text = reply_as("SB-B1", tampered(address))
    assert (code, text[:5]) == (550, b"5.7.1"), text
    assert b"reply address is not valid" in text

    code, text = reply_as("SB-A1", address)
    assert (code, text[:5]) == (550, b"5.7.1"), "SB-A1 may not see (so not answer) SB-B1's mail"
    assert text.decode() == f"5.7.1 {NOT_ENTITLED_TO_ANSWER}", "says nothing about membership"

    code, text = reply_as("GF-A", address)
    assert code == 550, "GF-A shares a release with GF-B, but not one that shows SB-B1's mail"

    # SB-B2 saw the message through two releases; taken out of both, the token no longer helps. (Its copy
    # is read before: the reconcile worker takes it out of SB-B2's mailbox once SB-B2 is out.)
    sb_b2_copy = copy_for(own_gateway, "SB-B2", "Refusals")
    own_gateway.cli("release", "remove-member", "Kunde B Sachbearbeiter", ADDRESS["SB-B2"], "-p", PORTFOLIO)
    own_gateway.cli("release", "remove-member", "Kunde B mit GF", ADDRESS["SB-B2"], "-p", PORTFOLIO)
    raw = client_reply("thunderbird", author=ADDRESS["SB-B2"], copy=sb_b2_copy, subject="Refusals")
    code, text = send_reply(own_gateway, raw, reply_address_of(sb_b2_copy), ADDRESS["SB-B2"])
    assert (code, text[:5]) == (550, b"5.7.1"), "removed from the release since the copy was made"

    code, text = send_reply(
        own_gateway, b"Subject: x\r\n\r\nx\r\n", "someone@elsewhere.example", ADDRESS["SB-B1"]
    )
    assert (code, text[:5]) == (550, b"5.1.1"), "no open relay"

    refused = events_of(database_url, "reply.refused")
    reasons = [str(e["reason"]) for e in refused]
    assert len(refused) == 4, reasons
    assert "not valid" in reasons[0]
    assert all("may not answer" in r for r in reasons[1:3]), reasons
    # SB-B2's: refused for the membership, or, once reconciliation took SB-B2's copy out (it may have
    # by then), for the copy's revocation.
    assert "may not answer" in reasons[3] or "which was revoked" in reasons[3], reasons
    assert sink.wait_for(0, timeout=1) == [], "nothing refused is relayed"
    assert flags_of(own_gateway, "SB-B1", "<refusals@ams.example>") == [NO_FLAGS], "nor marked answered"


def test_a_token_of_another_portfolio_is_refused(
    own_gateway: RunningGateway, sink: BackOfficeSink, database_url: str, tmp_path: Path
) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(
        "version: 1\nportfolios:\n  - name: makler-zwei\n    backoffices:\n"
        "      - {name: ams2, ams_version: 4.8.0.64470, addresses: [ams@makler-zwei.example]}\n"
        "    members:\n      - {address: kunde@zwei.example, name: Zwei}\n",
        encoding="utf-8",
    )
    own_gateway.cli("directory", "load", str(other))
    own_gateway.mailboxes.create("kunde@zwei.example")
    password = tmp_path / "zwei.password"
    password.write_text("zwei-password-123\n", encoding="utf-8")
    own_gateway.cli("backoffice", "password", "ams2", "-p", "makler-zwei", "--password-file", str(password))
    message = EmailMessage()
    message["From"] = "ams@makler-zwei.example"
    message["To"] = "kunde@zwei.example"
    message["Subject"] = "Zwei"
    message["Message-ID"] = "<zwei@ams.example>"
    message.set_content("x\n")
    with smtplib.SMTP("127.0.0.1", own_gateway.port, timeout=10) as client:
        client.login("ams@makler-zwei.example", "zwei-password-123")
        client.send_message(message)
    assert wait_until(lambda: own_gateway.mailbox("kunde@zwei.example"))
    (copy,) = own_gateway.mailbox("kunde@zwei.example")
    raw = client_reply("thunderbird", author=ADDRESS["SB-B2"], copy=copy, subject="Zwei")
    code, text = send_reply(own_gateway, raw, reply_address_of(copy), ADDRESS["SB-B2"])
    assert (code, text[:5]) == (550, b"5.7.1"), text
    assert text.decode() == f"5.7.1 {NOT_ENTITLED_TO_ANSWER}", "says nothing about membership"
    assert [e["reason"] for e in events_of(database_url, "reply.refused")] == [
        f"{ADDRESS['SB-B2']} may not answer this message: not a member of this portfolio"
    ]


# --- the relay queue ------------------------------------------------------------------------------------


def answer(gateway: RunningGateway, marker: str) -> None:
    """The back office writes to SB-B1 under ``marker``; SB-B2 answers (Thunderbird) and is accepted."""
    send_from_backoffice(gateway, ADDRESS["SB-B1"], marker, f"<{marker.replace(' ', '-')}@ams.example>")
    copy = copy_for(gateway, "SB-B2", marker)
    raw = client_reply("thunderbird", author=ADDRESS["SB-B2"], copy=copy, subject=marker)
    code, text = send_reply(gateway, raw, reply_address_of(copy), ADDRESS["SB-B2"])
    assert code == 250, text


def test_the_back_office_down_for_a_while_gets_the_mail_once_when_it_returns(
    gateway: RunningGateway, backoffice: BackOfficeSink
) -> None:
    backoffice.down()
    answer(gateway, unique("Server down"))
    time.sleep(2.0)  # the behaviour under test: the back office is down while several attempts fail
    assert backoffice.received == []
    backoffice.up()
    (relayed,) = backoffice.wait_for(1)
    gateway.settled()
    assert len(backoffice.received) == 1, "relayed once"
    assert relayed.message["X-Gateway-Actual-Sender"] == ADDRESS["SB-B2"]


def test_a_4xx_is_retried(gateway: RunningGateway, backoffice: BackOfficeSink) -> None:
    backoffice.answers = ["451 4.3.0 Try again later", "421 4.3.2 Busy"]
    answer(gateway, unique("Busy back office"))
    (relayed,) = backoffice.wait_for(1)
    assert backoffice.attempts == 3
    assert relayed.rcpt_tos == [BACKOFFICE]


def reports(gateway: RunningGateway, person: str) -> list[EmailMessage]:
    """The delivery reports (failure notices) in ``person``'s mailbox."""
    return [m for m in gateway.mailbox(ADDRESS[person]) if m.get_content_type() == "multipart/report"]


def test_a_5xx_puts_a_dsn_into_the_members_mailbox(
    gateway: RunningGateway, backoffice: BackOfficeSink
) -> None:
    earlier = {str(m["Message-ID"]) for m in reports(gateway, "SB-B2")}  # none, unless the module grows
    backoffice.answers = ["550 5.1.1 No such mailbox here"]
    answer(gateway, unique("Rejected"))
    assert wait_until(lambda: len(reports(gateway, "SB-B2")) > len(earlier))
    gateway.settled()  # a second report would be in the mailbox now
    (report,) = [m for m in reports(gateway, "SB-B2") if str(m["Message-ID"]) not in earlier]
    assert report.get_param("report-type") == "delivery-status"
    text = report.as_string()
    assert "550 5.1.1 No such mailbox here" in text
    assert "Action: failed" in text
    assert "Status: 5.1.1" in text, "the back office's own enhanced code"
    assert backoffice.received == []
    gateway.settled()
    assert backoffice.attempts == 1, "a permanent failure is not retried"


def test_kill_9_between_accepting_a_reply_and_relaying_it(
    tmp_path: Path, database_url: str, sink: BackOfficeSink, mailbox_server: Dovecot | None
) -> None:
    import signal

    gateway = prepare(tmp_path, database_url, dovecot=mailbox_server)
    configure(gateway, sink, tmp_path)
    gateway.start()
    sink.down()  # the reply is accepted, but cannot be relayed before the kill
    try:
        answer(gateway, "Killed")
        gateway.stop(signal.SIGKILL)
        sink.up()
        restarted = gateway.restarted()
        try:
            (relayed,) = sink.wait_for(1)
            restarted.settled()
            assert len(sink.received) == 1, "relayed exactly once after the restart"
            assert relayed.message["X-Gateway-Actual-Sender"] == ADDRESS["SB-B2"]
        finally:
            restarted.stop()
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.stop()


# --- not answers ----------------------------------------------------------------------------------------

OUT_OF_OFFICE = (
    b"From: SB-B2 <sb-b2@kunde-b.example>\r\n"
    b"Subject: Abwesenheitsnotiz: Schaden\r\n"
    b"Message-ID: <ooo-1@kunde-b.example>\r\n"
    b"\r\n"
    b"Ich bin bis 5. Januar nicht im Haus.\r\n"
)
LOOPED = (
    b"From: SB-B2 <sb-b2@kunde-b.example>\r\n"
    b"Subject: Re: Schaden\r\n"
    b"Message-ID: <loop-1@kunde-b.example>\r\n"
    b"X-Gateway-Loop: another-node\r\n"
    b"\r\n"
    b"Round and round\r\n"
)


@pytest.mark.parametrize(
    ("sample", "sender", "kind"),
    [
        # A member's auto-reply as a real one looks (a stranger's is refused: test_senders_and_storage.py).
        ("autoreplies/sisimai/rfc3834-01.eml", ADDRESS["SB-B2"], "auto-reply"),
        ("bounces/sisimai/rfc3464-01.eml", "", "bounce"),
        ("out-of-office", ADDRESS["SB-B2"], "auto-reply"),
        ("loop", ADDRESS["SB-B2"], "loop"),
    ],
)
def test_auto_replies_bounces_and_loops_are_recorded_not_relayed(
    gateway: RunningGateway, backoffice: BackOfficeSink, sample: str, sender: str, kind: str
) -> None:
    marker = unique("Not an answer")
    original = f"<{marker.replace(' ', '-')}@ams.example>"
    before = len(events_of(gateway.database_url, "reply.not_an_answer"))
    send_from_backoffice(gateway, ADDRESS["SB-B1"], f"{marker} {kind}", original)
    copy = copy_for(gateway, "SB-B2", marker)
    raw = {"out-of-office": OUT_OF_OFFICE, "loop": LOOPED}.get(sample) or (corpus() / sample).read_bytes()
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if kind == "auto-reply":
        raw = raw.replace(b"kijitora@example.net", sender.encode())
    code, text = send_reply(gateway, raw, reply_address_of(copy), sender)
    assert code == 250, text
    assert b"not relayed" in text
    recorded = since(gateway.database_url, "reply.not_an_answer", before)
    assert [e["kind"] for e in recorded] == [kind]
    gateway.settled()
    assert backoffice.received == []
    assert flags_of(gateway, "SB-B1", original) == [NO_FLAGS], "never \\Answered"
    assert not [m for m in gateway.mailbox(ADDRESS["SB-B1"]) if "Abwesenheit" in str(m["Subject"])]


def test_a_bounce_of_a_relayed_reply_is_matched_to_it(
    gateway: RunningGateway, backoffice: BackOfficeSink
) -> None:
    from gateway.domain.dsn import build_failure_report

    before = len(events_of(gateway.database_url, "relay.bounced"))
    answer(gateway, unique("Bounced later"))
    (relayed,) = backoffice.wait_for(1)
    headers = relayed.data.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    import datetime as dt

    dsn = build_failure_report(
        reporting_mta="mx.ams.example",
        original_envelope_id=None,
        recipient=BACKOFFICE,
        status="5.2.2",
        action="failed",
        diagnostic="552 5.2.2 mailbox full",
        original_headers=headers,
        to=relayed.mail_from,
        subject="Undelivered Mail Returned to Sender",
        message_id=f"<dsn-{uuid.uuid4().hex}@mx.ams.example>",
        date=dt.datetime.now(dt.UTC),
        explanation="The mailbox is full.",
    )
    code, text = send_reply(gateway, dsn, relayed.mail_from, "")
    assert code == 250, text
    assert str(relayed.message["Message-ID"]).encode() in text
    (bounced,) = since(gateway.database_url, "relay.bounced", before)
    assert bounced["relay_message_id"] == relayed.message["Message-ID"]
    assert bounced["recipients"] == [
        {
            "recipient": BACKOFFICE,
            "action": "failed",
            "status": "5.2.2",
            "diagnostic": "552 5.2.2 mailbox full",
        }
    ]


# --- a new Vorgang from a member ------------------------------------------------------------------------


def test_a_member_opens_a_vorgang_at_the_intake_address(
    gateway: RunningGateway, backoffice: BackOfficeSink
) -> None:
    marker = unique("Wasserrohrbruch")
    message = EmailMessage()
    message["From"] = f"SB-B2 <{ADDRESS['SB-B2']}>"
    message["To"] = INTAKE
    message["Cc"] = ADDRESS["SB-A1"]  # a participant too: SB-A1 and SB-A1's release see it
    message["Subject"] = f"Neuer Schaden: {marker}"
    message["Message-ID"] = f"<new-{marker.replace(' ', '-')}@kunde-b.example>"
    message.set_content("Bei uns ist ein Rohr gebrochen.\n")
    code, text = send_reply(gateway, message.as_bytes(), INTAKE, ADDRESS["SB-B2"])
    assert code == 250, text
    vorgang = re.search(rb"VG-\d{4}-\d{6}", text)
    assert vorgang, text

    (relayed,) = backoffice.wait_for(1)
    assert relayed.rcpt_tos == [BACKOFFICE]
    assert relayed.message["From"].addresses[0].addr_spec == ADDRESS["SB-B2"]
    assert relayed.message["X-Gateway-Vorgang"] == vorgang.group().decode()
    assert relayed.message["In-Reply-To"] is None, "nothing to thread to: a new Vorgang"

    copies = gateway.wait_for_copies(marker, 4)
    assert sorted(copies) == sorted(ADDRESS[p] for p in ("SB-B1", "GF-B", "SB-A1", "SB-A2")), (
        "the audience of SB-B2 and SB-A1 (DESIGN.md §3), without SB-B2 itself"
    )


@pytest.mark.parametrize("module_mailbox_backend", ["maildir"], scope="module")
def test_a_stranger_cannot_open_a_vorgang(gateway: RunningGateway, backoffice: BackOfficeSink) -> None:
    """Refused at RCPT/DATA before anything is stored: no mailbox takes part, so one backend is enough."""
    message = EmailMessage()
    message["From"] = "someone@elsewhere.example"
    message["To"] = INTAKE
    message["Subject"] = "Spam"
    message.set_content("Buy now\n")
    code, text = send_reply(gateway, message.as_bytes(), INTAKE, "someone@elsewhere.example")
    assert (code, text[:5]) == (550, b"5.7.1"), text
    assert text.decode() == f"5.7.1 {NOT_ENTITLED_TO_OPEN}", "says nothing about membership"
    gateway.settled()
    assert backoffice.received == []


def test_the_relay_uses_starttls_and_auth_as_the_back_office_is_configured(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The back office's server wants STARTTLS (its own certificate) and AUTH; the password is a file.

    About the relay only: the mailbox backend makes no difference to it, so this runs with Maildir.
    """
    from gateway.tls import write_selfsigned

    cert, key = tmp_path / "bo.crt", tmp_path / "bo.key"
    write_selfsigned(cert, key, "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    sink = BackOfficeSink(tls=context, login=("relay@makler-muster.example", "relay-secret-1"))
    sink.up()
    secret = tmp_path / "relay.password"
    secret.write_text("relay-secret-1\n", encoding="utf-8")
    gateway = prepare(tmp_path, database_url)
    text = EXAMPLE_DIRECTORY.read_text(encoding="utf-8").replace(
        "relay: {host: 127.0.0.1, port: 2526, tls: none}",
        f"relay: {{host: 127.0.0.1, port: {sink.port}, tls: starttls, "
        f"login: relay@makler-muster.example, password_file: {secret}}}",
    )
    directory = tmp_path / "directory.yaml"
    directory.write_text(text, encoding="utf-8")
    gateway.cli("directory", "load", str(directory))
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the gateway trusts the back office's certificate
    gateway.start()
    try:
        answer(gateway, "Encrypted")
        (relayed,) = sink.wait_for(1)
        assert sink.logins == ["relay@makler-muster.example"]
        assert sink.encrypted == [True]
        assert relayed.message["X-Gateway-Actual-Sender"] == ADDRESS["SB-B2"]
    finally:
        gateway.stop()
        sink.down()


def test_the_mx_listener_offers_starttls_and_no_auth(tmp_path: Path, database_url: str) -> None:
    """The listener's dialogue only, which no mailbox takes part in: run with Maildir alone."""
    from gateway.tls import write_selfsigned

    cert, key = tmp_path / "mx.crt", tmp_path / "mx.key"
    write_selfsigned(cert, key, "localhost")
    gateway = prepare(tmp_path, database_url)
    config = gateway.config.read_text(encoding="utf-8")
    gateway.config.write_text(
        config.replace("[listeners.mx]\n", f'[listeners.mx]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'),
        encoding="utf-8",
    )
    gateway.start()
    try:
        with smtplib.SMTP("127.0.0.1", gateway.mx_port, timeout=10) as client:
            client.ehlo("mx.kunde-b.example")
            assert client.has_extn("starttls")
            assert not client.has_extn("auth"), "the MX listener takes no logins"
            client.starttls(context=ssl.create_default_context(cafile=str(cert)))
            client.ehlo("mx.kunde-b.example")
            assert not client.has_extn("auth")
            code, _ = client.docmd("AUTH", "PLAIN AGFtcwBzZWNyZXQ=")
            assert code == 504, "and refuses one"
            client.mail(ADDRESS["SB-B2"])
            code, text = client.rcpt(f"reply@{REPLY_DOMAIN}")
            assert code == 250, text
            code, text = client.rcpt("someone@elsewhere.example")
            assert (code, text[:5]) == (550, b"5.1.1"), text
    finally:
        gateway.stop()
