"""Times as admins type them for a filter: ISO 8601 (UTC unless a zone is given) or a span back from now.

``gateway events --since 2h`` and the console's filter fields read them the same way.
"""

from __future__ import annotations

import datetime as dt
import re

_SPAN = re.compile(r"(\d{1,9})\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class InvalidTime(ValueError):
    """The text is neither a time nor a span back from now; the message says what is accepted."""


def parse_when(text: str, now: dt.datetime) -> dt.datetime:
    """``text`` as an aware UTC time: ``2026-11-27``, ``2026-11-27T09:30`` (UTC unless a zone is given),
    or a span back from ``now`` such as ``30m``, ``2h``, ``7d``."""
    text = text.strip()
    span = _SPAN.fullmatch(text)
    if span:
        try:
            return now - dt.timedelta(**{_UNITS[span[2]]: int(span[1])})
        except OverflowError:
            pass  # a span reaching before year 1 is no time either; said below
    else:
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            return when.astimezone(dt.UTC)
    raise InvalidTime(
        f"{text!r} is neither a time like 2026-11-27 or 2026-11-27T09:30 (UTC unless a zone is "
        "given) nor a span back from now like 30m, 2h, 7d"
    )
