"""Every sample of the shared mail corpora handed to the real gateway by SMTP, on SQLite and PostgreSQL.

Each one is either accepted and stored exactly as the client sent it (and fanned out), or refused with a
clear permanent answer (a line or header section over the limits); never a 451, a dropped connection
or a listener that stops answering.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.db.engine import create_engine, session_factory
from gateway.db.models import MessageRow
from tests import corpora
from tests.corpora import ROOT, SAMPLES
from tests.e2e.conftest import LOGIN, PASSWORD, RunningGateway, prepare
from tests.seed import ADDRESS

# smtplib sends bytes as they are (dot-stuffed, with a final CRLF); the gateway reads a bare LF as a line
# end and stores it as CRLF (Postfix's "normalize"), so this is what it must have stored.
BARE_LF = re.compile(rb"(?<!\r)\n")
# Permanent refusals that are right for some samples: over-long lines, over-large header sections.
CLEAR_REFUSALS = {(500, b"5.5.2"), (552, b"5.3.4"), (554, b"5.4.6")}


# A back office may send only from its own addresses (DESIGN.md §8): each sample's From fields give way to
# the back office's, in place of the first one (or at the end of the header section when it has none).
FROM_FIELD = re.compile(rb"^from[ \t]*:.*(?:\r?\n[ \t].*)*\r?\n", re.IGNORECASE | re.MULTILINE)
HEADER_END = re.compile(rb"\r?\n\r?\n")


def from_the_back_office(sample: bytes) -> bytes:
    end = HEADER_END.search(sample)
    cut = end.start() + (2 if sample[end.start() : end.start() + 1] == b"\r" else 1) if end else len(sample)
    head, body = sample[:cut], sample[cut:]
    own = b"From: " + LOGIN.encode() + (b"\r\n" if b"\r\n" in head else b"\n")
    fields = list(FROM_FIELD.finditer(head))
    if not fields:
        return head + (b"" if head.endswith(b"\n") else own[-1:]) + own + body
    kept = FROM_FIELD.sub(b"", head)
    start = fields[0].start()
    removed_before = sum(len(f.group()) for f in fields if f.start() < start)
    return kept[: start - removed_before] + own + kept[start - removed_before :] + body


def as_stored(sample: bytes) -> bytes:
    sent = sample if sample.endswith(b"\r\n") else sample + b"\r\n"
    return BARE_LF.sub(b"\r\n", sent)


@pytest.fixture
def corpus_gateway(tmp_path: Path, database_url: str) -> Iterator[RunningGateway]:
    corpora.folder()  # no gateway is started for a test that is skipped or fails for want of the corpora
    gateway = prepare(tmp_path, database_url, max_message_size="8MiB")
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def stored_raw(database_url: str) -> dict[str, bytes]:
    async def load() -> dict[str, bytes]:
        engine = create_engine(database_url)
        try:
            async with session_factory(engine)() as session:
                rows = await session.execute(select(MessageRow.gateway_id, MessageRow.raw))
                return {str(gid): bytes(raw) for gid, raw in rows}
        finally:
            await engine.dispose()

    return asyncio.run(load())


def test_every_corpus_sample_through_the_submission_listener(
    corpus_gateway: RunningGateway, database_url: str
) -> None:
    assert ROOT is not None
    accepted: dict[str, bytes] = {}
    refused: dict[str, tuple[int, bytes]] = {}
    with smtplib.SMTP("127.0.0.1", corpus_gateway.port, timeout=60) as client:
        client.login(LOGIN, PASSWORD)
        for relative in SAMPLES:
            sample = from_the_back_office((ROOT / relative).read_bytes())
            try:
                client.sendmail(LOGIN, [ADDRESS["SB-B1"]], sample)
            except smtplib.SMTPDataError as exc:
                refused[relative] = (exc.smtp_code, exc.smtp_error[:6].strip())
                continue
            reply = client.noop()  # the session is still in order after each message
            assert reply[0] == 250, (relative, reply)
            accepted[relative] = as_stored(sample)
    unclear = {k: v for k, v in refused.items() if (v[0], v[1][:5]) not in CLEAR_REFUSALS}
    assert not unclear, f"refused without a clear permanent answer: {unclear}"
    assert len(accepted) >= len(SAMPLES) * 0.95, f"nearly every sample is accepted; refused: {refused}"
    stored = set(stored_raw(database_url).values())
    missing = [name for name, data in accepted.items() if data not in stored]
    assert not missing, f"not stored byte for byte: {missing}"
    # The samples' own To and Cc never name SB-B1, so SB-B1 gets each blind (Bcc): a copy of its own,
    # and nobody else one because of it (docs/inbound.md, "Who takes part").
    copies = corpus_gateway.wait_for_copies("", len(accepted), timeout=120)
    assert sum(len(found) for found in copies.values()) == len(accepted)
    assert set(copies) == {ADDRESS["SB-B1"]}
