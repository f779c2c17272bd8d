"""Reads and writes the directory YAML format (``gateway directory load|export``), with line numbers.

The file is read as a YAML node tree rather than as plain data so that every problem (a wrong key, a bad
address, an unknown release, two primary releases) is reported as ``FILE:LINE: reason``, all of them at
once, and nothing is applied unless the whole file is valid. The format::

    portfolios:
      - name: makler-muster
        display_name: Makler Muster GmbH
        share_vorgaenge_available: true
        sender_auth: off              # off | trust-authentication-results | verify
        backoffices:
          - name: ams
            ams_version: 4.8.0.64470
            addresses: [ams@makler-muster.example]
            # where members' replies go; without it the back office receives no replies
            relay: {host: smtp.makler-muster.example, port: 587, tls: starttls,
                    login: gateway, password_file: secrets/ams-relay.password, timeout: 30}
        releases:
          - {name: Kunde A Sachbearbeiter, primary: true, share_vorgaenge: true, read_sync: answered}
          # backfill: all (default) | days:N | none -- what a newly entitled member receives of
          # existing messages; revoked_copies: remove (default) | keep -- copies lost through it
          - {name: Kunde B mit GF, share_vorgaenge: true, backfill: "days:90", revoked_copies: remove}
          # collision_guard: hold (default where Vorgänge are shared) | notify | off -- a reply that
          # crosses a co-member's answer; hold_timeout: 24h (default) and after_hold_timeout:
          # release (default) | withdraw -- what becomes of a held reply nobody decided on
          - {name: Kunde C, share_vorgaenge: true, collision_guard: hold, hold_timeout: 4h,
             after_hold_timeout: withdraw}
        members:
          - address: sb-a1@kunde-a.example
            name: SB-A1
            releases: [Kunde A Sachbearbeiter]

A relative ``password_file`` is taken relative to the directory file and stored as an absolute path; only
the path is stored, never the password.
"""

from __future__ import annotations

import enum
import os.path
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gateway.domain.addresses import InvalidAddress, normalise_address
from gateway.domain.collision import (
    DEFAULT_HOLD_TIMEOUT,
    AfterTimeout,
    CollisionGuard,
    format_duration,
    parse_duration,
)
from gateway.domain.directory import (
    RELAY_PORT,
    RELAY_TIMEOUT,
    RELAY_TLS,
    BackOfficeSpec,
    DirectorySpec,
    MemberSpec,
    PortfolioSpec,
    RelaySpec,
    RelayTls,
    ReleaseSpec,
    SenderAuth,
    check_directory,
)
from gateway.domain.model import ReadSync
from gateway.domain.reconcile import Backfill, RevokedCopies
from gateway.domain.senders import InvalidVersion, parse_ams_version
from gateway.errors import DirectoryFileError, Problem

FORMAT_VERSION = 1
T = TypeVar("T")
E = TypeVar("E", bound=enum.StrEnum)


class _Reader:
    """Collects problems while turning YAML nodes into specs; one instance per file."""

    def __init__(self, name: str, base: Path) -> None:
        self.name = name
        # Relative paths in the file (a relay's password_file) are relative to this directory.
        self.base = base
        self.problems: list[tuple[int, str]] = []

    def fail(self, node: yaml.Node, reason: str) -> None:
        self.problems.append((node.start_mark.line + 1, reason))

    def mapping(self, node: yaml.Node, what: str, allowed: dict[str, bool]) -> dict[str, yaml.Node] | None:
        """The keys of a mapping node; unknown keys, duplicates and missing required keys are problems.

        ``allowed`` maps each key to whether it is required.
        """
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, f"{what} must be a mapping of keys to values")
            return None
        found: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key not in allowed:
                known = ", ".join(allowed)
                self.fail(key_node, f"unknown key {key!r} in {what} (known keys: {known})")
            elif key in found:
                self.fail(key_node, f"key {key!r} appears twice in {what}")
            else:
                found[key] = value_node
        for key, required in allowed.items():
            if required and key not in found:
                self.fail(node, f"{what} lacks the required key {key!r}")
        return found

    def sequence(self, node: yaml.Node | None, what: str) -> list[yaml.Node]:
        if node is None:
            return []
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, f"{what} must be a list")
            return []
        return list(node.value)

    def text(self, node: yaml.Node | None, what: str, default: str = "") -> str:
        if node is None:
            return default
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            self.fail(node, f"{what} must be a text value")
            return default
        return str(node.value).strip()

    def flag(self, node: yaml.Node | None, what: str) -> bool:
        if node is None:
            return False
        return bool(self._typed(node, "bool", f"{what} must be true or false"))

    def integer(self, node: yaml.Node | None, what: str, default: int) -> int | None:
        """A whole number; None (after recording the problem) when the value is something else."""
        if node is None:
            return default
        value = self._typed(node, "int", f"{what} must be a whole number, like {default}")
        return None if value is None else int(value)

    def _typed(self, node: yaml.Node, tag: str, problem: str) -> Any:
        """The value of a scalar of YAML's type ``tag`` (bool, int); None after recording ``problem`` when
        ``node`` is something else."""
        if isinstance(node, yaml.ScalarNode) and node.tag == f"tag:yaml.org,2002:{tag}":
            return yaml.safe_load(node.value)
        self.fail(node, problem)
        return None

    def choice(self, node: yaml.Node | None, what: str, choices: type[E], default: E) -> E:
        """One value of a string enum; written as text, so ``off`` is the word, not YAML 1.1's false."""
        if node is None:
            return default
        value = self.text(node, what, default.value)
        try:
            return choices(value)
        except ValueError:
            known = ", ".join(c.value for c in choices)
            self.fail(node, f"{what} {value!r} is not one of {known}")
            return default

    def address(self, node: yaml.Node, what: str) -> str | None:
        value = self.text(node, what)
        try:
            return normalise_address(value)
        except InvalidAddress as exc:
            self.fail(node, f"{what}: {exc}")
            return None

    def each(self, node: yaml.Node | None, what: str, read: Callable[[yaml.Node], T | None]) -> list[T]:
        return [item for item in (read(n) for n in self.sequence(node, what)) if item is not None]


def parse_directory(text: str, name: str = "<directory>", *, base: Path | None = None) -> DirectorySpec:
    """Parse and check a directory file; raise :class:`DirectoryFileError` listing every problem.

    ``base`` is the directory relative paths in the file are relative to (default: the working directory).
    """
    reader = _Reader(name, Path(os.path.abspath(base or Path.cwd())))
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise DirectoryFileError(
            f"{name} is not valid YAML", [Problem(f"{name}:{line}", f"YAML syntax: {problem}")]
        ) from None
    if root is None:
        raise DirectoryFileError(f"{name} is empty", [Problem(f"{name}:1", "the file has no portfolios")])

    spec = DirectorySpec()
    top = reader.mapping(root, "the file", {"version": False, "portfolios": True})
    if top is not None:
        if "version" in top and reader.text(top["version"], "version") != str(FORMAT_VERSION):
            reader.fail(top["version"], f"unsupported version; this gateway reads version {FORMAT_VERSION}")
        spec = DirectorySpec(
            portfolios=tuple(
                reader.each(top.get("portfolios"), "portfolios", lambda n: _portfolio(reader, n))
            )
        )
    for violation in check_directory(spec):
        reader.problems.append((violation.line, violation.reason))
    if reader.problems:
        problems = [Problem(f"{name}:{line}", reason) for line, reason in sorted(reader.problems)]
        raise DirectoryFileError(f"{name} has {len(problems)} problem(s); nothing was changed", problems)
    return spec


def read_directory_file(path: Path) -> DirectorySpec:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DirectoryFileError(f"cannot read {path}", [Problem(str(path), str(exc))]) from None
    return parse_directory(text, str(path), base=path.parent)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _portfolio(reader: _Reader, node: yaml.Node) -> PortfolioSpec | None:
    keys = reader.mapping(
        node,
        "a portfolio",
        {
            "name": True,
            "display_name": False,
            "share_vorgaenge_available": False,
            "sender_auth": False,
            "backoffices": False,
            "releases": False,
            "members": False,
        },
    )
    if keys is None:
        return None
    name = reader.text(keys.get("name"), "portfolio name")
    return PortfolioSpec(
        name=name,
        display_name=reader.text(keys.get("display_name"), "display_name"),
        share_vorgaenge_available=reader.flag(
            keys.get("share_vorgaenge_available"), "share_vorgaenge_available"
        ),
        sender_auth=reader.choice(keys.get("sender_auth"), "sender_auth", SenderAuth, SenderAuth.OFF),
        backoffices=tuple(
            reader.each(keys.get("backoffices"), "backoffices", lambda n: _backoffice(reader, n))
        ),
        releases=tuple(reader.each(keys.get("releases"), "releases", lambda n: _release(reader, n))),
        members=tuple(reader.each(keys.get("members"), "members", lambda n: _member(reader, n))),
        line=_line(node),
    )


def _backoffice(reader: _Reader, node: yaml.Node) -> BackOfficeSpec | None:
    keys = reader.mapping(
        node, "a back office", {"name": True, "ams_version": False, "addresses": False, "relay": False}
    )
    if keys is None:
        return None
    version_node = keys.get("ams_version")
    version = reader.text(version_node, "ams_version")
    if version_node is not None and version and not _is_version(version):
        reader.fail(
            version_node, f"ams_version {version!r} must be four numbers separated by dots, like 4.8.0.64470"
        )
    addresses = reader.each(
        keys.get("addresses"), "addresses", lambda n: reader.address(n, "back-office address")
    )
    return BackOfficeSpec(
        name=reader.text(keys.get("name"), "back-office name"),
        ams_version=version,
        addresses=tuple(addresses),
        relay=_relay(reader, keys["relay"]) if "relay" in keys else None,
        line=_line(node),
    )


RELAY_KEYS = {
    "host": True,
    "port": False,
    "tls": False,
    "login": False,
    "password_file": False,
    "timeout": False,
}


def _relay(reader: _Reader, node: yaml.Node) -> RelaySpec | None:
    """A back office's relay settings; ``relay:`` left empty (or null) means none."""
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        return None
    keys = reader.mapping(node, "a relay", RELAY_KEYS)
    if keys is None:
        return None
    port = reader.integer(keys.get("port"), "relay port", RELAY_PORT)
    timeout = reader.integer(keys.get("timeout"), "relay timeout (seconds)", RELAY_TIMEOUT)
    password_file = reader.text(keys.get("password_file"), "password_file")
    relay = RelaySpec(
        host=reader.text(keys.get("host"), "relay host"),
        port=RELAY_PORT if port is None else port,
        tls=reader.choice(keys.get("tls"), "relay tls", RelayTls, RELAY_TLS),
        login=reader.text(keys.get("login"), "relay login"),
        # normpath, not resolve: a symlinked secret (as Kubernetes mounts them) must stay a symlink.
        password_file=os.path.normpath(reader.base / password_file) if password_file else "",
        timeout=RELAY_TIMEOUT if timeout is None else timeout,
    )
    # Problems the reader reported already (no host, a port that is no number) are not repeated.
    host_node = keys.get("host")
    host_given = isinstance(host_node, yaml.ScalarNode) and host_node.tag != "tag:yaml.org,2002:null"
    reported = {
        key
        for key, missing in (("host", not host_given), ("port", port is None), ("timeout", timeout is None))
        if missing
    }
    for key, reason in relay.problems():
        if key not in reported:
            reader.fail(keys.get(key, node), reason)
    return relay


RELEASE_KEYS = {
    "name": True,
    "primary": False,
    "share_vorgaenge": False,
    "read_sync": False,
    "backfill": False,
    "revoked_copies": False,
    "collision_guard": False,
    "hold_timeout": False,
    "after_hold_timeout": False,
}


def _release(reader: _Reader, node: yaml.Node) -> ReleaseSpec | None:
    keys = reader.mapping(node, "a release", RELEASE_KEYS)
    if keys is None:
        return None
    backfill = Backfill()
    if "backfill" in keys:
        value = reader.text(keys["backfill"], "backfill", "all")
        try:
            backfill = Backfill.parse(value)
        except ValueError as exc:
            reader.fail(keys["backfill"], str(exc))
    read_sync = ReadSync.ANSWERED
    if "read_sync" in keys:
        value = reader.text(keys["read_sync"], "read_sync")
        try:
            read_sync = ReadSync(value)
        except ValueError:
            choices = ", ".join(r.value for r in ReadSync)
            reader.fail(keys["read_sync"], f"read_sync {value!r} is not one of {choices}")
    guard = None
    if "collision_guard" in keys:
        guard = reader.choice(keys["collision_guard"], "collision_guard", CollisionGuard, CollisionGuard.HOLD)
    hold_timeout = DEFAULT_HOLD_TIMEOUT
    if "hold_timeout" in keys:
        value = reader.text(keys["hold_timeout"], "hold_timeout", format_duration(DEFAULT_HOLD_TIMEOUT))
        try:
            hold_timeout = parse_duration(value)
        except ValueError as exc:
            reader.fail(keys["hold_timeout"], str(exc))
    return ReleaseSpec(
        name=reader.text(keys.get("name"), "release name"),
        primary=reader.flag(keys.get("primary"), "primary"),
        share_vorgaenge=reader.flag(keys.get("share_vorgaenge"), "share_vorgaenge"),
        read_sync=read_sync,
        line=_line(node),
        backfill=backfill,
        revoked_copies=reader.choice(
            keys.get("revoked_copies"), "revoked_copies", RevokedCopies, RevokedCopies.REMOVE
        ),
        collision_guard=guard,
        hold_timeout=hold_timeout,
        after_hold_timeout=reader.choice(
            keys.get("after_hold_timeout"), "after_hold_timeout", AfterTimeout, AfterTimeout.RELEASE
        ),
    )


def _member(reader: _Reader, node: yaml.Node) -> MemberSpec | None:
    keys = reader.mapping(node, "a member", {"address": True, "name": False, "releases": False})
    if keys is None or "address" not in keys:
        return None
    address = reader.address(keys["address"], "member address")
    release_nodes = reader.sequence(keys.get("releases"), "releases")
    if address is None:
        return None
    return MemberSpec(
        address=address,
        display_name=reader.text(keys.get("name"), "name"),
        releases=tuple(reader.text(n, "release name") for n in release_nodes),
        release_lines=tuple(_line(n) for n in release_nodes),
        line=_line(node),
    )


def _is_version(text: str) -> bool:
    # The relay compares versions as ams writes them: four numbers (gateway.domain.senders).
    try:
        parse_ams_version(text)
    except InvalidVersion:
        return False
    return True


def dump_directory(spec: DirectorySpec) -> str:
    """The YAML text of ``spec``; ``parse_directory(dump_directory(s))`` gives ``s`` back (lines aside)."""
    data: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "portfolios": [
            {
                "name": p.name,
                "display_name": p.display_name,
                "share_vorgaenge_available": p.share_vorgaenge_available,
                "sender_auth": p.sender_auth.value,
                "backoffices": [
                    {"name": b.name, "ams_version": b.ams_version, "addresses": list(b.addresses)}
                    | ({"relay": relay_data(b.relay)} if b.relay is not None else {})
                    for b in p.backoffices
                ],
                "releases": [release_data(r) for r in p.releases],
                "members": [member_data(m) for m in p.members],
            }
            for p in spec.portfolios
        ],
    }
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110)


def release_data(release: ReleaseSpec) -> dict[str, object]:
    """A release as the file (and ``--json``) writes it."""
    return {
        "name": release.name,
        "primary": release.primary,
        "share_vorgaenge": release.share_vorgaenge,
        "read_sync": release.read_sync.value,
        "backfill": str(release.backfill),
        "revoked_copies": release.revoked_copies.value,
        # The guard's settings only where they differ from the defaults (so files written before read
        # the same); a guard not set follows share_vorgaenge when that is switched later.
        **({"collision_guard": release.collision_guard.value} if release.collision_guard else {}),
        **(
            {"hold_timeout": format_duration(release.hold_timeout)}
            if release.hold_timeout != DEFAULT_HOLD_TIMEOUT
            else {}
        ),
        **(
            {"after_hold_timeout": release.after_hold_timeout.value}
            if release.after_hold_timeout is not AfterTimeout.RELEASE
            else {}
        ),
    }


def member_data(member: MemberSpec) -> dict[str, object]:
    """A member as the file (and ``--json``) writes it."""
    return {"address": member.address, "name": member.display_name, "releases": list(member.releases)}


def relay_data(relay: RelaySpec) -> dict[str, object]:
    """A relay as the file (and ``--json``) writes it: login and password_file only when set."""
    data: dict[str, object] = {"host": relay.host, "port": relay.port, "tls": relay.tls.value}
    if relay.login or relay.password_file:
        data |= {"login": relay.login, "password_file": relay.password_file}
    return data | {"timeout": relay.timeout}
