"""The sender-authentication decisions: alignment, DMARC records, the MTA's results, verdicts and reasons."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.senderauth_rules import (
    MAX_TRUSTED_HEADERS,
    DkimCheck,
    DmarcLookup,
    DmarcRecord,
    SpfCheck,
    SpfResult,
    Verdict,
    aligned,
    ascii_domain,
    authentication_results_of,
    domain_of,
    judge_authentication_results,
    judge_checks,
    one_line,
    parse_dmarc_records,
)

FROM_DOMAIN = "kunde.example"
ID = "mx.gateway.example"


@pytest.mark.parametrize(
    ("identifier", "from_domain", "relaxed", "strict"),
    [
        ("kunde.example", "kunde.example", True, True),
        ("KUNDE.example.", "kunde.example", True, True),
        ("mail.kunde.example", "kunde.example", True, False),
        ("kunde.example", "vertrieb.kunde.example", True, False),
        ("a.kunde.example", "b.kunde.example", False, False),  # siblings: refused (we keep no suffix list)
        ("kunde.example", "notkunde.example", False, False),
        ("example", "kunde.example", False, False),  # a top-level domain aligns with nothing under it
        ("mailer.example.net", "kunde.example", False, False),
        ("", "kunde.example", False, False),
        ("bad domain", "kunde.example", False, False),
        ("xn--mller-kva.example", "müller.example", True, True),
    ],
)
def test_alignment(identifier: str, from_domain: str, relaxed: bool, strict: bool) -> None:
    assert aligned(identifier, from_domain) is relaxed
    assert aligned(identifier, from_domain, strict=True) is strict


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        ("Kunde.Example.", "kunde.example"),
        ("müller.example", "xn--mller-kva.example"),
        ("_dmarc.kunde.example", "_dmarc.kunde.example"),
        ("a..example", None),
        ("-a.example", None),
        ("a b.example", None),
        ("x" * 64 + ".example", None),
        ("", None),
    ],
)
def test_ascii_domain(text: str, domain: str | None) -> None:
    assert ascii_domain(text) == domain


def test_domain_of_an_address() -> None:
    assert domain_of("Anna@Kunde.Example") == "kunde.example"
    assert domain_of("<a@b@kunde.example>") == "kunde.example"
    assert domain_of("kunde.example") is None
    assert domain_of("anna@") is None


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([b"v=DMARC1; p=reject"], DmarcRecord("reject", None, False, False)),
        ([b"v=DMARC1;p=quarantine;sp=none;adkim=s;aspf=s"], DmarcRecord("quarantine", "none", True, True)),
        ([b"v=DMARC1; p=REJECT; adkim=r"], DmarcRecord("reject", None, False, False)),
        ([b"v=DMARC1; rua=mailto:d@kunde.example"], DmarcRecord("none", None, False, False)),
        ([b"v=DMARC1; p=bogus; sp=bogus"], DmarcRecord("none", None, False, False)),
        ([b"google-site-verification=x", b"v=DMARC1; p=reject"], DmarcRecord("reject", None, False, False)),
        ([b"v=DMARC1; p=reject", b"v=DMARC1; p=none"], None),  # two records are none (RFC 7489 6.6.3)
        ([b"v=spf1 -all"], None),
        ([b"v=DMARC10; p=reject"], None),
        ([], None),
    ],
)
def test_dmarc_records(records: list[bytes], expected: DmarcRecord | None) -> None:
    assert parse_dmarc_records(records) == expected


def test_subdomain_policy_applies_below_the_record() -> None:
    record = DmarcRecord("reject", "quarantine", False, False)

    assert record.policy_for("kunde.example", "kunde.example") == "reject"
    assert record.policy_for("vertrieb.kunde.example", "kunde.example") == "quarantine"


# --- judge_checks ---------------------------------------------------------------------------------------

IP = "192.0.2.10"
SPF_FAIL = SpfCheck(SpfResult.FAIL, FROM_DOMAIN, IP)
REJECT = DmarcLookup(DmarcRecord("reject", None, False, False), FROM_DOMAIN)
NO_DMARC = DmarcLookup(None, FROM_DOMAIN)


def test_verified_aligned_signature_passes() -> None:
    verdict = judge_checks(FROM_DOMAIN, [DkimCheck(FROM_DOMAIN, "s", True)], SPF_FAIL, REJECT)

    assert verdict == Verdict(True, "DKIM signature of kunde.example verified")


def test_aligned_spf_pass_passes() -> None:
    spf = SpfCheck(SpfResult.PASS, "bounce.kunde.example", IP)

    assert judge_checks(FROM_DOMAIN, [], spf, NO_DMARC) == Verdict(
        True, "SPF of bounce.kunde.example for 192.0.2.10 is pass"
    )


def test_strict_spf_alignment_refuses_a_subdomain() -> None:
    spf = SpfCheck(SpfResult.PASS, "bounce.kunde.example", IP)
    strict = DmarcLookup(DmarcRecord("reject", None, False, True), FROM_DOMAIN)

    verdict = judge_checks(FROM_DOMAIN, [], spf, strict)

    assert not verdict.passed
    assert "is not aligned with kunde.example (DMARC aspf=s)" in verdict.reason


def test_reason_lists_a_few_signatures_and_counts_the_rest() -> None:
    checks = [DkimCheck(f"d{n}.example", "s", False, "signature mismatch") for n in range(5)]

    verdict = judge_checks(FROM_DOMAIN, checks, SPF_FAIL, REJECT)

    assert verdict.reason == (
        "DKIM signature of d0.example did not verify (signature mismatch), "
        "DKIM signature of d1.example did not verify (signature mismatch), "
        "DKIM signature of d2.example did not verify (signature mismatch), 2 more DKIM signatures "
        "and SPF of kunde.example for 192.0.2.10 is fail; kunde.example publishes DMARC p=reject"
    )


@pytest.mark.parametrize(
    ("dkim", "spf", "dmarc", "temporary"),
    [
        # A key that could not be fetched, of the From domain: a retry may pass.
        ([DkimCheck(FROM_DOMAIN, "s", False, "timeout", temporary=True)], SPF_FAIL, REJECT, True),
        # ... of an unrelated domain: no retry can make it count.
        ([DkimCheck("esp.example", "s", False, "timeout", temporary=True)], SPF_FAIL, REJECT, False),
        ([], SpfCheck(SpfResult.TEMPERROR, FROM_DOMAIN, IP, "timeout"), REJECT, True),
        ([], SpfCheck(SpfResult.TEMPERROR, "esp.example", IP, "timeout"), REJECT, False),
        # DMARC unknown: only matters when a relaxed-only pass is waiting for it.
        (
            [DkimCheck("mail." + FROM_DOMAIN, "s", True)],
            SPF_FAIL,
            DmarcLookup(None, FROM_DOMAIN, True, "x"),
            True,
        ),
        ([], SPF_FAIL, DmarcLookup(None, FROM_DOMAIN, True, "timeout"), False),
        ([DkimCheck(FROM_DOMAIN, "s", False, "body hash mismatch")], SPF_FAIL, REJECT, False),
    ],
)
def test_temporary_only_when_asking_again_could_pass(
    dkim: list[DkimCheck], spf: SpfCheck, dmarc: DmarcLookup, temporary: bool
) -> None:
    verdict = judge_checks(FROM_DOMAIN, dkim, spf, dmarc)

    assert not verdict.passed
    assert verdict.temporary is temporary


def test_spf_without_a_domain_says_so() -> None:
    spf = SpfCheck(SpfResult.NONE, "", "not an ip", "the client address is not an IP address")

    verdict = judge_checks(FROM_DOMAIN, [], spf, NO_DMARC)

    assert verdict.reason == (
        "no DKIM signature and SPF for not an ip could not be checked (the client address is not an IP "
        "address); kunde.example publishes no DMARC record"
    )


# --- judge_authentication_results -----------------------------------------------------------------------


def judge(*headers: str, from_domain: str = FROM_DOMAIN) -> Verdict:
    return judge_authentication_results(list(headers), authserv_id=ID, from_domain=from_domain)


def test_a_comment_before_the_authserv_id_is_allowed() -> None:
    assert judge(f"(our border) {ID}; dmarc=pass header.from=kunde.example").passed


def test_only_the_first_headers_claiming_our_id_are_read() -> None:
    forged = [f"{ID}; dkim=fail header.d=x.example"] * MAX_TRUSTED_HEADERS

    assert not judge(*forged, f"{ID}; dmarc=pass header.from=kunde.example").passed
    assert judge(*forged[1:], f"{ID}; dmarc=pass header.from=kunde.example").passed


def test_unreadable_headers_of_ours_are_named() -> None:
    assert judge(f"{ID}; dkim") == Verdict(False, f"the Authentication-Results from {ID} could not be read")


def test_dmarc_result_names_the_from_domain_as_an_address_or_a_domain() -> None:
    assert judge(f"{ID}; dmarc=pass header.from=anna@kunde.example").passed
    assert judge(f"{ID}; dmarc=pass header.from=KUNDE.EXAMPLE").passed


def test_long_results_are_summarised() -> None:
    results = "; ".join(f"dkim=fail header.d=d{n}.example" for n in range(6))

    verdict = judge(f"{ID}; {results}")

    assert verdict.reason == (
        f"{ID} reports dkim=fail header.d=d0.example, dkim=fail header.d=d1.example, "
        "dkim=fail header.d=d2.example, dkim=fail header.d=d3.example and 2 more; "
        "none is an aligned pass for kunde.example"
    )


@given(st.lists(st.text(max_size=300), max_size=5), st.text(max_size=30))
def test_no_header_text_makes_judging_raise(headers: list[str], from_domain: str) -> None:
    verdict = judge_authentication_results(
        headers + [f"{ID}; " + h for h in headers], authserv_id=ID, from_domain=from_domain
    )

    assert isinstance(verdict, Verdict)


# --- authentication_results_of and one_line ---------------------------------------------------------------


def test_results_headers_are_found_unfolded_in_the_header_section_only() -> None:
    raw = (
        b"Received: from x\r\n"
        b"authentication-results: mx.gateway.example;\r\n"
        b"\tdkim=pass header.d=kunde.example\r\n"
        b"Authentication-Results : other.example; none\n"
        b"Subject: x\r\n"
        b"\r\n"
        b"Authentication-Results: mx.gateway.example; dmarc=pass\r\n"
    )

    assert authentication_results_of(raw) == [
        "mx.gateway.example;\tdkim=pass header.d=kunde.example",
        "other.example; none",
    ]


def test_a_message_without_header_section_has_no_results() -> None:
    assert authentication_results_of(b"\r\nAuthentication-Results: mx.gateway.example; dmarc=pass\r\n") == []
    assert authentication_results_of(b"Authentication-Results: mx.gateway.example; none") == [
        "mx.gateway.example; none"
    ]


def test_results_in_8bit_do_not_break_the_search() -> None:
    assert authentication_results_of(b"Authentication-Results: \xff\xfe; x\r\n\r\n") == ["ÿþ; x"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("two\r\nlines\tand  spaces", "two lines and spaces"),
        ("bäcker \x00 nul", "b?cker ? nul"),
        ("x" * 500, "x" * 397 + "..."),
    ],
)
def test_one_line(text: str, expected: str) -> None:
    assert one_line(text) == expected
