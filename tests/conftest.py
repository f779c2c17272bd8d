"""Fixtures shared by every level of tests: a fresh migrated database per test, on SQLite and PostgreSQL.

Each test gets its own database: on SQLite a copy of a file migrated once per session, on PostgreSQL a
``CREATE DATABASE … TEMPLATE`` of a database migrated once per session. PostgreSQL is a real server
(127.0.0.1:5432 by default, ``GATEWAY_TEST_POSTGRES`` to change it); when it cannot be reached the
PostgreSQL half of the suite fails rather than being skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, settings
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.cli import cli
from gateway.db.engine import create_engine, session_factory
from gateway.db.migrate import upgrade

# Property tests: a quick default for people, the thorough profile in CI (.ci/run sets
# HYPOTHESIS_PROFILE=ci). Neither has a deadline or the too-slow health check: both time the machine, and
# a test must not fail because the machine is busy (issue 14, item 8).
settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

POSTGRES_URL = os.environ.get(
    "GATEWAY_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
# Names of this process's databases: each pytest-xdist worker has its own, and the pid keeps two runs on
# one PostgreSQL server (two checkouts) apart.
_PREFIX = f"gw_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{os.getpid()}"
_counter = itertools.count()


def _pg_admin_dsn() -> str:
    url = make_url(POSTGRES_URL).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def _pg_dsn(database: str) -> str:
    url = make_url(POSTGRES_URL).set(drivername="postgresql", database=database)
    return url.render_as_string(hide_password=False)


def _pg_url(database: str) -> str:
    return make_url(POSTGRES_URL).set(database=database).render_as_string(hide_password=False)


def _pg_name(url: str) -> str:
    name = make_url(url).database
    assert name is not None
    return name


async def _pg_execute(*statements: str) -> None:
    connection = await asyncpg.connect(_pg_admin_dsn())
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


# --- PostgreSQL databases: made once per worker, given back emptied -----------------------------------
#
# CREATE DATABASE ... TEMPLATE and DROP DATABASE for every test cost a second or more of disk syncs on a
# busy machine. A test's database is instead taken from this worker's pool and, after the test, put back
# to the rows it started with (the migration's own, held in a Snapshot): a few DELETEs and INSERTs in
# one transaction. A database whose schema a test changed (a downgrade) is dropped instead.


@dataclass(frozen=True)
class Snapshot:
    """Every row of a PostgreSQL database and where its sequences stand; the schema is the template's."""

    schema: str
    rows: dict[str, tuple[list[str], list[tuple[object, ...]]]]
    sequences: dict[str, int | None]


_SCHEMA = """
    SELECT string_agg(table_name || '.' || column_name || ':' || data_type, ','
                      ORDER BY table_name, column_name)
    FROM information_schema.columns WHERE table_schema = 'public'
"""


async def _snapshot(database: str) -> Snapshot:
    connection = await asyncpg.connect(_pg_dsn(database))
    try:
        rows: dict[str, tuple[list[str], list[tuple[object, ...]]]] = {}
        for (table,) in await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"):
            records = await connection.fetch(f'SELECT * FROM "{table}"')
            columns = list(records[0].keys()) if records else []
            rows[table] = (columns, [tuple(record) for record in records])
        sequences: dict[str, int | None] = {
            record["sequencename"]: record["last_value"]
            for record in await connection.fetch(
                "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public'"
            )
        }
        return Snapshot(str(await connection.fetchval(_SCHEMA)), rows, sequences)
    finally:
        await connection.close()


async def _restore(database: str, snapshot: Snapshot) -> bool:
    """Put ``database`` back to ``snapshot``; False (and nothing done) if its schema is not the snapshot's."""
    await _pg_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    )
    connection = await asyncpg.connect(_pg_dsn(database))
    try:
        if await connection.fetchval(_SCHEMA) != snapshot.schema:
            return False
        async with connection.transaction():
            # Foreign keys are triggers; as a replica the session may empty and fill tables in any order.
            await connection.execute("SET LOCAL session_replication_role = replica")
            for table, (columns, records) in snapshot.rows.items():
                await connection.execute(f'DELETE FROM "{table}"')
                if records:
                    await connection.copy_records_to_table(table, records=records, columns=columns)
            for name, last in snapshot.sequences.items():
                if last is None:
                    await connection.execute(f'ALTER SEQUENCE "{name}" RESTART')
                else:
                    await connection.execute("SELECT setval($1, $2, true)", name, last)
        return True
    finally:
        await connection.close()


class PostgresPool:
    """This worker's PostgreSQL databases: migrated copies of its template, handed out one per test."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.migrated = asyncio.run(_snapshot(template))
        self.free: list[str] = []
        self.made: list[str] = []

    def take(self) -> str:
        if self.free:
            return self.free.pop()
        name = f"{_PREFIX}_{next(_counter)}"
        asyncio.run(_pg_execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"'))
        self.made.append(name)
        return name

    def give_back(self, name: str) -> None:
        if asyncio.run(_restore(name, self.migrated)):
            self.free.append(name)
        else:
            asyncio.run(_pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            self.made.remove(name)

    def close(self) -> None:
        asyncio.run(_pg_execute(*(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in self.made)))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "gateway.db"
    asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    name = f"{_PREFIX}_template"
    try:
        asyncio.run(
            _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
        )
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is needed for the PostgreSQL half of the suite: {exc}")
    asyncio.run(_migrate(_pg_url(name)))
    yield name
    asyncio.run(_pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_pool(postgres_template: str) -> Iterator[PostgresPool]:
    pool = PostgresPool(postgres_template)
    yield pool
    pool.close()


@contextlib.contextmanager
def a_database(kind: str, directory: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated database without data: SQLite in ``directory``, or one of the worker's PostgreSQL."""
    if kind == "sqlite":
        path = directory / "gateway.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    pool: PostgresPool = request.getfixturevalue("postgres_pool")
    name = pool.take()
    yield _pg_url(name)
    pool.give_back(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database of the parametrised kind without any data, for this test only."""
    with a_database(request.param, tmp_path, request) as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_database_kind(request: pytest.FixtureRequest) -> str:
    """The kind of database of a fixture shared by the tests of one module (``a_database`` makes it)."""
    return str(request.param)


# --- seeded databases: the CLI runs once per worker, every test gets its result ------------------------

_seeds: dict[tuple[str, str], Path | Snapshot] = {}


def seed_database(database_url: str, kind: str, seed: Callable[[], object]) -> None:
    """Give the empty, migrated ``database_url`` what ``seed`` (CLI commands against it) writes there.

    ``seed`` runs once per worker, database kind and ``kind`` of seed; every later call copies what it
    wrote then: the SQLite file, or the PostgreSQL rows (a Snapshot). The database must not be in use
    yet (no engine has connected to it).
    """
    url = make_url(database_url)
    key = (url.get_backend_name(), kind)
    made = _seeds.get(key)
    if made is None:
        seed()
        if url.database is not None and key[0] == "sqlite":
            made = Path(tempfile.mkdtemp(prefix=f"gw-seed-{kind}-")) / "seeded.db"
            # The backup API, not a file copy: what is still in the write-ahead log is taken along.
            with (
                contextlib.closing(sqlite3.connect(url.database)) as source,
                contextlib.closing(sqlite3.connect(made)) as target,
            ):
                source.backup(target)
        else:
            made = asyncio.run(_snapshot(_pg_name(database_url)))
        _seeds[key] = made
    elif isinstance(made, Path):
        assert url.database is not None
        shutil.copyfile(made, url.database)
    else:
        assert asyncio.run(_restore(_pg_name(database_url), made))


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database without any schema, for migration tests; SQLite and PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"gw_empty_{os.getpid()}_{next(_counter)}"
    try:
        asyncio.run(_pg_execute(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is needed for the PostgreSQL half of the suite: {exc}")
    yield _pg_url(name)
    asyncio.run(_pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


@pytest.fixture
def config_file(tmp_path: Path, database_url: str) -> Path:
    """A gateway configuration for this test, pointing at its own database and data directory."""
    path = tmp_path / "gateway.toml"
    path.write_text(f'[gateway]\ndata_dir = "data"\n\n[database]\nurl = "{database_url}"\n', encoding="utf-8")
    return path


class Gateway:
    """Runs ``gateway`` commands in-process against one configuration, as an admin would type them."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.runner = CliRunner()

    def __call__(self, *args: str, expect: int | None = 0) -> Result:
        result = self.runner.invoke(cli, ["--config", str(self.config), *args], catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, (
                f"gateway {' '.join(args)} exited {result.exit_code}, expected {expect}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result


@pytest.fixture
def gateway(config_file: Path) -> Gateway:
    return Gateway(config_file)


EXAMPLE_DIRECTORY = Path(__file__).parent.parent / "config" / "example" / "directory.yaml"


def load_example_directory(gateway: Gateway) -> None:
    gateway("directory", "load", str(EXAMPLE_DIRECTORY))


@pytest.fixture
def seeded(gateway: Gateway, database_url: str) -> Gateway:
    """The gateway with the seed's example directory (DESIGN.md §3) loaded through the CLI.

    The CLI loads it once per worker (``seed_database``); each test gets a copy of what it wrote.
    """
    seed_database(database_url, "example", lambda: load_example_directory(gateway))
    return gateway


from tests.cpu import pytest_runtest_protocol  # noqa: E402, F401  (CPU per test with GATEWAY_TEST_CPU)
from tests.dovecot_fixtures import dovecot  # noqa: E402, F401  (the private Dovecot for IMAP tests)

# --- spreading the tests over pytest-xdist's workers (issue 14, item 7) --------------------------------
#
# A test runs on any worker unless it shares a fixture (module or package scope: a running gateway,
# chromium): then it runs where every other test on that fixture instance runs, which starts it once.
# So a module of shared gateways per database and mailbox backend is up to four units, not one, and
# tests with fixtures of their own spread over all workers. The workers collect the tests, the
# controller hands them out: the first worker writes each test's group (``shared_group``) to the file
# named by ``GROUPS``, and the controller's scheduler reads it. (pytest-xdist's own ``xdist_group``
# would do the first half, but its nodeid suffix has no effect since pytest 9.2.)

GROUPS = "GATEWAY_TEST_GROUPS"


def shared_group(item: pytest.Item) -> str | None:
    """The group of tests that share a module- or package-scoped fixture instance with ``item``; None
    when it shares none (session-scoped fixtures exist once per worker anyway)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    callspec = getattr(item, "callspec", None)
    module = item.nodeid.split("::")[0]
    owner = ""
    params: list[str] = []
    for name in info.names_closure:
        definitions = info.name2fixturedefs.get(name)
        if not definitions or definitions[-1].scope not in ("class", "module", "package"):
            continue
        # pytest keeps a package-scoped instance per folder of test modules, a module-scoped one per module
        # (a class-scoped one per class: its module is a group wide enough).
        where = module.rpartition("/")[0] + "/" if definitions[-1].scope == "package" else module
        owner = where if not owner or len(where) < len(owner) else owner
        if callspec is not None and name in callspec.params:
            value = callspec.params[name]
            # Every worker must name the group alike: a value's own text only when it is plain data.
            shown = value if isinstance(value, str | int | float | bool) else callspec.indices[name]
            params.append(f"{name}={shown}")
    if not owner:
        return None
    return f"{owner}[{','.join(sorted(params))}]"


def pytest_configure(config: pytest.Config) -> None:
    # The controller names the file before it starts the workers, which inherit its environment.
    if config.getoption("dist", "no") != "no" and not hasattr(config, "workerinput"):
        os.environ[GROUPS] = str(Path(tempfile.mkdtemp(prefix="gw-groups-")) / "groups.json")


def pytest_unconfigure(config: pytest.Config) -> None:
    if config.getoption("dist", "no") != "no" and not hasattr(config, "workerinput") and GROUPS in os.environ:
        shutil.rmtree(Path(os.environ.pop(GROUPS)).parent, ignore_errors=True)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") != "gw0" or GROUPS not in os.environ:
        return
    groups = {item.nodeid: group for item in items if (group := shared_group(item)) is not None}
    path = Path(os.environ[GROUPS])
    path.with_suffix(".part").write_text(json.dumps(groups), encoding="utf-8")
    path.with_suffix(".part").replace(path)  # whole or not at all


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: two workers per core (at most four more than the cores). An end-to-end test spends most
    of its time waiting for its gateway, Dovecot or PostgreSQL, whose work runs on the other processes;
    one worker per core left the cores idle a third of the time. PYTEST_XDIST_AUTO_NUM_WORKERS overrides it.
    """
    cores = len(os.sched_getaffinity(0))
    return min(2 * cores, cores + 4)


# Rough wall seconds of one test by folder, from a run with GATEWAY_TEST_CPU (tests/cpu.py): what the
# scheduler needs to hand out the long units first.
_COST = {"tests/cluster/": 15.0, "tests/browser/": 6.0, "tests/e2e/": 5.0, "tests/deploy/": 5.0}


def _cost(nodeid: str) -> float:
    return next((cost for folder, cost in _COST.items() if nodeid.startswith(folder)), 0.2)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``--dist loadgroup`` with the groups of ``shared_group``, handing out the costliest units first;
    other modes as pytest-xdist has them.

    pytest-xdist hands out units in the order of their number of tests: the thousand quick domain tests
    first and a long end-to-end group last, which then runs alone at the end while the other workers
    idle. Longest first keeps every worker busy to the end.
    """
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixturesLongestFirst(LoadScopeScheduling):
        groups: dict[str, str] | None = None
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                # Read once all workers collected: the first one wrote it before it said so.
                self.groups = json.loads(Path(os.environ[GROUPS]).read_text(encoding="utf-8"))
            return self.groups.get(nodeid, nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            if not self.ordered:
                # Once, when schedule() has made the units and hands out the first ones.
                units = sorted(self.workqueue.items(), key=lambda unit: -sum(map(_cost, unit[1])))
                self.workqueue.clear()
                self.workqueue.update(units)
                self.ordered = True
            super()._assign_work_unit(node)

    return SharedFixturesLongestFirst(config, log)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say at the end of the run when the corpus tests did not run, and why (tests/corpora.py)."""
    from tests import corpora

    if corpora.PROBLEM and not corpora.required():
        terminalreporter.write_sep("=", "corpus tests skipped", yellow=True)
        terminalreporter.write_line(
            f"the tests of real-world mail were skipped: {corpora.PROBLEM}. Everything else ran. "
            f"To run them, set {corpora.VARIABLE} to the mail corpora; "
            f"{corpora.REQUIRE}=1 (as .ci/run sets) makes their absence a failure."
        )
