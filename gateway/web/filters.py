"""What the list pages (Vorgänge, the event log) share: reading filter fields and times from the query,
and the links to the next page that keep the filters."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from urllib.parse import urlencode

from gateway.domain.times import InvalidTime, parse_when
from gateway.web.routes import Visit


def fields(visit: Visit, names: tuple[str, ...]) -> dict[str, str]:
    """The query's value of each filter field, stripped; "" for a field not given."""
    query = visit.request.query_params
    return {name: query.get(name, "").strip() for name in names}


def when(visit: Visit, values: Mapping[str, str], name: str, problems: dict[str, str]) -> dt.datetime | None:
    """The time in field ``name`` (as `gateway events --since` reads it), None when empty; a time that
    is none is a problem of that field."""
    if not values[name]:
        return None
    try:
        return parse_when(values[name], dt.datetime.now(dt.UTC))
    except InvalidTime:
        problems[name] = visit.t("filters.error.time", value=values[name])
        return None


def link(path: str, values: Mapping[str, str], **more: str | int) -> str:
    """``path`` with the filters given (empty ones left out) and ``more``, as a query string."""
    kept = {k: v for k, v in values.items() if v} | {k: str(v) for k, v in more.items()}
    return f"{path}?{urlencode(kept)}" if kept else path
