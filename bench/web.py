"""The web console's pages on a big database: server time of every page against a page without data.

The database is the one of `bench/reconcile.py` (a portfolio "bench" of 50 members with 100,000 messages,
their copies and events, and a reconcile run recorded by switching sharing on), with an operator
account. The console's ASGI app runs in this process on that database, as `gateway serve` builds it;
each page is requested through httpx's ASGI transport, so the time measured is the server's (routing,
session check, database reads, template) plus a fraction of a millisecond of the in-process client,
with no network and no browser.

The pages are not listed here: every GET route the console registers is requested (as the permission
test walks them), with its path parameters filled from the database (the portfolio, a release, a
Vorgang in the middle, a message, the reconcile run), and a few searches and filters on top. A route
whose parameter this script cannot fill is reported, not skipped silently. The baseline is the login
page, which reads no data: the ratio says what the data costs.

    .venv/bin/python bench/web.py                         # 100,000 messages, SQLite
    .venv/bin/python bench/web.py --postgres postgresql+asyncpg://postgres@127.0.0.1:5432
    .venv/bin/python bench/web.py --messages 20000 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import reconcile as big  # noqa: E402  (bench/reconcile.py: the 100,000-message database)
from sqlalchemy import select  # noqa: E402

from gateway.config import AdminHttpSettings  # noqa: E402
from gateway.db.engine import create_engine, session_factory  # noqa: E402
from gateway.db.models import MessageRow, ReconcileRunRow  # noqa: E402
from gateway.web.app import areas, create_app  # noqa: E402
from gateway.web.console import Console  # noqa: E402

LOGIN, PASSWORD = "bench-op", "bench-operator-password"
TARGET = 0.100  # seconds of server time a page may take (issue 15)
NOT_PAGES = ("/login", "/healthz", "/readyz", "/metrics")
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


async def facts(url: str, messages: int) -> dict[str, str]:
    """Values for the routes' path parameters, read from the database."""
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session:
            middle = f"gw-bench-{messages // 2}"
            run_id = await session.scalar(select(ReconcileRunRow.id).order_by(ReconcileRunRow.id.desc()))
            exists = await session.scalar(select(MessageRow.id).where(MessageRow.gateway_id == middle))
    finally:
        await engine.dispose()
    assert exists is not None, "the database has not the messages it should"
    return {
        "portfolio": big.PORTFOLIO,
        "release": "Team",
        "reference": f"VG-2026-{(messages // 10 + 1) // 2:06d}",
        "gateway_id": middle,
        "message": middle,
        "run_id": str(run_id),
        "run": str(run_id),
        "address": big.member(0),
        "member": big.member(0),
        "login": LOGIN,
        "item": "copy-1",
    }


def extra_pages(values: dict[str, str]) -> list[str]:
    """Searches and filters over the whole portfolio, beside the routes' plain pages."""
    p, member, reference = values["portfolio"], values["member"], values["reference"]
    return [
        f"/portfolios/{p}/vorgaenge?q={reference}",
        f"/portfolios/{p}/vorgaenge?member={member}",
        f"/portfolios/{p}/vorgaenge?q=Unterlagen",
        f"/portfolios/{p}/events?member={member}",
        f"/portfolios/{p}/events?vorgang={reference}",
        f"/portfolios/{p}/who-sees?from={member}&to={big.member(1)}",
        f"/portfolios/{p}/who-sees?message={values['gateway_id']}",
    ]


def pages(values: dict[str, str]) -> tuple[list[str], list[str]]:
    """(paths to request, routes that could not be filled)."""
    paths, unfilled = [], []
    for area in areas():
        for route in area.routes:
            # Not pages: the login (the baseline) and what monitoring reads (docs/operations.md).
            if "GET" not in (route.methods or ()) or route.path in (
                "/login",
                "/healthz",
                "/readyz",
                "/metrics",
            ):
                continue
            names = re.findall(r"\{(\w+)(?::\w+)?\}", route.path)
            missing = [n for n in names if n not in values]
            if missing:
                unfilled.append(f"{route.path} (no value for {', '.join(missing)})")
                continue
            paths.append(re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m.group(1)], route.path))
    return paths, unfilled


async def measure(url: str, messages: int, runs: int) -> list[tuple[str, int, float, float]]:
    values = await facts(url, messages)
    engine = create_engine(url)
    console = Console(AdminHttpSettings(), session_factory(engine))
    app = create_app(console)
    rows: list[tuple[str, int, float, float]] = []
    try:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
            login_page = await client.get("/login")
            token = CSRF_RE.search(login_page.text)
            assert token is not None, "no CSRF token on the login page"
            answer = await client.post(
                "/login", data={"login": LOGIN, "password": PASSWORD, "csrf": token.group(1)}
            )
            assert answer.status_code == 303, f"login failed: {answer.status_code}"
            plain, unfilled = pages(values)
            # The login page (no data) is the baseline; a logged-in client is sent on from it, so it is
            # requested by a client without the session cookie.
            async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as anonymous:
                rows.append(await timed(anonymous, "/login (baseline)", "/login", runs))
            for path in [*plain, *extra_pages(values)]:
                rows.append(await timed(client, path, path, runs))
            rows.extend(await timed_preview(client, values, runs))
    finally:
        await engine.dispose()
    for route in unfilled:
        print(f"  not measured: {route}")
    return rows


async def timed(client: httpx.AsyncClient, label: str, path: str, runs: int) -> tuple[str, int, float, float]:
    await client.get(path)  # templates compiled, caches warm: what every later visit sees
    took: list[float] = []
    status = 0
    for _ in range(runs):
        started = time.perf_counter()
        response = await client.get(path)
        took.append(time.perf_counter() - started)
        status = response.status_code
    return label, status, statistics.median(took), max(took)


async def timed_preview(
    client: httpx.AsyncClient, values: dict[str, str], runs: int
) -> list[tuple[str, int, float, float]]:
    """The preview of switching "Vorgänge teilen" off for the release, two rows: the POST, which checks
    the change and answers with a redirect to the preview's page at once, and the time from the POST
    until the preview is done (its page's JSON polled, as the page's script does), the planning of every
    involved message in the background. Nothing is written (the admin confirms later)."""
    path = f"/portfolios/{values['portfolio']}/releases/{values['release']}"
    page = await client.get(path)
    token = CSRF_RE.search(page.text)
    assert token is not None, f"no form on {path}"
    form = {
        "csrf": token.group(1),
        "primary": "on",
        "read_sync": "answered",
        "backfill": "all",
        "revoked_copies": "remove",
    }  # share_vorgaenge unticked
    posted: list[float] = []
    ready: list[float] = []
    status = 0
    for _ in range(runs):
        started = time.perf_counter()
        response = await client.post(path, data=form)
        posted.append(time.perf_counter() - started)
        status = response.status_code
        assert status == 303, f"the preview was not started: {status}"
        progress = response.headers["location"] + "/progress"
        # Polled over HTTP as the page's script polls: the JSON is what is measured, not an event.
        while not (await client.get(progress)).json()["done"]:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        ready.append(time.perf_counter() - started)
        assert (await client.get(response.headers["location"])).status_code == 200
    return [
        (f"POST {path} (preview: sharing off, answer)", status, statistics.median(posted), max(posted)),
        ("  ... until that preview is done (background)", 200, statistics.median(ready), max(ready)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7, help="requests per page (median and max reported)")
    parser.add_argument("--postgres", metavar="SERVER", help="PostgreSQL server URL instead of SQLite files")
    args = parser.parse_args()
    big.POSTGRES = args.postgres
    print(f"$ {' '.join(sys.argv)}")
    print(f"cpus {os.cpu_count()}, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        workdir = Path(tmp)
        print(f"setting up {args.messages:,} messages ({'PostgreSQL' if args.postgres else 'SQLite'}) …")
        database = big.setup(workdir, args.messages)
        (workdir / "op.password").write_text(PASSWORD + "\n", encoding="utf-8")
        big.gateway(
            workdir,
            "admin",
            "add",
            LOGIN,
            "--role",
            "operator",
            "--password-file",
            str(workdir / "op.password"),
        )
        try:
            rows = asyncio.run(measure(big.async_url(database), args.messages, args.runs))
        finally:
            big.drop_databases([database])
    base = rows[0][2]
    print()
    print(f"server time per page, {args.runs} requests each after one warm-up; target {TARGET * 1000:.0f} ms")
    print(f"{'page':70} {'status':>6} {'median':>9} {'max':>9} {'x login':>8}")
    worst = 0.0
    for label, status, median, top in rows:
        print(f"{label:70} {status:>6} {median * 1000:>7.1f}ms {top * 1000:>7.1f}ms {median / base:>7.1f}x")
        if not label.endswith(("(baseline)", "(background)")):
            worst = max(worst, median)
    failed = [label for label, status, *_ in rows if status >= 500]
    print()
    print(
        f"slowest page (median): {worst * 1000:.1f} ms; {'within' if worst <= TARGET else 'OVER'} the target"
    )
    if failed:
        print("pages that failed (5xx): " + ", ".join(failed))


if __name__ == "__main__":
    main()
