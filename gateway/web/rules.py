"""The routing rules in the console (operators only): the files with their check result (the checker
of ``gateway rules check``), the rule set in force, "test a message": an uploaded .eml or a stored
message through the dry run of ``gateway rules test``, shown in the same words, and the form of the
replay of a candidate (run by ``gateway.web.rules_replay``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.responses import Response

from gateway.domain.parsing import ParsedMessage, parse_message
from gateway.domain.rules import RuleSet
from gateway.errors import InputError, NotFound, Problem, RulesFileError
from gateway.routing.dryrun import check_lines, check_rules_dir, dry_run, dry_run_lines, stored_message
from gateway.routing.files import load_rules, rules_files
from gateway.web.routes import Area, NavEntry, Scope, Visit

area = Area("rules", nav=NavEntry("nav.rules", "/rules", Scope.OPERATOR, order=80))

TEST_FIELDS = ("gateway_id", "auth", "portfolio", "mail_from", "rcpt_to")


@dataclass(frozen=True, slots=True)
class RulesFile:
    """A file of the rules directory with the problems the checker found in it."""

    name: str
    problems: tuple[Problem, ...]


async def _page(
    visit: Visit,
    status: int = 200,
    *,
    form: dict[str, str] | None = None,
    problems: dict[str, str] | None = None,
    detail: str = "",
    result: list[str] | None = None,
    replay_form: dict[str, str] | None = None,
    replay_problems: list[str] | None = None,
    replay_refusal: str = "",
    candidate_texts: list[tuple[str, str]] | None = None,
) -> Response:
    """The rules page; ``problems`` maps a field of the test form to a message id, ``detail`` is the
    dry run's own refusal. The ``replay_…`` values are the replay form's (``gateway.web.rules_replay``):
    its fields, the candidate's FILE:LINE:COL problems or another refusal, and the candidate's files as
    sent (default: the live files, to edit)."""
    operations = visit.console.operations
    directory = operations.settings.rules.dir
    async with visit.console.sessions() as session:
        report = await check_rules_dir(session, directory)
    paths = await asyncio.to_thread(rules_files, directory)
    files = [
        RulesFile(str(path), tuple(p for p in report.problems if p.where.startswith(f"{path}:")))
        for path in paths
    ]
    in_force, loaded_here = await _in_force(visit)
    if candidate_texts is None:
        candidate_texts = await asyncio.to_thread(_texts, paths)
    return visit.render(
        "rules.html",
        status,
        directory=str(directory),
        files=files,
        report=report,
        check=check_lines(report),
        in_force=in_force,
        loaded_here=loaded_here,
        form=form or {},
        problems=problems or {},
        detail=detail,
        result=result,
        limit=visit.console.settings.max_upload_size,
        replay_form=replay_form or {},
        replay_problems=replay_problems or [],
        replay_refusal=replay_refusal,
        candidate_texts=candidate_texts,
    )


rules_page = _page  # the replay's form lives on this page (gateway.web.rules_replay)


def _texts(paths: list[Path]) -> list[tuple[str, str]]:
    """The live rules files by name and text, for the replay form to edit (an unreadable one is left out)."""
    found = []
    for path in paths:
        try:
            found.append((path.name, path.read_text("utf-8")))
        except (OSError, UnicodeDecodeError):
            continue
    return found


async def _in_force(visit: Visit) -> tuple[RuleSet | None, bool]:
    """The rule set the running gateway routes by; else the files' set if they are valid (and so
    loaded here, which the page says), else None."""
    live = visit.console.operations.rules
    if live is not None:
        return live.current, False
    try:
        loaded = await asyncio.to_thread(load_rules, visit.console.operations.settings.rules.dir)
    except RulesFileError:
        return None, True
    return loaded.rule_set, True


@area.route("/rules", scope=Scope.OPERATOR)
async def rules(visit: Visit) -> Response:
    return await _page(visit)


@area.route("/rules/test", scope=Scope.OPERATOR, methods=("POST",))
async def test_message(visit: Visit) -> Response:
    """A dry run: nothing changes, so the result is this POST's answer (no redirect to a result)."""
    form = {name: visit.form.get(name, "").strip() for name in TEST_FIELDS}
    upload = (await visit.request.form()).get("message")
    raw: bytes | None = None
    if isinstance(upload, UploadFile):
        try:
            if upload.filename:
                raw = await upload.read()
        finally:
            await upload.close()
    portfolio = form["portfolio"] or None
    if raw is None and form["gateway_id"]:
        try:
            async with visit.console.sessions() as session:
                raw, stored_in = await stored_message(session, form["gateway_id"])
        except NotFound:
            return await _page(visit, 400, form=form, problems={"gateway_id": "rules.no_such_message"})
        portfolio = portfolio or stored_in
    if raw is None:
        return await _page(visit, 400, form=form, problems={"message": "rules.choose_message"})
    settings = visit.console.operations.settings
    try:
        parsed = await _parse(raw, settings.vorgaenge.vorgang_header, settings.limits.parse_timeout)
    except TimeoutError:
        return await _page(visit, 400, form=form, problems={"message": "rules.unreadable"})
    live = visit.console.operations.rules
    recipients = tuple(a for a in form["rcpt_to"].replace(",", " ").split() if a)
    try:
        async with visit.console.sessions() as session:
            run = await dry_run(
                session,
                settings.rules.dir,
                raw,
                vorgang_header=settings.vorgaenge.vorgang_header,
                auth=form["auth"] or None,
                portfolio=portfolio,
                mail_from=form["mail_from"] or None,
                rcpt_to=recipients,
                parsed=parsed,
                rule_set=live.current if live is not None else None,
            )
    except RulesFileError:
        return await _page(visit, 409, form=form, problems={"message": "rules.files_invalid"})
    except InputError as exc:
        # The dry run's own words (an unknown back office, no portfolio, no recipients), as the CLI says.
        return await _page(visit, 400, form=form, problems={"run": "rules.not_run"}, detail=str(exc))
    return await _page(visit, form=form, result=dry_run_lines(run))


async def _parse(raw: bytes, vorgang_header: str, budget: float) -> ParsedMessage:
    """Parse an uploaded message off the event loop, within the listeners' parse budget.

    A thread, not the listeners' worker processes: the uploader is a logged-in operator and the body
    is bounded by ``max_upload_size``; a parse over the budget is answered, though the thread runs on.
    """
    return await asyncio.wait_for(
        asyncio.to_thread(parse_message, raw, vorgang_header=vorgang_header), timeout=budget
    )
