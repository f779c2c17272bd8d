"""How a page declares its path and who may open it, and the checks every request passes first.

Every route of the console is made by an ``Area`` and declares a ``Scope``; the wrapper built here
enforces it on every request, server-side:

- ``public``: anyone (the login page, the language switch);
- ``account``: any logged-in admin;
- ``portfolio``: the path parameter ``portfolio`` must be one the account administers; any other
  portfolio, existing or not, is answered 404, so a portfolio admin learns nothing about it;
- ``operator``: operators only; a portfolio admin gets 403.

Every request that is not GET or HEAD must carry the session's CSRF token in the form field ``csrf``
(the login form, before there is a session, a token from its own cookie); otherwise 403.

``ConsoleRoute.scope`` stays readable on the registered route, so a test can walk every route of the
app and check the permission matrix for routes added later.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gateway.db.admin_accounts import AdminAccount
from gateway.errors import InputError, NotFound
from gateway.web import auth
from gateway.web.console import Console, Visitor

log = logging.getLogger("gateway.web")

SAFE_METHODS = frozenset({"GET", "HEAD"})
CSRF_FIELD = "csrf"


class Scope(StrEnum):
    PUBLIC = "public"
    ACCOUNT = "account"
    PORTFOLIO = "portfolio"
    OPERATOR = "operator"


@dataclass
class Visit:
    """One request as a page sees it: who asks (checked), in which language, with the form's token."""

    request: Request
    console: Console
    visitor: Visitor | None
    lang: str
    csrf: str
    form: dict[str, str] = field(default_factory=dict)

    @property
    def account(self) -> AdminAccount:
        """The logged-in account (pages of scope public have none and must not ask)."""
        assert self.visitor is not None, "a public page asked for the account"
        return self.visitor.account

    @property
    def actor(self) -> str:
        """Who the event log names for a change made in this request."""
        return f"web:{self.account.login}"

    @property
    def portfolio(self) -> str:
        """The path's portfolio (routes of scope portfolio; checked against the account already)."""
        return str(self.request.path_params["portfolio"])

    def t(self, key: str, **values: object) -> str:
        return self.console.texts.t(self.lang, key, **values)

    def render(self, template: str, status: int = 200, **context: Any) -> Response:
        account = self.visitor.account if self.visitor is not None else None
        return self.console.render(
            self.request, template, status, lang=self.lang, csrf=self.csrf, account=account, **context
        )

    def refuse(self, status: int, reason: str) -> Response:
        """The error page: ``reason`` is a message id (error.not_found, error.forbidden …)."""
        return self.render("error.html", status, code=status, reason=reason)


Page = Callable[[Visit], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class NavEntry:
    """A link in the header navigation; shown to accounts the scope admits."""

    text: str  # a message id
    path: str
    scope: Scope
    order: int


class ConsoleRoute(Route):
    """A Starlette route that knows its scope (for the permission checks and for tests)."""

    scope: Scope

    def __init__(self, path: str, page: Page, *, scope: Scope, methods: Sequence[str], name: str) -> None:
        if scope is Scope.PORTFOLIO and "{portfolio}" not in path:
            raise ValueError(f"route {path}: scope portfolio needs a {{portfolio}} path parameter")
        self.page = page
        super().__init__(path, _guarded(page, scope), methods=list(methods), name=name)
        self.scope = scope


class Area:
    """The routes and navigation link of one area of the console (one module, e.g. portfolios.py)."""

    def __init__(self, name: str, *, nav: NavEntry | None = None) -> None:
        self.name = name
        self.nav = nav
        self.routes: list[ConsoleRoute] = []

    def route(
        self, path: str, *, scope: Scope, methods: Sequence[str] = ("GET",), name: str | None = None
    ) -> Callable[[Page], Page]:
        def register(page: Page) -> Page:
            route_name = name or f"{self.name}.{page.__name__}"
            self.routes.append(ConsoleRoute(path, page, scope=scope, methods=methods, name=route_name))
            return page

        return register


def _guarded(page: Page, scope: Scope) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        console: Console = request.app.state.console
        # Public pages know a logged-in visitor too (the login page sends them on).
        visitor = await auth.visitor(console, request)
        if visitor is None and scope is not Scope.PUBLIC:
            return _to_login(request)
        lang = console.texts.language_of(request)
        csrf = visitor.csrf_token if visitor is not None else auth.form_token(request)
        form: dict[str, str] = {}
        if request.method not in SAFE_METHODS:
            raw = await request.form()
            form = {k: v for k, v in raw.items() if isinstance(v, str)}
            sent = form.get(CSRF_FIELD, "")
            if not sent or not hmac.compare_digest(sent.encode(), csrf.encode()):
                refused = Visit(request, console, visitor, lang, csrf)
                return _finish(refused, refused.refuse(403, "error.csrf"))
        visit = Visit(request, console, visitor, lang, csrf, form)
        if visitor is not None:
            account = visitor.account
            if scope is Scope.OPERATOR and not account.is_operator:
                return visit.refuse(403, "error.forbidden")
            if scope is Scope.PORTFOLIO and not account.administers(visit.portfolio):
                return visit.refuse(404, "error.not_found")
        try:
            response = await page(visit)
        except HTTPException:
            raise
        except NotFound:
            response = visit.refuse(404, "error.not_found")
        except InputError as exc:
            response = visit.render("error.html", 400, code=400, reason="error.bad_request", detail=str(exc))
        except Exception:
            # The page failed; the log has why, the person gets a page that says so and nothing internal.
            log.exception("console page %s %s failed", request.method, request.url.path)
            response = visit.refuse(500, "error.internal")
        return _finish(visit, response)

    return endpoint


def _finish(visit: Visit, response: Response) -> Response:
    """Cookies a response carries: a session a trusted proxy opened, the login form's token."""
    if visit.visitor is not None and visit.visitor.new_cookie is not None:
        auth.set_session_cookie(visit.console, response, visit.visitor.new_cookie)
    if visit.visitor is None and visit.request.cookies.get(auth.FORM_COOKIE) != visit.csrf:
        auth.set_form_cookie(visit.console, response, visit.csrf)
    return response


def _to_login(request: Request) -> Response:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    if request.method not in SAFE_METHODS:
        target = "/"
    return RedirectResponse(f"/login?next={_quote(target)}", status_code=303)


def _quote(path: str) -> str:
    return quote(path, safe="/")


def safe_next(target: str | None) -> str:
    """Where to go after a login or a language switch: a path of this console, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
