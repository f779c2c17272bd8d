"""Ingest benchmark: N messages over C concurrent SMTP sessions into a running gateway, against baselines.

The same client (aiosmtplib over TCP, a real SMTP client) drives, in one run:
  * the gateway (`gateway serve` with the seed's directory, SQLite or PostgreSQL, Maildir), every message
    to one of the six people of DESIGN.md §3, so each has an audience of 2-4 copies;
  * a bare aiosmtpd server answering 250 without storing anything (the floor of any aiosmtpd server);
  * Postfix's own queue on loopback, where Debian's postfix is installed (otherwise reported as absent).
It prints messages/s accepted, p50/p95/p99 time to 250, the time until every copy is in its Maildir
(and p95 per copy), the gateway's peak RSS, and the ratios to the baselines.

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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PEOPLE = {
    "sb-a1@kunde-a.example": 2,
    "sb-a2@kunde-a.example": 2,
    "gf-a@kunde-a.example": 2,
    "sb-b1@kunde-b.example": 3,
    "sb-b2@kunde-b.example": 3,
    "gf-b@kunde-b.example": 4,
}
LOGIN, PASSWORD = "ams@makler-muster.example", "bench-password-123"


@dataclass
class Run:
    name: str
    started: float = 0.0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    sent_at: dict[int, float] = field(default_factory=dict)
    errors: int = 0
    copies_done: float | None = None
    copy_latencies: list[float] = field(default_factory=list)
    peak_rss_kib: int | None = None
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def pct(self, p: float) -> float:
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(p / 100 * len(data)))] * 1000 if data else float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def body(number: int, size: int, to: str) -> bytes:
    head = (
        f"From: AMS <{LOGIN}>\r\nTo: {to}\r\nSubject: bench {number:07d}\r\n"
        f"Message-ID: <bench-{number}-{time.time_ns()}@ams.example>\r\n\r\n"
    ).encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def drive(run: Run, port: int, messages: int, concurrency: int, size: int, login: bool) -> None:
    recipients = list(PEOPLE)
    numbers = iter(range(messages))

    async def session() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60, start_tls=False)
        await client.connect()
        if login:
            await client.login(LOGIN, PASSWORD)
        for number in numbers:
            to = recipients[number % len(recipients)]
            started = time.perf_counter()
            try:
                await client.sendmail(LOGIN, [to], body(number, size, to))
            except aiosmtplib.SMTPException:
                run.errors += 1
                continue
            done = time.perf_counter()
            run.latencies.append(done - started)
            run.sent_at[number] = time.time()
        await client.quit()

    run.started = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(concurrency)))
    run.elapsed = time.perf_counter() - run.started


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def wait_for_copies(run: Run, root: Path, messages: int, timeout: float = 300) -> None:
    expected = sum(PEOPLE[list(PEOPLE)[n % len(PEOPLE)]] for n in range(messages))
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
    database = args.database or f"sqlite+aiosqlite:///{workdir / 'gateway.db'}"
    config = workdir / "gateway.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "data"\n[database]\nurl = "{database}"\n'
        f"[listeners.submission]\nport = {port}\n[listeners.mx]\nenabled = false\n"
        # The benchmark measures throughput from one client address, not the per-client limiter.
        "[limits]\nmax_messages_per_minute_per_client = 10000000\n"
        f'[logging]\nlevel = "{args.log_level}"\n'
        f"[fanout]\nenabled = {'false' if args.no_fanout or args.split else 'true'}\n",
        encoding="utf-8",
    )
    gateway = [str(BIN / "gateway"), "--config", str(config)]
    subprocess.run([*gateway, "db", "upgrade"], check=True, capture_output=True)
    subprocess.run(
        [*gateway, "directory", "load", str(REPO / "config/example/directory.yaml")],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*gateway, "backoffice", "password", "ams", "-p", "makler-muster", "--password-file", "-"],
        input=PASSWORD,
        text=True,
        check=True,
        capture_output=True,
    )
    log = open(args.log, "w") if args.log else subprocess.DEVNULL  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen([*gateway, "serve"], stderr=log, text=True)
    helper = None
    if args.split:
        # A second process on the same database that only writes copies: fan-out on the other core.
        fanout_config = workdir / "fanout.toml"
        fanout_config.write_text(
            config.read_text(encoding="utf-8")
            .replace("[fanout]\nenabled = false", "[fanout]\nenabled = true")
            .replace(f"[listeners.submission]\nport = {port}", "[listeners.submission]\nenabled = false")
            .replace("[gateway]\n", '[gateway]\nnode_name = "fanout-node"\n'),
            encoding="utf-8",
        )
        helper = subprocess.Popen([str(BIN / "gateway"), "--config", str(fanout_config), "serve"], stderr=log)
    profiler = None
    try:
        wait_listening(port)
        if args.profile:
            # py-spy samples the running gateway from outside: collapsed stacks for a flame graph.
            profiler = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--gil",
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "-o",
                    args.profile,
                    "-p",
                    str(process.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        run = Run(f"gateway ({'PostgreSQL' if args.database else 'SQLite'})")
        before, client_before = cpu_seconds(process.pid), time.process_time()
        asyncio.run(drive(run, port, args.messages, args.concurrency, args.size, login=True))
        run.client_cpu = time.process_time() - client_before
        if not args.no_fanout:
            wait_for_copies(run, workdir / "data" / "mail", args.messages)
        run.server_cpu = cpu_seconds(process.pid) - before
        run.peak_rss_kib = peak_rss(process.pid)
        return run
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=60)
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
        asyncio.run(drive(run, port, args.messages, args.concurrency, args.size, login=False))
        run.client_cpu = time.process_time() - client_before
        run.server_cpu = cpu_seconds(process.pid) - before
        run.peak_rss_kib = peak_rss(process.pid)
        return run
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def report(runs: list[Run], baseline: Run) -> None:
    print(
        f"{'target':<34} {'msg/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6} "
        f"{'copies done s':>13} {'copy p95 s':>10} {'peak RSS MiB':>12} {'vs aiosmtpd':>11}"
    )
    for run in runs:
        copy95 = statistics.quantiles(run.copy_latencies, n=20)[18] if len(run.copy_latencies) > 20 else None
        print(
            f"{run.name:<34} {run.rate:>8.0f} {run.pct(50):>8.1f} {run.pct(95):>8.1f} {run.pct(99):>8.1f} "
            f"{run.errors:>6} {run.copies_done if run.copies_done is not None else float('nan'):>13.2f} "
            f"{copy95 if copy95 is not None else float('nan'):>10.3f} "
            f"{(run.peak_rss_kib or 0) / 1024:>12.1f} {run.rate / baseline.rate:>10.0%} "
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
        if shutil.which("postfix"):
            print("postfix is installed, but the Postfix baseline is not wired up yet")
        else:
            print("postfix: not installed (apt-get install postfix to compare against its queue)")
        report(runs, baseline)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
