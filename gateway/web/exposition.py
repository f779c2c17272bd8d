"""The /metrics answer: the process's instruments plus the stored queues, in Prometheus' text format.

The stored state (``gateway.db.gauges``) is read at most once per ``cache_seconds``: Prometheus, a
second Prometheus and a curl by hand asking at once cost one read. When the database cannot answer, the
instruments are still served and ``gateway_stored_state_up`` is 0; the last figures are not repeated as
if they were current.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.db.gauges import StoredState
from gateway.metrics import Metrics

log = logging.getLogger("gateway.web")

CACHE_SECONDS = 5.0
READ_TIMEOUT = 5.0
CONTENT_TYPE = CONTENT_TYPE_LATEST


class StoredStateCollector(Collector):
    """Yields the last stored state read by ``refresh`` as gauges (prometheus_client's collect() is
    synchronous, so the read happens before, in ``Exposition.render``)."""

    def __init__(self) -> None:
        self.state: StoredState | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "gateway_stored_state_up", "1 when the last read of the stored queues succeeded, else 0"
        )
        up.add_metric([], 0.0 if self.state is None else 1.0)
        yield up
        state = self.state
        if state is None:
            return
        copies = GaugeMetricFamily("gateway_copies", "Copies stored, by state", labels=["state"])
        for name, count in sorted(state.copies.items()):
            copies.add_metric([name], count)
        yield copies
        yield GaugeMetricFamily(
            "gateway_copies_oldest_pending_age_seconds",
            "Age of the oldest pending copy (0: none pending)",
            value=state.oldest_pending_copy_age,
        )
        relays = GaugeMetricFamily(
            "gateway_relay_queue", "Mail to back offices stored, by state", labels=["state"]
        )
        for name, count in sorted(state.relays.items()):
            relays.add_metric([name], count)
        yield relays
        yield GaugeMetricFamily(
            "gateway_relay_oldest_pending_age_seconds",
            "Age of the oldest mail waiting for its back office (0: none)",
            value=state.oldest_pending_relay_age,
        )
        yield GaugeMetricFamily(
            "gateway_reconcile_runs_open", "Reconcile runs not finished", value=state.reconcile_runs_open
        )
        yield GaugeMetricFamily(
            "gateway_reconcile_messages_done",
            "Messages the open reconcile runs have gone through",
            value=state.reconcile_done,
        )
        yield GaugeMetricFamily(
            "gateway_reconcile_messages_total",
            "Messages the open reconcile runs have to go through",
            value=state.reconcile_total,
        )


class Exposition:
    """Renders /metrics for one Service: its ``Metrics`` and the stored state ``read`` returns."""

    def __init__(
        self,
        metrics: Metrics,
        read: Callable[[], Awaitable[StoredState]],
        *,
        cache_seconds: float = CACHE_SECONDS,
        timeout: float = READ_TIMEOUT,
    ) -> None:
        self.metrics = metrics
        self.read = read
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self.collector = StoredStateCollector()
        metrics.registry.register(self.collector)
        self._read_at = -float("inf")
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:  # concurrent scrapes wait for one read instead of each making one
            if time.monotonic() - self._read_at < self.cache_seconds:
                return
            try:
                async with asyncio.timeout(self.timeout):
                    self.collector.state = await self.read()
            except Exception as exc:
                log.warning("metrics: the stored queues could not be read: %s", exc)
                self.collector.state = None
            self._read_at = time.monotonic()

    async def render(self) -> bytes:
        await self.refresh()
        return generate_latest(self.metrics.registry)
