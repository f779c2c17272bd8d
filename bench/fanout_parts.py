"""CPU of the per-message parts of an IMAP fan-out, measured in this process, for any tree of the code.

`bench/fanout_imap.py` measures the whole gateway, but on a shared machine its CPU per message moves with
the load by more than a tenth between rounds. These are the parts issue 17 item 9 changed, each timed
alone (the best of five passes over 1,000 messages, `time.process_time`), so that two trees can be
compared within a minute:

  * render: five copies of one back-office message as the fan-out renders them (a template and the
    message's header facts shared by its copies, each copy with its Received line, reply token,
    From/Reply-To and References);
  * SMTP paths: the MAIL and RCPT arguments of one submission read as the submission listener reads them;
  * copies stored: the copies of 1,000 messages inserted with their ids read back, in batches of ten
    messages (SQLite in memory);
  * FETCH read: one UID FETCH answer of 200 copies' copy-id headers read by the IMAP client (the flag
    watcher's first look at a mailbox), per 200 copies.

    .venv/bin/python bench/fanout_parts.py                          # this tree
    git archive 9eaa5f6 | tar -x -C /tmp/base
    PYTHONPATH=/tmp/base .venv/bin/python bench/fanout_parts.py     # another tree, same venv
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
from collections.abc import Callable
from typing import Any

import aioimaplib
import sqlalchemy as sa

import gateway
from gateway.db import models
from gateway.db.copies import Lease, NewCopy, insert_copies
from gateway.db.queue import CopyJob
from gateway.domain.parsing import ParsedMessage, parse_message
from gateway.domain.tokens import TokenKeys
from gateway.domain.trace import Arrival, Trace
from gateway.stages import fanout, ingress

MESSAGES = 1000
TEAM = 5
RAW = (
    b"From: AMS Makler <ams@makler-muster.example>\r\nTo: m1@team1.example\r\nSubject: Schaden 4711\r\n"
    b"Message-ID: <x@ams>\r\nDate: Mon, 7 Dec 2026 04:00:00 +0000\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + b"Text text text text\r\n" * 45
)


def best(run: Callable[[], Any]) -> float:
    """The least CPU seconds of five runs."""
    times = []
    for _ in range(5):
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return min(times)


def copy_jobs(number: int) -> list[CopyJob]:
    """A message's five copies as acceptance hands them to the fan-out (with its header facts where
    this tree's CopyJob carries them)."""
    trace = Trace(
        Arrival("client.example", "127.0.0.1", "ESMTPA"),
        "gw.example",
        f"gw-{number}",
        dt.datetime.now(dt.UTC),
    )
    parsed = parse_message(RAW)
    jobs = []
    for member in range(TEAM):
        fields: dict[str, Any] = {
            "id": number * TEAM + member,
            "copy_id": secrets.token_hex(10),
            "attempts": 0,
            "portfolio_id": 1,
            "portfolio": "makler-muster",
            "member_id": member,
            "address": f"m{member}@team1.example",
            "message_pk": number,
            "gateway_id": f"gw-{number}",
            "message_id": "<x@ams>",
            "message_id_assigned": False,
            "vorgang_id": number,
            "vorgang": f"VG-2026-{number:06d}",
            "shared_via": "Team 1",
            "seen": False,
            "answered": False,
            "raw": RAW,
            "first_attempt": True,
            "trace": trace,
        }
        if "parsed" in CopyJob.__dataclass_fields__:
            fields["parsed"] = parsed
        jobs.append(CopyJob(**fields))
    return jobs


def render() -> float:
    reply_path = fanout.ReplyPath(TokenKeys((secrets.token_bytes(32),)), "reply.gw.example")
    messages = [copy_jobs(number) for number in range(MESSAGES)]

    def run() -> None:
        for jobs in messages:
            read: dict[int, ParsedMessage] = {}
            templates: dict[tuple[object, ...], fanout.CopyTemplate] = {}
            for job in jobs:
                if job.message_pk not in read:
                    # What FanOut._deliver does in either tree: the handed facts, else a parse.
                    read[job.message_pk] = getattr(job, "parsed", None) or parse_message(job.raw)
                fanout.copy_bytes(
                    job,
                    vorgang_header="X-Gateway-Vorgang",
                    tag_subject=True,
                    reply_path=reply_path,
                    parsed=read[job.message_pk],
                    templates=templates,
                )

    return best(run) / MESSAGES


def smtp_paths() -> float:
    session = ingress.GatewaySMTP.__new__(ingress.GatewaySMTP)
    session.local_part_limit = 0

    def run() -> None:
        for number in range(MESSAGES):
            session._getaddr("<ams@makler-muster.example> SIZE=1500")
            session._getaddr(f"<m{number % 20}@team{number % 4}.example>")

    return best(run) / MESSAGES


def copies_stored() -> float:
    engine = sa.create_engine("sqlite://")
    models.Base.metadata.create_all(engine)
    now = dt.datetime.now(dt.UTC)
    batches = 0

    def run() -> None:
        nonlocal batches
        with engine.connect() as connection:
            connection.execute(sa.text("PRAGMA foreign_keys=OFF"))  # no messages or members here
            connection.commit()
            for _ in range(MESSAGES // 10):
                batches += 1
                copies = [
                    NewCopy(batches * 100 + index // TEAM, 1, index % TEAM + 1, copy_id=secrets.token_hex(10))
                    for index in range(10 * TEAM)
                ]
                with connection.begin():
                    insert_copies(connection, copies, now, Lease("n1", now))

    return best(run) / MESSAGES


def fetch_read(copies: int = 200) -> float:
    try:
        from gateway.mailbox.imap_connection import _FetchReading as command
    except ImportError:  # a tree from before it: aioimaplib's own
        command = aioimaplib.FetchCommand
    answer = b"".join(
        f"* {n} FETCH (UID {n} FLAGS () BODY[HEADER.FIELDS (X-Gateway-Copy-Id)] {{49}}\r\n".encode()
        + b"X-Gateway-Copy-Id: c0123456789abcdef012345678\r\n\r\n)\r\n"
        for n in range(1, copies + 1)
    )
    answer += b"A001 OK Fetch completed.\r\n"

    async def measure() -> float:
        loop = asyncio.get_running_loop()

        def run() -> None:
            protocol = aioimaplib.IMAP4ClientProtocol(loop)
            protocol.state = "SELECTED"
            protocol.pending_async_commands["FETCH"] = command(
                "A001", "1:*", "(UID)", prefix="UID", loop=loop
            )
            for start in range(0, len(answer), 4096):  # as it comes off the socket
                protocol.data_received(answer[start : start + 4096])

        return best(run)

    return asyncio.run(measure())


def main() -> None:
    print(f"gateway from {gateway.__file__}")
    print(f"render {TEAM} copies:     {render() * 1000:6.3f} ms per message")
    print(f"MAIL and RCPT paths: {smtp_paths() * 1000:6.3f} ms per message")
    print(f"copies stored:       {copies_stored() * 1000:6.3f} ms per message ({TEAM} copies)")
    print(f"FETCH read:          {fetch_read() * 1000:6.3f} ms per 200-copy answer")


if __name__ == "__main__":
    main()
