"""The directory's reply settings: a portfolio's sender_auth, a back office's relay; SQLite and PostgreSQL.

Files (line-precise problems, relative password files, export round trips, change detection and the event
log), the single commands, the reads the reply path uses, and migration 0004 on a database with data.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import select, text
from sqlalchemy.engine import Connection

from gateway.admin.directory_file import dump_directory, parse_directory, read_directory_file
from gateway.db.directory import RelayTarget, portfolio_policy, relay_target
from gateway.db.engine import create_engine
from gateway.db.migrate import alembic_config, upgrade
from gateway.db.models import BackOfficeRow, EventRow, PortfolioRow
from gateway.domain.directory import (
    DEFAULT_SENDER_AUTH,
    RELAY_PORT,
    RELAY_TIMEOUT,
    RELAY_TLS,
    RelaySpec,
    RelayTls,
    SenderAuth,
)
from gateway.errors import DirectoryFileError, NotFound
from tests.conftest import EXAMPLE_DIRECTORY, Gateway

P = ("-p", "makler-muster")

HEAD = """\
version: 1
portfolios:
  - name: p
    backoffices:
      - name: ams
"""


def _problems(tmp_path: Path, content: str) -> list[str]:
    path = tmp_path / "dir.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DirectoryFileError) as caught:
        read_directory_file(path)
    return [str(problem).replace(str(path), "FILE") for problem in caught.value.problems]


# --- the file format ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relay", "expected"),
    [
        (
            "        relay: {host: h, user: gw}\n",
            "FILE:6: unknown key 'user' in a relay "
            "(known keys: host, port, tls, login, password_file, timeout)",
        ),
        ("        relay:\n          port: 25\n", "FILE:7: a relay lacks the required key 'host'"),
        ("        relay: {host: h, port: smtp}\n", "FILE:6: relay port must be a whole number, like 25"),
        (
            "        relay:\n          host: h\n          port: 70000\n",
            "FILE:8: relay port 70000 is not a TCP port",
        ),
        ("        relay: {host: h, port: true}\n", "FILE:6: relay port must be a whole number"),
        (
            "        relay:\n          host: h\n          tls: ssl\n",
            "FILE:8: relay tls 'ssl' is not one of none, starttls, tls",
        ),
        (
            "        relay:\n          host: h\n          login: gw\n",
            "FILE:8: the relay has a login but no password file",
        ),
        (
            "        relay:\n          host: h\n          password_file: /run/secrets/relay\n",
            "FILE:8: the relay has a password file but no login",
        ),
        (
            "        relay:\n          host: h\n          timeout: 2.5\n",
            "FILE:8: relay timeout (seconds) must be a whole number, like 30",
        ),
        (
            "        relay:\n          host: h\n          timeout: 3600\n",
            "FILE:8: relay timeout 3600 must be 1 to 600 seconds",
        ),
        ("        relay:\n          host: smtp.bo.example:587\n", "FILE:7: relay host 'smtp.bo.example:587'"),
        ("        relay: [h, 25]\n", "FILE:6: a relay must be a mapping of keys to values"),
    ],
)
def test_relay_problems_name_the_file_and_line(tmp_path: Path, relay: str, expected: str) -> None:
    problems = _problems(tmp_path, HEAD + relay)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems


def test_every_relay_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    content = (
        HEAD
        + "        relay:\n          host: h\n          port: 0\n          tls: ssl\n          login: gw\n"
    )
    assert [p.split(": ", 1)[0] for p in _problems(tmp_path, content)] == ["FILE:8", "FILE:9", "FILE:10"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("strict", "FILE:3: sender_auth 'strict' is not one of off, trust-authentication-results, verify"),
        ("false", "FILE:3: sender_auth 'false' is not one of"),
        ("[off]", "FILE:3: sender_auth must be a text value"),
    ],
)
def test_a_bad_sender_auth_names_the_line_and_the_choices(tmp_path: Path, value: str, expected: str) -> None:
    problems = _problems(tmp_path, f"portfolios:\n  - name: p\n    sender_auth: {value}\n")
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems


@pytest.mark.parametrize("value", ["off", "'off'", "trust-authentication-results", "verify"])
def test_sender_auth_values_including_yaml_1_1s_off(value: str) -> None:
    spec = parse_directory(f"portfolios:\n  - name: p\n    sender_auth: {value}\n")
    assert spec.portfolios[0].sender_auth == SenderAuth(value.strip("'"))


def test_defaults_no_relay_and_sender_auth_off() -> None:
    spec = parse_directory(HEAD + "        relay: {host: smtp.bo.example}\n      - name: other\n")
    portfolio = spec.portfolios[0]
    assert portfolio.sender_auth is SenderAuth.OFF
    assert portfolio.backoffices[0].relay == RelaySpec("smtp.bo.example", 25, RelayTls.STARTTLS, "", "", 30)
    assert portfolio.backoffices[1].relay is None


def test_a_relative_password_file_is_relative_to_the_directory_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "dir.yaml"
    relay = "        relay: {host: h, login: gw, password_file: ../secrets/relay.pw}\n"
    path.write_text(HEAD + relay, encoding="utf-8")
    spec = read_directory_file(path)
    assert spec.portfolios[0].backoffices[0].relay == RelaySpec(
        "h", login="gw", password_file=str(tmp_path / "secrets" / "relay.pw")
    )
    absolute = "        relay: {host: h, login: gw, password_file: /run/secrets/relay.pw}\n"
    path.write_text(HEAD + absolute, encoding="utf-8")
    relay_spec = read_directory_file(path).portfolios[0].backoffices[0].relay
    assert relay_spec is not None
    assert relay_spec.password_file == "/run/secrets/relay.pw"


def test_dump_and_parse_give_the_same_reply_settings() -> None:
    text_ = HEAD.replace("  - name: p\n", "  - name: p\n    sender_auth: verify\n") + (
        "        relay: {host: h, port: 465, tls: tls, login: gw, password_file: /s/pw, timeout: 60}\n"
        "      - name: other\n"
    )
    spec = parse_directory(text_)
    again = parse_directory(dump_directory(spec))
    assert again.portfolios[0].sender_auth == SenderAuth.VERIFY
    assert [b.relay for b in again.portfolios[0].backoffices] == [
        b.relay for b in spec.portfolios[0].backoffices
    ]
    assert "password" not in dump_directory(spec).replace("password_file", "")


# --- loading, exporting and the event log ------------------------------------------------------------------


EXAMPLE_RELAY = "        relay: {host: 127.0.0.1, port: 2526, tls: none}\n"


def _with_relay(tmp_path: Path, relay: str, sender_auth: str = "off") -> Path:
    """The example directory with another relay line for its back office ("" for none)."""
    content = EXAMPLE_DIRECTORY.read_text(encoding="utf-8")
    assert EXAMPLE_RELAY in content
    assert "    sender_auth: off\n" in content
    content = content.replace(EXAMPLE_RELAY, relay)
    content = content.replace("    sender_auth: off\n", f"    sender_auth: {sender_auth}\n")
    path = tmp_path / "dir.yaml"
    path.write_text(content, encoding="utf-8")
    return path


async def _events(database_url: str, kind: str) -> list[tuple[str, dict[str, Any]]]:
    """(actor, detail) of the logged events of one kind."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(EventRow.actor, EventRow.detail).where(EventRow.kind == kind).order_by(EventRow.id)
            )
            return [(row.actor, row.detail) for row in rows]
    finally:
        await engine.dispose()


def test_the_example_loads_with_its_relay_and_round_trips(seeded: Gateway, tmp_path: Path) -> None:
    exported = tmp_path / "exported.yaml"
    seeded("directory", "export", "-o", str(exported))
    assert dump_directory(read_directory_file(exported)) == dump_directory(
        read_directory_file(EXAMPLE_DIRECTORY)
    )
    assert "0 change(s)" in seeded("directory", "load", str(exported)).stdout
    text_ = exported.read_text(encoding="utf-8")
    assert "sender_auth: 'off'" in text_
    assert "relay:\n      host: 127.0.0.1\n      port: 2526\n      tls: none\n      timeout: 30\n" in text_


def test_changed_relay_settings_and_sender_auth_are_detected_and_logged(
    seeded: Gateway, tmp_path: Path, database_url: str
) -> None:
    (tmp_path / "relay.pw").write_text("hunter2\n", encoding="utf-8")
    changed = _with_relay(
        tmp_path,
        "        relay: {host: smtp.makler-muster.example, port: 587,\n"
        "                login: gateway, password_file: relay.pw}\n",
        sender_auth="verify",
    )
    out = seeded("directory", "load", str(changed)).stdout
    password_file = str(tmp_path / "relay.pw")
    assert "portfolio makler-muster: 2 change(s)" in out
    assert "update portfolio makler-muster (sender_auth=verify)" in out
    assert (
        "update backoffice ams (relay=smtp.makler-muster.example:587 tls=starttls timeout=30 "
        f"login=gateway password_file={password_file})"
    ) in out
    assert "hunter2" not in out

    [(_, portfolio_event)] = asyncio.run(_events(database_url, "portfolio.update"))
    assert portfolio_event["sender_auth"] == "verify"
    [(actor, backoffice_event)] = asyncio.run(_events(database_url, "backoffice.update"))
    assert actor.startswith("cli:")
    assert backoffice_event["relay"] == {
        "host": "smtp.makler-muster.example",
        "port": 587,
        "tls": "starttls",
        "login": "gateway",
        "password_file": password_file,
        "timeout": 30,
    }
    [(_, created)] = asyncio.run(_events(database_url, "backoffice.create"))
    assert created["relay"]["port"] == 2526

    exported = seeded("directory", "export").stdout
    assert f"password_file: {password_file}" in exported
    assert "hunter2" not in exported
    assert "0 change(s)" in seeded("directory", "load", str(changed)).stdout

    # A file without relay: for the back office removes its relay settings (the file's values are whole).
    removed = _with_relay(tmp_path, "", sender_auth="verify")
    assert "update backoffice ams (relay=none)" in seeded("directory", "load", str(removed)).stdout
    backoffices = json.loads(seeded("backoffice", "list", *P, "--json").stdout)
    assert backoffices[0]["relay"] is None
    assert "no relay (receives no replies" in seeded("backoffice", "list", *P).stdout


def test_a_bad_relay_in_a_file_changes_nothing(seeded: Gateway, tmp_path: Path) -> None:
    before = seeded("directory", "export").stdout
    path = _with_relay(tmp_path, "        relay: {host: 127.0.0.1, port: 2526, tls: none, login: gateway}\n")
    result = seeded("directory", "load", str(path), expect=2)
    line = next(
        n
        for n, text_ in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "login: gateway" in text_
    )
    assert f"{path}:{line}: the relay has a login but no password file" in result.stderr
    assert "nothing was changed" in result.stderr
    assert seeded("directory", "export").stdout == before


# --- single commands --------------------------------------------------------------------------------------


def test_backoffice_commands_set_and_show_the_relay(
    gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    gateway("portfolio", "create", "mm", "--sender-auth", "trust-authentication-results")
    out = gateway(
        "backoffice",
        "add",
        "ams",
        "--address",
        "ams@mm.example",
        "--relay-host",
        "smtp.mm.example",
        "--relay-port",
        "587",
        "--relay-login",
        "gateway",
        "--relay-password-file",
        "secrets/relay.pw",
        "-p",
        "mm",
    ).stdout
    password_file = str(tmp_path / "secrets" / "relay.pw")
    assert (
        f"relay=smtp.mm.example:587 tls=starttls timeout=30 login=gateway password_file={password_file}"
        in out
    )

    def listed() -> dict[str, object]:
        [backoffice] = json.loads(gateway("backoffice", "list", "-p", "mm", "--json").stdout)
        assert isinstance(backoffice, dict)
        return backoffice

    assert listed()["relay"] == {
        "host": "smtp.mm.example",
        "port": 587,
        "tls": "starttls",
        "login": "gateway",
        "password_file": password_file,
        "timeout": 30,
    }
    # Options change only what they name.
    gateway(
        "backoffice",
        "set",
        "ams",
        "--relay-tls",
        "tls",
        "--relay-port",
        "465",
        "--relay-timeout",
        "60",
        "-p",
        "mm",
    )
    assert listed()["relay"] == {
        "host": "smtp.mm.example",
        "port": 465,
        "tls": "tls",
        "login": "gateway",
        "password_file": password_file,
        "timeout": 60,
    }
    assert (
        "replies relayed to smtp.mm.example:465 tls=tls" in gateway("backoffice", "list", "-p", "mm").stdout
    )
    shown = json.loads(gateway("portfolio", "show", "mm", "--json").stdout)
    assert shown["sender_auth"] == "trust-authentication-results"
    assert shown["backoffices"][0]["relay"]["port"] == 465

    result = gateway("backoffice", "set", "ams", "--relay-password-file", "", "-p", "mm", expect=2)
    assert "the relay has a login but no password file" in result.stderr
    gateway("backoffice", "set", "ams", "--relay-login", "", "--relay-password-file", "", "-p", "mm")
    relay = listed()["relay"]
    assert isinstance(relay, dict)
    assert "login" not in relay
    assert "password_file" not in relay

    result = gateway("backoffice", "set", "ams", "--relay-port", "0", "-p", "mm", expect=2)
    assert "relay port 0 is not a TCP port" in result.stderr
    result = gateway("backoffice", "set", "ams", "--relay-tls", "ssl", "-p", "mm", expect=2)
    assert "ssl" in result.stderr
    result = gateway("backoffice", "set", "ams", "--no-relay", "--relay-port", "25", "-p", "mm", expect=2)
    assert "--no-relay" in result.stderr
    assert (
        "update backoffice ams (relay=none)"
        in gateway("backoffice", "set", "ams", "--no-relay", "-p", "mm").stdout
    )
    assert listed()["relay"] is None
    result = gateway("backoffice", "set", "ams", "--relay-port", "2525", "-p", "mm", expect=2)
    assert "back office ams has no relay settings yet: give --relay-host" in result.stderr

    gateway("backoffice", "add", "ams2", "--relay-host", "127.0.0.1", "--relay-tls", "none", "-p", "mm")
    result = gateway("backoffice", "add", "ams3", "--relay-login", "gw", "-p", "mm", expect=2)
    assert "give --relay-host" in result.stderr
    result = gateway(
        "backoffice", "add", "ams3", "--relay-host", "h", "--relay-login", "gw", "-p", "mm", expect=2
    )
    assert "the relay has a login but no password file" in result.stderr

    changes = json.loads(gateway("portfolio", "set", "mm", "--sender-auth", "verify", "--json").stdout)
    assert [c["change"] for c in changes] == ["update portfolio mm (sender_auth=verify)"]
    result = gateway("portfolio", "set", "mm", "--sender-auth", "strict", expect=2)
    assert "strict" in result.stderr
    assert "sender authentication of replies: verify" in gateway("portfolio", "show", "mm").stdout


# --- the reads the reply path uses --------------------------------------------------------------------------


async def _reply_reads(database_url: str) -> tuple[dict[str, RelayTarget | None], str, str]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(select(BackOfficeRow.name, BackOfficeRow.id))
            ids = {row.name: row.id for row in rows}
            pid = await connection.scalar(select(PortfolioRow.id).where(PortfolioRow.name == "mm"))
            assert pid is not None
            targets = {name: await connection.run_sync(relay_target, bo_id) for name, bo_id in ids.items()}
            targets["missing"] = await connection.run_sync(relay_target, max(ids.values()) + 1000)
            policy = await connection.run_sync(portfolio_policy, pid)

            def unknown(c: Connection) -> str:
                with pytest.raises(NotFound) as caught:
                    portfolio_policy(c, pid + 1000)
                return str(caught.value)

            return targets, policy, await connection.run_sync(unknown)
    finally:
        await engine.dispose()


def test_relay_target_and_portfolio_policy(gateway: Gateway, database_url: str) -> None:
    gateway("portfolio", "create", "mm", "--sender-auth", "verify")
    gateway(
        "backoffice",
        "add",
        "ams",
        "--ams-version",
        "4.7.2.1",
        "--relay-host",
        "smtp.mm.example",
        "--relay-login",
        "gw",
        "--relay-password-file",
        "/run/secrets/relay.pw",
        "-p",
        "mm",
    )
    gateway("backoffice", "add", "silent", "-p", "mm")
    targets, policy, unknown = asyncio.run(_reply_reads(database_url))
    ams = targets["ams"]
    assert ams is not None
    assert ams == RelayTarget(
        host="smtp.mm.example",
        port=25,
        tls=RelayTls.STARTTLS,
        login="gw",
        password_file=Path("/run/secrets/relay.pw"),
        timeout=30,
        ams_version="4.7.2.1",
        backoffice_name="ams",
        portfolio_id=ams.portfolio_id,
    )
    assert targets["silent"] is None
    assert targets["missing"] is None
    assert policy == SenderAuth.VERIFY
    assert "there is no portfolio with id" in unknown


# --- the schema -------------------------------------------------------------------------------------------


def test_model_defaults_are_the_domain_defaults() -> None:
    columns = BackOfficeRow.__table__.c
    assert columns.relay_port.default.arg == RELAY_PORT
    assert columns.relay_tls.default.arg == RELAY_TLS.value
    assert columns.relay_timeout.default.arg == RELAY_TIMEOUT
    assert PortfolioRow.__table__.c.sender_auth.default.arg == DEFAULT_SENDER_AUTH.value
    assert columns.relay_host.nullable


async def test_migration_0004_keeps_existing_rows_and_gives_them_the_defaults(
    empty_database_url: str,
) -> None:
    engine = create_engine(empty_database_url)

    def migrate(connection: Connection, action: str, revision: str) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)

    try:
        await upgrade(engine, "0003")
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO portfolios (id, name, display_name, share_vorgaenge_available, created_at) "
                    "VALUES (1, 'p', '', false, CURRENT_TIMESTAMP)"
                )
            )
            await connection.execute(
                text(
                    "INSERT INTO backoffices (id, portfolio_id, name, ams_version, created_at) "
                    "VALUES (1, 1, 'ams', '4.8.0.64470', CURRENT_TIMESTAMP)"
                )
            )
        async with engine.begin() as connection:
            await connection.run_sync(migrate, "upgrade", "0004")
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT name, relay_host, relay_port, relay_tls, relay_login, relay_password_file, "
                        "relay_timeout FROM backoffices"
                    )
                )
            ).one()
            assert tuple(row) == ("ams", None, 25, "starttls", None, None, 30)
            assert await connection.scalar(text("SELECT sender_auth FROM portfolios")) == "off"
            assert await connection.run_sync(relay_target, 1) is None
            assert await connection.run_sync(portfolio_policy, 1) == SenderAuth.OFF
        async with engine.begin() as connection:
            await connection.run_sync(migrate, "downgrade", "0003")
        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT name FROM backoffices")) == "ams"
        async with engine.begin() as connection:
            await connection.run_sync(migrate, "upgrade", "0004")
    finally:
        await engine.dispose()
