"""Members' mailboxes: the Mailbox protocol, its Maildir implementation and an in-memory fake."""

from gateway.errors import MailboxError
from gateway.mailbox.base import (
    ChangeWatch,
    Delivery,
    Flag,
    FlagChange,
    Located,
    Mailbox,
    MailboxOwner,
)
from gateway.mailbox.maildir import MaildirMailbox
from gateway.mailbox.memory import MemoryMailbox

__all__ = [
    "ChangeWatch",
    "Delivery",
    "Flag",
    "FlagChange",
    "Located",
    "Mailbox",
    "MailboxError",
    "MailboxOwner",
    "MaildirMailbox",
    "MemoryMailbox",
]
