"""The parse pool: jobs run in other processes, a job over its budget costs its worker, never the pool."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from gateway.domain.answers import Kind
from gateway.errors import NotRead
from gateway.stages import parsepool
from gateway.stages.parsepool import SPILL_OVER, MailReader, ParsePool

BOUNCE = (
    b"From: MAILER-DAEMON@mx.kunde-b.example\r\nTo: bounces@reply.gateway.test\r\n"
    b"Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\nIt failed.\r\n"
    b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.kunde-b.example\r\n\r\n"
    b"Final-Recipient: rfc822; ams@makler-muster.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
    b"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <relayed-1@gateway.test>\r\n\r\n"
    b"--b--\r\n"
)


@pytest.fixture
async def pool() -> ParsePool:
    pool = ParsePool("test", workers=2, budget=2.0)
    await pool.start()
    yield pool  # type: ignore[misc]
    await pool.close()


async def test_jobs_run_in_other_processes(pool: ParsePool) -> None:
    pids = {await pool.run(os.getpid) for _ in range(4)}
    assert os.getpid() not in pids
    assert len(pids) <= 2


async def test_a_bounce_is_read_in_a_worker_with_its_delivery_report(pool: ParsePool) -> None:
    read = await MailReader(pool).arrival(BOUNCE, "")
    assert read.classification.kind is Kind.BOUNCE
    assert read.report is not None
    assert read.report.original_message_id == "<relayed-1@gateway.test>"
    assert [r.status for r in read.report.recipients] == ["5.1.1"]
    assert read.parsed.subject == "Undelivered Mail Returned to Sender"


async def test_a_job_over_its_budget_costs_its_worker_and_the_pool_goes_on(pool: ParsePool) -> None:
    before = {await pool.run(os.getpid), await pool.run(os.getpid)}
    with pytest.raises(NotRead, match=r"not read within 2\.0 s"):
        await pool.run(time.sleep, 3600)
    assert pool.replaced == 1
    # The stuck worker is gone, a new one takes its place (once started): two workers answer again.
    after: set[int] = set()
    deadline = time.monotonic() + 30
    while len(after) < 2 and time.monotonic() < deadline:
        after.add(await pool.run(os.getpid))
    assert len(after) == 2
    assert len(after - before) == 1
    (stuck,) = before - after
    with pytest.raises(ProcessLookupError):
        os.kill(stuck, 0)  # killed, not left running in the background


async def test_a_worker_that_dies_is_replaced(pool: ParsePool) -> None:
    first = await pool.run(os.getpid)
    os.kill(first, signal.SIGKILL)
    outcomes = []
    for _ in range(4):
        try:
            outcomes.append(await pool.run(os.getpid))
        except NotRead as exc:
            outcomes.append(str(exc))
    assert pool.replaced == 1
    assert outcomes.count("the parse worker died") <= 1
    assert first not in outcomes


async def test_waiting_for_a_worker_counts_against_the_budget() -> None:
    pool = ParsePool("test", workers=1, budget=1.0)
    await pool.start()
    try:
        busy = asyncio.ensure_future(pool.run(time.sleep, 3600))
        await asyncio.sleep(0)  # the first job holds the only worker
        with pytest.raises(NotRead, match=r"no test parse worker free within 1\.0 s"):
            await pool.run(os.getpid)
        with pytest.raises(NotRead):
            await busy
        assert isinstance(await pool.run(os.getpid), int)
    finally:
        await pool.close()


async def test_a_job_that_fails_gives_its_worker_back(pool: ParsePool) -> None:
    with pytest.raises(NotRead, match="the parse failed"):
        await pool.run(int, "not a number")
    assert pool.replaced == 0
    assert pool._idle.qsize() == 2  # both workers are free again


async def test_a_large_mail_reaches_its_worker_as_a_private_file_that_is_gone_afterwards(
    pool: ParsePool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The spill directory is the test's own, so what is left behind is what the reader left.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    filler = b"".join(b"line %d of a long bounce\r\n" % n for n in range(SPILL_OVER // 20))
    large = BOUNCE.replace(b"It failed.\r\n", b"It failed.\r\n" + filler)
    assert len(large) > SPILL_OVER
    seen: list[tuple[str, int]] = []
    spill = parsepool._spill

    def watched(raw: bytes) -> str:
        path = spill(raw)
        seen.append((path, os.stat(path).st_mode & 0o777))
        return path

    monkeypatch.setattr(parsepool, "_spill", watched)
    read = await MailReader(pool).arrival(large, "")
    assert read.classification.kind is Kind.BOUNCE
    assert read.report is not None
    assert read.report.original_message_id == "<relayed-1@gateway.test>"
    ((path, mode),) = seen
    assert Path(path).parent == tmp_path
    assert mode == 0o600
    assert os.listdir(tmp_path) == []
    # A small mail goes by pickle, as before: no file.
    await MailReader(pool).arrival(BOUNCE, "")
    assert len(seen) == 1
