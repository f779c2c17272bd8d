"""The directory's rules (one primary release per member, sharing only where available) as pure checks.

A directory is described by ``*Spec`` values, whether it comes from a YAML file or from the database
before and after a single CLI change; the same checks run on both, so a file and a command can never
disagree about what is allowed. Each spec keeps the line it came from (0 when it did not come from a file).

Two settings serve the reply path (DESIGN.md §5): a portfolio's ``sender_auth`` says how a member's reply
must prove its sender, and a back office's ``relay`` says where members' replies to it are delivered.
Two more serve reconciliation: a release's ``backfill`` and ``revoked_copies`` (``gateway.domain.reconcile``).
Three serve the collision guard (``gateway.domain.collision``): a release's ``collision_guard`` (None: the
default, ``hold`` where it shares Vorgänge, else ``off``), its ``hold_timeout`` and ``after_hold_timeout``.
"""

from __future__ import annotations

import enum
import ipaddress
import os.path
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from gateway.domain.collision import (
    DEFAULT_HOLD_TIMEOUT,
    AfterTimeout,
    CollisionGuard,
    default_guard,
    format_duration,
)
from gateway.domain.model import ReadSync
from gateway.domain.reconcile import Backfill, RevokedCopies

T_spec = TypeVar("T_spec")


class SenderAuth(enum.StrEnum):
    """How a member's reply must prove its sender before it is relayed (DESIGN.md §5); per portfolio."""

    # No check beyond the reply token and the audience: only on a loopback-only MX listener or behind a
    # border MTA that authenticates (gateway.domain.mx_exposure).
    OFF = "off"
    # Believe the Authentication-Results header our own border MTA adds (its authserv-id is configured).
    TRUST_AUTHENTICATION_RESULTS = "trust-authentication-results"
    # The gateway checks DKIM, SPF and DMARC itself.
    VERIFY = "verify"


class RelayTls(enum.StrEnum):
    """How the relay talks to a back office's SMTP server."""

    NONE = "none"  # plain SMTP, for a server on the same host or a trusted network
    STARTTLS = "starttls"  # plain connect, then STARTTLS (ports 25 and 587); refused if not offered
    TLS = "tls"  # TLS from the first byte (implicit TLS, usually port 465)


# The defaults of a back office's relay settings, in the YAML file, the CLI and the database.
RELAY_PORT = 25
RELAY_TLS = RelayTls.STARTTLS
RELAY_TIMEOUT = 30
# RFC 5321 4.5.3.2 has an SMTP client wait at most 10 minutes for any reply; longer only hides a dead peer.
RELAY_TIMEOUT_MAX = 600
DEFAULT_SENDER_AUTH = SenderAuth.OFF


@dataclass(frozen=True, slots=True)
class RelaySpec:
    """Where and how members' replies are delivered to a back office's SMTP server.

    ``password_file`` is the absolute path of a file holding the SMTP AUTH password (the secret itself
    never enters the directory); ``login`` and ``password_file`` are given together or not at all.
    """

    host: str
    port: int = RELAY_PORT
    tls: RelayTls = RELAY_TLS
    login: str = ""
    password_file: str = ""
    timeout: int = RELAY_TIMEOUT

    def __str__(self) -> str:
        auth = f" login={self.login} password_file={self.password_file}" if self.login else ""
        return f"{self.host}:{self.port} tls={self.tls.value} timeout={self.timeout}{auth}"

    def problems(self) -> list[tuple[str, str]]:
        """What is wrong with these settings, as (key, reason); the key is "" for the settings as a whole."""
        found: list[tuple[str, str]] = []
        if reason := _host_problem(self.host):
            found.append(("host", reason))
        if not 1 <= self.port <= 65535:
            found.append(
                (
                    "port",
                    f"relay port {self.port} is not a TCP port: use 1 to 65535 (SMTP servers listen on 25)",
                )
            )
        if not 1 <= self.timeout <= RELAY_TIMEOUT_MAX:
            found.append(
                (
                    "timeout",
                    f"relay timeout {self.timeout} must be 1 to {RELAY_TIMEOUT_MAX} seconds "
                    f"(default {RELAY_TIMEOUT})",
                )
            )
        if bool(self.login) != bool(self.password_file):
            given, lacking = ("login", "password file") if self.login else ("password file", "login")
            found.append(
                (
                    given.replace(" ", "_"),
                    f"the relay has a {given} but no {lacking}: logging in to the back office's SMTP server "
                    "needs both; give both, or neither to send without logging in",
                )
            )
        if len(self.login) > 320:
            found.append(("login", "the relay login is longer than 320 characters"))
        if self.password_file and not os.path.isabs(self.password_file):
            found.append(
                ("password_file", f"relay password file {self.password_file!r} must be an absolute path")
            )
        return found


def _host_problem(host: str) -> str | None:
    if not host:
        return "the relay needs a host: the name or IP address of the back office's SMTP server"
    if len(host) > 253 or any(c.isspace() or c in "/@[]" for c in host):
        return f"relay host {host!r} is not a host name or IP address"
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"relay host {host!r} contains a colon: give the port separately, not as host:port"
    return None


@dataclass(frozen=True, slots=True)
class BackOfficeSpec:
    name: str
    ams_version: str = ""
    addresses: tuple[str, ...] = ()
    # None: the back office has no relay settings and cannot receive members' replies.
    relay: RelaySpec | None = None
    line: int = 0


@dataclass(frozen=True, slots=True)
class MemberSpec:
    address: str
    display_name: str = ""
    releases: tuple[str, ...] = ()
    line: int = 0
    # Line of each entry of ``releases``, so a problem with one membership points at its own line.
    release_lines: tuple[int, ...] = ()

    def line_of_release(self, index: int) -> int:
        return self.release_lines[index] if index < len(self.release_lines) else self.line


@dataclass(frozen=True, slots=True)
class ReleaseSpec:
    name: str
    primary: bool = False
    share_vorgaenge: bool = False
    read_sync: ReadSync = ReadSync.ANSWERED
    line: int = 0
    # What a member newly entitled through the release receives, and what becomes of copies lost
    # through it (DESIGN.md §3's retroactivity, per release; gateway.domain.reconcile).
    backfill: Backfill = field(default_factory=Backfill)
    revoked_copies: RevokedCopies = RevokedCopies.REMOVE
    # What a reply that crosses a co-member's answer does (None: the default for the release's
    # sharing), how long a held one waits, and what becomes of it then (gateway.domain.collision).
    collision_guard: CollisionGuard | None = None
    hold_timeout: int = DEFAULT_HOLD_TIMEOUT
    after_hold_timeout: AfterTimeout = AfterTimeout.RELEASE

    @property
    def guard(self) -> CollisionGuard:
        """The guard in force: the one set, else the default for the release's sharing."""
        return self.collision_guard or default_guard(self.share_vorgaenge)


@dataclass(frozen=True, slots=True)
class PortfolioSpec:
    name: str
    display_name: str = ""
    share_vorgaenge_available: bool = False
    backoffices: tuple[BackOfficeSpec, ...] = ()
    members: tuple[MemberSpec, ...] = ()
    releases: tuple[ReleaseSpec, ...] = ()
    sender_auth: SenderAuth = DEFAULT_SENDER_AUTH
    line: int = 0

    def release(self, name: str) -> ReleaseSpec | None:
        return next((r for r in self.releases if r.name == name), None)


@dataclass(frozen=True, slots=True)
class DirectorySpec:
    portfolios: tuple[PortfolioSpec, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule, with the line of the object that breaks it."""

    line: int
    reason: str


def primary_conflict(member: str, primaries: Sequence[str], portfolio: str) -> str | None:
    """The reason a member may not be in these primary releases together, or None when it may."""
    if len(primaries) < 2:
        return None
    names = " and ".join(f'"{name}"' for name in primaries)
    return (
        f"member {member} would be in the primary releases {names} of portfolio {portfolio}; "
        "a member can be in only one primary release per portfolio "
        "(to give extra rights, add the member to a release that is not primary)"
    )


def sharing_unavailable(portfolio: str, release: str) -> str:
    return (
        f'release "{release}" cannot share Vorgänge: the feature is not available in portfolio {portfolio} '
        f"(an operator enables it with `gateway portfolio set {portfolio} --share-vorgaenge-available`)"
    )


def sharing_still_used(portfolio: str, releases: Iterable[str]) -> str:
    names = ", ".join(f'"{name}"' for name in releases)
    return (
        f"portfolio {portfolio} still has releases that share Vorgänge ({names}); "
        "switch sharing off on them before making the feature unavailable"
    )


def guard_without_sharing(portfolio: str, release: str, guard: CollisionGuard | None) -> str:
    shown = guard.value if guard is not None else ""
    return (
        f'release "{release}" of portfolio {portfolio} has collision_guard {shown} but does not share '
        "Vorgänge: its members never see each other's answers, so nothing can collide; switch "
        "share_vorgaenge on, or leave collision_guard out (it is off where nothing is shared)"
    )


def check_portfolio(portfolio: PortfolioSpec) -> list[Violation]:
    """Every rule a portfolio's directory breaks, in line order."""
    found: list[Violation] = []
    found += _duplicates("member", ((m.address, m.line) for m in portfolio.members), portfolio.name)
    found += _duplicates("release", ((r.name, r.line) for r in portfolio.releases), portfolio.name)
    found += _duplicates("back office", ((b.name, b.line) for b in portfolio.backoffices), portfolio.name)
    found += _duplicates(
        "back-office address",
        ((a, b.line) for b in portfolio.backoffices for a in b.addresses),
        portfolio.name,
    )
    member_addresses = {m.address for m in portfolio.members}
    for backoffice in portfolio.backoffices:
        for address in backoffice.addresses:
            if address in member_addresses:
                found.append(
                    Violation(
                        backoffice.line,
                        f"{address} is both a back-office address of {backoffice.name} and a member",
                    )
                )
    if not portfolio.share_vorgaenge_available:
        found += [
            Violation(r.line, sharing_unavailable(portfolio.name, r.name))
            for r in portfolio.releases
            if r.share_vorgaenge
        ]
    found += [
        Violation(r.line, guard_without_sharing(portfolio.name, r.name, r.collision_guard))
        for r in portfolio.releases
        if r.collision_guard not in (None, CollisionGuard.OFF) and not r.share_vorgaenge
    ]
    for member in portfolio.members:
        primaries: list[str] = []
        for index, name in enumerate(member.releases):
            release = portfolio.release(name)
            if release is None:
                found.append(
                    Violation(
                        member.line_of_release(index),
                        f'member {member.address} names the unknown release "{name}" '
                        f"(releases of {portfolio.name}: {_names(portfolio.releases)})",
                    )
                )
            elif release.primary:
                primaries.append(name)
        reason = primary_conflict(member.address, primaries, portfolio.name)
        if reason:
            found.append(Violation(member.line, reason))
    return sorted(found, key=lambda v: v.line)


def check_directory(directory: DirectorySpec) -> list[Violation]:
    found = _duplicates("portfolio", ((p.name, p.line) for p in directory.portfolios), "the file")
    for portfolio in directory.portfolios:
        found += check_portfolio(portfolio)
    return sorted(found, key=lambda v: v.line)


def _duplicates(kind: str, names: Iterable[tuple[str, int]], scope: str) -> list[Violation]:
    seen: Counter[str] = Counter()
    found = []
    for name, line in names:
        seen[name] += 1
        if seen[name] == 2:
            found.append(Violation(line, f'{kind} "{name}" appears more than once in {scope}'))
    return found


def _names(releases: Sequence[ReleaseSpec]) -> str:
    return ", ".join(f'"{r.name}"' for r in releases) or "none"


# --- Planning changes -------------------------------------------------------------------------------
#
# Loading a file and single CLI commands both work by describing the portfolio they want, checking it
# with the rules above, and applying the difference to the current state as a list of ``Change`` values.
# That list is also what ``--dry-run`` prints and what the event log records, one event per change.


@dataclass(frozen=True, slots=True)
class Change:
    """One step from the current directory towards the wanted one."""

    action: str  # create | update | delete | add | remove
    kind: str  # portfolio | backoffice | release | member | membership
    name: str  # the object's name (address for members and memberships)
    fields: tuple[tuple[str, object], ...] = ()
    release: str = ""  # for memberships: the release

    def field(self, key: str) -> object:
        return dict(self.fields).get(key)

    def describe(self) -> str:
        if self.kind == "membership":
            preposition = "to" if self.action == "add" else "from"
            return f'{self.action} member {self.name} {preposition} release "{self.release}"'
        shown = ", ".join(f"{k}={_show(k, v)}" for k, v in self.fields)
        return f"{self.action} {self.kind} {self.name!s}" + (f" ({shown})" if shown else "")


def _show(key: str, value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if key == "hold_timeout" and isinstance(value, int):
        return format_duration(value)  # as the directory file and --hold-timeout write it: 4h, not 14400
    return str(value)


def merge_portfolio(current: PortfolioSpec | None, wanted: PortfolioSpec, *, prune: bool) -> PortfolioSpec:
    """The portfolio that results from applying ``wanted`` over ``current``.

    Objects named in ``wanted`` take its values (a member's release list included); objects only in
    ``current`` are kept as they are unless ``prune``, which removes them.
    """
    if current is None or prune:
        return wanted

    def keep(
        old: tuple[T_spec, ...], new: tuple[T_spec, ...], key: Callable[[T_spec], str]
    ) -> tuple[T_spec, ...]:
        named = {key(o) for o in new}
        return new + tuple(o for o in old if key(o) not in named)

    return PortfolioSpec(
        name=wanted.name,
        display_name=wanted.display_name,
        share_vorgaenge_available=wanted.share_vorgaenge_available,
        sender_auth=wanted.sender_auth,
        backoffices=keep(current.backoffices, wanted.backoffices, lambda b: b.name),
        releases=keep(current.releases, wanted.releases, lambda r: r.name),
        members=keep(current.members, wanted.members, lambda m: m.address),
        line=wanted.line,
    )


def plan_changes(current: PortfolioSpec | None, wanted: PortfolioSpec) -> list[Change]:
    """The changes that turn ``current`` (None: the portfolio does not exist) into exactly ``wanted``.

    The order is safe for the database's one-primary index: memberships are removed and releases lose
    their primary flag before any release gains it or any membership is added.
    """
    p = wanted.name
    changes: list[Change] = []
    if current is None:
        # A new portfolio has no releases yet, so it can be created with sharing already available.
        current = PortfolioSpec(
            name=p,
            display_name=wanted.display_name,
            share_vorgaenge_available=wanted.share_vorgaenge_available,
            sender_auth=wanted.sender_auth,
        )
        changes.append(
            Change(
                "create",
                "portfolio",
                p,
                (
                    ("display_name", wanted.display_name),
                    ("share_vorgaenge_available", wanted.share_vorgaenge_available),
                    ("sender_auth", wanted.sender_auth.value),
                ),
            )
        )
    portfolio_fields = _changed(current, wanted, ("display_name", "share_vorgaenge_available", "sender_auth"))
    # Availability is switched on before releases may share, and off only after they stopped sharing.
    turn_on = (
        portfolio_fields
        if wanted.share_vorgaenge_available
        else _without(portfolio_fields, "share_vorgaenge_available")
    )
    turn_off = (
        _only(portfolio_fields, "share_vorgaenge_available") if not wanted.share_vorgaenge_available else ()
    )
    if turn_on:
        changes.append(Change("update", "portfolio", p, turn_on))

    old_bo = {b.name: b for b in current.backoffices}
    new_bo = {b.name: b for b in wanted.backoffices}
    for name, b in new_bo.items():
        if name not in old_bo:
            changes.append(
                Change(
                    "create",
                    "backoffice",
                    name,
                    (("ams_version", b.ams_version), ("addresses", b.addresses), ("relay", b.relay)),
                )
            )
        elif fields := _changed(old_bo[name], b, ("ams_version", "addresses", "relay")):
            changes.append(Change("update", "backoffice", name, fields))
    changes += [Change("delete", "backoffice", name) for name in old_bo if name not in new_bo]

    old_members = {m.address: m for m in current.members}
    new_members = {m.address: m for m in wanted.members}
    for address, old in old_members.items():
        keep = set(new_members[address].releases) if address in new_members else set()
        changes += [Change("remove", "membership", address, release=r) for r in old.releases if r not in keep]

    old_rel = {r.name: r for r in current.releases}
    new_rel = {r.name: r for r in wanted.releases}
    changes += [Change("delete", "release", name) for name in old_rel if name not in new_rel]
    updates = [
        Change("update", "release", name, fields)
        for name, r in new_rel.items()
        if name in old_rel and (fields := _changed(old_rel[name], r, RELEASE_FIELDS))
    ]
    # Releases losing their primary flag go first, so no member holds two primaries mid-transaction.
    changes += sorted(updates, key=lambda c: c.field("primary") is True)
    changes += [
        Change(
            "create",
            "release",
            name,
            (
                ("primary", r.primary),
                ("share_vorgaenge", r.share_vorgaenge),
                ("read_sync", r.read_sync.value),
                # The policies only when they differ from the defaults: the usual create reads as before.
                *_changed(ReleaseSpec(name), r, ("backfill", "revoked_copies", *GUARD_FIELDS)),
            ),
        )
        for name, r in new_rel.items()
        if name not in old_rel
    ]

    changes += [Change("delete", "member", address) for address in old_members if address not in new_members]
    for address, m in new_members.items():
        if address not in old_members:
            changes.append(Change("create", "member", address, (("display_name", m.display_name),)))
        elif fields := _changed(old_members[address], m, ("display_name",)):
            changes.append(Change("update", "member", address, fields))
    for address, m in new_members.items():
        had = set(old_members[address].releases) if address in old_members else set()
        changes += [Change("add", "membership", address, release=r) for r in m.releases if r not in had]
    if turn_off:
        changes.append(Change("update", "portfolio", p, turn_off))
    return changes


GUARD_FIELDS = ("collision_guard", "hold_timeout", "after_hold_timeout")
RELEASE_FIELDS = ("primary", "share_vorgaenge", "read_sync", "backfill", "revoked_copies", *GUARD_FIELDS)
_POLICY_KEYS = frozenset({"share_vorgaenge", "backfill", "revoked_copies"})


def _changed(old: object, new: object, names: Sequence[str]) -> tuple[tuple[str, object], ...]:
    out = []
    for name in names:
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            out.append((name, _plain(after)))
    return tuple(out)


def _plain(value: object) -> object:
    """A field's value as changes, events and ``--json`` carry it: enums and policies as their text."""
    if isinstance(value, enum.Enum):
        return value.value
    return str(value) if isinstance(value, Backfill) else value


def before_of(current: PortfolioSpec | None, change: Change) -> dict[str, object]:
    """The values an ``update`` change replaces, for the event log's before/after."""
    if current is None or change.action != "update":
        return {}
    old: object | None = current
    if change.kind == "release":
        old = current.release(change.name)
    elif change.kind == "member":
        old = next((m for m in current.members if m.address == change.name), None)
    elif change.kind == "backoffice":
        old = next((b for b in current.backoffices if b.name == change.name), None)
    if old is None:
        return {}
    return {key: _plain(getattr(old, key)) for key, _ in change.fields if hasattr(old, key)}


def audience_changes(
    current: PortfolioSpec | None, result: PortfolioSpec, changes: Sequence[Change]
) -> list[Change]:
    """The changes that can change who may see existing messages, or what reconciliation does about it.

    Audiences follow only from releases that share Vorgänge (DESIGN.md §3), so a membership, a deleted
    member or a deleted release counts when its release shares before or after the change; a release's
    ``share_vorgaenge`` counts whenever it is switched, and its ``backfill``/``revoked_copies`` when they
    change (a wider backfill hands out copies that were held back). Names, ``primary`` and ``read_sync``
    change no audience.
    """
    sharing = {r.name for r in result.releases if r.share_vorgaenge}
    if current is not None:
        sharing |= {r.name for r in current.releases if r.share_vorgaenge}
    in_sharing: set[str] = set()
    if current is not None:
        in_sharing = {m.address for m in current.members if any(r in sharing for r in m.releases)}
    found: list[Change] = []
    for change in changes:
        if change.kind == "membership":
            counts = change.release in sharing
        elif change.kind == "release":
            # A switch of share_vorgaenge leaves the release sharing before or after, so it is named.
            relevant = change.action == "delete" or any(key in _POLICY_KEYS for key, _ in change.fields)
            counts = relevant and change.name in sharing
        elif change.kind == "member":
            counts = change.action == "delete" and change.name in in_sharing
        else:
            counts = False
        if counts:
            found.append(change)
    return found


def _without(fields: tuple[tuple[str, object], ...], key: str) -> tuple[tuple[str, object], ...]:
    return tuple(f for f in fields if f[0] != key)


def _only(fields: tuple[tuple[str, object], ...], key: str) -> tuple[tuple[str, object], ...]:
    return tuple(f for f in fields if f[0] == key)
