"""The root ``gateway`` group and what every command shares: the context, errors turned into messages
and exit codes, async command bodies, transactions and JSON output.

Exit status: 0 done, 2 for usage and input errors (a bad option, file, name or rule), 1 when the gateway
could not do the work (database unreachable, not migrated). Every command that prints data takes --json.
"""

from __future__ import annotations

import asyncio
import functools
import getpass
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway import __version__
from gateway.config import Settings, config_path, load_settings
from gateway.db.directory import RECONCILE_RUNS
from gateway.db.engine import create_engine, session_factory
from gateway.db.migrate import require_current
from gateway.db.writer import Writer
from gateway.domain.directory import Change
from gateway.errors import (
    GatewayError,
    InputError,
    OperationalError,
    ProblemsError,
    StorageError,
)

T = TypeVar("T")

EXIT_FAILURE = 1
EXIT_INPUT = 2


# --- plumbing ----------------------------------------------------------------------------------------------


class Context:
    """What every command needs: where the configuration is, and who is acting (for the event log)."""

    def __init__(self, config: Path | None) -> None:
        self.config_file = config_path(config, os.environ)
        self._settings: Settings | None = None
        self.actor = f"cli:{_login()}"

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_file, os.environ)
        return self._settings


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


pass_context = click.make_pass_decorator(Context)


def fail(message: str, status: int) -> NoReturn:
    click.echo(f"gateway: error: {message}", err=True)
    sys.exit(status)


@contextmanager
def errors_for_people() -> Iterator[None]:
    """Turn the gateway's errors into one clear message and the documented exit status."""
    try:
        yield
    except ProblemsError as exc:
        click.echo(f"gateway: error: {exc.summary}", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(EXIT_INPUT)
    except InputError as exc:
        fail(str(exc), EXIT_INPUT)
    except OperationalError as exc:
        fail(str(exc), EXIT_FAILURE)
    except GatewayError as exc:
        fail(str(exc), EXIT_FAILURE)


def command(func: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async command body in a fresh event loop, with errors turned into messages."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        with errors_for_people():
            asyncio.run(func(*args, **kwargs))

    return wrapper


@asynccontextmanager
async def database(ctx: Context) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on the configured, migrated database, for a command that needs more than one."""
    settings = ctx.settings
    engine = create_engine(settings.database_url, echo=settings.database.echo)
    try:
        await require_current(engine)
        yield session_factory(engine)
    finally:
        await engine.dispose()


async def in_transaction(
    ctx: Context, work: Callable[[AsyncSession], Awaitable[T]], *, write: bool = True
) -> T:
    """Run ``work`` in one transaction on the configured, migrated database; commit only if it succeeds."""
    async with database(ctx) as sessions, sessions() as session:
        try:
            result = await work(session)
            if write:
                await session.commit()
                _tell_about_runs(session.info.get(RECONCILE_RUNS, []))
            return result
        except (DBAPIError, SQLAlchemyError) as exc:
            raise StorageError(f"the database refused the change: {exc}") from exc


async def on_writer(ctx: Context, work: Callable[[Connection], T]) -> T:
    """Run ``work`` in one transaction on the writer's Core connection, on the migrated database."""
    settings = ctx.settings
    engine = create_engine(settings.database_url, echo=settings.database.echo)
    try:
        await require_current(engine)
    finally:
        await engine.dispose()
    writer = Writer(settings.database_url, echo=settings.database.echo)
    try:
        return await writer.run(work)
    except (DBAPIError, SQLAlchemyError) as exc:
        raise StorageError(f"the database refused the work: {exc}") from exc
    finally:
        await writer.close()


def _tell_about_runs(runs: Sequence[tuple[str, int, bool]]) -> None:
    """Tell the admin that existing copies follow a directory change (DESIGN.md §3), and where to watch;
    on stderr, so that output for scripts (--json) stays what it is."""
    for portfolio, run_id, restarted in runs:
        what = "started over" if restarted else "recorded"
        click.echo(
            f"reconcile run {run_id} {what} for portfolio {portfolio}: existing copies follow the change "
            "(`gateway reconcile status` shows the progress)",
            err=True,
        )


def emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def print_changes(changes: Sequence[Change], as_json: bool, *, dry_run: bool = False) -> None:
    if as_json:
        emit_json(
            [{"change": c.describe(), "action": c.action, "kind": c.kind, "name": c.name} for c in changes]
        )
        return
    prefix = "would " if dry_run else ""
    for change in changes:
        click.echo(prefix + change.describe())
    if not changes:
        click.echo("nothing to change")


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
portfolio_option = click.option(
    "-p",
    "--portfolio",
    envvar="GATEWAY_PORTFOLIO",
    required=True,
    help="The portfolio (Bestand) to work in; also $GATEWAY_PORTFOLIO.",
)


# --- the root of the command tree ---------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "-c",
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Configuration file (default: $GATEWAY_CONFIG, else config/gateway.toml).",
)
@click.version_option(__version__, prog_name="gateway")
@click.pass_context
def cli(click_ctx: click.Context, config: Path | None) -> None:
    """vorgang-gateway: shares a customer's Vorgänge across the members of a release group by mail."""
    click_ctx.obj = Context(config)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="gateway")
    except KeyboardInterrupt:
        fail("interrupted", 130)
