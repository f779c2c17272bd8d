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

from sqlalchemy import Connection

from gateway.db import queue
from gateway.db.events import Event, EventKind, append_events
from gateway.db.messages import MessageHead, message_head
from gateway.db.models import CopyState, RelayPurpose
from gateway.db.queue import LateCopy
from gateway.db.relayqueue import NewRelay, queue_relay
from gateway.domain.dsn import build_failure_report, report_subject

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
    append_events(
        connection,
        (
            _event(
                message_head(connection, copy.message_pk),
                EventKind.COPY_GIVEN_UP,
                node,
                now,
                {"to": copy.address, "error": copy.last_error},
                member_id=copy.member_id,
            )
            for copy in given_up
        ),
    )
    queued = 0
    failed_messages = sorted({c.message_pk for c in given_up})
    for message_pk in failed_messages:
        copies = queue.late_copies(connection, [message_pk], [CopyState.FAILED])
        queued += _notice(connection, settings, message_pk, copies, RelayPurpose.FAILED, now, node)
    if settings.delay_after > 0:
        before = now - dt.timedelta(seconds=settings.delay_after)
        for message_pk in queue.unnoticed_late_messages(connection, before, BATCH):
            copies = queue.late_copies(connection, [message_pk], [CopyState.PENDING, CopyState.HELD])
            queued += _notice(connection, settings, message_pk, copies, RelayPurpose.DELAYED, now, node)
    if given_up:
        log.warning("gave up on %d copies after [fanout] lifetime", len(given_up))
    return Swept(len(given_up), queued)


# What each notice is recorded as: queued, or why it was not sent.
_QUEUED = {RelayPurpose.DELAYED: EventKind.NOTICE_DELAYED, RelayPurpose.FAILED: EventKind.NOTICE_FAILED}
_NOT_SENT = {
    RelayPurpose.DELAYED: EventKind.NOTICE_DELAYED_NOT_SENT,
    RelayPurpose.FAILED: EventKind.NOTICE_FAILED_NOT_SENT,
}


def _event(
    message: MessageHead,
    kind: EventKind,
    node: str,
    now: dt.datetime,
    detail: dict[str, object],
    member_id: int | None = None,
) -> Event:
    return Event(
        kind,
        f"gateway:{node}",
        now,
        portfolio_id=message.portfolio_id,
        member_id=member_id,
        vorgang_id=message.vorgang_id,
        message_id=message.pk,
        detail=detail,
    )


def _notice(
    connection: Connection,
    settings: NoticeSettings,
    message_pk: int,
    copies: Sequence[LateCopy],
    action: RelayPurpose,
    now: dt.datetime,
    node: str,
) -> int:
    """Queue the ``action`` notice about ``copies`` of the message for its back office; 1 if queued."""
    if not copies:
        return 0
    message = message_head(connection, message_pk)
    addresses = [c.address for c in copies]
    reason = ""
    if message.backoffice_id is None:
        reason = "the back office that sent the mail is no longer in the directory"
    elif not message.envelope_sender:
        reason = "the mail came from the null reverse-path; nothing answers it (RFC 3464 §2)"
    if reason:
        # Marked as if sent, so that the next sweep does not try again; the event says why not.
        not_sent = _event(message, _NOT_SENT[action], node, now, {"copies_to": addresses, "reason": reason})
        append_events(connection, [not_sent])
        return 0
    notice_id = f"<{action.value}.{message.gateway_id}@{settings.hostname}>"
    since = min(c.created_at for c in copies)
    error = next((c.last_error for c in copies if c.last_error), None) or "no attempt has succeeded yet"
    if action is RelayPurpose.DELAYED:
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
    headers = message.head.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    try:
        data = build_failure_report(
            reporting_mta=settings.hostname,
            original_envelope_id=None,
            recipient=addresses[0],
            status=status,
            action=action.value,
            diagnostic=error,
            original_headers=headers,
            to=message.envelope_sender,
            subject=report_subject(action.value, message.subject),
            message_id=notice_id,
            date=now,
            explanation=explanation,
        )
    except ValueError as exc:
        not_sent = _event(message, _NOT_SENT[action], node, now, {"copies_to": addresses, "reason": str(exc)})
        append_events(connection, [not_sent])
        return 0
    notice = NewRelay(
        message.portfolio_id,
        message_pk,
        message.backoffice_id,
        member_id=copies[0].member_id,
        envelope_sender="",
        recipients=(message.envelope_sender,),
        relay_message_id=notice_id,
        data=data,
        purpose=action,
    )
    if not queue_relay(connection, notice, now, settings.relay_lifetime):
        return 0
    detail: dict[str, object] = {
        "to": message.envelope_sender,
        "copies_to": addresses,
        "relay_message_id": notice_id,
    }
    append_events(connection, [_event(message, _QUEUED[action], node, now, detail)])
    return 1
