"""The supervisor of ``gateway serve --workers N``: N worker processes sharing the listeners, each a node.

Each worker is an ordinary ``gateway serve`` (its own event loop, writer thread, parse pools and node
row), named ``<node_name>-<i>``, that binds the SMTP, MX and admin HTTP ports with SO_REUSEPORT: the
kernel spreads new connections over the workers. The supervisor itself holds no database connection
and takes no mail. It

- starts the workers and waits until each says it is ready (a line on a pipe); one that fails to start
  stops them all, and the supervisor exits 1 (its error is on stderr: a refused start, a bad file);
- forwards SIGTERM and SIGINT (stop) and SIGHUP (reload the rules) to every worker;
- restarts a worker that ends while the supervisor is not stopping (a crash, kill -9, a stage that ended),
  after 1 s, doubling up to 30 s while restarts keep failing; the dead worker's leases are taken back by
  its successor under the same name at once, and by the other workers after ``node_timeout``.

A listener configured with port 0 (tests) gets its port here: the supervisor binds a socket with
SO_REUSEPORT without listening on it, which holds the port, and tells the workers the number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from gateway.config import Settings
from gateway.domain.nodes import worker_names
from gateway.logs import configure_logging

log = logging.getLogger("gateway.supervisor")

RESTART_DELAY = 1.0
RESTART_MAX_DELAY = 30.0
# Workers stop within their own grace periods (SHUTDOWN_GRACE for mail in DATA, the queue, the stages);
# one that has not ended after this long is killed.
STOP_WAIT = 60.0
READY = b"ready\n"


@dataclass
class Worker:
    index: int
    name: str
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0


class Supervisor:
    """``run()`` until stopped; returns the exit status (0 after a clean stop, 1 when a worker could not
    start)."""

    def __init__(self, settings: Settings, config: Path, workers: int) -> None:
        self.settings = settings
        self.config = config
        self.workers = [
            Worker(i, name) for i, name in enumerate(worker_names(settings.gateway.node_name, workers), 1)
        ]
        self._stopping = asyncio.Event()
        self._held: list[socket.socket] = []
        self._env: dict[str, str] = {}

    def _hold_ports(self) -> None:
        """A port for each enabled listener set to port 0, held (bound, not listening) until the end."""
        listeners = self.settings.listeners
        for name, listener in (
            ("submission", listeners.submission),
            ("mx", listeners.mx),
            ("admin_http", listeners.admin_http),
        ):
            if not listener.enabled or listener.port != 0:
                continue
            family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((listener.host, 0))
            self._held.append(sock)
            self._env[f"GATEWAY_LISTENERS__{name.upper()}__PORT"] = str(sock.getsockname()[1])

    async def _spawn(self, worker: Worker) -> bool:
        """Start ``worker``; True once it is ready, False if it ended first."""
        read_end, write_end = os.pipe()
        env = (
            os.environ
            | self._env
            | {"GATEWAY_GATEWAY__NODE_NAME": worker.name, "GATEWAY_GATEWAY__WORKERS": "1"}
        )
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "--config",
                str(self.config),
                "serve",
                "--worker-ready-fd",
                str(write_end),
                pass_fds=(write_end,),
                env=env,
            )
        finally:
            os.close(write_end)
        process = worker.process
        log.info("worker %s started (pid %d)", worker.name, process.pid, extra={"node": worker.name})
        try:
            reading = asyncio.ensure_future(asyncio.to_thread(os.read, read_end, len(READY)))
            ended = asyncio.ensure_future(process.wait())
            await asyncio.wait({reading, ended}, return_when=asyncio.FIRST_COMPLETED)
            # The pipe's far end closes when the worker ends: reading then returns b"" and finishes.
            ready = (await reading) == READY
            if not ended.done():
                ended.cancel()
            return ready and process.returncode is None
        finally:
            os.close(read_end)

    async def _keep(self, worker: Worker, started: asyncio.Future[bool]) -> None:
        """Run ``worker`` until the supervisor stops, restarting it when it ends."""
        delay = RESTART_DELAY
        while True:
            ready = await self._spawn(worker)
            process = worker.process
            assert process is not None
            if not started.done():
                started.set_result(ready)
                if not ready:
                    await process.wait()
                    return
            if self._stopping.is_set():
                self._signal(worker, signal.SIGTERM)
            if ready:
                delay = RESTART_DELAY
            code = await process.wait()
            if self._stopping.is_set():
                return
            worker.restarts += 1
            log.error(
                "worker %s (pid %d) ended with status %d; starting it again in %.0f s",
                worker.name,
                process.pid,
                code,
                delay,
                extra={"node": worker.name},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
                return
            if not ready:
                delay = min(delay * 2, RESTART_MAX_DELAY)

    def _signal(self, worker: Worker, signum: int) -> None:
        process = worker.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    def _forward(self, signum: int) -> None:
        for worker in self.workers:
            self._signal(worker, signum)

    def stop(self) -> None:
        if not self._stopping.is_set():
            log.info("stopping %d workers", len(self.workers))
        self._stopping.set()
        self._forward(signal.SIGTERM)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        self._hold_ports()
        try:
            started = [loop.create_future() for _ in self.workers]
            keepers = [
                asyncio.create_task(self._keep(worker, first), name=f"worker {worker.name}")
                for worker, first in zip(self.workers, started, strict=True)
            ]
            ready = await asyncio.gather(*started)
            status = 0
            if not all(ready):
                failed = [w.name for w, ok in zip(self.workers, ready, strict=True) if not ok]
                log.error("worker %s could not start; stopping the others", ", ".join(failed))
                status = 1
                self.stop()
            else:
                log.info(
                    "gateway ready: %d workers (%s)",
                    len(self.workers),
                    ", ".join(f"{w.name} pid {w.process.pid}" for w in self.workers if w.process),
                )
                await self._stopping.wait()
            _, stuck = await asyncio.wait(keepers, timeout=STOP_WAIT)
            for task in stuck:
                log.error("%s did not stop within %.0f s; killing it", task.get_name(), STOP_WAIT)
            if stuck:
                self._forward(signal.SIGKILL)
                await asyncio.wait(stuck)
            log.info("all workers stopped")
            return status
        finally:
            for sock in self._held:
                sock.close()


def supervise(settings: Settings, config: Path, workers: int) -> int:
    """Run ``workers`` worker processes of the gateway configured in ``config`` until SIGTERM or SIGINT;
    the exit status."""
    configure_logging(settings.logging.level, settings.logging.format)
    log.info("configuration: %s; %d workers", config, workers)
    return asyncio.run(Supervisor(settings, config, workers).run())
