"""The SMTP listeners: back offices hand in mail (submission), members' mail servers deliver replies (MX).

aiosmtpd speaks the protocol; this module decides what each command is answered: who may log in, which
recipients exist, which messages are too big, too deep in a loop or malformed beyond use. Everything a
client can hear is named in ``gateway.replies``. The submission DATA handler hands the message to the
acceptance stage, the MX one to the reply stage, and both answer only after the commit (DESIGN.md §2,
§8). The MX listener takes only reply addresses and the bounce address of the reply domain: it is
nobody's relay.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, syntax
from sqlalchemy import Connection

from gateway.acceptance import Acceptance, NotStored, Submission
from gateway.db.accounts import Account, find_account
from gateway.db.intake import EVENTS, insert_rows, member_ids
from gateway.db.writer import Writer
from gateway.domain.addresses import InvalidAddress, normalise_address
from gateway.domain.logins import FailedLogins, Failure, LoginLimits
from gateway.domain.passwords import hash_password, verify_password
from gateway.domain.tokens import is_reply_address
from gateway.parsepool import MailReader, NotRead
from gateway.replies import AIOSMTPD_REPLIES, Reply
from gateway.reply import BOUNCES_LOCAL_PART, Incoming, ReplyIntake
from gateway.routing import RoutingRules, refusal, submitted

log = logging.getLogger("gateway.ingress")

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

    def __init__(self, writer: Writer, limits: LoginLimits | None = None, *, node: str = "") -> None:
        self.writer = writer
        self.node = node
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
    rows = [
        {
            "at": now,
            "portfolio_id": account.portfolio_id if account is not None else None,
            "actor": f"gateway:{node}",
            "kind": kind,
            "member_id": None,
            "vorgang_id": None,
            "message_id": None,
            "detail": detail | extra,
        }
        for kind, extra in [
            ("auth.failed", {}),
            *(("auth.throttled", {"refusing": what}) for what in failure.throttles),
        ]
    ]
    insert_rows(connection, EVENTS, rows)


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


@dataclass
class ListenerState:
    """What all sessions of one listener share: connection counts, sessions in DATA, shutdown."""

    name: str
    max_connections: int
    max_per_client: int
    max_messages_per_minute: int = 120
    connections: Counter[str] = field(default_factory=Counter)
    in_data: int = 0
    closing: bool = False
    protocols: set[SMTP] = field(default_factory=set)
    recent: dict[str, deque[float]] = field(default_factory=dict)

    def allow_message(self, client: str) -> bool:
        """Count a new message from ``client``; False when it sent its allowance in the last minute."""
        now = time.monotonic()
        times = self.recent.setdefault(client, deque())
        while times and times[0] <= now - 60.0:
            times.popleft()
        if len(times) >= self.max_messages_per_minute:
            return False
        times.append(now)
        return True


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with our replies, connection limits and an asynchronous password check."""

    state: ListenerState
    accounts: Accounts

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None
        super().connection_made(transport)
        if not first:
            return  # the same connection after STARTTLS
        self._client = _client_of(transport.get_extra_info("peername"))
        state = self.state
        too_many = state.connections[self._client] >= state.max_per_client
        if state.closing or too_many or sum(state.connections.values()) >= state.max_connections:
            reply = Reply.SHUTTING_DOWN if state.closing else Reply.TOO_MANY_CONNECTIONS
            assert self._handler_coroutine is not None
            self._handler_coroutine.cancel()
            transport.write(f"{reply}\r\n".encode())  # type: ignore[attr-defined]
            transport.close()
            self._client = ""
            return
        state.connections[self._client] += 1
        state.protocols.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        client = getattr(self, "_client", "")
        if client and self in self.state.protocols:
            self.state.protocols.discard(self)
            self.state.connections[client] -= 1
            if self.state.connections[client] <= 0:
                del self.state.connections[client]
        super().connection_lost(error)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802 (aiosmtpd dispatches on this name)
        """aiosmtpd's DATA, reading lines the way Postfix does with ``smtpd_forbid_bare_newline = normalize``.

        A bare LF ends a line as CRLF does (and is stored as CRLF), so a client with bare LF line
        endings is neither refused for one "line" as long as its whole message nor stored with mixed
        endings that other servers read differently. DATA still ends only at <CR><LF>.<CR><LF>: a dot
        line after a bare LF is content, so <LF>.<CR><LF> can never end a message early and smuggle
        the next one past us (CVE-2023-51766 and its relatives).
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
        lines: list[bytes] = []
        size = 0
        refusal: Reply | None = None
        after_crlf = True  # the previous line ended in CRLF, so a "." line now ends DATA
        tail_of: bytes | None = None  # what was read of an overlong line, whose rest comes next
        while self.transport is not None:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.CancelledError:
                log.info("connection lost during DATA")
                self._writer.close()
                raise
            except asyncio.LimitOverrunError as exc:
                # Longer than the line limit: drop what we have, read on to the end, then refuse.
                refusal = refusal or Reply.LINE_TOO_LONG
                lines.clear()
                tail_of = await self._reader.read(exc.consumed)
                continue
            except asyncio.IncompleteReadError:
                return  # the client went away mid-DATA; nothing is stored
            if tail_of is not None:
                # The rest of an overlong line: never a "." line, and its CRLF may be split in two.
                after_crlf = line.endswith(b"\r\n") or (line == b"\n" and tail_of.endswith(b"\r"))
                tail_of = None
                continue
            crlf = line.endswith(b"\r\n")
            if crlf and after_crlf and line == b".\r\n":
                break
            after_crlf = crlf
            text = line[:-2] if crlf else line[:-1]
            if text.startswith(b"."):
                text = text[1:]  # RFC 5321 4.5.2 transparency
            size += len(text) + 2
            if self.data_size_limit and size > self.data_size_limit:
                refusal = refusal or Reply.TOO_BIG
            if refusal is not None:
                lines.clear()  # keep reading to the end, but not in memory
                continue
            lines.append(text + b"\r\n")
        if refusal is not None:
            self._set_post_data_state()  # type: ignore[no-untyped-call]  # aiosmtpd leaves it unannotated
            await self.push(str(refusal))
            return
        content = b"".join(lines)
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]  # aiosmtpd leaves it unannotated
        await self.push(status)

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            await super().push(AIOSMTPD_REPLIES.get(status, status))
        else:
            await super().push(status)

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
        try:
            account = await self.accounts.verify(result.auth_data.login, result.auth_data.password, client)
        except LoginsThrottled:
            return AuthResult(success=False, handled=False, message=str(Reply.LOGINS_THROTTLED))
        if account is None:
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=account)


def _client_of(peer: object) -> str:
    """The client's IP address from a socket peer name; what connection and rate limits count by."""
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


class _Hooks:
    """The hooks both listeners answer alike: EHLO's extensions, and MAIL with the per-client rate."""

    state: ListenerState

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
    ) -> None:
        self.reader = reader
        self.acceptance = acceptance
        self.rules = rules
        self.members = members
        self.state = state
        self.max_recipients = max_recipients
        self.max_header_size = max_header_size
        self.max_received_hops = max_received_hops
        self.vorgang_header = vorgang_header

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return str(Reply.TOO_MANY_RECIPIENTS)
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
        envelope.rcpt_tos.append(member)
        envelope.rcpt_options.extend(options)
        return str(Reply.RECIPIENT_OK)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        account = session.auth_data
        assert isinstance(account, Account)
        raw = envelope.original_content
        assert isinstance(raw, bytes), "decode_data=False keeps the bytes"
        header_end = raw.find(b"\r\n\r\n")
        if (header_end if header_end >= 0 else len(raw)) > self.max_header_size:
            return str(Reply.HEADER_TOO_BIG)
        try:
            parsed = await self.reader.submission(raw)
        except NotRead as exc:
            log.warning("could not read a message from %s: %s", account.login, exc)
            return str(Reply.NOT_READ)
        if parsed.received_count > self.max_received_hops:
            return str(Reply.LOOP)
        decision = None
        if self.rules is not None:
            # One read of the rules in force: a reload in the meantime cannot mix two rule sets.
            rule_set = self.rules.current
            decision = rule_set.decide(
                submitted(
                    backoffice=account.backoffice,
                    envelope_sender=envelope.mail_from or "",
                    recipients=tuple(envelope.rcpt_tos),
                    raw=raw,
                    parsed=parsed,
                    listener=self.state.name,
                    with_headers=rule_set.needs_headers,
                )
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
        )
        self.state.in_data += 1
        try:
            accepted = await self.acceptance.submit(submission)
        except NotStored:
            return str(Reply.TRY_AGAIN)
        finally:
            self.state.in_data -= 1
        log.info(
            "accepted %s vorgang %s audience %d%s%s",
            accepted.gateway_id,
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
                "quarantined": accepted.quarantined,
                "rules": decision.routed_by if decision is not None else [],
            },
        )
        if accepted.quarantined:
            if not accepted.duplicate and decision is not None:
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
            return Reply.QUARANTINED.with_text(f"Accepted as {accepted.gateway_id}; held for review")
        return Reply.ACCEPTED.with_text(f"Accepted as {accepted.gateway_id} in {accepted.vorgang}")


def _peer(session: Session) -> str:
    peer = session.peer
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)


class MxHandler(_Hooks):
    """aiosmtpd hooks of the MX listener: members' replies, and bounces of what the gateway relayed."""

    def __init__(
        self,
        *,
        replies: ReplyIntake,
        state: ListenerState,
        reply_domain: str,
        intake: Collection[str],
        max_recipients: int,
        max_header_size: int,
        reader: MailReader,
    ) -> None:
        self.reader = reader
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

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return str(Reply.TOO_MANY_RECIPIENTS)
        lowered = address.strip().lower()
        if not (
            is_reply_address(lowered, self.reply_domain)
            or lowered == self._bounce_address
            or lowered in self.intake
        ):
            return Reply.NOT_HERE.with_text(f"<{address}>: no such address here; this gateway does not relay")
        envelope.rcpt_tos.append(lowered)
        envelope.rcpt_options.extend(options)
        return str(Reply.RECIPIENT_OK)

    @property
    def _bounce_address(self) -> str:
        return f"{BOUNCES_LOCAL_PART}@{self.reply_domain}"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        raw = envelope.original_content
        assert isinstance(raw, bytes), "decode_data=False keeps the bytes"
        header_end = raw.find(b"\r\n\r\n")
        if (header_end if header_end >= 0 else len(raw)) > self.max_header_size:
            return str(Reply.HEADER_TOO_BIG)
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
