"""Fan-out: writes pending copies into members' mailboxes, retries with backoff, holds what keeps failing.

A copy is the stored message with the gateway's headers in front (``gateway.domain.copies``). Writing is
idempotent per copy id (the mailbox finds a copy it wrote before a crash instead of writing it again),
so the order "write, then mark delivered" loses nothing and repeats nothing visible.

The fan-out also carries the database's view of a copy into the mailbox afterwards: flags that must
catch up (``flags_pending``) and copies reconciliation revoked (``revoking``), which it removes from
every folder of the member's mailbox, members move mail, and then marks ``revoked``.

Every job is fenced (docs/scaling.md): right before a batch touches the mailboxes, one
statement confirms that this node still holds each job's lease (``gateway.db.queue.confirm``), and the
jobs it lost, because the node stalled past the lease and another took them over, are dropped
unwritten. Records apply only under the node's own lease, so a late one never overwrites the other's.

Confirmed copies are written by their mailboxes' lanes (``gateway.stages.mailbox_lanes``): the fan-out
takes the next batch while the last one's slowest mailbox is still being written, and what the lanes
wrote is recorded in few transactions. A copy that waited in its lane past ``confirmed_for`` is
confirmed again before its write.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

from sqlalchemy import Connection

from gateway.config import FanoutSettings
from gateway.db import queue
from gateway.db.events import Event, EventKind, append_events
from gateway.db.queue import CopyJob, FlagJob, Outcome, RemovalJob
from gateway.db.writer import Writer
from gateway.domain import gateway_headers as own
from gateway.domain.copies import CopyTemplate, render_copy
from gateway.domain.outbound import address_field
from gateway.domain.parsing import ParsedMessage, parse_message
from gateway.domain.retry import backoff, describe
from gateway.domain.tokens import TokenKeys, make_token, reference_id, reply_address
from gateway.mailbox import Delivery, Flag, Located, Mailbox, MailboxOwner
from gateway.metrics import Metrics
from gateway.stages import notices
from gateway.stages.mailbox_lanes import Lanes, Waiting
from gateway.stages.notices import NoticeSettings
from gateway.workers import work_until_cancelled

J = TypeVar("J")
Job = TypeVar("Job", CopyJob, FlagJob, RemovalJob)
Claim: TypeAlias = Callable[[Connection, str, dt.datetime, float, int], list[J]]

log = logging.getLogger("gateway.stages.fanout")

COALESCE = 0.05
# Seconds a lease confirmation is trusted while the copy waits in its mailbox's lane; older ones are
# confirmed again right before the write. At most this; the service makes it shorter where the node
# settings ask (``confirmed_for``): a node stopped right after its confirmation is taken over no sooner
# than node_timeout - heartbeat_interval later, and its lease lasts ``lease`` from the confirmation.
CONFIRMED_FOR = 1.0


def confirmed_for(*, lease: float, heartbeat_interval: float, node_timeout: float) -> float:
    """How long a confirmation is trusted: CONFIRMED_FOR, or half the shortest time in which another
    node could take the copy over, where that is shorter."""
    return min(CONFIRMED_FOR, lease / 2, max(node_timeout - heartbeat_interval, 0.0) / 2)


@dataclass(frozen=True, slots=True)
class ReplyPath:
    """How copies are answered: the keys that sign reply tokens, and the reply domain."""

    keys: TokenKeys
    reply_domain: str


def copy_bytes(
    job: CopyJob,
    *,
    vorgang_header: str,
    tag_subject: bool,
    reply_path: ReplyPath | None = None,
    parsed: ParsedMessage | None = None,
    templates: dict[tuple[object, ...], CopyTemplate] | None = None,
) -> bytes:
    """A copy of ``job``'s message for its member (DESIGN.md §5 for the reply address).

    ``parsed`` is ``job.raw`` parsed, when the caller has it already (all copies of a message share it);
    ``templates`` keeps the message read for its copies (``CopyTemplate``), when the caller renders
    several copies of one message: each then adds only its own headers.
    """
    headers: list[tuple[str, str | bytes]] = []
    if job.trace is not None:
        # This hop's trace line on top, naming this copy's mailbox only (RFC 5321 4.4).
        headers.append(("Received", job.trace.received(job.address)))
    headers += [
        (own.VORGANG, job.vorgang),
        (own.COPY_ID, job.copy_id),
    ]
    if job.shared_via:
        headers.append((own.SHARED_VIA, job.shared_via))
    # Every X-Gateway-… header and the configured Vorgang header that came with the message go: the
    # copy carries only the gateway's values. Bcc goes too: nobody learns of the blind recipients.
    # (Return-Path and Content-Length with it, see gateway_headers.DROPPED.)
    remove = [vorgang_header, *own.DROPPED]
    if reply_path is not None:
        parsed = parsed or parse_message(job.raw, vorgang_header=vorgang_header)
        token = make_token(reply_path.keys, portfolio=job.portfolio, copy_id=job.copy_id)
        address = reply_address(token, reply_path.reply_domain)
        original = parsed.from_addresses[0] if parsed.from_addresses else ""
        # The name people know the sender by; the address itself where the sender gave no name.
        shown = address_field(parsed.from_display_name or original, address)
        headers += [("From", shown), ("Reply-To", shown)]
        if original:
            original_field = (
                address_field(parsed.from_display_name, original) if parsed.from_display_name else original
            )
            headers.append((own.ORIGINAL_FROM, original_field))
        # The token as a message id too: a reply whose address lost "+TOKEN" still names it (GitLab).
        references = [*parsed.references, reference_id(token, reply_path.reply_domain)]
        headers.append(("References", " ".join(dict.fromkeys(references))))
        remove += own.REPLY_PATH
    if job.copy_headers:
        # Routing rules' changes (rules_file refuses our own headers and the reply path there).
        headers += job.copy_headers.set
        remove += [name for name, _ in job.copy_headers.set] + list(job.copy_headers.strip)
    if job.message_id_assigned and job.message_id:
        # The message came without a Message-ID; the copy carries the one the gateway assigned, so
        # replies can thread to it.
        headers.append(("Message-ID", job.message_id))
        remove.append("Message-ID")
    subject_prefix = f"[{job.vorgang}]" if tag_subject else None
    if templates is None:
        return render_copy(
            job.raw,
            headers=headers,
            remove=remove,
            remove_prefixes=[own.PREFIX],
            subject_prefix=subject_prefix,
        )
    # The same message read with the same removals and prefix: the same template, whoever the member.
    key = (job.message_pk, tuple(remove), subject_prefix)
    template = templates.get(key)
    if template is None:
        template = templates[key] = CopyTemplate.of(
            job.raw, remove=remove, remove_prefixes=[own.PREFIX], subject_prefix=subject_prefix
        )
    return template.render(headers)


class FanOut:
    """The fan-out worker: ``run()`` loops until cancelled; ``wake()`` says new copies are waiting."""

    def __init__(
        self,
        writer: Writer,
        mailbox: Mailbox,
        settings: FanoutSettings,
        *,
        node: str,
        vorgang_header: str,
        tag_subject: bool,
        reply_path: ReplyPath | None = None,
        notices: NoticeSettings | None = None,
        on_notice: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
        trust_confirmation: float = CONFIRMED_FOR,
    ) -> None:
        self.writer = writer
        self.metrics = metrics or Metrics()
        self.notices = notices
        self.on_notice = on_notice
        self._last_sweep = 0.0
        self.mailbox = mailbox
        self.settings = settings
        self.node = node
        self.vorgang_header = vorgang_header
        self.tag_subject = tag_subject
        self.reply_path = reply_path
        self._wake = asyncio.Event()
        self._handed: deque[CopyJob] = deque()
        # When each kind of job was last claimed from the database (copies, flags, removals).
        self._claimed: dict[str, float] = {"copies": 0.0, "flags": 0.0, "removals": 0.0}
        self._recording: asyncio.Future[None] | None = None
        # Copies confirmed for writing wait in their mailbox's lane (gateway.stages.mailbox_lanes), at
        # most batches_in_flight batches of them; what the lanes wrote is recorded in as few
        # transactions as the writer allows (one record for several mailboxes' writes).
        self.lanes = Lanes(
            mailbox,
            limit=settings.batch_size * settings.batches_in_flight,
            group=settings.batch_size,
            confirm=self._confirm_copies,
            written=self._written,
            confirmed_for=min(trust_confirmation, settings.lease / 2),
        )
        self._outcomes: list[Outcome] = []
        self._record_error: Exception | None = None
        self._flush_later: asyncio.TimerHandle | None = None
        # Set when copies are handed over or queued: a fan-out waiting for its lanes goes on to take them.
        self._more = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()
        self._more.set()

    async def _claim(self, what: str, claim: Claim[J], *, due: bool) -> list[J]:
        """Due ``what`` jobs from the database, taken with a lease: at once when ``due``, else once per
        poll interval (handed copies keep the fan-out busy, and the database need not be asked each time)."""
        if not due and time.monotonic() - self._claimed[what] < self.settings.poll_interval:
            return []
        self._claimed[what] = time.monotonic()
        return await self.writer.run(
            claim, self.node, dt.datetime.now(dt.UTC), self.settings.lease, self.settings.batch_size
        )

    def take(self, jobs: list[CopyJob]) -> None:
        """New copies from acceptance in this process, already leased to this node (``HandOff``)."""
        self._handed.extend(jobs)
        self._wake.set()
        self._more.set()

    async def start(self) -> None:
        released = await self.writer.run(queue.release_own_leases, self.node, dt.datetime.now(dt.UTC))
        if released:
            log.info("took back %d copies this node had started before it stopped", released)

    async def run(self) -> None:
        # COALESCE: one queue transaction for a burst keeps the database's write lock free for the
        # acceptance stage most of the time.
        try:
            await work_until_cancelled(
                self.run_once,
                self._wake,
                poll_interval=self.settings.poll_interval,
                log=log,
                name="fan-out",
                settle=COALESCE,
            )
        finally:
            # What the lanes wrote is recorded before the worker stops; copies still waiting in a
            # lane stay leased and are taken again later (a retry looks before it writes).
            await self.lanes.close()
            if self._outcomes or self._recording is not None or self._record_error is not None:
                try:
                    await asyncio.shield(self._flushed())
                except Exception as exc:  # its copies stay leased and are retried: none is lost
                    log.warning("the last copies written were not recorded: %s", exc)

    async def run_once(self) -> int:
        """Take one batch of copies: those handed over by acceptance first, else due ones from the
        queue (which is still read every ``poll_interval`` under load, so retries are not starved);
        render them, confirm their leases and put them into their mailboxes' lanes. While more copies
        wait it returns at once (the lanes write on); otherwise it waits until the lanes have
        written and recorded everything, or until new copies are handed over or queued (``wake``),
        which the next call takes. Returns how many were taken."""
        # Copies handed over or queued from now on are for the next call (this one looks now).
        self._more.clear()
        self._raise_record_error()
        # First, copies that waited too long: given up (before anyone takes them again), or late
        # enough that the back office is told. A look every ten polls is soon enough for that.
        if (
            self.notices is not None
            and time.monotonic() - self._last_sweep >= 10 * self.settings.poll_interval
        ):
            self._last_sweep = time.monotonic()
            swept = await self.writer.run(notices.sweep, self.notices, dt.datetime.now(dt.UTC), self.node)
            if swept.notices and self.on_notice is not None:
                self.on_notice()
        if self._handed and self.lanes.busy:
            await self._gather_handed()
        jobs = [self._handed.popleft() for _ in range(min(len(self._handed), self.settings.batch_size))]
        jobs += await self._claim("copies", queue.claim, due=not jobs)
        flag_jobs = await self._claim("flags", queue.claim_flags, due=not jobs)
        if flag_jobs:
            await self._catch_up_flags(flag_jobs)
        removals = await self._claim("removals", queue.claim_removals, due=not jobs)
        if removals:
            await self._remove(removals)
        if not jobs:
            return len(flag_jobs) + len(removals)
        await self._deliver(jobs)
        # More is waiting when copies were handed over or the queue gave a full batch: take it while
        # the lanes write on. Otherwise wait for them (a caller that runs one batch sees it recorded).
        if not self._handed and len(jobs) < self.settings.batch_size:
            await self._settled()
        return len(jobs)

    async def _gather_handed(self) -> None:
        """While the lanes are busy writing, let handed copies gather into a full batch for up to
        COALESCE seconds: one lease confirmation (a commit) for a batch rather than for every few copies
        an acceptance commit hands over."""
        try:
            async with asyncio.timeout(COALESCE):
                while len(self._handed) < self.settings.batch_size and self.lanes.busy:
                    self._more.clear()
                    await self._more.wait()
        except TimeoutError:
            pass

    async def _settled(self) -> None:
        """Wait until the lanes wrote every copy and it is recorded, or until new copies were handed
        over or queued since this ``run_once`` looked (the next one takes them while the lanes write
        on: a slow mailbox holds back its own copies only). A failed record's error is raised here."""
        if self.lanes.busy and not self._more.is_set():
            lanes = asyncio.ensure_future(self.lanes.settled())
            more = asyncio.ensure_future(self._more.wait())
            try:
                await asyncio.wait((lanes, more), return_when=asyncio.FIRST_COMPLETED)
            finally:
                lanes.cancel()
                more.cancel()
        if self.lanes.busy:
            self._raise_record_error()
        else:
            await self._flushed()

    async def _flushed(self) -> None:
        """Wait until every outcome so far is recorded (a failed record's error is raised here)."""
        self._flush()
        while self._recording is not None:
            # Shielded: a worker cancelled meanwhile (shutdown) does not cancel the record.
            await asyncio.shield(self._recording)
        self._raise_record_error()

    def _raise_record_error(self) -> None:
        error, self._record_error = self._record_error, None
        if error is not None:
            raise error

    def _written(self, results: list[tuple[CopyJob, Located | Exception]]) -> None:
        """A lane's write: its outcomes join those to record. They are recorded together once a batch
        has gathered, or COALESCE seconds after the first (one commit for several mailboxes' writes,
        so the writer stays free for acceptance), or at once when the fan-out waits for them."""
        self._outcomes += [
            self._failed(job, result) if isinstance(result, Exception) else Outcome(job, result.ref)
            for job, result in results
        ]
        if len(self._outcomes) >= self.settings.batch_size:
            self._flush()
        elif self._flush_later is None:
            self._flush_later = asyncio.get_running_loop().call_later(COALESCE, self._flush)

    def _flush(self) -> None:
        """Record every outcome gathered so far in one transaction, then whatever gathered meanwhile,
        unless a record is under way already (it takes the new ones next)."""
        if self._flush_later is not None:
            self._flush_later.cancel()
            self._flush_later = None
        if self._recording is not None or not self._outcomes:
            return

        async def record() -> None:
            try:
                while self._outcomes:
                    outcomes, self._outcomes = self._outcomes, []
                    try:
                        await self._record(outcomes)
                    except Exception as exc:
                        # Not recorded: the copies stay leased and are taken again after the lease (a
                        # retry looks for each before it writes). The worker hears of it (run_once).
                        self._record_error = self._record_error or exc
            finally:
                self._recording = None

        self._recording = asyncio.ensure_future(record())

    async def _confirm(self, kind: queue.JobKind, jobs: Sequence[Job]) -> list[Job]:
        """The jobs whose leases this node still holds, extended (one statement for the batch); the
        others were taken over while this node was away, and are left to the node that took them."""
        held = await self.writer.run(
            queue.confirm, kind, jobs, self.node, dt.datetime.now(dt.UTC), self.settings.lease
        )
        lost = [job.copy_id for job in jobs if job.id not in held]
        if lost:
            log.warning(
                "%d %s job(s) left to another node, their leases taken over while this node waited: %s",
                len(lost),
                kind.value,
                _some(lost),
            )
        return [job for job in jobs if job.id in held]

    async def _confirm_copies(self, jobs: list[CopyJob]) -> list[CopyJob]:
        return await self._confirm(queue.JobKind.COPY, jobs)

    async def _deliver(self, jobs: Sequence[CopyJob]) -> None:
        """Render ``jobs``' copies, confirm their leases and put those still held into their mailboxes'
        lanes (the others are left out: another node took them over). A copy that cannot be rendered
        is a failed outcome at once."""
        # First room in the lanes: the batch is rendered and confirmed only when it can go out, so at
        # most batches_in_flight batches are held, and the confirmation is fresh when they do.
        await self.lanes.room(len(jobs))
        # Each job's bytes to deliver, or the outcome already (a copy that could not be rendered).
        rendered: list[tuple[CopyJob, Delivery | Outcome]] = []
        # The copies of one message differ only in the gateway's headers: read the message once.
        parsed: dict[int, ParsedMessage] = {}
        templates: dict[tuple[object, ...], CopyTemplate] = {}
        for job in jobs:
            try:
                if job.message_pk not in parsed:
                    # Acceptance hands its copies over with the message read already; a copy taken
                    # from the queue is read here, once for all its message's copies in the batch.
                    parsed[job.message_pk] = job.parsed or parse_message(
                        job.raw, vorgang_header=self.vorgang_header
                    )
                data = copy_bytes(
                    job,
                    vorgang_header=self.vorgang_header,
                    tag_subject=self.tag_subject,
                    reply_path=self.reply_path,
                    parsed=parsed[job.message_pk],
                    templates=templates,
                )
            except Exception as exc:  # a message the renderer cannot handle is one failed copy, no more
                rendered.append((job, self._failed(job, exc)))
                continue
            flags = frozenset(
                flag for flag, on in ((Flag.SEEN, job.seen), (Flag.ANSWERED, job.answered)) if on
            )
            owner = MailboxOwner(job.portfolio, job.address)
            rendered.append((job, Delivery(owner, job.copy_id, data, flags, job.first_attempt)))
        # The copies are rendered; now, as late as one statement per batch allows, the lease check.
        # A copy that then waits in its lane longer than CONFIRMED_FOR is checked again before its
        # write. (A node that stalls between the last check and the write itself is the residual
        # window: Maildir's file name, the same on every node, makes its link() collide with the other's.)
        held = {job.id for job in await self._confirm(queue.JobKind.COPY, jobs)}
        confirmed = asyncio.get_running_loop().time()
        failed = [item for job, item in rendered if job.id in held and isinstance(item, Outcome)]
        if failed:
            self._outcomes += failed
            self._flush()
        await self.lanes.put(
            [
                Waiting(job, item, confirmed)
                for job, item in rendered
                if job.id in held and isinstance(item, Delivery)
            ]
        )

    async def _catch_up_flags(self, jobs: Sequence[FlagJob]) -> None:
        """Set on delivered copies the flags the database has for them (clearing stays local)."""

        async def one(job: FlagJob) -> tuple[FlagJob, str | None]:
            flags = _flags(seen=job.seen, answered=job.answered)
            try:
                await self.mailbox.add_flags(MailboxOwner(job.portfolio, job.address), job.copy_id, flags)
            except Exception as exc:
                log.warning("flags of copy %s for %s not set: %s", job.copy_id, job.address, exc)
                return job, describe(exc)
            return job, None

        jobs = await self._confirm(queue.JobKind.FLAGS, jobs)
        results = await asyncio.gather(*(one(job) for job in jobs))
        now = dt.datetime.now(dt.UTC)
        done = [job for job, error in results if error is None]
        failed = [
            (job, error, now + dt.timedelta(seconds=backoff(job.attempts + 1, self.settings)))
            for job, error in results
            if error is not None
        ]
        lost = await self.writer.run(queue.record_flags, done, failed, now, node=self.node)
        done = [job for job in done if job.id not in lost]
        for job in done:
            if job.pending_since is not None:
                self.metrics.flag_latency.observe(max(0.0, (now - job.pending_since).total_seconds()))

    async def _remove(self, jobs: Sequence[RemovalJob]) -> None:
        """Take revoked copies out of every folder of their members' mailboxes; retry what fails."""

        async def one(job: RemovalJob) -> tuple[RemovalJob, int, str | None]:
            try:
                removed = await self.mailbox.remove(MailboxOwner(job.portfolio, job.address), job.copy_id)
            except Exception as exc:
                log.warning("revoked copy %s for %s not removed: %s", job.copy_id, job.address, exc)
                return job, 0, describe(exc)
            return job, removed, None

        jobs = await self._confirm(queue.JobKind.REMOVAL, jobs)
        results = await asyncio.gather(*(one(job) for job in jobs))
        now = dt.datetime.now(dt.UTC)
        done = [job for job, _, error in results if error is None]
        # A removal is never given up: a copy a member may no longer see must go; it waits at most
        # retry_max between attempts, and every failure is in the event log for an admin.
        failed = [
            (job, error, now + dt.timedelta(seconds=backoff(job.attempts + 1, self.settings)))
            for job, _, error in results
            if error is not None
        ]
        events = [
            (
                job.id,
                self._event(EventKind.COPY_REVOKED, job, now, removed=removed)
                if error is None
                else self._event(
                    EventKind.COPY_REVOKE_FAILED, job, now, attempt=job.attempts + 1, error=error
                ),
            )
            for job, removed, error in results
        ]
        await self.writer.run(_record_removals, done, failed, now, events, self.node)

    def _event(self, kind: EventKind, job: CopyJob | RemovalJob, now: dt.datetime, **detail: object) -> Event:
        """An event about one copy: whose, in which Vorgang, and ``detail`` after its id and address."""
        return Event(
            kind,
            f"gateway:{self.node}",
            now,
            portfolio_id=job.portfolio_id,
            member_id=job.member_id,
            vorgang_id=job.vorgang_id,
            message_id=job.message_pk,
            detail={"copy_id": job.copy_id, "to": job.address, **detail},
        )

    @staticmethod
    def _failed(job: CopyJob, exc: Exception) -> Outcome:
        log.warning("copy %s for %s failed: %s", job.copy_id, job.address, exc)
        return Outcome(job, error=describe(exc))

    async def _record(self, outcomes: Sequence[Outcome]) -> None:
        now = dt.datetime.now(dt.UTC)
        retry_at: dict[int, tuple[bool, dt.datetime]] = {}
        events: list[tuple[int, Event]] = []
        for o in outcomes:
            job = o.job
            if o.error is None:
                # A delivery is recorded in the copy's own row (state, mailbox_ref, updated_at); the
                # event log keeps what needs attention, not one row per copy of every message.
                continue
            attempts = job.attempts + 1
            held = attempts >= self.settings.max_attempts
            # A held copy is not given up: its mailbox is tried again every held_retry (one probe per
            # mailbox, gateway.db.queue), and the back office hears of it (gateway.stages.notices).
            wait = self.settings.held_retry if held else backoff(attempts, self.settings)
            retry_at[job.id] = (held, now + dt.timedelta(seconds=wait))
            events.append(
                (
                    job.id,
                    self._event(
                        # Held once; a failed probe of a held mailbox is one more failure.
                        EventKind.COPY_HELD
                        if attempts == self.settings.max_attempts
                        else EventKind.COPY_FAILED,
                        job,
                        now,
                        attempt=attempts,
                        error=o.error,
                    ),
                )
            )
        lost = await self.writer.run(_record, outcomes, now, retry_at, events, self.node)
        # Only what was recorded counts: another node took the rest over and counts it.
        outcomes = [o for o in outcomes if o.job.id not in lost]
        # Counted once recorded: a batch whose record failed is written again, and counted then.
        for o in outcomes:
            if o.error is not None:
                self.metrics.copy_failures.inc()
                continue
            self.metrics.copies_written.inc()
            if o.job.queued_at is not None:
                self.metrics.delivery_latency.observe(max(0.0, (now - o.job.queued_at).total_seconds()))
        _log_written(outcomes)


def _log_written(outcomes: Sequence[Outcome]) -> None:
    """One line per member and batch: how many copies went into the mailbox (failures log their own)."""
    written: Counter[tuple[str, str]] = Counter(
        (o.job.portfolio, o.job.address) for o in outcomes if o.error is None
    )
    for (portfolio, address), count in written.items():
        log.info(
            "wrote %d %s for %s in %s",
            count,
            "copy" if count == 1 else "copies",
            address,
            portfolio,
            extra={"member": address, "portfolio": portfolio, "copies": count},
        )


def _record(
    connection: Connection,
    outcomes: Sequence[Outcome],
    now: dt.datetime,
    retry_at: dict[int, tuple[bool, dt.datetime]],
    events: Sequence[tuple[int, Event]],
    node: str,
) -> frozenset[int]:
    """Record a batch and its events; returns the copies not recorded (no longer this node's)."""
    recorded = queue.record(connection, outcomes, now, retry_at, node=node)
    if recorded.released:
        log.info("%d held copies are due again: their mailboxes took a copy", recorded.released)
    if recorded.lost:
        log.warning(
            "%d copies written by this node were not recorded, taken over or revoked meanwhile: %s",
            len(recorded.lost),
            _some([o.job.copy_id for o in outcomes if o.job.id in recorded.lost]),
        )
    append_events(connection, [event for pk, event in events if pk not in recorded.lost])
    return recorded.lost


def _record_removals(
    connection: Connection,
    done: Sequence[RemovalJob],
    failed: Sequence[tuple[RemovalJob, str, dt.datetime]],
    now: dt.datetime,
    events: Sequence[tuple[int, Event]],
    node: str,
) -> None:
    lost = queue.record_removals(connection, done, failed, now, node=node)
    append_events(connection, [event for pk, event in events if pk not in lost])


def _some(copy_ids: Sequence[str], shown: int = 10) -> str:
    """Copy ids for a log line: the first ``shown``, and how many more."""
    more = len(copy_ids) - shown
    return ", ".join(copy_ids[:shown]) + (f" and {more} more" if more > 0 else "")


def _flags(*, seen: bool, answered: bool) -> frozenset[Flag]:
    return frozenset(flag for flag, on in ((Flag.SEEN, seen), (Flag.ANSWERED, answered)) if on)
