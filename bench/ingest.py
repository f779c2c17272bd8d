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
import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
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
POSTFIX = Path("/usr/sbin/postfix")
POSTFIX_NAME = "postfix (queue -> relay to a sink)"

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

# Debian's default services, none chrooted (the instance lives in a temporary directory), smtpd on loopback.
POSTFIX_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
rewrite    unix  - - n -  - trivial-rewrite
bounce     unix  - - n -  0 bounce
defer      unix  - - n -  0 bounce
trace      unix  - - n -  0 bounce
verify     unix  - - n -  1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -  - proxymap
proxywrite unix  - - n -  1 proxymap
smtp       unix  - - n -  - smtp
relay      unix  - - n -  - smtp
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
local      unix  - n n -  - local
lmtp       unix  - - n -  - lmtp
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
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


def cpu_seconds(pid: int, reaped: bool = False) -> float:
    """User plus system CPU time the process has used so far (with `reaped`, also its waited-for children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if reaped else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """CPU of Postfix's master, its live daemons and the daemons it has reaped (they come and go)."""
    total = 0.0
    for process in [*children(pid), pid]:
        # One that exited in between is counted in the master's reaped time once waited for.
        with contextlib.suppress(OSError):
            total += cpu_seconds(process, reaped=True)
    return total


class TreeMemory(threading.Thread):
    """Samples the summed memory of a process and its children every `interval` seconds; keeps the peaks.

    PSS shares each page among the processes that map it, so Postfix's daemons sum sensibly (their
    summed RSS counts libc and Postfix's shared libraries once per process). Reading smaps_rollup of
    ~55 daemons costs the bench ~10 ms of CPU, hence the long interval (the daemons live 100 s, so the
    sum moves slowly) and `cpu`, the sampler thread's own CPU, to take out of the client's."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.stopped = threading.Event()
        self.peak_pss_kib = self.peak_rss_kib = self.peak_processes = 0
        self.cpu = 0.0

    def sample(self) -> None:
        pss = rss = count = 0
        for process in [self.pid, *children(self.pid)]:
            try:
                lines = Path(f"/proc/{process}/smaps_rollup").read_text().splitlines()
            except OSError:
                continue
            count += 1
            for line in lines:
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        self.peak_pss_kib, self.peak_rss_kib = max(self.peak_pss_kib, pss), max(self.peak_rss_kib, rss)
        self.peak_processes = max(self.peak_processes, count)

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            started = time.thread_time()
            self.sample()
            self.cpu += time.thread_time() - started

    def stop(self) -> None:
        if not self.stopped.is_set():
            self.stopped.set()
            self.join(timeout=10)
            self.sample()


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
    subprocess.run([*gateway, "secrets", "init"], check=True, capture_output=True)
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


class PostfixUnavailable(Exception):
    """Postfix is installed but no private instance could be run here; the message says why."""


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


def tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError:
        return "(none)"


def on_terminal(command: list[str], timeout: float) -> tuple[int, str]:
    """Runs a command on a pseudo-terminal: Postfix writes its messages to stderr only if that is a tty."""
    controller, terminal = os.openpty()
    output = bytearray()
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
        deadline = time.monotonic() + timeout
        os.set_blocking(controller, False)
        while True:
            done = process.poll() is not None
            with contextlib.suppress(BlockingIOError, OSError):
                while chunk := os.read(controller, 65536):
                    output += chunk
            if done:
                break
            if time.monotonic() > deadline:
                process.kill()
            time.sleep(0.05)
    finally:
        os.close(terminal)
        os.close(controller)
    return process.returncode, " | ".join(output.decode(errors="replace").split("\r\n")).strip(" |")


def postfix_run(args: argparse.Namespace, notes: list[str]) -> Run:
    """Postfix's own queue: a private instance on loopback relaying every message to a counting sink."""
    if os.geteuid() != 0:
        raise PostfixUnavailable("a private instance needs root (`postfix start` runs its master as root)")
    try:
        owner = pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError as error:
        raise PostfixUnavailable(
            f"{error} is missing (Debian's package creates the user and group)"
        ) from None
    # Not under the bench's workdir (mode 0700): Postfix's daemons run as `postfix` and must reach the queue.
    root = Path(tempfile.mkdtemp(prefix="bench-postfix-"))
    root.chmod(0o755)
    conf, queue, data = root / "conf", root / "queue", root / "data"
    for directory, mode in ((conf, 0o755), (queue, 0o755), (data, 0o700)):
        directory.mkdir(mode=mode)
    os.chown(data, owner.pw_uid, owner.pw_gid)
    port, sink_port = free_port(), free_port()
    (conf / "main.cf").write_text(POSTFIX_MAIN_CF.format(root=root, sink_port=sink_port), encoding="utf-8")
    (conf / "master.cf").write_text(POSTFIX_MASTER_CF.format(port=port), encoding="utf-8")
    postfix = [str(POSTFIX), "-c", str(conf)]
    received = root / "sink.log"
    sink_log = open(root / "sink.stderr", "w")  # noqa: SIM115 - closed in finally, after the sink
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(sink_port), str(received)], stderr=sink_log)
    memory = None
    try:
        wait_listening(sink_port)
        code, output = on_terminal([*postfix, "start"], timeout=120)
        if code != 0:
            raise PostfixUnavailable(
                f"`postfix -c {conf} start` exited {code}: {output or '(no output)'} "
                f"(its maillog: {tail(root / 'maillog')})"
            )
        master = int((queue / "pid" / "master.pid").read_text().split()[0])
        try:
            wait_listening(port)
        except SystemExit as error:
            raise PostfixUnavailable(f"{error} (maillog: {tail(root / 'maillog')})") from None
        version = subprocess.run(
            [str(POSTFIX.with_name("postconf")), "-c", str(conf), "-h", "mail_version"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        run = Run(POSTFIX_NAME)
        memory = TreeMemory(master)
        memory.start()
        before, client_before = tree_cpu_seconds(master), time.process_time()
        asyncio.run(drive(run, port, args.messages, args.concurrency, args.size, login=False))
        run.client_cpu = time.process_time() - client_before - memory.cpu
        wait_for_sink(run, received, len(run.sent_at))
        run.server_cpu = tree_cpu_seconds(master) - before
        memory.stop()
        run.peak_rss_kib = memory.peak_pss_kib
        notes.append(
            f"postfix {version or '?'}: a private instance (postfix -c <tmp>/conf start), smtpd on "
            f"127.0.0.1:{port} without AUTH (loopback clients relay by mynetworks; the gateway's run logs "
            f"in), relayhost [127.0.0.1]:{sink_port}: an aiosmtpd sink, not counted in CPU or memory"
        )
        notes.append(
            f"postfix: peak RSS is the peak summed PSS of the master and its daemons (up to "
            f"{memory.peak_processes} processes, sampled every 0.5 s; their summed RSS peaked at "
            f"{memory.peak_rss_kib / 1024:.1f} MiB); server CPU includes daemons that exited during the run"
        )
        return run
    finally:
        if memory is not None:
            memory.stop()
        if (queue / "pid" / "master.pid").exists():  # also after a failed start that left a master behind
            code, output = on_terminal([*postfix, "stop"], timeout=60)
            if code != 0 and "not running" not in output:
                print(f"postfix: `postfix -c {conf} stop` exited {code}: {output}", file=sys.stderr)
        sink.terminate()
        sink.wait(timeout=30)
        sink_log.close()
        shutil.rmtree(root, ignore_errors=True)


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


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
            print("postfix: not installed (apt-get install postfix to compare against its queue)")
        report(runs, baseline, postfix)
        for note in notes:
            print(note)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
