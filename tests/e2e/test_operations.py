"""/metrics, /healthz and /readyz of a real `gateway serve`, read as Prometheus and a prober read them.

The metrics are parsed with prometheus_client's own parser of the text format (never by substring), and
each figure is compared with the one read before the mail flowed, so the test says what moved by how much.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from tests.conftest import a_database
from tests.e2e.clients import SB_A1, login, message, send_raw, wait_until
from tests.e2e.conftest import LOGIN, RunningGateway, a_shared_gateway, prepare

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def console_port(gateway: RunningGateway) -> int:
    for line in gateway.log:
        if match := re.search(r"listening: admin_http on [\d.]+:(\d+)", line):
            return int(match.group(1))
    raise AssertionError("the console did not say where it listens:\n" + "".join(gateway.log))


def get(gateway: RunningGateway, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{console_port(gateway)}{path}"
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(gateway: RunningGateway) -> Samples:
    status, text = get(gateway, "/metrics")
    assert status == 200, text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# A small size limit: a message over it is refused at the end of DATA, with its code.
LIMITS: dict[str, object] = {"max_message_size": 20_000, "auth_failure_delay": 0.0}


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, module_database_kind: str, request: pytest.FixtureRequest
) -> Iterator[RunningGateway]:
    """One gateway for the tests that read its figures: each compares them with those read before it
    acted, and leaves no session open or copy pending behind it."""
    with a_shared_gateway(tmp_path_factory, module_database_kind, "maildir", request, **LIMITS) as gateway:
        yield gateway


@pytest.fixture
def own_gateway(tmp_path: Path, database_url: str) -> Iterator[RunningGateway]:
    """A gateway of the test's own, for one that breaks a part of it for a while."""
    gateway = prepare(tmp_path, database_url, **LIMITS)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def test_metrics_move_when_mail_flows(gateway: RunningGateway) -> None:
    before = scrape(gateway)
    assert value(before, "gateway_stored_state_up") == 1
    with login(gateway) as client:
        for n in range(3):
            client.send_message(message(SB_A1, f"Metrics {n}"))
    gateway.settled()
    # SB-A1's audience is SB-A1 and SB-A2 (DESIGN.md §3): two copies of each of the three messages.
    # The stored state is read at most every few seconds: wait for the read that sees the copies.
    delivered_before = value(before, "gateway_copies", state="delivered")
    assert wait_until(
        lambda: value(scrape(gateway), "gateway_copies", state="delivered") == delivered_before + 6
    )
    after = scrape(gateway)
    accepted = "gateway_messages_accepted_total"
    assert value(after, accepted, listener="submission") == value(before, accepted, listener="submission") + 3
    latency = "gateway_delivery_latency_seconds_count"
    assert value(after, latency) == value(before, latency) + 6
    assert value(after, "gateway_copies_written_total") == value(before, "gateway_copies_written_total") + 6
    assert value(after, "gateway_copies", state="pending") == 0
    assert value(after, "gateway_copies_oldest_pending_age_seconds") == 0
    # Every histogram bucket counts what is at most its bound: the +Inf bucket holds them all.
    assert value(after, "gateway_delivery_latency_seconds_bucket", le="+Inf") == value(after, latency)
    # The test's session is closed; the scrape's own HTTP request is no SMTP session.
    assert value(after, "gateway_smtp_sessions_open", listener="submission") == 0


def test_a_refused_message_counts_with_its_code(gateway: RunningGateway) -> None:
    before = scrape(gateway)
    with login(gateway) as client:
        body = b"x" * 76 + b"\r\n"
        code, _ = send_raw(client, message(SB_A1, "too big").as_bytes() + body * 400 + b".\r\n")
        assert code == 552
        labels = {"listener": "submission", "code": "552"}
        after = scrape(gateway)
        # The session is still open while the figures are read: it counts as one.
        assert value(after, "gateway_smtp_sessions_open", listener="submission") == 1
    refused = [
        (key, count)
        for key, count in after.items()
        if key[0] == "gateway_messages_refused_total" and dict(key[1]).items() >= labels.items()
    ]
    assert len(refused) == 1, refused
    (_, label_pairs), count = refused[0]
    assert dict(label_pairs)["enhanced"] == "5.3.4"
    assert count == value(before, "gateway_messages_refused_total", **dict(label_pairs)) + 1
    assert value(after, "gateway_messages_accepted_total", listener="submission") == value(
        before, "gateway_messages_accepted_total", listener="submission"
    )


def test_a_failed_login_counts(gateway: RunningGateway) -> None:
    before = scrape(gateway)
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        client.ehlo("ams.example")
        # One AUTH PLAIN: smtplib's login() would try LOGIN after PLAIN, two failures.
        client.user, client.password = LOGIN, "not the password"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.auth("PLAIN", client.auth_plain)
    after = scrape(gateway)
    name = "gateway_logins_failed_total"
    assert value(after, name, service="smtp") == value(before, name, service="smtp") + 1
    assert value(after, name, service="console") == value(before, name, service="console")


def test_healthz_and_readyz_when_all_is_well(gateway: RunningGateway) -> None:
    assert get(gateway, "/healthz") == (200, "ok\n")
    assert get(gateway, "/readyz") == (200, "ready\n")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_readyz_fails_while_the_maildir_root_cannot_be_written(own_gateway: RunningGateway) -> None:
    gateway = own_gateway
    # A file where the directory was: nobody, root included, can create a mailbox in it.
    root = gateway.maildir_root
    root.mkdir(parents=True, exist_ok=True)
    away = root.with_name("mail.away")
    root.rename(away)
    root.write_text("not a directory\n", encoding="utf-8")
    try:
        status, text = get(gateway, "/readyz")
        assert status == 503
        assert "mailboxes: cannot write into the Maildir root" in text
        assert str(root) not in text  # the reason names the part, the log has the path
        assert get(gateway, "/healthz") == (200, "ok\n")  # the process lives
    finally:
        root.unlink()
        away.rename(root)
    assert get(gateway, "/readyz") == (200, "ready\n")


class TcpProxy:
    """Forwards a local port to PostgreSQL until ``cut()``: then it refuses new connections and drops
    open ones, as a database that went away does; ``mend()`` forwards again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self.mend()

    def mend(self) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self.port = server.getsockname()[1]
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        if self._server is not None:
            # shutdown() first: close() alone does not wake the thread waiting in accept() on Linux.
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        with self._lock:
            for connection in self._open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self._open.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # cut
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


def test_readyz_follows_postgresql_away_and_back(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # The machine's PostgreSQL serves other tests: it is "stopped" for this gateway alone, by a proxy
    # between the two that the test cuts and mends.
    with a_database("postgresql", tmp_path, request) as direct:
        url = make_url(direct)
        proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
        through = url.set(port=proxy.port).render_as_string(hide_password=False)
        gateway = prepare(tmp_path, through)
        gateway.start()
        try:
            assert get(gateway, "/readyz") == (200, "ready\n")
            proxy.cut()
            assert wait_until(lambda: get(gateway, "/readyz")[0] == 503, timeout=30)
            status, text = get(gateway, "/readyz")
            assert status == 503
            assert "database: not reachable" in text or "database: no answer" in text
            assert str(proxy.port) not in text  # nothing of the URL
            assert "postgres" not in text
            assert get(gateway, "/healthz") == (200, "ok\n")
            # Without the database the stored queues cannot be read: said, not made up.
            assert value(scrape(gateway), "gateway_stored_state_up") == 0
            proxy.mend()
            assert wait_until(lambda: get(gateway, "/readyz") == (200, "ready\n"), timeout=30)
            assert wait_until(lambda: value(scrape(gateway), "gateway_stored_state_up") == 1, timeout=30)
        finally:
            gateway.stop()
            proxy.cut()


def test_metrics_only_for_the_allowed_addresses(tmp_path: Path, database_url: str) -> None:
    gateway = prepare(tmp_path, database_url)
    text = gateway.config.read_text(encoding="utf-8")
    gateway.config.write_text(
        text.replace("[listeners.admin_http]\n", '[listeners.admin_http]\nmetrics_allow = ["192.0.2.1"]\n'),
        encoding="utf-8",
    )
    gateway.start()
    try:
        status, _ = get(gateway, "/metrics")
        assert status == 404
        assert get(gateway, "/healthz") == (200, "ok\n")
    finally:
        gateway.stop()
