"""Rule replay at scale: `gateway rules replay` over the 100,000 messages of bench/reconcile.py's database.

The database is bench/reconcile.py's (`setup`): one portfolio, 100,000 stored back-office messages
spread over a year, ten to a Vorgang (here each message's bytes are made to say so: the nine later
ones answer the first by In-Reply-To), sharing switched on for a release of 5 after they were stored
(so the live rules no longer reproduce the copies of a tenth of them: the replay reports those apart).
No rules are live. Each row below runs in a process of its own, so each peak RSS (VmHWM) is its own,
over the most recent 10,000 messages and over all 100,000 (the span chosen by --since):

  rows only    the baseline: the replay's reads alone (`gateway.db.replay.submissions_after` and
               `batch_facts` per batch), no parsing, no rules, no plans
  unchanged    the live rules (none) replayed as the candidate: parse, decide twice, plan twice, compare
  participant  a candidate adding a member as Cc to every message: every message changes (participants,
               audience), no Vorgang moves
  re-key 1/10  a candidate keying the Vorgänge whose first message's number ends in 00 to one Vorgang:
               a tenth of the messages move (the replies follow their first message)
  re-key all   a candidate keying every message to one Vorgang: nearly all messages move, the worst
               case for memory (each world keeps the messages it placed elsewhere than stored)

    .venv/bin/python bench/replay.py                       # 100,000 messages; about 10 minutes here
    .venv/bin/python bench/replay.py --messages 20000
    .venv/bin/python bench/replay.py --postgres postgresql+asyncpg://postgres@127.0.0.1:5432
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import reconcile  # noqa: E402  (bench/reconcile.py: the database)
from sqlalchemy import bindparam, select, update  # noqa: E402

from gateway.db import replay as db  # noqa: E402
from gateway.db.models import MessageRow  # noqa: E402
from gateway.domain.routing_plan import lookups  # noqa: E402
from gateway.domain.rules import RuleSet  # noqa: E402
from gateway.routing.files import load_rules  # noqa: E402
from gateway.routing.replay import BATCH, replay  # noqa: E402

CANDIDATES = {
    "unchanged": None,
    "participant": """
rules:
  - name: copy-m01
    match: {sender_domain: bench.example}
    participants: [{address: m01@kunde.example, role: cc}]
""",
    "re-key 1/10": """
rules:
  - name: hundreds
    match:
      subject: {regex: 'Unterlagen [0-9]*00$'}
    vorgang_key: "hundert"
""",
    "re-key all": """
rules:
  - name: one-vorgang
    match: {sender_domain: bench.example}
    vorgang_key: "alles"
""",
}


def consistent(database: str) -> None:
    """Give every stored message the bytes its rows say: To its participant, its own Message-ID and
    subject, and In-Reply-To the first message of its Vorgang (bench/reconcile.py stores one text for
    all). Then the live rules reproduce what was stored, but for the copies sharing added since."""
    started = time.perf_counter()
    engine = reconcile.sync_engine(database)
    with engine.begin() as connection:
        rows = connection.execute(select(MessageRow.id, MessageRow.gateway_id).order_by(MessageRow.id)).all()
        params = []
        for pk, gateway_id in rows:
            n = int(str(gateway_id).removeprefix("gw-bench-"))
            first = n // 10 * 10
            answers = f"In-Reply-To: <bench-{first}@ams.example>\r\n" if n != first else ""
            raw = (
                f"From: AMS <ams@bench.example>\r\nTo: {reconcile.member(n % reconcile.MEMBERS)}\r\n"
                f"Subject: Unterlagen {n}\r\nMessage-ID: <bench-{n}@ams.example>\r\n{answers}\r\n"
            ).encode() + b"Sehr geehrte Damen und Herren, anbei die Unterlagen.\r\n" * 6
            params.append({"pk": pk, "new_raw": raw})
        connection.execute(
            update(MessageRow).where(MessageRow.id == bindparam("pk")).values(raw=bindparam("new_raw")),
            params,
        )
    engine.dispose()
    print(f"  each message's bytes made to fit its rows in {time.perf_counter() - started:.1f} s")


def candidate(workdir: Path, name: str) -> RuleSet:
    text = CANDIDATES[name]
    if text is None:
        return RuleSet()
    folder = workdir / ("rules-" + name.replace(" ", "-").replace("/", "-"))
    folder.mkdir(exist_ok=True)
    (folder / "10-bench.yaml").write_text(text.lstrip("\n"), encoding="utf-8")
    return load_rules(folder).rule_set


def phase(database: str, workdir: Path, name: str, since_days: float) -> dict[str, Any]:
    engine = db.reading_engine(reconcile.async_url(database))
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=since_days)
    started, cpu = time.perf_counter(), time.process_time()
    if name == "rows only":
        with engine.begin() as connection:
            [(pid, portfolio)] = db.portfolios(connection, reconcile.PORTFOLIO)
        after, messages = 0, 0
        while True:
            with engine.begin() as connection:
                stored = db.submissions_after(connection, pid, since, after, BATCH)
                if not stored:
                    break
                db.batch_facts(connection, pid, portfolio, lookups([]))
            after, messages = stored[-1].history.row, messages + len(stored)
        result: dict[str, Any] = {"messages": messages}
    else:
        done = replay(engine, RuleSet(), candidate(workdir, name), portfolio=reconcile.PORTFOLIO, since=since)
        report = done.report
        result = {
            "messages": report.messages,
            "changed": report.changed,
            "not_reproduced": sum(report.not_reproduced.values()),
        }
    result["seconds"] = time.perf_counter() - started
    result["cpu"] = time.process_time() - cpu
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would be the parent's peak.
    result["rss_kib"] = reconcile.vm_hwm_kib()
    engine.dispose()
    return result


def child(database: str, workdir: Path, name: str, since_days: float) -> dict[str, Any]:
    where = ["--postgres", reconcile.POSTGRES] if reconcile.POSTGRES is not None else []
    arguments = [
        "--phase",
        name,
        "--database",
        database,
        "--workdir",
        str(workdir),
        "--since-days",
        str(since_days),
    ]
    done = subprocess.run([sys.executable, __file__, *where, *arguments], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--postgres", metavar="SERVER", help="as bench/reconcile.py --postgres")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--since-days", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    reconcile.POSTGRES = args.postgres
    if args.phase:
        print(json.dumps(phase(args.database, Path(args.workdir), args.phase, args.since_days)))
        return

    kind = "SQLite (WAL)" if args.postgres is None else f"PostgreSQL at {args.postgres}"
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    database = ""
    try:
        print(f"setting up {args.messages:,} messages in {workdir} ({kind})")
        database = reconcile.setup(workdir, args.messages)
        consistent(database)
        # bench/reconcile.py stores a message every 5 minutes up to now: the newest tenth is this span.
        tenth = args.messages // 10 * 5 / (24 * 60)
        spans = [(args.messages // 10, tenth), (args.messages, args.messages * 5 / (24 * 60) + 1)]
        load = os.getloadavg()
        print(
            f"machine: {os.cpu_count()} CPUs, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} before the runs"
        )
        header = f"{'run':<12} {'span':>8} {'messages':>9} {'changed':>8} {'apart':>7} {'wall s':>7} "
        print(header + f"{'CPU s':>7} {'CPU µs/msg':>10} {'msg/s':>7} {'peak RSS MiB':>12}")
        for name in ["rows only", "unchanged", "participant", "re-key 1/10", "re-key all"]:
            for label, days in spans:
                r = child(database, workdir, name, days)
                per = r["cpu"] / r["messages"] * 1e6 if r["messages"] else 0.0
                print(
                    f"{name:<12} {label:>8,} {r['messages']:>9,} {r.get('changed', '-'):>8} "
                    f"{r.get('not_reproduced', '-'):>7} {r['seconds']:>7.1f} {r['cpu']:>7.1f} {per:>10.0f} "
                    f"{r['messages'] / r['seconds']:>7.0f} {r['rss_kib'] / 1024:>12.1f}",
                    flush=True,
                )
        load = os.getloadavg()
        print(f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} after the runs")
    finally:
        if database:
            reconcile.drop_databases([database])
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
