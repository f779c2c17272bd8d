"""Members' mail stored: an answer or a new Vorgang with its copies, relay and ``\\Answered`` flags, an
auto-reply, bounce or loop recorded, or a refusal recorded; one transaction each.

The reply stage (``gateway.stages.reply``) runs these on the writer thread once it has checked the
reply code and the sender. Each transaction holds the portfolio's directory from its first read, so the
audience it checks a member against is the one it stores the mail against (DESIGN.md §3, §5).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from gateway.db import collisions
from gateway.db.acceptance import hold_directory, member_addresses, new_vorgaenge, sharing_releases
from gateway.db.copies import Lease, copies_for, handed_job, insert_copies
from gateway.db.events import Event, EventKind, append_events
from gateway.db.messages import NewMessage, insert_message, new_gateway_id
from gateway.db.models import MESSAGES, Direction, HeldState, MessageKind, MessageRow, RelayRow
from gateway.db.queue import CopyJob
from gateway.db.relayqueue import NewRelay, queue_relay
from gateway.db.replies import (
    Answered,
    Author,
    Portfolio,
    ThreadTarget,
    answered_of_message,
    audience_now,
    mark_answered,
    member_by_address,
    member_mail_by_digest,
    members_by_address,
    original_participant,
    participants,
    portfolio_target,
    thread_target,
)
from gateway.domain.answers import DeliveryReport
from gateway.domain.audience import AsParticipant, Audience, audience
from gateway.domain.collision import Decision, Verdict, decide
from gateway.domain.model import Participant, ParticipantRole
from gateway.domain.outbound import RelayHeaders, recipients_kept, render_relay, threading_ids
from gateway.domain.parsing import ParsedMessage
from gateway.domain.refusals import Why, refusal
from gateway.domain.senders import InvalidVersion, relay_sender
from gateway.domain.trace import Arrival, Trace


@dataclass(frozen=True, slots=True)
class MemberMail:
    """A mail from a member's mail server, as the reply path stores it (``gateway.stages.reply.Incoming``)."""

    raw: bytes
    parsed: ParsedMessage
    envelope_sender: str
    recipients: tuple[str, ...]
    peer: str
    arrival: Arrival | None = None  # for the Received line (gateway.domain.trace)

    @property
    def from_address(self) -> str:
        return self.parsed.from_addresses[0] if self.parsed.from_addresses else ""


@dataclass(frozen=True, slots=True)
class ReplyStorage:
    """What storing a member's mail needs of the configuration."""

    reply_domain: str
    hostname: str
    node: str
    relay_lifetime: float
    bounce_address: str  # the envelope sender of relayed mail: bounces come back to it


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str


@dataclass(frozen=True, slots=True)
class Resent:
    """The mail is stored already (same Message-ID and bytes): what it was stored as."""

    gateway_id: str
    vorgang: str
    kind: str


@dataclass(frozen=True, slots=True)
class Recorded:
    """An auto-reply, bounce or loop recorded in the Vorgang."""

    vorgang: str
    kind: str
    reason: str


@dataclass(frozen=True, slots=True)
class Stored:
    direction: Direction
    gateway_id: str
    vorgang_id: int
    vorgang: str
    author: str
    copies: int
    relayed: bool
    jobs: list[CopyJob]
    detail: dict[str, Any]


def store_reply(
    connection: Connection,
    mail: MemberMail,
    answered: Answered,
    storage: ReplyStorage,
    lease: Lease | None,
) -> Stored | Refusal | Resent | Held:
    """A member's answer to the message ``answered``: stored, copied, relayed and flagged ``\\Answered``,
    if its author may answer it now."""
    pid = answered.portfolio_id
    hold_directory(connection, pid)
    resent = _resent(connection, pid, mail, mail.raw)
    if resent is not None:
        return resent
    entitled = _author_of_answer(connection, mail, answered, storage)
    if isinstance(entitled, Refusal):
        return entitled
    author, seen_by = entitled
    now = dt.datetime.now(dt.UTC)
    portfolio = Portfolio(pid, answered.portfolio)
    inserted = _insert_member_mail(connection, mail, storage, now, portfolio, author, answered)
    # The collision guard (docs/collisions.md): the facts as stored, decided in gateway.domain.collision.
    names = (*mail.parsed.in_reply_to, *mail.parsed.references)
    reply, earlier = collisions.collision_facts(
        connection, pid, answered.message_pk, author.id, inserted.message_pk, now, names
    )
    decision = decide(reply, earlier, collisions.guarded_releases(connection, pid, author.id))
    if decision.verdict is Verdict.HOLD:
        return _hold(connection, mail, answered, author, inserted, decision, now)
    stored = _deliver(
        connection,
        inserted,
        mail.parsed.to,
        mail.parsed.cc,
        storage,
        lease,
        now,
        portfolio,
        author,
        mail.peer,
    )
    # A blind (Bcc) recipient's answer marks only their own copy: \Answered on the others' would tell
    # them somebody they cannot see got the message (DESIGN.md §3).
    blind = all(isinstance(r, AsParticipant) and not r.role.visible for r in seen_by.via(author.id))
    flagged = mark_answered(
        connection, pid, answered.message_pk, now, only_member=author.id if blind else None
    )
    crossed: dict[str, Any] = {}
    if decision.verdict is Verdict.NOTIFY:
        # Relayed at once; the author is told afterwards, by the held-replies worker's notice.
        held_id = _insert_held(
            connection, mail, answered, author, inserted, decision, HeldState.NOTIFIED, now
        )
        crossed = {"crossed": _crossing(decision) | {"held_id": held_id, "guard": "notify"}}
    _record_stored(
        connection,
        now,
        stored,
        EventKind.REPLY_ACCEPTED,
        pid,
        author,
        answers_copy=answered.copy_id,
        token_member_id=answered.member_id,
        answered_copies_flagged=flagged,
        **crossed,
    )
    return stored


@dataclass(frozen=True, slots=True)
class Held:
    """A reply the collision guard held: stored, not copied, not relayed (docs/collisions.md)."""

    gateway_id: str
    vorgang: str
    author: str
    held_id: str
    jobs: tuple[CopyJob, ...] = ()


def _crossing(decision: Decision) -> dict[str, Any]:
    assert decision.collides_with is not None
    assert decision.release is not None
    return {
        "collides_with": decision.collides_with.message_pk,
        "collides_with_accepted_at": decision.collides_with.accepted_at.isoformat(),
        "release": decision.release.name,
        "why": decision.why,
    }


def _insert_held(
    connection: Connection,
    mail: MemberMail,
    answered: Answered,
    author: Author,
    inserted: _Inserted,
    decision: Decision,
    state: HeldState,
    now: dt.datetime,
) -> str:
    """The guard's row for a reply it held (``HELD``) or relayed with a notice owed (``NOTIFIED``)."""
    return collisions.insert_held(
        connection,
        portfolio_id=answered.portfolio_id,
        message_pk=inserted.message_pk,
        member_id=author.id,
        answered_pk=answered.message_pk,
        decision=decision,
        state=state,
        now=now,
        to=mail.parsed.to,
        cc=mail.parsed.cc,
    )


def _hold(
    connection: Connection,
    mail: MemberMail,
    answered: Answered,
    author: Author,
    inserted: _Inserted,
    decision: Decision,
    now: dt.datetime,
) -> Held:
    """Keep the reply without copies, relay or ``\\Answered``: it may yet be withdrawn, and co-members
    must not see an answer the back office never gets."""
    pid = answered.portfolio_id
    held_id = _insert_held(connection, mail, answered, author, inserted, decision, HeldState.HELD, now)
    assert decision.release is not None
    event = Event(
        EventKind.REPLY_HELD,
        f"member:{author.address}",
        now,
        portfolio_id=pid,
        member_id=author.id,
        vorgang_id=answered.vorgang_id,
        message_id=inserted.message_pk,
        detail={
            "gateway_id": inserted.message.gateway_id,
            "vorgang": answered.vorgang,
            "held_id": held_id,
            "answers_copy": answered.copy_id,
            "hold_timeout": decision.release.hold_timeout,
            "after_hold_timeout": decision.release.after_timeout.value,
            "peer": mail.peer,
            **_crossing(decision),
        },
    )
    append_events(connection, [event])
    return Held(inserted.message.gateway_id, answered.vorgang, author.address, held_id)


@dataclass(frozen=True, slots=True)
class Decided:
    """What became of a held reply an answer to its notice, an admin or the timeout decided on."""

    held_id: str
    state: HeldState  # what it is now
    done_now: bool  # this call moved it (False: it was decided before, by ``decided_by``)
    decided_by: str | None
    vorgang: str
    relayed: bool = False
    copies: int = 0
    why: str = ""


def decide_held(
    connection: Connection,
    held_id: str,
    wanted: HeldState,
    actor: str,
    storage: ReplyStorage,
    *,
    portfolio_ids: Sequence[int] | None = None,
    reason: str = "",
) -> Decided | None:
    """Release or withdraw the held reply ``held_id``, exactly once; None when there is no such reply
    (in ``portfolio_ids``, when given: an admin's scope).

    Released: copied to its audience and queued for the back office under the directory as it is now,
    and every copy of the answered message gets ``\\Answered``, as if it had just been accepted; if its
    author may no longer answer that message (removed from the release meanwhile), it is withdrawn.
    """
    found = collisions.held_reply(connection, held_id)
    if found is None or (portfolio_ids is not None and found.portfolio_id not in portfolio_ids):
        return None
    pid = found.portfolio_id
    hold_directory(connection, pid)
    now = dt.datetime.now(dt.UTC)
    why = reason
    if wanted is HeldState.RELEASED and found.member_id not in audience_now(
        connection, pid, found.answered_pk
    ):
        wanted = HeldState.WITHDRAWN
        why = "its author may no longer answer the message (the directory changed while it was held)"
    if not collisions.take_decision(connection, held_id, wanted, actor, now):
        again = collisions.held_reply(connection, held_id)
        assert again is not None
        return Decided(held_id, again.state, False, again.decided_by, found.vorgang)
    stored: Stored | None = None
    if wanted is HeldState.RELEASED:
        portfolio = Portfolio(pid, found.portfolio)
        author = Author(found.member_id, found.member, found.member_name)
        inserted = _inserted_again(connection, found)
        stored = _deliver(
            connection, inserted, found.to, found.cc, storage, None, now, portfolio, author, "held"
        )
        mark_answered(connection, pid, found.answered_pk, now)
    kind = EventKind.REPLY_RELEASED if wanted is HeldState.RELEASED else EventKind.REPLY_WITHDRAWN
    detail: dict[str, Any] = {"held_id": held_id, "vorgang": found.vorgang, "reason": why}
    if stored is not None:
        detail |= {k: v for k, v in stored.detail.items() if k != "message_pk"}
    append_events(
        connection,
        [
            Event(
                kind,
                actor,
                now,
                portfolio_id=pid,
                member_id=found.member_id,
                vorgang_id=found.vorgang_id,
                message_id=found.message_pk,
                detail=detail,
            )
        ],
    )
    return Decided(
        held_id,
        wanted,
        True,
        actor,
        found.vorgang,
        relayed=stored.relayed if stored else False,
        copies=stored.copies if stored else 0,
        why=why,
    )


def _inserted_again(connection: Connection, held: collisions.HeldReply) -> _Inserted:
    """The stored message of a held reply, as ``_deliver`` takes it."""
    row = connection.execute(select(MESSAGES).where(MESSAGES.c.id == held.message_pk)).one()
    answered = answered_of_message(connection, held.answered_pk, held.member_id)
    target = thread_target(connection, answered) if answered is not None else None
    message = NewMessage(
        gateway_id=row.gateway_id,
        portfolio_id=row.portfolio_id,
        vorgang_id=row.vorgang_id,
        direction=Direction(row.direction),
        backoffice_id=row.backoffice_id,
        raw=bytes(row.raw),
        sha256=row.sha256,
        message_id=row.message_id or f"<{row.gateway_id}@held>",
        message_id_assigned=row.message_id_assigned,
        in_reply_to=tuple((row.in_reply_to or "").split()),
        references=tuple((row.references or "").split()),
        subject=row.subject,
        from_address=row.from_address,
        envelope_sender=row.envelope_sender,
        received_at=row.received_at,
        sender_member_id=row.sender_member_id,
        answers_message_id=row.answers_message_id,
        trace=Trace.from_json(row.trace),
    )
    taking_part = participants(connection, held.portfolio_id, held.message_pk)
    return _Inserted(message, held.message_pk, (held.vorgang_id, held.vorgang), target, taking_part)


def open_vorgang(
    connection: Connection,
    mail: MemberMail,
    portfolio: Portfolio,
    storage: ReplyStorage,
    lease: Lease | None,
) -> Stored | Refusal | Resent:
    """A member's mail to the portfolio's intake address: a new Vorgang, if a member wrote it."""
    hold_directory(connection, portfolio.id)
    resent = _resent(connection, portfolio.id, mail, mail.raw)
    if resent is not None:
        return resent
    from_address = mail.from_address
    author = member_by_address(connection, portfolio.id, from_address) if from_address else None
    if author is None:
        refused = refusal(from_address, Why.NOT_A_MEMBER, opening=True)
        record_refusal(connection, mail, refused.reason, storage.node, portfolio=portfolio)
        return Refusal(refused.answer)
    now = dt.datetime.now(dt.UTC)
    stored = _store_member_mail(connection, mail, storage, lease, now, portfolio, author, None)
    _record_stored(connection, now, stored, EventKind.INTAKE_ACCEPTED, portfolio.id, author)
    return stored


def store_not_an_answer(
    connection: Connection,
    mail: MemberMail,
    answered: Answered,
    kind: MessageKind,
    reason: str,
    recorded: bytes,
    storage: ReplyStorage,
) -> Refusal | Resent | Recorded:
    """Record an auto-reply, bounce or loop in the Vorgang of the message it came back to.

    An auto-reply or a loop passes the audience check an answer passes; a bounce comes from a mail
    server and is matched by its token alone. Only ``recorded`` (the head of the mail) is kept: it is
    recorded for the admin, never copied or relayed.
    """
    pid = answered.portfolio_id
    hold_directory(connection, pid)
    resent = _resent(connection, pid, mail, recorded)
    if resent is not None:
        return resent
    if kind is not MessageKind.BOUNCE:
        entitled = _author_of_answer(connection, mail, answered, storage)
        if isinstance(entitled, Refusal):
            return entitled
    now = dt.datetime.now(dt.UTC)
    gateway_id = new_gateway_id()
    message_pk = insert_message(
        connection,
        NewMessage(
            gateway_id=gateway_id,
            portfolio_id=pid,
            vorgang_id=answered.vorgang_id,
            direction=Direction.REPLY,
            backoffice_id=answered.backoffice_id,
            raw=recorded,
            size=len(mail.raw),
            sha256=hashlib.sha256(recorded).hexdigest(),
            message_id=mail.parsed.message_id or f"<{gateway_id}@{storage.hostname}>",
            message_id_assigned=mail.parsed.message_id is None,
            in_reply_to=mail.parsed.in_reply_to,
            references=mail.parsed.references,
            subject=mail.parsed.subject,
            from_address=mail.from_address or None,
            envelope_sender=mail.envelope_sender,
            received_at=now,
            kind=kind,
            answers_message_id=answered.message_pk,
        ),
    )
    detail: dict[str, Any] = {
        "gateway_id": gateway_id,
        "kind": kind.value,
        "reason": reason,
        "peer": mail.peer,
    }
    if len(recorded) < len(mail.raw):
        detail |= {"size": len(mail.raw), "recorded_size": len(recorded)}
    event = Event(
        EventKind.REPLY_NOT_AN_ANSWER,
        f"gateway:{storage.node}",
        now,
        portfolio_id=pid,
        member_id=answered.member_id,
        vorgang_id=answered.vorgang_id,
        message_id=message_pk,
        detail=detail,
    )
    append_events(connection, [event])
    return Recorded(answered.vorgang, kind.value, reason)


def record_refusal(
    connection: Connection,
    mail: MemberMail,
    reason: str,
    node: str,
    answered: Answered | None = None,
    portfolio: Portfolio | None = None,
) -> None:
    """Record a refused mail: what it was, and why."""
    portfolio_id = answered.portfolio_id if answered else (portfolio.id if portfolio else None)
    event = Event(
        EventKind.REPLY_REFUSED,
        f"gateway:{node}",
        dt.datetime.now(dt.UTC),
        portfolio_id=portfolio_id,
        member_id=answered.member_id if answered else None,
        vorgang_id=answered.vorgang_id if answered else None,
        message_id=answered.message_pk if answered else None,
        detail={
            "reason": reason,
            "from": list(mail.parsed.from_addresses),
            "envelope_sender": mail.envelope_sender,
            "recipients": list(mail.recipients),
            "peer": mail.peer,
            "message_id": mail.parsed.message_id,
        },
    )
    append_events(connection, [event])


def record_bounce(
    connection: Connection, message_ids: Sequence[str], report: DeliveryReport | None, node: str
) -> str | None:
    """Match a bounce to the relayed mail it returns (by that mail's Message-ID) and record it; the
    Message-ID matched, or None."""
    if not message_ids:
        return None
    row = connection.execute(
        select(
            RelayRow.id,
            RelayRow.portfolio_id,
            RelayRow.member_id,
            RelayRow.relay_message_id,
            MessageRow.vorgang_id,
        )
        .join(MessageRow, MessageRow.id == RelayRow.message_id)
        .where(RelayRow.relay_message_id.in_(list(message_ids)))
    ).first()
    if row is None:
        return None
    relay_pk, portfolio_id, member_id, relay_message_id, vorgang_id = row
    recipients = [
        {
            "recipient": r.final_recipient,
            "action": r.action,
            "status": r.status,
            "diagnostic": r.diagnostic_code,
        }
        for r in (report.recipients if report is not None else ())
    ]
    event = Event(
        EventKind.RELAY_BOUNCED,
        f"gateway:{node}",
        dt.datetime.now(dt.UTC),
        portfolio_id=portfolio_id,
        member_id=member_id,
        vorgang_id=vorgang_id,
        detail={"relay": relay_pk, "relay_message_id": relay_message_id, "recipients": recipients},
    )
    append_events(connection, [event])
    return str(relay_message_id)


def _author_of_answer(
    connection: Connection, mail: MemberMail, answered: Answered, storage: ReplyStorage
) -> tuple[Author, Audience] | Refusal:
    """The member who may answer the message ``answered`` as the mail's From address, with the audience
    that entitles them, or the recorded refusal.

    The caller holds the portfolio's directory: the audience is the one the mail is stored against.
    """
    pid = answered.portfolio_id
    from_address = mail.from_address
    author = member_by_address(connection, pid, from_address) if from_address else None
    seen_by = audience_now(connection, pid, answered.message_pk)
    if author is None or author.id not in seen_by:
        refused = refusal(from_address, Why.NOT_A_MEMBER if author is None else Why.NOT_IN_AUDIENCE)
        record_refusal(connection, mail, refused.reason, storage.node, answered)
        return Refusal(refused.answer)
    return author, seen_by


def _resent(connection: Connection, portfolio_id: int, mail: MemberMail, stored_raw: bytes) -> Resent | None:
    """What the same mail (Message-ID and bytes) was stored as, if a member's server sends it again."""
    if mail.parsed.message_id is None:
        return None  # an id we assign is new each time: such a mail cannot be recognised
    found = member_mail_by_digest(
        connection, portfolio_id, mail.parsed.message_id, hashlib.sha256(stored_raw).hexdigest()
    )
    return None if found is None else Resent(*found)


def _record_stored(
    connection: Connection,
    now: dt.datetime,
    stored: Stored,
    kind: EventKind,
    portfolio_id: int,
    author: Author,
    **detail: Any,
) -> None:
    event = Event(
        kind,
        f"member:{author.address}",
        now,
        portfolio_id=portfolio_id,
        member_id=author.id,
        vorgang_id=stored.vorgang_id,
        message_id=stored.detail["message_pk"],
        detail={k: v for k, v in stored.detail.items() if k != "message_pk"} | detail,
    )
    append_events(connection, [event])


@dataclass(frozen=True, slots=True)
class _Inserted:
    """A member's mail stored as a message, before its copies and relay."""

    message: NewMessage
    message_pk: int
    vorgang: tuple[int, str]
    target: ThreadTarget | None
    taking_part: list[Participant]


def _store_member_mail(
    connection: Connection,
    mail: MemberMail,
    storage: ReplyStorage,
    lease: Lease | None,
    now: dt.datetime,
    portfolio: Portfolio,
    author: Author,
    answered: Answered | None,
) -> Stored:
    """Store a member's mail, copy it to its audience, and queue it for the back office: in the Vorgang
    of the message ``answered``, or in a new one (a mail to the portfolio's intake address).

    The caller holds the portfolio's directory (``hold_directory``) from its first read of it.
    """
    inserted = _insert_member_mail(connection, mail, storage, now, portfolio, author, answered)
    return _deliver(
        connection,
        inserted,
        mail.parsed.to,
        mail.parsed.cc,
        storage,
        lease,
        now,
        portfolio,
        author,
        mail.peer,
    )


def _insert_member_mail(
    connection: Connection,
    mail: MemberMail,
    storage: ReplyStorage,
    now: dt.datetime,
    portfolio: Portfolio,
    author: Author,
    answered: Answered | None,
) -> _Inserted:
    """The message row of a member's mail, with its participants; nothing copied or queued yet."""
    if answered is None:
        ((vorgang_id, reference),) = new_vorgaenge(connection, portfolio.id, [mail.parsed.subject], now)
        vorgang, answers, target = (vorgang_id, reference), None, portfolio_target(connection, portfolio.id)
    else:
        vorgang, answers = (answered.vorgang_id, answered.vorgang), answered.message_pk
        target = thread_target(connection, answered)
    pid = portfolio.id
    cc = set(mail.parsed.cc)
    named = members_by_address(connection, pid, {*mail.parsed.to, *cc} - {author.address})
    taking_part = [Participant(author.id, ParticipantRole.SENDER)] + [
        Participant(member_id, ParticipantRole.CC if address in cc else ParticipantRole.TO)
        for address, member_id in sorted(named.items())
    ]
    direction = Direction.REPLY if answers is not None else Direction.INTAKE
    gateway_id = new_gateway_id()
    trace = Trace(mail.arrival, storage.hostname, gateway_id, now) if mail.arrival is not None else None
    message = NewMessage(
        gateway_id=gateway_id,
        portfolio_id=pid,
        vorgang_id=vorgang[0],
        direction=direction,
        backoffice_id=target.backoffice_id if target else None,
        raw=mail.raw,
        sha256=hashlib.sha256(mail.raw).hexdigest(),
        message_id=mail.parsed.message_id or f"<{gateway_id}@{storage.hostname}>",
        message_id_assigned=mail.parsed.message_id is None,
        in_reply_to=mail.parsed.in_reply_to,
        references=mail.parsed.references,
        subject=mail.parsed.subject,
        from_address=author.address,
        envelope_sender=mail.envelope_sender,
        received_at=now,
        sender_member_id=author.id,
        answers_message_id=answers,
        trace=trace,
        participants=taking_part,
    )
    message_pk = insert_message(connection, message)
    return _Inserted(message, message_pk, vorgang, target, taking_part)


def _deliver(
    connection: Connection,
    inserted: _Inserted,
    to: Sequence[str],
    cc: Sequence[str],
    storage: ReplyStorage,
    lease: Lease | None,
    now: dt.datetime,
    portfolio: Portfolio,
    author: Author,
    peer: str,
) -> Stored:
    """Copy a stored member's mail to its audience (under today's directory) and queue it for the back
    office: at once, or when the collision guard releases a held reply."""
    message, message_pk, vorgang, target = (
        inserted.message,
        inserted.message_pk,
        inserted.vorgang,
        inserted.target,
    )
    pid = portfolio.id
    taking_part = inserted.taking_part
    releases = sharing_releases(connection, pid, {p.member_id for p in taking_part})
    seen_by = audience(pid, taking_part, releases)
    # The author's own client keeps the mail in Sent; a copy in the inbox would only be noise.
    copies = copies_for(message_pk, pid, seen_by, leaving_out={author.id})
    copy_pks = insert_copies(connection, copies, now, lease)
    addresses = member_addresses(connection, {c.member_id for c in copies})

    relay: dict[str, Any] = {"relayed": False, "why_not": "the portfolio has no back office to relay to"}
    if target is not None and target.backoffice_address is not None:
        relay = _queue_relay(
            connection, message.raw, to, cc, message, message_pk, vorgang[1], author, target, storage, now
        )
    # Copies stored under a lease go to the fan-out of this process at once.
    jobs = (
        [
            handed_job(
                c, pk, message, portfolio=portfolio.name, vorgang=vorgang[1], address=addresses[c.member_id]
            )
            for c, pk in zip(copies, copy_pks, strict=True)
        ]
        if lease is not None
        else []
    )
    detail = {
        "message_pk": message_pk,
        "gateway_id": message.gateway_id,
        "vorgang": vorgang[1],
        "audience": sorted(addresses.values()),
        "peer": peer,
        **relay,
    }
    return Stored(
        Direction(message.direction),
        message.gateway_id,
        vorgang[0],
        vorgang[1],
        author.address,
        len(copies),
        bool(relay["relayed"]),
        jobs,
        detail,
    )


def _queue_relay(
    connection: Connection,
    raw: bytes,
    to_given: Sequence[str],
    cc_given: Sequence[str],
    message: NewMessage,
    message_pk: int,
    vorgang: str,
    author: Author,
    target: ThreadTarget,
    storage: ReplyStorage,
    now: dt.datetime,
) -> dict[str, Any]:
    """Queue the mail for the back office, from the sender it is to name (DESIGN.md §5); what was
    decided, for the event log."""
    assert target.backoffice_address is not None
    portfolio_id = message.portfolio_id
    original = original_participant(connection, portfolio_id, message.vorgang_id) or author.address
    try:
        sender = relay_sender(
            actual_sender=author.address, original_participant=original, ams_version=target.ams_version
        )
    except InvalidVersion:
        # The directory refuses such versions; one that slipped in counts as current (actual sender).
        sender = relay_sender(actual_sender=author.address, original_participant=original, ams_version="")
    name = author.display_name
    if sender.from_address != author.address:
        named = member_by_address(connection, portfolio_id, sender.from_address)
        name = named.display_name if named else ""
    to, cc = recipients_kept(
        to_given,
        cc_given,
        backoffice=target.backoffice_address,
        reply_domain=storage.reply_domain,
    )
    in_reply_to, references = threading_ids(
        target.message_id, target.references, reply_domain=storage.reply_domain
    )
    relay_message_id = f"<{message.gateway_id}@{storage.hostname}>"
    data = render_relay(
        raw,
        RelayHeaders(
            from_address=sender.from_address,
            from_name=name,
            to=to,
            cc=cc,
            message_id=relay_message_id,
            in_reply_to=in_reply_to,
            references=references,
            vorgang=vorgang,
            actual_sender=author.address,
            loop_marker=storage.node,
            received=message.trace.received(target.backoffice_address) if message.trace is not None else None,
            reply_domain=storage.reply_domain,
        ),
    )
    relayed = NewRelay(
        portfolio_id,
        message_pk,
        target.backoffice_id,
        member_id=author.id,
        envelope_sender=storage.bounce_address,
        # Only the back office: the others the member named are kept in the headers for the record,
        # but the gateway relays to nobody outside the back office (no open relay).
        recipients=(target.backoffice_address,),
        relay_message_id=relay_message_id,
        data=data,
    )
    # Always queued: the message is new in this transaction, so it has no relay yet.
    queue_relay(connection, relayed, now, storage.relay_lifetime)
    return {
        "relayed": True,
        "relay_to": target.backoffice_address,
        "relay_from": sender.from_address,
        "actual_sender": author.address,
        "legacy_ams": sender.legacy,
        "relay_message_id": relay_message_id,
    }
