"""The SQL of accepting messages: set-based lookups and inserts for a whole batch at once.

The accept path runs these for every batch of messages the acceptance stage gathers, so each is one
statement per batch (not per message), through Core tables rather than the ORM's unit of work, with
``RETURNING`` to learn new ids. Every lookup is scoped to one portfolio.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Table, and_, insert, select, text
from sqlalchemy.dialects import sqlite

from gateway.db import bulk
from gateway.db.models import (
    VORGAENGE,
    MemberRow,
    MessageKind,
    MessageRow,
    PortfolioRow,
    ReleaseMemberRow,
    ReleaseRow,
    VorgangCounterRow,
    VorgangRow,
)
from gateway.domain.model import Release
from gateway.domain.routing_plan import Lookups, RoutingFacts
from gateway.domain.threading import format_reference

# What a ``gateway.domain.model.Release`` is made of, but its portfolio and members, in its order.
RELEASE_FACTS = (
    ReleaseRow.id,
    ReleaseRow.name,
    ReleaseRow.primary,
    ReleaseRow.share_vorgaenge,
    ReleaseRow.read_sync,
)
# Built once: an alias made per call would defeat SQLAlchemy's statement cache.
_VIA = cast(Table, ReleaseMemberRow.__table__).alias("via")


@dataclass(frozen=True, slots=True)
class StoredMessage:
    gateway_id: str
    vorgang: str
    quarantined: bool = False


def find_resends(
    connection: Connection, backoffice_id: int, keys: Collection[tuple[str, str]]
) -> dict[tuple[str, str], StoredMessage]:
    """Messages this back office already handed in, by (Message-ID, sha256)."""
    if not keys:
        return {}
    rows = connection.execute(
        select(
            MessageRow.message_id,
            MessageRow.sha256,
            MessageRow.gateway_id,
            VorgangRow.reference,
            MessageRow.kind,
        )
        .join(VorgangRow, VorgangRow.id == MessageRow.vorgang_id)
        .where(MessageRow.backoffice_id == backoffice_id, MessageRow.message_id.in_({k[0] for k in keys}))
    )
    return {
        (str(mid), str(sha)): StoredMessage(gid, ref, kind == MessageKind.QUARANTINED)
        for mid, sha, gid, ref, kind in rows
        if (mid, sha) in keys
    }


def vorgaenge_by_reference(
    connection: Connection, portfolio_id: int, references: Collection[str]
) -> dict[str, int]:
    if not references:
        return {}
    rows = connection.execute(
        select(VorgangRow.reference, VorgangRow.id).where(
            VorgangRow.portfolio_id == portfolio_id, VorgangRow.reference.in_(list(references))
        )
    )
    return {str(reference): int(vorgang_id) for reference, vorgang_id in rows}


def vorgaenge_by_message_id(
    connection: Connection, portfolio_id: int, message_ids: Collection[str]
) -> dict[str, tuple[int, str]]:
    """The Vorgang (id, reference) of each known message among ``message_ids``."""
    if not message_ids:
        return {}
    rows = connection.execute(
        select(MessageRow.message_id, VorgangRow.id, VorgangRow.reference)
        .join(VorgangRow, VorgangRow.id == MessageRow.vorgang_id)
        .where(MessageRow.portfolio_id == portfolio_id, MessageRow.message_id.in_(list(message_ids)))
    )
    return {str(mid): (int(vid), str(ref)) for mid, vid, ref in rows}


def vorgaenge_by_key(connection: Connection, portfolio_id: int, keys: Collection[str]) -> dict[str, int]:
    """The Vorgang of each rule-derived key among ``keys`` (``vorgaenge.key``, unique per portfolio)."""
    if not keys:
        return {}
    rows = connection.execute(
        select(VorgangRow.key, VorgangRow.id).where(
            VorgangRow.portfolio_id == portfolio_id, VorgangRow.key.in_(list(keys))
        )
    )
    return {str(key): int(vorgang_id) for key, vorgang_id in rows}


def references_of(connection: Connection, vorgang_ids: Collection[int]) -> dict[int, str]:
    if not vorgang_ids:
        return {}
    rows = connection.execute(
        select(VorgangRow.id, VorgangRow.reference).where(VorgangRow.id.in_(vorgang_ids))
    )
    return {int(vid): str(ref) for vid, ref in rows}


def member_ids(connection: Connection, portfolio_id: int, addresses: Collection[str]) -> dict[str, int]:
    if not addresses:
        return {}
    rows = connection.execute(
        select(MemberRow.address, MemberRow.id).where(
            MemberRow.portfolio_id == portfolio_id, MemberRow.address.in_(list(addresses))
        )
    )
    return {str(address): int(member_id) for address, member_id in rows}


def routing_facts(connection: Connection, portfolio_id: int, portfolio: str, wanted: Lookups) -> RoutingFacts:
    """What the routing plans of some messages of one portfolio need to know (``wanted``), one
    statement of each kind: the Vorgänge they may name, the members they name, and the releases that
    share Vorgänge with any of those members (all an audience can reach, DESIGN.md §3)."""
    return routing_facts_and_addresses(connection, portfolio_id, portfolio, wanted)[0]


def routing_facts_and_addresses(
    connection: Connection, portfolio_id: int, portfolio: str, wanted: Lookups
) -> tuple[RoutingFacts, dict[int, str]]:
    """``routing_facts``, and the address of every member they name: each member an audience of
    these plans can hold, so that storing them needs no other read (``member_addresses``)."""
    by_reference = vorgaenge_by_reference(connection, portfolio_id, wanted.references)
    threads = vorgaenge_by_message_id(connection, portfolio_id, wanted.message_ids)
    by_message_id = {message_id: vid for message_id, (vid, _) in threads.items()}
    by_key = vorgaenge_by_key(connection, portfolio_id, wanted.keys)
    members = member_ids(connection, portfolio_id, wanted.addresses)
    releases, addresses = _sharing_releases(connection, portfolio_id, set(members.values()))
    facts = RoutingFacts(
        portfolio_id,
        portfolio,
        members=members,
        releases=tuple(releases),
        vorgaenge_by_reference=by_reference,
        vorgaenge_by_message_id=by_message_id,
        vorgaenge_by_key=by_key,
    )
    return facts, addresses | {member_id: address for address, member_id in members.items()}


def hold_directory(connection: Connection, portfolio_id: int) -> None:
    """Keep the portfolio's directory as this transaction reads it until it ends.

    Audiences are planned from the directory as it is now (DESIGN.md §3), and a directory change
    records a reconcile run for the messages that exist when it commits. On PostgreSQL a message planned
    under the old directory could commit after the run went past it, and keep copies nobody may see or
    lack ones a member is now entitled to. So whoever plans an audience holds the portfolio row FOR KEY
    SHARE (transactions that plan do not wait for each other), and a directory change takes it FOR UPDATE
    before it reads anything (``lock_directory``): the change waits for the plans under way to commit,
    and plans that start later wait for the change and read the new directory. SQLite has one writer at
    a time (BEGIN IMMEDIATE), where the statement is a plain SELECT.
    """
    connection.execute(
        select(PortfolioRow.id)
        .where(PortfolioRow.id == portfolio_id)
        .with_for_update(read=True, key_share=True)
    )


def lock_directory(connection: Connection, portfolio_id: int) -> None:
    """Take the portfolio for a directory change: see ``hold_directory``."""
    connection.execute(select(PortfolioRow.id).where(PortfolioRow.id == portfolio_id).with_for_update())


def member_addresses(connection: Connection, ids: Collection[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = connection.execute(select(MemberRow.id, MemberRow.address).where(MemberRow.id.in_(ids)))
    return {int(member_id): str(address) for member_id, address in rows}


def sharing_releases(
    connection: Connection, portfolio_id: int, participants: Collection[int]
) -> list[Release]:
    """The releases that share Vorgänge and contain one of ``participants``, with all their members.

    Only these can widen an audience (DESIGN.md §3), so this is all the audience rule needs, however
    large the portfolio's directory is.
    """
    return _sharing_releases(connection, portfolio_id, participants)[0]


def _sharing_releases(
    connection: Connection, portfolio_id: int, participants: Collection[int]
) -> tuple[list[Release], dict[int, str]]:
    """``sharing_releases``, and the addresses of their members (read in the same statement)."""
    if not participants:
        return [], {}
    via = _VIA
    rows = connection.execute(
        select(*RELEASE_FACTS, ReleaseMemberRow.member_id, MemberRow.address)
        .join(via, and_(via.c.release_id == ReleaseRow.id, via.c.member_id.in_(participants)))
        .join(ReleaseMemberRow, ReleaseMemberRow.release_id == ReleaseRow.id)
        .join(MemberRow, MemberRow.id == ReleaseMemberRow.member_id)
        .where(ReleaseRow.portfolio_id == portfolio_id, ReleaseRow.share_vorgaenge.is_(True))
        .distinct()
    )
    members: dict[int, set[int]] = defaultdict(set)
    facts: dict[int, tuple[Any, ...]] = {}
    addresses: dict[int, str] = {}
    for release_id, name, primary, share, read_sync, member_id, address in rows:
        facts[release_id] = (name, primary, share, read_sync)
        members[release_id].add(int(member_id))
        addresses[int(member_id)] = str(address)
    releases = [
        Release(rid, portfolio_id, name, primary, share, read_sync, frozenset(members[rid]))
        for rid, (name, primary, share, read_sync) in facts.items()
    ]
    return releases, addresses


def new_vorgaenge(
    connection: Connection,
    portfolio_id: int,
    subjects: Sequence[str],
    now: dt.datetime,
    keys: Sequence[str | None] | None = None,
) -> list[tuple[int, str]]:
    """Open one Vorgang per subject with the portfolio's next numbers of this year; (id, reference) each.

    ``keys`` gives each new Vorgang its rule-derived key (None: none), so later mail with the key finds it.
    The numbers are taken by ``take_numbers``, on PostgreSQL outside this transaction.
    """
    if not subjects:
        return []
    count = len(subjects)
    last = take_numbers(connection, portfolio_id, now.year, count)
    references = [format_reference(now.year, last - count + 1 + i) for i in range(count)]
    rows = [
        {
            "portfolio_id": portfolio_id,
            "reference": ref,
            "key": key,
            "subject": subject[:1000],
            "created_at": now,
            "last_message_at": now,
        }
        for ref, subject, key in zip(references, subjects, keys or [None] * count, strict=True)
    ]
    if connection.dialect.name == "postgresql":
        # One statement of the same text for any number (gateway.db.bulk); matched by reference.
        ids = {ref: int(pk) for pk, ref in bulk.insert_rows(connection, VORGAENGE, rows, ("id", "reference"))}
        return [(ids[ref], ref) for ref in references]
    # Matched by reference: one multi-row statement, where sort_by_parameter_order would make SQLAlchemy
    # insert row by row (gateway.db.copies.insert_copies).
    opening = insert(VORGAENGE).returning(VORGAENGE.c.id, VORGAENGE.c.reference)
    ids = {str(ref): int(pk) for pk, ref in connection.execute(opening, rows)}
    return [(ids[ref], ref) for ref in references]


def take_numbers(connection: Connection, portfolio_id: int, year: int, count: int) -> int:
    """Take the portfolio's next ``count`` Vorgang numbers of ``year``; the last of them.

    One upsert takes them all. On PostgreSQL it runs in a transaction of its own on a second
    connection of the engine, committed at once: the counter row is locked for that one statement,
    not for the whole acceptance transaction, so a node that stalls mid-transaction holds no other
    node's new Vorgänge up (issue 17). The price: numbers taken by a transaction that then rolls
    back are not used, so a portfolio's numbers may have gaps; they stay unique and increase in the
    order they were taken. SQLite has one writer at a time, so there the upsert joins the
    transaction, and a rollback gives the numbers back.

    The numbers' own commit does not wait for the disk (``synchronous_commit`` off for that one
    statement): a server crash may lose it, but then it loses every transaction that committed after
    it too, since the log is written in order. The acceptance transaction that uses the numbers
    commits after them and waits for the disk as always (the 250 still follows a durable commit), so
    numbers that a stored Vorgang carries are on disk with it, and numbers lost in a crash were used by
    nothing that survived. The wait saved is one flush of the log per batch (4-5 ms on this machine's
    disk), on the writer thread that every transaction queues behind.
    """
    if connection.dialect.name != "postgresql":
        return _count_up(connection, sqlite.insert(VorgangCounterRow), portfolio_id, year, count)
    with connection.engine.connect() as own:
        own.execution_options(isolation_level="AUTOCOMMIT")
        numbers = {"portfolio_id": portfolio_id, "year": year, "count": count}
        return int(own.execute(_TAKE_NUMBERS, numbers).scalar_one())


# One statement, its own transaction (autocommit); set_config(…, true) lasts until that commit only.
_TAKE_NUMBERS = text(
    "INSERT INTO vorgang_counters (portfolio_id, year, last_number) "
    "SELECT CAST(:portfolio_id AS bigint), CAST(:year AS integer), CAST(:count AS bigint) "
    "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS asynchronous_commit "
    "ON CONFLICT (portfolio_id, year) "
    "DO UPDATE SET last_number = vorgang_counters.last_number + excluded.last_number "
    "RETURNING last_number"
)


def _count_up(connection: Connection, upsert: Any, portfolio_id: int, year: int, count: int) -> int:
    return int(
        connection.execute(
            upsert.values(portfolio_id=portfolio_id, year=year, last_number=count)
            .on_conflict_do_update(
                index_elements=["portfolio_id", "year"],
                set_={"last_number": VorgangCounterRow.last_number + count},
            )
            .returning(VorgangCounterRow.last_number)
        ).scalar_one()
    )


ResendKey = tuple[int, str, str]
"""What makes a message a re-send: (back office id, Message-ID, sha256 of its bytes)."""


def busy_resends(connection: Connection, keys: Collection[ResendKey]) -> set[ResendKey]:
    """Of ``keys``, those another transaction is storing right now; this transaction holds the rest.

    Two nodes that receive the same bytes at once must store them once and answer both sessions
    (issue 17). On PostgreSQL each key is a transaction-level advisory lock, taken without waiting
    (``pg_try_advisory_xact_lock``): a message whose key another transaction holds is left for a
    later batch, which finds it stored (a re-send) or takes the lock; a message whose key this one
    holds can be looked up and stored without meeting the other's uncommitted row in the unique
    index, so no two batches wait for each other or deadlock over shared messages. Ask before
    ``find_resends``, so that its read comes after the other transaction's commit. SQLite has one
    writer at a time: nothing is busy there.
    """
    named = {"resend\0{}\0{}\0{}".format(*key): key for key in keys}
    return {named[name] for name in _busy(connection, named)}


def busy_vorgaenge(
    connection: Connection, vorgang_ids: Collection[int], keys: Collection[tuple[int, str]]
) -> tuple[set[int], set[tuple[int, str]]]:
    """Of the Vorgänge ``vorgang_ids`` that mail of a batch joins, and the rule-derived ``keys``
    (portfolio id, key) of Vorgänge it opens, those another transaction is writing right now; this
    one holds the rest, as ``busy_resends`` does for messages.

    Storing a message moves its Vorgang's ``last_message_at``, which locks the Vorgang's row until
    commit, and a Vorgang opened with a key holds the key's place in the unique index: a node that
    stalls there would make every other node's mail into that Vorgang wait. Only that mail is left
    for a later batch; the rest of the batch is stored.
    """
    named_ids = {f"vorgang\0{vorgang_id}": vorgang_id for vorgang_id in vorgang_ids}
    named_keys = {f"vorgang-key\0{pid}\0{key}": (pid, key) for pid, key in keys}
    busy = _busy(connection, named_ids.keys() | named_keys.keys())
    return (
        {named_ids[name] for name in busy if name in named_ids},
        {named_keys[name] for name in busy if name in named_keys},
    )


def _busy(connection: Connection, names: Collection[str]) -> set[str]:
    """Of the advisory locks ``names``, those another transaction holds; this one takes the rest.

    Each is tried once and none waited for (``pg_try_advisory_xact_lock``), so two batches never wait
    for each other over these, nor deadlock; taken, they are held until this transaction ends. SQLite
    has one writer at a time: nothing is busy there.
    """
    if not names or connection.dialect.name != "postgresql":
        return set()
    by_lock = {_lock_key(name): name for name in names}
    busy = connection.execute(_TRY_LOCKS, {"keys": list(by_lock)}).scalars()
    return {by_lock[int(lock)] for lock in busy}


# Each key tried once, none waited for; those another transaction holds come back.
_TRY_LOCKS = text("SELECT k FROM unnest(CAST(:keys AS bigint[])) AS k WHERE NOT pg_try_advisory_xact_lock(k)")


def _lock_key(name: str) -> int:
    """The advisory lock of a name: 64 bits of its hash, as PostgreSQL's signed bigint. Two names
    sharing a lock by chance only means that one waits for the other's batch to commit."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
