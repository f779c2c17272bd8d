"""The directory in the database: reads portfolios as specs and snapshots, applies planned changes.

Every change goes the same way, whether it comes from a directory file or a single CLI command: read the
portfolio as a ``PortfolioSpec``, build the wanted spec, check it with ``gateway.domain.directory``, and
apply ``plan_changes`` here, one event-log row per change, in the caller's transaction.

The reply path reads its two directory settings with small sync functions on a Core ``Connection``
(``relay_target``, ``portfolio_policy``), as its workers run on the writer thread.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db import acceptance, reconcile
from gateway.db.events import Event, EventKind, record_event
from gateway.db.models import (
    BackOfficeAddressRow,
    BackOfficeRow,
    CopyRow,
    MemberRow,
    MessageRow,
    ParticipantRow,
    PortfolioRow,
    ReleaseMemberRow,
    ReleaseRow,
)
from gateway.domain.collision import DEFAULT_HOLD_TIMEOUT, AfterTimeout, CollisionGuard
from gateway.domain.directory import (
    DEFAULT_SENDER_AUTH,
    RELAY_PORT,
    RELAY_TIMEOUT,
    RELAY_TLS,
    BackOfficeSpec,
    Change,
    MemberSpec,
    PortfolioSpec,
    RelaySpec,
    RelayTls,
    ReleaseSpec,
    SenderAuth,
    audience_changes,
    before_of,
    check_portfolio,
    merge_portfolio,
    plan_changes,
)
from gateway.domain.model import Member, ReadSync, Release
from gateway.domain.reconcile import Backfill, RevokedCopies
from gateway.errors import DirectoryConflict, NotFound


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A portfolio's members and releases as domain values, for the audience rule."""

    portfolio_id: int
    portfolio_name: str
    members: dict[int, Member]
    releases: tuple[Release, ...]

    def member_by_address(self, address: str) -> Member | None:
        return next((m for m in self.members.values() if m.address == address), None)


async def portfolio_names(session: AsyncSession) -> list[str]:
    return list(await session.scalars(select(PortfolioRow.name).order_by(PortfolioRow.name)))


async def find_portfolio(session: AsyncSession, name: str) -> PortfolioRow | None:
    return await session.scalar(select(PortfolioRow).where(PortfolioRow.name == name))


async def get_portfolio(session: AsyncSession, name: str) -> PortfolioRow:
    row = await find_portfolio(session, name)
    if row is None:
        known = ", ".join(await portfolio_names(session)) or "none yet"
        raise NotFound(f"there is no portfolio {name!r} (portfolios: {known})")
    return row


async def read_spec(session: AsyncSession, portfolio: PortfolioRow) -> PortfolioSpec:
    """The portfolio as it is now, in the same shape a directory file describes it."""
    pid = portfolio.id
    backoffices = list(
        await session.scalars(
            select(BackOfficeRow).where(BackOfficeRow.portfolio_id == pid).order_by(BackOfficeRow.id)
        )
    )
    addresses: dict[int, list[str]] = defaultdict(list)
    for bo_id, address in await session.execute(
        select(BackOfficeAddressRow.backoffice_id, BackOfficeAddressRow.address)
        .where(BackOfficeAddressRow.portfolio_id == pid)
        .order_by(BackOfficeAddressRow.id)
    ):
        addresses[bo_id].append(address)
    releases = list(
        await session.scalars(
            select(ReleaseRow).where(ReleaseRow.portfolio_id == pid).order_by(ReleaseRow.id)
        )
    )
    release_names = {r.id: r.name for r in releases}
    memberships: dict[int, list[str]] = defaultdict(list)
    for member_id, release_id in await session.execute(
        select(ReleaseMemberRow.member_id, ReleaseMemberRow.release_id)
        .where(ReleaseMemberRow.portfolio_id == pid)
        .order_by(ReleaseMemberRow.release_id)
    ):
        memberships[member_id].append(release_names[release_id])
    members = await session.scalars(
        select(MemberRow).where(MemberRow.portfolio_id == pid).order_by(MemberRow.id)
    )
    return PortfolioSpec(
        name=portfolio.name,
        display_name=portfolio.display_name,
        share_vorgaenge_available=portfolio.share_vorgaenge_available,
        sender_auth=SenderAuth(portfolio.sender_auth),
        backoffices=tuple(
            BackOfficeSpec(b.name, b.ams_version, tuple(addresses[b.id]), _relay_spec(b)) for b in backoffices
        ),
        releases=tuple(
            ReleaseSpec(
                r.name,
                r.primary,
                r.share_vorgaenge,
                r.read_sync,
                backfill=Backfill.parse(r.backfill),
                revoked_copies=RevokedCopies(r.revoked_copies),
                collision_guard=CollisionGuard(r.collision_guard) if r.collision_guard else None,
                hold_timeout=r.hold_timeout,
                after_hold_timeout=AfterTimeout(r.after_hold_timeout),
            )
            for r in releases
        ),
        members=tuple(MemberSpec(m.address, m.display_name, tuple(memberships[m.id])) for m in members),
    )


def _relay_spec(backoffice: BackOfficeRow) -> RelaySpec | None:
    if backoffice.relay_host is None:
        return None
    return RelaySpec(
        host=backoffice.relay_host,
        port=backoffice.relay_port,
        tls=RelayTls(backoffice.relay_tls),
        login=backoffice.relay_login or "",
        password_file=backoffice.relay_password_file or "",
        timeout=backoffice.relay_timeout,
    )


async def snapshot(session: AsyncSession, portfolio: PortfolioRow) -> Snapshot:
    pid = portfolio.id
    members = {
        m.id: Member(m.id, pid, m.address, m.display_name)
        for m in await session.scalars(select(MemberRow).where(MemberRow.portfolio_id == pid))
    }
    by_release: dict[int, set[int]] = defaultdict(set)
    for release_id, member_id in await session.execute(
        select(ReleaseMemberRow.release_id, ReleaseMemberRow.member_id).where(
            ReleaseMemberRow.portfolio_id == pid
        )
    ):
        by_release[release_id].add(member_id)
    releases = tuple(
        Release(r.id, pid, r.name, r.primary, r.share_vorgaenge, r.read_sync, frozenset(by_release[r.id]))
        for r in await session.scalars(
            select(ReleaseRow).where(ReleaseRow.portfolio_id == pid).order_by(ReleaseRow.name)
        )
    )
    return Snapshot(pid, portfolio.name, members, releases)


async def apply_spec(
    session: AsyncSession, wanted: PortfolioSpec, *, prune: bool, actor: str, dry_run: bool = False
) -> list[Change]:
    """Make the portfolio match ``wanted`` (keeping unnamed objects unless ``prune``); return the changes.

    Raises :class:`DirectoryConflict` naming every broken rule of the resulting directory; nothing is
    written then. With ``dry_run`` the changes are planned and checked but not written.
    """
    row = await find_portfolio(session, wanted.name)
    if row is not None and not dry_run:
        # Before reading it: messages being accepted under the directory as it is commit first, and
        # the reconcile run this change records sees them (gateway.db.acceptance.hold_directory).
        portfolio_id = row.id
        await session.run_sync(lambda s: acceptance.lock_directory(s.connection(), portfolio_id))
    current = await read_spec(session, row) if row is not None else None
    result = merge_portfolio(current, wanted, prune=prune)
    problems = check_portfolio(result)
    if problems:
        raise DirectoryConflict("; ".join(v.reason for v in problems))
    changes = plan_changes(current, result)
    if not dry_run:
        await _execute(session, row, wanted.name, changes, actor, current)
        if reasons := audience_changes(current, result, changes):
            await _request_reconcile(session, wanted.name, reasons, actor)
    return changes


# Where apply_spec notes the reconcile runs it recorded, for the caller to tell the admin about:
# ``session.info[RECONCILE_RUNS]`` is a list of (portfolio, run id, whether an open run restarted).
RECONCILE_RUNS = "gateway.reconcile_runs"


async def _request_reconcile(session: AsyncSession, name: str, reasons: Sequence[Change], actor: str) -> None:
    """Record a reconcile run for the portfolio in this transaction (DESIGN.md §3: audiences follow the
    directory as it is now, so existing messages must follow a change too)."""
    portfolio = await get_portfolio(session, name)
    any_message = await session.scalar(
        select(MessageRow.id).where(MessageRow.portfolio_id == portfolio.id).limit(1)
    )
    if any_message is None:
        return  # nothing was delivered under the old directory
    reason = "; ".join(c.describe() for c in reasons)
    now = dt.datetime.now(dt.UTC)
    run_id, restarted = await session.run_sync(
        lambda s: reconcile.request_run(s.connection(), portfolio.id, reason, actor, now)
    )
    session.info.setdefault(RECONCILE_RUNS, []).append((name, run_id, restarted))


async def _execute(
    session: AsyncSession,
    portfolio: PortfolioRow | None,
    name: str,
    changes: Sequence[Change],
    actor: str,
    current: PortfolioSpec | None,
) -> None:
    for change in changes:
        if change.kind == "portfolio" and change.action == "create":
            portfolio = PortfolioRow(
                name=name,
                display_name=str(change.field("display_name") or ""),
                share_vorgaenge_available=change.field("share_vorgaenge_available") is True,
                sender_auth=str(change.field("sender_auth") or DEFAULT_SENDER_AUTH.value),
            )
            session.add(portfolio)
            await session.flush()
        assert portfolio is not None, "the plan creates the portfolio before anything in it"
        member_id = await _apply_one(session, portfolio, change)
        await record_event(
            session,
            Event(
                EventKind(f"{change.kind}.{change.action}"),
                actor,
                dt.datetime.now(dt.UTC),
                portfolio_id=portfolio.id,
                member_id=member_id,
                detail={"portfolio": portfolio.name, "change": change.describe(), "name": change.name}
                | ({"release": change.release} if change.release else {})
                | {k: _jsonable(v) for k, v in change.fields}
                | (
                    {"before": {k: _jsonable(v) for k, v in before.items()}}
                    if (before := before_of(current, change))
                    else {}
                ),
            ),
        )


async def _apply_one(session: AsyncSession, portfolio: PortfolioRow, change: Change) -> int | None:
    """Write one change; returns the member it concerns, for the event log."""
    pid = portfolio.id
    kind, action, f = change.kind, change.action, dict(change.fields)
    if kind == "portfolio":
        if action == "update":
            for key, value in f.items():
                setattr(portfolio, key, value)
        return None
    if kind == "backoffice":
        await _apply_backoffice(session, pid, change)
        return None
    if kind == "release":
        if action == "create":
            session.add(
                ReleaseRow(
                    portfolio_id=pid,
                    name=change.name,
                    primary=bool(f["primary"]),
                    share_vorgaenge=bool(f["share_vorgaenge"]),
                    read_sync=ReadSync(str(f["read_sync"])),
                    backfill=str(f.get("backfill", "all")),
                    revoked_copies=str(f.get("revoked_copies", RevokedCopies.REMOVE.value)),
                    collision_guard=_optional_text(f.get("collision_guard")),
                    hold_timeout=int(str(f.get("hold_timeout", DEFAULT_HOLD_TIMEOUT))),
                    after_hold_timeout=str(f.get("after_hold_timeout", AfterTimeout.RELEASE.value)),
                )
            )
        else:
            release = await _release(session, pid, change.name)
            if action == "delete":
                if release.revoked_copies == RevokedCopies.KEEP:
                    # Deleting the release sets the copies' shared_via_release_id to NULL; remember
                    # it where reconciliation looks, so the copies it gave stay kept as promised.
                    await session.execute(
                        update(CopyRow)
                        .where(CopyRow.portfolio_id == pid, CopyRow.shared_via_release_id == release.id)
                        .values(kept_from_release_id=release.id)
                    )
                await session.delete(release)
            else:
                for key, value in f.items():
                    setattr(release, key, ReadSync(str(value)) if key == "read_sync" else value)
                if "primary" in f:
                    await session.execute(
                        update(ReleaseMemberRow)
                        .where(ReleaseMemberRow.release_id == release.id)
                        .values(release_primary=bool(f["primary"]))
                    )
        await session.flush()
        return None
    if kind == "member":
        if action == "create":
            member = MemberRow(portfolio_id=pid, address=change.name, display_name=str(f["display_name"]))
            session.add(member)
        else:
            member = await _member(session, pid, change.name)
            if action == "delete":
                await _refuse_delete_with_history(session, member)
                await session.delete(member)
            else:
                member.display_name = str(f["display_name"])
        await session.flush()
        return member.id
    # membership
    member = await _member(session, pid, change.name)
    release = await _release(session, pid, change.release)
    if action == "add":
        session.add(
            ReleaseMemberRow(
                release_id=release.id, member_id=member.id, portfolio_id=pid, release_primary=release.primary
            )
        )
    else:
        await session.execute(
            delete(ReleaseMemberRow).where(
                ReleaseMemberRow.release_id == release.id, ReleaseMemberRow.member_id == member.id
            )
        )
    await session.flush()
    return member.id


async def _apply_backoffice(session: AsyncSession, pid: int, change: Change) -> None:
    f = dict(change.fields)
    if change.action == "create":
        backoffice = BackOfficeRow(portfolio_id=pid, name=change.name, ams_version=str(f["ams_version"]))
        session.add(backoffice)
        await session.flush()
    else:
        found = await session.scalar(
            select(BackOfficeRow).where(BackOfficeRow.portfolio_id == pid, BackOfficeRow.name == change.name)
        )
        assert found is not None, "the plan only touches back offices it read"
        backoffice = found
        if change.action == "delete":
            await session.delete(backoffice)
            await session.flush()
            return
        if "ams_version" in f:
            backoffice.ams_version = str(f["ams_version"])
    if "relay" in f:
        relay = f["relay"]
        assert relay is None or isinstance(relay, RelaySpec)
        _write_relay(backoffice, relay)
    if "addresses" in f:
        addresses = f["addresses"]
        assert isinstance(addresses, tuple)
        await session.execute(
            delete(BackOfficeAddressRow).where(BackOfficeAddressRow.backoffice_id == backoffice.id)
        )
        session.add_all(
            BackOfficeAddressRow(backoffice_id=backoffice.id, portfolio_id=pid, address=str(a))
            for a in addresses
        )
    await session.flush()


def _write_relay(backoffice: BackOfficeRow, relay: RelaySpec | None) -> None:
    """Store a back office's relay settings; None clears them (back to the defaults, without a host)."""
    if relay is None:
        backoffice.relay_host = backoffice.relay_login = backoffice.relay_password_file = None
        backoffice.relay_port, backoffice.relay_tls = RELAY_PORT, RELAY_TLS.value
        backoffice.relay_timeout = RELAY_TIMEOUT
        return
    backoffice.relay_host = relay.host
    backoffice.relay_port = relay.port
    backoffice.relay_tls = relay.tls.value
    backoffice.relay_login = relay.login or None
    backoffice.relay_password_file = relay.password_file or None
    backoffice.relay_timeout = relay.timeout


async def _member(session: AsyncSession, pid: int, address: str) -> MemberRow:
    row = await session.scalar(
        select(MemberRow).where(MemberRow.portfolio_id == pid, MemberRow.address == address)
    )
    if row is None:
        raise NotFound(f"there is no member {address} in this portfolio")
    return row


async def _release(session: AsyncSession, pid: int, name: str) -> ReleaseRow:
    row = await session.scalar(
        select(ReleaseRow).where(ReleaseRow.portfolio_id == pid, ReleaseRow.name == name)
    )
    if row is None:
        raise NotFound(f'there is no release "{name}" in this portfolio')
    return row


async def refuse_deleting_with_history(
    session: AsyncSession, portfolio_id: int, changes: Sequence[Change]
) -> None:
    """The conflict that deleting a member with history meets when applied, raised before anything is
    written: a preview must meet it too, not plan a change that cannot be made."""
    for change in changes:
        if change.kind == "member" and change.action == "delete":
            await _refuse_delete_with_history(session, await _member(session, portfolio_id, change.name))


async def _refuse_delete_with_history(session: AsyncSession, member: MemberRow) -> None:
    # Messages and copies are the Vorgang's history and the member's mailbox; deleting the member
    # would orphan both. Removing the member from every release withdraws the rights instead.
    messages = await session.scalar(select(func.count()).where(ParticipantRow.member_id == member.id)) or 0
    copies = await session.scalar(select(func.count()).where(CopyRow.member_id == member.id)) or 0
    if messages or copies:
        raise DirectoryConflict(
            f"member {member.address} takes part in {messages} message(s) and has {copies} copy(ies); "
            "a member with history cannot be deleted: remove the member from its releases instead"
        )


def _jsonable(value: object) -> object:
    if isinstance(value, RelaySpec):
        return asdict(value) | {"tls": value.tls.value}
    return list(value) if isinstance(value, tuple) else value


# --- reads for the reply path (sync, on the writer thread's Core connection) ----------------------------


@dataclass(frozen=True, slots=True)
class RelayTarget:
    """Where and how to deliver members' replies to one back office, as the relay worker needs it."""

    host: str
    port: int
    tls: RelayTls
    login: str | None
    # The file holding the SMTP AUTH password; read when connecting, so a rotated secret needs no reload.
    password_file: Path | None
    timeout: int
    ams_version: str
    backoffice_name: str
    portfolio_id: int


def relay_target(connection: Connection, backoffice_id: int) -> RelayTarget | None:
    """The relay settings of a back office; None when it does not exist or has none (it takes no replies)."""
    row = connection.execute(
        select(
            BackOfficeRow.relay_host,
            BackOfficeRow.relay_port,
            BackOfficeRow.relay_tls,
            BackOfficeRow.relay_login,
            BackOfficeRow.relay_password_file,
            BackOfficeRow.relay_timeout,
            BackOfficeRow.ams_version,
            BackOfficeRow.name,
            BackOfficeRow.portfolio_id,
        ).where(BackOfficeRow.id == backoffice_id)
    ).one_or_none()
    if row is None or row.relay_host is None:
        return None
    return RelayTarget(
        host=row.relay_host,
        port=row.relay_port,
        tls=RelayTls(row.relay_tls),
        login=row.relay_login,
        password_file=Path(row.relay_password_file) if row.relay_password_file else None,
        timeout=row.relay_timeout,
        ams_version=row.ams_version,
        backoffice_name=row.name,
        portfolio_id=row.portfolio_id,
    )


def portfolio_policy(connection: Connection, portfolio_id: int) -> str:
    """The portfolio's sender-authentication policy, a ``SenderAuth`` value (a ``str``)."""
    value = connection.scalar(select(PortfolioRow.sender_auth).where(PortfolioRow.id == portfolio_id))
    if value is None:
        raise NotFound(f"there is no portfolio with id {portfolio_id}")
    return SenderAuth(value)


async def member_on_default_server(session: AsyncSession, elsewhere: Collection[str]) -> str | None:
    """The first member address (alphabetically) not in ``elsewhere``: one whose mailbox is on the IMAP
    server of ``[mailbox.imap]``, for /readyz to log in for; None when there is none."""
    query = select(MemberRow.address).order_by(MemberRow.address).limit(1)
    if elsewhere:
        query = query.where(MemberRow.address.not_in(list(elsewhere)))
    return (await session.execute(query)).scalar_one_or_none()


def _optional_text(value: object) -> str | None:
    return None if value is None else str(value)
