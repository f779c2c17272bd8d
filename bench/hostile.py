"""Hostile-client benchmark: what attacks without a password cost a running gateway, against its idle state.

One `gateway serve` (the seed's directory, SQLite or PostgreSQL, Maildir, default limits) is attacked in
turn the ways issue 12 describes, and each figure is printed next to the same figure taken while the
gateway was idle, in the same run:
  * memory: the gateway process's RSS growth (peak during the phase minus RSS before it) while one MX
    session, then 20 at once, send a DATA of 24 MiB made of 3-byte lines ("x" CRLF) to the bounce address
    (accepted at RCPT; the DATA is taken or refused at its end); the worker processes are reported apart;
  * latency: a back office's submission (connect, AUTH, one message, QUIT; one after another) and a NOOP
    on an open MX session, max and p95, while idle, during the bounce-parsing attack (four clients each
    sending three bounce-like mails of 2 MiB, multiparts nested 600 deep, to the MX listener), and while 200
    idle connections from ten addresses hold the MX listener (plus whether an MX client from a fresh
    address is served);
  * password guessing: 20 connections from one address, and one connection each from ten addresses,
    send wrong passwords for the back office's login; guesses per minute sent, and guesses per minute
    that reached the password check (answered 535, not 454), with the auth.failed events recorded.

Targets (issue 12): RSS growth below 2x the message size for one session and below the configured
budget for 20; a submission's max latency below 1 s during the attacks.

    .venv/bin/python bench/hostile.py                    # full run, ~5-10 minutes
    .venv/bin/python bench/hostile.py --quick            # smaller sizes and counts, ~2 minutes
    .venv/bin/python bench/hostile.py --database postgresql+asyncpg://postgres@127.0.0.1/bench_hostile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness import BIN, LOGIN, PASSWORD, REPO, children, free_port, wait_listening

MIB = 1024 * 1024
REPLY_DOMAIN = "reply.bench.example"
BOUNCES = f"bounces@{REPLY_DOMAIN}"
MEMBER = "sb-a1@kunde-a.example"
# Ten guessing / idling addresses on the loopback network (Linux routes all of 127/8 to lo).
ADDRESSES = [f"127.0.0.{n}" for n in range(2, 12)]
FRESH = "127.0.0.99"
# The address 20 connections guess from; the back office submits from 127.0.0.1, as its own server would.
GUESSER = "127.0.0.20"
# The line flood comes from one address, the four bounce senders from one each.
FLOODER = "127.0.0.40"
BOUNCERS = [f"127.0.0.{n}" for n in range(30, 34)]


# --- the gateway under test --------------------------------------------------------------------------


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    command: list[str]
    submission: int
    mx: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def events(self, kind: str) -> list[dict[str, object]]:
        done = subprocess.run(
            [*self.command, "events", "--kind", kind, "--json", "--limit", "100000"],
            capture_output=True,
            text=True,
        )
        return list(json.loads(done.stdout)) if done.returncode == 0 else []


def start_gateway(workdir: Path, database: str | None, extra_limits: str) -> Gateway:
    submission, mx = free_port(), free_port()
    url = database or f"sqlite+aiosqlite:///{workdir / 'gateway.db'}"
    config = workdir / "gateway.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "data"\nhostname = "gateway.bench.example"\n'
        f'[database]\nurl = "{url}"\n'
        f'[domains]\nreply_domain = "{REPLY_DOMAIN}"\n'
        f"[listeners.submission]\nport = {submission}\n[listeners.mx]\nport = {mx}\n"
        "[listeners.admin_http]\nenabled = false\n"
        f"[limits]\n{extra_limits}\n"
        '[logging]\nlevel = "WARNING"\n',
        encoding="utf-8",
    )
    command = [str(BIN / "gateway"), "--config", str(config)]

    def run(*arguments: str, stdin: str | None = None) -> None:
        done = subprocess.run([*command, *arguments], input=stdin, text=True, capture_output=True)
        if done.returncode != 0:
            raise SystemExit(f"`gateway {' '.join(arguments)}` failed: {done.stderr.strip()}")

    run("db", "upgrade")
    run("secrets", "init")
    run("directory", "load", str(REPO / "config" / "example" / "directory.yaml"))
    run("backoffice", "password", "ams", "-p", "makler-muster", "--password-file", "-", stdin=PASSWORD)
    log = workdir / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen([*command, "serve"], stdout=out, stderr=subprocess.STDOUT)
    wait_listening(submission, timeout=120)
    wait_listening(mx, timeout=120)
    return Gateway(process, command, submission, mx, log)


def configured_limits(command: list[str]) -> dict[str, str]:
    """The [limits] in force, as `gateway config check` prints them (the memory budget's name included)."""
    done = subprocess.run([*command, "config", "check"], capture_output=True, text=True)
    found = dict(re.findall(r"^limits\.(\w+) = (.+)$", done.stdout, re.MULTILINE))
    # The DATA memory budget is per listener; the floods go to the MX listener.
    budget = re.search(r"^listeners\.mx\.max_data_memory = (\d+)$", done.stdout, re.MULTILINE)
    if budget:
        found["mx_data_budget"] = budget.group(1)
    return found


# --- measuring ---------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# The flood sessions' sockets, so that a flood can be cut off when the gateway grows past --rss-cap.
FLOODING: set[socket.socket] = set()
FLOODING_LOCK = threading.Lock()


class RssPeak(threading.Thread):
    """Samples the RSS of the gateway process (and, apart, of its worker processes) every 20 ms; past
    ``cap_kib`` it cuts the flood sessions off, so that a gateway without a memory bound cannot take the
    machine down with it."""

    def __init__(self, pid: int, cap_kib: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.cap_kib = cap_kib
        self.capped = False
        self.before = rss_kib(pid)
        self.workers_before = self.workers()
        self.peak = self.before
        self.workers_peak = self.workers_before
        self.stopped = threading.Event()

    def workers(self) -> int:
        return sum(rss_kib(child) for child in children(self.pid))

    def run(self) -> None:
        while not self.stopped.wait(0.02):
            self.peak = max(self.peak, rss_kib(self.pid))
            self.workers_peak = max(self.workers_peak, self.workers())
            if self.peak - self.before > self.cap_kib and not self.capped:
                self.capped = True
                with FLOODING_LOCK:
                    for sock in FLOODING:
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> tuple[float, float]:
        """Growth of the gateway process and of its workers, in MiB."""
        self.stopped.set()
        self.join()
        return (self.peak - self.before) / 1024, (self.workers_peak - self.workers_before) / 1024


@dataclass
class Latencies:
    values: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def max(self) -> float:
        return max(self.values) if self.values else float("nan")

    def p95(self) -> float:
        if not self.values:
            return float("nan")
        data = sorted(self.values)
        return data[min(len(data) - 1, int(0.95 * len(data)))]


def submit_once(gateway: Gateway) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.submission, timeout=300) as client:
        client.login(LOGIN, PASSWORD)
        client.sendmail(
            LOGIN,
            [MEMBER],
            f"From: {LOGIN}\r\nTo: {MEMBER}\r\nSubject: bench hostile\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@ams.example>\r\n\r\nText\r\n",
        )


class Watcher(threading.Thread):
    """A back office submitting one message after another, and a NOOP on an open MX session, timed."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(daemon=True)
        self.gateway = gateway
        self.submissions = Latencies()
        self.noops = Latencies()
        self.stopped = threading.Event()

    def run(self) -> None:
        mx: smtplib.SMTP | None = None
        with contextlib.suppress(OSError, smtplib.SMTPException):
            mx = smtplib.SMTP("127.0.0.1", self.gateway.mx, timeout=300)
            mx.ehlo("watcher.bench.example")
        while not self.stopped.is_set():
            started = time.perf_counter()
            try:
                submit_once(self.gateway)
                self.submissions.values.append(time.perf_counter() - started)
            except (OSError, smtplib.SMTPException) as exc:
                self.submissions.failures.append(str(exc)[:120])
            if mx is not None:
                started = time.perf_counter()
                try:
                    mx.noop()
                    self.noops.values.append(time.perf_counter() - started)
                except (OSError, smtplib.SMTPException) as exc:
                    self.noops.failures.append(str(exc)[:120])
                    mx = None
            self.stopped.wait(0.1)
        if mx is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                mx.quit()

    def stop(self) -> None:
        self.stopped.set()
        self.join()


@contextlib.contextmanager
def watched(gateway: Gateway) -> Iterator[Watcher]:
    watcher = Watcher(gateway)
    watcher.start()
    try:
        yield watcher
    finally:
        watcher.stop()


# --- the attacks -------------------------------------------------------------------------------------


def data_session(gateway: Gateway, payload: bytes, source: str = "127.0.0.1") -> str:
    """One MX session sending ``payload`` (already dot-stuffed, ending in CRLF) as DATA; the final answer."""
    try:
        with smtplib.SMTP("127.0.0.1", gateway.mx, timeout=600, source_address=(source, 0)) as client:
            client.ehlo("flood.bench.example")
            client.mail("")
            code, text = client.rcpt(BOUNCES)
            if code != 250:
                return f"{code} {text.decode(errors='replace')}"
            code, text = client.docmd("DATA")
            if code != 354:
                return f"{code} {text.decode(errors='replace')}"
            assert client.sock is not None
            with FLOODING_LOCK:
                FLOODING.add(client.sock)
            try:
                client.sock.sendall(payload)
                client.sock.sendall(b".\r\n")
                code, text = client.getreply()
            finally:
                with FLOODING_LOCK:
                    FLOODING.discard(client.sock)
            return f"{code} {text.decode(errors='replace')}"
    except (OSError, smtplib.SMTPException) as exc:
        return f"connection: {type(exc).__name__} {exc}"[:120]


def line_flood(size: int) -> bytes:
    head = b"From: flood@example.net\r\nSubject: lines\r\n\r\n"
    return head + b"x\r\n" * ((size - len(head)) // 3)


def slow_bounce(size: int, depth: int = 600) -> bytes:
    """A delivery report as an attacker writes it: multiparts nested ``depth`` deep, then short parts.

    Python's parser tests every line against the boundary of every enclosing multipart: each line is
    costly to parse and cheap to receive.
    """
    head = (
        b"From: MAILER-DAEMON@mx.example.net\r\nTo: " + BOUNCES.encode() + b"\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        b"Message-ID: <" + uuid.uuid4().hex.encode() + b"@mx.example.net>\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b0"\r\n\r\n'
    )
    nesting = b"".join(
        b'--b%d\r\nContent-Type: multipart/mixed; boundary="b%d"\r\n\r\n' % (level, level + 1)
        for level in range(depth)
    )
    part = b"--b%d\r\n\r\n%s\r\n" % (depth, b"x" * 60)
    parts = part * max(1, (size - len(head) - len(nesting)) // len(part))
    return head + nesting + parts + b"--b%d--\r\n" % depth


def settle(gateway: Gateway, timeout: float = 600.0) -> float:
    """Wait until the gateway answers a submission within a second again (a cut-off flood leaves it
    busy with what it had buffered, and its connections counted); the seconds it took."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        attempt = time.perf_counter()
        with contextlib.suppress(OSError, smtplib.SMTPException):
            submit_once(gateway)
            if time.perf_counter() - attempt < 1.0:
                break
        time.sleep(1.0)
    return time.perf_counter() - started


def in_threads(work: list[Callable[[], str]]) -> list[str]:
    answers: list[str] = []
    threads = [threading.Thread(target=lambda w=w: answers.append(w())) for w in work]  # type: ignore[misc]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def summary(answers: list[str]) -> str:
    counts: dict[str, int] = {}
    for answer in answers:
        key = answer[:9] if answer[:1].isdigit() else answer[:80]
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n}x {key.strip()}" for key, n in sorted(counts.items()))


def guess(gateway: Gateway, source: str, stop: threading.Event, tally: dict[str, int]) -> None:
    """One connection after another from ``source``, one wrong AUTH PLAIN each, until ``stop``."""
    n = 0
    while not stop.is_set():
        n += 1
        try:
            with smtplib.SMTP("127.0.0.1", gateway.submission, timeout=120, source_address=(source, 0)) as c:
                c.ehlo("guess.bench.example")
                c.user, c.password = LOGIN, f"guess-{source}-{n}-{uuid.uuid4().hex[:6]}"
                try:
                    code, _ = c.auth("PLAIN", c.auth_plain)
                except smtplib.SMTPAuthenticationError as exc:
                    code = exc.smtp_code
        except (OSError, smtplib.SMTPException):
            code = 0
        tally[str(code)] = tally.get(str(code), 0) + 1


# --- the run -----------------------------------------------------------------------------------------


def print_row(name: str, cells: list[str], widths: list[int]) -> None:
    print(f"  {name:<44}" + "".join(f"{cell:>{w}}" for cell, w in zip(cells, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes and counts (about 2 minutes)")
    parser.add_argument("--database", help="PostgreSQL URL (default: SQLite in a temporary directory)")
    parser.add_argument("--flood-mib", type=int, help="size of the line-flood DATA (default 24, quick 4)")
    parser.add_argument("--flood-sessions", type=int, help="sessions flooding at once (default 20, quick 5)")
    parser.add_argument("--bounce-mib", type=float, default=2.0, help="size of each bounce-like mail")
    parser.add_argument("--idle", type=int, help="idle MX connections (default 200, quick 50)")
    parser.add_argument("--guess-seconds", type=float, help="how long passwords are guessed (default 60)")
    parser.add_argument("--limits", default="", help='extra [limits] lines, e.g. "parse_timeout = 5.0"')
    parser.add_argument(
        "--rss-cap",
        type=int,
        default=4096,
        help="MiB of RSS growth after which a flood is cut off and reported as such (default 4096)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the working directory (and its log)")
    args = parser.parse_args()
    flood_mib = args.flood_mib or (4 if args.quick else 24)
    sessions = args.flood_sessions or (5 if args.quick else 20)
    idle = args.idle or (50 if args.quick else 200)
    guess_seconds = args.guess_seconds or (10.0 if args.quick else 60.0)
    baseline_seconds = 5.0 if args.quick else 15.0

    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    gateway = start_gateway(workdir, args.database, args.limits.replace("\\n", "\n"))
    limits = configured_limits(gateway.command)
    print(f"gateway: pid {gateway.pid}, {args.database or 'SQLite'}, work directory {workdir}")
    print(
        "limits:  "
        + ", ".join(f"{k} = {v}" for k, v in limits.items() if re.search(r"budget|parse|auth|conn|idle", k))
    )
    try:
        submit_once(gateway)  # the first login's scrypt and the first copy are not part of any figure
        widths = [14, 14, 14, 14]

        # 1. Idle baseline.
        with watched(gateway) as base:
            time.sleep(baseline_seconds)

        # 2. Memory: the line flood, one session, then many at once.
        payload = line_flood(flood_mib * MIB)
        memory: list[tuple[str, float, float, str]] = []
        for count in (1, sessions):
            peak = RssPeak(gateway.pid, args.rss_cap * 1024)
            peak.start()
            answers = in_threads([lambda: data_session(gateway, payload, FLOODER) for _ in range(count)])
            growth, workers = peak.stop()
            if peak.capped:
                answers.append(f"cut off: the gateway grew past --rss-cap {args.rss_cap} MiB")
            memory.append(
                (f"{count} session(s) x {flood_mib} MiB of 3-byte lines", growth, workers, summary(answers))
            )
            settled = settle(gateway)
            if settled > 5.0:
                answers.append(f"the gateway answered a submission within 1 s again after {settled:.0f} s")
            time.sleep(2.0)  # let the allocator settle before the next phase's "before"

        # 3. The bounce-parsing attack.
        bounce = slow_bounce(int(args.bounce_mib * MIB))
        with watched(gateway) as attacked:
            started = time.perf_counter()
            answers = in_threads(
                [
                    lambda source=source: " | ".join(data_session(gateway, bounce, source) for _ in range(3))
                    for source in BOUNCERS
                ]
            )
            attack_seconds = time.perf_counter() - started
        bounce_answers = summary([a for line in answers for a in line.split(" | ")])

        # 4. Idle connections holding the MX listener.
        held: list[socket.socket] = []
        for n in range(idle):
            with contextlib.suppress(OSError):
                s = socket.create_connection(
                    ("127.0.0.1", gateway.mx), timeout=10, source_address=(ADDRESSES[n % len(ADDRESSES)], 0)
                )
                held.append(s)
        time.sleep(1.0)  # every greeting (or refusal) written
        with watched(gateway) as crowded:
            time.sleep(baseline_seconds)
        fresh = data_session(gateway, b"Subject: fresh\r\n\r\nhello\r\n", source=FRESH)
        for s in held:
            s.close()

        # 5. Password guessing.
        events_before = len(gateway.events("auth.failed"))
        stop = threading.Event()
        tally: dict[str, int] = {}
        guessers = [threading.Thread(target=guess, args=(gateway, GUESSER, stop, tally)) for _ in range(20)]
        guessers += [threading.Thread(target=guess, args=(gateway, a, stop, tally)) for a in ADDRESSES]
        with watched(gateway) as guessed:
            for thread in guessers:
                thread.start()
            time.sleep(guess_seconds)
            stop.set()
            for thread in guessers:
                thread.join()
        events = len(gateway.events("auth.failed")) - events_before
    finally:
        gateway.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            gateway.process.wait(timeout=60)
        if gateway.process.poll() is None:
            gateway.process.kill()

    print()
    print("memory (RSS growth of the gateway process: peak during the phase minus RSS before it)")
    print_row("", ["gateway MiB", "x DATA size", "workers MiB", ""], widths)
    for name, growth, workers, answers in memory:
        print_row(name, [f"{growth:.0f}", f"{growth / flood_mib:.2f}", f"{workers:.0f}", ""], widths)
        print(f"    answers: {answers}")
    budget = next((int(v) for k, v in limits.items() if "budget" in k), None)
    if budget is None:
        print(f"  targets: 1 session below {2 * flood_mib} MiB (2x); {sessions} sessions below the budget")
    else:
        budget_mib = budget / 2**20
        print(
            f"  targets: 1 session below {2 * flood_mib} MiB (2x); {sessions} sessions below the MX "
            f"listener's DATA budget of {budget_mib:.0f} MiB ([listeners.mx] max_data_memory); "
            f"the {sessions}-session row is {memory[-1][1] / budget_mib:.2f}x the budget"
        )

    print()
    print("latency in seconds (a back office: connect, AUTH, one message, QUIT; a NOOP on an MX session)")
    print_row("", ["submit max", "submit p95", "NOOP max", "NOOP p95"], widths)
    rows = [
        ("idle (baseline)", base),
        (f"bounce attack (4 x 3 x {args.bounce_mib:g} MiB, {attack_seconds:.0f} s)", attacked),
        (f"{idle} idle MX connections from {len(ADDRESSES)} addresses", crowded),
        (f"password guessing ({len(guessers)} connections)", guessed),
    ]
    for name, watcher in rows:
        cells = [
            watcher.submissions.max(),
            watcher.submissions.p95(),
            watcher.noops.max(),
            watcher.noops.p95(),
        ]
        print_row(name, [f"{c:.3f}" for c in cells], widths)
        if watcher.submissions.failures or watcher.noops.failures:
            print(f"    failed: {summary(watcher.submissions.failures + watcher.noops.failures)}")
    for name, watcher in rows[1:3]:
        ratio = (
            watcher.submissions.max() / base.submissions.max() if base.submissions.values else float("nan")
        )
        print(f"  {name}: submission max {ratio:.1f}x the idle baseline (target: below 1 s)")
    print(f"  bounce mails answered: {bounce_answers}")
    print(f"  an MX client from a fresh address ({FRESH}) during the idle connections: {fresh}")

    print()
    print(f"password guessing for {guess_seconds:.0f} s (20 connections from {GUESSER}, 1 each from 10 more)")
    sent = sum(tally.values())
    checked = tally.get("535", 0)
    print(f"  guesses sent:                      {sent / guess_seconds * 60:10.0f} per minute ({sent})")
    print(f"  guesses that reached the check:    {checked / guess_seconds * 60:10.0f} per minute ({checked})")
    print(f"  answers: {', '.join(f'{n}x {code}' for code, n in sorted(tally.items()))}")
    print(f"  auth.failed events recorded:       {events}")
    if args.keep:
        print(f"\nkept: {workdir} (gateway log: {gateway.log})")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
