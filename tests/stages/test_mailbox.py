"""The mailbox layer: Maildir, IMAP (a real Dovecot) and the in-memory fake behave alike; readers agree."""

from __future__ import annotations

import asyncio
import mailbox as stdlib_mailbox
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.mailbox import (
    Delivery,
    Flag,
    FlagChange,
    Located,
    Mailbox,
    MailboxError,
    MailboxOwner,
    MaildirMailbox,
    MemoryMailbox,
)
from gateway.mailbox.imap import ImapMailbox
from gateway.mailbox.imap_protocol import message_for_append, parse_ref
from tests.dovecot import Dovecot

OWNER = MailboxOwner("makler-muster", "sb-a1@kunde-a.example")
OTHER = MailboxOwner("makler-muster", "sb-a2@kunde-a.example")
# What follows the copy id in the name of a copy's file: fixed, the same on every gateway node.
HOST = "gateway"
MESSAGE = b"From: ams@makler.example\r\nSubject: Schaden 4711\r\n\r\nHallo\r\n"


# The Dovecot behind each IMAP mailbox under test, for the helpers that act as its member.
_DOVECOT: dict[int, Dovecot] = {}


@pytest.fixture(params=["maildir", "memory", "imap"])
async def mailbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Mailbox]:
    box: Mailbox
    if request.param == "imap":
        dovecot: Dovecot = request.getfixturevalue("dovecot")
        for owner in (OWNER, OTHER):
            dovecot.add_user(owner.address)
        box = ImapMailbox.from_settings(dovecot.imap_settings(), timeout=10)
        _DOVECOT[id(box)] = dovecot
    else:
        box = MaildirMailbox(tmp_path / "mail") if request.param == "maildir" else MemoryMailbox()
    yield box
    await box.close()
    _DOVECOT.pop(id(box), None)


@pytest.fixture
def maildir(tmp_path: Path) -> MaildirMailbox:
    return MaildirMailbox(tmp_path / "mail")


# --- what a member's mail client does, on either implementation ------------------------------------------


def folder_dir(box: MaildirMailbox, owner: MailboxOwner, folder: str) -> Path:
    """A Maildir++ subfolder as Dovecot creates it: .<Folder>/ with cur/ new/ tmp/ and maildirfolder."""
    path = box.maildir_path(owner) / f".{folder}"
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    (path / "maildirfolder").touch()
    return path


def files_of(box: MaildirMailbox, owner: MailboxOwner, copy_id: str) -> list[Path]:
    """Every file of the copy in new/ or cur/ of any folder, found independently of the code under test."""
    return sorted(
        path for path in box.maildir_path(owner).rglob(f"{copy_id}.*") if path.parent.name in ("new", "cur")
    )


async def member_moves(box: Mailbox, owner: MailboxOwner, copy_id: str, folder: str) -> None:
    if isinstance(box, MaildirMailbox):
        for path in files_of(box, owner, copy_id):
            os.rename(path, folder_dir(box, owner, folder) / "cur" / path.name)
    elif isinstance(box, ImapMailbox):
        _DOVECOT[id(box)].member_moves(owner.address, copy_id, folder)  # imaplib, UID MOVE
    else:
        assert isinstance(box, MemoryMailbox)
        box.move(owner, copy_id, folder)


async def member_reads(box: Mailbox, owner: MailboxOwner, copy_id: str) -> None:
    """The member's client marks the copy \\Seen; on Maildir by renaming the file into cur/ with 'S'."""
    if isinstance(box, MaildirMailbox):
        for path in files_of(box, owner, copy_id):
            base, _, info = path.name.partition(":")
            letters = "".join(sorted(set(info.removeprefix("2,")) | {"S"}))
            os.rename(path, path.parent.parent / "cur" / f"{base}:2,{letters}")
    elif isinstance(box, ImapMailbox):
        _DOVECOT[id(box)].member_stores(owner.address, copy_id, "+FLAGS", r"(\Seen)")  # imaplib
    else:
        await box.add_flags(owner, copy_id, frozenset({Flag.SEEN}))


def stored_bytes(box: Mailbox, owner: MailboxOwner, located: Located) -> bytes:
    if isinstance(box, MaildirMailbox):
        return (box.maildir_path(owner) / located.ref).read_bytes()
    if isinstance(box, ImapMailbox):
        folder, _, uid = parse_ref(located.ref)
        return _DOVECOT[id(box)].message(owner.address, folder, uid)
    assert isinstance(box, MemoryMailbox)
    return box.read(owner, located.ref)


def as_stored(box: Mailbox, copy_id: str, data: bytes) -> bytes:
    """The bytes a mailbox keeps of ``data``: the same bytes, but on IMAP in IMAP's form (CRLF line ends;
    NUL bytes kept through BINARY) and led by the X-Gateway-Copy-Id header IMAP finds copies by, where
    the message lacks it."""
    return message_for_append(copy_id, data) if isinstance(box, ImapMailbox) else data


# --- shared semantics ---------------------------------------------------------------------------------


async def test_append_then_find(mailbox: Mailbox) -> None:
    located = await mailbox.append(OWNER, "c1", MESSAGE)

    assert located.copy_id == "c1"
    assert located.folder == "INBOX"
    assert located.flags == frozenset()
    assert await mailbox.find(OWNER, "c1") == [located]
    assert await mailbox.find(OWNER, "c2") == []
    assert await mailbox.find(OTHER, "c1") == []


async def test_append_twice_keeps_one_copy_and_returns_it(mailbox: Mailbox) -> None:
    first = await mailbox.append(OWNER, "c1", MESSAGE)
    again = await mailbox.append(OWNER, "c1", b"other bytes", frozenset({Flag.SEEN}))

    assert again == first
    assert await mailbox.find(OWNER, "c1") == [first]
    assert stored_bytes(mailbox, OWNER, first) == as_stored(mailbox, "c1", MESSAGE)
    if isinstance(mailbox, MaildirMailbox):
        assert len(files_of(mailbox, OWNER, "c1")) == 1


async def test_flags_are_set_and_cleared(mailbox: Mailbox) -> None:
    await mailbox.append(OWNER, "c1", MESSAGE)

    [located] = await mailbox.add_flags(OWNER, "c1", frozenset({Flag.SEEN, Flag.ANSWERED}))
    assert located.flags == {Flag.SEEN, Flag.ANSWERED}
    assert await mailbox.find(OWNER, "c1") == [located]

    [located] = await mailbox.remove_flags(OWNER, "c1", frozenset({Flag.SEEN}))
    assert located.flags == {Flag.ANSWERED}
    [located] = await mailbox.remove_flags(OWNER, "c1", frozenset({Flag.ANSWERED, Flag.FLAGGED}))
    assert located.flags == frozenset()
    assert await mailbox.find(OWNER, "c1") == [located]


async def test_flag_changes_on_a_missing_copy_touch_nothing(mailbox: Mailbox) -> None:
    assert await mailbox.add_flags(OWNER, "c1", frozenset({Flag.SEEN})) == []
    assert await mailbox.remove_flags(OWNER, "c1", frozenset({Flag.SEEN})) == []
    assert await mailbox.remove(OWNER, "c1") == 0


async def test_append_with_flags(mailbox: Mailbox) -> None:
    located = await mailbox.append(OWNER, "c1", MESSAGE, frozenset({Flag.SEEN, Flag.DRAFT}))

    assert located.flags == {Flag.SEEN, Flag.DRAFT}
    assert await mailbox.find(OWNER, "c1") == [located]


async def test_a_copy_the_member_moved_is_found_flagged_and_removed_there(mailbox: Mailbox) -> None:
    await mailbox.append(OWNER, "c1", MESSAGE)
    await mailbox.append(OWNER, "c2", MESSAGE)
    await member_moves(mailbox, OWNER, "c1", "Archiv")

    [found] = await mailbox.find(OWNER, "c1")
    assert found.folder == "Archiv"
    assert stored_bytes(mailbox, OWNER, found) == as_stored(mailbox, "c1", MESSAGE)

    [flagged] = await mailbox.add_flags(OWNER, "c1", frozenset({Flag.ANSWERED}))
    assert (flagged.folder, flagged.flags) == ("Archiv", frozenset({Flag.ANSWERED}))
    assert await mailbox.find(OWNER, "c1") == [flagged]

    # Idempotent: appending the copy again does not put a second one into the INBOX.
    assert await mailbox.append(OWNER, "c1", MESSAGE) == flagged

    assert await mailbox.remove(OWNER, "c1") == 1
    assert await mailbox.find(OWNER, "c1") == []
    assert [located.copy_id for located in await mailbox.find(OWNER, "c2")] == ["c2"]


async def test_remove_counts_what_it_removed(mailbox: Mailbox) -> None:
    await mailbox.append(OWNER, "c1", MESSAGE)
    await mailbox.append(OTHER, "c1", MESSAGE)

    assert await mailbox.remove(OWNER, "c1") == 1
    assert await mailbox.remove(OWNER, "c1") == 0
    assert await mailbox.find(OWNER, "c1") == []
    assert len(await mailbox.find(OTHER, "c1")) == 1


async def test_flag_changes_report_what_the_member_did_once(mailbox: Mailbox) -> None:
    await mailbox.append(OWNER, "c1", MESSAGE)
    await mailbox.append(OWNER, "c2", MESSAGE, frozenset({Flag.ANSWERED}))

    changes, token = await mailbox.flag_changes(OWNER, None)
    assert changes == [
        FlagChange("c1", "INBOX", frozenset()),
        FlagChange("c2", "INBOX", frozenset({Flag.ANSWERED})),
    ]
    assert await mailbox.flag_changes(OWNER, token) == ([], token)

    await member_reads(mailbox, OWNER, "c1")
    changes, token = await mailbox.flag_changes(OWNER, token)
    assert changes == [FlagChange("c1", "INBOX", frozenset({Flag.SEEN}))]
    changes, token = await mailbox.flag_changes(OWNER, token)
    assert changes == []

    # A cleared flag is a change too; the propagation rules decide what to do with it.
    await mailbox.remove_flags(OWNER, "c2", frozenset({Flag.ANSWERED}))
    changes, token = await mailbox.flag_changes(OWNER, token)
    assert changes == [FlagChange("c2", "INBOX", frozenset())]

    # A moved copy with flags is reported where it is now; a removed one is not reported.
    await member_moves(mailbox, OWNER, "c1", "Archiv")
    await mailbox.remove(OWNER, "c2")
    changes, token = await mailbox.flag_changes(OWNER, token)
    assert changes == [FlagChange("c1", "Archiv", frozenset({Flag.SEEN}))]
    assert (await mailbox.flag_changes(OWNER, token))[0] == []


async def test_flag_changes_of_an_empty_mailbox(mailbox: Mailbox) -> None:
    changes, token = await mailbox.flag_changes(OWNER, None)
    assert changes == []
    await mailbox.append(OWNER, "c1", MESSAGE)
    # A new copy without flags is no change; the token may move on all the same (on IMAP the folder's
    # HIGHESTMODSEQ did).
    changes, token = await mailbox.flag_changes(OWNER, token)
    assert changes == []
    assert await mailbox.flag_changes(OWNER, token) == ([], token)


@pytest.mark.parametrize(
    "token", ["", "garbage", "[]", '{"v": 2, "f": {}}', '{"v": 1, "f": {"c1": {"INBOX": "X"}}}']
)
async def test_an_unreadable_token_is_refused(mailbox: Mailbox, token: str) -> None:
    with pytest.raises(ValueError, match="flag-state token"):
        await mailbox.flag_changes(OWNER, token)


UNSAFE_OWNERS = [
    MailboxOwner("..", "sb-a1@kunde-a.example"),
    MailboxOwner("makler-muster", ".."),
    MailboxOwner("makler-muster", "../../etc"),
    MailboxOwner("makler/muster", "sb-a1@kunde-a.example"),
    MailboxOwner("makler-muster", "sb-a1@kunde-a.example/../x"),
    MailboxOwner("makler-muster", ".hidden@kunde-a.example"),
    MailboxOwner("makler-muster", "sb\0a1@kunde-a.example"),
    MailboxOwner("", "sb-a1@kunde-a.example"),
    MailboxOwner("makler-muster", ""),
    MailboxOwner("makler-muster", "SB-A1@kunde-a.example"),
    MailboxOwner("makler-muster", "x" * 256),
]
UNSAFE_COPY_IDS = ["", "../c1", "c1/x", "c.1", "c1:2,S", "c1,S=3", "1700000000", "x" * 65, "c\0"]


def operations(owner: MailboxOwner, copy_id: str) -> list[Callable[[Mailbox], Awaitable[object]]]:
    return [
        lambda box: box.append(owner, copy_id, MESSAGE),
        lambda box: box.find(owner, copy_id),
        lambda box: box.add_flags(owner, copy_id, frozenset({Flag.SEEN})),
        lambda box: box.remove_flags(owner, copy_id, frozenset({Flag.SEEN})),
        lambda box: box.remove(owner, copy_id),
    ]


@pytest.mark.parametrize("owner", UNSAFE_OWNERS, ids=repr)
async def test_unsafe_owners_are_refused(mailbox: Mailbox, owner: MailboxOwner, tmp_path: Path) -> None:
    for operation in operations(owner, "c1"):
        with pytest.raises(ValueError, match="mailbox"):
            await operation(mailbox)
    with pytest.raises(ValueError, match="mailbox"):
        await mailbox.flag_changes(owner, None)
    assert not (tmp_path / "mail").exists()


@pytest.mark.parametrize("copy_id", UNSAFE_COPY_IDS, ids=repr)
async def test_unsafe_copy_ids_are_refused(mailbox: Mailbox, copy_id: str, tmp_path: Path) -> None:
    for operation in operations(OWNER, copy_id):
        with pytest.raises(ValueError, match="copy id"):
            await operation(mailbox)
    assert not (tmp_path / "mail").exists()


@pytest.mark.parametrize(
    "data",
    [
        MESSAGE,
        b"Subject: bare LF\n\nline\nno final newline",
        b"Subject: =?iso-8859-1?q?Gr=FC=DFe?=\r\n\r\n\xe4\xf6\xfc\x00\xff\r\n.\r\n",
        b"",
    ],
    ids=["crlf", "bare-lf", "8bit-nul", "empty"],
)
async def test_bytes_are_stored_exactly(mailbox: Mailbox, data: bytes) -> None:
    located = await mailbox.append(OWNER, "c1", data)
    assert stored_bytes(mailbox, OWNER, located) == as_stored(mailbox, "c1", data)


async def test_concurrent_appends_of_one_copy_deliver_it_once(
    mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slow disk widens the window between "is the copy there?" and linking the new file. Half of the
    # attempts carry flags, which on Maildir name a different file (cur/ instead of new/), so link()'s
    # refusal to overwrite cannot be what keeps them from delivering twice.
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(0.005)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    results = await asyncio.gather(
        *(
            mailbox.append(OWNER, "c1", MESSAGE, frozenset({Flag.SEEN}) if i % 2 else frozenset())
            for i in range(20)
        )
    )

    assert len(set(results)) == 1
    assert await mailbox.find(OWNER, "c1") == [results[0]]
    if isinstance(mailbox, MaildirMailbox):
        assert len(files_of(mailbox, OWNER, "c1")) == 1
        assert os.listdir(mailbox.maildir_path(OWNER) / "tmp") == []


# --- Maildir on disk ----------------------------------------------------------------------------------


async def test_maildir_layout_names_and_modes(maildir: MaildirMailbox) -> None:
    located = await maildir.append(OWNER, "c1", MESSAGE)

    owner_dir = maildir.root / "makler-muster" / "sb-a1@kunde-a.example"
    assert maildir.maildir_path(OWNER) == owner_dir
    assert located.ref == f"new/c1.{HOST}"
    assert (owner_dir / located.ref).read_bytes() == MESSAGE
    for directory in (owner_dir.parent, owner_dir, owner_dir / "cur", owner_dir / "new", owner_dir / "tmp"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE((owner_dir / located.ref).stat().st_mode) == 0o600

    flagged = await maildir.append(OWNER, "c2", MESSAGE, frozenset({Flag.SEEN, Flag.ANSWERED, Flag.DRAFT}))
    assert flagged.ref == f"cur/c2.{HOST}:2,DRS"


async def test_maildir_flag_renames_move_between_new_and_cur(maildir: MaildirMailbox) -> None:
    await maildir.append(OWNER, "c1", MESSAGE)

    [located] = await maildir.remove_flags(OWNER, "c1", frozenset({Flag.SEEN}))
    assert located.ref == f"new/c1.{HOST}"
    [located] = await maildir.add_flags(OWNER, "c1", frozenset({Flag.SEEN, Flag.ANSWERED}))
    assert located.ref == f"cur/c1.{HOST}:2,RS"
    [located] = await maildir.add_flags(OWNER, "c1", frozenset({Flag.FLAGGED, Flag.DELETED}))
    assert located.ref == f"cur/c1.{HOST}:2,FRST"
    [located] = await maildir.remove_flags(OWNER, "c1", frozenset(Flag))
    assert located.ref == f"cur/c1.{HOST}:2,"
    assert located.flags == frozenset()
    assert [p.name for p in files_of(maildir, OWNER, "c1")] == [f"c1.{HOST}:2,"]


async def test_two_nodes_writing_one_copy_at_once_leave_one_file(tmp_path: Path) -> None:
    """The file name comes from the copy id alone, so link() lets exactly one node win (issue 17)."""
    n1, n2 = MaildirMailbox(tmp_path), MaildirMailbox(tmp_path)
    copy_ids = [f"c{n}" for n in range(40)]
    for copy_id in copy_ids:
        # Both as first attempts (no look for the copy): each thinks it holds the lease.
        one, two = await asyncio.gather(
            n1.append(OWNER, copy_id, MESSAGE, first_attempt=True),
            n2.append(OWNER, copy_id, MESSAGE, first_attempt=True),
        )
        assert one == two
    for copy_id in copy_ids:
        assert [p.name for p in files_of(n1, OWNER, copy_id)] == [f"{copy_id}.{HOST}"]


async def test_a_node_resuming_after_another_wrote_the_copy_with_flags_writes_none(tmp_path: Path) -> None:
    n1, n2 = MaildirMailbox(tmp_path), MaildirMailbox(tmp_path)
    written = await n2.append(OWNER, "c1", MESSAGE, frozenset({Flag.ANSWERED}))
    assert written.ref == f"cur/c1.{HOST}:2,R"
    await n2.add_flags(OWNER, "c1", frozenset({Flag.SEEN}))  # the member read it meanwhile
    # The stalled node took the copy before the answer, so it would write it without flags, to new/.
    found = await n1.append(OWNER, "c1", MESSAGE, first_attempt=True)
    assert found.ref == f"cur/c1.{HOST}:2,RS"
    assert [p.name for p in files_of(n1, OWNER, "c1")] == [f"c1.{HOST}:2,RS"]


async def test_copies_named_by_earlier_versions_are_found(tmp_path: Path) -> None:
    """Before issue 17 a copy's name carried the node's host name; those copies are still the copy."""
    box = MaildirMailbox(tmp_path)
    owner_dir = box.maildir_path(OWNER)
    for sub in ("cur", "new", "tmp"):
        (owner_dir / sub).mkdir(parents=True)
    (owner_dir / "new" / "c1.gw1.example").write_bytes(MESSAGE)

    [located] = await box.find(OWNER, "c1")
    assert located.ref == "new/c1.gw1.example"
    assert await box.append(OWNER, "c1", MESSAGE) == located
    [flagged] = await box.add_flags(OWNER, "c1", frozenset({Flag.SEEN}))
    assert flagged.ref == "cur/c1.gw1.example:2,S"
    assert await box.remove(OWNER, "c1") == 1
    assert files_of(box, OWNER, "c1") == []


async def test_members_own_mail_and_dovecot_names(maildir: MaildirMailbox) -> None:
    await maildir.append(OWNER, "c1", MESSAGE)
    cur = maildir.maildir_path(OWNER) / "cur"
    # The member's own mail, as Dovecot and postfix name it, and Dovecot's bookkeeping files.
    foreign = ["1700000000.M123P456.mail.example,S=10,W=11:2,S", "1700000001.12345_1.mx.example:2,"]
    for name in foreign:
        (cur / name).write_bytes(b"Subject: private\r\n\r\n")
    (maildir.maildir_path(OWNER) / "dovecot-uidlist").write_text("3 V1 N2\n")
    # Our copy, after Dovecot added its size fields and a keyword letter ('a') and an unknown one ('P').
    dovecot_name = f"c2.{HOST},S=57,W=60:2,PSa"
    (cur / dovecot_name).write_bytes(MESSAGE)

    [c2] = await maildir.find(OWNER, "c2")
    assert (c2.ref, c2.flags) == (f"cur/{dovecot_name}", frozenset({Flag.SEEN}))
    [c2] = await maildir.add_flags(OWNER, "c2", frozenset({Flag.ANSWERED}))
    assert c2.ref == f"cur/c2.{HOST},S=57,W=60:2,PRSa"
    [c2] = await maildir.remove_flags(OWNER, "c2", frozenset({Flag.SEEN}))
    assert c2.ref == f"cur/c2.{HOST},S=57,W=60:2,PRa"

    changes, _ = await maildir.flag_changes(OWNER, None)
    assert [change.copy_id for change in changes] == ["c1", "c2"]
    assert sorted(os.listdir(cur)) == sorted([*foreign, f"c2.{HOST},S=57,W=60:2,PRa"])


async def test_remove_takes_every_instance_in_every_folder(maildir: MaildirMailbox) -> None:
    located = await maildir.append(OWNER, "c1", MESSAGE)
    source = maildir.maildir_path(OWNER) / located.ref
    # A client that copied the file keeping its name, into two folders (one nested, Maildir++ style).
    os.link(source, folder_dir(maildir, OWNER, "Archiv") / "cur" / f"{source.name}:2,S")
    os.link(source, folder_dir(maildir, OWNER, "Archiv.2026") / "new" / source.name)

    found = await maildir.find(OWNER, "c1")
    assert [(f.folder, f.flags) for f in found] == [
        ("INBOX", frozenset()),
        ("Archiv", {Flag.SEEN}),
        ("Archiv.2026", frozenset()),
    ]
    assert await maildir.remove(OWNER, "c1") == 3
    assert files_of(maildir, OWNER, "c1") == []


async def test_a_crash_leftover_in_tmp_is_not_the_copy(maildir: MaildirMailbox) -> None:
    owner_dir = maildir.maildir_path(OWNER)
    for sub in ("cur", "new", "tmp"):
        (owner_dir / sub).mkdir(parents=True)
    # A crash after writing part of the file into tmp/ and before linking it into new/.
    leftover = owner_dir / "tmp" / f"c1.{HOST}.4242_0123456789abcdef"
    leftover.write_bytes(MESSAGE[:20])

    assert await maildir.find(OWNER, "c1") == []
    changes, _ = await maildir.flag_changes(OWNER, None)
    assert changes == []

    located = await maildir.append(OWNER, "c1", MESSAGE)
    assert located.ref == f"new/c1.{HOST}"
    assert (owner_dir / located.ref).read_bytes() == MESSAGE
    assert await maildir.find(OWNER, "c1") == [located]
    assert os.listdir(owner_dir / "tmp") == [leftover.name]


async def test_python_s_maildir_reader_agrees(maildir: MaildirMailbox) -> None:
    await maildir.append(OWNER, "c1", MESSAGE)
    await maildir.append(OWNER, "c2", b"Subject: zwei\r\n\r\nx\r\n", frozenset({Flag.SEEN, Flag.FLAGGED}))
    await maildir.append(OWNER, "c3", b"Subject: drei\r\n\r\ny\r\n")
    await maildir.add_flags(OWNER, "c3", frozenset({Flag.ANSWERED}))
    await member_moves(maildir, OWNER, "c3", "Archiv")

    reader = stdlib_mailbox.Maildir(maildir.maildir_path(OWNER), factory=None, create=False)
    try:
        messages = {key: reader.get_message(key) for key in reader.iterkeys()}
        assert sorted(messages) == [f"c1.{HOST}", f"c2.{HOST}"]
        c1, c2 = messages[f"c1.{HOST}"], messages[f"c2.{HOST}"]
        assert (c1.get_subdir(), c1.get_flags()) == ("new", "")
        assert (c2.get_subdir(), c2.get_flags()) == ("cur", "FS")
        assert reader.get_bytes(f"c1.{HOST}") == MESSAGE
        assert c2["Subject"] == "zwei"

        assert reader.list_folders() == ["Archiv"]
        archive = reader.get_folder("Archiv")
        [(key, c3)] = archive.items()
        assert key == f"c3.{HOST}"
        assert c3.get_flags() == "R"
        assert c3["Subject"] == "drei"
    finally:
        reader.close()


async def test_a_file_moved_during_a_flag_change_is_looked_up_again(
    maildir: MaildirMailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    await maildir.append(OWNER, "c1", MESSAGE)
    archive = folder_dir(maildir, OWNER, "Archiv")
    real_rename = os.rename
    calls: list[str] = []

    def client_moves_it_first(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(os.fspath(src))
        if len(calls) == 1:
            real_rename(src, archive / "cur" / Path(src).name)
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", client_moves_it_first)
    [located] = await maildir.add_flags(OWNER, "c1", frozenset({Flag.SEEN}))

    assert len(calls) == 2
    assert (located.folder, located.ref, located.flags) == (
        "Archiv",
        f".Archiv/cur/c1.{HOST}:2,S",
        frozenset({Flag.SEEN}),
    )
    assert await maildir.find(OWNER, "c1") == [located]


async def test_a_file_that_keeps_moving_is_a_temporary_error(
    maildir: MaildirMailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    await maildir.append(OWNER, "c1", MESSAGE)
    folders = [folder_dir(maildir, OWNER, "A"), folder_dir(maildir, OWNER, "B")]
    real_rename = os.rename

    def client_keeps_moving_it(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        source = Path(src)
        target = next(f for f in folders if f != source.parent.parent)
        real_rename(source, target / "cur" / source.name)
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", client_keeps_moving_it)
    with pytest.raises(MailboxError, match="kept moving"):
        await maildir.add_flags(OWNER, "c1", frozenset({Flag.SEEN}))


async def test_file_system_trouble_is_a_mailbox_error(tmp_path: Path) -> None:
    root = tmp_path / "not-a-directory"
    root.write_bytes(b"")
    box = MaildirMailbox(root)

    with pytest.raises(MailboxError) as caught:
        await box.append(OWNER, "c1", MESSAGE)
    assert isinstance(caught.value, OSError)
    assert caught.value.filename is not None
    assert str(root) in caught.value.filename
    assert "append copy c1" in str(caught.value)


async def test_a_failed_link_leaves_no_temporary_file(maildir: MaildirMailbox) -> None:
    await maildir.append(OWNER, "c1", MESSAGE)
    new = maildir.maildir_path(OWNER) / "new"
    (new / f"c1.{HOST}").unlink()
    new.rmdir()
    new.write_bytes(b"")  # new/ is broken: link() into it fails after the data was written to tmp/

    with pytest.raises(MailboxError, match="append copy c2") as caught:
        await maildir.append(OWNER, "c2", MESSAGE)
    assert caught.value.filename is not None
    assert os.listdir(maildir.maildir_path(OWNER) / "tmp") == []


# --- batches ------------------------------------------------------------------------------------------


async def test_a_batch_answers_each_copy_in_order_and_one_bad_copy_fails_alone(mailbox: Mailbox) -> None:
    await mailbox.append(OTHER, "c2", MESSAGE)
    results = await mailbox.append_batch(
        [
            Delivery(OWNER, "c1", MESSAGE),
            Delivery(OWNER, "../evil", MESSAGE),  # refused: not a copy id
            Delivery(OTHER, "c2", b"other bytes"),  # there already: found, not written again
            Delivery(OTHER, "c3", MESSAGE, frozenset({Flag.SEEN}), first_attempt=True),
        ]
    )
    assert [type(r).__name__ for r in results] == ["Located", "ValueError", "Located", "Located"]
    first, _, again, flagged = results
    assert isinstance(first, Located)
    assert isinstance(again, Located)
    assert isinstance(flagged, Located)
    assert stored_bytes(mailbox, OWNER, first) == as_stored(mailbox, "c1", MESSAGE)
    assert stored_bytes(mailbox, OTHER, again) == as_stored(mailbox, "c2", MESSAGE), "the earlier copy stays"
    assert flagged.flags == {Flag.SEEN}
    assert [len(await mailbox.find(OTHER, c)) for c in ("c2", "c3")] == [1, 1]


@pytest.mark.parametrize("batch_sync", [True, False], ids=["syncfs", "fsync-each"])
async def test_a_maildir_batch_is_synced_before_it_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_sync: bool
) -> None:
    box = MaildirMailbox(tmp_path / "mail", batch_sync=batch_sync)
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append("fsync"), real_fsync(fd))[1])
    if batch_sync:
        import gateway.mailbox.maildir as maildir_module

        real_syncfs = maildir_module._syncfs
        monkeypatch.setattr(
            maildir_module, "_syncfs", lambda path: (synced.append("syncfs"), real_syncfs(path))[1]
        )
    await box.append(OWNER, "c-first", MESSAGE)  # the Maildir exists: no directories made below
    synced.clear()
    deliveries = [Delivery(OWNER, f"c{n}", MESSAGE, first_attempt=True) for n in range(5)]
    results = await box.append_batch(deliveries)
    assert all(isinstance(r, Located) for r in results)
    assert all(len(files_of(box, OWNER, f"c{n}")) == 1 for n in range(5))
    if batch_sync:
        assert synced == ["syncfs"], "one sync of the file system for the whole batch, after the writes"
    else:
        assert synced == ["fsync"] * 6, "each of the five files, then their directory once"


async def test_a_failed_batch_sync_fails_every_copy_it_wrote(
    maildir: MaildirMailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.mailbox.maildir as maildir_module

    await maildir.append(OTHER, "c0", MESSAGE)

    def broken(path: Path) -> None:
        raise OSError(5, "Input/output error", str(path))

    monkeypatch.setattr(maildir_module, "_syncfs", broken)
    results = await maildir.append_batch([Delivery(OWNER, "c1", MESSAGE), Delivery(OTHER, "c0", MESSAGE)])
    assert isinstance(results[0], MailboxError)
    assert "Input/output error" in str(results[0])
    assert isinstance(results[1], Located), "a copy found, not written, needs no sync"


# --- the fake's test controls -------------------------------------------------------------------------


async def test_memory_fail_next_raises_then_recovers() -> None:
    box = MemoryMailbox()
    trouble = MailboxError("disk on fire")
    box.fail_next(2, trouble)

    with pytest.raises(MailboxError) as first:
        await box.append(OWNER, "c1", MESSAGE)
    assert first.value is trouble
    with pytest.raises(MailboxError):
        await box.find(OWNER, "c1")
    # Nothing was stored by the failed append; the next operation works.
    assert await box.find(OWNER, "c1") == []
    await box.append(OWNER, "c1", MESSAGE)
    assert len(await box.find(OWNER, "c1")) == 1


async def test_memory_move_and_close() -> None:
    box = MemoryMailbox()
    await box.append(OWNER, "c1", MESSAGE)
    [moved] = box.move(OWNER, "c1", "Archiv")
    assert moved.folder == "Archiv"
    assert box.read(OWNER, moved.ref) == MESSAGE
    assert await box.find(OWNER, "c1") == [moved]
    assert not box.closed
    await box.close()
    assert box.closed


async def test_maildir_flag_changes_skip_the_listing_while_no_cur_changed(
    maildir: MaildirMailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.mailbox.maildir as maildir_module

    await maildir.append(OWNER, "c1", MESSAGE)
    _, token = await maildir.flag_changes(OWNER, None)
    old = time.time() - 60
    for cur in maildir.maildir_path(OWNER).rglob("cur"):
        os.utime(cur, (old, old))  # nothing happened here for a minute
    changes, token = await maildir.flag_changes(OWNER, token)
    assert changes == []

    real_scan = maildir_module._scan

    def no_listing(*args: object) -> object:
        raise AssertionError("listed a mailbox whose cur/ did not change")

    monkeypatch.setattr(maildir_module, "_scan", no_listing)
    assert await maildir.flag_changes(OWNER, token) == ([], token)

    monkeypatch.setattr(maildir_module, "_scan", real_scan)
    await member_reads(maildir, OWNER, "c1")  # a rename into cur/: its mtime moves
    changes, _ = await maildir.flag_changes(OWNER, token)
    assert changes == [FlagChange("c1", "INBOX", frozenset({Flag.SEEN}))]
