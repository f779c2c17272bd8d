"""What a mail may claim, where it belongs and what of it is stored, against the real ``gateway serve``.

A second portfolio, makler-zwei, has its own back office (ams2, relaying to the same sink as ams) and its
own intake address. Each test runs on SQLite and PostgreSQL; no mailbox backend is under test here beyond
the Maildirs the copies land in.

- A back office speaks only for itself: MAIL FROM and From: of another back office or a stranger are
  refused with 550 5.7.1 naming its own addresses; replies go to the back office as the directory names it.
- A portfolio is decided once: the address a mail was sent to decides it; a reply code of another
  portfolio in References never moves it.
- Values too long for the records are refused where they arrive, and never cost other mail its 250.
- A member's server that sends the same reply again hears 250 with the stored reply's id.
- Auto-replies pass the sender checks before anything is stored; what is recorded of them is capped.

Most tests share one gateway and back-office sink per module and database (``gateway`` with
``backoffice``): each writes under subjects and Message-IDs of its own and counts only the rows that came
after it began. The two that change the directory (an address, a login) start their own (``own_gateway``).
"""

from __future__ import annotations

import re
import smtplib
import threading
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from gateway.db.models import MessageRow, PortfolioRow
from gateway.db.writer import sync_url
from tests.e2e.clients import (
    copy_for,
    events_of,
    message,
    reply_address_of,
    send_from_backoffice,
    send_reply,
    smtp,
    wait_until,
)
from tests.e2e.conftest import (
    INTAKE,
    LOGIN,
    PASSWORD,
    PORTFOLIO,
    REPLY_DOMAIN,
    BackOfficeSink,
    RunningGateway,
    a_shared_gateway,
    configure,
    prepare,
)
from tests.seed import ADDRESS

ZWEI = "makler-zwei"
ZWEI_BACKOFFICE = "ams@makler-zwei.example"
ZWEI_PASSWORD = "zwei-password-123"
ZWEI_MEMBER = "kunde@zwei.example"
ZWEI_INTAKE = "neu@makler-zwei.example"


def add_zwei(running: RunningGateway, tmp_path: Path, sink: BackOfficeSink) -> None:
    """Put makler-zwei beside makler-muster in the prepared (not started) gateway, relaying to ``sink``.

    SB-B2 is a member of both portfolios (a customer's clerk who deals with two brokers).
    """
    zwei = tmp_path / "zwei.yaml"
    zwei.write_text(
        "version: 1\nportfolios:\n  - name: makler-zwei\n    backoffices:\n"
        f"      - name: ams2\n        ams_version: 4.8.0.64470\n        addresses: [{ZWEI_BACKOFFICE}]\n"
        f"        relay: {{host: 127.0.0.1, port: {sink.port}, tls: none}}\n"
        f"    members:\n      - {{address: {ZWEI_MEMBER}, name: Zwei}}\n"
        f"      - {{address: {ADDRESS['SB-B2']}, name: SB-B2 bei Zwei}}\n",
        encoding="utf-8",
    )
    running.cli("directory", "load", str(zwei))
    password = tmp_path / "zwei.password"
    password.write_text(ZWEI_PASSWORD + "\n", encoding="utf-8")
    running.cli("backoffice", "password", "ams2", "-p", ZWEI, "--password-file", str(password))
    intake = f'"{INTAKE}" = "{PORTFOLIO}"\n'
    config = running.config.read_text(encoding="utf-8")
    running.config.write_text(config.replace(intake, intake + f'"{ZWEI_INTAKE}" = "{ZWEI}"\n'), "utf-8")


@pytest.fixture(scope="module")
def shared_relaying(
    tmp_path_factory: pytest.TempPathFactory,
    module_database_kind: str,
    shared_sink: BackOfficeSink,
    request: pytest.FixtureRequest,
) -> Iterator[RunningGateway]:
    """The module's gateway: Maildirs, makler-zwei beside makler-muster, relaying to ``shared_sink``."""
    with a_shared_gateway(
        tmp_path_factory,
        module_database_kind,
        "maildir",
        request,
        shared_sink,
        before_start=lambda running, place: add_zwei(running, place, shared_sink),
    ) as running:
        yield running


@pytest.fixture
def gateway(shared_relaying: RunningGateway, backoffice: BackOfficeSink) -> RunningGateway:
    """The module's gateway, relaying to ``backoffice``."""
    return shared_relaying


@pytest.fixture
def own_gateway(tmp_path: Path, database_url: str, sink: BackOfficeSink) -> Iterator[RunningGateway]:
    """A gateway of this test's own, as the module's, relaying to ``sink``: for a test that changes
    the directory."""
    running = prepare(tmp_path, database_url)
    configure(running, sink, tmp_path)
    add_zwei(running, tmp_path, sink)
    running.start()
    yield running
    if running.process is not None and running.process.poll() is None:
        running.stop()
    print("".join(running.log))  # shown by pytest when the test failed


def stored_messages(database_url: str, **where: object) -> list[dict[str, object]]:
    """Rows of ``messages`` (with their portfolio's name) matching ``where``, straight from the database."""
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            query = select(
                MessageRow.gateway_id,
                MessageRow.message_id,
                MessageRow.in_reply_to,
                MessageRow.kind,
                MessageRow.size,
                func.length(MessageRow.raw).label("recorded"),
                PortfolioRow.name.label("portfolio"),
            ).join(PortfolioRow, PortfolioRow.id == MessageRow.portfolio_id)
            for name, value in where.items():
                query = query.where(getattr(MessageRow, name) == value)
            return [dict(row._mapping) for row in connection.execute(query.order_by(MessageRow.id))]
    finally:
        engine.dispose()


def zwei_message(subject: str) -> EmailMessage:
    msg = message(ZWEI_MEMBER, subject)
    msg.replace_header("From", f"Makler Zwei <{ZWEI_BACKOFFICE}>")
    return msg


# --- a back office speaks only for itself (issue 13 item 4) ---------------------------------------------


def test_a_back_office_may_send_only_from_its_own_addresses(gateway: RunningGateway) -> None:
    with smtp(gateway) as client:
        for foreign in (ZWEI_BACKOFFICE, "ceo@bank.example"):
            code, text = client.mail(foreign)
            assert (code, text[:5]) == (550, b"5.7.1"), text
            assert b"may send only from ams@makler-muster.example" in text, text
            client.rset()

        for sender in (LOGIN, ""):  # its own address, and the null sender (docs/security.md)
            for claimed in (ZWEI_BACKOFFICE, "CEO <ceo@bank.example>"):
                forged = message(ADDRESS["SB-B1"], "Überweisung")
                forged.replace_header("From", claimed)
                answer = client.mail(sender)
                assert answer[0] == 250, (sender, answer)
                assert client.rcpt(ADDRESS["SB-B1"])[0] == 250
                code, text = client.data(forged.as_bytes())
                assert (code, text[:5]) == (550, b"5.7.1"), text
                assert b"may send only from ams@makler-muster.example" in text, text

        own = message(ADDRESS["SB-B1"], "Null sender, own From")
        assert client.mail("")[0] == 250
        assert client.rcpt(ADDRESS["SB-B1"])[0] == 250
        code, text = client.data(own.as_bytes())
        assert code == 250, text
    assert gateway.copies_of("Überweisung") == {}


def test_replies_go_to_the_back_office_the_directory_names(
    own_gateway: RunningGateway, sink: BackOfficeSink, tmp_path: Path
) -> None:
    """The relay's recipient comes from the directory as it is when the reply arrives, not from the
    answered mail's From: after the back office's address changed, replies go to the new one."""
    send_from_backoffice(own_gateway, ADDRESS["SB-B1"], "Adresswechsel", "<moved@ams.example>")
    copy = copy_for(own_gateway, "SB-B2", "Adresswechsel")
    moved = tmp_path / "moved.yaml"
    directory = (tmp_path / "directory.yaml").read_text(encoding="utf-8")
    moved.write_text(
        directory.replace("addresses: [ams@makler-muster.example]", "addresses: [post@makler-muster.example]")
    )
    own_gateway.cli("directory", "load", str(moved))

    reply = EmailMessage()
    reply["From"] = ADDRESS["SB-B2"]
    reply["To"] = f"ams@makler-muster.example, {reply_address_of(copy)}, ceo@bank.example"
    reply["Subject"] = "Re: Adresswechsel"
    reply["Message-ID"] = "<moved-reply@kunde-b.example>"
    reply["In-Reply-To"] = str(copy["Message-ID"])
    reply.set_content("Fotos anbei.\n")
    code, text = send_reply(own_gateway, reply.as_bytes(), reply_address_of(copy), ADDRESS["SB-B2"])
    assert code == 250, text
    (relayed,) = sink.wait_for(1)
    assert relayed.rcpt_tos == ["post@makler-muster.example"]


# --- a portfolio is decided once (issue 13 item 5) ------------------------------------------------------


def test_the_intake_address_decides_the_portfolio_not_a_token_in_references(
    gateway: RunningGateway, backoffice: BackOfficeSink
) -> None:
    database_url = gateway.database_url
    send_from_backoffice(gateway, ADDRESS["SB-B1"], "Muster-Vorgang", "<muster-1@ams.example>")
    copy = copy_for(gateway, "SB-B2", "Muster-Vorgang")
    token = reply_address_of(copy).partition("@")[0].removeprefix("reply+")
    token_id = f"<{token}@{REPLY_DOMAIN}>"
    assert token_id in str(copy["References"]) or token_id in str(copy["Message-ID"]), (
        "the copy names its reply code among its ids, as the mail below carries it on"
    )

    mail = EmailMessage()
    mail["From"] = f"SB-B2 <{ADDRESS['SB-B2']}>"
    mail["To"] = ZWEI_INTAKE
    mail["Subject"] = "Neuer Schaden bei Zwei"
    mail["Message-ID"] = "<zwei-new@kunde-b.example>"
    mail["In-Reply-To"] = str(copy["Message-ID"])
    mail["References"] = f"{copy['Message-ID']} {token_id}"
    mail.set_content("Ein neuer Fall für Makler Zwei.\n")
    code, text = send_reply(gateway, mail.as_bytes(), ZWEI_INTAKE, ADDRESS["SB-B2"])
    assert code == 250, text
    vorgang = re.search(rb"VG-\d{4}-\d{6}", text)
    assert vorgang, text

    (relayed,) = backoffice.wait_for(1)
    assert relayed.rcpt_tos == [ZWEI_BACKOFFICE], "zwei's back office, not makler-muster's"
    assert relayed.message["X-Gateway-Vorgang"] == vorgang.group().decode()
    (stored,) = stored_messages(database_url, message_id="<zwei-new@kunde-b.example>")
    assert stored["portfolio"] == ZWEI

    # One destination per message: a reply address after zwei's intake address waits for its own mail.
    with smtplib.SMTP("127.0.0.1", gateway.mx_port, timeout=10) as client:
        client.ehlo("mx.kunde-b.example")
        client.mail(ADDRESS["SB-B2"])
        assert client.rcpt(ZWEI_INTAKE)[0] == 250
        code, text = client.rcpt(reply_address_of(copy))
        assert (code, text[:5]) == (452, b"4.5.3"), text
        code, text = client.rcpt(INTAKE)
        assert (code, text[:5]) == (452, b"4.5.3"), text


# --- values too long for the records (issue 12 item 6) --------------------------------------------------


def long_address(length: int) -> str:
    domain = "@makler-muster.example"
    return "a" * (length - len(domain)) + domain


def test_overlong_values_are_refused_where_they_arrive_and_spare_the_other_mail(
    gateway: RunningGateway,
) -> None:
    """The four values that made PostgreSQL fail a whole group commit, sent while eight mails of another
    portfolio are under way: each is answered for itself, and all eight are stored."""
    database_url = gateway.database_url
    zwei_before = len(stored_messages(database_url, portfolio_id=zwei_id(database_url)))
    long_sender = long_address(360)
    overlong_in_reply_to = " ".join(f"<earlier-{n:03d}-{'x' * 60}@ams.example>" for n in range(22))
    assert len(overlong_in_reply_to) > 1600
    folded_id = "<" + ".\r\n ".join("y" * 100 for _ in range(11)) + "@ams.example>"

    def zwei_client() -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", gateway.port, timeout=30)
        client.login(ZWEI_BACKOFFICE, ZWEI_PASSWORD)
        return client

    def muster_client() -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", gateway.port, timeout=30)
        client.login(LOGIN, PASSWORD)
        return client

    answers: dict[str, tuple[int, bytes]] = {}

    def send(name: str, client: smtplib.SMTP, sender: str, raw: bytes, ready: threading.Barrier) -> None:
        with client:
            code, text = client.mail(sender)
            if code == 250:
                code, text = client.rcpt(ZWEI_MEMBER if name.startswith("good") else ADDRESS["SB-B1"])
            ready.wait(timeout=20)  # every DATA at once, so the good ones share batches with the rest
            if code == 250:
                code, text = client.data(raw)
            answers[name] = (code, text)

    bad_from = message(ADDRESS["SB-B1"], "From too long")
    bad_from.replace_header("From", long_sender)
    long_reply = message(ADDRESS["SB-B1"], "In-Reply-To too long")
    raw_long_reply = (
        b"In-Reply-To: "
        + overlong_in_reply_to.replace(" ", "\r\n ").encode()
        + b"\r\n"
        + long_reply.as_bytes()
    )
    folded = message(ADDRESS["SB-B1"], "Message-ID folded")
    del folded["Message-ID"]
    raw_folded = b"Message-ID: " + folded_id.encode() + b"\r\n" + folded.as_bytes()
    sends: list[tuple[str, smtplib.SMTP, str, bytes]] = [
        (f"good {n}", zwei_client(), ZWEI_BACKOFFICE, zwei_message(f"Zwei gut {n}").as_bytes())
        for n in range(8)
    ]
    sends += [
        ("mail from", muster_client(), long_sender, message(ADDRESS["SB-B1"], "x").as_bytes()),
        ("from", muster_client(), LOGIN, bad_from.as_bytes()),
        ("in-reply-to", muster_client(), LOGIN, raw_long_reply),
        ("message-id", muster_client(), LOGIN, raw_folded),
    ]
    ready = threading.Barrier(len(sends))
    threads = [threading.Thread(target=send, args=(*s, ready)) for s in sends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert {n: a[0] for n, a in answers.items() if n.startswith("good")} == {
        f"good {n}": 250 for n in range(8)
    }
    assert (answers["mail from"][0], answers["mail from"][1][:5]) == (501, b"5.1.7"), answers
    assert (answers["from"][0], answers["from"][1][:5]) == (550, b"5.7.1"), answers
    assert (answers["message-id"][0], answers["message-id"][1][:5]) == (554, b"5.6.0"), answers
    # In-Reply-To is not indexed: stored, with as many whole ids in the record as fit its column.
    assert answers["in-reply-to"][0] == 250, answers
    (kept,) = stored_messages(database_url, subject="In-Reply-To too long")
    assert isinstance(kept["in_reply_to"], str)
    assert 0 < len(kept["in_reply_to"]) <= 998
    assert overlong_in_reply_to.startswith(kept["in_reply_to"])
    assert len(stored_messages(database_url, portfolio_id=zwei_id(database_url))) == zwei_before + 8

    with smtp(gateway) as client:
        code, text = client.rcpt(long_address(300)) if client.mail(LOGIN)[0] == 250 else (0, b"")
        assert (code, text[:5]) == (501, b"5.1.3"), text
    with smtplib.SMTP("127.0.0.1", gateway.mx_port, timeout=10) as client:
        client.ehlo("mx.kunde-b.example")
        code, text = client.mail(long_sender)
        assert (code, text[:5]) == (501, b"5.1.7"), text
        # Not UTF-8: no database could store it as the mail's envelope sender.
        client.send(b"MAIL FROM:<sb-b2\xff@kunde-b.example>\r\n")
        code, text = client.getreply()
        assert (code, text[:5]) == (501, b"5.1.7"), text


def test_a_message_the_database_refuses_costs_no_other_message_its_250(
    own_gateway: RunningGateway, database_url: str, tmp_path: Path
) -> None:
    """A value no listener check knows of: a login of 250 characters, which the event of each accepted
    message names (``backoffice:<login>``, a column of 200 on PostgreSQL). Its mail goes in at the same
    moment as eight mails of makler-zwei; PostgreSQL refuses it, and only it hears 451 (SQLite, which
    keeps no column lengths, stores it). The eight are stored either way."""
    long_login = "ams-" + "x" * 246
    password = tmp_path / "long.password"
    password.write_text("long-login-password-1\n", encoding="utf-8")
    own_gateway.cli(
        "backoffice",
        "password",
        "ams",
        "-p",
        PORTFOLIO,
        "--login",
        long_login,
        "--password-file",
        str(password),
    )

    answers: dict[str, tuple[int, bytes]] = {}

    def send(name: str, login: str, secret: str, mail: EmailMessage, ready: threading.Barrier) -> None:
        with smtplib.SMTP("127.0.0.1", own_gateway.port, timeout=30) as client:
            client.login(login, secret)
            sender = str(mail["From"].addresses[0].addr_spec)
            assert client.mail(sender)[0] == 250
            assert client.rcpt(str(mail["To"]))[0] == 250
            ready.wait(timeout=20)  # every DATA at once: they share the acceptance stage's batches
            answers[name] = client.data(mail.as_bytes())

    sends = [
        (f"good {n}", ZWEI_BACKOFFICE, ZWEI_PASSWORD, zwei_message(f"Zwei gleichzeitig {n}"))
        for n in range(8)
    ]
    sends.insert(4, ("long login", long_login, "long-login-password-1", message(ADDRESS["SB-B1"], "Lang")))
    ready = threading.Barrier(len(sends))
    threads = [threading.Thread(target=send, args=(*s, ready)) for s in sends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert {n: a[0] for n, a in answers.items() if n.startswith("good")} == {
        f"good {n}": 250 for n in range(8)
    }
    assert len(stored_messages(database_url, portfolio_id=zwei_id(database_url))) == 8
    if database_url.startswith("postgresql"):
        assert answers["long login"][0] == 451, answers["long login"]
        assert stored_messages(database_url, subject="Lang") == []
    else:
        assert answers["long login"][0] == 250, answers["long login"]


def zwei_id(database_url: str) -> int:
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            return int(connection.scalar(select(PortfolioRow.id).where(PortfolioRow.name == ZWEI)) or 0)
    finally:
        engine.dispose()


# --- a resent reply (issue 12 item 7) -------------------------------------------------------------------


def test_a_resent_reply_is_answered_with_the_stored_one(
    gateway: RunningGateway, backoffice: BackOfficeSink
) -> None:
    database_url = gateway.database_url
    send_from_backoffice(gateway, ADDRESS["SB-B1"], "Zweimal", "<twice@ams.example>")
    copy = copy_for(gateway, "SB-B2", "Zweimal")
    reply = EmailMessage()
    reply["From"] = ADDRESS["SB-B2"]
    reply["To"] = reply_address_of(copy)
    reply["Subject"] = "Re: Zweimal"
    reply["Message-ID"] = "<twice-reply@kunde-b.example>"
    reply["In-Reply-To"] = str(copy["Message-ID"])
    reply.set_content("Einmal reicht.\n")
    first = send_reply(gateway, reply.as_bytes(), reply_address_of(copy), ADDRESS["SB-B2"])
    again = send_reply(gateway, reply.as_bytes(), reply_address_of(copy), ADDRESS["SB-B2"])
    assert first[0] == 250, first
    assert again == first, "the same answer, naming the stored reply"
    assert len(stored_messages(database_url, message_id="<twice-reply@kunde-b.example>")) == 1
    assert len(backoffice.wait_for(1)) == 1
    assert not wait_until(lambda: len(backoffice.received) > 1, timeout=1.0), "relayed once"

    # The same Message-ID with other bytes is another mail; it is stored as such.
    reply.set_content("Doch noch etwas.\n")
    other = send_reply(gateway, reply.as_bytes(), reply_address_of(copy), ADDRESS["SB-B2"])
    assert other[0] == 250, other
    assert other != first


# --- auto-replies and bounces at reply addresses (issue 12 item 8) --------------------------------------


def auto_reply(sender: str, to: str, body_size: int) -> bytes:
    line = b"Ich bin im Urlaub und lese keine Mail bis zum 5. Januar; bitte wenden Sie sich an Kollegen.\r\n"
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: Abwesenheit\r\nAuto-Submitted: auto-replied\r\n"
        f"Message-ID: <ooo-{uuid.uuid4().hex}@kunde-b.example>\r\n\r\n"
    ).encode() + line * (body_size // len(line))


def test_auto_replies_are_checked_before_they_are_stored_and_recorded_capped(
    gateway: RunningGateway, backoffice: BackOfficeSink
) -> None:
    database_url = gateway.database_url
    # What earlier tests on the module's gateway stored and logged; this test counts what comes after.
    earlier = {kind: len(stored_messages(database_url, kind=kind)) for kind in ("auto-reply", "bounce")}
    earlier_events = len(events_of(database_url, "reply.not_an_answer"))
    send_from_backoffice(gateway, ADDRESS["SB-B1"], "Urlaub", "<holiday@ams.example>")
    copy = copy_for(gateway, "SB-B2", "Urlaub")
    address = reply_address_of(copy)

    code, text = send_reply(gateway, auto_reply("stranger@else.example", address, 2_000_000), address, "")
    assert (code, text[:5]) == (550, b"5.7.1"), "a stranger's auto-reply is refused like its reply"
    assert stored_messages(database_url, kind="auto-reply")[earlier["auto-reply"] :] == []

    raw = auto_reply(ADDRESS["SB-B2"], address, 2_000_000)
    code, text = send_reply(gateway, raw, address, ADDRESS["SB-B2"])
    assert code == 250, text
    assert b"not relayed" in text
    (recorded,) = stored_messages(database_url, kind="auto-reply")[earlier["auto-reply"] :]
    assert recorded["size"] == len(raw)
    assert isinstance(recorded["recorded"], int)
    assert 60_000 < recorded["recorded"] <= 64 * 1024
    (event,) = events_of(database_url, "reply.not_an_answer")[earlier_events:]
    assert event["recorded_size"] == recorded["recorded"]

    bounce = (
        (
            f"From: MAILER-DAEMON@mx.kunde-b.example\r\nTo: {address}\r\nSubject: Undelivered Mail\r\n"
            "Message-ID: <bounce-1@mx.kunde-b.example>\r\nContent-Type: multipart/report; "
            'report-type=delivery-status; boundary="b"\r\n\r\n--b\r\n\r\nCould not deliver.\r\n'
        ).encode()
        + (b"x" * 76 + b"\r\n") * 5000
        + b"--b--\r\n"
    )
    code, text = send_reply(gateway, bounce, address, "")
    assert code == 250, text
    assert b"not relayed" in text
    (kept,) = stored_messages(database_url, kind="bounce")[earlier["bounce"] :]
    assert isinstance(kept["recorded"], int)
    assert kept["recorded"] <= 64 * 1024
    assert backoffice.wait_for(1, timeout=1.0) == [], "nothing of it is relayed"
