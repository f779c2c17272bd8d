"""The acceptance transaction alone, SQLite and PostgreSQL side by side: statements and CPU per message.

Stores batches of messages (each to one of the six people of DESIGN.md §3) through the acceptance
stage's batch transaction (`_accept_batch`, with the hand-off lease the fan-out uses), then the
fan-out's lease check and record for their copies (`queue.confirm`, `queue.record`), on the writer
thread, without SMTP, parsing pool or mailboxes: the database work of accepting mail, which is what
differs between the two databases. CPU is this process's (SQLAlchemy, the driver) and, on
PostgreSQL, the server backend's, read from /proc; wall is the writer's time per message.

    .venv/bin/python bench/accept_batch.py                       # batches of 10, 100 each
    .venv/bin/python bench/accept_batch.py --batch 1,10,50 --batches 200
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import LOGIN, REPO, body, cpu_seconds, free_port, fresh_postgres, gateway_config, prepare_gateway
from sqlalchemy import event, text

from gateway.db import queue
from gateway.db.accounts import find_account
from gateway.db.writer import Writer
from gateway.domain.parsing import parse_message
from gateway.stages.acceptance import Submission, _accept_batch

PEOPLE = [
    "sb-a1@kunde-a.example",
    "sb-a2@kunde-a.example",
    "gf-a@kunde-a.example",
    "sb-b1@kunde-b.example",
    "sb-b2@kunde-b.example",
    "gf-b@kunde-b.example",
]


async def measure(url: str, size: int, batches: int) -> dict[str, float]:
    writer = Writer(url)
    statements, fanned = 0, 0

    def count(*_: Any) -> None:
        nonlocal statements
        statements += 1

    event.listen(writer.engine, "before_cursor_execute", count)
    backend = None
    if url.startswith("postgresql"):
        backend = await writer.run(lambda c: int(c.scalar(text("SELECT pg_backend_pid()")) or 0))
    account = await writer.run(find_account, LOGIN)
    assert account is not None
    totals = {"accept": 0.0, "accept_db": 0.0, "record": 0.0, "record_db": 0.0, "wall": 0.0}
    number, measured = 0, 0
    for round_ in range(batches + 3):  # the first three warm the caches (and PostgreSQL's prepared ones)
        submissions = []
        for _ in range(size):
            to = PEOPLE[number % len(PEOPLE)]
            raw = body(number, 1024, to)
            number += 1
            submissions.append(Submission(account, LOGIN, (to,), raw, parse_message(raw), "submission", "x"))
        lease = ("bench", dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60))
        statements, started = 0, time.perf_counter()
        database, mine = cpu_seconds(backend) if backend else 0.0, time.process_time()
        _, jobs = await writer.run(_accept_batch, submissions, "gw.example", lease)
        accepted = statements
        database2, mine2 = cpu_seconds(backend) if backend else 0.0, time.process_time()
        # The fan-out's two transactions for these copies: the lease check right before writing
        # (fencing), then the record of what was written.
        held = await writer.run(queue.confirm, queue.JobKind.COPY, jobs, "bench", dt.datetime.now(dt.UTC), 60)
        outcomes = [queue.Outcome(job, f"ref-{job.copy_id}") for job in jobs if job.id in held]
        await writer.run(queue.record, outcomes, dt.datetime.now(dt.UTC), {}, node="bench")
        fanned = statements - accepted
        database3, mine3 = cpu_seconds(backend) if backend else 0.0, time.process_time()
        if round_ >= 3:
            measured += size
            totals["accept"] += mine2 - mine
            totals["accept_db"] += database2 - database
            totals["record"] += mine3 - mine2
            totals["record_db"] += database3 - database2
            totals["wall"] += time.perf_counter() - started
    await writer.close()
    result = {key: value * 1000 / measured for key, value in totals.items()}
    result["statements"] = accepted
    result["fanout_statements"] = fanned
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", default="10", help="messages per batch, comma-separated for several")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/bench_accept")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU(s), load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(
        f"{'database':<11} {'batch':>5} {'statements':>10} {'accept CPU':>10} {'+ server':>8} "
        f"{'fan-out st.':>11} {'fan-out CPU':>11} {'+ server':>8} {'wall':>7}   (ms per message)"
    )
    for size in (int(n) for n in args.batch.split(",")):
        for name, url in (("SQLite", None), ("PostgreSQL", args.postgres)):
            workdir = Path(tempfile.mkdtemp(prefix="bench-accept-"))
            try:
                if url is not None:
                    fresh_postgres(url)
                config = gateway_config(workdir, free_port(), url, "WARNING")
                prepare_gateway(workdir, config, REPO / "config/example/directory.yaml")
                r = asyncio.run(measure(url or f"sqlite:///{workdir / 'gateway.db'}", size, args.batches))
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            print(
                f"{name:<11} {size:>5} {r['statements']:>10.0f} {r['accept']:>10.3f} "
                f"{r['accept_db']:>8.3f} {r['fanout_statements']:>11.0f} {r['record']:>11.3f} "
                f"{r['record_db']:>8.3f} {r['wall']:>7.2f}"
            )


if __name__ == "__main__":
    main()
