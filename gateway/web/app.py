"""The console's ASGI application: every area's routes behind security headers, a body limit and
error pages that tell people what happened and the network nothing internal.

Areas are found, not listed: every module of this package with an ``area`` (``gateway.web.routes.Area``)
contributes its routes and navigation link, so areas written in parallel do not edit a shared list.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import gateway.web
from gateway.web import auth
from gateway.web.console import STATIC, Console
from gateway.web.routes import Area, Visit

log = logging.getLogger("gateway.web")

# No inline scripts or styles, nothing from elsewhere, never in a frame.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)


def areas() -> list[Area]:
    """Every area of the console: the ``area`` of each module in gateway.web, by module name."""
    found = []
    for info in sorted(pkgutil.iter_modules(gateway.web.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"gateway.web.{info.name}")
        area = getattr(module, "area", None)
        if isinstance(area, Area):
            found.append(area)
    return found


def create_app(console: Console) -> Starlette:
    routes: list[BaseRoute] = []
    for area in areas():
        routes.extend(area.routes)
        if area.nav is not None:
            nav = area.nav
            console.navigation.append((nav.text, nav.path, nav.scope.value, nav.order))
    routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))
    auth.dummy_hash()  # now, not in the time of the first unknown login
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders, tls=console.tls),
            Middleware(BodyLimit, limit=console.settings.max_upload_size),
        ],
        # Errors inside a page are answered by the page's wrapper (gateway.web.routes); these are for
        # what never reaches a page: unknown paths, wrong methods, bodies too large.
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    app.state.console = console
    return app


class SecurityHeaders:
    """Adds the security headers to every response; pages (not the stylesheet) are never cached."""

    def __init__(self, app: ASGIApp, *, tls: bool) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[tuple[bytes, bytes]] = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"cache-control", b"max-age=3600" if static else b"no-store"),
                ]
                if self.tls:
                    headers.append((b"strict-transport-security", b"max-age=31536000"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class BodyTooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(413)


class BodyLimit:
    """Refuses request bodies over ``max_upload_size`` (413), by Content-Length and by counting."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                # The console's own 413 page, in the visitor's language, as for a body found too large
                # while it is read.
                response = await _http_error(Request(scope), BodyTooLarge())
                await response(scope, receive, send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge()
            return message

        await self.app(scope, counted, send)


def _visit(request: Request) -> Visit:
    console: Console = request.app.state.console
    return Visit(request, console, None, console.texts.language_of(request), auth.form_token(request))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    reasons = {404: "error.not_found", 403: "error.forbidden", 405: "error.method", 413: "error.too_large"}
    return _visit(request).refuse(exc.status_code, reasons.get(exc.status_code, "error.bad_request"))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("console request %s %s failed", request.method, request.url.path, exc_info=exc)
    return _visit(request).refuse(500, "error.internal")
