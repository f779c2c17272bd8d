"""The relay: members' mail to the back offices' SMTP servers, retried, or reported back with a DSN.

What it carries: members' replies (and Vorgänge they open), and read notifications (RFC 8098 MDNs) that
flag sync queues when a member reads a back-office mail that asked for one. Each mail is sent on its own
connection (no client shared between concurrent sends), with the TLS and AUTH of its back office. A
temporary failure (4xx, a refused or dropped connection, a timeout) is retried with exponential backoff
until the mail's lifetime ends; a permanent one (5xx), or the end of the lifetime, puts a delivery
status notification (RFC 3464) into the mailbox of the member who wrote, saying what failed and why.
The DSN is a copy with an id derived from the relay row, so a crash between writing it and recording
the failure never writes a second one.

A mail from the null reverse-path (a read notification) never produces a DSN: nothing answers a
notification (RFC 5321 §4.5.5, RFC 8098 §3), and the member did not write it. It is marked failed,
with the reason in the event log.

Several nodes share the queue, and a node can stall (frozen, paused) past its lease while another
takes the mail over. So the relay confirms its leases in the database before it connects, again once
connected (right before MAIL FROM), and before it puts a DSN into a mailbox, and sends or writes
nothing for a lease it lost; its records apply only under its own lease (``gateway.db.relayqueue``,
docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import aiosmtplib
from sqlalchemy import Connection

from gateway.config import RelaySettings
from gateway.db import relayqueue
from gateway.db.events import Event, EventKind, append_events
from gateway.db.models import RelayState
from gateway.db.relayqueue import RelayJob, RelayResult
from gateway.db.writer import Writer
from gateway.domain.dsn import build_failure_report
from gateway.domain.retry import backoff, describe
from gateway.mailbox import Mailbox, MailboxOwner
from gateway.metrics import Metrics
from gateway.workers import work_until_cancelled

log = logging.getLogger("gateway.stages.relay")

BATCH = 20
_ENHANCED = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


# The label of an attempt's result in gateway_relay_attempts_total.
_RESULTS = {
    RelayState.SENT: "sent",
    RelayState.PENDING: "retry",
    RelayState.FAILED: "failed",
    RelayState.DROPPED: "failed",
}


class Relay:
    """The relay worker: ``run()`` loops until cancelled; ``wake()`` says a mail is waiting."""

    def __init__(
        self,
        writer: Writer,
        mailbox: Mailbox,
        settings: RelaySettings,
        *,
        node: str,
        hostname: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.writer = writer
        self.metrics = metrics or Metrics()
        self.mailbox = mailbox
        self.settings = settings
        self.node = node
        self.hostname = hostname
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        released = await self.writer.run(relayqueue.release_own_leases, self.node, dt.datetime.now(dt.UTC))
        if released:
            log.info("took back %d mail(s) to back offices this node had started before it stopped", released)

    async def run(self) -> None:
        await work_until_cancelled(
            self.run_once, self._wake, poll_interval=self.settings.poll_interval, log=log, name="relay"
        )

    async def run_once(self) -> int:
        """Send the mail that is due; returns how many were taken.

        Each mail is sent and recorded on its own (CONVENTIONS.md 4): a mail that went out is marked
        sent at once, whatever happens to the others of the batch, so it is never sent again.
        """
        now = dt.datetime.now(dt.UTC)
        jobs = await self.writer.run(relayqueue.claim, self.node, now, self.settings.lease, BATCH)
        if not jobs:
            return 0
        # Fencing: the last word of the database right before anything goes out. A node that stalled
        # since its claim (longer than the lease) finds the mail taken over, and leaves it to the other.
        held = await self._confirm(jobs)
        await asyncio.gather(*(self._one(job) for job in jobs if job.id in held))
        return len(jobs)

    async def _confirm(self, jobs: Sequence[RelayJob]) -> set[int]:
        held = await self.writer.run(
            relayqueue.confirm, jobs, self.node, dt.datetime.now(dt.UTC), self.settings.lease
        )
        for job in jobs:
            if job.id not in held:
                log.warning(
                    "relay of %s left to another node: its lease was taken over while this node waited",
                    job.relay_message_id,
                )
        return held

    async def _one(self, job: RelayJob) -> None:
        try:
            result = await self._attempt(job)
        except Exception as exc:
            # _attempt answers every failure of the mail itself; this is a failure of the gateway (a bug,
            # a report that raised in a new way). The mail is retried with backoff like any other.
            log.exception("relay of %s failed unexpectedly", job.relay_message_id)
            result = self._retry(job, f"unexpected error: {describe(exc)}")
        if result is None:
            return  # the lease was lost before a DSN was written: the node that took it over goes on
        self.metrics.relay_attempts.labels(_RESULTS[result.state]).inc()
        try:
            await self.writer.run(_record, [result], self.node)
        except Exception as exc:
            # Nothing recorded: the lease keeps the mail from everyone until it ends, then it is tried
            # again. If it was sent, the back office gets it twice; the database was away, not our choice.
            log.error("the outcome of relaying %s was not recorded: %s", job.relay_message_id, exc)

    async def _attempt(self, job: RelayJob) -> RelayResult | None:
        try:
            reply = await self._send(job)
        except _LeaseLost:
            return None  # the node that took the mail over sends it and records it
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [e.code for e in exc.recipients]
            text = "; ".join(f"{e.code} {e.message}" for e in exc.recipients)
            return await self._failed(job, text, permanent=all(500 <= c < 600 for c in codes))
        except aiosmtplib.SMTPResponseException as exc:
            return await self._failed(job, f"{exc.code} {exc.message}", permanent=500 <= exc.code < 600)
        except (aiosmtplib.SMTPException, OSError, TimeoutError, _TargetProblem) as exc:
            return await self._failed(job, str(exc) or type(exc).__name__, permanent=False)
        except Exception as exc:
            # Not a failure anyone foresaw for sending mail: temporary, so that a fix (or a changed
            # directory) lets the mail go out, and said as it is, for `gateway queue show`.
            log.exception("relay of %s failed unexpectedly", job.relay_message_id)
            return await self._failed(job, f"unexpected error: {describe(exc)}", permanent=False)
        log.info(
            "relayed %s to %s (attempt %d): %s",
            job.relay_message_id,
            ", ".join(job.recipients),
            job.attempts + 1,
            reply,
        )
        return RelayResult(job, RelayState.SENT, reply=reply)

    def _retry(self, job: RelayJob, error: str) -> RelayResult:
        retry_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=backoff(job.attempts + 1, self.settings))
        return RelayResult(job, RelayState.PENDING, error=error, retry_at=retry_at)

    async def _send(self, job: RelayJob) -> str:
        target = job.target
        if target is None:
            raise _TargetProblem("the back office has no relay settings (relay: host …) in the directory")
        password = None
        if target.password_file is not None:
            password = await _password(target.password_file, target.backoffice_name)
        # What aiosmtplib.send does, without its refusal of an empty sender for raw bytes: a read
        # notification must go out as MAIL FROM:<> (RFC 8098 §3), which SMTP.sendmail writes for "".
        client = aiosmtplib.SMTP(
            hostname=target.host,
            port=target.port,
            use_tls=target.tls == "tls",
            start_tls=target.tls == "starttls",
            username=target.login,
            password=password,
            timeout=float(target.timeout),
            local_hostname=self.hostname,
        )
        async with client:
            # Fencing again after the greeting (connect() has done STARTTLS and AUTH where configured;
            # EHLO is done here if it was not): a node can stall in the handshake (a slow back office,
            # a frozen process) past its lease while another node sends the mail. The check sits right
            # before MAIL FROM, the first command that commits the back office to anything.
            if client.is_ehlo_or_helo_needed:
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
            if not await self._confirm([job]):
                raise _LeaseLost
            errors, message = await client.sendmail(job.envelope_sender, list(job.recipients), job.data)
        if errors:
            # Some recipients refused, others taken: the back office has the mail; say who refused.
            refused = "; ".join(f"{rcpt}: {resp.code} {resp.message}" for rcpt, resp in errors.items())
            log.warning("relayed %s, but refused for %s", job.relay_message_id, refused)
        return f"250 {message}"  # no exception: the server took the mail with a 2xx

    async def _failed(self, job: RelayJob, error: str, *, permanent: bool) -> RelayResult | None:
        """What became of a failed attempt: retried, failed (with a DSN for the member who wrote), or
        None when the lease was taken over before the DSN could be written (nothing to record)."""
        now = dt.datetime.now(dt.UTC)
        retry_at = now + dt.timedelta(seconds=backoff(job.attempts + 1, self.settings))
        if not permanent and retry_at < job.expires_at:
            log.warning(
                "relay of %s to %s failed (attempt %d), retrying at %s: %s",
                job.relay_message_id,
                ", ".join(job.recipients),
                job.attempts + 1,
                retry_at.isoformat(timespec="seconds"),
                error,
            )
            return RelayResult(job, RelayState.PENDING, error=error, retry_at=retry_at)
        if not job.envelope_sender:
            # A notification (null reverse-path): nobody gets a report about it (RFC 5321 §4.5.5).
            log.warning(
                "notification %s not delivered (attempt %d), given up: %s",
                job.relay_message_id,
                job.attempts + 1,
                error,
            )
            return RelayResult(job, RelayState.FAILED, error=error)
        # The server's own enhanced code says most ("5.1.1": no such mailbox); 4.4.7: time ran out.
        given = _ENHANCED.search(error)
        status = (given.group(1) if given and given.group(1)[0] == "5" else "5.0.0") if permanent else "4.4.7"
        action = "failed"
        explanation = (
            f"The back office's mail server refused the mail: {error}"
            if permanent
            else f"The back office's mail server could not be reached in time; last error: {error}"
        )
        try:
            if not await self._confirm([job]):
                # Taken over while the attempt ran: the other node reports (or sends), not this one.
                return None
            await self._report(job, status=status, action=action, diagnostic=error, explanation=explanation)
        except ValueError as exc:
            # The report cannot be built from what this mail holds; trying again would not change that.
            log.error(
                "no failure report for %s can be written (%s); giving up on it", job.relay_message_id, exc
            )
            return RelayResult(job, RelayState.FAILED, error=f"{error}; no report written: {exc}")
        except Exception as exc:
            # No report, no giving up: the mail stays queued and the report is tried again.
            log.error("could not put the failure report for %s into a mailbox: %s", job.relay_message_id, exc)
            return RelayResult(
                job, RelayState.PENDING, error=f"{error}; report not written: {exc}", retry_at=retry_at
            )
        log.warning(
            "relay of %s to %s failed for good (attempt %d): %s",
            job.relay_message_id,
            ", ".join(job.recipients),
            job.attempts + 1,
            error,
        )
        return RelayResult(job, RelayState.FAILED, error=error)

    async def _report(
        self, job: RelayJob, *, status: str, action: str, diagnostic: str, explanation: str
    ) -> None:
        headers = job.data.split(b"\r\n\r\n", 1)[0] + b"\r\n"
        now = dt.datetime.now(dt.UTC)
        report = build_failure_report(
            reporting_mta=self.hostname,
            original_envelope_id=None,
            recipient=job.recipients[0],
            status=status,
            action=action,
            diagnostic=diagnostic,
            original_headers=headers,
            to=job.member_address,
            message_id=email.utils.make_msgid(domain=self.hostname),
            date=now,
            explanation=explanation,
        )
        await self.mailbox.append(MailboxOwner(job.portfolio, job.member_address), f"dsn{job.id}", report)


class _LeaseLost(Exception):
    """The relay's lease on a mail was taken over while this node connected: send nothing."""


class _TargetProblem(Exception):
    """The back office of a queued mail has no usable relay settings (a temporary state an admin can fix)."""


async def _password(path: Path, backoffice: str) -> str:
    """The SMTP AUTH password in ``path``, or a _TargetProblem saying what to fix."""
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise _TargetProblem(
            f"the relay password file {path} of back office {backoffice} cannot be read: "
            f"{exc.strerror or exc}"
        ) from exc
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise _TargetProblem(
            f"the relay password file {path} of back office {backoffice} is not UTF-8 text "
            f"(byte {exc.start}); write the password into it as UTF-8"
        ) from exc


_EVENT = {
    RelayState.SENT: EventKind.RELAY_SENT,
    RelayState.PENDING: EventKind.RELAY_DEFERRED,
    RelayState.FAILED: EventKind.RELAY_FAILED,
}


def _record(connection: Connection, results: Sequence[RelayResult], node: str) -> None:
    now = dt.datetime.now(dt.UTC)
    recorded = relayqueue.record(connection, results, now, node=node)
    kept = {id(r) for r in recorded}
    for r in results:
        if id(r) not in kept:
            log.warning(
                "the outcome of relaying %s was not recorded: another node took it over meanwhile",
                r.job.relay_message_id,
            )
    results = recorded
    append_events(
        connection,
        (
            Event(
                _EVENT[r.state],
                f"gateway:{node}",
                now,
                portfolio_id=r.job.portfolio_id,
                member_id=r.job.member_id,
                detail={
                    "relay_message_id": r.job.relay_message_id,
                    "to": list(r.job.recipients),
                    "attempt": r.job.attempts + 1,
                    "reply": r.reply,
                    "error": r.error,
                },
            )
            for r in results
        ),
    )
