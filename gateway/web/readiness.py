"""Whether this gateway can do its work now (/readyz): the database reachable and migrated, the
mailbox backend reachable, every configured listener bound.

Each check has a deadline, so a database or IMAP server that swallows packets makes /readyz answer
503 in seconds instead of hanging the prober. The reasons are for the operator reading a probe's
output: which part, and what to do; never a password, a URL with credentials or a stack trace (the
log has the details).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import MailboxSettings
from gateway.db.migrate import schema_state

log = logging.getLogger("gateway.web")

CHECK_TIMEOUT = 3.0


class Readiness:
    """The checks of one Service; ``problems()`` is empty when it is ready."""

    def __init__(
        self,
        engine: AsyncEngine,
        mailbox: MailboxSettings,
        unbound_listeners: Callable[[], list[str]],
        *,
        timeout: float = CHECK_TIMEOUT,
    ) -> None:
        self.engine = engine
        self.mailbox = mailbox
        self.unbound_listeners = unbound_listeners
        self.timeout = timeout

    async def problems(self) -> list[str]:
        found = await asyncio.gather(self._database(), self._mailbox())
        problems = [p for p in found if p is not None]
        problems += [f"listener {name}: not listening" for name in self.unbound_listeners()]
        return problems

    async def _database(self) -> str | None:
        try:
            async with asyncio.timeout(self.timeout):
                state = await schema_state(self.engine)
        except TimeoutError:
            log.warning("readiness: the database did not answer within %.0f s", self.timeout)
            return f"database: no answer within {self.timeout:.0f} s"
        except Exception as exc:
            log.warning("readiness: the database is not reachable: %s", exc)
            return "database: not reachable"
        if not state.up_to_date:
            return "database: not at this gateway's schema; run `gateway db upgrade`"
        return None

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
        """The IMAP server answers with its greeting (the members' logins are the fan-out's to try)."""
        imap = self.mailbox.imap
        writer = None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(imap.host, imap.port)
                greeting = await reader.readline()
            if not greeting.startswith((b"* OK", b"* PREAUTH")):
                return "mailboxes: the IMAP server does not greet as an IMAP server"
        except TimeoutError:
            return f"mailboxes: the IMAP server did not answer within {self.timeout:.0f} s"
        except OSError as exc:
            log.warning("readiness: the IMAP server %s:%d is not reachable: %s", imap.host, imap.port, exc)
            return "mailboxes: the IMAP server is not reachable"
        finally:
            if writer is not None:
                writer.close()
        return None


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
