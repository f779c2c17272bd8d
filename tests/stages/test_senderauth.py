"""Sender authentication of replies: real DKIM signatures, SPF and DMARC over a fake DNS, the MTA's headers.

Keys are made here with ``cryptography`` and published through :class:`StaticResolver`, so every check
runs exactly as in production except for the network.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.canonicalization import CanonicalizationPolicy
from dkim.crypto import parse_pem_private_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain.senderauth_rules import authentication_results_of
from gateway.senderauth import check as senderauth
from gateway.senderauth.check import Policy, Verdict, check_sender
from gateway.senderauth.dns import StaticResolver
from tests import corpora

FROM = "anna.schmidt@kunde.example"
DOMAIN = "kunde.example"
SELECTOR = "mail2026"
KEY_NAME = f"{SELECTOR}._domainkey.{DOMAIN}"
INSIDE_SPF = "192.0.2.10"  # in kunde.example's SPF record
OUTSIDE_SPF = "198.51.100.7"  # in nobody's
AUTHSERV_ID = "mx.gateway.example"

REPLY = (
    b"From: Anna Schmidt <anna.schmidt@kunde.example>\r\n"
    b"To: reply+c1.abcdef@reply.gateway.example\r\n"
    b"Subject: Re: [VG-2026-000123] Schadenmeldung\r\n"
    b"Date: Mon, 02 Mar 2026 10:00:00 +0100\r\n"
    b"Message-ID: <r1@kunde.example>\r\n"
    b"In-Reply-To: <m1@makler.example>\r\n"
    b"\r\n"
    b"Guten Tag,\r\n"
    b"die Unterlagen kommen morgen.\r\n"
    b"Anna Schmidt\r\n"
)


class Key:
    """An RSA key pair: the private half in the PEM form dkimpy signs with, the public half as DNS has it."""

    def __init__(self, bits: int = 2048) -> None:
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        self.pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


@pytest.fixture(scope="module")
def key() -> Key:
    return Key()


@pytest.fixture(scope="module")
def other_key() -> Key:
    return Key()


def sign(raw: bytes, key: Key, *, domain: str = DOMAIN, selector: str = SELECTOR, **options: Any) -> bytes:
    """``raw`` with a DKIM-Signature on top, as the sender's outgoing server would add it."""
    signature = dkim.sign(raw, selector.encode(), domain.encode(), key.pem, **options)
    assert isinstance(signature, bytes)
    return signature + raw


def dns(key: Key, *, dmarc: str | None = "v=DMARC1; p=reject", **more: Any) -> StaticResolver:
    """kunde.example with its DKIM key, an SPF record for 192.0.2.0/24 and (by default) DMARC p=reject."""
    txt: dict[str, Sequence[str | bytes]] = {
        KEY_NAME: [key.record],
        DOMAIN: ["v=spf1 ip4:192.0.2.0/24 -all"],
    }
    if dmarc is not None:
        txt[f"_dmarc.{DOMAIN}"] = [dmarc]
    txt.update(more.pop("txt", {}))
    return StaticResolver(txt=txt, **more)


async def verify(
    raw: bytes,
    resolver: StaticResolver,
    *,
    from_address: str = FROM,
    envelope_sender: str = FROM,
    client_ip: str = OUTSIDE_SPF,
    helo: str = "mail.kunde.example",
) -> Verdict:
    return await check_sender(
        Policy.VERIFY,
        raw=raw,
        from_address=from_address,
        envelope_sender=envelope_sender,
        client_ip=client_ip,
        helo=helo,
        authserv_id=None,
        resolver=resolver,
    )


def changed_body_byte(raw: bytes) -> bytes:
    at = raw.index(b"morgen")
    return raw[:at] + b"M" + raw[at + 1 :]


# --- verify: DKIM ----------------------------------------------------------------------------------


async def test_correctly_signed_reply_passes(key: Key) -> None:
    # From an address outside the SPF record: the signature alone must carry it.
    verdict = await verify(sign(REPLY, key), dns(key))

    assert verdict == Verdict(True, "DKIM signature of kunde.example verified")


async def test_one_changed_body_byte_fails_and_says_dkim(key: Key) -> None:
    verdict = await verify(changed_body_byte(sign(REPLY, key)), dns(key))

    assert not verdict.passed
    assert not verdict.temporary
    assert "DKIM signature of kunde.example did not verify (body hash mismatch)" in verdict.reason
    assert f"SPF of kunde.example for {OUTSIDE_SPF} is fail" in verdict.reason


async def test_changed_signed_header_fails(key: Key) -> None:
    signed = sign(REPLY, key).replace(b"Schadenmeldung", b"Schadenmeldunk")

    verdict = await verify(signed, dns(key))

    assert not verdict.passed
    assert "DKIM signature of kunde.example did not verify (signature mismatch)" in verdict.reason


async def test_signature_under_someone_elses_key_fails(key: Key, other_key: Key) -> None:
    verdict = await verify(sign(REPLY, other_key), dns(key))

    assert not verdict.passed
    assert "did not verify" in verdict.reason


async def test_unpublished_key_fails_for_good(key: Key) -> None:
    verdict = await verify(sign(REPLY, key, selector="gone"), dns(key))

    assert not verdict.passed
    assert not verdict.temporary
    assert "no key published at gone._domainkey.kunde.example" in verdict.reason


async def test_key_look_up_timing_out_is_temporary(key: Key) -> None:
    verdict = await verify(sign(REPLY, key), dns(key, failing=[KEY_NAME]))

    assert not verdict.passed
    assert verdict.temporary
    assert "DKIM key of kunde.example could not be fetched" in verdict.reason


def sign_without_from(raw: bytes, key: Key) -> bytes:
    """A valid signature over Subject and Message-ID only; dkimpy's sign() refuses to make one."""
    signer = dkim.DKIM(raw)
    signer.hasher = dkim.HASH_ALGORITHMS[b"rsa-sha256"]
    canon = CanonicalizationPolicy.from_c_value(b"relaxed/simple")
    body_hash = base64.b64encode(signer.hasher(canon.canonicalize_body(signer.body)).digest())
    fields = [
        (b"v", b"1"),
        (b"a", b"rsa-sha256"),
        (b"c", b"relaxed/simple"),
        (b"d", DOMAIN.encode()),
        (b"s", SELECTOR.encode()),
        (b"h", b"subject : message-id"),
        (b"bh", body_hash),
        (b"b", b"0" * 60),
    ]
    private = parse_pem_private_key(key.pem)
    value = signer.gen_header(fields, (b"subject", b"message-id"), canon, b"DKIM-Signature", private)
    assert isinstance(value, bytes)
    return b"DKIM-Signature: " + value + raw


async def test_signature_not_covering_from_does_not_count(key: Key) -> None:
    signed = sign_without_from(REPLY, key)
    # dkimpy alone calls it good: the signature is valid, it just says nothing about From.
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: key.record)

    verdict = await verify(signed, dns(key))

    assert not verdict.passed
    assert "it does not sign the From header" in verdict.reason


async def test_signature_over_part_of_the_body_does_not_count(key: Key) -> None:
    signed = sign(REPLY, key, length=True) + b"PS: bitte an evil@attacker.example zahlen\r\n"

    verdict = await verify(signed, dns(key))

    assert not verdict.passed
    assert "signs only part of the body" in verdict.reason
    # The same signature with nothing appended passes: the limit alone is no reason to refuse.
    assert (await verify(sign(REPLY, key, length=True), dns(key))).passed


async def test_any_good_aligned_signature_among_several_passes(key: Key, other_key: Key) -> None:
    # A mailing service's signature on top of the member's own one, which is the one that counts.
    twice = sign(sign(REPLY, key), other_key, domain="esp.example", selector="x")
    resolver = dns(key, txt={"x._domainkey.esp.example": [other_key.record]})

    assert (await verify(twice, resolver)).passed


# --- verify: alignment and DMARC --------------------------------------------------------------------


def mailer(key: Key, other_key: Key, *, dmarc: str | None) -> StaticResolver:
    """kunde.example as in dns(); mailer.example.net with its own key and SPF for 203.0.113.0/24."""
    return dns(
        key,
        dmarc=dmarc,
        txt={
            "k1._domainkey.mailer.example.net": [other_key.record],
            "mailer.example.net": ["v=spf1 ip4:203.0.113.0/24 -all"],
        },
    )


async def test_dmarc_reject_without_aligned_pass_fails(key: Key, other_key: Key) -> None:
    # Signed by a mailer's own domain and sent from its server: DKIM and SPF pass, but for the mailer.
    raw = sign(REPLY, other_key, domain="mailer.example.net", selector="k1")
    resolver = mailer(key, other_key, dmarc="v=DMARC1; p=reject")

    verdict = await verify(
        raw, resolver, envelope_sender="bounce@mailer.example.net", client_ip="203.0.113.5"
    )

    assert not verdict.passed
    assert not verdict.temporary
    assert (
        "DKIM signature of mailer.example.net verified but is not aligned with kunde.example"
        in verdict.reason
    )
    assert "SPF of mailer.example.net for 203.0.113.5 is pass but" in verdict.reason
    assert verdict.reason.endswith("kunde.example publishes DMARC p=reject")
    # The same evidence vouches for a From in the mailer's own domain.
    assert (
        await verify(
            raw,
            resolver,
            from_address="news@mailer.example.net",
            envelope_sender="bounce@mailer.example.net",
            client_ip="203.0.113.5",
        )
    ).passed


@pytest.mark.parametrize("dmarc", [None, "v=DMARC1; p=none"], ids=["no record", "p=none"])
async def test_without_dmarc_reject_an_unaligned_pass_still_fails(
    key: Key, other_key: Key, dmarc: str | None
) -> None:
    # We decide whether the mail is the member's, not what the domain owner wants done with failures.
    raw = sign(REPLY, other_key, domain="mailer.example.net", selector="k1")

    verdict = await verify(raw, mailer(key, other_key, dmarc=dmarc))

    assert not verdict.passed
    assert "not aligned with kunde.example" in verdict.reason


async def test_signature_of_a_subdomain_is_aligned_unless_dmarc_is_strict(key: Key) -> None:
    raw = sign(REPLY, key, domain="mail.kunde.example", selector="s")
    relaxed = dns(key, txt={"s._domainkey.mail.kunde.example": [key.record]})
    strict = dns(
        key, dmarc="v=DMARC1; p=reject; adkim=s", txt={"s._domainkey.mail.kunde.example": [key.record]}
    )

    assert await verify(raw, relaxed) == Verdict(
        True, "DKIM signature of mail.kunde.example verified, aligned with kunde.example"
    )
    verdict = await verify(raw, strict)
    assert not verdict.passed
    assert "not aligned with kunde.example (DMARC adkim=s)" in verdict.reason


async def test_dmarc_record_of_the_parent_applies_to_a_subdomain(key: Key) -> None:
    raw = sign(REPLY.replace(b"@kunde.example>", b"@vertrieb.kunde.example>"), key, domain="kunde.example")
    resolver = dns(key, dmarc="v=DMARC1; p=reject; sp=quarantine; adkim=s")

    verdict = await verify(raw, resolver, from_address="anna.schmidt@vertrieb.kunde.example")

    assert not verdict.passed
    assert "kunde.example publishes DMARC p=quarantine" in verdict.reason
    assert ("TXT", "_dmarc.vertrieb.kunde.example") in resolver.queries


async def test_unknown_dmarc_record_admits_only_an_exact_match(key: Key) -> None:
    exact = sign(REPLY, key)
    subdomain = sign(REPLY, key, domain="mail.kunde.example", selector="s")
    resolver = dns(key, failing=[f"_dmarc.{DOMAIN}"], txt={"s._domainkey.mail.kunde.example": [key.record]})

    assert (await verify(exact, resolver)).passed
    verdict = await verify(subdomain, resolver)
    assert not verdict.passed
    assert verdict.temporary  # whether adkim=s forbids the subdomain is for DNS to say, later
    assert "the DMARC record of kunde.example could not be fetched" in verdict.reason


# --- verify: SPF ---------------------------------------------------------------------------------------


async def test_spf_pass_for_the_right_address_passes(key: Key) -> None:
    verdict = await verify(REPLY, dns(key), client_ip=INSIDE_SPF)

    assert verdict == Verdict(True, f"SPF of kunde.example for {INSIDE_SPF} is pass")


async def test_spf_fail_for_another_address_fails(key: Key) -> None:
    verdict = await verify(REPLY, dns(key), client_ip=OUTSIDE_SPF)

    assert verdict == Verdict(
        False,
        f"no DKIM signature and SPF of kunde.example for {OUTSIDE_SPF} is fail; "
        "kunde.example publishes DMARC p=reject",
    )


async def test_spf_pass_for_an_unrelated_envelope_sender_is_not_enough(key: Key) -> None:
    resolver = dns(key, txt={"bulk.example": ["v=spf1 ip4:198.51.100.0/24 -all"]})

    verdict = await verify(REPLY, resolver, envelope_sender="bounces@bulk.example", client_ip=OUTSIDE_SPF)

    assert not verdict.passed
    assert f"SPF of bulk.example for {OUTSIDE_SPF} is pass but bulk.example is not aligned" in verdict.reason


async def test_spf_of_helo_counts_for_the_null_sender(key: Key) -> None:
    resolver = dns(key, txt={"mail.kunde.example": ["v=spf1 ip4:198.51.100.7 -all"]})

    verdict = await verify(REPLY, resolver, envelope_sender="", helo="mail.kunde.example")

    assert verdict.passed
    assert verdict.reason == f"SPF of mail.kunde.example for {OUTSIDE_SPF} is pass"


async def test_spf_temperror_for_the_from_domain_is_temporary(key: Key) -> None:
    verdict = await verify(REPLY, dns(key, failing=[DOMAIN]))

    assert not verdict.passed
    assert verdict.temporary
    assert "is temperror" in verdict.reason


# --- trust-authentication-results ---------------------------------------------------------------------


def with_results(*values: str, raw: bytes = REPLY) -> bytes:
    """``raw`` with Authentication-Results headers on top, as a border MTA puts them."""
    return b"".join(f"Authentication-Results: {v}\r\n".encode() for v in values) + raw


async def trusting(raw: bytes, *, authserv_id: str | None = AUTHSERV_ID, from_address: str = FROM) -> Verdict:
    return await check_sender(
        Policy.TRUST_AUTHENTICATION_RESULTS,
        raw=raw,
        from_address=from_address,
        envelope_sender=from_address,
        client_ip=OUTSIDE_SPF,
        helo="mail.kunde.example",
        authserv_id=authserv_id,
        resolver=StaticResolver(),  # nothing is looked up under this policy
    )


DMARC_PASS = (
    f"{AUTHSERV_ID}; dkim=pass header.d=kunde.example; dmarc=pass (p=reject) header.from=kunde.example"
)


async def test_dmarc_pass_from_our_border_mta_passes() -> None:
    verdict = await trusting(with_results(DMARC_PASS))

    assert verdict == Verdict(True, f"{AUTHSERV_ID} reports dmarc=pass for kunde.example")


async def test_the_same_header_from_a_foreign_authserv_id_is_ignored() -> None:
    foreign = DMARC_PASS.replace(AUTHSERV_ID, "mx.kunde.example")

    verdict = await trusting(with_results(foreign))

    assert verdict == Verdict(False, f"no Authentication-Results from {AUTHSERV_ID}")


async def test_a_lookalike_authserv_id_is_foreign() -> None:
    lookalike = DMARC_PASS.replace(AUTHSERV_ID, AUTHSERV_ID + ".attacker.example", 1)

    assert not (await trusting(with_results(lookalike))).passed


async def test_dkim_fail_fails() -> None:
    verdict = await trusting(
        with_results(f"{AUTHSERV_ID}; dkim=fail (body hash mismatch) header.d=kunde.example")
    )

    assert verdict == Verdict(
        False,
        f"{AUTHSERV_ID} reports dkim=fail header.d=kunde.example; none is an aligned pass for kunde.example",
    )


@pytest.mark.parametrize(
    "results",
    [
        "dkim=pass header.d=kunde.example header.s=s1",
        "dkim=pass header.i=@vertrieb.kunde.example",
        "spf=pass smtp.mailfrom=anna.schmidt@kunde.example",
        "spf=pass smtp.mailfrom=kunde.example",
        "spf=pass smtp.helo=mail.kunde.example",
    ],
)
async def test_aligned_dkim_or_spf_pass_passes_without_a_dmarc_result(results: str) -> None:
    assert (await trusting(with_results(f"{AUTHSERV_ID}; {results}"))).passed


@pytest.mark.parametrize(
    "results",
    [
        "dkim=pass header.d=mailer.example.net",
        "spf=pass smtp.mailfrom=bounce@mailer.example.net",
        "dkim=pass",  # which domain signed is not said
        "spf=softfail smtp.mailfrom=kunde.example",
        "iprev=pass policy.iprev=192.0.2.10",
        "none",
    ],
)
async def test_anything_but_an_aligned_pass_fails(results: str) -> None:
    verdict = await trusting(with_results(f"{AUTHSERV_ID}; {results}"))

    assert not verdict.passed
    assert not verdict.temporary


async def test_a_dmarc_fail_outweighs_a_dkim_pass() -> None:
    # The MTA applied the domain's adkim=s and the public suffix list, which we approximate.
    raw = with_results(
        f"{AUTHSERV_ID}; dkim=pass header.d=mail.kunde.example; dmarc=fail header.from=kunde.example"
    )

    verdict = await trusting(raw)

    assert verdict == Verdict(False, f"{AUTHSERV_ID} reports dmarc=fail for kunde.example")


@pytest.mark.parametrize("results", ["dmarc=pass header.from=attacker.example", "dmarc=pass"])
async def test_dmarc_pass_must_name_the_from_domain(results: str) -> None:
    assert not (await trusting(with_results(f"{AUTHSERV_ID}; {results}"))).passed


async def test_results_spread_over_several_headers_of_ours_count() -> None:
    # opendkim, opendmarc and an SPF policy daemon each write their own header with the same id.
    raw = with_results(
        "mx.kunde.example; dkim=pass header.d=kunde.example",
        f"{AUTHSERV_ID}; spf=fail smtp.mailfrom=kunde.example",
        f"{AUTHSERV_ID.upper()};\r\n\tdkim=pass header.d=kunde.example",
    )

    assert (await trusting(raw)).passed


async def test_temperror_that_might_have_passed_is_temporary() -> None:
    verdict = await trusting(with_results(f"{AUTHSERV_ID}; dkim=temperror header.d=kunde.example"))

    assert not verdict.passed
    assert verdict.temporary


async def test_results_in_the_body_are_not_read() -> None:
    raw = REPLY + f"Authentication-Results: {DMARC_PASS}\r\n".encode()

    assert not (await trusting(raw)).passed


async def test_missing_authserv_id_is_our_problem_and_temporary() -> None:
    verdict = await trusting(with_results(DMARC_PASS), authserv_id=None)

    assert not verdict.passed
    assert verdict.temporary
    assert "authserv-id" in verdict.reason


MALFORMED_RESULTS = [
    "",
    ";",
    AUTHSERV_ID,
    f"{AUTHSERV_ID};",
    f"{AUTHSERV_ID}; dkim",
    f"{AUTHSERV_ID}; dkim=",
    f"{AUTHSERV_ID}; dkim=pass header.d=",
    f'{AUTHSERV_ID}; dmarc=pass header.from="',
    f"{AUTHSERV_ID}; dkim=pass (unterminated comment header.d=kunde.example",
    f"{AUTHSERV_ID} 2; dmarc=pass",
    f"({AUTHSERV_ID}; dmarc=pass",
    f"{AUTHSERV_ID}; \x00\x7f dmarc=pass",
    f"{AUTHSERV_ID}; dmarc=pass header.from=kunde.example; ;;; =",
    f"{AUTHSERV_ID}; x-unknown.method/7=weird policy.foo=bar",
    f"{AUTHSERV_ID}; dkim=pass header.d=kunde.example.." + "x" * 10_000,
    "ä" * 100,
]


@pytest.mark.parametrize("value", MALFORMED_RESULTS)
async def test_malformed_results_never_raise(value: str) -> None:
    raw = f"Authentication-Results: {value}\r\n".encode("utf-8", "surrogateescape") + REPLY

    verdict = await trusting(raw)

    assert isinstance(verdict, Verdict)
    # "... dmarc=pass header.from=kunde.example; ;;; =" is invalid as a whole: nothing of it is believed.
    assert not verdict.passed


async def test_many_long_headers_claiming_our_id_are_read_quickly() -> None:
    # A sender can write a megabyte of headers with our authserv-id, each just short enough to be read.
    value = f"{AUTHSERV_ID}; " + "; ".join(["dkim=fail header.d=x.example"] * 130)
    assert 3_900 < len(value) < 4_096
    raw = f"Authentication-Results: {value}\r\n".encode() * 260 + REPLY
    assert len(raw) > 1_000_000

    # That it is quick is for bench/ to measure; here: a verdict, and a hang fails the test.
    verdict = await asyncio.wait_for(trusting(raw), timeout=60)

    assert not verdict.passed


# --- off, and inputs that must never raise -----------------------------------------------------------------


async def test_off_passes_anything() -> None:
    verdict = await check_sender(
        Policy.OFF,
        raw=b"\x00\xff",
        from_address="",
        envelope_sender="",
        client_ip="",
        helo="",
        authserv_id=None,
        resolver=StaticResolver(failing=["kunde.example"]),
    )

    assert verdict.passed


def test_policy_values_are_the_configuration_spelling() -> None:
    assert [p.value for p in Policy] == ["off", "trust-authentication-results", "verify"]
    assert Policy("trust-authentication-results") is Policy.TRUST_AUTHENTICATION_RESULTS


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe garbage without any structure",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=kunde.example; s=mail2026; b=!!!; bh=???; h=from\r\n\r\nx",
        b"DKIM-Signature: garbage\r\nFrom: anna.schmidt@kunde.example\r\n\r\nx",
        b"DKIM-Signature: v=1; d=kunde.example; d=twice.example\r\n\r\n",
        b"no header section at all\r\n\x00\r\n",
        b"DKIM-Signature: v=1\r\n\x00broken: header\r\n\r\n",
    ],
)
@pytest.mark.parametrize("policy", list(Policy))
async def test_garbage_never_raises(key: Key, raw: bytes, policy: Policy) -> None:
    verdict = await check_sender(
        policy,
        raw=raw,
        from_address=FROM,
        envelope_sender="\x00<>@@",
        client_ip="not an address",
        helo="\xff",
        authserv_id=AUTHSERV_ID,
        resolver=dns(key),
    )

    assert verdict.passed is (policy is Policy.OFF)
    assert verdict.reason.isascii()
    assert verdict.reason.isprintable()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.binary(max_size=400)
    | st.builds(lambda head, tail: head + REPLY + tail, st.binary(max_size=80), st.binary(max_size=80)),
    from_address=st.text(max_size=40),
    sender=st.text(max_size=40),
    policy=st.sampled_from(list(Policy)),
)
def test_arbitrary_input_never_raises(
    key: Key, raw: bytes, from_address: str, sender: str, policy: Policy
) -> None:
    async def check() -> Verdict:
        return await check_sender(
            policy,
            raw=raw,
            from_address=from_address,
            envelope_sender=sender,
            client_ip=INSIDE_SPF,
            helo=sender,
            authserv_id=AUTHSERV_ID,
            resolver=dns(key),
        )

    verdict = asyncio.run(check())

    assert isinstance(verdict, Verdict)
    assert len(verdict.reason) <= 400
    assert verdict.reason.isascii()


async def test_unexpected_error_is_a_temporary_failure(key: Key, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(senderauth, "judge_checks", broken)

    verdict = await verify(sign(REPLY, key), dns(key))

    assert verdict == Verdict(
        False, "the sender could not be checked because of an internal error", temporary=True
    )


async def test_dkim_work_runs_off_the_event_loop(key: Key, monkeypatch: pytest.MonkeyPatch) -> None:
    # dkimpy parses and hashes the whole message in Python: that must not stall other connections.
    threads: set[int] = set()

    class Recording(dkim.DKIM):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            threads.add(threading.get_ident())
            super().__init__(*args, **kwargs)

        def verify_sig_process(self, *args: Any) -> Any:
            threads.add(threading.get_ident())
            return super().verify_sig_process(*args)

    signed = sign(REPLY, key)
    monkeypatch.setattr(senderauth.dkim, "DKIM", Recording)

    assert (await verify(signed, dns(key))).passed
    assert threads
    assert threading.get_ident() not in threads


# --- real-world mail -------------------------------------------------------------------------------------

CORPORA = os.environ.get(corpora.VARIABLE, "")


def corpus_samples() -> list[Path]:
    root = Path(CORPORA)
    return sorted(
        p for p in root.rglob("*") if p.is_file() and not p.name.upper().startswith(("LICENSE", "README"))
    )


async def test_every_corpus_sample_gets_a_verdict(key: Key) -> None:
    corpora.folder()  # skipped without the corpora, a failure where they are required
    samples = corpus_samples()
    assert samples, f"no samples in {CORPORA}"
    for path in samples:
        raw = path.read_bytes()
        # Trust each sample's own top header, so that real-world results go through the whole parser.
        results = authentication_results_of(raw)
        authserv_id = results[0].split(";")[0].strip() if results else AUTHSERV_ID
        for policy in (Policy.VERIFY, Policy.TRUST_AUTHENTICATION_RESULTS):
            verdict = await check_sender(
                policy,
                raw=raw,
                from_address="someone@example.com",
                envelope_sender="",
                client_ip="192.0.2.1",
                helo="mail.example.com",
                authserv_id=authserv_id or AUTHSERV_ID,
                resolver=StaticResolver(),
            )
            assert verdict.reason.isascii(), path
            assert verdict.reason.isprintable(), path
            assert verdict.reason != "the sender could not be checked because of an internal error", path
