"""IMAP's wire format, pure: parsing aioimaplib's response lines, quoting, folder names, UID sets, message
references and flag-state tokens.

aioimaplib routes untagged responses by name and strips the name for most commands; a literal ends a
text piece and follows as a bytearray. The parsers here take the lines as aioimaplib leaves them,
literals included, and read FETCH items, unsolicited ones too. Nothing here does I/O: every function is a
value in, a value out, tested without a server (tests/stages/test_imap_protocol.py).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from gateway.domain import gateway_headers
from gateway.mailbox.base import Flag, is_copy_id

COPY_ID_HEADER = gateway_headers.COPY_ID
INBOX = "INBOX"

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
