"""What the CLI says: help for every option and argument, errors as JSON under --json, exit statuses
of input errors, and hints that name the next command (issue 16, item 5)."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
from click.testing import CliRunner

from gateway.cli.root import COMMAND_MODULES, COMMAND_SUMMARIES, cli
from tests.conftest import Gateway


def _walk(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    yield " ".join(path) or "gateway", command
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, f"{' '.join((*path, name))} is listed but cannot be loaded"
            yield from _walk(sub, (*path, name))


def _all_commands() -> list[tuple[str, click.Command]]:
    for module in sorted(set(COMMAND_MODULES.values())):
        importlib.import_module(f"gateway.cli.{module}")
    return list(_walk(cli))


def test_every_option_and_argument_of_every_command_says_what_it_is_for() -> None:
    commands = _all_commands()
    assert len(commands) > 40  # the whole tree, not only the root
    missing = []
    for name, command in commands:
        if not command.help:
            missing.append(f"{name}: no help text")
        for param in command.params:
            if isinstance(param, click.Option):
                if not (param.help or "").strip() and not param.hidden:
                    missing.append(f"{name} {param.opts[-1]}: no help")
            elif isinstance(param, click.Argument):
                # An argument's help is in its command's text: it names the argument there.
                metavar = (param.metavar or param.name or "").upper().strip("[].").replace("]", "")
                if metavar not in (command.help or ""):
                    missing.append(f"{name} {metavar}: not explained in the command's help")
    assert not missing, "\n".join(missing)


def test_the_help_of_serve_names_sighup() -> None:
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    assert "SIGHUP" in result.stdout


def test_an_error_under_json_is_one_json_object_on_stderr(seeded: Gateway) -> None:
    result = seeded("vorgang", "show", "VG-1999-000001", "-p", "makler-muster", "--json", expect=2)
    assert result.stdout == ""
    error = json.loads(result.stderr)
    assert error["status"] == 2
    assert "VG-1999-000001" in error["error"]


def test_without_json_the_error_is_a_sentence_that_names_the_listing_command(seeded: Gateway) -> None:
    result = seeded("vorgang", "show", "VG-1999-000001", "-p", "makler-muster", expect=2)
    assert result.stderr.startswith("gateway: error: there is no Vorgang VG-1999-000001")
    assert "`gateway vorgang list -p makler-muster` lists them" in result.stderr


def test_a_config_error_under_json_lists_its_problems(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.toml"
    bad.write_text('[gateway]\nno_such_setting = 1\n[database]\nurl = "sqlite+aiosqlite:///x.db"\n')
    result = CliRunner().invoke(cli, ["config", "check", str(bad), "--json"])
    assert result.exit_code == 2
    error = json.loads(result.stderr)
    assert error["status"] == 2
    assert any("no_such_setting" in p for p in error["problems"])


def test_new_key_on_an_existing_file_is_an_input_error(tmp_path: Path) -> None:
    key = tmp_path / "token.key"
    assert CliRunner().invoke(cli, ["secrets", "new-key", str(key)]).exit_code == 0
    first = key.read_bytes()
    again = CliRunner().invoke(cli, ["secrets", "new-key", str(key)])
    assert again.exit_code == 2
    assert re.search(r"exists already; a key is never overwritten", again.stderr)
    assert key.read_bytes() == first


def test_the_summaries_help_lists_are_those_of_the_commands() -> None:
    """`gateway --help` lists the commands from COMMAND_SUMMARIES without importing them; each must be
    the first paragraph of the command's own help (add one there for a new command)."""
    for module in sorted(set(COMMAND_MODULES.values())):
        importlib.import_module(f"gateway.cli.{module}")
    own = {
        name: " ".join((cli.commands[name].help or "").split("\n\n")[0].split()) for name in COMMAND_MODULES
    }
    assert own == COMMAND_SUMMARIES


def test_help_lists_every_command_without_importing_one() -> None:
    probe = (
        "import sys\n"
        "from gateway.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('gateway.cli.', 'sqlalchemy', 'pydantic')\n"
        "print('LOADED', sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    listed, loaded = out.split("LOADED")
    for name in COMMAND_MODULES:
        assert re.search(rf"^  {re.escape(name)}\s+\S", listed, re.MULTILINE), name
    assert loaded.strip() == "['gateway.cli.root']"


# --- click's own usage errors under --json -----------------------------------------------------------------

USAGE_ERRORS = {
    "unknown option": (
        ["vorgang", "list", "-p", "makler-muster", "--frob", "--json"],
        "No such option '--frob'",
    ),
    "missing argument": (["vorgang", "show", "--json"], "Missing argument 'REFERENCE'"),
    "bad choice": (
        ["queue", "list", "--state", "nonsense", "--json"],
        "Invalid value for '--state': 'nonsense' is not one of",
    ),
    "unknown command": (["vorgang", "lst", "--json"], "No such command 'lst'"),
    "bad number": (["events", "--limit", "many", "--json"], "Invalid value for '--limit'"),
}


def test_clicks_usage_errors_under_json_are_one_json_object_on_stderr() -> None:
    for case, (args, said) in USAGE_ERRORS.items():
        result = CliRunner().invoke(cli, args, prog_name="gateway")
        assert result.exit_code == 2, case
        assert result.stdout == "", case
        error = json.loads(result.stderr)
        assert set(error) == {"error", "status"}, case
        assert error["status"] == 2, case
        assert error["error"].startswith(said), (case, error)
        assert f"`gateway {args[0]}" in error["error"], case  # the command whose --help to read


def test_without_json_click_says_its_usage_errors_itself() -> None:
    result = CliRunner().invoke(cli, ["vorgang", "show"], prog_name="gateway")
    assert result.exit_code == 2
    assert result.stderr.startswith("Usage: gateway vorgang show")
    assert "Error: Missing argument 'REFERENCE'." in result.stderr


def test_json_after_a_double_dash_is_an_argument_not_a_request_for_json() -> None:
    result = CliRunner().invoke(cli, ["vorgang", "show", "--frob", "--", "--json"])
    assert result.exit_code == 2
    assert result.stderr.startswith("Usage: ")


def test_the_console_script_answers_a_usage_error_in_json() -> None:
    """Through `python -m gateway` (the installed script's main()), not only click's test runner."""
    answer = subprocess.run(
        [sys.executable, "-m", "gateway", "vorgang", "show", "--json"], capture_output=True, text=True
    )
    assert answer.returncode == 2
    assert answer.stdout == ""
    assert json.loads(answer.stderr)["error"].startswith("Missing argument 'REFERENCE'")
