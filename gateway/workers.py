"""The loop every queue worker runs: work while there is work, then wait for a wake-up or the poll time.

Fan-out and relay both drain a queue in the database and are woken when the stage before them stored
something; a worker must also outlive a database that is briefly away and its own bugs, because a
worker that stops leaves mail unprocessed while the listeners keep accepting it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.exc import SQLAlchemyError


async def work_until_cancelled(
    run_once: Callable[[], Awaitable[int]],
    wake: asyncio.Event,
    *,
    poll_interval: float,
    log: logging.Logger,
    name: str,
    settle: float = 0.0,
) -> None:
    """Call ``run_once`` (how many items it took) again at once while it finds work; when it finds none,
    wait until ``wake`` is set or ``poll_interval`` passes, then ``settle`` seconds more, so that a burst
    being stored gathers into one batch."""
    while True:
        try:
            busy = await run_once()
        except (SQLAlchemyError, OSError) as exc:
            log.error("%s could not reach the database: %s; retrying", name, exc)
            busy = 0
            await asyncio.sleep(poll_interval)
        except Exception:
            # A bug must not end the worker for good: log it loudly, pause, and go on; the items
            # stay queued and are retried.
            log.exception("%s failed unexpectedly; retrying", name)
            busy = 0
            await asyncio.sleep(poll_interval)
        if busy:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), poll_interval)
            if settle:
                await asyncio.sleep(settle)
        wake.clear()
