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
    .venv/bin/python bench/ingest.py --database postgresql+asyncpg://postgres@127.0.0.1/bench_ingest
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
    Run,
    TreeMemory,
    cpu_seconds,
    drive,
    free_port,
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


def gateway_run(args: argparse.Namespace, workdir: Path) -> Run:
    port = free_port()
    config = gateway_config(
        workdir, port, args.database, args.log_level, fanout=not (args.no_fanout or args.split)
    )
    gateway = prepare_gateway(workdir, config, REPO / "config/example/directory.yaml")
    log = open(args.log, "w") if args.log else subprocess.DEVNULL  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen([*gateway, "serve"], stderr=log, text=True)
    helper = None
    if args.split:
        # A second process on the same database that only writes copies: fan-out on the other core.
        fanout_config = workdir / "fanout.toml"
        fanout_config.write_text(
            config.replace("[fanout]\nenabled = false", "[fanout]\nenabled = true")
            .replace(f"[listeners.submission]\nport = {port}", "[listeners.submission]\nenabled = false")
            .replace("[gateway]\n", '[gateway]\nnode_name = "fanout-node"\n'),
            encoding="utf-8",
        )
        helper = subprocess.Popen([gateway[0], "--config", str(fanout_config), "serve"], stderr=log)
    profiler = None
    try:
        wait_listening(port)
        if args.profile:
            profiler = start_profiler(process.pid, args.profile)
        run = Run(f"gateway ({'PostgreSQL' if args.database else 'SQLite'})")
        before, client_before = cpu_seconds(process.pid), time.process_time()
        asyncio.run(drive(run, port, args.messages, args.concurrency, args.size, True, to_one_person))
        run.client_cpu = time.process_time() - client_before
        if not args.no_fanout:
            wait_for_copies(run, workdir / "data" / "mail", args.messages)
        run.server_cpu = cpu_seconds(process.pid) - before
        run.peak_rss_kib = peak_rss(process.pid)
        return run
    finally:
        stop_profiler(profiler)
        process.send_signal(signal.SIGTERM)
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
        f"{'server CPU ms/msg':>17} {'client CPU ms/msg':>17}"
    )
    for run in runs:
        copy95 = statistics.quantiles(run.copy_latencies, n=20)[18] if len(run.copy_latencies) > 20 else None
        versus = f" {run.rate / postfix.rate:>10.0%}" if postfix is not None and postfix.rate else ""
        print(
            f"{run.name:<34} {run.rate:>8.0f} {run.pct(50):>8.1f} {run.pct(95):>8.1f} {run.pct(99):>8.1f} "
            f"{run.errors:>6} {run.copies_done if run.copies_done is not None else float('nan'):>13.2f} "
            f"{copy95 if copy95 is not None else float('nan'):>10.3f} "
            f"{(run.peak_rss_kib or 0) / 1024:>12.1f} {run.rate / baseline.rate:>11.0%}{versus} "
            f"{run.server_cpu * 1000 / max(len(run.latencies), 1):>17.2f} "
            f"{run.client_cpu * 1000 / max(len(run.latencies), 1):>17.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024, help="approximate message size in bytes")
    parser.add_argument("--database", help="PostgreSQL URL (default: SQLite in a temporary directory)")
    parser.add_argument(
        "--no-fanout", action="store_true", help="measure accepting alone (no copies written)"
    )
    parser.add_argument("--split", action="store_true", help="fan-out in a second gateway process")
    parser.add_argument("--log", help="write the gateway's log to this file")
    parser.add_argument("--log-level", default="WARNING", help="the gateway's log level (default WARNING)")
    parser.add_argument("--profile", help="record the gateway with py-spy into this file (collapsed stacks)")
    args = parser.parse_args()
    print(
        f"{args.messages} messages of ~{args.size} bytes over {args.concurrency} sessions, "
        f"{os.cpu_count()} CPU(s)"
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        baseline = aiosmtpd_run(args)
        gateway = gateway_run(args, workdir)
        runs = [baseline, gateway]
        postfix, notes = None, []
        if POSTFIX.exists():
            try:
                postfix = postfix_run(args, notes)
                runs.append(postfix)
            except PostfixUnavailable as error:
                notes.append(f"postfix: installed, but no private instance could be run: {error}")
        else:
            print(f"postfix: not installed ({POSTFIX_INSTALL} to compare against its queue)")
        report(runs, baseline, postfix)
        for note in notes:
            print(note)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
