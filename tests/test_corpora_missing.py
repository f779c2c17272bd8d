"""`make test` on a clone with nothing beside it: the corpus tests are skipped and the summary says why;
under GATEWAY_REQUIRE_CORPORA=1 (.ci/run) the same run fails (issue 16, item 9)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
CORPUS_TESTS = ["tests/stages/test_corpus.py", "tests/domain/test_answers.py"]


def _pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PYTEST_"))}
    # What the Makefile sets on a clone without ../shared/corpora: a folder that is not there.
    environ["GATEWAY_TEST_CORPORA"] = str(tmp_path / "shared" / "corpora")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "0", "-p", "no:cacheprovider", *CORPUS_TESTS],
        cwd=REPOSITORY,
        env=environ | env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_without_the_corpora_everything_else_runs_and_the_summary_says_why(tmp_path: Path) -> None:
    run = _pytest(tmp_path)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "corpus tests skipped" in run.stdout
    assert f"GATEWAY_TEST_CORPORA='{tmp_path / 'shared' / 'corpora'}' is not a folder" in run.stdout
    assert " passed, 2 skipped" in run.stdout, "the other tests of those files ran"


def test_ci_requires_the_corpora(tmp_path: Path) -> None:
    run = _pytest(tmp_path, GATEWAY_REQUIRE_CORPORA="1")
    assert run.returncode == 1
    assert "2 failed" in run.stdout
    assert "GATEWAY_REQUIRE_CORPORA is set: the corpus tests must run" in run.stdout
