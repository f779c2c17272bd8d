"""The queues as an admin and an outage see them, on SQLite and PostgreSQL (issue 13, items 6 and 7).

- One bad relay job holds nobody: a back office whose relay password file is not UTF-8 gets a clear,
  retried error, and the mail of the other back office that went out is recorded sent and never sent
  again (a real SMTP peer: aiosmtpd).
- Held copies come back by themselves: one probe per mailbox, and the first copy written releases the
  rest; nobody runs a command.
- The back office is told: a delay notice after ``delay_notice_after`` and a failure notice when the
  gateway gives up, each once, each an event, relayed from <>.
- ``gateway queue list|show|retry|drop`` with --json.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import errno
import json
from pathlib import Path

import pytest
from click.testing import Result
from sqlalchemy import Connection, select, update

from gateway.config import FanoutSettings, RelaySettings
from gateway.db.models import BackOfficeRow, CopyRow, EventRow, MemberRow, MessageRow, RelayRow
from gateway.db.relayqueue import RelayJob
from gateway.db.writer import Writer
from gateway.domain.retry import backoff
from gateway.mailbox import MailboxError, MemoryMailbox
from gateway.stages.fanout import FanOut
from gateway.stages.notices import NoticeSettings
from gateway.stages.relay import Relay
from tests.conftest import Gateway
from tests.e2e.conftest import BackOfficeSink
from tests.stages.conftest import PORTFOLIO, accept


async def cli(gateway: Gateway, *args: str, expect: int | None = 0) -> Result:
    """A `gateway` command, run beside the test's event loop (the CLI runs its own)."""
    return await asyncio.to_thread(gateway, *args, expect=expect)


FAST = FanoutSettings(retry_base=0.01, retry_max=0.01, max_attempts=2, held_retry=3600.0, poll_interval=0.01)
DISK_FULL = MailboxError(errno.ENOSPC, "No space left on device", "/srv/mail")


def test_one_backoff_for_every_worker() -> None:
    fanout, relay = FanoutSettings(retry_base=5, retry_max=60), RelaySettings(retry_base=60, retry_max=3600)
    assert [backoff(n, fanout) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 40, 60]
    assert [backoff(n, relay) for n in (1, 2, 7, 10_000)] == [60, 120, 3600, 3600]


# --- the relay: one bad job, and the others go out once --------------------------------------------------


@pytest.fixture
def sink() -> object:
    server = BackOfficeSink()
    server.up()
    try:
        yield server
    finally:
        server.down()


def _relay_rows(connection: Connection) -> list[RelayRow]:
    return list(connection.execute(select(RelayRow.__table__).order_by(RelayRow.id)))  # type: ignore[arg-type]


async def test_a_relay_job_that_cannot_start_holds_no_other_and_nothing_goes_out_twice(
    with_login: Gateway, writer: Writer, sink: BackOfficeSink, tmp_path: Path
) -> None:
    await cli(with_login, "backoffice", "set", "ams", "-p", PORTFOLIO, "--relay-port", str(sink.port))
    password = tmp_path / "bms.password"
    password.write_bytes(b"geheim-\xfc\xdf\n")  # Latin-1 "geheim-üß": not UTF-8
    await cli(with_login,
        "backoffice", "add", "bms", "-p", PORTFOLIO, "--ams-version", "4.8.0.64470",
        "--address", "bms@makler-muster.example", "--relay-host", "127.0.0.1", "--relay-port", str(sink.port),
        "--relay-tls", "none", "--relay-login", "bms", "--relay-password-file", str(password),
    )  # fmt: skip
    gateway_ids = [await accept(writer, "sb-a1@kunde-a.example", f"Antwort {n}") for n in range(3)]

    def queue_three(connection: Connection) -> None:
        now = dt.datetime.now(dt.UTC)
        office = dict(connection.execute(select(BackOfficeRow.name, BackOfficeRow.id)).all())
        member = connection.scalar(select(MemberRow.id).where(MemberRow.address == "sb-a1@kunde-a.example"))
        for n, (gid, to) in enumerate(zip(gateway_ids, ["ams", "bms", "ams"], strict=True)):
            message = connection.execute(
                select(MessageRow.id, MessageRow.portfolio_id).where(MessageRow.gateway_id == gid)
            ).one()
            connection.execute(
                RelayRow.__table__.insert().values(  # type: ignore[attr-defined]
                    portfolio_id=message.portfolio_id, message_id=message.id, backoffice_id=office[to],
                    member_id=member, envelope_sender="sb-a1@kunde-a.example",
                    recipients=[f"{to}@makler-muster.example"], relay_message_id=f"<r{n}@gw.example>",
                    data=f"From: sb-a1@kunde-a.example\r\nSubject: r{n}\r\n\r\nText\r\n".encode(),
                    state="pending", attempts=0, next_attempt_at=now, expires_at=now + dt.timedelta(days=5),
                    created_at=now, updated_at=now,
                )
            )  # fmt: skip

    await writer.run(queue_three)
    relay = Relay(
        writer, MemoryMailbox(), RelaySettings(retry_base=30, retry_max=60), node="n1", hostname="gw.example"
    )
    assert await relay.run_once() == 3
    sent = await asyncio.to_thread(sink.wait_for, 2)
    assert sorted(r.rcpt_tos[0] for r in sent) == ["ams@makler-muster.example"] * 2
    rows = await writer.run(_relay_rows)
    assert [r.state for r in rows] == ["sent", "pending", "sent"]
    bad = rows[1]
    assert bad.attempts == 1
    assert f"relay password file {password} of back office bms is not UTF-8 text" in (bad.last_error or "")
    due = bad.next_attempt_at if bad.next_attempt_at.tzinfo else bad.next_attempt_at.replace(tzinfo=dt.UTC)
    assert due > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20), "retried with backoff, not at once"

    # Every lease over, everything due: only the bad job is taken again; nothing goes out twice.
    await writer.run(lambda c: c.execute(update(RelayRow).values(next_attempt_at=dt.datetime(2000, 1, 1))))
    assert await relay.run_once() == 1
    assert len(sink.received) == 2
    rows = await writer.run(_relay_rows)
    assert [(r.state, r.attempts) for r in rows] == [("sent", 1), ("pending", 2), ("sent", 1)]


# --- held copies come back by themselves ----------------------------------------------------------------


async def _copies(writer: Writer) -> list[CopyRow]:
    return await writer.run(lambda c: list(c.execute(select(CopyRow.__table__).order_by(CopyRow.id))))


async def _make_due(writer: Writer) -> None:
    await writer.run(lambda c: c.execute(update(CopyRow).values(next_attempt_at=dt.datetime(2000, 1, 1))))


async def test_held_copies_are_probed_per_mailbox_and_released_when_it_takes_one(writer: Writer) -> None:
    for n in range(3):
        await accept(writer, "sb-a1@kunde-a.example", f"Voll {n}")  # copies for SB-A1 and SB-A2
    mailbox = MemoryMailbox()
    fanout = FanOut(writer, mailbox, FAST, node="n1", vorgang_header="X-Gateway-Vorgang", tag_subject=True)
    for _ in range(FAST.max_attempts):
        mailbox.fail_next(6, DISK_FULL)
        await _make_due(writer)
        assert await fanout.run_once() == 6
    rows = await _copies(writer)
    assert [r.state for r in rows] == ["held"] * 6

    # The disk is still full: one probe per mailbox (two members), and the others wait with it.
    await _make_due(writer)
    mailbox.fail_next(2, DISK_FULL)
    assert await fanout.run_once() == 2
    rows = await _copies(writer)
    assert [r.state for r in rows] == ["held"] * 6
    assert sorted(r.attempts for r in rows) == [2, 2, 2, 2, 3, 3]
    now = dt.datetime.now(dt.UTC)
    assert all(
        (r.next_attempt_at if r.next_attempt_at.tzinfo else r.next_attempt_at.replace(tzinfo=dt.UTC))
        > now + dt.timedelta(seconds=3000)
        for r in rows
    ), "every held copy of a probed mailbox waits held_retry"
    assert await fanout.run_once() == 0

    # Space is free again: the next probe is written, and its mailbox's held copies follow at once.
    await _make_due(writer)
    assert await fanout.run_once() == 2
    assert await fanout.run_once() == 4
    rows = await _copies(writer)
    assert [r.state for r in rows] == ["delivered"] * 6


# --- the back office is told ----------------------------------------------------------------------------


NOTICES = NoticeSettings("gw.example", delay_after=60.0, lifetime=3600.0, relay_lifetime=3600.0)


async def _age_copies(writer: Writer, seconds: float) -> None:
    then = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
    await writer.run(lambda c: c.execute(update(CopyRow).values(created_at=then)))


async def _events(writer: Writer, prefix: str) -> list[str]:
    return await writer.run(
        lambda c: list(
            c.scalars(select(EventRow.kind).where(EventRow.kind.like(f"{prefix}%")).order_by(EventRow.id))
        )
    )


async def test_the_back_office_gets_one_delay_and_one_failure_notice(
    with_login: Gateway, writer: Writer
) -> None:
    gateway_id = await accept(writer, "sb-a1@kunde-a.example", "Rückfrage Schaden", "<schaden@ams.example>")
    mailbox = MemoryMailbox()
    fanout = FanOut(
        writer,
        mailbox,
        FAST,
        node="n1",
        vorgang_header="X-Gateway-Vorgang",
        tag_subject=True,
        notices=NOTICES,
    )
    mailbox.fail_next(1000, DISK_FULL)  # the disk stays full
    assert await fanout.run_once() == 2
    assert await writer.run(_relay_rows) == [], "not late yet"

    await _age_copies(writer, 120)
    fanout._last_sweep = 0.0
    await fanout.run_once()
    fanout._last_sweep = 0.0
    await fanout.run_once()
    (delayed,) = await writer.run(_relay_rows)
    assert (delayed.purpose, delayed.envelope_sender, delayed.recipients) == (
        "delayed", "", ["ams@makler-muster.example"],
    )  # fmt: skip
    assert delayed.relay_message_id == f"<delayed.{gateway_id}@gw.example>"
    report = email.message_from_bytes(delayed.data, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert str(report["Subject"]) == "Verzögert / Delayed: Rückfrage Schaden"
    assert report["In-Reply-To"] == "<schaden@ams.example>"
    text, status = report.get_payload()[0].get_content(), report.get_payload()[1]
    assert "noch nicht zugestellt" in text
    assert "has not been delivered yet" in text
    assert "sb-a1@kunde-a.example, sb-a2@kunde-a.example" in text
    assert "No space left on device" in text
    assert "Action: delayed" in status.as_string()
    assert await _events(writer, "notice.") == ["notice.delayed"]
    listed = json.loads((await cli(with_login, "queue", "list", "--kind", "relay", "--json")).stdout)
    assert [(i["kind"], i["purpose"], i["to"]) for i in listed] == [
        ("relay", "delayed", ["ams@makler-muster.example"])
    ]

    # Past the lifetime the gateway gives up: copies failed, one failure notice, one event per copy.
    await _age_copies(writer, 4000)
    await _make_due(writer)
    fanout._last_sweep = 0.0
    assert await fanout.run_once() == 0, "given up before anyone takes them again"
    rows = await _copies(writer)
    assert [r.state for r in rows] == ["failed", "failed"]
    relays = await writer.run(_relay_rows)
    assert [r.purpose for r in relays] == ["delayed", "failed"]
    failed = email.message_from_bytes(relays[1].data, policy=email.policy.default)
    assert str(failed["Subject"]) == "Nicht zugestellt / Undelivered: Rückfrage Schaden"
    assert "Action: failed" in failed.get_payload()[1].as_string()
    assert await _events(writer, "notice.") == ["notice.delayed", "notice.failed"]
    assert (await _events(writer, "copy.given_up")) == ["copy.given_up"] * 2
    fanout._last_sweep = 0.0
    await fanout.run_once()
    assert len(await writer.run(_relay_rows)) == 2, "each notice once"


# --- gateway queue ---------------------------------------------------------------------------------------


async def test_gateway_queue_lists_shows_retries_and_drops(with_login: Gateway, writer: Writer) -> None:
    await accept(writer, "sb-a1@kunde-a.example", "Stau")
    mailbox = MemoryMailbox()
    fanout = FanOut(writer, mailbox, FAST, node="n1", vorgang_header="X-Gateway-Vorgang", tag_subject=True)
    for _ in range(FAST.max_attempts):
        mailbox.fail_next(2, DISK_FULL)
        await _make_due(writer)
        await fanout.run_once()
    listed = json.loads((await cli(with_login, "queue", "list", "--state", "held", "--json")).stdout)
    assert [(i["kind"], i["state"], i["member"]) for i in listed] == [
        ("copy", "held", "sb-a1@kunde-a.example"), ("copy", "held", "sb-a2@kunde-a.example"),
    ]  # fmt: skip
    assert "No space left on device" in listed[0]["last_error"]
    text = (await cli(with_login, "queue", "list", "--member", "sb-a2@kunde-a.example")).stdout
    assert "held" in text
    assert "sb-a2@kunde-a.example" in text
    assert "sb-a1@" not in text.split("\n", 1)[1]
    shown = json.loads((await cli(with_login, "queue", "show", listed[0]["id"], "--json")).stdout)
    assert shown["id"] == listed[0]["id"]
    assert shown["attempts"] == 2
    assert (
        "not in any queue: copy-999999"
        in (await cli(with_login, "queue", "show", "copy-999999", expect=2)).stderr
    )

    retried = json.loads((await cli(with_login, "queue", "retry", listed[0]["id"], "--json")).stdout)
    assert [i["id"] for i in retried] == [listed[0]["id"]]
    rows = await _copies(writer)
    assert [r.state for r in rows] == ["pending", "held"]
    dropped = (await cli(with_login, "queue", "drop", listed[1]["id"], "--yes")).stdout
    assert f"dropped: {listed[1]['id']}" in dropped
    assert await fanout.run_once() == 1
    rows = await _copies(writer)
    assert [r.state for r in rows] == ["delivered", "dropped"]
    assert (await cli(with_login, "queue", "list")).stdout.strip() == "the queues are empty"
    assert await _events(writer, "queue.") == ["queue.retried", "queue.dropped"]


async def test_flag_jobs_and_removals_back_off_like_copies_and_record_any_error(
    with_login: Gateway, writer: Writer
) -> None:
    """The shared policy: whatever the error (here one nobody foresaw), it is recorded on the item and
    the item waits backoff(attempts) before its next attempt, growing with each failure."""
    await accept(writer, "gf-a@kunde-a.example", "Flaggen")  # copies for GF-A and GF-B
    mailbox = MemoryMailbox()
    settings = FanoutSettings(retry_base=100.0, retry_max=10_000.0, poll_interval=0.01)
    fanout = FanOut(
        writer, mailbox, settings, node="n1", vorgang_header="X-Gateway-Vorgang", tag_subject=True
    )
    assert await fanout.run_once() == 2
    rows = await _copies(writer)
    await writer.run(
        lambda c: c.execute(
            update(CopyRow)
            .where(CopyRow.id == rows[0].id)
            .values(answered=True, flags_pending=True, next_attempt_at=dt.datetime(2000, 1, 1))
        )
    )
    await writer.run(
        lambda c: c.execute(
            update(CopyRow)
            .where(CopyRow.id == rows[1].id)
            .values(state="revoking", next_attempt_at=dt.datetime(2000, 1, 1))
        )
    )
    waits: dict[int, list[float]] = {rows[0].id: [], rows[1].id: []}
    for _ in range(2):
        mailbox.fail_next(2, RuntimeError("the mailbox library broke"))
        before = dt.datetime.now(dt.UTC)
        await fanout.run_once()
        for row in await _copies(writer):
            assert row.last_error == "RuntimeError: the mailbox library broke"
            due = (
                row.next_attempt_at
                if row.next_attempt_at.tzinfo
                else row.next_attempt_at.replace(tzinfo=dt.UTC)
            )
            waits[row.id].append((due - before).total_seconds())
        await _make_due(writer)
    for row_waits in waits.values():
        first, second = row_waits
        assert first == pytest.approx(backoff(2, settings), abs=5)
        assert second == pytest.approx(backoff(3, settings), abs=5), "the wait grows with each failure"
    assert [r.state for r in await _copies(writer)] == ["delivered", "revoking"]
    listed = json.loads((await cli(with_login, "queue", "list", "--json")).stdout)
    assert [(i["kind"], i["state"], i["member"]) for i in listed] == [
        ("flags", "pending", "gf-a@kunde-a.example"), ("removal", "pending", "gf-b@kunde-b.example"),
    ]  # fmt: skip
    only = json.loads((await cli(with_login, "queue", "list", "--kind", "removal", "--json")).stdout)
    assert [i["kind"] for i in only] == ["removal"]
    refused = await cli(with_login, "queue", "drop", only[0]["id"], "--yes", expect=2)
    assert "a removal cannot be dropped" in refused.stderr


class _BuggyForOne(Relay):
    """A relay whose sending code has a bug for one mail (r1): the others must not notice."""

    async def _send(self, job: RelayJob) -> str:
        if job.relay_message_id == "<r1@gw.example>":
            raise KeyError("a bug in the gateway")
        return await super()._send(job)


async def test_an_unexpected_error_is_recorded_clearly_and_retried_with_backoff(
    with_login: Gateway, writer: Writer, sink: BackOfficeSink
) -> None:
    await cli(with_login, "backoffice", "set", "ams", "-p", PORTFOLIO, "--relay-port", str(sink.port))
    gateway_ids = [await accept(writer, "sb-a1@kunde-a.example", f"Fehler {n}") for n in range(3)]

    def queue_three(connection: Connection) -> None:
        now = dt.datetime.now(dt.UTC)
        office = connection.scalar(select(BackOfficeRow.id).where(BackOfficeRow.name == "ams"))
        member = connection.scalar(select(MemberRow.id).where(MemberRow.address == "sb-a1@kunde-a.example"))
        for n, gid in enumerate(gateway_ids):
            message = connection.execute(
                select(MessageRow.id, MessageRow.portfolio_id).where(MessageRow.gateway_id == gid)
            ).one()
            connection.execute(
                RelayRow.__table__.insert().values(  # type: ignore[attr-defined]
                    portfolio_id=message.portfolio_id, message_id=message.id, backoffice_id=office,
                    member_id=member, envelope_sender="sb-a1@kunde-a.example",
                    recipients=["ams@makler-muster.example"], relay_message_id=f"<r{n}@gw.example>",
                    data=f"From: sb-a1@kunde-a.example\r\nSubject: r{n}\r\n\r\nText\r\n".encode(),
                    state="pending", attempts=0, next_attempt_at=now, expires_at=now + dt.timedelta(days=5),
                    created_at=now, updated_at=now,
                )
            )  # fmt: skip

    await writer.run(queue_three)
    relay = _BuggyForOne(
        writer, MemoryMailbox(), RelaySettings(retry_base=30, retry_max=60), node="n1", hostname="gw.example"
    )
    assert await relay.run_once() == 3
    assert len(await asyncio.to_thread(sink.wait_for, 2)) == 2
    rows = await writer.run(_relay_rows)
    assert [r.state for r in rows] == ["sent", "pending", "sent"]
    assert rows[1].last_error == "unexpected error: KeyError: 'a bug in the gateway'"
    due = rows[1].next_attempt_at
    due = due if due.tzinfo else due.replace(tzinfo=dt.UTC)
    assert due > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20)
    await writer.run(lambda c: c.execute(update(RelayRow).values(next_attempt_at=dt.datetime(2000, 1, 1))))
    assert await relay.run_once() == 1
    assert len(sink.received) == 2, "nothing already relayed is relayed again"
