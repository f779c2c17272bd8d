"""Reconciliation: after a directory change, brings every copy of the portfolio's messages in line.

A directory change that can change audiences records a reconcile run (``gateway.db.reconcile``). This
worker takes an open run with a lease and goes through the portfolio's messages batch by batch, each
batch one transaction that plans every message from what it reads (``gateway.domain.reconcile``) and
stores the plan: back-filled copies as pending, copies nothing allows any more as ``revoking``. The
fan-out then writes the one and removes the other from every folder; this worker only wakes it.

The run's cursor (the last message id done) is committed with each batch, so a gateway stopped or killed
mid-run goes on from there: the same node takes its own run back at once, another node after the lease.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from gateway.config import ReconcileSettings
from gateway.db import reconcile as db
from gateway.db.reconcile import BatchDone, RunLease
from gateway.db.writer import Writer
from gateway.errors import NotFound
from gateway.workers import work_until_cancelled

log = logging.getLogger("gateway.stages.reconcile")


class Reconciler:
    """The reconcile worker: ``run()`` loops until cancelled; ``wake()`` says a run may be waiting."""

    def __init__(
        self,
        writer: Writer,
        settings: ReconcileSettings,
        *,
        node: str,
        on_copies: Callable[[], None] | None = None,
    ) -> None:
        self.writer = writer
        self.settings = settings
        self.node = node
        self.on_copies = on_copies
        self._wake = asyncio.Event()
        self._run: RunLease | None = None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        await work_until_cancelled(
            self.run_once, self._wake, poll_interval=self.settings.poll_interval, log=log, name="reconcile"
        )

    async def run_once(self, run_id: int | None = None) -> int:
        """Reconcile one batch of an open run (``run_id``, or any); how many messages it went through
        (1 for the step that closes a run, 0 when there was nothing to do)."""
        done = await self.step(run_id)
        if done is None:
            return 0
        return done.messages or int(done.finished)

    async def step(self, run_id: int | None = None) -> BatchDone | None:
        """One batch, or None when no open run (or not ``run_id``) is free for this node."""
        if self._run is not None and run_id is not None and self._run.id != run_id:
            self._run = None
        if self._run is None:
            self._run = await self.writer.run(
                db.take_run, self.node, dt.datetime.now(dt.UTC), self.settings.lease, run_id
            )
            if self._run is None:
                return None
            log.info("reconciling portfolio %s (run %d)", self._run.portfolio, self._run.id)
        run = self._run
        try:
            done = await self.writer.run(
                db.work_batch,
                run,
                self.node,
                dt.datetime.now(dt.UTC),
                self.settings.lease,
                self.settings.batch_size,
            )
        except Exception as exc:
            # The batch rolled back; the run keeps its cursor and this node's lease, and the worker
            # loop tries again after its pause. The error is shown by `gateway reconcile status`.
            self._run = None
            await self.writer.run(
                db.record_failure, run.id, f"{type(exc).__name__}: {exc}", dt.datetime.now(dt.UTC)
            )
            raise
        if done.lost_lease or done.finished:
            self._run = None
        if done.finished:
            log.info("reconciled portfolio %s (run %d): %d message(s)", run.portfolio, run.id, done.processed)
        if done.copies_changed and self.on_copies is not None:
            self.on_copies()
        return done


async def work_run(
    writer: Writer,
    settings: ReconcileSettings,
    run_id: int,
    *,
    node: str,
    on_progress: Callable[[db.RunView], None],
    wait: float = 1.0,
) -> db.RunView:
    """Work the run ``run_id`` to its end in this process, batch by batch; when another process holds
    it (a running gateway), follow its progress instead. ``on_progress`` sees the run after each step."""
    worker = Reconciler(writer, settings, node=node)
    while True:
        done = await worker.step(run_id)
        views = await writer.run(lambda c: db.runs(c, run_id=run_id, recent=1))
        if not views:
            raise NotFound(f"reconcile run {run_id} is gone (its portfolio was deleted)")
        view = views[0]
        on_progress(view)
        if view.state != "open":
            return view
        if done is None:
            await asyncio.sleep(wait)
