"""The files the settings name that must be there before the gateway starts: each listener's TLS
certificate and key, and the database password file. Loading settings only resolves their paths (a
configuration can be read on a machine that does not hold the files); ``config check`` and ``serve``
look at the disk."""

from __future__ import annotations

from pathlib import Path

from gateway.config.sections import Settings, read_password_file
from gateway.errors import ConfigError, Problem


def missing_files(settings: Settings) -> list[Problem]:
    """One problem per named file that is not a readable file, with the path as it was resolved."""
    base = settings.source.parent if settings.source is not None else Path.cwd()
    problems = []
    for name in ("submission", "mx", "admin_http"):
        listener = getattr(settings.listeners, name)
        if not listener.enabled:
            continue
        for key in ("tls_cert", "tls_key"):
            path: Path | None = getattr(listener, key)
            if path is not None and not path.is_file():
                what = "does not exist" if not path.exists() else "is not a file"
                problems.append(
                    Problem(
                        f"listeners.{name}.{key}",
                        f"{path} {what} (a relative path is read from {base}, the configuration's folder; "
                        "`gateway tls selfsigned` writes a development certificate there)",
                    )
                )
    if settings.database.password_file is not None:
        try:
            read_password_file("database.password_file", settings.database.password_file)
        except ConfigError as exc:
            problems.extend(exc.problems)
    return problems


def require_files(settings: Settings) -> None:
    """Raise ConfigError listing every named file that is missing."""
    problems = missing_files(settings)
    if problems:
        where = f"configuration {settings.source}" if settings.source else "configuration"
        count = len(problems)
        raise ConfigError(
            f"{where} names missing files: {count} problem{'s' if count != 1 else ''}", problems
        )
