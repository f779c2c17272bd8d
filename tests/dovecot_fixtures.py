"""The ``dovecot`` fixture: a private Dovecot per test (tests/dovecot.py), started in about 30 ms."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.dovecot import Dovecot, private_dovecot


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    """A running private Dovecot with no users yet; ``add_user`` hands them out."""
    with private_dovecot() as instance:
        yield instance
