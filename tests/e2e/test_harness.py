"""The e2e helpers themselves: what they leave behind when a gateway does not come up."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import prepare


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_gateway_that_is_not_ready_in_time_is_not_left_running(tmp_path: Path, database_url: str) -> None:
    # On a busy machine a start can take longer than its timeout; the fixture's cleanup never runs for
    # a start that raised, so a process left behind would serve (and cost CPU) until the run ends.
    gateway = prepare(tmp_path, database_url)
    with pytest.raises(AssertionError, match="gateway did not start"):
        gateway.start(timeout=0)
    assert gateway.process is not None
    assert gateway.process.poll() is not None, "the process was ended"
