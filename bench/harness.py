"""What the benchmarks share: the SMTP client that drives a run, a prepared `gateway serve`, a private
Postfix instance, and the process measurements (CPU, peak memory) taken from /proc.

Imported by the scripts next to it (`bench/ingest.py`, `bench/fanout_imap.py`), which run as
`.venv/bin/python bench/<script>.py` and so find this module on their own path.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOGIN, PASSWORD = "ams@makler-muster.example", "bench-password-123"
POSTFIX = Path("/usr/sbin/postfix")
POSTFIX_INSTALL = "apt-get install postfix"


@dataclass
class Run:
    """One target's figures: per-message submission latencies, when each was accepted, and the rest."""

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
    database_cpu: float | None = None  # PostgreSQL's backends for this run (None: not measured)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def per_message(self, seconds: float) -> float:
        """``seconds`` of CPU as milliseconds per message accepted."""
        return seconds * 1000 / max(len(self.latencies), 1)

    def pct(self, p: float) -> float:
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(p / 100 * len(data)))] * 1000 if data else float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def body(number: int, size: int, to: str) -> bytes:
    """Message `number` from the back office to `to`, about `size` bytes; its subject is "bench <number>"."""
    head = (
        f"From: AMS <{LOGIN}>\r\nTo: {to}\r\nSubject: bench {number:07d}\r\n"
        f"Message-ID: <bench-{number}-{time.time_ns()}@ams.example>\r\n\r\n"
    ).encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


Envelope = Callable[[int], tuple[str, list[str]]]
"""Message number -> (its To header, its envelope recipients)."""


async def drive(
    run: Run,
    port: int | Sequence[int],
    messages: int,
    concurrency: int,
    size: int,
    login: bool,
    envelope: Envelope,
) -> None:
    """Submit `messages` over `concurrency` aiosmtplib sessions (each sends one message after another).

    With several ports (one per gateway node) the sessions are split over them in turn."""
    numbers = iter(range(messages))
    ports = [port] if isinstance(port, int) else list(port)

    async def session(port: int) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60, start_tls=False)
        await client.connect()
        if login:
            await client.login(LOGIN, PASSWORD)
        for number in numbers:
            to, recipients = envelope(number)
            started = time.perf_counter()
            try:
                await client.sendmail(LOGIN, recipients, body(number, size, to))
            except aiosmtplib.SMTPException:
                run.errors += 1
                continue
            done = time.perf_counter()
            run.latencies.append(done - started)
            run.sent_at[number] = time.time()
        await client.quit()

    run.started = time.perf_counter()
    await asyncio.gather(*(session(ports[k % len(ports)]) for k in range(concurrency)))
    run.elapsed = time.perf_counter() - run.started


def wait_listening(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


# --- measuring processes from /proc -------------------------------------------------------------------


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
    """CPU of a master process (Postfix's, Dovecot's), its live children and those it has reaped."""
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


def start_profiler(pid: int, output: str) -> subprocess.Popen[bytes]:
    """py-spy samples a running process from outside: collapsed stacks for a flame graph."""
    if shutil.which("py-spy") is None and not (BIN / "py-spy").exists():
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    spy = shutil.which("py-spy") or str(BIN / "py-spy")
    command = [spy, "record", "--gil", "--format", "raw", "--rate", "200", "-o", output, "-p", str(pid)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(timeout=60)


# --- a prepared gateway ------------------------------------------------------------------------------


def gateway_config(
    workdir: Path,
    port: int,
    database: str | None,
    log_level: str,
    *,
    fanout: bool = True,
    fanout_batch: int | None = None,
    extra: str = "",
) -> str:
    """A gateway.toml for the benchmarks: submission on `port`, no MX, no per-client rate limit; the
    fan-out's batch size is the default unless `fanout_batch` says otherwise."""
    url = database or f"sqlite+aiosqlite:///{workdir / 'gateway.db'}"
    return (
        f'[gateway]\ndata_dir = "data"\n[database]\nurl = "{url}"\n'
        f"[listeners.submission]\nport = {port}\n[listeners.mx]\nenabled = false\n"
        # No web console: the benchmarks measure mail, and a fixed port would clash between runs.
        "[listeners.admin_http]\nenabled = false\n"
        # The benchmark measures throughput from one client address, not the per-client limiter.
        "[limits]\nmax_messages_per_minute_per_client = 10000000\n"
        # wait_listening's probe connection may still count when the sessions connect (a loaded
        # machine): the twentieth session was refused 421 4.7.0 at the default of 20 per client.
        "max_connections_per_client = 1000\n"
        # Logins under way count against the failed-login limits (gateway.domain.logins): twenty
        # sessions logging in at once from one address would otherwise be refused past the tenth.
        "auth_max_failures_per_address = 1000\nauth_max_failures_per_login = 1000\n"
        f'[logging]\nlevel = "{log_level}"\n'
        f"[fanout]\nenabled = {'true' if fanout else 'false'}\n"
        f"{f'batch_size = {fanout_batch}' if fanout_batch else ''}\n{extra}"
    )


def prepare_gateway(workdir: Path, config: str, directory: Path) -> list[str]:
    """Writes the configuration, migrates the database, makes the reply-token key, loads `directory` and
    sets the back office's password; returns the `gateway --config <file>` command line."""
    path = workdir / "gateway.toml"
    path.write_text(config, encoding="utf-8")
    gateway = [str(BIN / "gateway"), "--config", str(path)]

    def run(*arguments: str, stdin: str | None = None) -> None:
        done = subprocess.run([*gateway, *arguments], input=stdin, text=True, capture_output=True)
        if done.returncode != 0:
            raise SystemExit(f"`gateway {' '.join(arguments)}` failed: {done.stderr.strip()}")

    run("db", "upgrade")
    run("secrets", "init")
    run("directory", "load", str(directory))
    run("backoffice", "password", "ams", "-p", "makler-muster", "--password-file", "-", stdin=PASSWORD)
    return gateway


# --- a private Postfix --------------------------------------------------------------------------------

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


class PostfixUnavailable(Exception):
    """No private Postfix instance can run here; the message says why and what to install or do."""


def postfix_absent() -> str | None:
    """Why no private Postfix can run here (with what to do about it), or None when one can."""
    if not POSTFIX.exists():
        return f"not installed ({POSTFIX_INSTALL}; the system service need not run)"
    if os.geteuid() != 0:
        return "a private instance needs root (`postfix start` runs its master as root): run as root"
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError as error:
        return f"{error} is missing (Debian's package creates the user and group: {POSTFIX_INSTALL})"
    return None


@dataclass(frozen=True)
class PostfixInstance:
    root: Path
    conf: Path
    master: int
    version: str


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


@contextlib.contextmanager
def private_postfix(port: int, main_cf: Callable[[Path], str]) -> Iterator[PostfixInstance]:
    """A private Postfix in a temporary directory (its own main.cf and master.cf as config directory, its
    own queue and data directories), smtpd on 127.0.0.1:`port`; `main_cf(root)` is its main.cf, which
    must set config_directory, queue_directory and data_directory under `root`. Stopped in any case."""
    absent = postfix_absent()
    if absent is not None:
        raise PostfixUnavailable(absent)
    owner = pwd.getpwnam("postfix")
    # Not under a bench's workdir (mode 0700): Postfix's daemons run as `postfix` and must reach the queue.
    root = Path(tempfile.mkdtemp(prefix="bench-postfix-"))
    root.chmod(0o755)
    conf, queue, data = root / "conf", root / "queue", root / "data"
    for directory, mode in ((conf, 0o755), (queue, 0o755), (data, 0o700)):
        directory.mkdir(mode=mode)
    os.chown(data, owner.pw_uid, owner.pw_gid)
    (conf / "main.cf").write_text(main_cf(root), encoding="utf-8")
    (conf / "master.cf").write_text(POSTFIX_MASTER_CF.format(port=port), encoding="utf-8")
    postfix = [str(POSTFIX), "-c", str(conf)]
    try:
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
        yield PostfixInstance(root, conf, master, version or "?")
    finally:
        if (queue / "pid" / "master.pid").exists():  # also after a failed start that left a master behind
            code, output = on_terminal([*postfix, "stop"], timeout=60)
            if code != 0 and "not running" not in output:
                print(f"postfix: `postfix -c {conf} stop` exited {code}: {output}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)


# --- PostgreSQL: a fresh database per run, and the CPU of its backends ---------------------------------


def postgres_dsn(url: str, database: str | None = None) -> str:
    """A libpq connection string for a SQLAlchemy URL (any driver), optionally naming another database."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def fresh_postgres(url: str) -> None:
    """Drop and create the database `url` names (through the server's `postgres` database)."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    if not name:
        raise SystemExit(f"{url}: the URL names no database")
    with psycopg.connect(postgres_dsn(url, "postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')


class PostgresCpu:
    """CPU time of the PostgreSQL backends serving one database, read from /proc (the server runs on this
    machine). `start()` notes the backends connected now, `stop()` returns the CPU they (and backends
    that connected in between, counted from zero) used since. The server's shared processes (WAL writer,
    checkpointer) are left out: other databases on the same server use them too."""

    def __init__(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        self.dsn = postgres_dsn(url, "postgres")
        self.database = make_url(url).database
        self.before: dict[int, float] = {}
        self.backends = 0

    def _backends(self) -> dict[int, float]:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as admin:
            pids = [
                int(pid)
                for (pid,) in admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'",
                    (self.database,),
                )
            ]
        seconds = {}
        for pid in pids:
            with contextlib.suppress(OSError):
                seconds[pid] = cpu_seconds(pid)
        return seconds

    def start(self) -> None:
        self.before = self._backends()

    def stop(self) -> float:
        after = self._backends()
        self.backends = len(after)
        return sum(seconds - self.before.get(pid, 0.0) for pid, seconds in after.items())
