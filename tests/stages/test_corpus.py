"""Every sample of the shared mail corpora through parsing and copy rendering: no crash, fast, body intact.

The corpora live outside the repository (see their README.md); ``GATEWAY_TEST_CORPORA`` names the folder,
locally ``/work/shared/corpora``. Without it the tests are skipped with the reason, or fail where
``GATEWAY_REQUIRE_CORPORA=1`` (``.ci/run``): never a quiet pass that tested nothing (tests/corpora.py).
"""

from __future__ import annotations

from email import policy
from email.parser import BytesParser

import pytest

from gateway.domain.copies import render_copy
from gateway.domain.parsing import parse_message
from tests import corpora
from tests.corpora import PROBLEM, ROOT, SAMPLES

HEADERS = [
    ("X-Gateway-Vorgang", "VG-2026-000001"),
    ("X-Gateway-Copy-Id", "c1"),
    ("X-Gateway-Shared-Via", "Geschäftsführer"),
]
PREFIX = "[VG-2026-000001]"


def body(raw: bytes) -> bytes | None:
    """Everything after the first empty line (CRLF, CR or LF), or None if there is none."""
    offset = 0
    for line in raw.splitlines(keepends=True):
        offset += len(line)
        if not line.strip(b"\r\n"):
            return raw[offset:]
    return None


if PROBLEM:

    def test_corpora_are_there() -> None:
        corpora.missing()

else:

    def _read(relative: str) -> bytes:
        assert ROOT is not None
        return (ROOT / relative).read_bytes()

    @pytest.mark.parametrize("relative", SAMPLES, ids=SAMPLES)
    def test_parse_message_reads_sample(relative: str) -> None:
        raw = _read(relative)
        parsed = parse_message(raw)  # how long it takes: bench/corpus.py
        assert all(
            "\n" not in text and "\r" not in text for text in (parsed.subject, parsed.from_display_name)
        )

    @pytest.mark.parametrize("relative", SAMPLES, ids=SAMPLES)
    def test_render_copy_keeps_body_and_adds_headers_once(relative: str) -> None:
        raw = _read(relative)
        copy = render_copy(raw, headers=HEADERS, remove=[name for name, _ in HEADERS], subject_prefix=PREFIX)

        assert body(copy) == body(raw)
        message = BytesParser(policy=policy.default).parsebytes(copy, headersonly=True)
        for name, value in HEADERS:
            assert message.get_all(name) is not None, name
            assert [str(v) for v in message.get_all(name, [])] == [value]
        reparsed = parse_message(copy)
        assert reparsed.vorgang_header == "VG-2026-000001"
        assert PREFIX.casefold() in reparsed.subject.casefold()
