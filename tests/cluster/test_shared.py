"""Two nodes on one PostgreSQL database while neither fails (issue 17, "What it must show"): a burst split
over both, a member answering through the other node's MX a copy one node wrote, and an admin changing a
release while both take mail. Every copy is in its member's mailbox exactly once, every relay reaches the
back office once.

The leases are the long ones (``LONG_LEASE``): nothing here needs a take-over, and on a loaded machine a
node can take longer than the short test lease to write what it was handed, and the other node would
take it over (fencing keeps that to one write; ``test_failover.py`` shows it on purpose).
"""

from __future__ import annotations

import json
import smtplib
import time
from email.message import EmailMessage

import pytest

from tests.cluster.conftest import (
    HOST,
    LOGIN,
    LONG_LEASE,
    PASSWORD,
    PORTFOLIO,
    Cluster,
    accepted,
    all_answers,
    message_id,
    recipient,
    senders,
)
from tests.e2e.clients import reply_address_of, send_reply, wait_until
from tests.seed import ADDRESS, SEEN_BY

pytestmark = pytest.mark.postgres


@pytest.fixture
def cluster_lease() -> float:
    return LONG_LEASE


WITH_GF = "Kunde B mit GF"
BURST = 120


@pytest.mark.parametrize("cluster_backend", ["maildir", "imap"])
def test_a_burst_split_over_both_nodes(cluster: Cluster) -> None:
    clients = senders(cluster, "split", BURST)
    for client in clients:
        client.start()
    for client in clients:
        client.join(timeout=120)
    answers = all_answers(clients)
    assert accepted(clients) == set(range(BURST)), [a for a in answers if a.code != 250][:5]
    by_node = {name: sum(1 for a in answers if a.code == 250 and a.node == name) for name in ("n1", "n2")}
    assert min(by_node.values()) >= BURST // 3, f"both nodes took a share: {by_node}"
    cluster.assert_burst_reached_its_audience("split", range(BURST))


@pytest.mark.parametrize("cluster_backend", ["imap"])
def test_a_reply_through_the_other_nodes_mx(cluster: Cluster) -> None:
    """The back office writes to SB-B1 at n1, whose fan-out writes the copies into Dovecot; SB-B2
    answers its copy at n2's MX. n2 reads the token n1 signed (the shared key), relays the reply once
    with SB-B2 as sender, writes it once for SB-B1 and GF-B, and marks the original answered."""
    original = "<schaden-4711@ams.example>"
    mail = EmailMessage()
    mail["From"] = f"Makler Muster <{LOGIN}>"
    mail["To"] = ADDRESS["SB-B1"]
    mail["Subject"] = "Schaden 4711"
    mail["Message-ID"] = original
    mail.set_content("Bitte senden Sie uns die Schadenfotos.\n")
    with smtplib.SMTP(HOST, cluster.n1.port, timeout=30) as client:
        client.login(LOGIN, PASSWORD)
        client.send_message(mail)
    cluster.quiet()
    # The fan-out logs a write after recording it: the line may follow the database by a moment.
    assert wait_until(lambda: cluster.n1.logged(r"wrote 1 copy for sb-b2@kunde-b\.example")), "n1 wrote it"
    assert not cluster.n2.logged(r"for sb-b2@kunde-b\.example"), "n2 wrote nothing for SB-B2 yet"
    stored = cluster.admin.stored(ADDRESS["SB-B2"])
    (copy,) = [c.message for c in stored if c.message["Message-ID"] == original]

    reply = EmailMessage()
    reply["From"] = f"SB-B2 <{ADDRESS['SB-B2']}>"
    reply["To"] = str(copy["Reply-To"])
    reply["Subject"] = f"Re: {copy['Subject']}"
    reply["Message-ID"] = "<antwort-4711@kunde-b.example>"
    reply["In-Reply-To"] = original
    reply["References"] = str(copy["References"])
    reply.set_content("Die Fotos kommen morgen.\n")
    code, answer = send_reply(cluster.n2, reply.as_bytes(), reply_address_of(copy), ADDRESS["SB-B2"])
    assert code == 250, answer

    cluster.assert_relayed_once()
    (relayed,) = cluster.sink.received
    assert relayed.message["From"].addresses[0].addr_spec == ADDRESS["SB-B2"]
    assert relayed.message["X-Gateway-Actual-Sender"] == ADDRESS["SB-B2"]
    assert relayed.message["In-Reply-To"] == original
    assert relayed.rcpt_tos == [LOGIN]

    cluster.assert_every_copy_exactly_once()
    for person in ("SB-B1", "SB-B2", "GF-B"):
        stored = cluster.admin.stored(ADDRESS[person])
        answers = [c for c in stored if c.message["Message-ID"] != original]
        originals = [c for c in stored if c.message["Message-ID"] == original]
        assert len(answers) == (0 if person == "SB-B2" else 1), f"{person}: the reply's copies {answers}"
        assert [c.flags for c in originals] == [frozenset({"\\Answered"})], f"{person}: {originals}"


MESSAGES = 90


def test_a_release_change_while_both_nodes_take_mail(cluster: Cluster) -> None:
    """While the back office sends to all six people at both nodes, the admin turns "Vorgänge teilen"
    off for "Kunde B mit GF". Afterwards every message's copies are exactly whom ``gateway who-can-see``
    names now, each once: GF-B lost what SB-B1 and SB-B2 received before (revoked from the mailbox) and
    never got what came after; the clerks of B lost GF-B's."""
    clients = senders(cluster, "release", MESSAGES, per_session=3)
    for client in clients:
        client.start()
    deadline = time.monotonic() + 60
    while len(accepted(clients)) < MESSAGES // 3:
        assert time.monotonic() < deadline, "the burst got under way"
        time.sleep(0.01)
    cluster.cli("release", "set", WITH_GF, "--no-share-vorgaenge", "-p", PORTFOLIO)
    for client in clients:
        client.join(timeout=120)
    assert accepted(clients) == set(range(MESSAGES))

    stored = cluster.assert_every_copy_exactly_once()
    holders: dict[str, set[str]] = {}
    for copy in stored:
        if copy.state == "delivered" and copy.message_id is not None:
            holders.setdefault(copy.message_id, set()).add(copy.address)
    gateway_ids = {c.message_id: c.gateway_id for c in stored}
    # What the rule allows now, asked of the CLI once per person the burst wrote to.
    allowed: dict[str, set[str]] = {}
    for number in range(len(SEEN_BY)):
        result = cluster.cli("who-can-see", gateway_ids[message_id("release", number)], "--json")
        allowed[recipient(number)] = {row["address"] for row in json.loads(result.stdout)["audience"]}
    assert allowed["SB-B1"] == {ADDRESS["SB-B1"], ADDRESS["SB-B2"]}, "the change took effect"
    assert allowed["GF-B"] == {ADDRESS["GF-B"], ADDRESS["GF-A"]}
    wrong = [
        f"{message_id('release', n)} to {recipient(n)}: {sorted(holders.get(message_id('release', n), ()))}"
        for n in range(MESSAGES)
        if holders.get(message_id("release", n), set()) != allowed[recipient(n)]
    ]
    assert not wrong, "copies not exactly what who-can-see allows:\n" + "\n".join(wrong[:20])
    revoked = sum(1 for c in stored if c.state == "revoked")
    assert revoked, "the change took copies already delivered out of the mailboxes"
    print(f"\nrelease change mid-burst: {revoked} copies revoked, none left behind or written twice")
