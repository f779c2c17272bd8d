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

A member's own ``\\Seen`` on a back-office mail that asked for a read notification
(``Disposition-Notification-To``) is also where "a member read it" becomes known: the first such read
queues one RFC 8098 notification naming that member for the relay to the back office (``mdn.queued``;
``gateway.domain.mdn`` decides whether it may be sent and writes it). A ``\\Seen`` the gateway wrote
itself (a propagation) is never a member's read, for the reason above, so it sends nothing. Back-office
mail never has a relay row of its own (only members' mail is relayed), so the relay queue's one row per
message is the once-only guard: a second member's read, a re-read, a second gateway process finds it.

Mailboxes are also watched closely where the store can push changes (IMAP IDLE, ``Mailbox.watch``):
every push of a flag change triggers a look at that mailbox at once, so a flag travels in the server's
notify delay (Dovecot: 0.5 s) rather than up to a poll interval. With ``idle_all`` every mailbox holding
copies has a watch, up to ``idle_mailboxes`` (each is a connection of its own); members who changed a
flag within ``idle_window`` come first, so when there are more mailboxes than watches the readers keep
theirs and a member beyond the limit gets one as soon as a poll finds their change. Polling goes on for
all mailboxes (a watch covers only the folder copies arrive in, and the mailboxes beyond the limit),
``poll_interval`` after the last round ended; a round's looks run a few at a time, so that many
mailboxes do not stretch it. Looks at one mailbox never overlap, so its token stays consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection

from gateway.config import FlagSyncSettings
from gateway.db import acceptance, flagsync
from gateway.db.events import Event, EventKind, append_events
from gateway.db.flagsync import Watched
from gateway.db.relayqueue import NewRelay, queue_relay
from gateway.db.replies import participants
from gateway.db.writer import Writer
from gateway.domain.mdn import build_read_notification, notification_request
from gateway.domain.readsync import FlagEvent, SyncedFlag, propagation
from gateway.mailbox import ChangeWatch, Flag, FlagChange, Mailbox, MailboxError, MailboxOwner
from gateway.workers import work_until_cancelled

# Looks at mailboxes under way at once in a poll round: short rounds, few of the pool's connections.
_LOOKS_AT_ONCE = 4

log = logging.getLogger("gateway.stages.flagsync")

_SYNCED = {Flag.SEEN: SyncedFlag.SEEN, Flag.ANSWERED: SyncedFlag.ANSWERED}


@dataclass(frozen=True, slots=True)
class ReadNotifications:
    """What a read notification to a back office needs from the configuration."""

    hostname: str  # the gateway's host name: Reporting-UA and the notification's Message-ID
    lifetime: float  # seconds the relay tries to deliver it ([relay] lifetime, as for replies)


def _owner(mailbox: Watched) -> MailboxOwner:
    return MailboxOwner(mailbox.portfolio, mailbox.address)


class FlagSync:
    """The flag watcher: ``run()`` loops until cancelled; ``run_once()`` looks at every mailbox once."""

    def __init__(
        self,
        writer: Writer,
        mailbox: Mailbox,
        settings: FlagSyncSettings,
        *,
        node: str,
        notifications: ReadNotifications,
        on_propagated: Callable[[], None] = lambda: None,
        on_notification: Callable[[], None] = lambda: None,
    ) -> None:
        self.writer = writer
        self.mailbox = mailbox
        self.settings = settings
        self.node = node
        self.notifications = notifications
        self.on_propagated = on_propagated
        self.on_notification = on_notification
        self._tokens: dict[MailboxOwner, str] = {}
        self._wake = asyncio.Event()  # nobody wakes the watcher: it polls
        self._known: dict[MailboxOwner, Watched] = {}
        self._looking: dict[MailboxOwner, asyncio.Lock] = {}
        # When each member last changed a flag (loop time): who counts as reading now.
        self._last_change: dict[MailboxOwner, float] = {}
        self._watches: dict[MailboxOwner, asyncio.Task[None]] = {}

    @property
    def watched_closely(self) -> frozenset[MailboxOwner]:
        """Mailboxes with a watch (IDLE) running now."""
        return frozenset(self._watches)

    async def run(self) -> None:
        async def look() -> int:
            await self.run_once()
            return 0  # always wait for the next poll

        try:
            # The next round waits a whole interval after this one ended: on a busy machine, where a
            # round takes long, the watcher polls less rather than without a pause.
            await work_until_cancelled(
                look, self._wake, poll_interval=self.settings.poll_interval, log=log, name="flag sync"
            )
        finally:
            await self.stop_watching()

    async def run_once(self) -> int:
        """Look at every mailbox once; returns how many copies got a flag from a co-member."""
        watched = await self.writer.run(flagsync.watched)
        self._known = {_owner(mailbox): mailbox for mailbox in watched}
        self._arrange_watches()
        slots = asyncio.Semaphore(_LOOKS_AT_ONCE)

        async def look(mailbox: Watched) -> int:
            async with slots:
                return await self._look(mailbox)

        return sum(await asyncio.gather(*(look(mailbox) for mailbox in watched)))

    async def stop_watching(self) -> None:
        watches = list(self._watches.values())
        self._watches.clear()
        for task in watches:
            task.cancel()
        await asyncio.gather(*watches, return_exceptions=True)

    async def _look(self, mailbox: Watched) -> int:
        """One mailbox's changes recorded and propagated; returns how many copies got a flag."""
        owner = _owner(mailbox)
        lock = self._looking.setdefault(owner, asyncio.Lock())
        async with lock:
            try:
                changes, token = await self.mailbox.flag_changes(owner, self._tokens.get(owner))
            except (MailboxError, ValueError) as exc:
                log.warning("flags of %s not read: %s", mailbox.address, exc)
                self._tokens.pop(owner, None)
                return 0
            applied = Applied(0, 0)
            if changes:
                applied = await self.writer.run(_apply, mailbox, changes, self.node, self.notifications)
            self._tokens[owner] = token
        if applied.by_member:
            self._member_active(owner)
        if applied.propagated:
            self.on_propagated()
        if applied.notifications:
            self.on_notification()
        return applied.propagated

    def _member_active(self, owner: MailboxOwner) -> None:
        """The member is reading now: their mailbox comes first for a watch for ``idle_window`` seconds."""
        self._last_change[owner] = asyncio.get_running_loop().time()
        if owner not in self._watches:
            self._arrange_watches()

    def _wanted_watches(self) -> list[MailboxOwner]:
        """The mailboxes that should have a watch now, at most ``idle_mailboxes``: members who changed a
        flag within ``idle_window`` (the latest first), then, with ``idle_all``, the others (those
        watched already first, so that nobody's watch is dropped for another's, then in member order)."""
        settings = self.settings
        if not settings.idle or settings.idle_mailboxes == 0:
            return []
        since = asyncio.get_running_loop().time() - settings.idle_window
        for owner, at in list(self._last_change.items()):
            if at < since or owner not in self._known:
                del self._last_change[owner]
        reading = sorted(self._last_change, key=lambda owner: -self._last_change[owner])
        wanted = reading[: settings.idle_mailboxes]
        if settings.idle_all and len(wanted) < settings.idle_mailboxes:
            chosen = set(wanted)
            others = [o for o in self._known if o not in chosen]
            others.sort(key=lambda owner: owner not in self._watches)  # stable: member order otherwise
            wanted += others[: settings.idle_mailboxes - len(wanted)]
        return wanted

    def _arrange_watches(self) -> None:
        """Start the watches that are wanted and missing, end those no longer wanted."""
        wanted = self._wanted_watches()
        keep = set(wanted)
        for owner in [o for o in self._watches if o not in keep]:
            # The member who has been quiet longest made room; their mailbox is still polled.
            self._watches.pop(owner).cancel()
        for owner in wanted:
            if owner in self._watches:
                continue
            watch = self.mailbox.watch(owner)
            if watch is None:
                continue  # the store cannot push (Maildir): polling alone
            task = asyncio.create_task(self._watch(owner, watch), name=f"flag watch {owner.address}")
            self._watches[owner] = task

    async def _watch(self, owner: MailboxOwner, watch: ChangeWatch) -> None:
        loop = asyncio.get_running_loop()
        log.debug("watching %s closely", owner.address)
        try:
            while True:
                seconds = self.settings.idle_refresh
                changed_at = self._last_change.get(owner)
                if changed_at is not None:
                    # When the member stops counting as reading, the watches are arranged anew.
                    ends = changed_at + self.settings.idle_window
                    seconds = min(seconds, max(ends - loop.time(), 0.0))
                try:
                    changed = await watch.wait(seconds)
                except MailboxError as exc:
                    # The next wait reconnects; meanwhile polling keeps finding what changed.
                    log.info("watch on %s interrupted: %s", owner.address, exc)
                    await asyncio.sleep(self.settings.poll_interval)
                    continue
                mailbox = self._known.get(owner)
                if changed and mailbox is not None:
                    try:
                        await self._look(mailbox)
                    except Exception:
                        log.exception("flags of %s not looked at after a push", owner.address)
                if (
                    changed_at is not None
                    and self._last_change.get(owner) == changed_at
                    and loop.time() >= changed_at + self.settings.idle_window
                ):
                    self._arrange_watches()  # may end this very watch (cancelled at its next wait)
        finally:
            if self._watches.get(owner) is asyncio.current_task():
                del self._watches[owner]
            with contextlib.suppress(MailboxError, asyncio.CancelledError):
                await watch.close()
            log.debug("no longer watching %s closely", owner.address)


@dataclass(frozen=True, slots=True)
class Applied:
    """What one look at a mailbox found: changes the member made, and copies that got a flag from them."""

    by_member: int
    propagated: int
    notifications: int = 0  # read notifications queued for back offices


def _apply(
    connection: Connection,
    mailbox: Watched,
    changes: Sequence[FlagChange],
    node: str,
    notifications: ReadNotifications,
) -> Applied:
    """Record one mailbox's changes, plan what they carry to co-members, queue read notifications."""
    now = dt.datetime.now(dt.UTC)
    # A copy in two folders counts with the flags of both: a flag set on either was set by the member.
    seen_now: dict[str, set[SyncedFlag]] = {}
    for change in changes:
        seen_now.setdefault(change.copy_id, set()).update(_SYNCED[f] for f in change.flags if f in _SYNCED)
    events: list[Event] = []
    by_member = 0
    flagged = 0
    notified = 0
    for copy in flagsync.known_flags(connection, mailbox.member_id, seen_now):
        for flag in (SyncedFlag.SEEN, SyncedFlag.ANSWERED):
            was, has = flag in copy.flags, flag in seen_now[copy.copy_id]
            if has == was or (was and copy.flags_pending):
                # Unchanged; or not cleared by the member but not written yet by the gateway.
                continue
            if not flagsync.record_flag(connection, copy.pk, flag, on=has):
                # Another node recorded this change of the member's a moment ago, and carried it on.
                continue
            by_member += 1
            events.append(
                Event(
                    EventKind.FLAG_SET if has else EventKind.FLAG_CLEARED,
                    f"member:{mailbox.address}",
                    now,
                    portfolio_id=copy.portfolio_id,
                    member_id=mailbox.member_id,
                    message_id=copy.message_pk,
                    detail={"copy_id": copy.copy_id, "flag": flag.value},
                )
            )
            if not has:
                continue  # cleared by the member: it stays local (DESIGN.md §4)
            flagged += _propagate(
                connection, mailbox, copy.portfolio_id, copy.message_pk, flag, now, node, events
            )
            if flag is SyncedFlag.SEEN:
                notified += _notify_read(connection, mailbox, copy, now, node, notifications, events)
    append_events(connection, events)
    return Applied(by_member, flagged, notified)


def _notify_read(
    connection: Connection,
    mailbox: Watched,
    copy: flagsync.KnownFlags,
    now: dt.datetime,
    node: str,
    notifications: ReadNotifications,
    events: list[Event],
) -> int:
    """The member read their copy: queue the read notification the back office asked for, if this is
    the first read and the mail may be answered with one; returns how many were queued (0 or 1)."""
    message = flagsync.unnotified_mail(connection, copy.portfolio_id, copy.message_pk)
    if message is None:
        return 0  # members' own mail, or a notification is queued already: not the first read

    def event(kind: EventKind, **detail: object) -> Event:
        return Event(
            kind,
            f"gateway:{node}",
            now,
            portfolio_id=copy.portfolio_id,
            member_id=mailbox.member_id,
            message_id=copy.message_pk,
            detail={"reader": mailbox.address, **detail},
        )

    request = notification_request(
        message.head, envelope_sender=message.envelope_sender, from_address=message.from_address
    )
    if request.address is None:
        if request.asked:
            events.append(event(EventKind.MDN_NOT_SENT, reason=request.reason))
        return 0
    if message.backoffice_id is None:
        reason = "the back office that sent the mail is no longer in the directory"
        events.append(event(EventKind.MDN_NOT_SENT, reason=reason))
        return 0
    reader = flagsync.reader(connection, copy.portfolio_id, copy.message_pk, mailbox.member_id)
    # One notification per message, so the message's gateway id names it; a rebuilt one is the same mail.
    notification_id = f"<mdn.{message.gateway_id}@{notifications.hostname}>"
    try:
        data = build_read_notification(
            reporting_ua=notifications.hostname,
            reader=mailbox.address,
            reader_name=reader.display_name,
            original_recipient=mailbox.address if reader.addressed else None,
            to=request.address,
            original_headers=message.head,
            message_id=notification_id,
            date=now,
        )
    except ValueError as exc:
        # What the directory or the mail holds cannot be written safely; another read will not change it.
        events.append(event(EventKind.MDN_NOT_SENT, reason=str(exc)))
        return 0
    notification = NewRelay(
        copy.portfolio_id,
        copy.message_pk,
        message.backoffice_id,
        # The reader: the relay names this member in its records. No failure report ever goes to
        # them, because a notification travels from the null reverse-path.
        member_id=mailbox.member_id,
        # RFC 8098 §3: the envelope sender of an MDN is null (<>), so that nothing answers it.
        envelope_sender="",
        recipients=(request.address,),
        relay_message_id=notification_id,
        data=data,
    )
    # Another gateway process may have queued it for another member's read a moment ago.
    if not queue_relay(connection, notification, now, notifications.lifetime):
        return 0
    events.append(
        event(
            EventKind.MDN_QUEUED,
            copy_id=copy.copy_id,
            to=request.address,
            relay_message_id=notification_id,
        )
    )
    log.info(
        "%s read %s: read notification queued for %s", mailbox.address, message.gateway_id, request.address
    )
    return 1


def _propagate(
    connection: Connection,
    mailbox: Watched,
    portfolio_id: int,
    message_pk: int,
    flag: SyncedFlag,
    now: dt.datetime,
    node: str,
    events: list[Event],
) -> int:
    taking_part = participants(connection, portfolio_id, message_pk)
    releases = acceptance.sharing_releases(
        connection, portfolio_id, {p.member_id for p in taking_part} | {mailbox.member_id}
    )
    copies = flagsync.message_flags(connection, portfolio_id, message_pk)
    plan = propagation(
        FlagEvent(mailbox.member_id, portfolio_id, flag, added=True), taking_part, releases, copies
    )
    carried = 0
    for target in plan.propagations:
        if not flagsync.carry_flag(connection, portfolio_id, message_pk, target.member_id, flag, now):
            continue  # the copy got the flag from another member's change a moment ago
        carried += 1
        events.append(
            Event(
                EventKind.FLAG_PROPAGATED,
                f"gateway:{node}",
                now,
                portfolio_id=portfolio_id,
                member_id=target.member_id,
                message_id=message_pk,
                detail={
                    "flag": flag.value,
                    "from": mailbox.address,
                    "via": [carried.release_name for carried in target.via],
                },
            )
        )
    return carried
