"""The ``gateway held`` commands: replies the collision guard held, and an admin's decision on them.

``list`` shows the replies waiting (``--all``: those decided too) with who answered first and when the
hold timeout decides; ``release`` sends one as if its author had answered "send mine anyway", ``withdraw``
keeps it from the back office for good. Each decision is taken once, whoever comes first (the member,
an admin, the timeout), and is an event with its actor (docs/collisions.md).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

import click
from sqlalchemy import Connection

from gateway.cli.root import Context, cli, command, emit_json, json_option, pass_context
from gateway.cli.work import on_writer
from gateway.db import collisions, membermail
from gateway.db.collisions import HeldReply
from gateway.db.membermail import Decided, ReplyStorage
from gateway.db.models import HeldState
from gateway.db.replies import portfolio_by_name
from gateway.errors import InputError, NotFound
from gateway.stages.reply import BOUNCES_LOCAL_PART


@cli.group("held")
def held_group() -> None:
    """Replies the collision guard held: list them, release or withdraw one."""


def _when(value: datetime.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else "-"


@held_group.command("list")
@click.option("-p", "--portfolio", default=None, help="Only this portfolio's (default: all).")
@click.option("--all", "every", is_flag=True, help="Also the replies released or withdrawn.")
@json_option
@pass_context
@command
async def held_list(ctx: Context, portfolio: str | None, every: bool, as_json: bool) -> None:
    """Held replies, oldest first: id, Vorgang, who wrote it, who answered first and when, the deadline."""

    def work(connection: Connection) -> list[HeldReply]:
        ids = None
        if portfolio is not None:
            found = portfolio_by_name(connection, portfolio)
            if found is None:
                raise NotFound(f"there is no portfolio {portfolio} (`gateway portfolio list` names them)")
            ids = [found.id]
        return collisions.held_replies(connection, ids, only_held=not every)

    held = await on_writer(ctx, work)
    if as_json:
        emit_json([h.as_json() for h in held])
        return
    if not held:
        click.echo("no reply is held" if not every else "no reply was ever held")
        return
    for h in held:
        then = f"{h.after_timeout.value} at {_when(h.due_at)}" if h.state is HeldState.HELD else h.state.value
        click.echo(f"{h.held_id}  {h.vorgang}  {h.member}  {h.subject}")
        click.echo(
            f"    crossed the answer of {h.other} accepted {_when(h.other_accepted_at)}; held "
            f"{_when(h.held_at)} (release {h.release!r}); {then}"
            + (f" by {h.decided_by}" if h.decided_by else "")
        )
    click.echo(f"-- {len(held)} held repl{'y' if len(held) == 1 else 'ies'}")


def _decide(ctx: Context, held_id: str, wanted: HeldState) -> Callable[[Connection], Decided]:
    settings = ctx.settings
    reply_domain = settings.domains.reply_domain
    storage = ReplyStorage(
        reply_domain,
        settings.gateway.hostname,
        settings.gateway.node_name,
        settings.relay.lifetime,
        f"{BOUNCES_LOCAL_PART}@{reply_domain}",
    )

    def work(connection: Connection) -> Decided:
        decided = membermail.decide_held(
            connection, held_id.strip().lower(), wanted, ctx.actor, storage, reason="an admin decided"
        )
        if decided is None:
            raise NotFound(f"there is no held reply {held_id} (`gateway held list` names them)")
        return decided

    return work


async def _run(ctx: Context, held_id: str, wanted: HeldState, as_json: bool) -> None:
    decided = await on_writer(ctx, _decide(ctx, held_id, wanted))
    if as_json:
        emit_json(
            {
                "id": decided.held_id,
                "state": decided.state.value,
                "done_now": decided.done_now,
                "decided_by": decided.decided_by,
                "vorgang": decided.vorgang,
                "relayed": decided.relayed,
                "copies": decided.copies,
                "reason": decided.why,
            }
        )
        if not decided.done_now and decided.state is not wanted:
            raise InputError(f"held reply {held_id} was {decided.state.value} already")
        return
    if not decided.done_now:
        if decided.state is wanted:
            click.echo(f"held reply {held_id} was {wanted.value} already, by {decided.decided_by}")
            return
        raise InputError(
            f"held reply {held_id} was {decided.state.value} already, by {decided.decided_by}; "
            "nothing was changed"
        )
    if decided.state is HeldState.RELEASED:
        click.echo(
            f"released {held_id} in {decided.vorgang}: "
            + ("queued for the back office" if decided.relayed else "no back office to relay to")
            + f", {decided.copies} copies; a running `gateway serve` sends it"
        )
    else:
        why = f" ({decided.why})" if decided.why and decided.why != "an admin decided" else ""
        click.echo(f"withdrew {held_id} in {decided.vorgang}: nothing goes to the back office{why}")


@held_group.command("release")
@click.argument("held_id", metavar="ID")
@json_option
@pass_context
@command
async def held_release(ctx: Context, held_id: str, as_json: bool) -> None:
    """Send the held reply ID to the back office and its audience (as "send mine anyway")."""
    await _run(ctx, held_id, HeldState.RELEASED, as_json)


@held_group.command("withdraw")
@click.argument("held_id", metavar="ID")
@json_option
@pass_context
@command
async def held_withdraw(ctx: Context, held_id: str, as_json: bool) -> None:
    """Withdraw the held reply ID: kept in the Vorgang for the record, never sent."""
    await _run(ctx, held_id, HeldState.WITHDRAWN, as_json)
