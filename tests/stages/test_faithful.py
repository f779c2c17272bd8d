"""The DATA-time answer for mail with NUL bytes, for each thing a mailbox can say about keeping them."""

from __future__ import annotations

import errno

import pytest

from gateway.mailbox import MailboxError, MailboxOwner
from gateway.mailbox.memory import MemoryMailbox
from gateway.mailbox.routed import RoutedMailbox
from gateway.smtp_replies import Reply
from gateway.stages.faithful import nul_refusal

OWNER = MailboxOwner("makler-muster", "sb-a1@kunde-a.example")
WITH_NUL = b"Subject: x\r\n\r\nvor \x00 nach\r\n"


class Says(MemoryMailbox):
    """A mailbox that answers ``keeps_nul`` as told, and counts how often it was asked."""

    def __init__(self, answer: bool | MailboxError | None) -> None:
        super().__init__()
        self.answer = answer
        self.asked: list[MailboxOwner | None] = []

    async def keeps_nul(self, owner: MailboxOwner | None = None) -> bool | None:
        self.asked.append(owner)
        if isinstance(self.answer, MailboxError):
            raise self.answer
        return self.answer


async def test_a_store_of_files_keeps_every_byte() -> None:
    assert await nul_refusal(MemoryMailbox(), WITH_NUL, [OWNER]) is None


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (True, None),
        (False, str(Reply.NUL_NOT_STORABLE)),
        (None, "451 4.3.0 "),
        (MailboxError(errno.ECONNREFUSED, "down", "imap://x"), "451 4.3.0 "),
    ],
    ids=["keeps", "does-not", "unknown", "unreachable"],
)
async def test_each_answer_of_the_mailbox(answer: bool | MailboxError | None, expected: str | None) -> None:
    got = await nul_refusal(Says(answer), WITH_NUL, [OWNER, OWNER])
    if expected is None or expected == str(Reply.NUL_NOT_STORABLE):
        assert got == expected
    else:
        assert got is not None
        assert got.startswith(expected)
        assert "NUL" in got


async def test_mail_without_nul_asks_nothing() -> None:
    mailbox = Says(False)
    assert await nul_refusal(mailbox, b"Subject: x\r\n\r\nplain\r\n", [OWNER]) is None
    assert mailbox.asked == []


async def test_each_owner_is_asked_once_and_without_owners_the_mailbox_as_a_whole() -> None:
    mailbox = Says(True)
    await nul_refusal(mailbox, WITH_NUL, [OWNER, OWNER])
    assert mailbox.asked == [OWNER]
    mailbox.asked.clear()
    await nul_refusal(mailbox, WITH_NUL)
    assert mailbox.asked == [None]


def test_the_refusal_is_554_5_6_0() -> None:
    assert str(Reply.NUL_NOT_STORABLE).startswith("554 5.6.0 ")


@pytest.mark.parametrize(
    ("default", "routed", "whole"),
    [(True, True, True), (True, False, False), (None, True, None), (None, False, False)],
)
async def test_routed_mailboxes_keep_nul_only_where_every_store_does(
    default: bool | None, routed: bool | None, whole: bool | None
) -> None:
    other = MailboxOwner("makler-muster", "gf-b@kunde-b.example")
    mailbox = RoutedMailbox(Says(default), {other.address: Says(routed)})
    assert await mailbox.keeps_nul() is whole
    assert await mailbox.keeps_nul(OWNER) is default, "an owner's own store answers for it"
    assert await mailbox.keeps_nul(other) is routed
