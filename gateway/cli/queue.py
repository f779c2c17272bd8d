"""The ``gateway queue`` commands: what waits in the queues, and an admin's hand on it (``postqueue``).

``list`` is ``postqueue -p``: copies to write, flags to catch up, revoked copies to remove and mail to
relay, with state, age and member. ``retry`` is ``postqueue -f`` for chosen items (or ``--all`` that
match): due at once, held and given-up ones pending again. ``drop`` stops work on items for good.
Held copies need none of this to come back: their mailbox is probed every ``[fanout] held_retry``
(docs/admin.md "The queue").
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
from collections.abc import Callable, Sequence

import click
from sqlalchemy import Connection

from gateway.cli.root import Context, cli, command, emit_json, json_option, pass_context
from gateway.cli.views import WHEN
from gateway.cli.work import on_writer
from gateway.db import queue
from gateway.db.queue import QueueFilter, QueueItem
from gateway.errors import InputError


@cli.group("queue")
def queue_group() -> None:
    """What waits in the queues (copies, flags, removals, relays): list, show, retry, drop."""


def _filters(func: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(
        (
            click.option("-p", "--portfolio", default=None, help="Only this portfolio's (default: all)."),
            click.option("--member", default=None, help="Only items for this member's mailbox (or by them)."),
            click.option(
                "--state", type=click.Choice(queue.STATES), default=None, help="Only in this state."
            ),
            click.option("--kind", type=click.Choice(queue.KINDS), default=None, help="Only this kind."),
            click.option(
                "--older-than",
                "before",
                type=WHEN,
                default=None,
                help="Only items queued before this: a span (30m, 2h, 7d) or a time (2026-12-07T05:00).",
            ),
        )
    ):
        func = option(func)
    return func


def _data(item: QueueItem) -> dict[str, object]:
    return dataclasses.asdict(item) | {
        "created_at": item.created_at.isoformat(timespec="seconds"),
        "next_attempt_at": item.next_attempt_at.isoformat(timespec="seconds")
        if item.next_attempt_at
        else None,
        "to": list(item.to),
    }


def _age(item: QueueItem, now: datetime.datetime) -> str:
    seconds = int((now - item.created_at).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _line(item: QueueItem, now: datetime.datetime) -> str:
    what = item.kind if item.kind != "relay" or item.purpose == "mail" else f"notice:{item.purpose}"
    to = ", ".join(item.to)
    age = _age(item, now)
    return f"{item.id:<12} {what:<15} {item.state:<8} {age:>5}  {item.attempts:>3}x  {to}  {item.message}"


@queue_group.command("list")
@_filters
@click.option(
    "--limit",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="At most this many items.",
)
@json_option
@pass_context
@command
async def queue_list(
    ctx: Context,
    portfolio: str | None,
    member: str | None,
    state: str | None,
    kind: str | None,
    before: datetime.datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """Everything that waits, oldest first: id, kind, state, age, attempts, to whom, which message."""
    items = await on_writer(
        ctx,
        lambda c: queue.queue_items(c, QueueFilter(portfolio, member, state, kind, before), limit=limit),
    )
    if as_json:
        emit_json([_data(i) for i in items])
        return
    if not items:
        click.echo("the queues are empty")
        return
    now = datetime.datetime.now(datetime.UTC)
    click.echo(f"{'ID':<12} {'KIND':<15} {'STATE':<8} {'AGE':>5}  TRIES  TO  MESSAGE")
    for item in items:
        click.echo(_line(item, now))
        if item.last_error:
            click.echo(f"{'':13}last error: {item.last_error}")
    counts: dict[str, int] = {}
    for item in items:
        counts[item.state] = counts.get(item.state, 0) + 1
    click.echo(f"-- {len(items)} item(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))


@queue_group.command("show")
@click.argument("item_id", metavar="ID")
@json_option
@pass_context
@command
async def queue_show(ctx: Context, item_id: str, as_json: bool) -> None:
    """The item ID (copy-N or relay-N, as `gateway queue list` names it), with its last error."""
    (item,) = await on_writer(ctx, lambda c: queue.find_items(c, [item_id]))
    if as_json:
        emit_json(_data(item))
        return
    now = datetime.datetime.now(datetime.UTC)
    what = item.kind if item.kind != "relay" or item.purpose == "mail" else f"notice ({item.purpose})"
    click.echo(f"{item.id}: {what}, {item.state}, queued {item.created_at.isoformat(timespec='seconds')}")
    click.echo(f"  portfolio {item.portfolio}, member {item.member}, to {', '.join(item.to)}")
    click.echo(f"  message {item.message}: {item.subject}")
    click.echo(f"  attempts {item.attempts}, age {_age(item, now)}")
    nxt = item.next_attempt_at.isoformat(timespec="seconds") if item.next_attempt_at else "not scheduled"
    click.echo(f"  next attempt: {nxt}")
    click.echo(f"  last error: {item.last_error or '-'}")


def _chosen(
    connection: Connection,
    ids: Sequence[str],
    every: bool,
    filters: QueueFilter,
) -> list[QueueItem]:
    if ids and every:
        raise InputError("give IDs or --all (with filters), not both")
    if not ids and not every:
        raise InputError("give the IDs to act on, or --all (with --state, --member, … to narrow it)")
    if ids:
        return queue.find_items(connection, ids)
    return queue.queue_items(connection, filters, limit=1_000_000)


@queue_group.command("retry")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "every", is_flag=True, help="Every item that matches the filters.")
@_filters
@json_option
@pass_context
@command
async def queue_retry(
    ctx: Context,
    ids: tuple[str, ...],
    every: bool,
    portfolio: str | None,
    member: str | None,
    state: str | None,
    kind: str | None,
    before: datetime.datetime | None,
    as_json: bool,
) -> None:
    """Try the items ID... (or --all that match) now, held and given-up ones too; a running `gateway serve`
    takes them."""
    lifetime, actor = ctx.settings.relay.lifetime, ctx.actor
    done = await _act_on(
        ctx,
        _chosen_by(ids, every, QueueFilter(portfolio, member, state, kind, before)),
        lambda connection, items, now: queue.retry(connection, items, actor, now, lifetime),
    )
    _tell(done, "due now", as_json)
    if not as_json:
        click.echo(f"{len(done)} item(s) due now; `gateway serve` takes them within its poll interval")


@queue_group.command("drop")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "every", is_flag=True, help="Every item that matches the filters.")
@_filters
@click.option("--yes", is_flag=True, help="Do not ask; dropped items are never tried again.")
@json_option
@pass_context
@command
async def queue_drop(
    ctx: Context,
    ids: tuple[str, ...],
    every: bool,
    portfolio: str | None,
    member: str | None,
    state: str | None,
    kind: str | None,
    before: datetime.datetime | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Stop trying the items ID... (or --all that match) for good; the rows and the event log keep that they
    were dropped."""
    if not yes:
        if not sys.stdin.isatty():
            raise InputError("dropped items are never tried again; add --yes to confirm without a terminal")
        click.confirm("drop these items for good?", abort=True)
    actor = ctx.actor
    done = await _act_on(
        ctx,
        _chosen_by(ids, every, QueueFilter(portfolio, member, state, kind, before)),
        lambda connection, items, now: queue.drop(connection, items, actor, now),
    )
    _tell(done, "dropped", as_json)
    if not as_json:
        click.echo(f"{len(done)} item(s) dropped")


def _chosen_by(
    ids: Sequence[str], every: bool, filters: QueueFilter
) -> Callable[[Connection], list[QueueItem]]:
    return lambda connection: _chosen(connection, ids, every, filters)


async def _act_on(
    ctx: Context,
    chosen: Callable[[Connection], list[QueueItem]],
    act: Callable[[Connection, Sequence[QueueItem], datetime.datetime], list[QueueItem]],
) -> list[QueueItem]:
    """Apply ``act`` (which records its events) to the chosen items in one transaction."""

    def work(connection: Connection) -> list[QueueItem]:
        return act(connection, chosen(connection), datetime.datetime.now(datetime.UTC))

    return await on_writer(ctx, work)


def _tell(done: Sequence[QueueItem], what: str, as_json: bool) -> None:
    if as_json:
        emit_json([_data(i) for i in done])
        return
    for item in done:
        click.echo(f"{what}: {item.id} ({item.kind} to {', '.join(item.to)})")
