"""The installed ``gateway`` command as a subprocess: serve's start and stop, exit codes, no tracebacks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

GATEWAY = str(Path(sys.executable).parent / "gateway")


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GATEWAY, *args], capture_output=True, text=True, timeout=60, env=env, check=False)


def _wait_for(process: subprocess.Popen[str], text: str, timeout: float = 20) -> str:
    """Read stderr until ``text`` shows up; the gateway logs there."""
    assert process.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"{text!r} not seen in {timeout}s; stderr so far:\n{seen}")


def test_serve_refuses_an_unmigrated_database(tmp_path: Path, empty_database_url: str) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[database]\nurl = "{empty_database_url}"\n', encoding="utf-8")
    result = _run("--config", str(config), "serve")
    assert result.returncode == 1
    assert "run `gateway db upgrade` first" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_needs_the_reply_token_key(config_file: Path) -> None:
    assert _run("--config", str(config_file), "db", "upgrade").returncode == 0
    result = _run("--config", str(config_file), "serve")
    assert result.returncode == 1
    assert "token.key does not exist; create it with `gateway secrets init`" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_starts_and_stops_cleanly_on_sigterm(config_file: Path) -> None:
    # Ports the system picks: the defaults (2587, 2525) may be held by `make run` on the same machine.
    with config_file.open("a", encoding="utf-8") as file:
        file.write(
            "\n[listeners.submission]\nport = 0\n\n[listeners.mx]\nport = 0\n"
            "\n[listeners.admin_http]\nport = 0\n"
        )
    assert _run("--config", str(config_file), "secrets", "init").returncode == 0
    with subprocess.Popen(
        [GATEWAY, "--config", str(config_file), "serve"], stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            _wait_for(process, "gateway ready")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
            assert process.stderr is not None
            assert "gateway stopped" in process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (("release", "create", "X"), 2, "Missing option '-p' / '--portfolio'"),
        (("portfolio", "show", "nope"), 2, "there is no portfolio 'nope'"),
        (("directory", "load", "/nonexistent.yaml"), 2, "cannot read /nonexistent.yaml"),
        (("frobnicate",), 2, "No such command 'frobnicate'"),
    ],
)
def test_exit_status_and_messages(
    config_file: Path, args: tuple[str, ...], status: int, message: str
) -> None:
    result = _run("--config", str(config_file), *args)
    assert result.returncode == status, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_broken_config_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[listeners.mx]\nport = "many"\n\n[limits]\nmax_recipients = -3\n', encoding="utf-8")
    result = _run("config", "check", str(config))
    assert result.returncode == 2
    assert "listeners.mx.port" in result.stderr
    assert "limits.max_recipients" in result.stderr
    assert "Traceback" not in result.stderr
    # The same problems stop every other command before it touches anything.
    result = _run("--config", str(config), "portfolio", "list")
    assert result.returncode == 2
    assert "listeners.mx.port" in result.stderr


def test_environment_overrides_reach_config_check(tmp_path: Path) -> None:
    env = dict(os.environ, GATEWAY_LIMITS__MAX_RECIPIENTS="7")
    example = Path(__file__).parents[2] / "config" / "gateway.toml"
    result = _run("config", "check", str(example), "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert '"max_recipients": 7' in result.stdout
