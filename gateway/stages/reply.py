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
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.db import collisions, membermail, replies
from gateway.db.copies import Lease
from gateway.db.directory import portfolio_policy
from gateway.db.models import CopyState, HeldState, MessageKind
from gateway.db.writer import Writer
from gateway.domain import gateway_headers
from gateway.domain.answers import Classification, DeliveryReport, Kind
from gateway.domain.parsing import ParsedMessage
from gateway.domain.refusals import NOT_ENTITLED_TO_ANSWER
from gateway.domain.senderauth_rules import Policy
from gateway.domain.submitters import message_id_too_long
from gateway.domain.tokens import (
    HeldAction,
    TokenKeys,
    TokenParts,
    parse_token,
    read_held_token,
    token_from_address,
    token_from_references,
    verify_held_token,
    verify_token,
)
from gateway.domain.trace import Arrival
from gateway.errors import NotStored
from gateway.senderauth.check import check_sender
from gateway.senderauth.dns import DnsResolver
from gateway.smtp_replies import Reply
from gateway.stages.acceptance import HandOff

log = logging.getLogger("gateway.stages.reply")

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

    @property
    def storage(self) -> membermail.ReplyStorage:
        return membermail.ReplyStorage(
            self.reply_domain, self.hostname, self.node, self.relay_lifetime, self.bounce_address
        )


class ReplyStage:
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
        on_held: Callable[[], None] = lambda: None,
    ) -> None:
        self.on_held = on_held
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
        held = None if parts is None else read_held_token(parts)
        if held is not None and parts is not None and opened_in is None:
            # An answer to a collision notice's address: send the held reply anyway, or withdraw it.
            return await self._decide_held(mail, parts, *held)
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
        if answered.copy_state in (CopyState.REVOKING, CopyState.REVOKED):
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
        stored = _member_mail(mail)
        if kind.kind is not Kind.ANSWER:
            recorded = _recorded_head(mail.raw, ctx.max_recorded_size)
            what = MessageKind(kind.kind.value)
            return await self._store(
                mail.peer,
                membermail.store_not_an_answer,
                stored,
                answered,
                what,
                kind.reason,
                recorded,
                ctx.storage,
            )
        return await self._store(
            mail.peer, membermail.store_reply, stored, answered, ctx.storage, self._lease()
        )

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
        return await self._store(
            mail.peer,
            membermail.open_vorgang,
            _member_mail(mail),
            portfolio,
            self.context.storage,
            self._lease(),
        )

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
        self,
        peer: str,
        transaction: Callable[
            ...,
            membermail.Stored
            | membermail.Refusal
            | membermail.Resent
            | membermail.Recorded
            | membermail.Held,
        ],
        *args: Any,
    ) -> str:
        try:
            outcome = await self.writer.run(transaction, *args)
        except Exception as exc:
            log.error("could not store a member's mail: %s", exc)
            raise NotStored(str(exc)) from exc
        if isinstance(outcome, membermail.Refusal):
            return Reply.REFUSED.with_text(outcome.reason)
        if isinstance(outcome, membermail.Resent):
            # The member's server lost our 250 and sent the same mail again: it is stored already.
            log.info("a re-sent %s, stored before as %s", outcome.kind, outcome.gateway_id)
            if outcome.kind == Kind.ANSWER.value:
                return Reply.ACCEPTED.with_text(f"Accepted as {outcome.gateway_id} in {outcome.vorgang}")
            return Reply.RECORDED.with_text(f"Recorded in {outcome.vorgang} as {outcome.kind}; not relayed")
        if isinstance(outcome, membermail.Held):
            # The notice goes into the author's mailbox from the held-replies worker (durable).
            self.on_held()
            log.info(
                "held %s from %s in %s (collision guard): %s",
                outcome.gateway_id,
                outcome.author,
                outcome.vorgang,
                outcome.held_id,
            )
            return Reply.ACCEPTED.with_text(
                f"Accepted as {outcome.gateway_id} in {outcome.vorgang}, held: a colleague answered "
                "first; a notice in your mailbox says how to send or withdraw it"
            )
        if isinstance(outcome, membermail.Recorded):
            log.info("recorded %s from %s in %s: %s", outcome.kind, peer, outcome.vorgang, outcome.reason)
            return Reply.RECORDED.with_text(f"Recorded in {outcome.vorgang} as {outcome.kind}; not relayed")
        if self.handoff is not None and outcome.jobs:
            self.handoff.take(outcome.jobs)
        self.on_copies()
        if outcome.relayed:
            self.on_relay()
        # "queued for relay", not "relayed": the relay worker sends it later and logs its own attempts.
        log.info(
            "accepted %s %s from %s (peer %s) in %s: %d copies, %s",
            outcome.direction,
            outcome.gateway_id,
            outcome.author,
            peer,
            outcome.vorgang,
            outcome.copies,
            "queued for relay" if outcome.relayed else "no back office to relay to",
            extra={
                "gateway_id": outcome.gateway_id,
                "vorgang": outcome.vorgang,
                "author": outcome.author,
                "peer": peer,
            },
        )
        return Reply.ACCEPTED.with_text(f"Accepted as {outcome.gateway_id} in {outcome.vorgang}")

    async def _decide_held(self, mail: Incoming, parts: TokenParts, action: str, held_id: str) -> str:
        """A member's answer to a collision notice (docs/collisions.md): the held reply released or
        withdrawn, once. The address is bound to the held reply and its author; the sender check is the
        one replies pass."""
        found = await self.writer.run(collisions.held_reply, held_id)
        if found is None or not verify_held_token(
            self.keys, parts, portfolio=found.portfolio, member_id=found.member_id
        ):
            await self._refused(mail, f"held-reply code {parts.token!r} is not valid")
            return Reply.REFUSED.with_text(
                "The address is not valid (it was changed, or it is not one of this gateway's): "
                "please use the addresses in the notice as they are"
            )
        portfolio = replies.Portfolio(found.portfolio_id, found.portfolio)
        if mail.classification.kind is not Kind.ANSWER:
            # An out-of-office or a bounce decides nothing: only the member does.
            await self._refused(
                mail, f"{mail.classification.kind.value} to held reply {held_id}", portfolio=portfolio
            )
            return Reply.RECORDED.with_text("Recorded; an automatic mail does not decide on a held reply")
        from_address = _from_of(mail)
        if from_address.lower() != found.member.lower():
            await self._refused(
                mail,
                f"{from_address or 'no From'} is not the author of held reply {held_id}",
                portfolio=portfolio,
            )
            return Reply.REFUSED.with_text(NOT_ENTITLED_TO_ANSWER)
        refused = await self._check_sender(mail, found.portfolio_id, from_address, portfolio=portfolio)
        if refused is not None:
            return refused
        wanted = HeldState.RELEASED if action == HeldAction.SEND else HeldState.WITHDRAWN
        try:
            decided = await self.writer.run(
                membermail.decide_held,
                held_id,
                wanted,
                f"member:{found.member}",
                self.context.storage,
                reason="the author answered the notice",
            )
        except Exception as exc:
            log.error("could not decide on held reply %s: %s", held_id, exc)
            raise NotStored(str(exc)) from exc
        if decided is None:
            return Reply.REFUSED.with_text("This held reply does not exist any more")
        if decided.done_now and decided.state is HeldState.RELEASED:
            self.on_copies()
            self.on_relay()
        log.info("held reply %s: %s by %s", held_id, decided.state.value, decided.decided_by)
        if decided.state is HeldState.RELEASED:
            text = f"Your held reply in {decided.vorgang} goes to the back office now"
        else:
            text = f"Your held reply in {decided.vorgang} was withdrawn: nothing was sent"
        if decided.done_now:
            return Reply.ACCEPTED.with_text(text)
        if decided.state is wanted:
            return Reply.ACCEPTED.with_text(f"{text} (decided before)")
        await self._refused(
            mail,
            f"held reply {held_id} is {decided.state.value} already ({decided.decided_by}); "
            f"asked to be {wanted.value}",
            portfolio=portfolio,
        )
        return Reply.REFUSED.with_text(
            f"Your held reply in {decided.vorgang} was {decided.state.value} already "
            f"({decided.decided_by or 'by the gateway'}); nothing was changed"
        )

    def _lease(self) -> Lease | None:
        if self.handoff is None:
            return None
        return Lease(self.handoff.node, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.handoff.lease))

    async def _refused(
        self,
        mail: Incoming,
        reason: str,
        answered: replies.Answered | None = None,
        portfolio: replies.Portfolio | None = None,
    ) -> None:
        log.warning("refused mail from %s (%s): %s", mail.peer, mail.envelope_sender or "<>", reason)
        await self.writer.run(
            membermail.record_refusal, _member_mail(mail), reason, self.context.node, answered, portfolio
        )

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
        return await self.writer.run(membermail.record_bounce, sorted(ids), report, self.context.node)


def _member_mail(mail: Incoming) -> membermail.MemberMail:
    return membermail.MemberMail(
        mail.raw, mail.parsed, mail.envelope_sender, mail.recipients, mail.peer, mail.arrival
    )


def _from_of(mail: Incoming) -> str:
    return mail.parsed.from_addresses[0] if mail.parsed.from_addresses else ""


def _token_of(mail: Incoming, reply_domain: str) -> str | None:
    for recipient in mail.recipients:
        token = token_from_address(recipient, reply_domain)
        if token is not None:
            return token
    ids = [*mail.parsed.in_reply_to, *mail.parsed.references]
    return token_from_references(ids, reply_domain)


def _recorded_head(raw: bytes, limit: int) -> bytes:
    """``raw`` up to ``limit`` bytes, cut after the last whole line."""
    if len(raw) <= limit:
        return raw
    head = raw[:limit]
    end = head.rfind(b"\r\n")
    return head[: end + 2] if end >= 0 else head
