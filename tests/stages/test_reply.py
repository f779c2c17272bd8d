"""The reply stage with each sender-authentication policy, on SQLite and PostgreSQL, DNS from a table.

The end-to-end tests (tests/e2e/test_replies.py) run the policy "off" through real clients; here the
reply stage runs in the test's loop so that DNS answers can be given: a DKIM-signed reply passes under
``verify`` and the same reply with one changed byte is refused, an Authentication-Results header from
our own border MTA is believed and the same header from another one is not.
"""

from __future__ import annotations

from dataclasses import replace

import dkim
import pytest
from sqlalchemy import select, update

from gateway.db.models import CopyRow, EventRow, PortfolioRow, RelayRow
from gateway.db.queue import CopyJob
from gateway.db.writer import Writer
from gateway.domain.refusals import NOT_ENTITLED_TO_ANSWER
from gateway.domain.tokens import TokenKeys, make_token, reply_address
from gateway.senderauth.dns import StaticResolver
from gateway.stages.acceptance import HandOff
from gateway.stages.parsepool import MailReader, ParsePool, read_arrival
from gateway.stages.reply import Incoming, ReplyContext, ReplyStage
from tests.stages.conftest import PORTFOLIO, accept
from tests.stages.test_senderauth import Key

REPLY_DOMAIN = "reply.gateway.test"
AUTHSERV_ID = "mx.gateway.test"
KEYS = TokenKeys([b"reply-token-key-for-the-stage-tests"])
SB_B2 = "sb-b2@kunde-b.example"
CLIENT_IP = "192.0.2.10"


@pytest.fixture(scope="module")
def key() -> Key:
    return Key()


def dns(key: Key) -> StaticResolver:
    return StaticResolver(
        txt={
            "s1._domainkey.kunde-b.example": [key.record],
            "kunde-b.example": ["v=spf1 ip4:192.0.2.0/24 -all"],
            "_dmarc.kunde-b.example": ["v=DMARC1; p=reject"],
        }
    )


async def answered_copy(writer: Writer) -> CopyJob:
    handed: list[CopyJob] = []
    await accept(
        writer, "sb-b1@kunde-b.example", "Policy", "<policy@ams.example>", HandOff("n1", 60, handed.extend)
    )
    return next(job for job in handed if job.address == SB_B2)


def reply_to(job: CopyJob, *, extra: bytes = b"") -> bytes:
    return (
        extra + b"From: SB-B2 <sb-b2@kunde-b.example>\r\n"
        b"To: "
        + reply_address(make_token(KEYS, portfolio=PORTFOLIO, copy_id=job.copy_id), REPLY_DOMAIN).encode()
        + b"\r\nSubject: Re: Policy\r\nMessage-ID: <r-1@kunde-b.example>\r\n"
        b"In-Reply-To: <policy@ams.example>\r\n\r\nErledigt.\r\n"
    )


def incoming(job: CopyJob, raw: bytes) -> Incoming:
    token = make_token(KEYS, portfolio=PORTFOLIO, copy_id=job.copy_id)
    # What the MX listener's parse worker reads, read here in the test's process.
    read = read_arrival(raw, SB_B2, 30)
    return Incoming(
        envelope_sender=SB_B2,
        recipients=(reply_address(token, REPLY_DOMAIN),),
        raw=raw,
        parsed=read.parsed,
        client_ip=CLIENT_IP,
        helo="mx.kunde-b.example",
        peer=f"{CLIENT_IP}:4711",
        classification=read.classification,
        report=read.report,
    )


def outside(mail: Incoming) -> Incoming:
    """The same mail, arriving from an address kunde-b.example's SPF record does not list."""
    return replace(mail, client_ip="198.51.100.7", peer="198.51.100.7:4711")


def intake(writer: Writer, resolver: StaticResolver) -> ReplyStage:
    context = ReplyContext(
        reply_domain=REPLY_DOMAIN,
        intake={},
        hostname="gw.test",
        node="n1",
        max_received=30,
        authserv_id=AUTHSERV_ID,
        relay_lifetime=60.0,
    )
    return ReplyStage(writer, keys=KEYS, context=context, resolver=resolver)


async def set_policy(writer: Writer, policy: str) -> None:
    await writer.run(lambda c: c.execute(update(PortfolioRow).values(sender_auth=policy)))


async def refusals(writer: Writer) -> list[str]:
    rows = await writer.run(
        lambda c: list(
            c.scalars(select(EventRow.detail).where(EventRow.kind == "reply.refused").order_by(EventRow.id))
        )
    )
    return [str(detail["reason"]) for detail in rows]


async def relayed(writer: Writer) -> int:
    return int(await writer.run(lambda c: len(list(c.scalars(select(RelayRow.id))))))


async def test_verify_passes_a_signed_reply_and_refuses_it_changed(writer: Writer, key: Key) -> None:
    await set_policy(writer, "verify")
    job = await answered_copy(writer)
    raw = reply_to(job)
    signed = dkim.sign(raw, b"s1", b"kunde-b.example", key.pem) + raw
    stage = intake(writer, dns(key))

    # Sent from outside kunde-b.example's SPF record: only the DKIM signature can vouch for it.
    changed = signed.replace(b"Erledigt.", b"Erledigt!")
    answer = await stage.receive(outside(incoming(job, changed)))
    assert answer.startswith("550 5.7.1 The sender could not be verified"), answer
    assert "DKIM" in answer
    (reason,) = await refusals(writer)
    assert reason.startswith("sender not verified (verify)")
    assert await relayed(writer) == 0

    answer = await stage.receive(outside(incoming(job, signed)))
    assert answer.startswith("250 2.0.0 Accepted as gw-"), answer
    assert await relayed(writer) == 1


async def test_verify_refuses_unsigned_mail_from_a_dmarc_reject_domain_sent_from_elsewhere(
    writer: Writer, key: Key
) -> None:
    await set_policy(writer, "verify")
    job = await answered_copy(writer)
    answer = await intake(writer, dns(key)).receive(outside(incoming(job, reply_to(job))))
    assert answer.startswith("550 5.7.1"), answer
    assert await relayed(writer) == 0


async def test_a_dns_failure_is_a_temporary_answer(writer: Writer, key: Key) -> None:
    await set_policy(writer, "verify")
    job = await answered_copy(writer)
    raw = reply_to(job)
    signed = dkim.sign(raw, b"s1", b"kunde-b.example", key.pem) + raw
    answer = await intake(
        writer, StaticResolver(failing=["s1._domainkey.kunde-b.example", "kunde-b.example"])
    ).receive(incoming(job, signed))
    assert answer.startswith("451 4.7.0"), answer
    assert await relayed(writer) == 0


@pytest.mark.parametrize(
    ("authserv_id", "result", "accepted"),
    [
        (AUTHSERV_ID, "dmarc=pass header.from=kunde-b.example", True),
        ("mx.elsewhere.example", "dmarc=pass header.from=kunde-b.example", False),
        (AUTHSERV_ID, "dkim=fail header.d=kunde-b.example; dmarc=fail header.from=kunde-b.example", False),
    ],
    ids=["ours", "foreign-authserv-id", "ours-saying-fail"],
)
async def test_trust_authentication_results_believes_only_our_border_mta(
    writer: Writer, authserv_id: str, result: str, accepted: bool
) -> None:
    await set_policy(writer, "trust-authentication-results")
    job = await answered_copy(writer)
    raw = reply_to(job, extra=f"Authentication-Results: {authserv_id}; {result}\r\n".encode())
    answer = await intake(writer, StaticResolver()).receive(incoming(job, raw))
    if accepted:
        assert answer.startswith("250 2.0.0 Accepted"), answer
        assert await relayed(writer) == 1
    else:
        assert answer.startswith("550 5.7.1 The sender could not be verified"), answer
        (reason,) = await refusals(writer)
        assert reason.startswith("sender not verified (trust-authentication-results)")
        assert await relayed(writer) == 0


async def test_off_takes_the_reply_without_looking_anything_up(writer: Writer) -> None:
    await set_policy(writer, "off")
    job = await answered_copy(writer)
    resolver = StaticResolver()
    answer = await intake(writer, resolver).receive(incoming(job, reply_to(job)))
    assert answer.startswith("250"), answer
    assert resolver.queries == []


async def test_trouble_while_taking_a_reply_answers_451_not_500() -> None:
    """aiosmtpd answers an exception with 500, which would bounce the member's reply for our fault."""
    from aiosmtpd.smtp import Envelope, Session

    from gateway.stages.ingress import ListenerState, MxHandler

    class Broken:
        async def receive(self, mail: Incoming) -> str:
            raise RuntimeError("database went away")

    pool = ParsePool("mx", workers=1, budget=30.0)
    await pool.start()
    handler = MxHandler(
        replies=Broken(),  # type: ignore[arg-type]
        state=ListenerState("mx", 10, 10, 100),
        reply_domain=REPLY_DOMAIN,
        intake=(),
        max_recipients=10,
        max_header_size=65536,
        reader=MailReader(pool),
    )
    session = Session(loop=None)  # type: ignore[arg-type]
    session.peer = ("192.0.2.1", 4711)
    envelope = Envelope()
    envelope.mail_from = SB_B2
    envelope.rcpt_tos = [f"reply@{REPLY_DOMAIN}"]
    envelope.original_content = b"From: sb-b2@kunde-b.example\r\n\r\nx\r\n"
    try:
        answer = await handler.handle_DATA(None, session, envelope)  # type: ignore[arg-type]
    finally:
        await pool.close()
    assert answer.startswith("451 4.3.0"), answer


@pytest.mark.parametrize("state", ["revoking", "revoked"])
async def test_the_reply_address_of_a_revoked_copy_is_refused(writer: Writer, state: str) -> None:
    """DESIGN.md §8: a member who lost access loses the reply address too, even while still in the
    audience by the directory (the copy was revoked; a colleague's From would not help either)."""
    await set_policy(writer, "off")
    job = await answered_copy(writer)
    await writer.run(lambda c: c.execute(update(CopyRow).where(CopyRow.id == job.id).values(state=state)))
    answer = await intake(writer, StaticResolver()).receive(incoming(job, reply_to(job)))
    # The answer a stranger gets too (DESIGN.md §8: no answer reveals who is a member); the log says why.
    assert answer == f"550 5.7.1 {NOT_ENTITLED_TO_ANSWER}", answer
    assert await relayed(writer) == 0
    assert (await refusals(writer))[-1] == f"reply code of copy {job.copy_id}, which was revoked"
    # The same reply to a copy that was not revoked goes through: the refusal is the copy's state.
    await writer.run(
        lambda c: c.execute(update(CopyRow).where(CopyRow.id == job.id).values(state="delivered"))
    )
    answer = await intake(writer, StaticResolver()).receive(incoming(job, reply_to(job)))
    assert answer.startswith("250"), answer
