"""IMAP fan-out benchmark (issue 5): copies per second into Dovecot through the gateway, against raw
APPENDs and against Postfix delivering through Dovecot LMTP, in one run; and how fast a flag travels.

The same mail (about 1 KB from the back office), the same audiences and the same number of SMTP sessions
and IMAP connections (`--connections`, default 20) for every target. The audiences: `--teams` releases
(default 4) of five members each, every release with share_vorgaenge and read_sync = seen, so a message
addressed to one member reaches all five of its team (DESIGN.md §3). Each target gets its own fresh
private Dovecot (tests/dovecot.py; rootless, Maildir, master user), so every mailbox starts empty:

  * gateway: `gateway serve` with `[mailbox] backend = "imap"` (its pooled aioimaplib connections,
    master-user logins), SQLite in a temporary directory or `--database` (PostgreSQL). The messages are
    submitted over SMTP (AUTH) by `--connections` concurrent aiosmtplib sessions, each to one member.
    End to end: from the first submission until STATUS MESSAGES of the members' INBOXes add up to every
    copy (counted in Dovecot, not taken from the gateway's database);
  * raw APPEND: aioimaplib, `--connections` connections logged in as `<member>*<master user>` like the
    gateway, APPENDing exactly the bytes the gateway appended in the same round (fetched back from its
    Dovecot), the same number of copies into the same members' INBOXes; from the first APPEND until the
    last is answered OK (the logins come before; the count is checked in Dovecot afterwards);
  * Postfix + LMTP: a private Postfix (bench/harness.py; needs root and Debian's postfix) with every
    member's domain a virtual mailbox domain delivered by `lmtp:` to the LMTP listener of a private
    Dovecot (Debian's dovecot-lmtpd). The same messages over `--connections` SMTP sessions, each with
    the five members of its team as RCPT; end to end until every copy is in Dovecot, counted alike.
  * flag latency, through the gateway after its run: a member sets \\Seen on its copy (imaplib, UID
    STORE, as its mail client would), and the time until the four co-members' copies show \\Seen in
    Dovecot (NOOP + UID FETCH FLAGS every 10 ms); `--flag-tries` tries, each after a random pause of up
    to a second so the tries do not fall into step with the gateway's once-a-second flag watcher.
    The readers take turns, and a member's first flag and a later one are reported apart: by default
    the watcher holds IDLE on every member's INBOX ([flagsync] idle_all, 20 mailboxes here against
    idle_mailboxes = 50), so both travel through IDLE; with `--flagsync 'idle_all = false'` a first
    flag is found by the once-a-second poll and only later ones through IDLE (the code before
    idle_all, and a member beyond idle_mailboxes).

It prints copies/s and messages/s end to end, the ratios gateway / raw APPEND and gateway / Postfix+LMTP,
CPU per message (the target's processes and Dovecot's apart), peak memory, the most IMAP connections
the target held at once, and the flag latency's p50/p95. With `--rounds N` the three targets run N times,
interleaved (Postfix first in every second round), and a summary gives each figure's range.

    .venv/bin/python bench/fanout_imap.py
    .venv/bin/python bench/fanout_imap.py --messages 3000 --rounds 3
    .venv/bin/python bench/fanout_imap.py --database postgresql+asyncpg://postgres@127.0.0.1/bench_fanout
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import imaplib
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioimaplib
from harness import (
    REPO,
    PostfixUnavailable,
    Run,
    TreeMemory,
    cpu_seconds,
    drive,
    free_port,
    gateway_config,
    peak_rss,
    postfix_absent,
    prepare_gateway,
    private_postfix,
    start_profiler,
    stop_profiler,
    tail,
    tree_cpu_seconds,
    wait_listening,
)

sys.path.insert(0, str(REPO))  # tests/dovecot.py: the private Dovecot the tests use
from tests.dovecot import Dovecot, DovecotError, dovecot_version

TEAM_SIZE = 5
QUIET = 10.0  # seconds of nothing to do after the flag tries: what the flag watcher costs meanwhile
FANOUT_BATCH = 100  # [fanout] batch_size's default: the copies one fan-out round hands to the mailbox
LMTP_BINARY = Path("/usr/lib/dovecot/lmtp")
LMTP_INSTALL = "apt-get install dovecot-lmtpd"
DOVECOT_INSTALL = "apt-get install dovecot-imapd"


# --- the audiences -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Audiences:
    """`teams` releases of five members; message n is addressed to member n mod (5 * teams)."""

    teams: int

    @property
    def members(self) -> list[str]:
        return [f"m{i}@team{t}.example" for t in range(1, self.teams + 1) for i in range(1, TEAM_SIZE + 1)]

    def addressee(self, number: int) -> str:
        members = self.members
        return members[number % len(members)]

    def team(self, address: str) -> list[str]:
        domain = address.partition("@")[2]
        return [member for member in self.members if member.endswith("@" + domain)]

    def to_one(self, number: int) -> tuple[str, list[str]]:
        """The gateway's envelope: the addressee alone; the release gives the message to the team."""
        to = self.addressee(number)
        return to, [to]

    def to_team(self, number: int) -> tuple[str, list[str]]:
        """Postfix's envelope: the same message, with the whole team as RCPT."""
        to = self.addressee(number)
        return to, self.team(to)

    def directory(self) -> str:
        """The gateway's directory file: one release per team, sharing Vorgänge and \\Seen."""
        releases = "".join(
            f"      - {{name: Team {t}, primary: true, share_vorgaenge: true, read_sync: seen}}\n"
            for t in range(1, self.teams + 1)
        )
        members = "".join(
            f"      - address: {address}\n        name: {address.partition('@')[0].upper()}"
            f"-{address.partition('@')[2].split('.')[0]}\n"
            f"        releases: [Team {address.partition('@')[2].removeprefix('team').split('.')[0]}]\n"
            for address in self.members
        )
        return (
            "version: 1\nportfolios:\n  - name: makler-muster\n    share_vorgaenge_available: true\n"
            "    sender_auth: off\n    backoffices:\n      - name: ams\n        ams_version: 4.8.0.64470\n"
            "        addresses: [ams@makler-muster.example]\n"
            f"    releases:\n{releases}    members:\n{members}"
        )


# --- the private Dovecot -----------------------------------------------------------------------------


def dovecot_absent() -> str | None:
    try:
        version = dovecot_version()
    except DovecotError:
        return f"dovecot is not installed ({DOVECOT_INSTALL})"
    if not version.startswith("2.3."):
        return f"tests/dovecot.py writes Dovecot 2.3 settings; installed is {version}"
    return None


@contextlib.contextmanager
def bench_dovecot(members: list[str], *, lmtp: bool = False) -> Iterator[tuple[Dovecot, int | None]]:
    """A started private Dovecot with `members` as users (and an LMTP listener on loopback, if asked);
    yields it and its LMTP port. Stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="bench-dovecot-"))
    dovecot = None
    try:
        dovecot = Dovecot(root)
        lmtp_port = None
        if lmtp:
            lmtp_port = free_port()
            with open(root / "dovecot.conf", "a", encoding="utf-8") as conf:
                conf.write(
                    "\n# bench/fanout_imap.py: Postfix delivers here (lmtp:inet:127.0.0.1:<port>)\n"
                    "protocols = imap lmtp\n"
                    f"service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n"
                    f"    port = {lmtp_port}\n  }}\n}}\n"
                )
        for member in members:
            dovecot.add_user(member)
        dovecot.start()
        if lmtp_port is not None:
            wait_listening(lmtp_port)
        yield dovecot, lmtp_port
    finally:
        if dovecot is not None:
            dovecot.stop()
        shutil.rmtree(root, ignore_errors=True)


def dovecot_master(dovecot: Dovecot) -> int:
    return int((dovecot.root / "run" / "master.pid").read_text().split()[0])


class InDovecot:
    """Counts what is in the members' INBOXes, over one imaplib session per member (as the member)."""

    def __init__(self, dovecot: Dovecot, members: list[str]) -> None:
        self.clients = {member: dovecot.client(member) for member in members}

    def count(self) -> int:
        total = 0
        for client in self.clients.values():
            status, data = client.status("INBOX", "(MESSAGES)")
            if status != "OK":
                raise SystemExit(f"STATUS INBOX refused: {data!r}")
            total += int(data[0].split(b"MESSAGES ")[1].split(b")")[0])
        return total

    def wait_for(self, expected: int, timeout: float) -> tuple[float, int]:
        """Polls every 20 ms until `expected` messages are there; (perf_counter then, the count)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.count()
            if found >= expected or time.monotonic() > deadline:
                return time.perf_counter(), found
            time.sleep(0.02)

    def messages(self, member: str) -> list[bytes]:
        """Every message in the member's INBOX as it is stored (BODY.PEEK[]), in UID order."""
        client = self.clients[member]
        client.select("INBOX", readonly=True)
        status, data = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
        client.close()
        return [item[1] for item in data if isinstance(item, tuple)] if status == "OK" else []

    def close(self) -> None:
        for client in self.clients.values():
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                client.logout()


class Connections(threading.Thread):
    """The most TCP connections to `port` that process `pid` held at once (sampled every 0.1 s from
    /proc/net/tcp and the process's socket descriptors), or, without `pid`, anybody's."""

    def __init__(self, port: int, pid: int | None = None) -> None:
        super().__init__(daemon=True)
        self.remote = f"0100007F:{port:04X}"
        self.pid = pid
        self.peak = 0
        self.stopped = threading.Event()

    def sockets(self) -> set[str] | None:
        if self.pid is None:
            return None
        inodes = set()
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{self.pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
        return inodes

    def sample(self) -> None:
        mine = self.sockets()
        with open("/proc/net/tcp") as table:
            count = sum(
                1
                for line in table
                if (f := line.split())[2] == self.remote and f[3] == "01" and (mine is None or f[9] in mine)
            )
        self.peak = max(self.peak, count)

    def run(self) -> None:
        while not self.stopped.wait(0.1):
            self.sample()

    def stop(self) -> None:
        self.stopped.set()
        if self.is_alive():
            self.join(timeout=5)


# --- one target's figures ----------------------------------------------------------------------------


@dataclass
class Result:
    kind: str  # gateway, append, multiappend, postfix
    name: str
    messages: int
    copies: int
    elapsed: float = float("nan")  # first submission (or APPEND) until every copy is in Dovecot
    found: int = 0
    submit: Run | None = None
    server_cpu: float = float("nan")  # the target's own processes (gateway / Postfix / APPEND client)
    dovecot_cpu: float = float("nan")
    server_memory_kib: int | None = None
    dovecot_pss_kib: int | None = None
    connections: int | None = None
    errors: int = 0
    flag_latencies: list[tuple[float, bool]] = field(default_factory=list)  # (seconds, reader was warm)
    absent: str | None = None
    duplicates: int = 0  # copies (X-Gateway-Copy-Id) a member holds more than once
    quiet_cpu: tuple[float, float] | None = None  # CPU s/s of the gateway and Dovecot with nothing to do

    @property
    def copy_rate(self) -> float:
        return self.found / self.elapsed if self.elapsed else float("nan")

    @property
    def message_rate(self) -> float:
        return self.copy_rate * self.messages / self.copies if self.copies else float("nan")

    @property
    def complete(self) -> bool:
        return self.absent is None and self.found >= self.copies


def measure_dovecot(dovecot: Dovecot) -> tuple[int, TreeMemory, float]:
    master = dovecot_master(dovecot)
    memory = TreeMemory(master)
    memory.start()
    return master, memory, tree_cpu_seconds(master)


def gateway_target(args: argparse.Namespace, audiences: Audiences, workdir: Path) -> tuple[Result, dict]:
    """The gateway run; also returns the copies it appended, per member (the raw APPENDs replay them)."""
    members = audiences.members
    result = Result(
        "gateway",
        f"gateway ({'PostgreSQL' if args.database else 'SQLite'}) -> IMAP",
        args.messages,
        args.messages * TEAM_SIZE,
    )
    with bench_dovecot(members) as (dovecot, _):
        directory = workdir / "directory.yaml"
        directory.write_text(audiences.directory(), encoding="utf-8")
        imap = dovecot.imap_settings(tls="none")
        port = free_port()
        config = gateway_config(
            workdir,
            port,
            args.database,
            args.log_level,
            fanout_batch=args.fanout_batch,
            extra=f'[mailbox]\nbackend = "imap"\n[mailbox.imap]\nhost = "{imap.host}"\nport = {imap.port}\n'
            f'tls = "none"\nmaster_user = "{imap.master_user}"\n'
            f'master_password_file = "{imap.master_password_file}"\n'
            + (f"[flagsync]\n{args.flagsync.replace(';', chr(10))}\n" if args.flagsync else ""),
        )
        gateway = prepare_gateway(workdir, config, directory)
        log_path = Path(args.log) if args.log else workdir / "gateway.log"
        log = open(log_path, "a")  # noqa: SIM115 - closed below
        process = subprocess.Popen([*gateway, "serve"], stderr=log)
        profiler = None
        counter = InDovecot(dovecot, members)
        connections = Connections(dovecot.port, process.pid)
        try:
            try:
                wait_listening(port)
            except SystemExit as error:
                raise SystemExit(
                    f"`gateway serve` did not start: {error}; its log: {tail(log_path)}"
                ) from None
            if args.profile:
                profiler = start_profiler(process.pid, args.profile)
            master, memory, dovecot_before = measure_dovecot(dovecot)
            connections.start()
            run = Run(result.name)
            before, client_before = cpu_seconds(process.pid), time.process_time()
            asyncio.run(drive(run, port, args.messages, args.connections, args.size, True, audiences.to_one))
            done, result.found = counter.wait_for(result.copies, args.timeout)
            result.elapsed = done - run.started
            result.server_cpu = cpu_seconds(process.pid) - before
            result.dovecot_cpu = tree_cpu_seconds(master) - dovecot_before
            run.client_cpu = time.process_time() - client_before - memory.cpu
            connections.stop()
            memory.stop()
            stop_profiler(profiler)
            profiler = None
            result.submit, result.errors = run, run.errors
            result.server_memory_kib, result.dovecot_pss_kib = peak_rss(process.pid), memory.peak_pss_kib
            result.connections = connections.peak
            if args.flag_tries and result.complete:
                result.flag_latencies = flag_latency(counter, audiences, args)
            # What watching for flags costs when nobody does anything: CPU over a quiet spell.
            quiet_gateway, quiet_dovecot = cpu_seconds(process.pid), tree_cpu_seconds(master)
            time.sleep(QUIET)
            result.quiet_cpu = (
                (cpu_seconds(process.pid) - quiet_gateway) / QUIET,
                (tree_cpu_seconds(master) - quiet_dovecot) / QUIET,
            )
            appended = {member: counter.messages(member) for member in members}
            result.duplicates = duplicates(appended)
        finally:
            stop_profiler(profiler)
            connections.stop()
            counter.close()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
            log.close()
    return result, appended


def duplicates(appended: dict[str, list[bytes]]) -> int:
    """How many messages repeat a copy id their member already holds (exactly once: none)."""
    repeated = 0
    for messages in appended.values():
        ids = [m.split(b"X-Gateway-Copy-Id: ", 1)[1].split(b"\r\n", 1)[0] for m in messages]
        repeated += len(ids) - len(set(ids))
    return repeated


def flag_latency(
    counter: InDovecot, audiences: Audiences, args: argparse.Namespace
) -> list[tuple[float, bool]]:
    """Seconds from a member's UID STORE +FLAGS (\\Seen) until the co-members' copies show \\Seen, and
    whether that member had set a flag before in this measurement ("warm": the gateway's flag watcher
    holds an IDLE session on its mailbox then whatever its settings; without idle_all a member's first
    change is found by polling). The readers take turns, so the first tries are cold, the later warm."""
    rng = random.Random(5)
    clients = counter.clients
    for client in clients.values():
        client.select("INBOX")
    latencies: list[tuple[float, bool]] = []
    readers: set[str] = set()
    for attempt in range(args.flag_tries):
        # Message n is addressed to member n mod 20: the first messages give every member a turn.
        number = attempt
        reader = audiences.addressee(number)
        uids: dict[str, bytes] = {}
        for member in audiences.team(reader):
            status, data = clients[member].uid("SEARCH", "SUBJECT", f'"bench {number:07d}"')
            found = data[0].split() if status == "OK" else []
            if len(found) != 1:
                raise SystemExit(f"flag latency: {member} holds {len(found)} copies of message {number}")
            uids[member] = found[0]
        time.sleep(rng.uniform(0, 1.0))
        started = time.monotonic()
        status, data = clients[reader].uid("STORE", uids[reader].decode(), "+FLAGS", "(\\Seen)")
        warm = reader in readers
        readers.add(reader)
        if status != "OK":
            raise SystemExit(f"flag latency: STORE refused: {data!r}")
        waiting = set(uids) - {reader}
        while waiting and time.monotonic() - started < args.timeout:
            for member in sorted(waiting):
                clients[member].noop()
                status, data = clients[member].uid("FETCH", uids[member].decode(), "(FLAGS)")
                if status == "OK" and any(b"\\Seen" in item for item in data if isinstance(item, bytes)):
                    waiting.discard(member)
            if waiting:
                time.sleep(0.01)
        if waiting:
            print(f"  flag latency: \\Seen did not reach {sorted(waiting)} within {args.timeout:g} s")
            continue
        latencies.append((time.monotonic() - started, warm))
    return latencies


def raw_target(
    args: argparse.Namespace, audiences: Audiences, appended: dict[str, list[bytes]], per_command: int = 1
) -> Result:
    """The gateway's copies APPENDed again with aioimaplib over `--connections` connections, one per
    APPEND or `per_command` in one MULTIAPPEND (as the gateway sends a member's share of a batch)."""
    members = audiences.members
    copies = sum(len(messages) for messages in appended.values())
    name = "raw APPEND (aioimaplib)" if per_command == 1 else f"raw MULTIAPPEND x{per_command}"
    result = Result("append" if per_command == 1 else "multiappend", name, args.messages, copies)
    with bench_dovecot(members) as (dovecot, _):
        master, memory, dovecot_before = measure_dovecot(dovecot)
        client_before = time.process_time()
        result.elapsed, result.errors = asyncio.run(
            append_all(dovecot, appended, args.connections, per_command)
        )
        result.server_cpu = time.process_time() - client_before - memory.cpu
        result.dovecot_cpu = tree_cpu_seconds(master) - dovecot_before
        memory.stop()
        result.dovecot_pss_kib, result.connections = memory.peak_pss_kib, args.connections
        counter = InDovecot(dovecot, members)
        try:
            result.found = counter.count()
        finally:
            counter.close()
    return result


async def append_all(
    dovecot: Dovecot, appended: dict[str, list[bytes]], connections: int, per_command: int = 1
) -> tuple[float, int]:
    """Each connection is one member's master-user login (as the gateway's are) and APPENDs that
    member's copies one after another (aioimaplib: one command in flight per connection). With fewer
    connections than members a connection serves several members in turn (a login each), with more a
    member's copies are shared among several. Returns the seconds from the first APPEND to the last
    answer, and how many APPENDs were refused."""
    members = list(appended)
    work: list[list[tuple[str, list[bytes]]]] = [[] for _ in range(connections)]
    if connections <= len(members):
        for index, member in enumerate(members):
            work[index % connections].append((member, appended[member]))
    else:
        for index in range(connections):
            member = members[index % len(members)]
            sharing = [i for i in range(connections) if i % len(members) == index % len(members)]
            work[index].append((member, appended[member][sharing.index(index) :: len(sharing)]))
    errors = 0
    ready = asyncio.Event()

    async def login(member: str) -> aioimaplib.IMAP4:
        client = aioimaplib.IMAP4(dovecot.host, dovecot.port, timeout=60)
        await client.wait_hello_from_server()
        response = await client.login(f"{member}*{dovecot.master_user}", dovecot.master_password)
        if response.result != "OK":
            raise SystemExit(f"raw APPEND: login as {member}*{dovecot.master_user} refused: {response.lines}")
        return client

    async def connection(assignments: list[tuple[str, list[bytes]]], first: aioimaplib.IMAP4) -> None:
        nonlocal errors
        await ready.wait()
        client: aioimaplib.IMAP4 | None = first
        for member, messages in assignments:
            client = client or await login(member)
            for start in range(0, len(messages), per_command):
                group = messages[start : start + per_command]
                response = await (multiappend(client, group) if len(group) > 1 else client.append(group[0]))
                if response.result != "OK":
                    errors += len(group)
            await client.logout()
            client = None

    active = [assignments for assignments in work if assignments]
    clients = await asyncio.gather(*(login(assignments[0][0]) for assignments in active))
    tasks = [asyncio.ensure_future(connection(a, c)) for a, c in zip(active, clients, strict=True)]
    started = time.perf_counter()
    ready.set()
    await asyncio.gather(*tasks)
    return time.perf_counter() - started, errors


def multiappend(client: aioimaplib.IMAP4, messages: list[bytes]) -> Any:
    """One APPEND of several messages (RFC 3502), every literal LITERAL+ and all in one write (one round
    trip): what the gateway sends for a member's share of a batch (gateway/mailbox/imap_connection.py)."""
    protocol = client.protocol
    data = messages[0] + b"".join(b" {%d+}\r\n" % len(m) + m for m in messages[1:])
    command = aioimaplib.Command("APPEND", protocol.new_tag(), "INBOX", f"{{{len(messages[0])}+}}")

    def send(line: str, scrub: str | None = None) -> None:
        del protocol.send
        protocol.transport.write(f"{line}\r\n".encode() + data + b"\r\n")

    protocol.literal_data = None
    protocol.send = send
    return protocol.execute(command)


POSTFIX_LMTP_MAIN_CF = """\
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
relayhost =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
virtual_mailbox_domains = {domains}
virtual_mailbox_maps = inline:{{ {mailboxes} }}
virtual_transport = lmtp:inet:127.0.0.1:{lmtp_port}
lmtp_host_lookup = native
lmtp_tls_security_level = none
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_tls_security_level = none
notify_classes =
biff = no
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
"""


def postfix_target(args: argparse.Namespace, audiences: Audiences) -> Result:
    """Postfix's queue, then Dovecot's LMTP: the same messages, five RCPT each, into a fresh Dovecot."""
    members = audiences.members
    result = Result("postfix", "postfix -> dovecot LMTP", args.messages, args.messages * TEAM_SIZE)
    absent = postfix_absent()
    if not LMTP_BINARY.exists():
        lmtp = f"dovecot's LMTP server is not installed ({LMTP_INSTALL})"
        absent = lmtp if absent is None else f"{absent}; and {lmtp}"
    if absent is not None:
        result.absent = absent
        return result
    port = free_port()
    with bench_dovecot(members, lmtp=True) as (dovecot, lmtp_port):
        domains = " ".join(sorted({member.partition("@")[2] for member in members}))

        def main_cf(root: Path) -> str:
            return POSTFIX_LMTP_MAIN_CF.format(
                root=root,
                domains=domains,
                mailboxes=", ".join(f"{member}=ok" for member in members),
                lmtp_port=lmtp_port,
            )

        with private_postfix(port, main_cf) as postfix:
            result.name = f"postfix {postfix.version} -> dovecot LMTP"
            master, dovecot_memory, dovecot_before = measure_dovecot(dovecot)
            memory = TreeMemory(postfix.master)
            memory.start()
            assert lmtp_port is not None
            connections = Connections(lmtp_port)
            connections.start()
            counter = InDovecot(dovecot, members)
            try:
                run = Run(result.name)
                before, client_before = tree_cpu_seconds(postfix.master), time.process_time()
                asyncio.run(
                    drive(run, port, args.messages, args.connections, args.size, False, audiences.to_team)
                )
                done, result.found = counter.wait_for(result.copies, args.timeout)
                result.elapsed = done - run.started
                result.server_cpu = tree_cpu_seconds(postfix.master) - before
                result.dovecot_cpu = tree_cpu_seconds(master) - dovecot_before
                run.client_cpu = time.process_time() - client_before - memory.cpu - dovecot_memory.cpu
                result.submit, result.errors = run, run.errors
            finally:
                memory.stop()
                dovecot_memory.stop()
                connections.stop()
                counter.close()
            result.connections = connections.peak
            result.server_memory_kib = memory.peak_pss_kib
            result.dovecot_pss_kib = dovecot_memory.peak_pss_kib
    return result


# --- the report --------------------------------------------------------------------------------------


def mib(kib: int | None) -> str:
    return f"{kib / 1024:.0f}" if kib else "-"


def ratio(a: Result | None, b: Result | None) -> float | None:
    if a is None or b is None or not (a.complete and b.complete):
        return None
    return a.copy_rate / b.copy_rate


FLAG_CLASSES = (
    ("all tries", lambda warm: True),
    ("a member's first flag", lambda warm: not warm),
    ("a member who set one before", lambda warm: warm),
)


def flag_figures(flags: list[tuple[float, bool]]) -> list[tuple[str, list[float]]]:
    """The flag latencies in each class (FLAG_CLASSES) that has any."""
    classes = [(name, [s for s, warm in flags if which(warm)]) for name, which in FLAG_CLASSES]
    return [(name, values) for name, values in classes if values]


def report(results: list[Result], flags: list[tuple[float, bool]]) -> None:
    print(
        f"{'target':<32} {'copies':>6} {'in Dovecot':>10} {'e2e s':>6} {'copies/s':>8} {'msg/s':>6} "
        f"{'accept msg/s':>12} {'accept p95 ms':>13} {'errors':>6} {'CPU ms/msg':>10} "
        f"{'dovecot CPU':>11} {'peak MiB':>8} {'dovecot PSS':>11} {'conns':>5}"
    )
    for r in results:
        if r.absent is not None:
            print(f"{r.name:<32} absent: {r.absent}")
            continue
        accepted = f"{r.submit.rate:>12.0f} {r.submit.pct(95):>13.1f}" if r.submit else f"{'-':>12} {'-':>13}"
        print(
            f"{r.name:<32} {r.copies:>6} {r.found:>10} {r.elapsed:>6.2f} {r.copy_rate:>8.0f} "
            f"{r.message_rate:>6.0f} {accepted} {r.errors:>6} "
            f"{r.server_cpu * 1000 / r.messages:>10.2f} {r.dovecot_cpu * 1000 / r.messages:>11.2f} "
            f"{mib(r.server_memory_kib):>8} {mib(r.dovecot_pss_kib):>11} {r.connections or '-':>5}"
        )
    print(
        "  (CPU ms/msg: the gateway's process, the APPEND client, Postfix's master and daemons; dovecot "
        "CPU: all of Dovecot's processes, per message; peak MiB: the gateway's RSS, Postfix's summed PSS; "
        "conns: the most IMAP connections the gateway held at once, the APPEND client's, Postfix's LMTP "
        "connections)"
    )
    for label, value in ratios(results):
        print(f"{label} (copies/s): {f'{value:.0%}' if value is not None else 'n/a'}")
    for r in results:
        if r.duplicates:
            print(f"NOT EXACTLY ONCE: {r.name} put {r.duplicates} copies into a mailbox twice")
    for r in results:
        if r.quiet_cpu is not None:
            print(
                f"quiet ({QUIET:g} s, nothing to do): {r.name} CPU {r.quiet_cpu[0] * 1000:.0f} ms/s, "
                f"its Dovecot {r.quiet_cpu[1] * 1000:.0f} ms/s (the flag watcher's polls and IDLE sessions)"
            )
    for name, values in flag_figures(flags):
        print(
            f"flag latency, \\Seen to the 4 co-members, {name}, {len(values)} tries: p50 "
            f"{percentile(values, 50):.3f} s, p95 {percentile(values, 95):.3f} s, max {max(values):.3f} s"
        )


RATIOS = (
    ("gateway / raw APPEND", "append"),
    ("gateway / raw MULTIAPPEND", "multiappend"),
    ("gateway / Postfix+LMTP", "postfix"),
)


def ratios(results: list[Result]) -> list[tuple[str, float | None]]:
    """The gateway's copies/s over each baseline's that ran in the same round."""
    kinds = {r.kind: r for r in results}
    return [(label, ratio(kinds.get("gateway"), kinds.get(kind))) for label, kind in RATIOS if kind in kinds]


def percentile(values: list[float], p: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def summary(rounds: list[list[Result]]) -> None:
    def span(values: list[float], fmt: str) -> str:
        values = [v for v in values if v == v]  # without NaN
        if not values:
            return "n/a"
        low, high = min(values), max(values)
        return format(low, fmt) if low == high else f"{format(low, fmt)}-{format(high, fmt)}"

    print(f"\nover {len(rounds)} rounds (ranges):")
    for kind in ("gateway", "append", "multiappend", "postfix"):
        rows = [r for results in rounds for r in results if r.kind == kind and r.complete]
        if rows:
            print(
                f"  {rows[0].name:<32} copies/s {span([r.copy_rate for r in rows], '.0f')}, "
                f"msg/s {span([r.message_rate for r in rows], '.0f')}, "
                f"CPU ms/msg {span([r.server_cpu * 1000 / r.messages for r in rows], '.2f')}, "
                f"dovecot CPU ms/msg {span([r.dovecot_cpu * 1000 / r.messages for r in rows], '.2f')}"
            )
    for label, _ in RATIOS:
        known = [
            v * 100 for results in rounds for name, v in ratios(results) if name == label and v is not None
        ]
        if known:
            print(f"  {label}: {span(known, '.0f')}%")
    figures = [flag_figures(r.flag_latencies) for results in rounds for r in results if r.flag_latencies]
    for name, _ in FLAG_CLASSES:
        runs = [values for each in figures for n, values in each if n == name]
        if runs:
            print(
                f"  flag latency, {name}: p50 {span([percentile(v, 50) for v in runs], '.3f')} s, "
                f"p95 {span([percentile(v, 95) for v in runs], '.3f')} s"
            )


def code_state() -> str:
    """The commit measured, and whether gateway/ had uncommitted changes (others' work in the tree)."""

    def git(*arguments: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *arguments], capture_output=True, text=True)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "gateway")
    return f"{head}{' + uncommitted changes in gateway/' if dirty else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1000, help="messages per target (default 1000)")
    parser.add_argument(
        "--connections", type=int, default=20, help="SMTP sessions and raw IMAP connections (default 20)"
    )
    parser.add_argument("--teams", type=int, default=4, help="releases of five members each (default 4)")
    parser.add_argument("--size", type=int, default=1024, help="approximate message size in bytes")
    parser.add_argument("--rounds", type=int, default=1, help="run every target this many times, interleaved")
    parser.add_argument("--flag-tries", type=int, default=50, help="flag latency tries per round (0: none)")
    parser.add_argument("--database", help="PostgreSQL URL (default: SQLite in a temporary directory)")
    parser.add_argument(
        "--multiappend",
        type=int,
        help="copies per MULTIAPPEND in the second raw row (default: the 100 copies of a fan-out batch "
        "shared among the members, as the gateway sends them; 0 or 1: no such row)",
    )
    parser.add_argument(
        "--fanout-batch", type=int, help=f"the gateway's [fanout] batch_size (default {FANOUT_BATCH})"
    )
    parser.add_argument(
        "--flagsync",
        help="the gateway's [flagsync] settings, ';' between two, to measure another way of noticing "
        "flags: 'idle_all = false' (IDLE only after a poll found a member's change), 'idle = false; "
        "poll_interval = 0.25' (a faster poll alone)",
    )
    parser.add_argument("--no-postfix", action="store_true", help="leave out Postfix + LMTP")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for every copy")
    parser.add_argument("--log", help="append the gateway's log to this file")
    parser.add_argument("--log-level", default="WARNING", help="the gateway's log level (default WARNING)")
    parser.add_argument("--profile", help="record the gateway with py-spy into this file (collapsed stacks)")
    args = parser.parse_args()
    if args.messages < 1 or args.connections < 1 or args.teams < 1 or args.rounds < 1:
        parser.error("--messages, --connections, --teams and --rounds must be at least 1")
    args.flag_tries = min(args.flag_tries, args.messages)
    absent = dovecot_absent()
    if absent is not None:
        raise SystemExit(f"fanout_imap: every target delivers into a private Dovecot, but {absent}")
    audiences = Audiences(args.teams)
    if args.multiappend is None:
        args.multiappend = max(2, (args.fanout_batch or FANOUT_BATCH) // len(audiences.members))
    python = Path(sys.executable)
    shown = python.relative_to(REPO) if python.is_relative_to(REPO) else python
    print("$", shlex.join([str(shown), *sys.argv]))
    print(
        f"{args.messages} messages of ~{args.size} bytes, each to one of {len(audiences.members)} members "
        f"and through its release to {TEAM_SIZE} ({args.messages * TEAM_SIZE} copies); "
        f"{args.connections} SMTP sessions / IMAP connections; {os.cpu_count()} CPU(s), load "
        f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}; gateway at {code_state()}; {dovecot_version()}"
    )
    rounds: list[list[Result]] = []
    for number in range(args.rounds):
        if args.rounds > 1:
            print(f"\nround {number + 1} of {args.rounds}")
        results: list[Result] = []
        postfix_first = number % 2 == 1 and not args.no_postfix
        try:
            if postfix_first:
                results.append(postfix_target(args, audiences))
            with tempfile.TemporaryDirectory(prefix="bench-fanout-") as workdir:
                gateway, appended = gateway_target(args, audiences, Path(workdir))
            results.insert(0, gateway)
            results.insert(1, raw_target(args, audiences, appended))
            if args.multiappend > 1:
                results.insert(2, raw_target(args, audiences, appended, args.multiappend))
            if not args.no_postfix and not postfix_first:
                results.append(postfix_target(args, audiences))
        except (PostfixUnavailable, DovecotError) as error:
            raise SystemExit(f"fanout_imap: {error}") from None
        report(results, gateway.flag_latencies)
        rounds.append(results)
    if args.rounds > 1:
        summary(rounds)


if __name__ == "__main__":
    main()
