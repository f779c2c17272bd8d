"""Serves the console with uvicorn inside the gateway's own event loop, on a socket bound here.

uvicorn runs without its lifespan, signal handling and logging setup: ``gateway.service`` owns the
loop, the signals and the logs. The socket is bound before uvicorn starts, so a taken port is a clear
OperationalError and port 0 (tests) tells its real port.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.config import AdminHttpSettings
from gateway.errors import OperationalError

KEEP_ALIVE = 5
# A request's headers beyond this many bytes are refused (h11): no peer makes the server hold more.
MAX_HEADER_BYTES = 64 * 1024
GRACE = 5


class BoundedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request, from its first byte to its answer.

    uvicorn bounds the wait between requests (keep-alive) but not the time a request takes to arrive:
    a client sending one header byte a second holds its connection, and enough of them hold every
    slot (``limit_concurrency``) while sending almost nothing. Each request here gets
    ``request_timeout`` seconds; past it the connection is closed, whatever state it is in.
    """

    request_timeout: float = 60.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None:
            self._arm()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)

    def on_response_complete(self) -> None:
        self._disarm()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.request_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


class WebServer:
    def __init__(self, app: Starlette, settings: AdminHttpSettings, *, reuse_port: bool = False) -> None:
        self.settings = settings
        # Several worker processes of one gateway listen on the same port (``serve --workers``).
        self.reuse_port = reuse_port
        self.config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,  # a peer's X-Forwarded-For is never believed
            limit_concurrency=settings.max_connections,
            timeout_keep_alive=KEEP_ALIVE,
            timeout_graceful_shutdown=GRACE,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            http=type(
                "ConsoleH11Protocol", (BoundedH11Protocol,), {"request_timeout": settings.request_timeout}
            ),
            ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
            ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        )
        self.server = uvicorn.Server(self.config)
        self.socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self.socket is not None
        host, port = self.socket.getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        settings = self.settings
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((settings.host, settings.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise OperationalError(
                f"cannot listen on {settings.host}:{settings.port} for admin_http: {exc}"
            ) from exc
        sock.setblocking(False)
        self.socket = sock
        try:
            self.config.load()
        except (OSError, ValueError) as exc:
            raise OperationalError(
                f"cannot load the TLS certificate {settings.tls_cert} and key {settings.tls_key}: {exc}"
            ) from exc
        # What uvicorn's own serve() does before startup; here without its signal handlers.
        self.server.lifespan = self.config.lifespan_class(self.config)
        await self.server.startup(sockets=[sock])
        # main_loop keeps the Date header current and ends when should_exit is set.
        self._task = asyncio.create_task(self.server.main_loop(), name="admin_http")

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task
        if self.server.started:
            await self.server.shutdown(sockets=[self.socket] if self.socket else None)
