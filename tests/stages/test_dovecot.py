"""The tests' private Dovecot (tests/dovecot.py), checked with Python's imaplib, a client we did not write."""

from __future__ import annotations

import asyncio
import imaplib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gateway.mailbox import Flag, FlagChange, MailboxOwner, MaildirMailbox
from tests.dovecot import Dovecot, RunAs, free_port

MEMBER = "sb-a1@kunde-a.example"
MESSAGE = b"From: ams@makler.example\r\nSubject: Schaden 4711\r\n\r\nHallo\r\n"


def capabilities(client: imaplib.IMAP4) -> set[str]:
    status, data = client.capability()
    assert status == "OK"
    return set(data[0].decode().upper().split())


def test_a_member_logs_in_with_its_password(dovecot: Dovecot) -> None:
    password = dovecot.add_user(MEMBER)
    assert dovecot.add_user(MEMBER) == password, "handing out a user twice keeps its password"

    client = imaplib.IMAP4(dovecot.host, dovecot.port)
    assert client.login(MEMBER, password)[0] == "OK"
    assert client.select("INBOX")[0] == "OK"
    client.logout()

    client = imaplib.IMAP4(dovecot.host, dovecot.port)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.login(MEMBER, password + "x")
    client.logout()


def test_the_master_user_logs_in_as_any_member(dovecot: Dovecot) -> None:
    dovecot.add_user(MEMBER)
    dovecot.add_user("gf-b@kunde-b.example")
    master = dovecot.client(MEMBER, master=True)
    assert master.append("INBOX", None, None, MESSAGE)[0] == "OK"
    master.logout()

    # The message is in the member's own mailbox, not the master user's.
    member = dovecot.client(MEMBER)
    assert member.select("INBOX") == ("OK", [b"1"])
    member.logout()
    other = dovecot.client("gf-b@kunde-b.example")
    assert other.select("INBOX") == ("OK", [b"0"])
    other.logout()

    client = imaplib.IMAP4(dovecot.host, dovecot.port)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.login(f"{MEMBER}*{dovecot.master_user}", "wrong")
    client.logout()
    # A member Dovecot does not know: the master's password is right, the login fails all the same
    # (Dovecot hangs up after the failed user lookup).
    client = imaplib.IMAP4(dovecot.host, dovecot.port)
    with pytest.raises(imaplib.IMAP4.error):
        client.login(f"nobody@kunde-a.example*{dovecot.master_user}", dovecot.master_password)
    client.shutdown()


def test_capabilities_the_gateway_relies_on(dovecot: Dovecot) -> None:
    dovecot.add_user(MEMBER)
    client = dovecot.client(MEMBER, master=True)
    announced = capabilities(client)
    client.logout()
    assert {"CONDSTORE", "QRESYNC", "UIDPLUS", "IDLE", "MOVE", "ENABLE", "LIST-STATUS"} <= announced


def test_append_answers_appenduid_and_lands_in_the_maildir(dovecot: Dovecot) -> None:
    dovecot.add_user(MEMBER)
    client = dovecot.client(MEMBER, master=True)
    status, data = client.append("INBOX", r"(\Seen)", None, MESSAGE)
    assert status == "OK"
    match = re.match(rb"\[APPENDUID (\d+) (\d+)\]", data[0])
    assert match, data
    uidvalidity, uid = int(match[1]), int(match[2])

    client.select("INBOX")
    assert client.response("UIDVALIDITY")[1] == [str(uidvalidity).encode()]
    status, fetched = client.uid("FETCH", str(uid), "(FLAGS BODY.PEEK[])")
    client.logout()
    assert status == "OK"
    assert b"\\Seen" in fetched[0][0]
    assert fetched[0][1] == MESSAGE

    # Maildir under the member's home: Dovecot writes LF line ends and its size fields into the name.
    [path] = (dovecot.maildir(MEMBER) / "cur").iterdir()
    assert path.name.endswith(":2,S")
    assert path.read_bytes() == MESSAGE.replace(b"\r\n", b"\n")


def test_starttls_and_implicit_tls_with_the_self_signed_certificate(dovecot: Dovecot) -> None:
    password = dovecot.add_user(MEMBER)

    client = imaplib.IMAP4(dovecot.host, dovecot.port)
    assert "STARTTLS" in capabilities(client)
    client.starttls(dovecot.ssl_context())
    assert client.login(MEMBER, password)[0] == "OK"
    client.logout()

    client = imaplib.IMAP4_SSL(dovecot.host, dovecot.tls_port, ssl_context=dovecot.ssl_context())
    assert client.login(MEMBER, password)[0] == "OK"
    client.logout()

    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(dovecot.host, dovecot.tls_port, ssl_context=ssl.create_default_context())


def test_stopped_and_started_again_on_the_same_ports_with_the_same_mail(dovecot: Dovecot) -> None:
    dovecot.add_user(MEMBER)
    client = dovecot.client(MEMBER, master=True)
    client.append("INBOX", None, None, MESSAGE)
    client.select("INBOX")  # a session still logged in when the server stops
    dovecot.stop()

    assert not dovecot.running
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        client.noop()
    client.shutdown()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((dovecot.host, dovecot.port), timeout=2)

    dovecot.start()
    assert dovecot.running
    client = dovecot.client(MEMBER)
    assert client.select("INBOX") == ("OK", [b"1"])
    client.logout()


def test_member_helpers_act_like_a_mail_client(dovecot: Dovecot) -> None:
    dovecot.add_user(MEMBER)
    client = dovecot.client(MEMBER, master=True)
    for copy_id in ("c1", "c10"):
        client.append("INBOX", None, None, f"X-Gateway-Copy-Id: {copy_id}\r\n".encode() + MESSAGE)
    client.logout()

    assert dovecot.copies(MEMBER, "c1") == [("INBOX", 1)], "c10 is another copy"
    dovecot.member_moves(MEMBER, "c1", "Archiv")
    dovecot.member_stores(MEMBER, "c1", "+FLAGS", r"(\Seen)")
    assert dovecot.copies(MEMBER, "c1") == [("Archiv", 1)]
    assert dovecot.copy_counts(MEMBER) == {"c1": 1, "c10": 1}
    assert dovecot.message(MEMBER, "Archiv", 1).endswith(MESSAGE)
    assert (dovecot.maildir(MEMBER) / ".Archiv" / "cur").is_dir(), "Maildir++ folders, as the gateway writes"


# --- config/dovecot/serve-maildirs.py: the embedded default's Maildirs for a person's mail client ----------

SERVE_MAILDIRS = Path(__file__).resolve().parents[2] / "config" / "dovecot" / "serve-maildirs.py"


async def test_serve_maildirs_lets_a_mail_client_read_the_gateway_s_maildirs() -> None:
    root = Path(tempfile.mkdtemp(prefix="gw-serve-"))
    run_as = RunAs.for_tests()
    process: subprocess.Popen[str] | None = None
    try:
        data = root / "data"
        config = root / "gateway.toml"
        config.write_text(f'[gateway]\ndata_dir = "{data}"\n')
        box = MaildirMailbox(data / "mail")
        owner = MailboxOwner("makler-muster", MEMBER)
        await box.append(owner, "c1", b"X-Gateway-Copy-Id: c1\r\n" + MESSAGE)
        await box.append(owner, "c2", b"X-Gateway-Copy-Id: c2\r\n" + MESSAGE, frozenset({Flag.ANSWERED}))
        # The same address in a second portfolio: two accounts, named with their portfolio.
        await box.append(MailboxOwner("makler-zwei", "gf-b@kunde-b.example"), "c3", MESSAGE)
        await box.append(MailboxOwner("makler-muster", "gf-b@kunde-b.example"), "c4", MESSAGE)
        _, token = await box.flag_changes(owner, None)
        # The gateway's user owns its Maildirs, and Dovecot runs as that user; root plays the gateway here.
        hand_over(root, run_as)

        port = free_port()
        process = serve_maildirs(config, port)
        client = await asyncio.to_thread(wait_and_login, port, MEMBER)
        assert client.select("INBOX") == ("OK", [b"2"])
        status, fetched = client.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (X-Gateway-Copy-Id)])")
        assert status == "OK"
        assert [item[1].strip() for item in fetched if isinstance(item, tuple)] == [
            b"X-Gateway-Copy-Id: c1",
            b"X-Gateway-Copy-Id: c2",
        ]
        assert b"\\Answered" in fetched[2][0]
        # The member reads c1 in Thunderbird (here: imaplib); the gateway sees it in the Maildir.
        assert client.uid("STORE", "1", "+FLAGS", r"(\Seen)")[0] == "OK"
        client.logout()
        changes, _ = await box.flag_changes(owner, token)
        assert changes == [FlagChange("c1", "INBOX", frozenset({Flag.SEEN}))]
        assert not (data / "mail" / "makler-muster" / MEMBER / "dovecot-uidlist").exists(), "Dovecot's files"

        for login in ("makler-zwei.gf-b@kunde-b.example", "makler-muster.gf-b@kunde-b.example"):
            other = await asyncio.to_thread(wait_and_login, port, login)
            assert other.select("INBOX") == ("OK", [b"1"])
            other.logout()

        # A member whose first copy arrives while Dovecot runs gets an account within seconds.
        await box.append(MailboxOwner("makler-muster", "sb-b1@kunde-b.example"), "c5", MESSAGE)
        hand_over(root, run_as)
        users = data / "dovecot-dev" / "users"
        deadline = time.monotonic() + 10
        while "sb-b1@kunde-b.example:" not in users.read_text():
            assert time.monotonic() < deadline, users.read_text()
            await asyncio.sleep(0.1)
        newcomer = await asyncio.to_thread(wait_and_login, port, "sb-b1@kunde-b.example")
        newcomer.logout()

        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
        assert process.returncode == 0, output
        assert "account gf-b@kunde-b.example" not in output
        assert f"imap://127.0.0.1:{port}" in output
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
    finally:
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.getuid() != 0, reason="only a gateway running as root writes root-owned Maildirs")
async def test_serve_maildirs_serves_the_maildirs_of_a_gateway_running_as_root() -> None:
    """`make run` as root writes root-owned Maildirs, which Dovecot refuses: the command gives them to
    nobody, and each copy the gateway writes after it starts, so that docs/imap.md works as written."""
    root = Path(tempfile.mkdtemp(prefix="gw-serve-root-"))
    os.chmod(root, 0o755)  # Dovecot, as nobody, walks down to the Maildirs
    process: subprocess.Popen[str] | None = None
    try:
        data = root / "data"
        config = root / "gateway.toml"
        config.write_text(f'[gateway]\ndata_dir = "{data}"\n')
        box = MaildirMailbox(data / "mail")
        owner = MailboxOwner("makler-muster", MEMBER)
        await box.append(owner, "c1", b"X-Gateway-Copy-Id: c1\r\n" + MESSAGE)
        assert (data / "mail").stat().st_uid == 0

        port = free_port()
        process = serve_maildirs(config, port)
        client = await asyncio.to_thread(wait_and_login, port, MEMBER)
        assert client.select("INBOX") == ("OK", [b"1"])
        client.logout()
        # A copy the gateway (root) writes while Dovecot runs is readable within the rescan.
        await box.append(owner, "c2", b"X-Gateway-Copy-Id: c2\r\n" + MESSAGE)
        deadline = time.monotonic() + 10
        while True:
            # Until the file is handed over Dovecot lists it but cannot open it ("Internal error").
            client = await asyncio.to_thread(wait_and_login, port, MEMBER)
            try:
                status, data_ = client.select("INBOX")
                fetched = client.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (X-Gateway-Copy-Id)])")[1]
                client.logout()
            except imaplib.IMAP4.error as exc:
                client.shutdown()
                status, data_, fetched = "error", [], [str(exc)]
            if data_ == [b"2"] and sum(isinstance(item, tuple) for item in fetched) == 2:
                break
            assert time.monotonic() < deadline, (status, data_, fetched)
            await asyncio.sleep(0.3)
        # The gateway still reads what Dovecot's user owns now: a flag the client set is seen.
        client = await asyncio.to_thread(wait_and_login, port, MEMBER)
        client.select("INBOX")
        assert client.uid("STORE", "1", "+FLAGS", r"(\Seen)")[0] == "OK"
        client.logout()
        changes, _ = await box.flag_changes(owner, None)
        assert FlagChange("c1", "INBOX", frozenset({Flag.SEEN})) in changes

        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
        assert process.returncode == 0, output
        assert "belongs to root (the gateway runs as root)" in output
        assert "given to nobody" in output
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)  # the command stops its Dovecot (another session) too
            try:
                process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def serve_maildirs(config: Path, port: int) -> subprocess.Popen[str]:
    """The documented command (docs/imap.md), as a person runs it."""
    return subprocess.Popen(
        [sys.executable, str(SERVE_MAILDIRS), "--config", str(config), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def hand_over(root: Path, run_as: RunAs) -> None:
    if os.getuid() == 0:
        root.chmod(0o711)
        for path in [root, *root.rglob("*")]:
            os.chown(path, run_as.uid, run_as.gid)


def wait_and_login(port: int, user: str, timeout: float = 10.0) -> imaplib.IMAP4:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client = imaplib.IMAP4("127.0.0.1", port, timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        try:
            client.login(user, "dev")
            return client
        except imaplib.IMAP4.error:
            client.shutdown()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
