"""Ingest benchmark: N messages over C concurrent SMTP sessions into a running gateway, against baselines.

The same client (aiosmtplib over TCP, a real SMTP client) drives, in one run:
  * the gateway (`gateway serve` with the seed's directory, SQLite or PostgreSQL, Maildir), every message
    to one of the six people of DESIGN.md §3, so each has an audience of 2-4 copies;
  * a bare aiosmtpd server answering 250 without storing anything (the floor of any aiosmtpd server);
  * Postfix's own queue on loopback, where Debian's postfix is installed (otherwise reported as absent):
    a private instance in a temporary directory (its own main.cf, master.cf, queue and data directories;
    needs root, as `postfix start` does), smtpd on a free loopback port without AUTH, every message
    queued and relayed to an aiosmtpd sink that counts what arrives: what a user would run instead.
It prints messages/s accepted, p50/p95/p99 time to 250, the time until every copy is in its Maildir
(for Postfix: until every message reached the sink), p95 per copy, peak RSS, server and client CPU per
message, and the ratios to the baselines.

    .venv/bin/python bench/ingest.py --messages 3000 --concurrency 10
    .venv/bin/python bench/ingest.py --database postgresql+psycopg://postgres@127.0.0.1/bench_ingest
    .venv/bin/python bench/ingest.py --compare-databases             # SQLite and PostgreSQL, and the ratio
    .venv/bin/python bench/ingest.py --compare-databases --nodes 2   # and two nodes on PostgreSQL

With PostgreSQL the database is dropped and created for each run, and the CPU of its backends is read
from /proc (the server must run on this machine for that column).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import (
    POSTFIX,
    POSTFIX_INSTALL,
    REPO,
    PostfixUnavailable,
    PostgresCpu,
    Run,
    TreeMemory,
    cpu_seconds,
    drive,
    free_port,
    fresh_postgres,
    gateway_config,
    peak_rss,
    prepare_gateway,
    private_postfix,
    start_profiler,
    stop_profiler,
    tree_cpu_seconds,
    wait_listening,
)

PEOPLE = {
    "sb-a1@kunde-a.example": 2,
    "sb-a2@kunde-a.example": 2,
    "gf-a@kunde-a.example": 2,
    "sb-b1@kunde-b.example": 3,
    "sb-b2@kunde-b.example": 3,
    "gf-b@kunde-b.example": 4,
}
POSTFIX_NAME = "postfix (queue -> relay to a sink)"
# Where --compare-databases and --nodes run PostgreSQL unless --database names another database.
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/bench_ingest"


def to_one_person(number: int) -> tuple[str, list[str]]:
    """Message `number` goes to one of the six people of DESIGN.md §3 in turn."""
    to = list(PEOPLE)[number % len(PEOPLE)]
    return to, [to]


# The sink Postfix relays to: answers 250 and appends "<bench number> <arrival time>" per message to a file.
SINK = r"""
import asyncio, re, sys, time
from aiosmtpd.smtp import SMTP

class Counter:
    def __init__(self, out):
        self.out = out
        self.pattern = re.compile(rb"Subject: bench (\d+)")

    async def handle_DATA(self, server, session, envelope):
        match = self.pattern.search(envelope.content[:4000])
        self.out.write(f"{int(match.group(1)) if match else -1} {time.time()}\n")
        return "250 OK"

async def main():
    handler = Counter(open(sys.argv[2], "a", buffering=1))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="sink"), "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()

asyncio.run(main())
"""

# Nothing is local, everything goes to the sink, no DNS, no TLS, loopback clients may relay (no AUTH).
# Queue-file fsyncs, in_flow_delay, process limits and logging (to a file here) stay Postfix's defaults.
POSTFIX_MAIN_CF = """\
compatibility_level = 3.6
config_directory = {root}/conf
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-bench.localdomain
mydomain = localdomain
myorigin = $myhostname
mydestination =
local_recipient_maps =
relay_domains =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{sink_port}
smtp_host_lookup = native
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtp_tls_security_level = none
smtpd_tls_security_level = none
notify_classes =
biff = no
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
"""


def wait_for_copies(run: Run, root: Path, messages: int, timeout: float = 300) -> None:
    expected = sum(PEOPLE[to_one_person(n)[0]] for n in range(messages))
    deadline = time.monotonic() + timeout
    files: list[Path] = []
    while time.monotonic() < deadline:
        files = [p for p in root.rglob("*") if p.is_file() and p.parent.name in ("new", "cur")]
        if len(files) >= expected:
            break
        time.sleep(0.05)
    run.copies_done = time.perf_counter() - run.started
    pattern = re.compile(rb"Subject: \[VG-[0-9-]+\] bench (\d+)")
    for path in files:
        match = pattern.search(path.read_bytes()[:2000])
        if match and int(match.group(1)) in run.sent_at:
            run.copy_latencies.append(path.stat().st_mtime - run.sent_at[int(match.group(1))])
    if len(files) < expected:
        print(f"  only {len(files)} of {expected} copies arrived within {timeout:.0f} s", file=sys.stderr)


def gateway_run(args: argparse.Namespace, workdir: Path, database: str | None, nodes: int = 1) -> Run:
    """One target: `nodes` `gateway serve` processes on one database and one Maildir root (each its own
    node_name and submission port), the sessions split over them; SQLite when `database` is None."""
    if database is not None:
        fresh_postgres(database)
    ports = [free_port() for _ in range(nodes)]
    config = gateway_config(
        workdir, ports[0], database, args.log_level, fanout=not (args.no_fanout or args.split)
    ).replace("[gateway]\n", '[gateway]\nnode_name = "bench-node-1"\n')
    gateway = prepare_gateway(workdir, config, REPO / "config/example/directory.yaml")
    commands = [[*gateway, "serve"]]
    for number in range(2, nodes + 1):
        # Every node shares the first one's directory: the same database, Maildir root and token keys.
        node_config = workdir / f"node{number}.toml"
        node_config.write_text(
            config.replace(
                f"[listeners.submission]\nport = {ports[0]}",
                f"[listeners.submission]\nport = {ports[number - 1]}",
            ).replace('node_name = "bench-node-1"', f'node_name = "bench-node-{number}"'),
            encoding="utf-8",
        )
        commands.append([gateway[0], "--config", str(node_config), "serve"])
    log = open(args.log, "a") if args.log else subprocess.DEVNULL  # noqa: SIM115 - lives as long as the processes
    processes = [subprocess.Popen(command, stderr=log, text=True) for command in commands]
    helper = None
    if args.split:
        # A second process on the same database that only writes copies: fan-out on the other core.
        fanout_config = workdir / "fanout.toml"
        fanout_config.write_text(
            config.replace("[fanout]\nenabled = false", "[fanout]\nenabled = true")
            .replace(f"[listeners.submission]\nport = {ports[0]}", "[listeners.submission]\nenabled = false")
            .replace('node_name = "bench-node-1"', 'node_name = "fanout-node"'),
            encoding="utf-8",
        )
        helper = subprocess.Popen([gateway[0], "--config", str(fanout_config), "serve"], stderr=log)
    profiler = None
    try:
        for port in ports:
            wait_listening(port)
        if args.profile:
            profiler = start_profiler(processes[0].pid, args.profile)
        name = "PostgreSQL" if database else "SQLite"
        run = Run(f"gateway ({name}{f', {nodes} nodes' if nodes > 1 else ''})")
        postgres = PostgresCpu(database) if database else None
        if postgres is not None:
            postgres.start()
        before, client_before = sum(cpu_seconds(p.pid) for p in processes), time.process_time()
        asyncio.run(drive(run, ports, args.messages, args.concurrency, args.size, True, to_one_person))
        run.client_cpu = time.process_time() - client_before
        if not args.no_fanout:
            wait_for_copies(run, workdir / "data" / "mail", args.messages)
        run.server_cpu = sum(cpu_seconds(p.pid) for p in processes) - before
        if postgres is not None:
            run.database_cpu = postgres.stop()
        run.peak_rss_kib = max(peak_rss(p.pid) or 0 for p in processes)
        return run
    finally:
        stop_profiler(profiler)
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)
        if helper is not None:
            helper.send_signal(signal.SIGTERM)
            helper.wait(timeout=60)


def aiosmtpd_run(args: argparse.Namespace) -> Run:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}", "-c", "aiosmtpd.handlers.Sink"],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port)
        run = Run("bare aiosmtpd (250, no storage)")
        before, client_before = cpu_seconds(process.pid), time.process_time()
        asyncio.run(drive(run, port, args.messages, args.concurrency, args.size, False, to_one_person))
        run.client_cpu = time.process_time() - client_before
        run.server_cpu = cpu_seconds(process.pid) - before
        run.peak_rss_kib = peak_rss(process.pid)
        return run
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_for_sink(run: Run, path: Path, expected: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    lines: list[bytes] = []
    while time.monotonic() < deadline:
        lines = path.read_bytes().splitlines() if path.exists() else []
        if len(lines) >= expected:
            break
        time.sleep(0.05)
    run.copies_done = time.perf_counter() - run.started
    for line in lines:
        number, arrived = line.split()
        if int(number) in run.sent_at:
            run.copy_latencies.append(float(arrived) - run.sent_at[int(number)])
    if len(lines) < expected:
        print(
            f"  only {len(lines)} of {expected} messages reached the sink within {timeout:.0f} s",
            file=sys.stderr,
        )


def postfix_run(args: argparse.Namespace, notes: list[str]) -> Run:
    """Postfix's own queue: a private instance on loopback relaying every message to a counting sink."""
    port, sink_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="bench-sink-") as sink_dir:
        received = Path(sink_dir) / "sink.log"
        sink_log = open(Path(sink_dir) / "sink.stderr", "w")  # noqa: SIM115 - closed in finally, after the sink
        sink = subprocess.Popen([sys.executable, "-c", SINK, str(sink_port), str(received)], stderr=sink_log)
        memory = None
        try:
            wait_listening(sink_port)
            main_cf = lambda root: POSTFIX_MAIN_CF.format(root=root, sink_port=sink_port)  # noqa: E731
            with private_postfix(port, main_cf) as postfix:
                run = Run(POSTFIX_NAME)
                memory = TreeMemory(postfix.master)
                memory.start()
                before, client_before = tree_cpu_seconds(postfix.master), time.process_time()
                asyncio.run(
                    drive(run, port, args.messages, args.concurrency, args.size, False, to_one_person)
                )
                run.client_cpu = time.process_time() - client_before - memory.cpu
                wait_for_sink(run, received, len(run.sent_at))
                run.server_cpu = tree_cpu_seconds(postfix.master) - before
                memory.stop()
                run.peak_rss_kib = memory.peak_pss_kib
        finally:
            if memory is not None:
                memory.stop()
            sink.terminate()
            sink.wait(timeout=30)
            sink_log.close()
    notes.append(
        f"postfix {postfix.version}: a private instance (postfix -c <tmp>/conf start), smtpd on "
        f"127.0.0.1:{port} without AUTH (loopback clients relay by mynetworks; the gateway's run logs "
        f"in), relayhost [127.0.0.1]:{sink_port}: an aiosmtpd sink, not counted in CPU or memory"
    )
    notes.append(
        f"postfix: peak RSS is the peak summed PSS of the master and its daemons (up to "
        f"{memory.peak_processes} processes, sampled every 0.5 s; their summed RSS peaked at "
        f"{memory.peak_rss_kib / 1024:.1f} MiB); server CPU includes daemons that exited during the run"
    )
    return run


def report(runs: list[Run], baseline: Run, postfix: Run | None = None) -> None:
    versus = f" {'vs postfix':>10}" if postfix is not None else ""
    print(
        f"{'target':<34} {'msg/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6} "
        f"{'copies done s':>13} {'copy p95 s':>10} {'peak RSS MiB':>12} {'vs aiosmtpd':>11}{versus} "
        f"{'server CPU ms/msg':>17} {'client CPU ms/msg':>17} {'PostgreSQL CPU ms/msg':>21}"
    )
    for run in runs:
        copy95 = statistics.quantiles(run.copy_latencies, n=20)[18] if len(run.copy_latencies) > 20 else None
        versus = f" {run.rate / postfix.rate:>10.0%}" if postfix is not None and postfix.rate else ""
        database = "-" if run.database_cpu is None else f"{run.per_message(run.database_cpu):.2f}"
        print(
            f"{run.name:<34} {run.rate:>8.0f} {run.pct(50):>8.1f} {run.pct(95):>8.1f} {run.pct(99):>8.1f} "
            f"{run.errors:>6} {run.copies_done if run.copies_done is not None else float('nan'):>13.2f} "
            f"{copy95 if copy95 is not None else float('nan'):>10.3f} "
            f"{(run.peak_rss_kib or 0) / 1024:>12.1f} {run.rate / baseline.rate:>11.0%}{versus} "
            f"{run.per_message(run.server_cpu):>17.2f} {run.per_message(run.client_cpu):>17.2f} "
            f"{database:>21}"
        )


def ratios(first: Run, second: Run) -> str:
    """`second` against `first`: messages/s, the gateway's CPU per message, and with PostgreSQL's own."""
    gateway = second.per_message(second.server_cpu) / first.per_message(first.server_cpu)
    text = (
        f"{second.name} / {first.name}: msg/s {second.rate / first.rate:.0%}, gateway CPU/msg {gateway:.0%}"
    )
    if second.database_cpu is not None:
        both = second.per_message(second.server_cpu + second.database_cpu) / first.per_message(
            first.server_cpu + (first.database_cpu or 0.0)
        )
        text += f", gateway + PostgreSQL CPU/msg {both:.0%}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024, help="approximate message size in bytes")
    parser.add_argument(
        "--database", help="PostgreSQL URL, dropped and created for each run (default: SQLite)"
    )
    parser.add_argument(
        "--compare-databases",
        action="store_true",
        help=f"SQLite and PostgreSQL (--database, else {DEFAULT_POSTGRES}) side by side, with the ratio",
    )
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="also this many nodes on one PostgreSQL database and Maildir root, next to one node",
    )
    parser.add_argument(
        "--no-fanout", action="store_true", help="measure accepting alone (no copies written)"
    )
    parser.add_argument("--split", action="store_true", help="fan-out in a second gateway process")
    parser.add_argument("--no-postfix", action="store_true", help="leave the Postfix baseline out")
    parser.add_argument("--log", help="append the gateways' logs to this file")
    parser.add_argument("--log-level", default="WARNING", help="the gateway's log level (default WARNING)")
    parser.add_argument("--profile", help="record the gateway with py-spy into this file (collapsed stacks)")
    args = parser.parse_args()
    postgres = args.database or (DEFAULT_POSTGRES if args.compare_databases or args.nodes > 1 else None)
    if postgres is not None and not postgres.startswith("postgresql"):
        parser.error(f"--database {postgres}: a PostgreSQL URL is needed (SQLite is the default)")
    load = ", ".join(f"{figure:.1f}" for figure in os.getloadavg())
    print(
        f"{args.messages} messages of ~{args.size} bytes over {args.concurrency} sessions, "
        f"{os.cpu_count()} CPU(s), load average {load}"
    )
    print(f"command: {' '.join(sys.argv)}")
    workdirs: list[Path] = []

    def workdir() -> Path:
        workdirs.append(Path(tempfile.mkdtemp(prefix="bench-ingest-")))
        return workdirs[-1]

    try:
        baseline = aiosmtpd_run(args)
        runs = [baseline]
        compared: list[tuple[Run, Run]] = []
        sqlite = None
        if postgres is None or args.compare_databases:
            sqlite = gateway_run(args, workdir(), None)
            runs.append(sqlite)
        if postgres is not None:
            one = gateway_run(args, workdir(), postgres)
            runs.append(one)
            if sqlite is not None:
                compared.append((sqlite, one))
            if args.nodes > 1:
                several = gateway_run(args, workdir(), postgres, args.nodes)
                runs.append(several)
                compared.append((one, several))
        postfix, notes = None, []
        if args.no_postfix:
            pass
        elif POSTFIX.exists():
            try:
                postfix = postfix_run(args, notes)
                runs.append(postfix)
            except PostfixUnavailable as error:
                notes.append(f"postfix: installed, but no private instance could be run: {error}")
        else:
            print(f"postfix: not installed ({POSTFIX_INSTALL} to compare against its queue)")
        report(runs, baseline, postfix)
        for first, second in compared:
            print(ratios(first, second))
        if postgres is not None:
            notes.append(
                "PostgreSQL CPU: the backends serving the bench database, read from /proc; the server's "
                "shared processes (WAL writer, checkpointer) are not counted. Server CPU: all nodes'."
            )
        load = ", ".join(f"{figure:.1f}" for figure in os.getloadavg())
        notes.append(f"load average at the end: {load}")
        for note in notes:
            print(note)
    finally:
        for path in workdirs:
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
