"""Durable acceptance: stores submitted messages, their Vorgänge, participants and pending copies at once.

Submissions from all SMTP sessions meet in one queue and are stored batch by batch in one transaction
each (group commit): while one transaction commits, the next batch gathers, so a busy gateway pays for
one commit and a handful of statements per batch rather than per message, and an idle one adds no
delay. A session hears ``250`` only after the commit that holds its message. If the database refuses a
batch for what one message holds, the batch is stored again in halves until only that message is left
out and answered ``451``; if the database itself fails, every message of the batch gets ``451`` and
nothing of them is stored (DESIGN.md §8).

Several nodes may share one PostgreSQL database (issue 17). A message another node is storing at the
same moment (the same bytes through both MX hosts) is left for a later batch and then answered as the
re-send it is, while the rest of the batch is stored; nothing waits for the other node, and only that
message hears ``451`` if the other node stalls for longer than ``busy_wait``. A conflict the database
reports (a unique key just committed elsewhere, a deadlock) stores the batch again, a bounded number of
times. Log lines name messages by Message-ID and gateway id, never by their content.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, SQLAlchemyError
from sqlalchemy.exc import OperationalError as SAOperationalError

from gateway.db import acceptance
from gateway.db.accounts import Account
from gateway.db.copies import Lease, NewCopy, copies_for, handed_job, insert_copies
from gateway.db.events import Event, EventKind, append_events
from gateway.db.messages import NewMessage, insert_messages, new_gateway_id
from gateway.db.models import Direction, MessageKind
from gateway.db.quarantine import NewQuarantine, hold
from gateway.db.queue import CopyJob
from gateway.db.writer import Writer
from gateway.domain.audience import Audience
from gateway.domain.model import Participant
from gateway.domain.parsing import ParsedMessage
from gateway.domain.routing_plan import Routed, RoutingPlan, lookups, plan_submissions
from gateway.domain.rules import Decision
from gateway.domain.submitters import (
    allowed_text,
    foreign_senders,
    message_id_too_long,
    not_utf8,
    path_too_long,
)
from gateway.domain.threading import Found
from gateway.domain.trace import Arrival, Trace
from gateway.errors import NotStored
from gateway.smtp_replies import Reply

log = logging.getLogger("gateway.stages.acceptance")

MAX_BATCH = 200
# Sessions answered by one commit send their next messages at about the same moment; waiting this long
# after the first arrival lets them share the next transaction instead of trickling into several.
# Measured with bench/ingest.py (10 sessions, SQLite): accepting alone 430 -> 530 msg/s.
GATHER = 0.002
# A batch that met another transaction is stored again this many times before its messages are
# answered one by one (split in halves) or with 451.
CONFLICT_RETRIES = 3
# A message another node is storing at the same moment is tried again after this pause (growing
# while it waits), for at most BUSY_WAIT seconds (the stage's ``busy_wait``, [database] lock_timeout
# in a running gateway), then answered 451.
BUSY_PAUSE = 0.01
BUSY_PAUSE_MAX = 0.5
BUSY_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class Submission:
    """A message as the submission listener received it from an authenticated back office."""

    account: Account
    envelope_sender: str
    recipients: tuple[str, ...]  # member addresses, normalised, checked at RCPT
    raw: bytes
    parsed: ParsedMessage
    listener: str
    peer: str
    # What the routing rules decided (gateway.routing.live); None: no rules were asked.
    decision: Decision | None = None
    # What the SMTP session said about the client, for the Received line of the copies.
    arrival: Arrival | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    gateway_id: str
    vorgang: str
    found: str
    audience: int
    duplicate: bool
    quarantined: bool = False


Waiting = tuple[Submission, "asyncio.Future[Accepted]"]


@dataclass(frozen=True, slots=True)
class Busy:
    """A message of a batch left for a later one: another transaction (another node) is storing the
    same bytes right now (``gateway.db.acceptance.busy_resends``)."""


BUSY = Busy()


# --- what a back office may submit (checked by the listener before a message is queued) ----------------


def sender_refusal(account: object, mail_from: str) -> str | None:
    """The answer to a back office's ``MAIL FROM:<mail_from>`` when it is refused, else None.

    A back office may send only from its own addresses in the directory, or with the null sender
    (``gateway.domain.submitters``). ``account`` is the session's login (None before AUTH, which aiosmtpd
    asks for before it takes MAIL).
    """
    if (refused := envelope_sender_refusal(mail_from)) is not None:
        return refused
    if mail_from in ("", "<>") or not isinstance(account, Account):
        return None  # aiosmtpd gives the null sender as "<>"
    if foreign_senders(account.addresses, [mail_from]):
        return Reply.NOT_YOUR_ADDRESS.with_text(
            f"<{mail_from}> is not an address of back office {account.backoffice}: "
            f"{allowed_text(account.addresses)}"
        )
    return None


def envelope_sender_refusal(mail_from: str) -> str | None:
    """The answer to a MAIL FROM on either listener whose address the records cannot hold, else None."""
    if not_utf8(mail_from):
        return str(Reply.SENDER_NOT_UTF8)
    if path_too_long(mail_from):
        return str(Reply.SENDER_TOO_LONG)
    return None


def submitted_refusal(account: Account, parsed: ParsedMessage) -> str | None:
    """The answer to a submitted message whose header claims what its back office may not, else None:
    a From address that is not the back office's own, or a Message-ID longer than the records hold."""
    if message_id_too_long(parsed.message_id):
        return str(Reply.MESSAGE_ID_TOO_LONG)
    foreign = foreign_senders(account.addresses, parsed.from_addresses)
    if foreign:
        return Reply.NOT_YOUR_ADDRESS.with_text(
            f"From: {', '.join(foreign)} is not an address of back office {account.backoffice}: "
            f"{allowed_text(account.addresses)}"
        )
    return None


@dataclass(frozen=True, slots=True)
class HandOff:
    """Fan-out in this process takes new copies straight from acceptance instead of from the queue.

    The copies are stored already leased to ``node`` for ``lease`` seconds, and handed to ``take`` after
    the commit: the fan-out then needs no transaction to claim them and no read of the message back.
    If the process dies first, the lease runs out (or the restarted node releases it) and the copies
    are taken from the queue like any other.

    Handed copies are first attempts under the first lease token (0, as stored), and like every job
    they are fenced: the fan-out confirms the lease right before writing them, so a node that stalled
    between this commit and the write, past the lease while another node took them over, drops them
    instead of writing them a second time (docs/scaling.md).
    """

    node: str
    lease: float
    take: Callable[[list[CopyJob]], None]


class Acceptance:
    """The accept stage; ``run()`` is its worker task, ``submit()`` what each SMTP session awaits."""

    def __init__(
        self,
        writer: Writer,
        *,
        hostname: str,
        on_accepted: Callable[[], None] = lambda: None,
        handoff: HandOff | None = None,
        busy_wait: float = BUSY_WAIT,
    ) -> None:
        self.writer = writer
        self.hostname = hostname
        self.on_accepted = on_accepted
        self.handoff = handoff
        self.busy_wait = busy_wait
        self._queue: asyncio.Queue[Waiting] = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        # Messages left for a later batch (``Busy``): since when, and how many wait to be queued again.
        self._busy_since: dict[asyncio.Future[Accepted], float] = {}
        self._later = 0

    async def submit(self, submission: Submission) -> Accepted:
        """Store ``submission``; returns once it is committed. Raises NotStored when it could not be.

        The wait is shielded: a client that disconnects mid-way cancels its wait, not the commit, so
        a message is never half stored, and a re-send after the lost reply is recognised as such.
        """
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((submission, future))
        return await asyncio.shield(future)

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(GATHER)
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._idle.clear()
            try:
                await self._store(batch)
            finally:
                if self._queue.empty():
                    self._idle.set()

    async def drain(self) -> None:
        """Wait until everything queued is stored (on shutdown, after the listeners stopped taking mail)."""
        while not (self._queue.empty() and self._idle.is_set() and self._later == 0):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 0.1)

    @property
    def queued(self) -> int:
        return self._queue.qsize() + self._later

    async def _store(self, batch: list[Waiting]) -> None:
        started = time.perf_counter()
        stored, jobs = await self._store_part(batch)
        log.debug(
            "stored %d of a batch of %d in %.1f ms",
            stored,
            len(batch),
            (time.perf_counter() - started) * 1000,
        )
        if self.handoff is not None and jobs:
            self.handoff.take(jobs)
        if stored:
            self.on_accepted()

    async def _store_part(self, part: list[Waiting]) -> tuple[int, list[CopyJob]]:
        """Store ``part`` in one transaction; how many were stored, and the copies for the hand-off.

        One message the database refuses (a value it cannot hold, a constraint) must not fail the others
        (DESIGN.md §8): such a failure splits the part in halves, each stored on its own, until the
        message at fault is alone and only it is answered ``451``. The halves go in order, so a message
        that answers an earlier one of the batch finds it stored. A fault of the database itself
        (unreachable, a lock wait past ``lock_timeout``, disk full) would fail any part alike:
        everything of it gets ``451`` at once.

        Another node storing some of the same messages at the same moment is no fault (issue 17): the
        messages it holds come back ``Busy`` and are queued again (``_later``), the others are stored;
        a conflict the database reports (a unique key another transaction just committed, a deadlock)
        stores the part again, up to ``CONFLICT_RETRIES`` times.
        """
        submissions = [submission for submission, _ in part]
        attempt = 0
        while True:
            try:
                results, jobs = await self._store_once(submissions)
                break
            except Exception as exc:
                if attempt < CONFLICT_RETRIES and _conflict(exc):
                    attempt += 1
                    # Another transaction committed what this one was about to store, or the two
                    # waited for each other: a second go reads what it committed.
                    log.info(
                        "a batch of %d met another transaction (%s); storing it again (attempt %d)",
                        len(part),
                        _first_line(exc),
                        attempt + 1,
                    )
                    continue
                return await self._not_stored(part, exc)
        stored = 0
        for (submission, future), result in zip(part, results, strict=True):
            if isinstance(result, Busy):
                self._again(submission, future)
                continue
            stored += 1
            self._busy_since.pop(future, None)
            if not future.done():
                future.set_result(result)
        return stored, jobs

    async def _not_stored(self, part: list[Waiting], exc: Exception) -> tuple[int, list[CopyJob]]:
        submissions = [submission for submission, _ in part]
        if len(part) > 1 and not _fails_everything(exc):
            log.warning(
                "a batch of %d could not be stored (%s); storing it in halves to find the one at fault",
                len(part),
                _first_line(exc),
            )
            half = len(part) // 2
            first, first_jobs = await self._store_part(part[:half])
            second, second_jobs = await self._store_part(part[half:])
            return first + second, first_jobs + second_jobs
        # No session may wait forever: it gets 451, and the transaction was rolled back, so nothing
        # of it is stored. Message-IDs and the driver's first line only: no subject, no bytes.
        which = ", ".join(s.parsed.message_id or "a message without Message-ID" for s in submissions)
        if isinstance(exc, SQLAlchemyError | OSError):
            log.error("could not store %d message(s) (%s): %s", len(part), which, _first_line(exc))
        else:
            log.exception("could not store %d message(s) (%s)", len(part), which)
        for _, future in part:
            self._busy_since.pop(future, None)
            if not future.done():
                future.set_exception(NotStored(_first_line(exc)))
        return 0, []

    def _again(self, submission: Submission, future: asyncio.Future[Accepted]) -> None:
        """Queue a ``Busy`` message again after a short pause, until ``busy_wait`` has passed since it
        was first left for later; then it is answered ``451`` (the node storing it may be stalled)."""
        now = time.monotonic()
        since = self._busy_since.setdefault(future, now)
        if future.done():
            self._busy_since.pop(future, None)
            return
        if now - since >= self.busy_wait:
            self._busy_since.pop(future, None)
            log.warning(
                "%s: another transaction kept storing it for %.1f s; answered 451",
                submission.parsed.message_id,
                now - since,
            )
            future.set_exception(NotStored("another transaction is storing the same message"))
            return
        log.debug("%s: another transaction is storing it; queued again", submission.parsed.message_id)
        self._later += 1

        def again() -> None:
            self._later -= 1
            self._queue.put_nowait((submission, future))

        # Short at first (the other transaction commits within milliseconds), longer while it lasts.
        pause = min(max(BUSY_PAUSE, (now - since) / 4), BUSY_PAUSE_MAX)
        asyncio.get_running_loop().call_later(pause, again)

    async def _store_once(self, submissions: list[Submission]) -> tuple[list[Accepted | Busy], list[CopyJob]]:
        lease = None
        if self.handoff is not None:
            until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.handoff.lease)
            lease = (self.handoff.node, until)
        return await self.writer.run(_accept_batch, submissions, self.hostname, lease)


def _fails_everything(exc: BaseException) -> bool:
    """True for a fault of the database or the disk rather than of one message's data: splitting the
    batch would only repeat it for every part."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, SAOperationalError | InterfaceError | OSError)


# SQLSTATEs of a transaction that met another one: a unique key it committed meanwhile, a
# serialization failure, a deadlock. Storing again resolves each.
_CONFLICTS = frozenset({"23505", "40001", "40P01"})


def _conflict(exc: BaseException) -> bool:
    if not isinstance(exc, DBAPIError) or exc.connection_invalidated:
        return False
    state = getattr(exc.orig, "sqlstate", None)
    if state is None:
        # sqlite3 names no SQLSTATE; its IntegrityError may be another process's commit too.
        return isinstance(exc, IntegrityError)
    return state in _CONFLICTS


def _first_line(exc: BaseException) -> str:
    """What went wrong, fit for a log line: the driver's first line without SQLAlchemy's statement and
    parameters, and without the values PostgreSQL quotes in it (a unique key's, an invalid input's),
    which may be mail content; the constraint by name. Other errors by their kind and errno only."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        orig = exc.orig
        text = str(orig).strip()
        line = text.splitlines()[0] if text else type(orig).__name__
        line = _QUOTED.sub('"…"', line)
        constraint = getattr(getattr(orig, "diag", None), "constraint_name", None)
        return f"{line} ({constraint})" if constraint else line
    if isinstance(exc, OSError):
        return f"{type(exc).__name__} {exc.errno}: {exc.strerror}" if exc.errno else type(exc).__name__
    return type(exc).__name__


_QUOTED = re.compile(r'"[^"]*"')


# --- one batch ---------------------------------------------------------------------------------------------


@dataclass
class _Planned:
    """One message of a batch on its way into the database: its routing plan, and the ids it is
    stored with."""

    submission: Submission
    sha256: str
    routing: RoutingPlan
    gateway_id: str
    # The plan's Vorgang; negative: a Vorgang opened in this batch, replaced by its id once inserted.
    vorgang_id: int
    trace: Trace | None = None
    # The address of each member the routing facts named (the audience's among them).
    addresses: Mapping[int, str] = field(default_factory=dict)

    @property
    def found(self) -> Found:
        return self.routing.found

    @property
    def participants(self) -> tuple[Participant, ...]:
        return self.routing.participants

    @property
    def message_id(self) -> str:
        return self.routing.message_id

    @property
    def audience(self) -> Audience:
        return self.routing.audience

    @property
    def key(self) -> str | None:
        """The rule-derived key a Vorgang this message opens is stored with (DESIGN.md §6)."""
        return self.routing.key

    @property
    def quarantined(self) -> bool:
        return self.routing.quarantined


def _accept_batch(
    connection: Connection,
    submissions: Sequence[Submission],
    hostname: str,
    lease: tuple[str, dt.datetime] | None = None,
) -> tuple[list[Accepted | Busy], list[CopyJob]]:
    """Store one batch; the answer for each submission (``BUSY``: not stored, for a later batch), and
    (with ``lease``) the copies, leased to ``lease[0]`` until ``lease[1]``, as jobs for the fan-out in
    this process."""
    now = dt.datetime.now(dt.UTC)
    results: list[Accepted | Busy | None] = [None] * len(submissions)
    by_backoffice: dict[int, list[int]] = defaultdict(list)
    for index, s in enumerate(submissions):
        by_backoffice[s.account.backoffice_id].append(index)
    digests = [hashlib.sha256(s.raw).hexdigest() for s in submissions]

    # Messages another node is storing right now are left for a later batch (``Busy``), and so are
    # mail of this batch that names one of them (it may thread onto it): nothing here waits for them.
    busy = acceptance.busy_resends(
        connection,
        {
            (s.account.backoffice_id, m, digests[i])
            for i, s in enumerate(submissions)
            if (m := s.parsed.message_id)
        },
    )
    busy_ids = {message_id for _, message_id, _ in busy}
    for i, s in enumerate(submissions):
        named = {s.parsed.message_id, *s.parsed.references, *s.parsed.in_reply_to} - {None}
        if named & busy_ids:
            results[i] = BUSY

    # Re-sends: already stored (earlier batch), or twice in this batch (the first one counts).
    first_in_batch: dict[tuple[int, str, str], int] = {}
    fresh: list[int] = []
    for backoffice_id, indexes in by_backoffice.items():
        indexes = [i for i in indexes if results[i] is not BUSY]
        keys = {(m, digests[i]) for i in indexes if (m := submissions[i].parsed.message_id)}
        stored = acceptance.find_resends(connection, backoffice_id, keys)
        for i in indexes:
            message_id = submissions[i].parsed.message_id
            key = (message_id or "", digests[i])
            if message_id and key in stored:
                results[i] = Accepted(
                    stored[key].gateway_id,
                    stored[key].vorgang,
                    "re-send",
                    0,
                    duplicate=True,
                    quarantined=stored[key].quarantined,
                )
            elif message_id and (backoffice_id, *key) in first_in_batch:
                results[i] = None  # filled in from its twin once that is stored
            else:
                if message_id:
                    first_in_batch[(backoffice_id, *key)] = i
                fresh.append(i)

    by_portfolio: dict[int, list[int]] = defaultdict(list)
    for i in fresh:
        by_portfolio[submissions[i].account.portfolio_id].append(i)
    planned: dict[int, _Planned] = {}
    # In the order of their ids, so that two batches never hold portfolios the other waits for.
    for portfolio_id, indexes in sorted(by_portfolio.items()):
        planned |= _plan_portfolio(connection, portfolio_id, indexes, submissions, digests, hostname, now)

    # Mail into a Vorgang another node is writing right now (or opening it by the same rule key) is
    # left for a later batch as well, rather than waiting for that node's commit.
    _leave_busy_vorgaenge(connection, planned, results)

    for i, plan in planned.items():
        copies = len(plan.audience.members) if plan.audience and not plan.quarantined else 0
        results[i] = Accepted(plan.gateway_id, "", plan.found.value, copies, False, plan.quarantined)
    references, jobs = _write(connection, planned, now, lease)
    for i, plan in planned.items():
        result = results[i]
        assert isinstance(result, Accepted)
        results[i] = Accepted(
            result.gateway_id,
            references[plan.vorgang_id],
            result.found,
            result.audience,
            False,
            result.quarantined,
        )
    for i, result in enumerate(results):
        if result is None:  # a twin within the batch
            s = submissions[i]
            twin = first_in_batch[(s.account.backoffice_id, s.parsed.message_id or "", digests[i])]
            original = results[twin]
            if isinstance(original, Busy):
                results[i] = BUSY
                continue
            assert isinstance(original, Accepted)
            results[i] = Accepted(
                original.gateway_id,
                original.vorgang,
                "re-send",
                0,
                duplicate=True,
                quarantined=original.quarantined,
            )
    return [r for r in results if r is not None], jobs


def _leave_busy_vorgaenge(
    connection: Connection, planned: dict[int, _Planned], results: list[Accepted | Busy | None]
) -> None:
    """Take the plans whose Vorgang another transaction is writing out of ``planned``, as ``BUSY``.

    A Vorgang opened in this batch is shared by the plans with its placeholder id; its rule-derived
    key, if any, is its first plan's (as ``_write`` opens it)."""
    opened: dict[tuple[int, int], str | None] = {}
    for plan in planned.values():
        if plan.vorgang_id < 0:
            opened.setdefault((plan.submission.account.portfolio_id, plan.vorgang_id), plan.key)
    busy_ids, busy_keys = acceptance.busy_vorgaenge(
        connection,
        {plan.vorgang_id for plan in planned.values() if plan.vorgang_id > 0},
        {(pid, key) for (pid, _), key in opened.items() if key is not None},
    )
    if not busy_ids and not busy_keys:
        return
    for i, plan in list(planned.items()):
        pid = plan.submission.account.portfolio_id
        key = opened.get((pid, plan.vorgang_id))
        if plan.vorgang_id in busy_ids or (key is not None and (pid, key) in busy_keys):
            del planned[i]
            results[i] = BUSY


def _plan_portfolio(
    connection: Connection,
    portfolio_id: int,
    indexes: list[int],
    submissions: Sequence[Submission],
    digests: Sequence[str],
    hostname: str,
    now: dt.datetime,
) -> dict[int, _Planned]:
    """Plan Vorgang, participants and audience of each message of one portfolio in the batch.

    The facts every plan needs are read first, once for all of them, and the plans are then made
    without another read (``gateway.domain.routing_plan``), as ``gateway rules test`` makes its plan.
    The listener answered RCPT TO and the rules' refusals in the session; acceptance stores what it
    let through, so the plans' ``refused`` is not asked here.
    """
    acceptance.hold_directory(connection, portfolio_id)
    gateway_ids = {i: new_gateway_id() for i in indexes}
    routed = [
        Routed(
            submissions[i].recipients,
            submissions[i].parsed,
            _decision(submissions[i]),
            submissions[i].parsed.message_id or f"<{gateway_ids[i]}@{hostname}>",
        )
        for i in indexes
    ]
    portfolio = submissions[indexes[0]].account.portfolio
    facts, addresses = acceptance.routing_facts_and_addresses(
        connection, portfolio_id, portfolio, lookups(routed)
    )
    planned: dict[int, _Planned] = {}
    for i, plan in zip(indexes, plan_submissions(routed, facts), strict=True):
        s = submissions[i]
        if plan.skipped:
            log.warning(
                "routing rules add %s, not members of portfolio %s; left out",
                ", ".join(plan.skipped),
                s.account.portfolio,
            )
        trace = Trace(s.arrival, hostname, gateway_ids[i], now) if s.arrival is not None else None
        planned[i] = _Planned(s, digests[i], plan, gateway_ids[i], plan.vorgang_id, trace, addresses)
    return planned


def _write(
    connection: Connection,
    planned: dict[int, _Planned],
    now: dt.datetime,
    lease: tuple[str, dt.datetime] | None,
) -> tuple[dict[int, str], list[CopyJob]]:
    """Insert Vorgänge, messages, participants, copies and events.

    Returns the reference of every Vorgang used, and with ``lease`` the new copies as fan-out jobs.
    """
    references: dict[int, str] = {}
    by_portfolio: dict[int, list[_Planned]] = defaultdict(list)
    for plan in planned.values():
        by_portfolio[plan.submission.account.portfolio_id].append(plan)
    for portfolio_id, plans in by_portfolio.items():
        openers: dict[int, _Planned] = {}
        for plan in plans:
            if plan.vorgang_id < 0:
                openers.setdefault(plan.vorgang_id, plan)
        order = sorted(openers, reverse=True)  # -1, -2, …: the order they were opened in
        opened = acceptance.new_vorgaenge(
            connection,
            portfolio_id,
            [openers[k].submission.parsed.subject for k in order],
            now,
            keys=[openers[k].key for k in order],
        )
        new_ids = {placeholder: vid for placeholder, (vid, _) in zip(order, opened, strict=True)}
        references |= dict(opened)
        for plan in plans:
            if plan.vorgang_id < 0:
                plan.vorgang_id = new_ids[plan.vorgang_id]
    references |= acceptance.references_of(
        connection, {p.vorgang_id for p in planned.values()} - set(references)
    )

    plans = list(planned.values())
    messages = [_message(p, now) for p in plans]
    message_pks = insert_messages(connection, messages)
    events: list[Event] = []
    held: list[NewQuarantine] = []
    copies: list[NewCopy] = []
    audience_ids = {m for p in plans if p.audience for m in p.audience.members}
    # The routing facts named them all (read with the releases); a read only for any they did not.
    addresses = {m: a for p in plans for m, a in p.addresses.items() if m in audience_ids}
    addresses |= acceptance.member_addresses(connection, audience_ids - addresses.keys())
    for plan, pk in zip(plans, message_pks, strict=True):
        pid = plan.submission.account.portfolio_id
        assert plan.audience is not None
        events.append(_accepted_event(plan, pk, references[plan.vorgang_id], addresses, now))
        if plan.quarantined:
            # Stored with its participants, but no copies until an admin releases it.
            held.append(_quarantined(plan, pk))
            continue
        copies += copies_for(pk, pid, plan.audience)
    hold(connection, held, now)
    append_events(connection, events)
    leased = Lease(*lease) if lease is not None else None
    copy_pks = insert_copies(connection, copies, now, leased)
    if leased is None:
        return references, []
    # The copies are handed to this process's fan-out at once, with what its claim would have read.
    of_message = {pk: (plan, message) for plan, message, pk in zip(plans, messages, message_pks, strict=True)}
    jobs: list[CopyJob] = []
    for copy, copy_pk in zip(copies, copy_pks, strict=True):
        plan, message = of_message[copy.message_pk]
        reference, address = references[plan.vorgang_id], addresses[copy.member_id]
        portfolio = plan.submission.account.portfolio
        jobs.append(
            handed_job(
                copy,
                copy_pk,
                message,
                portfolio=portfolio,
                vorgang=reference,
                address=address,
                parsed=plan.submission.parsed,  # of s.raw, the bytes stored (``_message``)
            )
        )
    return references, jobs


def _message(plan: _Planned, now: dt.datetime) -> NewMessage:
    s, parsed = plan.submission, plan.submission.parsed
    return NewMessage(
        gateway_id=plan.gateway_id,
        portfolio_id=s.account.portfolio_id,
        vorgang_id=plan.vorgang_id,
        direction=Direction.INBOUND,
        backoffice_id=s.account.backoffice_id,
        raw=s.raw,
        sha256=plan.sha256,
        message_id=plan.message_id,
        message_id_assigned=parsed.message_id is None,
        in_reply_to=parsed.in_reply_to,
        references=parsed.references,
        subject=parsed.subject,
        from_address=parsed.from_addresses[0] if parsed.from_addresses else None,
        envelope_sender=s.envelope_sender,
        received_at=now,
        kind=MessageKind.QUARANTINED if plan.quarantined else MessageKind.MESSAGE,
        copy_headers=_decision(s).copy_headers,
        trace=plan.trace,
        participants=plan.participants,
    )


def _accepted_event(
    plan: _Planned, message_pk: int, reference: str, addresses: dict[int, str], now: dt.datetime
) -> Event:
    s = plan.submission
    assert plan.audience is not None
    decision = _decision(s)
    routing: dict[str, Any] = {"rule_set": decision.rule_set, "rules": decision.routed_by}
    if decision.vorgang_key is not None:
        routing["vorgang_key"] = decision.vorgang_key
    if plan.quarantined:
        routing["quarantined_by"] = decision.decided_by.label() if decision.decided_by else None
        routing["reason"] = decision.reason
    return Event(
        EventKind.MESSAGE_QUARANTINED if plan.quarantined else EventKind.MESSAGE_ACCEPTED,
        f"backoffice:{s.account.login}",
        now,
        portfolio_id=s.account.portfolio_id,
        vorgang_id=plan.vorgang_id,
        message_id=message_pk,
        detail={
            "gateway_id": plan.gateway_id,
            "vorgang": reference,
            "found": plan.found.value,
            "recipients": list(s.recipients),
            "audience": sorted(addresses[m] for m in plan.audience.members),
            "listener": s.listener,
            "peer": s.peer,
            "message_id": plan.message_id,
            "message_id_assigned": s.parsed.message_id is None,
            "defects": list(s.parsed.defects),
        }
        | routing,
    )


_NO_RULES = Decision(rule_set="none")


def _decision(submission: Submission) -> Decision:
    """The routing decision of a submission; without rules, the decision of an empty rule set."""
    return submission.decision if submission.decision is not None else _NO_RULES


def _quarantined(plan: _Planned, message_pk: int) -> NewQuarantine:
    decision = _decision(plan.submission)
    return NewQuarantine(
        message_pk,
        plan.submission.account.portfolio_id,
        rule=decision.decided_by.label() if decision.decided_by else "",
        reason=decision.reason,
        rule_set=decision.rule_set,
    )
