"""DNS answers for the sender checks (DKIM keys, SPF, DMARC), behind a protocol: dnspython or a dictionary.

The checks ask four questions of DNS: TXT records (DKIM keys, SPF and DMARC policies), A and AAAA
addresses and MX hosts (SPF's ``a`` and ``mx``). :class:`DnsResolver` is exactly these four coroutines;
:class:`SystemResolver` answers them with dnspython's asynchronous resolver and :class:`StaticResolver` from
dictionaries, so that tests and local runs need no network.

Every implementation answers alike: a name that does not exist, exists without records of the type, or
cannot be a DNS name at all gives an empty list (SPF counts all of these as "void"; none of them gets better
by asking again), while a failure that may go away (timeout, SERVFAIL, no usable name server) raises
:class:`DnsTemporaryError`, which the checks turn into a 4xx answer so that the sender retries.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping, Sequence
from typing import Literal, Protocol, TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver

from gateway.errors import DnsTemporaryError

__all__ = ["DnsResolver", "StaticResolver", "SystemResolver", "normalise_name"]

RecordType = Literal["TXT", "A", "AAAA", "MX"]
_T = TypeVar("_T")


class DnsResolver(Protocol):
    """The DNS questions the sender checks ask. Empty list: no such records; raises only DnsTemporaryError."""

    async def txt(self, name: str) -> list[bytes]:
        """Every TXT record at ``name``, each record's character-strings joined without separator."""
        ...

    async def a(self, name: str) -> list[str]:
        """The IPv4 addresses of ``name`` in dotted form."""
        ...

    async def aaaa(self, name: str) -> list[str]:
        """The IPv6 addresses of ``name`` in their compressed form."""
        ...

    async def mx(self, name: str) -> list[str]:
        """The mail exchangers of ``name`` (without trailing dot), most preferred first."""
        ...


def normalise_name(name: str) -> str | None:
    """``name`` as the resolvers look it up (lower case, no trailing dot), or None if it cannot be one.

    RFC 1035 limits: labels of 1 to 63 octets, 253 octets in all, printable ASCII. Non-ASCII names must
    already be in their A-label (``xn--``) form, as DKIM's ``d=`` and the checks' own conversions give them.
    """
    name = name.strip().lower().removesuffix(".")
    if not name or len(name) > 253 or not name.isascii():
        return None
    if any(not 0 < len(label) <= 63 for label in name.split(".")):
        return None
    # Any printable octet may stand in a label (SPF macros put local parts there); a backslash would be
    # read as an escape by dnspython, and whitespace or controls are in nobody's names.
    if any(not "!" <= ch <= "~" or ch == "\\" for ch in name):
        return None
    return name


class SystemResolver:
    """The real thing: dnspython's asynchronous stub resolver, with a per-query time limit and a cache.

    ``nameservers`` (and ``port``) replace the system's resolver configuration, which is read from
    ``/etc/resolv.conf`` otherwise. A name server that does not answer within ``timeout`` seconds, or
    answers SERVFAIL, is a temporary failure. dnspython's LRU cache honours the records' TTLs and saves
    the repeated look-ups of the same few domains that a day of replies brings.
    """

    def __init__(
        self,
        *,
        nameservers: Sequence[str] | None = None,
        port: int = 53,
        timeout: float = 5.0,
        cache_size: int = 10_000,
    ) -> None:
        try:
            self._resolver = dns.asyncresolver.Resolver(configure=nameservers is None)
        except dns.resolver.NoResolverConfiguration:
            # No /etc/resolv.conf: every look-up then fails temporarily (below) instead of the start.
            self._resolver = dns.asyncresolver.Resolver(configure=False)
        if nameservers is not None:
            self._resolver.nameservers = list(nameservers)
            self._resolver.port = port
        self._resolver.lifetime = timeout
        self._resolver.cache = dns.resolver.LRUCache(cache_size) if cache_size else None

    async def txt(self, name: str) -> list[bytes]:
        answer = await self._resolve(name, "TXT")
        return [b"".join(r.strings) for r in answer if isinstance(r, dns.rdtypes.ANY.TXT.TXT)]

    async def a(self, name: str) -> list[str]:
        answer = await self._resolve(name, "A")
        return [r.address for r in answer if isinstance(r, dns.rdtypes.IN.A.A)]

    async def aaaa(self, name: str) -> list[str]:
        answer = await self._resolve(name, "AAAA")
        # dnspython keeps the text as the server sent it; the compressed form compares equal everywhere.
        return [
            str(ipaddress.IPv6Address(r.address)) for r in answer if isinstance(r, dns.rdtypes.IN.AAAA.AAAA)
        ]

    async def mx(self, name: str) -> list[str]:
        answer = await self._resolve(name, "MX")
        records = sorted(
            (r for r in answer if isinstance(r, dns.rdtypes.ANY.MX.MX)), key=lambda r: r.preference
        )
        hosts = (r.exchange.to_text(omit_final_dot=True).lower() for r in records)
        # A null MX (RFC 7505, exchange ".") says the domain takes no mail: no host to name.
        return [host for host in hosts if host and host != "."]

    async def _resolve(self, name: str, rdtype: RecordType) -> list[object]:
        query = normalise_name(name)
        if query is None:
            return []
        try:
            answer = await self._resolver.resolve(
                query + ".", dns.rdatatype.from_text(rdtype), search=False, raise_on_no_answer=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.YXDOMAIN, dns.name.NameTooLong):
            return []
        except (dns.exception.SyntaxError, dns.name.IDNAException):
            return []  # a name dnspython cannot encode has no records
        except dns.exception.Timeout as exc:
            raise DnsTemporaryError(f"DNS timed out looking up {rdtype} {query}") from exc
        except dns.resolver.NoNameservers as exc:
            raise DnsTemporaryError(f"no name server answered {rdtype} {query} (SERVFAIL)") from exc
        except dns.exception.DNSException as exc:
            raise DnsTemporaryError(f"DNS failed looking up {rdtype} {query}: {type(exc).__name__}") from exc
        return list(answer.rrset or ())


class StaticResolver:
    """DNS from dictionaries, for tests and local runs; ``queries`` records every question in order.

    Names are looked up case-insensitively and without trailing dot. A name in ``failing`` fails
    temporarily for every record type, as a name server timing out would. TXT values may be given as
    text or bytes.
    """

    def __init__(
        self,
        *,
        txt: Mapping[str, Sequence[str | bytes]] | None = None,
        a: Mapping[str, Sequence[str]] | None = None,
        aaaa: Mapping[str, Sequence[str]] | None = None,
        mx: Mapping[str, Sequence[str]] | None = None,
        failing: Collection[str] = (),
    ) -> None:
        self._txt = {
            _key(k): [v.encode() if isinstance(v, str) else bytes(v) for v in vs]
            for k, vs in (txt or {}).items()
        }
        self._a = {_key(k): list(vs) for k, vs in (a or {}).items()}
        self._aaaa = {_key(k): [str(ipaddress.IPv6Address(v)) for v in vs] for k, vs in (aaaa or {}).items()}
        self._mx = {_key(k): [_key(v) for v in vs] for k, vs in (mx or {}).items()}
        self._failing = {_key(name) for name in failing}
        self.queries: list[tuple[RecordType, str]] = []

    async def txt(self, name: str) -> list[bytes]:
        return list(self._answer("TXT", name, self._txt))

    async def a(self, name: str) -> list[str]:
        return list(self._answer("A", name, self._a))

    async def aaaa(self, name: str) -> list[str]:
        return list(self._answer("AAAA", name, self._aaaa))

    async def mx(self, name: str) -> list[str]:
        return list(self._answer("MX", name, self._mx))

    def _answer(self, rdtype: RecordType, name: str, table: Mapping[str, list[_T]]) -> list[_T]:
        key = _key(name)
        self.queries.append((rdtype, key))
        if key in self._failing:
            raise DnsTemporaryError(f"DNS timed out looking up {rdtype} {key}")
        return table.get(key, [])


def _key(name: str) -> str:
    return name.strip().lower().removesuffix(".")
