"""What the stored queues hold right now, for the metrics: copies and relays by state, the oldest
pending copy, and the progress of open reconcile runs.

A scrape must stay cheap on a database of 100,000s of copies: each count is a GROUP BY on the leading
column of a queue index (``ix_copies_queue``, ``ix_relays_queue``), and the oldest pending copy is
found through the same index (pending rows only, which are few while the gateway keeps up). Reconcile
runs are a handful of rows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from gateway.db.models import CopyRow, CopyState, ReconcileRunRow, RelayRow, RelayState, utc


@dataclass(frozen=True, slots=True)
class StoredState:
    """The queues as stored: counts by state (every state named, zero when none), ages in seconds."""

    copies: dict[str, int]
    oldest_pending_copy_age: float  # 0 when nothing is pending
    relays: dict[str, int]
    oldest_pending_relay_age: float
    reconcile_runs_open: int
    reconcile_done: int  # messages the open runs have gone through
    reconcile_total: int  # messages the open runs have to go through


def stored_state(connection: Connection, now: dt.datetime) -> StoredState:
    copies = {state.value: 0 for state in CopyState}
    for state, count in connection.execute(select(CopyRow.state, func.count()).group_by(CopyRow.state)):
        copies[str(state)] = int(count)
    relays = {state.value: 0 for state in RelayState}
    for state, count in connection.execute(select(RelayRow.state, func.count()).group_by(RelayRow.state)):
        relays[str(state)] = int(count)
    oldest_copy = connection.scalar(
        select(func.min(CopyRow.created_at)).where(CopyRow.state == CopyState.PENDING)
    )
    oldest_relay = connection.scalar(
        select(func.min(RelayRow.created_at)).where(RelayRow.state == RelayState.PENDING)
    )
    runs, done, total = connection.execute(
        select(
            func.count(),
            func.coalesce(func.sum(ReconcileRunRow.processed), 0),
            func.coalesce(func.sum(ReconcileRunRow.total), 0),
        ).where(ReconcileRunRow.state == "open")
    ).one()
    return StoredState(
        copies=copies,
        oldest_pending_copy_age=_age(oldest_copy, now),
        relays=relays,
        oldest_pending_relay_age=_age(oldest_relay, now),
        reconcile_runs_open=int(runs),
        reconcile_done=int(done),
        reconcile_total=int(total),
    )


def _age(since: dt.datetime | None, now: dt.datetime) -> float:
    return 0.0 if since is None else max(0.0, (now - utc(since)).total_seconds())
