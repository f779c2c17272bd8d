"""Nodes and workers as real ``gateway serve`` processes (issue 17, items 3 and 5).

- A second process under a live node's name exits 1 naming the other's pid, host and heartbeat age;
  `gateway nodes --json` shows the first alive, then stopped after SIGTERM, and the name is free again.
- ``serve --workers 2`` on PostgreSQL: two worker processes share the submission port (SO_REUSEPORT);
  mail over many connections is accepted by both (which process holds each connection is read from
  /proc), `gateway nodes` shows both, a worker killed with SIGKILL is started again under its name, and
  SIGTERM stops them all. On SQLite, more than one worker is refused with a clear message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope, Session

from gateway import __version__
from tests.conftest import a_database
from tests.e2e.clients import (
    copy_for,
    message,
    reply_address_of,
    send_from_backoffice,
    send_reply,
    wait_until,
)
from tests.e2e.conftest import GATEWAY, LOGIN, PASSWORD, BackOfficeSink, RunningGateway, configure, prepare
from tests.seed import ADDRESS

FAST_NODES = "heartbeat_interval = 0.5\nnode_timeout = 3.0\n"


def with_gateway_settings(gateway: RunningGateway, lines: str) -> None:
    """Add ``lines`` to the [gateway] section of the gateway's configuration."""
    text = gateway.config.read_text(encoding="utf-8")
    gateway.config.write_text(text.replace("[gateway]\n", "[gateway]\n" + lines, 1), encoding="utf-8")


def nodes(gateway: RunningGateway) -> dict[str, dict[str, object]]:
    rows = json.loads(gateway.cli("nodes", "--json").stdout)
    return {str(row["name"]): row for row in rows}


def test_a_second_process_under_a_live_nodes_name_is_refused(tmp_path: Path, database_url: str) -> None:
    first = prepare(tmp_path, database_url)
    with_gateway_settings(first, FAST_NODES)
    first.start()
    assert first.process is not None
    try:
        shown = nodes(first)["gateway.test.example"]
        assert shown["state"] == "alive"
        assert shown["pid"] == first.process.pid
        assert shown["host"] == socket.gethostname()
        assert shown["version"] == __version__

        second = subprocess.run(
            [GATEWAY, "--config", str(first.config), "serve"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

        assert second.returncode == 1
        assert re.search(
            rf'another gateway process is running as node "gateway.test.example" \(pid {first.process.pid} '
            rf"on host {re.escape(socket.gethostname())}, last heartbeat \d+\.\d s ago\)",
            second.stderr,
        ), second.stderr
        assert "Traceback" not in second.stderr
        # The refused process took nothing over: the first one is still the node.
        assert nodes(first)["gateway.test.example"]["pid"] == first.process.pid
    finally:
        assert first.stop() == 0
    assert nodes(first)["gateway.test.example"]["state"] == "stopped"
    # A cleanly stopped node's name is free at once.
    again = first.restarted()
    assert again.process is not None
    assert nodes(first)["gateway.test.example"]["pid"] == again.process.pid
    assert again.stop() == 0


# --- serve --workers ---------------------------------------------------------------------------------


class Supervised:
    """``gateway serve --workers N`` as a subprocess, its stderr (its own and its workers' lines) kept."""

    def __init__(self, config: Path, workers: int) -> None:
        self.process = subprocess.Popen(
            [GATEWAY, "--config", str(config), "serve", "--workers", str(workers)],
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ | {"PYTHONUNBUFFERED": "1"},
        )
        self.log: list[str] = []
        self.port = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            if match := re.search(r"listening: submission on [\d.]+:(\d+)", line):
                self.port = int(match.group(1))

    def text(self) -> str:
        return "".join(self.log)

    def wait_for(self, pattern: str, timeout: float = 90) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.text()):
                return match
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not logged:\n{self.text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=120)
        self._reader.join(timeout=10)
        return code


@contextlib.contextmanager
def supervised(config: Path, workers: int) -> Iterator[Supervised]:
    running = Supervised(config, workers)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
        running._reader.join(timeout=10)
        if running.process.stderr is not None:
            running.process.stderr.close()
        print(running.text())


def _holder(port: int, client_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server side of the connection 127.0.0.1:client_port -> :port."""
    wanted = f"0100007F:{port:04X} 0100007F:{client_port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if f"{fields[1]} {fields[2]}" == wanted:
            inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return pid
    return None


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_two_workers_share_the_listeners_on_postgresql(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with a_database("postgresql", tmp_path, request) as database_url:
        gateway = prepare(tmp_path, database_url)
        with_gateway_settings(gateway, FAST_NODES)
        with supervised(gateway.config, 2) as served:
            ready = served.wait_for(
                r"gateway ready: 2 workers \(gateway\.test\.example-1 pid (\d+), "
                r"gateway\.test\.example-2 pid (\d+)\)"
            )
            pids = [int(ready.group(1)), int(ready.group(2))]
            shown = nodes(gateway)
            assert {name: row["state"] for name, row in shown.items()} == {
                "gateway.test.example-1": "alive",
                "gateway.test.example-2": "alive",
            }
            assert sorted(int(str(row["pid"])) for row in shown.values()) == sorted(pids)

            # Mail over 16 connections: every message accepted; the kernel gave connections to both.
            holders = []
            for number in range(16):
                with smtplib.SMTP("127.0.0.1", served.port, timeout=30) as client:
                    assert client.sock is not None
                    holders.append(_holder(served.port, client.sock.getsockname()[1], pids))
                    client.login(LOGIN, PASSWORD)
                    client.send_message(message(ADDRESS["SB-A1"], f"Verteilt {number}"))
            assert set(holders) == set(pids), holders
            copies = gateway.wait_for_copies("Verteilt", 32)
            assert sorted(len(found) for found in copies.values()) == [16, 16]  # SB-A1 and SB-A2, once each

            # A worker that dies is started again under its name, in place of the dead record at once.
            os.kill(pids[0], signal.SIGKILL)
            served.wait_for(r"worker gateway\.test\.example-1 \(pid \d+\) ended with status -9")
            assert wait_until(
                lambda: (
                    nodes(gateway)["gateway.test.example-1"]["pid"] not in pids
                    and nodes(gateway)["gateway.test.example-1"]["state"] == "alive"
                ),
                timeout=60,
            ), served.text()
            new_pid = int(str(nodes(gateway)["gateway.test.example-1"]["pid"]))
            with smtplib.SMTP("127.0.0.1", served.port, timeout=30) as client:
                client.login(LOGIN, PASSWORD)
                client.send_message(message(ADDRESS["SB-A1"], "Nach dem Neustart"))
            assert len(gateway.wait_for_copies("Nach dem Neustart", 2)) == 2

            # SIGTERM stops every worker, each recorded stopped.
            assert served.stop() == 0
            assert _pid_gone(pids[1])
            assert _pid_gone(new_pid)
            assert {row["state"] for row in nodes(gateway).values()} == {"stopped"}
            assert "Traceback" not in served.text()


def test_more_than_one_worker_on_sqlite_is_refused(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    with a_database("sqlite", tmp_path, request) as database_url:
        gateway = prepare(tmp_path, database_url)
        result = subprocess.run(
            [GATEWAY, "--config", str(gateway.config), "serve", "--workers", "2"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        assert "--workers is 2, but the database is SQLite, which has one writer" in result.stderr
        assert "Traceback" not in result.stderr
        with_gateway_settings(gateway, "workers = 2\n")
        result = subprocess.run(
            [GATEWAY, "--config", str(gateway.config), "serve"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        assert "gateway.workers" in result.stderr
        assert "SQLite, which has one writer" in result.stderr


# --- take-over of a dead node's leases --------------------------------------------------------------------


class HoldingSink(BackOfficeSink):
    """A back office that holds the first mail in DATA until released (then refuses it, 451), and takes
    every later one: the first attempt is in flight when its node dies."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    async def handle_DATA(self, server: object, session: Session, envelope: Envelope) -> str:  # noqa: N802
        self.attempts += 1
        if self.attempts == 1:
            await asyncio.to_thread(self.release.wait, 120)
            return "451 4.3.0 the first attempt's node is gone"
        return await super().handle_DATA(server, session, envelope)

    def down(self) -> None:
        self.release.set()
        super().down()


def node_config(gateway: RunningGateway, name: str, *edits: tuple[str, str]) -> Path:
    """A configuration of another node beside ``gateway``'s: the same database, Maildir root and keys,
    named ``name``, with each (old, new) of ``edits`` replaced in its text."""
    text = gateway.config.read_text(encoding="utf-8")
    text = text.replace("[gateway]\n", f'[gateway]\nnode_name = "{name}"\n' + FAST_NODES, 1)
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    path = gateway.config.with_name(f"{name}.toml")
    path.write_text(text, encoding="utf-8")
    return path


def test_a_relay_in_flight_on_a_killed_node_is_sent_by_another_within_node_timeout(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Node A takes the reply's relay with a lease of an hour and is killed (SIGKILL) in the middle of
    DATA. Node B looks at its relay queue only once an hour, so only the take-over (A silent for
    node_timeout = 3 s: its leases end, B's workers are woken) sends the mail before the test gives up."""
    with a_database("postgresql", tmp_path, request) as database_url, running_holding_sink() as sink:
        base = prepare(tmp_path, database_url)
        configure(base, sink, tmp_path)
        a = RunningGateway(
            node_config(base, "node-a", ("[relay]\n", "[relay]\nlease = 3600.0\n")),
            base.maildir_root,
            base.cli,
            database_url=database_url,
        )
        b = RunningGateway(
            node_config(base, "node-b", ("[relay]\npoll_interval = 0.2", "[relay]\npoll_interval = 3600.0")),
            base.maildir_root,
            base.cli,
            database_url=database_url,
        )
        a.start()
        b.start()
        try:
            marker = "Uebernahme"
            send_from_backoffice(a, ADDRESS["SB-A1"], marker, "<uebernahme@ams.example>")
            copy = copy_for(a, "SB-A1", marker)
            reply = EmailMessage()
            reply["From"] = f"SB-A1 <{ADDRESS['SB-A1']}>"
            reply["To"] = str(copy["Reply-To"])
            reply["Subject"] = f"Re: {copy['Subject']}"
            reply["Message-ID"] = "<antwort-uebernahme@kunde-a.example>"
            reply["In-Reply-To"] = str(copy["Message-ID"])
            reply["References"] = str(copy["References"])
            reply.set_content("Die Fotos folgen.\n")
            code, text = send_reply(a, reply.as_bytes(), reply_address_of(copy), ADDRESS["SB-A1"])
            assert code == 250, text
            assert wait_until(lambda: sink.attempts == 1, timeout=30), "node A's relay never reached DATA"

            killed = time.monotonic()
            a.stop(signal.SIGKILL)

            (relayed,) = sink.wait_for(1, timeout=60)
            # A figure for the report, not an assertion: node_timeout (3 s) plus up to one heartbeat.
            print(f"failover: the relay went out {time.monotonic() - killed:.1f} s after node A was killed")
            assert relayed.message["Message-ID"] is not None
            sink.release.set()
            b.settled("relay")
            assert len(sink.received) == 1, "relayed once"
            shown = nodes(b)
            assert shown["node-a"]["state"] == "stale"
            assert shown["node-a"]["taken_over_by"] == "node-b"
            assert shown["node-b"]["state"] == "alive"
            assert re.search(
                r"node node-a is silent for more than 3 s: took over its leases \(\d+ copy jobs, 1 relays",
                "".join(b.log),
            )
        finally:
            sink.release.set()
            for node in (a, b):
                if node.process is not None and node.process.poll() is None:
                    node.stop()
            print("".join(a.log), "".join(b.log))


@contextlib.contextmanager
def running_holding_sink() -> Iterator[HoldingSink]:
    server = HoldingSink()
    server.up()
    try:
        yield server
    finally:
        server.down()


def test_workers_that_cannot_start_stop_the_supervisor_with_their_reason(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with a_database("postgresql", tmp_path, request) as database_url:
        gateway = prepare(tmp_path, database_url)
        (tmp_path / "data" / "secrets" / "token.key").unlink()
        result = subprocess.run(
            [GATEWAY, "--config", str(gateway.config), "serve", "--workers", "2"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 1
        assert "token.key does not exist; create it with `gateway secrets init`" in result.stderr
        assert "could not start; stopping the others" in result.stderr
        assert "Traceback" not in result.stderr
