"""The start page (Übersicht): the portfolios the logged-in account may see."""

from __future__ import annotations

from starlette.responses import Response

from gateway.admin import api
from gateway.web.routes import Area, NavEntry, Scope, Visit

area = Area("overview", nav=NavEntry("nav.overview", "/", Scope.ACCOUNT, order=10))


@area.route("/", scope=Scope.ACCOUNT, name="overview")
async def overview(visit: Visit) -> Response:
    account = visit.account
    async with visit.console.sessions() as session:
        if account.is_operator:
            portfolios = await api.list_portfolios(session)
        else:
            portfolios = [await api.show_portfolio(session, name) for name in account.portfolios]
    return visit.render("overview.html", portfolios=portfolios)
