"""What people read from the running gateway: failure notices with the subject decoded, refusals that
say nothing about who is a member (issue 13, item 8).

The tests share one gateway and back-office sink per module (``shared_relaying`` and ``backoffice``): each
writes under a subject and Message-IDs of its own and counts only the notices and events that came after
it began.
"""

from __future__ import annotations

import uuid
from email.message import EmailMessage

import pytest

from gateway.domain.refusals import NOT_ENTITLED_TO_ANSWER
from tests.e2e.clients import (
    copy_for,
    events_of,
    reply_address_of,
    send_from_backoffice,
    send_reply,
    wait_until,
)
from tests.e2e.conftest import BackOfficeSink, RunningGateway
from tests.seed import ADDRESS


@pytest.fixture
def gateway(shared_relaying: RunningGateway, backoffice: BackOfficeSink) -> RunningGateway:
    """The module's gateway, relaying to ``backoffice``."""
    return shared_relaying


def unique(name: str) -> str:
    """``name`` with a suffix of this test's own, for a subject or the local part of a Message-ID."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


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
    gateway: RunningGateway, backoffice: BackOfficeSink, subject: bytes
) -> None:
    def reports() -> list[EmailMessage]:
        mails = gateway.mailbox(ADDRESS["SB-B2"])
        return [m for m in mails if m.get_content_type() == "multipart/report"]

    earlier = {str(m["Message-ID"]) for m in reports()}  # earlier tests' notices in the same mailbox

    def notices() -> list[EmailMessage]:
        return [m for m in reports() if str(m["Message-ID"]) not in earlier]

    marker = unique("Rückfrage")
    send_from_backoffice(gateway, ADDRESS["SB-B1"], marker, f"<{unique('rueckfrage')}@ams.example>")
    copy = copy_for(gateway, "SB-B2", marker)
    backoffice.answers = ["550 5.1.1 No such mailbox here"]
    reply_id = f"<{unique('re-rueck')}@kunde-b.example>"
    raw = raw_reply(copy, author=ADDRESS["SB-B2"], subject=subject, message_id=reply_id)
    code, text = send_reply(gateway, raw, reply_address_of(copy), ADDRESS["SB-B2"])
    assert code == 250, text

    assert wait_until(notices), "the member gets a failure notice"
    gateway.settled()  # a second notice would be in the mailbox now
    (notice,) = notices()
    # Once "Nicht zugestellt / Undelivered: Re: R\ufffd\ufffdckfrage": compat32's Header for 8-bit bytes.
    assert str(notice["Subject"]) == "Nicht zugestellt / Undelivered: Re: Rückfrage"
    first = notice.get_payload()[0]  # type: ignore[index]
    assert isinstance(first, EmailMessage)
    said = first.get_content()
    assert "Ihre Nachricht „Re: Rückfrage“ an ams@makler-muster.example" in said
    assert 'Your message "Re: Rückfrage" to ams@makler-muster.example' in said
    assert "\ufffd" not in str(notice["Subject"]) + said


@pytest.mark.parametrize("module_mailbox_backend", ["maildir"], scope="module")
def test_a_stranger_and_a_member_who_may_not_see_the_message_get_the_same_answer(
    gateway: RunningGateway, backoffice: BackOfficeSink
) -> None:
    """No mailbox decides this (the refusal comes before any copy is written): one backend is enough."""
    before = len(events_of(gateway.database_url, "reply.refused"))
    marker = unique("Wer darf")
    send_from_backoffice(gateway, ADDRESS["SB-B1"], marker, f"<{unique('wer-darf')}@ams.example>")
    copy = copy_for(gateway, "SB-B1", marker)
    address = reply_address_of(copy)
    answers = {}
    for n, sender in enumerate(["evil@else.example", ADDRESS["SB-A1"], "Evil@Else.example"]):
        message_id = f"<{unique(f'try-{n}')}@x.example>"
        raw = raw_reply(copy, author=sender, subject=b"Re: Wer darf", message_id=message_id)
        answers[sender] = send_reply(gateway, raw, address, sender)
    # A stranger (twice: the case of the address changes nothing either), and a member of the portfolio
    # who is not in the message's audience: the same code and the same words.
    assert set(answers.values()) == {(550, f"5.7.1 {NOT_ENTITLED_TO_ANSWER}".encode())}, answers
    reasons = [str(e["reason"]) for e in events_of(gateway.database_url, "reply.refused")[before:]]
    assert reasons == [
        "evil@else.example may not answer this message: not a member of this portfolio",
        f"{ADDRESS['SB-A1']} may not answer this message: not among the people who may see it now",
        "evil@else.example may not answer this message: not a member of this portfolio",
    ], "the event log says precisely why, for the admin"
    assert backoffice.wait_for(0, timeout=1) == [], "nothing refused is relayed"
