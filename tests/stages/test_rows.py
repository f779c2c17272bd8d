"""The rows storage writes for the stages (events, messages, copies, relays), read back column by column
on SQLite and PostgreSQL: a wrong row here is a wrong record everywhere."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, select, text

from gateway.db import acceptance
from gateway.db.copies import Lease, copies_for, handed_job, insert_copies
from gateway.db.events import Event, EventKind, append_events
from gateway.db.messages import NewMessage, insert_message
from gateway.db.models import (
    CopyRow,
    Direction,
    EventRow,
    MemberRow,
    MessageKind,
    MessageRow,
    ParticipantRow,
    PortfolioRow,
    RelayPurpose,
    RelayRow,
)
from gateway.db.relayqueue import NewRelay, queue_relay
from gateway.db.writer import Writer
from gateway.domain.audience import audience
from gateway.domain.model import Participant, ParticipantRole
from gateway.domain.rules import CopyHeaders
from tests.stages.conftest import PORTFOLIO

NOW = dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.UTC)
SB_A1 = "sb-a1@kunde-a.example"
SB_A2 = "sb-a2@kunde-a.example"


def _ids(connection: Connection) -> tuple[int, int, int]:
    """The portfolio, member SB-A1, and a new Vorgang."""
    pid = connection.scalar(select(PortfolioRow.id).where(PortfolioRow.name == PORTFOLIO))
    member = connection.scalar(select(MemberRow.id).where(MemberRow.address == SB_A1))
    assert pid is not None
    assert member is not None
    ((vorgang_id, _),) = acceptance.new_vorgaenge(connection, pid, ["Schaden"], NOW)
    return int(pid), int(member), vorgang_id


def _message(pid: int, vorgang_id: int, **changes: Any) -> NewMessage:
    values: dict[str, Any] = {
        "gateway_id": "gw-rows-test",
        "portfolio_id": pid,
        "vorgang_id": vorgang_id,
        "direction": Direction.INBOUND,
        "raw": b"Subject: Schaden\r\n\r\nText\r\n",
        "sha256": "ab" * 32,
        "message_id": "<m1@ams.example>",
        "message_id_assigned": False,
        "subject": "Schaden",
        "envelope_sender": "ams@makler-muster.example",
        "received_at": NOW,
    }
    return NewMessage(**(values | changes))


async def test_every_kind_of_directory_change_has_its_event_kind() -> None:
    kinds = {"portfolio": ("create", "update"), "member": ("create", "update", "delete")}
    kinds |= {"backoffice": ("create", "update", "delete"), "release": ("create", "update", "delete")}
    kinds |= {"membership": ("add", "remove")}
    for kind, actions in kinds.items():
        for action in actions:
            assert EventKind(f"{kind}.{action}").value == f"{kind}.{action}"
    assert len({k.value for k in EventKind}) == len(EventKind)


async def test_append_events_writes_every_column(writer: Writer) -> None:
    def write(connection: Connection) -> list[Any]:
        pid, member, vorgang_id = _ids(connection)
        append_events(
            connection,
            [
                Event(EventKind.INTAKE_ACCEPTED, "member:x", NOW, pid, member, vorgang_id, None, {"a": [1]}),
                Event(EventKind.QUEUE_DROPPED, "cli:admin", NOW),
            ],
        )
        rows = connection.execute(
            select(
                EventRow.kind,
                EventRow.actor,
                EventRow.portfolio_id,
                EventRow.member_id,
                EventRow.vorgang_id,
                EventRow.message_id,
                EventRow.detail,
            )
            .where(EventRow.actor.in_(("member:x", "cli:admin")))
            .order_by(EventRow.id)
        )
        return [(pid, member, vorgang_id), *rows]

    (pid, member, vorgang_id), first, second = await writer.run(write)
    assert tuple(first) == ("intake.accepted", "member:x", pid, member, vorgang_id, None, {"a": [1]})
    assert tuple(second) == ("queue.dropped", "cli:admin", None, None, None, None, {})


async def test_insert_message_fits_and_records_participants_once(writer: Writer) -> None:
    def write(connection: Connection) -> tuple[Any, ...]:
        pid, member, vorgang_id = _ids(connection)
        sender = Participant(member, ParticipantRole.SENDER)
        message = _message(
            pid,
            vorgang_id,
            in_reply_to=["<a@x>", "<" + "b" * 1000 + "@x>"],
            references=["<a@x>", "<c@x>"],
            from_address="x" * 400,
            size=4711,
            kind=MessageKind.AUTO_REPLY,
            participants=[sender, sender],
        )
        pk = insert_message(connection, message)
        row = connection.execute(
            select(
                MessageRow.direction,
                MessageRow.kind,
                MessageRow.size,
                MessageRow.in_reply_to,
                MessageRow.references,
                MessageRow.from_address,
            ).where(MessageRow.id == pk)
        ).one()
        # None is SQL NULL in the JSON columns, not JSON null.
        nulls = connection.execute(
            text("SELECT copy_headers IS NULL, trace IS NULL FROM messages WHERE id = :pk"), {"pk": pk}
        ).one()
        roles = list(
            connection.execute(
                select(ParticipantRow.member_id, ParticipantRow.role).where(ParticipantRow.message_id == pk)
            )
        )
        return tuple(row), tuple(nulls), roles, member

    row, nulls, roles, member = await writer.run(write)
    assert row == ("inbound", "auto-reply", 4711, "<a@x>", "<a@x> <c@x>", None)
    assert nulls == (True, True)
    assert [tuple(r) for r in roles] == [(member, "sender")]


async def test_copies_are_stored_pending_and_handed_off_as_jobs(writer: Writer) -> None:
    def write(connection: Connection) -> tuple[Any, ...]:
        pid, member, vorgang_id = _ids(connection)
        other = connection.scalar(select(MemberRow.id).where(MemberRow.address == SB_A2))
        assert other is not None
        headers = CopyHeaders(set=(("X-Test", "1"),))
        message = _message(pid, vorgang_id, copy_headers=headers)
        pk = insert_message(connection, message)
        releases = acceptance.sharing_releases(connection, pid, {member})
        seen_by = audience(pid, [Participant(member, ParticipantRole.TO)], releases)
        copies = copies_for(pk, pid, seen_by)
        lease = Lease("node-1", NOW + dt.timedelta(seconds=60))
        copy_pks = insert_copies(connection, copies, NOW, lease)
        rows = list(
            connection.execute(
                select(
                    CopyRow.id,
                    CopyRow.member_id,
                    CopyRow.state,
                    CopyRow.leased_by,
                    CopyRow.shared_via_release_id,
                    CopyRow.seen,
                    CopyRow.flags_pending,
                )
                .where(CopyRow.message_id == pk)
                .order_by(CopyRow.id)
            )
        )
        job = handed_job(copies[1], copy_pks[1], message, portfolio=PORTFOLIO, vorgang="VG-1", address=SB_A2)
        return member, int(other), copies, copy_pks, rows, job, headers

    member, other, copies, copy_pks, rows, job, headers = await writer.run(write)
    assert [c.member_id for c in copies] == [member, other]
    assert [c.shared_via for c in copies] == [None, "Kunde A Sachbearbeiter"]
    assert [r[0] for r in rows] == copy_pks
    assert [(r[1], r[2], r[3], r[5], r[6]) for r in rows] == [
        (member, "pending", "node-1", False, False),
        (other, "pending", "node-1", False, False),
    ]
    assert [r[4] for r in rows] == [None, copies[1].shared_via_release_id]
    assert (job.id, job.copy_id, job.member_id, job.address) == (copy_pks[1], copies[1].copy_id, other, SB_A2)
    assert (job.first_attempt, job.attempts, job.copy_headers) == (True, 0, headers)


async def test_queue_relay_queues_once_per_message_and_purpose(writer: Writer) -> None:
    def write(connection: Connection) -> tuple[Any, ...]:
        pid, member, vorgang_id = _ids(connection)
        pk = insert_message(connection, _message(pid, vorgang_id))
        relay = NewRelay(pid, pk, None, member, "", ("ams@makler-muster.example",), "<mdn.1@gw>", b"data")
        first = queue_relay(connection, relay, NOW, 3600)
        again = queue_relay(connection, relay, NOW, 3600)
        notice = queue_relay(connection, replace(relay, purpose=RelayPurpose.DELAYED), NOW, 60)
        row = connection.execute(
            select(
                RelayRow.purpose,
                RelayRow.state,
                RelayRow.envelope_sender,
                RelayRow.recipients,
                RelayRow.attempts,
                RelayRow.expires_at,
            ).where(RelayRow.message_id == pk, RelayRow.purpose == RelayPurpose.MAIL)
        ).one()
        return first, again, notice, tuple(row)

    first, again, notice, row = await writer.run(write)
    assert (first, again, notice) == (True, False, True)
    assert row[:5] == (RelayPurpose.MAIL.value, "pending", "", ["ams@makler-muster.example"], 0)
    expires = row[5] if row[5].tzinfo else row[5].replace(tzinfo=dt.UTC)
    assert expires == NOW + dt.timedelta(seconds=3600)
