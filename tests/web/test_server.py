"""The console's HTTP server as a hostile peer meets it: a request that arrives too slowly is cut off,
while a client that asks normally on a kept-alive connection is served."""

from __future__ import annotations

import asyncio

from gateway.config import AdminHttpSettings
from gateway.db.engine import session_factory
from gateway.web.app import create_app
from gateway.web.console import Console
from gateway.web.server import WebServer
from tests.web.conftest import ConsoleUnderTest

HANG = 60.0  # an upper bound for "this never happens"; never a figure the test relies on


async def started(web: ConsoleUnderTest, **settings: object) -> WebServer:
    console = Console(AdminHttpSettings(port=0, **settings), session_factory(web.engine))  # type: ignore[arg-type]
    server = WebServer(create_app(console), console.settings)
    await server.start()
    return server


async def test_a_request_trickled_byte_by_byte_is_cut_off_at_the_request_timeout(
    web: ConsoleUnderTest,
) -> None:
    server = await started(web, request_timeout=1.5)
    try:
        host, port = server.address
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /login HTTP/1.1\r\nHost: console\r\n")
        await writer.drain()
        loop = asyncio.get_running_loop()
        began = loop.time()
        closed = False
        # One header byte every half second: always something new, never the end of the head.
        while loop.time() - began < HANG:
            try:
                writer.write(b"X")
                await writer.drain()
            except (ConnectionError, OSError):
                closed = True
                break
            try:
                if await asyncio.wait_for(reader.read(1024), 0.5) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
        assert closed, "the server kept a trickling request open"
        writer.close()
    finally:
        await server.stop()


async def test_requests_on_a_kept_alive_connection_each_get_their_own_time(web: ConsoleUnderTest) -> None:
    server = await started(web, request_timeout=1.5)
    try:
        host, port = server.address
        reader, writer = await asyncio.open_connection(host, port)
        # Three requests over longer than one request_timeout in all: each within its own.
        for _ in range(3):
            writer.write(b"GET /login HTTP/1.1\r\nHost: console\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(
                next(
                    v
                    for k, _, v in (line.partition(b": ") for line in head.split(b"\r\n"))
                    if k.lower() == b"content-length"
                )
            )
            await asyncio.wait_for(reader.readexactly(length), HANG)
            await asyncio.sleep(0.8)
        writer.close()
    finally:
        await server.stop()
