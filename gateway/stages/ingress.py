"""The SMTP listeners: back offices hand in mail (submission), members' mail servers deliver replies (MX).

aiosmtpd speaks the protocol; this module decides what each command is answered: who may log in, which
recipients exist, which messages are too big, too deep in a loop or malformed beyond use. Everything a
client can hear is named in ``gateway.smtp_replies``. The submission DATA handler hands the message to the
acceptance stage, the MX one to the reply stage, and both answer only after the commit (DESIGN.md §2,
§8). The MX listener takes only reply addresses and the bounce address of the reply domain: it is
nobody's relay.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import io
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, syntax
from sqlalchemy import Connection

from gateway.db.acceptance import member_ids
from gateway.db.accounts import Account, find_account
from gateway.db.events import Event, EventKind, append_events
from gateway.db.writer import Writer
from gateway.domain.addresses import InvalidAddress, normalise_address, plain_path
from gateway.domain.admission import Occupant, SlotLimits, Verdict, admit, client_key
from gateway.domain.data_memory import session_footprint
from gateway.domain.logins import FailedLogins, Failure, LoginLimits
from gateway.domain.passwords import hash_password, verify_password
from gateway.domain.submitters import path_too_long
from gateway.domain.tokens import is_reply_address
from gateway.domain.trace import Arrival, protocol
from gateway.errors import NotRead, NotStored
from gateway.mailbox.base import Mailbox, MailboxOwner
from gateway.metrics import Metrics
from gateway.routing.live import RoutingRules, decide, refusal, stored_answer
from gateway.smtp_replies import Reply, with_enhanced_code
from gateway.stages.acceptance import (
    Acceptance,
    Submission,
    envelope_sender_refusal,
    sender_refusal,
    submitted_refusal,
)
from gateway.stages.faithful import nul_refusal
from gateway.stages.parsepool import MailReader
from gateway.stages.reply import BOUNCES_LOCAL_PART, Incoming, ReplyStage

log = logging.getLogger("gateway.stages.ingress")

CACHE_SECONDS = 10.0


class LoginsThrottled(Exception):
    """Too many failed logins from this address, or for this login: refused before any password check."""


@functools.cache
def _unknown_login_hash() -> str:
    # A hash with today's parameters for logins that do not exist: checking a password against it costs
    # what checking a real one does, so the time of a failure does not tell which logins exist.
    return hash_password(secrets.token_urlsafe(24))


class Accounts:
    """Checks back-office logins; the slow hash runs in a thread so sessions keep being served.

    Failed logins are limited per client address and per login (``gateway.domain.logins``) and recorded
    as ``auth.failed`` events. A successful check is remembered briefly (by a digest of the password),
    so a back office that opens a session per message does not pay the scrypt cost each time.
    """

    def __init__(
        self,
        writer: Writer,
        limits: LoginLimits | None = None,
        *,
        node: str = "",
        metrics: Metrics | None = None,
    ) -> None:
        self.writer = writer
        self.node = node
        self.metrics = metrics or Metrics()
        self.failures = FailedLogins(limits or LoginLimits())
        self._verified: dict[tuple[str, bytes], tuple[Account, float]] = {}
        _unknown_login_hash()  # once, at startup, not in the first failed login's time

    async def verify(self, login: bytes, password: bytes, client: str) -> Account | None:
        """The account when ``password`` is right; None when not (after the failure's delay).

        Raises :class:`LoginsThrottled` without checking the password when ``client`` or ``login`` has
        failed too often.
        """
        name = login.decode("utf-8", "replace").strip().lower()
        refused = self.failures.admit(name, client, time.monotonic())
        if refused is not None:
            # Debug only: a guesser makes thousands of these a minute; the failure that started the
            # refusal was logged (and recorded as auth.throttled) once.
            log.debug("login %r from %s refused: %s", name, client, refused)
            raise LoginsThrottled(refused)
        try:
            key = (name, hashlib.sha256(password).digest())
            cached = self._verified.get(key)
            if cached and cached[1] > time.monotonic():
                self.failures.succeeded(name, client)
                return cached[0]
            account = await self.writer.run(find_account, name)
            stored = account.password_hash if account is not None else _unknown_login_hash()
            right = await asyncio.to_thread(verify_password, password, stored)
            if account is not None and right:
                self.failures.succeeded(name, client)
                self._verified[key] = (account, time.monotonic() + CACHE_SECONDS)
                return account
            failure = self.failures.failed(name, client, time.monotonic())
            self.metrics.logins_failed.labels("smtp").inc()
        finally:
            self.failures.end(name, client)
        log.warning(
            "failed login %r from %s (%d from this address, %d for this login)%s",
            name,
            client,
            failure.address_failures,
            failure.login_failures,
            f"; now refusing the {' and the '.join(failure.throttles)}" if failure.throttles else "",
            extra={"login": name, "client": client},
        )
        try:
            await self.writer.run(_record_failure, name, client, account, failure, self.node)
        except Exception as exc:
            # The answer stays 535: a database that cannot take the event must not turn a wrong
            # password into a temporary failure the guesser could tell apart.
            log.error("could not record the failed login of %r from %s: %s", name, client, exc)
        await asyncio.sleep(failure.delay)
        return None


def _record_failure(
    connection: Connection, login: str, client: str, account: Account | None, failure: Failure, node: str
) -> None:
    now = dt.datetime.now(dt.UTC)
    detail = {
        "login": login,
        "client": client,
        "known_login": account is not None,
        "failures_from_address": failure.address_failures,
        "failures_for_login": failure.login_failures,
    }
    portfolio_id = account.portfolio_id if account is not None else None
    actor = f"gateway:{node}"
    events = [Event(EventKind.AUTH_FAILED, actor, now, portfolio_id, detail=detail)]
    events += [
        Event(EventKind.AUTH_THROTTLED, actor, now, portfolio_id, detail=detail | {"refusing": what})
        for what in failure.throttles
    ]
    append_events(connection, events)


class Members:
    """Which addresses are members of a portfolio, remembered for a few seconds (RCPT checks)."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self._known: dict[tuple[int, str], float] = {}

    async def exists(self, portfolio_id: int, address: str) -> bool:
        key = (portfolio_id, address)
        if self._known.get(key, 0.0) > time.monotonic():
            return True
        found = await self.writer.run(member_ids, portfolio_id, [address])
        if found:
            self._known[key] = time.monotonic() + CACHE_SECONDS
        return bool(found)


# How many client addresses a listener remembers for the message rate; beyond this the least recently
# seen are forgotten first (an address within its minute may then start afresh, which only matters
# to a sender with more addresses than this, each of which is limited anyway).
RECENT_CLIENTS = 10_000
RATE_WINDOW = 60.0
LIMIT_LOG_INTERVAL = 10.0
YIELD_EVERY_LINES = 1000


@dataclass
class ListenerState:
    """What all sessions of one listener share: connection slots, memory held by DATA, rates, shutdown."""

    name: str
    max_connections: int
    max_per_client: int
    max_messages_per_minute: int = 120
    max_unauthenticated: int | None = None
    """Sessions not logged in that the listener keeps at once; None: as many as max_connections."""
    evict_idle_after: float = 10.0
    max_data_memory: int | None = None
    """Bytes all sessions in DATA may hold at once; None: no budget."""
    connections: Counter[str] = field(default_factory=Counter)
    in_data: int = 0
    data_held: int = 0
    closing: bool = False
    protocols: set[SMTP] = field(default_factory=set)
    recent: dict[str, deque[float]] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics, repr=False)
    """Where the listener's messages, answered at the end of DATA, are counted."""
    max_recent_clients: int = RECENT_CLIENTS
    _limit_events: Counter[str] = field(default_factory=Counter)
    _limit_clients: set[str] = field(default_factory=set)
    _limits_logged: float = float("-inf")

    @property
    def slot_limits(self) -> SlotLimits:
        return SlotLimits(
            max_connections=self.max_connections,
            max_per_client=self.max_per_client,
            max_unauthenticated=self.max_unauthenticated or self.max_connections,
            evict_idle_after=self.evict_idle_after,
        )

    def hold(self, size: int) -> bool:
        """Count ``size`` more bytes of DATA held in memory; False (and nothing counted) over the budget."""
        if self.max_data_memory is not None and self.data_held + size > self.max_data_memory:
            return False
        self.data_held += size
        return True

    def release(self, size: int) -> None:
        self.data_held -= size

    def note(self, event: str, client: str, now: float) -> None:
        """Log that a limit was hit, as a summary at most every ``LIMIT_LOG_INTERVAL`` seconds.

        A client hitting limits in a loop (a connection flood) would otherwise write a line each time;
        the first event is logged at once, later ones are counted and told with the next line.
        """
        self._limit_events[event] += 1
        if len(self._limit_clients) < 100:  # enough to name examples, bounded however many there are
            self._limit_clients.add(client)
        if now - self._limits_logged < LIMIT_LOG_INTERVAL:
            return
        log.warning(
            "listener %s: %s; clients e.g. %s",
            self.name,
            "; ".join(f"{event} ({count}x)" for event, count in self._limit_events.items()),
            ", ".join(sorted(self._limit_clients)[:5]),
            extra={"listener": self.name, "limit_events": dict(self._limit_events)},
        )
        self._limit_events.clear()
        self._limit_clients.clear()
        self._limits_logged = now

    def allow_message(self, client: str, now: float | None = None) -> bool:
        """Count a new message from ``client``; False when it sent its allowance in the last minute."""
        now = time.monotonic() if now is None else now
        key = client_key(client)
        # Taken out and put back, so the dict stays ordered from least to most recently seen.
        times = self.recent.pop(key, None) or deque()
        while times and times[0] <= now - RATE_WINDOW:
            times.popleft()
        allowed = len(times) < self.max_messages_per_minute
        if allowed:
            times.append(now)
        if times:
            self.recent[key] = times
        self._forget(now)
        return allowed

    def _forget(self, now: float) -> None:
        """Drop addresses whose minute is over, oldest first, and the oldest beyond the bound."""
        while self.recent:
            oldest = next(iter(self.recent))
            if self.recent[oldest][-1] > now - RATE_WINDOW and len(self.recent) <= self.max_recent_clients:
                return
            del self.recent[oldest]


class GatewaySession(Session):
    """aiosmtpd's Session without its warning about ``login_data``.

    aiosmtpd 1.4 itself sets the deprecated ``login_data`` after every successful AUTH, and the property
    logs a warning each time; nothing of ours reads it (we use ``auth_data``).
    """

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with our replies, connection limits, deadlines and an asynchronous password check.

    Class attributes set per listener (``Service._listen``): ``state``, ``accounts``, ``requires_auth``
    and ``deadlines``. AUTH is enforced here rather than by aiosmtpd's ``auth_required``, which warns on
    every connection of a listener that allows AUTH without TLS (our ``local_only``).
    """

    state: ListenerState
    accounts: Accounts
    requires_auth: bool = False
    deadlines: SessionDeadlines

    def _create_session(self) -> Session:
        return GatewaySession(self.loop)

    async def check_auth_needed(self, caller_method: str) -> bool:
        assert self.session is not None
        if self.requires_auth and not self.session.authenticated:
            await self.push(str(Reply.AUTH_REQUIRED))
            return True
        return False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None
        super().connection_made(transport)
        if not first:
            return  # the same connection after STARTTLS
        self._client = _client_of(transport.get_extra_info("peername"))
        self._slot = client_key(self._client)
        self._reading_data = False
        self._handling = False
        self._checking_login = False  # a password check under way: the answer is ours to give
        self._expired: Reply | None = None
        self._deadline: asyncio.TimerHandle | None = None
        now = self.loop.time()
        self._started = now
        self._data_started: float | None = None
        state = self.state
        admission = admit(
            self._slot,
            per_client=state.connections,
            occupants={p: p.occupant() for p in state.protocols if isinstance(p, GatewaySMTP)},
            limits=state.slot_limits,
            now=now,
            closing=state.closing,
        )
        if admission.verdict is not Verdict.ADMIT:
            reply = _REFUSALS[admission.verdict]
            state.note(f"refused: {admission.verdict.value}", self._client, now)
            assert self._handler_coroutine is not None
            self._handler_coroutine.cancel()
            transport.write(f"{reply}\r\n".encode())  # type: ignore[attr-defined]
            transport.close()
            self._client = ""
            return
        if admission.evict is not None:
            state.note("full: an idle session gave its slot to a newcomer", admission.evict._client, now)
            admission.evict.close_with(Reply.MADE_ROOM)
        state.connections[self._slot] += 1
        state.protocols.add(self)
        self._arm_deadline()

    def connection_lost(self, error: Exception | None) -> None:
        if getattr(self, "_client", ""):
            self._leave()
            if self._deadline is not None:
                self._deadline.cancel()
        super().connection_lost(error)

    def _leave(self) -> None:
        """Give the slot back (once: an evicted session gives it at once, before its connection ends)."""
        if self in self.state.protocols:
            self.state.protocols.discard(self)
            self.state.connections[self._slot] -= 1
            if self.state.connections[self._slot] <= 0:
                del self.state.connections[self._slot]

    def occupant(self) -> Occupant:
        """This session as admission sees it."""
        assert self.session is not None
        return Occupant(
            authenticated=bool(self.session.authenticated),
            in_data=self._reading_data or self._handling,
            silent_since=self._silent_since,
        )

    def close_with(self, reply: Reply) -> None:
        """Tell the client why and hang up; the slot is free at once."""
        log.debug("closing the session of %s: %s", self._client, reply)
        self._leave()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(f"{reply}\r\n".encode())  # type: ignore[attr-defined]
            self.transport.close()

    # --- deadlines: the whole session, logging in, and one DATA ----------------------------------------

    def _arm_deadline(self) -> None:
        """Set the timer for the nearest deadline this session has now."""
        if self._deadline is not None:
            self._deadline.cancel()
        limits = self.deadlines
        when, reply = self._started + limits.session, Reply.SESSION_TOO_LONG
        assert self.session is not None
        if self.requires_auth and not self.session.authenticated and self._started + limits.login < when:
            when, reply = self._started + limits.login, Reply.LOGIN_TOO_SLOW
        if self._data_started is not None and self._data_started + limits.data < when:
            when, reply = self._data_started + limits.data, Reply.DATA_TOO_SLOW
        self._deadline = self.loop.call_at(when, self._deadline_passed, reply)

    def _deadline_passed(self, reply: Reply) -> None:
        assert self.session is not None
        if reply is Reply.LOGIN_TOO_SLOW and self.session.authenticated:
            self._arm_deadline()  # logged in meanwhile: the next deadline is another
        elif self._handling:
            # The message is being stored: its answer comes first, then this one (smtp_DATA).
            self._expired = reply
        else:
            self.close_with(reply)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd reads every MAIL and RCPT path with the email package's header parser, which built a
        # token tree for a plain <local@domain>: a fifth of a submission's SMTP handling (py-spy). The
        # plain form is read by a regular expression, to the same answer; any other goes to aiosmtpd.
        plain = plain_path(arg)
        if plain is None:
            return super()._getaddr(arg)
        address, rest = plain
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd calls this when a session starts and for each command it takes; we also call it for
        # each chunk of DATA. Until the answer is pushed, the session is busy, not idle.
        self._silent_since: float | None = None
        super()._reset_timeout(duration)

    def _timeout_cb(self) -> None:
        # aiosmtpd's idle timer hangs up without a word; the client should hear why. A message being
        # stored is not cut: its own answer tells the client more. Nor is a login being checked (a
        # failed login's deliberate delay, a slow password check on a loaded machine): idle is the
        # client's silence after our answer, and push() starts that clock.
        if self._handling or self._checking_login:
            self._reset_timeout()
            return
        self.close_with(Reply.IDLE_TOO_LONG)

    # --- answers --------------------------------------------------------------------------------------

    async def push(self, status: AnyStr) -> None:
        self._silent_since = self.loop.time()
        SMTP._reset_timeout(self)  # the client's turn: its idle time starts now, not at its command
        if isinstance(status, str):
            # Never a surrogate from a client's undecodable bytes in an answer (aiosmtpd would raise).
            line = with_enhanced_code(status).encode("utf-8", "replace").decode("utf-8")
            await super().push(line)
        else:
            await super().push(status)

    async def handle_exception(self, error: Exception) -> str:
        """Anything unexpected while answering a command: 451 4.3.0, the details in our log only.

        aiosmtpd would answer ``500 Error: (OperationalError) …``: a permanent failure for our fault,
        with our internals in it.
        """
        if isinstance(error, ValueError) and isinstance(error.__context__, asyncio.LimitOverrunError):
            # An AUTH answer longer than the line limit (aiosmtpd reads it with readline): the client's
            # mistake, not ours, and no traceback for the log.
            log.info("%s sent an overlong AUTH line", getattr(self, "_client", "?"))
            return str(Reply.AUTH_LINE_TOO_LONG)
        log.error("unexpected error answering %s: %s", getattr(self, "_client", "?"), error, exc_info=error)
        return str(Reply.TEMPORARY_FAILURE)

    async def _not_utf8(self, value: str | None, answer: Reply) -> bool:
        """True, after answering ``answer``, when ``value`` holds bytes that were not UTF-8 (it would
        reach the Received header and the database as surrogates)."""
        if value and not _encodable(value):
            await self.push(str(answer))
            return True
        return False

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:  # noqa: N802 (aiosmtpd dispatches on this name)
        if not await self._not_utf8(hostname, Reply.BAD_HOSTNAME):
            await super().smtp_HELO(hostname)

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:  # noqa: N802 (aiosmtpd dispatches on this name)
        if not await self._not_utf8(hostname, Reply.BAD_HOSTNAME):
            await super().smtp_EHLO(hostname)

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:  # noqa: N802 (aiosmtpd dispatches on this name)
        # RFC 3463: X.1.7 is the sender's address, X.1.3 a recipient's.
        if not await self._not_utf8(arg, Reply.SENDER_NOT_UTF8):
            await super().smtp_MAIL(arg)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:  # noqa: N802 (aiosmtpd dispatches on this name)
        if not await self._not_utf8(arg, Reply.BAD_ADDRESS):
            await super().smtp_RCPT(arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str) -> None:  # noqa: N802 (aiosmtpd dispatches on this name)
        if not await self._not_utf8(arg, Reply.BAD_ADDRESS):
            await super().smtp_VRFY(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802 (aiosmtpd dispatches on this name)
        """aiosmtpd's DATA, reading lines the way Postfix does with ``smtpd_forbid_bare_newline = normalize``,
        into one buffer counted against the listener's memory budget.

        A bare LF ends a line as CRLF does (and is stored as CRLF), so a client with bare LF line
        endings is neither refused for one "line" as long as its whole message nor stored with mixed
        endings that other servers read differently. DATA still ends only at <CR><LF>.<CR><LF>: a dot
        line after a bare LF is content, so <LF>.<CR><LF> can never end a message early and smuggle
        the next one past us (CVE-2023-51766 and its relatives).

        Memory: lines are read one at a time, each at most the line limit (the stream reader stops
        reading from the socket beyond twice that), and appended to one growing buffer, never kept as a
        list of line objects (which cost 45 times the message in memory). Bytes past the size limit are
        read and dropped, and the 552 comes at the end. What the session allocates for the message (the
        buffer, which grows an eighth ahead of its content, and its reading buffer) counts against the
        listener's budget until the message is answered; a session that would exceed it is answered
        452 4.3.1 at once and closed, before it holds more.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self._reading_data = True
        self._data_started = self.loop.time()
        self._arm_deadline()
        message = _MessageBuffer(self.state, self.data_size_limit, self.line_length_limit)
        try:
            if not await self._read_data(message):
                return
            if message.refusal is not None:
                self._set_post_data_state()  # type: ignore[no-untyped-call]  # aiosmtpd leaves it unannotated
                self.state.metrics.answered_message(self.state.name, str(message.refusal))
                await self.push(str(message.refusal))
                return
            content = message.content()
            self.envelope.content = content
            self.envelope.original_content = content
            self._reading_data, self._handling = False, True
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()  # type: ignore[no-untyped-call]  # aiosmtpd leaves it unannotated
            self.state.metrics.answered_message(self.state.name, with_enhanced_code(status))
            await self.push(status)
        finally:
            message.release()
            if self.envelope is not None and self.envelope.content is not None:
                # The handler raised (the client hears 451 4.3.0): the next MAIL starts afresh.
                self._set_post_data_state()  # type: ignore[no-untyped-call]  # aiosmtpd leaves it unannotated
            self._reading_data = self._handling = False
            self._data_started = None
            if self._expired is not None:
                self.close_with(self._expired)
            elif self.transport is not None:
                self._arm_deadline()

    async def _read_data(self, message: _MessageBuffer) -> bool:
        """Read DATA up to its end into ``message``; False when the session ended on the way."""
        after_crlf = True  # the previous line ended in CRLF, so a "." line now ends DATA
        tail_of: bytes | None = None  # what was read of an overlong line, whose rest comes next
        heard = self.loop.time()
        lines = 0
        while self.transport is not None:
            lines += 1
            if lines % YIELD_EVERY_LINES == 0:
                # The stream reader serves buffered lines without giving up the event loop; a read of
                # 256 KiB of three-byte lines would hold it for a good part of a second.
                await asyncio.sleep(0)
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.CancelledError:
                log.info("connection lost during DATA")
                self._writer.close()
                raise
            except asyncio.LimitOverrunError as exc:
                # Longer than the line limit: drop what we have, read on to the end, then refuse.
                message.refuse(Reply.LINE_TOO_LONG)
                tail_of = await self._reader.read(exc.consumed)
                continue
            except asyncio.IncompleteReadError:
                return False  # the client went away mid-DATA; nothing is stored
            if self.loop.time() - heard > 1.0:
                # A client sending is not idle (the DATA deadline bounds a trickle); once a second is
                # enough, and a flood of short lines does not make a timer each.
                heard = self.loop.time()
                self._reset_timeout()
            if tail_of is not None:
                # The rest of an overlong line: never a "." line, and its CRLF may be split in two.
                after_crlf = line.endswith(b"\r\n") or (line == b"\n" and tail_of.endswith(b"\r"))
                tail_of = None
                continue
            crlf = line.endswith(b"\r\n")
            if crlf and after_crlf and line == b".\r\n":
                return True
            after_crlf = crlf
            if not crlf:
                line = line[:-1] + b"\r\n"
            if line.startswith(b"."):
                line = line[1:]  # RFC 5321 4.5.2 transparency
            if not message.add(line):
                self.state.note(
                    f"DATA over the memory budget of {self.state.max_data_memory} bytes",
                    self._client,
                    self.loop.time(),
                )
                self.close_with(Reply.NO_ROOM_NOW)
                return False
        return False

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd calls this synchronously from its PLAIN and LOGIN decoders; we only collect the
        # credentials here and check them in _verify, off the event loop.
        return AuthResult(success=True, handled=False, auth_data=auth_data)

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802 (aiosmtpd's name)
        return await self._verify(await super().auth_PLAIN(server, args))

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802 (aiosmtpd's name)
        return await self._verify(await super().auth_LOGIN(server, args))

    async def _verify(self, result: AuthResult) -> AuthResult:
        if not result.success or not isinstance(result.auth_data, LoginPassword):
            return result
        assert self.session is not None
        client = _client_of(self.session.peer)
        self._checking_login = True
        try:
            account = await self.accounts.verify(result.auth_data.login, result.auth_data.password, client)
        except LoginsThrottled:
            return AuthResult(success=False, handled=False, message=str(Reply.LOGINS_THROTTLED))
        finally:
            self._checking_login = False
        if account is None:
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=account)


@dataclass(frozen=True)
class SessionDeadlines:
    """How long a session may last, how soon it must log in (where AUTH is required), how long one DATA."""

    session: float
    login: float
    data: float


_REFUSALS = {
    Verdict.TOO_MANY_FROM_CLIENT: Reply.TOO_MANY_CONNECTIONS,
    Verdict.BUSY: Reply.BUSY,
    Verdict.SHUTTING_DOWN: Reply.SHUTTING_DOWN,
}


def _encodable(arg: str) -> bool:
    """False when a command's argument holds bytes that were not UTF-8 (aiosmtpd keeps them as surrogates)."""
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _MessageBuffer:
    """The bytes of one DATA as they arrive: one growing buffer, counted against the listener's budget.

    ``io.BytesIO`` rather than a bytearray: its ``getvalue()`` hands over the buffer itself instead of
    copying it, so a message is in memory once, not twice, when the handler gets it.

    What counts is what the session has allocated, not only the bytes received
    (``gateway.domain.data_memory``).
    """

    def __init__(self, state: ListenerState, size_limit: int | None, line_length_limit: int) -> None:
        self.state = state
        self.size_limit = size_limit
        self.line_length_limit = line_length_limit
        self.size = 0
        self.held = 0
        self.refusal: Reply | None = None
        self._buffer: io.BytesIO | None = io.BytesIO()

    def add(self, line: bytes) -> bool:
        """Append one line (ending in CRLF); False when the listener's budget has no room for it."""
        self.size += len(line)
        if self._buffer is None:
            return True  # refused already: read to the end, keep nothing
        if self.size_limit and self.size > self.size_limit:
            self.refuse(Reply.TOO_BIG)
            return True
        needed = session_footprint(self.size, self.line_length_limit)
        if needed > self.held:
            if not self.state.hold(needed - self.held):
                self.release()
                return False
            self.held = needed
        self._buffer.write(line)
        return True

    def refuse(self, reply: Reply) -> None:
        """Answer ``reply`` at the end of DATA; drop what was kept and keep nothing more."""
        self.refusal = self.refusal or reply
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None
        self.state.release(self.held)
        self.held = 0

    def content(self) -> bytes:
        assert self._buffer is not None
        return self._buffer.getvalue()

    def release(self) -> None:
        """The message was answered (or the session ended): its bytes no longer count."""
        self._buffer = None
        self.state.release(self.held)
        self.held = 0


def _client_of(peer: object) -> str:
    """The client's IP address from a socket peer name; what connection and rate limits count by."""
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


class _Hooks:
    """The hooks both listeners answer alike: EHLO's extensions, MAIL with the per-client rate, the
    limits every RCPT is held to, and the header size every DATA is."""

    state: ListenerState
    max_recipients: int
    max_header_size: int

    def _recipient_limits(self, envelope: Envelope, address: str) -> str | None:
        """The answer to a RCPT one recipient too many, or with an address too long; None when neither."""
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return str(Reply.TOO_MANY_RECIPIENTS)
        if path_too_long(address):
            return str(Reply.RECIPIENT_TOO_LONG)
        return None

    @staticmethod
    def _take_recipient(envelope: Envelope, address: str, options: list[str]) -> str:
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return str(Reply.RECIPIENT_OK)

    def _header_too_big(self, raw: bytes) -> bool:
        header_end = raw.find(b"\r\n\r\n")
        return (header_end if header_end >= 0 else len(raw)) > self.max_header_size

    async def handle_EHLO(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd reads commands one by one from its stream, so pipelined commands simply queue up.
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not self.state.allow_message(_client_of(session.peer)):
            return str(Reply.RATE_LIMITED)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return str(Reply.SENDER_OK)


class SubmissionHandler(_Hooks):
    """aiosmtpd hooks of the submission listener."""

    def __init__(
        self,
        *,
        acceptance: Acceptance,
        members: Members,
        state: ListenerState,
        max_recipients: int,
        max_header_size: int,
        max_received_hops: int,
        vorgang_header: str,
        rules: RoutingRules | None = None,
        reader: MailReader,
        mailbox: Mailbox | None = None,
    ) -> None:
        self.reader = reader  # reads the mail in a worker process, never on the event loop
        self.mailbox = mailbox  # asked at DATA whether NUL bytes can be stored as they are
        self.acceptance = acceptance
        self.rules = rules
        self.members = members
        self.state = state
        self.max_recipients = max_recipients
        self.max_header_size = max_header_size
        self.max_received_hops = max_received_hops
        self.vorgang_header = vorgang_header

    async def handle_MAIL(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        # A back office speaks only for its own addresses (DESIGN.md §8).
        refused = sender_refusal(session.auth_data, address)
        if refused is not None:
            return refused
        return await super().handle_MAIL(server, session, envelope, address, options)

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if (refused := self._recipient_limits(envelope, address)) is not None:
            return refused
        account = session.auth_data
        assert isinstance(account, Account), "aiosmtpd asks for AUTH before RCPT"
        try:
            member = normalise_address(address)
        except InvalidAddress:
            return Reply.UNKNOWN_RECIPIENT.with_text(f"<{address}>: not a valid address")
        if not await self.members.exists(account.portfolio_id, member):
            return Reply.UNKNOWN_RECIPIENT.with_text(
                f"<{address}>: no such member in portfolio {account.portfolio}"
            )
        return self._take_recipient(envelope, member, options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        account = session.auth_data
        assert isinstance(account, Account)
        raw = envelope.original_content
        assert isinstance(raw, bytes), "decode_data=False keeps the bytes"
        if self._header_too_big(raw):
            return str(Reply.HEADER_TOO_BIG)
        try:
            parsed = await self.reader.submission(raw)
        except NotRead as exc:
            log.warning("could not read a message from %s: %s", account.login, exc)
            return str(Reply.NOT_READ)
        if parsed.received_count > self.max_received_hops:
            return str(Reply.LOOP)
        owners = [MailboxOwner(account.portfolio, rcpt) for rcpt in envelope.rcpt_tos]
        if self.mailbox is not None and (unstorable := await nul_refusal(self.mailbox, raw, owners)):
            return unstorable
        if (refused := submitted_refusal(account, parsed)) is not None:
            return refused
        decision = None
        if self.rules is not None:
            # One read of the rules in force: a reload in the meantime cannot mix two rule sets.
            rule_set = self.rules.current
            decision = decide(
                rule_set,
                backoffice=account.backoffice,
                envelope_sender=envelope.mail_from or "",
                recipients=tuple(envelope.rcpt_tos),
                raw=raw,
                parsed=parsed,
                listener=self.state.name,
            )
            refused = refusal(decision, account.portfolio)
            if refused is not None:
                log.info(
                    "refused %s from %s by routing rules: %s",
                    parsed.message_id or "a message without Message-ID",
                    account.login,
                    refused,
                    extra={"rule_set": decision.rule_set, "rules": decision.routed_by},
                )
                return refused
        submission = Submission(
            account=account,
            envelope_sender=envelope.mail_from or "",
            recipients=tuple(envelope.rcpt_tos),
            raw=raw,
            parsed=parsed,
            listener=self.state.name,
            peer=_peer(session),
            decision=decision,
            arrival=_arrival(server, session),
        )
        self.state.in_data += 1
        try:
            accepted = await self.acceptance.submit(submission)
        except NotStored:
            return str(Reply.TRY_AGAIN)
        finally:
            self.state.in_data -= 1
        log.info(
            "accepted %s from %s (peer %s) vorgang %s audience %d%s%s",
            accepted.gateway_id,
            account.login,
            submission.peer,
            accepted.vorgang,
            accepted.audience,
            " (re-send)" if accepted.duplicate else "",
            " (quarantined)" if accepted.quarantined else "",
            extra={
                "gateway_id": accepted.gateway_id,
                "vorgang": accepted.vorgang,
                "audience": accepted.audience,
                "found": accepted.found,
                "backoffice": account.login,
                "peer": submission.peer,
                "quarantined": accepted.quarantined,
                "rules": decision.routed_by if decision is not None else [],
            },
        )
        if accepted.quarantined and not accepted.duplicate and decision is not None:
            # An admin has to act before anybody gets it: a line for log-based alerting that says how.
            rule = decision.decided_by.label() if decision.decided_by else "a routing rule"
            log.warning(
                "quarantined %s by %s: %s; `gateway quarantine show %s -p %s` shows it, "
                "`gateway quarantine release|drop` decides",
                accepted.gateway_id,
                rule,
                decision.reason or "no reason given",
                accepted.gateway_id,
                account.portfolio,
                extra={"gateway_id": accepted.gateway_id, "rule": rule, "reason": decision.reason},
            )
        return stored_answer(accepted.gateway_id, accepted.vorgang, quarantined=accepted.quarantined)


def _arrival(server: SMTP, session: Session) -> Arrival:
    """What the session says about the client, for the Received line (``gateway.domain.trace``)."""
    transport = getattr(server, "transport", None)  # None for a handler driven without a server
    # STARTTLS sets session.ssl; on an implicit-TLS listener the transport itself is the TLS one.
    tls = session.ssl is not None or (
        transport is not None and transport.get_extra_info("ssl_object") is not None
    )
    with_ = protocol(extended=session.extended_smtp, tls=tls, authenticated=bool(session.authenticated))
    return Arrival(session.host_name or "", _client_of(session.peer), with_)


def _peer(session: Session) -> str:
    peer = session.peer
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)


class MxHandler(_Hooks):
    """aiosmtpd hooks of the MX listener: members' replies, and bounces of what the gateway relayed."""

    def __init__(
        self,
        *,
        replies: ReplyStage,
        state: ListenerState,
        reply_domain: str,
        intake: Collection[str],
        max_recipients: int,
        max_header_size: int,
        reader: MailReader,
        mailbox: Mailbox | None = None,
    ) -> None:
        self.reader = reader  # reads the mail in a worker process, never on the event loop
        self.mailbox = mailbox  # asked at DATA whether NUL bytes can be stored as they are
        self.replies = replies
        self.intake = frozenset(intake)
        self.state = state
        self.reply_domain = reply_domain.lower()
        self.max_recipients = max_recipients
        self.max_header_size = max_header_size

    async def handle_EHLO(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        # No AUTH here: nobody logs in to the MX listener (aiosmtpd would announce it regardless).
        kept = [r for r in responses if not r[4:].upper().startswith("AUTH")]
        return await super().handle_EHLO(server, session, envelope, hostname, kept)

    async def handle_MAIL(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if (refused := envelope_sender_refusal(address)) is not None:
            return refused
        return await super().handle_MAIL(server, session, envelope, address, options)

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if (refused := self._recipient_limits(envelope, address)) is not None:
            return refused
        lowered = address.strip().lower()
        if not (
            is_reply_address(lowered, self.reply_domain)
            or lowered == self._bounce_address
            or lowered in self.intake
        ):
            return Reply.NOT_HERE.with_text(f"<{address}>: no such address here; this gateway does not relay")
        if envelope.rcpt_tos and self.replies.destination(lowered) != self.replies.destination(
            envelope.rcpt_tos[0]
        ):
            # A portfolio is decided once, by the address a mail was sent to (DESIGN.md §8).
            return str(Reply.OTHER_DESTINATION)
        return self._take_recipient(envelope, lowered, options)

    @property
    def _bounce_address(self) -> str:
        return f"{BOUNCES_LOCAL_PART}@{self.reply_domain}"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        raw = envelope.original_content
        assert isinstance(raw, bytes), "decode_data=False keeps the bytes"
        if self._header_too_big(raw):
            return str(Reply.HEADER_TOO_BIG)
        if self.mailbox is not None and (unstorable := await nul_refusal(self.mailbox, raw)):
            return unstorable
        self.state.in_data += 1
        try:
            read = await self.reader.arrival(raw, envelope.mail_from or "")
            mail = Incoming(
                envelope_sender=envelope.mail_from or "",
                recipients=tuple(envelope.rcpt_tos),
                raw=raw,
                parsed=read.parsed,
                client_ip=_client_of(session.peer),
                helo=session.host_name or "",
                peer=_peer(session),
                classification=read.classification,
                report=read.report,
                arrival=_arrival(server, session),
            )
            return await self.replies.receive(mail)
        except NotRead as exc:
            # Temporary, not 554: the budget also runs out when the workers are busy with others' mail,
            # and an honest server retries; a mail that never fits is bounced by its own sender in time.
            log.warning("could not read a mail from %s: %s", _peer(session), exc)
            return str(Reply.NOT_READ)
        except NotStored:
            return str(Reply.TRY_AGAIN)
        except Exception:
            # aiosmtpd would answer an exception with 500, and the member's server would bounce a
            # reply that a database hiccup kept us from checking: 451 makes it try again.
            log.exception("could not take a mail from %s", _peer(session))
            return str(Reply.TRY_AGAIN)
        finally:
            self.state.in_data -= 1
