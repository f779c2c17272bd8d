"""IMAP's wire format (gateway.mailbox.imap_protocol), without a server: response lines as aioimaplib hands
them over (the untagged ``* `` and, for most commands, the response name stripped; a literal as a bytearray
after the text piece that announces it; the tagged text last), taken from Dovecot's answers."""

from __future__ import annotations

import asyncio
import base64
import itertools
import re

import aioimaplib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mailbox import Flag
from gateway.mailbox.imap_connection import _FetchReading
from gateway.mailbox.imap_protocol import (
    FolderState,
    Listed,
    decode_token,
    encode_folder_name,
    encode_token,
    flag_list,
    header_values,
    imap_ref,
    message_copy_id,
    message_for_append,
    parse_appenduid,
    parse_appenduids,
    parse_capabilities,
    parse_fetch,
    parse_list,
    parse_ref,
    parse_search,
    parse_select,
    parse_status,
    parse_untagged,
    quote,
    response_codes,
    system_flags,
    uid_set,
)

MESSAGE = b"From: ams@makler.example\r\nSubject: Schaden 4711\r\n\r\nHallo\r\n"


def copy(copy_id: str) -> bytes:
    """A copy as fan-out writes it: its id in the X-Gateway-Copy-Id header."""
    return f"X-Gateway-Copy-Id: {copy_id}\r\n".encode() + MESSAGE


# --- the parsers, on responses as aioimaplib hands them over ---------------------------------------------


def test_fetch_responses_with_literals_and_unsolicited_updates() -> None:
    lines = [
        b"1 FETCH (UID 7 FLAGS (\\Seen \\Recent) MODSEQ (12) BODY[HEADER.FIELDS (X-GATEWAY-COPY-ID)] {25}",
        bytearray(b"X-Gateway-Copy-Id: c1\r\n\r\n"),
        b")",
        b"2 FETCH (UID 9 FLAGS () BODY[HEADER.FIELDS (X-GATEWAY-COPY-ID)] {2}",
        bytearray(b"\r\n"),
        b" MODSEQ (3))",
        b"3 FETCH (FLAGS (\\Answered $Forwarded))",  # unsolicited: another session changed flags
        b"4 EXPUNGE",
        b"Fetch completed (0.001 + 0.000 secs).",
    ]
    first, second, third = parse_fetch(lines)
    assert (first.seq, first.uid, first.flags, first.modseq) == (1, 7, ("\\Seen", "\\Recent"), 12)
    assert first.header == b"X-Gateway-Copy-Id: c1\r\n\r\n"
    assert (second.uid, second.flags, second.modseq, second.header) == (9, (), 3, b"\r\n")
    assert (third.seq, third.uid, third.flags, third.header) == (3, None, ("\\Answered", "$Forwarded"), None)
    assert system_flags(first.flags) == {Flag.SEEN}
    assert system_flags(third.flags) == {Flag.ANSWERED}


def test_a_literal_may_hold_anything_imap_syntax_has() -> None:
    header = b'X-Gateway-Copy-Id: c1\r\nX-Other: ( ) "quoted" {3}\r\n\r\n'
    lines = [f"5 FETCH (UID 1 BODY[HEADER] {{{len(header)}}}".encode(), bytearray(header), b")", b"done"]
    [fetched] = parse_fetch(lines)
    assert (fetched.uid, fetched.header) == (1, header)


def test_search_status_list_select_and_codes() -> None:
    assert parse_search([b"1 3 17", b"Search completed"]) == [1, 3, 17]
    assert parse_search([b"1 3 (MODSEQ 6)", b"Search completed"]) == [1, 3]
    assert parse_search([b"", b"Search completed"]) == []

    status = [b"INBOX (MESSAGES 2 UIDNEXT 4 UIDVALIDITY 1795 HIGHESTMODSEQ 7)", b"Status completed."]
    assert parse_status(status) == {"MESSAGES": 2, "UIDNEXT": 4, "UIDVALIDITY": 1795, "HIGHESTMODSEQ": 7}

    listed = [
        b'(\\HasNoChildren) "." INBOX',
        b'(\\HasChildren \\Noselect) "." "Kunden"',
        b'(\\HasNoChildren) "." "Kunden.M\\"uller \\\\ Co"',
        b'(\\HasNoChildren) "." {9}',
        bytearray(b"Vorg&AOQ-"),
        b'(\\HasNoChildren) NIL "Flat"',
        b"List completed.",
    ]
    assert parse_list(listed) == [
        Listed("INBOX", ".", frozenset({"\\HASNOCHILDREN"})),
        Listed("Kunden", ".", frozenset({"\\HASCHILDREN", "\\NOSELECT"})),
        Listed('Kunden.M"uller \\ Co', ".", frozenset({"\\HASNOCHILDREN"})),
        Listed("Vorg&AOQ-", ".", frozenset({"\\HASNOCHILDREN"})),
        Listed("Flat", None, frozenset({"\\HASNOCHILDREN"})),
    ]
    assert [folder.selectable for folder in parse_list(listed)] == [True, False, True, True, True]

    select = [
        b"FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
        b"OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted.",
        b"3 EXISTS",
        b"0 RECENT",
        b"OK [UIDVALIDITY 1795752475] UIDs valid",
        b"OK [UIDNEXT 4] Predicted next UID",
        b"OK [HIGHESTMODSEQ 5] Highest",
        b"[READ-WRITE] Select completed (0.001 + 0.000 secs).",
    ]
    state = parse_select(select)
    assert (state.uidvalidity, state.uidnext, state.exists, state.highestmodseq) == (1795752475, 4, 3, 5)
    nomodseq = [b"1 EXISTS", b"OK [UIDVALIDITY 9] x", b"OK [NOMODSEQ] none", b"[READ-ONLY] done"]
    assert parse_select(nomodseq).highestmodseq is None
    with pytest.raises(ValueError, match="UIDVALIDITY"):
        parse_select([b"3 EXISTS", b"Select completed"])

    assert parse_appenduid([b"[APPENDUID 1795751100 42] Append completed (0.005 secs)."]) == (1795751100, 42)
    assert parse_appenduid([b"Append completed."]) is None
    # MULTIAPPEND: one UID per message, in the order they went.
    assert parse_appenduids([b"[APPENDUID 1795751100 5:7,9] Append completed."]) == (1795751100, [5, 6, 7, 9])
    assert parse_appenduids([b"[APPENDUID 1795751100 42] Append completed."]) == (1795751100, [42])
    assert parse_appenduids([b"Append completed."]) is None
    assert parse_appenduids([b"[APPENDUID 1795751100 x:3] Append completed."]) is None
    assert "TRYCREATE" in response_codes([b"[TRYCREATE] Mailbox doesn't exist: Archiv"])
    caps = parse_capabilities([b"IMAP4rev1 UIDPLUS CONDSTORE auth=PLAIN", b"Capability completed"])
    assert caps == {"IMAP4REV1", "UIDPLUS", "CONDSTORE", "AUTH=PLAIN"}
    assert parse_untagged([b"done"]) == []


def test_copy_id_headers() -> None:
    folded = (
        b"Subject: x\r\nX-Gateway-Copy-Id:\r\n  c1 \r\nx-gateway-copy-id: c1\r\n\r\nX-Gateway-Copy-Id: c2\r\n"
    )
    assert header_values(folded) == ["c1", "c1"], "unfolded, any case, the body does not count"
    assert message_copy_id(folded) == "c1"
    assert message_copy_id(b"X-Gateway-Copy-Id: c1\r\nX-Gateway-Copy-Id: c2\r\n\r\n") is None
    assert message_copy_id(b"X-Gateway-Copy-Id: ../evil\r\n\r\n") is None
    assert message_copy_id(b"\r\n") is None
    assert message_copy_id(None) is None


def test_the_bytes_appended() -> None:
    assert message_for_append("c1", MESSAGE) == copy("c1")
    assert message_for_append("c1", copy("c1")) == copy("c1"), "a copy that names itself stays as it is"
    assert message_for_append("c1", b"Subject: x\n\nline\nend") == (
        b"X-Gateway-Copy-Id: c1\r\nSubject: x\r\n\r\nline\r\nend"
    )
    assert (
        message_for_append("c1", b"Subject: nul\r\n\r\na\x00b")
        == b"X-Gateway-Copy-Id: c1\r\nSubject: nul\r\n\r\na\x00b"
    ), "NUL bytes stay: they go as a BINARY literal or not at all (test_imap_binary.py)"
    assert message_for_append("c1", b"") == b"X-Gateway-Copy-Id: c1\r\n"
    assert message_for_append("c1", b"\r\nbody only") == b"X-Gateway-Copy-Id: c1\r\n\r\nbody only"
    # A header in the body is not the message's header.
    body_mention = b"Subject: x\r\n\r\nX-Gateway-Copy-Id: c9\r\n"
    assert message_for_append("c1", body_mention) == b"X-Gateway-Copy-Id: c1\r\n" + body_mention
    with pytest.raises(ValueError, match="carries X-Gateway-Copy-Id c2"):
        message_for_append("c1", copy("c2"))


def test_names_sets_references_and_flags() -> None:
    assert encode_folder_name("Vorgänge") == "Vorg&AOQ-nge"
    assert encode_folder_name("Akten & Co") == "Akten &- Co"
    assert encode_folder_name("日本語") == "&ZeVnLIqe-"
    assert encode_folder_name("inbox") == "INBOX"
    assert encode_folder_name("Archiv.2026") == "Archiv.2026"

    assert uid_set([3, 1, 2, 7, 9, 10, 2]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"
    with pytest.raises(ValueError, match="empty"):
        uid_set([])

    ref = imap_ref("Kunden;Archiv", 1795, 42)
    assert ref == "Kunden;Archiv;UIDVALIDITY=1795/;UID=42"
    assert parse_ref(ref) == ("Kunden;Archiv", 1795, 42)
    for bad in ["new/c1.host", "INBOX;UIDVALIDITY=x/;UID=1", "INBOX/1"]:
        with pytest.raises(ValueError, match="reference"):
            parse_ref(bad)

    assert flag_list({Flag.SEEN, Flag.ANSWERED}) == "(\\Answered \\Seen)"
    assert system_flags(["\\SEEN", "\\recent", "$Label1", "\\Deleted"]) == {Flag.SEEN, Flag.DELETED}
    assert system_flags(None) == frozenset()


def test_tokens() -> None:
    states = {"INBOX": FolderState(1795, 12, 40), "Archiv": FolderState(1796, 3, 2)}
    token = encode_token(states)
    assert token == '{"v":"imap1","f":{"Archiv":[1796,3,2],"INBOX":[1795,12,40]}}'
    assert decode_token(token) == states
    for bad in ["", "[]", '{"v": 1, "f": {}}', '{"v": "imap1"}', '{"v": "imap1", "f": {"INBOX": [1, 2]}}']:
        with pytest.raises(ValueError, match="flag-state token"):
            decode_token(bad)
    with pytest.raises(ValueError, match="flag-state token"):
        decode_token('{"v": "imap1", "f": {"INBOX": [1, true, 3]}}')


# --- more of what servers send -------------------------------------------------------------------------


def test_fetch_odd_but_valid_answers() -> None:
    lines = [
        # Items in any order, lower case, NIL for a header the message lacks, a quoted string body.
        b"12 fetch (modseq (900) flags (\\Flagged) uid 40 body[header.fields (x-gateway-copy-id)] NIL)",
        b'13 FETCH (UID 41 BODY[HEADER.FIELDS (X-GATEWAY-COPY-ID)] "X-Gateway-Copy-Id: c9")',
        # Dovecot's answer to UID STORE without .SILENT, and a FETCH whose sequence number is no number.
        b"14 FETCH (UID 42 MODSEQ (901) FLAGS (\\Seen \\Deleted))",
        b"x FETCH (UID 43)",
        b"15 EXISTS",
        b"Fetch completed (0.002 + 0.000 + 0.001 secs).",
    ]
    first, second, third = parse_fetch(lines)
    assert (first.seq, first.uid, first.flags, first.modseq, first.header) == (
        12,
        40,
        ("\\Flagged",),
        900,
        None,
    )
    assert (second.uid, second.header) == (41, b"X-Gateway-Copy-Id: c9")
    assert (third.uid, third.modseq) == (42, 901)
    assert system_flags(third.flags) == {Flag.SEEN, Flag.DELETED}
    assert parse_fetch([b"Fetch completed."]) == []


def test_fetch_of_several_messages_with_literals_back_to_back() -> None:
    headers = [b"X-Gateway-Copy-Id: c1\r\n\r\n", b"X-Gateway-Copy-Id: c2\r\n\r\n", b"\r\n"]
    lines: list[bytes | bytearray] = []
    for seq, header in enumerate(headers, start=1):
        announced = (
            f"{seq} FETCH (UID {seq * 10} FLAGS () BODY[HEADER.FIELDS (X-GATEWAY-COPY-ID)] {{{len(header)}}}"
        )
        lines.append(announced.encode())
        lines.append(bytearray(header))
        lines.append(b")")
    lines.append(b"Fetch completed.")
    fetched = parse_fetch(lines)
    assert [(f.seq, f.uid, f.header) for f in fetched] == [
        (1, 10, headers[0]),
        (2, 20, headers[1]),
        (3, 30, headers[2]),
    ]
    assert [message_copy_id(f.header) for f in fetched] == ["c1", "c2", None]


def test_a_literal_with_a_closing_parenthesis_and_crlf_inside() -> None:
    header = b"X-Gateway-Copy-Id: c1\r\nSubject: (a) )) \r\n\r\n"
    lines = [
        f"7 FETCH (UID 3 BODY[HEADER] {{{len(header)}}}".encode(),
        bytearray(header),
        b" FLAGS (\\Seen))",
        b"ok",
    ]
    [fetched] = parse_fetch(lines)
    assert (fetched.uid, fetched.header, fetched.flags) == (3, header, ("\\Seen",))


def test_binary_literal8_is_read_as_a_literal() -> None:
    body = b"a\x00b)"
    lines = [f"1 FETCH (UID 5 BODY[HEADER] ~{{{len(body)}}}".encode(), bytearray(body), b")", b"ok"]
    [fetched] = parse_fetch(lines)
    assert fetched.header == body


def test_search_answers() -> None:
    assert parse_search([b"2 84 882", b"UID SEARCH completed"]) == [2, 84, 882]
    assert parse_search([b"SEARCH 4 5", b"done"]) == [4, 5], (
        "the response name, where it is left, is no number"
    )
    assert parse_search([b"Search completed (0.001 + 0.000 secs)."]) == []


def test_list_answers() -> None:
    lines = [
        b'(\\HasNoChildren \\UnMarked \\Sent) "." Sent',
        b'(\\NonExistent \\HasChildren) "." Gone',
        b'LIST (\\HasNoChildren) "/" "with/slash"',  # a response whose name aioimaplib left in place
        b'(\\HasNoChildren) "." {11}',
        bytearray(b"Akten (alt)"),
        b"List completed (0.001 + 0.000 secs).",
    ]
    assert parse_list(lines) == [
        Listed("Sent", ".", frozenset({"\\HASNOCHILDREN", "\\UNMARKED", "\\SENT"})),
        Listed("Gone", ".", frozenset({"\\NONEXISTENT", "\\HASCHILDREN"})),
        Listed("with/slash", "/", frozenset({"\\HASNOCHILDREN"})),
        Listed("Akten (alt)", ".", frozenset({"\\HASNOCHILDREN"})),
    ]
    assert [listed.selectable for listed in parse_list(lines)] == [True, False, True, True]


def test_status_answers() -> None:
    assert parse_status([b'"Vorg&AOQ-nge" (UIDNEXT 9 UIDVALIDITY 17 HIGHESTMODSEQ 3)', b"done"]) == {
        "UIDNEXT": 9,
        "UIDVALIDITY": 17,
        "HIGHESTMODSEQ": 3,
    }
    literal_name = [b"{6}", bytearray(b"Akten)"), b" (uidnext 2 uidvalidity 5 messages x)", b"done"]
    assert parse_status(literal_name) == {"UIDNEXT": 2, "UIDVALIDITY": 5}, (
        "keys upper-cased, no number skipped"
    )


def test_select_answers() -> None:
    # EXAMINE on Dovecot, as aioimaplib hands it over.
    examine = [
        b"FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded)",
        b"OK [PERMANENTFLAGS ()] Read-only mailbox.",
        b"0 EXISTS",
        b"0 RECENT",
        b"OK [UIDVALIDITY 1795000001] UIDs valid",
        b"OK [UIDNEXT 1] Predicted next UID",
        b"OK [HIGHESTMODSEQ 1] Highest",
        b"[READ-ONLY] Examine completed (0.001 + 0.000 secs).",
    ]
    state = parse_select(examine)
    assert (state.uidvalidity, state.uidnext, state.exists, state.highestmodseq) == (1795000001, 1, 0, 1)
    assert parse_select([b"OK [UIDVALIDITY 3] x", b"done"]).uidnext == 0, "no UIDNEXT: unknown"


def test_response_codes() -> None:
    codes = response_codes(
        [
            b"OK [UIDVALIDITY 7] UIDs valid",
            b"[APPENDUID 7 3:4] done",
            b"NO [TRYCREATE] Mailbox doesn't exist",
            b"x",
        ]
    )
    assert codes == {"UIDVALIDITY": "7", "APPENDUID": "7 3:4", "TRYCREATE": ""}
    assert response_codes([bytearray(b"[UIDVALIDITY 1] inside a literal"), b"done"]) == {}


def test_appenduid_answers() -> None:
    assert parse_appenduid([b"[APPENDUID 38505 3955] APPEND completed"]) == (38505, 3955)
    assert parse_appenduid([b"[APPENDUID 38505 3955:3956] APPEND completed"]) is None, "one message, one UID"
    assert parse_appenduids([b"[APPENDUID 38505 9:7] done"]) == (38505, [7, 8, 9]), "a range either way round"
    assert parse_appenduids([b"[APPENDUID 38505 1,3:4,10] done"]) == (38505, [1, 3, 4, 10])
    assert parse_appenduids([b"[APPENDUID x 1] done"]) is None
    assert parse_appenduids([b"[APPENDUID 38505 1,] done"]) is None


def test_capability_answers() -> None:
    dovecot = (
        b"CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
        b"MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 "
        b"CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE LITERAL+"
    )
    caps = parse_capabilities([dovecot, b"Pre-login capabilities listed, post-login capabilities have more."])
    assert {"IDLE", "UIDPLUS", "CONDSTORE", "BINARY", "MULTIAPPEND", "LITERAL+", "SORT=DISPLAY"} <= caps
    assert "CAPABILITY" not in caps
    assert parse_capabilities([b"done"]) == frozenset()


def test_quote() -> None:
    assert quote("INBOX") == '"INBOX"'
    assert quote('Kunden "A"') == '"Kunden \\"A\\""'
    assert quote("a\\b") == '"a\\\\b"'
    assert quote("sb-a1@kunde-a.example*gateway") == '"sb-a1@kunde-a.example*gateway"'


def test_folder_names_as_rfc_3501_spells_them() -> None:
    # RFC 3501 §5.1.3's own example; "/" in the base64 becomes ",".
    assert encode_folder_name("~peter/mail/台北/日本語") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert encode_folder_name("&") == "&-"
    assert encode_folder_name("Entwürfe") == "Entw&APw-rfe"
    assert encode_folder_name("Inbox") == "INBOX"
    assert encode_folder_name("INBOX.Vorgänge") == "INBOX.Vorg&AOQ-nge", "only INBOX itself is special"
    assert encode_folder_name("Tab\there") == "Tab&AAk-here", "control characters are not printable ASCII"
    assert encode_folder_name("😀") == "&2D3eAA-", "outside the BMP: a UTF-16 surrogate pair"


def test_uid_sets() -> None:
    assert uid_set(range(1, 1001)) == "1:1000"
    assert uid_set([10, 8, 6]) == "6,8,10"
    assert uid_set(iter([4, 4, 5])) == "4:5"


# --- round trips ------------------------------------------------------------------------------------------


def decode_folder_name(encoded: str) -> str:
    """Modified UTF-7 back to text (RFC 3501 §5.1.3), written independently of the encoder under test."""
    return re.sub(
        r"&([^-]*)-",
        lambda m: (
            "&"
            if not m[1]
            else base64.b64decode(m[1].replace(",", "/") + "=" * (-len(m[1]) % 4)).decode("utf-16-be")
        ),
        encoded,
    )


def expand(uids: str) -> list[int]:
    out: list[int] = []
    for part in uids.split(","):
        first, _, last = part.partition(":")
        out.extend(range(int(first), int(last or first) + 1))
    return out


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)


@settings(deadline=None)
@given(names)
def test_folder_names_decode_to_what_they_were(name: str) -> None:
    encoded = encode_folder_name(name)
    assert all(" " <= char <= "~" for char in encoded), "modified UTF-7 is printable ASCII"
    if name.upper() != "INBOX":
        assert decode_folder_name(encoded) == name


@settings(deadline=None)
@given(
    st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E)
        | st.characters(min_codepoint=0xA0, blacklist_categories=("Cs",))
    )
)
def test_a_quoted_string_reads_back_as_itself(text: str) -> None:
    assert parse_untagged([quote(text).encode(), b"done"]) == [[text.encode()]]


@settings(deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=2**32 - 1), min_size=1, max_size=60))
def test_a_uid_set_holds_exactly_the_uids_in_fewest_runs(uids: list[int]) -> None:
    text = uid_set(uids)
    assert expand(text) == sorted(set(uids))
    runs = [expand(part) for part in text.split(",")]
    assert all(later[0] > earlier[-1] + 1 for earlier, later in itertools.pairwise(runs))


@settings(deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=40),
    st.integers(min_value=1, max_value=2**32 - 1),
)
def test_appenduid_sets_read_back(uids: list[int], uidvalidity: int) -> None:
    line = f"[APPENDUID {uidvalidity} {uid_set(uids)}] Append completed.".encode()
    assert parse_appenduids([line]) == (uidvalidity, sorted(set(uids)))


counters = st.integers(min_value=0, max_value=2**63 - 1)


@settings(deadline=None)
@given(st.dictionaries(names, st.builds(FolderState, counters, counters, counters), max_size=8))
def test_tokens_decode_to_what_they_were(states: dict[str, FolderState]) -> None:
    token = encode_token(states)
    assert decode_token(token) == states
    assert encode_token(decode_token(token)) == token, "one spelling per state"


@settings(deadline=None)
@given(names, st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=1, max_value=2**32 - 1))
def test_references_read_back(folder: str, uidvalidity: int, uid: int) -> None:
    assert parse_ref(imap_ref(folder, uidvalidity, uid)) == (folder, uidvalidity, uid)


@settings(deadline=None)
@given(st.sets(st.sampled_from(list(Flag))))
def test_flag_lists_read_back(flags: set[Flag]) -> None:
    [[values]] = parse_untagged([flag_list(flags).encode(), b"done"])
    assert isinstance(values, list)
    assert system_flags(v.decode() for v in values if isinstance(v, bytes)) == flags


@settings(deadline=None)
@given(st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True), st.binary(max_size=200))
def test_the_bytes_appended_name_their_copy(copy_id: str, body: bytes) -> None:
    data = b"Subject: x\r\n\r\n" + body
    appended = message_for_append(copy_id, data)
    assert b"\n" not in appended.replace(b"\r\n", b""), "CRLF line ends only"
    header = appended[: appended.find(b"\r\n\r\n") + 2]
    assert header_values(header) == [copy_id]
    assert message_for_append(copy_id, appended) == appended, "appending twice changes nothing"


# Lines of a UID FETCH response as aioimaplib hands them to its command: FETCH lines, literal data (a
# bytearray, which its check skips), the closing parenthesis after a literal, and odd ones.
FETCH_LINES = st.sampled_from(
    [
        b"1 FETCH (UID 5 FLAGS () BODY[HEADER.FIELDS (X-Gateway-Copy-Id)] {40}",
        bytearray(b"X-Gateway-Copy-Id: c0123\r\n\r\n"),
        bytearray(b"Subject: (unbalanced\r\n"),
        b")",
        b" UID 7)",
        b"2 FETCH (UID 6 FLAGS (\\Seen))",
        b"3 FETCH (FLAGS (\\Answered) UID 8 BODY[HEADER.FIELDS (X-Gateway-Copy-Id)] {2}",
        b"OK Fetch completed.",
        b"(",
    ]
)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(FETCH_LINES, max_size=40))
async def test_a_fetch_is_complete_when_aioimaplib_would_say_so(lines: list[bytes]) -> None:
    """``_FetchReading`` reads only the lines added since it was last asked: after every line, its
    answer to "still incomplete?" is aioimaplib's own."""
    loop = asyncio.get_running_loop()
    theirs = aioimaplib.FetchCommand("A1", "1:*", "(UID FLAGS)", prefix="UID", loop=loop)
    ours = _FetchReading("A1", "1:*", "(UID FLAGS)", prefix="UID", loop=loop)
    for line in lines:
        theirs.append_to_resp(line)
        ours.append_to_resp(line)
        assert ours.wait_data() == theirs.wait_data()
