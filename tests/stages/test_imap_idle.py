"""IMAP IDLE watches (gateway.mailbox.imap_idle) against a real Dovecot, and against servers that misbehave.

A watch tells the flag watcher at once that a member's client changed something; these tests hold it to
that (a flag set by another session ends a wait within Dovecot's notify delay, not at the timeout) and
to its watchdog: a server that says BYE, goes away or never answers DONE ends the wait with a
``MailboxError`` quickly, and the next wait starts on a fresh connection.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.mailbox import MailboxError, MailboxOwner
from gateway.mailbox.imap import ImapMailbox
from gateway.mailbox.imap_idle import pushed_bye, pushed_change
from tests.dovecot import Dovecot
from tests.stages.test_imap_mailbox import copy, fake_server, fake_settings, logins

# How long a call may take before the test calls it a hang; never a measure of speed (bench/ is).
HANG = 60.0
OWNER = MailboxOwner("makler-muster", "sb-b1@kunde-b.example")


def test_what_a_push_means() -> None:
    # As aioimaplib queues them: "* " stripped, one list per read.
    assert pushed_change([b"3 FETCH (FLAGS (\\Seen) MODSEQ (12))"])
    assert pushed_change([b"4 EXISTS", b"2 FETCH (FLAGS (\\Answered))"])
    # New and removed messages are not flag changes: the fan-out's appends must not wake the watcher.
    assert not pushed_change([b"4 EXISTS", b"1 RECENT"])
    assert not pushed_change([b"2 EXPUNGE"])
    assert not pushed_change([b"VANISHED 4:7"])
    assert not pushed_change([b"OK Still here"])
    assert not pushed_change([b"1 RECENT"])
    assert pushed_bye([b"BYE Server shutting down."])
    assert not pushed_bye([b"3 FETCH (FLAGS ())"])


@pytest.fixture
async def imap(dovecot: Dovecot) -> AsyncIterator[ImapMailbox]:
    dovecot.add_user(OWNER.address)
    box = ImapMailbox.from_settings(dovecot.imap_settings(), timeout=5)
    yield box
    await box.close()


async def test_a_flag_set_in_the_members_client_ends_the_wait_at_once(
    imap: ImapMailbox, dovecot: Dovecot
) -> None:
    await imap.append(OWNER, "c1", copy("c1"))
    watch = imap.watch(OWNER)
    try:
        # The wait's own timeout is an hour: ending within HANG means the push ended it.
        waiting = asyncio.create_task(watch.wait(3600))
        await asyncio.sleep(0.5)  # IDLE is under way
        await asyncio.to_thread(dovecot.member_stores, OWNER.address, "c1", "+FLAGS", "(\\Seen)")
        assert await asyncio.wait_for(waiting, HANG) is True

        # A new copy (EXISTS) is no flag change: the wait goes on to its timeout, then says nothing
        # happened (an hour would be a hang: 3 s, well past Dovecot's notify delay of 0.5 s). The
        # watch stays on its one connection.
        waiting = asyncio.create_task(watch.wait(3))
        await asyncio.sleep(0.3)
        await imap.append(OWNER, "c2", copy("c2"))
        assert await asyncio.wait_for(waiting, HANG) is False
    finally:
        await watch.close()
    # The pool's connection for the appends, the watch's own and the member's client: no reconnects.
    assert logins(dovecot, OWNER.address) == 3


async def test_appends_do_not_end_the_idle_round_a_later_flag_does(
    imap: ImapMailbox, dovecot: Dovecot
) -> None:
    # The fan-out appending into a watched mailbox: Dovecot pushes EXISTS, which the round reads and
    # waits on in the same IDLE (no DONE and IDLE again per MULTIAPPEND); the member's flag then ends it.
    await imap.append(OWNER, "c1", copy("c1"))
    watch = imap.watch(OWNER)
    try:
        waiting = asyncio.create_task(watch.wait(3600))
        await asyncio.sleep(0.5)  # IDLE is under way
        for n in range(2, 5):
            await imap.append(OWNER, f"c{n}", copy(f"c{n}"))
        # Past Dovecot's notify delay (0.5 s): the EXISTS pushes have come, each in a read of its own.
        await asyncio.sleep(1.5)
        assert not waiting.done(), "new copies are no flag change: the round goes on"
        await asyncio.to_thread(dovecot.member_stores, OWNER.address, "c3", "+FLAGS", "(\\Seen)")
        assert await asyncio.wait_for(waiting, HANG) is True
    finally:
        await watch.close()


async def test_a_quiet_mailbox_ends_the_wait_at_its_timeout(imap: ImapMailbox, dovecot: Dovecot) -> None:
    await imap.append(OWNER, "c1", copy("c1"))
    watch = imap.watch(OWNER)
    try:
        for _ in range(3):
            started = time.monotonic()
            assert await asyncio.wait_for(watch.wait(0.4), HANG) is False
            assert time.monotonic() - started >= 0.39, "it waited for its timeout"  # load only adds
    finally:
        await watch.close()
    assert logins(dovecot, OWNER.address) == 2, "every round on the same IDLE connection"


async def test_a_server_shutting_down_ends_the_wait_and_the_next_one_reconnects(
    imap: ImapMailbox, dovecot: Dovecot
) -> None:
    await imap.append(OWNER, "c1", copy("c1"))
    watch = imap.watch(OWNER)
    try:
        waiting = asyncio.create_task(watch.wait(3600))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(dovecot.stop)
        with pytest.raises(MailboxError):
            await asyncio.wait_for(waiting, HANG)  # the shutdown ended it, not the hour's timeout
        await asyncio.to_thread(dovecot.start)
        await asyncio.sleep(0.6)  # the pool's backoff after the failed attempts
        waiting = asyncio.create_task(watch.wait(20))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(dovecot.member_stores, OWNER.address, "c1", "+FLAGS", "(\\Flagged)")
        assert await asyncio.wait_for(waiting, 10) is True
    finally:
        await watch.close()


async def idle_server(
    *, answer_done: bool, bye: bool = False, idle: bool = True
) -> tuple[asyncio.Server, int, list[asyncio.StreamWriter]]:
    """A fake IMAP server for what Dovecot does not do: never answer DONE, or say BYE and stay."""
    connections: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        writer.write(b"* OK fake IMAP ready\r\n")
        caps = b"IMAP4rev1 UIDPLUS" + (b" IDLE" if idle else b"")
        idle_tag = b""
        while line := await reader.readline():
            if line.strip().upper() == b"DONE":
                if answer_done:
                    writer.write(idle_tag + b" OK Idle completed\r\n")
                continue  # a hung server: DONE goes unanswered
            tag, command = line.split()[:2]
            command = command.upper()
            if command == b"CAPABILITY":
                writer.write(b"* CAPABILITY " + caps + b"\r\n" + tag + b" OK done\r\n")
            elif command in (b"LOGIN", b"ENABLE"):
                writer.write(tag + b" OK done\r\n")
            elif command == b"EXAMINE":
                writer.write(b"* 0 EXISTS\r\n* OK [UIDVALIDITY 1] x\r\n* OK [UIDNEXT 1] x\r\n")
                writer.write(tag + b" OK [READ-ONLY] done\r\n")
            elif command == b"IDLE":
                idle_tag = tag
                writer.write(b"+ idling\r\n")
                if bye:
                    await asyncio.sleep(0.2)
                    writer.write(b"* BYE going away\r\n")  # and the connection stays open
            elif command == b"LOGOUT":
                writer.write(b"* BYE\r\n" + tag + b" OK done\r\n")
                break
            await writer.drain()
        writer.close()

    server, port = await fake_server(serve)
    return server, port, connections


@pytest.mark.parametrize("case", ["DONE unanswered", "BYE without hanging up"])
async def test_the_watchdog_drops_a_connection_that_hangs(tmp_path: Path, case: str) -> None:
    server, port, connections = await idle_server(answer_done=False, bye=case.startswith("BYE"))
    box = ImapMailbox.from_settings(fake_settings(port, tmp_path), timeout=0.5)
    watch = box.watch(OWNER)
    try:
        for round_ in (1, 2):
            with pytest.raises(MailboxError) as caught:
                await asyncio.wait_for(watch.wait(0.3), HANG)
            if case == "DONE unanswered":
                assert caught.value.errno == errno.ETIMEDOUT
            else:
                assert "BYE" in str(caught.value)
            assert len(connections) == round_, "a fresh connection after the trouble"
            await asyncio.sleep(0.6)  # the pool's backoff does not apply: the logins succeeded
    finally:
        await watch.close()
        await box.close()
        await stop(server, connections)


async def test_a_server_without_idle_is_told(tmp_path: Path) -> None:
    server, port, connections = await idle_server(answer_done=True, idle=False)
    box = ImapMailbox.from_settings(fake_settings(port, tmp_path), timeout=2)
    watch = box.watch(OWNER)
    try:
        with pytest.raises(MailboxError, match="lacks IDLE"):
            await watch.wait(0.3)
    finally:
        await watch.close()
        await box.close()
        await stop(server, connections)


async def stop(server: asyncio.Server, connections: list[asyncio.StreamWriter]) -> None:
    for writer in connections:
        writer.close()
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0.05)  # the handlers see their connections end
