"""Quarantine of one portfolio in the console: the messages a routing rule held back, one of them in
detail, and an admin's release or drop, through the functions ``gateway quarantine`` uses.

Release and drop run on the gateway's writer (``Console.write``) with actor ``web:<login>``; a released
message's copies are pending rows the fan-out takes, and ``Operations.wake`` tells it at once.
"""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import quote

from sqlalchemy import Connection
from starlette.responses import RedirectResponse, Response

from gateway.db import quarantine
from gateway.errors import NotFound
from gateway.web.routes import Area, Scope, Visit

area = Area("quarantine")

PAGE_SIZE = 50
# Pages beyond this are not offered: nobody reads 250,000 held messages page by page.
MAX_PAGE = 5000
GATEWAY_ID = re.compile(r"^gw-[0-9a-f]{1,60}$")


def page_number(visit: Visit) -> int:
    """The ``page`` query parameter, 1 when missing or not a number, never beyond MAX_PAGE."""
    raw = visit.request.query_params.get("page", "1")
    return min(int(raw), MAX_PAGE) if raw.isdigit() and int(raw) >= 1 else 1


def _base(visit: Visit) -> str:
    return f"/portfolios/{quote(visit.portfolio, safe='')}/quarantine"


def _gateway_id(visit: Visit) -> str:
    gateway_id = str(visit.request.path_params["gateway_id"])
    if not GATEWAY_ID.match(gateway_id):
        raise NotFound(f"no quarantined message {gateway_id}")
    return gateway_id


@area.route("/portfolios/{portfolio}/quarantine", scope=Scope.PORTFOLIO)
async def held(visit: Visit) -> Response:
    page = page_number(visit)
    portfolio = visit.portfolio
    found = await visit.console.read(
        lambda c: quarantine.list_quarantined(
            c, portfolio, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE
        )
    )
    dropped = visit.request.query_params.get("dropped", "")
    return visit.render(
        "quarantine_list.html",
        portfolio=portfolio,
        held=found[:PAGE_SIZE],
        page=page,
        more=len(found) > PAGE_SIZE and page < MAX_PAGE,
        dropped=dropped if GATEWAY_ID.match(dropped) else "",
    )


async def _show(visit: Visit, status: int = 200, problem: str = "") -> Response:
    portfolio, gateway_id = visit.portfolio, _gateway_id(visit)

    def read(connection: Connection) -> tuple[quarantine.Quarantined, bytes, list[quarantine.WouldSee]]:
        message, raw = quarantine.show(connection, portfolio, gateway_id)
        return message, raw, quarantine.would_see(connection, portfolio, gateway_id)

    message, raw, audience = await visit.console.read(read)
    return visit.render(
        "quarantine_show.html",
        status,
        portfolio=portfolio,
        m=message,
        header=header_of(raw),
        audience=audience,
        problem=problem,
    )


def header_of(raw: bytes) -> str:
    """The header section of a message as text (undecodable bytes shown as replacement characters)."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    return head.decode("utf-8", "replace").replace("\r\n", "\n")


@area.route("/portfolios/{portfolio}/quarantine/{gateway_id}", scope=Scope.PORTFOLIO)
async def show(visit: Visit) -> Response:
    return await _show(visit)


@area.route(
    "/portfolios/{portfolio}/quarantine/{gateway_id}/release", scope=Scope.PORTFOLIO, methods=("POST",)
)
async def release(visit: Visit) -> Response:
    portfolio, gateway_id, actor = visit.portfolio, _gateway_id(visit), visit.actor
    await visit.console.write(
        lambda c: quarantine.release(c, portfolio, gateway_id, actor, dt.datetime.now(dt.UTC))
    )
    visit.console.operations.wake()
    return RedirectResponse(f"{_base(visit)}/{gateway_id}/released", status_code=303)


@area.route("/portfolios/{portfolio}/quarantine/{gateway_id}/released", scope=Scope.PORTFOLIO)
async def released(visit: Visit) -> Response:
    portfolio, gateway_id = visit.portfolio, _gateway_id(visit)
    copies = await visit.console.read(lambda c: quarantine.released_copies(c, portfolio, gateway_id))
    return visit.render("quarantine_released.html", portfolio=portfolio, gateway_id=gateway_id, copies=copies)


@area.route("/portfolios/{portfolio}/quarantine/{gateway_id}/drop", scope=Scope.PORTFOLIO, methods=("POST",))
async def drop(visit: Visit) -> Response:
    portfolio, gateway_id, actor = visit.portfolio, _gateway_id(visit), visit.actor
    if visit.form.get("confirm") != "yes":
        return await _show(visit, 400, "quarantine.confirm_drop")
    await visit.console.write(
        lambda c: quarantine.drop(c, portfolio, gateway_id, actor, dt.datetime.now(dt.UTC))
    )
    return RedirectResponse(f"{_base(visit)}?dropped={gateway_id}", status_code=303)
