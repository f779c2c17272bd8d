"""Backup and restore as docs/deploy.md describes them, performed on a running gateway.

The gateway delivers mail; while it runs (and takes more mail) the database is backed up (`gateway db
backup`, or on PostgreSQL the pg_dump command it prints), then the Maildirs; the reply-token key was
backed up when it was made. The data directory is lost (database, Maildirs, key), restored from those
backups with the commands of docs/deploy.md, and the gateway started again: a member's reply to a copy
delivered before the backup is accepted and relayed, and every copy the restored database knows is in
its member's mailbox.
"""

from __future__ import annotations

import shlex
import shutil
import smtplib
import subprocess
import threading
import uuid
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url

from gateway.db.models import CopyRow
from gateway.db.writer import sync_url
from tests.e2e.clients import copy_for, reply_address_of, send_from_backoffice, send_reply
from tests.e2e.conftest import BackOfficeSink, RunningGateway, configure, prepare
from tests.seed import ADDRESS

PG_CONNECTION = ["-h", "127.0.0.1", "-p", "5432", "-U", "postgres"]


def sh(*args: str, ok: tuple[int, ...] = (0,)) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode in ok, f"{shlex.join(args)}\n{result.stdout}\n{result.stderr}"
    return result.stdout


# docs/deploy.md's command for the Maildirs of a running gateway. GNU tar exits 1 ("some files differ")
# when a directory gains or loses an entry while it reads it, as new/ and tmp/ do while mail arrives;
# the archive is sound, since a message is written under tmp/ and renamed, never changed in place.
TAR_LIVE_MAILDIRS = ("--exclude=*/tmp/*", "--warning=no-file-changed", "--warning=no-file-removed")


def copies_in_database(database_url: str) -> dict[str, str]:
    """Every copy the database knows: copy id -> state."""
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(CopyRow.copy_id, CopyRow.state))
            return {row.copy_id: row.state for row in rows}
    finally:
        engine.dispose()


def copies_in_mailboxes(gateway: RunningGateway) -> list[str]:
    return [
        str(stored.message["X-Gateway-Copy-Id"])
        for address in gateway.mailboxes.addresses()
        for stored in gateway.stored(address)
        if stored.message["X-Gateway-Copy-Id"]
    ]


def reply(copy: EmailMessage, author: str) -> bytes:
    message = EmailMessage()
    message["From"] = f"Sachbearbeiter <{author}>"
    message["To"] = str(copy["Reply-To"])
    message["Subject"] = f"Re: {copy['Subject']}"
    message["Message-ID"] = f"<after-restore-{uuid.uuid4().hex}@kunde-b.example>"
    message["In-Reply-To"] = str(copy["Message-ID"])
    message["References"] = str(copy["References"])
    message.set_content("Die Fotos folgen morgen.\n")
    return message.as_bytes()


def test_backup_lose_the_data_directory_restore_and_carry_on(
    tmp_path: Path, database_url: str, sink: BackOfficeSink
) -> None:
    sqlite = make_url(database_url).get_backend_name() == "sqlite"
    gateway = prepare(tmp_path, database_url)
    configure(gateway, sink, tmp_path)
    data = tmp_path / "data"
    backups = tmp_path / "backups"
    (backups / "keys").mkdir(parents=True)
    # The key is backed up once, when `gateway secrets init` made it (and after every rotation).
    sh("cp", "-p", str(data / "secrets" / "token.key"), str(backups / "keys"))

    gateway.start()
    restarted: RunningGateway | None = None
    try:
        assert any(f"configuration: {gateway.config} (--config)" in line for line in gateway.log)
        before = f"Schaden vor der Sicherung {uuid.uuid4().hex[:8]}"
        send_from_backoffice(gateway, ADDRESS["SB-B1"], before, f"<before-{uuid.uuid4().hex}@ams.example>")
        copy = copy_for(gateway, "SB-B2", before)
        assert len(gateway.wait_for_copies(before, 3)) == 3  # SB-B1, SB-B2, GF-B

        # More mail arrives while the backup is taken.
        sending = threading.Event()

        def keep_sending() -> None:
            with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
                client.login("ams@makler-muster.example", "ams-test-password-1")
                for number in range(8):
                    message = EmailMessage()
                    message["From"] = "Makler Muster <ams@makler-muster.example>"
                    message["To"] = ADDRESS["SB-B1"]
                    message["Subject"] = f"Nachreichung {number}"
                    message["Message-ID"] = f"<during-{uuid.uuid4().hex}@ams.example>"
                    message.set_content("Anbei die Unterlagen.\n")
                    client.send_message(message)
                    if number == 2:
                        sending.set()

        sender = threading.Thread(target=keep_sending)
        sender.start()
        assert sending.wait(30)
        # First the database, then the Maildirs (docs/deploy.md says why in this order).
        if sqlite:
            out = gateway.cli("db", "backup", str(backups / "gateway.db")).stdout
            assert out.startswith(f"wrote {backups / 'gateway.db'} (")
        else:
            result = gateway.cli("db", "backup", str(backups / "gateway.dump"), expect=2)
            (pg_dump,) = [line.strip() for line in result.stderr.splitlines() if "pg_dump --" in line]
            sh(*shlex.split(pg_dump))
        sh(
            "tar",
            "--create",
            "--file",
            str(backups / "mail.tar"),
            "--directory",
            str(data),
            *TAR_LIVE_MAILDIRS,
            "mail",
            ok=(0, 1),
        )
        sender.join(60)
        gateway.settled()
        assert gateway.stop() == 0

        # The data directory is lost, and with it a SQLite database; a PostgreSQL database is dropped.
        shutil.rmtree(data)
        if sqlite:
            for path in tmp_path.glob("gateway.db*"):
                path.unlink()
        else:
            sh("dropdb", *PG_CONNECTION, "--force", str(make_url(database_url).database))

        # The restore, as docs/deploy.md has it.
        data.mkdir()
        if sqlite:
            database = make_url(database_url).database
            assert database is not None
            sh("install", "-m", "0640", str(backups / "gateway.db"), database)
        else:
            name = str(make_url(database_url).database)
            sh("createdb", *PG_CONNECTION, name)
            target = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
            sh(
                "pg_restore",
                "--no-owner",
                "--exit-on-error",
                f"--dbname={target}",
                str(backups / "gateway.dump"),
            )
        sh("tar", "--extract", "--file", str(backups / "mail.tar"), "--directory", str(data))
        sh(
            "install",
            "-D",
            "-m",
            "0600",
            str(backups / "keys" / "token.key"),
            str(data / "secrets" / "token.key"),
        )
        assert gateway.cli("db", "status").stdout.startswith("database is up to date")

        restarted = gateway.restarted()
        restarted.settled()
        # Every copy the restored database knows is delivered and in its mailbox, exactly once.
        known = copies_in_database(database_url)
        assert set(known.values()) == {"delivered"}, known
        found = copies_in_mailboxes(restarted)
        assert set(known) <= set(found)
        assert len(found) == len(set(found)), "no copy twice"
        assert len(restarted.copies_of(before)) == 3

        # The reply address handed out before the backup still works: accepted and relayed.
        code, text = send_reply(
            restarted, reply(copy, ADDRESS["SB-B2"]), reply_address_of(copy), ADDRESS["SB-B2"]
        )
        assert code == 250, text
        (relayed,) = sink.wait_for(1)
        assert relayed.message["From"].addresses[0].addr_spec == ADDRESS["SB-B2"]
        assert relayed.message["Subject"] == f"Re: {copy['Subject']}"
    finally:
        for running in (gateway, restarted):
            if running is not None and running.process is not None and running.process.poll() is None:
                running.stop()
        print("".join(gateway.log + (restarted.log if restarted else [])))
