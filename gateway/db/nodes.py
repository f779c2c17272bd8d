"""The node table's SQL: a node recorded at start, its heartbeat, and the take-over of a dead node's leases.

Taking over shortens leases and nothing else: rows a dead node had taken (copies, flag jobs, removals,
relays, reconcile runs) become due now and keep ``leased_by``, so the next attempt knows an earlier one
may have written. Whatever else a lease carries (a fencing token) stays as it is.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection, delete, insert, select, text, update

from gateway.db.models import RUNS, CopyRow, NodeRow, RelayRow, utc
from gateway.domain.nodes import NodeIdentity, NodeRecord, NodeState, stale_nodes, start_refusal

# Registrations take this PostgreSQL advisory lock for their transaction, so two nodes starting at the
# same moment see each other (one name, one Maildir marker) instead of both checking an empty table.
# SQLite needs none: its writers take the database lock at BEGIN.
_REGISTRATION_LOCK = 0x6E6F646573  # "nodes"

# A take-over waits at most this long for a row lock (a stalled node's open transaction); it is tried
# again at the next heartbeat rather than holding this node's heartbeat up.
_TAKEOVER_LOCK_TIMEOUT = "2s"


@dataclass(frozen=True, slots=True)
class Registration:
    """A node recorded (``refusal`` None), or why it may not start."""

    refusal: str | None = None
    # The record this node replaces: the same name, not stopped cleanly (a crash or kill -9).
    replaced: NodeRecord | None = None


@dataclass(frozen=True, slots=True)
class Released:
    """The leases of one dead node made due: copy-queue jobs (copies, flags, removals), relays, runs."""

    node: str
    copies: int
    relays: int
    runs: int


@dataclass(frozen=True, slots=True)
class Beat:
    """One heartbeat: whether this process still holds its name, and which dead nodes it took over."""

    # Another process registered this node's name (this one was stale): it must stop.
    replaced: bool = False
    # This node had been counted dead, by the node named, which made its leases due.
    taken_over_by: str | None = None
    released: list[Released] = field(default_factory=list)


_COLUMNS = (
    NodeRow.name,
    NodeRow.pid,
    NodeRow.host,
    NodeRow.version,
    NodeRow.key_ids,
    NodeRow.key_fingerprint,
    NodeRow.key_files,
    NodeRow.maildir_marker,
    NodeRow.state,
    NodeRow.started_at,
    NodeRow.heartbeat_at,
    NodeRow.taken_over_by,
)


def all_nodes(connection: Connection) -> list[NodeRecord]:
    """Every node recorded, by name."""
    rows = connection.execute(select(*_COLUMNS).order_by(NodeRow.name))
    return [
        NodeRecord(
            NodeIdentity(
                name=r.name,
                pid=r.pid,
                host=r.host,
                version=r.version,
                key_ids=tuple(r.key_ids.split(",")) if r.key_ids else (),
                key_fingerprint=r.key_fingerprint,
                key_files=tuple(r.key_files.splitlines()),
                maildir_marker=r.maildir_marker,
            ),
            NodeState(r.state),
            utc(r.started_at),
            utc(r.heartbeat_at),
            r.taken_over_by,
        )
        for r in rows
    ]


def _lock_registrations(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _REGISTRATION_LOCK})


def register(
    connection: Connection,
    me: NodeIdentity,
    now: dt.datetime,
    timeout: float,
    *,
    gone: Callable[[NodeRecord], bool],
) -> Registration:
    """Record ``me`` as alive, unless ``gateway.domain.nodes.start_refusal`` says why not (then nothing
    is written). ``gone(record)`` says whether a recorded node is known to have ended (its process on
    this host no longer runs)."""
    _lock_registrations(connection)
    records = all_nodes(connection)
    ended = {r.name for r in records if r.name == me.name and r.state is not NodeState.STOPPED and gone(r)}
    refusal = start_refusal(me, records, now, timeout, gone=ended)
    if refusal is not None:
        return Registration(refusal=refusal)
    previous = next((r for r in records if r.name == me.name), None)
    connection.execute(delete(NodeRow).where(NodeRow.name == me.name))
    connection.execute(
        insert(NodeRow).values(
            name=me.name,
            state=NodeState.ALIVE,
            pid=me.pid,
            host=me.host,
            version=me.version,
            started_at=now,
            heartbeat_at=now,
            key_ids=",".join(me.key_ids),
            key_fingerprint=me.key_fingerprint,
            key_files="\n".join(me.key_files),
            maildir_marker=me.maildir_marker,
            taken_over_by=None,
        )
    )
    replaced = previous if previous is not None and previous.state is not NodeState.STOPPED else None
    return Registration(replaced=replaced)


def beat(connection: Connection, name: str, pid: int, now: dt.datetime, timeout: float) -> Beat:
    """Renew this node's heartbeat, and take over the leases of every other node whose heartbeat is
    older than ``timeout`` (marking it stale, so that one survivor does it once)."""
    own = connection.execute(
        select(NodeRow.pid, NodeRow.state, NodeRow.taken_over_by).where(NodeRow.name == name)
    ).first()
    if own is None or own.pid != pid:
        return Beat(replaced=True)
    taken_over_by = own.taken_over_by if own.state == NodeState.STALE else None
    connection.execute(
        update(NodeRow)
        .where(NodeRow.name == name, NodeRow.pid == pid)
        .values(heartbeat_at=now, state=NodeState.ALIVE, taken_over_by=None)
    )
    records = all_nodes(connection)
    released: list[Released] = []
    for dead in stale_nodes(name, records, now, timeout):
        released.extend(_take_over(connection, dead, name, now, timeout))
    return Beat(taken_over_by=taken_over_by, released=released)


def _take_over(
    connection: Connection, dead: str, by: str, now: dt.datetime, timeout: float
) -> list[Released]:
    cutoff = now - dt.timedelta(seconds=timeout)
    # Only the node that marks it stale releases its leases; another survivor finds it marked already.
    marked = connection.execute(
        update(NodeRow)
        .where(NodeRow.name == dead, NodeRow.state == NodeState.ALIVE, NodeRow.heartbeat_at < cutoff)
        .values(state=NodeState.STALE, taken_over_by=by)
    )
    if not marked.rowcount:
        return []
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SET LOCAL lock_timeout = '{_TAKEOVER_LOCK_TIMEOUT}'"))
    return [release_leases(connection, dead, now)]


def release_leases(connection: Connection, node: str, now: dt.datetime) -> Released:
    """Make every lease ``node`` holds end now: its taken copies, flag jobs and removals, relays and
    reconcile runs become due, ``leased_by`` kept. Rows it no longer leases (recorded, or waiting for
    a retry: both clear ``leased_by``) are not touched."""
    copies = connection.execute(
        update(CopyRow)
        .where(CopyRow.leased_by == node, CopyRow.next_attempt_at > now)
        .values(next_attempt_at=now)
    )
    relays = connection.execute(
        update(RelayRow)
        .where(RelayRow.leased_by == node, RelayRow.next_attempt_at > now)
        .values(next_attempt_at=now)
    )
    runs = connection.execute(
        update(RUNS)
        .where(RUNS.c.leased_by == node, RUNS.c.state == "open", RUNS.c.lease_until > now)
        .values(lease_until=now)
    )
    return Released(node, copies.rowcount or 0, relays.rowcount or 0, runs.rowcount or 0)


def stopped(connection: Connection, name: str, pid: int, now: dt.datetime) -> Released | None:
    """Record a clean stop (only while the row is still this process's), and make what the node still
    leases due now: its workers have stopped, so the other nodes need not wait for those leases to end.
    None when the row was another process's."""
    done = connection.execute(
        update(NodeRow)
        .where(NodeRow.name == name, NodeRow.pid == pid)
        .values(state=NodeState.STOPPED, heartbeat_at=now)
    )
    if not done.rowcount:
        return None
    return release_leases(connection, name, now)
