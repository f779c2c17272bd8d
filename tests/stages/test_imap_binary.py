"""NUL bytes through a real Dovecot: stored as they are where the server offers BINARY (RFC 3516), and
never changed to fit where it does not (issue 13, item 10)."""

from __future__ import annotations

import errno
import imaplib
from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.mailbox import Delivery, Located, MailboxError, MailboxOwner
from gateway.mailbox.imap import ImapMailbox
from gateway.smtp_replies import Reply
from gateway.stages.faithful import nul_refusal
from tests.dovecot import Dovecot, private_dovecot

OWNER = MailboxOwner("makler-muster", "sb-a1@kunde-a.example")
HEAD = b"From: ams@makler.example\r\nSubject: Fotos\r\n\r\n"
BODY = b"vor \x00 nach\r\n\x00\x00 und eine Zeile\r\n"
# What Dovecot 2.3 announces after login, BINARY taken out (its imap_capability setting replaces it).
WITHOUT_BINARY = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES THREAD=REFS "
    "THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS "
    "LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH "
    "LIST-STATUS MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE"
)


def copy(copy_id: str, body: bytes = BODY) -> bytes:
    return f"X-Gateway-Copy-Id: {copy_id}\r\n".encode() + HEAD + body


def as_member_reads_it(dovecot: Dovecot, address: str) -> dict[bytes, tuple[bytes, bytes]]:
    """Per copy id: (the whole message, its body) as a member's client fetches them with BINARY."""
    client = dovecot.client(address)
    try:
        client.select("INBOX")
        _, data = client.uid("FETCH", "1:*", "(BINARY.PEEK[] BINARY.PEEK[1])")
    finally:
        client.logout()
    found: dict[bytes, tuple[bytes, bytes]] = {}
    literals = [item[1] for item in data if isinstance(item, tuple)]
    for whole, body in zip(literals[::2], literals[1::2], strict=True):
        copy_id = whole.split(b"\r\n", 1)[0].removeprefix(b"X-Gateway-Copy-Id: ")
        found[copy_id] = (whole, body)
    return found


@pytest.fixture
async def imap(dovecot: Dovecot) -> AsyncIterator[ImapMailbox]:
    dovecot.add_user(OWNER.address)
    box = ImapMailbox.from_settings(dovecot.imap_settings(), timeout=10)
    yield box
    await box.close()


@pytest.fixture
def dovecot_without_binary() -> Iterator[Dovecot]:
    with private_dovecot(imap_capability=WITHOUT_BINARY) as instance:
        yield instance


async def test_nul_bytes_are_stored_and_fetched_back_identical(imap: ImapMailbox, dovecot: Dovecot) -> None:
    located = await imap.append(OWNER, "c1", copy("c1"), first_attempt=True)
    assert located.copy_id == "c1"
    whole, body = as_member_reads_it(dovecot, OWNER.address)[b"c1"]
    assert whole == copy("c1"), "FETCH BINARY[] gives back the bytes accepted, NUL included"
    assert body == BODY
    assert await imap.find(OWNER, "c1") == [located], "and the copy is found as any other"


async def test_a_batch_stores_nul_copies_as_they_are_next_to_others(
    imap: ImapMailbox, dovecot: Dovecot
) -> None:
    deliveries = [
        Delivery(OWNER, "c1", copy("c1"), frozenset(), first_attempt=True),
        Delivery(OWNER, "c2", copy("c2", b"plain\r\n"), frozenset(), first_attempt=True),
        Delivery(OWNER, "c3", copy("c3", b"\x00"), frozenset(), first_attempt=True),
    ]
    results = await imap.append_batch(deliveries)
    assert all(isinstance(r, Located) for r in results), results
    read = as_member_reads_it(dovecot, OWNER.address)
    assert {k: v[0] for k, v in read.items()} == {
        b"c1": copy("c1"),
        b"c2": copy("c2", b"plain\r\n"),
        b"c3": copy("c3", b"\x00"),
    }


async def test_binary_is_known_after_the_first_login(imap: ImapMailbox) -> None:
    assert await imap.keeps_nul() is None, "no login yet, no owner to log in as: unknown"
    assert await imap.keeps_nul(OWNER) is True, "logs in as the owner to ask"
    assert await imap.keeps_nul() is True, "remembered"
    assert await nul_refusal(imap, b"Subject: x\r\n\r\n\x00\r\n") is None


async def test_without_binary_a_copy_with_nul_is_refused_not_changed(dovecot_without_binary: Dovecot) -> None:
    dovecot = dovecot_without_binary
    dovecot.add_user(OWNER.address)
    imap = ImapMailbox.from_settings(dovecot.imap_settings(), timeout=10)
    try:
        assert await imap.keeps_nul(OWNER) is False
        assert await nul_refusal(imap, b"Subject: x\r\n\r\n\x00\r\n", [OWNER]) == str(Reply.NUL_NOT_STORABLE)
        assert str(Reply.NUL_NOT_STORABLE).startswith("554 5.6.0 ")
        assert await nul_refusal(imap, b"Subject: x\r\n\r\nno nul\r\n", [OWNER]) is None
        with pytest.raises(MailboxError) as caught:
            await imap.append(OWNER, "c1", copy("c1"), first_attempt=True)
        assert caught.value.errno == errno.EILSEQ
        assert "BINARY" in str(caught.value)
        (result,) = await imap.append_batch(
            [Delivery(OWNER, "c2", copy("c2"), frozenset(), first_attempt=True)]
        )
        assert isinstance(result, MailboxError), "one by one in a batch too"
        await imap.append(OWNER, "c3", copy("c3", b"plain\r\n"), first_attempt=True)
        assert set(as_member_reads_it(dovecot, OWNER.address)) == {b"c3"}, "nothing changed was stored"
    finally:
        await imap.close()


def test_imaplib_reads_what_dovecot_announces(dovecot_without_binary: Dovecot) -> None:
    """The configured server really lacks BINARY: a member's client sees the same list."""
    dovecot_without_binary.add_user(OWNER.address)
    client = dovecot_without_binary.client(OWNER.address)
    try:
        assert "BINARY" not in client.capabilities
        assert "UIDPLUS" in client.capabilities
    finally:
        client.logout()
    assert isinstance(client, imaplib.IMAP4)
