"""A real ``gateway serve`` as a subprocess, with the seed's directory, for clients we did not write."""

from __future__ import annotations

import email
import email.policy
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from tests.conftest import EXAMPLE_DIRECTORY, Gateway

GATEWAY = str(Path(sys.executable).parent / "gateway")
PORTFOLIO = "makler-muster"
LOGIN = "ams@makler-muster.example"
PASSWORD = "ams-test-password-1"
REPLY_DOMAIN = "reply.gateway.test.example"
INTAKE = "neu@makler-muster.example"


@dataclass
class RunningGateway:
    """A gateway process and what a test needs to talk to it and look at its results."""

    config: Path
    maildir_root: Path
    cli: Gateway
    process: subprocess.Popen[str] | None = None
    port: int = 0
    mx_port: int = 0
    log: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def start(self, timeout: float = 30) -> None:
        self.process = subprocess.Popen(
            [GATEWAY, "--config", str(self.config), "serve"],
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ | {"PYTHONUNBUFFERED": "1"},
        )
        assert self.process.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line and self.process.poll() is not None:
                break
            self.log.append(line)
            if match := re.search(r"listening: submission on [\d.]+:(\d+)", line):
                self.port = int(match.group(1))
            if match := re.search(r"listening: mx on [\d.]+:(\d+)", line):
                self.mx_port = int(match.group(1))
            if "gateway ready" in line:
                # Keep reading stderr in the background so the pipe never fills up.
                self._reader = threading.Thread(target=self._drain, daemon=True)
                self._reader.start()
                return
        raise AssertionError("gateway did not start:\n" + "".join(self.log))

    def _drain(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=30)
        if self._reader is not None:
            self._reader.join(timeout=10)  # the log's last lines are in before anyone reads it
        if self.process.stderr is not None:
            self.process.stderr.close()
        return code

    def mailbox(self, address: str) -> list[EmailMessage]:
        """Every message in a member's Maildir, in every folder."""
        found = []
        root = self.maildir_root / PORTFOLIO / address
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.parent.name in ("new", "cur"):
                found.append(email.message_from_bytes(path.read_bytes(), policy=email.policy.default))
        return found  # type: ignore[return-value]

    def copies_of(self, marker: str) -> dict[str, list[EmailMessage]]:
        """Which member mailboxes hold a copy whose subject contains ``marker``."""
        root = self.maildir_root / PORTFOLIO
        result: dict[str, list[EmailMessage]] = {}
        if not root.exists():
            return result
        for member_dir in root.iterdir():
            matches = [m for m in self.mailbox(member_dir.name) if marker in str(m["Subject"])]
            if matches:
                result[member_dir.name] = matches
        return result

    def wait_for_copies(self, marker: str, count: int, timeout: float = 20) -> dict[str, list[EmailMessage]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            copies = self.copies_of(marker)
            if sum(len(v) for v in copies.values()) >= count:
                time.sleep(0.2)  # a late extra copy would show up now
                return self.copies_of(marker)
            time.sleep(0.05)
        return self.copies_of(marker)


def write_config(tmp_path: Path, database_url: str, **limits: object) -> Path:
    limits = {"idle_timeout": 5.0} | limits
    limit_lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in limits.items())
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[gateway]
data_dir = "data"
hostname = "gateway.test.example"

[database]
url = "{database_url}"

[listeners.submission]
port = 0

[domains]
reply_domain = "{REPLY_DOMAIN}"

[domains.intake]
"{INTAKE}" = "{PORTFOLIO}"

[listeners.mx]
port = 0

[relay]
poll_interval = 0.2
retry_base = 0.3
retry_max = 1.0

[fanout]
poll_interval = 0.2
retry_base = 0.2

[limits]
{limit_lines}
""",
        encoding="utf-8",
    )
    return path


def prepare(tmp_path: Path, database_url: str, **limits: object) -> RunningGateway:
    config = write_config(tmp_path, database_url, **limits)
    cli = Gateway(config)
    cli("secrets", "init")
    cli("directory", "load", str(EXAMPLE_DIRECTORY))
    password = tmp_path / "ams.password"
    password.write_text(PASSWORD + "\n", encoding="utf-8")
    cli("backoffice", "password", "ams", "-p", PORTFOLIO, "--password-file", str(password))
    return RunningGateway(config, tmp_path / "data" / "mail", cli)


@pytest.fixture
def running(tmp_path: Path, database_url: str) -> Iterator[RunningGateway]:
    gateway = prepare(tmp_path, database_url)
    gateway.start()
    try:
        yield gateway
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


class BackOfficeSink:
    """The back office's SMTP server in a test: an aiosmtpd server that keeps what it is given.

    ``answers`` lists replies to give to the next DATA commands instead of 250 (``"451 4.3.0 later"``);
    ``down()``/``up()`` stop and start the server on the same port.
    """

    def __init__(self, *, tls: ssl.SSLContext | None = None, login: tuple[str, str] | None = None) -> None:
        self.port = free_port()
        self.received: list[Received] = []
        self.answers: list[str] = []
        self.attempts = 0
        self.tls = tls
        self.login = login
        self.logins: list[str] = []
        self.encrypted: list[bool] = []
        self._controller: Controller | None = None

    def _authenticate(
        self, server: object, session: Session, envelope: Envelope, mechanism: str, data: object
    ) -> AuthResult:
        assert self.login is not None
        if isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == self.login:
            self.logins.append(data.login.decode())
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    async def handle_DATA(self, server: object, session: Session, envelope: Envelope) -> str:  # noqa: N802
        self.attempts += 1
        if self.answers:
            return self.answers.pop(0)
        assert isinstance(envelope.original_content, bytes)
        self.encrypted.append(getattr(session, "ssl", None) is not None)
        self.received.append(
            Received(envelope.mail_from or "", list(envelope.rcpt_tos), envelope.original_content)
        )
        return "250 2.0.0 Ok: queued"

    def up(self) -> None:
        options: dict[str, object] = {}
        if self.tls is not None:
            options |= {"tls_context": self.tls, "require_starttls": True}
        if self.login is not None:
            options |= {"auth_required": True, "auth_require_tls": self.tls is not None}
            options["authenticator"] = self._authenticate
        self._controller = Controller(
            self, hostname="127.0.0.1", port=self.port, decode_data=False, **options
        )
        self._controller.start()

    def down(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait_for(self, count: int, timeout: float = 20) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.received) < count:
            time.sleep(0.05)
        return list(self.received)


@pytest.fixture
def sink() -> Iterator[BackOfficeSink]:
    server = BackOfficeSink()
    server.up()
    try:
        yield server
    finally:
        server.down()
