"""Where the shared mail corpora are, and what a corpus test does without them.

The corpora live outside the repository (``../shared/corpora`` beside a clone, named by
``GATEWAY_TEST_CORPORA``). On a clone with nothing beside it the corpus tests are skipped, each with the
reason, and the run's summary says so (tests/conftest.py); where ``GATEWAY_REQUIRE_CORPORA=1`` (as
``.ci/run`` sets it) their absence is a failure, so CI never passes without them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

VARIABLE = "GATEWAY_TEST_CORPORA"
REQUIRE = "GATEWAY_REQUIRE_CORPORA"


def _is_sample(path: Path) -> bool:
    return path.is_file() and not path.name.upper().startswith(("LICENSE", "README"))


def find() -> tuple[Path | None, list[str], str]:
    """The corpus folder, every sample in it (relative, sorted), and what is wrong if nothing is found."""
    value = os.environ.get(VARIABLE, "")
    if not value:
        return None, [], f"{VARIABLE} is not set: point it at the mail corpora (make test: ../shared/corpora)"
    root = Path(value)
    if not root.is_dir():
        return None, [], f"{VARIABLE}={value!r} is not a folder; it must name the mail corpora"
    samples = sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if _is_sample(path))
    if not samples:
        return None, [], f"{VARIABLE}={value!r} holds no samples"
    return root, samples, ""


def required() -> bool:
    return os.environ.get(REQUIRE, "").strip().lower() in ("1", "true", "yes")


ROOT, SAMPLES, PROBLEM = find()


def missing() -> NoReturn:
    """Skip the calling test for want of the corpora, or fail it where they are required."""
    if required():
        pytest.fail(f"{PROBLEM} ({REQUIRE} is set: the corpus tests must run)")
    pytest.skip(f"corpus tests skipped: {PROBLEM}")


def folder() -> Path:
    """The corpus folder, for a test that reads samples from it (skips or fails without it)."""
    if ROOT is None:
        missing()
    return ROOT
