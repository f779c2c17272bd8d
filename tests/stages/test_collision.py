"""The collision guard in the reply stage, on SQLite and PostgreSQL: the seed's SB-B2 answers, SB-B1 answers
the same message without having seen that; SB-B1's reply is held, the notice says so, and SB-B1's answer
to one of its addresses sends the reply (once, with SB-B1 as the actual sender) or withdraws it.

The end-to-end run through smtplib and Dovecot is in tests/e2e/test_collisions.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import re
from email.message import EmailMessage

import pytest
from sqlalchemy import select, update

from gateway.db.collisions import held_replies
from gateway.db.membermail import ReplyStorage
from gateway.db.models import (
    BackOfficeRow,
    CopyRow,
    EventRow,
    HeldReplyRow,
    HeldState,
    MessageRow,
    RelayRow,
    ReleaseRow,
)
from gateway.db.queue import CopyJob
from gateway.db.writer import Writer
from gateway.domain.tokens import make_token, reply_address
from gateway.mailbox.base import MailboxOwner
from gateway.mailbox.memory import MemoryMailbox
from gateway.senderauth.dns import StaticResolver
from gateway.stages.acceptance import HandOff
from gateway.stages.held import HeldReplies
from gateway.stages.parsepool import read_arrival
from gateway.stages.reply import Incoming, ReplyContext, ReplyStage
from tests.conftest import Gateway
from tests.stages.conftest import PORTFOLIO, accept
from tests.stages.test_reconcile import admin, reconciler
from tests.stages.test_reply import KEYS

REPLY_DOMAIN = "reply.gateway.test"
SB_B1 = "sb-b1@kunde-b.example"
SB_B2 = "sb-b2@kunde-b.example"
GF_B = "gf-b@kunde-b.example"


def stage(writer: Writer) -> ReplyStage:
    context = ReplyContext(
        reply_domain=REPLY_DOMAIN,
        intake={},
        hostname="gw.test",
        node="n1",
        max_received=30,
        authserv_id=None,
        relay_lifetime=60.0,
    )
    return ReplyStage(writer, keys=KEYS, context=context, resolver=StaticResolver())


def worker(writer: Writer, mailbox: MemoryMailbox) -> HeldReplies:
    storage = ReplyStorage(REPLY_DOMAIN, "gw.test", "n1", 60.0, f"bounces@{REPLY_DOMAIN}")
    return HeldReplies(writer, mailbox, keys=KEYS, storage=storage)


async def copies_of(writer: Writer, subject: str = "Schaden 4711") -> dict[str, CopyJob]:
    handed: list[CopyJob] = []
    await accept(writer, SB_B1, subject, "<schaden@ams.example>", HandOff("n1", 60, handed.extend))
    return {job.address: job for job in handed}


def mail(
    job: CopyJob,
    sender: str,
    body: str,
    message_id: str,
    *,
    to: str | None = None,
    references: str = "<schaden@ams.example>",
) -> Incoming:
    address = to or reply_address(make_token(KEYS, portfolio=PORTFOLIO, copy_id=job.copy_id), REPLY_DOMAIN)
    raw = (
        f"From: {sender}\r\nTo: {address}\r\nSubject: Re: Schaden 4711\r\nMessage-ID: {message_id}\r\n"
        f"In-Reply-To: <schaden@ams.example>\r\nReferences: {references}\r\n\r\n{body}\r\n"
    ).encode()
    read = read_arrival(raw, sender, 30)
    return Incoming(
        envelope_sender=sender,
        recipients=(address,),
        raw=raw,
        parsed=read.parsed,
        client_ip="192.0.2.10",
        helo="mx.kunde-b.example",
        peer="192.0.2.10:4711",
        classification=read.classification,
        report=read.report,
    )


async def relays(writer: Writer) -> list[tuple[str, bytes]]:
    rows = await writer.run(
        lambda c: list(
            c.execute(
                select(MessageRow.from_address, RelayRow.data)
                .join(MessageRow, MessageRow.id == RelayRow.message_id)
                .order_by(RelayRow.id)
            )
        )
    )
    return [(str(a), bytes(d)) for a, d in rows]


async def kinds(writer: Writer) -> list[str]:
    return [
        str(k)
        for k in await writer.run(
            lambda c: list(
                c.scalars(select(EventRow.kind).where(EventRow.kind.like("reply.%")).order_by(EventRow.id))
            )
        )
    ]


async def copies_of_message(writer: Writer, message_id: str) -> int:
    return int(
        await writer.run(
            lambda c: len(
                list(
                    c.scalars(
                        select(CopyRow.id)
                        .join(MessageRow, MessageRow.id == CopyRow.message_id)
                        .where(MessageRow.message_id == message_id)
                    )
                )
            )
        )
    )


async def held_situation(writer: Writer) -> tuple[ReplyStage, dict[str, CopyJob]]:
    """SB-B2 answered the claim; SB-B1, whose copy came before that answer, answers it too: held."""
    jobs = await copies_of(writer)
    replies = stage(writer)
    first = await replies.receive(
        mail(jobs[SB_B2], SB_B2, "Wir übernehmen den Schaden.", "<b2@kunde-b.example>")
    )
    assert first.startswith("250 2.0.0 Accepted"), first
    second = await replies.receive(
        mail(jobs[SB_B1], SB_B1, "Bitte Unterlagen schicken.", "<b1@kunde-b.example>")
    )
    assert second.startswith("250 2.0.0 Accepted as gw-"), second
    assert "held: a colleague answered first" in second
    return replies, jobs


async def the_notice(mailbox: MemoryMailbox, held_id: str) -> EmailMessage:
    owner = MailboxOwner(PORTFOLIO, SB_B1)
    (located,) = await mailbox.find(owner, f"n{held_id}")
    message = email.message_from_bytes(mailbox.read(owner, located.ref), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def addresses_in(text: str) -> tuple[str, str]:
    send = re.search(r"Send mine anyway: any mail to (\S+)", text)
    withdraw = re.search(r"Withdraw mine: any mail to (\S+)", text)
    assert send is not None
    assert withdraw is not None
    return send.group(1), withdraw.group(1)


async def test_a_crossing_reply_is_held_and_send_anyway_relays_it_once(writer: Writer) -> None:
    replies, jobs = await held_situation(writer)
    # Only SB-B2's answer went out; SB-B1's is stored without copies, relay or event of acceptance.
    assert [a for a, _ in await relays(writer)] == [SB_B2]
    assert await copies_of_message(writer, "<b1@kunde-b.example>") == 0
    assert await kinds(writer) == ["reply.accepted", "reply.held"]
    (held,) = await writer.run(held_replies)
    assert held.member == SB_B1
    assert held.other == SB_B2
    assert held.state is HeldState.HELD

    mailbox = MemoryMailbox()
    assert await worker(writer, mailbox).notices() == 1
    notice = await the_notice(mailbox, held.held_id)
    # Threaded to the Vorgang: the answered message in In-Reply-To.
    assert notice["In-Reply-To"] == "<schaden@ams.example>"
    assert notice["To"].addresses[0].addr_spec == SB_B1
    text = notice.get_content()
    assert SB_B2 in text
    assert "Wir übernehmen den Schaden." in text
    assert "zurückgehalten" in text
    send, withdraw = addresses_in(text)
    # Written again (a retry after a crash): no second notice.
    assert await worker(writer, mailbox).notices() == 0

    # Another member cannot decide for SB-B1.
    refused = await replies.receive(mail(jobs[SB_B2], SB_B2, "ja", "<x1@kunde-b.example>", to=send))
    assert refused.startswith("550 5.7.1"), refused
    # A changed MAC is refused.
    forged = send.replace(send.split("@")[0][-3:], "aaa")
    refused = await replies.receive(mail(jobs[SB_B1], SB_B1, "ja", "<x2@kunde-b.example>", to=forged))
    assert refused.startswith("550 5.7.1 The address is not valid"), refused
    assert len(await relays(writer)) == 1

    answer = await replies.receive(mail(jobs[SB_B1], SB_B1, "ja", "<x3@kunde-b.example>", to=send))
    assert answer.startswith("250 2.0.0 Your held reply in VG-"), answer
    sent = await relays(writer)
    assert [a for a, _ in sent] == [SB_B2, SB_B1]
    assert b"From: SB-B1" in sent[1][1] or f"<{SB_B1}>".encode() in sent[1][1]
    assert b"Bitte Unterlagen schicken." in sent[1][1]
    assert await copies_of_message(writer, "<b1@kunde-b.example>") > 0
    # Exactly once: the same answer again changes nothing, withdrawing now is refused.
    again = await replies.receive(mail(jobs[SB_B1], SB_B1, "ja", "<x4@kunde-b.example>", to=send))
    assert again.startswith("250"), again
    assert "decided before" in again
    late = await replies.receive(mail(jobs[SB_B1], SB_B1, "nein", "<x5@kunde-b.example>", to=withdraw))
    assert late.startswith("550"), late
    assert "released already" in late
    assert len(await relays(writer)) == 2
    assert (await kinds(writer))[-1] == "reply.refused"
    assert "reply.released" in await kinds(writer)


async def test_withdraw_relays_nothing(writer: Writer) -> None:
    replies, jobs = await held_situation(writer)
    mailbox = MemoryMailbox()
    await worker(writer, mailbox).notices()
    (held,) = await writer.run(held_replies)
    _, withdraw = addresses_in((await the_notice(mailbox, held.held_id)).get_content())
    answer = await replies.receive(mail(jobs[SB_B1], SB_B1, "zurück", "<w1@kunde-b.example>", to=withdraw))
    assert answer.startswith("250 2.0.0"), answer
    assert "withdrawn" in answer
    assert [a for a, _ in await relays(writer)] == [SB_B2]
    assert await copies_of_message(writer, "<b1@kunde-b.example>") == 0
    assert (await kinds(writer))[-1] == "reply.withdrawn"
    assert await writer.run(held_replies) == []


async def test_a_reply_that_references_the_colleagues_answer_goes_through(writer: Writer) -> None:
    jobs = await copies_of(writer)
    replies = stage(writer)
    await replies.receive(mail(jobs[SB_B2], SB_B2, "Übernommen.", "<b2@kunde-b.example>"))
    seen = mail(
        jobs[SB_B1],
        SB_B1,
        "Ergänzend: bitte Fotos.",
        "<b1@kunde-b.example>",
        references="<schaden@ams.example> <b2@kunde-b.example>",
    )
    answer = await replies.receive(seen)
    assert "held" not in answer, answer
    assert [a for a, _ in await relays(writer)] == [SB_B2, SB_B1]


async def test_an_answer_before_the_copy_was_delivered_does_not_collide(writer: Writer) -> None:
    jobs = await copies_of(writer)
    replies = stage(writer)
    await replies.receive(mail(jobs[SB_B2], SB_B2, "Übernommen.", "<b2@kunde-b.example>"))
    # SB-B1's copy was written into the mailbox after SB-B2's answer: it came with \Answered.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    await writer.run(
        lambda c: c.execute(
            update(CopyRow).where(CopyRow.copy_id == jobs[SB_B1].copy_id).values(delivered_at=later)
        )
    )
    answer = await replies.receive(mail(jobs[SB_B1], SB_B1, "Auch.", "<b1@kunde-b.example>"))
    assert "held" not in answer, answer
    assert len(await relays(writer)) == 2


@pytest.mark.parametrize("guard", ["off", "notify"])
async def test_off_relays_and_notify_relays_then_tells(writer: Writer, guard: str) -> None:
    await writer.run(lambda c: c.execute(update(ReleaseRow).values(collision_guard=guard)))
    jobs = await copies_of(writer)
    replies = stage(writer)
    await replies.receive(mail(jobs[SB_B2], SB_B2, "Übernommen.", "<b2@kunde-b.example>"))
    answer = await replies.receive(mail(jobs[SB_B1], SB_B1, "Auch.", "<b1@kunde-b.example>"))
    assert "held" not in answer, answer
    assert [a for a, _ in await relays(writer)] == [SB_B2, SB_B1]
    mailbox = MemoryMailbox()
    written = await worker(writer, mailbox).notices()
    if guard == "off":
        assert written == 0
        return
    assert written == 1
    held_id = await writer.run(lambda c: c.scalar(select(HeldReplyRow.held_id)))
    text = (await the_notice(mailbox, str(held_id))).get_content()
    assert "wurde gesendet" in text
    assert SB_B2 in text
    assert "Send mine anyway" not in text


async def test_two_replies_at_once_are_ordered_the_first_goes_through(writer: Writer) -> None:
    jobs = await copies_of(writer)
    replies = stage(writer)
    answers = await asyncio.gather(
        replies.receive(mail(jobs[SB_B1], SB_B1, "Eins.", "<b1@kunde-b.example>")),
        replies.receive(mail(jobs[SB_B2], SB_B2, "Zwei.", "<b2@kunde-b.example>")),
    )
    assert sum("held" in a for a in answers) == 1, answers
    (held,) = await writer.run(held_replies)
    first, second = await writer.run(
        lambda c: list(
            c.scalars(
                select(MessageRow.id)
                .where(MessageRow.direction == "reply")
                .order_by(MessageRow.received_at, MessageRow.id)
            )
        )
    )
    # The one stored second is the held one, whichever member wrote it.
    assert held.message_pk == second
    assert held.collides_with_pk == first


@pytest.mark.parametrize(("after", "relayed"), [("release", 2), ("withdraw", 1)])
async def test_the_hold_timeout(writer: Writer, after: str, relayed: int) -> None:
    await writer.run(
        lambda c: c.execute(update(ReleaseRow).values(after_hold_timeout=after, hold_timeout=3600))
    )
    await held_situation(writer)
    held = worker(writer, MemoryMailbox())
    now = dt.datetime.now(dt.UTC)
    assert await held.timeouts(now + dt.timedelta(minutes=59)) == 0
    assert await held.timeouts(now + dt.timedelta(minutes=61)) == 1
    assert len(await relays(writer)) == relayed
    assert await held.timeouts(now + dt.timedelta(minutes=62)) == 0
    event = await writer.run(
        lambda c: c.execute(
            select(EventRow.kind, EventRow.actor).where(
                EventRow.kind.in_(["reply.released", "reply.withdrawn"])
            )
        ).one()
    )
    assert tuple(event) == (f"reply.{'released' if after == 'release' else 'withdrawn'}", "gateway:n1")


async def test_legacy_ams_gets_the_same_guard(writer: Writer) -> None:
    await writer.run(lambda c: c.execute(update(BackOfficeRow).values(ams_version="4.7.0.1")))
    replies, jobs = await held_situation(writer)
    assert len(await relays(writer)) == 1
    mailbox = MemoryMailbox()
    await worker(writer, mailbox).notices()
    (held,) = await writer.run(held_replies)
    send, _ = addresses_in((await the_notice(mailbox, held.held_id)).get_content())
    answer = await replies.receive(mail(jobs[SB_B1], SB_B1, "ja", "<x3@kunde-b.example>", to=send))
    assert answer.startswith("250"), answer
    _, data = (await relays(writer))[1]
    # The legacy back office hears from the Vorgang's original participant; the actual sender travels along.
    assert f"X-Gateway-Actual-Sender: {SB_B1}".encode() in data
    assert b"Bitte Unterlagen schicken." in data


async def test_reconciliation_hands_out_no_copy_of_a_held_reply_and_the_cli_releases_it(
    writer: Writer, with_login: Gateway
) -> None:
    await held_situation(writer)
    # A directory change that widens audiences: reconciliation plans every message of the portfolio.
    await admin(with_login, "release", "remove-member", "Kunde B mit GF", GF_B, "-p", PORTFOLIO)
    await admin(with_login, "release", "add-member", "Kunde B mit GF", GF_B, "-p", PORTFOLIO)
    running = reconciler(writer)
    while await running.run_once():
        pass
    assert await copies_of_message(writer, "<b1@kunde-b.example>") == 0, "the held reply's copies wait"
    (held,) = await writer.run(held_replies)
    out = await admin(with_login, "held", "release", held.held_id)
    assert f"released {held.held_id}" in out
    assert await copies_of_message(writer, "<b1@kunde-b.example>") == 2  # SB-B2 and GF-B
    assert [a for a, _ in await relays(writer)] == [SB_B2, SB_B1]
    [actor] = await writer.run(
        lambda c: list(c.scalars(select(EventRow.actor).where(EventRow.kind == "reply.released")))
    )
    assert str(actor).startswith("cli:")
