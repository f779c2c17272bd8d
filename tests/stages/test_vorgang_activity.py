"""Each Vorgang's stored last activity (``vorgaenge.last_message_at``) after every way mail is stored:
acceptance, a member's reply, a member's mail to the intake address; and the Vorgänge list ordered by it,
on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection

from gateway.db.engine import create_engine, session_factory
from gateway.db.messages import NewMessage, insert_message, list_vorgaenge, recount_last_message
from gateway.db.models import Direction, MemberRow, MessageRow, PortfolioRow, VorgangRow, utc
from gateway.db.writer import Writer
from gateway.senderauth.dns import StaticResolver
from gateway.stages.parsepool import read_arrival
from gateway.stages.reply import Incoming
from tests.stages.conftest import PORTFOLIO, accept
from tests.stages.test_reply import SB_B2, answered_copy, incoming, intake, reply_to

INTAKE = "neu@intake.gateway.test"


class Activity:
    """What the database says of one Vorgang: its stored last activity, its messages' newest, its opening."""

    def __init__(self, stored: dt.datetime, newest: dt.datetime | None, opened: dt.datetime) -> None:
        self.stored, self.newest, self.opened = utc(stored), newest and utc(newest), utc(opened)


async def activity(writer: Writer, reference: str) -> Activity:
    def read(connection: Connection) -> Activity:
        vid, stored, opened = connection.execute(
            select(VorgangRow.id, VorgangRow.last_message_at, VorgangRow.created_at).where(
                VorgangRow.reference == reference
            )
        ).one()
        newest = connection.scalar(
            select(func.max(MessageRow.received_at)).where(MessageRow.vorgang_id == vid)
        )
        return Activity(stored, newest, opened)

    return await writer.run(read)


async def listed(database_url: str, **filters: object) -> list[str]:
    """The references of the portfolio's Vorgänge as the list shows them (``gateway vorgang list``)."""
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            pid = await session.scalar(select(PortfolioRow.id).where(PortfolioRow.name == PORTFOLIO))
            assert pid is not None
            return [v.reference for v in await list_vorgaenge(session, pid, **filters)]  # type: ignore[arg-type]
    finally:
        await engine.dispose()


async def reference_of(writer: Writer, gateway_id: str) -> str:
    return str(
        await writer.run(
            lambda c: c.scalar(
                select(VorgangRow.reference)
                .join(MessageRow, MessageRow.vorgang_id == VorgangRow.id)
                .where(MessageRow.gateway_id == gateway_id)
            )
        )
    )


async def test_acceptance_stores_the_message_time_on_its_vorgang(writer: Writer) -> None:
    reference = await reference_of(writer, await accept(writer, "sb-a1@kunde-a.example", "Police 1"))
    seen = await activity(writer, reference)
    assert seen.newest is not None
    assert seen.stored == seen.newest


async def test_a_reply_moves_its_vorgang_to_the_top_of_the_list(writer: Writer, database_url: str) -> None:
    job = await answered_copy(writer)  # the Vorgang "Policy", opened first
    answered = await reference_of(writer, job.gateway_id)
    later = await reference_of(writer, await accept(writer, "sb-b1@kunde-b.example", "Police 2"))
    assert (await listed(database_url))[:2] == [later, answered]
    before = await activity(writer, answered)

    answer = await intake(writer, StaticResolver()).receive(incoming(job, reply_to(job)))
    assert answer.startswith("250"), answer

    after = await activity(writer, answered)
    assert after.newest is not None
    assert after.newest > before.stored, "the reply is the newest message"
    assert after.stored == after.newest
    assert (await listed(database_url))[:2] == [answered, later]
    # Filtered by a member with a copy of both, the order is the same.
    assert (await listed(database_url, member_id=await member_id(writer, SB_B2)))[:2] == [answered, later]


async def member_id(writer: Writer, address: str) -> int:
    return int(await writer.run(lambda c: c.scalar(select(MemberRow.id).where(MemberRow.address == address))))


async def test_an_intake_mail_opens_a_vorgang_at_its_time(writer: Writer, database_url: str) -> None:
    await accept(writer, "sb-a1@kunde-a.example", "Police 3")
    stage = intake(writer, StaticResolver())
    stage.context = replace(stage.context, intake={INTAKE: PORTFOLIO})
    raw = (
        f"From: SB-B2 <{SB_B2}>\r\nTo: {INTAKE}\r\nSubject: Neuer Schaden\r\n"
        "Message-ID: <neu-1@kunde-b.example>\r\n\r\nEin Rohr ist gebrochen.\r\n"
    ).encode()
    read = read_arrival(raw, SB_B2, 30)
    mail = Incoming(
        envelope_sender=SB_B2,
        recipients=(INTAKE,),
        raw=raw,
        parsed=read.parsed,
        client_ip="192.0.2.10",
        helo="mx.kunde-b.example",
        peer="192.0.2.10:4711",
        classification=read.classification,
        report=read.report,
    )
    answer = await stage.receive(mail)
    assert answer.startswith("250"), answer
    opened = await writer.run(
        lambda c: c.scalar(select(VorgangRow.reference).where(VorgangRow.subject == "Neuer Schaden"))
    )
    seen = await activity(writer, str(opened))
    assert seen.newest is not None
    assert seen.stored == seen.newest
    assert (await listed(database_url))[0] == opened


async def test_a_late_older_message_leaves_it_and_a_deleted_one_is_recounted(writer: Writer) -> None:
    reference = await reference_of(writer, await accept(writer, "sb-a1@kunde-a.example", "Police 4"))
    first = await activity(writer, reference)
    vid = await writer.run(lambda c: c.scalar(select(VorgangRow.id).where(VorgangRow.reference == reference)))
    pid = await writer.run(lambda c: c.scalar(select(PortfolioRow.id).where(PortfolioRow.name == PORTFOLIO)))

    def message(gateway_id: str, at: dt.datetime) -> NewMessage:
        return NewMessage(
            gateway_id=gateway_id,
            portfolio_id=pid,
            vorgang_id=vid,
            direction=Direction.INBOUND,
            raw=b"Subject: x\r\n\r\nx\r\n",
            sha256=gateway_id,
            message_id=f"<{gateway_id}@ams.example>",
            message_id_assigned=False,
            subject="x",
            envelope_sender="ams@makler-muster.example",
            received_at=at,
        )

    await writer.run(insert_message, message("gw-older", first.stored - dt.timedelta(hours=1)))
    assert (await activity(writer, reference)).stored == first.stored, "never moved back"
    newer = first.stored + dt.timedelta(hours=1)
    await writer.run(insert_message, message("gw-newer", newer))
    assert (await activity(writer, reference)).stored == newer

    def drop(connection: Connection, *where: object) -> None:
        connection.execute(delete(MessageRow).where(MessageRow.vorgang_id == vid, *where))  # type: ignore[arg-type]
        recount_last_message(connection, vid)

    await writer.run(drop, MessageRow.gateway_id == "gw-newer")
    assert (await activity(writer, reference)).stored == first.stored
    await writer.run(drop)
    emptied = await activity(writer, reference)
    assert emptied.newest is None
    assert emptied.stored == emptied.opened, "without messages, when it was opened"
