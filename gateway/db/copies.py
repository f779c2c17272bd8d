"""New copies: one per audience member of a message, stored pending, and handed to the fan-out as jobs.

Acceptance, the reply path, the release of quarantined mail and reconciliation's back-fill all store
copies here, so a copy row has one shape whoever made it. A copy handed to the fan-out right away (the
storing transaction leases it to its own node, ``Lease``) skips the queue's claim: ``handed_job`` builds
the job the claim would have read.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, insert

from gateway.db import bulk
from gateway.db.messages import NewMessage
from gateway.db.models import COPIES, CopyState
from gateway.db.queue import CopyJob
from gateway.domain.audience import AsParticipant, Audience, SharedThrough
from gateway.domain.parsing import ParsedMessage


def new_copy_id() -> str:
    """The id a copy carries in its X-Gateway-Copy-Id header and Maildir file name (never all digits)."""
    return "c" + secrets.token_hex(10)


@dataclass(frozen=True, slots=True)
class Lease:
    """Copies stored already taken by ``node`` until ``until``: the fan-out of that node writes them
    without claiming them from the queue."""

    node: str
    until: dt.datetime


@dataclass(frozen=True, slots=True)
class NewCopy:
    """A copy to store: one member's instance of a message."""

    message_pk: int
    portfolio_id: int
    member_id: int
    # The release the member sees the message through, when not as a participant; its name is not
    # stored, it is the X-Gateway-Shared-Via header of a copy handed off at once.
    shared_via_release_id: int | None = None
    shared_via: str | None = None
    # Flags a back-filled copy starts with (the co-members' shared ones, gateway.domain.reconcile).
    seen: bool = False
    answered: bool = False
    copy_id: str = field(default_factory=new_copy_id)


def copies_for(
    message_pk: int, portfolio_id: int, seen: Audience, *, leaving_out: Collection[int] = ()
) -> list[NewCopy]:
    """One copy per audience member but those ``leaving_out``, in the audience's order.

    A member who sees the message only through a release gets that release as ``shared_via``.
    """
    copies = []
    for member_id in seen.ordered():
        if member_id in leaving_out:
            continue
        reasons = seen.via(member_id)
        shared: SharedThrough | None = None
        if not any(isinstance(r, AsParticipant) for r in reasons):
            shared = next(r for r in reasons if isinstance(r, SharedThrough))
        copies.append(
            NewCopy(
                message_pk,
                portfolio_id,
                member_id,
                shared_via_release_id=shared.release_id if shared else None,
                shared_via=shared.release_name if shared else None,
            )
        )
    return copies


def insert_copies(
    connection: Connection, copies: Sequence[NewCopy], now: dt.datetime, lease: Lease | None = None
) -> list[int]:
    """Store ``copies`` as pending copies in one statement, due now or taken under ``lease``.

    With ``lease`` their new ids, in order (the caller hands them to the fan-out); without, none are
    read back.
    """
    if not copies:
        return []
    rows = [
        {
            "copy_id": c.copy_id,
            "message_id": c.message_pk,
            "member_id": c.member_id,
            "portfolio_id": c.portfolio_id,
            "shared_via_release_id": c.shared_via_release_id,
            "state": CopyState.PENDING.value,
            "attempts": 0,
            "next_attempt_at": lease.until if lease else now,
            "leased_by": lease.node if lease else None,
            "last_error": None,
            "mailbox_ref": None,
            "seen": c.seen,
            "answered": c.answered,
            "flags_pending": False,
            "created_at": now,
            "updated_at": now,
        }
        for c in copies
    ]
    if connection.dialect.name == "postgresql":
        # One statement of the same text for any number of copies (gateway.db.bulk).
        stored = bulk.insert_rows(connection, COPIES, rows, returning=("id", "copy_id") if lease else ())
        ids = {str(row[1]): int(row[0]) for row in stored}
        return [ids[c.copy_id] for c in copies] if lease else []
    if lease is None:
        connection.execute(insert(COPIES), rows)
        return []
    # Matched by copy id: SQLAlchemy inserts the rows in one multi-row statement when the order of the
    # ids is not asked for, and row by row, a statement per copy, when it is (sort_by_parameter_order).
    result = connection.execute(insert(COPIES).returning(COPIES.c.id, COPIES.c.copy_id), rows)
    ids = {str(copy_id): int(pk) for pk, copy_id in result}
    return [ids[c.copy_id] for c in copies]


def handed_job(
    copy: NewCopy,
    copy_pk: int,
    message: NewMessage,
    *,
    portfolio: str,
    vorgang: str,
    address: str,
    parsed: ParsedMessage | None = None,
) -> CopyJob:
    """The fan-out's job for a copy just stored under a lease: what ``gateway.db.queue.claim`` would read,
    and ``parsed``, ``message.raw``'s header facts where the caller read them."""
    return CopyJob(
        id=copy_pk,
        copy_id=copy.copy_id,
        attempts=0,
        portfolio_id=copy.portfolio_id,
        portfolio=portfolio,
        member_id=copy.member_id,
        address=address,
        message_pk=copy.message_pk,
        gateway_id=message.gateway_id,
        message_id=message.message_id,
        message_id_assigned=message.message_id_assigned,
        vorgang_id=message.vorgang_id,
        vorgang=vorgang,
        shared_via=copy.shared_via,
        seen=copy.seen,
        answered=copy.answered,
        raw=message.raw,
        first_attempt=True,
        copy_headers=message.copy_headers,
        trace=message.trace,
        queued_at=message.received_at,
        parsed=parsed,
    )
