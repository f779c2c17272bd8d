"""The relay queue in the database: mail for the back offices queued, taken when due with a lease, and
each attempt recorded.

Like the copy queue (``gateway.db.queue``): ``FOR UPDATE SKIP LOCKED`` lets several processes share it on
PostgreSQL, the lease (``next_attempt_at`` in the future plus ``leased_by``) keeps a taken mail from
being sent twice while its attempt runs, and a restarted node takes its own leases back at once.

Leases are fenced as the copy queue's are: every claim adds one to the row's ``lease_token`` and the
job carries it; the relay confirms a batch's leases in one statement right before it sends
(``confirm``) and records an attempt only while the row still has the node's lease and token
(``record``), so a node frozen past the lease while another sent the mail neither sends it again
nor overwrites what the other recorded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

from gateway.db.directory import RelayTarget, relay_target
from gateway.db.models import MemberRow, PortfolioRow, RelayPurpose, RelayRow, RelayState, utc


@dataclass(frozen=True, slots=True)
class NewRelay:
    """A mail to queue for a back office: the exact bytes every attempt sends, and to whom."""

    portfolio_id: int
    message_pk: int  # the message it is about: a member's reply, or a back office's mail read or late
    backoffice_id: int | None
    # Who a failure report (DSN) goes to; for a read notification the reader, for a notice the first
    # member whose copy is late (neither is ever answered with a DSN: both go from <>).
    member_id: int
    envelope_sender: str  # "" (the null reverse-path) for read notifications and notices
    recipients: tuple[str, ...]
    relay_message_id: str
    data: bytes
    purpose: RelayPurpose = RelayPurpose.MAIL


def queue_relay(connection: Connection, relay: NewRelay, now: dt.datetime, lifetime: float) -> bool:
    """Queue ``relay``, due now and tried for ``lifetime`` seconds; False when the message has a relay
    of this purpose already.

    One row per message and purpose is the once-only guard of read notifications and notices: another
    member's read, or another gateway process a moment ago, may have queued it. A member's reply is a
    new message, so it never finds one.
    """
    insert: Any = (postgresql if connection.dialect.name == "postgresql" else sqlite).insert(RelayRow)
    queued = connection.execute(
        insert.values(
            portfolio_id=relay.portfolio_id,
            message_id=relay.message_pk,
            backoffice_id=relay.backoffice_id,
            member_id=relay.member_id,
            purpose=relay.purpose.value,
            envelope_sender=relay.envelope_sender,
            recipients=list(relay.recipients),
            relay_message_id=relay.relay_message_id,
            data=relay.data,
            state=RelayState.PENDING.value,
            attempts=0,
            next_attempt_at=now,
            leased_by=None,
            expires_at=now + dt.timedelta(seconds=lifetime),
            last_error=None,
            last_reply=None,
            created_at=now,
            updated_at=now,
            sent_at=None,
        )
        .on_conflict_do_nothing(index_elements=["message_id", "purpose"])
        .returning(RelayRow.id)
    ).first()
    return queued is not None


@dataclass(frozen=True, slots=True)
class RelayJob:
    """One mail to send to a back office, with everything the attempt needs."""

    id: int
    portfolio_id: int
    portfolio: str
    member_id: int
    member_address: str
    envelope_sender: str
    recipients: tuple[str, ...]
    relay_message_id: str
    data: bytes
    attempts: int
    expires_at: dt.datetime
    backoffice_id: int | None
    target: RelayTarget | None
    lease_token: int = 0  # the row's lease token under this job's lease (``confirm``)


@dataclass(frozen=True, slots=True)
class RelayResult:
    """How an attempt went: sent, pending (retry at ``retry_at``) or failed."""

    job: RelayJob
    state: RelayState
    reply: str | None = None
    error: str | None = None
    retry_at: dt.datetime | None = None


def release_own_leases(connection: Connection, node: str, now: dt.datetime) -> int:
    result = connection.execute(
        update(RelayRow)
        .where(RelayRow.state == RelayState.PENDING, RelayRow.leased_by == node)
        .values(next_attempt_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def claim(connection: Connection, node: str, now: dt.datetime, lease: float, limit: int) -> list[RelayJob]:
    rows = list(
        connection.execute(
            select(
                RelayRow.id,
                RelayRow.portfolio_id,
                PortfolioRow.name,
                RelayRow.member_id,
                MemberRow.address,
                RelayRow.envelope_sender,
                RelayRow.recipients,
                RelayRow.relay_message_id,
                RelayRow.data,
                RelayRow.attempts,
                RelayRow.expires_at,
                RelayRow.backoffice_id,
            )
            .join(PortfolioRow, PortfolioRow.id == RelayRow.portfolio_id)
            .join(MemberRow, MemberRow.id == RelayRow.member_id)
            .where(RelayRow.state == RelayState.PENDING, RelayRow.next_attempt_at <= now)
            .order_by(RelayRow.next_attempt_at, RelayRow.id)
            .limit(limit)
            .with_for_update(of=RelayRow, skip_locked=True)
        )
    )
    if not rows:
        return []
    # One more on the token with every claim: a node that held the lease before holds a stale token.
    tokens = {
        int(pk): int(token)
        for pk, token in connection.execute(
            update(RelayRow)
            .where(RelayRow.id.in_([r[0] for r in rows]))
            .values(
                next_attempt_at=now + dt.timedelta(seconds=lease),
                leased_by=node,
                lease_token=RelayRow.lease_token + 1,
            )
            .returning(RelayRow.id, RelayRow.lease_token)
        )
    }
    targets: dict[int, RelayTarget | None] = {}
    for row in rows:
        if row[11] is not None and row[11] not in targets:
            targets[row[11]] = relay_target(connection, row[11])
    return [
        RelayJob(
            *row[:6],
            recipients=tuple(row[6]),
            relay_message_id=row[7],
            data=bytes(row[8]),
            attempts=row[9],
            expires_at=utc(row[10]),
            backoffice_id=row[11],
            target=targets.get(row[11]) if row[11] is not None else None,
            lease_token=tokens[row[0]],
        )
        for row in rows
    ]


def confirm(
    connection: Connection, jobs: Sequence[RelayJob], node: str, now: dt.datetime, lease: float
) -> set[int]:
    """Confirm, right before sending, that ``node`` still holds the leases of ``jobs`` (leased to it,
    under the job's token, still pending) and extend them by ``lease`` seconds; returns the relay ids
    still held. One statement for the batch. A job not returned was taken over by another node after
    its lease ran out (or dropped by an admin): it must not be sent."""
    if not jobs:
        return set()
    return {
        int(pk)
        for pk in connection.scalars(
            update(RelayRow)
            .where(
                # The ids alone as well: SQLite finds rows by a row-value IN only by scanning the table.
                RelayRow.id.in_([j.id for j in jobs]),
                tuple_(RelayRow.id, RelayRow.lease_token).in_([(j.id, j.lease_token) for j in jobs]),
                RelayRow.leased_by == node,
                RelayRow.state == RelayState.PENDING,
            )
            .values(next_attempt_at=now + dt.timedelta(seconds=lease))
            .returning(RelayRow.id)
        )
    }


def record(
    connection: Connection, results: Sequence[RelayResult], now: dt.datetime, *, node: str
) -> list[RelayResult]:
    """Store how each attempt went, for mail still leased to ``node`` under the job's token; returns
    the results recorded. A result left out belongs to a lease another node took over meanwhile:
    what that node recorded stands."""
    recorded = []
    for result in results:
        values: dict[str, object] = {
            "state": result.state.value,
            "attempts": RelayRow.attempts + 1,
            "leased_by": None,
            "last_reply": result.reply,
            "last_error": (result.error or "")[:2000] or None,
            "updated_at": now,
            "next_attempt_at": result.retry_at,
        }
        if result.state is RelayState.SENT:
            values["sent_at"] = now
        done = connection.execute(
            update(RelayRow)
            .where(
                RelayRow.id == result.job.id,
                RelayRow.leased_by == node,
                RelayRow.lease_token == result.job.lease_token,
                RelayRow.state == RelayState.PENDING,
            )
            .values(**values)
        )
        if getattr(done, "rowcount", 0):
            recorded.append(result)
    return recorded
