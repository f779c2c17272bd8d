"""Mail for the tests of the console's views (Wer sieht was, Vorgänge, the event log): accepted as
ingress accepts it (tests/stages' helpers, routed by rules), the copies of some written by the real
fan-out into an in-memory mailbox, and a member's reply taken by the real reply stage."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from gateway.config import FanoutSettings
from gateway.db.writer import Writer
from gateway.mailbox import MemoryMailbox
from gateway.senderauth.dns import StaticResolver
from gateway.stages.acceptance import Accepted
from gateway.stages.fanout import FanOut
from tests.seed import ADDRESS
from tests.stages.conftest import rules_in, submit
from tests.stages.test_reply import answered_copy, incoming, intake, reply_to, set_policy
from tests.web.conftest import MUSTER, ConsoleUnderTest

RULES = """
rules:
  - name: claim-number
    match:
      subject: {regex: 'Schaden(?:nummer)?[ :]*(?P<claim_no>[0-9]{4}-[0-9]+)', ignore_case: true}
    vorgang_key: "claim-{claim_no}"
  - name: foreign
    match: {not: {sender_domain: makler-muster.example}}
    quarantine: "foreign sender"
"""


@dataclass(frozen=True)
class Mail:
    claim: Accepted  # to SB-B1, then fanned out: delivered copies
    claim_again: Accepted  # to GF-B, same claim number: the same Vorgang
    police: Accepted  # to SB-A1
    held: Accepted  # from a stranger: quarantined
    policy_vorgang: str  # to SB-B1, answered by SB-B2 through the reply stage
    reply: str  # the reply's Vorgang is the policy's; this is the answer of the reply stage


async def send_mail(web: ConsoleUnderTest, tmp_path: Path) -> Mail:
    password = tmp_path / "ams.password"
    password.write_text("views-test-password\n", encoding="utf-8")
    await asyncio.to_thread(
        web.cli, "backoffice", "password", "ams", "-p", MUSTER, "--password-file", str(password)
    )
    writer = Writer(web.database_url)
    try:
        rules = rules_in(tmp_path, RULES)
        claim, again, police = await submit(
            writer,
            rules,
            (ADDRESS["SB-B1"], "Schadennummer 2026-4711 Kfz"),
            (ADDRESS["GF-B"], "Gutachten Schaden 2026-4711"),
            (ADDRESS["SB-A1"], "Police Kunde A"),
        )
        (held,) = await submit(writer, rules, (ADDRESS["SB-B2"], "Rechnung"), sender="billing@fremd.example")
        fanout = FanOut(
            writer,
            MemoryMailbox(),
            FanoutSettings(retry_base=10.0, retry_max=60.0, max_attempts=3),
            node="n1",
            vorgang_header="X-Gateway-Vorgang",
            tag_subject=True,
        )
        await fanout.run_once()
        # The policy's copies are handed to node n1 and stay pending: a Vorgang with both states.
        await set_policy(writer, "off")
        job = await answered_copy(writer)
        answer = await intake(writer, StaticResolver()).receive(incoming(job, reply_to(job)))
        assert answer.startswith("250"), answer
        vorgang = answer.rsplit(" ", 1)[-1]
    finally:
        await writer.close()
    return Mail(claim, again, police, held, vorgang, answer)
