"""The systemd unit in deploy/: it verifies with ``systemd-analyze verify`` and has the options docs/deploy.md
promises (an unprivileged user, hardening, SIGHUP for the rules, a stop timeout above the shutdown grace)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

from gateway.service import SHUTDOWN_GRACE

UNIT = Path(__file__).parent.parent.parent / "deploy" / "vorgang-gateway.service"
INSTALLED_GATEWAY = "/opt/vorgang-gateway/bin/gateway"


def service_section() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=True, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser["Service"]


def test_the_unit_verifies(tmp_path: Path) -> None:
    # systemd-analyze checks that ExecStart's program exists: point it at this environment's gateway,
    # the one change made to the file (the installed path is checked below).
    systemd_analyze = shutil.which("systemd-analyze")
    assert systemd_analyze is not None, "scripts/install-debian-packages.sh installs systemd"
    text = UNIT.read_text(encoding="utf-8")
    assert text.count(INSTALLED_GATEWAY) == 1
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(INSTALLED_GATEWAY, str(Path(sys.executable).parent / "gateway")))
    result = subprocess.run(
        [systemd_analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Unknown keys or sections in the wrong place are only warnings: the output must be empty too.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_unit_runs_the_gateway_unprivileged_and_hardened() -> None:
    service = service_section()
    assert service["ExecStart"] == f"{INSTALLED_GATEWAY} serve"
    assert service["User"] == service["Group"] == "vorgang-gateway"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/vorgang-gateway"
    assert service["StateDirectory"] == "vorgang-gateway"
    assert service["PrivateTmp"] == "yes"
    assert service["CapabilityBoundingSet"] == ""


def test_the_unit_reloads_rules_on_sighup_and_restarts_on_failure() -> None:
    service = service_section()
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    # A bad configuration (exit status 2) is not retried.
    assert service["RestartPreventExitStatus"] == "2"


def test_the_stop_timeout_is_above_the_shutdown_grace() -> None:
    # Shutdown waits up to the grace three times: messages in DATA, storing what is queued, stages ending.
    timeout = service_section()["TimeoutStopSec"]
    assert timeout.isdigit()
    assert int(timeout) > 3 * SHUTDOWN_GRACE
