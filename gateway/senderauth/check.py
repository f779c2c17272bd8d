"""Whether a reply's From is believable under its portfolio's policy: gathers the evidence, gets the verdict.

:func:`check_sender` is the one entry point. Under ``off`` everything passes; under
``trust-authentication-results`` the headers of our own border MTA decide; under ``verify`` the gateway
checks DKIM (dkimpy), SPF (:mod:`gateway.senderauth.spf`) and the DMARC record itself, concurrently, through a
:class:`~gateway.senderauth.dns.DnsResolver`. The decisions are pure functions in
:mod:`gateway.domain.senderauth_rules`; this module only gathers their input.

dkimpy is synchronous and reads the whole message (canonicalisation is Python code over the body), so
it runs in worker threads, in two steps around the key look-ups: the threads never wait for DNS, the
event loop never hashes a body. We use dkimpy's verification in the two halves dkimpy itself splits it
into for its asyncio variant (``verify_headerprep``, then ``evaluate_pk`` and ``verify_sig_process``),
which also gives us every signature's reason for failing instead of a bare False.

Nothing here raises on what a sender can send: broken headers, bad signatures and DNS trouble become a
failing :class:`Verdict` whose reason says what was wrong, ``temporary`` when DNS may answer later.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, ParamSpec

import dkim
from dkim.canonicalization import CanonicalizationPolicy

from gateway.domain.senderauth_rules import (
    DkimCheck,
    DmarcLookup,
    Policy,
    Verdict,
    ascii_domain,
    authentication_results_of,
    domain_of,
    judge_authentication_results,
    judge_checks,
    one_line,
    parse_dmarc_records,
)
from gateway.errors import DnsTemporaryError
from gateway.senderauth.dns import DnsResolver, normalise_name
from gateway.senderauth.spf import check_spf

__all__ = ["Policy", "Verdict", "check_sender"]

log = logging.getLogger(__name__)
P = ParamSpec("P")

# Signatures verified per message; an honest one has one or two, a hostile one could carry hundreds,
# each costing a key look-up and a pass over the body.
MAX_SIGNATURES = 5
# RFC 8301 §3.2: keys shorter than 1024 bits are not to be trusted.
MIN_KEY_BITS = 1024
_SIGNATURE_HEADER = re.compile(rb"^dkim-signature[ \t]*:", re.IGNORECASE | re.MULTILINE)
_MAX_HEADER_SECTION = 1024 * 1024
# The From domain's own _dmarc name, then those of its parents up to this many labels (a short DNS tree
# walk in place of the Public Suffix List, as DMARCbis does it).
_DMARC_PARENT_LABELS = 4


def _never_raising(check: Callable[P, Awaitable[Verdict]]) -> Callable[P, Awaitable[Verdict]]:
    """``check`` with its reason made one line, and an unexpected error inside it logged and answered as a
    temporary failure, so that the sender retries instead of being refused for our mistake."""

    @functools.wraps(check)
    async def checked(*args: P.args, **kwargs: P.kwargs) -> Verdict:
        try:
            verdict = await check(*args, **kwargs)
        except Exception:
            log.exception("sender check of %r failed unexpectedly", kwargs.get("from_address"))
            verdict = Verdict(
                False, "the sender could not be checked because of an internal error", temporary=True
            )
        return replace(verdict, reason=one_line(verdict.reason))

    return checked


@_never_raising
async def check_sender(
    policy: Policy,
    *,
    raw: bytes,
    from_address: str,
    envelope_sender: str,
    client_ip: str,
    helo: str,
    authserv_id: str | None,
    resolver: DnsResolver,
) -> Verdict:
    """Whether ``from_address`` (the address of the reply's From header) may be believed under ``policy``.

    ``raw`` is the message as received; ``envelope_sender`` the MAIL FROM address (empty for the null
    sender), ``client_ip`` and ``helo`` what the connecting client showed. ``authserv_id`` names our
    border MTA in its ``Authentication-Results`` headers and is needed by
    ``trust-authentication-results`` only. The reason of the verdict is one line of printable ASCII.
    Never raises, whatever the message (:func:`_never_raising`).
    """
    if policy is Policy.OFF:
        return Verdict(True, "sender authentication is off for this portfolio")
    from_domain = domain_of(from_address)
    if from_domain is None:
        return Verdict(False, f"the From address {from_address!r} has no domain that could be checked")
    if policy is Policy.TRUST_AUTHENTICATION_RESULTS:
        if not authserv_id or not authserv_id.strip():
            # Our configuration is missing, not the sender's authentication: let the sender retry.
            return Verdict(
                False, "no authserv-id is configured to trust Authentication-Results from", temporary=True
            )
        # Bounded (one search of at most 1 MiB of header section, a few short headers parsed) but
        # still up to ~0.1 s of Python for a hostile message: a worker thread takes it.
        return await asyncio.to_thread(_judge_results, raw, authserv_id.strip(), from_domain)
    dkim_checks, spf, dmarc = await asyncio.gather(
        _check_dkim(raw, resolver),
        check_spf(client_ip, envelope_sender, helo, resolver),
        _lookup_dmarc(from_domain, resolver),
    )
    return judge_checks(from_domain, dkim_checks, spf, dmarc)


def _judge_results(raw: bytes, authserv_id: str, from_domain: str) -> Verdict:
    headers = authentication_results_of(raw)
    return judge_authentication_results(headers, authserv_id=authserv_id, from_domain=from_domain)


# --- DKIM ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Signature:
    """One DKIM-Signature header on its way through the two steps; ``problem`` once it has failed."""

    index: int
    domain: str = ""
    selector: str = ""
    key_name: str = ""
    prepared: Any = None  # what dkimpy's verify_headerprep returned, for verify_sig_process
    key: bytes | None = None
    problem: str = ""
    temporary: bool = False
    verified: bool = False

    def check(self) -> DkimCheck:
        return DkimCheck(self.domain, self.selector, self.verified, self.problem, self.temporary)


async def _check_dkim(raw: bytes, resolver: DnsResolver) -> list[DkimCheck]:
    """Every DKIM signature of ``raw`` (up to MAX_SIGNATURES) verified; key look-ups between the threads."""
    verifier, signatures = await asyncio.to_thread(_prepare, raw)
    pending = [s for s in signatures if not s.problem]
    names = sorted({s.key_name for s in pending})
    answers = dict(
        zip(names, await asyncio.gather(*(_fetch_key(name, resolver) for name in names)), strict=True)
    )
    for signature in pending:
        signature.key, signature.problem, signature.temporary = answers[signature.key_name]
    if any(s.key is not None for s in signatures):
        await asyncio.to_thread(_verify, verifier, signatures)
    return [s.check() for s in signatures]


async def _fetch_key(name: str, resolver: DnsResolver) -> tuple[bytes | None, str, bool]:
    """The key record at ``name``, or None, why not, and whether asking later may find it."""
    try:
        records = await resolver.txt(name)
    except DnsTemporaryError as exc:
        return None, str(exc), True
    if not records:
        return None, f"no key published at {name}", False
    # A second record at a key name is a publisher's mistake; we read the one that holds a key.
    return next((r for r in records if b"p=" in r), records[0]), "", False


def _prepare(raw: bytes) -> tuple[Any, list[_Signature]]:
    """Thread step 1: parse the message and each signature header, and name the keys to fetch."""
    try:
        verifier = dkim.DKIM(raw, minkey=MIN_KEY_BITS)
    except Exception:  # dkimpy's MessageFormatError, or whatever else broken bytes provoke
        if _SIGNATURE_HEADER.search(raw, 0, _MAX_HEADER_SECTION) is None:
            return None, []
        return None, [_Signature(0, problem="dkimpy could not read the message's header section")]
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    signatures = [_Signature(i) for i in range(min(count, MAX_SIGNATURES))]
    for signature in signatures:
        try:
            _prepare_one(verifier, signature)
        except Exception as exc:
            signature.problem = signature.problem or _short(exc)
    return verifier, signatures


def _prepare_one(verifier: Any, signature: _Signature) -> None:
    headers = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    signature.domain, signature.selector = _names(headers[signature.index])
    signature.prepared = verifier.verify_headerprep(signature.index)  # raises on malformed signatures
    fields, include_headers, _ = signature.prepared
    domain = ascii_domain(fields[b"d"].decode("utf-8", "replace"))
    selector = fields[b"s"].decode("ascii", "replace").lower()
    key_name = normalise_name(f"{selector}._domainkey.{domain}") if domain else None
    if domain is None or key_name is None:
        signature.problem = "its d= or s= is not a domain name"
    elif b"from" not in include_headers:
        # RFC 6376 §5.4: a signature that does not cover From says nothing about who wrote the mail.
        signature.problem = "it does not sign the From header"
    else:
        signature.domain, signature.selector, signature.key_name = domain, selector, key_name


def _verify(verifier: Any, signatures: list[_Signature]) -> None:
    """Thread step 2: check each signature whose key was found against the body and the headers."""
    for signature in signatures:
        if signature.key is None:
            continue
        try:
            signature.verified = _verify_one(verifier, signature)
        except Exception as exc:
            signature.problem = _short(exc)
        else:
            signature.problem = signature.problem or ("" if signature.verified else "signature mismatch")


def _verify_one(verifier: Any, signature: _Signature) -> bool:
    fields, include_headers, signature_headers = signature.prepared
    verifier.pk, verifier.keysize, verifier.ktag, verifier.seqtlsrpt = dkim.evaluate_pk(
        signature.key_name.encode("ascii"), signature.key
    )
    if not verifier.verify_sig_process(fields, include_headers, signature_headers[signature.index], None):
        return False
    if b"l" in fields:
        # A body length limit lets anyone append text below what was signed; a reply's text is the
        # point of it, so a signature that does not cover the whole body does not count.
        canon = CanonicalizationPolicy.from_c_value(fields.get(b"c", b"simple/simple"))
        if int(fields[b"l"]) < len(canon.canonicalize_body(verifier.body)):
            signature.problem = "it signs only part of the body (l=)"
            return False
    return True


def _names(header_value: bytes) -> tuple[str, str]:
    """d= and s= of a signature header as far as they can be read, for reasons about broken ones."""
    found = dict(re.findall(rb"(?:^|;)\s*([ds])\s*=\s*([^;\s]*)", header_value))
    domain, selector = found.get(b"d", b""), found.get(b"s", b"")
    return domain.decode("ascii", "replace").lower()[:100], selector.decode("ascii", "replace")[:100]


def _short(exc: Exception) -> str:
    """A dkimpy error in a few words: details in parentheses (base64 of hashes, raw tags) dropped."""
    text = re.sub(r"\s*\(.*\)\s*$", "", str(exc), flags=re.DOTALL).strip()
    if isinstance(exc, dkim.DKIMException):
        return one_line(text, limit=80) or type(exc).__name__
    return f"{type(exc).__name__}: {one_line(text, limit=60)}" if text else type(exc).__name__


# --- DMARC --------------------------------------------------------------------------------------------


async def _lookup_dmarc(from_domain: str, resolver: DnsResolver) -> DmarcLookup:
    """The DMARC record for ``from_domain``: its own, else the nearest parent's (RFC 7489 §6.6.3)."""
    labels = from_domain.split(".")
    parents = [
        ".".join(labels[i:]) for i in range(1, len(labels) - 1) if len(labels) - i <= _DMARC_PARENT_LABELS
    ]
    for candidate in (from_domain, *parents):
        try:
            texts = await resolver.txt(f"_dmarc.{candidate}")
        except DnsTemporaryError as exc:
            return DmarcLookup(None, candidate, temporary=True, problem=str(exc))
        record = parse_dmarc_records(texts)
        if record is not None:
            return DmarcLookup(record, candidate)
    return DmarcLookup(None, from_domain)
