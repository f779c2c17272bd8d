"""The Mailbox protocol: what fan-out, flag sync and revocation need from a member's mailbox.

The protocol is IMAP-shaped so that Maildir, IMAP and the in-memory fake can stand behind it alike:
flags are IMAP system flags, a mailbox has folders (``"INBOX"`` is the top level), and every copy the
gateway delivers carries its own copy id, which makes delivery idempotent and lets the gateway find the
copy again wherever the member moved it.

Besides the protocol this module holds what every implementation must agree on: which owners, copy ids
and flag-state tokens are valid, and how a flag-state token is read and compared.
"""

from __future__ import annotations

import asyncio
import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from gateway.errors import MailboxError


class Flag(enum.StrEnum):
    """The IMAP system flags (RFC 9051 §2.3.2) a copy can carry; the values are IMAP's spelling."""

    SEEN = "\\Seen"
    ANSWERED = "\\Answered"
    FLAGGED = "\\Flagged"
    DELETED = "\\Deleted"
    DRAFT = "\\Draft"


@dataclass(frozen=True, slots=True)
class MailboxOwner:
    """Whose mailbox: a member's normalised (lower-case) address inside one portfolio."""

    portfolio: str
    address: str


@dataclass(frozen=True, slots=True)
class Located:
    """One instance of a copy in a mailbox, as it is now.

    ``folder`` is ``"INBOX"`` for the top level. ``ref`` is the implementation's own reference to the
    instance (Maildir: the file's path relative to the owner's Maildir); it changes when the flags or the
    folder change, so callers store it for diagnosis only and find copies by ``copy_id``.
    """

    copy_id: str
    folder: str
    ref: str
    flags: frozenset[Flag]


@dataclass(frozen=True, slots=True)
class FlagChange:
    """A copy in one folder whose flags differ from what the caller last saw; ``flags`` is the state now."""

    copy_id: str
    folder: str
    flags: frozenset[Flag]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One copy to append: the arguments of ``Mailbox.append`` as a value, for ``append_batch``."""

    owner: MailboxOwner
    copy_id: str
    data: bytes
    flags: frozenset[Flag] = frozenset()
    first_attempt: bool = False


class Mailbox(Protocol):
    """Members' mailboxes as the gateway sees them: its own copies, found by copy id in every folder.

    Invalid owners and copy ids raise ``ValueError`` before anything is touched; trouble with the store
    raises ``MailboxError``. Every operation is safe to repeat after a failure.
    """

    async def append(
        self,
        owner: MailboxOwner,
        copy_id: str,
        data: bytes,
        flags: frozenset[Flag] = frozenset(),
        *,
        first_attempt: bool = False,
    ) -> Located:
        """Deliver ``data`` to the owner's INBOX with ``flags``, unless the copy is already there.

        Idempotent per (owner, copy_id): when the copy exists in any folder, that instance is returned
        as it is (its flags are not changed) and nothing is written. ``first_attempt`` tells that no
        earlier attempt can have written the copy, so the mailbox may skip looking for it in every
        folder (it still never writes a second instance under the same name).
        """
        ...

    async def append_batch(self, deliveries: Sequence[Delivery]) -> list[Located | Exception]:
        """``append`` for every delivery, in order, as cheaply as the store allows.

        Each result is what ``append`` would have returned or raised (``MailboxError``,
        ``ValueError``); one failing copy never fails the others. Fan-out writes all its copies
        through here, so a store can share work across a batch (Maildir: one thread hop, and one
        directory sync per folder rather than per copy).
        """
        ...

    async def find(self, owner: MailboxOwner, copy_id: str) -> list[Located]:
        """Every instance of the copy, in every folder (members move mail); usually none or one."""
        ...

    async def add_flags(self, owner: MailboxOwner, copy_id: str, flags: frozenset[Flag]) -> list[Located]:
        """Set ``flags`` on every instance of the copy; returns the instances after the change."""
        ...

    async def remove_flags(self, owner: MailboxOwner, copy_id: str, flags: frozenset[Flag]) -> list[Located]:
        """Clear ``flags`` on every instance of the copy; returns the instances after the change."""
        ...

    async def remove(self, owner: MailboxOwner, copy_id: str) -> int:
        """Remove every instance of the copy from every folder; returns how many were removed."""
        ...

    async def flag_changes(self, owner: MailboxOwner, since: str | None) -> tuple[list[FlagChange], str]:
        """The gateway copies whose flags changed since the state token ``since``, and the new token.

        With ``since=None`` every gateway copy is reported with its current flags. Tokens are opaque
        strings; store the returned one together with what was done with the changes, and pass it back.
        An unreadable token raises ``ValueError``.
        """
        ...

    def watch(self, owner: MailboxOwner) -> ChangeWatch | None:
        """A way to be told at once when the owner's mailbox changes, or None: the store cannot tell,
        so flag changes are found by polling ``flag_changes`` alone (Maildir)."""
        return None

    async def keeps_nul(self, owner: MailboxOwner | None = None) -> bool | None:
        """Whether a copy with NUL bytes is stored with them as they are (DESIGN.md §8: faithfully, or
        refused at DATA); None when the store cannot tell yet.

        With ``owner`` the store that holds that owner's copies is asked, and may connect to find out
        (``MailboxError`` when it cannot be reached); without one, every store answers from what it
        already knows. A store of files keeps every byte (Maildir), so the default is True.
        """
        return True

    async def close(self) -> None:
        """Release connections and other resources; the mailbox is not used afterwards."""
        ...


class ChangeWatch(Protocol):
    """One member's mailbox watched for changes the store pushes (IMAP IDLE on the copies' folder).

    A hint, never the truth: ``flag_changes`` still says what changed, and a change the watch misses
    (another folder, a dropped connection) is found by the next poll.
    """

    async def wait(self, seconds: float) -> bool:
        """Wait at most ``seconds``; True as soon as the store reported a flag change, False when
        nothing happened (new or removed messages are the poll's to find). Trouble raises
        ``MailboxError``; the next call starts afresh."""
        ...

    async def close(self) -> None:
        """End the watch and release its connection."""
        ...


async def append_each(mailbox: Mailbox, deliveries: Sequence[Delivery]) -> list[Located | Exception]:
    """``append_batch`` for a store with nothing to share across a batch: each ``append`` on its own."""

    async def one(delivery: Delivery) -> Located | Exception:
        try:
            return await mailbox.append(
                delivery.owner,
                delivery.copy_id,
                delivery.data,
                delivery.flags,
                first_attempt=delivery.first_attempt,
            )
        except (MailboxError, ValueError) as exc:
            return exc

    return list(await asyncio.gather(*(one(d) for d in deliveries)))


# --- what every implementation validates alike -------------------------------------------------------

# Copy ids become file names and IMAP search keys, so they are restricted to characters that need no
# quoting anywhere. An all-digit id is refused because Maildir delivery agents (Dovecot, postfix,
# qmail) start their unique file names with a decimal timestamp: "1700000000.M1P2.host" would otherwise
# pass for copy "1700000000", and a member's own mail would be taken for a gateway copy.
_COPY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

# A name longer than this cannot be a single path component on any file system we run on.
_MAX_COMPONENT_BYTES = 255


def is_copy_id(value: str) -> bool:
    """Whether ``value`` is a valid copy id (up to 64 of ``[A-Za-z0-9_-]``, not only digits)."""
    return _COPY_ID.fullmatch(value) is not None and not value.isdigit()


def check_copy_id(copy_id: str) -> None:
    """Raise ``ValueError`` unless ``copy_id`` is a valid copy id."""
    if not is_copy_id(copy_id):
        raise ValueError(f"invalid copy id {copy_id!r}: use 1-64 of [A-Za-z0-9_-], not only digits")


def check_owner(owner: MailboxOwner) -> None:
    """Raise ``ValueError`` unless portfolio and address can each name one directory safely.

    They become path components (``<root>/<portfolio>/<address>``), so nothing that could leave the
    root or hide the directory is allowed: no "/", no NUL or other control characters, no "..", no
    leading ".". Addresses must already be normalised to lower case; a mixed-case spelling would
    otherwise name a second mailbox for the same member.
    """
    for what, value in (("portfolio", owner.portfolio), ("address", owner.address)):
        if (
            not value
            or value.startswith(".")
            or ".." in value
            or "/" in value
            or not value.isprintable()
            or len(value.encode("utf-8", "surrogateescape")) > _MAX_COMPONENT_BYTES
        ):
            raise ValueError(f"invalid mailbox {what} {value!r}: it cannot name a directory safely")
    if owner.address != owner.address.lower():
        raise ValueError(f"mailbox address {owner.address!r} is not normalised to lower case")


# --- flag letters and flag-state tokens --------------------------------------------------------------

# Maildir's info letters for the system flags; the flag-state tokens use them too, for compactness.
_LETTER_OF: Mapping[Flag, str] = {
    Flag.DRAFT: "D",
    Flag.FLAGGED: "F",
    Flag.ANSWERED: "R",
    Flag.SEEN: "S",
    Flag.DELETED: "T",
}
_FLAG_OF: Mapping[str, Flag] = {letter: flag for flag, letter in _LETTER_OF.items()}


def flag_letters(flags: frozenset[Flag]) -> str:
    """Maildir's info letters for ``flags``, in ASCII order: ``{SEEN, ANSWERED}`` -> ``"RS"``."""
    return "".join(sorted(_LETTER_OF[flag] for flag in flags))


def flags_from_letters(letters: str) -> frozenset[Flag]:
    """The system flags among Maildir info letters; other letters (keywords, unknown ones) are ignored."""
    return frozenset(_FLAG_OF[letter] for letter in letters if letter in _FLAG_OF)


FlagView: TypeAlias = Mapping[tuple[str, str], frozenset[Flag]]
"""The flags of every gateway copy in a mailbox, keyed by (copy id, folder)."""

# The token is the caller's view itself, as compact JSON ({"v": 1, "f": {copy_id: {folder: letters}}}),
# rather than a key into a state file kept next to the mail. The caller stores the token in the same
# database transaction as the events it derived from the changes, so a crash at any point either repeats
# the whole step or loses nothing; a state file would be a second durable record that could advance while
# the transaction rolls back, and changes would be lost. It also puts no gateway file into a Maildir that
# Dovecot and mail clients read, and lets several gateway processes poll the same mailbox. The cost is
# size: about 40 bytes per copy that carries any flag (copies without flags are left out, and absence
# means "no flags").
_TOKEN_VERSION = 1


def encode_flag_view(view: FlagView) -> str:
    """The flag-state token for ``view``."""
    by_copy: dict[str, dict[str, str]] = {}
    for (copy_id, folder), flags in sorted(view.items()):
        if flags:
            by_copy.setdefault(copy_id, {})[folder] = flag_letters(flags)
    return json.dumps({"v": _TOKEN_VERSION, "f": by_copy}, separators=(",", ":"), ensure_ascii=False)


def decode_flag_view(token: str) -> dict[tuple[str, str], frozenset[Flag]]:
    """The view a flag-state token stands for; ``ValueError`` when it is not a token of this version."""
    try:
        document = json.loads(token)
    except ValueError as exc:
        raise ValueError(f"unreadable flag-state token: {exc}") from None
    if not isinstance(document, dict) or document.get("v") != _TOKEN_VERSION:
        raise ValueError("unreadable flag-state token: not a version 1 token")
    by_copy = document.get("f")
    if not isinstance(by_copy, dict):
        raise ValueError("unreadable flag-state token: no flag map")
    view: dict[tuple[str, str], frozenset[Flag]] = {}
    for copy_id, folders in by_copy.items():
        if not isinstance(folders, dict):
            raise ValueError(f"unreadable flag-state token: entry for {copy_id!r} is not a map")
        for folder, letters in folders.items():
            if not isinstance(letters, str) or any(letter not in _FLAG_OF for letter in letters):
                raise ValueError(f"unreadable flag-state token: flags {letters!r} of {copy_id!r}")
            view[(copy_id, folder)] = flags_from_letters(letters)
    return view


def flag_changes_between(before: FlagView | None, now: FlagView) -> list[FlagChange]:
    """The copies in ``now`` whose flags differ from ``before`` (every copy when ``before`` is None).

    A copy the caller has not seen counts as having had no flags, so a copy a member moved to another
    folder is reported there if it carries any flag. Copies that disappeared are not reported: there is
    no flag left to propagate.
    """
    return [
        FlagChange(copy_id, folder, flags)
        for (copy_id, folder), flags in sorted(now.items())
        if before is None or before.get((copy_id, folder), frozenset()) != flags
    ]
