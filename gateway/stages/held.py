"""Held replies over time: the notices to their authors, and the release's hold timeout.

The collision guard (``gateway.domain.collision``, docs/collisions.md) holds a reply in the storing
transaction; what follows is done here, from durable rows, so a crash loses and repeats nothing visible:

- a notice owed (a reply held, or relayed under ``notify``) is written into its author's mailbox, under
  a name of its own (``n<held id>``), so a retried write finds the first one and writes nothing;
- a reply held longer than its release's ``hold_timeout`` is released or withdrawn as the release's
  ``after_hold_timeout`` says, by the same transaction a member's or an admin's decision runs
  (``gateway.db.membermail.decide_held``), so it happens once whoever comes first.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from sqlalchemy import Connection

from gateway.db import collisions, membermail
from gateway.db.collisions import HeldReply
from gateway.db.events import Event, EventKind, append_events
from gateway.db.models import HeldState
from gateway.db.writer import Writer
from gateway.domain.collision import AfterTimeout
from gateway.domain.held_notice import HeldNotice, answer_excerpt, build_held_notice
from gateway.domain.tokens import HeldAction, TokenKeys, held_token, reply_address
from gateway.mailbox.base import Mailbox, MailboxOwner
from gateway.workers import work_until_cancelled

log = logging.getLogger("gateway.stages.held")

BATCH = 50


class HeldReplies:
    """The held-replies worker: ``run()`` loops until cancelled; ``wake()`` after a reply was held."""

    def __init__(
        self,
        writer: Writer,
        mailbox: Mailbox,
        *,
        keys: TokenKeys,
        storage: membermail.ReplyStorage,
        poll_interval: float = 30.0,
        on_relay: Callable[[], None] = lambda: None,
        on_copies: Callable[[], None] = lambda: None,
    ) -> None:
        self.writer = writer
        self.mailbox = mailbox
        self.keys = keys
        self.storage = storage
        self.poll_interval = poll_interval
        self.on_relay = on_relay
        self.on_copies = on_copies
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        await work_until_cancelled(
            self.run_once, self._wake, poll_interval=self.poll_interval, log=log, name="held"
        )

    async def run_once(self) -> int:
        """Write the notices due and apply the timeouts passed; how many of both were done."""
        return await self.notices() + await self.timeouts()

    async def notices(self) -> int:
        now = dt.datetime.now(dt.UTC)
        owed = await self.writer.run(collisions.claim_notices, now, BATCH)
        written = 0
        for held in owed:
            try:
                data = await self.writer.run(self._notice, held, now)
                await self.mailbox.append(MailboxOwner(held.portfolio, held.member), f"n{held.held_id}", data)
            except (OSError, ValueError) as exc:
                log.warning("could not write the notice of held reply %s: %s", held.held_id, exc)
                await self.writer.run(collisions.notice_done, held.held_id, now, str(exc))
                continue
            await self.writer.run(_notice_written, held, now, self.storage.node)
            written += 1
        return written

    async def timeouts(self, now: dt.datetime | None = None) -> int:
        """Apply the hold timeouts passed at ``now`` (default: the clock's now)."""
        now = now or dt.datetime.now(dt.UTC)
        due = await self.writer.run(collisions.due_holds, now, BATCH)
        done = 0
        for held_id, after in due:
            wanted = HeldState.RELEASED if after is AfterTimeout.RELEASE else HeldState.WITHDRAWN
            decided = await self.writer.run(
                membermail.decide_held,
                held_id,
                wanted,
                f"gateway:{self.storage.node}",
                self.storage,
                reason=f"hold timeout passed (after_hold_timeout {after.value})",
            )
            if decided is not None and decided.done_now:
                done += 1
                log.info("held reply %s %s after its hold timeout", held_id, decided.state.value)
                if decided.state is HeldState.RELEASED:
                    self.on_copies()
                    self.on_relay()
        return done

    def _notice(self, connection: Connection, held: HeldReply, now: dt.datetime) -> bytes:
        """The notice's bytes, from what is stored (read on the writer thread, built there too)."""
        raw, _, _ = collisions.message_raw(connection, held.collides_with_pk)
        _, answered_id, answered_refs = collisions.message_raw(connection, held.answered_pk)
        return build_held_notice(self.notice_of(held, answer_excerpt(raw), answered_id, answered_refs, now))

    def notice_of(
        self,
        held: HeldReply,
        excerpt: str,
        answered_id: str | None,
        answered_refs: tuple[str, ...],
        now: dt.datetime,
    ) -> HeldNotice:
        is_held = held.state is HeldState.HELD or held.due_at is not None

        def address(action: str) -> str:
            token = held_token(
                self.keys,
                portfolio=held.portfolio,
                held_id=held.held_id,
                member_id=held.member_id,
                action=action,
            )
            return reply_address(token, self.storage.reply_domain)

        return HeldNotice(
            gateway_host=self.storage.hostname,
            to_address=held.member,
            to_name=held.member_name,
            vorgang=held.vorgang,
            answered_subject=held.subject,
            answered_message_id=answered_id,
            answered_references=answered_refs,
            other_name=held.other_name,
            other_address=held.other or "?@?",
            other_accepted_at=held.other_accepted_at,
            excerpt=excerpt,
            message_id=f"<n{held.held_id}@{self.storage.hostname}>",
            date=held.held_at,
            send_address=address(HeldAction.SEND) if is_held else None,
            withdraw_address=address(HeldAction.WITHDRAW) if is_held else None,
            due_at=held.due_at,
            after_timeout=held.after_timeout.value,
        )


def _notice_written(connection: Connection, held: HeldReply, now: dt.datetime, node: str) -> None:
    collisions.notice_done(connection, held.held_id, now, None)
    append_events(
        connection,
        [
            Event(
                EventKind.REPLY_NOTICE,
                f"gateway:{node}",
                now,
                portfolio_id=held.portfolio_id,
                member_id=held.member_id,
                vorgang_id=held.vorgang_id,
                message_id=held.message_pk,
                detail={"held_id": held.held_id, "to": held.member, "state": held.state.value},
            )
        ],
    )
