"""A portfolio (Bestand): its back offices, releases and members, read-only."""

from __future__ import annotations

from starlette.responses import Response

from gateway.admin import api
from gateway.web.routes import Area, Scope, Visit

area = Area("portfolios")


@area.route("/portfolios/{portfolio}", scope=Scope.PORTFOLIO, name="portfolio")
async def portfolio(visit: Visit) -> Response:
    async with visit.console.sessions() as session:
        spec = await api.show_portfolio(session, visit.portfolio)
    release_members = {
        r.name: [m.address for m in spec.members if r.name in m.releases] for r in spec.releases
    }
    return visit.render("portfolio.html", p=spec, release_members=release_members)
