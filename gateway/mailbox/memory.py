"""An in-memory Mailbox with the Maildir implementation's semantics, for stage tests of the workers.

Besides the protocol it lets a test act as a member (``move`` a copy to another folder) and as a
troubled store (``fail_next`` makes the next operations raise), and shows what was delivered (``read``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from gateway.mailbox.base import (
    Delivery,
    Flag,
    FlagChange,
    Located,
    Mailbox,
    MailboxOwner,
    append_each,
    check_copy_id,
    check_owner,
    decode_flag_view,
    encode_flag_view,
    flag_changes_between,
)

INBOX = "INBOX"

_FlagUpdate = Callable[[frozenset[Flag]], frozenset[Flag]]


@dataclass(frozen=True, slots=True)
class _Stored:
    copy_id: str
    data: bytes
    flags: frozenset[Flag]
    uid: int

    def located(self, folder: str) -> Located:
        # Like an IMAP UID, the reference names the folder and the instance, and changes on a move.
        return Located(self.copy_id, folder, f"{folder}/{self.uid}", self.flags)


class MemoryMailbox(Mailbox):
    """Members' mailboxes as dictionaries: owner -> folder -> stored copies in arrival order."""

    def __init__(self) -> None:
        self.closed = False
        self._boxes: dict[MailboxOwner, dict[str, list[_Stored]]] = {}
        self._uids = itertools.count(1)
        self._failures: list[Exception] = []

    # --- test controls --------------------------------------------------------------------------------

    def fail_next(self, n: int, error: Exception) -> None:
        """Make the next ``n`` protocol operations (other than ``close``) raise ``error`` untouched."""
        if n < 0:
            raise ValueError("n must not be negative")
        self._failures.extend([error] * n)

    def move(self, owner: MailboxOwner, copy_id: str, folder: str) -> list[Located]:
        """Move every instance of the copy to ``folder`` as a member's mail client would."""
        check_owner(owner)
        check_copy_id(copy_id)
        if not folder:
            raise ValueError("folder name must not be empty")
        moved = self._take(owner, copy_id)
        target = self._boxes.setdefault(owner, {}).setdefault(folder, [])
        for stored in moved:
            target.append(replace(stored, uid=next(self._uids)))
        return [stored.located(folder) for stored in target if stored.copy_id == copy_id]

    def read(self, owner: MailboxOwner, ref: str) -> bytes:
        """The bytes stored for the instance ``ref`` (``KeyError`` when there is none)."""
        for folder, stored in self._instances(owner):
            if stored.located(folder).ref == ref:
                return stored.data
        raise KeyError(ref)

    # --- the protocol ---------------------------------------------------------------------------------

    async def append(
        self,
        owner: MailboxOwner,
        copy_id: str,
        data: bytes,
        flags: frozenset[Flag] = frozenset(),
        *,
        first_attempt: bool = False,  # the fake always looks: finding is free in memory
    ) -> Located:
        self._check(owner, copy_id)
        for folder, stored in self._instances(owner, copy_id):
            return stored.located(folder)
        stored = _Stored(copy_id, bytes(data), frozenset(flags), next(self._uids))
        self._boxes.setdefault(owner, {}).setdefault(INBOX, []).append(stored)
        return stored.located(INBOX)

    async def append_batch(self, deliveries: Sequence[Delivery]) -> list[Located | Exception]:
        return await append_each(self, deliveries)

    async def find(self, owner: MailboxOwner, copy_id: str) -> list[Located]:
        self._check(owner, copy_id)
        return [stored.located(folder) for folder, stored in self._instances(owner, copy_id)]

    async def add_flags(self, owner: MailboxOwner, copy_id: str, flags: frozenset[Flag]) -> list[Located]:
        self._check(owner, copy_id)
        return self._update(owner, copy_id, lambda current: current | flags)

    async def remove_flags(self, owner: MailboxOwner, copy_id: str, flags: frozenset[Flag]) -> list[Located]:
        self._check(owner, copy_id)
        return self._update(owner, copy_id, lambda current: current - flags)

    async def remove(self, owner: MailboxOwner, copy_id: str) -> int:
        self._check(owner, copy_id)
        return len(self._take(owner, copy_id))

    async def flag_changes(self, owner: MailboxOwner, since: str | None) -> tuple[list[FlagChange], str]:
        self._check(owner, None)
        before = None if since is None else decode_flag_view(since)
        now: dict[tuple[str, str], frozenset[Flag]] = {}
        for folder, stored in self._instances(owner):
            key = (stored.copy_id, folder)
            now[key] = now.get(key, frozenset()) | stored.flags
        return flag_changes_between(before, now), encode_flag_view(now)

    async def close(self) -> None:
        self.closed = True

    # --- internals ------------------------------------------------------------------------------------

    def _check(self, owner: MailboxOwner, copy_id: str | None) -> None:
        # Invalid input is refused before an injected failure, as the real implementations refuse it
        # before touching the store.
        check_owner(owner)
        if copy_id is not None:
            check_copy_id(copy_id)
        if self._failures:
            raise self._failures.pop(0)

    def _instances(self, owner: MailboxOwner, copy_id: str | None = None) -> list[tuple[str, _Stored]]:
        folders = self._boxes.get(owner, {})
        order = sorted(folders, key=lambda folder: (folder != INBOX, folder))
        return [
            (folder, stored)
            for folder in order
            for stored in folders[folder]
            if copy_id is None or stored.copy_id == copy_id
        ]

    def _take(self, owner: MailboxOwner, copy_id: str) -> list[_Stored]:
        taken: list[_Stored] = []
        for stored in self._boxes.get(owner, {}).values():
            taken.extend(s for s in stored if s.copy_id == copy_id)
            stored[:] = [s for s in stored if s.copy_id != copy_id]
        return taken

    def _update(self, owner: MailboxOwner, copy_id: str, change: _FlagUpdate) -> list[Located]:
        for stored in self._boxes.get(owner, {}).values():
            for i, instance in enumerate(stored):
                if instance.copy_id == copy_id:
                    stored[i] = replace(instance, flags=frozenset(change(instance.flags)))
        return [instance.located(folder) for folder, instance in self._instances(owner, copy_id)]
