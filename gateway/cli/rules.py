"""Commands for the routing rules: ``rules check`` (FILE:LINE:COL problems), ``rules test MESSAGE``
(an .eml file or a stored message's gw-… id) and ``rules replay`` (a candidate folder over stored mail)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sys
import time
from pathlib import Path

import click

from gateway.cli.root import EXIT_INPUT, Context, cli, command, emit_json, json_option, pass_context
from gateway.cli.work import in_transaction

# --- routing rules ---------------------------------------------------------------------------------------

_GATEWAY_ID = re.compile(r"gw-[0-9a-f]{8,64}")


def _names_stored_message(message: str) -> bool:
    """A gw-… id, and no file of that name (which would be the .eml the admin meant)."""
    return bool(_GATEWAY_ID.fullmatch(message)) and not Path(message).exists()


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
    from gateway.routing.dryrun import check_lines, check_rules_dir

    where = directory or ctx.settings.rules.dir
    report = await check_rules_dir(None, where)
    if not report.problems and not files_only:
        report = await in_transaction(ctx, lambda s: check_rules_dir(s, where), write=False)
    if as_json:
        emit_json(
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
        for line in check_lines(report):
            click.echo(line)
    if report.problems:
        count = len(report.problems)
        click.echo(
            f"gateway: error: {count} problem{'s' if count != 1 else ''} in the rules in {where}; "
            "a running gateway keeps the rules it has",
            err=True,
        )
        sys.exit(EXIT_INPUT)


@rules_group.command("test")
@click.argument("message")
@click.option(
    "--listener",
    default=None,
    help="The listener the message comes in on (default: submission, or the stored one's).",
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
    message: str,
    listener: str | None,
    auth: str | None,
    portfolio: str | None,
    mail_from: str | None,
    rcpt_to: tuple[str, ...],
    directory: Path | None,
    as_json: bool,
) -> None:
    """Show what the rules would do with MESSAGE, without changing anything.

    MESSAGE is an .eml file, or the gateway id (gw-…) of a message a back office submitted, such as a
    quarantined one: then its stored bytes are tried with the envelope it really came with (back office,
    portfolio, sender, recipients, listener); --auth, --from, --to and --listener still override those.
    """
    from gateway.routing.dryrun import dry_run, dry_run_lines, read_message

    if _names_stored_message(message):
        from gateway.db.messages import stored_submission

        stored = await in_transaction(ctx, lambda s: stored_submission(s, message), write=False)
        raw = stored.raw
        if auth is None:
            auth, portfolio = stored.login, portfolio or stored.portfolio
        mail_from = stored.envelope_sender if mail_from is None else mail_from
        rcpt_to = rcpt_to or stored.recipients
        listener = listener or stored.listener
    else:
        raw = read_message(Path(message))
    where = directory or ctx.settings.rules.dir
    listener = listener or "submission"
    run = await in_transaction(
        ctx,
        lambda s: dry_run(
            s,
            where,
            raw,
            vorgang_header=ctx.settings.vorgaenge.vorgang_header,
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
        emit_json(
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
    for line in dry_run_lines(run):
        click.echo(line)


@rules_group.command("replay")
@click.option(
    "--since",
    default="30d",
    show_default=True,
    help="The span: mail stored since this long ago (30d, 12h, 2w) or since a date (2026-11-01).",
)
@click.option("-p", "--portfolio", envvar="GATEWAY_PORTFOLIO", help="Only this portfolio (default: all).")
@click.option(
    "--rules",
    "candidate_dir",
    # Must exist: a folder that does not would be "no rules" and replay as a candidate that drops them all.
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="The candidate rules folder, not live yet.",
)
@click.option("--batch", default=500, show_default=True, type=click.IntRange(1, 10_000), hidden=True)
@json_option
@pass_context
@command
async def rules_replay(
    ctx: Context, since: str, portfolio: str | None, candidate_dir: Path, batch: int, as_json: bool
) -> None:
    """Replay a candidate rule folder over the stored mail and show what it would change.

    Every back-office message stored in the span is routed again, in the order it was stored, by the
    live rules ([rules] dir) and by the candidate, with the routing plan acceptance uses, and the two
    are compared: messages whose verdict, Vorgang, key, participants or audience would change, grouped
    by rule. Where even the live rules no longer reproduce what was stored (the directory changed
    since), that is listed apart. Nothing is changed. Progress goes to stderr.
    """
    import datetime as dt

    from gateway.cli.work import require_migrated
    from gateway.db.replay import reading_engine
    from gateway.routing.files import load_rules
    from gateway.routing.replay import (
        Progress,
        load_candidate,
        parse_since,
        replay,
        result_json,
        result_lines,
    )

    settings = ctx.settings
    start = parse_since(since, dt.datetime.now(dt.UTC))
    # The candidate's files first: a folder with a problem stops here, before the database is read.
    load_rules(candidate_dir)
    await require_migrated(ctx)
    engine = reading_engine(settings.database_url, settings.database)
    try:
        candidate = load_candidate(engine, candidate_dir)
        live = load_rules(settings.rules.dir).rule_set
        shown = [0.0]

        def progress(p: Progress) -> None:
            now = time.monotonic()
            if now - shown[0] >= 1.0 or p.done == p.total:
                shown[0] = now
                click.echo(f"replayed {p.done} of {p.total} messages, {p.rate:.0f}/s", err=True)

        result = await asyncio.to_thread(
            replay,
            engine,
            live,
            candidate,
            portfolio=portfolio,
            since=start,
            vorgang_header=settings.vorgaenge.vorgang_header,
            batch=batch,
            progress=progress,
        )
    finally:
        engine.dispose()
    if as_json:
        emit_json(result_json(result))
        return
    for line in result_lines(result):
        click.echo(line)
