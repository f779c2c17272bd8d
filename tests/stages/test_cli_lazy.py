"""The command table of the lazy root group agrees with the modules, and a bare start stays light."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import click

from gateway.cli.root import COMMAND_MODULES, cli


def test_every_command_is_in_the_table_under_the_module_that_defines_it() -> None:
    for module in sorted(set(COMMAND_MODULES.values())):
        importlib.import_module(f"gateway.cli.{module}")
    defined = {
        name: command.callback.__module__.removeprefix("gateway.cli.")
        for name, command in cli.commands.items()
        if command.callback is not None
    }
    assert defined == COMMAND_MODULES


def test_a_command_missing_from_the_table_is_unknown_not_a_crash() -> None:
    ctx = click.Context(cli)
    assert cli.get_command(ctx, "no-such-command") is None


def _modules_after(*args: str) -> set[str]:
    probe = (
        "import sys, json\n"
        "from gateway.cli import main\n"
        "try:\n"
        f"    main({list(args)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_version_imports_neither_the_database_nor_the_settings_nor_the_stages() -> None:
    loaded = _modules_after("--version")
    assert "click" in loaded
    heavy = {m for m in loaded if m.split(".")[0] in {"sqlalchemy", "pydantic", "aiosmtpd", "alembic"}}
    assert not heavy
    assert not {m for m in loaded if m.startswith(("gateway.db", "gateway.stages", "gateway.config"))}


def test_a_command_imports_only_its_own_module_of_the_command_tree() -> None:
    loaded = _modules_after("secrets", "--help")
    commands = {m for m in loaded if m.startswith("gateway.cli.")}
    assert commands == {"gateway.cli.root", "gateway.cli.system"}
