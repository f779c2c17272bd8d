"""Bad input at the submission listener: each gets its own clear answer, and the listener keeps serving."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.db.engine import create_engine, session_factory
from gateway.db.models import EventRow
from tests.conftest import a_database
from tests.e2e.clients import login, raw_message, send_raw, stored
from tests.e2e.conftest import LOGIN, PASSWORD, RunningGateway, prepare
from tests.seed import ADDRESS

SB_A1 = ADDRESS["SB-A1"]


@pytest.fixture(scope="module")
def limited(
    tmp_path_factory: pytest.TempPathFactory, module_database_kind: str, request: pytest.FixtureRequest
) -> Iterator[RunningGateway]:
    """One gateway for the tests below that use it: each sends mail of its own and looks only at that."""
    place = tmp_path_factory.mktemp("limited")
    with a_database(module_database_kind, place, request) as database_url:
        gateway = prepare(
            place,
            database_url,
            max_message_size="64KiB",
            max_recipients=3,
            idle_timeout=1.5,
            max_line_length=998,
            # Longer than idle_timeout: the delay of a failed login's answer is ours, not the client's
            # idleness (test_authentication_answers).
            auth_failure_delay=3.0,
        )
        gateway.start()
        try:
            yield gateway
        finally:
            gateway.stop()


def still_serving(gateway: RunningGateway) -> None:
    with login(gateway) as client:
        code, reply = send_raw(client, raw_message(b"still here") + b".\r\n")
    assert code == 250, reply


def test_too_big(limited: RunningGateway) -> None:
    with login(limited) as client:
        code, reply = send_raw(
            client, raw_message(b"big", b"x" * 70 + b"\r\n") * 1 + (b"y" * 78 + b"\r\n") * 900 + b".\r\n"
        )
        assert (code, reply[:5]) == (552, b"5.3.4")
        code, reply = client.docmd("MAIL FROM:<ams@makler-muster.example> SIZE=10000000")
        assert (code, reply[:5]) == (552, b"5.3.4")
    still_serving(limited)


def test_too_many_and_unknown_recipients(limited: RunningGateway) -> None:
    with login(limited) as client:
        client.mail(LOGIN)
        code, reply = client.rcpt("nobody@kunde-a.example")
        assert (code, reply[:5]) == (550, b"5.1.1")
        code, reply = client.rcpt("ams@makler-muster.example")  # the back office itself is no member
        assert code == 550
        for name in ("SB-A1", "SB-A2", "GF-A"):
            assert client.rcpt(ADDRESS[name])[0] == 250
        code, reply = client.rcpt(ADDRESS["GF-B"])
        assert (code, reply[:5]) == (452, b"4.5.3")
    still_serving(limited)


def test_authentication_answers(limited: RunningGateway) -> None:
    with smtplib.SMTP("127.0.0.1", limited.port, timeout=30) as client:
        client.ehlo("ams.example")
        code, reply = client.docmd("MAIL FROM:<ams@makler-muster.example>")
        assert (code, reply[:5]) == (530, b"5.7.0")
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
            client.login(LOGIN, "not the password")
        assert wrong.value.smtp_code == 535
        assert wrong.value.smtp_error.startswith(b"5.7.8")
        # The answer came after the failure delay, longer than idle_timeout: a session waiting for our
        # answer is not idle, and is not cut while we make it wait.
        assert time.monotonic() - started >= 2.9, "a failed login costs time"
        client.login(LOGIN, PASSWORD)
    still_serving(limited)


def test_long_line_is_refused_and_the_listener_goes_on(limited: RunningGateway) -> None:
    with login(limited) as client:
        code, reply = send_raw(client, raw_message(b"long", b"z" * 1200 + b"\r\n") + b".\r\n")
        assert (code, reply[:5]) == (500, b"5.5.2")
        code, reply = send_raw(client, raw_message(b"short after long", b"z" * 998 + b"\r\n") + b".\r\n")
        assert code == 250, reply


def test_idle_client_is_disconnected(limited: RunningGateway) -> None:
    # The client stays silent; the gateway hangs up after idle_timeout (1.5 s). The socket's timeout only
    # catches a gateway that never does.
    sock = socket.create_connection(("127.0.0.1", limited.port), timeout=30)
    try:
        assert sock.recv(1024).startswith(b"220")
        rest = sock.recv(1024)
        assert rest in (b"", b"421 4.4.2 Idle too long, closing\r\n") or rest.startswith(b"421")
    finally:
        sock.close()


def test_slow_client_in_data_is_disconnected_and_nothing_is_stored(limited: RunningGateway) -> None:
    before = len(stored(limited.database_url))
    client = login(limited)
    client.mail(LOGIN)
    client.rcpt(SB_A1)
    client.putcmd("data")
    assert client.getreply()[0] == 354
    assert client.sock is not None
    client.sock.sendall(b"Subject: slow\r\n\r\nfirst line\r\n")
    # Then silence past idle_timeout: the gateway hangs up (421 4.4.2, or only the close) without
    # waiting for the rest. The socket's timeout only catches a gateway that never does.
    client.sock.settimeout(30)
    try:
        said = client.sock.recv(1024)
    except ConnectionError:
        said = b""
    client.close()
    assert said == b"" or said.startswith(b"421 4.4.2"), said
    assert len(stored(limited.database_url)) == before
    still_serving(limited)


# --- odd but acceptable mail: stored byte for byte ---------------------------------------------------------


ODD = {
    "broken-mime": raw_message(
        b"broken mime",
        b"--nope\r\nContent-Type: text/plain\r\n\r\nno closing boundary\r\n",
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n',
    ),
    "nul-bytes": raw_message(b"nul \x00 in subject", b"body with \x00 nul\r\n"),
    "8bit-header": raw_message("Schäden und Übergabe".encode("latin-1")),
    "rfc2047-latin1": raw_message(b"=?iso-8859-1?q?Sch=E4den_=FCbergeben?="),
    "rfc2047-cp1252": raw_message(b"=?windows-1252?q?=80_Rechnung_=84Entwurf=93?="),
    "rfc2047-newline": raw_message(b"=?utf-8?q?harmless=0D=0ABcc:_evil@example.org?="),
}


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_mail_is_stored_byte_for_byte(limited: RunningGateway, name: str) -> None:
    data = ODD[name]
    with login(limited) as client:
        code, reply = send_raw(client, data + b".\r\n")
    assert code == 250, reply
    gateway_id = reply.decode().split()[3]
    [row] = [m for m in stored(limited.database_url) if m.gateway_id == gateway_id]
    assert row.raw == data
    limited.settled("copy")  # its copies are in the mailboxes now
    copies = limited.copies_of("")
    [copy] = [m for m in copies[SB_A1] if m["X-Gateway-Vorgang"] and row.message_id == m["Message-ID"]]
    assert copy["Bcc"] is None, "a decoded newline never becomes a header of its own"
    assert copy.get_all("X-Gateway-Copy-Id") is not None
    assert len(copy.get_all("X-Gateway-Copy-Id") or []) == 1


def test_missing_message_id_is_assigned_and_recorded(limited: RunningGateway) -> None:
    data = (
        b"From: ams@makler-muster.example\r\nTo: " + SB_A1.encode() + b"\r\nSubject: ohne id\r\n\r\nText\r\n"
    )
    with login(limited) as client:
        code, reply = send_raw(client, data + b".\r\n")
    assert code == 250, reply
    [row] = [m for m in stored(limited.database_url) if m.subject == "ohne id"]
    assert row.raw == data
    assert row.message_id_assigned
    assert row.message_id == f"<{row.gateway_id}@gateway.test.example>"
    copies = limited.wait_for_copies("ohne id", 2)
    assert {str(c[0]["Message-ID"]) for c in copies.values()} == {row.message_id}

    async def event() -> EventRow | None:
        engine = create_engine(limited.database_url)
        try:
            async with session_factory(engine)() as session:
                return await session.scalar(select(EventRow).where(EventRow.message_id == row.id))
        finally:
            await engine.dispose()

    accepted = asyncio.run(event())
    assert accepted is not None
    assert accepted.detail["message_id_assigned"] is True


# --- SMTP smuggling -------------------------------------------------------------------------------------


def test_bare_lf_is_normalised(limited: RunningGateway) -> None:
    data = (
        b"From: ams@makler-muster.example\nTo: "
        + SB_A1.encode()
        + b"\nSubject: bare lf\n\nline one\nline two\r\n"
    )
    with login(limited) as client:
        code, reply = send_raw(client, data + b".\r\n")
    assert code == 250, reply
    [row] = [m for m in stored(limited.database_url) if m.subject == "bare lf"]
    assert row.raw == data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def test_lf_dot_crlf_never_ends_a_message_early(limited: RunningGateway) -> None:
    smuggled = (
        b"MAIL FROM:<ams@makler-muster.example>\r\nRCPT TO:<" + ADDRESS["GF-A"].encode() + b">\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nevil\r\n"
    )
    data = raw_message(b"carrier", b"before\n.\r\n" + smuggled) + b".\r\n"
    with login(limited) as client:
        code, reply = send_raw(client, data)
        assert code == 250, reply
        assert client.noop()[0] == 250
    rows = stored(limited.database_url)
    assert [m.subject for m in rows if m.subject in ("carrier", "smuggled")] == ["carrier"]
    [carrier] = [m for m in rows if m.subject == "carrier"]
    assert b"Subject: smuggled" in carrier.raw


# --- TLS on a public listener ---------------------------------------------------------------------------


def test_auth_needs_tls_on_a_public_listener(tmp_path: Path, database_url: str) -> None:
    gateway = prepare(tmp_path, database_url)
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    gateway.cli(
        "tls", "selfsigned", "--cert", str(cert), "--key", str(key), "--hostname", "gateway.test.example"
    )
    config = gateway.config.read_text(encoding="utf-8").replace(
        "[listeners.submission]\nport = 0\n",
        f'[listeners.submission]\nport = 0\nlocal_only = false\ntls_cert = "{cert}"\ntls_key = "{key}"\n',
    )
    gateway.config.write_text(config, encoding="utf-8")
    gateway.start()
    try:
        with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
            client.ehlo("ams.example")
            assert client.has_extn("starttls")
            assert not client.has_extn("auth")
            code, reply = client.docmd("AUTH PLAIN AGFtc0BtYWtsZXItbXVzdGVyLmV4YW1wbGUAeA==")
            assert (code, reply[:6]) == (538, b"5.7.11")
            context = ssl.create_default_context(cafile=str(cert))
            client.starttls(context=context)
            client.ehlo("ams.example")
            assert client.has_extn("auth")
            client.login(LOGIN, PASSWORD)
            client.sendmail(LOGIN, [SB_A1], raw_message(b"over tls"))
        assert gateway.wait_for_copies("over tls", 2)
    finally:
        gateway.stop()


def test_a_client_over_its_message_rate_is_told_to_slow_down(tmp_path: Path, database_url: str) -> None:
    gateway = prepare(tmp_path, database_url, max_messages_per_minute_per_client=3)
    gateway.start()
    try:
        with login(gateway) as client:
            for _ in range(3):
                assert send_raw(client, raw_message(b"within the rate") + b".\r\n")[0] == 250
            code, reply = client.docmd("MAIL FROM:<ams@makler-muster.example>")
            assert (code, reply[:5]) == (451, b"4.7.1")
            assert client.noop()[0] == 250, "the session goes on"
    finally:
        gateway.stop()
