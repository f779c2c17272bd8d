"""The resolved settings as data for people and scripts (``gateway config show``), secrets masked."""

from __future__ import annotations

import re

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from gateway.config.sections import Settings


def describe(settings: Settings) -> dict[str, object]:
    """The resolved settings as JSON-able data (paths as strings), database password masked."""
    data = settings.model_dump(mode="json")
    data["database"]["url"] = _mask_password(settings.database_url)
    return {"source": None if settings.source is None else str(settings.source), **data}


def _mask_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Unparseable is unlikely after validation; still never let a password through.
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
