"""What a /metrics scrape costs the database: ``gateway.db.gauges.stored_state`` on bench/reconcile.py's
database (a portfolio of 100,000 messages with 100,000 delivered copies and an open reconcile run).

    .venv/bin/python bench/metrics_scrape.py                 # SQLite
    .venv/bin/python bench/metrics_scrape.py --postgres postgresql+asyncpg://postgres@127.0.0.1:5432

Prints the median and the slowest of 50 reads (each a transaction of its own, as the writer runs it),
after one read to warm the caches. A scrape reads at most once per ``gateway.web.exposition``'s cache.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import bench.reconcile as prepared  # noqa: E402
from gateway.db.gauges import stored_state  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--postgres", help="a PostgreSQL server URL; default: SQLite")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    prepared.POSTGRES = args.postgres
    with tempfile.TemporaryDirectory(prefix="gw-bench-metrics-") as folder:
        workdir = Path(folder)
        database = prepared.setup(workdir, args.messages)
        engine = prepared.sync_engine(database)
        try:
            with engine.begin() as connection:
                state = stored_state(connection, dt.datetime.now(dt.UTC))
            print(f"  stored state: {state}")
            times = []
            for _ in range(args.runs):
                started = time.perf_counter()
                with engine.begin() as connection:
                    stored_state(connection, dt.datetime.now(dt.UTC))
                times.append((time.perf_counter() - started) * 1000)
        finally:
            engine.dispose()
            prepared.drop_databases([database])
    kind = "PostgreSQL" if args.postgres else "SQLite"
    print(
        f"{kind}, {args.messages} messages: stored_state median {statistics.median(times):.1f} ms, "
        f"slowest {max(times):.1f} ms of {args.runs}"
    )


if __name__ == "__main__":
    main()
