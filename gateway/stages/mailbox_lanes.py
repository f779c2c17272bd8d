"""Mailbox lanes of the fan-out: each member's confirmed copies are written as soon as that mailbox is free.

The fan-out renders a batch of copies and confirms their leases in one statement, then puts them here.
Every mailbox (owner) with copies waiting has one lane, a task that writes what has gathered for it in
one ``append_batch`` (one MULTIAPPEND on IMAP), then whatever gathered meanwhile, until nothing waits.
So the next batch goes out while the last one's slowest mailbox is still being written, copies of one
member that arrive while its last write is under way go together in the next (larger) one, and a
mailbox that stalls holds back its own copies only, not the others'.

Bounds: at most ``limit`` copies are in the lanes at once (``put`` waits for room, which bounds memory;
the fan-out's batches in flight); one write per mailbox at a time; the connections are the mailbox's
own bounds (``[mailbox.imap]``'s pool).

Fencing (docs/scaling.md): a copy waits in its lane after its lease was confirmed. A confirmation is
trusted for ``confirmed_for`` seconds; a copy that waited longer (its mailbox was slow, or the whole
node stalled: the loop's clock runs on while a process is stopped) is confirmed again right before
its write, and dropped unwritten if the lease is gone. Each lane writes in the order copies came.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.db.queue import CopyJob
from gateway.mailbox import Delivery, Located, Mailbox, MailboxOwner

log = logging.getLogger("gateway.stages.fanout")

Written = Callable[[list[tuple[CopyJob, Located | Exception]]], None]
"""Called with each write's copies and what became of them (an instance in the mailbox, or the error)."""

Confirm = Callable[[list[CopyJob]], Awaitable[list[CopyJob]]]
"""Confirms leases again (one statement); returns the jobs still held."""


@dataclass(frozen=True, slots=True)
class Waiting:
    """A copy in its lane: the job, its bytes, and when (loop time) its lease was last confirmed."""

    job: CopyJob
    delivery: Delivery
    confirmed: float


class Lanes:
    """The lanes of one fan-out: ``put`` hands confirmed copies over, ``settled`` waits for their writes."""

    def __init__(
        self,
        mailbox: Mailbox,
        *,
        limit: int,
        group: int,
        confirm: Confirm,
        written: Written,
        confirmed_for: float,
    ) -> None:
        if limit < 1 or group < 1:
            raise ValueError("lanes need room for at least one copy")
        self.mailbox = mailbox
        self.limit = limit
        self.group = group
        self.confirm = confirm
        self.written = written
        self.confirmed_for = confirmed_for
        self._waiting: dict[MailboxOwner, deque[Waiting]] = {}
        self._lanes: dict[MailboxOwner, asyncio.Task[None]] = {}
        self._in_flight = 0
        self._room = asyncio.Event()
        self._room.set()
        self._empty = asyncio.Event()
        self._empty.set()
        # The most copies that were in the lanes at once (the bound's test reads it).
        self.peak = 0

    @property
    def in_flight(self) -> int:
        """Copies put and not yet written (or given up)."""
        return self._in_flight

    @property
    def busy(self) -> bool:
        return not self._empty.is_set()

    async def room(self, copies: int) -> None:
        """Wait until ``copies`` more fit under ``limit`` (a batch larger than the limit fits alone)."""
        while self._in_flight and self._in_flight + copies > self.limit:
            self._room.clear()
            await self._room.wait()

    async def put(self, copies: Sequence[Waiting]) -> None:
        """Queue ``copies`` in their owners' lanes, once they fit under ``limit``."""
        await self.room(len(copies))
        for waiting in copies:
            owner = waiting.delivery.owner
            self._waiting.setdefault(owner, deque()).append(waiting)
        self._in_flight += len(copies)
        self.peak = max(self.peak, self._in_flight)
        if copies:
            self._empty.clear()
        for owner in {waiting.delivery.owner for waiting in copies}:
            if owner not in self._lanes:
                self._lanes[owner] = asyncio.ensure_future(self._lane(owner))

    async def settled(self) -> None:
        """Wait until every copy put is written (or given up)."""
        await self._empty.wait()

    async def close(self) -> None:
        """Stop every lane (shutdown): copies not written stay leased and are taken again later."""
        lanes = list(self._lanes.values())
        for lane in lanes:
            lane.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
        # What waited unwritten is dropped here (still leased in the database, it is taken again).
        self._waiting.clear()
        self._in_flight = 0
        self._room.set()
        self._empty.set()

    async def _lane(self, owner: MailboxOwner) -> None:
        queue = self._waiting[owner]
        try:
            while queue:
                group = [queue.popleft() for _ in range(min(len(queue), self.group))]
                try:
                    await self._write(group)
                except Exception as exc:
                    # Nothing recorded: the copies stay leased to this node and are taken again once
                    # the lease runs out (a retry looks for each copy before it writes).
                    log.warning(
                        "%d copies for %s not written, left for a retry: %s", len(group), owner.address, exc
                    )
                finally:
                    self._in_flight -= len(group)
                    self._room.set()
        finally:
            # No await since the loop above saw the queue empty: nothing was put in between.
            del self._lanes[owner]
            if not queue:
                del self._waiting[owner]
            if not self._lanes:
                self._empty.set()

    async def _write(self, group: list[Waiting]) -> None:
        now = asyncio.get_running_loop().time()
        stale = [w.job for w in group if now - w.confirmed > self.confirmed_for]
        if stale:
            held = {job.id for job in await self.confirm(stale)}
            fresh = {w.job.id for w in group if now - w.confirmed <= self.confirmed_for}
            group = [w for w in group if w.job.id in held or w.job.id in fresh]
        if not group:
            return
        try:
            results: list[Located | Exception] = await self.mailbox.append_batch([w.delivery for w in group])
        except Exception as exc:
            results = [exc] * len(group)
        self.written([(w.job, result) for w, result in zip(group, results, strict=True)])
