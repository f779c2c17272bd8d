"""The root ``gateway`` group and what every command shares: the context, the lazy command table, errors
turned into messages and exit codes, async command bodies and JSON output (database access: ``work.py``).

Exit status: 0 done, 2 for usage and input errors (a bad option, file, name or rule), 1 when the gateway
could not do the work (database unreachable, not migrated). Every command that prints data takes --json.
"""

from __future__ import annotations

import functools
import getpass
import importlib
import json
import os
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from gateway import __version__
from gateway.errors import ConfigError, GatewayError, InputError, OperationalError, Problem, ProblemsError

if TYPE_CHECKING:
    from gateway.config import FoundConfig, Settings
    from gateway.domain.directory import Change

T = TypeVar("T")

EXIT_FAILURE = 1
EXIT_INPUT = 2


# --- plumbing ----------------------------------------------------------------------------------------------


class Context:
    """What every command needs: where the configuration is, and who is acting (for the event log)."""

    def __init__(self, config: Path | None) -> None:
        self._config = config
        self._settings: Settings | None = None
        self.actor = f"cli:{_login()}"

    @property
    def found_config(self) -> FoundConfig:
        """The configuration file and how it was found; ConfigError when the search found none."""
        # pydantic and the loader only for commands that read the configuration
        from gateway.config import DEFAULT_CONFIG_PATH, SYSTEM_CONFIG_PATH, find_config

        found = find_config(self._config, os.environ)
        if not found.found:
            raise ConfigError(
                "no configuration file: give --config FILE, set $GATEWAY_CONFIG, or write a starter set "
                "with `gateway init DIR`; looked at",
                [
                    Problem(f"./{DEFAULT_CONFIG_PATH}", "no such file"),
                    Problem(str(SYSTEM_CONFIG_PATH), "no such file"),
                ],
            )
        return found

    @property
    def config_file(self) -> Path:
        return self.found_config.path

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from gateway.config import load_settings

            self._settings = load_settings(self.config_file, os.environ)
        return self._settings


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


pass_context = click.make_pass_decorator(Context)


def fail(message: str, status: int, *, as_json: bool = False, problems: Sequence[str] = ()) -> NoReturn:
    """Say what went wrong on stderr and exit with ``status``; under --json as one JSON object
    ({"error", "status", and "problems" when there are several}) so that scripts need not parse prose."""
    if as_json:
        data: dict[str, object] = {"error": message, "status": status}
        if problems:
            data["problems"] = list(problems)
        click.echo(json.dumps(data, ensure_ascii=False), err=True)
    else:
        click.echo(f"gateway: error: {message}", err=True)
        for problem in problems:
            click.echo(f"  {problem}", err=True)
    sys.exit(status)


@contextmanager
def errors_for_people(*, as_json: bool = False) -> Iterator[None]:
    """Turn the gateway's errors into one clear message and the documented exit status."""
    try:
        yield
    except ProblemsError as exc:
        fail(exc.summary, EXIT_INPUT, as_json=as_json, problems=[str(p) for p in exc.problems])
    except InputError as exc:
        fail(str(exc), EXIT_INPUT, as_json=as_json)
    except OperationalError as exc:
        fail(str(exc), EXIT_FAILURE, as_json=as_json)
    except GatewayError as exc:
        fail(str(exc), EXIT_FAILURE, as_json=as_json)


def command(func: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async command body in a fresh event loop, with errors turned into messages (JSON ones
    when the command was asked for --json)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        # Imported here: `--version`, `--help` and `config check` start without asyncio (bench/cli_start.py).
        import asyncio

        with errors_for_people(as_json=bool(kwargs.get("as_json"))):
            asyncio.run(func(*args, **kwargs))

    return wrapper


def emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def print_changes(changes: Sequence[Change], as_json: bool, *, dry_run: bool = False) -> None:
    if as_json:
        emit_json(
            [{"change": c.describe(), "action": c.action, "kind": c.kind, "name": c.name} for c in changes]
        )
        return
    prefix = "would " if dry_run else ""
    for change in changes:
        click.echo(prefix + change.describe())
    if not changes:
        click.echo("nothing to change")


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
portfolio_option = click.option(
    "-p",
    "--portfolio",
    envvar="GATEWAY_PORTFOLIO",
    required=True,
    help="The portfolio (Bestand) to work in; also $GATEWAY_PORTFOLIO.",
)


# --- the root of the command tree ---------------------------------------------------------------------


# Each command lives in the module named here, imported only when the command runs or help lists it,
# so that ``gateway --version`` and ``--help`` start without SQLAlchemy, pydantic and the stages, and
# so does every parse worker that re-runs the console script (gateway.stages.parsepool).
# tests/stages/test_cli_lazy.py checks that this table and the modules agree.
COMMAND_MODULES = {
    "admin": "admins",
    "backoffice": "directory",
    "config": "system",
    "db": "system",
    "directory": "directory",
    "events": "views",
    "held": "held",
    "init": "system",
    "member": "directory",
    "nodes": "nodes",
    "portfolio": "directory",
    "quarantine": "views",
    "queue": "queue",
    "reconcile": "reconcile",
    "release": "directory",
    "rules": "rules",
    "secrets": "system",
    "serve": "system",
    "tls": "system",
    "vorgang": "views",
    "who-can-see": "views",
}


# What `gateway --help` says of each command, so that listing them imports none of their modules (each
# is the first paragraph of the command's own help; tests/stages/test_cli_answers.py checks they agree).
COMMAND_SUMMARIES = {
    "admin": "Accounts of the admin web console: operators (everything) and portfolio admins (their "
    "portfolios).",
    "backoffice": "Register the back-office systems (ams …) that send into a portfolio.",
    "config": "Inspect the configuration.",
    "db": "Create and migrate the database.",
    "directory": "Load and export the whole directory as YAML.",
    "events": "The event log: who changed what, which message went where; the newest LIMIT, oldest first.",
    "held": "Replies the collision guard held: list them, release or withdraw one.",
    "init": "Write a starter set into DIRECTORY: gateway.toml (paths relative to it), directory.yaml, rules/ "
    "and a README saying what to edit. Never overwrites: exits 2 naming what exists.",
    "member": "Add, rename, remove and list members.",
    "nodes": "The gateway processes sharing the database: state (alive, stale, stopped), heartbeat age, "
    "version.",
    "portfolio": "Create and configure portfolios (Bestände).",
    "quarantine": "Messages a routing rule held back: look at them, release them to their audience, or "
    "drop them.",
    "queue": "What waits in the queues (copies, flags, removals, relays): list, show, retry, drop.",
    "reconcile": "Bring existing copies in line with the directory (back-fill, revocation); "
    "docs/reconcile.md.",
    "release": "Create and change releases (Freischaltungen) and their members.",
    "rules": "Check the routing rules files (rules/*.yaml) and try them on a saved message.",
    "secrets": "Create the reply-token keys the configuration names.",
    "serve": "Run the gateway until SIGTERM or SIGINT.",
    "tls": "TLS helpers for development.",
    "vorgang": "Look at Vorgänge (cases) and where their copies stand.",
    "who-can-see": "Who may see MESSAGE (a gateway message id), or a message --to/--cc/--from members, "
    "and why.",
}


def _asked_for_json(args: Sequence[str]) -> bool:
    """Whether the command line asks for --json (before a ``--``, after which words are arguments)."""
    words = list(args)
    return "--json" in words[: words.index("--")] if "--" in words else "--json" in words


@contextmanager
def _usage_errors(*, as_json: bool) -> Iterator[None]:
    """click's own errors (unknown option, missing argument, bad choice) as the gateway's are, under
    --json: one JSON object on stderr, exit 2. Without --json click says them itself, with the usage."""
    try:
        yield
    except click.ClickException as exc:
        if not as_json:
            raise
        message = exc.format_message()
        context = getattr(exc, "ctx", None)
        if isinstance(context, click.Context):
            message = f"{message.rstrip('.')}; `{context.command_path} --help` says what it takes"
        fail(message, exc.exit_code, as_json=True)


class LazyGroup(click.Group):
    """The root group: knows its commands by name and imports a command's module on first use, and
    answers click's usage errors in JSON under --json."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        as_json = _asked_for_json(args)
        with _usage_errors(as_json=as_json):
            context = super().make_context(info_name, args, parent, **extra)
        context.meta["gateway.json"] = as_json
        return context

    def invoke(self, ctx: click.Context) -> Any:
        # Every subcommand is parsed (and every group below resolves its own) inside this call.
        with _usage_errors(as_json=bool(ctx.meta.get("gateway.json"))):
            return super().invoke(ctx)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own, with the summaries above for commands not loaded: `--help` imports nothing more.
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name not in self.commands and name in COMMAND_SUMMARIES:
                # A stand-in with the same help shortens it as click shortens the command's own.
                stand_in = click.Command(name, help=COMMAND_SUMMARIES[name])
                rows.append((name, stand_in.get_short_help_str(limit)))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMAND_MODULES) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(f"gateway.cli.{COMMAND_MODULES[cmd_name]}")
        return self.commands.get(cmd_name)


@click.group(
    cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110}
)
@click.option(
    "-c",
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    help=(
        "Configuration file (default: $GATEWAY_CONFIG, else ./config/gateway.toml, else "
        "/etc/vorgang-gateway/gateway.toml)."
    ),
)
@click.version_option(__version__, prog_name="gateway")
@click.pass_context
def cli(click_ctx: click.Context, config: Path | None) -> None:
    """vorgang-gateway: shares a customer's Vorgänge across the members of a release group by mail."""
    click_ctx.obj = Context(config)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="gateway")
    except KeyboardInterrupt:
        fail("interrupted", 130)
