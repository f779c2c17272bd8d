"""Reconciliation as a stage, on SQLite and PostgreSQL, with the in-memory mailbox.

Directory changes go through the CLI as an admin makes them; the reconcile worker and the fan-out run in
the test's loop one step at a time, so batches, the cursor, a crash between batches and a copy being
written while it is revoked can be looked at one by one. The seed's retroactivity through a real
``gateway serve`` is in tests/e2e/test_reconcile.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from sqlalchemy import Connection, delete, select, update

from gateway.admin import api as admin_api
from gateway.config import FanoutSettings, ReconcileSettings
from gateway.db import queue
from gateway.db import reconcile as db
from gateway.db.engine import create_engine, session_factory
from gateway.db.models import (
    CopyRow,
    EventRow,
    MemberRow,
    MessageRow,
    ParticipantRow,
    ReconcileRunRow,
    ReleaseRow,
)
from gateway.db.writer import Writer
from gateway.mailbox import MailboxOwner, MemoryMailbox
from gateway.stages.fanout import FanOut
from gateway.stages.reconcile import Reconciler
from tests.conftest import Gateway
from tests.stages.conftest import PORTFOLIO, accept

WITH_GF = "Kunde B mit GF"
GF_B = "gf-b@kunde-b.example"
SB_B1 = "sb-b1@kunde-b.example"
FANOUT = FanoutSettings(retry_base=10.0, retry_max=60.0)


def reconciler(writer: Writer, node: str = "n1", batch_size: int = 3) -> Reconciler:
    return Reconciler(writer, ReconcileSettings(batch_size=batch_size, lease=60.0), node=node)


def fanout(writer: Writer, mailbox: MemoryMailbox) -> FanOut:
    return FanOut(writer, mailbox, FANOUT, node="n1", vorgang_header="X-Gateway-Vorgang", tag_subject=True)


def copies_of(connection: Connection, address: str) -> list[Any]:
    return list(
        connection.execute(
            select(CopyRow.__table__)
            .join(MemberRow, MemberRow.id == CopyRow.member_id)
            .where(MemberRow.address == address)
            .order_by(CopyRow.message_id)
        )
    )


def open_runs(connection: Connection) -> list[Any]:
    return list(connection.execute(select(ReconcileRunRow.__table__).where(ReconcileRunRow.state == "open")))


def event_kinds(connection: Connection) -> list[str]:
    return list(connection.scalars(select(EventRow.kind).order_by(EventRow.id)))


async def admin(gateway: Gateway, *args: str) -> str:
    """A CLI command as an admin types it; in a thread, as the command runs its own event loop."""
    result = await asyncio.to_thread(gateway, *args)
    return result.stdout


async def drain(fan: FanOut) -> None:
    while await fan.run_once():
        pass


async def test_directory_changes_record_runs_and_a_further_change_restarts_the_open_one(
    writer: Writer, with_login: Gateway
) -> None:
    gateway = with_login
    # Without messages there is nothing to reconcile, so no run.
    await admin(gateway, "release", "remove-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    assert await writer.run(open_runs) == []
    await accept(writer, SB_B1, "Erste")
    # Neither read_sync nor a non-sharing release's membership changes an audience.
    await admin(gateway, "release", "set", WITH_GF, "--read-sync", "seen", "-p", PORTFOLIO)
    await admin(gateway, "release", "create", "Ruhig", "-p", PORTFOLIO)
    await admin(gateway, "release", "add-member", "Ruhig", GF_B, "-p", PORTFOLIO)
    assert await writer.run(open_runs) == []

    out = await admin(gateway, "release", "add-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    assert f'add member {GF_B} to release "{WITH_GF}"' in out
    [run] = await writer.run(open_runs)
    assert (run.total, run.processed, run.restarts) == (1, 0, 0)
    assert run.reason == f'add member {GF_B} to release "{WITH_GF}"'

    # One batch done, then the backfill policy changes: the same run starts over with the new directory.
    await accept(writer, SB_B1, "Zweite")
    worker = reconciler(writer, batch_size=1)
    assert (await worker.step()) is not None
    await admin(gateway, "release", "set", WITH_GF, "--backfill", "days:30", "-p", PORTFOLIO)
    [again] = await writer.run(open_runs)
    assert again.id == run.id
    assert (again.cursor, again.processed, again.restarts, again.total) == (0, 0, 1, 2)
    assert again.reason.endswith("update release Kunde B mit GF (backfill=days:30)")
    kinds = await writer.run(event_kinds)
    assert kinds.count("reconcile.requested") == 1
    assert kinds.count("reconcile.restarted") == 1
    # The policy change is in the event log with its value before and after.
    detail = await writer.run(
        lambda c: c.scalars(
            select(EventRow.detail).where(EventRow.kind == "release.update").order_by(EventRow.id.desc())
        ).first()
    )
    assert detail["backfill"] == "days:30"
    assert detail["before"] == {"backfill": "all"}


async def test_batches_follow_the_cursor_and_a_restarted_worker_goes_on_where_it_stopped(
    writer: Writer, with_login: Gateway
) -> None:
    gateway = with_login
    await admin(gateway, "release", "remove-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    for n in range(7):
        await accept(writer, SB_B1, f"Nachricht {n}")
    assert await writer.run(copies_of, GF_B) == []
    await admin(gateway, "release", "add-member", WITH_GF, GF_B, "-p", PORTFOLIO)

    first = reconciler(writer, "n1")
    done = await first.step()
    assert done is not None
    assert (done.messages, done.backfilled, done.processed) == (3, 3, 3)
    [run] = await writer.run(open_runs)
    assert run.cursor == max(c.message_id for c in await writer.run(copies_of, GF_B))
    # The process dies here. Another node must wait for the lease; the same node, restarted, goes on.
    assert await reconciler(writer, "n2").step() is None
    restarted = reconciler(writer, "n1")
    done = await restarted.step()
    assert done is not None
    assert (done.messages, done.processed) == (3, 6)
    done = await restarted.step()
    assert done is not None
    assert (done.messages, done.processed) == (1, 7)
    done = await restarted.step()
    assert done is not None
    assert done.finished
    assert await restarted.step() is None

    copies = await writer.run(copies_of, GF_B)
    assert len(copies) == 7, "each message once, none twice after the restart"
    with_gf = await writer.run(lambda c: c.scalar(select(ReleaseRow.id).where(ReleaseRow.name == WITH_GF)))
    assert {(c.state, c.shared_via_release_id) for c in copies} == {("pending", with_gf)}
    [finished] = await writer.run(lambda c: db.runs(c, recent=1))
    assert (finished.state, finished.processed, finished.total, finished.backfilled) == ("done", 7, 7, 7)
    kinds = await writer.run(event_kinds)
    assert kinds.count("reconcile.batch") == 3
    assert kinds.count("reconcile.finished") == 1


async def test_a_revoked_copy_is_removed_from_every_folder_and_comes_back_as_the_same_row(
    writer: Writer, with_login: Gateway
) -> None:
    gateway = with_login
    await accept(writer, SB_B1, "Bleibt")
    await accept(writer, SB_B1, "Auch")
    mailbox = MemoryMailbox()
    fan = fanout(writer, mailbox)
    await drain(fan)
    [before, other] = await writer.run(copies_of, GF_B)
    owner = MailboxOwner(PORTFOLIO, GF_B)
    mailbox.move(owner, before.copy_id, "Archiv")

    await admin(gateway, "release", "remove-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    while await reconciler(writer).run_once():
        pass
    assert [c.state for c in await writer.run(copies_of, GF_B)] == ["revoking", "revoking"]
    await drain(fan)
    assert [c.state for c in await writer.run(copies_of, GF_B)] == ["revoked", "revoked"]
    assert await mailbox.find(owner, before.copy_id) == [], "gone from the folder GF-B moved it to"
    assert await mailbox.find(owner, other.copy_id) == []
    assert [c.state for c in await writer.run(copies_of, SB_B1)] == ["delivered"] * 2, (
        "participants keep theirs"
    )
    assert "copy.revoked" in await writer.run(event_kinds)

    await admin(gateway, "release", "add-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    while await reconciler(writer).run_once():
        pass
    back = await writer.run(copies_of, GF_B)
    assert [(c.id, c.copy_id, c.state) for c in back] == [
        (before.id, before.copy_id, "pending"),
        (other.id, other.copy_id, "pending"),
    ]
    await drain(fan)
    assert [x.folder for x in await mailbox.find(owner, before.copy_id)] == ["INBOX"]
    assert [c.state for c in await writer.run(copies_of, GF_B)] == ["delivered", "delivered"]


async def test_a_copy_being_written_is_removed_only_after_its_lease_and_never_turns_delivered(
    writer: Writer, with_login: Gateway
) -> None:
    gateway = with_login
    await accept(writer, SB_B1, "Unterwegs")
    mailbox = MemoryMailbox()
    fan = fanout(writer, mailbox)
    # The fan-out has taken the copies and is writing them ...
    now = dt.datetime.now(dt.UTC)
    jobs = await writer.run(queue.claim, "n1", now, 60.0, 100)
    gf_job = next(j for j in jobs if j.address == GF_B)
    # ... when GF-B leaves the release and the run revokes GF-B's copy.
    await admin(gateway, "release", "remove-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    while await reconciler(writer).run_once():
        pass
    [revoking] = await writer.run(copies_of, GF_B)
    assert revoking.state == "revoking"
    due = revoking.next_attempt_at.replace(tzinfo=dt.UTC)
    assert due > now + dt.timedelta(seconds=50), "not due before the write's lease ends"
    assert await writer.run(queue.claim_removals, "n1", dt.datetime.now(dt.UTC), 60.0, 100) == []

    # The fan-out confirms its leases right before writing (issue 17): GF-B's copy waits for its
    # removal now, so it is not written at all; the others are. The copy stays revoking.
    await fan._deliver(jobs)
    await fan._settled()
    assert [c.state for c in await writer.run(copies_of, GF_B)] == ["revoking"]
    assert await mailbox.find(MailboxOwner(PORTFOLIO, GF_B), gf_job.copy_id) == []

    # After the lease the fan-out removes it.
    await writer.run(
        lambda c: c.execute(
            update(CopyRow).where(CopyRow.id == gf_job.id).values(next_attempt_at=dt.datetime(2000, 1, 1))
        )
    )
    await drain(fan)
    assert [c.state for c in await writer.run(copies_of, GF_B)] == ["revoked"]
    assert await mailbox.find(MailboxOwner(PORTFOLIO, GF_B), gf_job.copy_id) == []


async def test_a_release_that_keeps_revoked_copies_keeps_them_also_once_deleted(
    writer: Writer, with_login: Gateway
) -> None:
    gateway = with_login
    await accept(writer, SB_B1, "Behalten")
    await admin(gateway, "release", "set", WITH_GF, "--revoked-copies", "keep", "-p", PORTFOLIO)
    await admin(gateway, "release", "remove-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    while await reconciler(writer).run_once():
        pass
    [kept] = await writer.run(copies_of, GF_B)
    assert kept.state == "pending"
    [run] = await writer.run(lambda c: db.runs(c, recent=1))
    assert (run.kept, run.revoked) == (1, 0)

    await admin(gateway, "release", "delete", WITH_GF, "-p", PORTFOLIO)
    while await reconciler(writer).run_once():
        pass
    [still] = await writer.run(copies_of, GF_B)
    assert still.state == "pending"
    assert still.shared_via_release_id is None
    # SB-B2 saw it through "Kunde B Sachbearbeiter" all along; nothing changed there.
    assert [c.state for c in await writer.run(copies_of, "sb-b2@kunde-b.example")] == ["pending"]


async def test_a_back_filled_copy_starts_with_the_shared_answered_flag(
    writer: Writer, with_login: Gateway
) -> None:
    gateway = with_login
    await admin(gateway, "release", "remove-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    await accept(writer, SB_B1, "Beantwortet")
    await writer.run(lambda c: c.execute(update(CopyRow).values(answered=True)))
    await admin(gateway, "release", "add-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    while await reconciler(writer).run_once():
        pass
    [copy] = await writer.run(copies_of, GF_B)
    assert (copy.state, copy.answered, copy.seen) == ("pending", True, False)


async def test_backfill_none_hands_out_nothing_old(writer: Writer, with_login: Gateway) -> None:
    gateway = with_login
    await admin(gateway, "release", "remove-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    await admin(gateway, "release", "set", WITH_GF, "--backfill", "none", "-p", PORTFOLIO)
    await accept(writer, SB_B1, "Alt")
    await admin(gateway, "release", "add-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    while await reconciler(writer).run_once():
        pass
    assert await writer.run(copies_of, GF_B) == []
    # New mail reaches GF-B as usual: the policy is about what was there before.
    await accept(writer, SB_B1, "Neu")
    assert len(await writer.run(copies_of, GF_B)) == 1


async def test_reconcile_cli_records_works_and_shows_runs(writer: Writer, with_login: Gateway) -> None:
    gateway = with_login
    await admin(gateway, "release", "remove-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    for n in range(5):
        await accept(writer, SB_B1, f"CLI {n}")
    assert "no reconcile runs yet" in await admin(gateway, "reconcile", "status")
    await admin(gateway, "release", "add-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    status = await admin(gateway, "reconcile", "status")
    assert f"{PORTFOLIO}  open  0/5 messages  backfilled 0  revoked 0  kept 0" in status
    assert f'because: add member {GF_B} to release "{WITH_GF}"' in status

    result = await asyncio.to_thread(gateway, "reconcile", "run", "--wait", "-p", PORTFOLIO)
    assert f"{PORTFOLIO}: 5 message(s), backfilled 5, revoked 0, kept 0" in result.stdout
    assert "5/5" in result.stderr, "the progress bar counts the messages"
    [run] = [r for r in await writer.run(lambda c: db.runs(c)) if r.state == "done"]
    assert run.processed == 5
    assert len(await writer.run(copies_of, GF_B)) == 5
    shown = await admin(gateway, "reconcile", "status", "--json")
    assert '"progress": "5/5"' in shown

    # Nothing open: `run` records a new run, which finds nothing to change.
    result = await asyncio.to_thread(gateway, "reconcile", "run", "--wait")
    assert "backfilled 0, revoked 0, kept 0" in result.stdout
    result = await asyncio.to_thread(gateway, "reconcile", "status", "-p", "nowhere", expect=2)
    assert "there is no portfolio 'nowhere'" in result.stderr


async def test_the_author_of_a_members_reply_is_not_given_a_copy(writer: Writer, with_login: Gateway) -> None:
    """The reply path stores a member's mail with its author and copies it to everyone else (the author's
    client keeps it in Sent); a later run must not put it into the author's inbox."""
    gateway = with_login
    await accept(writer, SB_B1, "Antwort")

    def as_reply_by_sb_b1(connection: Connection) -> None:
        author = connection.scalar(select(MemberRow.id).where(MemberRow.address == SB_B1))
        connection.execute(update(MessageRow).values(direction="reply", sender_member_id=author))
        connection.execute(update(ParticipantRow).values(role="sender"))
        connection.execute(delete(CopyRow).where(CopyRow.member_id == author))

    await writer.run(as_reply_by_sb_b1)
    await admin(gateway, "release", "remove-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    await admin(gateway, "release", "add-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    while await reconciler(writer).run_once():
        pass
    assert await writer.run(copies_of, SB_B1) == []
    [run] = await writer.run(lambda c: db.runs(c, recent=1))
    assert (run.backfilled, run.revoked, run.processed) == (0, 0, 1)


async def test_a_batch_that_fails_midway_leaves_nothing_and_is_done_again(
    writer: Writer, with_login: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = with_login
    await admin(gateway, "release", "remove-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    for n in range(4):
        await accept(writer, SB_B1, f"Absturz {n}")
    await admin(gateway, "release", "add-member", WITH_GF, GF_B, "-p", PORTFOLIO)

    def crash(*_: object) -> None:
        raise RuntimeError("the process died here")

    # The copies are inserted, then the batch dies before its cursor moves: all of it rolls back.
    monkeypatch.setattr(db, "_revive", crash)
    worker = reconciler(writer, batch_size=3)
    with pytest.raises(RuntimeError):
        await worker.step()
    assert await writer.run(copies_of, GF_B) == []
    [run] = await writer.run(open_runs)
    assert (run.cursor, run.processed) == (0, 0)
    assert run.last_error == "RuntimeError: the process died here"
    monkeypatch.undo()
    while await worker.run_once():
        pass
    assert len(await writer.run(copies_of, GF_B)) == 4, "each copy once"


async def test_run_wait_follows_a_run_a_running_gateway_holds(writer: Writer, with_login: Gateway) -> None:
    gateway = with_login
    await admin(gateway, "release", "remove-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    for n in range(6):
        await accept(writer, SB_B1, f"Folgen {n}")
    await admin(gateway, "release", "add-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    serving = reconciler(writer, "gateway-node", batch_size=2)
    assert await serving.step() is not None  # the gateway has the run now

    waiting = asyncio.create_task(asyncio.to_thread(gateway, "reconcile", "run", "--wait"))
    await asyncio.sleep(1.5)
    assert not waiting.done(), "the CLI does not take a run another process holds"
    # The gateway goes on, batch by batch, while the CLI watches (2 more batches, then the closing step).
    for _ in range(3):
        assert await serving.run_once()
        await asyncio.sleep(0.2)
    result = await asyncio.wait_for(waiting, 30)
    assert f"{PORTFOLIO}: 6 message(s), backfilled 6, revoked 0, kept 0" in result.stdout
    [run] = await writer.run(lambda c: db.runs(c, recent=1))
    assert (run.state, run.leased_by) == ("done", None)


@pytest.mark.parametrize("kind", ["quarantined", "auto-reply", "bounce", "loop"])
async def test_mail_that_is_never_fanned_out_is_not_handed_out_later_either(
    writer: Writer, with_login: Gateway, kind: str
) -> None:
    """Quarantined mail, auto-replies, bounces and loops stay in the Vorgang without copies; a directory
    change that widens the audience must not back-fill them (a quarantine would be bypassed)."""
    gateway = with_login
    await admin(gateway, "release", "remove-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    await accept(writer, SB_B1, "Gewöhnlich")
    await accept(writer, SB_B1, "Zurückgehalten")
    await writer.run(
        lambda c: c.execute(
            update(MessageRow).where(MessageRow.subject == "Zurückgehalten").values(kind=kind)
        )
    )
    await admin(gateway, "release", "add-member", WITH_GF, GF_B, "-p", PORTFOLIO)
    [run] = await writer.run(open_runs)
    assert run.total == 1, "only mail that is fanned out counts"
    while await reconciler(writer).run_once():
        pass
    copies = await writer.run(copies_of, GF_B)
    subjects = await writer.run(
        lambda c: set(
            c.scalars(select(MessageRow.subject).where(MessageRow.id.in_([x.message_id for x in copies])))
        )
    )
    assert subjects == {"Gewöhnlich"}


async def test_mail_accepted_while_a_directory_change_is_open_waits_and_gets_the_new_audience(
    writer: Writer, with_login: Gateway, database_url: str
) -> None:
    """A directory change takes its portfolio before it reads it, and an acceptance holds it while it
    plans (gateway.db.acceptance.hold_directory): mail arriving while the change is open waits for it and is
    planned under the new directory. Without that, on PostgreSQL, the mail would get a copy for GF-B
    after the change, committed where the change's reconcile run might already have gone past it."""
    before = await accept(writer, SB_B1, "Vorher")  # there is mail, so the change records a run
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            await admin_api.remove_release_member(session, PORTFOLIO, WITH_GF, GF_B, "cli:test")
            during = asyncio.create_task(accept(writer, SB_B1, "Waehrenddessen"))
            await asyncio.sleep(1.0)
            assert not during.done(), "the acceptance waits for the open directory change"
            await session.commit()
        after = await asyncio.wait_for(during, 30)
    finally:
        await engine.dispose()

    def copies_by_message(connection: Connection) -> dict[str, set[str]]:
        rows = connection.execute(
            select(MessageRow.gateway_id, MemberRow.address)
            .join(CopyRow, CopyRow.message_id == MessageRow.id)
            .join(MemberRow, MemberRow.id == CopyRow.member_id)
        )
        found: dict[str, set[str]] = {}
        for gateway_id, address in rows:
            found.setdefault(gateway_id, set()).add(address)
        return found

    copies = await writer.run(copies_by_message)
    assert copies[before] == {SB_B1, "sb-b2@kunde-b.example", GF_B}, "planned before the change"
    assert copies[after] == {SB_B1, "sb-b2@kunde-b.example"}, "planned under the new directory"
    assert len(await writer.run(open_runs)) == 1
