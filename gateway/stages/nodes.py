"""This node among the others: recorded at start with what it must share, its heartbeat, and the
take-over of the leases of nodes whose heartbeat stopped.

At start the node checks, against the live nodes in the table (``gateway.domain.nodes``), that no other
process runs under its name, that its reply-token keys verify what the others sign (and the reverse),
and that its Maildir root is the others' storage: a marker file with a random id, written once into the
root by the first node, whose id every node records. Then it beats every ``heartbeat_interval`` on a
connection of its own (a busy writer thread does not delay it); each beat also looks for nodes silent
for ``node_timeout`` and makes their leases due at once, and wakes this node's workers to take them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import secrets
import socket
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from gateway import __version__
from gateway.config import Settings
from gateway.db import nodes as db
from gateway.db.writer import Writer
from gateway.domain.nodes import NodeIdentity, NodeRecord, marker_wanted
from gateway.domain.tokens import TokenKeys
from gateway.errors import OperationalError
from gateway.keys import key_fingerprint, key_ids

log = logging.getLogger("gateway.nodes")

MARKER = ".gateway-storage-id"
"""The marker file in the Maildir root: one line, the storage's random id, written once."""


def read_marker(root: Path) -> str | None:
    """The storage id in ``root``'s marker file; None when there is none."""
    try:
        text = (root / MARKER).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise OperationalError(f"cannot read the Maildir storage marker {root / MARKER}: {exc}") from exc
    return text or None


def write_marker(root: Path) -> str:
    """Mark ``root`` as a storage of its own (unless a node sharing it did so first); its id."""
    path = root / MARKER
    storage = secrets.token_hex(16)
    # Written whole under a name of its own, then linked into place: link() refuses an existing name,
    # so of two nodes starting at once exactly one marks the storage, and the other never reads a
    # marker that is created but not yet written (which would look empty).
    temporary = root / f"{MARKER}.{os.getpid()}.{storage}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with open(temporary, "x", encoding="ascii") as file:
            file.write(storage + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        try:
            os.link(temporary, path)
        except FileExistsError:
            found = read_marker(root)
            if found is None:
                raise OperationalError(f"the Maildir storage marker {path} is empty; remove it") from None
            return found
    except OSError as exc:
        raise OperationalError(f"cannot write the Maildir storage marker {path}: {exc}") from exc
    finally:
        temporary.unlink(missing_ok=True)
    return storage


def _running_here(record: NodeRecord) -> bool:
    """Whether the process a record names may still run: always, unless it was on this host and its
    pid is gone (then its name can be taken at once, without waiting for node_timeout)."""
    if record.identity.host != socket.gethostname():
        return True
    try:
        os.kill(record.identity.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user has that pid now; count it as running
    return True


class Nodes:
    """This node's row in the node table: ``start`` (checks and records), ``run`` (heartbeats),
    ``stop`` (records a clean stop)."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_takeover: Callable[[], None] = lambda: None,
        on_replaced: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.name = settings.gateway.node_name
        self.interval = settings.gateway.heartbeat_interval
        self.timeout = settings.gateway.node_timeout
        self.pid = os.getpid()
        self.on_takeover = on_takeover
        self.on_replaced = on_replaced
        # A connection of its own: heartbeats never queue behind the writer's batches.
        self.writer = Writer(settings.database_url, echo=settings.database.echo)
        self.registered = False

    def _maildir_root(self) -> Path | None:
        mailbox = self.settings.mailbox
        return mailbox.maildir_root if mailbox.backend == "maildir" else None

    async def identity(self, keys: TokenKeys) -> NodeIdentity:
        root = self._maildir_root()
        marker = await asyncio.to_thread(read_marker, root) if root is not None else None
        return NodeIdentity(
            name=self.name,
            pid=self.pid,
            host=socket.gethostname(),
            version=__version__,
            key_ids=key_ids(keys),
            key_fingerprint=key_fingerprint(keys),
            key_files=tuple(str(p) for p in self.settings.secrets.token_key_files),
            maildir_marker=marker,
            maildir_root=str(root) if root is not None else None,
        )

    async def start(self, keys: TokenKeys) -> None:
        """Record this node, or raise OperationalError saying why it must not run beside the others."""
        me = await self.identity(keys)
        now = dt.datetime.now(dt.UTC)
        if me.maildir_root is not None and me.maildir_marker is None:
            records = await self.writer.run(db.all_nodes)
            # Look again now that the others' rows are read: a node starting at the same moment links
            # its marker into place before it records itself, so once its row is visible, so is its
            # marker. Read only before the rows, the marker could be missing while the row is not,
            # and this node would be refused as if it were on other storage.
            root = Path(me.maildir_root)
            found = await asyncio.to_thread(read_marker, root)
            if found is not None:
                me = dataclasses.replace(me, maildir_marker=found)
            elif marker_wanted(me, records, now, self.timeout):
                marker = await asyncio.to_thread(write_marker, root)
                me = dataclasses.replace(me, maildir_marker=marker)
                log.info("marked the Maildir root %s as storage %s", me.maildir_root, marker)
        registration = await self.writer.run(db.register, me, now, self.timeout, gone=_gone)
        if registration.refusal is not None:
            raise OperationalError(f"not starting: {registration.refusal}")
        self.registered = True
        if registration.replaced is not None:
            log.warning(
                "node %s was not stopped cleanly (%s); this process takes its place and its leases back",
                self.name,
                registration.replaced.describe(now),
            )
        log.info(
            "node %s recorded (pid %d, token keys %s, Maildir storage %s)",
            self.name,
            self.pid,
            me.key_fingerprint,
            me.maildir_marker or "-",
        )

    async def run(self) -> None:
        """Beat until cancelled."""
        while True:
            await self.beat_once()
            await asyncio.sleep(self.interval)

    async def beat_once(self) -> db.Beat | None:
        try:
            beat = await self.writer.run(db.beat, self.name, self.pid, dt.datetime.now(dt.UTC), self.timeout)
        except (SQLAlchemyError, OSError) as exc:
            log.error("node %s: heartbeat not recorded: %s; trying again", self.name, exc)
            return None
        if beat.replaced:
            log.critical(
                "node %s: another process took this node's name while it was silent; stopping", self.name
            )
            self.on_replaced()
            return beat
        if beat.taken_over_by is not None:
            log.warning(
                "node %s was silent for more than %.0f s and node %s took its leases over; going on",
                self.name,
                self.timeout,
                beat.taken_over_by,
            )
        for released in beat.released:
            log.warning(
                "node %s is silent for more than %.0f s: took over its leases (%d copy jobs, %d relays, "
                "%d reconcile runs)",
                released.node,
                self.timeout,
                released.copies,
                released.relays,
                released.runs,
                extra={"node": released.node},
            )
        if beat.released:
            self.on_takeover()
        return beat

    async def stop(self) -> None:
        """Record a clean stop (when this process had recorded itself), and close the connection."""
        if self.registered:
            try:
                released = await self.writer.run(db.stopped, self.name, self.pid, dt.datetime.now(dt.UTC))
            except (SQLAlchemyError, OSError) as exc:
                log.error("node %s: the stop was not recorded: %s", self.name, exc)
            else:
                if released is not None and (released.copies or released.relays or released.runs):
                    log.info(
                        "node %s stopped; what it had begun is due for the other nodes now (%d copy jobs, "
                        "%d relays, %d reconcile runs)",
                        self.name,
                        released.copies,
                        released.relays,
                        released.runs,
                    )
        await self.writer.close()


def _gone(record: NodeRecord) -> bool:
    return not _running_here(record)
