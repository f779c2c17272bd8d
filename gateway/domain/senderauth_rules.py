"""Whether the From of a reply is believable: the sender-authentication decisions, without any I/O.

Two ways to decide, one per policy that checks anything (:class:`Policy`):

* ``trust-authentication-results``: :func:`judge_authentication_results` reads the RFC 8601 headers our
  own border MTA added, recognised by its authserv-id. A header naming any other authserv-id is ignored,
  since anyone can write one. The border MTA must remove headers that claim its authserv-id from
  incoming mail (RFC 8601 §5); every header with our authserv-id is taken as the MTA's.
* ``verify``: :mod:`gateway.senderauth.check` checks DKIM, SPF and DMARC itself and :func:`judge_checks`
  decides from what it found.

Both pass only when the From domain is vouched for by an *aligned* identifier, which is DMARC's test
(RFC 7489 §3.1): a DKIM signature of the From domain, or an SPF pass for the MAIL FROM domain.
"Relaxed" alignment here is "equal, or one a subdomain of the other" (:func:`aligned`) rather than
"same organisational domain" by the Public Suffix List: siblings (``a.example.com`` signing for
``b.example.com``) are refused, which errs on the safe side and spares us a list that goes stale.

Under ``verify`` the domain's DMARC record only chooses relaxed or strict alignment (``adkim``,
``aspf``) and names the policy in the reason; ``p=none`` does not let an unauthenticated From through,
because the gateway's question is not what the domain owner wants done with failures but whether this
mail is the member's. Every reason is a sentence a person understands: it is the text of the 5.7.1
answer and of the record.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import authres

from gateway.domain.headers import bytes_to_text, unfold

__all__ = [
    "DkimCheck",
    "DmarcLookup",
    "DmarcRecord",
    "Policy",
    "SpfCheck",
    "SpfResult",
    "Verdict",
    "aligned",
    "ascii_domain",
    "authentication_results_of",
    "domain_of",
    "judge_authentication_results",
    "judge_checks",
    "one_line",
    "parse_dmarc_records",
]


class Policy(enum.StrEnum):
    """A portfolio's sender-authentication policy; the values are the configuration's spelling."""

    OFF = "off"
    TRUST_AUTHENTICATION_RESULTS = "trust-authentication-results"
    VERIFY = "verify"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether the From is believable, and why in one sentence.

    ``temporary`` (only when not passed) says that asking again later may pass, because a DNS answer
    that mattered was missing: the listener answers 451 4.7.x then, and 550 5.7.1 otherwise.
    """

    passed: bool
    reason: str
    temporary: bool = False


# --- domains and alignment ------------------------------------------------------------------------------


def ascii_domain(text: str) -> str | None:
    """``text`` as a lower-case A-label domain without trailing dot, or None if it cannot be a domain."""
    domain = text.strip().lower().removesuffix(".")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    labels = domain.split(".")
    if len(domain) > 253 or any(not 0 < len(label) <= 63 for label in labels):
        return None
    if not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return domain


# Letters, digits, hyphens, and the underscore that real DKIM and SPF names (and some hosts) carry.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")


def domain_of(address: str) -> str | None:
    """The A-label domain of a mail address (after its last ``@``), or None."""
    _, at, domain = address.strip().strip("<>").rpartition("@")
    return ascii_domain(domain) if at else None


def aligned(identifier: str, from_domain: str, *, strict: bool = False) -> bool:
    """Whether an authenticated domain vouches for the From domain (RFC 7489 §3.1).

    Strict: the same domain. Relaxed: the same, or one is a subdomain of the other, where the shorter
    must have at least two labels, so that no top-level domain aligns with everything under it.
    """
    a, b = ascii_domain(identifier), ascii_domain(from_domain)
    if a is None or b is None:
        return False
    if a == b:
        return True
    if strict:
        return False
    shorter, longer = sorted((a, b), key=len)
    return "." in shorter and longer.endswith("." + shorter)


# --- DMARC records -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """The parts of a DMARC record (RFC 7489 §6.3) the gateway uses."""

    policy: str  # none, quarantine or reject
    subdomain_policy: str | None
    strict_dkim: bool  # adkim=s
    strict_spf: bool  # aspf=s

    def policy_for(self, from_domain: str, found_at: str) -> str:
        """The policy that applies to ``from_domain`` when the record was found at ``found_at``."""
        if from_domain != found_at and self.subdomain_policy is not None:
            return self.subdomain_policy
        return self.policy


@dataclass(frozen=True, slots=True)
class DmarcLookup:
    """What DNS said about the From domain's DMARC record: the record and where, or why there is none."""

    record: DmarcRecord | None
    found_at: str
    temporary: bool = False
    problem: str = ""


_POLICIES = frozenset({"none", "quarantine", "reject"})


def parse_dmarc_records(texts: Sequence[bytes]) -> DmarcRecord | None:
    """The DMARC record among the TXT records at ``_dmarc.<domain>``, or None (RFC 7489 §6.6.3).

    Records not starting with ``v=DMARC1`` are other TXT records and skipped; more than one DMARC record
    counts as none. An invalid or missing ``p=`` is read as ``p=none`` (§6.6.3 allows this when ``rua``
    is given; we never act on ``p`` alone anyway), unknown tags are ignored.
    """
    candidates = [text for text in texts if re.match(rb"\s*v\s*=\s*DMARC1\s*(;|$)", text)]
    if len(candidates) != 1:
        return None
    tags: dict[str, str] = {}
    for part in candidates[0].decode("ascii", "replace").split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip().lower(), value.strip().lower())
    policy = tags.get("p", "none")
    subdomain_policy = tags.get("sp")
    return DmarcRecord(
        policy=policy if policy in _POLICIES else "none",
        subdomain_policy=subdomain_policy if subdomain_policy in _POLICIES else None,
        strict_dkim=tags.get("adkim") == "s",
        strict_spf=tags.get("aspf") == "s",
    )


# --- verify: the gateway's own checks --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DkimCheck:
    """One DKIM signature of the message and what came of verifying it.

    ``problem`` says why it did not verify, in a few words; ``temporary`` that its key could not be
    fetched for now.
    """

    domain: str
    selector: str
    verified: bool
    problem: str = ""
    temporary: bool = False


class SpfResult(enum.StrEnum):
    """The results of SPF's check_host() (RFC 7208 §2.6)."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True, slots=True)
class SpfCheck:
    """The SPF result for the client address and the domain checked (MAIL FROM's, or HELO's if empty).

    ``domain`` is empty when there was no domain to check at all; ``problem`` says why a result is
    none, temperror or permerror.
    """

    result: SpfResult
    domain: str
    client_ip: str
    problem: str = ""


# A handful of signatures is every honest message; more are only named as a count.
_SIGNATURES_NAMED = 3


def judge_checks(from_domain: str, dkim: Sequence[DkimCheck], spf: SpfCheck, dmarc: DmarcLookup) -> Verdict:
    """The verdict on the gateway's own DKIM, SPF and DMARC findings for ``from_domain`` (A-label)."""
    record = dmarc.record
    strict_dkim = record.strict_dkim if record else False
    strict_spf = record.strict_spf if record else False

    def dkim_pass(check: DkimCheck, *, strict: bool) -> bool:
        return check.verified and aligned(check.domain, from_domain, strict=strict)

    def spf_pass(*, strict: bool) -> bool:
        return spf.result is SpfResult.PASS and aligned(spf.domain, from_domain, strict=strict)

    # Without the record the alignment mode is unknown: only what passes in either mode counts.
    uncertain = dmarc.temporary
    for check in dkim:
        if dkim_pass(check, strict=strict_dkim or uncertain):
            return Verdict(True, _dkim_passed(check, from_domain))
    if spf_pass(strict=strict_spf or uncertain):
        return Verdict(True, f"SPF of {spf.domain} for {spf.client_ip} is pass")

    relaxed_pass = any(dkim_pass(c, strict=False) for c in dkim) or spf_pass(strict=False)
    temporary = (
        (uncertain and relaxed_pass)
        or any(c.temporary and aligned(c.domain, from_domain) for c in dkim)
        or (spf.result is SpfResult.TEMPERROR and aligned(spf.domain, from_domain))
    )
    reason = f"{_dkim_failed(dkim, from_domain, strict_dkim)} and {_spf_failed(spf, from_domain, strict_spf)}"
    return Verdict(False, f"{reason}; {_dmarc_said(dmarc, from_domain)}", temporary=temporary)


def _dkim_passed(check: DkimCheck, from_domain: str) -> str:
    if check.domain == from_domain:
        return f"DKIM signature of {check.domain} verified"
    return f"DKIM signature of {check.domain} verified, aligned with {from_domain}"


def _dkim_failed(checks: Sequence[DkimCheck], from_domain: str, strict: bool) -> str:
    if not checks:
        return "no DKIM signature"
    parts = []
    for check in checks[:_SIGNATURES_NAMED]:
        if check.verified:
            mode = " (DMARC adkim=s)" if strict else ""
            parts.append(
                f"DKIM signature of {check.domain} verified but is not aligned with {from_domain}{mode}"
            )
        elif check.temporary:
            parts.append(f"DKIM key of {check.domain} could not be fetched ({check.problem})")
        elif check.domain:
            parts.append(f"DKIM signature of {check.domain} did not verify ({check.problem})")
        else:
            parts.append(f"a DKIM signature could not be checked ({check.problem})")
    if len(checks) > _SIGNATURES_NAMED:
        parts.append(f"{len(checks) - _SIGNATURES_NAMED} more DKIM signatures")
    return ", ".join(parts)


def _spf_failed(spf: SpfCheck, from_domain: str, strict: bool) -> str:
    if not spf.domain:
        return f"SPF for {spf.client_ip} could not be checked ({spf.problem or 'no domain to check'})"
    text = f"SPF of {spf.domain} for {spf.client_ip} is {spf.result.value}"
    if spf.result is SpfResult.PASS:
        mode = " (DMARC aspf=s)" if strict else ""
        return f"{text} but {spf.domain} is not aligned with {from_domain}{mode}"
    return f"{text} ({spf.problem})" if spf.problem else text


def _dmarc_said(dmarc: DmarcLookup, from_domain: str) -> str:
    if dmarc.temporary:
        return f"the DMARC record of {from_domain} could not be fetched ({dmarc.problem})"
    if dmarc.record is None:
        return f"{from_domain} publishes no DMARC record"
    return f"{dmarc.found_at} publishes DMARC p={dmarc.record.policy_for(from_domain, dmarc.found_at)}"


# --- trust-authentication-results ------------------------------------------------------------------------

# Our border MTA writes a line or two; a longer header is someone else's. authres needs about 3 ms per
# kB, so these two bounds keep the worst a sender can write at ~0.1 s of parsing.
MAX_RESULTS_HEADER = 4 * 1024
# Headers that claim our authserv-id and are read at most; a sender could add thousands.
MAX_TRUSTED_HEADERS = 10
_RESULTS_NAMED = 4

# The empty line that ends the header section; at the very start, there is no header section at all.
_HEADER_SECTION_END = re.compile(rb"(?:\A|\r?\n)\r?\n")
_RESULTS_FIELD = re.compile(
    rb"^authentication-results[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE
)
# Bounds the search for headers like parsing.MAX_HEADER_BYTES bounds the parser.
_MAX_HEADER_SECTION = 1024 * 1024


def authentication_results_of(raw: bytes) -> list[str]:
    """The values of the ``Authentication-Results`` headers of ``raw``, unfolded, top to bottom.

    Only the header section (up to the first empty line, at most 1 MiB) is searched. Never raises.
    """
    end = _HEADER_SECTION_END.search(raw, 0, _MAX_HEADER_SECTION)
    section = raw[: end.start()] if end else raw[:_MAX_HEADER_SECTION]
    return [unfold(bytes_to_text(m.group(1))).strip() for m in _RESULTS_FIELD.finditer(section)]


@dataclass(frozen=True, slots=True)
class _Result:
    method: str
    result: str
    properties: dict[tuple[str, str], str]

    def describe(self) -> str:
        shown = " ".join(f"{t}.{n}={v}" for (t, n), v in self.properties.items() if (t, n) in _SHOWN)
        return f"{self.method}={self.result}" + (f" {shown}" if shown else "")


_SHOWN = frozenset(
    {("header", "d"), ("header", "i"), ("header", "from"), ("smtp", "mailfrom"), ("smtp", "helo")}
)


def judge_authentication_results(headers: Sequence[str], *, authserv_id: str, from_domain: str) -> Verdict:
    """The verdict on the results our border MTA (``authserv_id``) wrote into ``headers`` for ``from_domain``.

    ``headers`` are the unfolded values of the message's ``Authentication-Results`` headers. A DMARC
    result whose ``header.from`` is the From domain decides when there is one (``fail`` beats ``pass``
    should both appear): the MTA applied the domain's own alignment modes and organisational domain.
    Otherwise a ``dkim=pass`` whose ``header.d`` (or ``header.i``) aligns with the From domain passes, or
    an ``spf=pass`` whose ``smtp.mailfrom`` (or, for an empty MAIL FROM, ``smtp.helo``) does. A
    ``temperror`` that could have passed makes a failing verdict temporary. Never raises.
    """
    ours = authserv_id.strip().lower()
    results: list[_Result] = []
    found = unreadable = 0
    for value in headers:
        if not _claims(value, ours):
            continue
        if found == MAX_TRUSTED_HEADERS:
            break
        found += 1
        parsed = _parse_results(value) if len(value) <= MAX_RESULTS_HEADER else None
        if parsed is None:
            unreadable += 1
        else:
            results.extend(parsed)
    if not found:
        return Verdict(False, f"no Authentication-Results from {authserv_id}")
    if found == unreadable:
        return Verdict(False, f"the Authentication-Results from {authserv_id} could not be read")

    dmarc = [r for r in results if r.method == "dmarc" and _about(r, from_domain)]
    if any(r.result == "fail" for r in dmarc):
        return Verdict(False, f"{authserv_id} reports dmarc=fail for {from_domain}")
    if any(r.result == "pass" for r in dmarc):
        return Verdict(True, f"{authserv_id} reports dmarc=pass for {from_domain}")

    for r in results:
        identity = _identity(r)
        if r.result == "pass" and identity is not None and aligned(identity, from_domain):
            return Verdict(
                True, f"{authserv_id} reports {r.method}=pass for {identity}, aligned with {from_domain}"
            )

    temporary = any(r.result == "temperror" for r in dmarc) or any(
        r.result == "temperror" and (_identity(r) is None or aligned(_identity(r) or "", from_domain))
        for r in results
        if r.method in ("dkim", "spf")
    )
    relevant = [r for r in results if r.method in ("dmarc", "dkim", "spf")]
    if not relevant:
        said = "no DKIM, SPF or DMARC result"
    else:
        said = ", ".join(r.describe() for r in relevant[:_RESULTS_NAMED])
        if len(relevant) > _RESULTS_NAMED:
            said += f" and {len(relevant) - _RESULTS_NAMED} more"
    return Verdict(
        False, f"{authserv_id} reports {said}; none is an aligned pass for {from_domain}", temporary=temporary
    )


def _claims(value: str, authserv_id: str) -> bool:
    """Whether the header names ``authserv_id``; a cheap look before the parser is asked."""
    text = value.lstrip()
    if text.startswith("("):  # a comment may come first (CFWS); a nested one is not worth the trouble
        text = text[text.find(")") + 1 :].lstrip()
    text = text.lower()
    if not text.startswith(authserv_id):
        return False
    rest = text[len(authserv_id) :]
    return not rest or rest[0] in " \t;("


def _parse_results(value: str) -> list[_Result] | None:
    try:
        header = authres.AuthenticationResultsHeader.parse_value(value)
    except Exception:  # authres raises its own errors, and whatever else odd input brings out
        return None
    found: list[_Result] = []
    for result in _items(header.results):
        method, outcome = getattr(result, "method", None), getattr(result, "result", None)
        if not isinstance(method, str) or not isinstance(outcome, str):
            continue
        properties: dict[tuple[str, str], str] = {}
        for prop in _items(getattr(result, "properties", None)):
            ptype, name, pvalue = (getattr(prop, a, None) for a in ("type", "name", "value"))
            if isinstance(ptype, str) and isinstance(name, str) and isinstance(pvalue, str):
                properties.setdefault((ptype.lower(), name.lower()), one_line(pvalue, limit=100))
        found.append(_Result(method.lower(), outcome.lower(), properties))
    return found


def _items(value: object) -> Iterable[object]:
    return value if isinstance(value, list) else ()


def _about(result: _Result, from_domain: str) -> bool:
    """Whether a DMARC result names ``from_domain`` in its ``header.from``.

    A result that names no domain cannot be told apart from one about another From header of the same
    message (a message may carry two), so it does not count; every DMARC filter in use writes it.
    """
    said = result.properties.get(("header", "from"))
    if not said:
        return False
    return (domain_of(said) if "@" in said else ascii_domain(said)) == from_domain


def _identity(result: _Result) -> str | None:
    """The domain a DKIM or SPF result authenticated, as the MTA reported it."""
    p = result.properties
    if result.method == "dkim":
        if ("header", "d") in p:
            return ascii_domain(p["header", "d"])
        return domain_of(p["header", "i"]) if ("header", "i") in p else None
    if result.method == "spf":
        mailfrom = p.get(("smtp", "mailfrom"))
        if mailfrom:
            return domain_of(mailfrom) if "@" in mailfrom else ascii_domain(mailfrom)
        helo = p.get(("smtp", "helo"))
        return ascii_domain(helo) if helo else None
    return None


# --- reasons ------------------------------------------------------------------------------------


def one_line(text: str, *, limit: int = 400) -> str:
    """``text`` as one line of printable ASCII of at most ``limit`` characters, fit for an SMTP reply.

    Runs of whitespace (line breaks included) become one space, anything else that is not printable ASCII
    becomes ``?``: a reason can quote what a sender wrote.
    """
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in " ".join(text.split()))
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3].rstrip() + "..."
