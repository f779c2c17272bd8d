"""The gateway's one error tree; library code raises these, only ``gateway.cli`` turns them into exit codes.

    GatewayError
    ├── InputError                  the person or file asked for something invalid (CLI exit status 2)
    │   ├── ProblemsError           an input error listing every problem found, each with its place
    │   │   ├── ConfigError         config/*.toml or a GATEWAY_… variable is invalid
    │   │   ├── DirectoryFileError  a directory YAML file is invalid; carries FILE:LINE problems
    │   │   └── RulesFileError      a routing rules file is invalid; carries FILE:LINE:COL problems
    │   ├── NotFound                a named portfolio, member, release, back office, message or
    │   │                           reconcile run does not exist (any more)
    │   └── DirectoryConflict       a change would break a directory rule (one primary release, sharing…)
    └── OperationalError            the gateway could not do its work (CLI exit status 1)
        ├── DatabaseNotReady        the database is unreachable or not migrated to the code's schema
        ├── StorageError            a database operation failed
        ├── NotStored               an accepted message could not be stored: 451 4.3.0, the client retries
        ├── NotRead                 a received mail could not be parsed within its budget: 451 4.3.0
        ├── DnsTemporaryError       DNS could not answer now (timeout, SERVFAIL): a 4xx, the sender retries
        └── MailboxError (OSError)  trouble with a member's mailbox (disk, IMAP server): the copy is retried

Errors that reach an SMTP client later carry their reply code as attributes (aiosmtplib's convention).
Errors keep a stdlib base where they mean the same: ``MailboxError`` is an ``OSError`` with ``errno``,
``strerror`` and ``filename``, so code that handles file and socket trouble handles it too.

Outside the tree on purpose: ``gateway.domain`` raises ``ValueError`` subclasses (it imports nothing
outside itself), which the stages turn into answers; and a few exceptions that never leave the module
that raises them (``LoginsThrottled`` in ingress, the SPF evaluator's and the IMAP connection's private ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class InputError(GatewayError):
    """Something a person typed or wrote is invalid; saying what and where is the whole answer."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input, located as precisely as the input allows.

    ``where`` is ``FILE:LINE`` for files, or a dotted key (``database.url``) for configuration.
    """

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


class ProblemsError(InputError):
    """An input error that lists every problem found, not just the first."""

    def __init__(self, summary: str, problems: Sequence[Problem]) -> None:
        self.summary = summary
        self.problems = tuple(problems)
        super().__init__(summary + "".join(f"\n  {p}" for p in self.problems))


class ConfigError(ProblemsError):
    """The configuration file or an environment override is invalid."""


class DirectoryFileError(ProblemsError):
    """A directory YAML file is invalid; nothing of it was applied."""


class RulesFileError(ProblemsError):
    """The routing rules files are invalid (or name what the directory lacks); none of them is used."""


class NotFound(InputError):
    """A named object does not exist (in the portfolio asked about)."""


class DirectoryConflict(InputError):
    """A directory change would break one of the directory's rules; names the conflicting objects."""


class OperationalError(GatewayError):
    """The gateway could not do its work although the request was valid."""


class DatabaseNotReady(OperationalError):
    """The database cannot be used yet; the message says which command fixes it."""


class StorageError(OperationalError):
    """A database operation failed."""


class NotStored(OperationalError):
    """The message could not be stored; the client should try again later (451 4.3.0)."""


class NotRead(OperationalError):
    """A received mail could not be read within its budget (or its worker died): 451 4.3.0, retry later."""


class DnsTemporaryError(OperationalError):
    """DNS could not answer now (timeout, SERVFAIL, no name server); asking later may succeed."""


class MailboxError(OperationalError, OSError):
    """Temporary trouble with the mailbox store (disk, server); the caller retries the whole operation.

    Raised as ``OSError`` is: ``MailboxError(errno, strerror, filename)``; ``filename`` names the path (or
    server) concerned and ``strerror`` the reason.
    """

    def __str__(self) -> str:
        if self.strerror is None:
            return super().__str__()
        if self.filename is None:
            return str(self.strerror)
        return f"{self.strerror}: {self.filename}"
