"""The annotated value types of the settings: paths relative to the config file, ports, sizes, domain
names, addresses, single words, and the error a cross-field check raises.

Each type validates and normalises one kind of value, so a section model (gateway/config/sections.py)
only names its fields; the messages here are written for the person editing config/gateway.toml.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BeforeValidator, Field, StrictInt, ValidationInfo

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class PathContext:
    """Validation context: what relative paths are relative to."""

    base_dir: Path


def base_dir(context: object) -> Path:
    # Settings built directly in code (tests) have no context; they mean the working directory.
    return context.base_dir if isinstance(context, PathContext) else Path.cwd()


def absolute(path: Path, base: Path) -> Path:
    # normpath rather than resolve(): following symlinks would make the reported paths differ from
    # what the operator wrote, and the files need not exist yet.
    return Path(os.path.normpath(base / path.expanduser()))


def _reject_empty_path(value: object) -> object:
    # Path("") is ".", which would silently mean "the config directory itself".
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty")
    return value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    return absolute(value, base_dir(info.context))


ResolvedPath = Annotated[Path, BeforeValidator(_reject_empty_path), AfterValidator(_resolve_path)]
"""A path; relative ones are taken relative to the config file's directory."""

Port = Annotated[StrictInt, Field(ge=0, le=65535)]
"""A TCP port to listen on; 0 lets the system pick a free one (tests)."""

PositiveInt = Annotated[StrictInt, Field(gt=0)]

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": KIB,
    "mib": MIB,
    "gib": 1024 * MIB,
}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_SIZE_EXAMPLES = 'a number of bytes or a size such as "25MiB", "10MB" or "512KiB"'


def _parse_size(value: object) -> object:
    # bool is an int in Python; "true" bytes is a mistake, not 1.
    if isinstance(value, bool):
        raise ValueError(f"must be {_SIZE_EXAMPLES}, got {show(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    raise ValueError(f"must be {_SIZE_EXAMPLES}, got {show(value)}")


ByteSize = Annotated[int, BeforeValidator(_parse_size), Field(gt=0)]
"""A size in bytes; accepts an int or a string with a unit (``25MiB``, ``10MB``, ``512KiB``)."""

DOMAIN_RE = re.compile(r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")


def _domain_name(value: str) -> str:
    name = value.strip().lower()
    if not DOMAIN_RE.match(name):
        raise ValueError(f"{show(value)} is not a valid domain name")
    return name


def normalize_address(value: str) -> str:
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"{show(value)} is not a valid address: {exc}") from None
    # Local parts are case-sensitive in theory only; matching RCPT TO needs one spelling.
    return checked.normalized.lower()


def _non_blank(value: str) -> str:
    text = value.strip()
    if not text or any(ch.isspace() for ch in text):
        raise ValueError(f"must be a single word without spaces, got {show(value)}")
    return text


def to_upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def to_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


DomainName = Annotated[str, AfterValidator(_domain_name)]
Address = Annotated[str, AfterValidator(normalize_address)]
Word = Annotated[str, AfterValidator(_non_blank)]


class FieldProblem(ValueError):
    """A cross-field check that failed; ``key`` (dotted, relative to the model) says where to point."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key


def show(value: object) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (str, int, float, list, tuple, dict)):
        text = json.dumps(value, ensure_ascii=False, default=str)
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "…"
