"""A real ``gateway serve`` as a subprocess, with the seed's directory, for clients we did not write."""

from __future__ import annotations

import contextlib
import email
import email.policy
import functools
import imaplib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import InitVar, dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from tests import cpu
from tests.conftest import EXAMPLE_DIRECTORY, Gateway, a_database, seed_database
from tests.dovecot import Dovecot, private_dovecot
from tests.dovecot import _folders as imap_folders
from tests.dovecot import _ok as imap_ok
from tests.dovecot import _quote as imap_quote
from tests.preloaded import PreloadedProcess, launch_gateway
from tests.seed import ADDRESS

GATEWAY = str(Path(sys.executable).parent / "gateway")
PORTFOLIO = "makler-muster"
LOGIN = "ams@makler-muster.example"
PASSWORD = "ams-test-password-1"
REPLY_DOMAIN = "reply.gateway.test.example"
INTAKE = "neu@makler-muster.example"

# --- the members' mailboxes as their mail clients see them -----------------------------------------------

# The Maildir info letters (cr.yp.to/proto/maildir.html) under the IMAP names Dovecot gives them.
MAILDIR_FLAGS = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "P": "$Forwarded",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}


@dataclass(frozen=True)
class StoredCopy:
    """One message in a member's mailbox: its folder, its flags by IMAP name, and its content."""

    folder: str
    flags: frozenset[str]
    message: EmailMessage


@functools.lru_cache(maxsize=8192)
def parsed(raw: bytes) -> EmailMessage:
    """``raw`` as a message, parsed once: a test polls the members' mailboxes, which hold the same
    messages poll after poll (the module's gateway's and earlier tests' too), and parsing them again
    each time was most of a waiting test's CPU. A test must not change what it reads."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


class Mailboxes(Protocol):
    """What a test may look at in the members' mailboxes, the same whichever backend holds them."""

    def create(self, address: str) -> None:
        """Make sure ``address`` has a mailbox the gateway can deliver to (a member outside the seed)."""

    def addresses(self) -> list[str]:
        """The members whose mailboxes may hold mail."""

    def read(self, address: str) -> list[StoredCopy]:
        """Every message of the member, in every folder, without changing any flag."""

    def close(self) -> None: ...


class MaildirMailboxes:
    """The gateway's Maildirs (``<root>/<portfolio>/<address>/``), read from the files.

    A member's mail in several portfolios reads as one mailbox, as one IMAP account would show it.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def create(self, address: str) -> None:
        pass  # the gateway creates a Maildir on its first delivery

    def addresses(self) -> list[str]:
        if not self.root.exists():
            return []
        # Only folders: the root also holds the storage marker of the nodes (gateway.stages.nodes).
        portfolios = [folder for folder in self.root.iterdir() if folder.is_dir()]
        return sorted({member.name for portfolio in portfolios for member in portfolio.iterdir()})

    def read(self, address: str) -> list[StoredCopy]:
        found = []
        for home in sorted(self.root.glob(f"*/{address}")):
            for path in sorted(home.rglob("*")):
                if not (path.is_file() and path.parent.name in ("new", "cur")):
                    continue
                folder = path.parent.parent.relative_to(home).as_posix()
                info = path.name.partition(":2,")[2]
                found.append(
                    StoredCopy(
                        "INBOX" if folder == "." else folder.removeprefix("."),
                        frozenset(MAILDIR_FLAGS.get(letter, letter) for letter in info),
                        parsed(path.read_bytes()),
                    )
                )
        return found

    def close(self) -> None:
        pass


class ImapMailboxes:
    """Members' mailboxes in a Dovecot, read with imaplib logged in as each member.

    Folders are opened read-only and bodies fetched with BODY.PEEK, so reading sets no \\Seen that the
    gateway's flag sync would carry to co-members. One session per member is kept between reads (tests
    poll often); a session that broke (Dovecot restarted) is replaced once.
    """

    def __init__(self, dovecot: Dovecot) -> None:
        self.dovecot = dovecot
        self._addresses: list[str] = []
        self._sessions: dict[str, imaplib.IMAP4] = {}
        for address in ADDRESS.values():  # the seed's members, each a Dovecot user
            self.create(address)

    def create(self, address: str) -> None:
        self.dovecot.add_user(address)
        if address not in self._addresses:
            self._addresses.append(address)

    def addresses(self) -> list[str]:
        return list(self._addresses)

    def read(self, address: str) -> list[StoredCopy]:
        try:
            return self._read(self._session(address))
        except (OSError, imaplib.IMAP4.abort):
            self._drop(address)
            return self._read(self._session(address))

    def _session(self, address: str) -> imaplib.IMAP4:
        if address not in self._sessions:
            self._sessions[address] = self.dovecot.client(address)
        return self._sessions[address]

    def _drop(self, address: str) -> None:
        session = self._sessions.pop(address, None)
        if session is not None:
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                session.shutdown()

    @staticmethod
    def _read(session: imaplib.IMAP4) -> list[StoredCopy]:
        found = []
        for folder in imap_folders(session):
            (exists,) = imap_ok(session.select(imap_quote(folder), readonly=True))
            if int(exists) == 0:
                continue
            for item in imap_ok(session.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")):
                if isinstance(item, tuple):
                    # \Recent belongs to the session, not to the message.
                    flags = {flag.decode() for flag in imaplib.ParseFlags(item[0])} - {"\\Recent"}
                    found.append(StoredCopy(folder, frozenset(flags), parsed(item[1])))
        return found

    def close(self) -> None:
        for address in list(self._sessions):
            self._drop(address)


@dataclass
class RunningGateway:
    """A gateway process and what a test needs to talk to it and look at its results."""

    config: Path
    maildir_root: Path
    cli: Gateway
    given_mailboxes: InitVar[Mailboxes | None] = None
    """Where the members' mailboxes are; None: the gateway's Maildirs under ``maildir_root``."""
    mailboxes: Mailboxes = field(init=False)
    process: PreloadedProcess | subprocess.Popen[str] | None = None
    port: int = 0
    mx_port: int = 0
    log: list[str] = field(default_factory=list)
    database_url: str = ""
    _reader: threading.Thread | None = None

    def __post_init__(self, given_mailboxes: Mailboxes | None) -> None:
        self.mailboxes = given_mailboxes or MaildirMailboxes(self.maildir_root)

    # A gateway starts in 2-3 CPU seconds, but on a machine shared by several runs that has taken over 30 s
    # of wall time: the limit only catches a gateway that hangs (issue 14, item 8).
    def start(self, timeout: float = 120) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self, env: Mapping[str, str] | None = None) -> None:
        """Start ``gateway serve`` without waiting for it (``wait_ready`` does)."""
        cpu.STARTS[0] += 1
        self.process = launch_gateway(
            [GATEWAY, "--config", str(self.config), "serve"],
            os.environ | {"PYTHONUNBUFFERED": "1"} | dict(env or {}),
        )

    def wait_ready(self, timeout: float = 120) -> None:
        """Read the log until the gateway says it is ready, noting its ports; a gateway not ready in
        time is killed and the test fails with its log."""
        assert self.process is not None
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
        if self.process.poll() is None:
            # Not ready in time: the caller's cleanup never runs for a start that failed, so the
            # process is ended here rather than left serving (and costing CPU) for the rest of the run.
            self.process.kill()
            self.process.wait(timeout=30)
        # Closed here whether it was killed or refused to start: a pipe left open is collected later,
        # inside another test, whose ResourceWarning then fails that test instead of this one.
        self.process.stderr.close()
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
        # The test's own IMAP sessions end with the gateway; a later read opens new ones.
        self.mailboxes.close()
        return code

    def restarted(self) -> RunningGateway:
        """Another process of this gateway (same configuration, database and mailboxes), started."""
        again = RunningGateway(
            self.config, self.maildir_root, self.cli, self.mailboxes, database_url=self.database_url
        )
        again.start()
        return again

    def stored(self, address: str) -> list[StoredCopy]:
        """Every message in a member's mailbox, in every folder, with its folder and flags."""
        return self.mailboxes.read(address)

    def mailbox(self, address: str) -> list[EmailMessage]:
        """Every message in a member's mailbox, in every folder."""
        return [copy.message for copy in self.stored(address)]

    def flags_of(self, address: str, message_id: str) -> list[frozenset[str]]:
        """The flags of every copy of the message ``message_id`` in the member's mailbox."""
        return [c.flags for c in self.stored(address) if c.message["Message-ID"] == message_id]

    def copies_of(self, marker: str) -> dict[str, list[EmailMessage]]:
        """Which member mailboxes hold a copy whose subject contains ``marker``."""
        result: dict[str, list[EmailMessage]] = {}
        for address in self.mailboxes.addresses():
            matches = [m for m in self.mailbox(address) if marker in str(m["Subject"])]
            if matches:
                result[address] = matches
        return result

    def wait_for_copies(self, marker: str, count: int, timeout: float = 20) -> dict[str, list[EmailMessage]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            copies = self.copies_of(marker)
            if sum(len(v) for v in copies.values()) >= count:
                self.settled("copy")  # a late extra copy would be in its mailbox now
                return self.copies_of(marker)
            time.sleep(0.05)
        return self.copies_of(marker)

    def settled(self, *kinds: str, timeout: float = 60) -> None:
        """Wait until nothing is pending in the gateway's queues (copies, flags, removals, relays; or only
        in those of ``kinds``, as `gateway queue list` names them).

        The barrier for a test that asserts something did NOT happen: every copy, removal and relay is
        queued in the transaction that decides it, so once none is pending, whatever was decided has
        been carried out (or held), and what the test finds will not change by itself. A timeout only
        catches a gateway that hangs.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = self.cli("queue", "list", "--state", "pending", "--json")
            waiting = [item for item in json.loads(result.stdout) if not kinds or item["kind"] in kinds]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the queues did not empty within {timeout} s: {waiting[:5]}")
            time.sleep(0.05)


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

[listeners.admin_http]
port = 0

[relay]
poll_interval = 0.2
retry_base = 0.3
retry_max = 1.0

[fanout]
poll_interval = 0.2
retry_base = 0.2

# Quick looks for the reconcile runs and held replies that a CLI command records (the default is 5 s).
[reconcile]
poll_interval = 0.5

[limits]
{limit_lines}
""",
        encoding="utf-8",
    )
    return path


def prepare(
    tmp_path: Path, database_url: str, *, dovecot: Dovecot | None = None, **limits: object
) -> RunningGateway:
    """A gateway with the seed's directory, not started; its mailboxes are in ``dovecot`` if given
    (every seed member a Dovecot user, ``[mailbox] backend = "imap"``), else Maildirs in its data dir."""
    config = write_config(tmp_path, database_url, **limits)
    mailboxes: Mailboxes | None = None
    if dovecot is not None:
        mailboxes = ImapMailboxes(dovecot)
        settings = dovecot.imap_settings(tls="none")
        with config.open("a", encoding="utf-8") as file:
            file.write(
                f'\n[mailbox]\nbackend = "imap"\n\n[mailbox.imap]\nhost = "{settings.host}"\n'
                f'port = {settings.port}\ntls = "none"\nmaster_user = "{settings.master_user}"\n'
                f'master_password_file = "{settings.master_password_file}"\n'
            )
    cli = Gateway(config)
    cli("secrets", "init")
    password = tmp_path / "ams.password"
    password.write_text(PASSWORD + "\n", encoding="utf-8")

    def seed() -> None:
        cli("directory", "load", str(EXAMPLE_DIRECTORY))
        cli("backoffice", "password", "ams", "-p", PORTFOLIO, "--password-file", str(password))

    # The CLI seeds once per worker and mailbox backend; every further gateway gets a copy of its rows.
    seed_database(database_url, f"e2e-{'imap' if dovecot else 'maildir'}", seed)
    return RunningGateway(config, tmp_path / "data" / "mail", cli, mailboxes, database_url=database_url)


def configure(
    gateway: RunningGateway, sink: BackOfficeSink, tmp_path: Path, ams_version: str = "4.8.0.64470"
) -> None:
    """The example directory with the back office's relay pointed at the sink, at this ams version."""
    text = EXAMPLE_DIRECTORY.read_text(encoding="utf-8")
    text = text.replace("port: 2526", f"port: {sink.port}")
    text = re.sub(r"ams_version: [\d.]+", f"ams_version: {ams_version}", text)
    directory = tmp_path / "directory.yaml"
    directory.write_text(text, encoding="utf-8")
    gateway.cli("directory", "load", str(directory))


def imap_gateway(tmp_path: Path, database_url: str, dovecot: Dovecot, sink: BackOfficeSink) -> RunningGateway:
    """A prepared gateway whose members' mailboxes are in ``dovecot``, relaying to ``sink``."""
    gateway = prepare(tmp_path, database_url, dovecot=dovecot)
    configure(gateway, sink, tmp_path)
    return gateway


@pytest.fixture(params=["maildir", "imap"])
def mailbox_backend(request: pytest.FixtureRequest) -> str:
    """Where the gateway under test keeps members' mailboxes; the suites run once for each.

    A test about something no mailbox takes part in pins it: ``@MAILDIR_ONLY``.
    """
    return str(request.param)


MAILDIR_ONLY = pytest.mark.parametrize("mailbox_backend", ["maildir"])


@pytest.fixture
def mailbox_server(mailbox_backend: str, request: pytest.FixtureRequest) -> Dovecot | None:
    """The private Dovecot holding the mailboxes for ``mailbox_backend`` "imap"; None for Maildir."""
    if mailbox_backend == "imap":
        dovecot: Dovecot = request.getfixturevalue("dovecot")
        return dovecot
    return None


@pytest.fixture
def running(tmp_path: Path, database_url: str, mailbox_server: Dovecot | None) -> Iterator[RunningGateway]:
    gateway = prepare(tmp_path, database_url, dovecot=mailbox_server)
    gateway.start()
    try:
        yield gateway
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.stop()
        gateway.mailboxes.close()


@pytest.fixture(scope="module", params=["maildir", "imap"])
def module_mailbox_backend(request: pytest.FixtureRequest) -> str:
    """Like ``mailbox_backend``, for a gateway shared by the tests of one module."""
    return str(request.param)


@pytest.fixture(scope="module")
def shared_running(
    tmp_path_factory: pytest.TempPathFactory,
    module_database_kind: str,
    module_mailbox_backend: str,
    request: pytest.FixtureRequest,
) -> Iterator[RunningGateway]:
    """A running gateway shared by the tests of a module that each send mail of their own (a marker of
    their own in the subject) and look only at that: starting a gateway is most of such a test's time.

    It has a database and, for "imap", a Dovecot of its own. A test that counts what the gateway did
    overall, stops it, or changes its directory needs its own (``running``).
    """
    with a_shared_gateway(tmp_path_factory, module_database_kind, module_mailbox_backend, request) as gateway:
        yield gateway


@contextlib.contextmanager
def a_shared_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    database_kind: str,
    mailbox_backend: str,
    request: pytest.FixtureRequest,
    sink: BackOfficeSink | None = None,
    before_start: Callable[[RunningGateway, Path], None] | None = None,
    **limits: object,
) -> Iterator[RunningGateway]:
    """A started gateway with a database and, for "imap", a Dovecot of its own; relaying to ``sink`` if
    given, with ``limits`` as in ``prepare``, and what ``before_start`` does to it (given the gateway and
    its folder) before it starts. Stopped on leaving."""
    place = tmp_path_factory.mktemp("gateway")
    with contextlib.ExitStack() as stack:
        dovecot = stack.enter_context(private_dovecot()) if mailbox_backend == "imap" else None
        database_url = stack.enter_context(a_database(database_kind, place, request))
        gateway = prepare(place, database_url, dovecot=dovecot, **limits)
        if sink is not None:
            configure(gateway, sink, place)
        if before_start is not None:
            before_start(gateway, place)
        gateway.start()
        try:
            yield gateway
        finally:
            if gateway.process is not None and gateway.process.poll() is None:
                gateway.stop()
            gateway.mailboxes.close()


@pytest.fixture(scope="module")
def shared_sink() -> Iterator[BackOfficeSink]:
    """The back office's SMTP server for ``shared_relaying``; a test gets it through ``backoffice``."""
    with running_sink() as server:
        yield server


@pytest.fixture(scope="module")
def shared_limits() -> dict[str, object]:
    """The ``[limits]`` of ``shared_relaying`` beyond ``write_config``'s; a module overrides this."""
    return {}


@pytest.fixture(scope="module")
def shared_relaying(
    tmp_path_factory: pytest.TempPathFactory,
    module_database_kind: str,
    module_mailbox_backend: str,
    shared_sink: BackOfficeSink,
    shared_limits: dict[str, object],
    request: pytest.FixtureRequest,
) -> Iterator[RunningGateway]:
    """Like ``shared_running``, with the back office's relay pointed at ``shared_sink``. A test uses it
    together with ``backoffice``, which makes sure no earlier test's work is still under way."""
    with a_shared_gateway(
        tmp_path_factory, module_database_kind, module_mailbox_backend, request, shared_sink, **shared_limits
    ) as gateway:
        yield gateway


@pytest.fixture
def backoffice(shared_relaying: RunningGateway, shared_sink: BackOfficeSink) -> Iterator[BackOfficeSink]:
    """The shared sink as this test's own: up, and emptied once the shared gateway has carried out
    (relayed, retried, held) all that earlier tests left pending, so all it receives is this test's.

    The gateway's log lines written during the test are printed, which pytest shows when it failed.
    """
    shared_sink.reset()
    shared_relaying.settled()
    shared_sink.reset()
    logged = len(shared_relaying.log)
    try:
        yield shared_sink
    finally:
        shared_sink.reset()  # a test that took it down leaves it up for the next one
        print("".join(shared_relaying.log[logged:]))


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

    def reset(self) -> None:
        """Forget what was received and answered so far, and be up again if a test took it down."""
        self.received.clear()
        self.answers.clear()
        self.attempts = 0
        self.logins.clear()
        self.encrypted.clear()
        if self._controller is None:
            self.up()

    def down(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait_for(self, count: int, timeout: float = 20) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.received) < count:
            time.sleep(0.05)
        return list(self.received)


@contextlib.contextmanager
def running_sink() -> Iterator[BackOfficeSink]:
    """A back-office SMTP server, up until the block ends."""
    server = BackOfficeSink()
    server.up()
    try:
        yield server
    finally:
        server.down()


@pytest.fixture
def sink() -> Iterator[BackOfficeSink]:
    """This test's own back-office SMTP server."""
    with running_sink() as server:
        yield server
