"""A look into the database without SQLAlchemy or Alembic, for ``gateway config check``: is it at this
gateway's schema, and which portfolios take members' replies without sender authentication.

A few statements on a plain DB-API connection (the standard library's sqlite3, or psycopg), read-only:
the check starts in a third of the time it took with the async engine and Alembic's migration context
(bench/cli_start.py). It answers what ``require_current`` and ``senderauth.portfolios_without_sender_auth``
answer, in the same words; tests/stages/test_peek.py holds them side by side on SQLite and PostgreSQL.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from gateway.config.dburl import DatabaseUrl
from gateway.db.revisions import behind_code, newer_than_code, no_schema, shipped
from gateway.errors import DatabaseNotReady

CONNECT_TIMEOUT = 10

# gateway.domain.directory.SenderAuth.OFF as stored; not imported, as that module brings the reconcile
# planner along (a tenth of the check). tests/stages/test_peek.py keeps the two equal.
SENDER_AUTH_OFF = "off"


class _Cursor(Protocol):
    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...
    def fetchall(self) -> list[tuple[Any, ...]]: ...


def portfolios_without_sender_auth(url: str) -> list[str]:
    """The names of the portfolios with ``sender_auth: off``, by name, in the database at ``url``.

    Raises DatabaseNotReady when the database cannot be opened or is not at this gateway's schema.
    """
    parsed = DatabaseUrl.parse(url)
    where = parsed.render(hide_password=True)
    try:
        connection = _connect(parsed)
    except DatabaseNotReady:
        raise
    except Exception as exc:  # every driver's own error class: sqlite3.Error, psycopg.Error, OSError …
        raise DatabaseNotReady(f"cannot open the database {where}: {exc}") from exc
    with closing(connection):
        cursor = connection.cursor()
        sqlite = parsed.backend == "sqlite"
        mark = "?" if sqlite else "%s"
        try:
            _require_current(cursor, where, sqlite=sqlite)
            cursor.execute(
                f"SELECT name FROM portfolios WHERE sender_auth = {mark} ORDER BY name", (SENDER_AUTH_OFF,)
            )
            return [str(name) for (name,) in cursor.fetchall()]
        except DatabaseNotReady:
            raise
        except Exception as exc:
            raise DatabaseNotReady(f"cannot read the database {where}: {exc}") from exc


def _require_current(cursor: _Cursor, where: str, *, sqlite: bool) -> None:
    if sqlite:
        cursor.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'")
    else:
        # Where Alembic looks: the first schema of the search path that has it.
        cursor.execute("SELECT to_regclass('alembic_version') IS NOT NULL")
    [(tables,)] = cursor.fetchall()
    rows = []
    if tables:
        cursor.execute("SELECT version_num FROM alembic_version")
        rows = cursor.fetchall()
    if not rows:
        raise DatabaseNotReady(no_schema(where))
    current, schema = str(rows[0][0]), shipped()
    if current not in schema.known:
        raise DatabaseNotReady(newer_than_code(current, schema.head))
    if current != schema.head:
        raise DatabaseNotReady(behind_code(current, schema.head))


def _connect(url: DatabaseUrl) -> Any:
    if url.backend == "sqlite":
        import sqlite3

        database = url.database or ""
        if not database or database == ":memory:":
            raise DatabaseNotReady(no_schema(url.render()))
        if database.startswith("file:"):
            return sqlite3.connect(database, uri=True, timeout=CONNECT_TIMEOUT)
        # Read-only: a missing file is an error here, never a new empty database.
        return sqlite3.connect(
            f"file:{quote(str(Path(database)))}?mode=ro", uri=True, timeout=CONNECT_TIMEOUT
        )
    if url.backend == "postgresql":
        try:
            import psycopg
        except ImportError as exc:
            raise DatabaseNotReady(
                "the PostgreSQL driver is not installed: install vorgang-gateway[postgresql]"
            ) from exc
        # As SQLAlchemy's psycopg dialect does: the URL's parts, and its query as libpq's parameters.
        params: dict[str, Any] = {
            key: value
            for key, value in (
                ("host", url.host),
                ("port", url.port),
                ("user", url.username),
                ("password", url.password),
                ("dbname", url.database),
            )
            if value is not None
        }
        params |= {key: values[-1] for key, values in url.query}
        params.setdefault("connect_timeout", CONNECT_TIMEOUT)
        return psycopg.connect(autocommit=True, **params)
    raise DatabaseNotReady(f"cannot open the database {url.render()}: no such database kind ({url.backend})")
