"""``gateway db backup FILE``: a consistent copy of a SQLite database taken while others write to it; for
PostgreSQL the pg_dump command line, which works as printed."""

from __future__ import annotations

import re
import shlex
import sqlite3
import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url

from gateway.db.backup import backup_sqlite
from gateway.db.migrate import head_revision
from tests.conftest import Gateway


def is_sqlite(database_url: str) -> bool:
    return make_url(database_url).get_backend_name() == "sqlite"


def test_the_backup_restores_to_a_working_database(
    seeded: Gateway, database_url: str, tmp_path: Path
) -> None:
    """SQLite: `gateway db backup` writes the copy. PostgreSQL: it prints the pg_dump command (exit 2),
    which works as printed, and pg_restore brings the dump back. Either way the restored database serves."""
    if is_sqlite(database_url):
        restored_url = sqlite_backup(seeded, tmp_path)
    else:
        restored_url = postgresql_backup(seeded, database_url, tmp_path)
    restored = tmp_path / "restored.toml"
    restored.write_text(f'[gateway]\ndata_dir = "data2"\n[database]\nurl = "{restored_url}"\n')
    try:
        assert Gateway(restored)("db", "status").stdout.startswith("database is up to date")
        exported = Gateway(restored)("directory", "export").stdout
        assert exported == seeded("directory", "export").stdout
        assert "makler-muster" in exported
    finally:
        if not is_sqlite(database_url):
            name = make_url(restored_url).database
            subprocess.run(["dropdb", *PG_CONNECTION, "--if-exists", "--force", str(name)], check=True)


PG_CONNECTION = ["-h", "127.0.0.1", "-p", "5432", "-U", "postgres"]


def sqlite_backup(seeded: Gateway, tmp_path: Path) -> str:
    target = tmp_path / "backups" / "gateway-1.db"
    target.parent.mkdir()
    result = seeded("db", "backup", str(target))
    assert re.fullmatch(
        rf"wrote {target} \(\d+\.\d MiB, schema revision {head_revision()}\)\n", result.stdout
    )
    assert sorted(p.name for p in target.parent.iterdir()) == ["gateway-1.db"], "no partial file left"
    with sqlite3.connect(target) as copy:
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",), "one self-contained file"
    return f"sqlite+aiosqlite:///{target}"


def postgresql_backup(seeded: Gateway, database_url: str, tmp_path: Path) -> str:
    target = tmp_path / "gateway.dump"
    result = seeded("db", "backup", str(target), expect=2)
    assert result.stderr.startswith("gateway: error: the database is PostgreSQL; back it up with pg_dump")
    (command,) = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("pg_dump ")]
    url = make_url(database_url)
    assert command == (
        f"pg_dump --format=custom --file={target} "
        f"--dbname=postgresql://{url.username}@{url.host}:{url.port}/{url.database}"
    )
    assert not target.exists()
    subprocess.run(shlex.split(command), check=True, timeout=120)
    # Restored as docs/deploy.md says: into a new, empty database.
    name = f"{url.database}_restored"
    subprocess.run(["createdb", *PG_CONNECTION, name], check=True, timeout=60)
    restored = url.set(database=name)
    subprocess.run(
        [
            "pg_restore",
            "--no-owner",
            "--exit-on-error",
            f"--dbname={restored.set(drivername='postgresql').render_as_string(hide_password=False)}",
            str(target),
        ],
        check=True,
        timeout=120,
    )
    return restored.render_as_string(hide_password=False)


def test_backup_never_overwrites(seeded: Gateway, database_url: str, tmp_path: Path) -> None:
    target = tmp_path / "taken.db"
    target.write_text("an older backup\n")
    result = seeded("db", "backup", str(target), expect=2)
    if is_sqlite(database_url):
        assert result.stderr == (
            f"gateway: error: {target} exists already; "
            "a backup never overwrites a file (choose another name)\n"
        )
    assert target.read_text() == "an older backup\n"


def make_database(path: Path, rows: int) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE item (body BLOB)")
    connection.execute("BEGIN")
    connection.executemany("INSERT INTO item VALUES (randomblob(1000))", [()] * rows)
    connection.execute("COMMIT")
    return connection


def test_the_copy_is_the_database_as_the_backup_began_while_writes_go_on(tmp_path: Path) -> None:
    source = tmp_path / "live.db"
    writer = make_database(source, 3000)
    steps: list[tuple[int, int]] = []

    def write_meanwhile(done: int, total: int) -> None:
        # The running gateway commits between two steps of the copy.
        steps.append((done, total))
        writer.execute("INSERT INTO item VALUES (x'00')")

    backup = backup_sqlite(
        f"sqlite+aiosqlite:///{source}", tmp_path / "copy.db", write_meanwhile, pages_per_step=50
    )
    assert len(steps) > 10, "copied in many steps"
    assert [done for done, _ in steps] == sorted(done for done, _ in steps)
    assert steps[-1][0] == steps[-1][1], "the last step reports all pages done"
    with sqlite3.connect(backup.path) as copy:
        assert copy.execute("SELECT count(*) FROM item").fetchone() == (3000,)
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert writer.execute("SELECT count(*) FROM item").fetchone() == (3000 + len(steps),)
    assert backup.revision is None, "not a gateway database: no schema revision"
    writer.close()


def test_a_missing_database_is_an_operational_error(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\ndata_dir = "data"\n')
    result = Gateway(config)("db", "backup", str(tmp_path / "copy.db"), expect=1)
    assert result.stderr == f"gateway: error: there is no database at {tmp_path / 'data' / 'gateway.db'}\n"
    assert not (tmp_path / "data" / "gateway.db").exists(), "none was created"


def test_a_big_database_reports_its_progress(tmp_path: Path) -> None:
    source = tmp_path / "big.db"
    with sqlite3.connect(source) as connection:
        connection.execute("CREATE TABLE item (body BLOB)")
        # 72 MiB: over the 64 MiB from which the command reports progress.
        connection.executemany("INSERT INTO item VALUES (randomblob(1048576))", [()] * 72)
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\ndata_dir = "data"\n[database]\nurl = "sqlite+aiosqlite:///{source}"\n')
    result = Gateway(config)("db", "backup", str(tmp_path / "copy.db"))
    lines = result.stderr.splitlines()
    assert all(line.startswith("copied ") for line in lines)
    assert lines[-1].startswith("copied 100% (")
    assert 3 <= len(lines) <= 11, "about every tenth, not every step"
    assert result.stdout.startswith(f"wrote {tmp_path / 'copy.db'} (72.")

    quiet = Gateway(config)("db", "backup", "--quiet", str(tmp_path / "copy2.db"))
    assert quiet.stderr == ""
