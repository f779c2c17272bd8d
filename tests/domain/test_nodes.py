"""Which nodes may run side by side, and in which state each is (gateway.domain.nodes)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from gateway.domain.nodes import (
    NodeIdentity,
    NodeRecord,
    NodeState,
    marker_wanted,
    stale_nodes,
    start_refusal,
    worker_names,
)

NOW = dt.datetime(2026, 12, 7, 15, 0, tzinfo=dt.UTC)
TIMEOUT = 10.0


def me(name: str = "gw1", keys: tuple[str, ...] = ("old",), marker: str | None = "disk") -> NodeIdentity:
    return NodeIdentity(
        name=name,
        pid=1,
        host="h1",
        version="1",
        key_ids=keys,
        key_fingerprint="+".join(keys),
        key_files=tuple(f"/etc/{k}.key" for k in keys),
        maildir_marker=marker,
        maildir_root="/srv/mail",
    )


def record(identity: NodeIdentity, age: float = 0.0, state: NodeState = NodeState.ALIVE) -> NodeRecord:
    beat = NOW - dt.timedelta(seconds=age)
    return NodeRecord(identity, state, beat, beat)


@pytest.mark.parametrize(
    ("age", "state", "shown"),
    [
        (0.0, NodeState.ALIVE, NodeState.ALIVE),
        (TIMEOUT, NodeState.ALIVE, NodeState.ALIVE),
        (TIMEOUT + 0.1, NodeState.ALIVE, NodeState.STALE),
        (0.0, NodeState.STALE, NodeState.STALE),
        (99.0, NodeState.STOPPED, NodeState.STOPPED),
    ],
)
def test_shown_state(age: float, state: NodeState, shown: NodeState) -> None:
    assert record(me(), age, state).shown_state(NOW, TIMEOUT) is shown


def test_one_live_process_per_name() -> None:
    other = dataclasses.replace(me(), pid=2, host="h2")
    assert "pid 2 on host h2, last heartbeat 3.0 s ago" in str(
        start_refusal(me(), [record(other, 3.0)], NOW, TIMEOUT)
    )
    assert start_refusal(me(), [record(other, 11.0)], NOW, TIMEOUT) is None
    assert start_refusal(me(), [record(other, 0.0, NodeState.STOPPED)], NOW, TIMEOUT) is None
    assert start_refusal(me(), [record(other, 1.0)], NOW, TIMEOUT, gone={"gw1"}) is None


@pytest.mark.parametrize(
    ("mine", "theirs", "allowed"),
    [
        (("old",), ("old",), True),
        (("old", "new"), ("old",), True),  # rotation, step 1: the new key verifies only
        (("new", "old"), ("old", "new"), True),  # step 2: signing with the new key, one node at a time
        (("new",), ("old", "new"), False),  # dropping the old key while another node signs with it
        (("new", "old"), ("old",), False),  # signing with a key the other cannot verify
        (("alien",), ("old",), False),
    ],
)
def test_each_node_must_verify_what_the_other_signs(
    mine: tuple[str, ...], theirs: tuple[str, ...], allowed: bool
) -> None:
    refusal = start_refusal(me(keys=mine), [record(me("gw2", keys=theirs))], NOW, TIMEOUT)
    assert (refusal is None) is allowed
    if refusal is not None:
        assert "copy node gw2's key files (" + ", ".join(f"/etc/{k}.key" for k in theirs) + ")" in refusal


def test_stale_or_stopped_nodes_do_not_vote_on_keys_or_storage() -> None:
    others = [
        record(me("gw2", keys=("alien",), marker="x"), 60.0),
        record(me("gw3", marker="y"), 0, NodeState.STOPPED),
    ]
    assert start_refusal(me(), others, NOW, TIMEOUT) is None


def test_the_maildir_storage_must_be_the_live_nodes() -> None:
    live = [record(me("gw2", marker="disk"))]
    assert start_refusal(me(marker="disk"), live, NOW, TIMEOUT) is None
    assert "is storage other" in str(start_refusal(me(marker="other"), live, NOW, TIMEOUT))
    assert "has no storage marker" in str(start_refusal(me(marker=None), live, NOW, TIMEOUT))
    imap = dataclasses.replace(me(marker=None), maildir_root=None)
    assert start_refusal(imap, live, NOW, TIMEOUT) is None


def test_only_the_first_node_on_a_storage_writes_its_marker() -> None:
    assert marker_wanted(me(marker=None), [], NOW, TIMEOUT)
    assert not marker_wanted(me(marker=None), [record(me("gw2", marker="disk"))], NOW, TIMEOUT)
    assert marker_wanted(me(marker=None), [record(me("gw2", marker="disk"), 60.0)], NOW, TIMEOUT)
    assert not marker_wanted(me(marker="disk"), [], NOW, TIMEOUT)


def test_stale_nodes_are_the_other_nodes_recorded_alive_and_silent() -> None:
    records = [
        record(me("gw1"), 60.0),  # this node itself: never its own take-over
        record(me("gw2"), 60.0),
        record(me("gw3"), 1.0),
        record(me("gw4"), 60.0, NodeState.STALE),  # taken over already
        record(me("gw5"), 60.0, NodeState.STOPPED),
    ]
    assert stale_nodes("gw1", records, NOW, TIMEOUT) == ["gw2"]


def test_worker_names() -> None:
    assert worker_names("mx1", 3) == ["mx1-1", "mx1-2", "mx1-3"]
