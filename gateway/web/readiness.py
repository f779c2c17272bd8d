"""Whether this gateway can do its work now (/readyz): the database reachable and migrated, the
mailbox backend reachable, every configured listener bound.

A database that another node migrated past this one (a rolling upgrade, docs/deploy.md) is no reason
to take the node out of service: a release's migrations only add, so it goes on working, and during the
upgrade it may be one of the few nodes running. It is a warning in the answer, which stays 200
(gateway.stages.schema_watch logs it and sets the gauge).

Each check has a deadline, so a database or IMAP server that swallows packets makes /readyz answer
503 in seconds instead of hanging the prober. The IMAP check logs in as the fan-out does
(``gateway.mailbox.imap_connection.ImapProbe``). The reasons are for the operator reading a probe's
output: which part and which step (connect, TLS, login), and what to look at; never a password, a
URL with credentials, a member's address or a stack trace (the log has the details).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from gateway.config import MailboxSettings
from gateway.db.directory import member_on_default_server
from gateway.db.schema_state import schema_state
from gateway.errors import MailboxError
from gateway.mailbox.imap_connection import ImapProbe, ImapServer, ProbeStep

log = logging.getLogger("gateway.web")

CHECK_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class Report:
    """What /readyz says: ready when there are no problems; warnings are said either way."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class Readiness:
    """The checks of one Service; ``problems()`` is empty when it is ready."""

    def __init__(
        self,
        engine: AsyncEngine,
        mailbox: MailboxSettings,
        unbound_listeners: Callable[[], list[str]],
        *,
        timeout: float = CHECK_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.engine = engine
        self.ssl_context = ssl_context  # the certificates to trust; None: the system's, as the fan-out
        self.mailbox = mailbox
        self.unbound_listeners = unbound_listeners
        self.timeout = timeout

    async def problems(self) -> list[str]:
        return (await self.report()).problems

    async def report(self) -> Report:
        (database, schema_warning), mailbox = await asyncio.gather(self._database(), self._mailbox())
        problems = [p for p in (database, mailbox) if p is not None]
        problems += [f"listener {name}: not listening" for name in self.unbound_listeners()]
        return Report(problems, [schema_warning] if schema_warning is not None else [])

    async def _database(self) -> tuple[str | None, str | None]:
        """(the problem, the warning) of the database check."""
        try:
            async with asyncio.timeout(self.timeout):
                state = await schema_state(self.engine)
        except TimeoutError:
            log.warning("readiness: the database did not answer within %.0f s", self.timeout)
            return f"database: no answer within {self.timeout:.0f} s", None
        except Exception as exc:
            log.warning("readiness: the database is not reachable: %s", exc)
            return "database: not reachable", None
        if not state.known:
            return None, (
                f"database: schema {state.current} is newer than this node's {state.head} (another node "
                "migrated it): upgrade this node"
            )
        if not state.up_to_date:
            return "database: not at this gateway's schema; run `gateway db upgrade`", None
        return None, None

    async def _mailbox(self) -> str | None:
        if self.mailbox.backend == "imap":
            return await self._imap()
        root = self.mailbox.maildir_root
        try:
            await asyncio.wait_for(asyncio.to_thread(_write_probe, root), self.timeout)
        except TimeoutError:
            return f"mailboxes: the Maildir root did not answer within {self.timeout:.0f} s"
        except OSError as exc:
            log.warning("readiness: cannot write into the Maildir root %s: %s", root, exc)
            return f"mailboxes: cannot write into the Maildir root ({exc.strerror or 'error'})"
        return None

    async def _imap(self) -> str | None:
        """What the fan-out does first with every copy: connect with [mailbox.imap]'s TLS setting, log
        in for a member with the master user, LOGOUT, through the gateway's own IMAP code. The member is
        one whose mailbox is on that server; with none in the directory there is nobody to log in for,
        and connecting (and TLS) is all that is checked. Members with a server of their own
        (``[mailbox.imap.members]``) are the fan-out's to find out about."""
        settings = self.mailbox.imap
        try:
            server = ImapServer.from_settings(settings, ssl_context=self.ssl_context)
        except ValueError:
            return "mailboxes: [mailbox.imap] names no master_user and master password"
        probe = ImapProbe(server, self.timeout)
        try:
            async with asyncio.timeout(self.timeout):
                await probe.run(await self._member(settings.members.keys()))
        except TimeoutError:
            log.warning(
                "readiness: IMAP %s: no answer within %.0f s at %s", server.where, self.timeout, probe.step
            )
            return f"mailboxes: IMAP {probe.step}: no answer within {self.timeout:.0f} s"
        except MailboxError as exc:
            log.warning("readiness: IMAP %s failed at %s: %s", server.where, probe.step, exc)
            return f"mailboxes: IMAP {probe.step} failed: {_IMAP_HINTS[probe.step]}"
        return None

    async def _member(self, elsewhere: Collection[str]) -> str | None:
        """A member to log in for; None when there is none, or when the database cannot say (its own
        check reports that)."""
        try:
            async with AsyncSession(self.engine) as session:
                return await member_on_default_server(session, elsewhere)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("readiness: no member to log in to IMAP for, the database did not say: %s", exc)
            return None


# What to look at, per step that failed; the details (the server's words, the file) are in the log.
_IMAP_HINTS: dict[ProbeStep, str] = {
    "password": "the master password cannot be read (master_password_file or master_password_env)",
    "connect": "the server is not reachable (host and port of [mailbox.imap])",
    "TLS": "no TLS session with the server (its certificate, and the tls setting of [mailbox.imap])",
    "login": "the server refused the master user's login (master_user and its password)",
    "logout": "the server broke off the session",
}


def _write_probe(root: Path) -> None:
    """Create and remove a file in ``root``: what the fan-out needs there (also true for root,
    for whom permission bits alone say little). A root not made yet is made by the first copy: then
    the nearest directory above it must take one."""
    where = root
    while not where.exists() and where.parent != where:
        where = where.parent
    descriptor, name = tempfile.mkstemp(prefix=".readyz-", dir=where)
    os.close(descriptor)
    os.unlink(name)
