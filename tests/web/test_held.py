"""The console's held-replies page over HTTP, on SQLite and PostgreSQL: the collision guard's held
replies of a portfolio, released or withdrawn by an admin (actor ``web:<login>``), once; a portfolio
admin of another portfolio sees and decides nothing of them (docs/collisions.md)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

from gateway.db.queue import CopyJob
from tests.seed import ADDRESS
from tests.stages.test_collision import mail, stage
from tests.web.conftest import MUSTER, OPERATOR, OTHER, ZWEI, ZWEI_PASSWORD
from tests.web.test_ops import Ops, logged_in, ops, text_of

__all__ = ["ops"]

SB_B1, SB_B2 = ADDRESS["SB-B1"], ADDRESS["SB-B2"]


async def a_held_reply(ops: Ops) -> str:
    """SB-B2 answers a claim; SB-B1, whose copy came first, answers it too: held. Its id."""
    accepted = await ops.send(SB_B1, "Schaden 4711")
    rows = await ops.web.sql(
        "SELECT m.address, c.copy_id FROM copies c JOIN members m ON m.id = c.member_id "
        "JOIN messages g ON g.id = c.message_id WHERE g.gateway_id = :g",
        g=accepted.gateway_id,
    )
    copies = {str(a): cast(CopyJob, SimpleNamespace(copy_id=str(c))) for a, c in rows}
    replies = stage(ops.writer)
    first = await replies.receive(mail(copies[SB_B2], SB_B2, "Übernommen.", "<b2@kunde-b.example>"))
    assert first.startswith("250"), first
    second = await replies.receive(mail(copies[SB_B1], SB_B1, "Auch ich.", "<b1@kunde-b.example>"))
    assert "held" in second, second
    ((held_id,),) = await ops.web.sql("SELECT held_id FROM held_replies")
    return str(held_id)


async def test_an_operator_lists_and_releases_a_held_reply_once(ops: Ops) -> None:
    held_id = await a_held_reply(ops)
    browser = await logged_in(ops)
    base = f"/portfolios/{MUSTER}/held"
    listed = await browser.client.get(base)
    assert listed.status_code == 200
    page = text_of(listed.text)
    assert held_id in page
    assert SB_B1 in page
    assert f"mit der Antwort von {SB_B2}" in page
    assert f'action="{base}/{held_id}/release"' in listed.text
    assert (await browser.client.get(f"/portfolios/{MUSTER}")).text.count(base) == 1

    released = await browser.post(f"{base}/{held_id}/release", from_page=base)
    assert released.status_code == 303
    assert released.headers["location"] == f"{base}?done={held_id}&state=released"
    assert ops.wakes == [1], "the fan-out and the relay were told at once"
    notice = text_of((await browser.client.get(released.headers["location"])).text)
    assert f"Zurückgehaltene Antwort {held_id}: freigegeben" in notice
    assert "Keine Antwort wird zurückgehalten." in notice
    [event] = await ops.web.events("reply.released")
    assert event["actor"] == f"web:{OPERATOR}"
    assert len(await ops.web.sql("SELECT id FROM relays")) == 2
    # Once: withdrawing it now changes nothing, and says what it is.
    again = await browser.post(f"{base}/{held_id}/withdraw", from_page=base)
    assert again.headers["location"] == f"{base}?done={held_id}&state=released"
    assert await ops.web.events("reply.withdrawn") == []


async def test_a_portfolio_admin_of_another_portfolio_decides_nothing(ops: Ops) -> None:
    held_id = await a_held_reply(ops)
    zwei = await logged_in(ops, ZWEI, ZWEI_PASSWORD)
    own = await zwei.client.get(f"/portfolios/{OTHER}/held")
    assert own.status_code == 200
    assert held_id not in own.text
    assert (await zwei.client.get(f"/portfolios/{MUSTER}/held")).status_code == 404
    for action in ("release", "withdraw"):
        for portfolio in (MUSTER, OTHER):
            refused = await zwei.post(f"/portfolios/{portfolio}/held/{held_id}/{action}")
            assert refused.status_code == 404, (action, portfolio)
    assert (await zwei.client.get(f"/portfolios/{OTHER}/held/h123/release")).status_code in (404, 405)
    assert await ops.web.sql("SELECT state FROM held_replies") == [("held",)]
    assert await ops.web.events("reply.released") == await ops.web.events("reply.withdrawn") == []
