"""The files a configuration names: TLS certificates and keys that must exist, `gateway tls selfsigned`
writing where the configuration reads, and a database password kept in a file (issue 16, items 6, 8)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from gateway.config import load_settings
from gateway.errors import ConfigError
from tests.conftest import Gateway

REPOSITORY = Path(__file__).resolve().parent.parent.parent


def _config(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gateway.toml"
    path.write_text(f'[database]\nurl = "sqlite+aiosqlite:///{folder / "gw.db"}"\n{text}', encoding="utf-8")
    return path


def test_config_check_names_a_missing_tls_file_with_the_path_resolved_from_the_config(tmp_path: Path) -> None:
    config = _config(
        tmp_path / "etc",
        '[listeners.submission]\ntls_cert = "tls/cert.pem"\ntls_key = "tls/key.pem"\n',
    )
    result = Gateway(config)("config", "check", expect=2)
    folder = tmp_path / "etc"
    assert f"listeners.submission.tls_cert: {folder / 'tls' / 'cert.pem'} does not exist" in result.stderr
    assert f"listeners.submission.tls_key: {folder / 'tls' / 'key.pem'} does not exist" in result.stderr
    assert f"read from {folder}" in result.stderr
    # serve refuses to start the same way, before it binds anything.
    served = Gateway(config)("serve", expect=2)
    assert "listeners.submission.tls_cert" in served.stderr


def test_tls_selfsigned_writes_where_the_configuration_reads_and_config_check_then_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    config = _config(folder, '[listeners.mx]\ntls_cert = "tls/cert.pem"\ntls_key = "tls/key.pem"\n')
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a working directory that is not the configuration's folder
    wrote = Gateway(config)("tls", "selfsigned")
    assert (folder / "tls" / "cert.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert (folder / "tls" / "key.pem").stat().st_mode & 0o077 == 0, "the key is private"
    assert not (elsewhere / "tls").exists()
    assert 'tls_cert = "tls/cert.pem"' in wrote.stdout
    Gateway(config)("config", "check")
    again = Gateway(config)("tls", "selfsigned", expect=2)
    assert "exists already" in again.stderr


def test_gitignore_covers_what_tls_selfsigned_writes_by_default() -> None:
    for path in ("config/tls/key.pem", "config/tls/cert.pem"):
        ignored = subprocess.run(
            ["git", "-C", str(REPOSITORY), "check-ignore", "-q", "--no-index", path], check=False
        )
        assert ignored.returncode == 0, f"{path} is not ignored"


def test_a_database_password_comes_from_a_file_and_is_never_shown(tmp_path: Path, database_url: str) -> None:
    if database_url.startswith("sqlite"):
        # SQLite has no password: the setting is refused for it.
        config = tmp_path / "gateway.toml"
        config.write_text(f'[database]\nurl = "{database_url}"\npassword_file = "db.password"\n')
        result = Gateway(config)("config", "check", expect=2)
        assert "database.password_file: is only for a database server" in result.stderr
        return
    secret = "s3cret-Datenbank"
    (tmp_path / "db.password").write_text(secret + "\n", encoding="utf-8")
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "data"\n[database]\nurl = "{database_url}"\npassword_file = "db.password"\n',
        encoding="utf-8",
    )
    settings = load_settings(config, {})
    assert make_url(settings.database_url).password == secret, "merged into the URL the engine gets"
    gateway = Gateway(config)
    for args in (("config", "check"), ("config", "check", "--json"), ("db", "status")):
        result = gateway(*args)
        assert secret not in result.stdout + result.stderr
    shown = json.loads(gateway("config", "check", "--json").stdout)
    assert shown["database"]["password_file"] == str(tmp_path / "db.password")
    assert make_url(shown["database"]["url"]).password == "***"

    # A password in the URL as well is refused; so is a file that is not there or empty.
    config.write_text(config.read_text().replace("postgres@", "postgres:x@"), encoding="utf-8")
    both = gateway("config", "check", expect=2)
    assert "keep the password in one place" in both.stderr
    config.write_text(config.read_text().replace("postgres:x@", "postgres@"), encoding="utf-8")
    (tmp_path / "db.password").write_text("\n", encoding="utf-8")
    empty = gateway("db", "status", expect=2)
    assert f"database.password_file: {tmp_path / 'db.password'} is empty" in empty.stderr
    (tmp_path / "db.password").unlink()
    missing = gateway("config", "check", expect=2)
    assert "database.password_file: cannot read" in missing.stderr


def test_the_environment_examples_in_the_example_configuration_name_real_settings() -> None:
    text = (REPOSITORY / "config" / "gateway.toml").read_text(encoding="utf-8")
    examples = re.findall(r"(GATEWAY_[A-Z_]+__[A-Z_]+(?:__[A-Z_]+)?)=(\S+)", text)
    assert len(examples) >= 3
    for name, value in examples:
        settings = load_settings(None, {name: value.strip("'")})  # a ConfigError names a wrong one
        assert settings is not None
    # and a misspelt one is refused, so the loop above proves something
    with pytest.raises(ConfigError):
        load_settings(None, {"GATEWAY_DOMAINS__INTAKE_ADDRESSES": '["intake@broker.example"]'})


def test_backoffice_password_if_missing_sets_it_once(seeded: Gateway, tmp_path: Path) -> None:
    """`make run` runs this on every start: the first sets the password, later ones change nothing."""
    first, second = tmp_path / "first.password", tmp_path / "second.password"
    first.write_text("erstes-Passwort-42\n", encoding="utf-8")
    second.write_text("zweites-Passwort-42\n", encoding="utf-8")
    args = ("backoffice", "password", "ams", "-p", "makler-muster", "--if-missing", "--password-file")
    assert "created login ams@makler-muster.example" in seeded(*args, str(first)).stdout
    kept = seeded(*args, str(second)).stdout
    assert "kept the password of login ams@makler-muster.example" in kept
    events = json.loads(seeded("events", "--kind", "backoffice.password", "--json").stdout)
    assert len(events) == 1, "a start that keeps the password records nothing"
    # Without --if-missing the password is changed, as before.
    changed = seeded("backoffice", "password", "ams", "-p", "makler-muster", "--password-file", str(second))
    assert "changed login" in changed.stdout
    assert len(json.loads(seeded("events", "--kind", "backoffice.password", "--json").stdout)) == 2
