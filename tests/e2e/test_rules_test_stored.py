"""`gateway rules test gw-…`: a stored message tried with the envelope it really came with (issue 16,
item 7; docs/admin.md's quarantine recipe). The envelope names a blind recipient the header does not,
so only the real envelope makes the rule that held it fire again."""

from __future__ import annotations

import json
import re
import smtplib
from email.message import EmailMessage
from pathlib import Path

from tests.e2e.conftest import LOGIN, PASSWORD, PORTFOLIO, prepare
from tests.seed import ADDRESS

RULE = """rules:
  - name: gf-checks
    match:
      backoffice: ams
      recipient: gf-b@kunde-b.example
    quarantine: "GF-B prüft vorher"
"""


def test_rules_test_takes_a_stored_message_by_id_with_its_real_envelope(
    tmp_path: Path, database_url: str
) -> None:
    gateway = prepare(tmp_path, database_url)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "hold.yaml").write_text(RULE, encoding="utf-8")
    gateway.start()
    try:
        message = EmailMessage()
        message["From"] = "Makler Muster <ams@makler-muster.example>"
        message["To"] = ADDRESS["SB-B1"]
        message["Subject"] = "Schadenfotos"
        message["Message-ID"] = "<held-1@ams.example>"
        message.set_content("Bitte prüfen.\n")
        with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
            client.login(LOGIN, PASSWORD)
            # GF-B gets it blind: in the envelope, not in the header.
            client.send_message(message, to_addrs=[ADDRESS["SB-B1"], ADDRESS["GF-B"]])
    finally:
        gateway.stop()
    listed = gateway.cli("quarantine", "list").stdout
    (held,) = re.findall(r"^(gw-[0-9a-f]+)", listed, re.MULTILINE)

    shown = gateway.cli("rules", "test", held).stdout
    assert re.search(r"verdict: quarantine \(by gf-checks \(.*hold\.yaml:2:5\)\)", shown), shown
    assert "back office ams, portfolio makler-muster, listener submission" in shown
    assert f"to {ADDRESS['SB-B1']}, {ADDRESS['GF-B']}" in shown
    data = json.loads(gateway.cli("rules", "test", held, "--json").stdout)
    assert data["verdict"] == "quarantine"
    assert data["message"]["sender"] == "ams@makler-muster.example"

    # The saved bytes alone do not know the envelope: that is why the id is the recipe now.
    saved = tmp_path / "held.eml"
    saved.write_bytes(gateway.cli("quarantine", "show", held, "-p", PORTFOLIO, "--raw").stdout_bytes)
    from_file = gateway.cli("rules", "test", str(saved), "--auth", "ams").stdout
    assert "verdict: accept" in from_file

    # An id nobody stored is a clear input error, not a traceback.
    missing = gateway.cli("rules", "test", "gw-000000000000000000000000", expect=2)
    assert "there is no message gw-000000000000000000000000" in missing.stderr
