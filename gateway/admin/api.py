"""The admin API behind the CLI: directory changes, exports, who-can-see, Vorgänge and the event log.

Each change is a small edit of the portfolio's spec that ``gateway.db.directory.apply_spec`` checks and
applies, so a single command obeys exactly the rules a directory file does. Functions take an open
session and leave committing to the caller; they raise ``GatewayError``s and never print.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os.path
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from gateway.db import accounts, events, messages
from gateway.db import directory as db
from gateway.db.events import EventFilter, EventView
from gateway.db.messages import (
    VORGANG_STATES,
    VorgangLabel,
    VorgangSummary,
    VorgangView,
    get_message,
    participants_of,
    vorgang_labels,
    vorgang_view,
)
from gateway.db.models import MemberRow, PortfolioRow, VorgangRow
from gateway.db.reconcile import message_batches
from gateway.domain.addresses import InvalidAddress, normalise_address
from gateway.domain.audience import Audience, audience
from gateway.domain.collision import AfterTimeout, CollisionGuard
from gateway.domain.directory import (
    DEFAULT_SENDER_AUTH,
    BackOfficeSpec,
    Change,
    DirectorySpec,
    MemberSpec,
    PortfolioSpec,
    RelaySpec,
    RelayTls,
    ReleaseSpec,
    SenderAuth,
    audience_changes,
    check_portfolio,
    merge_portfolio,
    plan_changes,
    sharing_still_used,
)
from gateway.domain.model import Member, Participant, ParticipantRole, ReadSync
from gateway.domain.passwords import WeakPassword, hash_password
from gateway.domain.preview import (
    Batch,
    Involved,
    PlannedDirectory,
    Preview,
    Tally,
    involved,
    plan_batches,
    planned_directory,
)
from gateway.domain.reconcile import Backfill, RevokedCopies
from gateway.domain.senders import InvalidVersion, parse_ams_version
from gateway.errors import DirectoryConflict, InputError, NotFound


def address(text: str) -> str:
    """A member or back-office address as typed by an admin, normalised; an InputError when invalid."""
    try:
        return normalise_address(text)
    except InvalidAddress as exc:
        raise InputError(str(exc)) from None


# A directory change as a function of the portfolio as it is: the same edit is applied by the commands
# below and previewed by :func:`preview_change`, so what an admin previews is what they then change.
Edit: TypeAlias = Callable[[PortfolioSpec], PortfolioSpec]


async def _spec(session: AsyncSession, portfolio: str) -> PortfolioSpec:
    return await db.read_spec(session, await db.get_portfolio(session, portfolio))


async def _apply(session: AsyncSession, spec: PortfolioSpec, actor: str) -> list[Change]:
    return await db.apply_spec(session, spec, prune=True, actor=actor)


async def make_change(session: AsyncSession, portfolio: str, edit: Edit, actor: str) -> list[Change]:
    """Apply ``edit`` to the portfolio as it is: the change :func:`preview_change` previews."""
    return await _apply(session, edit(await _spec(session, portfolio)), actor)


# --- directory files ---------------------------------------------------------------------------------


async def load_directory(
    session: AsyncSession, spec: DirectorySpec, *, prune: bool, actor: str, dry_run: bool = False
) -> dict[str, list[Change]]:
    """Apply every portfolio of a (checked) directory file; the changes per portfolio."""
    return {
        p.name: await db.apply_spec(session, p, prune=prune, actor=actor, dry_run=dry_run)
        for p in spec.portfolios
    }


async def export_directory(session: AsyncSession, portfolios: Sequence[str] = ()) -> DirectorySpec:
    names = list(portfolios) or await db.portfolio_names(session)
    return DirectorySpec(portfolios=tuple([await _spec(session, name) for name in names]))


# --- portfolios ----------------------------------------------------------------------------------------


async def create_portfolio(
    session: AsyncSession,
    name: str,
    display_name: str,
    actor: str,
    *,
    sender_auth: SenderAuth = DEFAULT_SENDER_AUTH,
) -> list[Change]:
    if await db.find_portfolio(session, name) is not None:
        raise DirectoryConflict(f"portfolio {name} exists already")
    if not name or any(c.isspace() for c in name):
        raise InputError(f"portfolio name {name!r} must be one word without spaces, like makler-muster")
    spec = PortfolioSpec(name=name, display_name=display_name, sender_auth=sender_auth)
    return await _apply(session, spec, actor)


async def set_portfolio(
    session: AsyncSession,
    name: str,
    *,
    display_name: str | None = None,
    share_vorgaenge_available: bool | None = None,
    sender_auth: SenderAuth | None = None,
    actor: str,
) -> list[Change]:
    spec = await _spec(session, name)
    if share_vorgaenge_available is False and (
        sharing := [r.name for r in spec.releases if r.share_vorgaenge]
    ):
        raise DirectoryConflict(sharing_still_used(name, sharing))
    changed: dict[str, object] = {}
    if display_name is not None:
        changed["display_name"] = display_name
    if share_vorgaenge_available is not None:
        changed["share_vorgaenge_available"] = share_vorgaenge_available
    if sender_auth is not None:
        changed["sender_auth"] = sender_auth
    return await _apply(session, dataclasses.replace(spec, **changed), actor)  # type: ignore[arg-type]


async def list_portfolios(session: AsyncSession) -> list[PortfolioSpec]:
    return [await _spec(session, name) for name in await db.portfolio_names(session)]


async def show_portfolio(session: AsyncSession, name: str) -> PortfolioSpec:
    return await _spec(session, name)


# --- members ---------------------------------------------------------------------------------------------


def _member(spec: PortfolioSpec, member_address: str) -> MemberSpec:
    found = next((m for m in spec.members if m.address == member_address), None)
    if found is None:
        raise NotFound(f"there is no member {member_address} in portfolio {spec.name}")
    return found


def _replace_member(spec: PortfolioSpec, new: MemberSpec) -> PortfolioSpec:
    members = tuple(new if m.address == new.address else m for m in spec.members)
    return dataclasses.replace(spec, members=members)


async def add_member(
    session: AsyncSession, portfolio: str, member_address: str, display_name: str, actor: str
) -> list[Change]:
    spec = await _spec(session, portfolio)
    member_address = address(member_address)
    if any(m.address == member_address for m in spec.members):
        raise DirectoryConflict(f"member {member_address} exists already in portfolio {portfolio}")
    member = MemberSpec(member_address, display_name)
    return await _apply(session, dataclasses.replace(spec, members=(*spec.members, member)), actor)


async def set_member(
    session: AsyncSession, portfolio: str, member_address: str, display_name: str, actor: str
) -> list[Change]:
    spec = await _spec(session, portfolio)
    member = _member(spec, address(member_address))
    return await _apply(
        session, _replace_member(spec, dataclasses.replace(member, display_name=display_name)), actor
    )


async def remove_member(
    session: AsyncSession, portfolio: str, member_address: str, actor: str
) -> list[Change]:
    return await _apply(session, member_removed(member_address)(await _spec(session, portfolio)), actor)


def member_removed(member_address: str) -> Edit:
    """The edit that removes a member from the portfolio."""
    wanted = address(member_address)

    def edit(spec: PortfolioSpec) -> PortfolioSpec:
        member = _member(spec, wanted)
        return dataclasses.replace(spec, members=tuple(m for m in spec.members if m is not member))

    return edit


# --- releases ----------------------------------------------------------------------------------------------


def _release(spec: PortfolioSpec, name: str) -> ReleaseSpec:
    release = spec.release(name)
    if release is None:
        known = ", ".join(f'"{r.name}"' for r in spec.releases) or "none"
        raise NotFound(f'there is no release "{name}" in portfolio {spec.name} (releases: {known})')
    return release


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """The collision guard's settings of a release as a command gives them; None leaves one as it is.

    ``collision_guard`` "default" clears the setting: the release then follows its sharing."""

    collision_guard: CollisionGuard | str | None = None
    hold_timeout: int | None = None
    after_hold_timeout: AfterTimeout | None = None

    def changed(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.collision_guard is not None:
            out["collision_guard"] = (
                None if self.collision_guard == "default" else CollisionGuard(self.collision_guard)
            )
        if self.hold_timeout is not None:
            out["hold_timeout"] = self.hold_timeout
        if self.after_hold_timeout is not None:
            out["after_hold_timeout"] = self.after_hold_timeout
        return out


async def create_release(
    session: AsyncSession,
    portfolio: str,
    name: str,
    *,
    primary: bool,
    share_vorgaenge: bool,
    read_sync: ReadSync,
    actor: str,
    backfill: Backfill | None = None,
    revoked_copies: RevokedCopies | None = None,
    guard: GuardSettings | None = None,
) -> list[Change]:
    edit = release_created(
        name,
        primary=primary,
        share_vorgaenge=share_vorgaenge,
        read_sync=read_sync,
        backfill=backfill,
        revoked_copies=revoked_copies,
        guard=guard,
    )
    return await _apply(session, edit(await _spec(session, portfolio)), actor)


def release_created(
    name: str,
    *,
    primary: bool,
    share_vorgaenge: bool,
    read_sync: ReadSync,
    backfill: Backfill | None = None,
    revoked_copies: RevokedCopies | None = None,
    guard: GuardSettings | None = None,
) -> Edit:
    """The edit that creates the release ``name``."""

    def edit(spec: PortfolioSpec) -> PortfolioSpec:
        if spec.release(name) is not None:
            raise DirectoryConflict(f'release "{name}" exists already in portfolio {spec.name}')
        if not name.strip():
            raise InputError("a release needs a name")
        release = ReleaseSpec(
            name.strip(),
            primary,
            share_vorgaenge,
            read_sync,
            backfill=backfill or Backfill(),
            revoked_copies=revoked_copies or RevokedCopies.REMOVE,
        )
        if guard is not None:
            release = dataclasses.replace(release, **guard.changed())  # type: ignore[arg-type]
        return dataclasses.replace(spec, releases=(*spec.releases, release))

    return edit


async def set_release(
    session: AsyncSession,
    portfolio: str,
    name: str,
    *,
    primary: bool | None = None,
    share_vorgaenge: bool | None = None,
    read_sync: ReadSync | None = None,
    backfill: Backfill | None = None,
    revoked_copies: RevokedCopies | None = None,
    guard: GuardSettings | None = None,
    actor: str,
) -> list[Change]:
    edit = release_changed(
        name,
        primary=primary,
        share_vorgaenge=share_vorgaenge,
        read_sync=read_sync,
        backfill=backfill,
        revoked_copies=revoked_copies,
        guard=guard,
    )
    return await _apply(session, edit(await _spec(session, portfolio)), actor)


def release_changed(
    name: str,
    *,
    primary: bool | None = None,
    share_vorgaenge: bool | None = None,
    read_sync: ReadSync | None = None,
    backfill: Backfill | None = None,
    revoked_copies: RevokedCopies | None = None,
    guard: GuardSettings | None = None,
) -> Edit:
    """The edit that changes the flags of the release ``name``; None leaves a flag as it is."""
    changed: dict[str, object] = {
        k: v
        for k, v in (
            ("primary", primary),
            ("share_vorgaenge", share_vorgaenge),
            ("read_sync", read_sync),
            ("backfill", backfill),
            ("revoked_copies", revoked_copies),
        )
        if v is not None
    }
    if guard is not None:
        changed |= guard.changed()

    def edit(spec: PortfolioSpec) -> PortfolioSpec:
        new = dataclasses.replace(_release(spec, name), **changed)  # type: ignore[arg-type]
        releases = tuple(new if r.name == name else r for r in spec.releases)
        return dataclasses.replace(spec, releases=releases)

    return edit


async def delete_release(session: AsyncSession, portfolio: str, name: str, actor: str) -> list[Change]:
    return await _apply(session, release_deleted(name)(await _spec(session, portfolio)), actor)


def release_deleted(name: str) -> Edit:
    """The edit that deletes the release ``name`` (its members lose what it gave them)."""

    def edit(spec: PortfolioSpec) -> PortfolioSpec:
        _release(spec, name)
        members = tuple(
            dataclasses.replace(m, releases=tuple(r for r in m.releases if r != name)) for m in spec.members
        )
        releases = tuple(r for r in spec.releases if r.name != name)
        return dataclasses.replace(spec, releases=releases, members=members)

    return edit


async def add_release_member(
    session: AsyncSession, portfolio: str, release: str, member_address: str, actor: str
) -> list[Change]:
    edit = release_membership(release, member_address, joins=True)
    return await _apply(session, edit(await _spec(session, portfolio)), actor)


async def remove_release_member(
    session: AsyncSession, portfolio: str, release: str, member_address: str, actor: str
) -> list[Change]:
    edit = release_membership(release, member_address, joins=False)
    return await _apply(session, edit(await _spec(session, portfolio)), actor)


def release_membership(release: str, member_address: str, *, joins: bool) -> Edit:
    """The edit that puts the member into the release (``joins``) or takes it out; an error if it is so
    already."""
    wanted = address(member_address)

    def edit(spec: PortfolioSpec) -> PortfolioSpec:
        _release(spec, release)
        member = _member(spec, wanted)
        if joins and release in member.releases:
            raise DirectoryConflict(f'member {member.address} is already in release "{release}"')
        if not joins and release not in member.releases:
            raise NotFound(f'member {member.address} is not in release "{release}"')
        others = tuple(r for r in member.releases if r != release)
        new = dataclasses.replace(member, releases=(*others, release) if joins else others)
        return _replace_member(spec, new)

    return edit


@dataclass(frozen=True, slots=True)
class ReleaseView:
    portfolio: str
    release: ReleaseSpec
    members: tuple[MemberSpec, ...]


async def show_release(session: AsyncSession, portfolio: str, name: str) -> ReleaseView:
    spec = await _spec(session, portfolio)
    release = _release(spec, name)
    return ReleaseView(portfolio, release, tuple(m for m in spec.members if name in m.releases))


# --- back offices ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelayOptions:
    """Relay settings as given to a back-office command; None leaves a setting as it is.

    ``login`` and ``password_file`` given as "" remove them; ``remove`` drops the relay settings, so the
    back office receives no replies. A relative ``password_file`` is relative to the working directory.
    """

    host: str | None = None
    port: int | None = None
    tls: RelayTls | None = None
    login: str | None = None
    password_file: str | None = None
    timeout: int | None = None
    remove: bool = False

    def given(self) -> bool:
        values = (self.host, self.port, self.tls, self.login, self.password_file, self.timeout)
        return any(v is not None for v in values)

    def apply(self, current: RelaySpec | None, backoffice: str) -> RelaySpec | None:
        """The relay settings after this change; an InputError saying what to give when they are invalid."""
        if self.remove:
            if self.given():
                raise InputError("--no-relay removes the relay settings; it takes no other --relay-… option")
            return None
        if not self.given():
            return current
        if current is None and not self.host:
            raise InputError(
                f"back office {backoffice} has no relay settings yet: give --relay-host (its SMTP server) "
                "along with the other --relay-… options"
            )
        base = current or RelaySpec(host="")
        password_file = base.password_file if self.password_file is None else self.password_file.strip()
        relay = RelaySpec(
            host=base.host if self.host is None else self.host.strip(),
            port=base.port if self.port is None else self.port,
            tls=base.tls if self.tls is None else self.tls,
            login=base.login if self.login is None else self.login.strip(),
            password_file=os.path.abspath(password_file) if password_file else "",
            timeout=base.timeout if self.timeout is None else self.timeout,
        )
        if problems := relay.problems():
            raise InputError("; ".join(reason for _, reason in problems))
        return relay


def _backoffice(spec: PortfolioSpec, name: str) -> BackOfficeSpec:
    found = next((b for b in spec.backoffices if b.name == name), None)
    if found is None:
        raise NotFound(f"there is no back office {name} in portfolio {spec.name}")
    return found


async def add_backoffice(
    session: AsyncSession,
    portfolio: str,
    name: str,
    ams_version: str,
    addresses: Sequence[str],
    actor: str,
    *,
    relay: RelayOptions = RelayOptions(),
) -> list[Change]:
    spec = await _spec(session, portfolio)
    if any(b.name == name for b in spec.backoffices):
        raise DirectoryConflict(f"back office {name} exists already in portfolio {portfolio}")
    _check_version(ams_version)
    new = BackOfficeSpec(name, ams_version, tuple(address(a) for a in addresses), relay.apply(None, name))
    return await _apply(session, dataclasses.replace(spec, backoffices=(*spec.backoffices, new)), actor)


async def set_backoffice(
    session: AsyncSession,
    portfolio: str,
    name: str,
    *,
    ams_version: str | None = None,
    add_addresses: Sequence[str] = (),
    remove_addresses: Sequence[str] = (),
    relay: RelayOptions = RelayOptions(),
    actor: str,
) -> list[Change]:
    spec = await _spec(session, portfolio)
    backoffice = _backoffice(spec, name)
    if ams_version is not None:
        _check_version(ams_version)
    removed = {address(a) for a in remove_addresses}
    if unknown := removed - set(backoffice.addresses):
        raise NotFound(f"back office {name} does not send from {', '.join(sorted(unknown))}")
    kept = tuple(a for a in backoffice.addresses if a not in removed)
    added = tuple(a for a in dict.fromkeys(address(a) for a in add_addresses) if a not in kept)
    new = dataclasses.replace(
        backoffice,
        ams_version=backoffice.ams_version if ams_version is None else ams_version,
        addresses=kept + added,
        relay=relay.apply(backoffice.relay, name),
    )
    backoffices = tuple(new if b.name == name else b for b in spec.backoffices)
    return await _apply(session, dataclasses.replace(spec, backoffices=backoffices), actor)


async def remove_backoffice(session: AsyncSession, portfolio: str, name: str, actor: str) -> list[Change]:
    spec = await _spec(session, portfolio)
    _backoffice(spec, name)
    backoffices = tuple(b for b in spec.backoffices if b.name != name)
    return await _apply(session, dataclasses.replace(spec, backoffices=backoffices), actor)


async def set_backoffice_password(
    session: AsyncSession,
    portfolio: str,
    name: str,
    password: str,
    login: str | None,
    actor: str,
    *,
    if_missing: bool = False,
) -> tuple[str, bool | None]:
    """Set the SMTP AUTH password of a back office; the login defaults to its first sending address.

    Returns the login and whether it is new (None: it existed, and ``if_missing`` left it alone).
    """
    spec = await _spec(session, portfolio)
    backoffice = _backoffice(spec, name)
    if login is None:
        if not backoffice.addresses:
            raise InputError(f"back office {name} has no sending address to use as login; give --login")
        login = backoffice.addresses[0]
    try:
        hashed = hash_password(password)
    except WeakPassword as exc:
        raise InputError(str(exc)) from None
    created = await accounts.set_password(
        session, portfolio, name, login, hashed, actor, if_missing=if_missing
    )
    return login, created


def _check_version(version: str) -> None:
    if not version:
        return
    try:
        parse_ams_version(version)
    except InvalidVersion:
        raise InputError(
            f"ams version {version!r} must be four numbers separated by dots, like 4.8.0.64470"
        ) from None


# --- Vorgänge ------------------------------------------------------------------------------------------


async def show_vorgang(session: AsyncSession, portfolio: str, reference: str) -> VorgangView:
    row = await db.get_portfolio(session, portfolio)
    return await vorgang_view(session, row.id, row.name, reference)


async def list_vorgaenge(
    session: AsyncSession,
    portfolio: str,
    *,
    member: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    search: str | None = None,
    backoffice: str | None = None,
    state: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[VorgangSummary]:
    """The portfolio's Vorgänge, most recently active first; with ``member`` those the member sees, with
    ``backoffice`` those with mail of that back office, with ``state`` those with a copy in that state
    (or ``quarantined``: with a held message)."""
    row = await db.get_portfolio(session, portfolio)
    member_id = None
    if member is not None:
        (member_id,) = await _member_ids(session, member, row.id, portfolio)
    backoffice_id = None
    if backoffice is not None:
        backoffice_id = await messages.backoffice_id(session, row.id, backoffice)
        if backoffice_id is None:
            raise NotFound(f"there is no back office {backoffice} in portfolio {portfolio}")
    if state is not None and state not in VORGANG_STATES:
        raise InputError(f"there is no state {state!r} (states: {', '.join(VORGANG_STATES)})")
    return await messages.list_vorgaenge(
        session,
        row.id,
        member_id=member_id,
        since=since,
        until=until,
        search=search,
        backoffice_id=backoffice_id,
        state=state,
        limit=limit,
        offset=offset,
    )


async def raw_message(session: AsyncSession, gateway_id: str) -> bytes:
    """The stored bytes of the message ``gateway_id``, as received (for operators)."""
    return bytes((await get_message(session, gateway_id.strip())).raw)


async def _member_ids(
    session: AsyncSession, text: str, portfolio_id: int | None, portfolio: str | None
) -> tuple[int, ...]:
    query = select(MemberRow.id).where(MemberRow.address == address(text))
    if portfolio_id is not None:
        query = query.where(MemberRow.portfolio_id == portfolio_id)
    found = tuple(int(i) for i in await session.scalars(query))
    if not found:
        where = f" in portfolio {portfolio}" if portfolio else ""
        raise NotFound(f"there is no member {text}{where} (`gateway member list -p PORTFOLIO` lists them)")
    return found


# --- the event log ---------------------------------------------------------------------------------------


async def read_events(
    session: AsyncSession,
    *,
    portfolio: str | None = None,
    member: str | None = None,
    vorgang: str | None = None,
    message: str | None = None,
    kinds: Sequence[str] = (),
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    after_id: int | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[EventView]:
    """The event log filtered by names as admins know them (portfolio, address, VG-…, gw-…); with a
    portfolio, a message of another portfolio is not found."""
    portfolio_id = (await db.get_portfolio(session, portfolio)).id if portfolio else None
    member_ids = await _member_ids(session, member, portfolio_id, portfolio) if member else None
    vorgang_ids = None
    if vorgang:
        query = select(VorgangRow.id).where(VorgangRow.reference == vorgang.strip().upper())
        if portfolio_id is not None:
            query = query.where(VorgangRow.portfolio_id == portfolio_id)
        vorgang_ids = tuple(int(i) for i in await session.scalars(query))
        if not vorgang_ids:
            where = f" in portfolio {portfolio}" if portfolio else ""
            raise NotFound(
                f"there is no Vorgang {vorgang}{where} (`gateway vorgang list -p PORTFOLIO` lists them)"
            )
    message_id = None
    if message:
        found = await get_message(session, message.strip())
        if portfolio_id is not None and found.portfolio_id != portfolio_id:
            raise NotFound(f"there is no message with id {message.strip()!r} in portfolio {portfolio}")
        message_id = found.id
    narrowed = EventFilter(
        portfolio_id=portfolio_id,
        member_ids=member_ids,
        vorgang_ids=vorgang_ids,
        message_id=message_id,
        kinds=tuple(kinds),
        since=since,
        until=until,
        after_id=after_id,
        before_id=before_id,
    )
    return await events.read_events(session, narrowed, limit)


# --- who can see -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Explanation:
    """The audience of a real or hypothetical message, with the members it names."""

    portfolio: str
    message: str | None  # the gateway id, None for a hypothetical message
    audience: Audience
    members: dict[int, Member]

    def name_of(self, member_id: int) -> str:
        member = self.members[member_id]
        return member.display_name or member.address

    def rows(self) -> list[AudienceRow]:
        """The audience in its order, each member with the reasons in words."""
        return [
            AudienceRow(
                self.members[mid].address,
                self.members[mid].display_name,
                tuple(r.describe(self.name_of) for r in self.audience.via(mid)),
            )
            for mid in self.audience.ordered()
        ]

    def text(self) -> str:
        """The explanation as `gateway who-can-see` prints it and the console shows it, line by line."""
        rows = self.rows()
        subject = f"message {self.message}" if self.message else "such a message"
        lines = [f"{subject} in portfolio {self.portfolio} is seen by {len(rows)} member(s):"]
        for row in rows:
            lines.append(f"  {row.label}")
            lines.extend(f"      {reason}" for reason in row.reasons)
        return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class AudienceRow:
    """One member of an audience with why they may see the message."""

    address: str
    name: str  # "" when the member has no display name
    reasons: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.name} <{self.address}>" if self.name else self.address


async def who_can_see_message(
    session: AsyncSession, gateway_id: str, portfolio: str | None = None
) -> Explanation:
    """Who may see the stored message ``gateway_id``; with ``portfolio`` only a message of that portfolio
    (another portfolio's is not found, as if it did not exist)."""
    gateway_id = gateway_id.strip()
    message = await get_message(session, gateway_id)
    if portfolio is not None and message.portfolio_id != (await db.get_portfolio(session, portfolio)).id:
        raise NotFound(f"there is no message with id {gateway_id!r} in portfolio {portfolio}")
    owner = await session.get(PortfolioRow, message.portfolio_id)
    assert owner is not None, "messages keep their portfolio"
    snap = await db.snapshot(session, owner)
    result = audience(snap.portfolio_id, await participants_of(session, message), snap.releases)
    return Explanation(snap.portfolio_name, gateway_id, result, snap.members)


async def who_can_see_hypothetical(
    session: AsyncSession, portfolio: str, addressed: Sequence[tuple[ParticipantRole, str]]
) -> Explanation:
    """The audience a message would have if it were sent to or by the given member addresses."""
    if not addressed:
        raise InputError("name at least one member with --to, --cc or --from")
    snap = await db.snapshot(session, await db.get_portfolio(session, portfolio))
    participants = []
    for role, text in addressed:
        member = snap.member_by_address(address(text))
        if member is None:
            raise NotFound(f"there is no member {text} in portfolio {portfolio}")
        participants.append(Participant(member.id, role))
    return Explanation(
        portfolio, None, audience(snap.portfolio_id, participants, snap.releases), snap.members
    )


# --- the preview of a change ---------------------------------------------------------------------------

# Messages planned per read of a preview; as work_batch's batches, small enough to keep memory bounded.
PREVIEW_BATCH = 500


@dataclass(frozen=True, slots=True)
class ChangePreview:
    """What a directory change would do to the existing copies, with the names people know.

    ``reconciles``: whether making the change records a reconcile run (it changes an audience or a
    release's backfill/revocation policy, and the portfolio has messages); the counts are what that run
    would do, planned by the same planner over the same messages.
    """

    portfolio: str
    changes: tuple[Change, ...]
    reconciles: bool
    preview: Preview
    members: Mapping[int, MemberSpec]
    vorgaenge: Mapping[int, VorgangLabel]
    has_messages: bool = False
    """Whether the portfolio has messages at all (the preview plans only those the change involves)."""

    def name_of(self, member_id: int) -> str:
        member = self.members[member_id]
        return member.display_name or member.address


async def preview_change(
    session: AsyncSession,
    portfolio: str,
    wanted: PortfolioSpec | Edit,
    *,
    prune: bool = True,
    now: dt.datetime | None = None,
    batch_size: int = PREVIEW_BATCH,
) -> ChangePreview:
    """Preview a change of ``portfolio`` without making it: the wanted spec, or the edit of the current one.

    The directory's rules are checked first, as when the change is made, so a change that would break
    one raises the same ``DirectoryConflict`` and plans nothing. Nothing is written, and nothing locked.
    """
    checked = await prepare_preview(session, portfolio, wanted, prune=prune, now=now)
    return await plan_preview(session, checked, batch_size=batch_size)


@dataclass(frozen=True, slots=True)
class PreviewWork:
    """A change checked against the directory, ready to be planned message by message.

    What :func:`prepare_preview` finds quickly (the directory's rules, the releases after the change, the
    members it involves) apart from what takes time (planning the messages): the console answers the
    form with the first and plans in the background (docs/web.md).
    """

    portfolio: str
    portfolio_id: int | None  # None: a portfolio the change creates, with no messages
    changes: tuple[Change, ...]
    directory: PlannedDirectory | None
    only: Involved
    members: Mapping[int, MemberSpec]
    audience_changes: bool
    now: dt.datetime


async def prepare_preview(
    session: AsyncSession,
    portfolio: str,
    wanted: PortfolioSpec | Edit,
    *,
    prune: bool = True,
    now: dt.datetime | None = None,
) -> PreviewWork:
    """Check a change of ``portfolio`` as :func:`preview_change` does, without planning any message yet."""
    if callable(wanted):
        row: PortfolioRow | None = await db.get_portfolio(session, portfolio)
    else:
        row = await db.find_portfolio(session, portfolio)
    current = await db.read_spec(session, row) if row is not None else None
    if callable(wanted):
        assert current is not None, "get_portfolio found it"
        wanted = wanted(current)
    if wanted.name != portfolio:
        raise InputError(f"the wanted directory is of portfolio {wanted.name}, not of {portfolio}")
    result = merge_portfolio(current, wanted, prune=prune)
    if problems := check_portfolio(result):
        raise DirectoryConflict("; ".join(v.reason for v in problems))
    changes = tuple(plan_changes(current, result))
    moment = now or dt.datetime.now(dt.UTC)
    if row is None:
        # A new portfolio has no messages yet: nothing to plan.
        return PreviewWork(portfolio, None, changes, None, Involved(frozenset()), {}, False, moment)
    await db.refuse_deleting_with_history(session, row.id, changes)
    snap = await db.snapshot(session, row)
    release_ids = {r.name: r.id for r in snap.releases}
    member_ids = {m.address: m.id for m in snap.members.values()}
    directory = planned_directory(current, result, row.id, release_ids, member_ids)
    # Only the messages whose plan the change can alter are read: a change to a 5-member release in a
    # portfolio of 100,000 messages plans the few thousand its members took part in, not all of them.
    # The others plan as they did before the change, which is nothing the change does.
    only = involved(current, result, changes, release_ids, member_ids)
    named = {m.address: m for m in result.members}
    # Members the change deletes are named as they were; the others as the change leaves them.
    members = {
        member_id: named.get(address_) or _former_member(snap.members, member_id)
        for address_, member_id in directory.member_ids.items()
    }
    altered = bool(audience_changes(current, result, changes))
    return PreviewWork(portfolio, row.id, changes, directory, only, members, altered, moment)


async def plan_preview(
    session: AsyncSession,
    work: PreviewWork,
    *,
    batch_size: int = PREVIEW_BATCH,
    planned: Callable[[int], None] | None = None,
) -> ChangePreview:
    """Plan every message ``work`` involves, a batch at a time, and name what the plans do.

    Between batches the event loop serves others (SMTP sessions, pages of the same process): planning
    a batch holds it for a few milliseconds, never for the whole preview. ``planned`` hears the number
    of messages planned so far after each batch.
    """
    pid, directory = work.portfolio_id, work.directory
    if pid is None or directory is None:
        return ChangePreview(work.portfolio, work.changes, False, Preview(), {}, {})
    tally = Tally()
    reading: Iterator[Batch] | None = None

    def next_batch(s: Session) -> bool:
        nonlocal reading
        if reading is None:
            # One generator over the session's one connection: each step reads the batch after the last.
            reading = message_batches(s.connection(), pid, batch_size, work.only)
        batch = next(reading, None)
        if batch is None:
            return False
        tally.add(plan_batches((batch,), directory, work.now))
        return True

    while await session.run_sync(next_batch):
        if planned is not None:
            planned(tally.messages)
        await asyncio.sleep(0)
    preview = tally.preview()
    has_messages = await messages.has_messages(session, pid)
    reconciles = work.audience_changes and has_messages
    labels = await vorgang_labels(session, pid, sorted(preview.vorgaenge()))
    return ChangePreview(
        work.portfolio, work.changes, reconciles, preview, work.members, labels, has_messages
    )


def _former_member(members: Mapping[int, Member], member_id: int) -> MemberSpec:
    member = members[member_id]
    return MemberSpec(member.address, member.display_name)


async def preview_directory(
    session: AsyncSession, spec: DirectorySpec, *, prune: bool, now: dt.datetime | None = None
) -> dict[str, ChangePreview]:
    """The preview of loading a (checked) directory file, per portfolio."""
    return {p.name: await preview_change(session, p.name, p, prune=prune, now=now) for p in spec.portfolios}
