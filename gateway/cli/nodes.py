"""The ``gateway nodes`` command: the gateway processes sharing the database, and whether each is alive.

A node is alive while its heartbeat is younger than ``[gateway] node_timeout``, stale after that (the
other nodes took its leases over), stopped after a clean stop (docs/operations.md "Nodes").
"""

from __future__ import annotations

import datetime as dt

import click

from gateway.cli.root import Context, cli, command, emit_json, json_option, pass_context
from gateway.cli.work import on_writer
from gateway.db.nodes import all_nodes
from gateway.domain.nodes import NodeRecord


def _data(record: NodeRecord, now: dt.datetime, timeout: float) -> dict[str, object]:
    me = record.identity
    return {
        "name": record.name,
        "state": record.shown_state(now, timeout).value,
        "heartbeat_age": round(record.age(now), 1),
        "heartbeat_at": record.heartbeat_at.isoformat(timespec="seconds"),
        "started_at": record.started_at.isoformat(timespec="seconds"),
        "pid": me.pid,
        "host": me.host,
        "version": me.version,
        "key_fingerprint": me.key_fingerprint,
        "maildir_storage": me.maildir_marker,
        "taken_over_by": record.taken_over_by,
    }


@cli.command("nodes")
@json_option
@pass_context
@command
async def nodes(ctx: Context, as_json: bool) -> None:
    """The gateway processes sharing the database: state (alive, stale, stopped), heartbeat age, version."""
    records = await on_writer(ctx, all_nodes)
    now = dt.datetime.now(dt.UTC)
    timeout = ctx.settings.gateway.node_timeout
    rows = [_data(record, now, timeout) for record in records]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no node has run on this database yet")
        return
    click.echo(f"{'NODE':<24} {'STATE':<8} {'HEARTBEAT':>9}  {'PID':>7}  {'HOST':<20} {'VERSION':<10} KEYS")
    for row in rows:
        age = f"{row['heartbeat_age']}s ago"
        note = f"  (taken over by {row['taken_over_by']})" if row["taken_over_by"] else ""
        click.echo(
            f"{row['name']!s:<24} {row['state']!s:<8} {age:>9}  {row['pid']!s:>7}  {row['host']!s:<20} "
            f"{row['version']!s:<10} {row['key_fingerprint']}{note}"
        )
