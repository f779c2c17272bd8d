"""The starter set ``gateway init DIR`` writes: the example configuration, directory and rules that ship
in the package, with the configuration's paths made relative to DIR.

The files in ``example/`` are the repository's own (config/gateway.toml, config/example/directory.yaml,
rules/example.yaml, linked there so that there is one copy to keep right); the wheel carries them as
package data. Only two lines of the configuration change: the repository keeps its data and rules one
folder above config/, a starter set keeps them inside DIR.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from gateway.errors import InputError

CONFIG_NAME = "gateway.toml"
DIRECTORY_NAME = "directory.yaml"
RULES_NAME = "rules"
README_NAME = "README.txt"

# The repository's lines and what a starter set says instead: everything under DIR.
_RELOCATIONS = (
    (re.compile(r'^data_dir = "\.\./data"$', re.MULTILINE), 'data_dir = "data"'),
    (re.compile(r'^dir = "\.\./rules"$', re.MULTILINE), 'dir = "rules"'),
)
_REPOSITORY_COMMENT = re.compile(r"; here the repository's (data|rules)/ folder\.")

README = """\
A starter set for vorgang-gateway, written by `gateway init`. Edit gateway.toml ([gateway] hostname,
[domains] reply_domain and intake addresses, the [listeners] hosts and ports, [database] url for
PostgreSQL), replace directory.yaml's example portfolio with your own, and adapt rules/; then run
`gateway --config {config} config check`. Next steps: docs/deploy.md.
"""


@dataclass(frozen=True, slots=True)
class StarterSet:
    """What ``write_starter`` wrote: the configuration file, and every file in the order written."""

    config: Path
    written: tuple[Path, ...]


def starter_files() -> dict[str, str]:
    """The starter set by path relative to DIR, as text, the configuration already relocated."""
    example = files("gateway.config") / "example"
    texts = {
        CONFIG_NAME: _relocated((example / CONFIG_NAME).read_text(encoding="utf-8")),
        DIRECTORY_NAME: (example / DIRECTORY_NAME).read_text(encoding="utf-8"),
    }
    for rule_file in sorted(_rule_files(example / RULES_NAME), key=lambda item: item.name):
        texts[f"{RULES_NAME}/{rule_file.name}"] = rule_file.read_text(encoding="utf-8")
    return texts


def _rule_files(folder: Traversable) -> list[Traversable]:
    return [item for item in folder.iterdir() if item.is_file() and item.name.endswith(".yaml")]


def _relocated(text: str) -> str:
    for pattern, line in _RELOCATIONS:
        text, count = pattern.subn(line, text)
        # The shipped file is config/gateway.toml; had its lines moved, a starter set would point outside
        # DIR. tests/deploy/test_starter.py builds one and checks where it points.
        assert count == 1, f"the example configuration has no line {pattern.pattern!r}"
    return _REPOSITORY_COMMENT.sub(".", text)


def write_starter(directory: Path) -> StarterSet:
    """Write the starter set into ``directory`` (created if missing).

    Refuses with InputError, writing nothing, when any of its files or folders exists already.
    """
    texts = starter_files()
    targets = [CONFIG_NAME, DIRECTORY_NAME, RULES_NAME, README_NAME]
    existing = [name for name in targets if (directory / name).exists()]
    if existing:
        raise InputError(
            f"{directory} already has {', '.join(existing)}; `gateway init` never overwrites: "
            "choose an empty or new directory, or move those away"
        )
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RULES_NAME).mkdir()
    written = []
    for name, text in texts.items():
        path = directory / name
        with path.open("x", encoding="utf-8") as file:
            file.write(text)
        written.append(path)
    readme = directory / README_NAME
    with readme.open("x", encoding="utf-8") as file:
        file.write(README.format(config=(directory / CONFIG_NAME).absolute()))
    written.append(readme)
    return StarterSet(directory / CONFIG_NAME, tuple(written))
