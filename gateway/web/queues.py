"""The queues in the console (operators only): what waits to be written, flagged, removed or relayed,
filtered as ``gateway queue list`` filters, one item in detail, and retry or drop through the functions
and events of ``gateway queue retry|drop``."""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import urlencode

from starlette.responses import RedirectResponse, Response

from gateway.db import queue
from gateway.db.queue import QueueFilter, QueueItem
from gateway.errors import InputError, NotFound
from gateway.web.quarantine import MAX_PAGE, page_number
from gateway.web.routes import Area, NavEntry, Scope, Visit

area = Area("queues", nav=NavEntry("nav.queues", "/queues", Scope.OPERATOR, order=70))

PAGE_SIZE = 100
ITEM_ID = re.compile(r"^(copy|relay)-[0-9]{1,18}$")
FILTERS = ("portfolio", "member", "kind", "state")


def _item_id(visit: Visit) -> str:
    item_id = str(visit.request.path_params["item"])
    if not ITEM_ID.match(item_id):
        raise NotFound(f"not in any queue: {item_id}")
    return item_id


@area.route("/queues", scope=Scope.OPERATOR)
async def waiting(visit: Visit) -> Response:
    chosen = {name: visit.request.query_params.get(name, "").strip() for name in FILTERS}
    problems: dict[str, str] = {}
    if chosen["kind"] and chosen["kind"] not in queue.KINDS:
        problems["kind"] = "queues.bad_kind"
    if chosen["state"] and chosen["state"] not in queue.STATES:
        problems["state"] = "queues.bad_state"
    page = page_number(visit)
    items: list[QueueItem] = []
    if not problems:
        given = {name: value or None for name, value in chosen.items()}
        where = QueueFilter(given["portfolio"], given["member"], given["state"], given["kind"])
        # The two queues are merged by age, so a page needs everything before it from both.
        offset = (page - 1) * PAGE_SIZE
        found = await visit.console.read(lambda c: queue.queue_items(c, where, limit=offset + PAGE_SIZE + 1))
        items = found[offset:]
    query = {k: v for k, v in chosen.items() if v}
    notice = visit.request.query_params.get("done", "")
    done_item = visit.request.query_params.get("item", "")
    return visit.render(
        "queues_list.html",
        400 if problems else 200,
        items=items[:PAGE_SIZE],
        chosen=chosen,
        problems=problems,
        kinds=queue.KINDS,
        states=queue.STATES,
        page=page,
        more=len(items) > PAGE_SIZE and page < MAX_PAGE,
        query=urlencode(query),
        notice=notice if notice in ("retried", "dropped", "busy") else "",
        done_item=done_item if ITEM_ID.match(done_item) else "",
        now=dt.datetime.now(dt.UTC),
    )


async def _show(visit: Visit, status: int = 200, problem: str = "", detail: str = "") -> Response:
    """The item's page; ``problem`` (a message id) and ``detail`` say what went wrong with a button."""
    item_id = _item_id(visit)
    (item,) = await visit.console.read(lambda c: queue.find_items(c, [item_id]))
    return visit.render(
        "queues_show.html", status, item=item, problem=problem, detail=detail, now=dt.datetime.now(dt.UTC)
    )


@area.route("/queues/{item}", scope=Scope.OPERATOR)
async def show(visit: Visit) -> Response:
    return await _show(visit)


def _done(item_id: str, what: str) -> Response:
    return RedirectResponse("/queues?" + urlencode({"done": what, "item": item_id}), status_code=303)


@area.route("/queues/{item}/retry", scope=Scope.OPERATOR, methods=("POST",))
async def retry(visit: Visit) -> Response:
    item_id, actor = _item_id(visit), visit.actor
    lifetime = visit.console.operations.settings.relay.lifetime
    done = await visit.console.write(
        lambda c: queue.retry(c, queue.find_items(c, [item_id]), actor, dt.datetime.now(dt.UTC), lifetime)
    )
    if not done:
        return _done(item_id, "busy")
    visit.console.operations.wake()
    return _done(item_id, "retried")


@area.route("/queues/{item}/drop", scope=Scope.OPERATOR, methods=("POST",))
async def drop(visit: Visit) -> Response:
    item_id, actor = _item_id(visit), visit.actor
    if visit.form.get("confirm") != "yes":
        return await _show(visit, 400, "queues.confirm_drop")
    try:
        done = await visit.console.write(
            lambda c: queue.drop(c, queue.find_items(c, [item_id]), actor, dt.datetime.now(dt.UTC))
        )
    except NotFound:
        raise
    except InputError as exc:
        # A removal cannot be dropped (the member may no longer see that copy): said next to the button.
        return await _show(visit, 409, "queues.removal_stays", str(exc))
    return _done(item_id, "dropped" if done else "busy")
