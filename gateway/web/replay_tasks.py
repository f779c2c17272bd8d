"""The rule replays this console node runs or has run: each in a thread of its own, bounded, kept a while.

A replay reads and plans every stored message of its span, which on a big portfolio takes minutes: far
longer than a page may take, and CPU work that must not run on the event loop that serves the SMTP
sessions and the other pages. So the form is answered at once with a page of the replay's own, and the
replay runs in a thread (``asyncio.to_thread``) with its own read-only database connection
(``gateway.db.replay.reading_engine``), reporting its progress after each batch. The bounds, as for the
previews of directory changes (``gateway.web.preview_tasks``): at most ``running`` replays at once on this
node and one per account (a further one is refused, never queued), found only by its random id and only
by the account that started it, forgotten ``keep`` seconds after it started; a forgotten or shut-down
replay is told to stop at its next batch.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import InputError, NotFound
from gateway.routing.replay import Progress, ReplayResult

log = logging.getLogger("gateway.web")

RUNNING = 1  # replays at once on one console node: each keeps a CPU busy
KEEP = 1800.0  # seconds a replay is kept after it was started
KEPT = 20  # replays kept at most (the oldest go first)

# Replays, telling ``progress`` after each batch and asking ``stopped`` before each.
Work = Callable[[Callable[[Progress], None], Callable[[], bool]], ReplayResult]


@dataclass(eq=False)
class KeptReplay:
    id: str
    account_id: int
    started: float
    candidate: str  # the candidate's rule set digest, for the page's heading
    progress: Progress = field(default_factory=lambda: Progress(0, 0, 0.0))
    result: ReplayResult | None = None
    problem: str | None = None  # the replay's refusal (a portfolio gone), in its own words
    failed: bool = False  # anything else went wrong; the log has why, the page says only that
    stop: threading.Event = field(default_factory=threading.Event, repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.result is not None or self.problem is not None or self.failed


class Busy(Exception):
    """No replay may start now; ``yours`` is the account's own one still running, if that is why."""

    def __init__(self, yours: KeptReplay | None) -> None:
        super().__init__("too many replays running")
        self.yours = yours


class ReplayTasks:
    def __init__(
        self,
        *,
        running: int = RUNNING,
        keep: float = KEEP,
        kept: int = KEPT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.running_at_once = running
        self.keep = keep
        self.kept = kept
        self.clock = clock
        self._replays: dict[str, KeptReplay] = {}

    def running(self) -> list[KeptReplay]:
        return [r for r in self._replays.values() if not r.done]

    def start(self, account_id: int, candidate: str, work: Work) -> KeptReplay:
        """Start ``work`` in a thread and keep its replay; ``Busy`` when over a bound."""
        self._forget_old()
        running = self.running()
        yours = next((r for r in running if r.account_id == account_id), None)
        if yours is not None or len(running) >= self.running_at_once:
            raise Busy(yours)
        kept = KeptReplay(secrets.token_urlsafe(16), account_id, self.clock(), candidate)
        self._replays[kept.id] = kept
        kept.task = asyncio.create_task(self._run(kept, work), name=f"replay {kept.id[:6]}")
        while len(self._replays) > self.kept:
            self._drop(next(r for r in self._replays.values() if r is not kept))
        return kept

    def find(self, replay_id: str, account_id: int) -> KeptReplay | None:
        self._forget_old()
        kept = self._replays.get(replay_id)
        if kept is None or kept.account_id != account_id:
            return None
        return kept

    async def close(self) -> None:
        """Stop every replay still running (the gateway shuts down) and wait for their threads."""
        for kept in self._replays.values():
            kept.stop.set()
        tasks = [r.task for r in self._replays.values() if r.task is not None and not r.task.done()]
        await asyncio.gather(*tasks, return_exceptions=True)
        self._replays.clear()

    async def _run(self, kept: KeptReplay, work: Work) -> None:
        def progress(p: Progress) -> None:
            kept.progress = p  # one assignment: the page reads a whole Progress, old or new

        try:
            kept.result = await asyncio.to_thread(work, progress, kept.stop.is_set)
        except (InputError, NotFound) as exc:
            kept.problem = str(exc)
        except Exception:
            log.exception("rule replay %s failed", kept.id[:6])
            kept.failed = True

    def _forget_old(self) -> None:
        limit = self.clock() - self.keep
        for kept in [r for r in self._replays.values() if r.started < limit]:
            self._drop(kept)

    def _drop(self, kept: KeptReplay) -> None:
        kept.stop.set()  # a thread cannot be cancelled: it ends at its next batch
        self._replays.pop(kept.id, None)
