"""What fencing costs the fan-out's database work (issue 17 item 1): one confirm statement per batch.

The fan-out takes a batch of copies (``claim``), confirms its leases right before writing them
(``confirm``: one statement for the batch, a write only for leases half gone) and records the outcome
(``record``, which first locks the rows still held). This measures, per batch of copies, the
wall time of each of the three transactions as the fan-out runs them (through the writer thread), on
SQLite or PostgreSQL, and prints the confirm's share of the queue work of a batch. No mailbox is
written: the mailbox's own time (Maildir: about 0.1 ms per copy here) comes on top of all three.

The database is bench/reconcile.py's portfolio (delivered copies, bulk-inserted), with every copy made
pending again before the run.

    .venv/bin/python bench/fencing.py                                   # SQLite, 20,000 copies
    .venv/bin/python bench/fencing.py --postgres postgresql+asyncpg://postgres@127.0.0.1:5432
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import reconcile as prepared  # bench/reconcile.py: the same portfolio, set up the same way
from sqlalchemy import update

from gateway.db import queue
from gateway.db.models import CopyRow
from gateway.db.queue import Outcome
from gateway.db.writer import Writer


async def measure(database: str, batch: int, batches: int) -> dict[str, list[float]]:
    writer = Writer(prepared.async_url(database))
    times: dict[str, list[float]] = {"claim": [], "confirm": [], "record": []}
    try:
        await writer.run(
            lambda c: c.execute(
                update(CopyRow).values(
                    state="pending", next_attempt_at=dt.datetime(2000, 1, 1), leased_by=None, attempts=0
                )
            )
        )
        for _ in range(batches):
            now = dt.datetime.now(dt.UTC)
            started = time.perf_counter()
            jobs = await writer.run(queue.claim, "bench", now, 60.0, batch)
            claimed = time.perf_counter()
            if not jobs:
                break
            held = await writer.run(queue.confirm, queue.JobKind.COPY, jobs, "bench", now, 60.0)
            confirmed = time.perf_counter()
            assert held == {job.id for job in jobs}
            outcomes = [Outcome(job, mailbox_ref=f"new/{job.copy_id}.gateway") for job in jobs]
            recorded = await writer.run(queue.record, outcomes, now, {}, node="bench")
            done = time.perf_counter()
            assert not recorded.lost
            times["claim"].append((claimed - started) * 1000)
            times["confirm"].append((confirmed - claimed) * 1000)
            times["record"].append((done - confirmed) * 1000)
    finally:
        await writer.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--copies", type=int, default=20_000, help="copies in the database (default 20,000)")
    parser.add_argument("--batch", type=int, default=100, help="copies per batch ([fanout] batch_size: 100)")
    parser.add_argument("--batches", type=int, default=150, help="batches measured (default 150)")
    parser.add_argument("--postgres", metavar="SERVER", help="a PostgreSQL server URL without the database")
    args = parser.parse_args()
    prepared.POSTGRES = args.postgres
    load = os.getloadavg()
    kind = "SQLite (WAL)" if args.postgres is None else f"PostgreSQL at {args.postgres}"
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {os.cpu_count()} CPUs, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {kind}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-fencing-"))
    databases: list[str] = []
    try:
        database = prepared.setup(workdir, args.copies)
        databases.append(database)
        times = asyncio.run(measure(database, args.batch, args.batches))
    finally:
        prepared.drop_databases(databases)
        shutil.rmtree(workdir, ignore_errors=True)
    count = len(times["claim"])
    print(f"{count} batches of {args.batch} copies; wall ms per batch through the writer thread")
    print(f"{'transaction':<12} {'median':>8} {'p95':>8}")
    for name, values in times.items():
        p95 = statistics.quantiles(values, n=20)[18] if len(values) >= 20 else max(values)
        print(f"{name:<12} {statistics.median(values):>8.2f} {p95:>8.2f}")
    medians = {name: statistics.median(values) for name, values in times.items()}
    share = medians["confirm"] / sum(medians.values())
    per_copy = medians["confirm"] / args.batch * 1000
    print(f"confirm: {share:.0%} of a batch's queue work (median), {per_copy:.1f} µs per copy")


if __name__ == "__main__":
    main()
