"""`gateway serve` does not take replies unauthenticated from the open network (issue 13, item 9): with
the MX listener on a public address, a portfolio whose sender_auth is off stops the start with a clear
message; a border MTA that authenticates (``[replies] border_mta_authenticates``) lets it start."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import GATEWAY, prepare


def test_serve_refuses_off_on_an_exposed_mx_and_says_what_to_do(tmp_path: Path, database_url: str) -> None:
    gateway = prepare(tmp_path, database_url)
    env = os.environ | {"GATEWAY_LISTENERS__MX__HOST": "0.0.0.0"}
    result = subprocess.run(
        [GATEWAY, "--config", str(gateway.config), "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "not starting: sender_auth is off for portfolio(s) makler-muster" in result.stderr
    assert "border_mta_authenticates = true" in result.stderr
    assert "listening" not in result.stderr


def test_serve_starts_behind_a_border_mta_that_authenticates(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = prepare(tmp_path, database_url)
    monkeypatch.setenv("GATEWAY_LISTENERS__MX__HOST", "0.0.0.0")
    monkeypatch.setenv("GATEWAY_REPLIES__BORDER_MTA_AUTHENTICATES", "true")
    try:
        gateway.start()
        assert gateway.mx_port
    finally:
        if gateway.process is not None:
            gateway.stop()
