"""The e2e helpers themselves: what they leave behind when a gateway does not come up."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests import preloaded
from tests.e2e.conftest import GATEWAY, prepare
from tests.preloaded import PreloadedProcess


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_gateway_that_is_not_ready_in_time_is_not_left_running(tmp_path: Path, database_url: str) -> None:
    # On a busy machine a start can take longer than its timeout; the fixture's cleanup never runs for
    # a start that raised, so a process left behind would serve (and cost CPU) until the run ends.
    gateway = prepare(tmp_path, database_url)
    with pytest.raises(AssertionError, match="gateway did not start"):
        gateway.start(timeout=0)
    assert gateway.process is not None
    assert gateway.process.poll() is not None, "the process was ended"


def test_a_preloaded_gateway_answers_as_a_fresh_one(tmp_path: Path) -> None:
    # tests/preloaded.py forks `gateway` from a process that imported it: what it prints, its exit
    # status, its environment and working directory must be those of `gateway` started by exec.
    (tmp_path / "gateway.toml").write_text("[gateway]\nno_such_setting = 1\n", encoding="utf-8")
    fresh = subprocess.run(
        [GATEWAY, "--config", "gateway.toml", "serve"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        forked = PreloadedProcess([GATEWAY, "--config", "gateway.toml", "serve"], os.environ)
    finally:
        os.chdir(here)
    assert forked.stderr is not None
    with forked.stderr:
        assert forked.wait(timeout=60) == fresh.returncode == 2
        assert forked.stderr.read() == fresh.stderr
        assert "no_such_setting" in fresh.stderr, "the file was found in the working directory"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_preloaded_gateway_stops_on_signals_and_its_cpu_is_counted(
    tmp_path: Path, database_url: str
) -> None:
    gateway = prepare(tmp_path, database_url)
    gateway.launch(env={"GATEWAY_GATEWAY__NODE_NAME": "preloaded-node"})
    gateway.wait_ready()
    assert isinstance(gateway.process, PreloadedProcess)
    assert any("node preloaded-node recorded" in line for line in gateway.log), "its own environment"
    assert gateway.process.poll() is None
    counted = preloaded.CHILD_CPU[0]
    assert gateway.stop(signal.SIGKILL) == -signal.SIGKILL
    assert preloaded.CHILD_CPU[0] - counted > 0.1, "a start's CPU time counts to the test (tests/cpu.py)"
    again = gateway.restarted()
    assert again.stop() == 0, "SIGTERM: a clean stop"
    # The preloader ignores SIGINT (Ctrl-C ends the test process, and so the preloader); a gateway it
    # forked must not.
    assert gateway.restarted().stop(signal.SIGINT) == 0, "SIGINT: a clean stop too"
