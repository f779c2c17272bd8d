"""The admin views: ``vorgang list|show``, ``who-can-see``, ``quarantine list|show|release|drop`` and
``events``."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import click
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.admin import api as admin
from gateway.cli.root import Context, cli, command, emit_json, json_option, pass_context, portfolio_option
from gateway.cli.work import database, in_transaction, on_writer
from gateway.db import quarantine
from gateway.db.events import EventView
from gateway.domain.model import ParticipantRole
from gateway.domain.times import InvalidTime, parse_when
from gateway.errors import InputError

# --- Vorgänge -----------------------------------------------------------------------------------------


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
    view = await in_transaction(ctx, lambda s: admin.show_vorgang(s, portfolio, reference), write=False)
    if as_json:
        emit_json(dataclasses.asdict(view))
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
            # notification a member's first read sent (gateway.stages.flagsync).
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
        try:
            return parse_when(str(value), datetime.datetime.now(datetime.UTC))
        except InvalidTime as exc:
            self.fail(str(exc), param, ctx)


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
    found = await in_transaction(
        ctx,
        lambda s: admin.list_vorgaenge(
            s, portfolio, member=member, since=since, until=until, search=search, limit=limit
        ),
        write=False,
    )
    if as_json:
        emit_json([dataclasses.asdict(v) for v in found])
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
    return dataclasses.asdict(q) | {"quarantined_at": _held_since(q)}


def _held_since(q: quarantine.Quarantined) -> str:
    return q.quarantined_at.isoformat(timespec="seconds")


@quarantine_group.command("list")
@click.option("-p", "--portfolio", default=None, help="Only this portfolio's (default: every portfolio's).")
@json_option
@pass_context
@command
async def quarantine_list(ctx: Context, portfolio: str | None, as_json: bool) -> None:
    """The quarantined messages, oldest first, with the rule that held each and why."""
    found = await on_writer(ctx, lambda c: quarantine.list_quarantined(c, portfolio))
    if as_json:
        emit_json([_held_data(q) for q in found])
        return
    if not found:
        click.echo("nothing is quarantined")
        return
    for q in found:
        click.echo(
            f"{q.gateway_id}  {_held_since(q)}  {q.portfolio}  {q.vorgang}  "
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
    """The quarantined message GATEWAY_ID: why it is held, and its header (or, with --raw, all of it)."""
    held, data = await on_writer(ctx, lambda c: quarantine.show(c, portfolio, gateway_id))
    if raw:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    header = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("utf-8", "replace")
    if as_json:
        emit_json(_held_data(held) | {"header": header})
        return
    click.echo(f"{held.gateway_id} in {held.portfolio} {held.vorgang}, quarantined {_held_since(held)}")
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
    """Give the quarantined messages GATEWAY_ID... the copies their audience has now; `gateway serve`
    writes them.

    All or nothing: if one id is not held, none is released.
    """
    actor = ctx.actor

    def release(connection: Connection) -> list[tuple[str, list[str]]]:
        now = datetime.datetime.now(datetime.UTC)
        return [(g, quarantine.release(connection, portfolio, g, actor, now)) for g in gateway_ids]

    released = await on_writer(ctx, release)
    if as_json:
        emit_json([{"gateway_id": g, "audience": to} for g, to in released])
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
    """Delete the quarantined messages GATEWAY_ID... for good (the event log keeps that they were, and who
    dropped them)."""
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

    await on_writer(ctx, drop)
    if as_json:
        emit_json([{"gateway_id": g, "dropped": True} for g in gateway_ids])
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
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Then keep printing new events as they are recorded, until Ctrl-C (with --json: a line each).",
)
@click.option(
    "--interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.1, 3600),
    help="With --follow: seconds between two looks at the log.",
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
    follow: bool,
    interval: float,
    as_json: bool,
) -> None:
    """The event log: who changed what, which message went where; the newest LIMIT, oldest first."""

    def read(after: int | None, most: int) -> Callable[[AsyncSession], Awaitable[list[EventView]]]:
        return lambda s: admin.read_events(
            s,
            portfolio=portfolio,
            member=member,
            vorgang=vorgang,
            message=message,
            kinds=kinds,
            since=since,
            until=until,
            after_id=after,
            limit=most,
        )

    if not follow:
        found = await in_transaction(ctx, read(after_id, limit), write=False)
        if as_json:
            emit_json([dataclasses.asdict(e) for e in found])
            return
        if not found:
            click.echo("no events match")
        for e in found:
            _print_event(e)
        return
    async with database(ctx) as sessions:
        async with sessions() as session:
            found = await read(after_id, limit)(session)
        for e in found:
            _print_event(e, json_line=as_json)
        shown = _Shown([e.id for e in found], after_id or 0)
        try:
            while True:
                await asyncio.sleep(interval)
                async with sessions() as session:
                    new = await read(shown.look_from(), _FOLLOW_BATCH)(session)
                for e in new:
                    if shown.first_time(e.id):
                        _print_event(e, json_line=as_json)
        except asyncio.CancelledError:
            return  # Ctrl-C: following ends here, and that is a success


# Following looks this many ids back: on PostgreSQL a transaction can commit its event after events with
# higher ids (ids are handed out before the commit), and the look back still finds it then.
_LOOK_BACK = 500
_FOLLOW_BATCH = 5_000


class _Shown:
    """Which events ``events --follow`` printed, so that looking back never prints one twice."""

    def __init__(self, printed: Sequence[int], after: int) -> None:
        # Below the first page's end lie events --limit left out: following never looks back there.
        self.start = max(printed, default=after)
        self.last = self.start
        self._ids = set(printed)

    def first_time(self, event_id: int) -> bool:
        if event_id in self._ids or event_id <= self._floor():
            return False
        self._ids.add(event_id)
        self.last = max(self.last, event_id)
        return True

    def look_from(self) -> int:
        """The id to read after next time; forgets what lies below it."""
        floor = self._floor()
        self._ids = {i for i in self._ids if i > floor}
        return floor

    def _floor(self) -> int:
        return max(self.last - _LOOK_BACK, self.start)


def _print_event(e: EventView, *, json_line: bool = False) -> None:
    if json_line:
        click.echo(json.dumps(dataclasses.asdict(e), ensure_ascii=False, default=str))
        return
    about = "  ".join(x for x in (e.portfolio, e.vorgang, e.message, e.member) if x)
    click.echo(f"{e.at}  #{e.id}  {e.kind:<22} {about}  by {e.actor}")
    if e.detail:
        click.echo(f"    {e.detail_text()}")


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
        explanation = await in_transaction(ctx, lambda s: admin.who_can_see_message(s, message), write=False)
    else:
        if not portfolio:
            raise InputError("a hypothetical message needs --portfolio (or $GATEWAY_PORTFOLIO)")
        explanation = await in_transaction(
            ctx, lambda s: admin.who_can_see_hypothetical(s, portfolio, addressed), write=False
        )
    if as_json:
        rows = [
            {"address": row.address, "name": row.name, "reasons": list(row.reasons)}
            for row in explanation.rows()
        ]
        emit_json({"portfolio": explanation.portfolio, "message": explanation.message, "audience": rows})
        return
    click.echo(explanation.text(), nl=False)
