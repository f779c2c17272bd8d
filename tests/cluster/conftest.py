"""Two real ``gateway serve`` nodes on one PostgreSQL database: the harness of the cluster tests (issue 17).

A ``Cluster`` is what docs/scaling.md tells an operator to run when one machine is not enough: two
processes, "n1" and "n2", each with a configuration, loopback ports and data directory of its own, that
share one freshly migrated PostgreSQL database holding the seed's directory, one Maildir root (or one
private Dovecot), and one set of reply-token key files. Leases are short (``LEASE`` seconds for copies,
relays and reconcile runs) so that a node that died or stalls is taken over within a test's patience;
tests in which no node fails use ``LONG_LEASE`` (their module overrides ``cluster_lease``), because on a
loaded machine a node may take longer than ``LEASE`` to write what it was handed, and then the other
node takes the work over (fencing keeps it to one write, but the test would measure take-overs).
The back office's relay points at a local aiosmtpd sink that keeps every mail it is given.

Nothing here waits a fixed time: ``Cluster.quiet()`` waits until the database says every queue is empty
(no copy pending or being revoked, no flag to catch up, no relay pending, no reconcile run open); what the
tests then count, files per copy id in every member's mailbox and sink mail per Message-ID, does not
change by itself any more.

Each node's PostgreSQL sessions carry its name as ``application_name`` (``PGAPPNAME``, which libpq and
so the gateway's psycopg writer read), so a test sees in ``pg_stat_activity`` and ``pg_locks`` what a
node holds at the moment it is frozen with SIGSTOP.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import Engine, create_engine, text

from gateway.db.writer import sync_url
from tests.conftest import a_database
from tests.dovecot import Dovecot
from tests.e2e.conftest import (
    LOGIN,
    PASSWORD,
    PORTFOLIO,
    BackOfficeSink,
    RunningGateway,
    configure,
    prepare,
)
from tests.seed import ADDRESS, SEEN_BY

LEASE = 3.0
"""``[fanout] lease``, ``[relay] lease`` and ``[reconcile] lease`` of every node, in seconds, by default."""

LONG_LEASE = 60.0
"""The leases where no node fails or stalls: the default ``[fanout] lease``."""

TAKEOVER_LEASE = 10.0
"""The leases where a node dies or freezes but the test is not about a node slower than its lease: long
enough that a node on a loaded test machine writes what it was handed in time, short enough for the
other node to take over within the test."""

NODES = ("n1", "n2")
PEOPLE = sorted(SEEN_BY)
HOST = "127.0.0.1"


# --- the back office's mail -----------------------------------------------------------------------------


def message_id(tag: str, number: int) -> str:
    return f"<{tag}-{number}@ams.example>"


def recipient(number: int) -> str:
    """The seed's person a burst message is addressed to: the six in turn."""
    return PEOPLE[number % len(PEOPLE)]


def audience(number: int) -> frozenset[str]:
    """Who must hold a copy of burst message ``number`` under the seed's directory (DESIGN.md §3)."""
    return frozenset(ADDRESS[p] for p in SEEN_BY[recipient(number)])


def burst_message(tag: str, number: int) -> bytes:
    return (
        f"From: ams@makler-muster.example\r\nTo: {ADDRESS[recipient(number)]}\r\n"
        f"Subject: {tag} {number:04d}\r\nMessage-ID: {message_id(tag, number)}\r\n\r\n"
        f"Nachricht {number}\r\n"
    ).encode()


@dataclass(frozen=True)
class Answer:
    """What one attempt to hand in a message got: the SMTP code (None: no answer within the client's
    timeout, or the connection broke), from which node, when it started and how long it took."""

    node: str
    number: int
    code: int | None
    text: str
    started: float
    took: float


class Sender(threading.Thread):
    """A back office's SMTP client handing in its share of a burst, ``per_session`` messages a session.

    Each session goes to the next of ``nodes`` in turn. Without an answer (a dead or frozen node) the
    client goes on with the same message at the next node when ``failover`` (a client with two MX hosts),
    else at the same node; a 4xx is tried again at the same node, a 5xx is given up. Every attempt is
    kept in ``answers``. ``stop`` ends an open-ended burst (``numbers`` may be infinite).
    """

    def __init__(
        self,
        tag: str,
        nodes: Sequence[Node],
        numbers: Iterable[int],
        *,
        per_session: int = 5,
        timeout: float = 10.0,
        failover: bool = True,
        stop: threading.Event | None = None,
        patience: float = 90.0,
    ) -> None:
        super().__init__(daemon=True)
        self.tag = tag
        self.nodes = list(nodes)
        self.numbers = numbers
        self.per_session = per_session
        self.timeout = timeout
        self.failover = failover
        self.stop = stop or threading.Event()
        self.patience = patience
        self.answers: list[Answer] = []
        self._turn = 0

    @property
    def accepted(self) -> set[int]:
        return {a.number for a in self.answers if a.code == 250}

    def run(self) -> None:
        client: smtplib.SMTP | None = None
        in_session = 0
        deadline = time.monotonic() + self.patience
        for number in self.numbers:
            if self.stop.is_set():
                break
            while time.monotonic() < deadline:
                node = self.nodes[self._turn % len(self.nodes)]
                started = time.monotonic()
                try:
                    if client is None:
                        client = smtplib.SMTP(HOST, node.port, timeout=self.timeout)
                        client.login(LOGIN, PASSWORD)
                        in_session = 0
                    client.sendmail(LOGIN, [ADDRESS[recipient(number)]], burst_message(self.tag, number))
                except smtplib.SMTPResponseException as exc:
                    self._note(node, number, exc.smtp_code, exc.smtp_error, started)
                    if exc.smtp_code >= 500:
                        break
                    time.sleep(0.1)  # the client's own retry pause after a 4xx
                    continue
                except (OSError, smtplib.SMTPException) as exc:
                    # No answer: the message may or may not have been stored; it is sent again.
                    self._note(node, number, None, repr(exc), started)
                    client = _drop(client)
                    if self.failover:
                        self._turn += 1
                    continue
                self._note(node, number, 250, b"", started)
                in_session += 1
                if in_session >= self.per_session:
                    client = _end(client)
                    self._turn += 1
                break
        if client is not None:
            _end(client)

    def _note(self, node: Node, number: int, code: int | None, text: bytes | str, started: float) -> None:
        said = text.decode(errors="replace") if isinstance(text, bytes) else text
        self.answers.append(Answer(node.name, number, code, said, started, time.monotonic() - started))


def _drop(client: smtplib.SMTP | None) -> None:
    if client is not None:
        client.close()


def _end(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):
        client.close()


CLIENTS = 4


def senders(cluster: Cluster, tag: str, count: int, *, per_session: int = 5) -> list[Sender]:
    """CLIENTS clients sharing ``count`` messages; client i starts at node i % 2 and alternates."""
    nodes = [cluster.n1, cluster.n2]
    return [
        Sender(tag, nodes[i % 2 :] + nodes[: i % 2], range(i, count, CLIENTS), per_session=per_session)
        for i in range(CLIENTS)
    ]


def all_answers(senders: Iterable[Sender]) -> list[Answer]:
    return [a for s in senders for a in s.answers]


def accepted(senders: Iterable[Sender]) -> set[int]:
    return set().union(*(s.accepted for s in senders))


# --- the nodes ------------------------------------------------------------------------------------------


@dataclass
class Node(RunningGateway):
    """One ``gateway serve`` of the cluster; its PostgreSQL sessions are named after it."""

    name: str = ""
    frozen: bool = field(default=False)

    def start(self, timeout: float = 120) -> None:
        super().start(timeout)

    def launch(self, env: Mapping[str, str] | None = None) -> None:
        # Its PostgreSQL sessions carry its name, so a test can see in pg_locks what the node holds.
        super().launch({"PGAPPNAME": self.name} | dict(env or {}))

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def freeze(self) -> None:
        """SIGSTOP: the process stays, with its connections and whatever its transactions hold."""
        os.kill(self.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.frozen = False

    def kill(self) -> None:
        """kill -9 (a frozen process too), and wait until it is gone (its sockets closed by the kernel)."""
        os.kill(self.pid, signal.SIGKILL)
        self.frozen = False
        assert self.process is not None
        self.process.wait(timeout=30)
        if self._reader is not None:
            self._reader.join(timeout=10)
        if self.process.stderr is not None:
            self.process.stderr.close()

    def logged(self, pattern: str) -> bool:
        return any(re.search(pattern, line) for line in self.log)


# --- the cluster ----------------------------------------------------------------------------------------

# Work the database still has queued: once this is 0, every decided copy, removal, flag and relay is done.
_QUEUED = text(
    """
    SELECT (SELECT count(*) FROM copies WHERE state IN ('pending', 'revoking') OR flags_pending)
         + (SELECT count(*) FROM relays WHERE state = 'pending')
         + (SELECT count(*) FROM reconcile_runs WHERE state = 'open')
    """
)

# The node is inside a transaction that accepts mail: it took the Vorgang counter or inserts messages.
# (to_regclass: a table a later schema drops is no error, it just matches nothing.)
_IN_ACCEPTANCE = text(
    """
    SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE a.application_name = :node AND a.datname = current_database() AND l.granted
      AND l.mode = 'RowExclusiveLock'
      AND l.relation IN (to_regclass('vorgang_counters'), to_regclass('messages'))
    """
)


@dataclass(frozen=True)
class StoredCopy:
    """A copy as the database has it, with the message's Message-ID, gateway id and subject."""

    copy_id: str
    address: str
    state: str
    message_id: str | None
    gateway_id: str
    subject: str | None


class Cluster:
    """Two nodes, their shared database and mailboxes, the back office's sink; see the module docstring."""

    def __init__(
        self, base: Path, database_url: str, sink: GatedSink, dovecot: Dovecot | None, lease: float
    ) -> None:
        self.base = base
        self.lease = lease
        self.database_url = database_url
        self.sink = sink
        self.dovecot = dovecot
        # The admin's configuration: what the CLI uses; it made the token key and holds the Maildir root.
        # One parse worker per listener: two nodes on a shared test machine need no more.
        self.admin = prepare(base, database_url, dovecot=dovecot, parse_workers=1)
        configure(self.admin, sink, base)
        self.cli = self.admin.cli
        self.shared = base / "data"
        self.maildir_root = self.shared / "mail"
        self.nodes = {name: self._node(name) for name in NODES}
        self.engine: Engine = create_engine(sync_url(database_url))

    @property
    def n1(self) -> Node:
        return self.nodes["n1"]

    @property
    def n2(self) -> Node:
        return self.nodes["n2"]

    def _node(self, name: str) -> Node:
        """A node's own configuration: the admin's, with its name, short leases, and the shared paths."""
        folder = self.base / name
        folder.mkdir()
        config = self.admin.config.read_text(encoding="utf-8")
        config = config.replace("[gateway]\n", f'[gateway]\nnode_name = "{name}"\n', 1)
        # No admin console: the tests do not use it, and a node starts faster without it.
        config = config.replace("[listeners.admin_http]\n", "[listeners.admin_http]\nenabled = false\n", 1)
        config = config.replace("[fanout]\n", f"[fanout]\nlease = {self.lease}\n", 1)
        config = config.replace("[relay]\n", f"[relay]\nlease = {self.lease}\n", 1)
        config = config.replace("[reconcile]\n", f"[reconcile]\nlease = {self.lease}\n", 1)
        root = f'maildir_root = "{self.maildir_root}"\n'
        if "\n[mailbox]\n" in config:
            config = config.replace("\n[mailbox]\n", f"\n[mailbox]\n{root}", 1)
        else:
            config += f"\n[mailbox]\n{root}"
        config += f'\n[secrets]\ntoken_key_files = ["{self.shared / "secrets" / "token.key"}"]\n'
        path = folder / "gateway.toml"
        path.write_text(config, encoding="utf-8")
        return Node(
            path,
            self.maildir_root,
            self.cli,
            self.admin.mailboxes,
            database_url=self.database_url,
            name=name,
        )

    def start(self) -> None:
        for node in self.nodes.values():
            node.launch()
        for node in self.nodes.values():
            node.wait_ready(timeout=120)

    def stop(self) -> None:
        """SIGTERM to every live node at once (a frozen one thawed first), then wait for each."""
        running = [node for node in self.nodes.values() if node.alive]
        for node in running:
            if node.frozen:
                node.thaw()
            assert node.process is not None
            node.process.send_signal(signal.SIGTERM)
        for node in running:
            node.stop()
        self.admin.mailboxes.close()
        self.engine.dispose()

    # --- the database's view ----------------------------------------------------------------------------

    def scalar(self, statement: Any, **params: object) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(statement, params).scalar()

    def rows(self, statement: Any, **params: object) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(statement, params))

    def quiet(self, timeout: float = 60.0) -> None:
        """Wait until nothing is queued in the database (see ``_QUEUED``); a timeout names what waits."""
        deadline = time.monotonic() + timeout
        while self.scalar(_QUEUED):
            if time.monotonic() > deadline:
                waiting = self.rows(
                    text(
                        "SELECT copy_id, state, leased_by, next_attempt_at, last_error FROM copies "
                        "WHERE state IN ('pending', 'revoking') OR flags_pending LIMIT 10"
                    )
                )
                # Which session holds them up, and in what state: a node frozen in a transaction shows
                # here as "idle in transaction" with its last statement.
                sessions = self.rows(
                    text(
                        "SELECT application_name, state, xact_start, left(query, 120) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
                raise AssertionError(
                    f"the queues did not empty within {timeout} s: {waiting}\nsessions: {sessions}"
                )
            time.sleep(0.05)

    def copies(self) -> list[StoredCopy]:
        return [
            StoredCopy(*row)
            for row in self.rows(
                text(
                    "SELECT c.copy_id, m.address, c.state, g.message_id, g.gateway_id, g.subject "
                    "FROM copies c JOIN members m ON m.id = c.member_id "
                    "JOIN messages g ON g.id = c.message_id"
                )
            )
        ]

    def stored_messages(self, tag: str) -> Counter[str]:
        """How often each burst message of ``tag`` is stored, by Message-ID."""
        rows = self.rows(
            text("SELECT message_id FROM messages WHERE message_id LIKE :pattern"), pattern=f"<{tag}-%"
        )
        return Counter(message_id for (message_id,) in rows)

    def in_acceptance(self, node: Node) -> bool:
        """Whether ``node`` holds an open transaction that accepts mail (see ``_IN_ACCEPTANCE``)."""
        return bool(self.scalar(_IN_ACCEPTANCE, node=node.name))

    def in_write_transaction(self, node: Node) -> bool:
        """Whether one of ``node``'s sessions is inside a transaction that has written something."""
        return bool(
            self.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = :node "
                    "AND datname = current_database() AND backend_xid IS NOT NULL"
                ),
                node=node.name,
            )
        )

    def leased_pending(self, node: Node) -> set[str]:
        """The copies ``node`` has taken (or been handed) and not yet recorded as written."""
        rows = self.rows(
            text("SELECT copy_id FROM copies WHERE state = 'pending' AND leased_by = :node"), node=node.name
        )
        return {copy_id for (copy_id,) in rows}

    def relaying(self) -> list[str]:
        """The nodes holding a lease on a relay still pending (a member's reply being sent)."""
        rows = self.rows(
            text("SELECT leased_by FROM relays WHERE state = 'pending' AND leased_by IS NOT NULL")
        )
        return [node for (node,) in rows]

    # --- the members' view ------------------------------------------------------------------------------

    def in_mailboxes(self) -> Counter[tuple[str, str]]:
        """How many messages in each member's mailbox (every folder) carry each copy id."""
        counts: Counter[tuple[str, str]] = Counter()
        if self.dovecot is not None:
            for address in ADDRESS.values():
                for copy_id, count in self.dovecot.copy_counts(address).items():
                    counts[(address, copy_id)] += count
            return counts
        for path, address in self._maildir_files():
            copy_id = _copy_id_header(path)
            if copy_id is not None:
                counts[(address, copy_id)] += 1
        return counts

    def _maildir_files(self) -> Iterator[tuple[Path, str]]:
        """Every message file under the Maildir root (``<portfolio>/<address>/[.Folder/]new|cur/``)."""
        if not self.maildir_root.exists():
            return
        for path in self.maildir_root.rglob("*"):
            if path.parent.name in ("new", "cur") and path.is_file():
                yield path, path.relative_to(self.maildir_root).parts[1]

    def written_at(self) -> dict[str, float]:
        """When each copy's file was written (its mtime), by copy id; Maildir only."""
        return {
            copy_id: path.stat().st_mtime
            for path, _ in self._maildir_files()
            if (copy_id := _copy_id_header(path)) is not None
        }

    # --- what every test asserts at the end -------------------------------------------------------------

    def assert_every_copy_exactly_once(self) -> list[StoredCopy]:
        """After ``quiet()``: every delivered copy is in its member's mailbox exactly once, every revoked
        one nowhere, and nothing else carries a copy id. Returns the database's copies."""
        self.quiet()
        stored = self.copies()
        states = Counter(c.state for c in stored)
        assert set(states) <= {"delivered", "revoked"}, f"copies neither delivered nor revoked: {states}"
        found = self.in_mailboxes()
        problems = []
        for copy in stored:
            wanted = 1 if copy.state == "delivered" else 0
            got = found.pop((copy.address, copy.copy_id), 0)
            if got != wanted:
                problems.append(
                    f"{copy.address} copy {copy.copy_id} of {copy.message_id} ({copy.state}): {got} in "
                    f"the mailbox, {wanted} expected"
                )
        problems += [
            f"{a} copy {c}: {n} in the mailbox, unknown to the database" for (a, c), n in found.items()
        ]
        assert not problems, f"{len(problems)} copies not exactly once:\n" + "\n".join(problems[:40])
        return stored

    def assert_burst_reached_its_audience(self, tag: str, numbers: Iterable[int]) -> None:
        """Each of ``numbers`` is stored once and its delivered copies are exactly its audience."""
        wanted = set(numbers)
        stored = self.stored_messages(tag)
        twice = {m: n for m, n in stored.items() if n != 1}
        assert not twice, f"stored more than once: {twice}"
        missing = {message_id(tag, n) for n in wanted} - set(stored)
        assert not missing, f"{len(missing)} accepted messages not stored: {sorted(missing)[:10]}"
        holders: dict[str, set[str]] = {}
        for copy in self.assert_every_copy_exactly_once():
            if copy.state == "delivered" and copy.message_id is not None:
                holders.setdefault(copy.message_id, set()).add(copy.address)
        wrong = [
            f"{message_id(tag, n)} to {recipient(n)}: {sorted(holders.get(message_id(tag, n), ()))}"
            for n in sorted(wanted)
            if holders.get(message_id(tag, n), set()) != audience(n)
        ]
        assert not wrong, "copies not in exactly the audience:\n" + "\n".join(wrong[:20])

    def assert_relayed_once(self) -> Counter[str]:
        """Every mail the sink received came once, by Message-ID; returns the counts."""
        self.quiet()
        counts = Counter(str(r.message["Message-ID"]) for r in self.sink.received)
        twice = {m: n for m, n in counts.items() if n != 1}
        assert not twice, f"relayed more than once: {twice}"
        return counts

    def through(self, node: Node, tag: str) -> None:
        """A barrier for the work ``node`` had in hand: a message handed in at ``node`` (its fan-out takes
        it after everything handed to it before), and then every queue empty."""
        with smtplib.SMTP(HOST, node.port, timeout=30) as client:
            client.login(LOGIN, PASSWORD)
            client.sendmail(LOGIN, [ADDRESS["SB-A1"]], burst_message(tag, 0))
        deadline = time.monotonic() + 60
        while self.scalar(
            text(
                "SELECT count(*) FROM copies c JOIN messages g ON g.id = c.message_id "
                "WHERE g.message_id = :mid AND c.state <> 'delivered'"
            ),
            mid=message_id(tag, 0),
        ):
            assert time.monotonic() < deadline, f"the barrier message through {node.name} was not written"
            time.sleep(0.05)
        self.quiet()

    def print_logs(self) -> None:
        for node in self.nodes.values():
            print(f"----- log of {node.name} -----")
            print("".join(node.log[-200:]))


def _copy_id_header(path: Path) -> str | None:
    """The X-Gateway-Copy-Id of a message file, from its header section; None for members' own mail."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # a client (or the gateway) moved it meanwhile
        return None
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    for line in head.splitlines():
        if line.lower().startswith(b"x-gateway-copy-id:"):
            return line.split(b":", 1)[1].strip().decode()
    return None


# --- the back office's SMTP server ----------------------------------------------------------------------


class GatedSink(BackOfficeSink):
    """The back-office sink (every mail kept), able to hold new sessions at EHLO until ``release()``: a
    slow back office, so that a node can be frozen in the middle of relaying. Counts its sessions."""

    def __init__(self) -> None:
        super().__init__()
        self._open = threading.Event()
        self._open.set()
        self.held = 0
        self.sessions = 0
        self.ended = 0

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def handle_EHLO(  # noqa: N802
        self, server: object, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        if not self._open.is_set():
            self.held += 1
            await asyncio.get_running_loop().run_in_executor(None, self._open.wait)
        session.host_name = hostname  # the hook replaces aiosmtpd's own EHLO bookkeeping
        return responses

    def up(self) -> None:
        sink = self

        class CountingSMTP(SMTP):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sink.sessions += 1
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                sink.ended += 1
                super().connection_lost(error)

        class CountingController(Controller):
            def factory(self) -> SMTP:
                return CountingSMTP(self.handler, **self.SMTP_kwargs)

        self._controller = CountingController(self, hostname=HOST, port=self.port, decode_data=False)
        self._controller.start()

    def all_sessions_ended(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.ended < self.sessions:
            assert time.monotonic() < deadline, f"{self.sessions - self.ended} sessions still open"
            time.sleep(0.05)


# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture
def cluster_sink() -> Iterator[GatedSink]:
    """The back office's SMTP server: keeps every mail the cluster relays."""
    server = GatedSink()
    server.up()
    try:
        yield server
    finally:
        server.release()
        server.down()


@pytest.fixture
def cluster_backend() -> str:
    """Where the members' mailboxes are: "maildir" (one shared root), or "imap" (one private Dovecot).
    A test parametrises this to run on Dovecot."""
    return "maildir"


@pytest.fixture
def cluster_lease() -> float:
    """The nodes' leases (copies, relays, reconcile runs); a module where no node fails says LONG_LEASE."""
    return LEASE


@pytest.fixture
def cluster(
    tmp_path: Path,
    cluster_sink: GatedSink,
    cluster_backend: str,
    cluster_lease: float,
    request: pytest.FixtureRequest,
) -> Iterator[Cluster]:
    """Two started nodes on a PostgreSQL database of their own with the seed's directory; stopped after
    the test (a frozen node thawed first), their logs printed (pytest shows them for a failed test)."""
    dovecot: Dovecot | None = request.getfixturevalue("dovecot") if cluster_backend == "imap" else None
    with a_database("postgresql", tmp_path, request) as database_url:
        running = Cluster(tmp_path, database_url, cluster_sink, dovecot, cluster_lease)
        try:
            running.start()
            yield running
        finally:
            running.stop()
            running.print_logs()


__all__ = ["PORTFOLIO", "Cluster", "Node", "Sender"]
