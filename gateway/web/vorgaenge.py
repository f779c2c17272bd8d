"""The Vorgänge of a portfolio: the list with its search and filters, one Vorgang with its messages, each
member's copy and its flags and the relay of replies; and a message's raw bytes for operators."""

from __future__ import annotations

import re

from starlette.responses import Response

from gateway.admin import api
from gateway.db.messages import VORGANG_STATES
from gateway.errors import InputError, NotFound
from gateway.web import filters
from gateway.web.routes import Area, Scope, Visit

area = Area("vorgaenge")

PAGE_SIZE = 50
MAX_PAGE = 200  # 10,000 Vorgänge deep: further back, the filters find a Vorgang sooner than paging
FILTERS = ("q", "member", "backoffice", "state", "since", "until")
# What a gateway id may look like in a file name (they are gw- and hex; anything else is no id of ours).
_GATEWAY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@area.route("/portfolios/{portfolio}/vorgaenge", scope=Scope.PORTFOLIO, name="vorgaenge")
async def vorgaenge(visit: Visit) -> Response:
    values = filters.fields(visit, FILTERS)
    problems: dict[str, str] = {}
    page = _page(visit.request.query_params.get("page", "1"), problems, visit)
    since = filters.when(visit, values, "since", problems)
    until = filters.when(visit, values, "until", problems)
    if values["state"] and values["state"] not in VORGANG_STATES:
        problems["state"] = visit.t("vorgaenge.error.state")
    found = []
    async with visit.console.sessions() as session:
        spec = await api.show_portfolio(session, visit.portfolio)
        if values["backoffice"] and values["backoffice"] not in {b.name for b in spec.backoffices}:
            problems["backoffice"] = visit.t("vorgaenge.error.backoffice", name=values["backoffice"])
        if values["member"]:
            try:
                member = api.address(values["member"])
            except InputError:
                member = None
            if member is None or member not in {m.address for m in spec.members}:
                problems["member"] = visit.t("vorgaenge.error.member", address=values["member"])
        if not problems:
            found = await api.list_vorgaenge(
                session,
                visit.portfolio,
                member=values["member"] or None,
                since=since,
                until=until,
                search=values["q"] or None,
                backoffice=values["backoffice"] or None,
                state=values["state"] or None,
                limit=PAGE_SIZE + 1,
                offset=(page - 1) * PAGE_SIZE,
            )
    path = f"/portfolios/{visit.portfolio}/vorgaenge"
    more = len(found) > PAGE_SIZE and page < MAX_PAGE
    return visit.render(
        "vorgaenge_list.html",
        400 if problems else 200,
        p=spec,
        values=values,
        problems=problems,
        states=VORGANG_STATES,
        found=found[:PAGE_SIZE],
        page=page,
        first=(page - 1) * PAGE_SIZE + 1,
        newer=filters.link(path, values, page=page - 1) if page > 1 else None,
        older=filters.link(path, values, page=page + 1) if more else None,
        filtered=any(values.values()),
    )


def _page(text: str, problems: dict[str, str], visit: Visit) -> int:
    if text.isdigit() and 1 <= int(text) <= MAX_PAGE:
        return int(text)
    problems["page"] = visit.t("vorgaenge.error.page", most=MAX_PAGE)
    return 1


@area.route("/portfolios/{portfolio}/vorgaenge/{reference}", scope=Scope.PORTFOLIO, name="vorgang")
async def vorgang(visit: Visit) -> Response:
    reference = str(visit.request.path_params["reference"])
    async with visit.console.sessions() as session:
        view = await api.show_vorgang(session, visit.portfolio, reference)
    return visit.render("vorgaenge_show.html", v=view, operator=visit.account.is_operator)


@area.route("/messages/{gateway_id}/raw", scope=Scope.OPERATOR, name="raw_message")
async def raw_message(visit: Visit) -> Response:
    """The message as it was received, to save and open elsewhere; never shown as a page (it is mail
    from outside, and a browser must not render or sniff it)."""
    gateway_id = str(visit.request.path_params["gateway_id"])
    if not _GATEWAY_ID.fullmatch(gateway_id):
        raise NotFound(f"there is no message with id {gateway_id!r}")
    async with visit.console.sessions() as session:
        raw = await api.raw_message(session, gateway_id)
    # No charset: the bytes are the mail's own, in whatever its parts declare.
    return Response(
        raw,
        headers={
            "content-type": "text/plain",
            "content-disposition": f'attachment; filename="{gateway_id}.eml"',
        },
    )
