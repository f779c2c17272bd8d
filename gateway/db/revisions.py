"""The schema revisions this gateway ships, read from its migration files without Alembic, and what to
say when a database is at one it does not know.

``gateway config check`` compares the database's revision with these; importing Alembic for that cost
more than the rest of the check (bench/cli_start.py). Alembic stays the truth for migrating
(``gateway.db.migrate``); tests/stages/test_peek.py holds the two side by side.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

VERSIONS = Path(__file__).parent / "migrations" / "versions"

# Every migration file sets both at module level, as Alembic's template writes them.
_REVISION_RE = re.compile(r"^revision(?:\s*:[^=]+)?\s*=\s*['\"]([^'\"]+)['\"]", re.M)
_DOWN_RE = re.compile(r"^down_revision(?:\s*:[^=]+)?\s*=\s*(?:['\"]([^'\"]+)['\"]|None)", re.M)


@dataclass(frozen=True, slots=True)
class Shipped:
    head: str
    known: frozenset[str]


@functools.cache
def shipped() -> Shipped:
    """The newest revision of the package's one line of migrations, and every revision in it."""
    parents: dict[str, str | None] = {}
    for path in sorted(VERSIONS.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        revision, down = _REVISION_RE.search(text), _DOWN_RE.search(text)
        if revision is None or down is None:
            continue  # not a migration (an __init__.py)
        parents[revision.group(1)] = down.group(1)
    heads = set(parents) - set(parents.values())
    assert len(heads) == 1, f"the migrations are one line with one head, not {sorted(heads)}"
    return Shipped(head=heads.pop(), known=frozenset(parents))


def newer_than_code(current: str, head: str) -> str:
    """Why this gateway cannot start on a database a newer one migrated, and what to do."""
    return (
        f"the database is at schema revision {current}, which this gateway (at most {head}) "
        "does not know: a newer gateway version migrated it; run that version on this node too "
        "(docs/deploy.md, Upgrading)"
    )


def behind_code(current: str, head: str) -> str:
    return (
        f"the database is at schema revision {current}, this gateway needs {head}; "
        "run `gateway db upgrade` first"
    )


def no_schema(where: str) -> str:
    return f"the database {where} has no gateway schema yet; run `gateway db upgrade` first"
