"""A real synchronising client: mbsync (isync) keeps a local Maildir of SB-B1's account in Dovecot.

``gateway serve`` delivers into a private Dovecot (``[mailbox] backend = "imap"``) with every release at
``read_sync: seen``. mbsync pulls SB-B1's account into a Maildir, logged in with SB-B1's own password
over STARTTLS. Then the test does what a local mail client does: it renames a message's file to add a
flag letter (``S`` read, ``R`` answered), and the next mbsync run pushes the flag to Dovecot. From there
the gateway's flag sync must carry it to SB-B2's and GF-B's copies (DESIGN.md §4): a set ``\\Seen``
because the releases say ``seen``, a set ``\\Answered`` because ``seen`` carries ``\\Answered`` too
(gateway/domain/readsync.py, rule 3).

isync on Debian bookworm is 1.4.4: its TLS keyword is ``SSLType`` (1.5 renamed it ``TLSType``), and a
self-signed server certificate named in ``CertificateFile`` is trusted as a host certificate, so the
private Dovecot's certificate (issued to "localhost") is accepted for 127.0.0.1 (mbsync(1),
"CertificateFile").
"""

from __future__ import annotations

import email
import email.policy
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.dovecot import Dovecot
from tests.e2e.clients import send_from_backoffice
from tests.e2e.conftest import BackOfficeSink, RunningGateway, imap_gateway
from tests.seed import ADDRESS

SEEN_MESSAGE = "<mbsync-seen@ams.example>"
ANSWERED_MESSAGE = "<mbsync-answered@ams.example>"
AUDIENCE = ("SB-B1", "SB-B2", "GF-B")
CO_MEMBERS = ("SB-B2", "GF-B")


class Mbsync:
    """mbsync with its own configuration: SB-B1's account in Dovecot <-> a Maildir under ``root``."""

    def __init__(self, root: Path, dovecot: Dovecot, address: str) -> None:
        binary = shutil.which("mbsync")
        if binary is None:
            pytest.fail("mbsync is not installed: scripts/install-debian-packages.sh installs isync")
        self.binary = binary
        self.maildir = root / "mail"
        self.config = root / "mbsyncrc"
        # A MaildirStore's Path must exist: "Create Near" makes mailboxes under it, not the store itself.
        self.maildir.mkdir(parents=True)
        password = root / "imap.password"
        password.write_text(dovecot.password(address) + "\n", encoding="utf-8")
        password.chmod(0o600)
        self.config.write_text(
            f"""IMAPAccount member
Host {dovecot.host}
Port {dovecot.port}
User {address}
PassCmd "cat {password}"
SSLType STARTTLS
CertificateFile {dovecot.cert}

IMAPStore member-far
Account member

MaildirStore member-near
Path {self.maildir}/
Inbox {self.maildir}/INBOX
SubFolders Verbatim

Channel member
Far :member-far:
Near :member-near:
Patterns *
Create Near
Sync All
SyncState *
""",
            encoding="utf-8",
        )

    def sync(self) -> str:
        done = subprocess.run(
            [self.binary, "--config", str(self.config), "--verbose", "member"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"mbsync failed ({done.returncode}):\n{output}"
        return output

    def local_file(self, message_id: str) -> Path:
        """The file of the message in the local INBOX (new/ or cur/), as mbsync wrote it."""
        found = [
            path
            for folder in ("new", "cur")
            for path in (self.maildir / "INBOX" / folder).iterdir()
            if email.message_from_bytes(path.read_bytes(), policy=email.policy.default)["Message-ID"]
            == message_id
        ]
        assert len(found) == 1, f"{message_id} in the local Maildir: {found}"
        return found[0]

    def mark(self, message_id: str, letter: str) -> Path:
        """What a local mail client does to flag a message: move it to cur/ with the letter in its info."""
        path = self.local_file(message_id)
        base, _, info = path.name.partition(":2,")
        assert letter not in info, f"{path.name} carries {letter} already"
        marked = path.parent.parent / "cur" / f"{base}:2,{''.join(sorted(info + letter))}"
        path.rename(marked)
        return marked


def wait_until(condition: Callable[[], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def flags(gateway: RunningGateway, person: str, message_id: str) -> list[frozenset[str]]:
    return gateway.flags_of(ADDRESS[person], message_id)


def test_flags_a_member_sets_in_an_mbsync_maildir_reach_the_co_members(
    tmp_path: Path, database_url: str, dovecot: Dovecot, sink: BackOfficeSink
) -> None:
    gateway = imap_gateway(tmp_path, database_url, dovecot, sink)
    directory = tmp_path / "directory.yaml"
    text = directory.read_text(encoding="utf-8")
    assert text.count("read_sync: answered") == 4
    directory.write_text(text.replace("read_sync: answered", "read_sync: seen"), encoding="utf-8")
    gateway.cli("directory", "load", str(directory))
    local = Mbsync(tmp_path / "client", dovecot, ADDRESS["SB-B1"])
    gateway.start()
    try:
        send_from_backoffice(gateway, ADDRESS["SB-B1"], "Schaden mbsync gelesen", SEEN_MESSAGE)
        send_from_backoffice(gateway, ADDRESS["SB-B1"], "Schaden mbsync beantwortet", ANSWERED_MESSAGE)
        assert wait_until(
            lambda: all(
                len(flags(gateway, p, m)) == 1 for p in AUDIENCE for m in (SEEN_MESSAGE, ANSWERED_MESSAGE)
            )
        ), {p: gateway.stored(ADDRESS[p]) for p in AUDIENCE}
        # Nobody has read or answered anything yet: whatever flags appear later came from SB-B1's client.
        for person in AUDIENCE:
            for message_id in (SEEN_MESSAGE, ANSWERED_MESSAGE):
                assert flags(gateway, person, message_id) == [frozenset()], (person, message_id)

        local.sync()
        assert local.local_file(SEEN_MESSAGE).parent.name == "new", "pulled down unread"
        local.local_file(ANSWERED_MESSAGE)
        # Downloading is no reading: the server copy stays unread, so there is nothing to propagate yet.
        assert flags(gateway, "SB-B1", SEEN_MESSAGE) == [frozenset()]

        # SB-B1 reads the first message in the local client; the next sync pushes \Seen up.
        local.mark(SEEN_MESSAGE, "S")
        local.sync()
        assert flags(gateway, "SB-B1", SEEN_MESSAGE) == [frozenset({"\\Seen"})], "mbsync pushed the flag"
        assert wait_until(lambda: all(flags(gateway, p, SEEN_MESSAGE) == [{"\\Seen"}] for p in CO_MEMBERS)), {
            p: flags(gateway, p, SEEN_MESSAGE) for p in CO_MEMBERS
        }
        assert all(flags(gateway, p, ANSWERED_MESSAGE) == [frozenset()] for p in AUDIENCE), (
            "only that message"
        )

        # SB-B1 marks the second one answered (no reply through the gateway, just the flag): the
        # co-members' copies are marked answered, and stay unread, since SB-B1 did not read it.
        local.mark(ANSWERED_MESSAGE, "R")
        local.sync()
        assert flags(gateway, "SB-B1", ANSWERED_MESSAGE) == [frozenset({"\\Answered"})]
        assert wait_until(
            lambda: all(flags(gateway, p, ANSWERED_MESSAGE) == [{"\\Answered"}] for p in CO_MEMBERS)
        ), {p: flags(gateway, p, ANSWERED_MESSAGE) for p in CO_MEMBERS}
        assert all(flags(gateway, p, SEEN_MESSAGE) == [{"\\Seen"}] for p in CO_MEMBERS)

        # The next sync brings nothing back to SB-B1's client: the gateway changed only the co-members'
        # copies, and a flag set in a client is no answer for the back office.
        local.sync()
        assert local.local_file(SEEN_MESSAGE).name.endswith(":2,S")
        assert local.local_file(ANSWERED_MESSAGE).name.endswith(":2,R")
        assert sink.received == []
        for person in set(ADDRESS) - set(AUDIENCE):
            assert gateway.stored(ADDRESS[person]) == [], f"{person} may not see these"
    finally:
        gateway.stop()
