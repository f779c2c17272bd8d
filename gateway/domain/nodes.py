"""Which gateway processes may run side by side on one database, and what state each is in (issue 17).

A node is one ``gateway serve`` process, named by ``[gateway] node_name``. Nodes share the queues, so
they must be told apart (one live process per name), sign and verify reply tokens the others can check,
and write copies into the same Maildir storage. These are the decisions; ``gateway.db.nodes`` holds the
rows and ``gateway.stages.nodes`` the heartbeat and the files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class NodeState(StrEnum):
    """A node as `gateway nodes` shows it."""

    ALIVE = "alive"  # beat within node_timeout
    STALE = "stale"  # no heartbeat for node_timeout: another node took (or will take) its leases over
    STOPPED = "stopped"  # stopped cleanly


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """What a starting node says of itself, and what every other node must agree with."""

    name: str
    pid: int
    host: str
    version: str
    # The ids of the token keys in file order (the first signs new tokens); never the keys themselves.
    key_ids: tuple[str, ...]
    key_fingerprint: str
    # The token key files, so that a refusal can say which files to copy where.
    key_files: tuple[str, ...]
    # The id in the Maildir root's marker file; None where mailboxes are on an IMAP server, or where the
    # root has no marker yet.
    maildir_marker: str | None
    maildir_root: str | None = None

    @property
    def signing_key(self) -> str:
        return self.key_ids[0]


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A row of the node table."""

    identity: NodeIdentity
    state: NodeState
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    taken_over_by: str | None = None

    @property
    def name(self) -> str:
        return self.identity.name

    def age(self, now: dt.datetime) -> float:
        """Seconds since the last heartbeat."""
        return max(0.0, (now - self.heartbeat_at).total_seconds())

    def shown_state(self, now: dt.datetime, timeout: float) -> NodeState:
        """alive, stale or stopped: a node recorded alive whose heartbeat is older than ``timeout`` is
        stale even before another node noticed."""
        if self.state is NodeState.STOPPED:
            return NodeState.STOPPED
        if self.state is NodeState.STALE or self.age(now) > timeout:
            return NodeState.STALE
        return NodeState.ALIVE

    def describe(self, now: dt.datetime) -> str:
        return (
            f'node "{self.name}" (pid {self.identity.pid} on host {self.identity.host}, '
            f"last heartbeat {self.age(now):.1f} s ago)"
        )


def live_others(me: str, records: Iterable[NodeRecord], now: dt.datetime, timeout: float) -> list[NodeRecord]:
    """The other nodes that are alive now, by name."""
    return sorted(
        (r for r in records if r.name != me and r.shown_state(now, timeout) is NodeState.ALIVE),
        key=lambda r: r.name,
    )


def start_refusal(
    me: NodeIdentity,
    records: Sequence[NodeRecord],
    now: dt.datetime,
    timeout: float,
    *,
    gone: Collection[str] = (),
) -> str | None:
    """Why ``me`` must not start beside the nodes ``records`` name; None when it may.

    ``gone`` names recorded nodes known to have ended although their heartbeat is fresh (a process on
    this host that no longer runs, after kill -9 or a crash): a restart need not wait ``timeout``.
    """
    for record in records:
        if record.name != me.name or record.name in gone:
            continue
        if record.shown_state(now, timeout) is NodeState.ALIVE:
            return (
                f"another gateway process is running as {record.describe(now)}; stop it, or give this "
                "one another [gateway] node_name (every process sharing the database needs its own name)"
            )
    others = live_others(me.name, records, now, timeout)
    for other in others:
        refusal = _key_refusal(me, other.identity)
        if refusal is not None:
            return refusal + f" ({other.describe(now)})"
    return _maildir_refusal(me, others)


def _key_refusal(me: NodeIdentity, other: NodeIdentity) -> str | None:
    """Each node must verify the tokens the other signs: a reply may reach any node's MX listener."""
    if other.signing_key in me.key_ids and me.signing_key in other.key_ids:
        return None
    theirs = ", ".join(other.key_files) or "its token_key_files"
    ours = ", ".join(me.key_files)
    return (
        f"the reply-token keys differ from node {other.name}'s (this node's key set {me.key_fingerprint}, "
        f"theirs {other.key_fingerprint}): replies to copies one of them wrote would be refused by the "
        f"other; copy node {other.name}'s key files ({theirs}) to this node's [secrets] token_key_files "
        f"({ours}), in the same order"
    )


def _maildir_refusal(me: NodeIdentity, others: Sequence[NodeRecord]) -> str | None:
    """Every node writing Maildirs must write into the same storage: copies written elsewhere would be
    invisible to the members' IMAP server, and another node would write them again."""
    marked = [o for o in others if o.identity.maildir_marker is not None]
    if me.maildir_root is None or not marked:
        return None
    expected = marked[0].identity.maildir_marker
    names = ", ".join(o.name for o in marked)
    if me.maildir_marker is None:
        return (
            f"the Maildir root {me.maildir_root} has no storage marker, but the running nodes ({names}) "
            f"write into the storage marked {expected}: mount that storage at {me.maildir_root}, or set "
            "[mailbox] maildir_root to where it is mounted"
        )
    if me.maildir_marker != expected:
        return (
            f"the Maildir root {me.maildir_root} is storage {me.maildir_marker}, but the running nodes "
            f"({names}) write into storage {expected}: this node would write copies nobody else sees; "
            "mount the shared storage there, or set [mailbox] maildir_root to it"
        )
    return None


def marker_wanted(me: NodeIdentity, records: Sequence[NodeRecord], now: dt.datetime, timeout: float) -> bool:
    """Whether a node whose Maildir root has no marker may write one: only when no running node has
    one (the first node on a storage marks it; a later one without it is on other storage)."""
    if me.maildir_root is None or me.maildir_marker is not None:
        return False
    return not any(o.identity.maildir_marker for o in live_others(me.name, records, now, timeout))


def stale_nodes(me: str, records: Iterable[NodeRecord], now: dt.datetime, timeout: float) -> list[str]:
    """The other nodes recorded alive whose heartbeat is older than ``timeout``: their leases are due."""
    return sorted(
        r.name for r in records if r.name != me and r.state is NodeState.ALIVE and r.age(now) > timeout
    )


def worker_names(node_name: str, workers: int) -> list[str]:
    """The node names of ``gateway serve --workers N``: ``<node_name>-1`` … ``<node_name>-N``."""
    return [f"{node_name}-{i}" for i in range(1, workers + 1)]
