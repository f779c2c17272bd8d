"""IMAP IDLE on one member's copies folder, with a watchdog: the IMAP backend's ``ChangeWatch``.

The flag watcher polls every mailbox and also keeps an IDLE session open on as many as it may
(``[flagsync] idle_mailboxes``), so a flag a member sets reaches their co-members in about the server's
notify delay (Dovecot: 0.5 s) instead of up to a poll interval. The session is a connection of its own
outside the pool (IDLE holds it for minutes), opened read-only (EXAMINE, so the gateway never takes
\\Recent from the member).

Each ``wait`` is one IDLE round: IDLE, wait for a push that tells of a flag change or the timeout,
DONE; other pushes (the fan-out's appends) are read and the round waits on. Changes made between two
rounds are announced by the server when the next IDLE starts, so none falls between. aioimaplib's IDLE
has traps handled here:

- a server that says BYE (shutting down) or drops the connection leaves aioimaplib's IDLE waiting for
  ever: every wait races the connection's "lost" signal, and a pushed BYE ends the session;
- a DONE the server never answers (a hung server, a dead NAT mapping) would block the session: DONE and
  the tagged answer to IDLE get the command timeout (the watchdog), then the connection is dropped;
- after any error or timeout the connection is never reused: the next ``wait`` opens a fresh one.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable
from typing import Any

import aioimaplib

from gateway.errors import MailboxError
from gateway.mailbox.imap_connection import ImapConnection

# What a server pushes during IDLE when flags changed (RFC 3501 7.4.2): FETCH with the new FLAGS. A
# message added or removed (EXISTS, EXPUNGE, VANISHED) is not a flag change: the fan-out's own appends
# would otherwise wake the watch once per batch and member, and a copy a member moves in with flags
# set is found by the next poll.
_CHANGES = (b"FETCH",)


def pushed_change(lines: list[bytes]) -> bool:
    """Whether untagged lines pushed during IDLE (``* `` already stripped by aioimaplib) tell of a flag
    change."""
    for line in lines:
        words = bytes(line).split(None, 2)
        if any(word.upper() in _CHANGES for word in words[:2]):
            return True
    return False


def pushed_bye(lines: list[bytes]) -> bool:
    return any(bytes(line).upper().startswith(b"BYE") for line in lines)


class IdleWatch:
    """``ChangeWatch`` on an IMAP folder: one IDLE session, renewed after any trouble."""

    def __init__(self, connect: Callable[[], Awaitable[ImapConnection]], folder: str, *, where: str) -> None:
        self._connect = connect
        self.folder = folder
        self.where = where
        self._connection: ImapConnection | None = None

    async def wait(self, seconds: float) -> bool:
        connection = await self._ready()
        try:
            return await self._round(connection, seconds)
        except BaseException:
            self._drop()
            raise

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.logout()

    async def _ready(self) -> ImapConnection:
        if self._connection is not None and self._connection.usable:
            return self._connection
        self._drop()
        connection = await self._connect()
        try:
            if "IDLE" not in connection.capabilities:
                raise MailboxError(errno.EPROTO, "the IMAP server lacks IDLE", self.where)
            await connection.examine(self.folder)
        except BaseException:
            connection.abort()
            raise
        self._connection = connection
        return connection

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()

    async def _round(self, connection: ImapConnection, seconds: float) -> bool:
        client: Any = connection.client
        protocol: Any = client.protocol
        watchdog = connection.timeout
        idle = await self._until(
            connection, "IDLE", watchdog, asyncio.ensure_future(client.idle_start(timeout=max(seconds, 0.0)))
        )
        changed = False
        loop = asyncio.get_running_loop()
        ends = loop.time() + max(seconds, 0.0)
        try:
            # Pushes that tell of no flag change (the fan-out's own appends: EXISTS, RECENT) do not end
            # the round: it waits on in the same IDLE, rather than DONE and IDLE again for every
            # MULTIAPPEND into the mailbox (both cost the gateway and the server a round trip).
            stopped = False
            while not (changed or stopped):
                left = max(ends - loop.time(), 0.0)
                lines = await self._until(
                    connection,
                    "IDLE",
                    # aioimaplib stops the wait itself once the round's time is up (it pushes a stop
                    # marker); the extra seconds only guard against that marker never coming.
                    left + watchdog,
                    asyncio.ensure_future(client.wait_server_push(timeout=left + watchdog)),
                )
                if lines == aioimaplib.STOP_WAIT_SERVER_PUSH:
                    break
                if pushed_bye(lines):
                    raise MailboxError(errno.ECONNRESET, "IMAP IDLE: the server said BYE", self.where)
                changed = pushed_change(lines)
                # Pushes that came in the same moment belong to this round too.
                while not protocol.idle_queue.empty():
                    more = protocol.idle_queue.get_nowait()
                    if more == aioimaplib.STOP_WAIT_SERVER_PUSH:
                        stopped = True
                    else:
                        changed = changed or pushed_change(more)
                stopped = stopped or loop.time() >= ends
        finally:
            if connection.usable and client.has_pending_idle():
                client.idle_done()
        reply = await self._until(connection, "DONE", watchdog, idle)
        if reply.result != "OK":
            raise MailboxError(errno.EIO, f"IMAP IDLE refused: {reply.result}", self.where)
        # A push that arrived while DONE was on its way: aioimaplib queues some of them and drops others
        # (those in the same read as the tagged answer); the dropped ones are the next poll's to find.
        while not protocol.idle_queue.empty():
            more = protocol.idle_queue.get_nowait()
            changed = changed or (more != aioimaplib.STOP_WAIT_SERVER_PUSH and pushed_change(more))
        return changed

    async def _until(
        self, connection: ImapConnection, what: str, seconds: float, step: asyncio.Future[Any]
    ) -> Any:
        """``step``'s result, unless the connection is lost or ``seconds`` pass first (then it is dropped)."""
        try:
            async with asyncio.timeout(seconds):
                await asyncio.wait({step, connection.lost}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            step.cancel()
            connection.abort()
            raise MailboxError(
                errno.ETIMEDOUT, f"IMAP {what}: no answer within {seconds:g} s", self.where
            ) from None
        except BaseException:
            step.cancel()
            connection.abort()
            raise
        if not step.done():
            step.cancel()
            connection.abort()
            raise MailboxError(errno.ECONNRESET, f"IMAP {what}: the server hung up", self.where)
        try:
            return step.result()
        except (OSError, EOFError, ValueError, aioimaplib.AioImapException, asyncio.CancelledError) as exc:
            connection.abort()
            raise MailboxError(errno.EIO, f"IMAP {what}: {exc or type(exc).__name__}", self.where) from exc
