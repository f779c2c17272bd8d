"""``gateway serve`` with ``[mailbox] backend = "imap"``: copies and flags in a real Dovecot.

The same flow as the Maildir tests, read back with Python's imaplib as the members: a back-office mail
to SB-B1 reaches SB-B1, SB-B2 and GF-B (DESIGN.md §3) and nobody else; SB-B2 answers from its copy;
every copy of the answered message carries \\Answered in Dovecot.
"""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
import time
from pathlib import Path

from tests.dovecot import Dovecot, private_dovecot
from tests.e2e.clients import client_reply, reply_address_of, send_from_backoffice, send_reply
from tests.e2e.conftest import LOGIN, PASSWORD, BackOfficeSink, RunningGateway, imap_gateway
from tests.seed import ADDRESS
from tests.stages.test_imap_binary import WITHOUT_BINARY

__all__ = ["imap_gateway"]  # its home is tests/e2e/conftest.py now; importing it from here still works


def imap_copies(dovecot: Dovecot, address: str) -> list[tuple[bytes, bytes]]:
    """(flags, header bytes) of every message in the member's INBOX, read as the member."""
    client = dovecot.client(address)
    try:
        client.select("INBOX")
        _, data = client.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER])")
        found = []
        for item in data:
            if isinstance(item, tuple):
                found.append((item[0], item[1]))
        return found
    finally:
        client.logout()


def wait_for(check: object, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return bool(check())  # type: ignore[operator]


def test_copies_and_answered_flags_in_dovecot(
    tmp_path: Path, database_url: str, dovecot: Dovecot, sink: BackOfficeSink
) -> None:
    gateway = imap_gateway(tmp_path, database_url, dovecot, sink)
    gateway.start()
    try:
        send_from_backoffice(gateway, ADDRESS["SB-B1"], "Schaden IMAP", "<imap-1@ams.example>")
        seeing = ("SB-B1", "SB-B2", "GF-B")
        assert wait_for(lambda: all(len(imap_copies(dovecot, ADDRESS[p])) == 1 for p in seeing))
        for person in set(ADDRESS) - set(seeing):
            assert imap_copies(dovecot, ADDRESS[person]) == [], f"{person} may not see it"
        ((_, header),) = imap_copies(dovecot, ADDRESS["SB-B2"])
        copy = email.message_from_bytes(header, policy=email.policy.default)
        assert copy["X-Gateway-Shared-Via"] == "Kunde B Sachbearbeiter"
        assert re.fullmatch(r"c[0-9a-f]{20}", str(copy["X-Gateway-Copy-Id"]))

        raw = client_reply("thunderbird", author=ADDRESS["SB-B2"], copy=copy, subject="Schaden IMAP")  # type: ignore[arg-type]
        code, text = send_reply(gateway, raw, reply_address_of(copy), ADDRESS["SB-B2"])  # type: ignore[arg-type]
        assert code == 250, text
        assert len(sink.wait_for(1)) == 1

        def answered_everywhere() -> bool:
            """Every copy of the answered message (not of the reply) carries \\Answered."""
            flags = [
                f
                for p in seeing
                for f, h in imap_copies(dovecot, ADDRESS[p])
                if email.message_from_bytes(h)["Message-ID"] == "<imap-1@ams.example>"
            ]
            return len(flags) == 3 and all(b"\\Answered" in f for f in flags)

        assert wait_for(answered_everywhere), [imap_copies(dovecot, ADDRESS[p]) for p in seeing]
    finally:
        gateway.stop()


def test_a_member_reading_with_imaplib_marks_it_read_for_the_release(
    tmp_path: Path, database_url: str, dovecot: Dovecot, sink: BackOfficeSink
) -> None:
    """SB-B1 reads (imaplib, \\Seen) in releases with read_sync = seen: SB-B2's and GF-B's copies follow,
    with the default poll interval of the flag watcher. How fast (the p95 of issue 5) is a figure of the
    machine for bench/fanout_imap.py, not asserted here."""
    gateway = imap_gateway(tmp_path, database_url, dovecot, sink)
    seen_directory = tmp_path / "directory.yaml"
    seen_directory.write_text(
        seen_directory.read_text(encoding="utf-8").replace("read_sync: answered", "read_sync: seen"),
        encoding="utf-8",
    )
    gateway.cli("directory", "load", str(seen_directory))
    gateway.start()
    seeing = ("SB-B1", "SB-B2", "GF-B")
    try:
        for number in range(5):
            message_id = f"<read-{number}@ams.example>"
            send_from_backoffice(gateway, ADDRESS["SB-B1"], f"Lesen {number}", message_id)

            def flags(person: str, message_id: str = message_id) -> bytes | None:
                for f, h in imap_copies(dovecot, ADDRESS[person]):
                    if email.message_from_bytes(h)["Message-ID"] == message_id:
                        return f
                return None

            assert wait_for(lambda: all(flags(p) is not None for p in seeing))
            reader = dovecot.client(ADDRESS["SB-B1"])
            try:
                reader.select("INBOX")
                _, found = reader.uid("SEARCH", "HEADER", "Message-ID", message_id)
                (uid,) = found[0].split()
                reader.uid("STORE", uid, "+FLAGS", "(\\Seen)")
            finally:
                reader.logout()
            assert wait_for(lambda: all(b"\\Seen" in (flags(p) or b"") for p in ("SB-B2", "GF-B")), 30)
    finally:
        gateway.stop()


def test_answered_and_off_releases_and_a_moved_copy_through_dovecot(
    tmp_path: Path, database_url: str, dovecot: Dovecot, sink: BackOfficeSink
) -> None:
    """With imaplib as the members: read_sync answered keeps SB-B1's \\Seen to SB-B1 until SB-B1 marks it
    answered, then every copy shows \\Answered; read_sync off carries nothing; with seen, GF-B's copy
    that GF-B moved into "Archiv" still gets \\Seen there."""
    gateway = imap_gateway(tmp_path, database_url, dovecot, sink)
    directory = tmp_path / "directory.yaml"
    seed = directory.read_text(encoding="utf-8")
    others = ("SB-B2", "GF-B")

    def flags(person: str, message_id: str) -> frozenset[str]:
        (found,) = gateway.flags_of(ADDRESS[person], message_id)
        return found

    def copy_id(person: str, message_id: str) -> str:
        (found,) = [
            str(m["X-Gateway-Copy-Id"])
            for m in gateway.mailbox(ADDRESS[person])
            if m["Message-ID"] == message_id
        ]
        return found

    def arrived(message_id: str) -> None:
        assert wait_for(
            lambda: all(len(gateway.flags_of(ADDRESS[p], message_id)) == 1 for p in ("SB-B1", *others))
        )

    gateway.start()
    try:
        # read_sync answered (the seed's setting): \Seen stays personal, \Answered is shared.
        send_from_backoffice(gateway, ADDRESS["SB-B1"], "Nur beantwortet", "<answered-1@ams.example>")
        arrived("<answered-1@ams.example>")
        mine = copy_id("SB-B1", "<answered-1@ams.example>")
        dovecot.member_stores(ADDRESS["SB-B1"], mine, "+FLAGS", "(\\Seen)")
        assert wait_for(lambda: "\\Seen" in flags("SB-B1", "<answered-1@ams.example>"))
        time.sleep(3)  # three flag-sync polls: a propagation would have happened by now
        assert all("\\Seen" not in flags(p, "<answered-1@ams.example>") for p in others)
        dovecot.member_stores(ADDRESS["SB-B1"], mine, "+FLAGS", "(\\Answered)")
        assert wait_for(lambda: all("\\Answered" in flags(p, "<answered-1@ams.example>") for p in others))
        assert all("\\Seen" not in flags(p, "<answered-1@ams.example>") for p in others)

        # read_sync off: nothing moves.
        directory.write_text(seed.replace("read_sync: answered", "read_sync: off"), encoding="utf-8")
        gateway.cli("directory", "load", str(directory))
        send_from_backoffice(gateway, ADDRESS["SB-B1"], "Nichts teilen", "<off-1@ams.example>")
        arrived("<off-1@ams.example>")
        dovecot.member_stores(
            ADDRESS["SB-B1"], copy_id("SB-B1", "<off-1@ams.example>"), "+FLAGS", "(\\Seen \\Answered)"
        )
        assert wait_for(lambda: {"\\Seen", "\\Answered"} <= flags("SB-B1", "<off-1@ams.example>"))
        time.sleep(3)
        assert all(flags(p, "<off-1@ams.example>") == frozenset() for p in others)

        # read_sync seen, GF-B filed the copy away first: the flag reaches it in "Archiv".
        directory.write_text(seed.replace("read_sync: answered", "read_sync: seen"), encoding="utf-8")
        gateway.cli("directory", "load", str(directory))
        send_from_backoffice(gateway, ADDRESS["SB-B1"], "Abgelegt", "<moved-1@ams.example>")
        arrived("<moved-1@ams.example>")
        dovecot.member_moves(ADDRESS["GF-B"], copy_id("GF-B", "<moved-1@ams.example>"), "Archiv")
        dovecot.member_stores(
            ADDRESS["SB-B1"], copy_id("SB-B1", "<moved-1@ams.example>"), "+FLAGS", "(\\Seen)"
        )

        def archived_and_seen() -> bool:
            copies = [
                c
                for c in gateway.stored(ADDRESS["GF-B"])
                if c.message["Message-ID"] == "<moved-1@ams.example>"
            ]
            return len(copies) == 1 and copies[0].folder == "Archiv" and "\\Seen" in copies[0].flags

        assert wait_for(archived_and_seen), gateway.stored(ADDRESS["GF-B"])
        assert "\\Seen" in flags("SB-B2", "<moved-1@ams.example>")
    finally:
        gateway.stop()


# --- NUL bytes: the copy is the bytes accepted, or the mail is refused (issue 13, item 10) ----------------

NUL_BODY = b"vor \x00 nach\r\n\x00\r\n"


def nul_mail(marker: str) -> bytes:
    return (
        f"From: ams@makler-muster.example\r\nTo: {ADDRESS['SB-A1']}\r\nSubject: {marker}\r\n"
        f"Message-ID: <{marker}@ams.example>\r\n\r\n"
    ).encode() + NUL_BODY


def submit_raw(gateway: RunningGateway, data: bytes, to: str) -> tuple[int, bytes]:
    """DATA exactly as given (smtplib's sendmail would not change NUL, but spell it out)."""
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        client.login(LOGIN, PASSWORD)
        client.mail(LOGIN)
        code, text = client.rcpt(to)
        assert code == 250, text
        client.putcmd("data")
        code, _ = client.getreply()
        assert code == 354
        assert client.sock is not None
        client.sock.sendall(data + b".\r\n")
        return client.getreply()


def binary_bodies(dovecot: Dovecot, address: str) -> dict[str, bytes]:
    """Subject (without the Vorgang tag) -> the body as a member's client fetches it with
    ``BINARY.PEEK[1]`` (RFC 3516)."""
    client = dovecot.client(address)
    try:
        client.select("INBOX", readonly=True)
        _, data = client.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)] BINARY.PEEK[1])")
    finally:
        client.logout()
    literals = [item[1] for item in data if isinstance(item, tuple)]
    return {
        header.decode().removeprefix("Subject:").strip().rpartition("] ")[2]: body
        for header, body in zip(literals[::2], literals[1::2], strict=True)
    }


def test_nul_bytes_reach_dovecot_as_they_were_accepted(
    tmp_path: Path, database_url: str, dovecot: Dovecot, sink: BackOfficeSink
) -> None:
    gateway = imap_gateway(tmp_path, database_url, dovecot, sink)
    gateway.start()
    try:
        code, text = submit_raw(gateway, nul_mail("mit-nul"), ADDRESS["SB-A1"])
        assert code == 250, text
        seeing = ("SB-A1", "SB-A2")
        assert wait_for(lambda: all("mit-nul" in binary_bodies(dovecot, ADDRESS[p]) for p in seeing))
        for person in seeing:
            body = binary_bodies(dovecot, ADDRESS[person])["mit-nul"]
            assert body == NUL_BODY, f"{person}'s copy: once b'vor \\x80 nach' (NUL made 0x80)"
    finally:
        gateway.stop()


def test_without_binary_mail_with_nul_is_refused_at_data_on_both_listeners(
    tmp_path: Path, database_url: str, sink: BackOfficeSink
) -> None:
    with private_dovecot(imap_capability=WITHOUT_BINARY) as dovecot:
        gateway = imap_gateway(tmp_path, database_url, dovecot, sink)
        gateway.start()
        try:
            code, text = submit_raw(gateway, nul_mail("mit-nul"), ADDRESS["SB-A1"])
            assert (code, text[:5]) == (554, b"5.6.0"), text
            assert b"NUL bytes" in text
            # The same mail without NUL goes through, and reaches Dovecot.
            plain = nul_mail("ohne-nul").replace(b"\x00", b"0")
            code, text = submit_raw(gateway, plain, ADDRESS["SB-A1"])
            assert code == 250, text
            assert wait_for(lambda: "ohne-nul" in binary_bodies(dovecot, ADDRESS["SB-A2"]))
            assert "mit-nul" not in binary_bodies(dovecot, ADDRESS["SB-A2"]), "nothing changed was stored"

            # A member's reply with NUL would be copied to the audience too: refused the same way.
            ((_, header),) = imap_copies(dovecot, ADDRESS["SB-A2"])
            copy = email.message_from_bytes(header, policy=email.policy.default)
            raw = (
                f"From: {ADDRESS['SB-A2']}\r\nTo: {copy['Reply-To']}\r\nSubject: Re: ohne-nul\r\n"
                f"In-Reply-To: {copy['Message-ID']}\r\n\r\n"
            ).encode() + NUL_BODY
            code, text = send_reply(gateway, raw, reply_address_of(copy), ADDRESS["SB-A2"])  # type: ignore[arg-type]
            assert (code, text[:5]) == (554, b"5.6.0"), text
            assert sink.wait_for(0, timeout=1) == [], "nothing relayed"
        finally:
            gateway.stop()
