"""Members' mailboxes on an IMAP server (Dovecot with a master user), through aioimaplib.

How the Mailbox protocol maps onto IMAP:

- **Login.** The gateway logs in as ``<member address>*<master user>`` with the master user's password
  (Dovecot's master-user login), so it needs no member passwords; a member whose server has no master
  user for the gateway can be given its own login (``ImapLogin(master=False)``). Passwords are read
  from a file or an environment variable at every new connection (``Secret``). The owner's portfolio
  is not part of the login: a member's IMAP account is one mailbox whatever portfolio a copy came from
  (copy ids are unique across portfolios, so nothing gets mixed up).
- **Finding a copy.** Every copy carries ``X-Gateway-Copy-Id: <copy id>``; ``append`` puts the header in
  front when the bytes lack it. A copy is found in every selectable folder (``LIST "" "*"``; members move
  mail) with ``UID SEARCH HEADER``, which matches substrings, so the header is fetched and compared
  exactly before a message counts as the copy.
- **Append.** ``APPEND`` into the configured folder with the copy's flags; the UID comes from UIDPLUS
  (``APPENDUID``). IMAP carries lines ending in CRLF, so bare LFs become CRLF; a folder that does not
  exist is created (``TRYCREATE``). A copy with NUL bytes goes as a ``literal8`` (``~{n}``, BINARY,
  RFC 3516), which stores them as they are (Dovecot then serves them with ``FETCH BINARY[…]``; plain
  ``BODY[]`` shows them as 0x80). A server without BINARY gets no such copy: the append fails with
  ``MailboxError`` rather than change the bytes, and ingress refuses such mail at DATA in the first
  place (``keeps_nul``; gateway/mailbox/fidelity.py).
  ``append_batch`` sends the first attempts of one member's copies in one ``APPEND`` (MULTIAPPEND,
  RFC 3502: all of them are appended or none; the literals after the first are LITERAL+), which costs
  two round trips and one transaction in the server for the lot; UIDs come from ``APPENDUID``'s set.
- **Flags and removal.** ``UID STORE +FLAGS.SILENT``/``-FLAGS.SILENT``, then ``UID FETCH FLAGS`` reads
  the outcome back; removal is ``UID STORE +FLAGS.SILENT (\\Deleted)`` and ``UID EXPUNGE`` of exactly
  those UIDs (other messages a member marked deleted stay).
- **Flag changes.** CONDSTORE: the token holds each folder's UIDVALIDITY, HIGHESTMODSEQ and UIDNEXT. A
  folder whose STATUS still shows them is skipped; in another one only the gateway copies changed since
  (``UID SEARCH MODSEQ <n+1> HEADER X-Gateway-Copy-Id ""``) are fetched. As with Maildir, a copy the
  caller has not seen (UID at or above the old UIDNEXT, or a new folder) counts as having had no flags.
  Unlike Maildir's, the token moves on whenever the folder changed, even when there is nothing to report.
- **References.** ``Located.ref`` is the IMAP URL path of the message (RFC 5092):
  ``<folder>;UIDVALIDITY=<n>/;UID=<uid>``. Folder names are IMAP's own (modified UTF-7, "." as Dovecot's
  Maildir++ separator), the same names the Maildir backend reports for a Maildir Dovecot serves.

aioimaplib returns raw response lines and has traps, each designed around here:

- one command in flight per connection: a connection belongs to one operation at a time (the pool hands
  it out exclusively) and every command also takes the connection's lock;
- a command whose connection drops is never answered: each command races the connection's "lost" signal
  and a timeout, and after any timeout or error the connection is thrown away, never reused;
- its reader recurses once per response line, so a FETCH of some thousand messages overflows the stack
  and kills the connection: FETCHes go out in chunks of ``_FETCH_CHUNK`` UIDs;
- untagged responses are routed by name, with the name stripped for most commands: the parsers below
  (pure functions, tested on their own) take the lines as aioimaplib leaves them, literals included,
  and read FETCH items, unsolicited ones too.

An unreachable server or any trouble on the way raises ``MailboxError``; the caller retries later, and
since ``append`` looks for the copy first (unless it is the first attempt) a retry never delivers twice.
After a failed connection attempt the pool waits before it tries again (backoff, doubling up to a
maximum), so a server that is down is not hammered by every queued copy.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import functools
import json
import logging
import os
import re
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast

import aioimaplib

from gateway.config import ImapSettings
from gateway.domain import gateway_headers
from gateway.mailbox.base import (
    ChangeWatch,
    Delivery,
    Flag,
    FlagChange,
    Located,
    Mailbox,
    MailboxError,
    MailboxOwner,
    append_each,
    check_copy_id,
    check_owner,
    is_copy_id,
)
from gateway.mailbox.imap_idle import IdleWatch

log = logging.getLogger("gateway.mailbox.imap")

COPY_ID_HEADER = gateway_headers.COPY_ID
INBOX = "INBOX"

# UIDs per FETCH: aioimaplib's reader recurses once per response line (three per message here) and
# overflows Python's stack somewhere above 600 messages in one read.
_FETCH_CHUNK = 200
_HEADER_ITEMS = f"(UID FLAGS BODY.PEEK[HEADER.FIELDS ({COPY_ID_HEADER})])"
# Most copies and bytes in one MULTIAPPEND: a command must be through within the connection's timeout.
_MULTIAPPEND_COUNT = 100
_MULTIAPPEND_BYTES = 2 * 1024 * 1024


# --- pure parsing of aioimaplib's response lines -------------------------------------------------------

Value: TypeAlias = "bytes | list[Value] | None"
"""One parsed IMAP value: an atom, string or literal (bytes), NIL (None), or a parenthesised list."""

Lines: TypeAlias = Sequence[bytes | bytearray]
"""``Response.lines`` as aioimaplib leaves them: response text, literals (bytearray), the tagged text last."""

_LITERAL = re.compile(rb"~?\{(\d+)\+?\}\r\n")
_ATOM_END = frozenset(b" ()\r\n")
_CODE = re.compile(rb"^(?:[A-Za-z]+ )?\[([A-Za-z0-9.-]+)(?: ([^\]]*))?\]")


def _wire(lines: Lines) -> bytes:
    """The untagged responses as the server sent them (without ``* ``), literals back in place.

    aioimaplib ends a text piece at a literal's ``{n}`` and appends the literal as a bytearray; the text
    after it (``)`` at least, for FETCH) continues the same response. The tagged text (last) is left out.
    """
    out = bytearray()
    after_literal = False
    for piece in lines[:-1]:
        if isinstance(piece, bytearray):
            out += b"\r\n" + piece
            after_literal = True
            continue
        if out and not after_literal:
            out += b"\r\n"
        out += piece
        after_literal = False
    return bytes(out)


def _items(buf: bytes, pos: int, *, top: bool) -> tuple[list[Value], int]:
    items: list[Value] = []
    end = len(buf)
    while pos < end:
        char = buf[pos]
        if char == 0x20:  # space
            pos += 1
        elif char in (0x0D, 0x0A):  # CR LF: the end of a response, only whitespace inside a list
            pos += 1
            if top:
                if char == 0x0D and buf[pos : pos + 1] == b"\n":
                    pos += 1
                return items, pos
        elif char == 0x28:  # (
            inner, pos = _items(buf, pos + 1, top=False)
            items.append(inner)
        elif char == 0x29:  # )
            pos += 1
            if not top:
                return items, pos
        elif char == 0x22:  # "
            value = bytearray()
            pos += 1
            while pos < end and buf[pos] != 0x22:
                if buf[pos] == 0x5C and pos + 1 < end:  # backslash escapes the next character
                    pos += 1
                value.append(buf[pos])
                pos += 1
            items.append(bytes(value))
            pos += 1
        elif (literal := _LITERAL.match(buf, pos)) is not None:
            start = literal.end()
            items.append(buf[start : start + int(literal[1])])
            pos = start + int(literal[1])
        else:
            # An atom; a [...] section (BODY[HEADER.FIELDS (X)], [UIDVALIDITY 3]) belongs to it whole.
            start, depth = pos, 0
            while pos < end:
                char = buf[pos]
                if char == 0x5B:
                    depth += 1
                elif char == 0x5D:
                    depth = max(0, depth - 1)
                elif depth == 0 and char in _ATOM_END:
                    break
                pos += 1
            atom = buf[start:pos]
            items.append(None if atom.upper() == b"NIL" else atom)
    return items, pos


def parse_untagged(lines: Lines) -> list[list[Value]]:
    """Every untagged response in ``lines``, each as its list of values."""
    buf = _wire(lines)
    responses: list[list[Value]] = []
    pos = 0
    while pos < len(buf):
        items, pos = _items(buf, pos, top=True)
        if items:
            responses.append(items)
    return responses


def _text(value: Value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""


def _number(value: Value) -> int | None:
    return int(value) if isinstance(value, bytes) and value.isdigit() else None


@dataclass(frozen=True, slots=True)
class Fetched:
    """One FETCH response: what the server said about one message (items it did not send are None)."""

    seq: int
    uid: int | None = None
    flags: tuple[str, ...] | None = None
    modseq: int | None = None
    header: bytes | None = None


def parse_fetch(lines: Lines) -> list[Fetched]:
    """The FETCH responses in ``lines`` (answers to FETCH and STORE, and unsolicited flag updates)."""
    fetched: list[Fetched] = []
    for response in parse_untagged(lines):
        for index in range(len(response) - 2):
            seq, name, data = response[index : index + 3]
            if not (isinstance(name, bytes) and name.upper() == b"FETCH" and isinstance(data, list)):
                continue
            number = _number(seq)
            if number is None:
                continue
            uid = modseq = None
            flags: tuple[str, ...] | None = None
            header: bytes | None = None
            for key, value in zip(data[::2], data[1::2], strict=False):
                key_text = _text(key).upper()
                if key_text == "UID":
                    uid = _number(value)
                elif key_text == "FLAGS" and isinstance(value, list):
                    flags = tuple(_text(flag) for flag in value if isinstance(flag, bytes))
                elif key_text == "MODSEQ" and isinstance(value, list) and value:
                    modseq = _number(value[0])
                elif key_text.startswith("BODY[") and (value is None or isinstance(value, bytes)):
                    header = value
            fetched.append(Fetched(number, uid, flags, modseq, header))
    return fetched


def parse_search(lines: Lines) -> list[int]:
    """The numbers of a SEARCH response (a trailing ``(MODSEQ n)`` is not one of them)."""
    found: list[int] = []
    for response in parse_untagged(lines):
        for value in response:
            number = _number(value)
            if number is not None:
                found.append(number)
    return found


@dataclass(frozen=True, slots=True)
class Listed:
    """One LIST response: a folder's name as IMAP spells it, its hierarchy delimiter and attributes."""

    name: str
    delimiter: str | None
    attributes: frozenset[str]

    @property
    def selectable(self) -> bool:
        return not self.attributes & {"\\NOSELECT", "\\NONEXISTENT"}


def parse_list(lines: Lines) -> list[Listed]:
    """The folders in a LIST response; each is ``(attributes) delimiter name``."""
    listed: list[Listed] = []
    for response in parse_untagged(lines):
        values = response[1:] if response and response[0] == b"LIST" else response
        # A literal name at the end of a response runs the next response into it: read triples.
        for index in range(0, len(values) - 2, 3):
            attributes, delimiter, name = values[index : index + 3]
            if not isinstance(attributes, list) or not isinstance(name, bytes):
                continue
            flags = frozenset(_text(a).upper() for a in attributes if isinstance(a, bytes))
            listed.append(Listed(name.decode("utf-8", "replace"), _text(delimiter) or None, flags))
    return listed


def parse_status(lines: Lines) -> dict[str, int]:
    """The numbers of a STATUS response: ``{"UIDVALIDITY": …, "UIDNEXT": …, "HIGHESTMODSEQ": …}``."""
    status: dict[str, int] = {}
    for response in parse_untagged(lines):
        for value in response:
            if isinstance(value, list):
                for key, number in zip(value[::2], value[1::2], strict=False):
                    parsed = _number(number)
                    if parsed is not None:
                        status[_text(key).upper()] = parsed
    return status


def response_codes(lines: Lines) -> dict[str, str]:
    """The response codes (``[UIDVALIDITY 7]``, ``[APPENDUID 7 3]``, ``[TRYCREATE]``) of status lines."""
    codes: dict[str, str] = {}
    for line in lines:
        if isinstance(line, bytes) and (match := _CODE.match(line)) is not None:
            codes[match[1].decode().upper()] = (match[2] or b"").decode("utf-8", "replace")
    return codes


@dataclass(frozen=True, slots=True)
class Selected:
    """What SELECT said about a folder."""

    uidvalidity: int
    uidnext: int
    exists: int
    highestmodseq: int | None  # None: the server keeps no modification sequences for it (NOMODSEQ)


def parse_select(lines: Lines) -> Selected:
    """The state of a freshly selected folder; ``ValueError`` when UIDVALIDITY is missing."""
    codes = response_codes(lines)
    if "UIDVALIDITY" not in codes:
        raise ValueError("SELECT answered without UIDVALIDITY")
    exists = 0
    for response in parse_untagged(lines):
        if len(response) >= 2 and response[1] == b"EXISTS":
            exists = _number(response[0]) or 0
    modseq = codes.get("HIGHESTMODSEQ")
    return Selected(
        uidvalidity=int(codes["UIDVALIDITY"]),
        uidnext=int(codes.get("UIDNEXT") or 0),
        exists=exists,
        highestmodseq=int(modseq) if modseq and modseq.isdigit() else None,
    )


def parse_appenduid(lines: Lines) -> tuple[int, int] | None:
    """UIDVALIDITY and UID from an APPEND's ``[APPENDUID v uid]`` (UIDPLUS), if the server sent it."""
    value = response_codes(lines).get("APPENDUID", "").split()
    if len(value) == 2 and all(part.isdigit() for part in value):
        return int(value[0]), int(value[1])
    return None


def parse_appenduids(lines: Lines) -> tuple[int, list[int]] | None:
    """UIDVALIDITY and the UIDs of a MULTIAPPEND's ``[APPENDUID v 5:7,9]``, in the order the messages
    went (a server assigns them ascending as it saves), if the server sent it."""
    value = response_codes(lines).get("APPENDUID", "").split()
    if len(value) != 2 or not value[0].isdigit():
        return None
    uids: list[int] = []
    for part in value[1].split(","):
        first, _, last = part.partition(":")
        if not first.isdigit() or not (last or first).isdigit():
            return None
        low, high = sorted((int(first), int(last or first)))
        uids.extend(range(low, high + 1))
    return int(value[0]), uids


def parse_capabilities(lines: Lines) -> frozenset[str]:
    """The capabilities of a CAPABILITY response (upper case)."""
    names: set[str] = set()
    for response in parse_untagged(lines):
        names.update(_text(value).upper() for value in response if isinstance(value, bytes))
    names.discard("CAPABILITY")
    return frozenset(names)


# --- pure helpers: flags, headers, names, references, tokens -------------------------------------------

_SYSTEM_FLAGS: Mapping[str, Flag] = {flag.value.upper(): flag for flag in Flag}
# SEARCH keys for "carries any system flag": OR SEEN OR ANSWERED OR FLAGGED OR DELETED DRAFT.
_ANY_FLAG: list[str] = [
    *(word for flag in list(Flag)[:-1] for word in ("OR", flag.value[1:].upper())),
    list(Flag)[-1].value[1:].upper(),
]


def system_flags(names: Iterable[str] | None) -> frozenset[Flag]:
    """The system flags among IMAP flag names; ``\\Recent`` and keywords are not copy flags."""
    return frozenset(_SYSTEM_FLAGS[name.upper()] for name in names or () if name.upper() in _SYSTEM_FLAGS)


def flag_list(flags: Iterable[Flag]) -> str:
    """An IMAP flag list: ``{SEEN, ANSWERED}`` -> ``"(\\Answered \\Seen)"``."""
    return "(" + " ".join(sorted(flag.value for flag in flags)) + ")"


def header_values(header: bytes, name: str = COPY_ID_HEADER) -> list[str]:
    """The values of every ``name`` field in a header section, unfolded and stripped."""
    fields: list[list[str]] = []
    field: list[str] | None = None
    for line in re.split(r"\r?\n", header.decode("utf-8", "replace")):
        if not line:
            break  # the end of the header section
        if line[0] in " \t":
            if field is not None:
                field.append(line.strip())
            continue
        label, colon, value = line.partition(":")
        field = [value.strip()] if colon and label.strip().lower() == name.lower() else None
        if field is not None:
            fields.append(field)
    return [" ".join(part for part in field if part) for field in fields]


def message_copy_id(header: bytes | None) -> str | None:
    """The copy id a message's header names, or None: not a gateway copy, or not one unambiguously."""
    if header is None:
        return None
    values = set(header_values(header))
    if len(values) != 1:
        return None
    (value,) = values
    return value if is_copy_id(value) else None


_LINE_END = re.compile(rb"\r?\n")


def message_for_append(copy_id: str, data: bytes) -> bytes:
    """The bytes APPENDed for a copy: CRLF line ends and the copy id header in place; NUL bytes stay.

    ``ValueError`` when the message already names another copy id: it could not be found as this copy.
    """
    message = data
    # Copies the gateway renders are CRLF throughout already: two counts in C, no rewrite. NUL bytes are
    # kept: they go as a BINARY literal, or not at all (_Connection.append).
    if data.count(b"\n") != data.count(b"\r\n"):
        message = _LINE_END.sub(b"\r\n", data)
    end = 0 if message.startswith(b"\r\n") else message.find(b"\r\n\r\n")
    header = message if end < 0 else message[: end + 2]
    present = header_values(header)
    if not present:
        return f"{COPY_ID_HEADER}: {copy_id}\r\n".encode() + message
    if set(present) != {copy_id}:
        raise ValueError(f"copy {copy_id}: the message carries {COPY_ID_HEADER} {', '.join(present)}")
    return message


def quote(name: str) -> str:
    """An IMAP quoted string (mailbox names, the login)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode_folder_name(name: str) -> str:
    """A folder name as IMAP spells it: modified UTF-7 (RFC 3501 §5.1.3) for what is not printable ASCII."""
    if name.upper() == INBOX:
        return INBOX
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            encoded = base64.b64encode("".join(pending).encode("utf-16-be")).decode().rstrip("=")
            out.append("&" + encoded.replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if " " <= char <= "~":
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def uid_set(uids: Iterable[int]) -> str:
    """An IMAP sequence set for ``uids``, runs collapsed: ``[1, 2, 3, 7]`` -> ``"1:3,7"``."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("an empty UID set")
    parts: list[str] = []
    start = previous = ordered[0]
    for uid in [*ordered[1:], None]:
        if uid is not None and uid == previous + 1:
            previous = uid
            continue
        parts.append(str(start) if start == previous else f"{start}:{previous}")
        if uid is not None:
            start = previous = uid
    return ",".join(parts)


def imap_ref(folder: str, uidvalidity: int, uid: int) -> str:
    """``Located.ref`` of a message: its IMAP URL path (RFC 5092) without the server."""
    return f"{folder};UIDVALIDITY={uidvalidity}/;UID={uid}"


def parse_ref(ref: str) -> tuple[str, int, int]:
    """Folder, UIDVALIDITY and UID of an ``imap_ref``; ``ValueError`` for anything else."""
    folder, marker, rest = ref.rpartition(";UIDVALIDITY=")
    uidvalidity, marker2, uid = rest.partition("/;UID=")
    if not marker or not marker2 or not uidvalidity.isdigit() or not uid.isdigit():
        raise ValueError(f"not an IMAP message reference: {ref!r}")
    return folder, int(uidvalidity), int(uid)


@dataclass(frozen=True, slots=True)
class FolderState:
    """A folder as a flag-state token remembers it."""

    uidvalidity: int
    highestmodseq: int
    uidnext: int


_TOKEN_VERSION = "imap1"


def encode_token(states: Mapping[str, FolderState]) -> str:
    """The flag-state token: ``{"v": "imap1", "f": {folder: [uidvalidity, highestmodseq, uidnext]}}``."""
    folders = {name: [s.uidvalidity, s.highestmodseq, s.uidnext] for name, s in sorted(states.items())}
    return json.dumps({"v": _TOKEN_VERSION, "f": folders}, separators=(",", ":"), ensure_ascii=False)


def decode_token(token: str) -> dict[str, FolderState]:
    """The folder states of a token; ``ValueError`` for anything that is not an IMAP token of this version."""
    try:
        document = json.loads(token)
    except ValueError as exc:
        raise ValueError(f"unreadable flag-state token: {exc}") from None
    if not isinstance(document, dict) or document.get("v") != _TOKEN_VERSION:
        raise ValueError("unreadable flag-state token: not an IMAP token of this version")
    folders = document.get("f")
    if not isinstance(folders, dict):
        raise ValueError("unreadable flag-state token: no folder map")
    states: dict[str, FolderState] = {}
    for name, numbers in folders.items():
        if not (
            isinstance(numbers, list)
            and len(numbers) == 3
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers)
        ):
            raise ValueError(f"unreadable flag-state token: folder {name!r}")
        states[name] = FolderState(*numbers)
    return states


# --- one connection --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Secret:
    """Where a password is read when a connection is made: a file or an environment variable, never the
    configuration itself. Read afresh each time, so a rotated password is picked up without a restart."""

    file: Path | None = None
    env: str | None = None

    def __post_init__(self) -> None:
        if (self.file is None) == (self.env is None):
            raise ValueError("a password comes from a file or an environment variable: give exactly one")

    async def read(self, what: str) -> str:
        """The password, stripped; ``MailboxError`` naming the file or variable when there is none."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise MailboxError(errno.ENOENT, f"{what} environment variable is not set", self.env)
            if not value.strip():
                raise MailboxError(errno.EINVAL, f"{what} environment variable is empty", self.env)
            return value.strip()
        assert self.file is not None
        try:
            text = await asyncio.to_thread(self.file.read_text, encoding="utf-8")
        except OSError as exc:
            raise MailboxError(_errno(exc), f"{what} file: {_reason(exc)}", str(self.file)) from exc
        if not text.strip():
            raise MailboxError(errno.EINVAL, f"{what} file is empty", str(self.file))
        return text.strip()


@dataclass(frozen=True, slots=True)
class ImapLogin:
    """How the gateway logs in for a member: with ``master``, as ``<member>*<user>`` with a Dovecot master
    user's password (no member passwords needed); otherwise as the member's own account ``user``."""

    user: str
    password: Secret
    master: bool = True

    def user_for(self, address: str) -> str:
        return f"{address}*{self.user}" if self.master else self.user

    @property
    def what(self) -> str:
        """What the password is, for error messages."""
        return "master password" if self.master else "member password"


@dataclass(frozen=True, slots=True)
class ImapServer:
    """Where members' mailboxes are and how the gateway logs in (``[mailbox.imap]``, or one member's
    table under ``[mailbox.imap.members]``). Equal values mean one server and login: one pool."""

    host: str
    port: int
    tls: Literal["none", "starttls", "tls"]
    login: ImapLogin
    folder: str = INBOX
    ssl_context: ssl.SSLContext | None = None
    """Certificates to trust for "starttls"/"tls"; None: the system's, with host name checking."""

    @classmethod
    def from_settings(
        cls, settings: ImapSettings, *, member: str | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> ImapServer:
        """The server of ``[mailbox.imap]``, or of ``member``'s table there, where it has one (the keys it
        leaves out are [mailbox.imap]'s)."""
        if settings.master_user is None or (
            settings.master_password_file is None and settings.master_password_env is None
        ):
            raise ValueError("mailbox.imap needs master_user and master_password_file or master_password_env")
        login = ImapLogin(
            settings.master_user, Secret(settings.master_password_file, settings.master_password_env)
        )
        override = settings.members.get(member) if member is not None else None
        if override is None:
            return cls(settings.host, settings.port, settings.tls, login, settings.folder, ssl_context)
        if override.login is not None:
            login = ImapLogin(
                override.login, Secret(override.password_file, override.password_env), master=False
            )
        elif override.master_password_file is not None or override.master_password_env is not None:
            login = ImapLogin(
                override.master_user or settings.master_user,
                Secret(override.master_password_file, override.master_password_env),
            )
        return cls(
            host=settings.host if override.host is None else override.host,
            port=settings.port if override.port is None else override.port,
            tls=settings.tls if override.tls is None else override.tls,
            login=login,
            folder=settings.folder if override.folder is None else override.folder,
            ssl_context=ssl_context,
        )

    @property
    def where(self) -> str:
        return f"imap://{self.host}:{self.port}"

    def context(self) -> ssl.SSLContext:
        return self.ssl_context or ssl.create_default_context()


class _Unreachable(MailboxError):
    """The server could not be reached or greeted: the pool backs off before the next attempt."""


_LIBRARY_ERRORS = (OSError, EOFError, ValueError, aioimaplib.AioImapException)


@dataclass(frozen=True, slots=True)
class _Reply:
    result: str
    lines: list[bytes | bytearray]

    @property
    def ok(self) -> bool:
        return self.result == "OK"

    @property
    def text(self) -> str:
        last = self.lines[-1] if self.lines else b""
        return bytes(last).decode("utf-8", "replace")


class _Connection:
    """One logged-in IMAP session of one member; one operation and one command at a time."""

    def __init__(self, client: Any, lost: asyncio.Future[None], server: ImapServer, timeout: float) -> None:
        self.client = client
        self.lost = lost
        self.server = server
        self.timeout = timeout
        self.capabilities: frozenset[str] = frozenset()
        self.selected: str | None = None
        self.broken = False
        self._lock = asyncio.Lock()

    @property
    def usable(self) -> bool:
        return not self.broken and not self.lost.done()

    def abort(self) -> None:
        """Drop the connection without a word; it is never used again."""
        self.broken = True
        _close_client(self.client)

    async def run(self, what: str, call: Callable[[], Awaitable[Any]]) -> _Reply:
        """One command: under the lock, against a timeout and the connection's loss; errors end it."""
        if not self.usable:
            raise MailboxError(errno.ENOTCONN, f"IMAP {what}: the connection is closed", self.server.where)
        async with self._lock:
            command = asyncio.ensure_future(call())
            try:
                async with asyncio.timeout(self.timeout):
                    await asyncio.wait({command, self.lost}, return_when=asyncio.FIRST_COMPLETED)
            except TimeoutError:
                command.cancel()
                self.abort()
                raise MailboxError(
                    errno.ETIMEDOUT, f"IMAP {what}: no answer within {self.timeout:g} s", self.server.where
                ) from None
            except BaseException:
                command.cancel()
                self.abort()
                raise
            if not command.done():
                command.cancel()
                self.abort()
                raise MailboxError(errno.ECONNRESET, f"IMAP {what}: the server hung up", self.server.where)
            try:
                response = command.result()
            except _LIBRARY_ERRORS as exc:
                self.abort()
                raise MailboxError(_errno(exc), f"IMAP {what}: {_reason(exc)}", self.server.where) from exc
        return _Reply(str(response.result), list(response.lines))

    async def ok(self, what: str, call: Callable[[], Awaitable[Any]]) -> _Reply:
        """``run``, and anything but OK is an error that ends the connection."""
        reply = await self.run(what, call)
        if not reply.ok:
            self.abort()
            raise MailboxError(errno.EIO, f"IMAP {what} refused: {reply.text}", self.server.where)
        return reply

    # --- commands, each as the gateway needs it ---------------------------------------------------------

    @property
    def _protocol(self) -> Any:
        return self.client.protocol

    async def capability(self) -> frozenset[str]:
        def call() -> Awaitable[Any]:
            protocol = self._protocol
            command = aioimaplib.Command("CAPABILITY", protocol.new_tag(), loop=protocol.loop)
            return cast(Awaitable[Any], protocol.execute(command))

        self.capabilities = parse_capabilities((await self.ok("CAPABILITY", call)).lines)
        # aioimaplib checks its own set before UID EXPUNGE and MOVE.
        self._protocol.capabilities = set(self.capabilities)
        return self.capabilities

    async def starttls(self) -> None:
        def call() -> Awaitable[Any]:
            protocol = self._protocol
            command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
            return cast(Awaitable[Any], protocol.execute(command))

        if "STARTTLS" not in await self.capability():
            raise _Unreachable(errno.EPROTO, "IMAP STARTTLS: the server does not offer it", self.server.where)
        await self.ok("STARTTLS", call)
        protocol = self._protocol
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                protocol.transport = await loop.start_tls(
                    protocol.transport, protocol, self.server.context(), server_hostname=self.server.host
                )
        except (OSError, TimeoutError) as exc:
            self.abort()
            raise _Unreachable(_errno(exc), f"IMAP STARTTLS: {_reason(exc)}", self.server.where) from exc

    async def login(self, user: str, password: str) -> None:
        reply = await self.run("LOGIN", lambda: self._protocol.login(quote(user), password))
        if not reply.ok:
            self.abort()
            raise MailboxError(errno.EACCES, f"IMAP LOGIN as {user} refused: {reply.text}", self.server.where)

    async def enable(self, capability: str) -> None:
        await self.ok("ENABLE", lambda: self._protocol.simple_command("ENABLE", capability))

    async def logout(self) -> None:
        with suppress(MailboxError):
            await self.run("LOGOUT", lambda: self._protocol.logout())
        self.abort()
        # A TLS transport finishes closing (close_notify) after close() returns; waiting for the loss
        # of the connection, briefly, keeps a caller that ends its event loop next from leaking it.
        with suppress(TimeoutError):
            async with asyncio.timeout(min(self.timeout, 2.0)):
                await asyncio.shield(self.lost)

    async def folders(self) -> list[str]:
        """Every selectable folder, INBOX first, then by name."""
        reply = await self.ok("LIST", lambda: self._protocol.simple_command("LIST", '""', '"*"'))
        names = {listed.name for listed in parse_list(reply.lines) if listed.selectable}
        return sorted(names, key=lambda name: (name.upper() != INBOX, name))

    async def select(self, folder: str) -> Selected | None:
        """Select ``folder``; None when it does not exist (any more): a member deleted or renamed it."""
        self.selected = None
        reply = await self.run(f"SELECT {folder}", lambda: self._protocol.select(quote(folder)))
        if not reply.ok:
            return None
        try:
            state = parse_select(reply.lines)
        except ValueError as exc:
            self.abort()
            raise MailboxError(errno.EPROTO, f"IMAP SELECT {folder}: {exc}", self.server.where) from None
        self.selected = folder
        return state

    async def examine(self, folder: str) -> Selected:
        """Select ``folder`` read-only (a watcher must not take \\Recent from the member's client)."""
        self.selected = None
        reply = await self.ok(
            f"EXAMINE {folder}", lambda: self._protocol.simple_command("EXAMINE", quote(folder))
        )
        try:
            state = parse_select(reply.lines)
        except ValueError as exc:
            self.abort()
            raise MailboxError(errno.EPROTO, f"IMAP EXAMINE {folder}: {exc}", self.server.where) from None
        # aioimaplib tracks the state only for its own SELECT, and allows IDLE in the selected state.
        self._protocol.state = aioimaplib.SELECTED
        return state

    async def status(self, folder: str) -> FolderState | None:
        """UIDVALIDITY, HIGHESTMODSEQ and UIDNEXT of a folder without selecting it; None when it is gone."""
        reply = await self.run(
            f"STATUS {folder}",
            lambda: self._protocol.simple_command(
                "STATUS", quote(folder), "(UIDVALIDITY UIDNEXT HIGHESTMODSEQ)"
            ),
        )
        numbers = parse_status(reply.lines) if reply.ok else {}
        if not {"UIDVALIDITY", "UIDNEXT", "HIGHESTMODSEQ"} <= numbers.keys():
            return None
        return FolderState(numbers["UIDVALIDITY"], numbers["HIGHESTMODSEQ"], numbers["UIDNEXT"])

    async def search(self, *criteria: str) -> list[int]:
        reply = await self.ok(
            "UID SEARCH", lambda: self._protocol.search(*criteria, charset=None, by_uid=True)
        )
        return parse_search(reply.lines)

    async def fetch(self, uids: Sequence[int], items: str) -> list[Fetched]:
        fetched: list[Fetched] = []
        ordered = sorted(set(uids))
        for start in range(0, len(ordered), _FETCH_CHUNK):
            chunk = uid_set(ordered[start : start + _FETCH_CHUNK])
            reply = await self.ok(
                "UID FETCH", functools.partial(self._protocol.fetch, chunk, items, by_uid=True)
            )
            fetched.extend(f for f in parse_fetch(reply.lines) if f.uid is not None)
        return fetched

    async def store(self, uids: Sequence[int], change: str, flags: Iterable[Flag]) -> None:
        listed = flag_list(flags)
        await self.ok("UID STORE", lambda: self._protocol.store(uid_set(uids), change, listed, by_uid=True))

    async def expunge(self, uids: Sequence[int]) -> int:
        """``UID EXPUNGE`` (UIDPLUS) of exactly ``uids``; how many messages went."""
        reply = await self.ok("UID EXPUNGE", lambda: self._protocol.expunge(uid_set(uids), by_uid=True))
        return sum(1 for r in parse_untagged(reply.lines) if len(r) >= 2 and r[1] == b"EXPUNGE")

    @property
    def binary(self) -> bool:
        """Whether the server takes ``literal8`` (BINARY, RFC 3516): messages with NUL bytes as they are."""
        return "BINARY" in self.capabilities

    async def append(self, folder: str, message: bytes, flags: frozenset[Flag]) -> tuple[int, int]:
        """APPEND; UIDVALIDITY and UID of the new message. A missing folder is created (TRYCREATE).

        A message with NUL bytes goes as a ``literal8`` (``~{n}``); a server without BINARY cannot store
        it as it is, and it is not changed to fit: ``MailboxError`` (EILSEQ), the connection kept.
        """
        listed = flag_list(flags) if flags else None
        binary = b"\0" in message
        if binary and not self.binary:
            raise MailboxError(
                errno.EILSEQ,
                f"IMAP APPEND {folder}: the message holds NUL bytes and the server does not offer BINARY "
                "(RFC 3516), so it cannot store them as they are; the message is not changed to fit",
                self.server.where,
            )

        def call() -> Awaitable[Any]:
            if not binary:
                return cast(Awaitable[Any], self._protocol.append(message, quote(folder), listed, None))
            # aioimaplib writes only "{n}" literals itself; it sends protocol.literal_data after the
            # server's "+" whatever the announcement looked like, so a literal8 is announced here.
            protocol = self._protocol
            arguments = [quote(folder), *([listed] if listed else []), f"~{{{len(message)}}}"]
            protocol.literal_data = message
            command = aioimaplib.Command("APPEND", protocol.new_tag(), *arguments, loop=protocol.loop)
            return cast(Awaitable[Any], protocol.execute(command))

        for attempt in range(2):
            reply = await self.run(f"APPEND {folder}", call)
            if reply.ok:
                appended = parse_appenduid(reply.lines)
                if appended is None:
                    raise MailboxError(
                        errno.EPROTO, f"IMAP APPEND {folder}: no APPENDUID (UIDPLUS)", self.server.where
                    )
                return appended
            if attempt == 0 and "TRYCREATE" in response_codes(reply.lines):
                await self.ok(
                    f"CREATE {folder}", lambda: self._protocol.simple_command("CREATE", quote(folder))
                )
                continue
            self.abort()
            raise MailboxError(errno.EIO, f"IMAP APPEND {folder} refused: {reply.text}", self.server.where)
        raise AssertionError("unreachable")

    @property
    def multiappend(self) -> bool:
        """Whether several messages can go in one APPEND, each literal after the first unannounced."""
        return {"MULTIAPPEND", "LITERAL+"} <= self.capabilities

    async def append_many(
        self, folder: str, messages: Sequence[tuple[bytes, frozenset[Flag]]]
    ) -> tuple[int, list[int]] | None:
        """One APPEND of all ``messages`` (MULTIAPPEND, RFC 3502: all are appended or none); UIDVALIDITY
        and their UIDs in order, or None when the server refused them with NO (none was appended).

        The first literal is synchronizing, as aioimaplib sends it; the others follow it in the same
        write as LITERAL+ literals, so the whole batch costs two round trips and one transaction in
        the server. A missing folder is created (TRYCREATE).
        """
        (first, first_flags), rest = messages[0], messages[1:]
        tail = b"".join(
            f" {flag_list(flags) + ' ' if flags else ''}{{{len(message)}+}}\r\n".encode() + message
            for message, flags in rest
        )
        what = f"APPEND {folder} ({len(messages)} messages)"

        def call() -> Awaitable[Any]:
            protocol = self._protocol
            arguments = [
                quote(folder),
                *([flag_list(first_flags)] if first_flags else []),
                f"{{{len(first)}}}",
            ]
            protocol.literal_data = first + tail  # written after the server's "+"
            command = aioimaplib.Command("APPEND", protocol.new_tag(), *arguments, loop=protocol.loop)
            return cast(Awaitable[Any], protocol.execute(command))

        for attempt in range(2):
            reply = await self.run(what, call)
            if reply.ok:
                appended = parse_appenduids(reply.lines)
                if appended is None or len(appended[1]) != len(messages):
                    # Appended, but which UID is which copy is unknown: the retry finds them.
                    self.abort()
                    raise MailboxError(
                        errno.EPROTO, f"IMAP {what}: no APPENDUID with one UID each", self.server.where
                    )
                return appended
            if attempt == 0 and "TRYCREATE" in response_codes(reply.lines):
                await self.ok(
                    f"CREATE {folder}", lambda: self._protocol.simple_command("CREATE", quote(folder))
                )
                continue
            if reply.result == "NO":
                return None
            self.abort()
            raise MailboxError(errno.EIO, f"IMAP {what} refused: {reply.text}", self.server.where)
        raise AssertionError("unreachable")


def _errno(exc: BaseException) -> int:
    if isinstance(exc, TimeoutError):
        return errno.ETIMEDOUT
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    return errno.EIO


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _close_client(client: Any) -> None:
    task = getattr(client, "_client_task", None)
    if task is not None and not task.done():
        task.cancel()
    # aioimaplib's own tasks too: the greeting's handler, waiting for a CAPABILITY answer that will
    # never come on a dropped connection, would otherwise be destroyed pending when the loop closes.
    for own in [*getattr(client, "tasks", ()), *getattr(getattr(client, "protocol", None), "tasks", ())]:
        if not own.done():
            own.cancel()
    transport = getattr(getattr(client, "protocol", None), "transport", None)
    if transport is not None:
        transport.close()


async def _open(server: ImapServer, address: str, password: str, seconds: float) -> _Connection:
    """A session logged in for ``address`` (``address*master``, or the member's own login), CONDSTORE
    enabled where offered; ``seconds`` per step."""
    loop = asyncio.get_running_loop()
    lost: asyncio.Future[None] = loop.create_future()

    def connection_lost(_exc: Exception | None) -> None:
        if not lost.done():
            lost.set_result(None)

    if server.tls == "tls":
        client = aioimaplib.IMAP4_SSL(server.host, server.port, timeout=seconds, ssl_context=server.context())
    else:
        client = aioimaplib.IMAP4(server.host, server.port, timeout=seconds)
    client.protocol.conn_lost_cb = connection_lost
    # The greeting (and the CAPABILITY aioimaplib asks for right after it) races the connection's end
    # too: a server that hangs up there would otherwise leave aioimaplib waiting for ever.
    hello = asyncio.ensure_future(client.wait_hello_from_server())
    try:
        async with asyncio.timeout(seconds):
            await asyncio.wait({hello, lost}, return_when=asyncio.FIRST_COMPLETED)
        if not hello.done():
            raise ConnectionResetError(errno.ECONNRESET, "the server hung up before it was ready")
        hello.result()
    except _LIBRARY_ERRORS as exc:  # TimeoutError is an OSError
        hello.cancel()
        _close_client(client)
        raise _Unreachable(_errno(exc), f"IMAP connect: {_reason(exc)}", server.where) from exc
    except BaseException:
        hello.cancel()
        _close_client(client)
        raise
    connection = _Connection(client, lost, server, seconds)
    try:
        if server.tls == "starttls":
            await connection.starttls()
        await connection.login(server.login.user_for(address), password)
        capabilities = await connection.capability()
        if "UIDPLUS" not in capabilities:
            raise MailboxError(
                errno.EPROTO, "the IMAP server lacks UIDPLUS (APPENDUID, UID EXPUNGE)", server.where
            )
        if "CONDSTORE" in capabilities:
            await connection.enable("CONDSTORE")
    except BaseException:
        connection.abort()
        raise
    return connection


# --- the pool --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Slot:
    semaphore: asyncio.Semaphore
    users: int = 0


class _Pool:
    """Logged-in connections per member: at most ``per_member`` in use, idle ones kept for reuse.

    A connection is handed to one operation at a time and goes back only when the operation ended
    without error. After a failed connection attempt, new attempts fail at once until a backoff has
    passed (doubling from ``backoff_first`` to ``backoff_max``); the first success resets it.
    """

    def __init__(
        self,
        server: ImapServer,
        *,
        timeout: float,
        per_member: int,
        max_connections: int,
        max_idle: int,
        backoff_first: float,
        backoff_max: float,
    ) -> None:
        self.server = server
        self.timeout = timeout
        self.per_member = per_member
        self.max_idle = max_idle
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self._total = asyncio.Semaphore(max_connections)
        self._slots: dict[str, _Slot] = {}
        self._idle: OrderedDict[_Connection, str] = OrderedDict()  # least recently used first
        self._backoff = 0.0
        self._retry_at = 0.0
        self._failed_at = float("-inf")
        self._down_because = ""
        self.closed = False
        # Whether the server offered BINARY after the last login; None before the first one.
        self.binary: bool | None = None

    @asynccontextmanager
    async def session(self, address: str) -> AsyncIterator[_Connection]:
        if self.closed:
            raise MailboxError(errno.ESHUTDOWN, "the IMAP mailbox is closed", self.server.where)
        slot = self._slots.get(address)
        if slot is None:
            slot = self._slots[address] = _Slot(asyncio.Semaphore(self.per_member))
        slot.users += 1
        try:
            async with slot.semaphore, self._total:
                connection = self._take_idle(address) or await self._connect(address)
                healthy = False
                try:
                    yield connection
                    healthy = True
                finally:
                    if healthy and connection.usable and not self.closed:
                        self._keep(address, connection)
                    else:
                        connection.abort()
        finally:
            slot.users -= 1
            if not slot.users:
                del self._slots[address]

    async def close(self) -> None:
        self.closed = True
        idle, self._idle = list(self._idle), OrderedDict()
        await asyncio.gather(*(connection.logout() for connection in idle))

    async def dedicated(self, address: str) -> _Connection:
        """A connection of the member's outside the pool's bounds (IDLE holds one for minutes); the
        caller ends it. The pool's backoff applies: a server that is down is not asked again at once."""
        if self.closed:
            raise MailboxError(errno.ESHUTDOWN, "the IMAP mailbox is closed", self.server.where)
        return await self._connect(address)

    def _take_idle(self, address: str) -> _Connection | None:
        for connection, owner in reversed(list(self._idle.items())):
            if owner == address:
                del self._idle[connection]
                if connection.usable:
                    return connection
                connection.abort()
        return None

    def _keep(self, address: str, connection: _Connection) -> None:
        self._idle[connection] = address
        while len(self._idle) > self.max_idle:
            oldest, _ = self._idle.popitem(last=False)
            oldest.abort()

    async def _connect(self, address: str) -> _Connection:
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            raise MailboxError(
                errno.ECONNREFUSED,
                f"IMAP server unreachable ({self._down_because}); next attempt in "
                f"{self._retry_at - loop.time():.1f} s",
                self.server.where,
            )
        started = loop.time()
        password = await self._password()
        try:
            connection = await _open(self.server, address, password, self.timeout)
        except _Unreachable as exc:
            # Attempts under way together (one per member) fail together: they double the wait once,
            # or a server gone for a moment would not be asked again for backoff_max.
            if started >= self._failed_at:
                self._backoff = min(max(self._backoff * 2, self.backoff_first), self.backoff_max)
                self._retry_at = loop.time() + self._backoff
                self._failed_at = loop.time()
            if self._down_because == "":
                log.warning("IMAP server %s unreachable: %s", self.server.where, exc.strerror)
            self._down_because = exc.strerror or "unreachable"
            raise
        if self._down_because:
            log.info("IMAP server %s reachable again", self.server.where)
        self._backoff, self._retry_at, self._down_because = 0.0, 0.0, ""
        self.binary = connection.binary
        return connection

    async def _password(self) -> str:
        # Read at every new connection, so a rotated password is picked up without a restart.
        return await self.server.login.password.read(self.server.login.what)


@dataclass(slots=True)
class _Held:
    lock: asyncio.Lock
    users: int = 0


class _KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], _Held] = {}

    @asynccontextmanager
    async def hold(self, key: tuple[str, str]) -> AsyncIterator[None]:
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = _Held(asyncio.Lock())
        held.users += 1
        try:
            async with held.lock:
                yield
        finally:
            held.users -= 1
            if not held.users:
                del self._held[key]


# --- the mailbox -----------------------------------------------------------------------------------------


class ImapMailbox(Mailbox):
    """The Mailbox protocol on an IMAP server; see the module docstring for the mapping."""

    def __init__(
        self,
        server: ImapServer,
        *,
        timeout: float = 30.0,
        connections_per_member: int = 2,
        max_connections: int = 32,
        max_idle: int = 64,
        backoff_first: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.server = server
        self.folder = encode_folder_name(server.folder)
        self._pool = _Pool(
            server,
            timeout=timeout,
            per_member=connections_per_member,
            max_connections=max_connections,
            max_idle=max_idle,
            backoff_first=backoff_first,
            backoff_max=backoff_max,
        )
        self._copy_locks = _KeyedLocks()
        # Copies this process appended lately: a "first attempt" of one of them looks before it writes,
        # so two concurrent first attempts of one copy cannot both append it.
        self._appended: OrderedDict[tuple[str, str], None] = OrderedDict()

    @classmethod
    def from_settings(
        cls, settings: ImapSettings, *, ssl_context: ssl.SSLContext | None = None, **options: Any
    ) -> ImapMailbox:
        """The mailbox for ``[mailbox.imap]``; ``options`` are the keyword arguments of the constructor."""
        return cls(ImapServer.from_settings(settings, ssl_context=ssl_context), **options)

    async def append(
        self,
        owner: MailboxOwner,
        copy_id: str,
        data: bytes,
        flags: frozenset[Flag] = frozenset(),
        *,
        first_attempt: bool = False,
    ) -> Located:
        check_owner(owner)
        check_copy_id(copy_id)
        message = message_for_append(copy_id, data)
        key = (owner.address, copy_id)
        with self._context(f"append copy {copy_id}", owner):
            async with self._copy_locks.hold(key), self._pool.session(owner.address) as connection:
                if not first_attempt or key in self._appended:
                    found = await self._find(connection, copy_id)
                    if found:
                        return found[0]
                uidvalidity, uid = await connection.append(self.folder, message, frozenset(flags))
                self._remember(key)
                return Located(
                    copy_id, self.folder, imap_ref(self.folder, uidvalidity, uid), frozenset(flags)
                )

    async def append_batch(self, deliveries: Sequence[Delivery]) -> list[Located | Exception]:
        """First attempts go to each member in one MULTIAPPEND (per ``_MULTIAPPEND_COUNT`` copies and
        ``_MULTIAPPEND_BYTES``): one command, two round trips and one transaction in the server for
        what would be one APPEND each. Retries, and a copy named twice in the batch, go one by one
        through ``append``, which looks for the copy first. Members run concurrently up to the
        pool's bounds (aioimaplib has one command in flight per connection)."""
        results: list[Located | Exception | None] = [None] * len(deliveries)
        chunks: dict[str, list[list[tuple[int, bytes]]]] = {}
        alone: list[int] = []
        named: set[tuple[str, str]] = set()
        for index, delivery in enumerate(deliveries):
            key = (delivery.owner.address, delivery.copy_id)
            if not delivery.first_attempt or key in named:
                alone.append(index)
                continue
            named.add(key)
            try:
                check_owner(delivery.owner)
                check_copy_id(delivery.copy_id)
                message = message_for_append(delivery.copy_id, delivery.data)
            except ValueError as exc:
                results[index] = exc
                continue
            if b"\0" in message:
                # A literal8 goes in an APPEND of its own (append decides whether it can go at all).
                alone.append(index)
                continue
            member = chunks.setdefault(delivery.owner.address, [[]])
            chunk = member[-1]
            if chunk and (
                len(chunk) >= _MULTIAPPEND_COUNT
                or sum(len(m) for _, m in chunk) + len(message) > _MULTIAPPEND_BYTES
            ):
                member.append(chunk := [])
            chunk.append((index, message))

        async def one(index: int) -> None:
            (results[index],) = await append_each(self, [deliveries[index]])

        await asyncio.gather(
            *(
                self._append_chunk(deliveries, chunk, results)
                for member in chunks.values()
                for chunk in member
            ),
            *(one(index) for index in alone),
        )
        return [result if result is not None else AssertionError("not attempted") for result in results]

    async def keeps_nul(self, owner: MailboxOwner | None = None) -> bool | None:
        """Whether the server offers BINARY (RFC 3516), so that NUL bytes are stored as they are.

        What the last login showed (capabilities are those after login: Dovecot lists BINARY only
        then); with ``owner`` and no login yet, one is made as the owner to find out."""
        if self._pool.binary is None and owner is not None:
            check_owner(owner)
            with self._context("ask for BINARY", owner):
                async with self._pool.session(owner.address) as connection:
                    return connection.binary
        return self._pool.binary

    async def find(self, owner: MailboxOwner, copy_id: str) -> list[Located]:
        check_owner(owner)
        check_copy_id(copy_id)
        with self._context(f"find copy {copy_id}", owner):
            async with self._pool.session(owner.address) as connection:
                return await self._find(connection, copy_id)

    async def add_flags(self, owner: MailboxOwner, copy_id: str, flags: frozenset[Flag]) -> list[Located]:
        return await self._change_flags(owner, copy_id, flags, "+FLAGS.SILENT")

    async def remove_flags(self, owner: MailboxOwner, copy_id: str, flags: frozenset[Flag]) -> list[Located]:
        return await self._change_flags(owner, copy_id, flags, "-FLAGS.SILENT")

    async def remove(self, owner: MailboxOwner, copy_id: str) -> int:
        check_owner(owner)
        check_copy_id(copy_id)
        with self._context(f"remove copy {copy_id}", owner):
            async with self._pool.session(owner.address) as connection:
                removed = 0
                # A copy a member moves meanwhile is expunged where it went, on a second pass.
                for _ in range(2):
                    missed = 0

                    async def expunge(folder: str, state: Selected, messages: list[Fetched]) -> None:
                        nonlocal removed, missed
                        uids = [m.uid for m in messages if m.uid is not None]
                        await connection.store(uids, "+FLAGS.SILENT", {Flag.DELETED})
                        gone = await connection.expunge(uids)
                        removed += gone
                        missed += len(uids) - gone

                    await self._each_folder(connection, copy_id, expunge)
                    if not missed:
                        return removed
                raise MailboxError(
                    errno.ENOENT, f"copy {copy_id} kept moving while it was removed", self.server.where
                )

    async def flag_changes(self, owner: MailboxOwner, since: str | None) -> tuple[list[FlagChange], str]:
        check_owner(owner)
        before = None if since is None else decode_token(since)
        with self._context("list flag changes", owner):
            async with self._pool.session(owner.address) as connection:
                return await self._flag_changes(connection, before)

    def watch(self, owner: MailboxOwner) -> ChangeWatch:
        """IDLE on the folder copies are appended to, on a connection of its own (see imap_idle)."""
        check_owner(owner)
        return IdleWatch(
            functools.partial(self._pool.dedicated, owner.address), self.folder, where=self.server.where
        )

    async def close(self) -> None:
        await self._pool.close()

    # --- internals ------------------------------------------------------------------------------------

    @contextmanager
    def _context(self, action: str, owner: MailboxOwner) -> Iterator[None]:
        """Say what the gateway was doing, and for whom, in every MailboxError."""
        try:
            yield
        except MailboxError as exc:
            raise MailboxError(
                exc.errno, f"{action} for {owner.address}: {exc.strerror}", exc.filename
            ) from exc

    async def _append_chunk(
        self,
        deliveries: Sequence[Delivery],
        chunk: list[tuple[int, bytes]],
        results: list[Located | Exception | None],
    ) -> None:
        """First attempts of one member's copies (``append_batch``), their results into ``results``."""
        owner = deliveries[chunk[0][0]].owner
        keys = sorted((owner.address, deliveries[index].copy_id) for index, _ in chunk)
        located: dict[int, Located] = {}
        try:
            async with AsyncExitStack() as locks:
                for key in keys:  # in order: two batches holding some of the same keys wait, never deadlock
                    await locks.enter_async_context(self._copy_locks.hold(key))
                with self._context(f"append {len(chunk)} copies", owner):
                    async with self._pool.session(owner.address) as connection:
                        await self._append_chunk_on(connection, deliveries, chunk, located)
        except MailboxError as exc:
            for index, _ in chunk:
                copy_id = deliveries[index].copy_id
                results[index] = located.get(index) or MailboxError(
                    exc.errno, f"append copy {copy_id} for {owner.address}: {exc.strerror}", exc.filename
                )
            return
        for index, _ in chunk:
            results[index] = located[index]

    async def _append_chunk_on(
        self,
        connection: _Connection,
        deliveries: Sequence[Delivery],
        chunk: list[tuple[int, bytes]],
        located: dict[int, Located],
    ) -> None:
        """Append the chunk on ``connection`` (copy locks held); each copy appended goes into ``located``."""

        def done(index: int, uidvalidity: int, uid: int) -> None:
            delivery = deliveries[index]
            self._remember((delivery.owner.address, delivery.copy_id))
            ref = imap_ref(self.folder, uidvalidity, uid)
            located[index] = Located(delivery.copy_id, self.folder, ref, frozenset(delivery.flags))

        # Another operation of this process may have appended one of them meanwhile (it held the lock):
        # that one is looked for, as a retry would be.
        for index, _ in chunk:
            delivery = deliveries[index]
            if (delivery.owner.address, delivery.copy_id) in self._appended:
                found = await self._find(connection, delivery.copy_id)
                if found:
                    located[index] = found[0]
        pending = [(index, message) for index, message in chunk if index not in located]
        if len(pending) > 1 and connection.multiappend:
            flags = [frozenset(deliveries[index].flags) for index, _ in pending]
            appended = await connection.append_many(
                self.folder, [(message, f) for (_, message), f in zip(pending, flags, strict=True)]
            )
            if appended is not None:
                uidvalidity, uids = appended
                for (index, _), uid in zip(pending, uids, strict=True):
                    done(index, uidvalidity, uid)
                return
            # Refused as a whole, so none is in the mailbox: one by one says which one the server
            # will not take, and the others still go in.
        for index, message in pending:
            uidvalidity, uid = await connection.append(
                self.folder, message, frozenset(deliveries[index].flags)
            )
            done(index, uidvalidity, uid)

    def _remember(self, key: tuple[str, str]) -> None:
        self._appended[key] = None
        self._appended.move_to_end(key)
        while len(self._appended) > 10_000:
            self._appended.popitem(last=False)

    async def _each_folder(
        self,
        connection: _Connection,
        copy_id: str,
        act: Callable[[str, Selected, list[Fetched]], Awaitable[None]],
    ) -> None:
        """Call ``act`` for each folder holding the copy, with the folder selected, on the copy's messages."""
        for folder in await connection.folders():
            state = await connection.select(folder)
            if state is None or not state.exists:
                continue
            uids = await connection.search("HEADER", COPY_ID_HEADER, copy_id)
            if not uids:
                continue
            messages = [
                m for m in await connection.fetch(uids, _HEADER_ITEMS) if message_copy_id(m.header) == copy_id
            ]
            if messages:
                await act(folder, state, messages)

    async def _find(self, connection: _Connection, copy_id: str) -> list[Located]:
        located: list[Located] = []

        async def collect(folder: str, state: Selected, messages: list[Fetched]) -> None:
            for message in messages:
                assert message.uid is not None
                ref = imap_ref(folder, state.uidvalidity, message.uid)
                located.append(Located(copy_id, folder, ref, system_flags(message.flags)))

        await self._each_folder(connection, copy_id, collect)
        return located

    async def _change_flags(
        self, owner: MailboxOwner, copy_id: str, flags: frozenset[Flag], change: str
    ) -> list[Located]:
        check_owner(owner)
        check_copy_id(copy_id)
        with self._context(f"change flags of copy {copy_id}", owner):
            async with self._pool.session(owner.address) as connection:
                if not flags:
                    return await self._find(connection, copy_id)
                # A member may move the copy between our search and our STORE; one more pass finds it
                # where it went (the instances already changed need nothing more).
                for _ in range(2):
                    located, missed = await self._store_flags(connection, copy_id, flags, change)
                    if not missed:
                        return located
                raise MailboxError(
                    errno.ENOENT, f"copy {copy_id} kept moving while its flags changed", self.server.where
                )

    async def _store_flags(
        self, connection: _Connection, copy_id: str, flags: frozenset[Flag], change: str
    ) -> tuple[list[Located], bool]:
        """One pass of a flag change: the instances after it, and whether one vanished meanwhile."""
        located: list[Located] = []
        missed = False

        async def store(folder: str, state: Selected, messages: list[Fetched]) -> None:
            nonlocal missed
            uids = [m.uid for m in messages if m.uid is not None]
            await connection.store(uids, change, flags)
            now = {m.uid: m for m in await connection.fetch(uids, "(UID FLAGS)")}
            for uid in uids:
                if uid in now:
                    ref = imap_ref(folder, state.uidvalidity, uid)
                    located.append(Located(copy_id, folder, ref, system_flags(now[uid].flags)))
                else:
                    missed = True

        await self._each_folder(connection, copy_id, store)
        return located, missed

    async def _flag_changes(
        self, connection: _Connection, before: dict[str, FolderState] | None
    ) -> tuple[list[FlagChange], str]:
        if "CONDSTORE" not in connection.capabilities:
            raise MailboxError(errno.EPROTO, "the IMAP server lacks CONDSTORE", self.server.where)
        states: dict[str, FolderState] = {}
        flags_now: dict[tuple[str, str], frozenset[Flag]] = {}
        reported: set[tuple[str, str]] = set()
        for folder in await connection.folders():
            previous = None if before is None else before.get(folder)
            if previous is not None and folder != connection.selected:
                status = await connection.status(folder)
                if status == previous:
                    states[folder] = previous
                    continue
            selected = await connection.select(folder)
            if selected is None:
                continue  # deleted meanwhile: nothing left to report there
            if selected.highestmodseq is None:
                raise MailboxError(
                    errno.EPROTO, f"folder {folder} keeps no modification sequences", self.server.where
                )
            now = FolderState(selected.uidvalidity, selected.highestmodseq, selected.uidnext)
            states[folder] = now
            if now == previous or not selected.exists:
                continue
            incremental = previous is not None and previous.uidvalidity == now.uidvalidity
            criteria = ["HEADER", COPY_ID_HEADER, '""']
            if before is not None:
                # A copy the caller has not seen counts only with a flag (below), so those without one,
                # the fan-out's fresh copies above all, are not even fetched.
                if incremental and previous is not None and previous.uidnext > 1:
                    criteria += ["OR", "UID", f"1:{previous.uidnext - 1}", *_ANY_FLAG]
                else:
                    criteria += _ANY_FLAG
            if incremental:
                assert previous is not None
                criteria = ["MODSEQ", str(previous.highestmodseq + 1), *criteria]
            uids = await connection.search(*criteria)
            for message in await connection.fetch(uids, _HEADER_ITEMS):
                copy_id = message_copy_id(message.header)
                if copy_id is None or message.uid is None:
                    continue
                key = (copy_id, folder)
                flags = system_flags(message.flags)
                flags_now[key] = flags_now.get(key, frozenset()) | flags
                # A copy the caller has not seen counts as having had no flags (as on Maildir).
                seen_before = before is None or (
                    incremental and previous is not None and message.uid < previous.uidnext
                )
                if seen_before or flags:
                    reported.add(key)
        changes = [
            FlagChange(copy_id, folder, flags_now[(copy_id, folder)]) for copy_id, folder in sorted(reported)
        ]
        return changes, encode_token(states)
