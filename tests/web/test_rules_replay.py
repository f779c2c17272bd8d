"""The replay of a candidate rule set in the console over HTTP, on SQLite and PostgreSQL: uploaded files
or the live files edited in the page; the check's FILE:LINE:COL before anything runs; the difference in
the words of ``gateway rules replay``; operators only, CSRF, bounded upload; the replay runs in a thread
while the console answers other requests; nothing is activated or written."""

from __future__ import annotations

import asyncio
import html
import re
import threading
from pathlib import Path

import httpx
import pytest

from gateway.routing.replay import Progress, ReplayResult
from gateway.web.replay_tasks import Busy, ReplayTasks
from tests.seed import ADDRESS
from tests.web.conftest import ZWEI, ZWEI_PASSWORD
from tests.web.test_ops import RULES, Ops, logged_in, ops, text_of

__all__ = ["ops"]  # the fixture, shared with test_ops.py

CLAIMS = """\
version: 1
rules:
  - name: claims
    match: {subject: {regex: 'Schaden (?P<claim_no>[0-9-]+)'}}
    vorgang_key: "claim-{claim_no}"
"""
REKEYED = CLAIMS.replace("[0-9-]+", "[0-9]+")
BROKEN = CLAIMS.replace("vorgang_key", "vorgang_kee")


async def stored(ops: Ops) -> list[str]:
    (ops.rules_dir / "20-claims.yaml").write_text(CLAIMS, encoding="utf-8")
    sent = [
        await ops.send(ADDRESS["SB-A1"], "Schaden 100"),
        await ops.send(ADDRESS["SB-A1"], "Schaden 100-2"),
        await ops.send(ADDRESS["SB-B1"], "Schaden 100-2 Nachtrag"),
        await ops.send(ADDRESS["GF-A"], "Schaden 200"),
    ]
    return [s.gateway_id for s in sent]


def result_of(page: str) -> str:
    found = re.search(r'<pre class="ops-text" aria-labelledby="result">(.*?)</pre>', page, re.S)
    assert found, page
    return html.unescape(found.group(1))


async def finished(client: httpx.AsyncClient, location: str) -> str:
    """The replay's page once its progress says done (polled as the page's script polls)."""
    for _ in range(600):
        state = (await client.get(f"{location}/progress")).json()
        if state["done"]:
            break
        await asyncio.sleep(0.05)
    page = await client.get(location)
    assert page.status_code == 200
    return page.text


async def test_an_uploaded_candidate_replays_as_the_cli_does(ops: Ops, tmp_path: Path) -> None:
    ids = await stored(ops)
    browser = await logged_in(ops)
    token = await browser.csrf("/rules")
    answer = await browser.client.post(
        "/rules/replay",
        data={"csrf": token, "since": "30d"},
        files=[
            ("files", ("10-held.yaml", RULES.encode(), "application/yaml")),
            ("files", ("20-claims.yaml", REKEYED.encode(), "application/yaml")),
        ],
    )
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert location.startswith("/rules/replay/")
    page = await finished(browser.client, location)
    shown = result_of(page)
    assert "Der Kandidat ist nicht in Kraft" in text_of(page)
    assert "4 message(s) replayed in makler-muster" in shown
    assert "  vorgang: 2 message(s)" in shown
    assert f'{ids[2]} "Schaden 100-2 Nachtrag"' in shown

    # The same lines as `gateway rules replay` over the same files (the folder's name aside).
    folder = tmp_path / "candidate-cli"
    folder.mkdir()
    (folder / "10-held.yaml").write_text(RULES, encoding="utf-8")
    (folder / "20-claims.yaml").write_text(REKEYED, encoding="utf-8")
    cli = await asyncio.to_thread(ops.web.cli, "rules", "replay", "--rules", str(folder))
    assert shown == cli.stdout.rstrip("\n").replace(str(folder), "candidate")
    # Nothing activated: the live files are as they were, and the live rules still key 100-2 apart.
    assert (ops.rules_dir / "20-claims.yaml").read_text(encoding="utf-8") == CLAIMS


async def test_the_live_files_edited_in_the_page_are_the_candidate(ops: Ops) -> None:
    await stored(ops)
    browser = await logged_in(ops)
    rules = await browser.client.get("/rules")
    # The page offers each live file to edit.
    assert "20-claims.yaml" in rules.text
    assert "claim-{claim_no}" in html.unescape(rules.text)
    token = await browser.csrf("/rules")
    unchanged = await browser.client.post(
        "/rules/replay",
        data={"csrf": token, "name": ["10-held.yaml", "20-claims.yaml"], "text": [RULES, CLAIMS]},
    )
    assert unchanged.status_code == 303
    page = await finished(browser.client, unchanged.headers["location"])
    assert "no differences: the candidate routes every message as the live rules do" in result_of(page)


async def test_an_invalid_candidate_is_refused_with_file_line_col_and_nothing_runs(ops: Ops) -> None:
    await stored(ops)
    browser = await logged_in(ops)
    token = await browser.csrf("/rules")
    answer = await browser.client.post(
        "/rules/replay",
        data={"csrf": token, "name": ["20-claims.yaml"], "text": [BROKEN]},
    )
    assert answer.status_code == 400
    assert "candidate/20-claims.yaml:5:5" in text_of(answer.text)
    assert browser.console.replays.running() == []
    # What the admin typed is shown again, to fix.
    assert "vorgang_kee" in html.unescape(answer.text)
    badly_named = await browser.client.post(
        "/rules/replay", data={"csrf": token, "name": ["../x.yaml"], "text": [CLAIMS]}
    )
    assert badly_named.status_code == 400
    nothing = await browser.client.post("/rules/replay", data={"csrf": token})
    assert nothing.status_code == 400
    bad_span = await browser.client.post(
        "/rules/replay", data={"csrf": token, "since": "lately", "name": ["a.yaml"], "text": [CLAIMS]}
    )
    assert bad_span.status_code == 400
    assert "--since 'lately'" in html.unescape(bad_span.text)


async def test_operators_only_csrf_and_a_bounded_upload(ops: Ops) -> None:
    await stored(ops)
    zwei = await logged_in(ops, ZWEI, ZWEI_PASSWORD)
    token = await zwei.csrf("/")
    refused = await zwei.client.post(
        "/rules/replay", data={"csrf": token, "name": ["a.yaml"], "text": [CLAIMS]}
    )
    assert refused.status_code == 403
    assert (await zwei.client.get("/rules/replay/whatever")).status_code == 403

    browser = await logged_in(ops, max_upload_size=4096)
    no_token = await browser.client.post("/rules/replay", data={"name": ["a.yaml"], "text": [CLAIMS]})
    assert no_token.status_code == 403
    token = await browser.csrf("/rules")
    big = await browser.client.post(
        "/rules/replay",
        data={"csrf": token},
        files=[("files", ("10-big.yaml", b"# " + b"x" * 8000 + b"\n", "application/yaml"))],
    )
    assert big.status_code == 413
    assert browser.console.replays.running() == []
    # Another account's replay, or one that never was: the same answer.
    assert (await browser.client.get("/rules/replay/not-a-replay")).status_code == 404


async def test_a_replay_runs_in_a_thread_and_the_console_answers_meanwhile(ops: Ops) -> None:
    browser = await logged_in(ops)
    tasks: ReplayTasks = browser.console.replays
    release = threading.Event()
    entered = threading.Event()

    def work(progress: object, stopped: object) -> ReplayResult:
        entered.set()
        release.wait(30)
        raise RuntimeError("stopped on purpose")

    kept = tasks.start(1, "abc", work)
    await asyncio.to_thread(entered.wait, 30)
    # The replay holds its thread; the event loop serves pages.
    assert (await browser.client.get("/rules")).status_code == 200
    with pytest.raises(Busy) as mine:
        tasks.start(1, "again", work)
    assert mine.value.yours is kept
    with pytest.raises(Busy) as other:
        tasks.start(2, "other", work)
    assert other.value.yours is None
    release.set()
    assert kept.task is not None
    await kept.task
    assert kept.failed
    assert kept.done


async def test_a_replay_stops_at_its_next_batch_when_the_gateway_shuts_down() -> None:
    tasks = ReplayTasks()
    batches: list[int] = []
    entered = threading.Event()

    def work(progress: object, stopped: object) -> ReplayResult:
        assert callable(stopped)
        assert callable(progress)
        while not stopped():
            batches.append(1)
            progress(Progress(len(batches), 10**9, 1.0))
            entered.set()
            threading.Event().wait(0.01)
        raise RuntimeError("stopped")

    kept = tasks.start(1, "abc", work)
    await asyncio.to_thread(entered.wait, 30)
    await tasks.close()
    assert kept.task is not None
    assert kept.task.done()
    assert kept.progress.done == len(batches)
