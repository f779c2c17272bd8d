"""ImapMailbox against a real Dovecot (tests/dovecot.py), and its response parsers on their own.

The semantics every mailbox shares are tested in test_mailbox.py, IMAP included; here is what is
particular to IMAP: the master-user login, TLS, folders a member made, exact matching of copy ids,
CONDSTORE tokens, the connection pool, and a server that is down, hangs or hangs up.
"""

from __future__ import annotations

import asyncio
import errno
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ImapSettings
from gateway.mailbox import Delivery, Flag, FlagChange, Located, MailboxError, MailboxOwner
from gateway.mailbox.imap import ImapMailbox, _KeyedLocks
from gateway.mailbox.imap_connection import ImapConnection, ImapLogin, ImapServer, Secret
from gateway.mailbox.imap_protocol import parse_ref
from tests.dovecot import Dovecot

# How long a call may take before the test calls it a hang; never a measure of speed (bench/ is).
HANG = 60.0
OWNER = MailboxOwner("makler-muster", "sb-a1@kunde-a.example")
OTHER = MailboxOwner("makler-muster", "sb-a2@kunde-a.example")
MESSAGE = b"From: ams@makler.example\r\nSubject: Schaden 4711\r\n\r\nHallo\r\n"


# 64 KB more of body, in lines as a mail client writes them.
SCAN = (b"J" * 76 + b"\r\n") * 850


def copy(copy_id: str) -> bytes:
    """A copy as fan-out writes it: its id in the X-Gateway-Copy-Id header."""
    return f"X-Gateway-Copy-Id: {copy_id}\r\n".encode() + MESSAGE


# --- against Dovecot -------------------------------------------------------------------------------------


@pytest.fixture
async def imap(dovecot: Dovecot) -> AsyncIterator[ImapMailbox]:
    for owner in (OWNER, OTHER):
        dovecot.add_user(owner.address)
    box = ImapMailbox.from_settings(dovecot.imap_settings(), timeout=10)
    yield box
    await box.close()


def logins(dovecot: Dovecot, address: str) -> int:
    return dovecot.log_text().count(f"imap-login: Info: Login: user=<{address}>")


@pytest.mark.parametrize("tls", ["none", "starttls", "tls"])
async def test_the_gateway_logs_in_as_member_star_master(dovecot: Dovecot, tls: str) -> None:
    dovecot.add_user(OWNER.address)
    box = ImapMailbox.from_settings(dovecot.imap_settings(tls=tls), ssl_context=dovecot.ssl_context())
    try:
        located = await box.append(OWNER, "c1", copy("c1"), frozenset({Flag.SEEN}), first_attempt=True)
    finally:
        await box.close()

    folder, uidvalidity, uid = parse_ref(located.ref)
    assert (located.folder, folder) == ("INBOX", "INBOX")
    assert dovecot.copies(OWNER.address, "c1") == [("INBOX", uid)], "APPENDUID's UID is the member's message"
    assert dovecot.message(OWNER.address, "INBOX", uid) == copy("c1")
    assert uidvalidity > 0
    assert f"user=<{OWNER.address}>, method=PLAIN" in dovecot.log_text()
    if tls != "none":
        assert "TLS" in dovecot.log_text()


async def test_tls_needs_a_certificate_the_gateway_trusts(dovecot: Dovecot) -> None:
    dovecot.add_user(OWNER.address)
    box = ImapMailbox.from_settings(dovecot.imap_settings(tls="tls"), timeout=5)  # the system's CAs
    try:
        with pytest.raises(MailboxError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            await box.find(OWNER, "c1")
    finally:
        await box.close()


async def test_settings_need_the_master_user_and_its_password_file(dovecot: Dovecot, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="master_user"):
        ImapMailbox.from_settings(ImapSettings())
    dovecot.add_user(OWNER.address)
    missing = dovecot.imap_settings().model_copy(update={"master_password_file": tmp_path / "nope"})
    box = ImapMailbox.from_settings(missing)
    try:
        with pytest.raises(MailboxError, match="master password file") as caught:
            await box.find(OWNER, "c1")
        assert caught.value.filename == str(tmp_path / "nope")
    finally:
        await box.close()


async def test_refused_logins_are_mailbox_errors_and_do_not_stop_other_members(
    dovecot: Dovecot, tmp_path: Path
) -> None:
    dovecot.add_user(OWNER.address)
    box = ImapMailbox.from_settings(dovecot.imap_settings(), timeout=5)
    try:
        stranger = MailboxOwner("makler-muster", "unknown@kunde-a.example")
        with pytest.raises(
            MailboxError, match=r"LOGIN as unknown@kunde-a.example\*gateway refused"
        ) as caught:
            await box.append(stranger, "c1", copy("c1"))
        assert isinstance(caught.value, OSError)
        assert caught.value.filename == f"imap://{dovecot.host}:{dovecot.port}"
        # A member the server does not know is no reason to stop delivering to those it knows.
        await box.append(OWNER, "c1", copy("c1"))
    finally:
        await box.close()

    wrong = tmp_path / "wrong.password"
    wrong.write_text("not the password\n")
    box = ImapMailbox.from_settings(
        dovecot.imap_settings().model_copy(update={"master_password_file": wrong})
    )
    try:
        with pytest.raises(MailboxError, match="AUTHENTICATIONFAILED"):
            await box.find(OWNER, "c1")
    finally:
        await box.close()


async def test_a_configured_folder_is_created_on_first_delivery(dovecot: Dovecot) -> None:
    dovecot.add_user(OWNER.address)
    box = ImapMailbox.from_settings(dovecot.imap_settings(folder="Vorgänge"))
    try:
        located = await box.append(OWNER, "c1", copy("c1"), first_attempt=True)
        assert located.folder == "Vorg&AOQ-nge"
        assert await box.find(OWNER, "c1") == [located]
        assert await box.append(OWNER, "c2", copy("c2"), first_attempt=True) != located
    finally:
        await box.close()
    assert dovecot.copy_counts(OWNER.address) == {"c1": 1, "c2": 1}
    assert (dovecot.maildir(OWNER.address) / ".Vorg&AOQ-nge" / "cur").is_dir()


async def test_copy_ids_match_exactly_and_members_own_mail_is_never_touched(
    imap: ImapMailbox, dovecot: Dovecot
) -> None:
    member = dovecot.client(OWNER.address)
    member.append("INBOX", r"(\Seen \Deleted)", None, MESSAGE)  # the member's own mail, marked deleted
    member.append("INBOX", None, None, b"Subject: mentions\r\n\r\nX-Gateway-Copy-Id: c1\r\n")
    member.logout()
    c10 = await imap.append(OWNER, "c10", copy("c10"))
    c1 = await imap.append(OWNER, "c1", copy("c1"))

    assert await imap.find(OWNER, "c1") == [c1], "SEARCH HEADER matches c10 too; we compare exactly"
    changes, _ = await imap.flag_changes(OWNER, None)
    assert [change.copy_id for change in changes] == ["c1", "c10"]
    assert await imap.remove(OWNER, "c1") == 1
    assert await imap.find(OWNER, "c10") == [c10]

    # UID EXPUNGE took our copy only: the member's own message marked \Deleted is still there.
    member = dovecot.client(OWNER.address)
    member.select("INBOX")
    status, data = member.uid("SEARCH", "DELETED")
    member.logout()
    assert status == "OK"
    assert data == [b"1"]


async def test_instances_in_several_folders_are_found_flagged_and_removed(
    imap: ImapMailbox, dovecot: Dovecot
) -> None:
    await imap.append(OWNER, "c1", copy("c1"))
    # The member copies it into a nested folder, then moves the original into another one.
    member = dovecot.client(OWNER.address)
    member.create('"Archiv.2026"')
    member.create("Erledigt")
    member.select("INBOX")
    member.uid("COPY", "1", '"Archiv.2026"')
    member.uid("MOVE", "1", "Erledigt")
    member.logout()

    found = await imap.find(OWNER, "c1")
    assert [(f.folder, f.flags) for f in found] == [("Archiv.2026", frozenset()), ("Erledigt", frozenset())]

    flagged = await imap.add_flags(OWNER, "c1", frozenset({Flag.ANSWERED, Flag.SEEN}))
    assert [(f.folder, f.flags) for f in flagged] == [
        ("Archiv.2026", {Flag.ANSWERED, Flag.SEEN}),
        ("Erledigt", {Flag.ANSWERED, Flag.SEEN}),
    ]
    assert await imap.find(OWNER, "c1") == flagged
    [first, second] = await imap.remove_flags(OWNER, "c1", frozenset({Flag.SEEN}))
    assert first.flags == second.flags == {Flag.ANSWERED}

    # Appending it again finds it (in both places) and writes nothing.
    assert await imap.append(OWNER, "c1", copy("c1")) == first
    assert await imap.remove(OWNER, "c1") == 2
    assert dovecot.copy_counts(OWNER.address) == {}


async def test_a_retry_finds_the_copy_wherever_the_member_put_it(imap: ImapMailbox, dovecot: Dovecot) -> None:
    first = await imap.append(OWNER, "c1", copy("c1"), first_attempt=True)
    dovecot.member_moves(OWNER.address, "c1", "Archiv")
    dovecot.member_stores(OWNER.address, "c1", "+FLAGS", r"(\Flagged)")

    again = await imap.append(OWNER, "c1", copy("c1"), frozenset({Flag.SEEN}))
    assert again != first
    assert (again.folder, again.flags) == ("Archiv", {Flag.FLAGGED})
    assert dovecot.copy_counts(OWNER.address) == {"c1": 1}


async def test_concurrent_first_attempts_of_one_copy_deliver_it_once(
    imap: ImapMailbox, dovecot: Dovecot
) -> None:
    results = await asyncio.gather(
        *(imap.append(OWNER, "c1", copy("c1"), first_attempt=True) for _ in range(10))
    )
    assert len(set(results)) == 1
    assert dovecot.copy_counts(OWNER.address) == {"c1": 1}


async def test_flag_changes_follow_condstore(imap: ImapMailbox, dovecot: Dovecot) -> None:
    await imap.append(OWNER, "c1", copy("c1"))
    await imap.append(OWNER, "c2", copy("c2"), frozenset({Flag.ANSWERED}))
    changes, token = await imap.flag_changes(OWNER, None)
    assert changes == [
        FlagChange("c1", "INBOX", frozenset()),
        FlagChange("c2", "INBOX", frozenset({Flag.ANSWERED})),
    ]
    [(folder, [uidvalidity, modseq, uidnext])] = json.loads(token)["f"].items()
    assert (folder, uidnext) == ("INBOX", 3)
    assert modseq > 0
    assert uidvalidity > 0

    # The member reads c1 in another folder; new copies arrive, one flagged, one not.
    dovecot.member_moves(OWNER.address, "c1", "Archiv")
    dovecot.member_stores(OWNER.address, "c1", "+FLAGS", r"(\Seen)")
    await imap.append(OWNER, "c3", copy("c3"))
    await imap.append(OWNER, "c4", copy("c4"), frozenset({Flag.FLAGGED}))
    changes, token = await imap.flag_changes(OWNER, token)
    assert changes == [
        FlagChange("c1", "Archiv", frozenset({Flag.SEEN})),
        FlagChange("c4", "INBOX", frozenset({Flag.FLAGGED})),
    ]

    # The member clears \Answered: a change, reported where it happened only.
    dovecot.member_stores(OWNER.address, "c2", "-FLAGS", r"(\Answered)")
    changes, token = await imap.flag_changes(OWNER, token)
    assert changes == [FlagChange("c2", "INBOX", frozenset())]
    assert await imap.flag_changes(OWNER, token) == ([], token)


async def test_fresh_copies_without_flags_are_not_fetched(
    imap: ImapMailbox, monkeypatch: pytest.MonkeyPatch
) -> None:

    await imap.append(OWNER, "c1", copy("c1"))
    _, token = await imap.flag_changes(OWNER, None)
    fetched: list[int] = []
    real_fetch = ImapConnection.fetch

    async def counting_fetch(self: Any, uids: Any, items: str) -> Any:
        fetched.extend(uids)
        return await real_fetch(self, uids, items)

    monkeypatch.setattr(ImapConnection, "fetch", counting_fetch)
    fresh = [Delivery(OWNER, f"n{n}", copy(f"n{n}"), first_attempt=True) for n in range(5)]
    flagged = Delivery(OWNER, "n5", copy("n5"), frozenset({Flag.SEEN}), first_attempt=True)
    await imap.append_batch([*fresh, flagged])
    changes, token = await imap.flag_changes(OWNER, token)
    assert changes == [FlagChange("n5", "INBOX", frozenset({Flag.SEEN}))]
    assert len(fetched) == 1, "the fan-out's fresh copies without a flag are not even fetched"


async def test_an_unchanged_mailbox_is_looked_at_with_status_only(
    imap: ImapMailbox, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    await imap.append(OWNER, "c1", copy("c1"))
    dovecot.member_moves(OWNER.address, "c1", "Archiv")
    await imap.append(OWNER, "c2", copy("c2"))
    _, token = await imap.flag_changes(OWNER, None)

    selected: list[str] = []
    real_select = ImapConnection.select

    async def counting_select(self: object, folder: str) -> object:
        selected.append(folder)
        return await real_select(self, folder)  # type: ignore[arg-type]

    monkeypatch.setattr(ImapConnection, "select", counting_select)
    assert await imap.flag_changes(OWNER, token) == ([], token)
    # No SELECT but possibly of the folder the pooled connection still had selected (STATUS on the
    # selected folder is a client bug to Dovecot): LIST, then STATUS per folder.
    assert len(selected) <= 1
    dovecot.member_stores(OWNER.address, "c1", "+FLAGS", r"(\Seen)")
    selected.clear()
    changes, _ = await imap.flag_changes(OWNER, token)
    assert changes == [FlagChange("c1", "Archiv", frozenset({Flag.SEEN}))]
    assert "Archiv" in selected


async def test_many_copies_are_fetched_in_chunks(imap: ImapMailbox, dovecot: Dovecot) -> None:
    # aioimaplib's reader overflows the stack on a FETCH answered with some thousand messages at once.
    count = 700
    results = await imap.append_batch(
        [Delivery(OWNER, f"m{n}", copy(f"m{n}"), first_attempt=True) for n in range(count)]
    )
    assert all(isinstance(r, Located) for r in results)
    changes, _ = await imap.flag_changes(OWNER, None)
    assert len(changes) == count
    assert sum(dovecot.copy_counts(OWNER.address).values()) == count


async def test_connections_are_pooled_per_member(dovecot: Dovecot) -> None:
    for owner in (OWNER, OTHER):
        dovecot.add_user(owner.address)
    box = ImapMailbox.from_settings(dovecot.imap_settings(), connections_per_member=2)
    try:
        for n in range(5):
            await box.append(OWNER, f"s{n}", copy(f"s{n}"), first_attempt=True)
            await box.find(OWNER, f"s{n}")
        assert logins(dovecot, OWNER.address) == 1, "one connection, reused"

        deliveries = [Delivery(o, f"b{n}", copy(f"b{n}")) for n in range(20) for o in (OWNER, OTHER)]
        results = await box.append_batch(deliveries)
        assert all(isinstance(r, Located) for r in results)
        assert logins(dovecot, OWNER.address) <= 2
        assert logins(dovecot, OTHER.address) <= 2
    finally:
        await box.close()
    await asyncio.sleep(0.1)
    assert dovecot.log_text().count("Disconnected: Logged out") >= 2, "close() logs out"


async def test_a_members_first_attempts_go_in_one_multiappend(
    imap: ImapMailbox, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:

    commands: list[tuple[str, int]] = []
    real_many, real_one = ImapConnection.append_many, ImapConnection.append

    async def append_many(self: Any, folder: str, messages: Any) -> Any:
        commands.append(("many", len(messages)))
        return await real_many(self, folder, messages)

    async def append(self: Any, folder: str, message: bytes, flags: Any) -> Any:
        commands.append(("one", 1))
        return await real_one(self, folder, message, flags)

    monkeypatch.setattr(ImapConnection, "append_many", append_many)
    monkeypatch.setattr(ImapConnection, "append", append)
    flag_sets = [frozenset(), frozenset({Flag.SEEN}), frozenset({Flag.SEEN, Flag.ANSWERED})]
    deliveries = [
        Delivery(o, f"{o.address[:5]}-{n}", copy(f"{o.address[:5]}-{n}"), flags, first_attempt=True)
        for n, flags in enumerate(flag_sets)
        for o in (OWNER, OTHER)
    ]
    # A copy named twice in one batch is appended once: the second looks for it and finds it.
    results = await imap.append_batch([*deliveries, deliveries[0]])
    assert sorted(commands) == [("many", 3), ("many", 3)]
    assert results[-1] == results[0]
    for delivery, result in zip(deliveries, results, strict=False):
        # Each copy's UID is its own (APPENDUID's set in the order the messages went), with its flags.
        assert await imap.find(delivery.owner, delivery.copy_id) == [result]
        assert isinstance(result, Located)
        assert result.flags == delivery.flags
    for owner in (OWNER, OTHER):
        assert dovecot.copy_counts(owner.address) == {f"{owner.address[:5]}-{n}": 1 for n in range(3)}


async def test_a_multiappend_is_one_round_trip(tmp_path: Path) -> None:
    """Every literal of the MULTIAPPEND is LITERAL+, the first too, so the command and the messages go
    out at once: a server that never sends "+" (it need not, RFC 7888) still gets the whole batch,
    where waiting for a continuation would end in the 2 s timeout."""
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK fake IMAP ready\r\n")
        caps = b"IMAP4rev1 UIDPLUS MULTIAPPEND LITERAL+"
        while line := await reader.readline():
            tag, command = line.split()[:2]
            command = command.upper()
            if command == b"CAPABILITY":
                writer.write(b"* CAPABILITY " + caps + b"\r\n" + tag + b" OK done\r\n")
            elif command == b"LOGIN":
                writer.write(tag + b" OK done\r\n")
            elif command == b"APPEND":
                while line.rstrip().endswith(b"+}"):
                    size = int(line.rstrip()[:-2].rpartition(b"{")[2])
                    received.append(await reader.readexactly(size))
                    line = await reader.readline()  # the next announcement, or the end of the command
                writer.write(tag + b" OK [APPENDUID 7 %d:%d] done\r\n" % (1, len(received)))
            elif command == b"LOGOUT":
                writer.write(b"* BYE\r\n" + tag + b" OK done\r\n")
                break
            else:
                writer.write(tag + b" BAD not in this fake\r\n")
            await writer.drain()
        writer.close()

    server, port = await fake_server(serve)
    box = ImapMailbox.from_settings(fake_settings(port, tmp_path), timeout=2)
    try:
        deliveries = [
            Delivery(OWNER, f"m{n}", copy(f"m{n}"), frozenset({Flag.SEEN}) if n else frozenset(), True)
            for n in range(3)
        ]
        results = await asyncio.wait_for(box.append_batch(deliveries), HANG)
    finally:
        await box.close()
        server.close()
    assert [r.ref for r in results if isinstance(r, Located)] == [
        f"INBOX;UIDVALIDITY=7/;UID={n}" for n in (1, 2, 3)
    ], results
    assert received == [copy(f"m{n}") for n in range(3)], "each message as it was, in order"


async def test_a_refused_multiappend_goes_one_by_one(
    imap: ImapMailbox, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:

    async def refused(self: Any, folder: str, messages: Any) -> None:
        return None  # the server said NO: none of them is in the mailbox

    monkeypatch.setattr(ImapConnection, "append_many", refused)
    deliveries = [Delivery(OWNER, f"r{n}", copy(f"r{n}"), first_attempt=True) for n in range(4)]
    results = await imap.append_batch(deliveries)
    assert all(isinstance(r, Located) for r in results), results
    assert dovecot.copy_counts(OWNER.address) == {f"r{n}": 1 for n in range(4)}


async def test_a_restarted_server_is_reconnected_to(imap: ImapMailbox, dovecot: Dovecot) -> None:
    await imap.append(OWNER, "c1", copy("c1"))
    # The gateway's event loop keeps running while the server restarts, and sees its connections end.
    await asyncio.to_thread(dovecot.stop)
    await asyncio.to_thread(dovecot.start)
    # The pooled connection died with the old server; the next operation takes a fresh one.
    assert len(await imap.find(OWNER, "c1")) == 1
    assert logins(dovecot, OWNER.address) == 2


async def test_a_server_that_is_down_fails_fast_and_recovers_without_duplicates(dovecot: Dovecot) -> None:
    owners = [MailboxOwner("makler-muster", f"sb-{n}@kunde-a.example") for n in range(5)]
    for owner in owners:
        dovecot.add_user(owner.address)
    box = ImapMailbox.from_settings(dovecot.imap_settings(), timeout=5, backoff_first=0.05, backoff_max=0.2)
    pending = {(owner, f"b{n}") for owner in owners for n in range(40)}
    try:
        # A burst: Dovecot is stopped while 200 copies are on their way, then started again. The copies
        # carry 64 KB (a scanned letter), and Dovecot stops as soon as it writes the first one, so the
        # burst is cut in the middle however fast the machine (after a fixed 50 ms a quiet machine had
        # written all of it).
        def stop_at_first_copy() -> None:
            folders = [dovecot.maildir(o.address) / sub for o in owners for sub in ("tmp", "new", "cur")]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if any(folder.is_dir() and any(folder.iterdir()) for folder in folders):
                    break
                time.sleep(0.001)
            dovecot.stop()

        stopping = asyncio.create_task(asyncio.to_thread(stop_at_first_copy))
        deliveries = [Delivery(o, c, copy(c) + SCAN, first_attempt=True) for o, c in sorted(pending, key=str)]
        results = await box.append_batch(deliveries)
        await stopping
        for delivery, result in zip(deliveries, results, strict=True):
            if isinstance(result, Located):
                pending.discard((delivery.owner, delivery.copy_id))
            else:
                assert isinstance(result, MailboxError), result
        assert pending, "the server went down before the burst was through"

        # While it is down every attempt fails (as an OSError the fan-out retries) rather than waiting:
        # the bound only catches a hang.
        with pytest.raises(MailboxError) as caught:
            await asyncio.wait_for(box.append(owners[0], "down", copy("down")), HANG)
        assert caught.value.errno in (errno.ECONNREFUSED, errno.ECONNRESET, errno.ENOTCONN)
        assert "append copy down for sb-0@kunde-a.example" in str(caught.value)

        await asyncio.to_thread(dovecot.start)
        for _ in range(50):
            retries = [
                Delivery(o, c, copy(c) + SCAN) for o, c in sorted(pending, key=str)
            ]  # not first attempts
            for delivery, result in zip(retries, await box.append_batch(retries), strict=True):
                if isinstance(result, Located):
                    pending.discard((delivery.owner, delivery.copy_id))
            if not pending:
                break
            await asyncio.sleep(0.1)
        assert not pending
    finally:
        await box.close()
    for owner in owners:
        assert dovecot.copy_counts(owner.address) == {f"b{n}": 1 for n in range(40)}, owner


# --- servers that misbehave ------------------------------------------------------------------------------


async def fake_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    return server, port


def fake_settings(port: int, tmp_path: Path) -> ImapSettings:
    password = tmp_path / "master.password"
    password.write_text("secret\n")
    return ImapSettings(
        host="127.0.0.1", port=port, tls="none", master_user="gw", master_password_file=password
    )


async def test_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()

    server, port = await fake_server(silent)
    box = ImapMailbox.from_settings(fake_settings(port, tmp_path), timeout=0.3)
    try:
        with pytest.raises(MailboxError) as caught:
            await asyncio.wait_for(box.find(OWNER, "c1"), HANG)
        assert caught.value.errno == errno.ETIMEDOUT, "our 0.3 s timeout, not the silent server, ended it"
        # The pool now backs off instead of hammering the server.
        with pytest.raises(MailboxError, match="next attempt in"):
            await box.find(OWNER, "c1")
    finally:
        await box.close()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("hang_up_at", [b"CAPABILITY", b"LOGIN"])
async def test_a_server_that_hangs_up_mid_command_fails_the_command_at_once(
    tmp_path: Path, hang_up_at: bytes
) -> None:
    async def hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK fake IMAP ready\r\n")
        while line := await reader.readline():
            tag, command = line.split()[:2]
            if command.upper() == hang_up_at:
                break  # hang up without a word
            if command.upper() == b"CAPABILITY":
                writer.write(b"* CAPABILITY IMAP4rev1 UIDPLUS\r\n" + tag + b" OK done\r\n")
        writer.close()

    server, port = await fake_server(hangs_up)
    box = ImapMailbox.from_settings(fake_settings(port, tmp_path), timeout=3600)
    try:
        # Told at once, not after the hour's timeout (the bound only catches a wait for it).
        with pytest.raises(MailboxError, match="hung up"):
            await asyncio.wait_for(box.find(OWNER, "c1"), HANG)
    finally:
        await box.close()
        server.close()
        await server.wait_closed()


def test_the_server_settings_name_the_server() -> None:
    server = ImapServer("mail.example", 993, "tls", ImapLogin("gw", Secret(file=Path("/run/secret"))))
    assert server.where == "imap://mail.example:993"


async def test_a_batch_holds_its_copies_locks_and_one_waiting_for_them_gives_them_back() -> None:
    """A member's MULTIAPPEND holds every copy's lock (``_KeyedLocks.hold_all``): a second write of one
    of those copies waits for it; a batch cancelled while it waits for a lock keeps none of them."""
    locks = _KeyedLocks()
    keys = [("m@x.example", "c1"), ("m@x.example", "c2"), ("m@x.example", "c2")]
    order: list[str] = []
    async with locks.hold_all(keys):

        async def single() -> None:
            async with locks.hold(("m@x.example", "c2")):
                order.append("single")

        waiting = asyncio.ensure_future(single())
        blocked = asyncio.ensure_future(
            locks.hold_all([("m@x.example", "c0"), ("m@x.example", "c1")]).__aenter__()
        )
        await asyncio.sleep(0.01)
        order.append("batch done")
        blocked.cancel()
    await waiting
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert order == ["batch done", "single"]
    assert locks._held == {}  # every lock given back and dropped, the cancelled batch's c0 too
