"""Reads mail received over SMTP in worker processes, within a time budget, so the event loop never parses.

Every byte a client sends at the end of DATA is untrusted, and Python's MIME parser is slow on hostile
input (thousands of parts, deep nesting): a few such mails parsed on the event loop froze every session
of both listeners for tens of seconds (issue 12, item 2). A thread would not help, because the parser
holds the GIL. So each listener has a :class:`ParsePool` of a few worker processes, and a
:class:`MailReader` that sends it the two jobs the listeners need:

- :func:`read_submission`: the header facts of a back office's message (:func:`parse_message`);
- :func:`read_arrival`: the header facts of a mail at the MX listener, what kind of mail it is (answer,
  auto-reply, bounce, loop) and, for a bounce, what its delivery report says, from one parse.

Their results cross the process boundary as picklable frozen dataclasses. A job gets ``budget`` seconds
from the moment it asks for a worker: waiting for a free worker counts, so that a burst of costly mail
answers 451 4.3.0 ("try again later") instead of queueing without end. A worker still busy when its job's
budget is spent is killed and replaced, so one message that never finishes cannot clog the pool. The
listeners have a pool each: a flood of mail at the MX listener never delays a back office's submission.

Workers are started through the ``forkserver`` method: forking the gateway itself, which runs threads
(the database writer, DNS), is unsafe, and a fresh interpreter per replacement would cost more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import select
import signal
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.domain.answers import Classification, DeliveryReport, Kind, read_arrival_kind
from gateway.domain.parsing import ParsedMessage, parse_message
from gateway.errors import NotRead

__all__ = [
    "Arrival",
    "MailReader",
    "NotRead",
    "ParsePool",
    "read_arrival",
    "read_submission",
]

log = logging.getLogger("gateway.stages.parsepool")

T = TypeVar("T")

# A worker that does not come up in this time is a broken system (no fork, no memory): startup fails.
_START_TIMEOUT = 60.0
# How much lower the workers' CPU priority is than the gateway's own.
WORKER_NICENESS = 5
# A larger message reaches its worker through a temporary file rather than a pickle: the pickle would be
# a second copy of the whole message in the gateway's memory for as long as the worker reads it, which
# doubled what a DATA costs (issue 12: RSS growth per message below twice its size).
SPILL_OVER = 256 * 1024
# After a failed replacement, the next try waits this long rather than fork in a tight loop.
_RESPAWN_PAUSE = 1.0


@dataclass(frozen=True, slots=True)
class Arrival:
    """What the MX listener reads from one mail: header facts, kind, and the delivery report of a bounce."""

    parsed: ParsedMessage
    classification: Classification
    report: DeliveryReport | None


# --- the jobs (run in a worker process) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spilled:
    """A message handed to its worker as a file (see SPILL_OVER), named by its path."""

    path: str


def _content(mail: bytes | Spilled) -> bytes:
    if isinstance(mail, Spilled):
        with open(mail.path, "rb") as spilled:
            return spilled.read()
    return mail


def read_submission(mail: bytes | Spilled, vorgang_header: str) -> ParsedMessage:
    """A back office's message: its header facts."""
    return parse_message(_content(mail), vorgang_header=vorgang_header)


def read_arrival(mail: bytes | Spilled, envelope_sender: str, max_received: int) -> Arrival:
    """A mail at the MX listener: its header facts, its kind and (bounces only) its delivery report."""
    raw = _content(mail)
    classification, report = read_arrival_kind(
        raw, envelope_sender=envelope_sender, max_received=max_received
    )
    return Arrival(parse_message(raw), classification, report if classification.kind is Kind.BOUNCE else None)


def _worker_started(gateway: int) -> None:
    # Ctrl-C in a terminal signals the whole process group; the gateway decides when its workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Below the serving process: on a busy machine, sessions are answered before hostile mail is read.
    os.nice(WORKER_NICENESS)
    # A worker holds both ends of its job queue, so it would wait for jobs for ever after the gateway
    # was killed (kill -9, OOM killer); it watches the gateway's process and ends with it.
    try:
        watched = os.pidfd_open(gateway)
    except ProcessLookupError:
        os._exit(0)
    threading.Thread(target=_end_with, args=(watched,), name="watch-gateway", daemon=True).start()


def _end_with(pidfd: int) -> None:
    select.select([pidfd], [], [])  # readable once the process has ended
    os._exit(0)


# --- the pool --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Worker:
    """One worker process, in an executor of its own so that it can be killed without the others."""

    executor: ProcessPoolExecutor
    pid: int


class ParsePool:
    """``workers`` processes that run jobs for one listener, each job within ``budget`` seconds."""

    def __init__(self, name: str, *, workers: int, budget: float) -> None:
        if workers < 1:
            raise ValueError(f"a parse pool needs at least one worker, not {workers}")
        self.name = name
        self.workers = workers
        self.budget = budget
        self._context = multiprocessing.get_context("forkserver")
        # The fork server imports what a worker needs once; every worker forked from it starts with it.
        # multiprocessing also has each worker run the main script again: for the console script that
        # is `from gateway.cli import main`, which only loads the root group (the command table is lazy).
        # Nothing else is preloaded: the workers need neither SQLAlchemy nor the stages, and importing
        # them cost every `gateway serve` start about a second of CPU and each worker their memory.
        self._context.set_forkserver_preload(["gateway.cli", "gateway.stages.parsepool"])
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: set[_Worker] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.replaced = 0  # workers killed over their budget or found dead; for logs and tests

    async def start(self) -> None:
        async with asyncio.timeout(_START_TIMEOUT):
            started = await asyncio.gather(*(self._spawn() for _ in range(self.workers)))
        for worker in started:
            self._idle.put_nowait(worker)
        log.info(
            "parse pool %s: %d worker(s) (pid %s), %.1f s per message",
            self.name,
            self.workers,
            ", ".join(str(w.pid) for w in started),
            self.budget,
            extra={"listener": self.name, "workers": [w.pid for w in started]},
        )

    async def run(self, job: Callable[..., T], *args: Any) -> T:
        """``job(*args)`` in a worker; :class:`NotRead` when the budget is spent or the worker died."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.budget
        try:
            async with asyncio.timeout_at(deadline):
                worker = await self._idle.get()
        except TimeoutError:
            raise NotRead(f"no {self.name} parse worker free within {self.budget:.1f} s") from None
        # The job runs to its end (result, budget or death) even if the session is cancelled meanwhile
        # (the client hung up): only then is the worker free again, or replaced.
        task = asyncio.ensure_future(self._supervise(worker, deadline, job, args))
        self._background.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    async def _supervise(self, worker: _Worker, deadline: float, job: Callable[..., T], args: Any) -> T:
        try:
            future: Future[T] = worker.executor.submit(job, *args)
            async with asyncio.timeout_at(deadline):
                result = await asyncio.wrap_future(future)
        except TimeoutError:
            self._replace(worker, f"still busy after its budget of {self.budget:.1f} s")
            raise NotRead(f"not read within {self.budget:.1f} s") from None
        except BrokenProcessPool:
            self._replace(worker, "died")
            raise NotRead("the parse worker died") from None
        except Exception as exc:
            # The job itself failed (the readers promise not to, but bytes are bytes): the worker is
            # fine and goes back; the client is told to retry, and the log says why.
            self._idle.put_nowait(worker)
            log.error("a %s parse job failed: %r", self.name, exc)
            raise NotRead(f"the parse failed ({type(exc).__name__})") from exc
        self._idle.put_nowait(worker)
        return result

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the session that waited for it may be gone

    def _replace(self, worker: _Worker, why: str) -> None:
        log.warning("parse worker %d of %s %s; replacing it", worker.pid, self.name, why)
        self.replaced += 1
        self._all.discard(worker)
        _kill(worker)
        if not self._closed:
            task = asyncio.ensure_future(self._respawn())
            self._background.add(task)
            task.add_done_callback(self._finished)

    async def _respawn(self) -> None:
        while not self._closed:
            try:
                worker = await self._spawn()
            except Exception:
                log.exception("could not start a parse worker for %s; trying again", self.name)
                await asyncio.sleep(_RESPAWN_PAUSE)
                continue
            if self._closed:
                _kill(worker)
                return
            self._idle.put_nowait(worker)
            return

    async def _spawn(self) -> _Worker:
        # Starting a process waits for the fork server to answer: in a thread, not on the event loop.
        executor, started = await asyncio.to_thread(self._start_process)
        try:
            # The first job starts the process and says which one it is, so that it can be killed.
            pid = await asyncio.wrap_future(started)
        except BaseException:
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        worker = _Worker(executor, pid)
        self._all.add(worker)
        return worker

    def _start_process(self) -> tuple[ProcessPoolExecutor, Future[int]]:
        executor = ProcessPoolExecutor(
            1, mp_context=self._context, initializer=_worker_started, initargs=(os.getpid(),)
        )
        return executor, executor.submit(os.getpid)

    async def close(self) -> None:
        """Stop every worker; jobs still running are cut off (their sessions were closed before)."""
        self._closed = True
        for task in list(self._background):
            task.cancel()
        workers = list(self._all)
        self._all.clear()
        for worker in workers:
            _kill(worker)
        for worker in workers:
            await asyncio.to_thread(worker.executor.shutdown, wait=True, cancel_futures=True)


def _kill(worker: _Worker) -> None:
    with contextlib.suppress(ProcessLookupError):  # it died by itself
        os.kill(worker.pid, signal.SIGKILL)
    worker.executor.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class MailReader:
    """What a listener's DATA handler reads from a message, through its pool."""

    pool: ParsePool
    vorgang_header: str = "X-Gateway-Vorgang"
    max_received: int = 30

    async def submission(self, raw: bytes) -> ParsedMessage:
        return await self._read(read_submission, raw, self.vorgang_header)

    async def arrival(self, raw: bytes, envelope_sender: str) -> Arrival:
        return await self._read(read_arrival, raw, envelope_sender, self.max_received)

    async def _read(self, job: Callable[..., T], raw: bytes, *args: Any) -> T:
        if len(raw) <= SPILL_OVER:
            return await self.pool.run(job, raw, *args)
        path = await asyncio.to_thread(_spill, raw)
        try:
            return await self.pool.run(job, Spilled(path), *args)
        finally:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(os.unlink, path)


def _spill(raw: bytes) -> str:
    """Write ``raw`` to a private temporary file (mode 0600) and return its path."""
    fd, path = tempfile.mkstemp(prefix="gateway-mail-", suffix=".eml")
    with os.fdopen(fd, "wb") as spilled:
        spilled.write(raw)
    return path
