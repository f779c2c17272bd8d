"""The wheel as an admin installs it: built from this checkout, installed into a fresh virtual environment,
and ``gateway init``, ``config check``, ``db upgrade`` run from there.

Offline and quick: the wheel is built without build isolation (the dev extra brings setuptools), and the
fresh environment gets the dependencies from this environment's site-packages through a ``.pth`` line
instead of downloading them; the package itself comes only from the wheel (checked: ``gateway`` is
imported from the fresh environment, and this checkout's editable install is not visible there).
"""

from __future__ import annotations

import email
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).parent.parent.parent
PIP = [sys.executable, "-m", "pip"]


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "PIP_NO_INDEX": "1"} | env
    result = subprocess.run(args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run([*PIP, "wheel", str(REPOSITORY), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)], out)
    (built,) = out.glob("vorgang_gateway-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed; returns its bin/ folder."""
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], venv)
    purelib = run(
        [str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], venv
    ).stdout.strip()
    (Path(purelib) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([*PIP, "--python", str(venv / "bin/python"), "install", "-q", "--no-deps", str(wheel)], venv)
    return venv / "bin"


def test_the_wheel_ships_the_example_set_and_no_passwords(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        shipped = archive.read("gateway/config/example/directory.yaml").decode()
    assert {
        "gateway/config/example/gateway.toml",
        "gateway/config/example/directory.yaml",
        "gateway/config/example/rules/example.yaml",
        "gateway/db/migrations/versions/0001_initial_schema.py",
    } <= names
    # Real files, not the repository's links to them.
    assert shipped == (REPOSITORY / "config/example/directory.yaml").read_text()
    assert not [name for name in names if name.endswith(".password")]


def test_the_postgresql_drivers_are_an_extra(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (metadata_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(metadata_name))
    requirements = metadata.get_all("Requires-Dist") or []
    base = [r for r in requirements if "extra ==" not in r]
    assert not [r for r in base if r.lower().startswith(("asyncpg", "psycopg"))]
    assert "postgresql" in (metadata.get_all("Provides-Extra") or [])
    extra = [r.split(";")[0].strip() for r in requirements if 'extra == "postgresql"' in r]
    assert sorted(r.split(">")[0].split("[")[0] for r in extra) == ["asyncpg", "psycopg"]


def test_init_check_and_upgrade_from_the_installed_wheel(installed: Path, tmp_path: Path) -> None:
    gateway = str(installed / "gateway")
    where = run([str(installed / "python"), "-c", "import gateway; print(gateway.__file__)"], tmp_path)
    assert where.stdout.startswith(str(installed.parent)), "the package comes from the wheel"

    # A site laid out as a checkout: `gateway` finds ./config/gateway.toml without --config.
    result = run([gateway, "init", "config"], tmp_path)
    assert "wrote config/gateway.toml" in result.stdout
    result = run([gateway, "config", "check"], tmp_path)
    assert result.stdout.splitlines()[0] == (
        f"# {tmp_path}/config/gateway.toml (found at ./config/gateway.toml): valid"
    )
    assert f'gateway.data_dir = "{tmp_path}/config/data"' in result.stdout
    result = run([gateway, "db", "upgrade"], tmp_path)
    assert result.stdout.startswith("database migrated from empty to ")
    run([gateway, "secrets", "init"], tmp_path)
    result = run([gateway, "directory", "load", "config/directory.yaml"], tmp_path)
    assert "makler-muster" in result.stdout
    result = run([gateway, "rules", "check"], tmp_path)
    result = run([gateway, "db", "status"], tmp_path)
    assert result.stdout.startswith("database is up to date")
