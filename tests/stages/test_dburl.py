"""Database URLs read without SQLAlchemy (gateway.config.dburl) mean and print what SQLAlchemy's
``make_url`` makes of them, for the URLs an admin writes and for any text Hypothesis thinks of."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from gateway.config.dburl import DatabaseUrl, mask_password

WRITTEN = [
    "sqlite+aiosqlite:///data/gateway.db",
    "sqlite+aiosqlite:////var/lib/vorgang-gateway/gateway.db",
    "sqlite:///:memory:",
    "sqlite://",
    "sqlite+aiosqlite:///file:gw?mode=memory&cache=shared&uri=true",
    "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
    "postgresql+psycopg://gateway:s3cr%40t%2Fpw@db.example.net/gateway?sslmode=verify-full&application_name=gw",
    "postgresql://u:p@[::1]:5433/db",
    "postgresql://u@host/db?options=-c%20search_path%3Dgw&options=x",
    "postgresql://:only-password@host/db",
    "postgresql://host:/db",
    "postgresql://host:port/db",
    "postgresql+asyncpg://user name:pass word+x@h/d b",
    "not a url",
    "postgresql:/nohost",
]

TEXT = st.text(alphabet="az09:/@?&=%+[]._- \u00e4", max_size=40)


def same(text: str) -> None:
    try:
        theirs: URL | None = make_url(text)
    except (ArgumentError, ValueError):
        theirs = None
    try:
        ours: DatabaseUrl | None = DatabaseUrl.parse(text)
    except ValueError:
        ours = None
    assert (ours is None) == (theirs is None), text
    if ours is None or theirs is None:
        return
    assert (ours.drivername, ours.username, ours.password, ours.host, ours.port, ours.database) == (
        theirs.drivername,
        theirs.username,
        theirs.password,
        theirs.host,
        theirs.port,
        theirs.database,
    ), text
    assert ours.render(hide_password=False) == theirs.render_as_string(hide_password=False)
    assert ours.render(hide_password=True) == theirs.render_as_string(hide_password=True)
    assert ours.backend == theirs.get_backend_name()
    changed = ours.replace(database="/elsewhere/x.db", password="n3w:pw@")
    assert changed.render(hide_password=False) == theirs.set(
        database="/elsewhere/x.db", password="n3w:pw@"
    ).render_as_string(hide_password=False)


@pytest.mark.parametrize("text", WRITTEN)
def test_urls_as_admins_write_them(text: str) -> None:
    same(text)


@given(TEXT)
def test_any_text(text: str) -> None:
    same(text)


@given(st.builds(lambda *parts: "postgresql+psycopg://{}:{}@{}/{}?{}={}".format(*parts), *[TEXT] * 6))
def test_any_text_in_every_part(text: str) -> None:
    same(text)


def test_the_password_is_masked_even_where_the_text_is_no_url() -> None:
    assert mask_password("postgresql://u:secret@h/d") == "postgresql://u:***@h/d"
    assert "secret" not in mask_password("postgresql://u:secret@h:notaport/d")
