"""A disk-full outage of the Maildirs, end to end (issue 13, item 6): the real `gateway serve`, a real
SMTP client as the back office, the members' Maildirs on a small tmpfs that is filled to the last byte.

While the disk is full every copy fails, and after ``max_attempts`` it is held, and the back office gets
one delay notice per message (RFC 3464, from <>, at its relay sink); once space is freed,
every copy is delivered without anyone doing anything (a probe per mailbox, and the first copy written
releases the rest). With a probe interval of an hour, `gateway queue retry` is what an admin does.

Mounting needs root (CI runs as root): without root the test is skipped on a workstation and fails in
CI, so that the outage is never silently left untested.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dovecot import Dovecot
from tests.e2e.clients import message, smtp
from tests.e2e.conftest import LOGIN, BackOfficeSink, RunningGateway, configure, prepare
from tests.seed import ADDRESS

AUDIENCE_OF_SB_B1 = 3  # SB-B1, SB-B2, GF-B (DESIGN.md §3)


@contextlib.contextmanager
def tmpfs(mount: Path, options: str = "") -> Iterator[Path]:
    """A 2 MiB tmpfs at ``mount``; mounting needs root (see the module docstring)."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the disk-full test mounts a tmpfs and must run as root in CI")
        pytest.skip("mounting a tmpfs needs root (CI runs this test as root)")
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=2m{options}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """Where the gateway keeps its Maildirs (``data/mail``), on a small tmpfs."""
    with tmpfs(tmp_path / "data" / "mail") as mount:
        yield mount


def fill(disk: Path) -> Path:
    """Write a file until the disk has no byte left; returns it (delete it to free the space)."""
    # Beside the portfolios' folders, where no reader of mailboxes looks.
    (disk / ".filler").mkdir(exist_ok=True)
    filler = disk / ".filler" / "filler"
    # Unbuffered: a buffered file keeps what a short write left over and raises ENOSPC again at close,
    # which happens whenever the free space is not a multiple of the block written (the node's storage
    # marker in the Maildir root takes a page of the tmpfs).
    with filler.open("wb", buffering=0) as file, contextlib.suppress(OSError):
        while True:
            file.write(b"\0" * 65536)
    with filler.open("ab") as file, pytest.raises(OSError, match="No space left on device"):
        _write_through(file.fileno(), b"\0" * 4096)
    return filler


def _write_through(fd: int, data: bytes) -> None:
    os.write(fd, data)
    os.fsync(fd)


def queue(gateway: RunningGateway, *args: str) -> list[dict[str, object]]:
    return list(json.loads(gateway.cli("queue", *args, "--json").stdout))


def wait_until(condition: object, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return bool(condition())  # type: ignore[operator]


def send(gateway: RunningGateway, marker: str, count: int) -> None:
    with smtp(gateway) as client:
        for n in range(count):
            client.send_message(message(ADDRESS["SB-B1"], f"{marker} {n}"))


def test_a_full_disk_strands_no_copy(
    tmp_path: Path,
    database_url: str,
    small_disk: Path,
    sink: BackOfficeSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_FANOUT__MAX_ATTEMPTS", "2")
    monkeypatch.setenv("GATEWAY_FANOUT__HELD_RETRY", "1.0")
    monkeypatch.setenv("GATEWAY_FANOUT__DELAY_NOTICE_AFTER", "1.0")
    gateway = prepare(tmp_path, database_url)
    configure(gateway, sink, tmp_path)
    gateway.start()
    try:
        filler = fill(small_disk)
        send(gateway, "Voll", 5)
        copies = 5 * AUDIENCE_OF_SB_B1
        assert wait_until(lambda: len(queue(gateway, "list", "--state", "held")) == copies), gateway.log[-20:]
        held = queue(gateway, "list", "--state", "held")
        assert all("No space left on device" in str(item["last_error"]) for item in held)
        assert gateway.copies_of("Voll") == {}
        # The back office hears of it: one delay notice per message, from <>, to the mail's sender.
        notices = sink.wait_for(5)
        assert len(notices) == 5
        for notice in notices:
            assert notice.mail_from == "<>"
            assert notice.rcpt_tos == [LOGIN]
            assert notice.message.get_content_type() == "multipart/report"
            assert str(notice.message["Subject"]).startswith("Verzögert / Delayed: Voll ")
            assert b"Action: delayed" in notice.data

        filler.unlink()  # the admin frees space, and does nothing else
        found = gateway.wait_for_copies("Voll", copies, timeout=30)
        assert sum(len(v) for v in found.values()) == copies
        assert sorted(found) == sorted(ADDRESS[p] for p in ("SB-B1", "SB-B2", "GF-B"))
        assert queue(gateway, "list") == []
        assert len(sink.received) == 5, "one delay notice per message, no more"
    finally:
        gateway.stop()

    # Probing once an hour: the admin does not wait for it.
    monkeypatch.setenv("GATEWAY_FANOUT__HELD_RETRY", "3600")
    gateway = gateway.restarted()
    try:
        filler = fill(small_disk)
        send(gateway, "Nochmal", 1)
        assert wait_until(lambda: len(queue(gateway, "list", "--state", "held")) == AUDIENCE_OF_SB_B1)
        filler.unlink()
        retried = queue(gateway, "retry", "--all", "--state", "held")
        assert len(retried) == AUDIENCE_OF_SB_B1
        found = gateway.wait_for_copies("Nochmal", AUDIENCE_OF_SB_B1, timeout=30)
        assert sum(len(v) for v in found.values()) == AUDIENCE_OF_SB_B1
        assert queue(gateway, "list") == []
    finally:
        gateway.stop()
    shutil.rmtree(small_disk, ignore_errors=True)


def test_a_full_disk_under_dovecot_strands_no_copy(
    tmp_path: Path, database_url: str, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same outage with ``[mailbox] backend = "imap"``: Dovecot's mail store is full, its APPENDs
    fail, and once space is freed every copy is there as the members' IMAP clients see it."""
    run_as = dovecot.run_as
    with tmpfs(dovecot.root / "home", f",mode=0700,uid={run_as.uid},gid={run_as.gid}") as disk:
        monkeypatch.setenv("GATEWAY_FANOUT__MAX_ATTEMPTS", "2")
        monkeypatch.setenv("GATEWAY_FANOUT__HELD_RETRY", "1.0")
        gateway = prepare(tmp_path, database_url, dovecot=dovecot)
        gateway.start()
        try:
            filler = fill(disk)
            send(gateway, "Dovecot voll", 3)
            copies = 3 * AUDIENCE_OF_SB_B1
            assert wait_until(lambda: len(queue(gateway, "list", "--state", "held")) == copies), gateway.log[
                -20:
            ]
            errors = {str(item["last_error"]) for item in queue(gateway, "list", "--state", "held")}
            assert all("APPEND INBOX refused" in error for error in errors), errors
            # Dovecot tells its client only [SERVERBUG]; its log says why.
            assert "No space left on device" in dovecot.log_path.read_text(errors="replace")
            filler.unlink()
            found = gateway.wait_for_copies("Dovecot voll", copies, timeout=60)
            assert sum(len(v) for v in found.values()) == copies
            assert sorted(found) == sorted(ADDRESS[p] for p in ("SB-B1", "SB-B2", "GF-B"))
            assert queue(gateway, "list") == []
        finally:
            gateway.stop()
