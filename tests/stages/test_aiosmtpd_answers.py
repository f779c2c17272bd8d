"""Every answer aiosmtpd can write itself reaches the client with an enhanced status code.

The literals are read from the installed aiosmtpd, so an upgrade that adds an answer without a code
fails here rather than in a client's log.
"""

from __future__ import annotations

import inspect
import re

import aiosmtpd.smtp
import pytest

from gateway.smtp_replies import with_enhanced_code

ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3} ")
# push('…'), push("…"), push(f"…"), and the status defaults ('250 OK' if status is MISSING …).
LITERAL = re.compile(r"""(?:push\(\s*|status = |\()f?(['"])(\d{3} .*?)\1""")
# No enhanced code by custom: the greeting, 354, and EHLO's last line; 334 challenges are built elsewhere.
WITHOUT_CODE = ("220 {}", "354 ", "250 HELP")


def aiosmtpd_answers() -> list[str]:
    source = inspect.getsource(aiosmtpd.smtp)
    found = {match.group(2) for match in LITERAL.finditer(source)}
    return sorted(line for line in found if not line.startswith(WITHOUT_CODE))


def test_the_source_still_has_the_answers_we_know() -> None:
    answers = aiosmtpd_answers()
    assert "250 OK" in answers
    assert "503 Error: need MAIL command" in answers
    assert len(answers) > 30


@pytest.mark.parametrize("line", aiosmtpd_answers())
def test_each_answer_gets_an_enhanced_code(line: str) -> None:
    # Values aiosmtpd formats in (the command, a host name) stand in as a word.
    sample = re.sub(r"\{[^}]*\}", "FOO", line)
    rewritten = with_enhanced_code(sample)
    assert ENHANCED.match(rewritten), f"{sample!r} -> {rewritten!r}"
    assert "Error: (" not in rewritten, "an exception's name never reaches the client"
