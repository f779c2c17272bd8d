"""The resolved settings as data for people and scripts (``gateway config show``), secrets masked."""

from __future__ import annotations

from gateway.config.dburl import mask_password
from gateway.config.sections import Settings


def describe(settings: Settings) -> dict[str, object]:
    """The resolved settings as JSON-able data (paths as strings), database password masked."""
    data = settings.model_dump(mode="json")
    data["database"]["url"] = mask_password(settings.database_url)
    return {"source": None if settings.source is None else str(settings.source), **data}
