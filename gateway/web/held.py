"""Held replies of one portfolio in the console: the replies the collision guard held, and an admin's
release or withdrawal, through the transaction ``gateway held`` and the members' answers use.

Each decision runs on the gateway's writer (``Console.write``) with actor ``web:<login>``, once: a reply
the member or the timeout decided on first is not decided again, and the page says so (docs/collisions.md).
"""

from __future__ import annotations

import re
from urllib.parse import quote

from sqlalchemy import Connection
from starlette.responses import RedirectResponse, Response

from gateway.db import collisions, membermail
from gateway.db.collisions import HeldReply
from gateway.db.membermail import Decided, ReplyStorage
from gateway.db.models import HeldState
from gateway.db.replies import portfolio_by_name
from gateway.errors import NotFound
from gateway.web.routes import Area, Scope, Visit

area = Area("held")

HELD_ID = re.compile(r"^h[0-9a-f]{4,30}$")


def _base(visit: Visit) -> str:
    return f"/portfolios/{quote(visit.portfolio, safe='')}/held"


def _held_id(visit: Visit) -> str:
    held_id = str(visit.request.path_params["held_id"])
    if not HELD_ID.match(held_id):
        raise NotFound(f"no held reply {held_id}")
    return held_id


def _portfolio_id(connection: Connection, name: str) -> int:
    found = portfolio_by_name(connection, name)
    if found is None:
        raise NotFound(f"there is no portfolio {name}")
    return found.id


@area.route("/portfolios/{portfolio}/held", scope=Scope.PORTFOLIO)
async def held_list(visit: Visit) -> Response:
    portfolio = visit.portfolio

    def read(connection: Connection) -> list[HeldReply]:
        return collisions.held_replies(connection, [_portfolio_id(connection, portfolio)])

    held = await visit.console.read(read)
    done, state = visit.request.query_params.get("done", ""), visit.request.query_params.get("state", "")
    return visit.render(
        "held_list.html",
        portfolio=portfolio,
        held=held,
        done=done if HELD_ID.match(done) else "",
        state=state if state in {s.value for s in HeldState} else "",
    )


async def _decide(visit: Visit, wanted: HeldState) -> Response:
    portfolio, held_id, actor = visit.portfolio, _held_id(visit), visit.actor
    settings = visit.console.operations.settings
    reply_domain = settings.domains.reply_domain
    storage = ReplyStorage(
        reply_domain,
        settings.gateway.hostname,
        settings.gateway.node_name,
        settings.relay.lifetime,
        f"bounces@{reply_domain}",
    )

    def write(connection: Connection) -> Decided:
        decided = membermail.decide_held(
            connection,
            held_id,
            wanted,
            actor,
            storage,
            portfolio_ids=[_portfolio_id(connection, portfolio)],
            reason="an admin decided",
        )
        if decided is None:
            raise NotFound(f"no held reply {held_id} in portfolio {portfolio}")
        return decided

    decided = await visit.console.write(write)
    if decided.done_now and decided.state is HeldState.RELEASED:
        visit.console.operations.wake()
    return RedirectResponse(f"{_base(visit)}?done={held_id}&state={decided.state.value}", status_code=303)


@area.route("/portfolios/{portfolio}/held/{held_id}/release", scope=Scope.PORTFOLIO, methods=("POST",))
async def release(visit: Visit) -> Response:
    return await _decide(visit, HeldState.RELEASED)


@area.route("/portfolios/{portfolio}/held/{held_id}/withdraw", scope=Scope.PORTFOLIO, methods=("POST",))
async def withdraw(visit: Visit) -> Response:
    return await _decide(visit, HeldState.WITHDRAWN)
