"""Whether mail on offer at DATA can be stored as the bytes it is: NUL bytes need a mailbox that keeps them.

DESIGN.md §8 allows two outcomes for bad input: stored faithfully as raw bytes, or a clear answer. A
Maildir keeps every byte; an IMAP server keeps NUL bytes only through BINARY (RFC 3516, a ``literal8``
APPEND), and one without BINARY would store something else (Dovecot turns NUL into 0x80 in a plain
literal) or refuse the copy after the mail was answered 250. So before the mail is accepted, a message
with a NUL byte is checked against the mailboxes its copies go to (``Mailbox.keeps_nul``):

- they keep NUL bytes: the mail goes on;
- they do not (the server's capabilities after login lack BINARY): ``554 5.6.0``, refused, not changed;
- it cannot be told now (the server is unreachable, or nobody has logged in yet and there is no member
  to log in as): ``451 4.3.0``, the sender tries again later.

How the answer is learnt: the IMAP mailbox remembers BINARY from every login it makes (the fan-out, the
flag watchers and IDLE log in as soon as the gateway runs); when it has not logged in yet and a member
is known (the submission listener's recipients), it logs in as that member to ask. Mail without a NUL
byte costs nothing here: one scan of the bytes, no mailbox call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from gateway.errors import MailboxError
from gateway.mailbox.base import Mailbox, MailboxOwner
from gateway.smtp_replies import Reply

__all__ = ["nul_refusal"]

log = logging.getLogger("gateway.stages.faithful")


async def nul_refusal(mailbox: Mailbox, raw: bytes, owners: Iterable[MailboxOwner] = ()) -> str | None:
    """None when ``raw`` can be stored as it is by the mailboxes of ``owners`` (or, without owners, by
    every store of ``mailbox``); else the SMTP answer to give at DATA."""
    if b"\0" not in raw:
        return None
    asked: list[MailboxOwner | None] = [*dict.fromkeys(owners)] or [None]
    try:
        answers = [await mailbox.keeps_nul(owner) for owner in asked]
    except MailboxError as exc:
        log.warning("cannot tell whether the mailbox keeps NUL bytes: %s", exc)
        return Reply.TRY_AGAIN.with_text(
            "Cannot check now whether the members' mailboxes can store this message as it is "
            "(it contains NUL bytes); try again later"
        )
    if False in answers:
        return str(Reply.NUL_NOT_STORABLE)
    if None in answers:
        return Reply.TRY_AGAIN.with_text(
            "The members' mailboxes are not connected yet, so it is not known whether they can store "
            "this message as it is (it contains NUL bytes); try again later"
        )
    return None
