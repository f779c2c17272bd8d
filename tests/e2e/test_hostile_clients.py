"""Hostile and broken clients at a running gateway (issue 12): memory, slots, answers and logs stay sane.

Clients from other addresses are real sockets bound to other loopback addresses (127.0.0.0/8), so the
gateway counts them as other clients.
"""

from __future__ import annotations

import asyncio
import base64
import re
import select
import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from gateway.domain.data_memory import session_footprint
from tests.conftest import a_database
from tests.e2e.clients import login, raw_message, stored
from tests.e2e.conftest import INTAKE, LOGIN, PASSWORD, RunningGateway, prepare
from tests.seed import ADDRESS

SB_A1 = ADDRESS["SB-A1"]
ENHANCED = re.compile(rb"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3} ")


def started(
    tmp_path: Path, database_url: str, listeners: dict[str, str] | None = None, **limits: object
) -> RunningGateway:
    """A gateway with ``limits`` in [limits] and lines added per listener: {"mx": "max_connections = 4"}."""
    gateway = prepare(tmp_path, database_url, **limits)
    text = gateway.config.read_text(encoding="utf-8")
    for name, lines in (listeners or {}).items():
        text = text.replace(f"[listeners.{name}]\nport = 0\n", f"[listeners.{name}]\nport = 0\n{lines}\n")
    gateway.config.write_text(text, encoding="utf-8")
    gateway.start()
    return gateway


class Dialogue:
    """A raw SMTP client: each command's reply as the lines the gateway wrote (smtplib merges them)."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        self.buffer = b""
        self.greeting = self.reply()

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; unanswered: {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def reply(self) -> list[bytes]:
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return lines

    def send(self, command: bytes | str) -> list[bytes]:
        self.sock.sendall((command.encode() if isinstance(command, str) else command) + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        """True once the gateway has hung up (after reading whatever it said last)."""
        try:
            while chunk := self.sock.recv(65536):
                self.buffer += chunk
        except (ConnectionError, TimeoutError):
            pass
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, module_database_kind: str, request: pytest.FixtureRequest
) -> Iterator[RunningGateway]:
    """A gateway shared by the tests of this module that only talk to it, each in sessions of its own;
    those that need other limits, or stop it, start their own (``started``)."""
    place = tmp_path_factory.mktemp("gateway")
    with a_database(module_database_kind, place, request) as database_url:
        running = started(place, database_url, max_message_size="64KiB")
        try:
            yield running
        finally:
            running.stop()


# --- item 5: every answer has an enhanced status code and no internal detail ------------------------------

# Commands of every path aiosmtpd answers itself, in an order that reaches each (at most four unknown
# commands per session: the fifth closes it). Greeting, EHLO's lines and 354 carry no code by custom.
BEFORE_HELO = [
    "NOOP",
    "MAIL FROM:<someone@example.org>",
    "RCPT TO:<someone@example.org>",
    "DATA",
    "FOO",
    "HELO",
    "EHLO",
    "",
    b"\xff\xfe",
    "NOOP " + "x" * 600,
    "NOOP " + "x" * 1500,
    b"EHLO \xff\xfe.example",
    "HELO client.example",
    "AUTH PLAIN",
]
AFTER_EHLO = [
    "RSET x",
    "RSET",
    "VRFY",
    "VRFY <nobody@example.org>",
    "VRFY <<<",
    "EXPN list",
    "HELP",
    "HELP MAIL",
    "HELP FOO",
    "STARTTLS",
    "STARTTLS x",
    "QUIT x",
    "RCPT TO:<someone@example.org>",
    "MAIL FROM:",
    "MAIL FROM:<@>",
    "MAIL FROM:<broken address@@example.org>",
    "MAIL FROM:<a@example.org> FOO=BAR",
    "MAIL FROM:<a@example.org> BODY=7BIT FOO",
    "MAIL FROM:<a@example.org> BODY=BINARY",
    "MAIL FROM:<a@example.org> SIZE=99999999999",
    "MAIL FROM:<a@example.org> SIZE=abc",
    "MAIL FROM:<a@example.org> SMTPUTF8=yes",
    b"MAIL FROM:<\xff\xfe@example.org>",
    "DATA",
    "MAIL FROM:<a@example.org>",
    "MAIL FROM:<b@example.org>",
    "RCPT TO:",
    "RCPT TO:<x@example.org> NOTIFY=NEVER",
    b"RCPT TO:<\xed\xa0\x80@example.org>",
    b"RCPT TO:<reply+\xff@" + b"reply.gateway.test.example>",
    "RCPT TO:<nobody@elsewhere.example>",
    "DATA x",
    "DATA",
    "BAR",
    "AUTH",
    "AUTH PLAIN dGVzdA== extra",
    "AUTH LOGIN",
    "NOOP",
]


def assert_coded(command: bytes | str, reply: list[bytes]) -> None:
    for line in reply:
        assert ENHANCED.match(line), f"{command!r} was answered {line!r}"
        assert b"Error: (" not in line, line


def test_every_mx_answer_has_an_enhanced_code(gateway: RunningGateway) -> None:
    logged = len(gateway.log)  # the shared gateway's log: what this test's session made it write
    talk = Dialogue(gateway.mx_port)
    try:
        for command in BEFORE_HELO:
            assert_coded(command, talk.send(command))
        ehlo = talk.send("EHLO client.example")
        assert ehlo[-1].startswith(b"250 ")
        assert b"250-ENHANCEDSTATUSCODES" in ehlo
        for command in AFTER_EHLO:
            reply = talk.send(command)
            assert_coded(command, reply)
            if isinstance(command, bytes) and command.startswith(b"MAIL"):
                assert reply[0].startswith(b"501 5.1.7 "), (command, reply)
            if isinstance(command, bytes) and command.startswith(b"RCPT"):
                assert reply[0].startswith(b"501 5.1.3 "), (command, reply)
        assert talk.send("QUIT") == [b"221 2.0.0 Bye"]
    finally:
        talk.close()
    assert not [line for line in gateway.log[logged:] if "Traceback" in line]


def test_every_submission_answer_has_an_enhanced_code(gateway: RunningGateway) -> None:
    talk = Dialogue(gateway.port)
    try:
        assert_coded("HELO", talk.send("HELO ams.example"))
        assert_coded("AUTH after HELO", talk.send("AUTH PLAIN"))
        talk.send("EHLO ams.example")
        for command in ("MAIL FROM:<ams@makler-muster.example>", "RCPT TO:<x@y.example>", "DATA", "HELP"):
            reply = talk.send(command)
            assert_coded(command, reply)
        assert_coded("AUTH PLAIN !", talk.send("AUTH PLAIN !!!!"))
        assert_coded("AUTH *", talk.send("AUTH LOGIN") and talk.send("*"))
        assert talk.send("AUTH LOGIN")[0].startswith(b"334 ")
        assert talk.send("x" * 1500) == [b"500 5.5.6 Authentication exchange line is too long"]
        credentials = base64.b64encode(f"\0{LOGIN}\0{PASSWORD}".encode()).decode()
        reply = talk.send(f"AUTH PLAIN {credentials}")
        assert reply[0].startswith(b"235 2.7.0"), reply
        for command in ("AUTH PLAIN", "MAIL FROM:<ams@makler-muster.example>", "RCPT TO:<nobody@x.example>"):
            assert_coded(command, talk.send(command))
        assert_coded("RCPT", talk.send(b"RCPT TO:<\xff@kunde-a.example>"))
        assert_coded("QUIT", talk.send("QUIT"))
    finally:
        talk.close()


def rename_table(database_url: str, old: str, new: str) -> None:
    """Break (or mend) the database under the running gateway: a table goes away (or comes back)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        import sqlite3

        with sqlite3.connect(url.database or "", timeout=30) as connection:
            connection.execute(f"ALTER TABLE {old} RENAME TO {new}")
        return

    async def rename() -> None:
        connection = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(False))
        try:
            await connection.execute(f"ALTER TABLE {old} RENAME TO {new}")
        finally:
            await connection.close()

    asyncio.run(rename())


def test_a_database_error_during_rcpt_answers_451_without_internals(gateway: RunningGateway) -> None:
    database_url = gateway.database_url
    logged = len(gateway.log)
    with login(gateway) as client:
        assert client.mail(LOGIN)[0] == 250
        rename_table(database_url, "members", "members_away")
        try:
            code, text = client.rcpt(ADDRESS["SB-A2"])
        finally:
            rename_table(database_url, "members_away", "members")
        assert (code, text) == (451, b"4.3.0 Temporary failure, try again later")
        assert client.rcpt(ADDRESS["SB-A2"])[0] == 250, "the session goes on once the database is back"
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        client.ehlo("ams.example")
        rename_table(database_url, "backoffice_accounts", "accounts_away")
        try:
            wrong = base64.b64encode(f"\0{LOGIN}\0not the password".encode()).decode()
            answer = client.docmd("AUTH", f"PLAIN {wrong}")
        finally:
            rename_table(database_url, "accounts_away", "backoffice_accounts")
        assert answer == (451, b"4.3.0 Temporary failure, try again later")
    assert any("unexpected error answering" in line for line in gateway.log[logged:]), (
        "the details are logged"
    )


# --- item 1: memory per connection and per listener is bounded ---------------------------------------------


def open_data(port: int, source: str = "127.0.0.1") -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0))
    client.ehlo("ams.example")
    client.login(LOGIN, PASSWORD)
    client.mail(LOGIN)
    client.rcpt(SB_A1)
    client.putcmd("data")
    assert client.getreply()[0] == 354
    return client


def test_a_message_over_the_size_limit_is_refused_at_its_end_and_nothing_is_kept(
    gateway: RunningGateway,
) -> None:
    database_url = gateway.database_url
    before = len(stored(database_url))
    client = open_data(gateway.port)
    assert client.sock is not None
    # 160 KiB once its bare LFs are CRLFs; only CRLF.CRLF ends DATA
    client.sock.sendall(raw_message(b"flood") + b"ab\n" * 40_000 + b"\r\n.\r\n")
    assert client.getreply()[:2] == (552, b"5.3.4 Message too big for this gateway")
    assert client.noop()[0] == 250, "the session goes on"
    client.quit()
    assert len(stored(database_url)) == before


MAX_SIZE = 64 * 1024
LINE_LIMIT = 998 + 2  # [limits] max_line_length and its CRLF, as the gateway reads lines
# Room for one message of the largest size and one of half that, counted as the gateway counts them.
BUDGET = session_footprint(MAX_SIZE, LINE_LIMIT) + session_footprint(MAX_SIZE // 2, LINE_LIMIT)
LINE = b"a" * 998 + b"\r\n"


def test_sessions_over_the_listeners_memory_budget_get_452_and_are_closed(
    tmp_path: Path, database_url: str
) -> None:
    gateway = started(
        tmp_path, database_url, {"submission": f"max_data_memory = {BUDGET}"}, max_message_size="64KiB"
    )
    try:
        first = open_data(gateway.port)
        holding = raw_message(b"first in") + LINE * 58
        assert first.sock is not None
        first.sock.sendall(holding)
        # The second message fits alone but not with the first: the line that would cross the budget
        # is its last, so the gateway's answer is the last thing on that connection.
        second = open_data(gateway.port)
        header = raw_message(b"second in")
        held = session_footprint(len(holding), LINE_LIMIT)
        lines = next(
            n
            for n in range(MAX_SIZE // len(LINE))
            if held + session_footprint(len(header) + n * len(LINE), LINE_LIMIT) > BUDGET
        )
        assert lines > 1, "the second session holds a part of its message before it crosses"
        assert len(header) + lines * len(LINE) <= MAX_SIZE, "a 452, not a 552"
        second.sock.sendall(header + LINE * lines)
        assert second.getreply() == (452, b"4.3.1 Too much mail arriving at once, try again later")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            second.noop()
        second.close()
        first.sock.sendall(b".\r\n")
        code, text = first.getreply()
        assert code == 250, text
        first.quit()
        # The budget is free again: the same message as the refused one now goes through.
        third = open_data(gateway.port)
        assert third.sock is not None
        third.sock.sendall(header + LINE * lines + b".\r\n")
        assert third.getreply()[0] == 250
        third.quit()
        assert [m.subject for m in stored(database_url)] == ["first in", "second in"]
    finally:
        gateway.stop()


# --- item 3: connection slots cannot be starved ---------------------------------------------------------


def test_per_address_and_global_limits_say_which_one_was_hit(tmp_path: Path, database_url: str) -> None:
    gateway = started(
        tmp_path,
        database_url,
        {"mx": "max_connections = 4"},
        max_connections_per_client=2,
        evict_idle_after=60.0,
    )
    held = []
    try:
        for source in ("127.0.0.2", "127.0.0.2"):
            held.append(Dialogue(gateway.mx_port, source))
            assert held[-1].greeting[0].startswith(b"220 ")
        crowded = Dialogue(gateway.mx_port, "127.0.0.2")
        assert crowded.greeting == [b"421 4.7.0 Too many connections from your address, try again later"]
        crowded.close()
        for source in ("127.0.0.3", "127.0.0.3"):
            held.append(Dialogue(gateway.mx_port, source))
            assert held[-1].greeting[0].startswith(b"220 ")
        fresh = Dialogue(gateway.mx_port, "127.0.0.4")
        assert fresh.greeting == [b"421 4.3.2 Too many connections to this gateway, try again later"]
        fresh.close()
    finally:
        for talk in held:
            talk.close()
        gateway.stop()


def test_two_hundred_idle_connections_on_mx_starve_nobody(tmp_path: Path, database_url: str) -> None:
    """A back office is served during the crowd, and so is a client from a fresh address.

    How fast (the issue's target: 250 within 1 s) is a figure of the machine: bench/hostile.py measures it.
    """
    gateway = started(tmp_path, database_url, evict_idle_after=1.0, idle_timeout=60.0)
    crowd = []
    try:
        for n in range(200):
            sock = socket.create_connection(
                ("127.0.0.1", gateway.mx_port), timeout=10, source_address=(f"127.0.1.{10 + n // 20}", 0)
            )
            crowd.append(sock)
        greetings = [sock.recv(1024) for sock in crowd]
        # 100 fit; of the others, those that came when the first had been silent for evict_idle_after
        # took their slots, the rest heard that the gateway is busy.
        assert sum(g.startswith(b"220 ") for g in greetings) >= 100
        assert all(g.startswith((b"220 ", b"421 4.3.2 ")) for g in greetings)
        time.sleep(1.2)  # the crowd has been silent for evict_idle_after
        for n in range(5):
            with login(gateway) as client:  # smtplib raises on anything but 250
                client.sendmail(LOGIN, [SB_A1], raw_message(f"during the crowd {n}".encode()))
        fresh = Dialogue(gateway.mx_port, "127.0.2.1")
        assert fresh.greeting[0].startswith(b"220 "), fresh.greeting
        assert fresh.send("EHLO mx.kunde-a.example")[-1].startswith(b"250 ")
        assert fresh.send("MAIL FROM:<sb-a1@kunde-a.example>")[0].startswith(b"250 2.1.0")
        assert fresh.send(f"RCPT TO:<{INTAKE}>")[0].startswith(b"250 2.1.5")
        assert fresh.send("QUIT") == [b"221 2.0.0 Bye"]
        fresh.close()
        told = [sock.recv(1024) for sock in crowd if select.select([sock], [], [], 0)[0]]
        assert b"421 4.4.2 Idle too long while others wait, closing\r\n" in told, "one gave its slot away"
    finally:
        for sock in crowd:
            sock.close()
        gateway.stop()


def test_sessions_that_do_not_log_in_cannot_fill_submission(tmp_path: Path, database_url: str) -> None:
    gateway = started(
        tmp_path,
        database_url,
        {"submission": "max_connections = 6\nmax_unauthenticated_connections = 3"},
        login_timeout=1.5,
        evict_idle_after=60.0,
    )
    try:
        back_offices = [login(gateway), login(gateway)]
        idle = [Dialogue(gateway.port, f"127.0.3.{n}") for n in range(3)]
        assert all(t.greeting[0].startswith(b"220 ") for t in idle)
        refused = Dialogue(gateway.port, "127.0.3.9")
        assert refused.greeting == [b"421 4.3.2 Too many connections to this gateway, try again later"]
        refused.close()
        for client in back_offices:
            client.sendmail(LOGIN, [SB_A1], raw_message(b"logged in before the crowd"))
        for talk in idle:
            talk.sock.settimeout(10)
            assert talk.line() == b"421 4.7.0 Log in sooner; closing"
            assert talk.closed()
            talk.close()
        with login(gateway) as client:
            client.sendmail(LOGIN, [SB_A1], raw_message(b"logged in after the crowd"))
        for client in back_offices:
            client.quit()
    finally:
        gateway.stop()


def trickle(sock: socket.socket, data: bytes, every: float, timeout: float) -> bytes:
    """Send ``data`` a byte at a time until the gateway says something; return what it said."""
    deadline = time.monotonic() + timeout
    for byte in data:
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            return sock.recv(1024)
        assert time.monotonic() < deadline, "the gateway never cut the trickle"
        sock.sendall(bytes([byte]))
    raise AssertionError("the whole trickle went through")


def test_a_trickle_in_data_and_an_endless_session_are_cut(tmp_path: Path, database_url: str) -> None:
    gateway = started(tmp_path, database_url, data_timeout=1.0, session_timeout=3.0, idle_timeout=2.0)
    try:
        talk = Dialogue(gateway.mx_port)
        talk.send("EHLO mx.kunde-a.example")
        talk.send("MAIL FROM:<sb-a1@kunde-a.example>")
        talk.send(f"RCPT TO:<{INTAKE}>")
        assert talk.send("DATA")[0].startswith(b"354 ")
        said = trickle(talk.sock, raw_message(b"trickle") * 10, every=0.2, timeout=10)
        assert said == b"421 4.4.2 Message took too long to arrive, closing\r\n"
        talk.close()

        # A session that keeps the idle timer happy with a NOOP every 0.2 s still ends at its deadline.
        chatty = Dialogue(gateway.mx_port)
        began = time.monotonic()
        answers = []
        while time.monotonic() - began < 10:
            time.sleep(0.2)
            answers.append(chatty.send("NOOP")[0])
            if not answers[-1].startswith(b"250 "):
                break
        assert answers[-1] == b"421 4.4.2 Session too long, closing; connect again to go on", answers
        assert time.monotonic() - began >= 2.5, "cut by the session deadline"
        assert chatty.closed()
        chatty.close()
    finally:
        gateway.stop()


# --- item 9: logs stay readable --------------------------------------------------------------------------


def test_logins_leave_no_aiosmtpd_warnings_in_the_log(tmp_path: Path, database_url: str) -> None:
    # A gateway of its own: the whole log is read, after it stopped (the shared one's has other tests').
    gateway = started(tmp_path, database_url, max_message_size="64KiB")
    try:
        for n in range(3):
            with login(gateway) as client:
                client.sendmail(LOGIN, [SB_A1], raw_message(f"quiet log {n}".encode()))
    finally:
        gateway.stop()
    noise = [
        line
        for line in gateway.log
        if "auth_require_tls" in line
        or "login_data" in line
        or "Requiring AUTH" in line
        or "Warning:" in line
    ]
    assert noise == []
