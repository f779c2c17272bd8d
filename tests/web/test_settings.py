"""``[listeners.admin_http]``: defaults, and `gateway config check` on mistakes."""

from __future__ import annotations

from pathlib import Path

from gateway.config import load_settings
from tests.conftest import Gateway


def test_defaults() -> None:
    settings = load_settings(None, {}).listeners.admin_http
    assert (settings.enabled, settings.host, settings.port) == (True, "127.0.0.1", 8025)
    assert (settings.session_idle_timeout, settings.session_max_age) == (1800.0, 43200.0)
    assert settings.trusted_proxy_header is None
    assert not settings.trusts("127.0.0.1")


def test_config_check_names_every_mistake(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[listeners.admin_http]\n"
        'port = "web"\n'
        'tls_cert = "console.pem"\n'
        'trusted_proxy_header = "X Remote User"\n'
        'trusted_proxies = ["proxy.example"]\n'
        "session_idle_timeout = 0\n"
        'max_upload_size = "lots"\n',
        encoding="utf-8",
    )
    result = Gateway(config)("config", "check", expect=2)
    for expected in (
        "listeners.admin_http.port",
        "listeners.admin_http.tls_key: give tls_cert and tls_key together",
        "listeners.admin_http.trusted_proxy_header: must be an HTTP header name",
        "listeners.admin_http.trusted_proxies: must be IP addresses or networks",
        '10.0.0.0/24, got "proxy.example"',
        "listeners.admin_http.session_idle_timeout",
        "listeners.admin_http.max_upload_size",
    ):
        assert expected in result.stderr, result.stderr


def test_a_proxy_header_needs_the_proxies(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[listeners.admin_http]\ntrusted_proxy_header = "X-Remote-User"\n', encoding="utf-8")
    result = Gateway(config)("config", "check", expect=2)
    assert "listeners.admin_http.trusted_proxies: is empty while trusted_proxy_header is set" in result.stderr


def test_trusted_proxies_by_address_and_network(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[listeners.admin_http]\ntrusted_proxy_header = "X-Remote-User"\n'
        'trusted_proxies = ["127.0.0.1", "10.0.0.0/24"]\n',
        encoding="utf-8",
    )
    settings = load_settings(config, {}).listeners.admin_http
    assert settings.trusts("127.0.0.1")
    assert settings.trusts("10.0.0.77")
    assert not settings.trusts("10.0.1.1")
    assert not settings.trusts("not-an-address")
