"""Read notifications on SQLite and PostgreSQL: a member's first read of a back-office mail that asked
for one queues exactly one RFC 8098 MDN for the relay, and the relay sends it from <> and never bounces it.

The members' mail clients are played as in test_flagsync: renaming Maildir files (``cur/NAME:2,S``).
The back office's mail goes to SB-B1; SB-B2 and GF-B see it through the seed's releases.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
from email.message import EmailMessage, Message
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from gateway.config import RelaySettings
from gateway.db.accounts import find_account
from gateway.db.models import MemberRow, MessageRow, RelayRow, VorgangRow
from gateway.db.writer import Writer
from gateway.domain.parsing import parse_message
from gateway.stages.acceptance import Acceptance, HandOff, Submission
from gateway.stages.relay import Relay
from tests.conftest import Gateway
from tests.e2e.conftest import BackOfficeSink
from tests.stages.conftest import PORTFOLIO
from tests.stages.test_flagsync import GF_B, SB_B1, SB_B2, World, read_sync

BACKOFFICE = "ams@makler-muster.example"


@pytest.fixture
async def world(writer: Writer, tmp_path: Path) -> World:
    return World(writer, tmp_path / "mail")


async def deliver(
    world: World,
    subject: str,
    *,
    asks: str | None = f"Makler Muster <{BACKOFFICE}>",
    envelope_sender: str = BACKOFFICE,
    extra: str = "",
) -> str:
    """The back office's mail to SB-B1, fanned out to SB-B1, SB-B2 and GF-B; returns its gateway id."""
    account = await world.writer.run(find_account, BACKOFFICE)
    assert account is not None
    asking = f"Disposition-Notification-To: {asks}\r\n" if asks is not None else ""
    raw = (
        f"From: Makler Muster <{BACKOFFICE}>\r\nTo: SB-B1 <{SB_B1}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@ams.example>\r\n{asking}{extra}\r\nBitte um Rückmeldung.\r\n"
    ).encode()
    submission = Submission(account, envelope_sender, (SB_B1,), raw, parse_message(raw), "submission", "x")
    accepted: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    acceptance = Acceptance(world.writer, hostname="gw.example", handoff=HandOff("n1", 60, world.jobs.extend))
    await acceptance._store([(submission, accepted)])  # type: ignore[list-item]
    gateway_id = str(getattr(await accepted, "gateway_id"))  # noqa: B009
    world.fanout.take(world.jobs)
    await world.fanout.run_once()
    assert [len(world.files(a)) for a in (SB_B1, SB_B2, GF_B)] == [1, 1, 1]
    return gateway_id


async def relay_rows(writer: Writer) -> list[RelayRow]:
    def rows(connection: object) -> list[RelayRow]:
        return list(connection.execute(select(RelayRow.__table__)))  # type: ignore[attr-defined]

    return await writer.run(rows)


async def member_id(writer: Writer, address: str) -> int:
    return int(await writer.run(lambda c: c.scalar(select(MemberRow.id).where(MemberRow.address == address))))


def notification(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def disposition(data: bytes) -> dict[str, str]:
    part = notification(data).get_payload()[1]  # type: ignore[index]
    assert part.get_content_type() == "message/disposition-notification"
    (fields,) = part.get_payload()
    assert isinstance(fields, Message)
    return {name.lower(): str(value) for name, value in fields.items()}


# --- flag sync: the first read queues one -----------------------------------------------------------------


async def test_the_first_read_queues_one_notification_naming_the_reader(world: World) -> None:
    gateway_id = await deliver(world, "Erstlesung")
    before = dt.datetime.now(dt.UTC)
    world.client_sets(SB_B1, "S")
    await world.sync()

    (row,) = await relay_rows(world.writer)
    assert row.envelope_sender == "", "RFC 8098 §3: an MDN comes from the null reverse-path"
    assert row.recipients == [BACKOFFICE]
    assert row.member_id == await member_id(world.writer, SB_B1)
    message = await world.writer.run(
        lambda c: c.execute(
            select(MessageRow.id, MessageRow.backoffice_id).where(MessageRow.gateway_id == gateway_id)
        ).one()
    )
    assert (row.message_id, row.backoffice_id) == (message.id, message.backoffice_id)
    assert row.backoffice_id is not None
    assert row.state == "pending"
    assert row.relay_message_id == f"<mdn.{gateway_id}@gw.example>"
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=dt.UTC)
    assert before + dt.timedelta(seconds=3590) < expires < before + dt.timedelta(seconds=3700)

    mdn = notification(row.data)
    assert mdn["Message-ID"] == row.relay_message_id
    assert mdn["To"] == BACKOFFICE
    assert mdn["From"].addresses[0].addr_spec == SB_B1
    assert mdn["From"].addresses[0].display_name == "SB-B1", "the member's name from the directory"
    assert str(mdn["Subject"]) == "Gelesen / Read: Erstlesung"
    assert mdn["In-Reply-To"] == "<Erstlesung@ams.example>"
    assert disposition(row.data) == {
        "reporting-ua": "gw.example; vorgang-gateway",
        "original-recipient": f"rfc822;{SB_B1}",
        "final-recipient": f"rfc822;{SB_B1}",
        "original-message-id": "<Erstlesung@ams.example>",
        "disposition": "manual-action/MDN-sent-automatically; displayed",
    }
    (queued,) = await world.events("mdn.queued")
    assert queued == {
        "reader": SB_B1,
        "copy_id": queued["copy_id"],
        "to": BACKOFFICE,
        "relay_message_id": row.relay_message_id,
    }

    # A colleague reads it too, SB-B1 marks it unread and reads it again: nothing more is sent.
    world.client_sets(SB_B2, "S")
    world.client_sets(SB_B1, "")
    await world.sync()
    world.client_sets(SB_B1, "S")
    await world.sync()
    assert len(await relay_rows(world.writer)) == 1
    assert len(await world.events("mdn.queued")) == 1
    assert len([e for e in await world.events("flag.set") if e["flag"] == "\\Seen"]) == 3, (
        "all reads recorded"
    )


async def test_a_colleague_who_sees_it_through_a_release_may_be_the_first_reader(world: World) -> None:
    await deliver(world, "Kollegin")
    world.client_sets(GF_B, "S")
    await world.sync()
    (row,) = await relay_rows(world.writer)
    assert row.member_id == await member_id(world.writer, GF_B)
    fields = disposition(row.data)
    assert fields["final-recipient"] == f"rfc822;{GF_B}"
    assert "original-recipient" not in fields, "GF-B was not an addressee: RFC 8098 §3.2.3"
    assert "GF-B" in str(notification(row.data)["From"])


async def test_a_seen_propagated_by_the_gateway_is_no_read(world: World) -> None:
    await read_sync(world.writer, "seen")
    await deliver(world, "Weitergereicht")
    world.client_sets(SB_B1, "S")
    await world.sync()
    assert len(await relay_rows(world.writer)) == 1
    # Take the guard away: only the propagated \Seen on SB-B2's and GF-B's copies is left to notice.
    await world.writer.run(lambda c: c.execute(delete(RelayRow)))
    await world.sync()
    await world.sync()
    assert (world.letters(SB_B2), world.letters(GF_B)) == ("S", "S"), "the gateway wrote \\Seen to both"
    assert await relay_rows(world.writer) == []
    assert len(await world.events("mdn.queued")) == 1


async def test_the_second_reader_sends_nothing_when_the_first_read_found_nothing_to_send(
    world: World,
) -> None:
    await deliver(world, "Ohne", asks=None)
    world.client_sets(SB_B1, "S")
    world.client_sets(SB_B2, "S")
    await world.sync()
    assert await relay_rows(world.writer) == []
    assert await world.events("mdn.queued") == []
    assert await world.events("mdn.not_sent") == [], "a mail that asked for nothing is not mentioned"


async def test_an_address_that_is_neither_envelope_sender_nor_from_gets_none(world: World) -> None:
    await deliver(world, "Dritter", asks="someone@elsewhere.example")
    world.client_sets(SB_B1, "S")
    await world.sync()
    assert await relay_rows(world.writer) == []
    (refused,) = await world.events("mdn.not_sent")
    assert refused["reader"] == SB_B1
    assert "someone@elsewhere.example is neither the envelope sender" in str(refused["reason"])


async def test_the_from_address_counts_when_the_back_office_sends_from_a_bounce_address(world: World) -> None:
    await deliver(world, "Verp", envelope_sender="bounces+4711@makler-muster.example")
    world.client_sets(SB_B1, "S")
    await world.sync()
    (row,) = await relay_rows(world.writer)
    assert row.recipients == [BACKOFFICE]


@pytest.mark.parametrize(
    ("envelope_sender", "extra"),
    [("", ""), (BACKOFFICE, "Auto-Submitted: auto-generated\r\n")],
)
async def test_a_notification_is_not_answered_with_one(
    world: World, envelope_sender: str, extra: str
) -> None:
    await deliver(world, "Automatisch", envelope_sender=envelope_sender, extra=extra)
    world.client_sets(SB_B1, "S")
    await world.sync()
    assert await relay_rows(world.writer) == []
    assert len(await world.events("mdn.not_sent")) == 1


async def test_vorgang_show_names_it_a_read_notification(world: World, with_login: Gateway) -> None:
    await deliver(world, "Anzeige")
    world.client_sets(SB_B1, "S")
    await world.sync()
    reference = await world.writer.run(lambda c: c.scalar(select(VorgangRow.reference)))
    # The CLI runs its own event loop: in a thread of its own, next to this test's.
    shown = (await asyncio.to_thread(with_login, "vorgang", "show", str(reference), "-p", PORTFOLIO)).stdout
    assert f"read notification (MDN) to {BACKOFFICE}: pending, attempts 0" in shown


# --- the relay: from <>, and never a bounce ---------------------------------------------------------------


@pytest.fixture
def sink(with_login: Gateway) -> object:
    server = BackOfficeSink()
    server.up()
    with_login("backoffice", "set", "ams", "-p", PORTFOLIO, "--relay-port", str(server.port))
    try:
        yield server
    finally:
        server.down()


def relay_of(world: World) -> Relay:
    settings = RelaySettings(retry_base=0.1, retry_max=0.1)
    return Relay(world.writer, world.mailbox, settings, node="n1", hostname="gw.example")


async def test_the_relay_sends_it_from_the_null_reverse_path(world: World, sink: BackOfficeSink) -> None:
    await deliver(world, "Gesendet")
    world.client_sets(SB_B1, "S")
    await world.sync()
    assert await relay_of(world).run_once() == 1
    (received,) = await asyncio.to_thread(sink.wait_for, 1)
    assert received.mail_from == "<>", "MAIL FROM:<> (aiosmtpd keeps the null reverse-path as <>)"
    assert received.rcpt_tos == [BACKOFFICE]
    ((row,)) = await relay_rows(world.writer)
    assert received.data.replace(b"\r\n", b"\n") == row.data.replace(b"\r\n", b"\n")
    assert row.state == "sent"


@pytest.mark.parametrize("answer", ["550 5.1.1 no such user", "451 4.3.0 try later"])
async def test_a_notification_that_cannot_be_delivered_is_never_bounced(
    world: World, sink: BackOfficeSink, answer: str
) -> None:
    await deliver(world, "Unzustellbar")
    world.client_sets(SB_B1, "S")
    await world.sync()
    if answer.startswith("4"):
        # A temporary refusal at the end of the notification's lifetime ends it just the same.
        await world.writer.run(
            lambda c: c.execute(
                update(RelayRow).values(expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.05))
            )
        )
    sink.answers = [answer]
    assert await relay_of(world).run_once() == 1
    (row,) = await relay_rows(world.writer)
    assert row.state == "failed"
    assert answer in (row.last_error or "")
    assert len(world.files(SB_B1)) == 1, "no delivery status notification in the reader's mailbox"
    (failed,) = await world.events("relay.failed")
    assert failed["error"] == answer
