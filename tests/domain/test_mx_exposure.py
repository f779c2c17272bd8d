"""When sender_auth off may stand (issue 13, item 9): loopback-only MX, or a border MTA that authenticates."""

from __future__ import annotations

import pytest

from gateway.domain.mx_exposure import off_refusal


@pytest.mark.parametrize(
    ("off", "enabled", "loopback", "border", "refused"),
    [
        (["makler-muster"], True, False, False, True),
        (["makler-muster"], True, True, False, False),
        (["makler-muster"], True, False, True, False),
        (["makler-muster"], False, False, False, False),
        ([], True, False, False, False),
    ],
)
def test_off_is_refused_only_on_an_exposed_mx_without_a_border_mta(
    off: list[str], enabled: bool, loopback: bool, border: bool, refused: bool
) -> None:
    refusal = off_refusal(
        off, mx_enabled=enabled, mx_host="0.0.0.0", mx_loopback_only=loopback, border_mta_authenticates=border
    )
    assert (refusal is not None) == refused


def test_the_refusal_names_the_portfolios_and_what_to_do() -> None:
    refusal = off_refusal(
        ["zwei", "eins"],
        mx_enabled=True,
        mx_host="192.0.2.7",
        mx_loopback_only=False,
        border_mta_authenticates=False,
    )
    assert refusal is not None
    assert "portfolio(s) eins, zwei" in refusal
    assert "binds to 192.0.2.7" in refusal
    assert "--sender-auth verify" in refusal
    assert "border_mta_authenticates = true" in refusal
