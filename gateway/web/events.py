"""The event log: a portfolio's events for its admins, every portfolio's for operators, newest first,
with the filters of `gateway events` (member, Vorgang, message, kind, since/until)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from gateway.admin import api
from gateway.db.events import EventKind, EventView, kind_known
from gateway.errors import NotFound
from gateway.web import filters
from gateway.web.routes import Area, NavEntry, Scope, Visit

area = Area("events", nav=NavEntry("nav.events", "/events", Scope.OPERATOR, order=80))

PAGE_SIZE = 100
FILTERS = ("member", "vorgang", "message", "kind", "since", "until")
# The fields that name something which may not exist, and how each is asked on its own.
NAMED = ("portfolio", "member", "vorgang", "message")
KINDS = tuple(k.value for k in EventKind)


@area.route("/portfolios/{portfolio}/events", scope=Scope.PORTFOLIO, name="events")
async def portfolio_events(visit: Visit) -> Response:
    return await _log(visit, visit.portfolio)


@area.route("/events", scope=Scope.OPERATOR, name="events.all")
async def all_events(visit: Visit) -> Response:
    return await _log(visit, None)


async def _log(visit: Visit, portfolio: str | None) -> Response:
    names = FILTERS if portfolio is not None else ("portfolio", *FILTERS)
    values = filters.fields(visit, names)
    problems: dict[str, str] = {}
    since = filters.when(visit, values, "since", problems)
    until = filters.when(visit, values, "until", problems)
    kinds = tuple(k for k in values["kind"].replace(",", " ").split() if k)
    unknown = [k for k in kinds if not kind_known(k)]
    if unknown:
        problems["kind"] = visit.t("events.error.kind", kind=unknown[0])
    before_text = visit.request.query_params.get("before", "")
    before = int(before_text) if before_text.isdigit() and len(before_text) < 19 else None
    if before_text and before is None:
        problems["before"] = visit.t("events.error.before")
    within = portfolio or values.get("portfolio") or None
    asked = {
        "portfolio": within,
        "member": values["member"] or None,
        "vorgang": values["vorgang"] or None,
        "message": values["message"] or None,
    }
    found: list[EventView] = []
    async with visit.console.sessions() as session:
        if not problems:
            try:
                found = await api.read_events(
                    session,
                    portfolio=asked["portfolio"],
                    member=asked["member"],
                    vorgang=asked["vorgang"],
                    message=asked["message"],
                    kinds=kinds,
                    since=since,
                    until=until,
                    before_id=before,
                    limit=PAGE_SIZE + 1,
                )
            except NotFound:
                await _which_not_found(visit, session, asked, problems)
                if portfolio is not None and "portfolio" in problems:
                    raise  # the path's portfolio: the page does not exist

    newest_first = found[::-1]
    shown = newest_first[:PAGE_SIZE]
    path = f"/portfolios/{portfolio}/events" if portfolio is not None else "/events"
    return visit.render(
        "events.html",
        400 if problems else 200,
        portfolio=portfolio,
        names=names,
        values=values,
        problems=problems,
        kinds=KINDS,
        events=shown,
        newest=filters.link(path, values) if before is not None else None,
        older=filters.link(path, values, before=shown[-1].id) if len(newest_first) > PAGE_SIZE else None,
        filtered=any(values.values()),
        path=path,
    )


async def _which_not_found(
    visit: Visit, session: AsyncSession, asked: dict[str, str | None], problems: dict[str, str]
) -> None:
    """Name each field whose value does not exist (in the portfolio), asking the log about it alone."""
    for name in NAMED:
        value = asked[name]
        if value is None:
            continue
        alone = dict.fromkeys(NAMED) | {name: value}
        if name != "portfolio":
            alone["portfolio"] = asked["portfolio"]
        try:
            await api.read_events(
                session,
                portfolio=alone["portfolio"],
                member=alone["member"],
                vorgang=alone["vorgang"],
                message=alone["message"],
                limit=1,
            )
        except NotFound:
            problems[name] = visit.t(f"events.error.no_{name}", value=value)
