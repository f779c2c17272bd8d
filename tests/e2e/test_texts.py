"""What people read from the running gateway: failure notices with the subject decoded, refusals that
say nothing about who is a member (issue 13, item 8)."""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.domain.refusals import NOT_ENTITLED_TO_ANSWER
from tests.dovecot import Dovecot
from tests.e2e.clients import (
    copy_for,
    events_of,
    reply_address_of,
    send_from_backoffice,
    send_reply,
    wait_until,
)
from tests.e2e.conftest import MAILDIR_ONLY, BackOfficeSink, RunningGateway, configure, prepare
from tests.seed import ADDRESS


@pytest.fixture
def gateway(
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


def raw_reply(copy: EmailMessage, *, author: str, subject: bytes, message_id: str) -> bytes:
    """A member's reply to ``copy`` with ``subject`` written as raw bytes, as a mail client sent it."""
    return (
        f"From: Sachbearbeiterin <{author}>\r\nTo: {copy['Reply-To']}\r\n".encode()
        + b"Subject: "
        + subject
        + (
            f"\r\nMessage-ID: {message_id}\r\n"
            f"In-Reply-To: {copy['Message-ID']}\r\n"
            f"References: {copy['References']}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
        ).encode()
        + b"Die Fotos kommen morgen.\r\n"
    )


@pytest.mark.parametrize(
    "subject",
    [
        pytest.param("Re: Rückfrage".encode(), id="8bit-utf8"),
        pytest.param("Re: Rückfrage".encode("latin-1"), id="8bit-latin1"),
        pytest.param(b"Re: =?iso-8859-1?q?R=FCckfrage?=", id="rfc2047"),
    ],
)
def test_the_failure_notice_of_a_reply_names_its_subject_as_the_member_wrote_it(
    gateway: RunningGateway, sink: BackOfficeSink, subject: bytes
) -> None:
    send_from_backoffice(gateway, ADDRESS["SB-B1"], "Rückfrage", "<rueckfrage@ams.example>")
    copy = copy_for(gateway, "SB-B2", "Rückfrage")
    sink.answers = ["550 5.1.1 No such mailbox here"]
    raw = raw_reply(copy, author=ADDRESS["SB-B2"], subject=subject, message_id="<re-rueck@kunde-b.example>")
    code, text = send_reply(gateway, raw, reply_address_of(copy), ADDRESS["SB-B2"])
    assert code == 250, text

    def notices() -> list[EmailMessage]:
        mails = gateway.mailbox(ADDRESS["SB-B2"])
        return [m for m in mails if m.get_content_type() == "multipart/report"]

    assert wait_until(notices), "the member gets a failure notice"
    (notice,) = notices()
    # Once "Nicht zugestellt / Undelivered: Re: R\ufffd\ufffdckfrage": compat32's Header for 8-bit bytes.
    assert str(notice["Subject"]) == "Nicht zugestellt / Undelivered: Re: Rückfrage"
    first = notice.get_payload()[0]  # type: ignore[index]
    assert isinstance(first, EmailMessage)
    said = first.get_content()
    assert "Ihre Nachricht „Re: Rückfrage“ an ams@makler-muster.example" in said
    assert 'Your message "Re: Rückfrage" to ams@makler-muster.example' in said
    assert "\ufffd" not in str(notice["Subject"]) + said


@MAILDIR_ONLY
def test_a_stranger_and_a_member_who_may_not_see_the_message_get_the_same_answer(
    gateway: RunningGateway, sink: BackOfficeSink, database_url: str
) -> None:
    """No mailbox decides this (the refusal comes before any copy is written): one backend is enough."""
    send_from_backoffice(gateway, ADDRESS["SB-B1"], "Wer darf", "<wer-darf@ams.example>")
    copy = copy_for(gateway, "SB-B1", "Wer darf")
    address = reply_address_of(copy)
    answers = {}
    for n, sender in enumerate(["evil@else.example", ADDRESS["SB-A1"], "Evil@Else.example"]):
        raw = raw_reply(copy, author=sender, subject=b"Re: Wer darf", message_id=f"<try-{n}@x.example>")
        answers[sender] = send_reply(gateway, raw, address, sender)
    # A stranger (twice: the case of the address changes nothing either), and a member of the portfolio
    # who is not in the message's audience: the same code and the same words.
    assert set(answers.values()) == {(550, f"5.7.1 {NOT_ENTITLED_TO_ANSWER}".encode())}, answers
    reasons = [str(e["reason"]) for e in events_of(database_url, "reply.refused")]
    assert reasons == [
        "evil@else.example may not answer this message: not a member of this portfolio",
        f"{ADDRESS['SB-A1']} may not answer this message: not among the people who may see it now",
        "evil@else.example may not answer this message: not a member of this portfolio",
    ], "the event log says precisely why, for the admin"
    assert sink.wait_for(0, timeout=1) == [], "nothing refused is relayed"
