"""``gateway admin add|set|remove|list``: the accounts that log in to the web console."""

from __future__ import annotations

from typing import Any

import click

from gateway.admin import accounts
from gateway.admin.accounts import AdminAccount
from gateway.cli.root import Context, cli, command, emit_json, json_option, pass_context
from gateway.cli.work import in_transaction

ROLES = click.Choice(["operator", "portfolio_admin"])


@cli.group("admin")
def admin_group() -> None:
    """Accounts of the admin web console: operators (everything) and portfolio admins (their portfolios)."""


def _password(password_file: Any, no_password: bool) -> str | None:
    if no_password:
        return None
    if password_file is not None:
        return str(password_file.readline().rstrip("\r\n"))
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


def _data(account: AdminAccount) -> dict[str, object]:
    return {
        "login": account.login,
        "role": account.role.value,
        "portfolios": list(account.portfolios),
        "password": account.password_hash is not None,
    }


password_file_option = click.option(
    "--password-file",
    type=click.File("r"),
    help="Read the password from this file ('-' for standard input) instead of asking.",
)


@admin_group.command("add")
@click.argument("login")
@click.option(
    "--role", type=ROLES, default="portfolio_admin", show_default=True, help="What the account may do."
)
@click.option(
    "-p",
    "--portfolio",
    "portfolios",
    multiple=True,
    help="A portfolio the portfolio admin administers (repeat).",
)
@password_file_option
@click.option(
    "--no-password", is_flag=True, help="No password: the account logs in only through the trusted proxy."
)
@click.option("--if-missing", is_flag=True, help="Do nothing when the account exists (for setup scripts).")
@pass_context
@command
async def admin_add(
    ctx: Context,
    login: str,
    role: str,
    portfolios: tuple[str, ...],
    password_file: Any,
    no_password: bool,
    if_missing: bool,
) -> None:
    """Add the console account LOGIN."""
    existing = (
        await in_transaction(ctx, lambda s: accounts.find(s, login), write=False) if if_missing else None
    )
    if existing is not None:
        click.echo(f"{login} exists already; left as it is")
        return
    password = _password(password_file, no_password)
    account = await in_transaction(
        ctx,
        lambda s: accounts.add(
            s, login, role=accounts.role_of(role), password=password, portfolios=portfolios, actor=ctx.actor
        ),
    )
    click.echo(f"added {account.role.value} {account.login}")


@admin_group.command("set")
@click.argument("login")
@click.option("--role", type=ROLES, default=None, help="A new role.")
@click.option(
    "-p",
    "--portfolio",
    "portfolios",
    multiple=True,
    help="The portfolios the portfolio admin administers, replacing the present ones (repeat).",
)
@click.option(
    "--password", "new_password", is_flag=True, help="Set a new password (asked, or --password-file)."
)
@password_file_option
@click.option(
    "--no-password", is_flag=True, help="Remove the password: log in only through the trusted proxy."
)
@pass_context
@command
async def admin_set(
    ctx: Context,
    login: str,
    role: str | None,
    portfolios: tuple[str, ...],
    new_password: bool,
    password_file: Any,
    no_password: bool,
) -> None:
    """Change the console account LOGIN; its sessions end, so it logs in again with the new rights."""
    password = _password(password_file, False) if (new_password or password_file is not None) else None
    account = await in_transaction(
        ctx,
        lambda s: accounts.set_account(
            s,
            login,
            role=None if role is None else accounts.role_of(role),
            password=password,
            clear_password=no_password,
            portfolios=portfolios or None,
            actor=ctx.actor,
        ),
    )
    click.echo(f"changed {account.role.value} {account.login}")


@admin_group.command("remove")
@click.argument("login")
@pass_context
@command
async def admin_remove(ctx: Context, login: str) -> None:
    """Remove the console account LOGIN (its sessions end with it)."""
    await in_transaction(ctx, lambda s: accounts.remove(s, login, actor=ctx.actor))
    click.echo(f"removed {login}")


@admin_group.command("list")
@json_option
@pass_context
@command
async def admin_list(ctx: Context, as_json: bool) -> None:
    """List the console accounts."""
    found = await in_transaction(ctx, accounts.list_all, write=False)
    if as_json:
        emit_json([_data(a) for a in found])
        return
    for a in found:
        portfolios = ", ".join(a.portfolios) or "(all)"
        how = "password" if a.password_hash is not None else "proxy only"
        click.echo(f"{a.login}\t{a.role.value}\t{portfolios}\t{how}")
    if not found:
        click.echo("no admin accounts")
