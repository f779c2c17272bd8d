"""The SQL of flag sync: which mailboxes to look at, what the gateway last knew of their copies' flags,
and the flags it records and carries to co-members' copies (``gateway.stages.flagsync``).

Synchronous functions on a Core ``Connection``: flag sync runs them on the writer thread, inside the
transaction that records one look at one mailbox.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import Connection, case, select, update

from gateway.db.messages import MessageHead, find_message_head
from gateway.db.models import (
    CopyRow,
    CopyState,
    Direction,
    MemberRow,
    MessageKind,
    MessageRow,
    ParticipantRow,
    PortfolioRow,
    RelayPurpose,
    RelayRow,
)
from gateway.domain.readsync import SyncedFlag

# The copy column that holds each shared flag.
_COLUMN = {SyncedFlag.SEEN: CopyRow.seen, SyncedFlag.ANSWERED: CopyRow.answered}


@dataclass(frozen=True, slots=True)
class Watched:
    """A member's mailbox that holds gateway copies."""

    portfolio: str
    member_id: int
    address: str


def watched(connection: Connection) -> list[Watched]:
    """Every mailbox with a delivered copy in it, in member order."""
    rows = connection.execute(
        select(PortfolioRow.name, MemberRow.id, MemberRow.address)
        .join(MemberRow, MemberRow.portfolio_id == PortfolioRow.id)
        .where(
            select(CopyRow.id)
            .where(CopyRow.member_id == MemberRow.id, CopyRow.state == CopyState.DELIVERED)
            .exists()
        )
        .order_by(MemberRow.id)
    )
    return [Watched(str(name), int(member_id), str(address)) for name, member_id, address in rows]


@dataclass(frozen=True, slots=True)
class KnownFlags:
    """A delivered copy with the flags the gateway last knew it to have."""

    pk: int
    copy_id: str
    message_pk: int
    portfolio_id: int
    flags: frozenset[SyncedFlag]
    # The gateway has flags to write into the mailbox still: what the mailbox lacks is not cleared yet.
    flags_pending: bool


def known_flags(connection: Connection, member_id: int, copy_ids: Collection[str]) -> list[KnownFlags]:
    """The member's delivered copies among ``copy_ids``."""
    rows = connection.execute(
        select(
            CopyRow.id,
            CopyRow.copy_id,
            CopyRow.message_id,
            CopyRow.portfolio_id,
            CopyRow.seen,
            CopyRow.answered,
            CopyRow.flags_pending,
        ).where(
            CopyRow.member_id == member_id,
            CopyRow.copy_id.in_(list(copy_ids)),
            CopyRow.state == CopyState.DELIVERED,
        )
    )
    return [
        KnownFlags(int(pk), str(copy_id), int(message_pk), int(pid), _flags(seen, answered), bool(pending))
        for pk, copy_id, message_pk, pid, seen, answered, pending in rows
    ]


def record_flag(connection: Connection, copy_pk: int, flag: SyncedFlag, *, on: bool) -> bool:
    """What the member did to the copy's flag in their mailbox, as the gateway now knows it; True when
    this transaction changed it.

    Compare-and-set: the row changes only while the flag is still the opposite of ``on``, as
    ``known_flags`` read it. Two nodes watching the same mailbox see the member's change both; on
    PostgreSQL the second UPDATE waits for the first to commit, finds the flag set already (the row
    is read again after the wait) and changes nothing, so only the first records the change and
    carries it on (issue 17). SQLite has one writer at a time, so the condition always holds there.
    """
    column = _COLUMN[flag]
    result = connection.execute(
        update(CopyRow).where(CopyRow.id == copy_pk, column.is_(not on)).values({column: on})
    )
    return result.rowcount == 1


def message_flags(
    connection: Connection, portfolio_id: int, message_pk: int
) -> dict[int, frozenset[SyncedFlag]]:
    """The flags every copy of the message has, by member."""
    return {
        int(member_id): _flags(seen, answered)
        for member_id, seen, answered in connection.execute(
            select(CopyRow.member_id, CopyRow.seen, CopyRow.answered).where(
                CopyRow.message_id == message_pk, CopyRow.portfolio_id == portfolio_id
            )
        )
    }


def carry_flag(
    connection: Connection,
    portfolio_id: int,
    message_pk: int,
    member_id: int,
    flag: SyncedFlag,
    now: dt.datetime,
) -> bool:
    """Set ``flag`` on the member's copy of the message: a delivered copy is due for it in the mailbox
    now; a pending one gets it with its first write. True when this transaction set it; False when
    the copy has it already (another node carried it a moment ago: compare-and-set as ``record_flag``).
    """
    delivered = CopyRow.state == CopyState.DELIVERED
    column = _COLUMN[flag]
    result = connection.execute(
        update(CopyRow)
        .where(
            CopyRow.message_id == message_pk,
            CopyRow.member_id == member_id,
            CopyRow.portfolio_id == portfolio_id,
            column.is_(False),
        )
        .values(
            {
                _COLUMN[flag]: True,
                CopyRow.flags_pending: delivered,
                CopyRow.next_attempt_at: case((delivered, now), else_=CopyRow.next_attempt_at),
                CopyRow.updated_at: now,
            }
        )
    )
    return bool(result.rowcount)


def unnotified_mail(connection: Connection, portfolio_id: int, message_pk: int) -> MessageHead | None:
    """The message when it is a back office's mail that no read notification was queued for yet;
    None for members' own mail, and once a notification is queued (its one relay row of purpose mail)."""
    return find_message_head(
        connection,
        MessageRow.id == message_pk,
        MessageRow.portfolio_id == portfolio_id,
        MessageRow.direction == Direction.INBOUND,
        MessageRow.kind == MessageKind.MESSAGE,
        ~select(RelayRow.id)
        .where(RelayRow.message_id == message_pk, RelayRow.purpose == RelayPurpose.MAIL)
        .exists(),
    )


@dataclass(frozen=True, slots=True)
class Reader:
    """The member who read a back office's mail, as a read notification names them."""

    display_name: str
    addressed: bool  # a participant of the message (its Original-Recipient)


def reader(connection: Connection, portfolio_id: int, message_pk: int, member_id: int) -> Reader:
    name = connection.scalar(select(MemberRow.display_name).where(MemberRow.id == member_id))
    addressed = connection.scalar(
        select(ParticipantRow.member_id).where(
            ParticipantRow.message_id == message_pk,
            ParticipantRow.member_id == member_id,
            ParticipantRow.portfolio_id == portfolio_id,
        )
    )
    return Reader(name or "", addressed is not None)


def _flags(seen: bool, answered: bool) -> frozenset[SyncedFlag]:
    return frozenset(f for f, on in ((SyncedFlag.SEEN, seen), (SyncedFlag.ANSWERED, answered)) if on)
