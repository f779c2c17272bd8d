"""Many rows in one statement on PostgreSQL: ``INSERT … SELECT … FROM unnest(arrays)``.

SQLAlchemy's executemany and "insertmanyvalues" render a statement whose text grows with the number of
rows, so each batch size is a new statement for PostgreSQL to parse and plan and for psycopg to convert,
and a batch of a few messages took a dozen round trips. Here every column travels as one array
parameter: the statement's text is the same for any number of rows (psycopg prepares it on the server
after a few uses), and statements that belong together can share one round trip as the parts of one
``WITH`` (``gateway.db.messages.insert_messages``). SQLite has no arrays; its callers keep the
executemany path, where a statement costs a function call, not a round trip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Column, Connection, String, Table, TextClause, text
from sqlalchemy.engine import Dialect

_STATEMENTS: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], TextClause] = {}


def unnest(
    columns: Sequence[Column[Any]], dialect: Dialect, prefix: str, names: Sequence[str] | None = None
) -> str:
    """``unnest(CAST(:prefix_0 AS type[]), …) WITH ORDINALITY AS prefix(names…, ordinality)``: the rows
    the arrays ``prefix_0``, ``prefix_1``, … hold, one per index, numbered in their order; each array
    of the type of its column in ``columns``, named as the column unless ``names`` says otherwise."""
    quote = dialect.identifier_preparer.quote
    arrays = ", ".join(
        f"CAST(:{prefix}_{i} AS {element_type(column, dialect)}[])" for i, column in enumerate(columns)
    )
    named = ", ".join(quote(name) for name in (names or [column.name for column in columns]))
    return f"unnest({arrays}) WITH ORDINALITY AS {prefix}({named}, ordinality)"


def element_type(column: Column[Any], dialect: Dialect) -> str:
    """The type the array of ``column``'s values is cast to: the column's, but a string's without its
    length. A cast to VARCHAR(n) would cut a longer value short; the INSERT's own assignment to the
    column refuses it ("value too long"), as the executemany path does."""
    if isinstance(column.type, String):
        return String().compile(dialect=dialect)
    return column.type.compile(dialect=dialect)


def arrays(
    columns: Sequence[Column[Any]], rows: Sequence[Sequence[Any]], dialect: Dialect, prefix: str
) -> dict[str, list[Any]]:
    """The parameters of ``unnest(columns, dialect, prefix)`` for ``rows`` (values in the order of
    ``columns``): one list per column, each value as its column's type binds it (JSON serialised)."""
    params: dict[str, list[Any]] = {}
    for i, column in enumerate(columns):
        process = column.type.dialect_impl(dialect).bind_processor(dialect)
        values = [row[i] for row in rows]
        params[f"{prefix}_{i}"] = values if process is None else [process(value) for value in values]
    return params


def insert_statement(
    table: Table, columns: Sequence[str], dialect: Dialect, returning: Sequence[str] = ()
) -> TextClause:
    """``INSERT INTO table (columns) SELECT … FROM unnest(…)`` in the arrays' order, ``RETURNING`` the
    ``returning`` columns; built once per table and columns (the same text lets it be prepared)."""
    key = (dialect.name, table.name, tuple(columns), tuple(returning))
    statement = _STATEMENTS.get(key)
    if statement is None:
        quote = dialect.identifier_preparer.quote
        names = ", ".join(quote(column) for column in columns)
        source = unnest([table.c[column] for column in columns], dialect, "r")
        sql = f"INSERT INTO {quote(table.name)} ({names}) SELECT {names} FROM {source} ORDER BY ordinality"
        if returning:
            sql += " RETURNING " + ", ".join(quote(column) for column in returning)
        statement = _STATEMENTS[key] = text(sql)
    return statement


def insert_rows(
    connection: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    returning: Sequence[str] = (),
) -> list[tuple[Any, ...]]:
    """Insert ``rows`` (all with the same keys) into ``table`` in one statement on PostgreSQL; the
    ``returning`` columns of the new rows (in no promised order: return a key to match them by)."""
    if not rows:
        return []
    columns = list(rows[0])
    statement = insert_statement(table, columns, connection.dialect, returning)
    values = [[row[column] for column in columns] for row in rows]
    result = connection.execute(
        statement, arrays([table.c[column] for column in columns], values, connection.dialect, "r")
    )
    return [tuple(row) for row in result] if returning else []
