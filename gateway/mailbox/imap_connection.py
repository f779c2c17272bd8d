"""One logged-in IMAP session of a member and the pool of them: where the server is, how the gateway logs
in, and how each command is run against aioimaplib's traps. ``ImapProbe`` makes the same connection
and login once, for /readyz, and says at which step it failed.

aioimaplib returns raw response lines and has traps, each designed around here:

- one command in flight per connection: a connection belongs to one operation at a time (the pool hands
  it out exclusively) and every command also takes the connection's lock;
- a command whose connection drops is never answered: each command races the connection's "lost" signal
  and a timeout, and after any timeout or error the connection is thrown away, never reused;
- its reader recurses once per response line, so a FETCH of some thousand messages overflows the stack
  and kills the connection: FETCHes go out in chunks of ``_FETCH_CHUNK`` UIDs.

An unreachable server or any trouble on the way raises ``MailboxError``. After a failed connection
attempt the pool waits before it tries again (backoff, doubling up to a maximum), so a server that is
down is not hammered by every queued copy.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import aioimaplib

from gateway.config import ImapSettings
from gateway.errors import MailboxError
from gateway.mailbox.base import Flag
from gateway.mailbox.imap_protocol import (
    INBOX,
    Fetched,
    FolderState,
    Selected,
    flag_list,
    parse_appenduid,
    parse_appenduids,
    parse_capabilities,
    parse_fetch,
    parse_list,
    parse_search,
    parse_select,
    parse_status,
    parse_untagged,
    quote,
    response_codes,
    uid_set,
)

log = logging.getLogger(__name__)

# UIDs per FETCH: aioimaplib's reader recurses once per response line (three per message here) and
# overflows Python's stack somewhere above 600 messages in one read.
_FETCH_CHUNK = 200


@dataclass(frozen=True, slots=True)
class Secret:
    """Where a password is read when a connection is made: a file or an environment variable, never the
    configuration itself. Read afresh each time, so a rotated password is picked up without a restart."""

    file: Path | None = None
    env: str | None = None

    def __post_init__(self) -> None:
        if (self.file is None) == (self.env is None):
            raise ValueError("a password comes from a file or an environment variable: give exactly one")

    async def read(self, what: str) -> str:
        """The password, stripped; ``MailboxError`` naming the file or variable when there is none."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise MailboxError(errno.ENOENT, f"{what} environment variable is not set", self.env)
            if not value.strip():
                raise MailboxError(errno.EINVAL, f"{what} environment variable is empty", self.env)
            return value.strip()
        assert self.file is not None
        try:
            text = await asyncio.to_thread(self.file.read_text, encoding="utf-8")
        except OSError as exc:
            raise MailboxError(_errno(exc), f"{what} file: {_reason(exc)}", str(self.file)) from exc
        if not text.strip():
            raise MailboxError(errno.EINVAL, f"{what} file is empty", str(self.file))
        return text.strip()


@dataclass(frozen=True, slots=True)
class ImapLogin:
    """How the gateway logs in for a member: with ``master``, as ``<member>*<user>`` with a Dovecot master
    user's password (no member passwords needed); otherwise as the member's own account ``user``."""

    user: str
    password: Secret
    master: bool = True

    def user_for(self, address: str) -> str:
        return f"{address}*{self.user}" if self.master else self.user

    @property
    def what(self) -> str:
        """What the password is, for error messages."""
        return "master password" if self.master else "member password"


@dataclass(frozen=True, slots=True)
class ImapServer:
    """Where members' mailboxes are and how the gateway logs in (``[mailbox.imap]``, or one member's
    table under ``[mailbox.imap.members]``). Equal values mean one server and login: one pool."""

    host: str
    port: int
    tls: Literal["none", "starttls", "tls"]
    login: ImapLogin
    folder: str = INBOX
    ssl_context: ssl.SSLContext | None = None
    """Certificates to trust for "starttls"/"tls"; None: the system's, with host name checking."""

    @classmethod
    def from_settings(
        cls, settings: ImapSettings, *, member: str | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> ImapServer:
        """The server of ``[mailbox.imap]``, or of ``member``'s table there, where it has one (the keys it
        leaves out are [mailbox.imap]'s)."""
        if settings.master_user is None or (
            settings.master_password_file is None and settings.master_password_env is None
        ):
            raise ValueError("mailbox.imap needs master_user and master_password_file or master_password_env")
        login = ImapLogin(
            settings.master_user, Secret(settings.master_password_file, settings.master_password_env)
        )
        override = settings.members.get(member) if member is not None else None
        if override is None:
            return cls(settings.host, settings.port, settings.tls, login, settings.folder, ssl_context)
        if override.login is not None:
            login = ImapLogin(
                override.login, Secret(override.password_file, override.password_env), master=False
            )
        elif override.master_password_file is not None or override.master_password_env is not None:
            login = ImapLogin(
                override.master_user or settings.master_user,
                Secret(override.master_password_file, override.master_password_env),
            )
        return cls(
            host=settings.host if override.host is None else override.host,
            port=settings.port if override.port is None else override.port,
            tls=settings.tls if override.tls is None else override.tls,
            login=login,
            folder=settings.folder if override.folder is None else override.folder,
            ssl_context=ssl_context,
        )

    @property
    def where(self) -> str:
        return f"imap://{self.host}:{self.port}"

    def context(self) -> ssl.SSLContext:
        return self.ssl_context or ssl.create_default_context()


class _Unreachable(MailboxError):
    """The server could not be reached or greeted: the pool backs off before the next attempt."""


_LIBRARY_ERRORS = (OSError, EOFError, ValueError, aioimaplib.AioImapException)


@dataclass(frozen=True, slots=True)
class _Reply:
    result: str
    lines: list[bytes | bytearray]

    @property
    def ok(self) -> bool:
        return self.result == "OK"

    @property
    def text(self) -> str:
        last = self.lines[-1] if self.lines else b""
        return bytes(last).decode("utf-8", "replace")


class ImapConnection:
    """One logged-in IMAP session of one member; one operation and one command at a time."""

    def __init__(self, client: Any, lost: asyncio.Future[None], server: ImapServer, timeout: float) -> None:
        self.client = client
        self.lost = lost
        self.server = server
        self.timeout = timeout
        self.capabilities: frozenset[str] = frozenset()
        self.selected: str | None = None
        self.broken = False
        self._lock = asyncio.Lock()

    @property
    def usable(self) -> bool:
        return not self.broken and not self.lost.done()

    def abort(self) -> None:
        """Drop the connection without a word; it is never used again."""
        self.broken = True
        _close_client(self.client)

    async def run(self, what: str, call: Callable[[], Awaitable[Any]]) -> _Reply:
        """One command: under the lock, against a timeout and the connection's loss; errors end it."""
        if not self.usable:
            raise MailboxError(errno.ENOTCONN, f"IMAP {what}: the connection is closed", self.server.where)
        async with self._lock:
            command = asyncio.ensure_future(call())
            try:
                async with asyncio.timeout(self.timeout):
                    await asyncio.wait({command, self.lost}, return_when=asyncio.FIRST_COMPLETED)
            except TimeoutError:
                command.cancel()
                self.abort()
                raise MailboxError(
                    errno.ETIMEDOUT, f"IMAP {what}: no answer within {self.timeout:g} s", self.server.where
                ) from None
            except BaseException:
                command.cancel()
                self.abort()
                raise
            if not command.done():
                command.cancel()
                self.abort()
                raise MailboxError(errno.ECONNRESET, f"IMAP {what}: the server hung up", self.server.where)
            try:
                response = command.result()
            except _LIBRARY_ERRORS as exc:
                self.abort()
                raise MailboxError(_errno(exc), f"IMAP {what}: {_reason(exc)}", self.server.where) from exc
        return _Reply(str(response.result), list(response.lines))

    async def ok(self, what: str, call: Callable[[], Awaitable[Any]]) -> _Reply:
        """``run``, and anything but OK is an error that ends the connection."""
        reply = await self.run(what, call)
        if not reply.ok:
            self.abort()
            raise MailboxError(errno.EIO, f"IMAP {what} refused: {reply.text}", self.server.where)
        return reply

    # --- commands, each as the gateway needs it ---------------------------------------------------------

    @property
    def _protocol(self) -> Any:
        return self.client.protocol

    async def capability(self) -> frozenset[str]:
        def call() -> Awaitable[Any]:
            protocol = self._protocol
            command = aioimaplib.Command("CAPABILITY", protocol.new_tag(), loop=protocol.loop)
            return cast(Awaitable[Any], protocol.execute(command))

        self.capabilities = parse_capabilities((await self.ok("CAPABILITY", call)).lines)
        # aioimaplib checks its own set before UID EXPUNGE and MOVE.
        self._protocol.capabilities = set(self.capabilities)
        return self.capabilities

    async def starttls(self) -> None:
        def call() -> Awaitable[Any]:
            protocol = self._protocol
            command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
            return cast(Awaitable[Any], protocol.execute(command))

        if "STARTTLS" not in await self.capability():
            raise _Unreachable(errno.EPROTO, "IMAP STARTTLS: the server does not offer it", self.server.where)
        await self.ok("STARTTLS", call)
        protocol = self._protocol
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                protocol.transport = await loop.start_tls(
                    protocol.transport, protocol, self.server.context(), server_hostname=self.server.host
                )
        except (OSError, TimeoutError) as exc:
            self.abort()
            raise _Unreachable(_errno(exc), f"IMAP STARTTLS: {_reason(exc)}", self.server.where) from exc

    async def login(self, user: str, password: str) -> None:
        reply = await self.run("LOGIN", lambda: self._protocol.login(quote(user), password))
        if not reply.ok:
            self.abort()
            raise MailboxError(errno.EACCES, f"IMAP LOGIN as {user} refused: {reply.text}", self.server.where)

    async def enable(self, capability: str) -> None:
        await self.ok("ENABLE", lambda: self._protocol.simple_command("ENABLE", capability))

    async def logout(self) -> None:
        with suppress(MailboxError):
            await self.run("LOGOUT", lambda: self._protocol.logout())
        self.abort()
        await self.closed()

    async def closed(self) -> None:
        """Wait, briefly, until an aborted connection is gone. A TLS transport finishes closing
        (close_notify) after close() returns; a caller that ends its event loop next would leak it."""
        with suppress(TimeoutError):
            async with asyncio.timeout(min(self.timeout, 2.0)):
                await asyncio.shield(self.lost)

    async def folders(self) -> list[str]:
        """Every selectable folder, INBOX first, then by name."""
        reply = await self.ok("LIST", lambda: self._protocol.simple_command("LIST", '""', '"*"'))
        names = {listed.name for listed in parse_list(reply.lines) if listed.selectable}
        return sorted(names, key=lambda name: (name.upper() != INBOX, name))

    async def select(self, folder: str) -> Selected | None:
        """Select ``folder``; None when it does not exist (any more): a member deleted or renamed it."""
        self.selected = None
        reply = await self.run(f"SELECT {folder}", lambda: self._protocol.select(quote(folder)))
        if not reply.ok:
            return None
        try:
            state = parse_select(reply.lines)
        except ValueError as exc:
            self.abort()
            raise MailboxError(errno.EPROTO, f"IMAP SELECT {folder}: {exc}", self.server.where) from None
        self.selected = folder
        return state

    async def examine(self, folder: str) -> Selected:
        """Select ``folder`` read-only (a watcher must not take \\Recent from the member's client)."""
        self.selected = None
        reply = await self.ok(
            f"EXAMINE {folder}", lambda: self._protocol.simple_command("EXAMINE", quote(folder))
        )
        try:
            state = parse_select(reply.lines)
        except ValueError as exc:
            self.abort()
            raise MailboxError(errno.EPROTO, f"IMAP EXAMINE {folder}: {exc}", self.server.where) from None
        # aioimaplib tracks the state only for its own SELECT, and allows IDLE in the selected state.
        self._protocol.state = aioimaplib.SELECTED
        return state

    async def status(self, folder: str) -> FolderState | None:
        """UIDVALIDITY, HIGHESTMODSEQ and UIDNEXT of a folder without selecting it; None when it is gone."""
        reply = await self.run(
            f"STATUS {folder}",
            lambda: self._protocol.simple_command(
                "STATUS", quote(folder), "(UIDVALIDITY UIDNEXT HIGHESTMODSEQ)"
            ),
        )
        numbers = parse_status(reply.lines) if reply.ok else {}
        if not {"UIDVALIDITY", "UIDNEXT", "HIGHESTMODSEQ"} <= numbers.keys():
            return None
        return FolderState(numbers["UIDVALIDITY"], numbers["HIGHESTMODSEQ"], numbers["UIDNEXT"])

    async def search(self, *criteria: str) -> list[int]:
        reply = await self.ok(
            "UID SEARCH", lambda: self._protocol.search(*criteria, charset=None, by_uid=True)
        )
        return parse_search(reply.lines)

    async def fetch(self, uids: Sequence[int], items: str) -> list[Fetched]:
        fetched: list[Fetched] = []
        ordered = sorted(set(uids))
        for start in range(0, len(ordered), _FETCH_CHUNK):
            chunk = uid_set(ordered[start : start + _FETCH_CHUNK])
            reply = await self.ok("UID FETCH", functools.partial(self._fetch, chunk, items))
            fetched.extend(f for f in parse_fetch(reply.lines) if f.uid is not None)
        return fetched

    def _fetch(self, uid_set: str, items: str) -> Awaitable[Any]:
        """aioimaplib's ``fetch(..., by_uid=True)`` with the response read by ``_FetchReading``."""
        protocol = self._protocol
        command = _FetchReading(protocol.new_tag(), uid_set, items, prefix="UID", loop=protocol.loop)
        return cast(Awaitable[Any], protocol.execute(command))

    async def store(self, uids: Sequence[int], change: str, flags: Iterable[Flag]) -> None:
        listed = flag_list(flags)
        await self.ok("UID STORE", lambda: self._protocol.store(uid_set(uids), change, listed, by_uid=True))

    async def expunge(self, uids: Sequence[int]) -> int:
        """``UID EXPUNGE`` (UIDPLUS) of exactly ``uids``; how many messages went."""
        reply = await self.ok("UID EXPUNGE", lambda: self._protocol.expunge(uid_set(uids), by_uid=True))
        return sum(1 for r in parse_untagged(reply.lines) if len(r) >= 2 and r[1] == b"EXPUNGE")

    @property
    def binary(self) -> bool:
        """Whether the server takes ``literal8`` (BINARY, RFC 3516): messages with NUL bytes as they are."""
        return "BINARY" in self.capabilities

    async def append(self, folder: str, message: bytes, flags: frozenset[Flag]) -> tuple[int, int]:
        """APPEND; UIDVALIDITY and UID of the new message. A missing folder is created (TRYCREATE).

        A message with NUL bytes goes as a ``literal8`` (``~{n}``); a server without BINARY cannot store
        it as it is, and it is not changed to fit: ``MailboxError`` (EILSEQ), the connection kept.
        """
        listed = flag_list(flags) if flags else None
        binary = b"\0" in message
        if binary and not self.binary:
            raise MailboxError(
                errno.EILSEQ,
                f"IMAP APPEND {folder}: the message holds NUL bytes and the server does not offer BINARY "
                "(RFC 3516), so it cannot store them as they are; the message is not changed to fit",
                self.server.where,
            )

        def call() -> Awaitable[Any]:
            if not binary:
                return cast(Awaitable[Any], self._protocol.append(message, quote(folder), listed, None))
            # aioimaplib writes only "{n}" literals itself; it sends protocol.literal_data after the
            # server's "+" whatever the announcement looked like, so a literal8 is announced here.
            protocol = self._protocol
            arguments = [quote(folder), *([listed] if listed else []), f"~{{{len(message)}}}"]
            protocol.literal_data = message
            command = aioimaplib.Command("APPEND", protocol.new_tag(), *arguments, loop=protocol.loop)
            return cast(Awaitable[Any], protocol.execute(command))

        for attempt in range(2):
            reply = await self.run(f"APPEND {folder}", call)
            if reply.ok:
                appended = parse_appenduid(reply.lines)
                if appended is None:
                    raise MailboxError(
                        errno.EPROTO, f"IMAP APPEND {folder}: no APPENDUID (UIDPLUS)", self.server.where
                    )
                return appended
            if attempt == 0 and "TRYCREATE" in response_codes(reply.lines):
                await self.ok(
                    f"CREATE {folder}", lambda: self._protocol.simple_command("CREATE", quote(folder))
                )
                continue
            self.abort()
            raise MailboxError(errno.EIO, f"IMAP APPEND {folder} refused: {reply.text}", self.server.where)
        raise AssertionError("unreachable")

    @property
    def multiappend(self) -> bool:
        """Whether several messages can go in one APPEND, each literal after the first unannounced."""
        return {"MULTIAPPEND", "LITERAL+"} <= self.capabilities

    async def append_many(
        self, folder: str, messages: Sequence[tuple[bytes, frozenset[Flag]]]
    ) -> tuple[int, list[int]] | None:
        """One APPEND of all ``messages`` (MULTIAPPEND, RFC 3502: all are appended or none); UIDVALIDITY
        and their UIDs in order, or None when the server refused them with NO (none was appended).

        Every literal is a LITERAL+ one (RFC 7888), the first too: the command line and all the
        messages go in one write, so the whole batch costs one round trip and one transaction in the
        server. (aioimaplib sends a literal only after the server's "+", a round trip more per
        command, which on a busy server is the longer part of the wait.) A missing folder is created
        (TRYCREATE).
        """
        (first, first_flags), rest = messages[0], messages[1:]
        tail = b"".join(
            f" {flag_list(flags) + ' ' if flags else ''}{{{len(message)}+}}\r\n".encode() + message
            for message, flags in rest
        )
        what = f"APPEND {folder} ({len(messages)} messages)"

        def call() -> Awaitable[Any]:
            protocol = self._protocol
            arguments = [
                quote(folder),
                *([flag_list(first_flags)] if first_flags else []),
                f"{{{len(first)}+}}",
            ]
            command = aioimaplib.Command("APPEND", protocol.new_tag(), *arguments, loop=protocol.loop)
            return _with_literals(protocol, command, first + tail)

        for attempt in range(2):
            reply = await self.run(what, call)
            if reply.ok:
                appended = parse_appenduids(reply.lines)
                if appended is None or len(appended[1]) != len(messages):
                    # Appended, but which UID is which copy is unknown: the retry finds them.
                    self.abort()
                    raise MailboxError(
                        errno.EPROTO, f"IMAP {what}: no APPENDUID with one UID each", self.server.where
                    )
                return appended
            if attempt == 0 and "TRYCREATE" in response_codes(reply.lines):
                await self.ok(
                    f"CREATE {folder}", lambda: self._protocol.simple_command("CREATE", quote(folder))
                )
                continue
            if reply.result == "NO":
                return None
            self.abort()
            raise MailboxError(errno.EIO, f"IMAP {what} refused: {reply.text}", self.server.where)
        raise AssertionError("unreachable")


class _FetchReading(aioimaplib.FetchCommand):  # type: ignore[misc]  # aioimaplib is untyped
    """aioimaplib's FETCH command, whose check "is a message's data still incomplete?" reads only the
    response lines added since it was last asked, not all of them again.

    aioimaplib asks after every response line, and its own check scans every line so far for the
    last ``n FETCH (`` line: a FETCH of 200 copies' headers (600 lines) cost 180,000 line matches, and
    the flag watcher's first look at a full mailbox up to a tenth of the gateway's samples in some
    rounds of bench/fanout_imap.py. The answer is the same: the parentheses balance from the last FETCH
    line on.
    Response lines are only ever appended, so where the last FETCH line is carries over.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_fetch = 0
        self._read = 0

    def wait_data(self) -> bool:
        lines = self._resp_lines
        for index in range(self._read, len(lines)):
            line = lines[index]
            if isinstance(line, bytes) and self.FETCH_MESSAGE_DATA_RE.match(line):
                self._last_fetch = index
        self._read = len(lines)
        tail = b"".join(line for line in lines[self._last_fetch :] if isinstance(line, bytes))
        return not aioimaplib.aioimaplib.matched_parenthesis(tail)


def _with_literals(protocol: Any, command: Any, data: bytes) -> Awaitable[Any]:
    """aioimaplib's ``execute`` of ``command``, whose line ends in a LITERAL+ announcement, with
    ``data`` (the literals and whatever follows them) written right after the line, in the same
    write. aioimaplib writes a command's line in ``send`` and waits for no "+" when it holds no
    literal data, so ``send`` is replaced for this one command; everything else (the pending command,
    its answer, its timeout) stays aioimaplib's."""

    def send(line: str, scrub: str | None = None) -> None:
        del protocol.send  # aioimaplib's own again, for the next command
        protocol.transport.write(f"{line}\r\n".encode() + data + b"\r\n")

    protocol.literal_data = None
    protocol.send = send
    execution = protocol.execute(command)

    async def run() -> Any:
        try:
            return await execution
        finally:
            protocol.__dict__.pop("send", None)  # a command that never went out

    return run()


def _errno(exc: BaseException) -> int:
    if isinstance(exc, TimeoutError):
        return errno.ETIMEDOUT
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    return errno.EIO


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _close_client(client: Any) -> None:
    task = getattr(client, "_client_task", None)
    if task is not None and not task.done():
        task.cancel()
    # aioimaplib's own tasks too: the greeting's handler, waiting for a CAPABILITY answer that will
    # never come on a dropped connection, would otherwise be destroyed pending when the loop closes.
    for own in [*getattr(client, "tasks", ()), *getattr(getattr(client, "protocol", None), "tasks", ())]:
        if not own.done():
            own.cancel()
    transport = getattr(getattr(client, "protocol", None), "transport", None)
    if transport is not None:
        transport.close()


async def _greeted(server: ImapServer, seconds: float) -> ImapConnection:
    """A connection the server has greeted (over TLS from the start where ``tls = "tls"``), not yet
    logged in; ``_Unreachable`` when it cannot be had within ``seconds``."""
    loop = asyncio.get_running_loop()
    lost: asyncio.Future[None] = loop.create_future()

    def connection_lost(_exc: Exception | None) -> None:
        if not lost.done():
            lost.set_result(None)

    if server.tls == "tls":
        client = aioimaplib.IMAP4_SSL(server.host, server.port, timeout=seconds, ssl_context=server.context())
    else:
        client = aioimaplib.IMAP4(server.host, server.port, timeout=seconds)
    client.protocol.conn_lost_cb = connection_lost
    # The greeting (and the CAPABILITY aioimaplib asks for right after it) races the connection's end
    # too: a server that hangs up there would otherwise leave aioimaplib waiting for ever.
    hello = asyncio.ensure_future(client.wait_hello_from_server())
    try:
        async with asyncio.timeout(seconds):
            await asyncio.wait({hello, lost}, return_when=asyncio.FIRST_COMPLETED)
        if not hello.done():
            raise ConnectionResetError(errno.ECONNRESET, "the server hung up before it was ready")
        hello.result()
    except _LIBRARY_ERRORS as exc:  # TimeoutError is an OSError
        hello.cancel()
        _close_client(client)
        raise _Unreachable(_errno(exc), f"IMAP connect: {_reason(exc)}", server.where) from exc
    except BaseException:
        hello.cancel()
        _close_client(client)
        raise
    return ImapConnection(client, lost, server, seconds)


async def _open(server: ImapServer, address: str, password: str, seconds: float) -> ImapConnection:
    """A session logged in for ``address`` (``address*master``, or the member's own login), CONDSTORE
    enabled where offered; ``seconds`` per step."""
    connection = await _greeted(server, seconds)
    try:
        if server.tls == "starttls":
            await connection.starttls()
        await connection.login(server.login.user_for(address), password)
        capabilities = await connection.capability()
        if "UIDPLUS" not in capabilities:
            raise MailboxError(
                errno.EPROTO, "the IMAP server lacks UIDPLUS (APPENDUID, UID EXPUNGE)", server.where
            )
        if "CONDSTORE" in capabilities:
            await connection.enable("CONDSTORE")
    except BaseException:
        connection.abort()
        raise
    return connection


ProbeStep = Literal["password", "connect", "TLS", "login", "logout"]


class ImapProbe:
    """One look at whether the gateway can work on ``server`` now, for /readyz: read the password,
    connect with the server's TLS setting, STARTTLS where configured, log in for a member exactly as the
    fan-out does, LOGOUT. ``step`` is how far it got, so a caller that gives up at its deadline can say
    where the server stopped answering."""

    def __init__(self, server: ImapServer, seconds: float) -> None:
        self.server = server
        self.seconds = seconds
        self.step: ProbeStep = "password"

    async def run(self, address: str | None) -> None:
        """``MailboxError`` when a step fails; without ``address`` (no member to log in for) the login
        is left out."""
        server = self.server
        self.step = "password"
        password = await server.login.password.read(server.login.what) if address is not None else None
        self.step = "TLS" if server.tls == "tls" else "connect"
        try:
            connection = await _greeted(server, self.seconds)
        except _Unreachable as exc:
            # With implicit TLS the handshake is part of connecting: a refused or reset connection is
            # the connection's fault, anything the TLS layer raised is TLS's.
            if not isinstance(exc.__cause__, ssl.SSLError):
                self.step = "connect"
            raise
        try:
            if server.tls == "starttls":
                self.step = "TLS"
                await connection.starttls()
            if address is not None and password is not None:
                self.step = "login"
                await connection.login(server.login.user_for(address), password)
        except MailboxError:
            connection.abort()
            await connection.closed()
            raise
        except BaseException:
            connection.abort()
            raise
        self.step = "logout"
        await connection.logout()


# --- the pool --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Slot:
    semaphore: asyncio.Semaphore
    users: int = 0


class ImapPool:
    """Logged-in connections per member: at most ``per_member`` in use, idle ones kept for reuse.

    A connection is handed to one operation at a time and goes back only when the operation ended
    without error. After a failed connection attempt, new attempts fail at once until a backoff has
    passed (doubling from ``backoff_first`` to ``backoff_max``); the first success resets it.
    """

    def __init__(
        self,
        server: ImapServer,
        *,
        timeout: float,
        per_member: int,
        max_connections: int,
        max_idle: int,
        backoff_first: float,
        backoff_max: float,
    ) -> None:
        self.server = server
        self.timeout = timeout
        self.per_member = per_member
        self.max_idle = max_idle
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self._total = asyncio.Semaphore(max_connections)
        self._slots: dict[str, _Slot] = {}
        self._idle: OrderedDict[ImapConnection, str] = OrderedDict()  # least recently used first
        self._backoff = 0.0
        self._retry_at = 0.0
        self._failed_at = float("-inf")
        self._down_because = ""
        self.closed = False
        # Whether the server offered BINARY after the last login; None before the first one.
        self.binary: bool | None = None

    @asynccontextmanager
    async def session(self, address: str) -> AsyncIterator[ImapConnection]:
        if self.closed:
            raise MailboxError(errno.ESHUTDOWN, "the IMAP mailbox is closed", self.server.where)
        slot = self._slots.get(address)
        if slot is None:
            slot = self._slots[address] = _Slot(asyncio.Semaphore(self.per_member))
        slot.users += 1
        try:
            async with slot.semaphore, self._total:
                connection = self._take_idle(address) or await self._connect(address)
                healthy = False
                try:
                    yield connection
                    healthy = True
                finally:
                    if healthy and connection.usable and not self.closed:
                        self._keep(address, connection)
                    else:
                        connection.abort()
        finally:
            slot.users -= 1
            if not slot.users:
                del self._slots[address]

    async def close(self) -> None:
        self.closed = True
        idle, self._idle = list(self._idle), OrderedDict()
        await asyncio.gather(*(connection.logout() for connection in idle))

    async def dedicated(self, address: str) -> ImapConnection:
        """A connection of the member's outside the pool's bounds (IDLE holds one for minutes); the
        caller ends it. The pool's backoff applies: a server that is down is not asked again at once."""
        if self.closed:
            raise MailboxError(errno.ESHUTDOWN, "the IMAP mailbox is closed", self.server.where)
        return await self._connect(address)

    def _take_idle(self, address: str) -> ImapConnection | None:
        for connection, owner in reversed(list(self._idle.items())):
            if owner == address:
                del self._idle[connection]
                if connection.usable:
                    return connection
                connection.abort()
        return None

    def _keep(self, address: str, connection: ImapConnection) -> None:
        self._idle[connection] = address
        while len(self._idle) > self.max_idle:
            oldest, _ = self._idle.popitem(last=False)
            oldest.abort()

    async def _connect(self, address: str) -> ImapConnection:
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            raise MailboxError(
                errno.ECONNREFUSED,
                f"IMAP server unreachable ({self._down_because}); next attempt in "
                f"{self._retry_at - loop.time():.1f} s",
                self.server.where,
            )
        started = loop.time()
        password = await self._password()
        try:
            connection = await _open(self.server, address, password, self.timeout)
        except _Unreachable as exc:
            # Attempts under way together (one per member) fail together: they double the wait once,
            # or a server gone for a moment would not be asked again for backoff_max.
            if started >= self._failed_at:
                self._backoff = min(max(self._backoff * 2, self.backoff_first), self.backoff_max)
                self._retry_at = loop.time() + self._backoff
                self._failed_at = loop.time()
            if self._down_because == "":
                log.warning("IMAP server %s unreachable: %s", self.server.where, exc.strerror)
            self._down_because = exc.strerror or "unreachable"
            raise
        if self._down_because:
            log.info("IMAP server %s reachable again", self.server.where)
        self._backoff, self._retry_at, self._down_because = 0.0, 0.0, ""
        self.binary = connection.binary
        return connection

    async def _password(self) -> str:
        # Read at every new connection, so a rotated password is picked up without a restart.
        return await self.server.login.password.read(self.server.login.what)
