"""The previews this console node is computing or has computed: background tasks, bounded, kept a while.

A preview of a change over a big portfolio takes longer than a page may (issue 15: 100 ms), so the
form is answered at once and the planning runs here, as a task of the console's event loop. The bounds
keep a few admins from taking the process's time from mail: at most ``computing`` previews plan at once
on this node, and one per account; a further one is refused (the page says to try again, or links to
the account's own one still computing), never queued without end. A preview is found by a random id,
and only by the account that started it and under its portfolio; it is forgotten ``keep`` seconds
after it was started. It lives in this process's memory only: another node (behind a proxy that spreads
requests) or a restarted gateway does not know it, and the page says to start again.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.admin.api import ChangePreview
from gateway.errors import DirectoryConflict, InputError, NotFound

log = logging.getLogger("gateway.web")

COMPUTING = 2  # previews planning at once on one console node
KEEP = 300.0  # seconds a preview is kept after it was started
KEPT = 200  # previews kept at most (the oldest go first), whatever their age

# Plans the preview, telling ``checked`` the messages planned so far after each batch.
Planning = Callable[[Callable[[int], None]], Awaitable[ChangePreview]]


@dataclass(frozen=True, slots=True)
class Shown:
    """What the preview's page shows around the figures, fixed when the form was checked."""

    action: str  # where the confirmation posts (the form's own path)
    title: str
    back: str
    carried: dict[str, str]  # the form's fields, sent again with the confirmation
    directory: str  # the fingerprint of the directory the change was checked against
    stale: bool  # a confirmation found the directory changed: this is the new preview
    changes: tuple[str, ...]  # each step of the change, in the words of the form's language


@dataclass(eq=False)
class KeptPreview:
    id: str
    account_id: int
    portfolio: str
    shown: Shown
    started: float
    checked: int = 0
    result: ChangePreview | None = None
    problem: str | None = None  # the directory's refusal found while planning, in its own words
    failed: bool = False  # anything else went wrong; the log has why, the page says only that
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.result is not None or self.problem is not None or self.failed


class Busy(Exception):
    """No preview may start now; ``yours`` is the account's own one still computing, if that is why."""

    def __init__(self, yours: KeptPreview | None) -> None:
        super().__init__("too many previews computing")
        self.yours = yours


class PreviewTasks:
    def __init__(
        self,
        *,
        computing: int = COMPUTING,
        keep: float = KEEP,
        kept: int = KEPT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.computing = computing
        self.keep = keep
        self.kept = kept
        self.clock = clock
        self._previews: dict[str, KeptPreview] = {}

    def running(self) -> list[KeptPreview]:
        return [p for p in self._previews.values() if not p.done]

    def start(self, account_id: int, portfolio: str, shown: Shown, planning: Planning) -> KeptPreview:
        """Start planning in the background and keep the preview; ``Busy`` when over a bound."""
        self._forget_old()
        running = self.running()
        yours = next((p for p in running if p.account_id == account_id), None)
        if yours is not None or len(running) >= self.computing:
            raise Busy(yours)
        # 128 random bits: an id cannot be guessed, and it is checked against the account anyway.
        preview = KeptPreview(secrets.token_urlsafe(16), account_id, portfolio, shown, self.clock())
        self._previews[preview.id] = preview
        preview.task = asyncio.create_task(self._plan(preview, planning), name=f"preview {preview.id[:6]}")
        while len(self._previews) > self.kept:
            self._drop(next(p for p in self._previews.values() if p is not preview))
        return preview

    def find(self, preview_id: str, account_id: int, portfolio: str) -> KeptPreview | None:
        """The preview ``preview_id`` if this account started it under this portfolio and it is kept."""
        self._forget_old()
        preview = self._previews.get(preview_id)
        if preview is None or preview.account_id != account_id or preview.portfolio != portfolio:
            return None
        return preview

    async def close(self) -> None:
        """Stop every preview still planning (the gateway shuts down)."""
        tasks = [p.task for p in self._previews.values() if p.task is not None and not p.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._previews.clear()

    async def _plan(self, preview: KeptPreview, planning: Planning) -> None:
        def checked(n: int) -> None:
            preview.checked = n

        try:
            preview.result = await planning(checked)
            preview.checked = preview.result.preview.messages
        except (DirectoryConflict, InputError, NotFound) as exc:
            # The directory changed between the form and the planning: the same words a form shows.
            preview.problem = str(exc)
        except Exception:
            log.exception("preview %s of portfolio %s failed", preview.id[:6], preview.portfolio)
            preview.failed = True

    def _forget_old(self) -> None:
        limit = self.clock() - self.keep
        for preview in [p for p in self._previews.values() if p.started < limit]:
            self._drop(preview)

    def _drop(self, preview: KeptPreview) -> None:
        if preview.task is not None and not preview.task.done():
            preview.task.cancel()  # one that has planned this long is stuck: nobody will see it
        self._previews.pop(preview.id, None)
