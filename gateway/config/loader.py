"""Reading the configuration: config/*.toml plus GATEWAY_… environment overrides -> frozen, validated
settings, or one ConfigError that lists every problem for people.

Loading happens in three steps:

1. the TOML file is read (no file at all is fine: the embedded defaults run a one-node gateway on
   SQLite and Maildir, listening on loopback only);
2. ``GATEWAY_<SECTION>__<KEY>`` variables are laid over it (``GATEWAY_LISTENERS__MX__PORT=2526``);
   a value that parses as TOML (``50``, ``true``, ``["a@b.example"]``) is taken as that, anything else
   as a plain string;
3. one validation pass turns the result into a frozen :class:`Settings`, or raises one
   :class:`~gateway.errors.ConfigError` that lists every problem with the key (or variable) it concerns.

Relative paths resolve against the directory of the config file, not the working directory, so a
service started from anywhere reads the same files; without a file they resolve against the working
directory.  Values from environment overrides follow the same rule, so a path means the same thing
wherever it is written.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from gateway.config.sections import ENV_PREFIX, RETIRED_KEYS, SECTIONS, Settings
from gateway.config.types import FieldProblem, PathContext, show
from gateway.errors import ConfigError, Problem

DEFAULT_CONFIG_PATH = Path("config/gateway.toml")
SYSTEM_CONFIG_PATH = Path("/etc/vorgang-gateway/gateway.toml")
CONFIG_VARIABLE = "GATEWAY_CONFIG"


@dataclass(frozen=True, slots=True)
class FoundConfig:
    """The configuration file chosen, how it was chosen (for the log and ``config check``), and whether
    the search found a file at all (when it did not, ``path`` is the first place it looked)."""

    path: Path
    found_by: str
    found: bool = True


def find_config(
    explicit: Path | None, environ: Mapping[str, str], exists: Callable[[Path], bool] = Path.is_file
) -> FoundConfig:
    """The configuration file to read: the one given (``--config``), else ``$GATEWAY_CONFIG``, else
    ``./config/gateway.toml`` (a checkout), else ``/etc/vorgang-gateway/gateway.toml`` (an installed node).

    A file named by ``--config`` or the variable is taken even when it is missing, so that a typo is
    reported rather than silently replaced by another file; the two places are taken only if they exist.
    """
    if explicit is not None:
        return FoundConfig(explicit, "--config")
    for name, value in environ.items():
        if name.upper() == CONFIG_VARIABLE and value.strip():
            return FoundConfig(Path(value), f"${CONFIG_VARIABLE}")
    for place in (DEFAULT_CONFIG_PATH, SYSTEM_CONFIG_PATH):
        if exists(place):
            return FoundConfig(place, "found at " + ("./" if not place.is_absolute() else "") + str(place))
    return FoundConfig(DEFAULT_CONFIG_PATH, "none found", found=False)


def config_path(explicit: Path | None, environ: Mapping[str, str]) -> Path:
    """The configuration file to read (``find_config``'s path)."""
    return find_config(explicit, environ).path


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (None: no file), apply ``GATEWAY_…`` overrides from ``environ`` (None: os.environ).

    Raises ConfigError listing every problem found: file, variables and values alike.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    problems: list[Problem] = []
    raw: dict[str, Any] = {}
    readable = True
    if path is not None:
        loaded = _read_toml(path)
        if isinstance(loaded, Problem):
            problems.append(loaded)
            readable = False
        else:
            raw = loaded
    overrides, override_problems = _read_overrides(env)
    problems.extend(override_problems)

    settings: Settings | None = None
    # An unreadable file leaves nothing to check the values against; its own problem says enough.
    if readable:
        data, origins = _apply_overrides(raw, overrides)
        base = path.absolute().parent if path is not None else Path.cwd()
        try:
            settings = Settings.model_validate(data, context=PathContext(base_dir=base))
        except ValidationError as exc:
            problems.extend(_problem_from(error, origins) for error in exc.errors())

    if problems or settings is None:
        where = (
            f"configuration {path}"
            if path is not None
            else "configuration (defaults and GATEWAY_… variables)"
        )
        count = len(problems)
        raise ConfigError(f"{where} is invalid: {count} problem{'s' if count != 1 else ''}", problems)
    settings._source = path.absolute() if path is not None else None
    return settings


_TOML_POSITION_RE = re.compile(
    r"^(?P<message>.*?)\s*\(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)$"
)


def _read_toml(path: Path) -> dict[str, Any] | Problem:
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return Problem(str(path), "no such file")
    except IsADirectoryError:
        return Problem(str(path), "is a directory, not a TOML file")
    except OSError as exc:
        return Problem(str(path), f"cannot be read: {exc.strerror or exc}")
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content.count(b"\n", 0, exc.start) + 1
        return Problem(f"{path}:{line}", "is not UTF-8 text")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return _toml_problem(path, text, exc)


def _toml_problem(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> Problem:
    message = str(exc)
    line: int | None = getattr(exc, "lineno", None)  # Python 3.14 has the attributes
    column: int | None = getattr(exc, "colno", None)
    match = _TOML_POSITION_RE.match(message)
    if match:
        message = match.group("message")
        if line is None and match.group("line"):
            line, column = int(match.group("line")), int(match.group("column"))
        elif line is None:
            line = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
    reason = f"invalid TOML: {message}" + (f" (column {column})" if column else "")
    return Problem(f"{path}:{line}" if line else str(path), reason)


@dataclass(frozen=True, slots=True)
class _Override:
    variable: str
    keys: tuple[str, ...]
    value: object


def _read_overrides(environ: Mapping[str, str]) -> tuple[list[_Override], list[Problem]]:
    overrides: list[_Override] = []
    problems: list[Problem] = []
    seen: dict[tuple[str, ...], str] = {}
    for variable in sorted(environ):
        name = variable.upper()
        # Only GATEWAY_<SECTION>__<KEY> names a setting; other GATEWAY_ variables (GATEWAY_CONFIG,
        # GATEWAY_PORTFOLIO for the CLI, GATEWAY_TEST_… for the tests) belong to someone else, except a
        # bare section name, which is surely a mistake worth reporting.
        rest = name[len(ENV_PREFIX) :] if name.startswith(ENV_PREFIX) else ""
        if not rest or ("__" not in rest and rest.lower() not in SECTIONS):
            continue
        keys = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        target = _setting_at(keys)
        if isinstance(target, str):
            problems.append(Problem(variable, target))
            continue
        if keys in seen:
            problems.append(Problem(variable, f"sets {'.'.join(keys)} again; {seen[keys]} sets it already"))
            continue
        seen[keys] = variable
        overrides.append(_Override(variable, keys, _env_value(environ[variable], target)))
    return overrides, problems


def _setting_at(keys: tuple[str, ...]) -> Any:
    """The type of the setting ``keys`` names, or a reason (str) why it names none."""
    if not all(keys):
        return f"is not of the form {ENV_PREFIX}<SECTION>__<KEY> (sections: {', '.join(SECTIONS)})"
    if keys in RETIRED_KEYS:
        return f"sets {'.'.join(keys)}, which {RETIRED_KEYS[keys]}"
    model: type[BaseModel] = Settings
    for depth, key in enumerate(keys):
        dotted = ".".join(keys[: depth + 1])
        field = model.model_fields.get(key)
        if field is None:
            if _looks_secret(key):
                return f"there is no setting {dotted}; {_secret_hint(keys[:depth])}"
            known = ", ".join(model.model_fields)
            return f"there is no setting {dotted}" + (f" (known here: {known})" if known else "")
        annotation = field.annotation
        last = depth == len(keys) - 1
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if last:
                return f"names the section [{dotted}], not a setting; use {_variable(keys)}__<KEY>"
            model = annotation
        elif not last:
            return f"{dotted} is a setting, not a section"
        else:
            return annotation
    return "names no setting"  # reached only for an empty key list, which split() never yields


def _variable(keys: Sequence[str]) -> str:
    return ENV_PREFIX + "__".join(keys).upper()


def _env_value(text: str, annotation: Any) -> object:
    try:
        document = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError:
        return text
    if set(document) != {"value"}:
        return text  # text with a newline smuggled in more keys; take it literally
    value = document["value"]
    # GATEWAY_GATEWAY__HOSTNAME=2024-01-01 or =true means that text, not a date or a bool.
    if _wants_text(annotation) and not isinstance(value, str):
        return text
    return value


def _wants_text(annotation: Any) -> bool:
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    wanted = [member for member in members if member is not type(None)]
    return bool(wanted) and all(member in (str, Path) for member in wanted)


def _apply_overrides(
    raw: dict[str, Any], overrides: Sequence[_Override]
) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    data = copy.deepcopy(raw)
    origins: dict[tuple[str, ...], str] = {}
    for override in overrides:
        table: Any = data
        for key in override.keys[:-1]:
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                break  # the file has a value where a table belongs; that problem gets reported
        else:
            table[override.keys[-1]] = override.value
            origins[override.keys] = override.variable
    return data, origins


# --- turning pydantic's errors into problems for people ------------------------------------------


def _problem_from(error: ErrorDetails, origins: Mapping[tuple[str, ...], str]) -> Problem:
    loc: list[str | int] = list(error["loc"])
    if loc and loc[-1] == "[key]":
        # pydantic says a mapping's key is wrong with a "[key]" step; the key itself names the place.
        loc = loc[:-1]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, FieldProblem):
        # Keys starting with ".." replace the field the validator ran on with a sibling.
        key = cause.key
        if key.startswith(".."):
            loc, key = loc[:-1], key[2:]
        loc.extend(key.split("."))
    return Problem(_where(loc, origins), _reason(error, loc))


def _where(loc: Sequence[str | int], origins: Mapping[tuple[str, ...], str]) -> str:
    for length in range(len(loc), 0, -1):
        head = loc[:length]
        if all(isinstance(part, str) for part in head):
            variable = origins.get(tuple(str(part) for part in head))
            if variable is not None:
                return variable + _dotted(loc[length:], leading_dot=True)
    return _dotted(loc) or "(top level)"


def _dotted(loc: Sequence[str | int], *, leading_dot: bool = False) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text if leading_dot else text.removeprefix(".")


def _reason(error: ErrorDetails, loc: Sequence[str | int]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    # Never repeat what was written under [secrets]: a misplaced key may be the key itself.
    got = "" if loc[:1] == ["secrets"] else f", got {show(error.get('input'))}"
    if kind == "extra_forbidden":
        return _unknown_key_reason(loc)
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    simple = {
        "int_type": "must be a whole number",
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "string_type": "must be a string (in quotes)",
        "path_type": "must be a path (a string in quotes)",
        "list_type": 'must be a list such as ["…", "…"]',
        "tuple_type": 'must be a list such as ["…", "…"]',
        "model_type": "must be a table (a [section])",
        "model_attributes_type": "must be a table (a [section])",
        "dict_type": "must be a table (a [section])",
    }
    if kind in simple:
        return simple[kind] + got
    if kind == "literal_error":
        return f"must be {ctx.get('expected', 'one of the listed values')}{got}"
    if kind == "greater_than":
        return f"must be greater than {ctx.get('gt')}{got}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}{got}"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le')}{got}"
    if kind == "less_than":
        return f"must be less than {ctx.get('lt')}{got}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} entry"
    if kind == "missing":
        return "is required"
    message = str(error["msg"]).removeprefix("Value error, ")
    message = message.replace("Input should be", "must be").replace("Input", "the value")
    return message[:1].lower() + message[1:] + got


def _unknown_key_reason(loc: Sequence[str | int]) -> str:
    key = str(loc[-1])
    section = [str(part) for part in loc[:-1] if isinstance(part, str)]
    if section == ["secrets"] or _looks_secret(key):
        return f"unknown key {key!r}: {_secret_hint(section)}"
    if not section:
        return f"unknown section or key {key!r} at the top level; the sections are: {', '.join(SECTIONS)}"
    model = _model_at(section)
    known = ", ".join(model.model_fields) if model is not None else ""
    return f"unknown key {key!r} in [{'.'.join(section)}]" + (f"; known keys: {known}" if known else "")


_SECRET_RE = re.compile(r"key|password|passwd|secret|token|credential", re.IGNORECASE)


def _looks_secret(key: str) -> bool:
    return bool(_SECRET_RE.search(key)) and not re.search(r"_(file|files|path|dir)$", key)


def _secret_hint(section: Sequence[str]) -> str:
    if tuple(section) == ("mailbox", "imap"):
        return (
            "secrets are never written into the configuration; put the master user's password in a file "
            "only the gateway can read and name it in mailbox.imap.master_password_file, or name the "
            "environment variable holding it in mailbox.imap.master_password_env"
        )
    if tuple(section[:3]) == ("mailbox", "imap", "members"):
        return (
            "secrets are never written into the configuration; name a file holding the password in "
            "password_file (master_password_file for a master user), or the environment variable "
            "holding it in password_env (master_password_env)"
        )
    if tuple(section) == ("database",):
        return (
            "secrets are never written into the configuration; put the database password in a file only "
            "the gateway can read and name it in database.password_file"
        )
    return (
        "secrets are never written into the configuration; put the secret in a file only the "
        "gateway can read and name that file in secrets.token_key_files"
    )


def _model_at(section: Sequence[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = Settings
    keys = iter(section)
    for key in keys:
        field = model.model_fields.get(key)
        annotation = field.annotation if field is not None else None
        if get_origin(annotation) is dict:
            # A table of tables ([mailbox.imap.members."<address>"]): the next key names an entry.
            annotation = get_args(annotation)[1]
            if next(keys, None) is None:
                return None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model
