"""One database stack or two: the admin operations timed through today's async stack and through the sync one.

Today the hot path (acceptance, the queues) runs synchronous SQLAlchemy Core on the writer thread
(``gateway.db.writer``, drivers sqlite3 and psycopg), and the admin path (``gateway.admin.api``, the CLI)
an ``AsyncSession`` (``gateway.db.engine``, drivers aiosqlite and asyncpg). This script runs the same
admin functions both ways, on the same database, interleaved run by run:

  async   today's admin stack: ``gateway.db.engine.create_engine`` + ``session_factory``, one session
          and transaction per operation, committed as ``gateway.cli.root.in_transaction`` does
  sync    the writer thread's stack: ``gateway.db.writer.Writer``, one ``writer.run`` per operation; the
          work binds an ORM ``Session`` to the writer's connection and runs the *same* admin function
          on it through a thin adapter (``SyncBackedSession``) whose awaits never suspend, so the
          function body is what a sync port of it would execute, statement for statement

The data: config/example/directory.yaml scaled up (``--portfolios`` copies of its portfolio, each with
``--members`` more members), and ``--messages`` messages with participants, copies and acceptance
events bulk-inserted into the first portfolio, so the list views read a production-sized table.

Operations (each one transaction): directory load creating ``--load-portfolios`` new portfolios;
directory load of all portfolios, unchanged (reads, locks and plans); export; who-can-see (a stored
message, a hypothetical one); vorgang list (all, one member's); vorgang show; events (one Vorgang, one
member's); one member renamed (a small write). One Core row runs the rules' name check
(``gateway.db.names.directory_names``) through ``AsyncConnection.run_sync`` and through ``Writer.run``;
there the writer is today's way. A "cold" row times what a CLI command's database part costs from
nothing: engine, schema check, one ``vorgang list``, dispose. The import row times importing each
stack's modules in a fresh interpreter.

Figures: median and 90th percentile wall time in ms, the process's CPU time per operation (both threads;
the PostgreSQL server's CPU is not in it), and the ratio sync / async of the medians (below 1: the sync
stack is faster). ``*`` marks today's stack for that row.

    .venv/bin/python bench/db_stack.py                    # SQLite and PostgreSQL, 4-5 minutes here
    .venv/bin/python bench/db_stack.py --runs 30 --messages 50000
    .venv/bin/python bench/db_stack.py --no-postgres      # SQLite only
    .venv/bin/python bench/db_stack.py --postgres postgresql+asyncpg://postgres@127.0.0.1:5432
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, create_engine, func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.admin import api  # noqa: E402
from gateway.admin.directory_file import read_directory_file  # noqa: E402
from gateway.db.engine import create_engine as create_async_engine  # noqa: E402
from gateway.db.engine import session_factory  # noqa: E402
from gateway.db.migrate import head_revision, upgrade  # noqa: E402
from gateway.db.models import (  # noqa: E402
    CopyRow,
    EventRow,
    MemberRow,
    MessageRow,
    ParticipantRow,
    PortfolioRow,
    VorgangRow,
)
from gateway.db.names import directory_names  # noqa: E402
from gateway.db.schema_state import require_current  # noqa: E402
from gateway.db.writer import Writer, sync_url  # noqa: E402
from gateway.domain.directory import DirectorySpec, MemberSpec  # noqa: E402
from gateway.domain.model import ParticipantRole  # noqa: E402

T = TypeVar("T")

EXAMPLE = REPO / "config" / "example" / "directory.yaml"
ACTOR = "bench:db_stack"
RAW = (
    b"From: AMS <ams@makler-muster.example>\r\nTo: sb-a1@kunde-a.example\r\nSubject: Unterlagen\r\n"
    b"Message-ID: <bench@ams.example>\r\n\r\n" + b"Guten Tag, anbei die Unterlagen.\r\n" * 30
)


# --- the sync stack running the real (async) admin functions --------------------------------------------


class SyncBackedSession:
    """The part of ``AsyncSession`` the admin API uses, over a sync ``Session``: every await returns at once.

    Driven by :func:`drive`, an ``async def`` admin function then runs as plain synchronous code on the
    writer thread, statement for statement what a sync port of it would run.
    """

    def __init__(self, session: Session) -> None:
        self.sync_session = session
        self.info = session.info

    async def scalar(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        return self.sync_session.scalar(statement, *args, **kwargs)

    async def scalars(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        return self.sync_session.scalars(statement, *args, **kwargs)

    async def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        return self.sync_session.execute(statement, *args, **kwargs)

    async def get(self, entity: Any, ident: Any) -> Any:
        return self.sync_session.get(entity, ident)

    async def flush(self) -> None:
        self.sync_session.flush()

    async def delete(self, instance: Any) -> None:
        self.sync_session.delete(instance)

    def add(self, instance: Any) -> None:
        self.sync_session.add(instance)

    def add_all(self, instances: Any) -> None:
        self.sync_session.add_all(instances)

    async def run_sync(self, work: Callable[..., T], *args: Any) -> T:
        return work(self.sync_session, *args)


def drive(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to its end, without an event loop."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("the admin function awaited something that suspends; it cannot run on the writer")


Operation = Callable[[Any], Awaitable[Any]]  # (an AsyncSession or a SyncBackedSession) -> result


class AsyncStack:
    """Today's admin stack: an AsyncSession per operation, committed like ``cli.root.in_transaction``."""

    name = "async"

    def __init__(self, url: str) -> None:
        self.engine = create_async_engine(url)
        self.sessions = session_factory(self.engine)

    async def run(self, operation: Operation, *, write: bool) -> Any:
        async with self.sessions() as session:
            result = await operation(session)
            if write:
                await session.commit()
            return result

    async def run_core(self, work: Callable[[Connection], T]) -> T:
        async with self.engine.connect() as connection:
            return await connection.run_sync(work)

    async def close(self) -> None:
        await self.engine.dispose()


class SyncStack:
    """The writer thread's stack: one ``Writer.run`` per operation, a Session bound to its connection."""

    name = "sync"

    def __init__(self, url: str) -> None:
        self.writer = Writer(url)

    async def run(self, operation: Operation, *, write: bool) -> Any:
        def work(connection: Connection) -> Any:
            with Session(bind=connection, expire_on_commit=False) as session:
                result = drive(operation(SyncBackedSession(session)))  # type: ignore[arg-type]
                if write:
                    session.flush()
                return result

        return await self.writer.run(work)

    async def run_core(self, work: Callable[[Connection], T]) -> T:
        return await self.writer.run(work)

    async def close(self) -> None:
        await self.writer.close()


# --- the data ------------------------------------------------------------------------------------------


def scaled_directory(portfolios: int, members: int, prefix: str = "") -> DirectorySpec:
    """The example's portfolio ``portfolios`` times, each with ``members`` more clerks of customer A."""
    (example,) = read_directory_file(EXAMPLE).portfolios
    extra = tuple(
        MemberSpec(f"sb-a{n + 10}@kunde-a.example", f"SB-A{n + 10}", ("Kunde A Sachbearbeiter",))
        for n in range(members)
    )
    return DirectorySpec(
        portfolios=tuple(
            dataclasses.replace(
                example, name=f"{prefix}{example.name}-{i:03d}", members=example.members + extra
            )
            for i in range(portfolios)
        )
    )


def fill_messages(url: str, portfolio: str, messages: int) -> tuple[str, str]:
    """``messages`` messages (ten per Vorgang) in ``portfolio``, each with one participant, one delivered
    copy per co-member of customer A's clerks and its acceptance event; returns a gateway id and a
    Vorgang reference from the middle."""
    engine = create_engine(sync_url(url))
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as connection:
        pid = connection.scalar(select(PortfolioRow.id).where(PortfolioRow.name == portfolio))
        ids = dict(
            connection.execute(
                select(MemberRow.address, MemberRow.id).where(MemberRow.portfolio_id == pid)
            ).all()
        )
        people = [ids["sb-a1@kunde-a.example"], ids["sb-a2@kunde-a.example"], ids["gf-b@kunde-b.example"]]
        vorgaenge = messages // 10 + 1
        result = connection.execute(
            insert(VorgangRow).returning(VorgangRow.id, sort_by_parameter_order=True),
            [
                {
                    "portfolio_id": pid,
                    "reference": f"VG-2026-{n:06d}",
                    "subject": "Unterlagen",
                    "created_at": now,
                }
                for n in range(vorgaenge)
            ],
        )
        vorgang_ids = [row[0] for row in result]
    for start in range(0, messages, 5000):
        numbers = range(start, min(messages, start + 5000))
        with engine.begin() as connection:
            rows = [
                {
                    "gateway_id": f"gw-bench-{n}",
                    "portfolio_id": pid,
                    "vorgang_id": vorgang_ids[n // 10],
                    "direction": "inbound",
                    "backoffice_id": None,
                    "raw": RAW,
                    "size": len(RAW),
                    "sha256": hashlib.sha256(str(n).encode()).hexdigest(),
                    "message_id": f"<bench-{n}@ams.example>",
                    "subject": f"Unterlagen {n}",
                    "from_address": "ams@makler-muster.example",
                    "envelope_sender": "ams@makler-muster.example",
                    "received_at": now - dt.timedelta(minutes=(messages - n) * 5),
                }
                for n in numbers
            ]
            result = connection.execute(
                insert(MessageRow).returning(MessageRow.id, sort_by_parameter_order=True), rows
            )
            message_ids = [row[0] for row in result]
            participants, copies, events = [], [], []
            for n, row, message_pk in zip(numbers, rows, message_ids, strict=True):
                member_id = people[n % len(people)]
                participants.append(
                    {"message_id": message_pk, "member_id": member_id, "role": "to", "portfolio_id": pid}
                )
                copies.append(
                    {
                        "copy_id": f"c{n:019x}",
                        "message_id": message_pk,
                        "member_id": member_id,
                        "portfolio_id": pid,
                        "state": "delivered",
                        "next_attempt_at": None,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                events.append(
                    {
                        "at": row["received_at"],
                        "portfolio_id": pid,
                        "actor": "backoffice:ams@makler-muster.example",
                        "kind": "message.accepted",
                        "member_id": member_id,
                        "vorgang_id": row["vorgang_id"],
                        "message_id": message_pk,
                        "detail": {"gateway_id": row["gateway_id"]},
                    }
                )
            connection.execute(insert(ParticipantRow), participants)
            connection.execute(insert(CopyRow), copies)
            connection.execute(insert(EventRow), events)
    # What acceptance keeps on each Vorgang as it stores mail; these rows were written around it.
    with engine.begin() as connection:
        newest = (
            select(func.max(MessageRow.received_at))
            .where(MessageRow.vorgang_id == VorgangRow.id)
            .scalar_subquery()
        )
        connection.execute(
            update(VorgangRow)
            .where(VorgangRow.portfolio_id == pid)
            .values(last_message_at=func.coalesce(newest, VorgangRow.created_at))
        )
    if make_url(url).get_backend_name() == "postgresql":
        # What autovacuum does after such growth; without statistics the planner misjudges the tables.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("ANALYZE")
    engine.dispose()
    middle = messages // 2
    return f"gw-bench-{middle}", f"VG-2026-{middle // 10:06d}"


@contextlib.contextmanager
def database(kind: str, postgres: str, workdir: Path) -> Any:
    """A fresh empty database; SQLite in ``workdir``, or a database of its own on the PostgreSQL server."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / 'db_stack.db'}"
        return
    name = f"bench_db_stack_{os.getpid()}"
    server = create_engine(sync_url(f"{postgres.rstrip('/')}/test"), isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield f"{postgres.rstrip('/')}/{name}"
    finally:
        with server.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        server.dispose()


# --- the measurements ----------------------------------------------------------------------------------


@dataclass
class Figures:
    wall: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.wall) * 1000

    def p90(self) -> float:
        data = sorted(self.wall)
        return data[min(len(data) - 1, int(0.9 * len(data)))] * 1000

    def cpu_ms(self) -> float:
        return statistics.median(self.cpu) * 1000 if self.cpu else float("nan")


@dataclass
class Row:
    name: str
    today: str  # "async" or "sync"
    figures: dict[str, Figures]


@contextlib.asynccontextmanager
async def timed(figures: Figures) -> AsyncIterator[None]:
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    figures.wall.append(time.perf_counter() - wall)
    figures.cpu.append(time.process_time() - cpu)


def operations(
    portfolio: str, base: DirectorySpec, gateway_id: str, reference: str
) -> list[tuple[str, Callable[[int], Operation], bool]]:
    """(name, run number -> operation, whether it writes); the run number keeps created names unique."""
    member = "sb-a1@kunde-a.example"
    return [
        (
            f"directory load, unchanged ({len(base.portfolios)} portfolios)",
            lambda n: lambda s: api.load_directory(s, base, prune=False, actor=ACTOR),
            True,
        ),
        ("directory export (all)", lambda n: lambda s: api.export_directory(s), False),
        ("who-can-see MESSAGE", lambda n: lambda s: api.who_can_see_message(s, gateway_id), False),
        (
            "who-can-see --to (hypothetical)",
            lambda n: (
                lambda s: api.who_can_see_hypothetical(
                    s, portfolio, [(ParticipantRole.TO, "gf-b@kunde-b.example")]
                )
            ),
            False,
        ),
        ("vorgang list", lambda n: lambda s: api.list_vorgaenge(s, portfolio), False),
        ("vorgang list --member", lambda n: lambda s: api.list_vorgaenge(s, portfolio, member=member), False),
        ("vorgang show", lambda n: lambda s: api.show_vorgang(s, portfolio, reference), False),
        ("events --vorgang", lambda n: lambda s: api.read_events(s, vorgang=reference), False),
        (
            "events -p --member",
            lambda n: lambda s: api.read_events(s, portfolio=portfolio, member=member),
            False,
        ),
        (
            "member set (one write + event)",
            lambda n: lambda s: api.set_member(s, portfolio, member, f"SB-A1 ({n})", ACTOR),
            True,
        ),
    ]


def in_turn(stacks: dict[str, Any], n: int) -> list[tuple[str, Any]]:
    """The stacks in turn, the other one first every second run: what one leaves behind (SQLite's WAL
    checkpoint after a write, a warm cache) must not always fall to the same one."""
    order = list(stacks.items())
    return order if n % 2 else order[::-1]


async def measure(url: str, args: argparse.Namespace) -> list[Row]:
    engine = create_async_engine(url)
    await upgrade(engine)
    base = scaled_directory(args.portfolios, args.members)
    async with session_factory(engine)() as session:
        await api.load_directory(session, base, prune=False, actor=ACTOR)
        await session.commit()
    await engine.dispose()
    portfolio = base.portfolios[0].name
    started = time.perf_counter()
    gateway_id, reference = fill_messages(url, portfolio, args.messages)
    print(
        f"  data: {len(base.portfolios)} portfolios of {len(base.portfolios[0].members)} members; "
        f"{args.messages:,} messages in {portfolio} ({time.perf_counter() - started:.1f} s to insert)"
    )

    stacks = {"async": AsyncStack(url), "sync": SyncStack(url)}
    rows: list[Row] = []
    try:
        # Each stack creates portfolios of its own names, run by run, so every load really creates.
        create = [
            (
                f"directory load, create {args.load_portfolios} portfolios",
                lambda n, stack: scaled_directory(args.load_portfolios, args.members, prefix=f"{stack}{n}-"),
            )
        ]
        for name, spec_for in create:
            row = Row(name, "async", {s: Figures() for s in stacks})
            for n in range(args.runs + 1):
                for stack_name, stack in in_turn(stacks, n):
                    spec = spec_for(n, stack_name)

                    def load(s: Any, spec: DirectorySpec = spec) -> Awaitable[Any]:
                        return api.load_directory(s, spec, prune=False, actor=ACTOR)

                    figures = row.figures[stack_name] if n else Figures()  # run 0 warms up
                    async with timed(figures):
                        await stack.run(load, write=True)
            rows.append(row)
        for name, make, write in operations(portfolio, base, gateway_id, reference):
            row = Row(name, "async", {s: Figures() for s in stacks})
            for n in range(args.runs + 1):
                results = []
                for stack_name, stack in in_turn(stacks, n):
                    figures = row.figures[stack_name] if n else Figures()
                    async with timed(figures):
                        results.append(await stack.run(make(n), write=write))
                # Both stacks ran the same function on the same data: a read must answer the same.
                if not write and results[0] != results[1]:
                    raise SystemExit(f"{name}: the two stacks answered differently")
            rows.append(row)
        row = Row("rules' name check (Core)", "sync", {s: Figures() for s in stacks})
        for n in range(args.runs + 1):
            for stack_name, stack in in_turn(stacks, n):
                figures = row.figures[stack_name] if n else Figures()
                async with timed(figures):
                    await stack.run_core(directory_names)
        rows.append(row)
    finally:
        for stack in stacks.values():
            await stack.close()
    rows.append(await cold(url, portfolio, args.runs))
    return rows


async def cold(url: str, portfolio: str, runs: int) -> Row:
    """What a CLI command's database part costs from nothing: engine, schema check, one view, dispose."""
    row = Row("cold: engine + schema check + vorgang list", "async", {"async": Figures(), "sync": Figures()})

    def current(connection: Connection) -> None:
        if MigrationContext.configure(connection).get_current_revision() != head_revision():
            raise RuntimeError("not migrated")

    async def through_async() -> None:
        engine = create_async_engine(url)
        await require_current(engine)
        async with session_factory(engine)() as session:
            await api.list_vorgaenge(session, portfolio)
        await engine.dispose()

    async def through_sync() -> None:
        stack = SyncStack(url)
        await stack.run_core(current)
        await stack.run(lambda s: api.list_vorgaenge(s, portfolio), write=False)
        await stack.close()

    for n in range(runs + 1):
        for stack_name, command in in_turn({"async": through_async, "sync": through_sync}, n):
            async with timed(row.figures[stack_name] if n else Figures()):
                await command()
    return row


def import_times(runs: int) -> Row:
    """Importing each stack's SQLAlchemy part and drivers in a fresh interpreter (a CLI command pays it)."""
    modules = {
        "async": "sqlalchemy.ext.asyncio, aiosqlite, asyncpg, sqlalchemy.dialects.postgresql.asyncpg",
        "sync": "sqlalchemy.orm, sqlite3, psycopg, sqlalchemy.dialects.postgresql.psycopg",
    }
    row = Row("import: SQLAlchemy part + both drivers", "async", {s: Figures() for s in modules})
    for _ in range(runs):
        for stack, names in modules.items():
            code = f"import time; t = time.perf_counter(); import {names}; print(time.perf_counter() - t)"
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            row.figures[stack].wall.append(float(done.stdout))
    return row


def print_rows(title: str, rows: Sequence[Row]) -> None:
    print(f"\n{title}")
    print(
        f"  {'operation':<46} {'async p50/p90 ms':>17} {'sync p50/p90 ms':>17} {'sync/async':>10}"
        f" {'CPU ms async/sync':>18}"
    )
    for row in rows:
        a, s = row.figures["async"], row.figures["sync"]
        mark = {"async": ("*", " "), "sync": (" ", "*")}[row.today]
        print(
            f"  {row.name:<46} {mark[0]}{a.median():7.1f} /{a.p90():7.1f}"
            f" {mark[1]}{s.median():7.1f} /{s.p90():7.1f}"
            f" {s.median() / a.median():10.2f} {a.cpu_ms():8.1f} /{s.cpu_ms():7.1f}"
        )


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=int, default=15, help="timed runs per operation and stack (default 15)"
    )
    parser.add_argument("--portfolios", type=int, default=20, help="portfolios in the directory (default 20)")
    parser.add_argument("--members", type=int, default=50, help="extra members per portfolio (default 50)")
    parser.add_argument("--load-portfolios", type=int, default=3, help="portfolios one timed load creates")
    parser.add_argument("--messages", type=int, default=20_000, help="messages in the first portfolio")
    parser.add_argument("--postgres", default="postgresql+asyncpg://postgres@127.0.0.1:5432")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"  {os.cpu_count()} CPUs; load average {load_average()} at the start")
    print(
        "  columns: median / 90th percentile wall ms per operation, process CPU ms (median),"
        " ratio of medians;"
    )
    print("  * marks today's stack for the row; below 1.00 the sync stack is faster")
    kinds = ["sqlite"] + ([] if args.no_postgres else ["postgresql"])
    for kind in kinds:
        with (
            tempfile.TemporaryDirectory(prefix="db_stack-") as workdir,
            database(kind, args.postgres, Path(workdir)) as url,
        ):
            print(f"\n{kind}: {make_url(url).render_as_string(hide_password=True)}")
            rows = asyncio.run(measure(url, args))
            print_rows(f"{kind}, {args.runs} runs each (load average now {load_average()})", rows)
    print_rows("imports (fresh interpreter, ms)", [import_times(max(3, args.runs // 3))])
    print(f"\n  load average {load_average()} at the end")


if __name__ == "__main__":
    main()
