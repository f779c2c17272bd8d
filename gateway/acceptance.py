"""Durable acceptance: stores each submitted message, its Vorgang, participants and pending copies at once.

Submissions from all SMTP sessions meet in one queue and are stored in shared transactions (group
commit): while one transaction commits, the next batch gathers, so a busy gateway pays for one commit
per batch rather than per message, and an idle one adds no delay. Each message gets a savepoint of its
own, so one bad message cannot take its batch-mates down. A session hears ``250`` only after the commit
that holds its message; if that commit fails, every message in the batch gets ``451`` and nothing of
them is stored.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db import intake
from gateway.db.accounts import Account
from gateway.db.directory import Snapshot, snapshot
from gateway.db.messages import new_gateway_id
from gateway.db.models import PortfolioRow
from gateway.domain.audience import AsParticipant, Audience, SharedThrough, audience
from gateway.domain.model import Participant, ParticipantRole
from gateway.domain.threading import choose_vorgang, vorgang_hints
from gateway.errors import OperationalError
from gateway.parsing import ParsedMessage

log = logging.getLogger("gateway.acceptance")

MAX_BATCH = 200


class NotStored(OperationalError):
    """The message could not be stored; the client should try again later (451 4.3.0)."""


@dataclass(frozen=True, slots=True)
class Submission:
    """A message as the submission listener received it from an authenticated back office."""

    account: Account
    envelope_sender: str
    recipients: tuple[str, ...]  # member addresses, normalised, checked at RCPT
    raw: bytes
    parsed: ParsedMessage
    listener: str
    peer: str


@dataclass(frozen=True, slots=True)
class Accepted:
    gateway_id: str
    vorgang: str
    found: str
    audience: int
    duplicate: bool


class Acceptance:
    """The accept stage; ``run()`` is its worker task, ``submit()`` what each SMTP session awaits."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        hostname: str,
        on_accepted: Callable[[], None] = lambda: None,
    ) -> None:
        self.sessions = sessions
        self.hostname = hostname
        self.on_accepted = on_accepted
        self._queue: asyncio.Queue[tuple[Submission, asyncio.Future[Accepted]]] = asyncio.Queue()

    async def submit(self, submission: Submission) -> Accepted:
        """Store ``submission``; returns once it is committed. Raises NotStored when it could not be.

        The wait is shielded: a client that disconnects mid-way cancels its wait, not the commit, so
        a message is never half stored and a re-send after the lost reply is recognised as such.
        """
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((submission, future))
        return await asyncio.shield(future)

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._store(batch)

    async def drain(self) -> None:
        """Store what is queued (on shutdown, after the listeners stopped taking mail)."""
        while not self._queue.empty():
            batch = [self._queue.get_nowait() for _ in range(min(MAX_BATCH, self._queue.qsize()))]
            await self._store(batch)

    async def _store(self, batch: list[tuple[Submission, asyncio.Future[Accepted]]]) -> None:
        results: list[tuple[asyncio.Future[Accepted], Accepted | Exception]] = []
        try:
            async with self.sessions() as session, session.begin():
                snapshots: dict[int, Snapshot] = {}
                for submission, future in batch:
                    results.append((future, await self._accept_isolated(session, submission, snapshots)))
        except Exception as exc:
            # Whatever went wrong, no session may wait forever: all of the batch gets 451 and the
            # transaction is rolled back, so nothing of it is stored.
            if isinstance(exc, SQLAlchemyError | OSError):
                log.error("could not store %d message(s): %s", len(batch), exc)
            else:
                log.exception("could not store %d message(s)", len(batch))
            for _, future in batch:
                if not future.done():
                    future.set_exception(NotStored(str(exc)))
            return
        for future, result in results:
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
        self.on_accepted()

    async def _accept_isolated(
        self, session: AsyncSession, submission: Submission, snapshots: dict[int, Snapshot]
    ) -> Accepted | Exception:
        for attempt in (1, 2):
            try:
                async with session.begin_nested():
                    return await self._accept(session, submission, snapshots)
            except IntegrityError as exc:
                # Another session stored the same re-sent message at the same moment: the second try
                # finds it. Anything else is reported for this message only.
                if attempt == 2:
                    log.error("message from %s not stored: %s", submission.account.login, exc)
                    return NotStored("conflict while storing")
            except SQLAlchemyError as exc:
                log.error("message from %s not stored: %s", submission.account.login, exc)
                return NotStored(str(exc))
        raise AssertionError("unreachable")

    async def _accept(self, session: AsyncSession, s: Submission, snapshots: dict[int, Snapshot]) -> Accepted:
        account, parsed = s.account, s.parsed
        pid = account.portfolio_id
        sha256 = hashlib.sha256(s.raw).hexdigest()
        if parsed.message_id:
            resend = await intake.find_resend(session, account.backoffice_id, parsed.message_id, sha256)
            if resend is not None:
                log.info("re-sent message %s recognised as %s", parsed.message_id, resend.gateway_id)
                return Accepted(resend.gateway_id, resend.vorgang, "re-send", 0, duplicate=True)

        now = dt.datetime.now(dt.UTC)
        hints = vorgang_hints(
            explicit_header=parsed.vorgang_header,
            in_reply_to=parsed.in_reply_to,
            references=parsed.references,
            subject=parsed.subject,
        )
        references = {r for r in (hints.explicit, *hints.subject_references) if r}
        found, vorgang_id = choose_vorgang(
            hints,
            known_references=await intake.vorgaenge_by_reference(session, pid, references),
            known_message_ids=await intake.vorgaenge_by_message_id(session, pid, hints.message_ids),
        )
        if vorgang_id is None:
            vorgang_id, reference = await intake.new_vorgang(session, pid, parsed.subject, now)
        else:
            reference = await intake.vorgang_reference(session, vorgang_id)

        if pid not in snapshots:
            portfolio = await session.get(PortfolioRow, pid)
            assert portfolio is not None, "an account's portfolio exists (foreign key)"
            snapshots[pid] = await snapshot(session, portfolio)
        directory = snapshots[pid]
        members = {m.address: m.id for m in directory.members.values()}
        cc = set(parsed.cc)
        participants = [
            Participant(members[a], ParticipantRole.CC if a in cc else ParticipantRole.TO)
            for a in dict.fromkeys(s.recipients)
            if a in members
        ]
        seen = audience(pid, participants, directory.releases)

        gateway_id = new_gateway_id()
        message_id = parsed.message_id or f"<{gateway_id}@{self.hostname}>"
        message_pk = await intake.insert_message(
            session,
            {
                "gateway_id": gateway_id,
                "portfolio_id": pid,
                "vorgang_id": vorgang_id,
                "direction": "inbound",
                "backoffice_id": account.backoffice_id,
                "raw": s.raw,
                "size": len(s.raw),
                "sha256": sha256,
                "message_id": message_id,
                "message_id_assigned": parsed.message_id is None,
                "in_reply_to": " ".join(parsed.in_reply_to) or None,
                "references": " ".join(parsed.references) or None,
                "subject": parsed.subject,
                "from_address": parsed.from_addresses[0] if parsed.from_addresses else None,
                "envelope_sender": s.envelope_sender,
                "received_at": now,
            },
        )
        await intake.insert_participants(session, message_pk, pid, participants)
        await intake.insert_copies(session, _copy_rows(message_pk, pid, seen, now))
        await intake.insert_event(
            session,
            {
                "at": now,
                "portfolio_id": pid,
                "actor": f"backoffice:{account.login}",
                "kind": "message.accepted",
                "vorgang_id": vorgang_id,
                "message_id": message_pk,
                "detail": {
                    "gateway_id": gateway_id,
                    "vorgang": reference,
                    "found": found.value,
                    "recipients": list(s.recipients),
                    "audience": sorted(directory.members[m].address for m in seen.members),
                    "listener": s.listener,
                    "peer": s.peer,
                    "message_id": message_id,
                    "message_id_assigned": parsed.message_id is None,
                    "defects": list(parsed.defects),
                },
            },
        )
        return Accepted(gateway_id, reference, found.value, len(seen.members), duplicate=False)


def _copy_rows(
    message_pk: int, portfolio_id: int, seen: Audience, now: dt.datetime
) -> list[dict[str, object]]:
    rows = []
    for member_id in seen.ordered():
        reasons = seen.via(member_id)
        shared = None
        if not any(isinstance(r, AsParticipant) for r in reasons):
            shared = next(r.release_id for r in reasons if isinstance(r, SharedThrough))
        rows.append(
            {
                "copy_id": new_copy_id(),
                "message_id": message_pk,
                "member_id": member_id,
                "portfolio_id": portfolio_id,
                "shared_via_release_id": shared,
                "state": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
            }
        )
    return rows


def new_copy_id() -> str:
    """The id a copy carries in its X-Gateway-Copy-Id header and Maildir file name."""
    return "c" + secrets.token_hex(10)
