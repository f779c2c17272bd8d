"""Nodes know each other (issue 17, item 3), on SQLite and PostgreSQL.

- A node whose heartbeat stopped has its leases taken over by the next heartbeat of a live node: its
  copies, flag jobs, removals, relays and reconcile runs are due at once (not after their leases), keep
  ``leased_by``, and are taken by the survivor's ordinary claims; a live node's leases stay; one survivor
  takes over, once.
- A second process under a live node's name is refused, naming the other's pid, host and heartbeat age;
  a stale record, or one of a process on this host that no longer runs, is replaced at once.
- The token keys and the Maildir storage must be the other nodes': a marker file written once into the
  Maildir root, and key ids (never the keys) compared so that a key rotation can roll node by node.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import json
import socket
from pathlib import Path

import pytest
from sqlalchemy import Connection, select, update

from gateway.config import Settings, load_settings
from gateway.db import nodes, queue, reconcile, relayqueue
from gateway.db.models import CopyRow, MessageRow, NodeRow, PortfolioRow
from gateway.db.relayqueue import NewRelay
from gateway.db.writer import Writer
from gateway.domain.nodes import NodeIdentity, NodeRecord
from gateway.domain.tokens import TokenKeys
from gateway.errors import ConfigError, OperationalError
from gateway.keys import create_token_key, key_fingerprint, key_ids, load_token_keys
from gateway.stages.nodes import MARKER, Nodes, read_marker, write_marker
from tests.conftest import Gateway
from tests.stages.conftest import PORTFOLIO, accept

TIMEOUT = 10.0
HOUR = 3600.0
KEYS = TokenKeys([b"k" * 32])


def identity(
    name: str, pid: int = 4242, host: str = "elsewhere.example", keys: TokenKeys = KEYS
) -> NodeIdentity:
    return NodeIdentity(
        name=name,
        pid=pid,
        host=host,
        version="test",
        key_ids=key_ids(keys),
        key_fingerprint=key_fingerprint(keys),
        key_files=("/etc/gateway/token.key",),
        maildir_marker=None,
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _never_gone(record: NodeRecord) -> bool:
    return False


async def _register(writer: Writer, me: NodeIdentity, at: dt.datetime) -> nodes.Registration:
    return await writer.run(nodes.register, me, at, TIMEOUT, gone=_never_gone)


def _portfolio_id(connection: Connection) -> int:
    return int(connection.execute(select(PortfolioRow.id).where(PortfolioRow.name == PORTFOLIO)).scalar_one())


def _queue_relay(connection: Connection, now: dt.datetime) -> None:
    message, member, portfolio = connection.execute(
        select(CopyRow.message_id, CopyRow.member_id, CopyRow.portfolio_id).limit(1)
    ).one()
    relayqueue.queue_relay(
        connection,
        NewRelay(
            portfolio,
            message,
            None,
            member,
            "gf-a@kunde-a.example",
            ("ams@makler-muster.example",),
            "<relay@test>",
            b"Subject: x\r\n\r\nx\r\n",
        ),
        now,
        HOUR,
    )


async def test_a_dead_nodes_leases_are_taken_over_by_a_live_nodes_next_heartbeat(
    with_login: Gateway, writer: Writer
) -> None:
    now = dt.datetime.now(dt.UTC)
    await _register(writer, identity("dead"), now - dt.timedelta(seconds=30))
    await _register(writer, identity("busy"), now)
    await _register(writer, identity("survivor", pid=1), now)
    # "dead" took two copies, a flag job, a removal, a relay and a reconcile run, each for an hour.
    await accept(writer, "gf-a@kunde-a.example", "Kopien")  # copies for GF-A and GF-B
    assert len(await writer.run(queue.claim, "dead", _now(), HOUR, 100)) == 2
    await accept(writer, "gf-a@kunde-a.example", "Flaggen und Entfernen")
    second = (
        await writer.run(lambda c: c.execute(select(MessageRow.id).order_by(MessageRow.id.desc())).first())
    )[0]
    flag_copy, removal_copy = await writer.run(
        lambda c: [
            r[0]
            for r in c.execute(select(CopyRow.id).where(CopyRow.message_id == second).order_by(CopyRow.id))
        ]
    )
    await writer.run(
        lambda c: c.execute(
            update(CopyRow)
            .where(CopyRow.id == flag_copy)
            .values(state="delivered", flags_pending=True, seen=True)
        )
    )
    await writer.run(
        lambda c: c.execute(update(CopyRow).where(CopyRow.id == removal_copy).values(state="revoking"))
    )
    assert len(await writer.run(queue.claim_flags, "dead", _now(), HOUR, 100)) == 1
    assert len(await writer.run(queue.claim_removals, "dead", _now(), HOUR, 100)) == 1
    await writer.run(_queue_relay, now)
    assert len(await writer.run(relayqueue.claim, "dead", _now(), HOUR, 100)) == 1
    await writer.run(lambda c: reconcile.request_run(c, _portfolio_id(c), "test", "test", now))
    assert await writer.run(reconcile.take_run, "dead", _now(), HOUR) is not None
    # "busy" is alive and holds a copy of its own.
    await accept(writer, "sb-a1@kunde-a.example", "Lebendig")  # copies for SB-A1 and SB-A2
    assert len(await writer.run(queue.claim, "busy", _now(), HOUR, 100)) == 2

    later = _now() + dt.timedelta(seconds=1)
    assert await writer.run(queue.claim, "survivor", later, HOUR, 100) == []  # all leased for an hour

    beat = await writer.run(nodes.beat, "survivor", 1, later, TIMEOUT)

    assert beat.released == [nodes.Released("dead", copies=4, relays=1, runs=1)]
    # The survivor's ordinary claims take the dead node's work now, not in an hour; leased_by was kept,
    # so a copy is not a first attempt (an earlier one may have written it).
    taken = await writer.run(queue.claim, "survivor", later, 60.0, 100)
    assert len(taken) == 2
    assert not any(job.first_attempt for job in taken)
    assert len(await writer.run(queue.claim_flags, "survivor", later, 60.0, 100)) == 1
    assert len(await writer.run(queue.claim_removals, "survivor", later, 60.0, 100)) == 1
    assert len(await writer.run(relayqueue.claim, "survivor", later, 60.0, 100)) == 1
    assert await writer.run(reconcile.take_run, "survivor", later, 60.0) is not None
    # "busy"'s copies stay its own.
    leased = await writer.run(lambda c: sorted(r[0] for r in c.execute(select(CopyRow.leased_by))))
    assert leased.count("busy") == 2
    # Taken over once: another live node finds it stale already.
    assert (await writer.run(nodes.beat, "busy", 4242, later, TIMEOUT)).released == []
    records = {r.name: r for r in await writer.run(nodes.all_nodes)}
    assert records["dead"].shown_state(later, TIMEOUT) == "stale"
    assert records["dead"].taken_over_by == "survivor"
    assert records["busy"].shown_state(later, TIMEOUT) == "alive"


async def test_leases_of_a_node_that_beats_are_never_taken_over(with_login: Gateway, writer: Writer) -> None:
    now = dt.datetime.now(dt.UTC)
    await _register(writer, identity("n1", pid=1), now)
    await _register(writer, identity("n2", pid=2), now)
    await accept(writer, "gf-a@kunde-a.example", "Kopien")
    now = _now()
    assert len(await writer.run(queue.claim, "n1", now, HOUR, 100)) == 2
    for second in range(1, 30, 2):  # both beat every 2 s for 30 s: neither is ever stale
        at = now + dt.timedelta(seconds=second)
        assert (await writer.run(nodes.beat, "n1", 1, at, TIMEOUT)).released == []
        assert (await writer.run(nodes.beat, "n2", 2, at, TIMEOUT)).released == []
    assert await writer.run(queue.claim, "n2", now + dt.timedelta(seconds=31), HOUR, 100) == []


async def test_a_node_taken_over_hears_so_and_one_whose_name_was_taken_must_stop(
    with_login: Gateway, writer: Writer
) -> None:
    now = dt.datetime.now(dt.UTC)
    await _register(writer, identity("frozen", pid=7), now)
    await _register(writer, identity("other", pid=8), now)
    later = now + dt.timedelta(seconds=TIMEOUT + 1)
    await writer.run(nodes.beat, "other", 8, later, TIMEOUT)
    # The frozen node resumes: it hears who took its leases, and is alive again.
    resumed = await writer.run(nodes.beat, "frozen", 7, later, TIMEOUT)
    assert resumed.taken_over_by == "other"
    assert not resumed.replaced
    # A new process took the name of a stale node: the old one, resuming, must stop.
    await _register(writer, identity("other", pid=9), later + dt.timedelta(seconds=TIMEOUT + 1))
    assert (await writer.run(nodes.beat, "other", 8, later, TIMEOUT)).replaced


async def test_a_second_process_under_a_live_nodes_name_is_refused(
    with_login: Gateway, writer: Writer
) -> None:
    now = dt.datetime.now(dt.UTC)
    assert (await _register(writer, identity("gw1", pid=111), now)).refusal is None

    refused = await _register(writer, identity("gw1", pid=222), now + dt.timedelta(seconds=1.5))

    assert refused.refusal is not None
    assert 'node "gw1" (pid 111 on host elsewhere.example, last heartbeat 1.5 s ago)' in refused.refusal
    assert "node_name" in refused.refusal
    pids = await writer.run(lambda c: [r[0] for r in c.execute(select(NodeRow.pid))])
    assert pids == [111]  # nothing written for the refused one
    # Once its heartbeat is older than node_timeout, the name is free: the record is replaced.
    stale_at = now + dt.timedelta(seconds=TIMEOUT + 1)
    taken = await _register(writer, identity("gw1", pid=222), stale_at)
    assert taken.refusal is None
    assert taken.replaced is not None
    assert taken.replaced.identity.pid == 111


async def test_a_record_of_a_process_on_this_host_that_no_longer_runs_is_replaced_at_once(
    with_login: Gateway, writer: Writer
) -> None:
    now = dt.datetime.now(dt.UTC)
    here = socket.gethostname()
    await _register(writer, identity("gw1", pid=111, host=here), now)
    again = identity("gw1", pid=222, host=here)

    ended = await writer.run(nodes.register, again, now, TIMEOUT, gone=lambda r: r.identity.pid == 111)
    assert ended.refusal is None
    # A stopped node's name is free too, and is no record to take over.
    await writer.run(nodes.stopped, "gw1", 222, now)
    assert (await _register(writer, identity("gw1", pid=333), now)).replaced is None


def settings_for(database_url: str, data_dir: Path, name: str, key_files: list[Path], root: Path) -> Settings:
    return Settings(
        gateway={"data_dir": str(data_dir), "node_name": name, "hostname": "gw.test.example"},
        database={"url": database_url},
        secrets={"token_key_files": [str(p) for p in key_files]},
        mailbox={"maildir_root": str(root)},
    )


async def _start(settings: Settings) -> Nodes:
    node = Nodes(settings)
    try:
        await node.start(load_token_keys(settings.secrets.token_key_files))
    except BaseException:
        await node.writer.close()
        raise
    return node


async def test_nodes_must_share_the_token_keys_and_the_maildir_storage(
    with_login: Gateway, database_url: str, tmp_path: Path
) -> None:
    old, new, alien = tmp_path / "old.key", tmp_path / "new.key", tmp_path / "alien.key"
    for key in (old, new, alien):
        create_token_key(key)
    shared = tmp_path / "shared-mail"
    first = await _start(settings_for(database_url, tmp_path, "a", [old], shared))
    marker = (shared / MARKER).read_text().strip()
    started = [first]
    try:
        # The same storage and keys: welcome; the marker is the first node's.
        started.append(await _start(settings_for(database_url, tmp_path, "b", [old], shared)))
        assert (shared / MARKER).read_text().strip() == marker
        # A key rotation rolls node by node: a new key added after the signing one, then signing.
        started.append(await _start(settings_for(database_url, tmp_path, "c", [old, new], shared)))
        # Another disk at the Maildir root: refused, naming both storages.
        other = tmp_path / "other-mail"
        with pytest.raises(OperationalError, match=f"{other} has no storage marker.*{marker}"):
            await _start(settings_for(database_url, tmp_path, "d", [old], other))
        assert not (other / MARKER).exists()
        (other / MARKER).parent.mkdir(exist_ok=True)
        (other / MARKER).write_text("f" * 32 + "\n")
        with pytest.raises(OperationalError, match=f"is storage f{{32}}, but the running nodes .* {marker}"):
            await _start(settings_for(database_url, tmp_path, "d", [old], other))
        # Keys the others cannot verify with: refused, naming the files to copy; never a key.
        with pytest.raises(OperationalError, match=f"copy node a's key files \\({old}\\)") as refused:
            await _start(settings_for(database_url, tmp_path, "e", [alien], shared))
        assert old.read_text().strip() not in str(refused.value)
        assert alien.read_text().strip() not in str(refused.value)
        # A node with only the new key signs what "a" cannot verify: refused too.
        with pytest.raises(OperationalError, match="reply-token keys differ"):
            await _start(settings_for(database_url, tmp_path, "f", [new], shared))
    finally:
        for node in started:
            await node.stop()
    # All stopped: a node on other storage is no longer refused (it marks nothing the others use).
    lone = await _start(settings_for(database_url, tmp_path, "g", [alien], tmp_path / "third-mail"))
    await lone.stop()
    states = await _shown_states(with_login)
    assert states == {"a": "stopped", "b": "stopped", "c": "stopped", "g": "stopped"}


async def test_a_node_that_looked_before_the_first_marked_the_storage_starts_on_it(
    with_login: Gateway, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes starting at once: b read the Maildir root before a linked its marker, then finds a
    recorded. b must look again, not refuse as if it were on other storage (seen in CI)."""
    key, shared = tmp_path / "k.key", tmp_path / "shared-mail"
    create_token_key(key)
    b = Nodes(settings_for(database_url, tmp_path, "b", [key], shared))
    early = await b.identity(load_token_keys([key]))
    assert early.maildir_marker is None, "b looked before anyone marked the storage"
    first = await _start(settings_for(database_url, tmp_path, "a", [key], shared))
    marker = (shared / MARKER).read_text().strip()

    async def as_read_before(keys: TokenKeys) -> NodeIdentity:
        return early

    monkeypatch.setattr(b, "identity", as_read_before)
    try:
        await b.start(load_token_keys([key]))
        records = {r.name: r.identity.maildir_marker for r in await b.writer.run(nodes.all_nodes)}
        assert records == {"a": marker, "b": marker}
    finally:
        await b.stop()
        await first.stop()


async def _shown_states(gateway: Gateway) -> dict[str, str]:
    result = await asyncio.to_thread(gateway, "nodes", "--json")
    return {row["name"]: row["state"] for row in json.loads(result.stdout)}


async def test_gateway_nodes_lists_state_heartbeat_age_and_version(
    with_login: Gateway, writer: Writer
) -> None:
    now = dt.datetime.now(dt.UTC)
    await _register(writer, identity("gone", pid=1), now - dt.timedelta(seconds=60))
    await _register(writer, identity("up", pid=2), now)
    await _register(writer, identity("done", pid=3), now)
    await writer.run(nodes.stopped, "done", 3, now)

    rows = json.loads((await asyncio.to_thread(with_login, "nodes", "--json")).stdout)
    text = (await asyncio.to_thread(with_login, "nodes")).stdout

    assert [(r["name"], r["state"], r["version"], r["pid"]) for r in rows] == [
        ("done", "stopped", "test", 3),
        ("gone", "stale", "test", 1),
        ("up", "alive", "test", 2),
    ]
    assert rows[1]["heartbeat_age"] >= 60
    assert rows[2]["key_fingerprint"] == key_fingerprint(KEYS)
    assert "gone" in text
    assert "stale" in text
    assert key_fingerprint(KEYS) in text


async def test_a_clean_stop_makes_what_the_node_still_leases_due_for_the_others(
    with_login: Gateway, writer: Writer
) -> None:
    now = _now()
    await _register(writer, identity("leaving", pid=5), now)
    await accept(writer, "gf-a@kunde-a.example", "Abschied")
    assert len(await writer.run(queue.claim, "leaving", _now(), HOUR, 100)) == 2

    released = await writer.run(nodes.stopped, "leaving", 5, _now())

    assert released == nodes.Released("leaving", copies=2, relays=0, runs=0)
    taken = await writer.run(queue.claim, "staying", _now(), 60.0, 100)
    assert len(taken) == 2
    assert not any(job.first_attempt for job in taken)
    # Another process's stop under the name releases nothing.
    assert await writer.run(nodes.stopped, "leaving", 6, _now()) is None


def test_a_node_timeout_shorter_than_two_heartbeats_is_a_configuration_problem(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("[gateway]\nheartbeat_interval = 5\nnode_timeout = 8\n", encoding="utf-8")
    with pytest.raises(ConfigError) as problem:
        load_settings(path, {})
    assert [str(p) for p in problem.value.problems] == [
        "gateway.node_timeout: is 8 s, less than two heartbeats (10 s at heartbeat_interval): one "
        "late heartbeat would make the other nodes take this one's work over; raise node_timeout or lower "
        "heartbeat_interval"
    ]


def test_nodes_marking_one_storage_at_once_agree_on_its_id(tmp_path: Path) -> None:
    """Many nodes starting together on one empty Maildir root: one marks it, every other reads that
    mark, and none finds the marker created but still empty (the race of a create-then-write)."""
    for round_ in range(20):
        root = tmp_path / f"mail-{round_}"
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            ids = list(pool.map(write_marker, [root] * 8))
        assert len(set(ids)) == 1, ids
        assert read_marker(root) == ids[0]
        assert sorted(p.name for p in root.iterdir()) == [MARKER]  # no temporary left behind
