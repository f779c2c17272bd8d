"""Reconciliation at scale: a portfolio with 100,000 messages, and sharing switched on for a release of 5.

The portfolio has 50 members; every message went to one of them, so each of the release's five members
took part in 1/50 of the messages and each of those now needs a copy for the four co-members (at the
default size 100,000 messages, 10,000 of them concerned, 40,000 copies to back-fill). The messages,
participants, copies and acceptance events are bulk-inserted straight into the database; the directory
(members, the release without sharing) is loaded, and sharing switched on, with the real `gateway`
commands, so the reconcile run is recorded by the directory change as in production.

Then, each in a process of its own (so each peak RSS is its own):

  batched N   the reconcile worker's batches of N messages (`gateway.db.reconcile.work_batch`, one
              transaction each, keyset by message id), without mailbox writes: time to compute and
              store the plan, messages/s, peak RSS and tracemalloc peak
  all at once the baseline: the same plans computed after loading all messages, participants and
              copies of the portfolio at once (read only)
  fan-out     the back-filled copies written into Maildirs by the gateway's fan-out (`FanOut.run_once`
              with the Maildir backend and reply addresses, as `gateway serve` runs it): copies/s
  admin views `gateway vorgang list|show`, `events`, `who-can-see` on the portfolio afterwards, each
              against `gateway portfolio list` (the command's start-up) as the baseline

Memory runs under tracemalloc (Python allocations; it slows Python down), so every plan is run twice:
once for time and RSS, once for tracemalloc's peak.

    .venv/bin/python bench/reconcile.py                       # 100,000 messages, about 5 minutes here
    .venv/bin/python bench/reconcile.py --messages 300000 --batch-sizes 500,5000
    .venv/bin/python bench/reconcile.py --postgres postgresql+asyncpg://postgres@127.0.0.1:5432
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, insert, select, update

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.db.engine import sqlite_on_begin, sqlite_on_connect  # noqa: E402
from gateway.db.models import (  # noqa: E402
    CopyRow,
    EventRow,
    MemberRow,
    MessageRow,
    ParticipantRow,
    PortfolioRow,
    ReconcileRunRow,
    VorgangRow,
    utc,
)
from gateway.db.reconcile import portfolio_releases, take_run, work_batch  # noqa: E402
from gateway.db.writer import sync_url  # noqa: E402
from gateway.domain.model import Participant, ParticipantRole  # noqa: E402
from gateway.domain.reconcile import ExistingCopy, MessageFacts, plan_message  # noqa: E402

BIN = Path(sys.executable).parent
PORTFOLIO = "bench"
MEMBERS = 50
TEAM = 5
RAW = (
    b"From: AMS <ams@bench.example>\r\nTo: someone@kunde.example\r\nSubject: Unterlagen\r\n"
    b"Message-ID: <x@ams.example>\r\n\r\n" + b"Sehr geehrte Damen und Herren, anbei die Unterlagen.\r\n" * 6
)


def member(n: int) -> str:
    return f"m{n:02d}@kunde.example"


def directory_yaml(share: bool) -> str:
    members = "\n".join(
        f"      - {{address: {member(n)}, name: M{n:02d}, releases: [{'Team' if n < TEAM else 'Alle'}]}}"
        for n in range(MEMBERS)
    )
    return f"""version: 1
portfolios:
  - name: {PORTFOLIO}
    share_vorgaenge_available: true
    backoffices:
      - {{name: ams, ams_version: 4.8.0.64470, addresses: [ams@bench.example]}}
    releases:
      - {{name: Team, primary: true, share_vorgaenge: {str(share).lower()}}}
      - {{name: Alle, primary: true, share_vorgaenge: false}}
    members:
{members}
"""


# Where the databases live: SQLite files in the work directory by default; with --postgres SERVER, databases
# of that PostgreSQL server. A database is named by a string either way: a file path, or a database name.
POSTGRES: str | None = None


def async_url(database: str) -> str:
    """The gateway's URL of ``database``, for its configuration."""
    if POSTGRES is None:
        return f"sqlite+aiosqlite:///{database}"
    return f"{POSTGRES.rstrip('/')}/{database}"


def sync_engine(database: str) -> Engine:
    if POSTGRES is None:
        engine = create_engine(f"sqlite+pysqlite:///{database}")
        event.listen(engine, "connect", sqlite_on_connect)
        event.listen(engine, "begin", sqlite_on_begin)
        return engine
    return create_engine(sync_url(async_url(database)))


def _server() -> Engine:
    return create_engine(sync_url(async_url("postgres")), isolation_level="AUTOCOMMIT")


def new_database(workdir: Path, name: str, template: str | None = None) -> str:
    """An empty database ``name`` (or a copy of ``template``); returns how to name it to the others."""
    if POSTGRES is None:
        path = str(workdir / f"{name}.db")
        if template is not None:
            shutil.copyfile(template, path)
        return path
    database = f"bench_reconcile_{name.replace('-', '_')}"
    server = _server()
    with server.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        like = f' TEMPLATE "{template}"' if template is not None else ""
        connection.exec_driver_sql(f'CREATE DATABASE "{database}"{like}')
    server.dispose()
    return database


def drop_databases(names: list[str]) -> None:
    if POSTGRES is None:
        return
    server = _server()
    with server.connect() as connection:
        for database in names:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    server.dispose()


def gateway(workdir: Path, *arguments: str) -> str:
    done = subprocess.run(
        [str(BIN / "gateway"), "--config", str(workdir / "gateway.toml"), *arguments],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"`gateway {' '.join(arguments)}` failed: {done.stderr.strip()}")
    return done.stdout


def setup(workdir: Path, messages: int) -> str:
    """The portfolio with ``messages`` messages, one participant and one delivered copy each."""
    database = new_database(workdir, "prepared")
    (workdir / "gateway.toml").write_text(
        f'[gateway]\ndata_dir = "data"\n[database]\nurl = "{async_url(database)}"\n',
        encoding="utf-8",
    )
    gateway(workdir, "db", "upgrade")
    (workdir / "directory.yaml").write_text(directory_yaml(share=False), encoding="utf-8")
    gateway(workdir, "directory", "load", str(workdir / "directory.yaml"))
    engine = sync_engine(database)
    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as connection:
        pid = connection.scalar(select(PortfolioRow.id).where(PortfolioRow.name == PORTFOLIO))
        ids: dict[str, int] = {
            str(address): int(member_id)
            for address, member_id in connection.execute(
                select(MemberRow.address, MemberRow.id).where(MemberRow.portfolio_id == pid)
            )
        }
        vorgaenge = messages // 10 + 1
        connection.execute(
            insert(VorgangRow),
            [
                {
                    "portfolio_id": pid,
                    "reference": f"VG-2026-{n:06d}",
                    "subject": "Unterlagen",
                    "created_at": now,
                }
                for n in range(1, vorgaenge + 1)
            ],
        )
        first_vorgang = connection.scalar(select(VorgangRow.id).order_by(VorgangRow.id).limit(1)) or 1
    chunk = 10_000
    for start in range(0, messages, chunk):
        numbers = range(start, min(messages, start + chunk))
        with engine.begin() as connection:
            rows = [
                {
                    "gateway_id": f"gw-bench-{n}",
                    "portfolio_id": pid,
                    "vorgang_id": first_vorgang + n // 10,
                    "direction": "inbound",
                    "backoffice_id": None,
                    "raw": RAW,
                    "size": len(RAW),
                    "sha256": hashlib.sha256(str(n).encode()).hexdigest(),
                    "message_id": f"<bench-{n}@ams.example>",
                    "subject": f"Unterlagen {n}",
                    "from_address": "ams@bench.example",
                    "envelope_sender": "ams@bench.example",
                    # Spread over a year, so backfill days:N would have something to tell apart.
                    "received_at": now - dt.timedelta(minutes=(messages - n) * 5),
                }
                for n in numbers
            ]
            result = connection.execute(
                insert(MessageRow).returning(MessageRow.id, sort_by_parameter_order=True), rows
            )
            message_ids = [row[0] for row in result]
            participants, copies = [], []
            for n, message_pk in zip(numbers, message_ids, strict=True):
                member_id = ids[member(n % MEMBERS)]
                participants.append(
                    {"message_id": message_pk, "member_id": member_id, "role": "to", "portfolio_id": pid}
                )
                copies.append(
                    {
                        "copy_id": f"c{n:019x}",
                        "message_id": message_pk,
                        "member_id": member_id,
                        "portfolio_id": pid,
                        "state": "delivered",
                        "next_attempt_at": None,
                        "seen": n % 3 == 0,
                        "answered": n % 7 == 0,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            connection.execute(insert(ParticipantRow), participants)
            connection.execute(insert(CopyRow), copies)
            # The event acceptance logs for each message, so the event log has its production size.
            connection.execute(
                insert(EventRow),
                [
                    {
                        "at": row["received_at"],
                        "portfolio_id": pid,
                        "actor": "backoffice:ams@bench.example",
                        "kind": "message.accepted",
                        "member_id": None,
                        "vorgang_id": row["vorgang_id"],
                        "message_id": message_pk,
                        "detail": {"gateway_id": row["gateway_id"], "audience": [member(n % MEMBERS)]},
                    }
                    for n, row, message_pk in zip(numbers, rows, message_ids, strict=True)
                ],
            )
    # What acceptance keeps on each Vorgang as it stores mail; these rows were written around it.
    with engine.begin() as connection:
        newest = (
            select(func.max(MessageRow.received_at))
            .where(MessageRow.vorgang_id == VorgangRow.id)
            .scalar_subquery()
        )
        connection.execute(
            update(VorgangRow)
            .where(VorgangRow.portfolio_id == pid)
            .values(last_message_at=func.coalesce(newest, VorgangRow.created_at))
        )
    took = time.perf_counter() - started
    print(f"  bulk insert: {messages:,} messages, participants, copies and events in {took:.1f} s")
    if POSTGRES is not None:
        # What autovacuum does after such growth; without statistics the planner takes the portfolio
        # for a hundred messages and nests loops over it (an admin view took 1.1 s instead of 0.08 s).
        with engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")
    engine.dispose()
    # The admin switches sharing on; the directory change records the reconcile run.
    (workdir / "directory.yaml").write_text(directory_yaml(share=True), encoding="utf-8")
    print(
        "  " + gateway(workdir, "directory", "load", str(workdir / "directory.yaml")).splitlines()[1].strip()
    )
    return database


# The admin views on the portfolio after the run (issue 6, item 5), each a real `gateway` command as an
# admin types it; `portfolio list` reads almost nothing, so it is the baseline: starting the command.
def admin_view_commands(messages: int) -> tuple[tuple[str, tuple[str, ...]], ...]:
    vorgang = f"VG-2026-{(messages // 10 + 1) // 2:06d}"  # one in the middle
    return (
        ("portfolio list (baseline)", ("portfolio", "list")),
        ("vorgang list", ("vorgang", "list", "-p", PORTFOLIO)),
        ("vorgang list --member", ("vorgang", "list", "-p", PORTFOLIO, "--member", "m00@kunde.example")),
        ("vorgang list --search", ("vorgang", "list", "-p", PORTFOLIO, "--search", vorgang)),
        ("vorgang show", ("vorgang", "show", vorgang, "-p", PORTFOLIO)),
        ("events --vorgang", ("events", "--vorgang", vorgang)),
        ("events --member", ("events", "-p", PORTFOLIO, "--member", "m00@kunde.example")),
        ("who-can-see", ("who-can-see", f"gw-bench-{messages // 2}")),
    )


def admin_views(workdir: Path, database: str, messages: int, runs: int = 3) -> list[tuple[str, float, int]]:
    """(view, median seconds of ``runs``, lines printed) for each admin view on ``database``."""
    config = workdir / "admin.toml"
    config.write_text(f'[database]\nurl = "{async_url(database)}"\n', encoding="utf-8")
    found = []
    for name, arguments in admin_view_commands(messages):
        took = []
        for _ in range(runs):
            started = time.perf_counter()
            done = subprocess.run(
                [str(BIN / "gateway"), "--config", str(config), *arguments], capture_output=True, text=True
            )
            took.append(time.perf_counter() - started)
            if done.returncode != 0:
                raise SystemExit(f"`gateway {' '.join(arguments)}` failed: {done.stderr.strip()}")
        found.append((name, sorted(took)[runs // 2], len(done.stdout.splitlines())))
    return found


def vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


# --- the phases, each run as `bench/reconcile.py --phase …` in a process of its own --------------------


def phase_batched(database: str, batch: int) -> dict[str, Any]:
    engine = sync_engine(database)
    node = "bench"
    with engine.begin() as connection:
        run = take_run(connection, node, dt.datetime.now(dt.UTC), 600.0)
    assert run is not None, "the directory change recorded a run"
    started = time.perf_counter()
    batches = backfilled = 0
    while True:
        with engine.begin() as connection:
            done = work_batch(connection, run, node, dt.datetime.now(dt.UTC), 600.0, batch)
        if done.finished:
            break
        batches += 1
        backfilled += done.backfilled
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "batches": batches, "backfilled": backfilled, "processed": done.processed}


def phase_all_at_once(database: str) -> dict[str, Any]:
    """The plan the naive way: every message, participant and copy of the portfolio in memory at once."""
    engine = sync_engine(database)
    started = time.perf_counter()
    with engine.begin() as connection:
        pid = connection.scalar(select(PortfolioRow.id).where(PortfolioRow.name == PORTFOLIO))
        messages = list(
            connection.execute(
                select(MessageRow.id, MessageRow.received_at, MessageRow.sender_member_id).where(
                    MessageRow.portfolio_id == pid
                )
            )
        )
        participants: dict[int, list[Participant]] = defaultdict(list)
        for message_id, member_id, role in connection.execute(
            select(ParticipantRow.message_id, ParticipantRow.member_id, ParticipantRow.role).where(
                ParticipantRow.portfolio_id == pid
            )
        ):
            participants[message_id].append(Participant(member_id, ParticipantRole(role)))
        copies: dict[int, list[ExistingCopy]] = defaultdict(list)
        for message_id, member_id, state, seen, answered, via in connection.execute(
            select(
                CopyRow.message_id,
                CopyRow.member_id,
                CopyRow.state,
                CopyRow.seen,
                CopyRow.answered,
                CopyRow.shared_via_release_id,
            ).where(CopyRow.portfolio_id == pid)
        ):
            copies[message_id].append(
                ExistingCopy(member_id, state in ("pending", "delivered", "held"), seen, answered, via)
            )
        releases, policies = portfolio_releases(connection, pid)
    now = dt.datetime.now(dt.UTC)
    plans = [
        plan_message(
            MessageFacts(m, pid, utc(received), tuple(participants[m]), tuple(copies[m]), author),
            releases,
            policies,
            now,
        )
        for m, received, author in messages
    ]
    elapsed = time.perf_counter() - started
    return {
        "seconds": elapsed,
        "batches": 1,
        "backfilled": sum(len(p.backfill) for p in plans),
        "processed": len(plans),
    }


def phase_fanout(database: str, workdir: Path, limit: float) -> dict[str, Any]:
    from gateway.config import FanoutSettings
    from gateway.db.writer import Writer
    from gateway.domain.tokens import TokenKeys
    from gateway.mailbox import MaildirMailbox
    from gateway.stages.fanout import FanOut, ReplyPath

    async def drain() -> dict[str, Any]:
        writer = Writer(async_url(database))
        mailbox = MaildirMailbox(workdir / "mail")
        fanout = FanOut(
            writer,
            mailbox,
            FanoutSettings(),
            node="bench",
            vorgang_header="X-Gateway-Vorgang",
            tag_subject=True,
            reply_path=ReplyPath(TokenKeys([b"bench-reply-token-key-0123456789"]), "reply.bench.example"),
        )
        started = time.perf_counter()
        written = 0
        try:
            while time.perf_counter() - started < limit:
                taken = await fanout.run_once()
                if not taken:
                    break
                written += taken
        finally:
            elapsed = time.perf_counter() - started
            await mailbox.close()
            await writer.close()
        return {"seconds": elapsed, "copies": written}

    return asyncio.run(drain())


def child(arguments: list[str]) -> dict[str, Any]:
    where = ["--postgres", POSTGRES] if POSTGRES is not None else []
    done = subprocess.run([sys.executable, __file__, *where, *arguments], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"phase {arguments} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_phase(args: argparse.Namespace) -> None:
    database = str(args.database)
    if args.trace:
        tracemalloc.start()
    if args.phase == "batched":
        result = phase_batched(database, args.batch)
    elif args.phase == "all":
        result = phase_all_at_once(database)
    else:
        result = phase_fanout(database, Path(args.workdir), args.fanout_seconds)
    result["rss_kib"] = vm_hwm_kib()
    if args.trace:
        result["traced_kib"] = tracemalloc.get_traced_memory()[1] // 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch-sizes", default="500", help="comma-separated batch sizes (default: 500)")
    parser.add_argument(
        "--fanout-seconds", type=float, default=60.0, help="most seconds of fan-out (default: 60)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=500, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--postgres",
        metavar="SERVER",
        help="the databases on this PostgreSQL server instead of SQLite files, as an URL without the "
        "database: postgresql+asyncpg://postgres@127.0.0.1:5432 (needs CREATE DATABASE)",
    )
    args = parser.parse_args()
    global POSTGRES
    POSTGRES = args.postgres
    if args.phase:
        run_phase(args)
        return

    load = os.getloadavg()
    kind = "SQLite (WAL)" if POSTGRES is None else f"PostgreSQL at {POSTGRES}"
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {os.cpu_count()} CPUs, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {kind}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-reconcile-"))
    databases: list[str] = []
    try:
        print(f"setting up {args.messages:,} messages in {workdir}")
        prepared = setup(workdir, args.messages)
        databases.append(prepared)
        rows = []
        sizes = [int(s) for s in args.batch_sizes.split(",")]
        for size in sizes:
            # A fresh copy of the prepared database for each: the batched run stores its plan.
            database = new_database(workdir, f"batched-{size}", template=prepared)
            databases.append(database)
            timed = child(["--phase", "batched", "--database", database, "--batch", str(size)])
            new_database(workdir, f"batched-{size}", template=prepared)
            traced = child(["--phase", "batched", "--database", database, "--batch", str(size), "--trace"])
            rows.append((f"batched {size}", timed, traced))
        timed = child(["--phase", "all", "--database", prepared])
        traced = child(["--phase", "all", "--database", prepared, "--trace"])
        rows.append(("all at once (baseline)", timed, traced))

        print()
        print(f"plan of {args.messages:,} messages (time and RSS without tracemalloc; Python peak with it)")
        print(f"{'':24} {'seconds':>8} {'msg/s':>9} {'back-filled':>12} {'peak RSS':>10} {'tracemalloc':>12}")
        for name, t, m in rows:
            print(
                f"{name:24} {t['seconds']:8.1f} {t['processed'] / t['seconds']:9,.0f} {t['backfilled']:12,} "
                f"{t['rss_kib'] / 1024:8.0f} MB {m['traced_kib'] / 1024:9.1f} MB"
            )

        database = databases[1]
        engine = sync_engine(database)
        with engine.begin() as connection:
            pending = connection.execute(select(CopyRow.id).where(CopyRow.state == "pending")).all()
            connection.execute(update(ReconcileRunRow).values(leased_by=None))
        engine.dispose()
        fan = child(
            [
                "--phase",
                "fanout",
                "--database",
                database,
                "--workdir",
                str(workdir),
                "--fanout-seconds",
                str(args.fanout_seconds),
            ]
        )
        print()
        print(
            f"fan-out into Maildir: {fan['copies']:,} of {len(pending):,} back-filled copies in "
            f"{fan['seconds']:.1f} s = {fan['copies'] / fan['seconds']:,.0f} copies/s "
            f"(peak RSS {fan['rss_kib'] / 1024:.0f} MB)"
        )

        print()
        print(f"admin views afterwards ({args.messages:,} messages; median of 3 runs of the command)")
        views = admin_views(workdir, database, args.messages)
        baseline = views[0][1]
        print(f"{'':28} {'seconds':>8} {'x baseline':>11} {'lines':>6}")
        for name, seconds, lines in views:
            print(f"{name:28} {seconds:8.2f} {seconds / baseline:11.2f} {lines:6,}")
    finally:
        if args.keep:
            print(f"kept {workdir}" + (f" and the databases {', '.join(databases)}" if POSTGRES else ""))
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            drop_databases(databases)


if __name__ == "__main__":
    main()
