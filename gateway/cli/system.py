"""Commands for the gateway itself: ``init``, ``config check``, ``db upgrade|status|backup``, ``secrets``,
``tls``, ``serve``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from gateway.cli.root import (
    EXIT_FAILURE,
    EXIT_INPUT,
    Context,
    cli,
    command,
    emit_json,
    errors_for_people,
    fail,
    json_option,
    pass_context,
)
from gateway.config import FoundConfig, Settings, describe, load_settings, loopback_only, require_files

# SQLAlchemy, Alembic and the database modules are imported where a command needs them: `config check`
# without a database, and every `--help` here, start without them (bench/cli_start.py).
from gateway.errors import GatewayError, InputError, OperationalError


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@click.argument("file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@json_option
@pass_context
def config_check(ctx: Context, file: Path | None, as_json: bool) -> None:
    """Validate FILE (default: the configured file) and print the resolved settings."""
    with errors_for_people(as_json=as_json):
        found = FoundConfig(file, "argument") if file is not None else ctx.found_config
        settings = load_settings(found.path, os.environ)
        require_files(settings)
        data = describe(settings) | {"found_by": found.found_by}
        if as_json:
            emit_json(data)
        else:
            click.echo(f"# {settings.source} ({found.found_by}): valid")
            for line in _flatten(data):
                click.echo(line)
        # sender_auth is per portfolio, in the database: checked where the database can be read; the
        # same check stops `gateway serve` and `directory load` (gateway.domain.mx_exposure).
        refusal, note = _sender_auth_check(settings)
        if note:
            click.echo(f"# {note}", err=True)
        if refusal:
            fail(refusal, EXIT_INPUT, as_json=as_json)


def _sender_auth_check(settings: Settings) -> tuple[str | None, str | None]:
    """(why the portfolios' sender_auth cannot stand, a note for the admin); both None when all is well.

    Read with a few plain statements (gateway.db.peek), not the engine and Alembic: this is most of what
    `config check` does, and it should answer at once (bench/cli_start.py)."""
    from gateway.db.peek import portfolios_without_sender_auth
    from gateway.domain.mx_exposure import off_refusal

    mx = settings.listeners.mx
    exposed = mx.enabled and not loopback_only(mx) and not settings.replies.border_mta_authenticates
    sqlite_file = _sqlite_file(settings.database_url)
    if sqlite_file is not None and not sqlite_file.exists():
        # There is nothing to check yet (and `db upgrade` creates it).
        return None, _unchecked(settings, "no database yet") if exposed else None
    try:
        off = portfolios_without_sender_auth(settings.database_url)
    except GatewayError as exc:
        return None, _unchecked(settings, str(exc)) if exposed else None
    refusal = off_refusal(
        off,
        mx_enabled=mx.enabled,
        mx_host=mx.host,
        mx_loopback_only=loopback_only(mx),
        border_mta_authenticates=settings.replies.border_mta_authenticates,
    )
    return refusal, None


def _sqlite_file(url: str) -> Path | None:
    """The file of an SQLite database URL (sqlite[+driver]:///PATH[?…]); None for other databases
    and for SQLite in memory. Read without SQLAlchemy, which `config check` need not load for it."""
    scheme, sep, rest = url.partition(":///")
    if not sep or scheme.split("+")[0] != "sqlite":
        return None
    path = rest.split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _unchecked(settings: Settings, why: str) -> str:
    return (
        f"portfolios' sender_auth not checked ({why}); the MX listener binds to "
        f"{settings.listeners.mx.host} without [replies] border_mta_authenticates, so every portfolio "
        "needs sender_auth verify or trust-authentication-results (off is refused)"
    )


def _flatten(data: object, prefix: str = "") -> Iterator[str]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield f"{prefix} = {json.dumps(data, ensure_ascii=False)}"


@cli.group("db")
def db_group() -> None:
    """Create and migrate the database."""


@db_group.command("upgrade")
@pass_context
@command
async def db_upgrade(ctx: Context) -> None:
    """Migrate the database to this gateway's schema (creates it when new)."""
    from gateway.db.engine import create_engine
    from gateway.db.migrate import upgrade
    from gateway.db.schema_state import schema_state

    engine = create_engine(ctx.settings.database_url)
    try:
        before = await schema_state(engine)
        after = await upgrade(engine)
    finally:
        await engine.dispose()
    if before.current == after.current:
        click.echo(f"database is up to date (revision {after.current})")
    else:
        click.echo(f"database migrated from {before.current or 'empty'} to {after.current}")


@db_group.command("status")
@json_option
@pass_context
@command
async def db_status(ctx: Context, as_json: bool) -> None:
    """Show the database's schema revision and whether it is current."""
    from gateway.db.engine import create_engine
    from gateway.db.schema_state import schema_state

    engine = create_engine(ctx.settings.database_url)
    try:
        state = await schema_state(engine)
    finally:
        await engine.dispose()
    if as_json:
        emit_json(
            {
                "current": state.current,
                "head": state.head,
                "up_to_date": state.up_to_date,
                "known": state.known,
            }
        )
    elif state.up_to_date:
        click.echo(f"database is up to date (revision {state.current})")
    elif not state.known:
        click.echo(state.newer_than_code())
        sys.exit(EXIT_FAILURE)
    else:
        click.echo(
            f"database is at {state.current or 'no schema'}, this gateway needs {state.head}: "
            "run `gateway db upgrade`"
        )
        sys.exit(EXIT_FAILURE)


@db_group.command("backup")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--quiet", "-q", is_flag=True, help="No progress lines, only the result.")
@pass_context
def db_backup(ctx: Context, file: Path, quiet: bool) -> None:
    """Copy the SQLite database to FILE, consistently, while the gateway runs (never overwrites FILE).

    For PostgreSQL it prints the pg_dump command to run instead (exit status 2). Restore: docs/deploy.md.
    """
    from gateway.db.backup import backup_sqlite

    shown = [-1]

    def progress(done: int, total: int) -> None:
        # Only big files say how far they are: ten lines at most.
        percent = 100 * done // total if total else 100
        if not quiet and total >= _PROGRESS_FROM_PAGES and percent // 10 > shown[0]:
            shown[0] = percent // 10
            click.echo(f"copied {percent}% ({done} of {total} pages)", err=True)

    with errors_for_people():
        result = backup_sqlite(ctx.settings.database_url, file, progress)
        size = f"{result.size / 2**20:.1f} MiB"
        click.echo(f"wrote {result.path} ({size}, schema revision {result.revision or 'none'})")


# 64 MiB of 4 KiB pages: smaller databases are copied in well under a second.
_PROGRESS_FROM_PAGES = 16_384


@cli.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
def init(directory: Path) -> None:
    """Write a starter set into DIRECTORY: gateway.toml (paths relative to it), directory.yaml, rules/ and
    a README saying what to edit. Never overwrites: exits 2 naming what exists."""
    from gateway.config.starter import write_starter

    with errors_for_people():
        try:
            starter = write_starter(directory)
        except OSError as exc:
            raise OperationalError(f"cannot write the starter set into {directory}: {exc}") from exc
        for path in starter.written:
            click.echo(f"wrote {path}")
        click.echo(f"next: edit them, then `gateway --config {starter.config} config check` (docs/deploy.md)")


@cli.command("serve")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes sharing the listeners, each a node of its own (PostgreSQL only; default: "
    "[gateway] workers, 1).",
)
@click.option("--worker-ready-fd", type=int, default=None, hidden=True)
@pass_context
def serve(ctx: Context, workers: int | None, worker_ready_fd: int | None) -> None:
    """Run the gateway until SIGTERM or SIGINT.

    SIGHUP reloads the routing rules (rules/ files; an invalid set is refused and the rules in force
    stay); the gateway also reloads them by itself when the files change. With --workers N (or
    [gateway] workers) N processes named <node_name>-1 … -N share the listeners; a supervisor passes
    the signals on and starts a worker that ended again (docs/scaling.md).
    """
    from gateway.config import workers_refusal

    with errors_for_people():
        settings = ctx.settings
        require_files(settings)
        found = ctx.found_config
        count = workers if workers is not None else settings.gateway.workers
        if worker_ready_fd is None and count > 1:
            refusal = workers_refusal(count, settings.database_url_unresolved)
            if refusal is not None:
                raise InputError(f"--workers {refusal}")
            from gateway.supervisor import supervise

            sys.exit(supervise(settings, found.path.absolute(), count))
        from gateway.service import run

        run(settings, f"{found.path.absolute()} ({found.found_by})", ready_fd=worker_ready_fd)


# --- secrets ---------------------------------------------------------------------------------------------


@cli.group("secrets")
def secrets_group() -> None:
    """Create the reply-token keys the configuration names."""


@secrets_group.command("init")
@pass_context
def secrets_init(ctx: Context) -> None:
    """Create the signing key (the first of secrets.token_key_files) unless it exists."""
    from gateway.keys import create_token_key

    with errors_for_people():
        path = ctx.settings.secrets.token_key_files[0]
        try:
            created = create_token_key(path)
        except OSError as exc:
            raise OperationalError(f"cannot write the reply-token key {path}: {exc}") from exc
        click.echo(f"{'created' if created else 'kept the existing'} reply-token key {path}")


@secrets_group.command("new-key")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@pass_context
def secrets_new_key(ctx: Context, file: Path) -> None:
    """Write a new key to FILE, for rotation: put FILE first in token_key_files and keep the old ones
    after it, so replies to copies made before the change still verify."""
    from gateway.keys import create_token_key

    with errors_for_people():
        try:
            created = create_token_key(file)
        except OSError as exc:
            raise OperationalError(f"cannot write {file}: {exc}") from exc
        if not created:
            # The admin named the file: that is an input to change, not the gateway failing (exit 2).
            raise InputError(f"{file} exists already; a key is never overwritten (choose another name)")
        click.echo(f"wrote a new reply-token key to {file}")


@cli.group("tls")
def tls_group() -> None:
    """TLS helpers for development."""


@tls_group.command("selfsigned")
@click.option(
    "--cert",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("tls/cert.pem"),
    show_default=True,
    help="Certificate file; a relative path is in the configuration's folder, as tls_cert reads it.",
)
@click.option(
    "--key",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("tls/key.pem"),
    show_default=True,
    help="Private key file; a relative path is in the configuration's folder, as tls_key reads it.",
)
@click.option("--hostname", default=None, help="Name in the certificate (default: gateway.hostname).")
@pass_context
def tls_selfsigned(ctx: Context, cert: Path, key: Path, hostname: str | None) -> None:
    """Write a self-signed certificate and key for local STARTTLS (point listeners.*.tls_cert/key at them).

    Relative paths are taken from the configuration file's folder, where tls_cert and tls_key are read
    from, so the lines it prints can go into the configuration as they are.
    """
    from gateway.tls import write_selfsigned

    with errors_for_people():
        name = hostname or ctx.settings.gateway.hostname
        folder = ctx.config_file.absolute().parent
        cert_file, key_file = folder / cert, folder / key  # an absolute path stays as it is
        if cert_file.exists() or key_file.exists():
            raise InputError(
                f"{cert_file if cert_file.exists() else key_file} exists already; not overwritten"
            )
        try:
            write_selfsigned(cert_file, key_file, name)
        except OSError as exc:
            raise OperationalError(f"cannot write {cert_file} / {key_file}: {exc}") from exc
        click.echo(f"wrote {cert_file} and {key_file} for {name}; in {ctx.config_file}:")
        click.echo(f'  tls_cert = "{cert}"\n  tls_key = "{key}"')
