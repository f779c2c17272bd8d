"""CPU seconds per test and per test module, for keeping the suite fast (issue 14, item 7).

With ``GATEWAY_TEST_CPU=/some/prefix`` set, every pytest process (each xdist worker) appends one JSON
line per test to ``<prefix>.<worker>.jsonl``: the test's id, its module, its wall seconds and its CPU
seconds (user and system, this process and the children it waited for in that time, such as ``gateway
serve``, Dovecot and chromium; fixture setup and teardown count to the test that ran them), and how many
``gateway serve`` processes it started (``RunningGateway.launch`` counts them in ``STARTS``). Wall time
on a shared machine says little; CPU seconds compare runs. ``python -m tests.cpu <prefix>`` sums them
by module (or by folder with ``--by folder``), heaviest first.

What it cannot see: the PostgreSQL server's own CPU, and children still running when a test ends (a
session-scoped gateway counts to the test whose teardown stops it).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import preloaded

VARIABLE = "GATEWAY_TEST_CPU"

STARTS = [0]
"""``gateway serve`` processes this pytest process started so far (one item, so that it can be counted)."""


def _cpu() -> float:
    now = os.times()
    return now.user + now.system + now.children_user + now.children_system + preloaded.CHILD_CPU[0]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    prefix = os.environ.get(VARIABLE)
    if not prefix:
        yield
        return
    cpu, wall, starts = _cpu(), time.monotonic(), STARTS[0]
    yield
    record = {
        "test": item.nodeid,
        "module": item.nodeid.split("::")[0],
        "cpu": round(_cpu() - cpu, 3),
        "wall": round(time.monotonic() - wall, 3),
        "starts": STARTS[0] - starts,
    }
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(f"{prefix}.{worker}.jsonl", "a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", help="the GATEWAY_TEST_CPU of the run")
    parser.add_argument("--by", choices=("module", "folder", "test"), default="module")
    parser.add_argument("--top", type=int, default=60)
    options = parser.parse_args()
    cpu: dict[str, float] = defaultdict(float)
    wall: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    starts: dict[str, int] = defaultdict(int)
    prefix = Path(options.prefix)
    for path in sorted(prefix.parent.glob(prefix.name + ".*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            key = {"module": record["module"], "test": record["test"]}.get(
                options.by, record["module"].rpartition("/")[0]
            )
            cpu[key] += record["cpu"]
            wall[key] += record["wall"]
            count[key] += 1
            starts[key] += record.get("starts", 0)
    print(f"{'cpu s':>8} {'wall s':>8} {'tests':>6} {'starts':>6}  {options.by}")
    for key in sorted(cpu, key=cpu.__getitem__, reverse=True)[: options.top]:
        print(f"{cpu[key]:8.1f} {wall[key]:8.1f} {count[key]:6d} {starts[key]:6d}  {key}")
    print(
        f"{sum(cpu.values()):8.1f} {sum(wall.values()):8.1f} {sum(count.values()):6d} "
        f"{sum(starts.values()):6d}  total"
    )


if __name__ == "__main__":
    main()
