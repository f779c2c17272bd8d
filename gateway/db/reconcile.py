"""The SQL of reconciliation: reconcile runs, and one batch of a portfolio's messages brought in line.

A run is recorded by the directory change that asks for it, in that change's transaction
(:func:`request_run`). The worker takes an open run with a lease (:func:`take_run`) and calls
:func:`work_batch` until the run is done; each batch is one transaction that reads the next messages by
id (keyset: ``id > cursor ORDER BY id LIMIT n``, never all at once), their participants and copies and
the portfolio's releases, plans every message with ``gateway.domain.reconcile.plan_message`` and applies
the plans before it commits. Planning from what the same transaction read is what keeps a copy a member
is still entitled to from being revoked: on PostgreSQL the run's row is locked first, so a directory
change that starts the run over waits for the batch to commit and the next batch reads the new directory.

Synchronous functions on a Core ``Connection``: they run on the writer thread (``gateway.db.writer``),
and the directory's async session reaches :func:`request_run` through ``AsyncSession.run_sync``.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import ColumnElement, Connection, bindparam, case, exists, func, insert, or_, select, update

from gateway.db.acceptance import RELEASE_FACTS
from gateway.db.copies import NewCopy, insert_copies
from gateway.db.events import Event, EventKind, append_events
from gateway.db.models import (
    COPIES,
    RUNS,
    CopyRow,
    CopyState,
    HeldReplyRow,
    HeldState,
    MessageKind,
    MessageRow,
    ParticipantRow,
    PortfolioRow,
    ReleaseMemberRow,
    ReleaseRow,
    utc,
)
from gateway.domain.model import Participant, ParticipantRole, ReadSync, Release
from gateway.domain.preview import Batch, Involved
from gateway.domain.readsync import SyncedFlag
from gateway.domain.reconcile import ExistingCopy, MessageFacts, MessagePlan, ReleasePolicy, plan_message
from gateway.errors import NotFound

# Copy states a member can see (or is about to); "revoking" and "revoked" are copies taken away.
# "failed" (given up after [fanout] lifetime) and "dropped" (by an admin, `gateway queue drop`) count as
# live: a member still entitled needs no second row, and one who is not gets it removed from the
# mailbox, in case an attempt wrote it before it was given up.
LIVE_STATES = (CopyState.PENDING, CopyState.DELIVERED, CopyState.HELD, CopyState.FAILED, CopyState.DROPPED)
# How much of the directory changes behind a run its reason keeps (the event log keeps them all).
REASON_LIMIT = 2000


@dataclass(frozen=True, slots=True)
class RunView:
    """A run as ``gateway reconcile status`` shows it."""

    id: int
    portfolio: str
    state: str
    reason: str
    requested_by: str
    restarts: int
    cursor: int
    total: int
    processed: int
    backfilled: int
    revoked: int
    kept: int
    leased_by: str | None
    lease_until: dt.datetime | None
    last_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class RunLease:
    """An open run this node took: whose messages to go through."""

    id: int
    portfolio_id: int
    portfolio: str


@dataclass(frozen=True, slots=True)
class BatchDone:
    """What one batch did; ``finished`` when it found no message left and closed the run."""

    run_id: int
    messages: int
    backfilled: int
    revoked: int
    kept: int
    processed: int
    total: int
    finished: bool
    # The copies made pending or revoking: the fan-out has work when this is not 0.
    copies_changed: int = 0
    lost_lease: bool = False
    plans: list[MessagePlan] = field(default_factory=list)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else utc(value)


# --- recording and reading runs ----------------------------------------------------------------------


def request_run(
    connection: Connection, portfolio_id: int, reason: str, actor: str, now: dt.datetime
) -> tuple[int, bool]:
    """Record that the portfolio's messages must be reconciled; (run id, whether an open run restarted).

    One open run per portfolio: a change while a run is open starts that run over from the first
    message, because only the latest directory counts; what it did so far stays counted.
    """
    total = int(
        connection.scalar(
            select(func.count()).where(
                MessageRow.portfolio_id == portfolio_id, MessageRow.kind == MessageKind.MESSAGE, _not_held()
            )
        )
        or 0
    )
    open_run = connection.execute(
        select(RUNS.c.id, RUNS.c.reason)
        .where(RUNS.c.portfolio_id == portfolio_id, RUNS.c.state == "open")
        .with_for_update()
    ).first()
    if open_run is not None:
        run_id = int(open_run[0])
        joined = f"{open_run[1]}; {reason}" if open_run[1] else reason
        connection.execute(
            update(RUNS)
            .where(RUNS.c.id == run_id)
            .values(
                reason=joined[-REASON_LIMIT:],
                requested_by=actor,
                restarts=RUNS.c.restarts + 1,
                cursor=0,
                processed=0,
                kept=0,
                total=total,
                updated_at=now,
            )
        )
    else:
        run_id = int(
            connection.execute(
                insert(RUNS)
                .values(
                    portfolio_id=portfolio_id,
                    state="open",
                    reason=reason[-REASON_LIMIT:],
                    requested_by=actor,
                    total=total,
                    created_at=now,
                    updated_at=now,
                )
                .returning(RUNS.c.id)
            ).scalar_one()
        )
    event = Event(
        EventKind.RECONCILE_RESTARTED if open_run is not None else EventKind.RECONCILE_REQUESTED,
        actor,
        now,
        portfolio_id=portfolio_id,
        detail={"run": run_id, "reason": reason, "messages": total},
    )
    append_events(connection, [event])
    return run_id, open_run is not None


def ensure_run(
    connection: Connection, portfolio_id: int, reason: str, actor: str, now: dt.datetime
) -> tuple[int, str, bool]:
    """The portfolio's open run, or a new one; (run id, portfolio name, whether it is new).

    An admin asking for a run while one is open gets that one: starting it over would only repeat work.
    """
    name = str(connection.scalar(select(PortfolioRow.name).where(PortfolioRow.id == portfolio_id)))
    open_run = connection.scalar(
        select(RUNS.c.id).where(RUNS.c.portfolio_id == portfolio_id, RUNS.c.state == "open")
    )
    if open_run is not None:
        return int(open_run), name, False
    run_id, _ = request_run(connection, portfolio_id, reason, actor, now)
    return run_id, name, True


def portfolio_id_of(connection: Connection, name: str) -> int:
    found = connection.scalar(select(PortfolioRow.id).where(PortfolioRow.name == name))
    if found is None:
        known = ", ".join(connection.scalars(select(PortfolioRow.name).order_by(PortfolioRow.name)))
        raise NotFound(f"there is no portfolio {name!r} (portfolios: {known or 'none yet'})")
    return int(found)


def portfolio_ids(connection: Connection) -> list[int]:
    return [int(pid) for pid in connection.scalars(select(PortfolioRow.id).order_by(PortfolioRow.id))]


def runs(
    connection: Connection, *, portfolio_id: int | None = None, recent: int = 10, run_id: int | None = None
) -> list[RunView]:
    """Every open run, then the ``recent`` latest finished ones; newest first within each."""
    query = select(*RUNS.c, PortfolioRow.name).join(PortfolioRow, PortfolioRow.id == RUNS.c.portfolio_id)
    if portfolio_id is not None:
        query = query.where(RUNS.c.portfolio_id == portfolio_id)
    if run_id is not None:
        query = query.where(RUNS.c.id == run_id)
    opened = list(connection.execute(query.where(RUNS.c.state == "open").order_by(RUNS.c.id.desc())))
    finished = list(
        connection.execute(query.where(RUNS.c.state != "open").order_by(RUNS.c.id.desc()).limit(recent))
    )
    return [_view(row) for row in opened + finished]


def run_of(connection: Connection, portfolio: str, run_id: int) -> RunView:
    """The run ``run_id`` of the portfolio; NotFound when there is none (or it is another portfolio's)."""
    found = runs(connection, portfolio_id=portfolio_id_of(connection, portfolio), run_id=run_id, recent=1)
    if not found:
        raise NotFound(f"there is no reconcile run {run_id} in portfolio {portfolio}")
    return found[0]


def _view(row: Any) -> RunView:
    m = row._mapping
    times = ("lease_until", "created_at", "updated_at", "finished_at")
    named = {f.name: m[f.name] for f in fields(RunView) if f.name != "portfolio"}
    return RunView(**named | {t: _aware(m[t]) for t in times}, portfolio=m["name"])


def take_run(
    connection: Connection, node: str, now: dt.datetime, lease: float, run_id: int | None = None
) -> RunLease | None:
    """Take an open run whose lease is free (or this node's own, after a restart) for ``lease`` seconds."""
    query = (
        select(RUNS.c.id, RUNS.c.portfolio_id, PortfolioRow.name)
        .join(PortfolioRow, PortfolioRow.id == RUNS.c.portfolio_id)
        .where(
            RUNS.c.state == "open",
            (RUNS.c.lease_until.is_(None)) | (RUNS.c.lease_until <= now) | (RUNS.c.leased_by == node),
        )
        .order_by(RUNS.c.id)
        .limit(1)
        .with_for_update(of=RUNS, skip_locked=True)
    )
    if run_id is not None:
        query = query.where(RUNS.c.id == run_id)
    row = connection.execute(query).first()
    if row is None:
        return None
    connection.execute(
        update(RUNS)
        .where(RUNS.c.id == row[0])
        .values(leased_by=node, lease_until=now + dt.timedelta(seconds=lease))
    )
    return RunLease(int(row[0]), int(row[1]), str(row[2]))


def release_run(connection: Connection, run_id: int, node: str) -> None:
    """Give a run's lease back (a process stopping between batches), so another may go on at once."""
    connection.execute(
        update(RUNS)
        .where(RUNS.c.id == run_id, RUNS.c.leased_by == node)
        .values(leased_by=None, lease_until=None)
    )


def record_failure(connection: Connection, run_id: int, error: str, now: dt.datetime) -> None:
    connection.execute(
        update(RUNS).where(RUNS.c.id == run_id).values(last_error=error[:2000], updated_at=now)
    )


# --- one batch ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _StoredCopy:
    pk: int
    member_id: int
    state: str
    seen: bool
    answered: bool
    shared_via: int | None
    kept_from: int | None


@dataclass(frozen=True, slots=True)
class _ReadBatch:
    messages: tuple[tuple[int, MessageFacts], ...]
    """(Vorgang id, facts) per message, in id order."""
    stored: dict[int, dict[int, _StoredCopy]]
    """The copies of each message by member."""
    gone: dict[int, ReleasePolicy]


def _not_held() -> ColumnElement[bool]:
    """The message is no reply the collision guard holds or withdrew."""
    return ~exists().where(
        HeldReplyRow.message_id == MessageRow.id,
        HeldReplyRow.state.in_((HeldState.HELD.value, HeldState.WITHDRAWN.value)),
    )


def _read_batch(
    connection: Connection, pid: int, cursor: int, batch_size: int, only: Involved | None = None
) -> _ReadBatch | None:
    """The next ``batch_size`` messages of the portfolio after ``cursor`` as the planner takes them; None
    when there are none left. Reconciliation and its preview read through here, so both plan the same.

    With ``only``, just the messages it involves (a participant among its members, or a copy through
    one of its releases)."""
    query = (
        select(MessageRow.id, MessageRow.received_at, MessageRow.sender_member_id, MessageRow.vorgang_id)
        # Only mail that is fanned out at all: quarantined mail, auto-replies, bounces and loops are
        # kept in the Vorgang without copies, and a directory change must not hand them out.
        .where(MessageRow.portfolio_id == pid, MessageRow.id > cursor, MessageRow.kind == MessageKind.MESSAGE)
        # Nor replies the collision guard holds or withdrew: their copies wait for (or never get) a
        # release (docs/collisions.md).
        .where(_not_held())
        .order_by(MessageRow.id)
        .limit(batch_size)
    )
    if only is not None:
        query = query.where(_involving(only))
    messages = list(connection.execute(query))
    if not messages:
        return None
    ids = [int(m[0]) for m in messages]
    participants: dict[int, list[Participant]] = defaultdict(list)
    for message_id, member_id, role in connection.execute(
        select(ParticipantRow.message_id, ParticipantRow.member_id, ParticipantRow.role).where(
            ParticipantRow.portfolio_id == pid, ParticipantRow.message_id.in_(ids)
        )
    ):
        participants[int(message_id)].append(Participant(int(member_id), ParticipantRole(role)))
    stored: dict[int, dict[int, _StoredCopy]] = defaultdict(dict)
    for row in connection.execute(
        select(
            CopyRow.id,
            CopyRow.message_id,
            CopyRow.member_id,
            CopyRow.state,
            CopyRow.seen,
            CopyRow.answered,
            CopyRow.shared_via_release_id,
            CopyRow.kept_from_release_id,
        ).where(CopyRow.portfolio_id == pid, CopyRow.message_id.in_(ids))
    ):
        stored[int(row[1])][int(row[2])] = _StoredCopy(
            int(row[0]), int(row[2]), row[3], bool(row[4]), bool(row[5]), row[6], row[7]
        )
    # Copies kept from a release that was deleted while it kept revoked copies stay kept.
    gone = {
        c.kept_from: ReleasePolicy(remove_revoked=False)
        for copies in stored.values()
        for c in copies.values()
        if c.kept_from is not None and c.shared_via is None
    }
    facts = tuple(
        (
            int(vorgang_id),
            MessageFacts(
                int(message_id),
                pid,
                utc(received_at),
                tuple(participants.get(int(message_id), ())),
                tuple(
                    ExistingCopy(
                        c.member_id,
                        live=c.state in LIVE_STATES,
                        seen=c.seen,
                        answered=c.answered,
                        shared_via=c.shared_via if c.shared_via is not None else c.kept_from,
                    )
                    for c in stored.get(int(message_id), {}).values()
                ),
                author=author,
            ),
        )
        for message_id, received_at, author, vorgang_id in messages
    )
    return _ReadBatch(facts, stored, gone)


def _involving(only: Involved) -> Any:
    # Probes per message along the (portfolio_id, id) keyset, on the participants' and copies' keys that
    # start with message_id: the walk stops after a batch is found, and no member's rows are sorted.
    took_part = exists().where(
        ParticipantRow.message_id == MessageRow.id, ParticipantRow.member_id.in_(sorted(only.members))
    )
    if not only.releases:
        return took_part
    releases = sorted(only.releases)
    through = exists().where(
        CopyRow.message_id == MessageRow.id,
        or_(CopyRow.shared_via_release_id.in_(releases), CopyRow.kept_from_release_id.in_(releases)),
    )
    return or_(took_part, through)


def message_batches(
    connection: Connection, portfolio_id: int, batch_size: int, only: Involved | None = None
) -> Iterator[Batch]:
    """The portfolio's messages in batches, read as :func:`work_batch` reads them, for a preview; with
    ``only``, just the messages it involves.

    A generator over one connection: each batch is read when the previous one has been planned, so a
    portfolio of any size is never in memory at once.
    """
    cursor = 0
    while (read := _read_batch(connection, portfolio_id, cursor, batch_size, only)) is not None:
        yield Batch(read.messages, read.gone)
        cursor = read.messages[-1][1].message_id


def work_batch(
    connection: Connection,
    run: RunLease,
    node: str,
    now: dt.datetime,
    lease: float,
    batch_size: int,
    *,
    keep_plans: bool = False,
) -> BatchDone:
    """Reconcile the next ``batch_size`` messages of the run's portfolio, in this one transaction."""
    state = connection.execute(
        select(RUNS.c.state, RUNS.c.leased_by, RUNS.c.cursor, RUNS.c.processed, RUNS.c.total)
        .where(RUNS.c.id == run.id)
        .with_for_update()
    ).first()
    if state is None or state[0] != "open" or state[1] != node:
        # Finished, or taken over by another process after our lease ran out: that one goes on.
        return BatchDone(run.id, 0, 0, 0, 0, 0, 0, finished=False, lost_lease=True)
    cursor, processed, total = int(state[2]), int(state[3]), int(state[4])
    pid = run.portfolio_id
    read = _read_batch(connection, pid, cursor, batch_size)
    if read is None:
        return _finish(connection, run, node, processed, now)
    ids = [facts.message_id for _, facts in read.messages]
    stored = read.stored
    releases, policies = portfolio_releases(connection, pid)
    gone = read.gone

    plans: list[MessagePlan] = []
    inserts: list[NewCopy] = []
    revived: list[dict[str, Any]] = []
    revoking: list[dict[str, Any]] = []
    kept = 0
    for _, facts in read.messages:
        message_id = facts.message_id
        copies = stored.get(message_id, {})
        plan = plan_message(facts, releases, policies, now, gone=gone)
        if keep_plans:
            plans.append(plan)
        kept += len(plan.kept)
        for b in plan.backfill:
            seen, answered = SyncedFlag.SEEN in b.flags, SyncedFlag.ANSWERED in b.flags
            old = copies.get(b.member_id)
            if old is None:
                inserts.append(
                    NewCopy(
                        message_id,
                        pid,
                        b.member_id,
                        shared_via_release_id=b.via,
                        seen=seen,
                        answered=answered,
                    )
                )
            else:
                revived.append(
                    {
                        "b_id": old.pk,
                        "b_via": b.via,
                        "b_seen": old.seen or seen,
                        "b_answered": old.answered or answered,
                    }
                )
        for r in plan.revoke:
            revoking.append({"b_id": copies[r.member_id].pk})

    insert_copies(connection, inserts, now)
    _revive(connection, revived, now)
    _revoke(connection, revoking, now)
    backfilled, revoked = len(inserts) + len(revived), len(revoking)
    processed += len(ids)
    connection.execute(
        update(RUNS)
        .where(RUNS.c.id == run.id)
        .values(
            cursor=ids[-1],
            processed=processed,
            backfilled=RUNS.c.backfilled + backfilled,
            revoked=RUNS.c.revoked + revoked,
            kept=RUNS.c.kept + kept,
            lease_until=now + dt.timedelta(seconds=lease),
            last_error=None,
            updated_at=now,
        )
    )
    batch = {"run": run.id, "from_message": ids[0], "to_message": ids[-1], "messages": len(ids)}
    event = Event(
        EventKind.RECONCILE_BATCH,
        f"gateway:{node}",
        now,
        portfolio_id=pid,
        detail=batch | {"backfilled": backfilled, "revoked": revoked, "kept": kept},
    )
    append_events(connection, [event])
    return BatchDone(
        run.id,
        len(ids),
        backfilled,
        revoked,
        kept,
        processed,
        max(total, processed),
        finished=False,
        copies_changed=backfilled + revoked,
        plans=plans,
    )


def _finish(connection: Connection, run: RunLease, node: str, processed: int, now: dt.datetime) -> BatchDone:
    # Messages accepted after the run was recorded were planned under the new directory already; the
    # run went through them too, so what it processed is the true total.
    connection.execute(
        update(RUNS)
        .where(RUNS.c.id == run.id)
        .values(
            state="done",
            total=processed,
            leased_by=None,
            lease_until=None,
            finished_at=now,
            updated_at=now,
        )
    )
    counts = connection.execute(
        select(RUNS.c.backfilled, RUNS.c.revoked, RUNS.c.kept).where(RUNS.c.id == run.id)
    ).one()
    backfilled, revoked, kept = (int(n) for n in counts)
    event = Event(
        EventKind.RECONCILE_FINISHED,
        f"gateway:{node}",
        now,
        portfolio_id=run.portfolio_id,
        detail={
            "run": run.id,
            "messages": processed,
            "backfilled": backfilled,
            "revoked": revoked,
            "kept": kept,
        },
    )
    append_events(connection, [event])
    return BatchDone(run.id, 0, 0, 0, 0, processed, processed, finished=True)


def portfolio_releases(
    connection: Connection, portfolio_id: int
) -> tuple[list[Release], dict[int, ReleasePolicy]]:
    """The portfolio's releases with their members, and each release's reconciliation policy."""
    members: dict[int, set[int]] = defaultdict(set)
    for release_id, member_id in connection.execute(
        select(ReleaseMemberRow.release_id, ReleaseMemberRow.member_id).where(
            ReleaseMemberRow.portfolio_id == portfolio_id
        )
    ):
        members[int(release_id)].add(int(member_id))
    releases: list[Release] = []
    policies: dict[int, ReleasePolicy] = {}
    for rid, name, primary, share, read_sync, backfill, revoked_copies in connection.execute(
        select(*RELEASE_FACTS, ReleaseRow.backfill, ReleaseRow.revoked_copies).where(
            ReleaseRow.portfolio_id == portfolio_id
        )
    ):
        releases.append(
            Release(
                int(rid), portfolio_id, name, primary, share, ReadSync(read_sync), frozenset(members[rid])
            )
        )
        policies[int(rid)] = ReleasePolicy.of(backfill, revoked_copies)
    return releases, policies


def _state_in(states: Sequence[str]) -> Any:
    # Spelled out: an IN list is an "expanding" parameter, which executemany() does not take.
    return or_(*(COPIES.c.state == state for state in states))


def _lease_end_or(now: dt.datetime) -> Any:
    """``next_attempt_at`` for a copy changing its job: the end of a lease some worker holds on it right
    now (a write or a removal under way finishes first), else now."""
    return case(
        (
            COPIES.c.leased_by.is_not(None) & (COPIES.c.next_attempt_at > now),
            COPIES.c.next_attempt_at,
        ),
        else_=now,
    )


def _revive(connection: Connection, rows: Sequence[dict[str, Any]], now: dt.datetime) -> None:
    """A member entitled again gets their revoked row back, pending, with the same copy id.

    The same copy id, because a removal may still be under way or may have failed halfway: the fan-out
    then finds the instance left in the mailbox instead of writing a second one. ``attempts`` 1 tells
    the fan-out that the copy may be in the mailbox already, so it looks in every folder.
    """
    _new_job(
        connection,
        rows,
        now,
        (CopyState.REVOKING, CopyState.REVOKED),
        state=CopyState.PENDING,
        shared_via_release_id=bindparam("b_via"),
        kept_from_release_id=None,
        seen=bindparam("b_seen"),
        answered=bindparam("b_answered"),
        attempts=1,
    )


def _revoke(connection: Connection, rows: Sequence[dict[str, Any]], now: dt.datetime) -> None:
    """Copies nothing allows any more become ``revoking``: the fan-out removes them from every folder.

    A copy the fan-out is writing right now (leased) is removed after its lease ends, so a copy being
    written is not looked for before it lands; the fan-out's record of that write leaves a copy that is
    no longer pending alone.
    """
    _new_job(connection, rows, now, LIVE_STATES, state=CopyState.REVOKING, attempts=0)


def _new_job(
    connection: Connection,
    rows: Sequence[dict[str, Any]],
    now: dt.datetime,
    states: Sequence[str],
    **values: Any,
) -> None:
    """Give each copy (``b_id``) still in one of ``states`` a new job for the fan-out (``values``), due
    when a lease some worker holds on it ends, else now; flags to catch up and errors are the old job's."""
    if not rows:
        return
    connection.execute(
        update(COPIES)
        .where(COPIES.c.id == bindparam("b_id"), _state_in(states))
        .values(
            next_attempt_at=_lease_end_or(now), flags_pending=False, last_error=None, updated_at=now, **values
        ),
        list(rows),
    )
