"""Online backup of the gateway's database: a consistent copy of a SQLite file while the gateway runs
(sqlite3's backup API); for PostgreSQL, the pg_dump command line that does the same.

The copy is taken inside one read transaction on the source, so in WAL mode it is the database as of
that moment: the running gateway keeps writing (readers never block it in WAL mode), and its later
commits are neither in the copy nor restart it, which a copy made in steps without that transaction
would do after every write (a busy gateway's backup would never end). The copy is written to a hidden
file beside the target and linked into place at the end, so a copy cut short never looks like a backup
and an existing file is never overwritten.
"""

from __future__ import annotations

import os
import shlex
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from gateway.errors import InputError, OperationalError

# Pages copied per step: 4 MiB with SQLite's default 4 KiB pages, so progress comes a few times a second.
PAGES_PER_STEP = 1024


@dataclass(frozen=True, slots=True)
class Backup:
    """A finished backup: where it is, its size, and the schema revision it holds."""

    path: Path
    size: int
    revision: str | None


Progress = Callable[[int, int], None]
"""Called after each step with (pages copied, pages in all)."""


def pg_dump_command(database_url: str, file: Path) -> str:
    """The pg_dump command line that backs up the PostgreSQL database ``database_url`` to ``file``.

    The password is left out: pg_dump reads it from ~/.pgpass or $PGPASSWORD, never the command line.
    """
    url = make_url(database_url).set(drivername="postgresql", password=None)
    target = url.render_as_string(hide_password=False)
    return f"pg_dump --format=custom --file={shlex.quote(str(file))} --dbname={shlex.quote(target)}"


def backup_sqlite(
    database_url: str, file: Path, progress: Progress | None = None, *, pages_per_step: int = PAGES_PER_STEP
) -> Backup:
    """Copy the SQLite database of ``database_url`` to ``file``, consistently, while others write to it.

    Raises InputError when ``file`` exists or the URL is not a SQLite file (for PostgreSQL the message
    is the pg_dump command), OperationalError when the database cannot be read or the copy not written.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        raise InputError(
            "the database is PostgreSQL; back it up with pg_dump (it takes a consistent copy while the "
            f"gateway runs):\n  {pg_dump_command(database_url, file)}"
        )
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        raise InputError(f"cannot back up {url.render_as_string()}: not a SQLite file or PostgreSQL")
    source = Path(url.database)
    if file.exists() or file.is_symlink():
        raise InputError(f"{file} exists already; a backup never overwrites a file (choose another name)")
    if not source.is_file():
        raise OperationalError(f"there is no database at {source}")
    if file.absolute() == source.absolute():
        raise InputError(f"{file} is the database itself")

    partial = file.with_name(f".{file.name}.partial-{os.getpid()}")
    try:
        _copy(source, partial, progress, pages_per_step)
        # link() refuses an existing name, so a file that appeared meanwhile is not replaced either.
        os.link(partial, file)
    except FileExistsError:
        raise InputError(
            f"{file} exists already; a backup never overwrites a file (choose another name)"
        ) from None
    except (sqlite3.Error, OSError) as exc:
        raise OperationalError(f"cannot back up {source} to {file}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return Backup(file, file.stat().st_size, _revision(file))


def _copy(source: Path, target: Path, progress: Progress | None, pages_per_step: int) -> None:
    # mode=rw: never create an empty database where the real one was expected.
    reader = sqlite3.connect(f"file:{source}?mode=rw", uri=True, isolation_level=None)
    writer = sqlite3.connect(target, isolation_level=None)
    try:
        reader.execute("PRAGMA busy_timeout=10000")
        # The snapshot: everything committed up to here, nothing later (see the module's docstring).
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM sqlite_master").fetchone()

        def step(_status: int, remaining: int, total: int) -> None:
            if progress is not None:
                progress(total - remaining, total)

        reader.backup(writer, pages=pages_per_step, progress=step)
        reader.execute("COMMIT")
        # A backup is one self-contained file: no -wal beside it to lose when it is copied about.
        writer.execute("PRAGMA journal_mode=DELETE")
        (verdict,) = writer.execute("PRAGMA quick_check").fetchone()
        if verdict != "ok":
            raise OperationalError(f"the copy failed SQLite's check: {verdict}")
    finally:
        writer.close()
        reader.close()
    # The copy is durable before it gets its name.
    descriptor = os.open(target, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _revision(file: Path) -> str | None:
    connection = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
    try:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    finally:
        connection.close()
    return None if row is None else str(row[0])
