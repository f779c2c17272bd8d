"""Configuration loading: the example file, path resolution, GATEWAY_… overrides, every problem reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.config import (
    DEFAULT_CONFIG_PATH,
    Settings,
    config_path,
    describe,
    load_settings,
)
from gateway.errors import ConfigError, Problem

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "gateway.toml"


def write(tmp_path: Path, text: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / "etc" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path | None, environ: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ or {})
    assert caught.value.problems, "a ConfigError must say what is wrong"
    return list(caught.value.problems)


def only_problem(path: Path | None, environ: dict[str, str] | None = None) -> Problem:
    problems = problems_of(path, environ)
    assert len(problems) == 1, problems
    return problems[0]


# --- the example file ---------------------------------------------------------------------------------


def test_example_file_loads_with_the_embedded_defaults() -> None:
    settings = load_settings(EXAMPLE, {})

    assert settings.source == EXAMPLE
    assert settings.gateway.data_dir == REPO / "data"
    assert settings.database_url == f"sqlite+aiosqlite:///{REPO / 'data' / 'gateway.db'}"
    assert settings.mailbox.backend == "maildir"
    assert settings.mailbox.maildir_root == REPO / "data" / "mail"
    assert settings.secrets.token_key_files == (REPO / "data" / "secrets" / "token.key",)
    assert settings.listeners.submission.host == "127.0.0.1"
    assert settings.listeners.mx.host == "127.0.0.1"
    # Apart from data_dir (which the example points at the repository's data/), the file restates the
    # defaults: loading nothing but that data_dir must give the same settings.
    defaults = load_settings(None, {"GATEWAY_GATEWAY__DATA_DIR": str(REPO / "data")})
    assert describe(settings) | {"source": None} == describe(defaults)


def test_example_file_works_from_another_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings(EXAMPLE, {}).gateway.data_dir == REPO / "data"


def test_every_setting_in_the_example_is_documented() -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        stripped = line.lstrip("# ")
        if "=" in line and not line.startswith("#") and not stripped.startswith("["):
            assert lines[number - 1].startswith("#"), f"line {number + 1} has no comment above: {line}"


# --- paths ----------------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [gateway]
        data_dir = "state"
        [mailbox]
        maildir_root = "../maildirs"
        [listeners.mx]
        tls_cert = "tls/mx.crt"
        tls_key = "/srv/tls/mx.key"
        [secrets]
        token_key_files = ["keys/new.key", "keys/old.key"]
        [mailbox.imap]
        master_password_file = "imap.password"
        """,
    )
    etc = tmp_path / "etc"

    settings = load_settings(path, {})

    assert settings.gateway.data_dir == etc / "state"
    assert settings.mailbox.maildir_root == tmp_path / "maildirs"
    assert settings.listeners.mx.tls_cert == etc / "tls" / "mx.crt"
    assert settings.listeners.mx.tls_key == Path("/srv/tls/mx.key")
    assert settings.secrets.token_key_files == (etc / "keys" / "new.key", etc / "keys" / "old.key")
    assert settings.mailbox.imap.master_password_file == etc / "imap.password"


def test_a_relative_config_path_resolves_against_its_own_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write(tmp_path, '[gateway]\ndata_dir = "state"\n')
    monkeypatch.chdir(tmp_path)

    settings = load_settings(Path("etc/gateway.toml"), {})

    assert settings.gateway.data_dir == tmp_path / "etc" / "state"
    assert settings.source == tmp_path / "etc" / "gateway.toml"


def test_without_a_file_paths_resolve_against_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)

    settings = load_settings(None, {})

    assert settings.source is None
    assert settings.gateway.data_dir == tmp_path / "data"
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'data' / 'gateway.db'}"


def test_defaults_derive_from_the_resolved_data_dir(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\ndata_dir = "../var/gw"\n')
    data_dir = tmp_path / "var" / "gw"

    settings = load_settings(path, {})

    assert settings.gateway.data_dir == data_dir
    assert settings.mailbox.maildir_root == data_dir / "mail"
    assert settings.secrets.token_key_files == (data_dir / "secrets" / "token.key",)
    assert settings.database.url is None
    assert settings.database_url == f"sqlite+aiosqlite:///{data_dir / 'gateway.db'}"


def test_explicit_paths_win_over_derived_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\ndata_dir = "state"\n[mailbox]\nmaildir_root = "/srv/mail"\n')
    assert load_settings(path, {}).mailbox.maildir_root == Path("/srv/mail")


def test_a_relative_sqlite_url_resolves_against_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\nurl = "sqlite+aiosqlite:///db/x.db"\n')

    settings = load_settings(path, {})

    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'etc' / 'db' / 'x.db'}"
    assert settings.database.url == settings.database_url


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:////srv/gateway/gateway.db",
        "sqlite+aiosqlite:///:memory:",
        "postgresql+asyncpg://gateway:s3cret@db.internal:5432/gateway",
    ],
)
def test_absolute_and_server_urls_are_kept_as_written(tmp_path: Path, url: str) -> None:
    path = write(tmp_path, f'[database]\nurl = "{url}"\n')
    assert load_settings(path, {}).database_url == url


def test_node_name_defaults_to_hostname(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\nhostname = "MX1.Broker.example"\n')
    settings = load_settings(path, {})
    assert settings.gateway.hostname == "mx1.broker.example"
    assert settings.gateway.node_name == "mx1.broker.example"


# --- values ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "size"),
    [
        ("25MiB", 25 * 1024 * 1024),
        ("10MB", 10_000_000),
        ("512KiB", 512 * 1024),
        ("1 gib", 1 << 30),
        (4096, 4096),
    ],
)
def test_sizes_take_units(tmp_path: Path, written: str | int, size: int) -> None:
    path = write(tmp_path, f"[limits]\nmax_header_size = {json.dumps(written)}\n")
    assert load_settings(path, {}).limits.max_header_size == size


def test_intake_addresses_are_validated_and_stored_lower_case(tmp_path: Path) -> None:
    path = write(tmp_path, '[domains.intake]\n"Intake@Broker.Example" = "p1"\n"post@broker.example" = "p2"\n')
    settings = load_settings(path, {})
    assert settings.domains.intake == {"intake@broker.example": "p1", "post@broker.example": "p2"}


def test_logging_level_is_case_insensitive(tmp_path: Path) -> None:
    path = write(tmp_path, '[logging]\nlevel = "debug"\nformat = "JSON"\n')
    settings = load_settings(path, {})
    assert (settings.logging.level, settings.logging.format) == ("DEBUG", "json")


def test_settings_are_frozen() -> None:
    settings = load_settings(None, {})
    with pytest.raises(ValueError, match="frozen"):
        settings.limits.max_recipients = 5  # type: ignore[misc]


def test_settings_can_be_built_directly_for_tests(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {"gateway": {"data_dir": str(tmp_path)}, "limits": {"max_recipients": 3}}
    )
    assert settings.mailbox.maildir_root == tmp_path / "mail"
    assert settings.limits.max_recipients == 3


def test_imap_backend_with_a_master_user_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[mailbox]\nbackend = "imap"\n[mailbox.imap]\nmaster_user = "gw"\ntls = "TLS"\n'
        'master_password_env = "IMAP_MASTER_PASSWORD"\n',
    )
    settings = load_settings(path, {})
    assert settings.mailbox.backend == "imap"
    assert settings.mailbox.imap.master_user == "gw"
    assert settings.mailbox.imap.tls == "tls"
    assert settings.mailbox.imap.master_password_env == "IMAP_MASTER_PASSWORD"
    assert settings.mailbox.imap.members == {}


def test_imap_members_override_server_and_login(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [mailbox]
        backend = "imap"
        [mailbox.imap]
        host = "imap.makler.example"
        master_user = "gw"
        master_password_file = "imap.password"
        [mailbox.imap.members."GF-B@Kunde-B.example"]
        host = "imap.kunde-b.example"
        port = 993
        tls = "TLS"
        login = "gf-b"
        password_env = "KUNDE_B_GF_PASSWORD"
        [mailbox.imap.members."sb-b1@kunde-b.example"]
        folder = "Vorgänge"
        [mailbox.imap.members."sb-a1@kunde-a.example"]
        host = "imap2.makler.example"
        master_user = "gw2"
        master_password_file = "secrets/imap2.password"
        """,
    )
    imap = load_settings(path, {}).mailbox.imap

    assert set(imap.members) == {"gf-b@kunde-b.example", "sb-b1@kunde-b.example", "sb-a1@kunde-a.example"}
    gf_b = imap.members["gf-b@kunde-b.example"]
    assert (gf_b.host, gf_b.port, gf_b.tls, gf_b.login, gf_b.password_env) == (
        "imap.kunde-b.example",
        993,
        "tls",
        "gf-b",
        "KUNDE_B_GF_PASSWORD",
    )
    # What a table leaves out is [mailbox.imap]'s: ImapServer.from_settings fills it in.
    assert (gf_b.folder, gf_b.master_user) == (None, None)
    assert imap.members["sb-b1@kunde-b.example"].folder == "Vorgänge"
    assert (
        imap.members["sb-a1@kunde-a.example"].master_password_file
        == tmp_path / "etc" / "secrets" / "imap2.password"
    )
    # Names of environment variables are configuration and may be shown; their values never get here.
    shown = json.dumps(describe(load_settings(path, {})))
    assert '"password_env": "KUNDE_B_GF_PASSWORD"' in shown


_MEMBER = '[mailbox.imap.members."gf-b@kunde-b.example"]\n'


@pytest.mark.parametrize(
    ("toml", "where", "fragment"),
    [
        (
            '[mailbox]\nbackend = "imap"\n[mailbox.imap]\nmaster_user = "gw"\n',
            "mailbox.imap.master_password_file",
            "give master_password_file or master_password_env",
        ),
        (
            '[mailbox.imap]\nmaster_password_file = "pw"\nmaster_password_env = "PW"\n',
            "mailbox.imap.master_password_env",
            "not both",
        ),
        (
            '[mailbox.imap]\nmaster_password_env = "hunter 2"\n',
            "mailbox.imap.master_password_env",
            "not the name",
        ),
        (
            '[mailbox.imap]\nmaster_password_env = "9LIVES"\n',
            "mailbox.imap.master_password_env",
            "not the name",
        ),
        (
            '[mailbox.imap]\nmaster_password_env = "GATEWAY_MAILBOX__PASSWORD"\n',
            "mailbox.imap.master_password_env",
            "setting override",
        ),
        ('[mailbox.imap.members."gf-b"]\ntls = "tls"\n', "mailbox.imap.members.gf-b", "not a valid address"),
        (
            '[mailbox.imap.members."gf-b@kunde-b.example"]\ntls = "tls"\n'
            '[mailbox.imap.members."GF-B@kunde-b.example"]\ntls = "none"\n',
            "mailbox.imap.members.GF-B@kunde-b.example",
            'names the same member as "gf-b@kunde-b.example"',
        ),
        (_MEMBER, "mailbox.imap.members.gf-b@kunde-b.example", "overrides nothing"),
        (
            _MEMBER + 'login = "gf-b"\n',
            "mailbox.imap.members.gf-b@kunde-b.example.login",
            "needs the member's password: give password_file or password_env",
        ),
        (
            _MEMBER + 'login = ""\npassword_env = "PW"\n',
            "mailbox.imap.members.gf-b@kunde-b.example.login",
            "must not be empty",
        ),
        (
            _MEMBER + 'login = "gf-b"\npassword_file = "pw"\npassword_env = "PW"\n',
            "mailbox.imap.members.gf-b@kunde-b.example.password_env",
            "not both",
        ),
        (
            _MEMBER + 'login = "gf-b"\npassword_env = "PW"\nmaster_password_file = "pw"\n',
            "mailbox.imap.members.gf-b@kunde-b.example.master_password_file",
            "give one way to log in",
        ),
        (
            _MEMBER + 'password_env = "PW"\n',
            "mailbox.imap.members.gf-b@kunde-b.example.password_env",
            "give login too",
        ),
        (
            _MEMBER + 'master_user = "gw2"\n',
            "mailbox.imap.members.gf-b@kunde-b.example.master_user",
            "give master_password_file or master_password_env",
        ),
        (
            _MEMBER + 'master_password_file = "pw"\nmaster_password_env = "PW"\n',
            "mailbox.imap.members.gf-b@kunde-b.example.master_password_env",
            "not both",
        ),
        (
            _MEMBER + 'password_env = "secret value"\nlogin = "gf-b"\n',
            "mailbox.imap.members.gf-b@kunde-b.example.password_env",
            "not the name of an environment variable",
        ),
        (
            _MEMBER + 'host = "imap.kunde-b.example"\n',
            "mailbox.imap.members.gf-b@kunde-b.example",
            "is on another server (host or port) but names no login",
        ),
        (
            _MEMBER + "port = 993\n",
            "mailbox.imap.members.gf-b@kunde-b.example",
            "names no login",
        ),
        (_MEMBER + 'tls = "ssl"\n', "mailbox.imap.members.gf-b@kunde-b.example.tls", "'starttls'"),
        (
            _MEMBER + 'hots = "imap"\n',
            "mailbox.imap.members.gf-b@kunde-b.example.hots",
            "known keys: host, port, tls, folder",
        ),
    ],
)
def test_imap_login_problems_name_the_key(tmp_path: Path, toml: str, where: str, fragment: str) -> None:
    problem = only_problem(write(tmp_path, toml))
    assert problem.where == where
    assert fragment in problem.reason


def test_a_member_on_the_same_server_keeps_the_master_login(tmp_path: Path) -> None:
    """Only another host or port needs a login of its own: TLS or a folder is no other server."""
    path = write(tmp_path, _MEMBER + 'host = "127.0.0.1"\nport = 143\ntls = "none"\nfolder = "Vorgänge"\n')
    member = load_settings(path, {}).mailbox.imap.members["gf-b@kunde-b.example"]
    assert (member.tls, member.folder, member.names_login) == ("none", "Vorgänge", False)


@pytest.mark.parametrize("key", ["password", "master_password"])
def test_a_member_password_in_clear_points_to_file_or_variable(tmp_path: Path, key: str) -> None:
    problem = only_problem(write(tmp_path, _MEMBER + f'{key} = "hunter2"\n'))
    assert problem.where == f"mailbox.imap.members.gf-b@kunde-b.example.{key}"
    assert "password_file" in problem.reason
    assert "password_env" in problem.reason
    assert "hunter2" not in problem.reason


# --- environment overrides ------------------------------------------------------------------------------


def test_environment_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_recipients = 10\n[database]\necho = false\n")
    environ = {
        "GATEWAY_LIMITS__MAX_RECIPIENTS": "50",
        "GATEWAY_DATABASE__ECHO": "true",
        "GATEWAY_DOMAINS__INTAKE": '{ "A@B.example" = "p1", "c@d.example" = "p2" }',
        "GATEWAY_LISTENERS__MX__PORT": "0",
        "gateway_logging__level": "warning",  # names are case-insensitive
        "GATEWAY_GATEWAY__HOSTNAME": "mx2.broker.example",
        "GATEWAY_LIMITS__MAX_MESSAGE_SIZE": "10MB",
    }

    settings = load_settings(path, environ)

    assert settings.limits.max_recipients == 50
    assert settings.database.echo is True
    assert settings.domains.intake == {"a@b.example": "p1", "c@d.example": "p2"}
    assert settings.listeners.mx.port == 0
    assert settings.listeners.submission.port == 2587
    assert settings.logging.level == "WARNING"
    assert settings.gateway.hostname == "mx2.broker.example"
    assert settings.limits.max_message_size == 10_000_000


def test_text_settings_take_the_value_literally(tmp_path: Path) -> None:
    # "true" and "2024-01-01" parse as TOML, but a string setting means the text.
    environ = {"GATEWAY_GATEWAY__NODE_NAME": "2024-01-01", "GATEWAY_MAILBOX__IMAP__FOLDER": "true"}
    settings = load_settings(None, environ)
    assert settings.gateway.node_name == "2024-01-01"
    assert settings.mailbox.imap.folder == "true"


def test_environment_paths_resolve_like_file_paths(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    settings = load_settings(path, {"GATEWAY_GATEWAY__DATA_DIR": "state"})
    assert settings.gateway.data_dir == tmp_path / "etc" / "state"
    assert settings.mailbox.maildir_root == tmp_path / "etc" / "state" / "mail"


def test_gateway_config_is_not_an_override() -> None:
    settings = load_settings(None, {"GATEWAY_CONFIG": "/nowhere/gateway.toml"})
    assert settings.source is None


def test_other_gateway_variables_are_not_overrides() -> None:
    environ = {
        "GATEWAY_PORTFOLIO": "makler-muster",
        "GATEWAY_TEST_POSTGRES": "postgresql://x",
        "GATEWAY_FOO": "1",
    }
    assert load_settings(None, environ) == load_settings(None, {})


def test_an_override_naming_an_unknown_key_is_an_error() -> None:
    problem = only_problem(None, {"GATEWAY_LISTENERS__MX__PROT": "25"})
    assert problem.where == "GATEWAY_LISTENERS__MX__PROT"
    assert "listeners.mx.prot" in problem.reason
    assert "port" in problem.reason  # the known keys are listed


@pytest.mark.parametrize(
    ("variable", "fragment"),
    [
        ("GATEWAY_NOSUCH__KEY", "no setting nosuch"),
        ("GATEWAY_LIMITS", "names the section [limits]"),
        ("GATEWAY_LIMITS__MAX_RECIPIENTS__X", "is a setting, not a section"),
        ("GATEWAY_DATABASE__POOL_SIZE", "sets database.pool_size, which is no longer used"),
        ("GATEWAY_INTAKE__TAG_SUBJECT", "sets intake.tag_subject, which moved: the section [intake] is now"),
    ],
)
def test_overrides_that_name_no_setting(variable: str, fragment: str) -> None:
    problem = only_problem(None, {variable: "1"})
    assert problem.where == variable
    assert fragment in problem.reason


def test_a_retired_key_says_so_and_nothing_else(tmp_path: Path) -> None:
    # [database] pool_size had no effect (the writer thread uses one connection): files that still set
    # it hear exactly that, once, rather than "unknown key".
    path = write(tmp_path, '[database]\nurl = "sqlite+aiosqlite:///x.db"\npool_size = 5\n')
    problem = only_problem(path, {})
    assert (problem.where, problem.reason.split(":")[0]) == ("database.pool_size", "is no longer used")


def test_the_renamed_section_says_its_new_name(tmp_path: Path) -> None:
    # [intake] held the Vorgang header and the subject tag; "intake" now means the intake addresses alone.
    path = write(tmp_path, "[intake]\ntag_subject = false\n")
    problem = only_problem(path, {})
    assert problem.where == "intake"
    assert problem.reason == "is now [vorgaenge], with the same keys: rename the section"
    renamed = write(tmp_path, "[vorgaenge]\ntag_subject = false\n")
    assert load_settings(renamed, {}).vorgaenge.tag_subject is False


def test_an_invalid_override_value_names_the_variable() -> None:
    problem = only_problem(None, {"GATEWAY_LIMITS__MAX_RECIPIENTS": "0"})
    assert problem.where == "GATEWAY_LIMITS__MAX_RECIPIENTS"
    assert problem.reason == "must be greater than 0, got 0"


def test_a_bad_address_from_the_environment_names_variable_and_entry() -> None:
    problem = only_problem(
        None, {"GATEWAY_DOMAINS__INTAKE": '{ "ok@b.example" = "p", "not-an-address" = "p" }'}
    )
    assert problem.where == "GATEWAY_DOMAINS__INTAKE.not-an-address"
    assert "not-an-address" in problem.reason


# --- config_path -------------------------------------------------------------------------------------


def test_config_path_prefers_explicit_then_environment_then_default() -> None:
    assert config_path(Path("a.toml"), {"GATEWAY_CONFIG": "b.toml"}) == Path("a.toml")
    assert config_path(None, {"GATEWAY_CONFIG": "b.toml"}) == Path("b.toml")
    assert config_path(None, {}) == DEFAULT_CONFIG_PATH == Path("config/gateway.toml")


# --- problems -------------------------------------------------------------------------------------------


def test_a_missing_named_file_is_an_error(tmp_path: Path) -> None:
    problem = only_problem(tmp_path / "absent.toml")
    assert problem.where == str(tmp_path / "absent.toml")
    assert "no such file" in problem.reason


def test_a_toml_syntax_error_gives_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\nhostname = "a"\nport 25\n')
    problem = only_problem(path)
    assert problem.where == f"{path}:3"
    assert problem.reason.startswith("invalid TOML: ")
    assert "(at line" not in problem.reason  # the position is in `where`, said once


@pytest.mark.parametrize(
    ("toml", "where", "fragment"),
    [
        ("[limits]\nmax_recipents = 5\n", "limits.max_recipents", "unknown key 'max_recipents' in [limits]"),
        ("[gatway]\n", "gatway", "unknown section"),
        ("[listeners.lmtp]\n", "listeners.lmtp", "known keys: submission, mx"),
        ('[limits]\nmax_recipients = "x"\n', "limits.max_recipients", 'must be a whole number, got "x"'),
        ("[limits]\nmax_recipients = true\n", "limits.max_recipients", "must be a whole number, got true"),
        ("[limits]\nmax_recipients = 0\n", "limits.max_recipients", "must be greater than 0"),
        ('[limits]\nmax_message_size = "25 parsecs"\n', "limits.max_message_size", '"25MiB"'),
        ("[limits]\nmax_header_size = -1\n", "limits.max_header_size", "must be greater than 0"),
        ("[listeners.mx]\nport = 70000\n", "listeners.mx.port", "must be at most 65535, got 70000"),
        ('[listeners.mx]\nenabled = "sometimes"\n', "listeners.mx.enabled", "must be true or false"),
        ("[database]\npool_size = 5\n", "database.pool_size", "is no longer used"),
        ('[database]\nurl = "not a url"\n', "database.url", "is not a database URL"),
        ("[gateway]\nhostname = 5\n", "gateway.hostname", "must be a string"),
        ('[gateway]\nhostname = "bad host"\n', "gateway.hostname", "not a valid domain name"),
        ('[gateway]\ndata_dir = ""\n', "gateway.data_dir", "must not be empty"),
        ('[domains]\nintake = "a@b.example"\n', "domains.intake", "must be a table"),
        ('[domains.intake]\n"a@b" = "p1"\n', "domains.intake.a@b", "is not a valid address"),
        ('[mailbox]\nbackend = "mbox"\n', "mailbox.backend", "must be 'maildir' or 'imap', got \"mbox\""),
        (
            '[mailbox]\nbackend = "imap"\n',
            "mailbox.imap.master_user",
            'required when mailbox.backend is "imap',
        ),
        ('[mailbox.imap]\ntls = "ssl"\n', "mailbox.imap.tls", "'starttls'"),
        ("[secrets]\ntoken_key_files = []\n", "secrets.token_key_files", "at least 1"),
        ('[logging]\nlevel = "verbose"\n', "logging.level", "'DEBUG'"),
        ("[logging]\nformat = 1\n", "logging.format", "must be 'text' or 'json'"),
        ("limits = 5\n", "limits", "must be a table"),
        (
            '[listeners.mx]\nhost = "0.0.0.0"\nlocal_only = true\n',
            "listeners.mx.host",
            "local_only listeners must bind to a loopback address",
        ),
        ('[listeners.submission]\nhost = "192.0.2.1"\n', "listeners.submission.host", "loopback"),
        ('[listeners.mx]\ntls_cert = "mx.crt"\n', "listeners.mx.tls_key", "give both"),
        ('[listeners.mx]\ntls_key = "mx.key"\n', "listeners.mx.tls_key", "tls_cert is not"),
        (
            '[listeners.mx]\nmax_data_memory = "20MiB"\n',
            "listeners.mx.max_data_memory",
            "less than one message of [limits] max_message_size",
        ),
        (
            '[limits]\nmax_message_size = "1GiB"\n',
            "listeners.submission.max_data_memory",
            "raise it to at least 1208223760, or lower max_message_size",
        ),
    ],
)
def test_each_kind_of_problem_names_the_key_and_says_why(
    tmp_path: Path, toml: str, where: str, fragment: str
) -> None:
    problem = only_problem(write(tmp_path, toml))
    assert problem.where == where
    assert fragment in problem.reason
    # Readable words, not pydantic's wording or its links.
    for raw in ("Input should", "Value error", "pydantic", "errors.pydantic.dev", "Extra inputs"):
        assert raw not in problem.reason


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost"])
def test_local_only_accepts_every_loopback_address(tmp_path: Path, host: str) -> None:
    path = write(tmp_path, f'[listeners.submission]\nhost = "{host}"\n')
    assert load_settings(path, {}).listeners.submission.host == host


@pytest.mark.parametrize("key", ["token_key", "password", "secret", "hmac"])
def test_secrets_in_clear_are_refused(tmp_path: Path, key: str) -> None:
    problem = only_problem(write(tmp_path, f'[secrets]\n{key} = "c2VjcmV0LXZhbHVl"\n'))
    assert problem.where == f"secrets.{key}"
    assert "file" in problem.reason
    assert "secrets.token_key_files" in problem.reason
    assert "c2VjcmV0LXZhbHVl" not in problem.reason  # the secret is not repeated on screen


def test_an_imap_password_in_clear_points_to_the_password_file(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, '[mailbox.imap]\nmaster_password = "hunter2"\n'))
    assert problem.where == "mailbox.imap.master_password"
    assert "mailbox.imap.master_password_file" in problem.reason
    assert "mailbox.imap.master_password_env" in problem.reason
    assert "hunter2" not in problem.reason


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [limits]
        max_recipients = 0
        max_line_length = "long"
        [listeners.mx]
        port = -1
        colour = "blue"
        [listeners.submission]
        host = "0.0.0.0"
        tls_cert = "a.crt"
        [domains]
        intake = { "ok@b.example" = "p1", "broken" = "p1" }
        """,
    )

    with pytest.raises(ConfigError) as caught:
        load_settings(path, {"GATEWAY_LOGGING__LEVLE": "debug", "GATEWAY_DATABASE__POOL_SIZE": "x"})

    wheres = {problem.where for problem in caught.value.problems}
    assert wheres == {
        "limits.max_recipients",
        "limits.max_line_length",
        "listeners.mx.port",
        "listeners.mx.colour",
        "listeners.submission.host",
        "listeners.submission.tls_key",
        "domains.intake.broken",
        "GATEWAY_LOGGING__LEVLE",
        "GATEWAY_DATABASE__POOL_SIZE",
    }
    message = str(caught.value)
    assert message.startswith(f"configuration {path} is invalid: 9 problems")
    assert "Traceback" not in message


# --- describe ---------------------------------------------------------------------------------------


# [database]'s bounded waits on PostgreSQL, at their defaults (docs/configuration.md).
WAITS = {
    "lock_timeout": 5.0,
    "statement_timeout": 30.0,
    "idle_in_transaction_timeout": 10.0,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


def test_describe_is_json_and_masks_the_database_password() -> None:
    settings = load_settings(
        None, {"GATEWAY_DATABASE__URL": '"postgresql+asyncpg://gateway:s3cret@db.internal:5432/gateway"'}
    )

    described = describe(settings)
    text = json.dumps(described)

    assert "s3cret" not in text
    assert described["database"] == {
        "url": "postgresql+asyncpg://gateway:***@db.internal:5432/gateway",
        "echo": False,
        "password_file": None,
        "schema_check_interval": 30.0,
        **WAITS,
    }
    assert settings.database_url == "postgresql+asyncpg://gateway:s3cret@db.internal:5432/gateway"


def test_describe_shows_resolved_paths_and_source(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\ndata_dir = "state"\n')
    described = describe(load_settings(path, {}))
    assert described["source"] == str(path)
    assert described["gateway"] == {
        "hostname": "gateway.localhost",
        "data_dir": str(tmp_path / "etc" / "state"),
        "node_name": "gateway.localhost",
        "heartbeat_interval": 2.0,
        "node_timeout": 10.0,
        "workers": 1,
    }
    assert described["database"] == {
        "url": f"sqlite+aiosqlite:///{tmp_path / 'etc' / 'state' / 'gateway.db'}",
        "echo": False,
        "password_file": None,
        "schema_check_interval": 30.0,
        **WAITS,
    }
