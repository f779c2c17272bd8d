"""The sections of config/gateway.toml as frozen pydantic models, with every default the gateway has.

Each default sits next to a sentence saying what it does; ``config/gateway.toml`` repeats them as a
commented example and docs/configuration.md explains them. ``Settings`` holds one model per section
and the checks that span sections.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.config.dburl import DatabaseUrl
from gateway.config.types import (
    DOMAIN_RE,
    KIB,
    MIB,
    Address,
    ByteSize,
    DomainName,
    FieldProblem,
    Port,
    PositiveInt,
    ResolvedPath,
    Word,
    absolute,
    base_dir,
    normalize_address,
    show,
    to_lower,
    to_upper,
)
from gateway.domain.data_memory import session_footprint
from gateway.errors import ConfigError, Problem

ENV_PREFIX = "GATEWAY_"
"""Environment variables ``GATEWAY_<SECTION>__<KEY>`` override settings (gateway/config/loader.py)."""

RETIRED_KEYS: Mapping[tuple[str, ...], str] = {
    ("database", "pool_size"): (
        "is no longer used: serving work runs on the writer thread's one connection per process, so "
        "the setting had no effect; remove it"
    ),
    ("intake", "vorgang_header"): "moved: the section [intake] is now [vorgaenge], with the same keys",
    ("intake", "tag_subject"): "moved: the section [intake] is now [vorgaenge], with the same keys",
}
"""Keys older configuration files may still set, each with what to tell the person who set it."""

RENAMED_SECTIONS: Mapping[str, str] = {"intake": "vorgaenge"}
"""Sections older configuration files may still have, with their new names ("intake" is the intake
addresses of [domains.intake] alone)."""

DEFAULT_HOSTNAME = "gateway.localhost"
DEFAULT_DATA_DIR = Path("data")


class Section(BaseModel):
    # validate_default: defaults go through the same validators, so default paths get resolved too.
    # The attribute docstrings are for readers and docs/configuration.md: nothing reads them at run time,
    # and pydantic's use_attribute_docstrings parsed this file's source at every start (80 ms of CPU).
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class GatewaySettings(Section):
    """``[gateway]``: who this gateway is and where it keeps its state."""

    hostname: DomainName = DEFAULT_HOSTNAME
    """Name given in the SMTP greeting, in Received headers and in generated Message-IDs."""

    data_dir: ResolvedPath = DEFAULT_DATA_DIR
    """State directory; the default database, Maildir root and token key live under it."""

    node_name: Word = DEFAULT_HOSTNAME
    """Name of this process among several sharing one database (queue leases, logs). Default: hostname."""

    heartbeat_interval: Annotated[float, Field(gt=0)] = 2.0
    """Seconds between two heartbeats of this node in the node table (`gateway nodes`)."""

    node_timeout: Annotated[float, Field(gt=0)] = 10.0
    """Seconds without a heartbeat after which the other nodes count a node as dead and take over its
    leases at once (copies, flags, removals, relays, reconcile runs) instead of waiting for them to end."""

    workers: Annotated[int, Field(ge=1)] = 1
    """Processes `gateway serve` runs, sharing the listeners, each a node of its own named
    "<node_name>-<i>" (PostgreSQL only: SQLite has one writer). 1: one process, named node_name."""

    @model_validator(mode="after")
    def _timeout_spans_heartbeats(self) -> Self:
        # One late heartbeat (a busy machine, a slow commit) must not make the others take over.
        if self.node_timeout < 2 * self.heartbeat_interval:
            raise FieldProblem(
                "node_timeout",
                f"is {self.node_timeout:g} s, less than two heartbeats ({2 * self.heartbeat_interval:g} s "
                "at heartbeat_interval): one late heartbeat would make the other nodes take this one's "
                "work over; raise node_timeout or lower heartbeat_interval",
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _node_name_defaults_to_hostname(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "node_name" not in data:
            hostname = data.get("hostname", DEFAULT_HOSTNAME)
            # A bad hostname is reported once, under hostname, not again under node_name.
            if isinstance(hostname, str) and DOMAIN_RE.match(hostname.strip().lower()):
                return {**data, "node_name": hostname.strip().lower()}
        return data


class DatabaseSettings(Section):
    """``[database]``: where messages, queues and the directory are stored."""

    url: str | None = None
    """SQLAlchemy URL. Default: ``sqlite+aiosqlite:///<data_dir>/gateway.db`` (Settings.database_url)."""

    echo: bool = False
    """Log every SQL statement (debugging only: it logs message data)."""

    password_file: ResolvedPath | None = None
    """File holding the database server's password (first line), merged into ``url`` when the gateway
    connects; the URL then names no password. Read afresh at each start, never logged or shown."""

    schema_check_interval: Annotated[float, Field(gt=0)] = 30.0
    """Seconds between two looks of a running gateway at the database's schema revision, so that it
    notices within a minute when another node migrated the database past it (gateway.stages.schema_watch)."""
    # Bounded waits on PostgreSQL (issue 17): a node that stalls, or dies without closing its
    # connections, must hold the others up for seconds, never for as long as it is gone.
    lock_timeout: Annotated[float, Field(ge=0)] = 5.0
    """Seconds a statement waits for a lock another transaction holds before it gives up (PostgreSQL's
    ``lock_timeout``): acceptance answers that batch ``451 4.3.0`` and queue work tries again later.
    0: wait without limit."""

    statement_timeout: Annotated[float, Field(ge=0)] = 30.0
    """Seconds one statement of the serving work (acceptance, queues, flag sync) may run before the
    server cancels it (PostgreSQL's ``statement_timeout``). Migrations and admin commands are not
    limited. 0: no limit."""

    idle_in_transaction_timeout: Annotated[float, Field(ge=0)] = 10.0
    """Seconds a connection may sit in an open transaction without sending anything before the server
    ends it and frees its locks (PostgreSQL's ``idle_in_transaction_session_timeout``): a node frozen
    mid-transaction holds the others up at most this long. 0: no limit."""

    keepalives_idle: PositiveInt = 5
    """Seconds of silence on a database connection before TCP keepalive probes start, on both ends
    (libpq ``keepalives_idle``, the server's ``tcp_keepalives_idle``): a node whose machine or network
    is gone has its connection, and so its locks, freed after about idle + interval x count seconds."""

    keepalives_interval: PositiveInt = 2
    """Seconds between two unanswered keepalive probes."""

    keepalives_count: PositiveInt = 3
    """Unanswered keepalive probes after which the connection counts as dead."""

    @model_validator(mode="after")
    def _password_file_needs_a_server_url(self) -> Self:
        if self.password_file is None:
            return self
        if self.url is None or DatabaseUrl.parse(self.url).drivername.startswith("sqlite"):
            raise FieldProblem("password_file", "is only for a database server: set url to its URL too")
        if DatabaseUrl.parse(self.url).password is not None:
            raise FieldProblem(
                "password_file", "is set, and url names a password as well: keep the password in one place"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _no_retired_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key in data:
                reason = RETIRED_KEYS.get(("database", str(key)))
                if reason is not None:
                    raise FieldProblem(str(key), reason)
        return data

    @field_validator("url")
    @classmethod
    def _resolve_sqlite_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        try:
            url = DatabaseUrl.parse(value)
        except ValueError:
            # Not echoing the value: it may carry a password.
            raise ValueError(
                'is not a database URL such as "postgresql+asyncpg://user@host/gateway" '
                'or "sqlite+aiosqlite:///data/gateway.db"'
            ) from None
        database = url.database
        if not url.drivername.startswith("sqlite") or not database or database == ":memory:":
            return value
        if database.startswith("file:") or Path(database).is_absolute():
            return value
        resolved = absolute(Path(database), base_dir(info.context))
        return url.replace(database=str(resolved)).render(hide_password=False)


class DomainsSettings(Section):
    """``[domains]``: which addresses the MX listener accepts mail for."""

    reply_domain: DomainName = "reply.gateway.localhost"
    """Domain of the reply addresses (``reply+TOKEN@<reply_domain>``) handed to members."""

    intake: dict[Address, Word] = Field(default_factory=dict)
    """Addresses at which members open a new Vorgang, each with the portfolio it belongs to
    (``"neu@makler-muster.example" = "makler-muster"``); the MX listener accepts these and reply
    addresses, and refuses everything else. Addresses are stored lower-case."""


class ListenerSettings(Section):
    """One SMTP listener; the defaults differ per listener (see the two subclasses)."""

    enabled: bool = True
    """Start this listener with ``gateway serve``."""

    host: str = "127.0.0.1"
    """Address to bind to."""

    port: Port
    """TCP port; 0 picks a free port (tests)."""

    local_only: bool
    """Trust the network path: allows AUTH without TLS, so it must bind to a loopback address."""

    tls_cert: ResolvedPath | None = None
    """PEM certificate chain for STARTTLS; give tls_key with it."""

    tls_key: ResolvedPath | None = None
    """PEM private key for tls_cert."""

    max_connections: PositiveInt = 100
    """Concurrent connections this listener accepts before answering 421."""

    max_data_memory: ByteSize = 100 * MIB
    """Bytes of incoming messages all sessions of this listener may hold in memory at once; a session
    that would exceed it is answered 452 4.3.1 and closed. It counts what a session allocates (a growing
    buffer an eighth ahead of the bytes, and its reading buffer), and must hold one message of
    [limits] max_message_size."""

    # Field validators, not one model validator: each check reports on its own, so an operator
    # sees both a TLS and a loopback mistake in one run.  They rely on the field order above.
    @field_validator("local_only")
    @classmethod
    def _local_only_needs_loopback(cls, value: bool, info: ValidationInfo) -> bool:
        host = info.data.get("host")
        if value and isinstance(host, str) and not _is_loopback(host):
            raise FieldProblem(
                "..host",
                "local_only listeners must bind to a loopback address (127.0.0.1, ::1 or localhost), "
                f"not {show(host)}",
            )
        return value

    @field_validator("tls_key")
    @classmethod
    def _tls_cert_and_key_together(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if "tls_cert" not in info.data:
            return value  # tls_cert itself was invalid and is reported already
        cert = info.data["tls_cert"]
        if cert is not None and value is None:
            raise ValueError("tls_cert is set but tls_key is not: give both (certificate and key) or neither")
        if cert is None and value is not None:
            raise ValueError("tls_key is set but tls_cert is not: give both (certificate and key) or neither")
        return value


class SubmissionListenerSettings(ListenerSettings):
    """``[listeners.submission]``: back offices hand in mail here (AUTH required)."""

    port: Port = 2587
    """TCP port; 0 picks a free port (tests)."""

    local_only: bool = True
    """Trust the network path: allows AUTH without TLS, so it must bind to a loopback address."""

    max_unauthenticated_connections: PositiveInt = 50
    """Sessions not (yet) logged in that this listener keeps at once; the rest of max_connections is
    only ever used by back offices that have logged in."""


class MxListenerSettings(ListenerSettings):
    """``[listeners.mx]``: members' replies and intake mail arrive here (no AUTH, no relaying)."""

    port: Port = 2525
    """TCP port; 0 picks a free port (tests)."""

    local_only: bool = False
    """Trust the network path: allows AUTH without TLS, so it must bind to a loopback address."""


class AdminHttpSettings(Section):
    """``[listeners.admin_http]``: the admin web console (gateway.web), served by ``gateway serve``."""

    enabled: bool = True
    """Start the web console with ``gateway serve``."""

    host: str = "127.0.0.1"
    """Address to bind to; anything but loopback wants TLS (tls_cert, tls_key) or a reverse proxy."""

    port: Port = 8025
    """TCP port; 0 picks a free port (tests)."""

    tls_cert: ResolvedPath | None = None
    """PEM certificate chain for HTTPS; give tls_key with it. With TLS the session cookie is Secure."""

    tls_key: ResolvedPath | None = None
    """PEM private key for tls_cert."""

    session_idle_timeout: Annotated[float, Field(gt=0)] = 1800.0
    """Seconds a console session lives without a request before it must log in again."""

    session_max_age: Annotated[float, Field(gt=0)] = 12 * 3600.0
    """Seconds a console session lives at most, however busy."""

    max_connections: PositiveInt = 100
    """Concurrent HTTP connections and requests; beyond it the console answers 503."""

    max_upload_size: ByteSize = 25 * MIB
    """Largest request body (a form, an uploaded .eml) in bytes; a larger one is answered 413."""

    request_timeout: Annotated[float, Field(gt=0)] = 60.0
    """Seconds a request may take from its first byte to the end of its answer; a client that sends
    its request slower (a slowloris) or never finishes it is disconnected."""

    trusted_proxy_header: str | None = None
    """Header a trusted reverse proxy sets to the login of the admin it authenticated (for example
    "X-Remote-User"); unset: no proxy login. The login must be an existing admin account."""

    trusted_proxies: tuple[str, ...] = ()
    """Client addresses (or networks, "10.0.0.0/24") of the reverse proxies whose trusted_proxy_header
    counts; from any other peer the header is ignored."""

    metrics_public: bool = False
    """Serve /metrics to anyone who reaches the console; false: only to the metrics_allow addresses."""

    metrics_allow: tuple[str, ...] = ("127.0.0.1", "::1")
    """Client addresses (or networks, "10.0.0.0/24") that may read /metrics when metrics_public is false:
    the Prometheus server. /healthz and /readyz are open to all; they tell nothing secret."""

    @field_validator("tls_key")
    @classmethod
    def _tls_cert_and_key_together(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if "tls_cert" not in info.data:
            return value
        cert = info.data["tls_cert"]
        if (cert is None) != (value is None):
            raise ValueError("give tls_cert and tls_key together (certificate and key) or neither")
        return value

    @field_validator("trusted_proxy_header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9-]+", value):
            raise ValueError(f"must be an HTTP header name (letters, digits, -), got {show(value)}")
        return value

    @field_validator("trusted_proxies", "metrics_allow")
    @classmethod
    def _proxy_addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"must be IP addresses or networks like 127.0.0.1 or 10.0.0.0/24, got {show(entry)}"
                ) from None
        return value

    @model_validator(mode="after")
    def _header_needs_proxies(self) -> Self:
        if self.trusted_proxy_header is not None and not self.trusted_proxies:
            raise FieldProblem(
                "trusted_proxies",
                "is empty while trusted_proxy_header is set: name the reverse proxies' addresses, "
                "or anyone could log in by sending the header",
            )
        return self

    def trusts(self, peer: str) -> bool:
        """Whether ``peer`` (a client address) is one of the trusted reverse proxies."""
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(entry, strict=False) for entry in self.trusted_proxies)

    def may_scrape(self, peer: str) -> bool:
        """Whether ``peer`` (a client address) may read /metrics."""
        if self.metrics_public:
            return True
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(entry, strict=False) for entry in self.metrics_allow)


def loopback_only(listener: ListenerSettings) -> bool:
    """Whether ``listener`` binds to a loopback address only (reachable from this machine alone)."""
    return _is_loopback(listener.host)


class ListenersSettings(Section):
    """``[listeners.*]``: the two SMTP listeners and the admin web console."""

    submission: SubmissionListenerSettings = Field(default_factory=SubmissionListenerSettings)
    """Submission listener for back offices."""

    mx: MxListenerSettings = Field(default_factory=MxListenerSettings)
    """MX listener for replies and intake addresses."""

    admin_http: AdminHttpSettings = Field(default_factory=AdminHttpSettings)
    """The admin web console (HTTP)."""


_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_name(value: str) -> str:
    # Not echoing the value: someone who misread the key may have written the password itself.
    if not _ENV_NAME_RE.fullmatch(value):
        raise ValueError(
            "is not the name of an environment variable (letters, digits and _, not starting with a "
            "digit): write the variable's name here and put the password into that variable"
        )
    rest = value.upper()[len(ENV_PREFIX) :] if value.upper().startswith(ENV_PREFIX) else ""
    if rest and ("__" in rest or rest.lower() in SECTIONS):
        raise ValueError(
            f"{value} has the form {ENV_PREFIX}<SECTION>__<KEY>, which the gateway reads as a setting "
            "override; give the password variable another name"
        )
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]
"""The name of an environment variable holding a secret; the value is read when it is needed. It is
checked here, next to the sections, because a name that reads as a setting override must be refused."""


ImapPort = Annotated[StrictInt, Field(ge=1, le=65535)]
ImapTls = Annotated[Literal["none", "starttls", "tls"], BeforeValidator(to_lower)]


def _both_password_sources(prefix: str) -> str:
    return f"{prefix}password_file is set too: give {prefix}password_file or {prefix}password_env, not both"


class ImapMemberSettings(Section):
    """``[mailbox.imap.members."<address>"]``: one member's mailbox, where it differs from [mailbox.imap].

    Every key is optional and defaults to [mailbox.imap]'s. The login is either the master user's
    (``master_user`` with ``master_password_file`` or ``master_password_env``) or the member's own
    account (``login`` with ``password_file`` or ``password_env``), each with exactly one password source.
    """

    host: str | None = None
    """IMAP server address. Default: [mailbox.imap] host."""

    port: ImapPort | None = None
    """IMAP server port. Default: [mailbox.imap] port."""

    tls: ImapTls | None = None
    """"none", "starttls" or "tls". Default: [mailbox.imap] tls."""

    folder: str | None = None
    """Folder new copies are appended to. Default: [mailbox.imap] folder."""

    master_user: str | None = None
    """Master user on this member's server (login ``<member>*<master_user>``). Default: [mailbox.imap]'s."""

    master_password_file: ResolvedPath | None = None
    """File holding that master user's password. Default: [mailbox.imap]'s password source."""

    master_password_env: EnvName | None = None
    """Environment variable holding that master user's password (instead of master_password_file)."""

    login: str | None = None
    """The member's own IMAP login, where the gateway has no master user; give password_file or
    password_env with it."""

    password_file: ResolvedPath | None = None
    """File holding the password of login."""

    password_env: EnvName | None = None
    """Environment variable holding the password of login (instead of password_file)."""

    @field_validator("login")
    @classmethod
    def _login_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _one_way_to_log_in(self) -> Self:
        if not self.model_fields_set:
            raise ValueError(
                "overrides nothing: give host, port, tls, folder, or a login "
                "(login with password_file or password_env; master_user with master_password_file "
                "or master_password_env)"
            )
        master_keys = [
            key
            for key in ("master_user", "master_password_file", "master_password_env")
            if getattr(self, key) is not None
        ]
        if self.login is not None:
            if master_keys:
                raise FieldProblem(
                    master_keys[0],
                    "belongs to a master-user login, but login names the member's own account: "
                    "give one way to log in",
                )
            if self.password_file is None and self.password_env is None:
                raise FieldProblem("login", "needs the member's password: give password_file or password_env")
            if self.password_file is not None and self.password_env is not None:
                raise FieldProblem("password_env", _both_password_sources(""))
            return self
        for key in ("password_file", "password_env"):
            if getattr(self, key) is not None:
                raise FieldProblem(
                    key,
                    "is the password of a member's own login: give login too (a master user's "
                    "password goes into master_password_file or master_password_env)",
                )
        if (
            self.master_user is not None
            and self.master_password_file is None
            and self.master_password_env is None
        ):
            raise FieldProblem(
                "master_user", "needs its password here: give master_password_file or master_password_env"
            )
        if self.master_password_file is not None and self.master_password_env is not None:
            raise FieldProblem("master_password_env", _both_password_sources("master_"))
        return self

    @property
    def names_login(self) -> bool:
        """Whether the table says how to log in, rather than taking [mailbox.imap]'s master login."""
        return any(
            getattr(self, key) is not None
            for key in ("login", "master_user", "master_password_file", "master_password_env")
        )


class ImapSettings(Section):
    """``[mailbox.imap]``: the IMAP server holding members' mailboxes (backend = "imap")."""

    host: str = "127.0.0.1"
    """IMAP server address."""

    port: ImapPort = 143
    """IMAP server port."""

    tls: ImapTls = "starttls"
    """How to secure the connection: "none", "starttls" (port 143) or "tls" (port 993)."""

    master_user: str | None = None
    """Dovecot master user; the gateway logs in as ``<member>*<master_user>``. Required for imap."""

    master_password_file: ResolvedPath | None = None
    """File holding the master user's password (secrets never go into this file)."""

    master_password_env: EnvName | None = None
    """Environment variable holding the master user's password, instead of master_password_file."""

    folder: str = "INBOX"
    """Folder new copies are appended to."""

    members: dict[Address, ImapMemberSettings] = Field(default_factory=dict)
    """Members whose mailbox is elsewhere or needs another login, by address (stored lower-case):
    ``[mailbox.imap.members."<address>"]`` tables overriding host, port, tls, folder and the login."""

    @field_validator("master_password_env")
    @classmethod
    def _one_master_password_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("master_password_file") is not None:
            raise ValueError(_both_password_sources("master_"))
        return value

    @field_validator("members", mode="before")
    @classmethod
    def _one_table_per_member(cls, value: object) -> object:
        if not isinstance(value, Mapping):
            return value
        spelled: dict[str, str] = {}
        for key in value:
            try:
                address = normalize_address(str(key))
            except ValueError:
                continue  # reported as an invalid address
            if address in spelled:
                raise FieldProblem(
                    str(key), f"names the same member as {show(spelled[address])}: give one table per member"
                )
            spelled[address] = str(key)
        return value

    @field_validator("members")
    @classmethod
    def _other_servers_say_how_to_log_in(
        cls, value: dict[str, ImapMemberSettings], info: ValidationInfo
    ) -> dict[str, ImapMemberSettings]:
        # The master password of [mailbox.imap]'s server is never sent to another server unless the
        # configuration says so for that member.
        for address, member in value.items():
            moved = (member.host is not None and member.host != info.data.get("host")) or (
                member.port is not None and member.port != info.data.get("port")
            )
            if moved and not member.names_login:
                raise FieldProblem(
                    address,
                    "is on another server (host or port) but names no login for it: give login with "
                    "password_file or password_env, or master_user with master_password_file or "
                    "master_password_env",
                )
        return value


class MailboxSettings(Section):
    """``[mailbox]``: where members' copies are delivered."""

    backend: Annotated[Literal["maildir", "imap"], BeforeValidator(to_lower)] = "maildir"
    """"maildir" (files under maildir_root, can be served by Dovecot) or "imap" (any IMAP server)."""

    maildir_root: ResolvedPath = DEFAULT_DATA_DIR / "mail"
    """Root of the members' Maildirs. Default: <data_dir>/mail."""

    maildir_sync: Annotated[Literal["batch", "each"], BeforeValidator(to_lower)] = "batch"
    """How Maildir copies are made durable before they count as delivered. "batch": the copies of a
    fan-out batch are written, then the file system is synced once (Linux syncfs(2)); "each": every
    file and its directory are fsynced on their own, as most delivery agents do (portable, and much
    slower where a sync is expensive: 0.75 ms of kernel time per copy on the project's machine).
    Where syncfs is not available, "batch" falls back to "each"."""

    imap: ImapSettings = Field(default_factory=ImapSettings)
    """IMAP server settings, used when backend = "imap"."""

    @model_validator(mode="after")
    def _imap_needs_master_user(self) -> Self:
        if self.backend != "imap":
            return self
        if self.imap.master_user is None:
            raise FieldProblem("imap.master_user", 'is required when mailbox.backend is "imap"')
        if self.imap.master_password_file is None and self.imap.master_password_env is None:
            raise FieldProblem(
                "imap.master_password_file",
                'is required when mailbox.backend is "imap": give master_password_file or '
                "master_password_env",
            )
        return self


class SecretsSettings(Section):
    """``[secrets]``: files holding secrets; the secrets themselves never appear in the configuration."""

    token_key_files: Annotated[tuple[ResolvedPath, ...], Field(min_length=1)] = (
        DEFAULT_DATA_DIR / "secrets" / "token.key",
    )
    """Reply-token HMAC keys: the first signs new tokens, the others keep older tokens valid (rotation).
    Default: [<data_dir>/secrets/token.key]."""


class LimitsSettings(Section):
    """``[limits]``: what a client may send before it gets a clear refusal (DESIGN.md §8)."""

    max_message_size: ByteSize = 25 * MIB
    """Largest message accepted (announced as SIZE)."""

    max_recipients: PositiveInt = 100
    """RCPT TO commands accepted per message."""

    max_header_size: ByteSize = 64 * KIB
    """Largest header section accepted."""

    max_line_length: PositiveInt = 998
    """Longest line accepted, without CRLF (RFC 5322's limit); longer lines are refused with 500 5.5.2."""

    max_connections_per_client: PositiveInt = 20
    """Concurrent connections from one client address."""

    max_messages_per_minute_per_client: PositiveInt = 6000
    """Messages accepted per minute from one client address."""

    max_received_hops: PositiveInt = 30
    """Received headers after which a message is refused as a mail loop."""

    idle_timeout: Annotated[float, Field(gt=0)] = 300.0
    """Seconds an SMTP client may stay silent before the gateway hangs up (RFC 5321 4.5.3.2: 5 minutes)."""

    session_timeout: Annotated[float, Field(gt=0)] = 1800.0
    """Seconds one SMTP session may last, however busy; then 421 4.4.2 (a message being stored finishes)."""

    data_timeout: Annotated[float, Field(gt=0)] = 600.0
    """Seconds one message may take to arrive, from DATA to its final dot; then 421 4.4.2."""

    login_timeout: Annotated[float, Field(gt=0)] = 30.0
    """Seconds a session at a listener that requires AUTH (submission) may take to log in; then 421 4.7.0."""

    evict_idle_after: Annotated[float, Field(gt=0)] = 10.0
    """When a listener is full, a session silent this many seconds, not logged in and not sending a
    message, gives its slot to a new connection (421 4.4.2)."""

    parse_workers: Annotated[int, Field(ge=1, le=64)] = 2
    """Worker processes per listener that read received mail (MIME parsing never runs in the event loop)."""

    parse_timeout: Annotated[float, Field(gt=0)] = 10.0
    """Seconds a received message may take to be read, waiting for a free worker included; over it the
    client gets 451 4.3.0 and the worker, if still busy, is replaced."""

    auth_failure_delay: Annotated[float, Field(ge=0)] = 1.0
    """Seconds the answer to a failed login is held back; doubles with each further failure from the
    same address, up to auth_failure_max_delay."""

    auth_failure_max_delay: Annotated[float, Field(ge=0)] = 16.0
    """The longest a failed login's answer is held back; the wait does not count as the client's
    idleness, so it may be longer than idle_timeout."""

    auth_failure_window: Annotated[float, Field(gt=0)] = 900.0
    """Seconds a failed login counts towards the limits below."""

    auth_max_failures_per_address: PositiveInt = 10
    """Failed logins from one client address (within auth_failure_window) after which its logins are
    refused with 454 4.7.0."""

    auth_max_failures_per_login: PositiveInt = 30
    """Failed logins for one login name from all addresses (within auth_failure_window) after which that
    login is refused with 454 4.7.0 to every address that failed for it; an address without a failure
    keeps logging in."""


class VorgaengeSettings(Section):
    """``[vorgaenge]``: how accepted mail is attached to Vorgänge and how members' copies show theirs."""

    vorgang_header: Word = "X-Gateway-Vorgang"
    """Header a back office may set to name the Vorgang a message belongs to (VG-YYYY-NNNNNN)."""

    tag_subject: bool = True
    """Put the Vorgang's tag ([VG-…]) in front of a copy's subject when the subject lacks it."""


class FanoutSettings(Section):
    """``[fanout]``: the worker that writes pending copies into members' mailboxes."""

    enabled: bool = True
    """Run the fan-out worker in this process (off: another gateway process sharing the database does)."""

    batch_size: PositiveInt = 100
    """Copies taken from the queue in one go."""

    batches_in_flight: PositiveInt = 4
    """Batches of copies being written at once: each mailbox writes its copies as soon as its last
    write is through, so the next batch goes out while the last one's slowest mailbox finishes. At
    most ``batch_size * batches_in_flight`` copies are held in memory for writing."""

    max_attempts: PositiveInt = 12
    """Attempts before a copy is held for an admin (with exponential backoff in between)."""

    retry_base: Annotated[float, Field(gt=0)] = 5.0
    """Seconds before the first retry; each further retry waits twice as long."""

    retry_max: Annotated[float, Field(gt=0)] = 3600.0
    """Longest wait between two attempts, in seconds."""

    poll_interval: Annotated[float, Field(gt=0)] = 1.0
    """Seconds between looks at the queue when nothing woke the worker (other processes' mail)."""

    lease: Annotated[float, Field(gt=0)] = 60.0
    """Seconds a taken copy stays reserved for this process before another may retry it."""

    # -- copies that wait: held copies come back by themselves, the back office is told (issue 13) --

    held_retry: Annotated[float, Field(gt=0)] = 600.0
    """Seconds between two tries of a mailbox whose copies are held (after max_attempts): one held copy
    is written as a probe; once it (or any copy) reaches the mailbox, all its held copies are due again."""

    delay_notice_after: Annotated[float, Field(ge=0)] = 4 * 3600.0
    """Seconds a copy of a back office's mail may wait undelivered before the back office gets a delay
    notice (RFC 3464, action=delayed) through the relay; 0: never. Default: 4 hours."""

    lifetime: Annotated[float, Field(gt=0)] = 5 * 24 * 3600.0
    """Seconds after which the gateway gives up on a copy not yet delivered: it is marked failed and the
    back office gets a failure notice (action=failed). Default: 5 days, as [relay] lifetime."""


class FlagSyncSettings(Section):
    """``[flagsync]``: the watcher that carries flags members set to their co-members' copies."""

    enabled: bool = True
    """Run the flag watcher in this process (off: another gateway process sharing the database does)."""

    poll_interval: Annotated[float, Field(gt=0)] = 1.0
    """Seconds between two looks at every mailbox holding gateway copies."""

    idle: bool = True
    """Watch mailboxes with IMAP IDLE besides polling, so a flag set there travels in the server's
    notify delay rather than up to a poll interval (IMAP backend; Maildir is only polled)."""

    idle_all: bool = True
    """Watch every mailbox holding gateway copies with IDLE (up to ``idle_mailboxes``), not only those
    of members who changed a flag within ``idle_window``: a member's first flag then travels as fast
    as a later one. Off: a mailbox is watched only after a poll found its member's change."""

    idle_mailboxes: Annotated[StrictInt, Field(ge=0)] = 50
    """Most mailboxes watched with IDLE at once, each on an IMAP connection of its own (outside the
    pool's ``max_connections``). Members who changed a flag lately come first; the others are polled."""

    idle_window: Annotated[float, Field(gt=0)] = 900.0
    """Seconds a member counts as reading after their last flag change: their mailbox keeps its IDLE
    watch before those of members who did not (and, without ``idle_all``, only then has one)."""

    idle_refresh: Annotated[float, Field(gt=0, le=1740)] = 300.0
    """Seconds after which IDLE is ended and started again: RFC 2177 asks for at most 29 minutes, and
    a shorter round notices a dead connection (a NAT that forgot it) sooner."""


class ReconcileSettings(Section):
    """``[reconcile]``: the worker that brings existing copies in line after a directory change."""

    enabled: bool = True
    """Run the reconcile worker in this process (off: another gateway process sharing the database does)."""

    batch_size: PositiveInt = 500
    """Messages reconciled in one transaction; a run never reads more of a portfolio at once."""

    poll_interval: Annotated[float, Field(gt=0)] = 5.0
    """Seconds between looks for open runs (a directory change in another process, such as the CLI)."""

    lease: Annotated[float, Field(gt=0)] = 120.0
    """Seconds a run stays reserved for this process after its last batch; then another may go on."""


class RepliesSettings(Section):
    """``[replies]``: how members' replies at the MX listener are checked."""

    authserv_id: str | None = None
    """The authserv-id our own border MTA writes into Authentication-Results; needed by portfolios whose
    sender_auth is "trust-authentication-results" (headers with any other id are ignored). Default: none."""

    dns_timeout: Annotated[float, Field(gt=0)] = 5.0
    """Seconds a DNS lookup may take when a portfolio's sender_auth is "verify"."""

    max_recorded_size: ByteSize = 64 * KIB
    """Bytes kept of an auto-reply, bounce or loop at a reply address (its head, cut at a line end); such
    mail is recorded in the Vorgang, never copied or relayed, so its attachments need not be kept."""

    # -- when sender_auth "off" is safe (issue 13, item 9) --

    border_mta_authenticates: bool = False
    """Say true only when a border MTA in front of the MX listener checks senders (SPF, DKIM, DMARC) and
    refuses mail that fails. A portfolio's sender_auth "off" is accepted only where this is true or the
    MX listener binds to a loopback address; elsewhere anyone holding a member's copy could post as any
    member of its audience, and `gateway serve`, `config check` and `directory load` refuse it."""


class RelaySettings(Section):
    """``[relay]``: the queue that delivers members' replies to the back offices' SMTP servers."""

    enabled: bool = True
    """Run the relay worker in this process (off: another gateway process sharing the database does)."""

    lifetime: Annotated[float, Field(gt=0)] = 5 * 24 * 3600.0
    """Seconds a reply is retried before the member gets a failure report (DSN). Default: 5 days."""

    retry_base: Annotated[float, Field(gt=0)] = 60.0
    """Seconds before the first retry; each further retry waits twice as long."""

    retry_max: Annotated[float, Field(gt=0)] = 3600.0
    """Longest wait between two attempts, in seconds."""

    poll_interval: Annotated[float, Field(gt=0)] = 1.0
    """Seconds between looks at the queue when nothing woke the worker."""

    lease: Annotated[float, Field(gt=0)] = 300.0
    """Seconds a taken mail stays reserved for this process; longer than any SMTP conversation."""


class RulesSettings(Section):
    """``[rules]``: the routing rules files (docs/rules.md)."""

    dir: ResolvedPath = Path("rules")
    """Directory of the rules files (``*.yaml``, read in name order); one that does not exist means no
    rules. Default: "rules" next to the configuration file."""

    reload_interval: Annotated[float, Field(gt=0)] = 2.0
    """Seconds between two looks at the files for changes (a running gateway also reloads on SIGHUP)."""


class LoggingSettings(Section):
    """``[logging]``: how much the gateway logs, and in which shape."""

    level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(to_upper)] = "INFO"
    """Lowest level logged (case-insensitive)."""

    format: Annotated[Literal["text", "json"], BeforeValidator(to_lower)] = "text"
    """"text" for people, "json" (one object per line) for log collectors."""


SECTIONS: Mapping[str, type[Section]] = {
    "gateway": GatewaySettings,
    "database": DatabaseSettings,
    "domains": DomainsSettings,
    "listeners": ListenersSettings,
    "mailbox": MailboxSettings,
    "vorgaenge": VorgaengeSettings,
    "fanout": FanoutSettings,
    "flagsync": FlagSyncSettings,
    "reconcile": ReconcileSettings,
    "replies": RepliesSettings,
    "relay": RelaySettings,
    "secrets": SecretsSettings,
    "limits": LimitsSettings,
    "logging": LoggingSettings,
    "rules": RulesSettings,
}


class Settings(BaseModel):
    """All settings, validated and frozen; build it with :func:`load_settings` or directly in tests."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    domains: DomainsSettings = Field(default_factory=DomainsSettings)
    listeners: ListenersSettings = Field(default_factory=ListenersSettings)
    mailbox: MailboxSettings = Field(default_factory=MailboxSettings)
    vorgaenge: VorgaengeSettings = Field(default_factory=VorgaengeSettings)
    fanout: FanoutSettings = Field(default_factory=FanoutSettings)
    flagsync: FlagSyncSettings = Field(default_factory=FlagSyncSettings)
    reconcile: ReconcileSettings = Field(default_factory=ReconcileSettings)
    replies: RepliesSettings = Field(default_factory=RepliesSettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    secrets: SecretsSettings = Field(default_factory=SecretsSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    rules: RulesSettings = Field(default_factory=RulesSettings)

    # Private, not a field: a key named "source" in the TOML must stay an unknown key.
    _source: Path | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _derive_from_data_dir(cls, data: Any, info: ValidationInfo) -> Any:
        # Section defaults built by default_factory would miss the validation context (the config
        # directory) and the data_dir they derive from, so every section goes through here as a table.
        if not isinstance(data, Mapping):
            return data
        for old, new in RENAMED_SECTIONS.items():
            if old in data:
                raise FieldProblem(old, f"is now [{new}], with the same keys: rename the section")
        tables: dict[str, Any] = {name: {} for name in SECTIONS} | dict(data)
        data_dir = _data_dir_of(tables["gateway"], info.context)
        if data_dir is None:
            return tables  # gateway.data_dir is invalid and will be reported as such
        derived: dict[str, dict[str, object]] = {
            "mailbox": {"maildir_root": data_dir / "mail"},
            "secrets": {"token_key_files": [data_dir / "secrets" / "token.key"]},
        }
        for section, defaults in derived.items():
            table = tables[section]
            if isinstance(table, Mapping):
                tables[section] = defaults | dict(table)
        return tables

    @model_validator(mode="after")
    def _one_message_fits_the_data_budget(self) -> Self:
        # A budget smaller than one message of the largest size would answer every such message
        # 452 (try again later), and the sender would retry it for days.
        needed = session_footprint(self.limits.max_message_size, self.limits.max_line_length + 2)
        for name in ("submission", "mx"):
            listener: ListenerSettings = getattr(self.listeners, name)
            if listener.max_data_memory < needed:
                raise FieldProblem(
                    f"listeners.{name}.max_data_memory",
                    f"is {listener.max_data_memory} bytes, less than one message of [limits] "
                    f"max_message_size ({self.limits.max_message_size} bytes) holds while it arrives "
                    f"({needed} bytes with its growing buffer and reading buffer): raise it to at least "
                    f"{needed}, or lower max_message_size",
                )
        return self

    @model_validator(mode="after")
    def _workers_need_a_database_server(self) -> Self:
        refusal = workers_refusal(self.gateway.workers, self.database_url_unresolved)
        if refusal is not None:
            raise FieldProblem("gateway.workers", refusal)
        return self

    @property
    def database_url_unresolved(self) -> str:
        """``database_url`` without reading the password file (enough to tell which database it is)."""
        if self.database.url is None:
            return f"sqlite+aiosqlite:///{self.gateway.data_dir / 'gateway.db'}"
        return self.database.url

    @property
    def database_url(self) -> str:
        """The database URL to use: ``database.url``, else a SQLite file in data_dir."""
        if self.database.url is None:
            return f"sqlite+aiosqlite:///{self.gateway.data_dir / 'gateway.db'}"
        if self.database.password_file is None:
            return self.database.url
        return (
            DatabaseUrl.parse(self.database.url)
            .replace(password=read_password_file("database.password_file", self.database.password_file))
            .render(hide_password=False)
        )

    @property
    def source(self) -> Path | None:
        """The configuration file these settings were read from; None for defaults and environment only."""
        return self._source


def workers_refusal(workers: int, database_url: str) -> str | None:
    """Why ``workers`` processes cannot share ``database_url``; None when they can."""
    if workers > 1 and DatabaseUrl.parse(database_url).backend == "sqlite":
        return (
            f"is {workers}, but the database is SQLite, which has one writer: several processes would "
            "queue on its lock instead of working side by side; use 1, or a PostgreSQL [database] url "
            "(docs/scaling.md)"
        )
    return None


def read_password_file(key: str, path: Path) -> str:
    """The password in the file ``key`` names (its first line); ConfigError naming both when there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            "configuration is invalid: 1 problem", [Problem(key, f"cannot read {path}: {exc.strerror}")]
        ) from exc
    password = text.splitlines()[0].strip() if text.strip() else ""
    if not password:
        raise ConfigError("configuration is invalid: 1 problem", [Problem(key, f"{path} is empty")])
    return password


def _data_dir_of(table: object, context: object) -> Path | None:
    if isinstance(table, GatewaySettings):
        return table.data_dir
    if not isinstance(table, Mapping):
        return None
    raw = table.get("data_dir", DEFAULT_DATA_DIR)
    if isinstance(raw, Path) or (isinstance(raw, str) and raw.strip()):
        return absolute(Path(raw), base_dir(context))
    return None


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
