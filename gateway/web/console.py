"""What every page of the console shares: settings, database sessions, templates, texts, login limits.

One ``Console`` per application (``app.state.console``); it holds no per-request state. Settings and
the session factory are passed in, never read from globals, so tests build one on their own database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from gateway.config import AdminHttpSettings, Settings
from gateway.db.admin_accounts import AdminAccount
from gateway.db.writer import Writer
from gateway.domain.logins import FailedLogins, LoginLimits
from gateway.metrics import Metrics
from gateway.routing.live import RoutingRules
from gateway.web.exposition import Exposition
from gateway.web.i18n import Texts
from gateway.web.preview_tasks import PreviewTasks
from gateway.web.readiness import Readiness
from gateway.web.replay_tasks import ReplayTasks

T = TypeVar("T")

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


def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Operations:
    """What the pages of quarantine, the queues and the rules take from the running gateway.

    ``gateway serve`` passes its settings, its writer (so the console's changes queue with every other
    write of the process: one writer, one path), its rules in force and a ``wake`` that tells the
    fan-out and the relay there is work; a console built on its own (tests) writes on its own engine,
    loads the rules from ``settings.rules.dir`` and has nobody to wake (the workers' poll finds it).
    """

    settings: Settings = field(default_factory=Settings)
    writer: Writer | None = None
    rules: RoutingRules | None = None
    wake: Callable[[], None] = _nothing


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
    operations: Operations = field(default_factory=Operations)
    # Previews of directory changes planning or planned on this node (gateway.web.preview_tasks).
    previews: PreviewTasks = field(default_factory=PreviewTasks)
    # Rule replays running or run on this node (gateway.web.replay_tasks).
    replays: ReplayTasks = field(default_factory=ReplayTasks)

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

    async def read(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` for reading, on the console's engine (never queued behind the writer)."""
        async with self.sessions() as session:
            return await session.run_sync(lambda s: work(s.connection()))

    async def write(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` in one transaction: on the gateway's writer when it runs in one."""
        writer = self.operations.writer
        if writer is not None:
            return await writer.run(work)
        async with self.sessions() as session, session.begin():
            return await session.run_sync(lambda s: work(s.connection()))
