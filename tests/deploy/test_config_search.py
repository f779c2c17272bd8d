"""Where ``gateway`` finds its configuration: ``--config``, ``$GATEWAY_CONFIG``, ``./config/gateway.toml``,
``/etc/vorgang-gateway/gateway.toml``, in that order, and saying which it used."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import DEFAULT_CONFIG_PATH, SYSTEM_CONFIG_PATH, find_config

GATEWAY = str(Path(sys.executable).parent / "gateway")
GIVEN = Path("given.toml")
ENVIRONMENT = {"GATEWAY_CONFIG": "/srv/from-env.toml"}


def existing(*paths: Path) -> Callable[[Path], bool]:
    return lambda path: path in paths


def test_config_option_wins_over_everything() -> None:
    found = find_config(GIVEN, ENVIRONMENT, existing(DEFAULT_CONFIG_PATH, SYSTEM_CONFIG_PATH))
    assert (found.path, found.found_by, found.found) == (GIVEN, "--config", True)


def test_the_variable_wins_over_both_places_even_when_its_file_is_missing() -> None:
    # A typo in $GATEWAY_CONFIG must be reported, not quietly replaced by another file.
    found = find_config(None, ENVIRONMENT, existing(DEFAULT_CONFIG_PATH, SYSTEM_CONFIG_PATH))
    assert (found.path, found.found_by) == (Path("/srv/from-env.toml"), "$GATEWAY_CONFIG")


def test_an_empty_variable_counts_as_unset() -> None:
    found = find_config(None, {"GATEWAY_CONFIG": " "}, existing(SYSTEM_CONFIG_PATH))
    assert found.path == SYSTEM_CONFIG_PATH


def test_the_checkout_config_comes_before_the_system_one() -> None:
    found = find_config(None, {}, existing(DEFAULT_CONFIG_PATH, SYSTEM_CONFIG_PATH))
    assert (found.path, found.found_by) == (DEFAULT_CONFIG_PATH, "found at ./config/gateway.toml")


def test_the_system_config_when_there_is_no_checkout_config() -> None:
    found = find_config(None, {}, existing(SYSTEM_CONFIG_PATH))
    assert Path("/etc/vorgang-gateway/gateway.toml") == SYSTEM_CONFIG_PATH
    assert (found.path, found.found_by) == (SYSTEM_CONFIG_PATH, "found at /etc/vorgang-gateway/gateway.toml")


def test_nothing_found() -> None:
    assert not find_config(None, {}, existing()).found


def run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(cwd)} | (env or {})
    return subprocess.run(
        [GATEWAY, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=60, check=False
    )


def write_config(path: Path, hostname: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[gateway]\nhostname = "{hostname}"\ndata_dir = "data"\n', encoding="utf-8")


@pytest.mark.skipif(SYSTEM_CONFIG_PATH.exists(), reason="this machine has a system-wide configuration")
def test_config_check_says_which_file_it_used(tmp_path: Path) -> None:
    write_config(tmp_path / "config" / "gateway.toml", "checkout.example")
    write_config(tmp_path / "elsewhere.toml", "elsewhere.example")

    result = run(tmp_path, "config", "check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        f"# {tmp_path}/config/gateway.toml (found at ./config/gateway.toml): valid"
    )
    assert 'gateway.hostname = "checkout.example"' in result.stdout

    result = run(tmp_path, "config", "check", env={"GATEWAY_CONFIG": str(tmp_path / "elsewhere.toml")})
    assert result.stdout.splitlines()[0] == f"# {tmp_path}/elsewhere.toml ($GATEWAY_CONFIG): valid"
    assert 'gateway.hostname = "elsewhere.example"' in result.stdout

    result = run(tmp_path, "--config", "elsewhere.toml", "config", "check", "--json")
    assert '"found_by": "--config"' in result.stdout


@pytest.mark.skipif(SYSTEM_CONFIG_PATH.exists(), reason="this machine has a system-wide configuration")
def test_no_configuration_anywhere_is_an_input_error_naming_the_places(tmp_path: Path) -> None:
    result = run(tmp_path, "db", "status")
    assert result.returncode == 2
    assert result.stderr.startswith("gateway: error: no configuration file:")
    assert "  ./config/gateway.toml: no such file" in result.stderr
    assert "  /etc/vorgang-gateway/gateway.toml: no such file" in result.stderr
    assert "gateway init DIR" in result.stderr
    assert "Traceback" not in result.stderr
