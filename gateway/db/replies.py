"""The storage of the reply path: what a reply token points at, who may answer now, the answered flags,
and the transactions that store a member's mail (or record why not).

Synchronous functions on a Core ``Connection``: the reply stage (``gateway.stages.reply``) runs them on
the writer thread. A member's mail is stored in one transaction that holds the portfolio's directory
from its first read, so the audience it checks is the one it stores against: the mail, its
participants, copies for its audience, its relay to the back office, ``\\Answered`` on the message
answered and the event, or the refusal's event alone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, select, update

from gateway.db.acceptance import hold_directory, member_addresses, new_vorgaenge, sharing_releases
from gateway.db.copies import Lease, copies_for, handed_job, insert_copies
from gateway.db.events import Event, EventKind, append_events
from gateway.db.messages import NewMessage, insert_message, new_gateway_id
from gateway.db.models import (
    BackOfficeAddressRow,
    BackOfficeRow,
    CopyRow,
    CopyState,
    Direction,
    MemberRow,
    MessageKind,
    MessageRow,
    ParticipantRow,
    PortfolioRow,
    RelayRow,
    VorgangRow,
)
from gateway.db.queue import CopyJob
from gateway.db.relayqueue import NewRelay, queue_relay
from gateway.domain.answers import DeliveryReport
from gateway.domain.audience import AsParticipant, Audience, audience
from gateway.domain.model import Participant, ParticipantRole
from gateway.domain.outbound import RelayHeaders, recipients_kept, render_relay, threading_ids
from gateway.domain.parsing import ParsedMessage
from gateway.domain.refusals import Why, refusal
from gateway.domain.senders import InvalidVersion, relay_sender
from gateway.domain.trace import Arrival, Trace


@dataclass(frozen=True, slots=True)
class Answered:
    """The copy a reply token names, and the message it is a copy of."""

    copy_pk: int
    copy_id: str
    member_id: int
    portfolio_id: int
    portfolio: str
    message_pk: int
    message_id: str | None
    references: tuple[str, ...]
    from_address: str | None
    backoffice_id: int | None
    ams_version: str
    vorgang_id: int
    vorgang: str
    direction: str = Direction.INBOUND
    # The copy's state: revoking or revoked when reconciliation took it away (its token stops working).
    copy_state: str = CopyState.DELIVERED


def answered_by_copy(connection: Connection, copy_id: str) -> Answered | None:
    row = connection.execute(
        select(
            CopyRow.id,
            CopyRow.copy_id,
            CopyRow.member_id,
            CopyRow.portfolio_id,
            PortfolioRow.name,
            MessageRow.id,
            MessageRow.message_id,
            MessageRow.references,
            MessageRow.from_address,
            MessageRow.backoffice_id,
            BackOfficeRow.ams_version,
            VorgangRow.id,
            VorgangRow.reference,
            MessageRow.direction,
            CopyRow.state,
        )
        .join(PortfolioRow, PortfolioRow.id == CopyRow.portfolio_id)
        .join(MessageRow, MessageRow.id == CopyRow.message_id)
        .join(VorgangRow, VorgangRow.id == MessageRow.vorgang_id)
        .outerjoin(BackOfficeRow, BackOfficeRow.id == MessageRow.backoffice_id)
        .where(CopyRow.copy_id == copy_id)
    ).first()
    if row is None:
        return None
    return Answered(
        copy_pk=row[0],
        copy_id=row[1],
        member_id=row[2],
        portfolio_id=row[3],
        portfolio=row[4],
        message_pk=row[5],
        message_id=row[6],
        references=tuple((row[7] or "").split()),
        from_address=row[8],
        backoffice_id=row[9],
        ams_version=row[10] or "",
        vorgang_id=row[11],
        vorgang=row[12],
        direction=row[13],
        copy_state=row[14],
    )


@dataclass(frozen=True, slots=True)
class ThreadTarget:
    """The back-office mail a reply answers on the back office's side: whom to send to, how to thread."""

    message_id: str | None
    references: tuple[str, ...]
    backoffice_address: str | None
    backoffice_id: int | None
    ams_version: str


def thread_target(connection: Connection, answered: Answered) -> ThreadTarget | None:
    """The answered message itself when the back office sent it; when a member answers a colleague's
    reply, the Vorgang's latest mail from the back office (the back office never saw the colleague's
    copy, only the relayed mail, which threads to that same back-office mail)."""
    if answered.direction == Direction.INBOUND:
        return ThreadTarget(
            answered.message_id,
            answered.references,
            backoffice_address(connection, answered.backoffice_id, answered.from_address),
            answered.backoffice_id,
            answered.ams_version,
        )
    row = connection.execute(
        select(
            MessageRow.message_id,
            MessageRow.references,
            MessageRow.from_address,
            MessageRow.backoffice_id,
            BackOfficeRow.ams_version,
        )
        .outerjoin(BackOfficeRow, BackOfficeRow.id == MessageRow.backoffice_id)
        .where(
            MessageRow.portfolio_id == answered.portfolio_id,
            MessageRow.vorgang_id == answered.vorgang_id,
            MessageRow.direction == Direction.INBOUND,
        )
        .order_by(MessageRow.received_at.desc(), MessageRow.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    address = backoffice_address(connection, row[3], row[2])
    return ThreadTarget(row[0], tuple((row[1] or "").split()), address, row[3], row[4] or "")


def backoffice_address(
    connection: Connection, backoffice_id: int | None, sent_from: str | None
) -> str | None:
    """Where a reply to the back office's mail goes: one of the back office's own addresses in the
    directory, never an address taken from a header (DESIGN.md §8). The one the mail came from when it
    is among them (a back office with several addresses hears back at the one it wrote from), else the
    first; None when the back office has none (or the message is not a back office's)."""
    if backoffice_id is None:
        return None
    addresses = [
        str(a)
        for a in connection.scalars(
            select(BackOfficeAddressRow.address)
            .where(BackOfficeAddressRow.backoffice_id == backoffice_id)
            .order_by(BackOfficeAddressRow.id)
        )
    ]
    if sent_from is not None and sent_from.lower() in (a.lower() for a in addresses):
        return next(a for a in addresses if a.lower() == sent_from.lower())
    return addresses[0] if addresses else None


def member_mail_by_digest(
    connection: Connection, portfolio_id: int, message_id: str, sha256: str
) -> tuple[str, str, str] | None:
    """A member's mail already stored with this Message-ID and digest: its gateway id, Vorgang and kind."""
    row = connection.execute(
        select(MessageRow.gateway_id, VorgangRow.reference, MessageRow.kind)
        .join(VorgangRow, VorgangRow.id == MessageRow.vorgang_id)
        .where(
            MessageRow.portfolio_id == portfolio_id,
            MessageRow.message_id == message_id,
            MessageRow.sha256 == sha256,
            MessageRow.direction.in_((Direction.REPLY, Direction.INTAKE)),
        )
        .order_by(MessageRow.id)
        .limit(1)
    ).first()
    return None if row is None else (str(row[0]), str(row[1]), str(row[2]))


@dataclass(frozen=True, slots=True)
class Author:
    """The member who wrote a reply, as the reply path needs them."""

    id: int
    address: str
    display_name: str


def member_by_address(connection: Connection, portfolio_id: int, address: str) -> Author | None:
    row = connection.execute(
        select(MemberRow.id, MemberRow.address, MemberRow.display_name).where(
            MemberRow.portfolio_id == portfolio_id, MemberRow.address == address
        )
    ).first()
    return None if row is None else Author(row[0], row[1], row[2])


def members_by_address(connection: Connection, portfolio_id: int, addresses: set[str]) -> dict[str, int]:
    if not addresses:
        return {}
    rows = connection.execute(
        select(MemberRow.address, MemberRow.id).where(
            MemberRow.portfolio_id == portfolio_id, MemberRow.address.in_(addresses)
        )
    )
    return {str(address): int(member_id) for address, member_id in rows}


def participants(connection: Connection, portfolio_id: int, message_pk: int) -> list[Participant]:
    rows = connection.execute(
        select(ParticipantRow.member_id, ParticipantRow.role).where(
            ParticipantRow.message_id == message_pk, ParticipantRow.portfolio_id == portfolio_id
        )
    )
    return [Participant(int(member_id), ParticipantRole(role)) for member_id, role in rows]


def audience_now(connection: Connection, portfolio_id: int, message_pk: int) -> Audience:
    """Who may see the message under today's directory (DESIGN.md §3), not when it was delivered."""
    taking_part = participants(connection, portfolio_id, message_pk)
    releases = sharing_releases(connection, portfolio_id, {p.member_id for p in taking_part})
    return audience(portfolio_id, taking_part, releases)


def original_participant(connection: Connection, portfolio_id: int, vorgang_id: int) -> str | None:
    """The member the back office first wrote to in the Vorgang (the legacy-ams From, DESIGN.md §5)."""
    row = connection.execute(
        select(MemberRow.address)
        .join(
            ParticipantRow,
            and_(ParticipantRow.member_id == MemberRow.id, ParticipantRow.portfolio_id == portfolio_id),
        )
        .join(MessageRow, MessageRow.id == ParticipantRow.message_id)
        .where(
            MessageRow.portfolio_id == portfolio_id,
            MessageRow.vorgang_id == vorgang_id,
            MessageRow.direction == Direction.INBOUND,
            ParticipantRow.role == ParticipantRole.TO.value,
        )
        .order_by(MessageRow.received_at, MessageRow.id, MemberRow.id)
        .limit(1)
    ).first()
    return None if row is None else str(row[0])


def mark_answered(
    connection: Connection,
    portfolio_id: int,
    message_pk: int,
    now: dt.datetime,
    *,
    only_member: int | None = None,
) -> int:
    """``\\Answered`` on every copy of the message: in the database at once, in the mailboxes by the
    fan-out (copies still pending get it with their first write). Returns how many copies changed.

    ``only_member``: the copy of this member alone (a blind recipient's answer, which the others must
    not learn of)."""
    unanswered = and_(
        CopyRow.portfolio_id == portfolio_id, CopyRow.message_id == message_pk, CopyRow.answered.is_(False)
    )
    if only_member is not None:
        unanswered = and_(unanswered, CopyRow.member_id == only_member)
    # A delivered copy is due at once for its flag; a pending one keeps its lease and retry time and
    # is written with the flag (or caught up by the fan-out's record, if its write was under way).
    delivered = connection.execute(
        update(CopyRow)
        .where(unanswered, CopyRow.state == CopyState.DELIVERED)
        .values(answered=True, flags_pending=True, next_attempt_at=now, updated_at=now)
    )
    others = connection.execute(update(CopyRow).where(unanswered).values(answered=True, updated_at=now))
    return sum(int(getattr(r, "rowcount", 0) or 0) for r in (delivered, others))


@dataclass(frozen=True, slots=True)
class Portfolio:
    id: int
    name: str


def portfolio_by_name(connection: Connection, name: str) -> Portfolio | None:
    row = connection.execute(
        select(PortfolioRow.id, PortfolioRow.name).where(PortfolioRow.name == name)
    ).first()
    return None if row is None else Portfolio(int(row[0]), str(row[1]))


def portfolio_target(connection: Connection, portfolio_id: int) -> ThreadTarget | None:
    """Where a Vorgang a member opens goes: the portfolio's first back office that takes replies (it has
    relay settings), at its first address; nothing to thread to yet."""
    row = connection.execute(
        select(BackOfficeRow.id, BackOfficeAddressRow.address, BackOfficeRow.ams_version)
        .join(BackOfficeAddressRow, BackOfficeAddressRow.backoffice_id == BackOfficeRow.id)
        .where(BackOfficeRow.portfolio_id == portfolio_id, BackOfficeRow.relay_host.is_not(None))
        .order_by(BackOfficeRow.id, BackOfficeAddressRow.id)
        .limit(1)
    ).first()
    if row is None:
        return None
    return ThreadTarget(None, (), str(row[1]), int(row[0]), row[2] or "")


# --- the transactions of the reply path (on the writer thread) ---------------------------------------


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
) -> Stored | Refusal | Resent:
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
    stored = _store_member_mail(
        connection,
        mail,
        storage,
        lease,
        now,
        portfolio=Portfolio(pid, answered.portfolio),
        vorgang=(answered.vorgang_id, answered.vorgang),
        author=author,
        answers=answered.message_pk,
        target=thread_target(connection, answered),
    )
    # A blind (Bcc) recipient's answer marks only their own copy: \Answered on the others' would tell
    # them somebody they cannot see got the message (DESIGN.md §3).
    blind = all(isinstance(r, AsParticipant) and not r.role.visible for r in seen_by.via(author.id))
    flagged = mark_answered(
        connection, pid, answered.message_pk, now, only_member=author.id if blind else None
    )
    _record_stored(
        connection,
        now,
        stored,
        EventKind.REPLY_ACCEPTED,
        pid,
        author,
        answered.vorgang_id,
        answers_copy=answered.copy_id,
        token_member_id=answered.member_id,
        answered_copies_flagged=flagged,
    )
    return stored


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
    ((vorgang_id, reference),) = new_vorgaenge(connection, portfolio.id, [mail.parsed.subject], now)
    stored = _store_member_mail(
        connection,
        mail,
        storage,
        lease,
        now,
        portfolio=portfolio,
        vorgang=(vorgang_id, reference),
        author=author,
        answers=None,
        target=portfolio_target(connection, portfolio.id),
    )
    _record_stored(connection, now, stored, EventKind.INTAKE_ACCEPTED, portfolio.id, author, vorgang_id)
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
    vorgang_id: int,
    **detail: Any,
) -> None:
    event = Event(
        kind,
        f"member:{author.address}",
        now,
        portfolio_id=portfolio_id,
        member_id=author.id,
        vorgang_id=vorgang_id,
        message_id=stored.detail["message_pk"],
        detail={k: v for k, v in stored.detail.items() if k != "message_pk"} | detail,
    )
    append_events(connection, [event])


def _store_member_mail(
    connection: Connection,
    mail: MemberMail,
    storage: ReplyStorage,
    lease: Lease | None,
    now: dt.datetime,
    *,
    portfolio: Portfolio,
    vorgang: tuple[int, str],
    author: Author,
    answers: int | None,
    target: ThreadTarget | None,
) -> Stored:
    """Store a member's mail in a Vorgang, copy it to its audience, and queue it for the back office.

    The caller holds the portfolio's directory (``hold_directory``) from its first read of it.
    """
    pid = portfolio.id
    cc = set(mail.parsed.cc)
    named = members_by_address(connection, pid, {*mail.parsed.to, *cc} - {author.address})
    taking_part = [Participant(author.id, ParticipantRole.SENDER)] + [
        Participant(member_id, ParticipantRole.CC if address in cc else ParticipantRole.TO)
        for address, member_id in sorted(named.items())
    ]
    releases = sharing_releases(connection, pid, {p.member_id for p in taking_part})
    seen_by = audience(pid, taking_part, releases)

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
    # The author's own client keeps the mail in Sent; a copy in the inbox would only be noise.
    copies = copies_for(message_pk, pid, seen_by, leaving_out={author.id})
    copy_pks = insert_copies(connection, copies, now, lease)
    addresses = member_addresses(connection, {c.member_id for c in copies})

    relay: dict[str, Any] = {"relayed": False, "why_not": "the portfolio has no back office to relay to"}
    if target is not None and target.backoffice_address is not None:
        relay = _queue_relay(connection, mail, message, message_pk, vorgang[1], author, target, storage, now)
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
        "gateway_id": gateway_id,
        "vorgang": vorgang[1],
        "audience": sorted(addresses.values()),
        "peer": mail.peer,
        **relay,
    }
    return Stored(
        direction, gateway_id, vorgang[1], author.address, len(copies), bool(relay["relayed"]), jobs, detail
    )


def _queue_relay(
    connection: Connection,
    mail: MemberMail,
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
        mail.parsed.to,
        mail.parsed.cc,
        backoffice=target.backoffice_address,
        reply_domain=storage.reply_domain,
    )
    in_reply_to, references = threading_ids(
        target.message_id, target.references, reply_domain=storage.reply_domain
    )
    relay_message_id = f"<{message.gateway_id}@{storage.hostname}>"
    data = render_relay(
        mail.raw,
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
