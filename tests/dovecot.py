"""A private Dovecot for tests: own config, users, Maildirs and loopback ports, in the test's process tree.

``Dovecot(root)`` writes a ``dovecot.conf`` under ``root`` that includes the shipped
``config/dovecot/dovecot.conf`` and adds what belongs to this instance: base and state directories,
passwd-files for members and for the master user the gateway logs in with (``member*master``), homes
with ``~/Maildir``, a self-signed certificate (STARTTLS on ``port``, implicit TLS on ``tls_port``) and
the log file. ``start()`` runs ``dovecot -F`` in a new session, so ``stop()`` can end the whole process
group, and a stopped instance starts again on the same ports with the same mail.

Dovecot gives no mail access to root, so when the tests run as root every Dovecot process runs as
``nobody`` (a "rootless" Dovecot: no process changes user), and ``root`` is handed to that user. The
directory is created by ``tempfile.mkdtemp`` rather than under pytest's ``tmp_path``, whose parents
root keeps private, and stays short enough for Dovecot's unix sockets.
"""

from __future__ import annotations

import contextlib
import email
import grp
import imaplib
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import ImapSettings
from gateway.tls import write_selfsigned

SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "config" / "dovecot" / "dovecot.conf"
HOST = "127.0.0.1"
MASTER_USER = "gateway"
_ROOTLESS_USER = "nobody"


class DovecotError(RuntimeError):
    """The private Dovecot did not start or stop as asked; the message ends with its log."""


@dataclass(frozen=True, slots=True)
class RunAs:
    """The unprivileged user every process of the instance runs as."""

    user: str
    group: str
    uid: int
    gid: int

    @classmethod
    def for_tests(cls) -> RunAs:
        uid = os.getuid()
        entry = pwd.getpwnam(_ROOTLESS_USER) if uid == 0 else pwd.getpwuid(uid)
        return cls(entry.pw_name, grp.getgrgid(entry.pw_gid).gr_name, entry.pw_uid, entry.pw_gid)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def dovecot_version() -> str:
    binary = shutil.which("dovecot")
    if binary is None:
        raise DovecotError(
            "dovecot is not installed: scripts/install-debian-packages.sh installs dovecot-imapd"
        )
    return subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout.strip()


class Dovecot:
    """One private Dovecot instance under ``root``; see the module docstring."""

    def __init__(
        self, root: Path, *, run_as: RunAs | None = None, imap_capability: str | None = None
    ) -> None:
        version = dovecot_version()
        if not version.startswith("2.3."):
            raise DovecotError(f"tests/dovecot.py writes Dovecot 2.3 settings; installed is {version}")
        self.root = root
        self.run_as = run_as or RunAs.for_tests()
        self.host = HOST
        self.port = free_port()
        self.tls_port = free_port()
        self.master_user = MASTER_USER
        self.master_password = secrets.token_urlsafe(12)
        self.master_password_file = root / "master.password"
        self.cert = root / "tls" / "cert.pem"
        self.key = root / "tls" / "key.pem"
        self.log_path = root / "dovecot.log"
        self._users_file = root / "users"
        self._passwords: dict[str, str] = {}
        self._process: subprocess.Popen[bytes] | None = None
        # Dovecot's own override of what CAPABILITY says after login (e.g. a list without BINARY).
        self.imap_capability = imap_capability
        self._write_files()

    # --- users ----------------------------------------------------------------------------------------

    def add_user(self, address: str) -> str:
        """Create the member ``address`` (once) and return its password; Dovecot rereads the file itself."""
        if any(c in address for c in ":\n\r/") or not address:
            raise ValueError(f"not usable as a Dovecot user name here: {address!r}")
        if address not in self._passwords:
            self._passwords[address] = secrets.token_urlsafe(12)
            lines = [f"{user}:{{PLAIN}}{password}::::::\n" for user, password in self._passwords.items()]
            temporary = self._users_file.with_suffix(".tmp")
            temporary.write_text("".join(lines))
            self._give(temporary)
            temporary.replace(self._users_file)
        return self._passwords[address]

    def password(self, address: str) -> str:
        return self._passwords[address]

    def home(self, address: str) -> Path:
        return self.root / "home" / address

    def maildir(self, address: str) -> Path:
        """The member's Maildir (INBOX: cur/ new/ tmp/; folders: .<Folder>/), once Dovecot created it."""
        return self.home(address) / "Maildir"

    # --- settings for the code under test, and a client we did not write ------------------------------

    def imap_settings(self, *, tls: str = "none", folder: str = "INBOX") -> ImapSettings:
        """``[mailbox.imap]`` for this instance: master-user login; TLS on ``tls_port``, else on ``port``."""
        return ImapSettings(
            host=self.host,
            port=self.tls_port if tls == "tls" else self.port,
            tls=tls,  # type: ignore[arg-type]
            master_user=self.master_user,
            master_password_file=self.master_password_file,
            folder=folder,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this instance's self-signed certificate."""
        return ssl.create_default_context(cafile=str(self.cert))

    def client(self, address: str, *, master: bool = False) -> imaplib.IMAP4:
        """Python's imaplib logged in as the member (with its password, or as ``member*master``)."""
        connection = imaplib.IMAP4(self.host, self.port, timeout=10)
        if master:
            connection.login(f"{address}*{self.master_user}", self.master_password)
        else:
            connection.login(address, self._passwords[address])
        return connection

    # --- what a member's mail client does (imaplib, logged in as the member) ---------------------------

    def copies(self, address: str, copy_id: str) -> list[tuple[str, int]]:
        """(folder, UID) of every message whose X-Gateway-Copy-Id is ``copy_id``, in every folder."""
        client = self.client(address)
        try:
            return [
                (folder, uid) for folder in _folders(client) for uid in _copy_uids(client, folder, copy_id)
            ]
        finally:
            client.logout()

    def copy_counts(self, address: str) -> Counter[str]:
        """How many messages carry each X-Gateway-Copy-Id, over every folder (one session for all)."""
        counts: Counter[str] = Counter()
        client = self.client(address)
        try:
            for folder in _folders(client):
                _ok(client.select(_quote(folder), readonly=True))
                if not _ok(client.uid("SEARCH", "ALL"))[0]:
                    continue
                for item in _ok(client.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (X-Gateway-Copy-Id)])")):
                    if isinstance(item, tuple):
                        counts.update(
                            v.strip()
                            for v in email.message_from_bytes(item[1]).get_all("X-Gateway-Copy-Id", [])
                        )
        finally:
            client.logout()
        return counts

    def member_moves(self, address: str, copy_id: str, folder: str) -> None:
        """Move every instance of the copy into ``folder`` (created if need be) with UID MOVE."""
        client = self.client(address)
        try:
            if folder not in _folders(client):
                _ok(client.create(_quote(folder)))
            for source in _folders(client):
                if source == folder:
                    continue
                uids = _copy_uids(client, source, copy_id)
                if uids:
                    _ok(client.uid("MOVE", ",".join(map(str, uids)), _quote(folder)))
        finally:
            client.logout()

    def member_stores(self, address: str, copy_id: str, change: str, flags: str) -> None:
        """``UID STORE <uids> <change> <flags>`` on every instance: ``("+FLAGS", r"(\\Seen)")``."""
        client = self.client(address)
        try:
            for folder in _folders(client):
                uids = _copy_uids(client, folder, copy_id)
                if uids:
                    _ok(client.uid("STORE", ",".join(map(str, uids)), change, flags))
        finally:
            client.logout()

    def message(self, address: str, folder: str, uid: int, *, binary: bool = True) -> bytes:
        """The message as the member's client fetches it: ``BINARY.PEEK[]`` (RFC 3516), the bytes as
        stored, NUL included; with ``binary=False`` ``BODY.PEEK[]``, where Dovecot shows NUL as 0x80."""
        client = self.client(address)
        try:
            _ok(client.select(_quote(folder), readonly=True))
            item = "BINARY.PEEK[]" if binary else "BODY.PEEK[]"
            data = _ok(client.uid("FETCH", str(uid), f"({item})"))
            for item in data:
                if isinstance(item, tuple):
                    return item[1]
            raise KeyError(f"{folder}/{uid}")
        finally:
            client.logout()

    # --- the process ----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start Dovecot and wait until it greets on both ports."""
        if self.running:
            return
        # A master killed while it held this dotlock would make the next one wait for it to go stale
        # (some ten seconds) before it serves anybody.
        self._instances_lock.unlink(missing_ok=True)
        # What Dovecot says before its log process runs goes to dovecot.stderr.
        with open(self.root / "dovecot.stderr", "ab") as stderr:
            self._process = subprocess.Popen(
                ["dovecot", "-F", "-c", str(self.root / "dovecot.conf")],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
                **self._as_run_user(),
            )
        # Ready when both ports listen and the master has recorded itself in state/instances (under a
        # dotlock a stop right then would leave behind). Probing with a connection instead would leave
        # login processes behind that the master waits for (a second) when it is stopped right away.
        deadline = time.monotonic() + timeout
        while not (
            _listening(self.host, {self.port, self.tls_port})
            and (self.root / "state" / "instances").exists()
            and not self._instances_lock.exists()
        ):
            if self._process.poll() is not None:
                raise DovecotError(f"dovecot exited with status {self._process.returncode}{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise DovecotError(f"dovecot did not listen within {timeout} s{self._log_tail()}")
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        """End the instance: SIGTERM to the process group, and wait until none of its processes is left.

        Dovecot's master stops every service at once, but then waits a second for its log process to
        drain the log pipes of mail processes that just ended. Once only those two are left (nothing
        holds mail or a listening socket any more) the group is killed, which saves that second in
        every test; after ``timeout`` it is killed whatever is left.
        """
        process, self._process = self._process, None
        if process is None:
            return
        group = process.pid  # start_new_session: the master leads its own process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while members := _group_members(group):
            only_logging = all(name in ("dovecot", "log") for name in members.values())
            if only_logging or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
            time.sleep(0.005)
        process.wait(timeout)

    @property
    def _instances_lock(self) -> Path:
        return self.root / "state" / "instances.lock"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # --- internals ------------------------------------------------------------------------------------

    def _log_tail(self) -> str:
        tail = "\n".join(self.log_text().splitlines()[-20:])
        return f"\n--- {self.log_path} ---\n{tail}" if tail else ""

    def _as_run_user(self) -> dict[str, object]:
        if os.getuid() != 0:
            return {}
        return {"user": self.run_as.uid, "group": self.run_as.gid, "extra_groups": []}

    def _give(self, path: Path) -> None:
        if os.getuid() == 0:
            os.chown(path, self.run_as.uid, self.run_as.gid)

    def _write_files(self) -> None:
        root = self.root
        for directory in (root, root / "home", root / "tls"):
            directory.mkdir(mode=0o700, exist_ok=True)
        write_selfsigned(self.cert, self.key, "localhost")
        self.master_password_file.write_text(self.master_password + "\n")
        (root / "master-users").write_text(f"{self.master_user}:{{PLAIN}}{self.master_password}\n")
        self._users_file.write_text("")
        (root / "dovecot.conf").write_text(
            f"""# A private test instance (tests/dovecot.py); the shared settings come from the shipped file.
!include {SHIPPED_CONFIG}

base_dir = {root}/run
state_dir = {root}/state
log_path = {self.log_path}
default_internal_user = {self.run_as.user}
default_internal_group = {self.run_as.group}
default_login_user = {self.run_as.user}
{f"imap_capability = {self.imap_capability}" if self.imap_capability else ""}

# Refused logins are answered at once: tests try wrong passwords on purpose, all from 127.0.0.1,
# which anvil's auth penalty would otherwise slow down more with every failure.
auth_failure_delay = 0
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}

ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{self.key}

passdb {{
  driver = passwd-file
  master = yes
  # The member must exist in the next passdb too: an unknown member is refused cleanly, at once,
  # rather than after Dovecot's failed userdb lookup ("internal error", four seconds later).
  pass = yes
  args = {root}/master-users
}}
passdb {{
  driver = passwd-file
  args = {self._users_file}
}}
userdb {{
  driver = passwd-file
  args = {self._users_file}
  default_fields = home={root}/home/%u
}}

service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {self.port}
  }}
  inet_listener imaps {{
    address = {HOST}
    port = {self.tls_port}
    ssl = yes
  }}
}}
"""
        )
        # The run user owns everything; the test process (root or that very user) reads it all.
        if os.getuid() == 0:
            for path in [root, *root.rglob("*")]:
                os.chown(path, self.run_as.uid, self.run_as.gid)
            root.chmod(0o711)


def _ok(answer: tuple[str, list[Any]]) -> list[Any]:
    status, data = answer
    if status != "OK":
        raise imaplib.IMAP4.error(f"{status}: {data!r}")
    return data


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _folders(client: imaplib.IMAP4) -> list[str]:
    names = []
    for line in _ok(client.list()):
        # (\HasNoChildren) "." INBOX   or   (\HasNoChildren) "." "Two words"
        attributes, name = line.decode().split(") ", 1)
        if "\\noselect" in attributes.lower() or "\\nonexistent" in attributes.lower():
            continue  # a hierarchy level ("Archiv" of "Archiv.2026"), not a folder holding mail
        name = name.split(" ", 1)[1]
        names.append(name[1:-1].replace('\\"', '"').replace("\\\\", "\\") if name.startswith('"') else name)
    return names


def _copy_uids(client: imaplib.IMAP4, folder: str, copy_id: str) -> list[int]:
    """The UIDs in ``folder`` whose X-Gateway-Copy-Id header is exactly ``copy_id``."""
    _ok(client.select(_quote(folder)))
    found = _ok(client.uid("SEARCH", "HEADER", "X-Gateway-Copy-Id", copy_id))[0].split()
    if not found:
        return []
    uids = []
    data = _ok(
        client.uid("FETCH", b",".join(found).decode(), "(UID BODY.PEEK[HEADER.FIELDS (X-Gateway-Copy-Id)])")
    )
    for item in data:
        if isinstance(item, tuple):
            header = email.message_from_bytes(item[1])
            uid = int(item[0].split(b"UID ")[1].split()[0])
            if [value.strip() for value in header.get_all("X-Gateway-Copy-Id", [])] == [copy_id]:
                uids.append(uid)
    return uids


def _listening(host: str, ports: set[int]) -> bool:
    """Whether every port in ``ports`` is in LISTEN state on ``host`` (IPv4), from /proc/net/tcp."""
    address = int.from_bytes(socket.inet_aton(host), "little")  # the kernel prints it in host order
    wanted = {f"{address:08X}:{port:04X}" for port in ports}
    with open("/proc/net/tcp") as table:
        listening = {fields[1] for fields in (line.split() for line in table) if fields[3] == "0A"}
    return wanted <= listening


def _group_members(group: int) -> dict[int, str]:
    """The running processes of ``group`` (zombies are not) by pid, named as Dovecot titles them.

    Dovecot's processes are titled "dovecot/<service>"; the master keeps its command line.
    """
    members: dict[int, str] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rpartition(")")[2].split()
            title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        # After the command name in parentheses come state, ppid, pgrp, ...
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == group:
            members[int(proc.name)] = title.removeprefix("dovecot/").rpartition("/")[2]
    return members


@contextlib.contextmanager
def private_dovecot(*, imap_capability: str | None = None) -> Iterator[Dovecot]:
    """A started private Dovecot in a fresh temporary directory; stopped and removed afterwards.

    ``imap_capability`` replaces the capabilities Dovecot announces after login (its setting of that
    name), for a server that lacks one the gateway would use."""
    root = Path(tempfile.mkdtemp(prefix="gw-dovecot-"))
    try:
        dovecot = Dovecot(root, imap_capability=imap_capability)
        dovecot.start()
        try:
            yield dovecot
        finally:
            dovecot.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
