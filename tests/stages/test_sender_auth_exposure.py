"""sender_auth off where the MX listener is reachable from outside (issue 13, item 9), on SQLite and
PostgreSQL: `config check`, `directory load` and `portfolio set` refuse it with what to do, unless the
MX listener is loopback-only or [replies] border_mta_authenticates says a border MTA checks senders."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_DIRECTORY, Gateway


@pytest.fixture
def exposed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_LISTENERS__MX__HOST", "0.0.0.0")


def test_config_check_names_the_portfolios_and_what_to_do(seeded: Gateway, exposed: None) -> None:
    result = seeded("config", "check", expect=2)
    assert "sender_auth is off for portfolio(s) makler-muster" in result.stderr
    assert "binds to 0.0.0.0" in result.stderr
    assert "border_mta_authenticates = true" in result.stderr


def test_a_border_mta_that_authenticates_makes_off_acceptable(
    seeded: Gateway, exposed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_REPLIES__BORDER_MTA_AUTHENTICATES", "true")
    seeded("config", "check")
    seeded("directory", "load", str(EXAMPLE_DIRECTORY))


def test_loopback_only_mx_takes_off_as_the_embedded_default(seeded: Gateway) -> None:
    seeded("config", "check")
    seeded("directory", "load", str(EXAMPLE_DIRECTORY))


def test_directory_load_and_portfolio_set_refuse_off_on_an_exposed_mx(
    seeded: Gateway, exposed: None, tmp_path: Path
) -> None:
    verified = tmp_path / "directory.yaml"
    verified.write_text(
        EXAMPLE_DIRECTORY.read_text(encoding="utf-8").replace("sender_auth: off", "sender_auth: verify"),
        encoding="utf-8",
    )
    refused = seeded("directory", "load", str(EXAMPLE_DIRECTORY), "--dry-run", expect=2)
    assert "sender_auth is off for portfolio(s) makler-muster" in refused.stderr
    seeded("directory", "load", str(verified))
    seeded("config", "check")
    refused = seeded("portfolio", "set", "makler-muster", "--sender-auth", "off", expect=2)
    assert "--sender-auth verify" in refused.stderr
    shown = seeded("portfolio", "show", "makler-muster").stdout
    assert "verify" in shown, "nothing of the refused change was committed"
    refused = seeded("portfolio", "create", "neu", expect=2)
    assert "portfolio(s) neu" in refused.stderr
