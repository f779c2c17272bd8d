"""Flag sync: flags members set in their own mail clients, noticed and carried to their co-members' copies.

Every ``poll_interval`` the watcher asks each mailbox that holds gateway copies what changed
(``Mailbox.flag_changes``: Maildir file names, IMAP CONDSTORE). The database's copy row is what the
gateway last knew of that copy's flags, so a change is the member's own only where the mailbox and the
row disagree: a flag the gateway itself wrote (a propagation, ``\\Answered`` after a reply) is in the
row already and is not taken for a member's action, which is what keeps propagation from echoing.

A flag a member set is recorded (``flag.set``) and handed to ``gateway.domain.readsync``, whose plan
names the co-members whose copies get it (``flag.propagated``); their rows are marked and the fan-out
writes the flags into their mailboxes, wherever they moved the copies. A flag a member cleared stays
cleared on that copy alone (``flag.cleared``, DESIGN.md §4). The per-mailbox tokens live in memory: after
a restart the first look compares every copy with its row, which finds the same changes again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, and_, case, select, update

from gateway.config import FlagSyncSettings
from gateway.db import intake
from gateway.db.models import CopyRow, MemberRow, PortfolioRow
from gateway.db.replies import participants
from gateway.db.writer import Writer
from gateway.domain.readsync import FlagEvent, SyncedFlag, propagation
from gateway.mailbox import Flag, FlagChange, Mailbox, MailboxError, MailboxOwner
from gateway.workers import work_until_cancelled

log = logging.getLogger("gateway.flagsync")

_SYNCED = {Flag.SEEN: SyncedFlag.SEEN, Flag.ANSWERED: SyncedFlag.ANSWERED}
_COLUMN = {SyncedFlag.SEEN: "seen", SyncedFlag.ANSWERED: "answered"}


@dataclass(frozen=True, slots=True)
class Watched:
    """A mailbox that holds gateway copies."""

    portfolio: str
    member_id: int
    address: str

    @property
    def owner(self) -> MailboxOwner:
        return MailboxOwner(self.portfolio, self.address)


class FlagSync:
    """The flag watcher: ``run()`` loops until cancelled; ``run_once()`` looks at every mailbox once."""

    def __init__(
        self,
        writer: Writer,
        mailbox: Mailbox,
        settings: FlagSyncSettings,
        *,
        node: str,
        on_propagated: Callable[[], None] = lambda: None,
    ) -> None:
        self.writer = writer
        self.mailbox = mailbox
        self.settings = settings
        self.node = node
        self.on_propagated = on_propagated
        self._tokens: dict[MailboxOwner, str] = {}
        self._wake = asyncio.Event()  # nobody wakes the watcher: it polls

    async def run(self) -> None:
        async def look() -> int:
            await self.run_once()
            return 0  # always wait for the next poll

        await work_until_cancelled(
            look, self._wake, poll_interval=self.settings.poll_interval, log=log, name="flag sync"
        )

    async def run_once(self) -> int:
        """Look at every mailbox once; returns how many copies got a flag from a co-member."""
        watched = await self.writer.run(_watched)
        propagated = 0
        for mailbox in watched:
            try:
                changes, token = await self.mailbox.flag_changes(
                    mailbox.owner, self._tokens.get(mailbox.owner)
                )
            except (MailboxError, ValueError) as exc:
                log.warning("flags of %s not read: %s", mailbox.address, exc)
                self._tokens.pop(mailbox.owner, None)
                continue
            if changes:
                propagated += await self.writer.run(_apply, mailbox, changes, self.node)
            self._tokens[mailbox.owner] = token
        if propagated:
            self.on_propagated()
        return propagated


def _watched(connection: Connection) -> list[Watched]:
    rows = connection.execute(
        select(PortfolioRow.name, MemberRow.id, MemberRow.address)
        .join(MemberRow, MemberRow.portfolio_id == PortfolioRow.id)
        .where(
            select(CopyRow.id).where(CopyRow.member_id == MemberRow.id, CopyRow.state == "delivered").exists()
        )
        .order_by(MemberRow.id)
    )
    return [Watched(str(name), int(member_id), str(address)) for name, member_id, address in rows]


def _apply(connection: Connection, mailbox: Watched, changes: Sequence[FlagChange], node: str) -> int:
    """Record one mailbox's changes and plan what they carry to co-members; returns copies flagged."""
    now = dt.datetime.now(dt.UTC)
    # A copy in two folders counts with the flags of both: a flag set on either was set by the member.
    seen_now: dict[str, set[SyncedFlag]] = {}
    for change in changes:
        seen_now.setdefault(change.copy_id, set()).update(_SYNCED[f] for f in change.flags if f in _SYNCED)
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
            CopyRow.member_id == mailbox.member_id,
            CopyRow.copy_id.in_(list(seen_now)),
            CopyRow.state == "delivered",
        )
    )
    events: list[dict[str, object]] = []
    flagged = 0
    for copy_pk, copy_id, message_pk, portfolio_id, seen, answered, pending in rows:
        known = {SyncedFlag.SEEN: bool(seen), SyncedFlag.ANSWERED: bool(answered)}
        base = {
            "at": now,
            "portfolio_id": portfolio_id,
            "actor": f"member:{mailbox.address}",
            "member_id": mailbox.member_id,
            "vorgang_id": None,
            "message_id": message_pk,
        }
        for flag, was in known.items():
            has = flag in seen_now[copy_id]
            if has and not was:
                connection.execute(update(CopyRow).where(CopyRow.id == copy_pk).values({_COLUMN[flag]: True}))
                events.append(base | {"kind": "flag.set", "detail": {"copy_id": copy_id, "flag": flag.value}})
                flagged += _propagate(connection, mailbox, portfolio_id, message_pk, flag, now, node, events)
            elif was and not has and not pending:
                # Cleared by the member (the gateway has nothing left to write here): it stays local.
                connection.execute(
                    update(CopyRow).where(CopyRow.id == copy_pk).values({_COLUMN[flag]: False})
                )
                events.append(
                    base | {"kind": "flag.cleared", "detail": {"copy_id": copy_id, "flag": flag.value}}
                )
    intake.insert_rows(connection, intake.EVENTS, events)
    return flagged


def _propagate(
    connection: Connection,
    mailbox: Watched,
    portfolio_id: int,
    message_pk: int,
    flag: SyncedFlag,
    now: dt.datetime,
    node: str,
    events: list[dict[str, object]],
) -> int:
    taking_part = participants(connection, portfolio_id, message_pk)
    releases = intake.sharing_releases(
        connection, portfolio_id, {p.member_id for p in taking_part} | {mailbox.member_id}
    )
    copies = {
        int(member_id): {
            f.value for f, on in ((SyncedFlag.SEEN, seen), (SyncedFlag.ANSWERED, answered)) if on
        }
        for member_id, seen, answered in connection.execute(
            select(CopyRow.member_id, CopyRow.seen, CopyRow.answered).where(
                CopyRow.message_id == message_pk, CopyRow.portfolio_id == portfolio_id
            )
        )
    }
    plan = propagation(
        FlagEvent(mailbox.member_id, portfolio_id, flag, added=True), taking_part, releases, copies
    )
    for target in plan.propagations:
        connection.execute(
            update(CopyRow)
            .where(
                and_(
                    CopyRow.message_id == message_pk,
                    CopyRow.member_id == target.member_id,
                    CopyRow.portfolio_id == portfolio_id,
                )
            )
            .values(
                {
                    _COLUMN[flag]: True,
                    # A delivered copy is due for the flag now; a pending one gets it with its first write.
                    "flags_pending": CopyRow.state == "delivered",
                    "next_attempt_at": case(
                        (CopyRow.state == "delivered", now), else_=CopyRow.next_attempt_at
                    ),
                    "updated_at": now,
                }
            )
        )
        events.append(
            {
                "at": now,
                "portfolio_id": portfolio_id,
                "actor": f"gateway:{node}",
                "kind": "flag.propagated",
                "member_id": target.member_id,
                "vorgang_id": None,
                "message_id": message_pk,
                "detail": {
                    "flag": flag.value,
                    "from": mailbox.address,
                    "via": [carried.release_name for carried in target.via],
                },
            }
        )
    return len(plan.propagations)
