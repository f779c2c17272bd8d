"""``gateway admin add|set|remove|list`` on both databases, each change an event with the CLI's actor."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Gateway
from tests.web.conftest import OTHER


def password_file(tmp_path: Path, password: str) -> str:
    path = tmp_path / f"{len(password)}.password"
    path.write_text(password + "\n", encoding="utf-8")
    return str(path)


def test_add_set_list_remove(console_seeded: Gateway, tmp_path: Path) -> None:
    gateway = console_seeded
    secret = password_file(tmp_path, "ein-gutes-passwort")
    out = gateway("admin", "add", "Anna", "-p", OTHER, "-p", "makler-muster", "--password-file", secret)
    assert "added portfolio_admin anna" in out.stdout
    listed = {a["login"]: a for a in json.loads(gateway("admin", "list", "--json").stdout)}
    assert listed["anna"] == {
        "login": "anna",
        "role": "portfolio_admin",
        "portfolios": ["makler-muster", OTHER],
        "password": True,
    }
    assert listed["op"]["role"] == "operator"
    gateway("admin", "set", "anna", "-p", OTHER, "--no-password")
    anna = next(a for a in json.loads(gateway("admin", "list", "--json").stdout) if a["login"] == "anna")
    assert anna["portfolios"] == [OTHER]
    assert anna["password"] is False
    gateway("admin", "set", "anna", "--role", "operator")
    assert "anna\toperator\t(all)\tproxy only" in gateway("admin", "list").stdout
    gateway("admin", "remove", "anna")
    assert "anna" not in gateway("admin", "list").stdout
    events = json.loads(gateway("events", "--kind", "admin", "--json").stdout)
    kinds = [e["kind"] for e in events if e["detail"].get("login") == "anna"]
    assert kinds == [
        "admin.account_create",
        "admin.account_update",
        "admin.account_update",
        "admin.account_delete",
    ]
    assert all(e["actor"].startswith("cli:") for e in events if e["detail"].get("login") == "anna")
    assert "secret" not in json.dumps(events)
    assert "ein-gutes-passwort" not in json.dumps(events)


def test_add_if_missing_is_idempotent(console_seeded: Gateway, tmp_path: Path) -> None:
    secret = password_file(tmp_path, "noch-ein-passwort")
    result = console_seeded(
        "admin", "add", "op", "--role", "operator", "--if-missing", "--password-file", secret
    )
    assert "exists already" in result.stdout


def test_bad_input_gets_clear_answers(console_seeded: Gateway, tmp_path: Path) -> None:
    gateway = console_seeded
    secret = password_file(tmp_path, "ein-gutes-passwort")
    cases = [
        (("admin", "add", "op", "--role", "operator", "--password-file", secret), "exists already"),
        (
            ("admin", "add", "x", "-p", "gibt-es-nicht", "--password-file", secret),
            "no portfolio gibt-es-nicht",
        ),
        (("admin", "add", "x", "--password-file", secret), "needs at least one --portfolio"),
        (
            ("admin", "add", "x", "--role", "operator", "-p", OTHER, "--password-file", secret),
            "give no --portfolio",
        ),
        (("admin", "add", "x y", "--role", "operator", "--password-file", secret), "must be letters"),
        (
            ("admin", "add", "x", "--role", "operator", "--password-file", password_file(tmp_path, "kurz")),
            "12",
        ),
        (("admin", "set", "nobody", "--role", "operator"), "no admin account nobody"),
        (("admin", "remove", "nobody"), "no admin account nobody"),
    ]
    for args, message in cases:
        result = gateway(*args, expect=2)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
