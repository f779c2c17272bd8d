"""Database URLs read and written without SQLAlchemy: what the settings need of ``[database] url``.

Loading the settings must stay cheap: ``gateway config check`` and every command's start read them, and
importing SQLAlchemy for ``sqlalchemy.engine.make_url`` alone cost about 0.2 s of CPU, a third of the
check (bench/cli_start.py). This module follows SQLAlchemy 2's own rules (``engine/url.py``:
``_parse_url`` and ``URL.render_as_string``) to the character, so a URL means and prints the same
either way; tests/stages/test_dburl.py holds the two side by side.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, quote_plus, unquote

__all__ = ["DatabaseUrl", "mask_password"]

# SQLAlchemy's pattern (sqlalchemy/engine/url.py, _parse_url), unchanged.
_URL_RE = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
    """,
    re.X,
)


@dataclass(frozen=True, slots=True)
class DatabaseUrl:
    """The parts of a database URL, as SQLAlchemy's ``URL`` has them."""

    drivername: str
    username: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    query: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Each key once, in the order first seen, with its values in order."""

    @classmethod
    def parse(cls, text: str) -> DatabaseUrl:
        """The URL ``text`` names; ValueError when it is none (SQLAlchemy raises ArgumentError there)."""
        match = _URL_RE.match(text)
        if match is None:
            raise ValueError("not a database URL")
        parts = match.groupdict()
        query: dict[str, list[str]] = {}
        if parts["query"] is not None:
            for key, value in parse_qsl(parts["query"]):
                query.setdefault(key, []).append(value)
        port = parts["port"]
        return cls(
            drivername=parts["name"],
            username=_unquoted(parts["username"]),
            password=_unquoted(parts["password"]),
            host=parts["ipv4host"] or parts["ipv6host"],
            # As SQLAlchemy: a port that is no number (or "host:" with nothing after) is a ValueError.
            port=None if port is None else int(port),
            database=_unquoted(parts["database"]),
            query=tuple((key, tuple(values)) for key, values in query.items()),
        )

    @property
    def backend(self) -> str:
        """``sqlite``, ``postgresql`` …: the drivername without its ``+driver``."""
        return self.drivername.split("+", 1)[0]

    def replace(self, **changes: object) -> DatabaseUrl:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def render(self, *, hide_password: bool = True) -> str:
        """The URL as text, as SQLAlchemy's ``render_as_string`` writes it."""
        text = self.drivername + "://"
        if self.username is not None:
            text += quote(self.username, safe=" +")
            if self.password is not None:
                text += ":" + ("***" if hide_password else quote(self.password, safe=" +"))
            text += "@"
        if self.host is not None:
            text += f"[{self.host}]" if ":" in self.host else self.host
        if self.port is not None:
            text += f":{self.port}"
        if self.database is not None:
            text += "/" + quote(self.database, safe=" +/")
        if self.query:
            text += "?" + "&".join(
                f"{quote_plus(key)}={quote_plus(value)}"
                for key, values in sorted(self.query)
                for value in values
            )
        return text


def mask_password(url: str) -> str:
    """``url`` with its password shown as ``***``; never the password, even for text that is no URL."""
    try:
        return DatabaseUrl.parse(url).render(hide_password=True)
    except ValueError:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _unquoted(part: str | None) -> str | None:
    return None if part is None else unquote(part)
