"""SPF (RFC 7208): may this client address send mail for this domain, asked of an injectable resolver.

Written here rather than taken from pyspf because pyspf reads DNS through a module-level function (one
resolver for the whole process, swapped by monkeypatching) and synchronously, so every check would hold
a worker thread for up to ten sequential look-ups. This evaluates over :class:`DnsResolver`,
asynchronously, with the limits of §4.6.4: ten look-ups by ``include``, ``a``, ``mx``, ``ptr``,
``exists`` and ``redirect``, ten MX hosts per ``mx``, two look-ups that find nothing, and a time limit
for the whole check.

All of check_host() (§4) is here, macros (§7) included, but for two things: ``ptr`` (§5.5, "SHOULD NOT
be published") counts as a look-up and never matches, which can only turn a pass into no pass; and the
``exp=`` explanation is never fetched, since nobody reads it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import urllib.parse
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from gateway.domain.senderauth_rules import SpfCheck, SpfResult, ascii_domain
from gateway.errors import DnsTemporaryError
from gateway.senderauth.dns import DnsResolver, normalise_name

__all__ = ["MAX_LOOKUPS", "check_spf"]

MAX_LOOKUPS = 10
MAX_MX_HOSTS = 10
MAX_VOID_LOOKUPS = 2
TIME_LIMIT = 20.0  # seconds; §4.6.4 asks for at least 20

_T = TypeVar("_T")
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address

_QUALIFIERS = {"+": SpfResult.PASS, "-": SpfResult.FAIL, "~": SpfResult.SOFTFAIL, "?": SpfResult.NEUTRAL}
_RECORD = re.compile(rb"v=spf1(?: |$)", re.IGNORECASE)
_MODIFIER = re.compile(r"([a-z][a-z0-9_.-]*)=(.*)", re.IGNORECASE | re.DOTALL)
_MECHANISM = re.compile(r"([-+?~]?)([a-z][a-z0-9_.-]*)(.*)", re.IGNORECASE | re.DOTALL)
_DUAL_CIDR = re.compile(r"(.*?)(?:/(0|[1-9]\d*))?(?://(0|[1-9]\d*))?", re.DOTALL)
# §7.1: a macro-string; c, r and t belong to explanations and are refused in domain-specs.
_MACRO_EXPAND = re.compile(r"%(?:\{([slodiphv])(\d*)(r?)([.\-+,/_=]*)\}|([%_-]))", re.IGNORECASE)
_LITERAL = re.compile(r"[!-$&-~]*")  # printable ASCII but "%"


class _PermError(Exception):
    """The policy is broken (§2.6.7); the message says how, in a few words."""


class _TempError(Exception):
    """DNS failed for now (§2.6.6)."""


async def check_spf(
    client_ip: str,
    envelope_sender: str,
    helo: str,
    resolver: DnsResolver,
    *,
    time_limit: float = TIME_LIMIT,
) -> SpfCheck:
    """The SPF result for mail from ``client_ip``: for the MAIL FROM domain, or HELO's if it is empty.

    That is the identity §2.4 checks and DMARC aligns with. Never raises: broken policies are
    ``permerror``, DNS trouble and running out of time ``temperror``.
    """
    try:
        ip: _IP = ipaddress.ip_address(client_ip.strip().strip("[]"))
    except ValueError:
        return SpfCheck(SpfResult.NONE, "", client_ip, "the client address is not an IP address")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # §5: an IPv4-mapped address is checked as the IPv4 address it is

    sender = envelope_sender.strip().strip("<>")
    local, at, domain_text = sender.rpartition("@")
    if not sender:
        local, domain_text = "postmaster", helo.strip()  # the null sender: HELO is the identity (§2.4)
    elif not at:
        local, domain_text = "postmaster", sender
    domain = ascii_domain(domain_text)
    if domain is None or "." not in domain:
        # §4.3: a malformed domain gives "none"; a single label cannot hold an SPF record of its own.
        return SpfCheck(SpfResult.NONE, "", str(ip), f"{domain_text or 'nothing'!r} is no domain to check")

    evaluation = _Evaluation(ip, local or "postmaster", domain, helo.strip(), resolver)
    try:
        async with asyncio.timeout(time_limit):
            result = await evaluation.check_host(domain)
    except _PermError as exc:
        return SpfCheck(SpfResult.PERMERROR, domain, str(ip), str(exc))
    except _TempError as exc:
        return SpfCheck(SpfResult.TEMPERROR, domain, str(ip), str(exc))
    except TimeoutError:
        return SpfCheck(SpfResult.TEMPERROR, domain, str(ip), f"no answer within {time_limit:g} seconds")
    problem = f"{domain} publishes no SPF record" if result is SpfResult.NONE else ""
    return SpfCheck(result, domain, str(ip), problem)


@dataclass(frozen=True, slots=True)
class _Term:
    """A mechanism of a record: the result if it matches, its name and its parsed argument."""

    result: SpfResult
    name: str
    spec: str = ""  # domain-spec, unexpanded; empty means the current domain
    cidr4: int = 32
    cidr6: int = 128
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None


@dataclass(slots=True)
class _Evaluation:
    """One check_host() with its nested includes: the identity being checked and the shared limits."""

    ip: _IP
    local: str
    sender_domain: str
    helo: str
    resolver: DnsResolver
    lookups: int = 0
    voids: int = 0

    async def check_host(self, domain: str) -> SpfResult:
        """§4: the result for ``domain``; raises _PermError or _TempError for those two results."""
        record = await self._record(domain)
        if record is None:
            return SpfResult.NONE
        terms, redirect = _parse(record)
        for term in terms:
            if await self._matches(term, domain):
                return term.result
        if redirect is None:
            return SpfResult.NEUTRAL
        self._count_lookup()
        target = self._target(redirect, domain)
        result = await self.check_host(target)
        if result is SpfResult.NONE:
            raise _PermError(f"redirect to {target}, which publishes no SPF record")
        return result

    async def _record(self, domain: str) -> str | None:
        if normalise_name(domain) is None:
            return None
        texts = await self._ask(self.resolver.txt(domain))
        records = [text for text in texts if _RECORD.match(text)]
        if not records:
            return None
        if len(records) > 1:
            raise _PermError(f"{domain} publishes {len(records)} SPF records")
        try:
            return records[0].decode("ascii")
        except UnicodeDecodeError:
            raise _PermError(f"the SPF record of {domain} is not ASCII") from None

    async def _matches(self, term: _Term, domain: str) -> bool:
        if term.name == "all":
            return True
        if term.network is not None:  # ip4, ip6: an address of the other family never matches
            return self.ip.version == term.network.version and self.ip in term.network
        self._count_lookup()
        target = self._target(term.spec, domain) if term.spec else domain
        if term.name == "include":
            result = await self.check_host(target)
            if result is SpfResult.NONE:
                raise _PermError(f"include of {target}, which publishes no SPF record")
            return result is SpfResult.PASS
        if term.name == "ptr":
            return False  # §5.5: deprecated; the look-up is counted, the mechanism never matches
        if term.name == "exists":
            return bool(await self._addresses(target, 4, void_counts=True))
        if term.name == "a":
            return self._in_any(await self._addresses(target, self.ip.version, void_counts=True), term)
        hosts = await self._ask(self.resolver.mx(target))  # the only name left: "mx"
        if not hosts:
            self._count_void()
        if len(hosts) > MAX_MX_HOSTS:
            raise _PermError(f"{target} has more than {MAX_MX_HOSTS} MX hosts")
        for host in hosts:
            if self._in_any(await self._addresses(host, self.ip.version, void_counts=False), term):
                return True
        return False

    def _in_any(self, addresses: list[_IP], term: _Term) -> bool:
        length = term.cidr4 if self.ip.version == 4 else term.cidr6
        return any(self.ip in ipaddress.ip_network(f"{a}/{length}", strict=False) for a in addresses)

    async def _addresses(self, name: str, version: int, *, void_counts: bool) -> list[_IP]:
        texts = await self._ask(self.resolver.a(name) if version == 4 else self.resolver.aaaa(name))
        if not texts and void_counts:
            self._count_void()
        found: list[_IP] = []
        for text in texts:
            try:
                found.append(ipaddress.ip_address(text))
            except ValueError:
                continue
        return found

    async def _ask(self, question: Awaitable[_T]) -> _T:
        try:
            return await question
        except DnsTemporaryError as exc:
            raise _TempError(str(exc)) from None

    def _count_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise _PermError(f"more than {MAX_LOOKUPS} DNS look-ups")

    def _count_void(self) -> None:
        self.voids += 1
        if self.voids > MAX_VOID_LOOKUPS:
            raise _PermError(f"more than {MAX_VOID_LOOKUPS} look-ups found nothing")

    def _target(self, spec: str, domain: str) -> str:
        """A domain-spec with its macros expanded; labels go on the left until it fits (§4.8, §7.3)."""
        expanded = _expand(spec, self, domain).lower().removesuffix(".")
        while len(expanded) > 253 and "." in expanded:
            expanded = expanded.split(".", 1)[1]
        target = normalise_name(expanded)
        if target is None:
            raise _PermError(f"{expanded!r} is not a domain name")
        return target


def _parse(record: str) -> tuple[list[_Term], str | None]:
    """The mechanisms and the redirect target of a record; any syntax error is a permerror (§4.6)."""
    terms: list[_Term] = []
    modifiers: dict[str, str] = {}
    for text in record.split(" ")[1:]:
        if not text:
            continue
        modifier = _MODIFIER.fullmatch(text)
        if modifier is not None:
            name, value = modifier.group(1).lower(), modifier.group(2)
            if name in ("redirect", "exp"):
                if name in modifiers:
                    raise _PermError(f"more than one {name}= modifier")
                _check_macros(value, text)
            modifiers[name] = value  # unknown modifiers are ignored (§6)
            continue
        terms.append(_parse_mechanism(text))
    return terms, modifiers.get("redirect")


def _parse_mechanism(text: str) -> _Term:
    match = _MECHANISM.fullmatch(text)
    if match is None:
        raise _PermError(f"unknown mechanism {text!r}")
    result, name, argument = _QUALIFIERS[match.group(1) or "+"], match.group(2).lower(), match.group(3)
    if name == "all":
        if argument:
            raise _PermError(f"'all' takes no argument: {text!r}")
        return _Term(result, name)
    if name in ("ip4", "ip6"):
        return _Term(result, name, network=_network(name, argument, text))
    if name in ("include", "exists", "ptr"):
        if name != "ptr" and not argument.startswith(":"):
            raise _PermError(f"{name} without a domain: {text!r}")
        if argument and not argument.startswith(":"):
            raise _PermError(f"unknown mechanism {text!r}")
        spec = argument[1:]
        if argument:  # only ptr may go without a domain
            _check_macros(spec, text)
        return _Term(result, name, spec=spec)
    if name in ("a", "mx"):
        cidr = _DUAL_CIDR.fullmatch(argument)
        if cidr is None or (cidr.group(1) and not cidr.group(1).startswith(":")):
            raise _PermError(f"unknown mechanism {text!r}")
        spec, v4, v6 = cidr.group(1)[1:], cidr.group(2), cidr.group(3)
        cidr4, cidr6 = int(v4) if v4 else 32, int(v6) if v6 else 128
        if cidr4 > 32 or cidr6 > 128:
            raise _PermError(f"bad prefix length in {text!r}")
        if cidr.group(1) == ":" or spec:
            _check_macros(spec, text)
        return _Term(result, name, spec=spec, cidr4=cidr4, cidr6=cidr6)
    raise _PermError(f"unknown mechanism {text!r}")


def _network(name: str, argument: str, text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    address, slash, length = argument[1:].partition("/")
    if not argument.startswith(":") or (slash and not re.fullmatch(r"0|[1-9]\d*", length)):
        raise _PermError(f"{text!r} is not a network")
    try:
        network = ipaddress.ip_network(argument[1:], strict=False)
    except ValueError:
        raise _PermError(f"{text!r} is not a network") from None
    if network.version != (4 if name == "ip4" else 6) or not address:
        raise _PermError(f"{text!r} is not a network")
    return network


def _check_macros(spec: str, text: str) -> None:
    """A domain-spec must be a valid macro-string (§7.1), checked before anything is evaluated."""
    if not spec or _LITERAL.fullmatch(_MACRO_EXPAND.sub("", spec)) is None:
        raise _PermError(f"bad domain in {text!r}")


def _expand(spec: str, evaluation: _Evaluation, domain: str) -> str:
    """A domain-spec with its macros expanded (§7.3); the syntax was checked when it was parsed."""

    def one(match: re.Match[str]) -> str:
        letter, digits, reverse, delimiters, escape = match.groups()
        if escape is not None:
            return {"%": "%", "_": " ", "-": "%20"}[escape]
        parts = re.split(
            "[" + re.escape(delimiters or ".") + "]", _macro_value(letter.lower(), evaluation, domain)
        )
        if reverse:
            parts.reverse()
        if digits:
            if int(digits) == 0:
                raise _PermError(f"bad macro in {spec!r}")
            parts = parts[-int(digits) :]
        value = ".".join(parts)
        # An upper-case macro letter asks for URL escaping.
        return urllib.parse.quote(value, safe="") if letter.isupper() else value

    return _MACRO_EXPAND.sub(one, spec)


def _macro_value(letter: str, evaluation: _Evaluation, domain: str) -> str:
    ip = evaluation.ip
    values = {
        "s": f"{evaluation.local}@{evaluation.sender_domain}",
        "l": evaluation.local,
        "o": evaluation.sender_domain,
        "d": domain,
        # §7.3: IPv6 addresses are written as dot-separated nibbles.
        "i": ".".join(ip.exploded.replace(":", "")) if ip.version == 6 else str(ip),
        "p": "unknown",  # what a checker that does not validate PTR names writes (§7.3)
        "v": "in-addr" if ip.version == 4 else "ip6",
        "h": evaluation.helo,
    }
    return values[letter]
