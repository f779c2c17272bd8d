"""The replay of a candidate rule set in the console (operators only), as ``gateway rules replay`` runs it.

The admin sends the candidate from the rules page: uploaded rules files, or the live files edited in
the page's text areas. The candidate is checked first (files and names, off the event loop); a problem
is answered on the rules page with FILE:LINE:COL and nothing runs. A valid candidate is replayed in the
background (``gateway.web.replay_tasks``): the form is answered with the replay's own page, which shows
the messages replayed so far and then the difference in the words of the CLI. The candidate is never
written anywhere nor activated; the live rules stay in force.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Callable
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, RedirectResponse, Response

from gateway.db.replay import reading_engine
from gateway.domain.rules import RuleSet
from gateway.errors import InputError, RulesFileError
from gateway.routing.files import load_rules
from gateway.routing.replay import Progress, ReplayResult, load_candidate, parse_since, replay, result_lines
from gateway.web.replay_tasks import Busy, KeptReplay
from gateway.web.routes import Area, Scope, Visit
from gateway.web.rules import rules_page

area = Area("rules_replay")

MAX_FILES = 50
# A rules file's name: what `rules_files` loads (.yaml/.yml), no path, no hidden file.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.ya?ml")
# Where the candidate's files are said to be in its problems (FILE:LINE:COL) and rule labels.
CANDIDATE = Path("candidate")


async def _candidate(visit: Visit) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    """The candidate's files (name, bytes): the uploaded ones if any, else the text areas; and the
    texts to show again if the form is answered with a problem."""
    form = await visit.request.form()
    uploaded: list[tuple[str, bytes]] = []
    for item in form.getlist("files"):
        if isinstance(item, UploadFile):
            try:
                if item.filename:
                    uploaded.append((Path(item.filename).name, await item.read()))
            finally:
                await item.close()
    names = [str(n) for n in form.getlist("name")]
    texts = [str(t) for t in form.getlist("text")]
    edited = [(name, text.replace("\r\n", "\n")) for name, text in zip(names, texts, strict=False)]
    if uploaded:
        return uploaded, edited
    return [(name, text.encode("utf-8")) for name, text in edited], edited


@area.route("/rules/replay", scope=Scope.OPERATOR, methods=("POST",))
async def start_replay(visit: Visit) -> Response:
    form = {name: visit.form.get(name, "").strip() for name in ("portfolio", "since")}
    files, edited = await _candidate(visit)

    async def refuse(text: str, problems: list[str] | None = None) -> Response:
        return await rules_page(
            visit,
            400,
            replay_form=form,
            replay_problems=problems,
            replay_refusal=text,
            candidate_texts=edited,
        )

    if not files:
        return await refuse(visit.t("rules.replay_no_files"))
    if len(files) > MAX_FILES:
        return await refuse(visit.t("rules.replay_too_many", n=MAX_FILES))
    if any(not _NAME.fullmatch(name) for name, _ in files):
        return await refuse(visit.t("rules.replay_bad_name"))
    try:
        since = parse_since(form["since"] or "30d", dt.datetime.now(dt.UTC))
    except InputError as exc:
        return await refuse(f"{visit.t('rules.replay_not_run')} {exc}")
    snapshot = [(CANDIDATE / name, data) for name, data in sorted(files)]
    url = visit.console.sessions.kw["bind"].url.render_as_string(hide_password=False)
    engine = reading_engine(url)
    try:
        candidate = await asyncio.to_thread(load_candidate, engine, CANDIDATE, snapshot=snapshot)
    except RulesFileError as exc:
        engine.dispose()
        return await refuse("", [str(p) for p in exc.problems])
    live = await _live(visit)
    vorgang_header = visit.console.operations.settings.vorgaenge.vorgang_header
    portfolio = form["portfolio"] or None

    def work(progress: Callable[[Progress], None], stopped: Callable[[], bool]) -> ReplayResult:
        try:
            return replay(
                engine,
                live,
                candidate,
                portfolio=portfolio,
                since=since,
                vorgang_header=vorgang_header,
                progress=progress,
                stopped=stopped,
            )
        finally:
            engine.dispose()

    try:
        kept = visit.console.replays.start(visit.account.id, candidate.digest, work)
    except Busy:
        engine.dispose()
        return await refuse(visit.t("rules.replay_busy"))
    return RedirectResponse(f"/rules/replay/{kept.id}", status_code=303)


async def _live(visit: Visit) -> RuleSet:
    """The rules in force: the running gateway's, else the files' (an invalid folder: no rules)."""
    running = visit.console.operations.rules
    if running is not None:
        return running.current
    try:
        loaded = await asyncio.to_thread(load_rules, visit.console.operations.settings.rules.dir)
    except RulesFileError:
        return RuleSet()
    return loaded.rule_set


def _kept(visit: Visit) -> KeptReplay | None:
    return visit.console.replays.find(str(visit.request.path_params["replay_id"]), visit.account.id)


def _state(visit: Visit, kept: KeptReplay) -> dict[str, object]:
    name = (
        "done"
        if kept.result is not None
        else "refused"
        if kept.problem
        else "failed"
        if kept.failed
        else "running"
    )
    p = kept.progress
    return {
        "state": name,
        "done": kept.done,
        "processed": p.done,
        "total": p.total,
        "text": visit.t("rules.replay_progress", done=p.done, total=p.total),
    }


@area.route("/rules/replay/{replay_id}", scope=Scope.OPERATOR)
async def show_replay(visit: Visit) -> Response:
    kept = _kept(visit)
    if kept is None:
        return visit.render("rules_replay.html", 404, kept=None, state={}, lines=[])
    lines = result_lines(kept.result) if kept.result is not None else []
    return visit.render("rules_replay.html", kept=kept, state=_state(visit, kept), lines=lines)


@area.route("/rules/replay/{replay_id}/progress", scope=Scope.OPERATOR)
async def replay_progress(visit: Visit) -> Response:
    kept = _kept(visit)
    if kept is None:
        return JSONResponse({"state": "gone", "done": True}, status_code=404)
    return JSONResponse(_state(visit, kept))
