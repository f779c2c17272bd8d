"""Commands for reconciliation: ``reconcile status`` and ``reconcile run [--wait]`` with its progress bar."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import socket
import sys
from typing import Any

import click
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from gateway.cli.root import Context, cli, command, emit_json, json_option, pass_context
from gateway.cli.work import on_writer
from gateway.db import reconcile as reconcile_db
from gateway.db.writer import Writer
from gateway.errors import NotFound, StorageError
from gateway.stages.reconcile import work_run

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

    found = await on_writer(ctx, read)
    if as_json:
        emit_json([_run_data(r) for r in found])
        return
    if not found:
        click.echo("no reconcile runs yet (a directory change that can change audiences records one)")
        return
    for r in found:
        when = r.finished_at or r.updated_at
        click.echo(
            f"run {r.id}  {r.portfolio}  {r.state}  {_progress(r)} messages  backfilled {r.backfilled}  "
            f"revoked {r.revoked}  kept {r.kept}  {'finished' if r.finished_at else 'updated'} "
            f"{when.isoformat(timespec='seconds')}"
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

    recorded = await on_writer(ctx, record)
    if not wait:
        if as_json:
            emit_json([{"run": rid, "portfolio": name, "new": new} for rid, name, new in recorded])
            return
        for rid, name, new in recorded:
            click.echo(f"run {rid} for portfolio {name} {'recorded' if new else 'is open already'}")
        click.echo("`gateway reconcile status` shows the progress; `gateway serve` works the runs")
        return
    settings = ctx.settings
    writer = Writer(settings.database_url, echo=settings.database.echo, database=settings.database)
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
            (before,) = await writer.run(reconcile_db.runs, run_id=rid, recent=1)
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
        emit_json([_run_data(r) for r in finished])
        return
    for r in finished:
        click.echo(
            f"run {r.id} {r.portfolio}: {r.processed} message(s), backfilled {r.backfilled}, "
            f"revoked {r.revoked}, kept {r.kept}"
        )
    if any(r.backfilled or r.revoked for r in finished):
        click.echo("the copies reach the mailboxes (or leave them) through the fan-out of `gateway serve`")
