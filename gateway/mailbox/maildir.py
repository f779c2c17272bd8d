"""Members' mailboxes as Maildirs on local disk, the embedded default that Dovecot can serve over IMAP.

Layout: ``<root>/<portfolio>/<address>/`` is a standard Maildir (``cur/ new/ tmp/``), created with mode
0o700 on the first delivery, and its Maildir++ subfolders are ``.<Folder>/`` beside them, with "." as
the hierarchy separator as Dovecot's Maildir++ layout has it; the top level is folder ``"INBOX"``.

A copy's file name is ``<copy_id>.gateway[:2,<info>]``: derived from the copy id alone, the same on
every gateway node. The copy id is unique across the database, so the name is unique as the Maildir
specification asks (it suggests time, pid and host only to make names unique). Two nodes that write
the same copy, one of them stalled past its fan-out lease, link() the same name into the same
directory, and exactly one wins; the other finds the copy there (docs/scaling.md). Files named
``<copy_id>.<hostname>`` by earlier versions are found the same way.

The copy id at the front is how the gateway finds its copies again in any folder: mail clients and
Dovecot keep a file's base name when they change its flags or move it (Dovecot keeps it as the
message's GUID even when copying between folders), and may only append ``,S=<size>,W=<vsize>`` before
the ``:``. Files whose name does not start with a valid copy id are members' own mail and are never
touched.

Every operation runs its blocking file I/O in one worker thread (``asyncio.to_thread``), so the event
loop never waits for the disk and one operation sees one consistent pass over the directories.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from gateway.errors import MailboxError
from gateway.mailbox.base import (
    Delivery,
    Flag,
    FlagChange,
    Located,
    Mailbox,
    MailboxOwner,
    check_copy_id,
    check_owner,
    decode_flag_view,
    encode_flag_view,
    flag_changes_between,
    flag_letters,
    flags_from_letters,
    is_copy_id,
)

INBOX = "INBOX"
_DIR_MODE = 0o700
_FILE_MODE = 0o600


# What follows the copy id in a copy's file name. Not the host or node name: a name every node derives
# alike is what lets link() refuse a second delivery of a copy by another node.
_SUFFIX = "gateway"


def copy_file_name(copy_id: str) -> str:
    """The base name of ``copy_id``'s file (without the ``:2,<flags>`` info), the same on every node."""
    return f"{copy_id}.{_SUFFIX}"


@dataclass(frozen=True, slots=True)
class _File:
    """One gateway copy's file as found in a folder's ``new/`` or ``cur/``."""

    copy_id: str
    folder: str
    folder_dir: Path
    subdir: str
    name: str

    @property
    def path(self) -> Path:
        return self.folder_dir / self.subdir / self.name

    @property
    def base(self) -> str:
        """The name without its info: the message's identity within the folder."""
        return self.name.partition(":")[0]

    @property
    def letters(self) -> str:
        """The info letters after ``:2,``; empty for files without (standard) info."""
        info = self.name.partition(":")[2]
        return info[2:] if info.startswith("2,") else ""

    def located(self, owner_dir: Path) -> Located:
        ref = (self.path.relative_to(owner_dir)).as_posix()
        return Located(self.copy_id, self.folder, ref, flags_from_letters(self.letters))


def _copy_id_of(name: str) -> str | None:
    """The copy id a file name starts with, or None for members' own mail and Maildir's hidden files."""
    if name.startswith("."):
        return None
    # Dovecot may put ",S=…,W=…" between the unique part and the ":2," info; neither belongs to the id.
    unique = name.partition(":")[0].partition(",")[0]
    copy_id, dot, host = unique.partition(".")
    if not dot or not host or not is_copy_id(copy_id):
        return None
    return copy_id


def _folders(owner_dir: Path) -> list[tuple[str, Path]]:
    """INBOX and every Maildir++ subfolder (a directory ``.<Folder>``), INBOX first, then by name."""
    try:
        entries = list(os.scandir(owner_dir))
    except FileNotFoundError:
        return []
    subfolders = sorted(
        (entry.name[1:], Path(entry.path))
        for entry in entries
        if entry.name.startswith(".") and len(entry.name) > 1 and entry.is_dir(follow_symlinks=False)
    )
    return [(INBOX, owner_dir), *subfolders]


def _scan(owner_dir: Path, copy_id: str | None = None) -> list[_File]:
    """The gateway's files in every folder (only ``copy_id``'s when given), in a stable order.

    ``new/`` is listed before ``cur/``: a file a client moves from new/ to cur/ meanwhile is then seen
    twice rather than missed, and the duplicate is dropped by its base name, keeping the cur/ one.
    """
    prefix = None if copy_id is None else copy_id + "."
    found: dict[tuple[str, str], _File] = {}
    for folder, folder_dir in _folders(owner_dir):
        for subdir in ("new", "cur"):
            try:
                names = sorted(os.listdir(folder_dir / subdir))
            except FileNotFoundError:
                continue
            for name in names:
                if prefix is not None and not name.startswith(prefix):
                    continue
                name_copy_id = _copy_id_of(name)
                if name_copy_id is None or (copy_id is not None and name_copy_id != copy_id):
                    continue
                file = _File(name_copy_id, folder, folder_dir, subdir, name)
                found[(folder, file.base)] = file
    return list(found.values())


# The info letters the gateway's copies carry in INBOX without a client's help: none, \\Answered and
# \\Seen from the fan-out, and what a client adds when it opens a new mail ("" in cur/).
_OWN_LETTERS = ("", "R", "S", "RS")


def _in_inbox(owner_dir: Path, copy_id: str) -> list[_File]:
    """The copy's file in INBOX under one of the names the gateway gives it, found by stat() alone
    (no listing): ``new/<name>`` or ``cur/<name>:2,<letters>`` for the usual letters."""
    name = copy_file_name(copy_id)
    candidates = [("new", name)] + [("cur", f"{name}:2,{letters}") for letters in _OWN_LETTERS]
    return [
        _File(copy_id, INBOX, owner_dir, subdir, filename)
        for subdir, filename in candidates
        if os.path.lexists(owner_dir / subdir / filename)
    ]


# A directory whose mtime is this recent may change again within the file system's timestamp granularity
# without its mtime moving on; only older ones are trusted to tell "nothing changed".
_SETTLE_NS = 2_000_000_000


def _cur_stamps(owner_dir: Path) -> tuple[tuple[str, int], ...]:
    """The mtime of every folder's cur/ (0 where there is none), in folder order."""
    stamps = []
    for folder, folder_dir in _folders(owner_dir):
        try:
            stamps.append((folder, os.stat(folder_dir / "cur").st_mtime_ns))
        except FileNotFoundError:
            stamps.append((folder, 0))
    return tuple(stamps)


def _settled(stamps: tuple[tuple[str, int], ...]) -> bool:
    newest = max((stamp for _, stamp in stamps), default=0)
    return time.time_ns() - newest > _SETTLE_NS


def _load_syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(2), or None where there is none (not Linux, or a libc without it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return cast(Callable[[int], int], function)


_SYNCFS = _load_syncfs()


def _syncfs(directory: Path) -> None:
    """Make everything written to ``directory``'s file system durable (data, names, journal)."""
    assert _SYNCFS is not None
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if _SYNCFS(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), str(directory))
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _as_mailbox_error(action: str, path: Path | str) -> Iterator[None]:
    """Turn the file system's errors into MailboxError naming the path and the reason."""
    try:
        yield
    except MailboxError:
        raise
    except OSError as exc:
        where = str(path) if exc.filename is None else os.fsdecode(exc.filename)
        raise MailboxError(exc.errno, f"{action}: {exc.strerror or exc}", where) from exc


@dataclass(slots=True)
class _Held:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


class _KeyedLocks:
    """One lock per (mailbox, copy id), taken inside the worker thread.

    The lock lives in the thread, not in the event loop, so a cancelled caller cannot release it while
    its thread is still writing: a retry of the same copy then waits instead of racing it. It serialises
    this process only; across processes the fan-out queue hands each copy to one worker at a time.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: dict[tuple[str, str], _Held] = {}

    @contextmanager
    def hold(self, key: tuple[str, str]) -> Iterator[None]:
        with self._guard:
            held = self._held.setdefault(key, _Held())
            held.users += 1
        try:
            with held.lock:
                yield
        finally:
            with self._guard:
                held.users -= 1
                if not held.users:
                    del self._held[key]


class MaildirMailbox(Mailbox):
    """The Mailbox protocol over Maildirs under ``root``; see the module docstring for the layout."""

    def __init__(self, root: Path, *, batch_sync: bool = True) -> None:
        self.root = root
        # One syncfs(2) after a batch of copies instead of an fsync per file and directory: on the
        # project's VM each fsync costs 0.75 ms of kernel time, a synced batch 0.05 ms per copy.
        self.batch_sync = batch_sync and _SYNCFS is not None
        self._locks = _KeyedLocks()
        self._quiet: dict[Path, tuple[str, tuple[tuple[str, int], ...]]] = {}

    def maildir_path(self, owner: MailboxOwner) -> Path:
        """The owner's Maildir (it may not exist yet); ``ValueError`` for an unsafe owner."""
        check_owner(owner)
        return self.root / owner.portfolio / owner.address

    async def append(
        self,
        owner: MailboxOwner,
        copy_id: str,
        data: bytes,
        flags: frozenset[Flag] = frozenset(),
        *,
        first_attempt: bool = False,
    ) -> Located:
        check_copy_id(copy_id)
        owner_dir = self.maildir_path(owner)
        return await asyncio.to_thread(
            self._append, owner_dir, copy_id, data, frozenset(flags), first_attempt
        )

    async def append_batch(self, deliveries: Sequence[Delivery]) -> list[Located | Exception]:
        results: list[Located | Exception | None] = [None] * len(deliveries)
        work: list[tuple[Path, Delivery]] = []
        placed: list[int] = []
        for index, d in enumerate(deliveries):
            try:
                check_copy_id(d.copy_id)
                work.append((self.maildir_path(d.owner), d))
                placed.append(index)
            except ValueError as exc:
                results[index] = exc
        if work:
            for index, result in zip(placed, await asyncio.to_thread(self._append_batch, work), strict=True):
                results[index] = result
        return [r for r in results if r is not None]

    async def find(self, owner: MailboxOwner, copy_id: str) -> list[Located]:
        check_copy_id(copy_id)
        owner_dir = self.maildir_path(owner)
        return await asyncio.to_thread(self._find, owner_dir, copy_id)

    async def add_flags(self, owner: MailboxOwner, copy_id: str, flags: frozenset[Flag]) -> list[Located]:
        check_copy_id(copy_id)
        owner_dir = self.maildir_path(owner)
        return await asyncio.to_thread(self._change_flags, owner_dir, copy_id, flag_letters(flags), "")

    async def remove_flags(self, owner: MailboxOwner, copy_id: str, flags: frozenset[Flag]) -> list[Located]:
        check_copy_id(copy_id)
        owner_dir = self.maildir_path(owner)
        return await asyncio.to_thread(self._change_flags, owner_dir, copy_id, "", flag_letters(flags))

    async def remove(self, owner: MailboxOwner, copy_id: str) -> int:
        check_copy_id(copy_id)
        owner_dir = self.maildir_path(owner)
        return await asyncio.to_thread(self._remove, owner_dir, copy_id)

    async def flag_changes(self, owner: MailboxOwner, since: str | None) -> tuple[list[FlagChange], str]:
        owner_dir = self.maildir_path(owner)
        before = None if since is None else decode_flag_view(since)
        # Flags live in cur/ names: a flag set, cleared or moved renames a file in some cur/, which
        # changes that directory's mtime. While no cur/ changed since the view behind ``since`` was
        # taken, nothing can have changed, and the mailbox need not be listed (flag sync asks every
        # mailbox every second; listing one with thousands of copies each time would not do).
        stamps = await asyncio.to_thread(_cur_stamps, owner_dir)
        if since is not None and self._quiet.get(owner_dir) == (since, stamps):
            return [], since
        now = await asyncio.to_thread(self._flag_view, owner_dir)
        token = encode_flag_view(now)
        if _settled(stamps):
            self._quiet[owner_dir] = (token, stamps)
        return flag_changes_between(before, now), token

    async def close(self) -> None:
        """Nothing to release: every operation opens and closes its own files."""

    # --- the blocking halves, one worker-thread call per operation ------------------------------------

    def _find(self, owner_dir: Path, copy_id: str) -> list[Located]:
        with _as_mailbox_error(f"find copy {copy_id}", owner_dir):
            return [file.located(owner_dir) for file in _scan(owner_dir, copy_id)]

    def _append(
        self, owner_dir: Path, copy_id: str, data: bytes, flags: frozenset[Flag], first_attempt: bool
    ) -> Located:
        located, written_in = self._place(owner_dir, copy_id, data, flags, first_attempt)
        if written_in is not None:
            with _as_mailbox_error(f"append copy {copy_id}", owner_dir):
                _fsync_dir(written_in)
        return located

    def _append_batch(self, work: Sequence[tuple[Path, Delivery]]) -> list[Located | Exception]:
        results: list[Located | Exception] = []
        # None is reported written before it is durable: either one sync of the file system after
        # the whole batch, or its file synced as it is written and one sync per directory here.
        waiting: dict[Path, list[int]] = {}
        for owner_dir, d in work:
            try:
                located, written_in = self._place(
                    owner_dir, d.copy_id, d.data, d.flags, d.first_attempt, sync=not self.batch_sync
                )
            except MailboxError as exc:
                results.append(exc)
                continue
            if written_in is not None:
                waiting.setdefault(written_in, []).append(len(results))
            results.append(located)
        if self.batch_sync and waiting:
            try:
                with _as_mailbox_error("sync", self.root):
                    _syncfs(self.root)
            except MailboxError as exc:
                written = {index for indexes in waiting.values() for index in indexes}
                return [exc if index in written else r for index, r in enumerate(results)]
            return results
        for directory, indexes in waiting.items():
            try:
                with _as_mailbox_error("sync", directory):
                    _fsync_dir(directory)
            except MailboxError as exc:
                for index in indexes:
                    results[index] = exc
        return results

    def _place(
        self,
        owner_dir: Path,
        copy_id: str,
        data: bytes,
        flags: frozenset[Flag],
        first_attempt: bool,
        *,
        sync: bool = True,
    ) -> tuple[Located, Path | None]:
        """Write the copy unless it is there; where it is, and the directory to sync if it was written."""
        with (
            _as_mailbox_error(f"append copy {copy_id}", owner_dir),
            self._locks.hold((str(owner_dir), copy_id)),
        ):
            # Listing every folder costs time that grows with the mailbox; a first attempt cannot
            # have left a copy behind (the fan-out confirmed its lease just before), and link() below
            # refuses a second file of the same name, whichever node writes it. A few stat() calls
            # for the names the gateway gives a copy in INBOX also catch a node that resumes after
            # the other wrote the copy with other flags (so under another name) or a client read it.
            existing = _in_inbox(owner_dir, copy_id) if first_attempt else _scan(owner_dir, copy_id)
            if existing:
                return existing[0].located(owner_dir), None
            self._create_maildir(owner_dir)
            name = copy_file_name(copy_id)
            # Without flags the copy goes to new/, where clients pick it up as newly arrived; flags can
            # only be written in a cur/ name, so a copy delivered with flags goes straight to cur/.
            if flags:
                subdir, filename = "cur", f"{name}:2,{flag_letters(flags)}"
            else:
                subdir, filename = "new", name
            target_dir = owner_dir / subdir
            # The temporary name is unique per attempt, so a file left in tmp/ by a crash is never
            # mistaken for this one, and is never counted as the copy (tmp/ is not searched).
            temporary = f"{owner_dir}/tmp/{name}.{os.getpid()}_{secrets.token_hex(8)}"
            try:
                self._write(temporary, data, sync=sync)
                try:
                    # link() refuses to replace an existing name, unlike rename(): the last guard
                    # against a second delivery of the same copy, by this node or another one.
                    os.link(temporary, f"{target_dir}/{filename}")
                except FileExistsError:
                    existing = _scan(owner_dir, copy_id)
                    if existing:
                        return existing[0].located(owner_dir), None
                    raise
            finally:
                with suppress(FileNotFoundError):
                    os.unlink(temporary)
            return Located(copy_id, INBOX, f"{subdir}/{filename}", flags), target_dir

    def _change_flags(self, owner_dir: Path, copy_id: str, add: str, drop: str) -> list[Located]:
        with (
            _as_mailbox_error(f"change flags of copy {copy_id}", owner_dir),
            self._locks.hold((str(owner_dir), copy_id)),
        ):
            # A client may move a file between our listing and our rename; the rename then fails with
            # ENOENT and one more pass finds it where it went. Files already changed need no rename then.
            for _ in range(2):
                result: list[Located] = []
                vanished = False
                for file in _scan(owner_dir, copy_id):
                    # Keyword letters (lower case) and letters we do not know are kept as they are.
                    letters = "".join(sorted((set(file.letters) | set(add)) - set(drop)))
                    if letters == file.letters and (file.subdir == "cur" or not letters):
                        result.append(file.located(owner_dir))
                        continue
                    changed = _File(copy_id, file.folder, file.folder_dir, "cur", f"{file.base}:2,{letters}")
                    try:
                        os.rename(file.path, changed.path)
                    except FileNotFoundError:
                        vanished = True
                        continue
                    result.append(changed.located(owner_dir))
                if not vanished:
                    return result
            raise MailboxError(
                errno.ENOENT, f"change flags of copy {copy_id}: its file kept moving", str(owner_dir)
            )

    def _remove(self, owner_dir: Path, copy_id: str) -> int:
        with (
            _as_mailbox_error(f"remove copy {copy_id}", owner_dir),
            self._locks.hold((str(owner_dir), copy_id)),
        ):
            removed = 0
            for _ in range(2):
                vanished = False
                for file in _scan(owner_dir, copy_id):
                    try:
                        os.unlink(file.path)
                    except FileNotFoundError:
                        vanished = True
                        continue
                    removed += 1
                if not vanished:
                    return removed
            raise MailboxError(errno.ENOENT, f"remove copy {copy_id}: its file kept moving", str(owner_dir))

    def _flag_view(self, owner_dir: Path) -> dict[tuple[str, str], frozenset[Flag]]:
        with _as_mailbox_error("list flags", owner_dir):
            view: dict[tuple[str, str], frozenset[Flag]] = {}
            for file in _scan(owner_dir):
                # Two files of one copy in one folder (a client duplicated it) count as one, with the
                # flags of both: a flag set on either is a flag the member set.
                key = (file.copy_id, file.folder)
                view[key] = view.get(key, frozenset()) | flags_from_letters(file.letters)
            return view

    def _create_maildir(self, owner_dir: Path) -> None:
        if (owner_dir / "tmp").is_dir():
            return
        self.root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        for directory in (
            owner_dir.parent,
            owner_dir,
            owner_dir / "cur",
            owner_dir / "new",
            owner_dir / "tmp",
        ):
            with suppress(FileExistsError):
                directory.mkdir(mode=_DIR_MODE)
                _fsync_dir(directory.parent)

    @staticmethod
    def _write(path: str, data: bytes, *, sync: bool) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), _FILE_MODE)
        with _as_mailbox_error("write", path):
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
