"""The ``gateway`` command: the only place that turns errors into messages for people and exit codes.

Exit status: 0 done, 2 for usage and input errors (a bad option, file, name or rule), 1 when the gateway
could not do the work (database unreachable, not migrated). Every command that prints data takes --json.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
import getpass
import json
import os
import re
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import __version__, admin
from gateway.config import Settings, config_path, describe, load_settings
from gateway.db import quarantine
from gateway.db import reconcile as reconcile_db
from gateway.db.directory import RECONCILE_RUNS
from gateway.db.engine import create_engine, session_factory
from gateway.db.migrate import require_current, schema_state, upgrade
from gateway.db.models import utc
from gateway.db.writer import Writer
from gateway.directory_file import dump_directory, read_directory_file, relay_data
from gateway.domain.directory import (
    Change,
    MemberSpec,
    PortfolioSpec,
    RelaySpec,
    RelayTls,
    ReleaseSpec,
    SenderAuth,
)
from gateway.domain.model import ParticipantRole, ReadSync
from gateway.domain.reconcile import Backfill, RevokedCopies
from gateway.errors import (
    GatewayError,
    InputError,
    NotFound,
    OperationalError,
    ProblemsError,
    StorageError,
)
from gateway.reconcile import work_run

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


def _fail(message: str, status: int) -> NoReturn:
    click.echo(f"gateway: error: {message}", err=True)
    sys.exit(status)


@contextmanager
def _errors_for_people() -> Iterator[None]:
    """Turn the gateway's errors into one clear message and the documented exit status."""
    try:
        yield
    except ProblemsError as exc:
        click.echo(f"gateway: error: {exc.summary}", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(EXIT_INPUT)
    except InputError as exc:
        _fail(str(exc), EXIT_INPUT)
    except OperationalError as exc:
        _fail(str(exc), EXIT_FAILURE)
    except GatewayError as exc:
        _fail(str(exc), EXIT_FAILURE)


def command(func: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async command body in a fresh event loop, with errors turned into messages."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        with _errors_for_people():
            asyncio.run(func(*args, **kwargs))

    return wrapper


async def _in_transaction(
    ctx: Context, work: Callable[[AsyncSession], Awaitable[T]], *, write: bool = True
) -> T:
    """Run ``work`` in one transaction on the configured, migrated database; commit only if it succeeds."""
    settings = ctx.settings
    engine = create_engine(settings.database_url, echo=settings.database.echo)
    try:
        await require_current(engine)
        async with session_factory(engine)() as session:
            try:
                result = await work(session)
                if write:
                    await session.commit()
                    _tell_about_runs(session.info.get(RECONCILE_RUNS, []))
                return result
            except (DBAPIError, SQLAlchemyError) as exc:
                raise StorageError(f"the database refused the change: {exc}") from exc
    finally:
        await engine.dispose()


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


def _emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _print_changes(changes: Sequence[Change], as_json: bool, *, dry_run: bool = False) -> None:
    if as_json:
        _emit_json(
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


# --- the command tree ------------------------------------------------------------------------------------


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


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@click.argument("file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@json_option
@pass_context
def config_check(ctx: Context, file: Path | None, as_json: bool) -> None:
    """Validate FILE (default: the configured file) and print the resolved settings."""
    with _errors_for_people():
        settings = load_settings(file or ctx.config_file, os.environ)
        data = describe(settings)
        if as_json:
            _emit_json(data)
        else:
            click.echo(f"# {settings.source or 'built-in defaults'}: valid")
            for line in _flatten(data):
                click.echo(line)


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
    engine = create_engine(ctx.settings.database_url)
    try:
        state = await schema_state(engine)
    finally:
        await engine.dispose()
    if as_json:
        _emit_json({"current": state.current, "head": state.head, "up_to_date": state.up_to_date})
    elif state.up_to_date:
        click.echo(f"database is up to date (revision {state.current})")
    else:
        click.echo(
            f"database is at {state.current or 'no schema'}, this gateway needs {state.head}: "
            "run `gateway db upgrade`"
        )
        sys.exit(EXIT_FAILURE)


@cli.command("serve")
@pass_context
def serve(ctx: Context) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    from gateway.service import run

    with _errors_for_people():
        run(ctx.settings)


# --- secrets ---------------------------------------------------------------------------------------------


@cli.group("secrets")
def secrets_group() -> None:
    """Create the reply-token keys the configuration names."""


@secrets_group.command("init")
@pass_context
def secrets_init(ctx: Context) -> None:
    """Create the signing key (the first of secrets.token_key_files) unless it exists."""
    from gateway.keys import create_token_key

    with _errors_for_people():
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

    with _errors_for_people():
        try:
            created = create_token_key(file)
        except OSError as exc:
            raise OperationalError(f"cannot write {file}: {exc}") from exc
        if not created:
            raise OperationalError(f"{file} exists already; a key is never overwritten (choose another name)")
        click.echo(f"wrote a new reply-token key to {file}")


# --- directory -------------------------------------------------------------------------------------------


@cli.group("directory")
def directory_group() -> None:
    """Load and export the whole directory as YAML."""


@directory_group.command("load")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--prune", is_flag=True, help="Also delete what the file's portfolios have but the file lacks.")
@click.option("--dry-run", is_flag=True, help="Check the file and show the changes without making them.")
@json_option
@pass_context
@command
async def directory_load(ctx: Context, file: Path, prune: bool, dry_run: bool, as_json: bool) -> None:
    """Apply a directory FILE: create or update every portfolio it describes, all or nothing."""
    spec = read_directory_file(file)
    result = await _in_transaction(
        ctx,
        lambda s: admin.load_directory(s, spec, prune=prune, actor=ctx.actor, dry_run=dry_run),
        write=not dry_run,
    )
    if as_json:
        _emit_json({name: [c.describe() for c in changes] for name, changes in result.items()})
        return
    for name, changes in result.items():
        click.echo(f"portfolio {name}: {len(changes)} change(s){' (dry run)' if dry_run else ''}")
        for change in changes:
            click.echo(f"  {change.describe()}")


@directory_group.command("export")
@click.option("-p", "--portfolio", "portfolios", multiple=True, help="Only these portfolios (repeatable).")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Write to a file.")
@pass_context
@command
async def directory_export(ctx: Context, portfolios: tuple[str, ...], output: Path | None) -> None:
    """Print the directory in the format `directory load` reads."""
    spec = await _in_transaction(ctx, lambda s: admin.export_directory(s, portfolios), write=False)
    text = dump_directory(spec)
    if output is None:
        click.echo(text, nl=False)
    else:
        await asyncio.to_thread(output.write_text, text, encoding="utf-8")
        click.echo(f"wrote {len(spec.portfolios)} portfolio(s) to {output}")


# --- portfolios ------------------------------------------------------------------------------------------


@cli.group("portfolio")
def portfolio_group() -> None:
    """Create and configure portfolios (Bestände)."""


sender_auth_option = click.option(
    "--sender-auth",
    type=click.Choice([a.value for a in SenderAuth]),
    help="How members' replies prove their sender: off (no check), trust-authentication-results (believe "
    "our border MTA's Authentication-Results), verify (the gateway checks DKIM/SPF/DMARC).",
)


@portfolio_group.command("create")
@click.argument("name")
@click.option("--display-name", default="", help="Name shown to people.")
@sender_auth_option
@json_option
@pass_context
@command
async def portfolio_create(
    ctx: Context, name: str, display_name: str, sender_auth: str | None, as_json: bool
) -> None:
    """Create the portfolio NAME."""
    changes = await _in_transaction(
        ctx,
        lambda s: admin.create_portfolio(
            s, name, display_name, ctx.actor, sender_auth=SenderAuth(sender_auth or SenderAuth.OFF)
        ),
    )
    _print_changes(changes, as_json)


@portfolio_group.command("set")
@click.argument("name")
@click.option("--display-name", default=None)
@click.option(
    "--share-vorgaenge-available/--no-share-vorgaenge-available",
    default=None,
    help="Operator switch: make the 'Vorgänge teilen' feature available to this portfolio's releases.",
)
@sender_auth_option
@json_option
@pass_context
@command
async def portfolio_set(
    ctx: Context,
    name: str,
    display_name: str | None,
    share_vorgaenge_available: bool | None,
    sender_auth: str | None,
    as_json: bool,
) -> None:
    """Change the portfolio NAME."""
    changes = await _in_transaction(
        ctx,
        lambda s: admin.set_portfolio(
            s,
            name,
            display_name=display_name,
            share_vorgaenge_available=share_vorgaenge_available,
            sender_auth=SenderAuth(sender_auth) if sender_auth else None,
            actor=ctx.actor,
        ),
    )
    _print_changes(changes, as_json)


def _portfolio_data(p: PortfolioSpec) -> dict[str, object]:
    return {
        "name": p.name,
        "display_name": p.display_name,
        "share_vorgaenge_available": p.share_vorgaenge_available,
        "sender_auth": p.sender_auth.value,
        "backoffices": [
            {
                "name": b.name,
                "ams_version": b.ams_version,
                "addresses": list(b.addresses),
                "relay": relay_data(b.relay) if b.relay else None,
            }
            for b in p.backoffices
        ],
        "releases": [_release_data(r, p.members) for r in p.releases],
        "members": [_member_data(m) for m in p.members],
    }


def _release_data(r: ReleaseSpec, members: Sequence[MemberSpec]) -> dict[str, object]:
    return {
        "name": r.name,
        "primary": r.primary,
        "share_vorgaenge": r.share_vorgaenge,
        "read_sync": r.read_sync.value,
        "backfill": str(r.backfill),
        "revoked_copies": r.revoked_copies.value,
        "members": [m.address for m in members if r.name in m.releases],
    }


def _member_data(m: MemberSpec) -> dict[str, object]:
    return {"address": m.address, "name": m.display_name, "releases": list(m.releases)}


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


@portfolio_group.command("list")
@json_option
@pass_context
@command
async def portfolio_list(ctx: Context, as_json: bool) -> None:
    """List the portfolios."""
    portfolios = await _in_transaction(ctx, admin.list_portfolios, write=False)
    if as_json:
        _emit_json([_portfolio_data(p) for p in portfolios])
        return
    for p in portfolios:
        click.echo(
            f"{p.name}\t{p.display_name}\tsharing available: {_yes(p.share_vorgaenge_available)}\t"
            f"{len(p.members)} member(s), {len(p.releases)} release(s)"
        )


@portfolio_group.command("show")
@click.argument("name")
@json_option
@pass_context
@command
async def portfolio_show(ctx: Context, name: str, as_json: bool) -> None:
    """Show the portfolio NAME with its back offices, releases and members."""
    p = await _in_transaction(ctx, lambda s: admin.show_portfolio(s, name), write=False)
    if as_json:
        _emit_json(_portfolio_data(p))
        return
    click.echo(f"portfolio {p.name} ({p.display_name})")
    click.echo(f"  sharing available: {_yes(p.share_vorgaenge_available)}")
    click.echo(f"  sender authentication of replies: {p.sender_auth.value}")
    for b in p.backoffices:
        click.echo(
            f"  back office {b.name}: ams {b.ams_version or '?'}, sends as {', '.join(b.addresses) or '-'}, "
            f"{_relay_text(b.relay)}"
        )
    for r in p.releases:
        click.echo(f"  {_release_line(r)}")
        for m in p.members:
            if r.name in m.releases:
                click.echo(f"    {m.display_name or '-'} <{m.address}>")


def _relay_text(relay: RelaySpec | None) -> str:
    if relay is None:
        return "no relay (receives no replies; set one with `gateway backoffice set NAME --relay-host …`)"
    return f"replies relayed to {relay}"


def _release_line(r: ReleaseSpec) -> str:
    # The reconciliation policies only where they differ from the defaults, which most releases keep.
    policies = "".join(
        f", {key} {value}"
        for key, value, default in (
            ("backfill", str(r.backfill), "all"),
            ("revoked_copies", r.revoked_copies.value, RevokedCopies.REMOVE.value),
        )
        if value != default
    )
    return (
        f'release "{r.name}": primary {_yes(r.primary)}, share_vorgaenge {_yes(r.share_vorgaenge)}, '
        f"read_sync {r.read_sync.value}{policies}"
    )


# --- members ---------------------------------------------------------------------------------------------


@cli.group("member")
def member_group() -> None:
    """Add, rename, remove and list members."""


@member_group.command("add")
@click.argument("address")
@click.option("--name", "display_name", default="", help="Display name, like SB-A1.")
@portfolio_option
@json_option
@pass_context
@command
async def member_add(ctx: Context, address: str, display_name: str, portfolio: str, as_json: bool) -> None:
    """Add the member ADDRESS to a portfolio."""
    changes = await _in_transaction(
        ctx, lambda s: admin.add_member(s, portfolio, address, display_name, ctx.actor)
    )
    _print_changes(changes, as_json)


@member_group.command("set")
@click.argument("address")
@click.option("--name", "display_name", required=True, help="New display name.")
@portfolio_option
@json_option
@pass_context
@command
async def member_set(ctx: Context, address: str, display_name: str, portfolio: str, as_json: bool) -> None:
    """Change the member ADDRESS."""
    changes = await _in_transaction(
        ctx, lambda s: admin.set_member(s, portfolio, address, display_name, ctx.actor)
    )
    _print_changes(changes, as_json)


@member_group.command("remove")
@click.argument("address")
@portfolio_option
@json_option
@pass_context
@command
async def member_remove(ctx: Context, address: str, portfolio: str, as_json: bool) -> None:
    """Delete the member ADDRESS (only a member without messages; otherwise remove it from its releases)."""
    changes = await _in_transaction(ctx, lambda s: admin.remove_member(s, portfolio, address, ctx.actor))
    _print_changes(changes, as_json)


@member_group.command("list")
@portfolio_option
@json_option
@pass_context
@command
async def member_list(ctx: Context, portfolio: str, as_json: bool) -> None:
    """List the members of a portfolio with their releases."""
    p = await _in_transaction(ctx, lambda s: admin.show_portfolio(s, portfolio), write=False)
    if as_json:
        _emit_json([_member_data(m) for m in p.members])
        return
    for m in p.members:
        click.echo(f"{m.address}\t{m.display_name}\t{', '.join(m.releases) or '-'}")


# --- releases --------------------------------------------------------------------------------------------


@cli.group("release")
def release_group() -> None:
    """Create and change releases (Freischaltungen) and their members."""


read_sync_option = click.option(
    "--read-sync",
    type=click.Choice([r.value for r in ReadSync]),
    help="Which read state members of the release share: answered (default), seen, off.",
)


def _backfill(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Backfill | None:
    if value is None:
        return None
    try:
        return Backfill.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


backfill_option = click.option(
    "--backfill",
    callback=_backfill,
    metavar="all|days:N|none",
    help="What a member newly entitled through the release receives of existing messages (default all).",
)
revoked_copies_option = click.option(
    "--revoked-copies",
    type=click.Choice([r.value for r in RevokedCopies]),
    help="Whether copies members lose through the release are removed (default) or kept.",
)


@release_group.command("create")
@click.argument("name")
@click.option("--primary", is_flag=True, help="Make it a primary release (Hauptfreischaltung).")
@click.option("--share-vorgaenge", is_flag=True, help="Members see and answer each other's Vorgänge.")
@read_sync_option
@backfill_option
@revoked_copies_option
@portfolio_option
@json_option
@pass_context
@command
async def release_create(
    ctx: Context,
    name: str,
    primary: bool,
    share_vorgaenge: bool,
    read_sync: str | None,
    backfill: Backfill | None,
    revoked_copies: str | None,
    portfolio: str,
    as_json: bool,
) -> None:
    """Create the release NAME."""
    changes = await _in_transaction(
        ctx,
        lambda s: admin.create_release(
            s,
            portfolio,
            name,
            primary=primary,
            share_vorgaenge=share_vorgaenge,
            read_sync=ReadSync(read_sync or ReadSync.ANSWERED),
            backfill=backfill,
            revoked_copies=RevokedCopies(revoked_copies) if revoked_copies else None,
            actor=ctx.actor,
        ),
    )
    _print_changes(changes, as_json)


@release_group.command("set")
@click.argument("name")
@click.option("--primary/--no-primary", default=None)
@click.option("--share-vorgaenge/--no-share-vorgaenge", default=None)
@read_sync_option
@backfill_option
@revoked_copies_option
@portfolio_option
@json_option
@pass_context
@command
async def release_set(
    ctx: Context,
    name: str,
    primary: bool | None,
    share_vorgaenge: bool | None,
    read_sync: str | None,
    backfill: Backfill | None,
    revoked_copies: str | None,
    portfolio: str,
    as_json: bool,
) -> None:
    """Change the flags of the release NAME."""
    changes = await _in_transaction(
        ctx,
        lambda s: admin.set_release(
            s,
            portfolio,
            name,
            primary=primary,
            share_vorgaenge=share_vorgaenge,
            read_sync=ReadSync(read_sync) if read_sync else None,
            backfill=backfill,
            revoked_copies=RevokedCopies(revoked_copies) if revoked_copies else None,
            actor=ctx.actor,
        ),
    )
    _print_changes(changes, as_json)


@release_group.command("delete")
@click.argument("name")
@portfolio_option
@json_option
@pass_context
@command
async def release_delete(ctx: Context, name: str, portfolio: str, as_json: bool) -> None:
    """Delete the release NAME (its members lose what it gave them)."""
    changes = await _in_transaction(ctx, lambda s: admin.delete_release(s, portfolio, name, ctx.actor))
    _print_changes(changes, as_json)


@release_group.command("add-member")
@click.argument("name")
@click.argument("address")
@portfolio_option
@json_option
@pass_context
@command
async def release_add_member(ctx: Context, name: str, address: str, portfolio: str, as_json: bool) -> None:
    """Add the member ADDRESS to the release NAME."""
    changes = await _in_transaction(
        ctx, lambda s: admin.add_release_member(s, portfolio, name, address, ctx.actor)
    )
    _print_changes(changes, as_json)


@release_group.command("remove-member")
@click.argument("name")
@click.argument("address")
@portfolio_option
@json_option
@pass_context
@command
async def release_remove_member(ctx: Context, name: str, address: str, portfolio: str, as_json: bool) -> None:
    """Remove the member ADDRESS from the release NAME."""
    changes = await _in_transaction(
        ctx, lambda s: admin.remove_release_member(s, portfolio, name, address, ctx.actor)
    )
    _print_changes(changes, as_json)


@release_group.command("show")
@click.argument("name")
@portfolio_option
@json_option
@pass_context
@command
async def release_show(ctx: Context, name: str, portfolio: str, as_json: bool) -> None:
    """Show the release NAME and its members."""
    view = await _in_transaction(ctx, lambda s: admin.show_release(s, portfolio, name), write=False)
    if as_json:
        _emit_json(_release_data(view.release, view.members) | {"portfolio": view.portfolio})
        return
    click.echo(_release_line(view.release))
    for m in view.members:
        click.echo(f"  {m.display_name or '-'} <{m.address}>")


@release_group.command("list")
@portfolio_option
@json_option
@pass_context
@command
async def release_list(ctx: Context, portfolio: str, as_json: bool) -> None:
    """List the releases of a portfolio."""
    p = await _in_transaction(ctx, lambda s: admin.show_portfolio(s, portfolio), write=False)
    if as_json:
        _emit_json([_release_data(r, p.members) for r in p.releases])
        return
    for r in p.releases:
        members = [m.display_name or m.address for m in p.members if r.name in m.releases]
        click.echo(f"{_release_line(r)}: {', '.join(members) or 'no members'}")


# --- back offices ----------------------------------------------------------------------------------------


@cli.group("backoffice")
def backoffice_group() -> None:
    """Register the back-office systems (ams …) that send into a portfolio."""


_RELAY_OPTIONS = (
    click.option("--relay-host", help="The back office's SMTP server that members' replies are relayed to."),
    click.option("--relay-port", type=int, help="Its port (default 25)."),
    click.option(
        "--relay-tls",
        type=click.Choice([t.value for t in RelayTls]),
        help="none (plain), starttls (default), tls (TLS from the first byte, usually port 465).",
    ),
    click.option(
        "--relay-login", help="Login for SMTP AUTH at the back office (with --relay-password-file)."
    ),
    click.option(
        "--relay-password-file",
        help="File holding that password; only the path is stored (relative: to the working directory).",
    ),
    click.option(
        "--relay-timeout", type=int, help="Seconds to wait for the back office's server (default 30)."
    ),
)


def relay_options(func: Callable[..., T]) -> Callable[..., T]:
    """The --relay-… options of `backoffice add|set`, handed to the command as one ``relay`` argument."""

    @functools.wraps(func)
    def wrapper(
        *args: Any,
        relay_host: str | None,
        relay_port: int | None,
        relay_tls: str | None,
        relay_login: str | None,
        relay_password_file: str | None,
        relay_timeout: int | None,
        **kwargs: Any,
    ) -> T:
        relay = admin.RelayOptions(
            host=relay_host,
            port=relay_port,
            tls=RelayTls(relay_tls) if relay_tls else None,
            login=relay_login,
            password_file=relay_password_file,
            timeout=relay_timeout,
        )
        return func(*args, relay=relay, **kwargs)

    for option in reversed(_RELAY_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


@backoffice_group.command("add")
@click.argument("name")
@click.option("--ams-version", default="", help="Version of the back office, like 4.8.0.64470.")
@click.option("--address", "addresses", multiple=True, help="An address it sends from (repeatable).")
@relay_options
@portfolio_option
@json_option
@pass_context
@command
async def backoffice_add(
    ctx: Context,
    name: str,
    ams_version: str,
    addresses: tuple[str, ...],
    relay: admin.RelayOptions,
    portfolio: str,
    as_json: bool,
) -> None:
    """Register the back office NAME; without --relay-host it receives no replies."""
    changes = await _in_transaction(
        ctx,
        lambda s: admin.add_backoffice(s, portfolio, name, ams_version, addresses, ctx.actor, relay=relay),
    )
    _print_changes(changes, as_json)


@backoffice_group.command("set")
@click.argument("name")
@click.option("--ams-version", default=None)
@click.option("--add-address", "add_addresses", multiple=True)
@click.option("--remove-address", "remove_addresses", multiple=True)
@relay_options
@click.option(
    "--no-relay", is_flag=True, help="Remove the relay settings: the back office receives no replies."
)
@portfolio_option
@json_option
@pass_context
@command
async def backoffice_set(
    ctx: Context,
    name: str,
    ams_version: str | None,
    add_addresses: tuple[str, ...],
    remove_addresses: tuple[str, ...],
    relay: admin.RelayOptions,
    no_relay: bool,
    portfolio: str,
    as_json: bool,
) -> None:
    """Change the back office NAME; --relay-… options change only what they name ('' removes a login)."""
    changes = await _in_transaction(
        ctx,
        lambda s: admin.set_backoffice(
            s,
            portfolio,
            name,
            ams_version=ams_version,
            add_addresses=add_addresses,
            remove_addresses=remove_addresses,
            relay=dataclasses.replace(relay, remove=no_relay),
            actor=ctx.actor,
        ),
    )
    _print_changes(changes, as_json)


@backoffice_group.command("remove")
@click.argument("name")
@portfolio_option
@json_option
@pass_context
@command
async def backoffice_remove(ctx: Context, name: str, portfolio: str, as_json: bool) -> None:
    """Remove the back office NAME."""
    changes = await _in_transaction(ctx, lambda s: admin.remove_backoffice(s, portfolio, name, ctx.actor))
    _print_changes(changes, as_json)


@backoffice_group.command("password")
@click.argument("name")
@click.option("--login", default=None, help="Login for SMTP AUTH (default: the first sending address).")
@click.option(
    "--password-file",
    type=click.File("r"),
    help="Read the password from this file ('-' for standard input) instead of asking.",
)
@portfolio_option
@pass_context
@command
async def backoffice_password(
    ctx: Context, name: str, login: str | None, password_file: Any, portfolio: str
) -> None:
    """Set the password the back office NAME logs in with on the submission listener."""
    if password_file is not None:
        password = password_file.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    login, created = await _in_transaction(
        ctx, lambda s: admin.set_backoffice_password(s, portfolio, name, password, login, ctx.actor)
    )
    click.echo(f"{'created' if created else 'changed'} login {login} for back office {name}")


@backoffice_group.command("list")
@portfolio_option
@json_option
@pass_context
@command
async def backoffice_list(ctx: Context, portfolio: str, as_json: bool) -> None:
    """List the back offices of a portfolio."""
    p = await _in_transaction(ctx, lambda s: admin.show_portfolio(s, portfolio), write=False)
    if as_json:
        _emit_json(_portfolio_data(p)["backoffices"])
        return
    for b in p.backoffices:
        click.echo(
            f"{b.name}\tams {b.ams_version or '?'}\t{', '.join(b.addresses) or '-'}\t{_relay_text(b.relay)}"
        )


# --- reconciliation ----------------------------------------------------------------------------------------


@cli.group("reconcile")
def reconcile_group() -> None:
    """Bring existing copies in line with the directory (back-fill, revocation); docs/reconcile.md."""


def _run_data(run: reconcile_db.RunView) -> dict[str, object]:
    return dataclasses.asdict(run) | {"progress": _progress(run)}


def _progress(run: reconcile_db.RunView) -> str:
    return f"{run.processed}/{run.total}"


@reconcile_group.command("status")
@click.option("-p", "--portfolio", default=None, help="Only this portfolio's runs.")
@click.option("--recent", default=10, show_default=True, help="How many finished runs to show.")
@json_option
@pass_context
@command
async def reconcile_status(ctx: Context, portfolio: str | None, recent: int, as_json: bool) -> None:
    """Open and recent reconcile runs with their progress."""

    def read(connection: Connection) -> list[reconcile_db.RunView]:
        pid = reconcile_db.portfolio_id_of(connection, portfolio) if portfolio else None
        return reconcile_db.runs(connection, portfolio_id=pid, recent=recent)

    found = await _on_writer(ctx, read)
    if as_json:
        _emit_json([_run_data(r) for r in found])
        return
    if not found:
        click.echo("no reconcile runs yet (a directory change that can change audiences records one)")
        return
    for r in found:
        when = r.finished_at or r.updated_at
        click.echo(
            f"run {r.id}  {r.portfolio}  {r.state}  {_progress(r)} messages  backfilled {r.backfilled}  "
            f"revoked {r.revoked}  kept {r.kept}  {'finished' if r.finished_at else 'updated'} "
            f"{when:%Y-%m-%d %H:%M:%S}"
        )
        click.echo(f"    because: {r.reason}")
        if r.state == "open" and r.leased_by:
            click.echo(f"    worked by {r.leased_by}" + (f" (restarted {r.restarts}x)" if r.restarts else ""))
        if r.last_error:
            click.echo(f"    last error: {r.last_error}")


@reconcile_group.command("run")
@click.option("-p", "--portfolio", default=None, help="Only this portfolio (default: every portfolio).")
@click.option(
    "--wait",
    is_flag=True,
    help="Work the run here, batch by batch, with a progress bar (a running gateway's run is followed).",
)
@json_option
@pass_context
@command
async def reconcile_run(ctx: Context, portfolio: str | None, wait: bool, as_json: bool) -> None:
    """Record a reconcile run (unless one is open) and, with --wait, see it to its end.

    Copies the run back-fills reach the mailboxes through the fan-out of `gateway serve`; copies it
    revokes are removed by it too.
    """
    actor = ctx.actor

    def record(connection: Connection) -> list[tuple[int, str, bool]]:
        pids = (
            [reconcile_db.portfolio_id_of(connection, portfolio)]
            if portfolio
            else reconcile_db.portfolio_ids(connection)
        )
        now = datetime.datetime.now(datetime.UTC)
        return [reconcile_db.ensure_run(connection, pid, "requested by an admin", actor, now) for pid in pids]

    recorded = await _on_writer(ctx, record)
    if not wait:
        if as_json:
            _emit_json([{"run": rid, "portfolio": name, "new": new} for rid, name, new in recorded])
            return
        for rid, name, new in recorded:
            click.echo(f"run {rid} for portfolio {name} {'recorded' if new else 'is open already'}")
        click.echo("`gateway reconcile status` shows the progress; `gateway serve` works the runs")
        return
    settings = ctx.settings
    writer = Writer(settings.database_url, echo=settings.database.echo)
    node = f"cli:{socket.gethostname()}:{os.getpid()}"
    finished: list[reconcile_db.RunView] = []
    try:
        for rid, name, _ in recorded:
            label = f"run {rid} {name}"
            if not sys.stderr.isatty():
                # No bar where nobody watches it redraw (a log, a pipe): one line per batch instead.
                shown: list[str] = []

                def line(view: reconcile_db.RunView, label: str = label, shown: list[str] = shown) -> None:
                    if shown[-1:] != [_progress(view)]:
                        shown.append(_progress(view))
                        click.echo(f"{label}: {_progress(view)} messages", err=True)

                finished.append(await work_run(writer, settings.reconcile, rid, node=node, on_progress=line))
                continue
            (before,) = await writer.run(lambda c, rid=rid: reconcile_db.runs(c, run_id=rid, recent=1))
            length = max(before.total, 1)
            with click.progressbar(length=length, label=label, show_pos=True, file=sys.stderr) as bar:

                def show(view: reconcile_db.RunView, bar: Any = bar) -> None:
                    bar.length = max(view.total, view.processed, 1)
                    bar.update(view.processed - bar.pos)

                finished.append(await work_run(writer, settings.reconcile, rid, node=node, on_progress=show))
    except (DBAPIError, SQLAlchemyError) as exc:
        raise StorageError(
            f"the database failed during the run: {exc}; run the command again to go on"
        ) from exc
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    finally:
        # Interrupted (Ctrl-C) or failed: give the runs back at once rather than after their lease,
        # so a running gateway goes on with them where this process stopped.
        with contextlib.suppress(Exception):
            for rid, _, _ in recorded:
                await writer.run(reconcile_db.release_run, rid, node)
        await writer.close()
    if as_json:
        _emit_json([_run_data(r) for r in finished])
        return
    for r in finished:
        click.echo(
            f"run {r.id} {r.portfolio}: {r.processed} message(s), backfilled {r.backfilled}, "
            f"revoked {r.revoked}, kept {r.kept}"
        )
    if any(r.backfilled or r.revoked for r in finished):
        click.echo("the copies reach the mailboxes (or leave them) through the fan-out of `gateway serve`")


async def _on_writer(ctx: Context, work: Callable[[Connection], T]) -> T:
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


# --- Vorgänge and TLS -----------------------------------------------------------------------------------


@cli.group("vorgang")
def vorgang_group() -> None:
    """Look at Vorgänge (cases) and where their copies stand."""


@vorgang_group.command("show")
@click.argument("reference")
@portfolio_option
@json_option
@pass_context
@command
async def vorgang_show(ctx: Context, reference: str, portfolio: str, as_json: bool) -> None:
    """List the messages of the Vorgang REFERENCE (VG-YYYY-NNNNNN) and each copy's state."""
    view = await _in_transaction(ctx, lambda s: admin.show_vorgang(s, portfolio, reference), write=False)
    if as_json:
        _emit_json(dataclasses.asdict(view))
        return
    click.echo(f"{view.reference} in portfolio {view.portfolio}: {view.subject}")
    for m in view.messages:
        kind = "" if m.kind == "message" else f" ({m.kind}, not relayed)"
        author = f" from {m.author}" if m.author else ""
        click.echo(f"  {m.received_at}  {m.gateway_id}  {m.direction}{author}{kind}  {m.subject}")
        if m.relay is not None:
            relay = m.relay
            said = relay.last_reply or relay.last_error or "not tried yet"
            # The back office's own mail is never relayed: what the queue holds for it is the read
            # notification a member's first read sent (gateway.flagsync).
            what = "read notification (MDN)" if m.direction == "inbound" else "relay"
            click.echo(
                f"      {what} to {', '.join(relay.to)}: {relay.state}, attempts {relay.attempts}: {said}"
            )
        for c in m.copies:
            via = f" (shared via {c.shared_via})" if c.shared_via else ""
            error = f" last error: {c.last_error}" if c.last_error else ""
            click.echo(f"      {c.state:<9} {c.address}{via} attempts {c.attempts}{error}")


class _When(click.ParamType[datetime.datetime]):
    """A time for --since/--until: ISO 8601 (a date, or a date and time; UTC unless a zone is given),
    or a span back from now such as 30m, 2h, 7d."""

    name = "TIME"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime.datetime:
        if isinstance(value, datetime.datetime):
            return value
        text = str(value).strip()
        span = re.fullmatch(r"(\d+)\s*([smhdw])", text)
        if span:
            units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
            back = datetime.timedelta(**{units[span[2]]: int(span[1])})
            return datetime.datetime.now(datetime.UTC) - back
        try:
            when = datetime.datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{text!r} is neither a time like 2026-11-27 or 2026-11-27T09:30 (UTC unless a zone is "
                "given) nor a span back from now like 30m, 2h, 7d",
                param,
                ctx,
            )
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        return when.astimezone(datetime.UTC)


WHEN = _When()
since_option = click.option(
    "--since", type=WHEN, help="From this time on: 2026-11-27, 2026-11-27T09:30, 2h, 7d."
)
until_option = click.option("--until", type=WHEN, help="Before this time (same forms as --since).")


def _copies_text(copies: dict[str, int]) -> str:
    if not copies:
        return "no copies"
    return ", ".join(
        f"{n} {state}" for state, n in sorted(copies.items(), key=lambda item: (-item[1], item[0]))
    )


@vorgang_group.command("list")
@portfolio_option
@click.option(
    "--member", default=None, help="Only Vorgänge this member sees (has a copy of, or took part in)."
)
@since_option
@until_option
@click.option("--search", default=None, help="Only Vorgänge whose subject, reference or key contains this.")
@click.option(
    "--limit", default=50, show_default=True, type=click.IntRange(1, 100_000), help="At most this many."
)
@json_option
@pass_context
@command
async def vorgang_list(
    ctx: Context,
    portfolio: str,
    member: str | None,
    since: datetime.datetime | None,
    until: datetime.datetime | None,
    search: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The portfolio's Vorgänge with their last mail in the time given, most recently active first."""
    found = await _in_transaction(
        ctx,
        lambda s: admin.list_vorgaenge(
            s, portfolio, member=member, since=since, until=until, search=search, limit=limit
        ),
        write=False,
    )
    if as_json:
        _emit_json([dataclasses.asdict(v) for v in found])
        return
    if not found:
        click.echo("no Vorgang matches" if (member or since or until or search) else "no Vorgänge yet")
        return
    for v in found:
        held = f", {v.quarantined} quarantined" if v.quarantined else ""
        key = f" [{v.key}]" if v.key else ""
        click.echo(
            f"{v.reference}  {v.last_message_at or v.created_at}  {v.messages} message(s){held}  "
            f"copies: {_copies_text(v.copies)}  {v.subject}{key}"
        )
    if len(found) == limit:
        click.echo(f"(the first {limit}; --limit shows more, --since/--search narrow them)")


# --- quarantine ------------------------------------------------------------------------------------------


@cli.group("quarantine")
def quarantine_group() -> None:
    """Messages a routing rule held back: look at them, release them to their audience, or drop them."""


def _held_data(q: quarantine.Quarantined) -> dict[str, object]:
    return dataclasses.asdict(q) | {"quarantined_at": utc(q.quarantined_at).isoformat(timespec="seconds")}


@quarantine_group.command("list")
@click.option("-p", "--portfolio", default=None, help="Only this portfolio's (default: every portfolio's).")
@json_option
@pass_context
@command
async def quarantine_list(ctx: Context, portfolio: str | None, as_json: bool) -> None:
    """The quarantined messages, oldest first, with the rule that held each and why."""
    found = await _on_writer(ctx, lambda c: quarantine.list_quarantined(c, portfolio))
    if as_json:
        _emit_json([_held_data(q) for q in found])
        return
    if not found:
        click.echo("nothing is quarantined")
        return
    for q in found:
        data = _held_data(q)
        click.echo(
            f"{q.gateway_id}  {data['quarantined_at']}  {q.portfolio}  {q.vorgang}  "
            f"from {q.envelope_sender or '<>'}  {q.size} bytes  {q.subject}"
        )
        click.echo(f"    held by rule {q.rule!r}: {q.reason}")
    click.echo("(`gateway quarantine show|release|drop ID -p PORTFOLIO` decides on one)")


@quarantine_group.command("show")
@click.argument("gateway_id")
@portfolio_option
@click.option("--raw", is_flag=True, help="Write the message as the back office sent it (to save or pipe).")
@json_option
@pass_context
@command
async def quarantine_show(ctx: Context, gateway_id: str, portfolio: str, raw: bool, as_json: bool) -> None:
    """One quarantined message: why it is held, and its header (or, with --raw, all of it)."""
    held, data = await _on_writer(ctx, lambda c: quarantine.show(c, portfolio, gateway_id))
    if raw:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    header = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("utf-8", "replace")
    if as_json:
        _emit_json(_held_data(held) | {"header": header})
        return
    info = _held_data(held)
    click.echo(f"{held.gateway_id} in {held.portfolio} {held.vorgang}, quarantined {info['quarantined_at']}")
    click.echo(f"held by rule {held.rule!r} ({held.rule_set}): {held.reason}")
    click.echo("")
    click.echo(header.replace("\r\n", "\n"))


@quarantine_group.command("release")
@click.argument("gateway_ids", nargs=-1, required=True, metavar="GATEWAY_ID...")
@portfolio_option
@json_option
@pass_context
@command
async def quarantine_release(
    ctx: Context, gateway_ids: tuple[str, ...], portfolio: str, as_json: bool
) -> None:
    """Give quarantined messages the copies their audience has now; `gateway serve` writes them.

    All or nothing: if one id is not held, none is released.
    """
    actor = ctx.actor

    def release(connection: Connection) -> list[tuple[str, list[str]]]:
        now = datetime.datetime.now(datetime.UTC)
        return [(g, quarantine.release(connection, portfolio, g, actor, now)) for g in gateway_ids]

    released = await _on_writer(ctx, release)
    if as_json:
        _emit_json([{"gateway_id": g, "audience": to} for g, to in released])
        return
    for g, to in released:
        if to:
            click.echo(f"released {g}: copies for {', '.join(to)}")
        else:
            click.echo(f"released {g}: nobody in portfolio {portfolio} may see it, so it has no copies")
    click.echo("the fan-out of `gateway serve` writes the copies into the mailboxes")


@quarantine_group.command("drop")
@click.argument("gateway_ids", nargs=-1, required=True, metavar="GATEWAY_ID...")
@portfolio_option
@click.option("--yes", is_flag=True, help="Do not ask; the message is deleted for good.")
@json_option
@pass_context
@command
async def quarantine_drop(
    ctx: Context, gateway_ids: tuple[str, ...], portfolio: str, yes: bool, as_json: bool
) -> None:
    """Delete quarantined messages for good (the event log keeps that they were, and who dropped them)."""
    if not yes:
        if not sys.stdin.isatty():
            raise InputError(
                "dropping deletes the message for good; add --yes to confirm it without a terminal"
            )
        click.confirm(f"delete {len(gateway_ids)} quarantined message(s) for good?", abort=True)
    actor = ctx.actor

    def drop(connection: Connection) -> None:
        now = datetime.datetime.now(datetime.UTC)
        for g in gateway_ids:
            quarantine.drop(connection, portfolio, g, actor, now)

    await _on_writer(ctx, drop)
    if as_json:
        _emit_json([{"gateway_id": g, "dropped": True} for g in gateway_ids])
        return
    for g in gateway_ids:
        click.echo(f"dropped {g}")


# --- the event log ---------------------------------------------------------------------------------------


@cli.command("events")
@click.option("-p", "--portfolio", default=None, help="Only this portfolio's events.")
@click.option("--member", default=None, help="Only events about this member (address).")
@click.option("--vorgang", default=None, help="Only events of this Vorgang (VG-…) and its messages.")
@click.option("--message", default=None, help="Only events of this message (gw-…).")
@click.option(
    "--kind", "kinds", multiple=True, help="Only this kind, or family: copy, copy.revoked (repeatable)."
)
@since_option
@until_option
@click.option(
    "--after", "after_id", type=int, default=None, help="Only events after this id (to page forward)."
)
@click.option(
    "--limit", default=100, show_default=True, type=click.IntRange(1, 100_000), help="At most this many."
)
@json_option
@pass_context
@command
async def events_command(
    ctx: Context,
    portfolio: str | None,
    member: str | None,
    vorgang: str | None,
    message: str | None,
    kinds: tuple[str, ...],
    since: datetime.datetime | None,
    until: datetime.datetime | None,
    after_id: int | None,
    limit: int,
    as_json: bool,
) -> None:
    """The event log: who changed what, which message went where; the newest LIMIT, oldest first."""
    found = await _in_transaction(
        ctx,
        lambda s: admin.read_events(
            s,
            portfolio=portfolio,
            member=member,
            vorgang=vorgang,
            message=message,
            kinds=kinds,
            since=since,
            until=until,
            after_id=after_id,
            limit=limit,
        ),
        write=False,
    )
    if as_json:
        _emit_json([dataclasses.asdict(e) for e in found])
        return
    if not found:
        click.echo("no events match")
        return
    for e in found:
        about = "  ".join(x for x in (e.portfolio, e.vorgang, e.message, e.member) if x)
        click.echo(f"{e.at}  #{e.id}  {e.kind:<22} {about}  by {e.actor}")
        if e.detail:
            click.echo(f"    {_detail_text(e.detail)}")


def _detail_text(detail: dict[str, Any]) -> str:
    return "  ".join(
        f"{k}={v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)}"
        for k, v in detail.items()
    )


@cli.group("tls")
def tls_group() -> None:
    """TLS helpers for development."""


@tls_group.command("selfsigned")
@click.option(
    "--cert", type=click.Path(path_type=Path, dir_okay=False), required=True, help="Certificate file."
)
@click.option(
    "--key", type=click.Path(path_type=Path, dir_okay=False), required=True, help="Private key file."
)
@click.option("--hostname", default=None, help="Name in the certificate (default: gateway.hostname).")
@pass_context
def tls_selfsigned(ctx: Context, cert: Path, key: Path, hostname: str | None) -> None:
    """Write a self-signed certificate and key for local STARTTLS (point listeners.*.tls_cert/key at them)."""
    from gateway.tls import write_selfsigned

    with _errors_for_people():
        name = hostname or ctx.settings.gateway.hostname
        try:
            write_selfsigned(cert, key, name)
        except OSError as exc:
            raise OperationalError(f"cannot write {cert} / {key}: {exc}") from exc
        click.echo(f"wrote {cert} and {key} for {name}")


# --- who can see -----------------------------------------------------------------------------------------


@cli.command("who-can-see")
@click.argument("message", required=False)
@click.option("-p", "--portfolio", envvar="GATEWAY_PORTFOLIO", help="Portfolio of a hypothetical message.")
@click.option("--to", "to", multiple=True, help="A member the hypothetical message is sent to (repeatable).")
@click.option("--cc", "cc", multiple=True, help="A member in Cc (repeatable).")
@click.option("--from", "sender", default=None, help="The member who sends the hypothetical message.")
@json_option
@pass_context
@command
async def who_can_see(
    ctx: Context,
    message: str | None,
    portfolio: str | None,
    to: tuple[str, ...],
    cc: tuple[str, ...],
    sender: str | None,
    as_json: bool,
) -> None:
    """Who may see MESSAGE (a gateway message id), or a message --to/--cc/--from members, and why."""
    addressed = [(ParticipantRole.SENDER, sender)] if sender else []
    addressed += [(ParticipantRole.TO, a) for a in to] + [(ParticipantRole.CC, a) for a in cc]
    if message and addressed:
        raise InputError("give either a message id or --to/--cc/--from, not both")
    if message:
        explanation = await _in_transaction(ctx, lambda s: admin.who_can_see_message(s, message), write=False)
    else:
        if not portfolio:
            raise InputError("a hypothetical message needs --portfolio (or $GATEWAY_PORTFOLIO)")
        explanation = await _in_transaction(
            ctx, lambda s: admin.who_can_see_hypothetical(s, portfolio, addressed), write=False
        )
    audience = explanation.audience
    rows: list[dict[str, Any]] = [
        {
            "address": explanation.members[mid].address,
            "name": explanation.members[mid].display_name,
            "reasons": [r.describe(explanation.name_of) for r in audience.via(mid)],
        }
        for mid in audience.ordered()
    ]
    if as_json:
        _emit_json({"portfolio": explanation.portfolio, "message": explanation.message, "audience": rows})
        return
    subject = f"message {explanation.message}" if explanation.message else "such a message"
    click.echo(f"{subject} in portfolio {explanation.portfolio} is seen by {len(rows)} member(s):")
    for row in rows:
        label = f"{row['name']} <{row['address']}>" if row["name"] else str(row["address"])
        click.echo(f"  {label}")
        for reason in row["reasons"]:
            click.echo(f"      {reason}")


# --- routing rules ---------------------------------------------------------------------------------------


@cli.group("rules")
def rules_group() -> None:
    """Check the routing rules files (rules/*.yaml) and try them on a saved message."""


rules_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    help="The rules directory (default: [rules] dir of the configuration).",
)


@rules_group.command("check")
@rules_dir_option
@click.option("--files-only", is_flag=True, help="Do not check names against the directory in the database.")
@json_option
@pass_context
@command
async def rules_check(ctx: Context, directory: Path | None, files_only: bool, as_json: bool) -> None:
    """Validate every rules file; print FILE:LINE:COL: reason for each problem (exit status 2)."""
    from gateway.rules_admin import check_rules_dir

    where = directory or ctx.settings.rules.dir
    report = await check_rules_dir(None, where)
    if not report.problems and not files_only:
        report = await _in_transaction(ctx, lambda s: check_rules_dir(s, where), write=False)
    if as_json:
        _emit_json(
            {
                "directory": str(where),
                "valid": not report.problems,
                "rule_set": report.digest or None,
                "files": list(report.files),
                "rules": [{"name": r.name, "at": str(r.where)} for r in report.rules],
                "problems": [{"at": p.where, "reason": p.reason} for p in report.problems],
            }
        )
    else:
        for problem in report.problems:
            click.echo(str(problem))
        if not report.problems:
            click.echo(
                f"{where}: {len(report.rules)} rule(s) in {len(report.files)} file(s), valid; "
                f"rule set {report.digest}"
            )
            for rule in report.rules:
                click.echo(f"  {rule.label()}")
    if report.problems:
        count = len(report.problems)
        click.echo(
            f"gateway: error: {count} problem{'s' if count != 1 else ''} in the rules in {where}; "
            "a running gateway keeps the rules it has",
            err=True,
        )
        sys.exit(EXIT_INPUT)


@rules_group.command("test")
@click.argument("message", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--listener", default="submission", show_default=True, help="The listener the message comes in on."
)
@click.option("--auth", metavar="BACKOFFICE", help="The back office that submits it: its login or its name.")
@click.option("-p", "--portfolio", envvar="GATEWAY_PORTFOLIO", help="The portfolio, if --auth names none.")
@click.option("--from", "mail_from", help="The envelope sender (default: the message's From address).")
@click.option(
    "--to", "rcpt_to", multiple=True, help="An envelope recipient (repeatable; default: To and Cc)."
)
@rules_dir_option
@json_option
@pass_context
@command
async def rules_test(
    ctx: Context,
    message: Path,
    listener: str,
    auth: str | None,
    portfolio: str | None,
    mail_from: str | None,
    rcpt_to: tuple[str, ...],
    directory: Path | None,
    as_json: bool,
) -> None:
    """Show what the rules would do with MESSAGE (an .eml file), without changing anything."""
    from gateway.rules_admin import dry_run, read_message

    raw = read_message(message)
    where = directory or ctx.settings.rules.dir
    run = await _in_transaction(
        ctx,
        lambda s: dry_run(
            s,
            where,
            raw,
            vorgang_header=ctx.settings.intake.vorgang_header,
            listener=listener,
            auth=auth,
            portfolio=portfolio,
            mail_from=mail_from,
            rcpt_to=rcpt_to,
        ),
        write=False,
    )
    decision = run.decision
    if as_json:
        _emit_json(
            {
                "rule_set": run.rule_set,
                "message": {
                    "subject": run.subject,
                    "sender": run.sender,
                    "recipients": list(run.recipients),
                    "size": run.size,
                },
                "backoffice": run.backoffice or None,
                "portfolio": run.portfolio,
                "listener": run.listener,
                "hits": [{"rule": h.rule.label(), "why": list(h.why)} for h in decision.hits],
                "misses": [{"rule": m.rule.label(), "why": list(m.why)} for m in decision.misses],
                "not_tried": [r.label() for r in run.not_tried],
                "verdict": decision.verdict.value,
                "decided_by": decision.decided_by.label() if decision.decided_by else None,
                "notes": [*decision.notes, *run.notes],
                "refused_recipients": [{"address": a, "answer": r} for a, r in run.refused_recipients],
                "vorgang": run.vorgang,
                "found": run.found,
                "vorgang_key": run.vorgang_key,
                "set_headers": dict(decision.set_headers),
                "strip_headers": list(decision.strip_headers),
                "skipped_participants": run.skipped_participants,
                "audience": [dataclasses.asdict(m) for m in run.audience],
                "stored": run.stored,
                "answer": run.answer,
            }
        )
        return
    click.echo(f"rule set {run.rule_set} ({len(run.files)} file(s))")
    click.echo(
        f'message "{run.subject}" from <{run.sender}> to {", ".join(run.recipients)}, {run.size} bytes'
    )
    who = f"back office {run.backoffice}" if run.backoffice else "no back office"
    click.echo(f"{who}, portfolio {run.portfolio}, listener {run.listener}")
    click.echo("rules:")
    tried = sorted(
        [(h.rule, "hit ", h.why) for h in decision.hits] + [(m.rule, "miss", m.why) for m in decision.misses],
        key=lambda t: (t[0].where.file, t[0].where.line),
    )
    for rule, outcome, why in tried:
        click.echo(f"  {outcome}  {rule.label()}")
        for reason in why:
            click.echo(f"          {reason}")
    for rule in run.not_tried:
        click.echo(f"  ----  {rule.label()}: not tried (an earlier hit stopped)")
    if not tried and not run.not_tried:
        click.echo("  (no rules)")
    by = f" (by {decision.decided_by.label()})" if decision.decided_by else " (no rule gave a verdict)"
    click.echo(f"verdict: {decision.verdict.value}{by}")
    for note in [*decision.notes, *run.notes]:
        click.echo(f"note: {note}")
    for address, reply in run.refused_recipients:
        click.echo(f"RCPT TO:<{address}> would be answered: {reply}")
    if run.stored:
        key = f", key {run.vorgang_key}" if run.vorgang_key else ""
        if run.vorgang:
            click.echo(f"vorgang: {run.vorgang} (found by {run.found}{key})")
        else:
            click.echo(f"vorgang: a new Vorgang{key}")
        for name, value in decision.set_headers:
            click.echo(f"copies: set {name}: {value}")
        if decision.strip_headers:
            click.echo(f"copies: strip {', '.join(decision.strip_headers)}")
        for address in run.skipped_participants:
            click.echo(f"note: participant {address} is no member of portfolio {run.portfolio}; left out")
        if decision.verdict.value == "quarantine":
            click.echo("quarantined: no copies until an admin releases it; these would get one then:")
        click.echo(f"audience ({len(run.audience)}):")
        for member in run.audience:
            click.echo(f"  {member.name} <{member.address}>" if member.name else f"  {member.address}")
            for reason in member.reasons:
                click.echo(f"      {reason}")
    else:
        click.echo("nothing is stored")
    click.echo(f"answer: {run.answer}")


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="gateway")
    except KeyboardInterrupt:
        _fail("interrupted", 130)
