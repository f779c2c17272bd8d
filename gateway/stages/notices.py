"""Notices to a back office about its mail's copies: late (RFC 3464 action=delayed) or given up (failed).

Accepted mail is never dropped in silence (DESIGN.md §8). A copy that cannot be written keeps being
tried (held copies by a probe of their mailbox, gateway.db.queue); after ``[fanout] delay_notice_after``
the back office that sent the mail gets a delay notice, and after ``[fanout] lifetime`` the gateway
gives the copy up (state ``failed``) and sends a failure notice. One notice of each kind per message,
naming every member whose copy waits; each is an event, and each travels through the relay queue from
the null reverse-path (RFC 3464 §2: nothing answers a DSN), to the message's envelope sender at the
back office's own server. The texts are the existing DSN's (gateway.domain.dsn), German and English.

Mail members wrote (their replies, copied to co-members) gets no notice: its back office did not send it,
and the member's own copy went out with the reply; the event log and `gateway queue` show it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, LargeBinary, func, select
from sqlalchemy.dialects import postgresql, sqlite

from gateway.db import acceptance, queue
from gateway.db.models import MessageRow, RelayRow
from gateway.db.queue import LateCopy
from gateway.domain.dsn import build_failure_report, report_subject
from gateway.domain.parsing import MAX_HEADER_BYTES

log = logging.getLogger("gateway.stages.notices")

# Messages noticed per sweep: a large outage is told over a few sweeps, never in one huge transaction.
BATCH = 200


@dataclass(frozen=True, slots=True)
class NoticeSettings:
    """What the notices need from the configuration."""

    hostname: str  # Reporting-MTA and the notices' Message-IDs
    delay_after: float  # [fanout] delay_notice_after; 0: no delay notices
    lifetime: float  # [fanout] lifetime: when a copy is given up
    relay_lifetime: float  # [relay] lifetime: how long the relay tries to deliver a notice


@dataclass(frozen=True, slots=True)
class Swept:
    given_up: int
    notices: int


def sweep(connection: Connection, settings: NoticeSettings, now: dt.datetime, node: str) -> Swept:
    """Give up on copies past their lifetime, and queue the notices that are due."""
    given_up = queue.give_up(connection, now - dt.timedelta(seconds=settings.lifetime), now)
    events: list[dict[str, object]] = []
    for copy in given_up:
        events.append(
            _event(connection, copy.message_pk, node, now)
            | {
                "kind": "copy.given_up",
                "member_id": copy.member_id,
                "detail": {"to": copy.address, "error": copy.last_error},
            }
        )
    acceptance.insert_rows(connection, acceptance.EVENTS, events)
    queued = 0
    failed_messages = sorted({c.message_pk for c in given_up})
    for message_pk in failed_messages:
        copies = queue.late_copies(connection, [message_pk], ["failed"])
        queued += _notice(connection, settings, message_pk, copies, "failed", now, node)
    if settings.delay_after > 0:
        before = now - dt.timedelta(seconds=settings.delay_after)
        for message_pk in queue.unnoticed_late_messages(connection, before, BATCH):
            copies = queue.late_copies(connection, [message_pk], ["pending", "held"])
            queued += _notice(connection, settings, message_pk, copies, "delayed", now, node)
    if given_up:
        log.warning("gave up on %d copies after [fanout] lifetime", len(given_up))
    return Swept(len(given_up), queued)


def _event(connection: Connection, message_pk: int, node: str, now: dt.datetime) -> dict[str, object]:
    portfolio_id, vorgang_id = connection.execute(
        select(MessageRow.portfolio_id, MessageRow.vorgang_id).where(MessageRow.id == message_pk)
    ).one()
    return {
        "at": now,
        "portfolio_id": portfolio_id,
        "actor": f"gateway:{node}",
        "member_id": None,
        "vorgang_id": vorgang_id,
        "message_id": message_pk,
    }


def _notice(
    connection: Connection,
    settings: NoticeSettings,
    message_pk: int,
    copies: Sequence[LateCopy],
    action: str,
    now: dt.datetime,
    node: str,
) -> int:
    """Queue the ``action`` notice about ``copies`` of the message for its back office; 1 if queued."""
    row = connection.execute(
        select(
            MessageRow.gateway_id,
            MessageRow.portfolio_id,
            MessageRow.backoffice_id,
            MessageRow.envelope_sender,
            func.substr(MessageRow.raw, 1, MAX_HEADER_BYTES, type_=LargeBinary),
        ).where(MessageRow.id == message_pk)
    ).one()
    gateway_id, portfolio_id, backoffice_id, envelope_sender, head = row
    event = _event(connection, message_pk, node, now)
    if not copies:
        return 0
    addresses = [c.address for c in copies]
    reason = ""
    if backoffice_id is None:
        reason = "the back office that sent the mail is no longer in the directory"
    elif not envelope_sender:
        reason = "the mail came from the null reverse-path; nothing answers it (RFC 3464 §2)"
    if reason:
        # Marked as if sent, so that the next sweep does not try again; the event says why not.
        acceptance.insert_rows(
            connection,
            acceptance.EVENTS,
            [
                event
                | {"kind": f"notice.{action}.not_sent", "detail": {"copies_to": addresses, "reason": reason}}
            ],
        )
        return 0
    notice_id = f"<{action}.{gateway_id}@{settings.hostname}>"
    since = min(c.created_at for c in copies)
    error = next((c.last_error for c in copies if c.last_error), None) or "no attempt has succeeded yet"
    if action == "delayed":
        until = since + dt.timedelta(seconds=settings.lifetime)
        status = "4.3.0"
        explanation = (
            f"Noch nicht zugestellt an / Not yet delivered to: {', '.join(addresses)}\n"
            f"Das Gateway versucht es weiter bis / The gateway keeps trying until: "
            f"{until.isoformat(timespec='minutes')}\n"
            "Sie müssen nichts tun. / You need not do anything."
        )
    else:
        status = "4.4.7"
        explanation = (
            f"Nicht zugestellt an / Not delivered to: {', '.join(addresses)}\n"
            f"Das Gateway hat es seit {since.isoformat(timespec='minutes')} versucht und aufgegeben. / "
            f"The gateway tried since {since.isoformat(timespec='minutes')} and gave up."
        )
    headers = bytes(head).split(b"\r\n\r\n", 1)[0] + b"\r\n"
    subject = str(connection.scalar(select(MessageRow.subject).where(MessageRow.id == message_pk)) or "")
    try:
        data = build_failure_report(
            reporting_mta=settings.hostname,
            original_envelope_id=None,
            recipient=addresses[0],
            status=status,
            action=action,
            diagnostic=error,
            original_headers=headers,
            to=envelope_sender,
            subject=report_subject(action, subject),
            message_id=notice_id,
            date=now,
            explanation=explanation,
        )
    except ValueError as exc:
        acceptance.insert_rows(
            connection,
            acceptance.EVENTS,
            [
                event
                | {
                    "kind": f"notice.{action}.not_sent",
                    "detail": {"copies_to": addresses, "reason": str(exc)},
                }
            ],
        )
        return 0
    insert: Any = (postgresql if connection.dialect.name == "postgresql" else sqlite).insert(RelayRow)
    queued = connection.execute(
        insert.values(
            portfolio_id=portfolio_id,
            message_id=message_pk,
            backoffice_id=backoffice_id,
            member_id=copies[0].member_id,
            purpose=action,
            envelope_sender="",
            recipients=[envelope_sender],
            relay_message_id=notice_id,
            data=data,
            state="pending",
            attempts=0,
            next_attempt_at=now,
            leased_by=None,
            expires_at=now + dt.timedelta(seconds=settings.relay_lifetime),
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["message_id", "purpose"])
        .returning(RelayRow.id)
    ).first()
    if queued is None:
        return 0
    acceptance.insert_rows(
        connection,
        acceptance.EVENTS,
        [
            event
            | {
                "kind": f"notice.{action}",
                "detail": {"to": envelope_sender, "copies_to": addresses, "relay_message_id": notice_id},
            }
        ],
    )
    return 1
