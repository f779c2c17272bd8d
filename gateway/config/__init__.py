"""Configuration: config/*.toml plus GATEWAY_… environment overrides -> frozen, validated settings.

The package's modules, one job each:

- ``types``: the annotated value types (paths relative to the config file, sizes, addresses …);
- ``sections``: one frozen model per section of config/gateway.toml, with every default the gateway has;
- ``loader``: finding the file (``--config``, ``$GATEWAY_CONFIG``, ``./config``, ``/etc``), reading it and
  the overrides, and turning pydantic's errors into problems for people;
- ``starter``: the starter set ``gateway init`` writes, from the examples shipped in ``example/``;
- ``report``: the resolved settings as data (``gateway config show``), secrets masked;
- ``files``: the files the settings name (TLS certificates and keys, a password file) are there.

Everything callers use is importable from ``gateway.config`` itself.
"""

from gateway.config.files import missing_files, require_files
from gateway.config.loader import (
    DEFAULT_CONFIG_PATH,
    SYSTEM_CONFIG_PATH,
    FoundConfig,
    config_path,
    find_config,
    load_settings,
)
from gateway.config.report import describe
from gateway.config.sections import (
    AdminHttpSettings,
    DatabaseSettings,
    DomainsSettings,
    FanoutSettings,
    FlagSyncSettings,
    GatewaySettings,
    ImapMemberSettings,
    ImapSettings,
    LimitsSettings,
    ListenerSettings,
    ListenersSettings,
    LoggingSettings,
    MailboxSettings,
    MxListenerSettings,
    ReconcileSettings,
    RelaySettings,
    RepliesSettings,
    RulesSettings,
    SecretsSettings,
    Settings,
    SubmissionListenerSettings,
    VorgaengeSettings,
    loopback_only,
    workers_refusal,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "SYSTEM_CONFIG_PATH",
    "AdminHttpSettings",
    "DatabaseSettings",
    "DomainsSettings",
    "FanoutSettings",
    "FlagSyncSettings",
    "FoundConfig",
    "GatewaySettings",
    "ImapMemberSettings",
    "ImapSettings",
    "LimitsSettings",
    "ListenerSettings",
    "ListenersSettings",
    "LoggingSettings",
    "MailboxSettings",
    "MxListenerSettings",
    "ReconcileSettings",
    "RelaySettings",
    "RepliesSettings",
    "RulesSettings",
    "SecretsSettings",
    "Settings",
    "SubmissionListenerSettings",
    "VorgaengeSettings",
    "config_path",
    "describe",
    "find_config",
    "load_settings",
    "loopback_only",
    "missing_files",
    "require_files",
    "workers_refusal",
]
