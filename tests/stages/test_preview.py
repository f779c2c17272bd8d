"""The preview of a directory change, on SQLite and PostgreSQL: it shows what reconciliation then does.

Each test previews a change through the CLI (``--preview --json``), checks that nothing was written,
makes the change, runs reconciliation to the end and compares the copies it back-filled or revoked
with the preview, member by member and Vorgang by Vorgang.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import Counter
from typing import Any

from sqlalchemy import Connection, func, select, update

from gateway.db.models import (
    CopyRow,
    EventRow,
    MemberRow,
    MessageRow,
    ReconcileRunRow,
    ReleaseMemberRow,
    ReleaseRow,
    VorgangRow,
)
from gateway.db.reconcile import message_batches
from gateway.db.writer import Writer
from gateway.domain.preview import Involved
from tests.conftest import Gateway
from tests.stages.conftest import PORTFOLIO, accept
from tests.stages.test_reconcile import GF_B, SB_B1, WITH_GF, admin, reconciler

GF_A = "gf-a@kunde-a.example"
SB_B2 = "sb-b2@kunde-b.example"
SB_A1 = "sb-a1@kunde-a.example"


def footprint(connection: Connection) -> tuple[Any, ...]:
    """Everything a change or a reconcile run writes: if this is equal, nothing was written."""
    counts = tuple(
        connection.scalar(select(func.count()).select_from(table))
        for table in (CopyRow, EventRow, ReconcileRunRow, ReleaseMemberRow, ReleaseRow)
    )
    releases = tuple(
        connection.execute(
            select(
                ReleaseRow.name, ReleaseRow.share_vorgaenge, ReleaseRow.backfill, ReleaseRow.revoked_copies
            ).order_by(ReleaseRow.id)
        )
    )
    states = tuple(connection.execute(select(CopyRow.id, CopyRow.state).order_by(CopyRow.id)))
    return counts, releases, states


def copy_states(connection: Connection) -> dict[int, str]:
    return {int(i): s for i, s in connection.execute(select(CopyRow.id, CopyRow.state))}


def by_member_and_vorgang(connection: Connection, copy_ids: set[int]) -> Counter[tuple[str, str]]:
    """The copies ``copy_ids`` counted per (member address, Vorgang reference)."""
    rows = connection.execute(
        select(CopyRow.id, MemberRow.address, VorgangRow.reference)
        .join(MemberRow, MemberRow.id == CopyRow.member_id)
        .join(MessageRow, MessageRow.id == CopyRow.message_id)
        .join(VorgangRow, VorgangRow.id == MessageRow.vorgang_id)
    )
    return Counter((address, reference) for cid, address, reference in rows if cid in copy_ids)


def previewed(preview: dict[str, Any], what: str) -> Counter[tuple[str, str]]:
    """The preview's ``what`` (gains, loses, keeps, not_backfilled) per (member address, Vorgang)."""
    return Counter({(m["member"], v["vorgang"]): v["messages"] for m in preview["members"] for v in m[what]})


async def preview_of(gateway: Gateway, *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(await admin(gateway, *args, "--preview", "--json", "-p", PORTFOLIO))
    return data


async def refused(gateway: Gateway, *args: str) -> Any:
    """A command that must fail as bad input (exit status 2); in a thread, as the CLI runs its own loop."""
    return await asyncio.to_thread(lambda: gateway(*args, expect=2))


async def reconcile_all(writer: Writer) -> None:
    while await reconciler(writer).run_once():
        pass


async def changed_by(writer: Writer, gateway: Gateway, *args: str) -> tuple[dict[int, str], dict[int, str]]:
    """Make the change, reconcile; the copy states before and after."""
    before = await writer.run(copy_states)
    await admin(gateway, *args, "-p", PORTFOLIO)
    await reconcile_all(writer)
    return before, await writer.run(copy_states)


async def test_ticking_vorgaenge_teilen_previews_exactly_the_copies_reconciliation_back_fills(
    writer: Writer, with_login: Gateway
) -> None:
    gateway = with_login
    await admin(gateway, "release", "set", WITH_GF, "--no-share-vorgaenge", "-p", PORTFOLIO)
    await accept(writer, SB_B1, "Schaden SB-B1")
    await accept(writer, SB_B1, "Noch einer SB-B1")
    await accept(writer, GF_B, "Vertrag GF-B")
    await accept(writer, GF_A, "Bilanz GF-A")
    untouched = await writer.run(footprint)

    preview = await preview_of(gateway, "release", "set", WITH_GF, "--share-vorgaenge")
    assert await writer.run(footprint) == untouched, "a preview writes nothing"
    assert preview["changes"] == ["update release Kunde B mit GF (share_vorgaenge=true)"]
    assert preview["reconciles"] is True
    # GF-A's mail has no participant in the release: its plan cannot change, and it is not read.
    assert preview["messages"] == 3
    # DESIGN.md §3: GF-B now sees SB-B1's mail; the clerks of B see GF-B's; nobody gets GF-A's own.
    gains = previewed(preview, "gains")
    assert {member for member, _ in gains} == {GF_B, SB_B1, SB_B2}
    assert sum(n for (member, _), n in gains.items() if member == GF_B) == 2
    assert preview["totals"] == {"backfilled": 4, "revoked": 0, "kept": 0, "not_backfilled": 0}

    before, after = await changed_by(writer, gateway, "release", "set", WITH_GF, "--share-vorgaenge")
    new = {cid for cid, state in after.items() if cid not in before}
    assert await writer.run(by_member_and_vorgang, new) == gains, "copy for copy what was previewed"

    # Unticking previews exactly the copies reconciliation then revokes.
    untouched = await writer.run(footprint)
    preview = await preview_of(gateway, "release", "set", WITH_GF, "--no-share-vorgaenge")
    assert await writer.run(footprint) == untouched
    assert previewed(preview, "gains") == Counter()
    before, after = await changed_by(writer, gateway, "release", "set", WITH_GF, "--no-share-vorgaenge")
    revoked = {cid for cid, state in after.items() if state == "revoking" and before[cid] != "revoking"}
    assert await writer.run(by_member_and_vorgang, revoked) == previewed(preview, "loses") == gains


async def test_removing_a_member_previews_its_revocations_or_what_a_keeping_release_keeps(
    writer: Writer, with_login: Gateway
) -> None:
    gateway = with_login
    await accept(writer, SB_B1, "Erste")
    await accept(writer, SB_B2, "Zweite")
    await accept(writer, SB_A1, "Nicht B")

    preview = await preview_of(gateway, "release", "remove-member", WITH_GF, GF_B)
    assert {m for m, _ in previewed(preview, "loses")} == {GF_B}
    assert sum(previewed(preview, "loses").values()) == 2
    assert previewed(preview, "gains") == Counter()

    # With revoked_copies keep, the same change keeps the copies, and says so.
    await admin(gateway, "release", "set", WITH_GF, "--revoked-copies", "keep", "-p", PORTFOLIO)
    await reconcile_all(writer)
    kept = await preview_of(gateway, "release", "remove-member", WITH_GF, GF_B)
    assert previewed(kept, "loses") == Counter()
    assert previewed(kept, "keeps") == previewed(preview, "loses")
    before, after = await changed_by(writer, gateway, "release", "remove-member", WITH_GF, GF_B)
    assert before == after, "kept: no copy changes"
    [run] = await writer.run(
        lambda c: list(c.execute(select(ReconcileRunRow.kept).order_by(ReconcileRunRow.id.desc()).limit(1)))
    )
    assert run.kept == kept["totals"]["kept"] == 2

    # Deleting the release that keeps its copies previews no loss either; removing GF-B's last
    # right through a release that removes previews what the run revokes.
    assert previewed(await preview_of(gateway, "release", "delete", WITH_GF), "loses") == Counter()


async def test_backfill_days_and_none_are_previewed_as_reconciliation_applies_them(
    writer: Writer, with_login: Gateway
) -> None:
    gateway = with_login
    await admin(gateway, "release", "remove-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    old = await accept(writer, SB_B1, "Alt")
    await accept(writer, SB_B1, "Neu")
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    await writer.run(
        lambda c: c.execute(
            update(MessageRow).where(MessageRow.gateway_id == old).values(received_at=long_ago)
        )
    )

    await admin(gateway, "release", "set", WITH_GF, "--backfill", "none", "-p", PORTFOLIO)
    none = await preview_of(gateway, "release", "add-member", WITH_GF, GF_B)
    assert none["totals"] == {"backfilled": 0, "revoked": 0, "kept": 0, "not_backfilled": 2}
    assert none["members"][0]["member"] == GF_B

    await admin(gateway, "release", "set", WITH_GF, "--backfill", "days:30", "-p", PORTFOLIO)
    days = await preview_of(gateway, "release", "add-member", WITH_GF, GF_B)
    assert days["totals"] == {"backfilled": 1, "revoked": 0, "kept": 0, "not_backfilled": 1}
    [gained] = days["members"][0]["gains"]
    assert gained["subject"].endswith("Neu")
    before, after = await changed_by(writer, gateway, "release", "add-member", WITH_GF, GF_B)
    new = {cid for cid in after if cid not in before}
    assert await writer.run(by_member_and_vorgang, new) == previewed(days, "gains")


async def test_a_conflicting_change_gives_the_conflict_not_a_preview(
    writer: Writer, with_login: Gateway
) -> None:
    gateway = with_login
    await accept(writer, SB_B1, "Erste")
    untouched = await writer.run(footprint)
    # GF-B is in the primary "Geschäftsführer" already (DESIGN.md §3).
    result = await refused(gateway, "release", "set", WITH_GF, "--primary", "--preview", "-p", PORTFOLIO)
    assert "only one primary release per portfolio" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    # A member with history cannot be deleted: the preview meets that as the change would.
    result = await refused(gateway, "member", "remove", SB_B1, "--preview", "-p", PORTFOLIO)
    assert "a member with history cannot be deleted" in result.stderr
    result = await refused(gateway, "release", "add-member", "Nirgends", GF_B, "--preview", "-p", PORTFOLIO)
    assert 'there is no release "Nirgends"' in result.stderr
    assert await writer.run(footprint) == untouched


async def test_text_preview_and_directory_load_preview(
    writer: Writer, with_login: Gateway, tmp_path: Any
) -> None:
    gateway = with_login
    await admin(gateway, "release", "remove-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    await accept(writer, SB_B1, "Erste")
    await accept(writer, SB_B1, "Zweite")
    text = await admin(gateway, "release", "add-member", WITH_GF, GF_B, "--preview", "-p", PORTFOLIO)
    assert "(nothing changed)" in text
    assert "GF-B gains 2 messages in 2 Vorgänge (VG-" in text
    assert "total: 2 copies back-filled, 0 removed, 0 kept, 0 not back-filled" in text

    # The same change as a directory file, previewed with `directory load --preview`.
    exported = tmp_path / "directory.yaml"
    await admin(gateway, "directory", "export", "-p", PORTFOLIO, "-o", str(exported))
    untouched = await writer.run(footprint)
    yaml = exported.read_text(encoding="utf-8")
    gf_b = "  - address: gf-b@kunde-b.example\n    name: GF-B\n    releases:\n    - Geschäftsführer\n"
    with_gf_b = yaml.replace(gf_b, gf_b + "    - Kunde B mit GF\n")
    assert with_gf_b != yaml, yaml
    exported.write_text(with_gf_b, encoding="utf-8")
    loaded = json.loads(await admin(gateway, "directory", "load", str(exported), "--preview", "--json"))
    assert loaded["totals"]["backfilled"] == 2
    assert previewed(loaded, "gains") == previewed(
        await preview_of(gateway, "release", "add-member", WITH_GF, GF_B), "gains"
    )
    assert await writer.run(footprint) == untouched


async def test_a_preview_reads_only_the_messages_with_a_participant_in_the_changed_release(
    writer: Writer, with_login: Gateway
) -> None:
    gateway = with_login
    await admin(gateway, "release", "remove-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    await accept(writer, SB_B1, "B eins")
    await accept(writer, SB_B2, "B zwei")
    elsewhere = {await accept(writer, SB_A1, f"A {n}") for n in range(3)}
    elsewhere.add(await accept(writer, GF_A, "GF-A"))

    def read(connection: Connection, only: Involved | None) -> set[str]:
        pid = connection.scalar(select(MessageRow.portfolio_id).limit(1))
        assert pid is not None
        ids = [f.message_id for b in message_batches(connection, pid, 2, only) for _, f in b.messages]
        names = {
            int(pk): str(gid) for pk, gid in connection.execute(select(MessageRow.id, MessageRow.gateway_id))
        }
        return {names[i] for i in ids}

    def members_of_with_gf(connection: Connection) -> Involved:
        wanted = MemberRow.address.in_((SB_B1, SB_B2, GF_B))
        return Involved(frozenset(connection.scalars(select(MemberRow.id).where(wanted))))

    only = await writer.run(members_of_with_gf)
    everything = await writer.run(read, None)
    involved_ones = await writer.run(read, only)
    assert involved_ones == everything - elsewhere, "Kunde A's and GF-A's mail is not read"
    assert len(involved_ones) == 2

    preview = await preview_of(gateway, "release", "add-member", WITH_GF, GF_B)
    assert preview["messages"] == 2
    # The result is what reconciliation, which reads every message, then does.
    before, after = await changed_by(writer, gateway, "release", "add-member", WITH_GF, GF_B)
    new = {cid for cid in after if cid not in before}
    assert sum(previewed(preview, "gains").values()) == 2
    assert await writer.run(by_member_and_vorgang, new) == previewed(preview, "gains")
    assert {cid: s for cid, s in after.items() if cid in before} == before, "no other copy changed"
