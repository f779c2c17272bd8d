"""What every page of the console shares: settings, database sessions, templates, texts, login limits.

One ``Console`` per application (``app.state.console``); it holds no per-request state. Settings and
the session factory are passed in, never read from globals, so tests build one on their own database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from gateway.config import AdminHttpSettings
from gateway.db.admin_accounts import AdminAccount
from gateway.domain.logins import FailedLogins, LoginLimits
from gateway.metrics import Metrics
from gateway.web.exposition import Exposition
from gateway.web.i18n import Texts
from gateway.web.readiness import Readiness

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


@dataclass(frozen=True, slots=True)
class Visitor:
    """A logged-in admin: the account and the session (its id and its forms' CSRF token)."""

    account: AdminAccount
    session_id: int
    csrf_token: str
    new_cookie: str | None = None  # a session opened in this request (trusted proxy): set its cookie


@dataclass(frozen=True, slots=True)
class Link:
    """A header navigation link as a template shows it."""

    text: str
    path: str
    active: bool


@dataclass
class Console:
    settings: AdminHttpSettings
    sessions: async_sessionmaker[AsyncSession]
    login_limits: LoginLimits = field(default_factory=LoginLimits)
    node: str = "gateway"
    tls: bool = False
    texts: Texts = field(default_factory=Texts)
    metrics: Metrics = field(default_factory=Metrics)
    # /metrics and /readyz (gateway.web.health); None where nobody wired them (tests of other pages).
    exposition: Exposition | None = None
    readiness: Readiness | None = None
    failures: FailedLogins = field(init=False)
    environment: Environment = field(init=False)
    # (text id, path, who may see it: "account" or "operator", order), filled by the app from the areas
    navigation: list[tuple[str, str, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.failures = FailedLogins(self.login_limits)
        self.environment = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(["html"], default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )

    @property
    def secure_cookies(self) -> bool:
        return self.tls

    def links(self, account: AdminAccount | None, path: str) -> list[Link]:
        if account is None:
            return []
        ordered = sorted(self.navigation, key=lambda n: n[3])
        shown = [n for n in ordered if account.is_operator or n[2] != "operator"]
        return [
            Link(text, target, path == target or (target != "/" and path.startswith(target + "/")))
            for text, target, _, _ in shown
        ]

    def render(
        self,
        request: Request,
        template: str,
        status: int,
        *,
        lang: str,
        csrf: str,
        account: AdminAccount | None,
        **context: Any,
    ) -> Response:
        def t(key: str, **values: object) -> str:
            return self.texts.t(lang, key, **values)

        page = self.environment.get_template(template).render(
            t=t,
            lang=lang,
            csrf=csrf,
            account=account,
            links=self.links(account, request.url.path),
            here=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            **context,
        )
        return HTMLResponse(page, status_code=status)
