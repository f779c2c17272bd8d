"""Members' mail at the MX listener: reply address -> copy and member -> checks -> stored, relayed, copied.

The path of one reply, in order (DESIGN.md §5, §8):

1. Find the token: in a recipient ``reply+TOKEN@<reply domain>``, else (a server stripped the
   sub-address) in References/In-Reply-To as ``<TOKEN@<reply domain>>``. The token names one copy; its
   MAC, bound to the copy's portfolio, must verify under one of the configured keys. A mail sent to an
   intake address belongs to that address's portfolio: a token of another portfolio in its References
   never moves it there (a portfolio is decided once); it opens a Vorgang where it was sent.
2. The portfolio's sender-authentication policy must pass for the From address.
3. In one transaction, against the directory as it is now: the same mail stored before (the member's
   server lost our 250) is answered with what it was stored as; else the From address must be a member
   in the audience of the answered message; then the reply is stored in that Vorgang with its author,
   copied to the audience of the reply (not to its author, whose client keeps it in Sent), queued for the
   relay to the back office the directory names for it, with the actual sender, and every copy of the
   answered message gets ``\\Answered``.

Not every mail to a reply address is an answer: auto-replies and loops pass steps 2 and 3 like an answer
(a stranger's auto-reply is refused like its reply); bounces come from mail servers and pass on the token
alone. Their head (``max_recorded_size``) is recorded in the Vorgang; they are never relayed and never
flag anything ``\\Answered``.

Every refusal answers ``550 5.7.1`` with a reason a person can act on and is recorded in the event log;
that includes the reply address of a copy reconciliation revoked (``gateway.stages.reconcile``): it stops
working.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Table, select

from gateway.db import acceptance, replies
from gateway.db.directory import portfolio_policy
from gateway.db.messages import new_gateway_id
from gateway.db.models import MessageRow, RelayRow
from gateway.db.queue import CopyJob
from gateway.db.writer import Writer
from gateway.domain import gateway_headers
from gateway.domain.answers import Classification, DeliveryReport, Kind
from gateway.domain.audience import AsParticipant, Audience, audience
from gateway.domain.model import Participant, ParticipantRole
from gateway.domain.outbound import RelayHeaders, recipients_kept, render_relay, threading_ids
from gateway.domain.parsing import ParsedMessage
from gateway.domain.refusals import NOT_ENTITLED_TO_ANSWER, Why, refusal
from gateway.domain.senderauth_rules import Policy
from gateway.domain.senders import InvalidVersion, relay_sender
from gateway.domain.submitters import address_that_fits, ids_that_fit, message_id_too_long
from gateway.domain.tokens import (
    TokenKeys,
    parse_token,
    token_from_address,
    token_from_references,
    verify_token,
)
from gateway.domain.trace import Arrival, Trace
from gateway.errors import NotStored
from gateway.senderauth.check import check_sender
from gateway.senderauth.dns import DnsResolver
from gateway.smtp_replies import Reply
from gateway.stages.acceptance import HandOff

log = logging.getLogger("gateway.stages.reply")

RELAYS = cast(Table, RelayRow.__table__)

LOOP_MARKER = gateway_headers.LOOP
# The envelope sender of relayed mail: bounces from back offices come back to this address.
BOUNCES_LOCAL_PART = "bounces"


@dataclass(frozen=True, slots=True)
class Incoming:
    """A mail as the MX listener received it, and what its worker process read from it
    (``gateway.stages.parsepool``: untrusted mail is never parsed on the event loop)."""

    envelope_sender: str
    recipients: tuple[str, ...]
    raw: bytes
    parsed: ParsedMessage
    client_ip: str
    helo: str
    peer: str
    classification: Classification
    report: DeliveryReport | None  # what a bounce's delivery report says; None for other mail
    # What the SMTP session said about the client, for the Received line (gateway.domain.trace).
    arrival: Arrival | None = None


@dataclass(frozen=True, slots=True)
class ReplyContext:
    """What the reply path needs from the configuration."""

    reply_domain: str
    intake: Mapping[str, str]  # intake address -> portfolio name
    hostname: str
    node: str
    max_received: int
    authserv_id: str | None
    relay_lifetime: float
    # Bytes recorded of an auto-reply, bounce or loop at a reply address (``[replies] max_recorded_size``).
    max_recorded_size: int = 64 * 1024

    @property
    def bounce_address(self) -> str:
        return f"{BOUNCES_LOCAL_PART}@{self.reply_domain}"


class ReplyIntake:
    """The reply stage: ``receive`` answers one mail from the MX listener with the SMTP reply to give."""

    def __init__(
        self,
        writer: Writer,
        *,
        keys: TokenKeys,
        context: ReplyContext,
        resolver: DnsResolver,
        handoff: HandOff | None = None,
        on_relay: Callable[[], None] = lambda: None,
        on_copies: Callable[[], None] = lambda: None,
    ) -> None:
        self.writer = writer
        self.keys = keys
        self.context = context
        self.resolver = resolver
        self.handoff = handoff
        self.on_relay = on_relay
        self.on_copies = on_copies

    def destination(self, recipient: str) -> str:
        """What a recipient at the MX listener decides a mail's portfolio by: an intake address its
        portfolio; reply addresses (the token of the first one decides) and the bounce address each their
        own. A mail goes to one destination (the listener answers other ones 452, DESIGN.md §8)."""
        if recipient in self.context.intake:
            return f"portfolio {self.context.intake[recipient]}"
        return "bounces" if recipient == self.context.bounce_address else "reply"

    async def receive(self, mail: Incoming) -> str:
        ctx = self.context
        if message_id_too_long(mail.parsed.message_id):
            return str(Reply.MESSAGE_ID_TOO_LONG)
        kind = mail.classification
        opened_in = next((ctx.intake[r] for r in mail.recipients if r in ctx.intake), None)
        token = _token_of(mail, ctx.reply_domain)
        parts = None if token is None else parse_token(token)
        answered = None if parts is None else await self.writer.run(replies.answered_by_copy, parts.copy_id)
        if opened_in is not None and (
            parts is None
            or answered is None
            or answered.portfolio != opened_in
            or not verify_token(self.keys, parts, portfolio=answered.portfolio)
        ):
            # Sent to an intake address: that address decides the portfolio. A reply code in References
            # threads the mail only within that portfolio; one of another portfolio never moves it.
            token = None
        if token is None:
            if kind.kind is Kind.BOUNCE:
                return await self._bounce(mail, kind.reason)
            if opened_in is not None:
                return await self._open(mail, opened_in, kind)
            await self._refused(mail, "no reply code in the address or in References")
            return Reply.NOT_A_REPLY.with_text(
                "This address only takes answers to the gateway's mail, and this mail names none: "
                "please use Reply in your mail program on the message you want to answer"
            )
        if (
            parts is None
            or answered is None
            or not verify_token(self.keys, parts, portfolio=answered.portfolio)
        ):
            await self._refused(mail, f"reply code {token!r} is not valid", answered)
            return Reply.REFUSED.with_text(
                "The reply address is not valid (it was changed, or it is not one of this gateway's): "
                "please answer the original message with Reply"
            )
        if answered.copy_state in ("revoking", "revoked"):
            # DESIGN.md §8: a member removed from a release loses what it gave, reply addresses too.
            await self._refused(mail, f"reply code of copy {answered.copy_id}, which was revoked", answered)
            # The same answer as for a stranger: who lost access is for the event log only.
            return Reply.REFUSED.with_text(NOT_ENTITLED_TO_ANSWER)
        from_address = _from_of(mail)
        if kind.kind is Kind.BOUNCE:
            # From a mail server, not a person: no member to check. Only its head is recorded.
            await self._match_bounce(mail)
        else:
            # Auto-replies and loops pass the checks an answer passes before anything is stored, so a
            # stranger's auto-reply is refused like its ordinary reply (issue 12).
            refused = await self._check_sender(mail, answered.portfolio_id, from_address, answered)
            if refused is not None:
                return refused
        if kind.kind is not Kind.ANSWER:
            return await self._store(
                _store_not_an_answer, mail, answered, from_address, kind.kind.value, kind.reason, ctx
            )
        return await self._store(_store_reply, mail, answered, from_address, ctx, self._lease())

    async def _open(self, mail: Incoming, portfolio_name: str, kind: Classification) -> str:
        """Mail from a member to a portfolio's intake address: a new Vorgang (DESIGN.md §2)."""
        portfolio = await self.writer.run(replies.portfolio_by_name, portfolio_name)
        if portfolio is None:
            log.error(
                "intake address of portfolio %r, which does not exist: fix [domains.intake]", portfolio_name
            )
            return Reply.NOT_HERE.with_text("No such address here")
        if kind.kind is not Kind.ANSWER:
            await self._refused(
                mail, f"{kind.kind.value} at the intake address: {kind.reason}", portfolio=portfolio
            )
            return Reply.RECORDED.with_text(f"Recorded as {kind.kind.value}; no Vorgang opened, not relayed")
        from_address = _from_of(mail)
        refused = await self._check_sender(mail, portfolio.id, from_address, portfolio=portfolio)
        if refused is not None:
            return refused
        return await self._store(_open_vorgang, mail, portfolio, from_address, self.context, self._lease())

    async def _check_sender(
        self,
        mail: Incoming,
        portfolio_id: int,
        from_address: str,
        answered: replies.Answered | None = None,
        portfolio: replies.Portfolio | None = None,
    ) -> str | None:
        """None when the portfolio's sender-authentication policy passes; else the SMTP answer."""
        policy = Policy(await self.writer.run(portfolio_policy, portfolio_id))
        verdict = await check_sender(
            policy,
            raw=mail.raw,
            from_address=from_address,
            envelope_sender=mail.envelope_sender,
            client_ip=mail.client_ip,
            helo=mail.helo,
            authserv_id=self.context.authserv_id,
            resolver=self.resolver,
        )
        if verdict.passed:
            return None
        await self._refused(
            mail, f"sender not verified ({policy.value}): {verdict.reason}", answered, portfolio
        )
        if verdict.temporary:
            return Reply.SENDER_CHECK_TEMPORARY.with_text(
                f"Could not check the sender now, try again later: {verdict.reason}"
            )
        return Reply.REFUSED.with_text(f"The sender could not be verified: {verdict.reason}")

    async def _store(
        self, transaction: Callable[..., Stored | Refusal | Resent | Recorded], *args: Any
    ) -> str:
        try:
            outcome = await self.writer.run(transaction, *args)
        except Exception as exc:
            log.error("could not store a member's mail: %s", exc)
            raise NotStored(str(exc)) from exc
        if isinstance(outcome, Refusal):
            return Reply.REFUSED.with_text(outcome.reason)
        if isinstance(outcome, Resent):
            # The member's server lost our 250 and sent the same mail again: it is stored already.
            log.info("a re-sent %s, stored before as %s", outcome.kind, outcome.gateway_id)
            if outcome.kind == Kind.ANSWER.value:
                return Reply.ACCEPTED.with_text(f"Accepted as {outcome.gateway_id} in {outcome.vorgang}")
            return Reply.RECORDED.with_text(f"Recorded in {outcome.vorgang} as {outcome.kind}; not relayed")
        if isinstance(outcome, Recorded):
            log.info("recorded %s in %s: %s", outcome.kind, outcome.vorgang, outcome.reason)
            return Reply.RECORDED.with_text(f"Recorded in {outcome.vorgang} as {outcome.kind}; not relayed")
        if self.handoff is not None and outcome.jobs:
            self.handoff.take(outcome.jobs)
        self.on_copies()
        if outcome.relayed:
            self.on_relay()
        log.info(
            "%s %s from %s in %s: %d copies%s",
            outcome.direction,
            outcome.gateway_id,
            outcome.author,
            outcome.vorgang,
            outcome.copies,
            ", relayed" if outcome.relayed else ", no back office to relay to",
            extra={"gateway_id": outcome.gateway_id, "vorgang": outcome.vorgang, "author": outcome.author},
        )
        return Reply.ACCEPTED.with_text(f"Accepted as {outcome.gateway_id} in {outcome.vorgang}")

    def _lease(self) -> tuple[str, dt.datetime] | None:
        if self.handoff is None:
            return None
        return self.handoff.node, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.handoff.lease)

    async def _refused(
        self,
        mail: Incoming,
        reason: str,
        answered: replies.Answered | None = None,
        portfolio: replies.Portfolio | None = None,
    ) -> None:
        log.warning("refused mail from %s (%s): %s", mail.peer, mail.envelope_sender or "<>", reason)
        await self.writer.run(_record_refusal, mail, answered, reason, self.context.node, portfolio)

    async def _bounce(self, mail: Incoming, reason: str) -> str:
        matched = await self._match_bounce(mail)
        if matched is None:
            await self._refused(mail, f"a bounce that matches no relayed mail ({reason})")
            return Reply.RECORDED.with_text("Bounce recorded; it matches no mail of this gateway")
        return Reply.RECORDED.with_text(f"Bounce recorded for {matched}")

    async def _match_bounce(self, mail: Incoming) -> str | None:
        report = mail.report
        ids = set(mail.parsed.in_reply_to) | set(mail.parsed.references)
        if report is not None and report.original_message_id:
            ids.add(report.original_message_id)
        return await self.writer.run(_record_bounce, sorted(ids), mail, report, self.context.node)


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
    direction: str
    gateway_id: str
    vorgang: str
    author: str
    copies: int
    relayed: bool
    jobs: list[CopyJob]
    detail: dict[str, Any]


def _from_of(mail: Incoming) -> str:
    return mail.parsed.from_addresses[0] if mail.parsed.from_addresses else ""


def _token_of(mail: Incoming, reply_domain: str) -> str | None:
    for recipient in mail.recipients:
        token = token_from_address(recipient, reply_domain)
        if token is not None:
            return token
    ids = [*mail.parsed.in_reply_to, *mail.parsed.references]
    return token_from_references(ids, reply_domain)


# --- the transactions (on the writer thread) ------------------------------------------------------------


def _store_reply(
    connection: Connection,
    mail: Incoming,
    answered: replies.Answered,
    from_address: str,
    ctx: ReplyContext,
    lease: tuple[str, dt.datetime] | None,
) -> Stored | Refusal | Resent:
    pid = answered.portfolio_id
    acceptance.hold_directory(connection, pid)
    resent = _resent(connection, pid, mail, mail.raw)
    if resent is not None:
        return resent
    entitled = _author_of_answer(connection, mail, answered, from_address, ctx)
    if isinstance(entitled, Refusal):
        return entitled
    author, seen_by = entitled
    now = dt.datetime.now(dt.UTC)
    stored = _store_member_mail(
        connection,
        mail,
        ctx,
        lease,
        now,
        portfolio=replies.Portfolio(pid, answered.portfolio),
        vorgang=(answered.vorgang_id, answered.vorgang),
        author=author,
        answers=answered.message_pk,
        target=replies.thread_target(connection, answered),
    )
    # A blind (Bcc) recipient's answer marks only their own copy: \Answered on the others' would tell
    # them somebody they cannot see got the message (DESIGN.md §3).
    blind = all(isinstance(r, AsParticipant) and not r.role.visible for r in seen_by.via(author.id))
    flagged = replies.mark_answered(
        connection, pid, answered.message_pk, now, only_member=author.id if blind else None
    )
    _record(
        connection,
        now,
        stored,
        "reply.accepted",
        pid,
        author,
        answered.vorgang_id,
        answers_copy=answered.copy_id,
        token_member_id=answered.member_id,
        answered_copies_flagged=flagged,
    )
    return stored


def _author_of_answer(
    connection: Connection, mail: Incoming, answered: replies.Answered, from_address: str, ctx: ReplyContext
) -> tuple[replies.Author, Audience] | Refusal:
    """The member who may answer the message ``answered`` as ``from_address`` with the audience that
    entitles them, or the recorded refusal.

    The caller holds the portfolio's directory: the audience is the one the mail is stored against.
    """
    pid = answered.portfolio_id
    author = replies.member_by_address(connection, pid, from_address) if from_address else None
    seen_by = replies.audience_now(connection, pid, answered.message_pk)
    if author is None or author.id not in seen_by:
        refused = refusal(from_address, Why.NOT_A_MEMBER if author is None else Why.NOT_IN_AUDIENCE)
        _record_refusal(connection, mail, answered, refused.reason, ctx.node)
        return Refusal(refused.answer)
    return author, seen_by


def _resent(connection: Connection, portfolio_id: int, mail: Incoming, stored_raw: bytes) -> Resent | None:
    """What the same mail (Message-ID and bytes) was stored as, if a member's server sends it again."""
    if mail.parsed.message_id is None:
        return None  # an id we assign is new each time: such a mail cannot be recognised
    found = replies.member_mail_by_digest(
        connection, portfolio_id, mail.parsed.message_id, hashlib.sha256(stored_raw).hexdigest()
    )
    return None if found is None else Resent(*found)


def _open_vorgang(
    connection: Connection,
    mail: Incoming,
    portfolio: replies.Portfolio,
    from_address: str,
    ctx: ReplyContext,
    lease: tuple[str, dt.datetime] | None,
) -> Stored | Refusal | Resent:
    acceptance.hold_directory(connection, portfolio.id)
    resent = _resent(connection, portfolio.id, mail, mail.raw)
    if resent is not None:
        return resent
    author = replies.member_by_address(connection, portfolio.id, from_address) if from_address else None
    if author is None:
        refused = refusal(from_address, Why.NOT_A_MEMBER, opening=True)
        _record_refusal(connection, mail, None, refused.reason, ctx.node, portfolio)
        return Refusal(refused.answer)
    now = dt.datetime.now(dt.UTC)
    ((vorgang_id, reference),) = acceptance.new_vorgaenge(
        connection, portfolio.id, [mail.parsed.subject], now
    )
    stored = _store_member_mail(
        connection,
        mail,
        ctx,
        lease,
        now,
        portfolio=portfolio,
        vorgang=(vorgang_id, reference),
        author=author,
        answers=None,
        target=replies.portfolio_target(connection, portfolio.id),
    )
    _record(connection, now, stored, "acceptance.accepted", portfolio.id, author, vorgang_id)
    return stored


def _record(
    connection: Connection,
    now: dt.datetime,
    stored: Stored,
    kind: str,
    portfolio_id: int,
    author: replies.Author,
    vorgang_id: int,
    **detail: Any,
) -> None:
    acceptance.insert_rows(
        connection,
        acceptance.EVENTS,
        [
            {
                "at": now,
                "portfolio_id": portfolio_id,
                "actor": f"member:{author.address}",
                "kind": kind,
                "member_id": author.id,
                "vorgang_id": vorgang_id,
                "message_id": stored.detail["message_pk"],
                "detail": {k: v for k, v in stored.detail.items() if k != "message_pk"} | detail,
            }
        ],
    )


def _store_member_mail(
    connection: Connection,
    mail: Incoming,
    ctx: ReplyContext,
    lease: tuple[str, dt.datetime] | None,
    now: dt.datetime,
    *,
    portfolio: replies.Portfolio,
    vorgang: tuple[int, str],
    author: replies.Author,
    answers: int | None,
    target: replies.ThreadTarget | None,
) -> Stored:
    """Store a member's mail in a Vorgang, copy it to its audience, and queue it for the back office.

    The caller holds the portfolio's directory (``acceptance.hold_directory``) from its first read of it.
    """
    pid = portfolio.id
    cc = set(mail.parsed.cc)
    named = replies.members_by_address(connection, pid, {*mail.parsed.to, *cc} - {author.address})
    taking_part = [Participant(author.id, ParticipantRole.SENDER)] + [
        Participant(member_id, ParticipantRole.CC if address in cc else ParticipantRole.TO)
        for address, member_id in sorted(named.items())
    ]
    releases = acceptance.sharing_releases(connection, pid, {p.member_id for p in taking_part})
    seen_by = audience(pid, taking_part, releases)

    direction = "reply" if answers is not None else "intake"
    gateway_id = new_gateway_id()
    message_id = mail.parsed.message_id or f"<{gateway_id}@{ctx.hostname}>"
    trace = Trace(mail.arrival, ctx.hostname, gateway_id, now) if mail.arrival is not None else None
    (message_pk,) = acceptance.insert_returning_ids(
        connection,
        acceptance.MESSAGES,
        [
            {
                "gateway_id": gateway_id,
                "portfolio_id": pid,
                "vorgang_id": vorgang[0],
                "direction": direction,
                "backoffice_id": target.backoffice_id if target else None,
                "raw": mail.raw,
                "size": len(mail.raw),
                "sha256": hashlib.sha256(mail.raw).hexdigest(),
                "message_id": message_id,
                "message_id_assigned": mail.parsed.message_id is None,
                "in_reply_to": ids_that_fit(mail.parsed.in_reply_to),
                "references": " ".join(mail.parsed.references) or None,
                "subject": mail.parsed.subject,
                "from_address": author.address,
                "envelope_sender": mail.envelope_sender,
                "received_at": now,
                "kind": "message",
                "sender_member_id": author.id,
                "answers_message_id": answers,
                "trace": trace.to_json() if trace is not None else None,
            }
        ],
    )
    acceptance.insert_rows(
        connection,
        acceptance.PARTICIPANTS,
        [
            {"message_id": message_pk, "member_id": p.member_id, "role": p.role.value, "portfolio_id": pid}
            for p in dict.fromkeys(taking_part)
        ],
    )
    # The author's own client keeps the mail in Sent; a copy in the inbox would only be noise.
    rows = [
        r for r in acceptance.copy_rows(message_pk, pid, seen_by, now, lease) if r["member_id"] != author.id
    ]
    shared_via = [row.pop("shared_via") for row in rows]
    copy_pks = acceptance.insert_returning_ids(connection, acceptance.COPIES, rows) if rows else []
    addresses = acceptance.member_addresses(connection, {r["member_id"] for r in rows})

    relay: dict[str, Any] = {"relayed": False, "why_not": "the portfolio has no back office to relay to"}
    if target is not None and target.backoffice_address is not None:
        relay = _queue_relay(
            connection, mail, pid, vorgang, author, message_pk, gateway_id, target, ctx, now, trace
        )
    jobs: list[CopyJob] = []
    if lease is not None:
        jobs = [
            CopyJob(
                id=copy_pk,
                copy_id=row["copy_id"],
                attempts=0,
                portfolio_id=pid,
                portfolio=portfolio.name,
                member_id=row["member_id"],
                address=addresses[row["member_id"]],
                message_pk=message_pk,
                gateway_id=gateway_id,
                message_id=message_id,
                message_id_assigned=mail.parsed.message_id is None,
                vorgang_id=vorgang[0],
                vorgang=vorgang[1],
                shared_via=via,
                seen=False,
                answered=False,
                raw=mail.raw,
                first_attempt=True,
                trace=trace,
            )
            for row, copy_pk, via in zip(rows, copy_pks, shared_via, strict=True)
        ]
    detail = {
        "message_pk": message_pk,
        "gateway_id": gateway_id,
        "vorgang": vorgang[1],
        "audience": sorted(addresses.values()),
        "peer": mail.peer,
        **relay,
    }
    return Stored(
        direction, gateway_id, vorgang[1], author.address, len(rows), bool(relay["relayed"]), jobs, detail
    )


def _queue_relay(
    connection: Connection,
    mail: Incoming,
    portfolio_id: int,
    vorgang: tuple[int, str],
    author: replies.Author,
    message_pk: int,
    gateway_id: str,
    target: replies.ThreadTarget,
    ctx: ReplyContext,
    now: dt.datetime,
    trace: Trace | None = None,
) -> dict[str, Any]:
    """Queue the mail for the back office; what was decided, for the event log."""
    assert target.backoffice_address is not None
    original = replies.original_participant(connection, portfolio_id, vorgang[0]) or author.address
    try:
        sender = relay_sender(
            actual_sender=author.address, original_participant=original, ams_version=target.ams_version
        )
    except InvalidVersion:
        # The directory refuses such versions; one that slipped in counts as current (actual sender).
        sender = relay_sender(actual_sender=author.address, original_participant=original, ams_version="")
    name = author.display_name
    if sender.from_address != author.address:
        named = replies.member_by_address(connection, portfolio_id, sender.from_address)
        name = named.display_name if named else ""
    to, cc = recipients_kept(
        mail.parsed.to, mail.parsed.cc, backoffice=target.backoffice_address, reply_domain=ctx.reply_domain
    )
    in_reply_to, references = threading_ids(
        target.message_id, target.references, reply_domain=ctx.reply_domain
    )
    relay_message_id = f"<{gateway_id}@{ctx.hostname}>"
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
            vorgang=vorgang[1],
            actual_sender=author.address,
            loop_marker=ctx.node,
            received=trace.received(target.backoffice_address) if trace is not None else None,
            reply_domain=ctx.reply_domain,
        ),
    )
    acceptance.insert_rows(
        connection,
        RELAYS,
        [
            {
                "portfolio_id": portfolio_id,
                "message_id": message_pk,
                "backoffice_id": target.backoffice_id,
                "member_id": author.id,
                "envelope_sender": ctx.bounce_address,
                # Only the back office: the others the member named are kept in the headers for the
                # record, but the gateway relays to nobody outside the back office (no open relay).
                "recipients": [target.backoffice_address],
                "relay_message_id": relay_message_id,
                "data": data,
                "state": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "leased_by": None,
                "expires_at": now + dt.timedelta(seconds=ctx.relay_lifetime),
                "last_error": None,
                "last_reply": None,
                "created_at": now,
                "updated_at": now,
                "sent_at": None,
            }
        ],
    )
    return {
        "relayed": True,
        "relay_to": target.backoffice_address,
        "relay_from": sender.from_address,
        "actual_sender": author.address,
        "legacy_ams": sender.legacy,
        "relay_message_id": relay_message_id,
    }


def _store_not_an_answer(
    connection: Connection,
    mail: Incoming,
    answered: replies.Answered,
    from_address: str,
    kind: str,
    reason: str,
    ctx: ReplyContext,
) -> Refusal | Resent | Recorded:
    """Record an auto-reply, bounce or loop in the Vorgang of the message it came back to.

    An auto-reply or a loop passes the audience check an answer passes; a bounce comes from a mail
    server and is matched by its token alone. Only the head of the mail is kept, up to
    ``max_recorded_size`` bytes ending at a line end: it is recorded for the admin, never copied or relayed.
    """
    pid = answered.portfolio_id
    acceptance.hold_directory(connection, pid)
    recorded, cut = _recorded_head(mail.raw, ctx.max_recorded_size)
    resent = _resent(connection, pid, mail, recorded)
    if resent is not None:
        return resent
    if kind != Kind.BOUNCE.value:
        entitled = _author_of_answer(connection, mail, answered, from_address, ctx)
        if isinstance(entitled, Refusal):
            return entitled
    now = dt.datetime.now(dt.UTC)
    gateway_id = new_gateway_id()
    message_pk = acceptance.insert_returning_ids(
        connection,
        acceptance.MESSAGES,
        [
            {
                "gateway_id": gateway_id,
                "portfolio_id": pid,
                "vorgang_id": answered.vorgang_id,
                "direction": "reply",
                "backoffice_id": answered.backoffice_id,
                "raw": recorded,
                "size": len(mail.raw),
                "sha256": hashlib.sha256(recorded).hexdigest(),
                "message_id": mail.parsed.message_id or f"<{gateway_id}@{ctx.hostname}>",
                "message_id_assigned": mail.parsed.message_id is None,
                "in_reply_to": ids_that_fit(mail.parsed.in_reply_to),
                "references": " ".join(mail.parsed.references) or None,
                "subject": mail.parsed.subject,
                "from_address": address_that_fits(from_address or None),
                "envelope_sender": mail.envelope_sender,
                "received_at": now,
                "kind": kind,
                "sender_member_id": None,
                "answers_message_id": answered.message_pk,
            }
        ],
    )[0]
    detail: dict[str, Any] = {"gateway_id": gateway_id, "kind": kind, "reason": reason, "peer": mail.peer}
    if cut:
        detail |= {"size": len(mail.raw), "recorded_size": len(recorded)}
    acceptance.insert_rows(
        connection,
        acceptance.EVENTS,
        [
            {
                "at": now,
                "portfolio_id": pid,
                "actor": f"gateway:{ctx.node}",
                "kind": "reply.not_an_answer",
                "member_id": answered.member_id,
                "vorgang_id": answered.vorgang_id,
                "message_id": message_pk,
                "detail": detail,
            }
        ],
    )
    return Recorded(answered.vorgang, kind, reason)


def _recorded_head(raw: bytes, limit: int) -> tuple[bytes, bool]:
    """``raw`` up to ``limit`` bytes, cut after the last whole line; and whether anything was cut."""
    if len(raw) <= limit:
        return raw, False
    head = raw[:limit]
    end = head.rfind(b"\r\n")
    return (head[: end + 2] if end >= 0 else head), True


def _record_refusal(
    connection: Connection,
    mail: Incoming,
    answered: replies.Answered | None,
    reason: str,
    node: str,
    portfolio: replies.Portfolio | None = None,
) -> None:
    portfolio_id = answered.portfolio_id if answered else (portfolio.id if portfolio else None)
    acceptance.insert_rows(
        connection,
        acceptance.EVENTS,
        [
            {
                "at": dt.datetime.now(dt.UTC),
                "portfolio_id": portfolio_id,
                "actor": f"gateway:{node}",
                "kind": "reply.refused",
                "member_id": answered.member_id if answered else None,
                "vorgang_id": answered.vorgang_id if answered else None,
                "message_id": answered.message_pk if answered else None,
                "detail": {
                    "reason": reason,
                    "from": list(mail.parsed.from_addresses),
                    "envelope_sender": mail.envelope_sender,
                    "recipients": list(mail.recipients),
                    "peer": mail.peer,
                    "message_id": mail.parsed.message_id,
                },
            }
        ],
    )


def _record_bounce(
    connection: Connection, message_ids: Sequence[str], mail: Incoming, report: Any, node: str
) -> str | None:
    """Match a bounce to the relayed mail it returns (by that mail's Message-ID) and record it."""
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
    acceptance.insert_rows(
        connection,
        acceptance.EVENTS,
        [
            {
                "at": dt.datetime.now(dt.UTC),
                "portfolio_id": portfolio_id,
                "actor": f"gateway:{node}",
                "kind": "relay.bounced",
                "member_id": member_id,
                "vorgang_id": vorgang_id,
                "message_id": None,
                "detail": {"relay": relay_pk, "relay_message_id": relay_message_id, "recipients": recipients},
            }
        ],
    )
    return str(relay_message_id)
