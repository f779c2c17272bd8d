"""Commands for the directory: ``directory load|export``, ``portfolio``, ``member``, ``release``,
``backoffice``."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.admin import api as admin
from gateway.admin.api import GuardSettings
from gateway.admin.directory_file import (
    dump_directory,
    member_data,
    read_directory_file,
    relay_data,
    release_data,
)
from gateway.cli.root import (
    Context,
    cli,
    command,
    emit_json,
    json_option,
    pass_context,
    portfolio_option,
    print_changes,
)
from gateway.cli.work import in_transaction
from gateway.db.senderauth import sender_auth_refusal
from gateway.domain.collision import (
    DEFAULT_HOLD_TIMEOUT,
    AfterTimeout,
    CollisionGuard,
    default_guard,
    format_duration,
    parse_duration,
)
from gateway.domain.directory import (
    Change,
    MemberSpec,
    PortfolioSpec,
    RelaySpec,
    RelayTls,
    ReleaseSpec,
    SenderAuth,
)
from gateway.domain.model import ReadSync
from gateway.domain.reconcile import Backfill, RevokedCopies
from gateway.errors import InputError

T = TypeVar("T")

# What the body of a directory command names: one change, made in the command's transaction.
DirectoryChange = Callable[[AsyncSession], Awaitable[Sequence[Change]]]


def directory_change(body: Callable[..., DirectoryChange]) -> Callable[..., None]:
    """A command whose ``body`` names one directory change: it is made in one transaction and what
    changed is printed (``--json`` for scripts), the same for every command that edits the directory."""

    @json_option
    @pass_context
    @command
    @functools.wraps(body)
    async def run(ctx: Context, *args: Any, as_json: bool, **kwargs: Any) -> None:
        print_changes(await in_transaction(ctx, body(ctx, *args, **kwargs)), as_json)

    return run


# What the body of a command that can change audiences names: the portfolio and the edit of it.
AudienceChange = tuple[str, admin.Edit]


def audience_change(body: Callable[..., AudienceChange]) -> Callable[..., None]:
    """A directory command that can change who sees existing messages: as ``directory_change``, and with
    ``--preview`` it shows what reconciliation would do about the existing copies and changes nothing."""

    @click.option(
        "--preview",
        is_flag=True,
        help="Show who would gain and lose copies of which Vorgänge, and change nothing.",
    )
    @json_option
    @pass_context
    @command
    @functools.wraps(body)
    async def run(ctx: Context, *args: Any, as_json: bool, preview: bool, **kwargs: Any) -> None:
        portfolio, edit = body(ctx, *args, **kwargs)
        if preview:
            shown = await in_transaction(ctx, lambda s: admin.preview_change(s, portfolio, edit), write=False)
            print_preview([shown], as_json)
            return
        changes = await in_transaction(ctx, lambda s: admin.make_change(s, portfolio, edit, ctx.actor))
        print_changes(changes, as_json)

    return run


def print_preview(previews: Sequence[admin.ChangePreview], as_json: bool) -> None:
    """Previews as people read them, or as JSON; both say what each member gains and loses per Vorgang."""
    if as_json:
        data = [_preview_data(p) for p in previews]
        emit_json(data[0] if len(data) == 1 else data)
        return
    for shown in previews:
        for line in preview_lines(shown):
            click.echo(line)


def _counted(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _per_vorgang(shown: admin.ChangePreview, counts: Mapping[int, int]) -> str:
    """``3 Vorgänge (VG-2026-000001: 2, VG-2026-000002: 1)``."""
    named = ", ".join(f"{shown.vorgaenge[v].reference}: {n}" for v, n in counts.items())
    return f"{_counted(len(counts), 'Vorgang', 'Vorgänge')} ({named})"


def preview_lines(shown: admin.ChangePreview) -> list[str]:
    p = shown.preview
    lines = [f"preview for portfolio {shown.portfolio} (nothing changed):"]
    lines += [f"  would {c.describe()}" for c in shown.changes] or ["  nothing to change"]
    if not p.messages:
        none = "no message involves the releases changed" if shown.has_messages else "no messages yet"
        lines.append(f"{none}: no copy to back-fill or remove")
        return lines
    run = "a reconcile run would follow" if shown.reconciles else "the change starts no reconcile run"
    lines.append(f"{_counted(p.messages, 'message', 'messages')} planned; {run}")
    for m in p.members:
        name = shown.name_of(m.member_id)
        said = []
        if m.gains:
            gained = _counted(m.gained, "message", "messages")
            said.append(f"gains {gained} in {_per_vorgang(shown, m.gains)}")
        if m.loses:
            said.append(f"loses {_counted(m.lost, 'copy', 'copies')} in {_per_vorgang(shown, m.loses)}")
        if m.keeps:
            said.append(
                f"keeps {_counted(m.kept, 'copy', 'copies')} no longer shared (revoked_copies keep) in "
                + _per_vorgang(shown, m.keeps)
            )
        if m.held_back:
            said.append(
                f"gets no copy of {_counted(m.not_backfilled, 'message', 'messages')} it may see now "
                f"(the backfill policy) in {_per_vorgang(shown, m.held_back)}"
            )
        lines.append(f"{name} " + "; ".join(said))
    if not p.changes:
        lines.append("no copy would be back-filled or removed")
    lines.append(
        f"total: {_counted(p.gained, 'copy', 'copies')} back-filled, {p.lost} removed, {p.kept} kept, "
        f"{p.not_backfilled} not back-filled"
    )
    return lines


def _preview_data(shown: admin.ChangePreview) -> dict[str, object]:
    def per_vorgang(counts: Mapping[int, int]) -> list[dict[str, object]]:
        return [
            {"vorgang": shown.vorgaenge[v].reference, "subject": shown.vorgaenge[v].subject, "messages": n}
            for v, n in counts.items()
        ]

    p = shown.preview
    return {
        "portfolio": shown.portfolio,
        "changes": [c.describe() for c in shown.changes],
        "reconciles": shown.reconciles,
        "messages": p.messages,
        "totals": {
            "backfilled": p.gained,
            "revoked": p.lost,
            "kept": p.kept,
            "not_backfilled": p.not_backfilled,
        },
        "members": [
            {
                "member": shown.members[m.member_id].address,
                "name": shown.members[m.member_id].display_name,
                "gains": per_vorgang(m.gains),
                "loses": per_vorgang(m.loses),
                "keeps": per_vorgang(m.keeps),
                "not_backfilled": per_vorgang(m.held_back),
            }
            for m in p.members
        ],
    }


# --- directory -------------------------------------------------------------------------------------------


@cli.group("directory")
def directory_group() -> None:
    """Load and export the whole directory as YAML."""


@directory_group.command("load")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--prune", is_flag=True, help="Also delete what the file's portfolios have but the file lacks.")
@click.option("--dry-run", is_flag=True, help="Check the file and show the changes without making them.")
@click.option(
    "--preview",
    is_flag=True,
    help="Show who would gain and lose copies of which Vorgänge, and change nothing.",
)
@json_option
@pass_context
@command
async def directory_load(
    ctx: Context, file: Path, prune: bool, dry_run: bool, preview: bool, as_json: bool
) -> None:
    """Apply a directory FILE: create or update every portfolio it describes, all or nothing."""
    spec = read_directory_file(file)
    if preview:
        previews = await in_transaction(
            ctx, lambda s: admin.preview_directory(s, spec, prune=prune), write=False
        )
        print_preview(list(previews.values()), as_json)
        return
    result = await in_transaction(
        ctx,
        lambda s: _sender_auth_checked(
            ctx,
            s,
            [p.name for p in spec.portfolios],
            admin.load_directory(s, spec, prune=prune, actor=ctx.actor, dry_run=dry_run),
        ),
        write=not dry_run,
    )
    if as_json:
        emit_json({name: [c.describe() for c in changes] for name, changes in result.items()})
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
    spec = await in_transaction(ctx, lambda s: admin.export_directory(s, portfolios), write=False)
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


async def _sender_auth_checked(
    ctx: Context, session: AsyncSession, portfolios: Sequence[str], change: Awaitable[T]
) -> T:
    """``change``, unless it leaves one of ``portfolios`` with sender_auth off where that is not safe
    (gateway.domain.mx_exposure); then nothing of it is committed."""
    result = await change
    refusal = await sender_auth_refusal(session, ctx.settings, portfolios)
    if refusal is not None:
        raise InputError(refusal)
    return result


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
@directory_change
def portfolio_create(ctx: Context, name: str, display_name: str, sender_auth: str | None) -> DirectoryChange:
    """Create the portfolio NAME."""
    return lambda s: _sender_auth_checked(
        ctx,
        s,
        [name],
        admin.create_portfolio(
            s, name, display_name, ctx.actor, sender_auth=SenderAuth(sender_auth or SenderAuth.OFF)
        ),
    )


@portfolio_group.command("set")
@click.argument("name")
@click.option("--display-name", default=None, help="Name shown to people.")
@click.option(
    "--share-vorgaenge-available/--no-share-vorgaenge-available",
    default=None,
    help="Operator switch: make the 'Vorgänge teilen' feature available to this portfolio's releases.",
)
@sender_auth_option
@directory_change
def portfolio_set(
    ctx: Context,
    name: str,
    display_name: str | None,
    share_vorgaenge_available: bool | None,
    sender_auth: str | None,
) -> DirectoryChange:
    """Change the portfolio NAME."""
    return lambda s: _sender_auth_checked(
        ctx,
        s,
        [name],
        admin.set_portfolio(
            s,
            name,
            display_name=display_name,
            share_vorgaenge_available=share_vorgaenge_available,
            sender_auth=SenderAuth(sender_auth) if sender_auth else None,
            actor=ctx.actor,
        ),
    )


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
        "members": [member_data(m) for m in p.members],
    }


def _release_data(r: ReleaseSpec, members: Sequence[MemberSpec]) -> dict[str, object]:
    return release_data(r) | {"members": [m.address for m in members if r.name in m.releases]}


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


@portfolio_group.command("list")
@json_option
@pass_context
@command
async def portfolio_list(ctx: Context, as_json: bool) -> None:
    """List the portfolios."""
    portfolios = await in_transaction(ctx, admin.list_portfolios, write=False)
    if as_json:
        emit_json([_portfolio_data(p) for p in portfolios])
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
    p = await in_transaction(ctx, lambda s: admin.show_portfolio(s, name), write=False)
    if as_json:
        emit_json(_portfolio_data(p))
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
            ("collision_guard", r.guard.value, default_guard(r.share_vorgaenge).value),
            ("hold_timeout", format_duration(r.hold_timeout), format_duration(DEFAULT_HOLD_TIMEOUT)),
            ("after_hold_timeout", r.after_hold_timeout.value, AfterTimeout.RELEASE.value),
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
@directory_change
def member_add(ctx: Context, address: str, display_name: str, portfolio: str) -> DirectoryChange:
    """Add the member ADDRESS to a portfolio."""
    return lambda s: admin.add_member(s, portfolio, address, display_name, ctx.actor)


@member_group.command("set")
@click.argument("address")
@click.option("--name", "display_name", required=True, help="New display name.")
@portfolio_option
@directory_change
def member_set(ctx: Context, address: str, display_name: str, portfolio: str) -> DirectoryChange:
    """Change the member ADDRESS."""
    return lambda s: admin.set_member(s, portfolio, address, display_name, ctx.actor)


@member_group.command("remove")
@click.argument("address")
@portfolio_option
@audience_change
def member_remove(ctx: Context, address: str, portfolio: str) -> AudienceChange:
    """Delete the member ADDRESS (only a member without messages; otherwise remove it from its releases)."""
    return portfolio, admin.member_removed(address)


@member_group.command("list")
@portfolio_option
@json_option
@pass_context
@command
async def member_list(ctx: Context, portfolio: str, as_json: bool) -> None:
    """List the members of a portfolio with their releases."""
    p = await in_transaction(ctx, lambda s: admin.show_portfolio(s, portfolio), write=False)
    if as_json:
        emit_json([member_data(m) for m in p.members])
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


def _hold_timeout(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def guard_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The collision guard's options of ``release create`` and ``release set`` (docs/collisions.md)."""
    for option in reversed(
        (
            click.option(
                "--collision-guard",
                type=click.Choice([*(g.value for g in CollisionGuard), "default"]),
                help="A reply that crosses a co-member's answer: hold (default where Vorgänge are "
                "shared), notify, off; 'default' follows share_vorgaenge.",
            ),
            click.option(
                "--hold-timeout",
                callback=_hold_timeout,
                metavar="DURATION",
                help="How long a held reply waits for its author (e.g. 4h, 2d; default 24h).",
            ),
            click.option(
                "--after-hold-timeout",
                type=click.Choice([a.value for a in AfterTimeout]),
                help="What becomes of a held reply nobody decided on: release (default) or withdraw.",
            ),
        )
    ):
        function = option(function)
    return function


def _guard(
    collision_guard: str | None, hold_timeout: int | None, after_hold_timeout: str | None
) -> GuardSettings | None:
    if collision_guard is None and hold_timeout is None and after_hold_timeout is None:
        return None
    return GuardSettings(
        collision_guard, hold_timeout, AfterTimeout(after_hold_timeout) if after_hold_timeout else None
    )


@release_group.command("create")
@click.argument("name")
@click.option("--primary", is_flag=True, help="Make it a primary release (Hauptfreischaltung).")
@click.option("--share-vorgaenge", is_flag=True, help="Members see and answer each other's Vorgänge.")
@read_sync_option
@backfill_option
@revoked_copies_option
@guard_options
@portfolio_option
@audience_change
def release_create(
    ctx: Context,
    name: str,
    primary: bool,
    share_vorgaenge: bool,
    read_sync: str | None,
    backfill: Backfill | None,
    revoked_copies: str | None,
    collision_guard: str | None,
    hold_timeout: int | None,
    after_hold_timeout: str | None,
    portfolio: str,
) -> AudienceChange:
    """Create the release NAME."""
    return portfolio, admin.release_created(
        name,
        primary=primary,
        share_vorgaenge=share_vorgaenge,
        read_sync=ReadSync(read_sync or ReadSync.ANSWERED),
        backfill=backfill,
        revoked_copies=RevokedCopies(revoked_copies) if revoked_copies else None,
        guard=_guard(collision_guard, hold_timeout, after_hold_timeout),
    )


@release_group.command("set")
@click.argument("name")
@click.option(
    "--primary/--no-primary",
    default=None,
    help="Make it the portfolio's primary release (Hauptfreischaltung), or an ordinary one.",
)
@click.option(
    "--share-vorgaenge/--no-share-vorgaenge",
    default=None,
    help="Whether members see and answer each other's Vorgänge ('Vorgänge teilen').",
)
@read_sync_option
@backfill_option
@revoked_copies_option
@guard_options
@portfolio_option
@audience_change
def release_set(
    ctx: Context,
    name: str,
    primary: bool | None,
    share_vorgaenge: bool | None,
    read_sync: str | None,
    backfill: Backfill | None,
    revoked_copies: str | None,
    collision_guard: str | None,
    hold_timeout: int | None,
    after_hold_timeout: str | None,
    portfolio: str,
) -> AudienceChange:
    """Change the flags of the release NAME."""
    return portfolio, admin.release_changed(
        name,
        primary=primary,
        share_vorgaenge=share_vorgaenge,
        read_sync=ReadSync(read_sync) if read_sync else None,
        backfill=backfill,
        revoked_copies=RevokedCopies(revoked_copies) if revoked_copies else None,
        guard=_guard(collision_guard, hold_timeout, after_hold_timeout),
    )


@release_group.command("delete")
@click.argument("name")
@portfolio_option
@audience_change
def release_delete(ctx: Context, name: str, portfolio: str) -> AudienceChange:
    """Delete the release NAME (its members lose what it gave them)."""
    return portfolio, admin.release_deleted(name)


@release_group.command("add-member")
@click.argument("name")
@click.argument("address")
@portfolio_option
@audience_change
def release_add_member(ctx: Context, name: str, address: str, portfolio: str) -> AudienceChange:
    """Add the member ADDRESS to the release NAME."""
    return portfolio, admin.release_membership(name, address, joins=True)


@release_group.command("remove-member")
@click.argument("name")
@click.argument("address")
@portfolio_option
@audience_change
def release_remove_member(ctx: Context, name: str, address: str, portfolio: str) -> AudienceChange:
    """Remove the member ADDRESS from the release NAME."""
    return portfolio, admin.release_membership(name, address, joins=False)


@release_group.command("show")
@click.argument("name")
@portfolio_option
@json_option
@pass_context
@command
async def release_show(ctx: Context, name: str, portfolio: str, as_json: bool) -> None:
    """Show the release NAME and its members."""
    view = await in_transaction(ctx, lambda s: admin.show_release(s, portfolio, name), write=False)
    if as_json:
        emit_json(_release_data(view.release, view.members) | {"portfolio": view.portfolio})
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
    p = await in_transaction(ctx, lambda s: admin.show_portfolio(s, portfolio), write=False)
    if as_json:
        emit_json([_release_data(r, p.members) for r in p.releases])
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
@directory_change
def backoffice_add(
    ctx: Context,
    name: str,
    ams_version: str,
    addresses: tuple[str, ...],
    relay: admin.RelayOptions,
    portfolio: str,
) -> DirectoryChange:
    """Register the back office NAME; without --relay-host it receives no replies."""
    return lambda s: admin.add_backoffice(s, portfolio, name, ams_version, addresses, ctx.actor, relay=relay)


@backoffice_group.command("set")
@click.argument("name")
@click.option(
    "--ams-version",
    default=None,
    help="Version of the back office, like 4.8.0.64470 (decides who replies are relayed as).",
)
@click.option(
    "--add-address", "add_addresses", multiple=True, help="Another address it sends from (repeatable)."
)
@click.option(
    "--remove-address",
    "remove_addresses",
    multiple=True,
    help="An address it no longer sends from (repeatable).",
)
@relay_options
@click.option(
    "--no-relay", is_flag=True, help="Remove the relay settings: the back office receives no replies."
)
@portfolio_option
@directory_change
def backoffice_set(
    ctx: Context,
    name: str,
    ams_version: str | None,
    add_addresses: tuple[str, ...],
    remove_addresses: tuple[str, ...],
    relay: admin.RelayOptions,
    no_relay: bool,
    portfolio: str,
) -> DirectoryChange:
    """Change the back office NAME; --relay-… options change only what they name ('' removes a login)."""
    return lambda s: admin.set_backoffice(
        s,
        portfolio,
        name,
        ams_version=ams_version,
        add_addresses=add_addresses,
        remove_addresses=remove_addresses,
        relay=dataclasses.replace(relay, remove=no_relay),
        actor=ctx.actor,
    )


@backoffice_group.command("remove")
@click.argument("name")
@portfolio_option
@directory_change
def backoffice_remove(ctx: Context, name: str, portfolio: str) -> DirectoryChange:
    """Remove the back office NAME."""
    return lambda s: admin.remove_backoffice(s, portfolio, name, ctx.actor)


@backoffice_group.command("password")
@click.argument("name")
@click.option("--login", default=None, help="Login for SMTP AUTH (default: the first sending address).")
@click.option(
    "--password-file",
    type=click.File("r"),
    help="Read the password from this file ('-' for standard input) instead of asking.",
)
@click.option(
    "--if-missing",
    is_flag=True,
    help="Keep the password of a login that exists (for setup scripts such as `make run`).",
)
@portfolio_option
@pass_context
@command
async def backoffice_password(
    ctx: Context, name: str, login: str | None, password_file: Any, if_missing: bool, portfolio: str
) -> None:
    """Set the password the back office NAME logs in with on the submission listener."""
    if password_file is not None:
        password = password_file.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    login, created = await in_transaction(
        ctx,
        lambda s: admin.set_backoffice_password(
            s, portfolio, name, password, login, ctx.actor, if_missing=if_missing
        ),
    )
    if created is None:
        click.echo(f"kept the password of login {login} for back office {name} (--if-missing)")
        return
    click.echo(f"{'created' if created else 'changed'} login {login} for back office {name}")


@backoffice_group.command("list")
@portfolio_option
@json_option
@pass_context
@command
async def backoffice_list(ctx: Context, portfolio: str, as_json: bool) -> None:
    """List the back offices of a portfolio."""
    p = await in_transaction(ctx, lambda s: admin.show_portfolio(s, portfolio), write=False)
    if as_json:
        emit_json(_portfolio_data(p)["backoffices"])
        return
    for b in p.backoffices:
        click.echo(
            f"{b.name}\tams {b.ams_version or '?'}\t{', '.join(b.addresses) or '-'}\t{_relay_text(b.relay)}"
        )
