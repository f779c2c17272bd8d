"""The seed's retroactivity through a real ``gateway serve``, on Maildir and on Dovecot (issue 6).

Mail is exchanged with SB-B1, SB-B2 and GF-B while "Kunde B mit GF" does not exist. Creating it with
``share_vorgaenge`` back-fills exactly the copies DESIGN.md §3 predicts and nothing else; taking GF-B out
of it again removes exactly those copies, also one GF-B moved to another folder, and the reply addresses
of the removed copies are refused; GF-B's own mail and GF-A's are untouched throughout. The admin works
with ``gateway directory load`` while the gateway runs, the back office with smtplib, the members with
their Maildir files or imaplib.
"""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_DIRECTORY
from tests.dovecot import Dovecot
from tests.dovecot import _folders as imap_folders
from tests.dovecot import _ok as imap_ok
from tests.dovecot import _quote as imap_quote
from tests.e2e.conftest import LOGIN, PASSWORD, PORTFOLIO, RunningGateway, prepare
from tests.seed import ADDRESS

WITH_GF = "Kunde B mit GF"


@dataclass(frozen=True)
class Copy:
    """One gateway copy in a member's mailbox, as the member sees it."""

    copy_id: str
    folder: str
    subject: str
    reply_to: str


class Members:
    """The members' side: what is in each mailbox, and a member moving a copy to another folder."""

    def copies(self, address: str) -> dict[str, Copy]:
        raise NotImplementedError

    def move(self, address: str, copy_id: str, folder: str) -> None:
        raise NotImplementedError


class MaildirMembers(Members):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _files(self, address: str) -> Iterator[tuple[str, Path]]:
        home = self.root / PORTFOLIO / address
        for path in sorted(home.rglob("*")):
            if path.is_file() and path.parent.name in ("new", "cur"):
                folder = path.parent.parent.name.lstrip(".") if path.parent.parent != home else "INBOX"
                yield folder, path

    def copies(self, address: str) -> dict[str, Copy]:
        found = {}
        for folder, path in self._files(address):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            found[str(message["X-Gateway-Copy-Id"])] = _copy(message, folder)
        return found

    def move(self, address: str, copy_id: str, folder: str) -> None:
        # What a mail client on the Maildir does: rename the file into the folder's cur/.
        target = self.root / PORTFOLIO / address / f".{folder}"
        for sub in ("cur", "new", "tmp"):
            (target / sub).mkdir(parents=True, exist_ok=True)
        for _, path in self._files(address):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if message["X-Gateway-Copy-Id"] == copy_id:
                name = path.name if ":2," in path.name else f"{path.name}:2,S"
                path.rename(target / "cur" / name)


class ImapMembers(Members):
    def __init__(self, dovecot: Dovecot) -> None:
        self.dovecot = dovecot

    def copies(self, address: str) -> dict[str, Copy]:
        client = self.dovecot.client(address)
        found = {}
        try:
            for folder in imap_folders(client):
                (exists,) = imap_ok(client.select(imap_quote(folder), readonly=True))
                if int(exists) == 0:
                    continue
                for item in imap_ok(client.uid("FETCH", "1:*", "(BODY.PEEK[HEADER])")):
                    if isinstance(item, tuple):
                        message = email.message_from_bytes(item[1], policy=email.policy.default)
                        found[str(message["X-Gateway-Copy-Id"])] = _copy(message, folder)
        finally:
            client.logout()
        return found

    def move(self, address: str, copy_id: str, folder: str) -> None:
        self.dovecot.member_moves(address, copy_id, folder)


def _copy(message: EmailMessage, folder: str) -> Copy:
    (reply_to,) = message["Reply-To"].addresses
    return Copy(str(message["X-Gateway-Copy-Id"]), folder, str(message["Subject"]), reply_to.addr_spec)


def directory(tmp_path: Path, name: str, edit: Callable[[str], str]) -> Path:
    """A variant of the seed's directory file, as an admin would write it."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(edit(EXAMPLE_DIRECTORY.read_text(encoding="utf-8")), encoding="utf-8")
    return path


def without_release(text: str) -> str:
    text = re.sub(r"\n\s+- \{name: Kunde B mit GF,[^\n]*", "", text)
    return text.replace(", Kunde B mit GF]", "]")


def without_gf_b(text: str) -> str:
    return text.replace("releases: [Geschäftsführer, Kunde B mit GF]", "releases: [Geschäftsführer]")


def send(gateway: RunningGateway, person: str, subject: str) -> None:
    msg = EmailMessage()
    msg["From"] = "AMS Makler Muster <ams@makler-muster.example>"
    msg["To"] = ADDRESS[person]
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@ams.makler-muster.example>"
    msg.set_content("Sehr geehrte Damen und Herren,\n\nanbei die Unterlagen.\n")
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        client.ehlo("ams.makler-muster.example")
        client.login(LOGIN, PASSWORD)
        client.send_message(msg)


def reply(gateway: RunningGateway, person: str, to: str) -> tuple[int, str]:
    """``person`` answers the copy whose reply address is ``to``, with Reply in a mail client."""
    msg = EmailMessage()
    msg["From"] = ADDRESS[person]
    msg["To"] = to
    msg["Subject"] = "Re: Unterlagen"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@{ADDRESS[person].split('@')[1]}>"
    msg.set_content("Erledigt.\n")
    with smtplib.SMTP("127.0.0.1", gateway.mx_port, timeout=10) as client:
        client.ehlo("mx.kunde-b.example")
        client.mail(ADDRESS[person])
        code, text = client.rcpt(to)
        if code != 250:
            return code, text.decode()
        code, text = client.data(msg.as_bytes())
        return code, text.decode()


Holdings = dict[str, dict[str, str]]
"""Per person, which marker (M1 … M5) each copy in the mailbox carries, by copy id."""


def holdings(members: Members, markers: list[str]) -> Holdings:
    result: Holdings = {}
    for person, address in ADDRESS.items():
        result[person] = {
            copy_id: next(m for m in markers if f"[{m}]" in copy.subject)
            for copy_id, copy in members.copies(address).items()
            if any(f"[{m}]" in copy.subject for m in markers)
        }
    return result


def shown(held: Holdings) -> dict[str, list[str]]:
    return {person: sorted(markers.values()) for person, markers in held.items()}


def wait_until(
    members: Members, markers: list[str], expected: dict[str, list[str]], timeout: float = 40
) -> Holdings:
    deadline = time.monotonic() + timeout
    held = holdings(members, markers)
    while shown(held) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        held = holdings(members, markers)
    time.sleep(1.0)  # a copy too many would show up now
    return holdings(members, markers)


@pytest.fixture(params=["maildir", "imap"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_creating_and_shrinking_kunde_b_mit_gf_back_fills_and_revokes_exactly_section_3(
    tmp_path: Path, database_url: str, backend: str, request: pytest.FixtureRequest
) -> None:
    gateway = prepare(tmp_path, database_url)
    members: Members
    if backend == "imap":
        dovecot: Dovecot = request.getfixturevalue("dovecot")
        for address in ADDRESS.values():
            dovecot.add_user(address)
        settings = dovecot.imap_settings(tls="none")
        extra = (
            f'\n[mailbox]\nbackend = "imap"\n\n[mailbox.imap]\nhost = "{settings.host}"\n'
            f'port = {settings.port}\ntls = "none"\nmaster_user = "{settings.master_user}"\n'
            f'master_password_file = "{settings.master_password_file}"\n'
        )
        members = ImapMembers(dovecot)
    else:
        extra = ""
        members = MaildirMembers(gateway.maildir_root)
    # Small batches, so the run takes several.
    text = gateway.config.read_text(encoding="utf-8").replace(
        "[reconcile]\n", "[reconcile]\nbatch_size = 2\n", 1
    )
    gateway.config.write_text(text + extra, encoding="utf-8")
    # Before any mail: "Kunde B mit GF" does not exist (no run: there is nothing to reconcile yet).
    gateway.cli("directory", "load", "--prune", str(directory(tmp_path, "without", without_release)))
    gateway.start()
    try:
        tag = uuid.uuid4().hex[:6]
        markers = [f"M{n}-{tag}" for n in range(1, 6)]
        m1, m2, m3, m4, m5 = markers
        for person, marker in zip(["SB-B1", "SB-B2", "GF-B", "GF-A", "SB-A1"], markers, strict=True):
            send(gateway, person, f"Unterlagen [{marker}]")
        before = {
            "SB-A1": [m5],
            "SB-A2": [m5],
            "GF-A": [m3, m4],
            "SB-B1": [m1, m2],
            "SB-B2": [m1, m2],
            "GF-B": [m3, m4],
        }
        first = wait_until(members, markers, before)
        assert shown(first) == before

        # The admin creates "Kunde B mit GF" with share_vorgaenge (the seed's directory as it is).
        out = gateway.cli("directory", "load", str(EXAMPLE_DIRECTORY)).stdout
        assert f"create release {WITH_GF} (primary=false, share_vorgaenge=true, read_sync=answered)" in out
        # §3: a message to or by SB-B1/SB-B2 is seen by GF-B too; GF-B's by SB-B1 and SB-B2; nothing
        # else changes (GF-A's and A's mail, GF-B's own).
        after = before | {"SB-B1": [m1, m2, m3], "SB-B2": [m1, m2, m3], "GF-B": [m1, m2, m3, m4]}
        filled = wait_until(members, markers, after)
        assert shown(filled) == after
        for person in ADDRESS:
            assert first[person].items() <= filled[person].items(), f"{person}'s copies stay as they were"
        backfilled = {
            person: {cid for cid in filled[person] if cid not in first[person]}
            for person in ("SB-B1", "SB-B2", "GF-B")
        }
        assert {p: sorted(filled[p][c] for c in cids) for p, cids in backfilled.items()} == {
            "SB-B1": [m3],
            "SB-B2": [m3],
            "GF-B": [m1, m2],
        }
        status = gateway.cli("reconcile", "status").stdout
        assert re.search(
            r"run \d+  makler-muster  done  5/5 messages  backfilled 4  revoked 0  kept 0", status
        ), status

        # GF-B files one of the back-filled copies away in another folder.
        gf_b = ADDRESS["GF-B"]
        moved = next(cid for cid in backfilled["GF-B"] if filled["GF-B"][cid] == m1)
        members.move(gf_b, moved, "Archiv")
        assert members.copies(gf_b)[moved].folder == "Archiv"
        reply_addresses = {
            (person, cid): members.copies(ADDRESS[person])[cid].reply_to
            for person, cids in backfilled.items()
            for cid in cids
        }

        # The admin takes GF-B out of "Kunde B mit GF" again: exactly the back-filled copies go.
        gateway.cli("directory", "load", str(directory(tmp_path, "gf-b-out", without_gf_b)))
        revoked = wait_until(members, markers, before)
        assert shown(revoked) == before, gateway.cli("reconcile", "status").stdout + "".join(
            gateway.log[-30:]
        )
        for person in ADDRESS:
            assert revoked[person] == first[person], f"{person} keeps exactly what they had before"
        assert moved not in members.copies(gf_b), "also the copy GF-B moved to Archiv is gone"
        status = gateway.cli("reconcile", "status").stdout
        assert re.search(r"done  5/5 messages  backfilled 0  revoked 4  kept 0", status), status

        # The reply addresses of the removed copies stop working; GF-B's own still works.
        for (person, _), address in reply_addresses.items():
            code, text = reply(gateway, person, address)
            assert code == 550, (person, code, text)
            assert text.startswith("5.7.1 This mail may not answer the message"), text
        own = next(c for c in members.copies(gf_b).values() if f"[{m3}]" in c.subject)
        code, text = reply(gateway, "GF-B", own.reply_to)
        assert code == 250, text
    finally:
        gateway.stop()
