"""Members' mailboxes on an IMAP server (Dovecot with a master user), through aioimaplib.

How the Mailbox protocol maps onto IMAP:

- **Login.** The gateway logs in as ``<member address>*<master user>`` with the master user's password
  (Dovecot's master-user login), so it needs no member passwords; a member whose server has no master
  user for the gateway can be given its own login (``ImapLogin(master=False)``). Passwords are read
  from a file or an environment variable at every new connection (``Secret``). The owner's portfolio
  is not part of the login: a member's IMAP account is one mailbox whatever portfolio a copy came from
  (copy ids are unique across portfolios, so nothing gets mixed up).
- **Finding a copy.** Every copy carries ``X-Gateway-Copy-Id: <copy id>``; ``append`` puts the header in
  front when the bytes lack it. A copy is found in every selectable folder (``LIST "" "*"``; members move
  mail) with ``UID SEARCH HEADER``, which matches substrings, so the header is fetched and compared
  exactly before a message counts as the copy.
- **Append.** ``APPEND`` into the configured folder with the copy's flags; the UID comes from UIDPLUS
  (``APPENDUID``). IMAP carries lines ending in CRLF, so bare LFs become CRLF; a folder that does not
  exist is created (``TRYCREATE``). A copy with NUL bytes goes as a ``literal8`` (``~{n}``, BINARY,
  RFC 3516), which stores them as they are (Dovecot then serves them with ``FETCH BINARY[…]``; plain
  ``BODY[]`` shows them as 0x80). A server without BINARY gets no such copy: the append fails with
  ``MailboxError`` rather than change the bytes, and ingress refuses such mail at DATA in the first
  place (``keeps_nul``; gateway/mailbox/fidelity.py).
  ``append_batch`` sends the first attempts of one member's copies in one ``APPEND`` (MULTIAPPEND,
  RFC 3502: all of them are appended or none; the literals after the first are LITERAL+), which costs
  two round trips and one transaction in the server for the lot; UIDs come from ``APPENDUID``'s set.
- **Flags and removal.** ``UID STORE +FLAGS.SILENT``/``-FLAGS.SILENT``, then ``UID FETCH FLAGS`` reads
  the outcome back; removal is ``UID STORE +FLAGS.SILENT (\\Deleted)`` and ``UID EXPUNGE`` of exactly
  those UIDs (other messages a member marked deleted stay).
- **Flag changes.** CONDSTORE: the token holds each folder's UIDVALIDITY, HIGHESTMODSEQ and UIDNEXT. A
  folder whose STATUS still shows them is skipped; in another one only the gateway copies changed since
  (``UID SEARCH MODSEQ <n+1> HEADER X-Gateway-Copy-Id ""``) are fetched. As with Maildir, a copy the
  caller has not seen (UID at or above the old UIDNEXT, or a new folder) counts as having had no flags.
  Unlike Maildir's, the token moves on whenever the folder changed, even when there is nothing to report.
- **References.** ``Located.ref`` is the IMAP URL path of the message (RFC 5092):
  ``<folder>;UIDVALIDITY=<n>/;UID=<uid>``. Folder names are IMAP's own (modified UTF-7, "." as Dovecot's
  Maildir++ separator), the same names the Maildir backend reports for a Maildir Dovecot serves.

The wire format is gateway/mailbox/imap_protocol.py's (pure), the sessions and their pool
gateway/mailbox/imap_connection.py's, IDLE gateway/mailbox/imap_idle.py's.

Any trouble on the way raises ``MailboxError``; the caller retries later, and since ``append`` looks for
the copy first (unless it is the first attempt) a retry never delivers twice.

With several gateway nodes (docs/scaling.md) the fan-out confirms its leases in the database
right before it calls ``append_batch``, and a copy another node took over is not appended at all. A
copy taken over always goes out as a retry (its row shows an earlier lease), so the node that took
it over searches every folder for the copy id before it APPENDs. What remains is a window IMAP
offers no way to close: a node that stalls after its confirm and before its own APPEND reaches the
server, for longer than the lease, while the other node searches (finding nothing) and appends. IMAP
has no "append unless a message with this header exists"; the window is the time between the confirm
and the APPEND command (waiting for a pooled connection, a login), which is why nothing else runs
between them.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

from gateway.config import ImapSettings
from gateway.errors import MailboxError
from gateway.mailbox.base import (
    ChangeWatch,
    Delivery,
    Flag,
    FlagChange,
    Located,
    Mailbox,
    MailboxOwner,
    append_each,
    check_copy_id,
    check_owner,
)
from gateway.mailbox.imap_connection import ImapConnection, ImapPool, ImapServer
from gateway.mailbox.imap_idle import IdleWatch
from gateway.mailbox.imap_protocol import (
    COPY_ID_HEADER,
    Fetched,
    FolderState,
    Selected,
    decode_token,
    encode_folder_name,
    encode_token,
    imap_ref,
    message_copy_id,
    message_for_append,
    system_flags,
)

_HEADER_ITEMS = f"(UID FLAGS BODY.PEEK[HEADER.FIELDS ({COPY_ID_HEADER})])"
# Most copies and bytes in one MULTIAPPEND: a command must be through within the connection's timeout.
_MULTIAPPEND_COUNT = 100
_MULTIAPPEND_BYTES = 2 * 1024 * 1024

# SEARCH keys for "carries any system flag": OR SEEN OR ANSWERED OR FLAGGED OR DELETED DRAFT.
_ANY_FLAG: list[str] = [
    *(word for flag in list(Flag)[:-1] for word in ("OR", flag.value[1:].upper())),
    list(Flag)[-1].value[1:].upper(),
]


@dataclass(slots=True)
class _Held:
    lock: asyncio.Lock
    users: int = 0


class _KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], _Held] = {}

    @asynccontextmanager
    async def hold(self, key: tuple[str, str]) -> AsyncIterator[None]:
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = _Held(asyncio.Lock())
        held.users += 1
        try:
            async with held.lock:
                yield
        finally:
            held.users -= 1
            if not held.users:
                del self._held[key]

    @asynccontextmanager
    async def hold_all(self, keys: Sequence[tuple[str, str]]) -> AsyncIterator[None]:
        """Every lock of ``keys``, taken in the order given: callers that sort them never deadlock.
        What ``hold`` of each would do, without a context manager per copy of a batch."""
        entries: list[tuple[tuple[str, str], _Held]] = []
        for key in dict.fromkeys(keys):  # one key twice would wait for itself
            held = self._held.get(key)
            if held is None:
                held = self._held[key] = _Held(asyncio.Lock())
            held.users += 1
            entries.append((key, held))
        taken = 0
        try:
            for _, held in entries:
                await held.lock.acquire()
                taken += 1
            yield
        finally:
            for _, held in entries[:taken]:
                held.lock.release()
            for key, held in entries:
                held.users -= 1
                if not held.users:
                    del self._held[key]


# --- the mailbox -----------------------------------------------------------------------------------------


class ImapMailbox(Mailbox):
    """The Mailbox protocol on an IMAP server; see the module docstring for the mapping."""

    def __init__(
        self,
        server: ImapServer,
        *,
        timeout: float = 30.0,
        connections_per_member: int = 2,
        max_connections: int = 32,
        max_idle: int = 64,
        backoff_first: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.server = server
        self.folder = encode_folder_name(server.folder)
        self._pool = ImapPool(
            server,
            timeout=timeout,
            per_member=connections_per_member,
            max_connections=max_connections,
            max_idle=max_idle,
            backoff_first=backoff_first,
            backoff_max=backoff_max,
        )
        self._copy_locks = _KeyedLocks()
        # Copies this process appended lately: a "first attempt" of one of them looks before it writes,
        # so two concurrent first attempts of one copy cannot both append it.
        self._appended: OrderedDict[tuple[str, str], None] = OrderedDict()

    @classmethod
    def from_settings(
        cls, settings: ImapSettings, *, ssl_context: ssl.SSLContext | None = None, **options: Any
    ) -> ImapMailbox:
        """The mailbox for ``[mailbox.imap]``; ``options`` are the keyword arguments of the constructor."""
        return cls(ImapServer.from_settings(settings, ssl_context=ssl_context), **options)

    async def append(
        self,
        owner: MailboxOwner,
        copy_id: str,
        data: bytes,
        flags: frozenset[Flag] = frozenset(),
        *,
        first_attempt: bool = False,
    ) -> Located:
        check_owner(owner)
        check_copy_id(copy_id)
        message = message_for_append(copy_id, data)
        key = (owner.address, copy_id)
        with self._context(f"append copy {copy_id}", owner):
            async with self._copy_locks.hold(key), self._pool.session(owner.address) as connection:
                if not first_attempt or key in self._appended:
                    found = await self._find(connection, copy_id)
                    if found:
                        return found[0]
                uidvalidity, uid = await connection.append(self.folder, message, frozenset(flags))
                self._remember(key)
                return Located(
                    copy_id, self.folder, imap_ref(self.folder, uidvalidity, uid), frozenset(flags)
                )

    async def append_batch(self, deliveries: Sequence[Delivery]) -> list[Located | Exception]:
        """First attempts go to each member in one MULTIAPPEND (per ``_MULTIAPPEND_COUNT`` copies and
        ``_MULTIAPPEND_BYTES``): one command, two round trips and one transaction in the server for
        what would be one APPEND each. Retries, and a copy named twice in the batch, go one by one
        through ``append``, which looks for the copy first. Members run concurrently up to the
        pool's bounds (aioimaplib has one command in flight per connection)."""
        results: list[Located | Exception | None] = [None] * len(deliveries)
        chunks: dict[str, list[list[tuple[int, bytes]]]] = {}
        alone: list[int] = []
        named: set[tuple[str, str]] = set()
        for index, delivery in enumerate(deliveries):
            key = (delivery.owner.address, delivery.copy_id)
            if not delivery.first_attempt or key in named:
                alone.append(index)
                continue
            named.add(key)
            try:
                check_owner(delivery.owner)
                check_copy_id(delivery.copy_id)
                message = message_for_append(delivery.copy_id, delivery.data)
            except ValueError as exc:
                results[index] = exc
                continue
            if b"\0" in message:
                # A literal8 goes in an APPEND of its own (append decides whether it can go at all).
                alone.append(index)
                continue
            member = chunks.setdefault(delivery.owner.address, [[]])
            chunk = member[-1]
            if chunk and (
                len(chunk) >= _MULTIAPPEND_COUNT
                or sum(len(m) for _, m in chunk) + len(message) > _MULTIAPPEND_BYTES
            ):
                member.append(chunk := [])
            chunk.append((index, message))

        async def one(index: int) -> None:
            (results[index],) = await append_each(self, [deliveries[index]])

        await asyncio.gather(
            *(
                self._append_chunk(deliveries, chunk, results)
                for member in chunks.values()
                for chunk in member
            ),
            *(one(index) for index in alone),
        )
        return [result if result is not None else AssertionError("not attempted") for result in results]

    async def keeps_nul(self, owner: MailboxOwner | None = None) -> bool | None:
        """Whether the server offers BINARY (RFC 3516), so that NUL bytes are stored as they are.

        What the last login showed (capabilities are those after login: Dovecot lists BINARY only
        then); with ``owner`` and no login yet, one is made as the owner to find out."""
        if self._pool.binary is None and owner is not None:
            check_owner(owner)
            with self._context("ask for BINARY", owner):
                async with self._pool.session(owner.address) as connection:
                    return connection.binary
        return self._pool.binary

    async def find(self, owner: MailboxOwner, copy_id: str) -> list[Located]:
        check_owner(owner)
        check_copy_id(copy_id)
        with self._context(f"find copy {copy_id}", owner):
            async with self._pool.session(owner.address) as connection:
                return await self._find(connection, copy_id)

    async def add_flags(self, owner: MailboxOwner, copy_id: str, flags: frozenset[Flag]) -> list[Located]:
        return await self._change_flags(owner, copy_id, flags, "+FLAGS.SILENT")

    async def remove_flags(self, owner: MailboxOwner, copy_id: str, flags: frozenset[Flag]) -> list[Located]:
        return await self._change_flags(owner, copy_id, flags, "-FLAGS.SILENT")

    async def remove(self, owner: MailboxOwner, copy_id: str) -> int:
        check_owner(owner)
        check_copy_id(copy_id)
        with self._context(f"remove copy {copy_id}", owner):
            async with self._pool.session(owner.address) as connection:
                removed = 0
                # A copy a member moves meanwhile is expunged where it went, on a second pass.
                for _ in range(2):
                    missed = 0

                    async def expunge(folder: str, state: Selected, messages: list[Fetched]) -> None:
                        nonlocal removed, missed
                        uids = [m.uid for m in messages if m.uid is not None]
                        await connection.store(uids, "+FLAGS.SILENT", {Flag.DELETED})
                        gone = await connection.expunge(uids)
                        removed += gone
                        missed += len(uids) - gone

                    await self._each_folder(connection, copy_id, expunge)
                    if not missed:
                        return removed
                raise MailboxError(
                    errno.ENOENT, f"copy {copy_id} kept moving while it was removed", self.server.where
                )

    async def flag_changes(self, owner: MailboxOwner, since: str | None) -> tuple[list[FlagChange], str]:
        check_owner(owner)
        before = None if since is None else decode_token(since)
        with self._context("list flag changes", owner):
            async with self._pool.session(owner.address) as connection:
                return await self._flag_changes(connection, before)

    def watch(self, owner: MailboxOwner) -> ChangeWatch:
        """IDLE on the folder copies are appended to, on a connection of its own (see imap_idle)."""
        check_owner(owner)
        return IdleWatch(
            functools.partial(self._pool.dedicated, owner.address), self.folder, where=self.server.where
        )

    async def close(self) -> None:
        await self._pool.close()

    # --- internals ------------------------------------------------------------------------------------

    @contextmanager
    def _context(self, action: str, owner: MailboxOwner) -> Iterator[None]:
        """Say what the gateway was doing, and for whom, in every MailboxError."""
        try:
            yield
        except MailboxError as exc:
            raise MailboxError(
                exc.errno, f"{action} for {owner.address}: {exc.strerror}", exc.filename
            ) from exc

    async def _append_chunk(
        self,
        deliveries: Sequence[Delivery],
        chunk: list[tuple[int, bytes]],
        results: list[Located | Exception | None],
    ) -> None:
        """First attempts of one member's copies (``append_batch``), their results into ``results``."""
        owner = deliveries[chunk[0][0]].owner
        keys = sorted((owner.address, deliveries[index].copy_id) for index, _ in chunk)
        located: dict[int, Located] = {}
        try:
            # In order: two batches holding some of the same keys wait, never deadlock.
            async with self._copy_locks.hold_all(keys):
                with self._context(f"append {len(chunk)} copies", owner):
                    async with self._pool.session(owner.address) as connection:
                        await self._append_chunk_on(connection, deliveries, chunk, located)
        except MailboxError as exc:
            for index, _ in chunk:
                copy_id = deliveries[index].copy_id
                results[index] = located.get(index) or MailboxError(
                    exc.errno, f"append copy {copy_id} for {owner.address}: {exc.strerror}", exc.filename
                )
            return
        for index, _ in chunk:
            results[index] = located[index]

    async def _append_chunk_on(
        self,
        connection: ImapConnection,
        deliveries: Sequence[Delivery],
        chunk: list[tuple[int, bytes]],
        located: dict[int, Located],
    ) -> None:
        """Append the chunk on ``connection`` (copy locks held); each copy appended goes into ``located``."""

        def done(index: int, uidvalidity: int, uid: int) -> None:
            delivery = deliveries[index]
            self._remember((delivery.owner.address, delivery.copy_id))
            ref = imap_ref(self.folder, uidvalidity, uid)
            located[index] = Located(delivery.copy_id, self.folder, ref, frozenset(delivery.flags))

        # Another operation of this process may have appended one of them meanwhile (it held the lock):
        # that one is looked for, as a retry would be.
        for index, _ in chunk:
            delivery = deliveries[index]
            if (delivery.owner.address, delivery.copy_id) in self._appended:
                found = await self._find(connection, delivery.copy_id)
                if found:
                    located[index] = found[0]
        pending = [(index, message) for index, message in chunk if index not in located]
        if len(pending) > 1 and connection.multiappend:
            flags = [frozenset(deliveries[index].flags) for index, _ in pending]
            appended = await connection.append_many(
                self.folder, [(message, f) for (_, message), f in zip(pending, flags, strict=True)]
            )
            if appended is not None:
                uidvalidity, uids = appended
                for (index, _), uid in zip(pending, uids, strict=True):
                    done(index, uidvalidity, uid)
                return
            # Refused as a whole, so none is in the mailbox: one by one says which one the server
            # will not take, and the others still go in.
        for index, message in pending:
            uidvalidity, uid = await connection.append(
                self.folder, message, frozenset(deliveries[index].flags)
            )
            done(index, uidvalidity, uid)

    def _remember(self, key: tuple[str, str]) -> None:
        self._appended[key] = None
        self._appended.move_to_end(key)
        while len(self._appended) > 10_000:
            self._appended.popitem(last=False)

    async def _each_folder(
        self,
        connection: ImapConnection,
        copy_id: str,
        act: Callable[[str, Selected, list[Fetched]], Awaitable[None]],
    ) -> None:
        """Call ``act`` for each folder holding the copy, with the folder selected, on the copy's messages."""
        for folder in await connection.folders():
            state = await connection.select(folder)
            if state is None or not state.exists:
                continue
            uids = await connection.search("HEADER", COPY_ID_HEADER, copy_id)
            if not uids:
                continue
            messages = [
                m for m in await connection.fetch(uids, _HEADER_ITEMS) if message_copy_id(m.header) == copy_id
            ]
            if messages:
                await act(folder, state, messages)

    async def _find(self, connection: ImapConnection, copy_id: str) -> list[Located]:
        located: list[Located] = []

        async def collect(folder: str, state: Selected, messages: list[Fetched]) -> None:
            for message in messages:
                assert message.uid is not None
                ref = imap_ref(folder, state.uidvalidity, message.uid)
                located.append(Located(copy_id, folder, ref, system_flags(message.flags)))

        await self._each_folder(connection, copy_id, collect)
        return located

    async def _change_flags(
        self, owner: MailboxOwner, copy_id: str, flags: frozenset[Flag], change: str
    ) -> list[Located]:
        check_owner(owner)
        check_copy_id(copy_id)
        with self._context(f"change flags of copy {copy_id}", owner):
            async with self._pool.session(owner.address) as connection:
                if not flags:
                    return await self._find(connection, copy_id)
                # A member may move the copy between our search and our STORE; one more pass finds it
                # where it went (the instances already changed need nothing more).
                for _ in range(2):
                    located, missed = await self._store_flags(connection, copy_id, flags, change)
                    if not missed:
                        return located
                raise MailboxError(
                    errno.ENOENT, f"copy {copy_id} kept moving while its flags changed", self.server.where
                )

    async def _store_flags(
        self, connection: ImapConnection, copy_id: str, flags: frozenset[Flag], change: str
    ) -> tuple[list[Located], bool]:
        """One pass of a flag change: the instances after it, and whether one vanished meanwhile."""
        located: list[Located] = []
        missed = False

        async def store(folder: str, state: Selected, messages: list[Fetched]) -> None:
            nonlocal missed
            uids = [m.uid for m in messages if m.uid is not None]
            await connection.store(uids, change, flags)
            now = {m.uid: m for m in await connection.fetch(uids, "(UID FLAGS)")}
            for uid in uids:
                if uid in now:
                    ref = imap_ref(folder, state.uidvalidity, uid)
                    located.append(Located(copy_id, folder, ref, system_flags(now[uid].flags)))
                else:
                    missed = True

        await self._each_folder(connection, copy_id, store)
        return located, missed

    async def _flag_changes(
        self, connection: ImapConnection, before: dict[str, FolderState] | None
    ) -> tuple[list[FlagChange], str]:
        if "CONDSTORE" not in connection.capabilities:
            raise MailboxError(errno.EPROTO, "the IMAP server lacks CONDSTORE", self.server.where)
        states: dict[str, FolderState] = {}
        flags_now: dict[tuple[str, str], frozenset[Flag]] = {}
        reported: set[tuple[str, str]] = set()
        for folder in await connection.folders():
            previous = None if before is None else before.get(folder)
            if previous is not None and folder != connection.selected:
                status = await connection.status(folder)
                if status == previous:
                    states[folder] = previous
                    continue
            selected = await connection.select(folder)
            if selected is None:
                continue  # deleted meanwhile: nothing left to report there
            if selected.highestmodseq is None:
                raise MailboxError(
                    errno.EPROTO, f"folder {folder} keeps no modification sequences", self.server.where
                )
            now = FolderState(selected.uidvalidity, selected.highestmodseq, selected.uidnext)
            states[folder] = now
            if now == previous or not selected.exists:
                continue
            incremental = previous is not None and previous.uidvalidity == now.uidvalidity
            criteria = ["HEADER", COPY_ID_HEADER, '""']
            if before is not None:
                # A copy the caller has not seen counts only with a flag (below), so those without one,
                # the fan-out's fresh copies above all, are not even fetched.
                if incremental and previous is not None and previous.uidnext > 1:
                    criteria += ["OR", "UID", f"1:{previous.uidnext - 1}", *_ANY_FLAG]
                else:
                    criteria += _ANY_FLAG
            if incremental:
                assert previous is not None
                criteria = ["MODSEQ", str(previous.highestmodseq + 1), *criteria]
            uids = await connection.search(*criteria)
            for message in await connection.fetch(uids, _HEADER_ITEMS):
                copy_id = message_copy_id(message.header)
                if copy_id is None or message.uid is None:
                    continue
                key = (copy_id, folder)
                flags = system_flags(message.flags)
                flags_now[key] = flags_now.get(key, frozenset()) | flags
                # A copy the caller has not seen counts as having had no flags (as on Maildir).
                seen_before = before is None or (
                    incremental and previous is not None and message.uid < previous.uidnext
                )
                if seen_before or flags:
                    reported.add(key)
        changes = [
            FlagChange(copy_id, folder, flags_now[(copy_id, folder)]) for copy_id, folder in sorted(reported)
        ]
        return changes, encode_token(states)
