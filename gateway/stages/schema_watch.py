"""Noticing that another node migrated the database past this one: a look at the schema revision every
``[database] schema_check_interval`` seconds (30), with one warning in the log and a gauge in /metrics.

A node checks the schema when it starts (``gateway.db.schema_state.require_current``). During a rolling
upgrade on PostgreSQL (docs/deploy.md, Upgrading) node A runs ``gateway db upgrade`` while B and C go on
with the older code. A release's migrations only add (unless its notes say otherwise), so B and C keep
working; but nobody should forget that they are behind, so each says so within a minute: the log names
both revisions and what to do, ``gateway_schema_newer_than_node`` turns 1, and /readyz adds a warning
(gateway.web.readiness; still 200, as taking B and C out of service would leave A alone).

Each look is one SELECT on the writer's connection. A database that is away is the other stages' and
/readyz's to report; the watch looks again at its next turn.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.exc import SQLAlchemyError

from gateway.db.revisions import shipped
from gateway.db.schema_state import stored_revision
from gateway.db.writer import Writer
from gateway.metrics import Metrics

log = logging.getLogger("gateway.stages.schema_watch")


class SchemaWatch:
    """``run()`` looks at the database's schema revision every ``interval`` seconds until cancelled;
    ``newer`` is the revision while it is one this node does not know, else None."""

    def __init__(self, writer: Writer, interval: float, metrics: Metrics) -> None:
        self.writer = writer
        self.interval = interval
        self.metrics = metrics
        self.newer: str | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.look()
            except (SQLAlchemyError, OSError) as exc:
                log.debug("schema revision not read (the database did not answer): %s", exc)
            except Exception:
                # A bug here must not stop the gateway (service.py stops it when a stage ends).
                log.exception("schema revision not read; looking again in %.0f s", self.interval)
            await asyncio.sleep(self.interval)

    async def look(self) -> str | None:
        """Read the revision once; log and set the gauge when it turned unknown (or known again)."""
        revision = await self.writer.run(stored_revision)
        schema = shipped()
        newer = revision if revision is not None and revision not in schema.known else None
        if newer is not None and newer != self.newer:
            log.warning(
                "the database's schema is at revision %s, newer than this node's %s: another node "
                "migrated it; upgrade this node (docs/deploy.md, Upgrading). It goes on working "
                "meanwhile, as a release's migrations only add unless its notes say otherwise",
                newer,
                schema.head,
                extra={"revision": newer, "node_revision": schema.head},
            )
        elif newer is None and self.newer is not None:
            log.info(
                "the database's schema is at revision %s again, which this node knows",
                revision,
                extra={"revision": revision, "node_revision": schema.head},
            )
        self.newer = newer
        self.metrics.schema_newer.set(0 if newer is None else 1)
        return newer
