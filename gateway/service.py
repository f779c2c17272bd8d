"""The composition root: builds the engine and the stages from the settings, runs them, shuts them down.

The order of stages stands here, top to bottom, as they are wired: ingress -> routing -> fan-out -> relay.
Today the service checks its database and waits for a stop signal; the listeners and workers of the
message path join it stage by stage.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from gateway.config import Settings
from gateway.db.engine import create_engine, session_factory
from gateway.db.migrate import require_current
from gateway.logs import configure_logging

log = logging.getLogger("gateway.service")


class Service:
    """One gateway process: ``startup``, ``wait``, ``shutdown`` (uvicorn's Server shape)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = create_engine(
            settings.database_url, echo=settings.database.echo, pool_size=settings.database.pool_size
        )
        self.sessions = session_factory(self.engine)
        self._stop = asyncio.Event()

    async def startup(self) -> None:
        # Refuse an unmigrated database before accepting anything: a message we could not store would
        # otherwise be answered with 451 forever.
        await require_current(self.engine)
        log.info("gateway ready: database %s", self.engine.url.render_as_string(hide_password=True))

    def stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        await self.engine.dispose()
        log.info("gateway stopped")


async def serve(settings: Settings) -> None:
    service = Service(settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, service.stop)
    try:
        await service.startup()
        await service.wait()
    finally:
        await service.shutdown()


def run(settings: Settings) -> None:
    """Run the gateway in the foreground until SIGTERM or SIGINT; return normally on a clean stop."""
    configure_logging(settings.logging.level, settings.logging.format)
    asyncio.run(serve(settings))
