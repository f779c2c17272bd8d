"""The resolvers: dnspython against a name server on 127.0.0.1 run by the test, and the dictionary fake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from gateway.errors import DnsTemporaryError
from gateway.senderauth.dns import StaticResolver, SystemResolver, normalise_name

ZONE: dict[tuple[str, str], list[str]] = {
    ("kunde.example", "TXT"): ['"v=spf1 ip4:192.0.2.0/24" " -all"', '"google-site-verification=abc"'],
    ("kunde.example", "A"): ["192.0.2.10", "192.0.2.11"],
    ("kunde.example", "AAAA"): ["2001:0db8:0000:0000:0000:0000:0000:0010"],
    ("kunde.example", "MX"): ["20 mx2.kunde.example.", "10 mx1.kunde.example."],
    ("nomail.example", "MX"): ["0 ."],
}


@dataclass
class NameServer(asyncio.DatagramProtocol):
    """Answers from ZONE: NXDOMAIN for unknown names, SERVFAIL or silence for the names it is told."""

    servfail: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)
    questions: list[tuple[str, str]] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.questions.append((rdtype, name))
        if name in self.silent:
            return
        response = dns.message.make_response(query)
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif (name, rdtype) in ZONE:
            response.answer.append(
                dns.rrset.from_text_list(question.name, 300, "IN", rdtype, ZONE[name, rdtype])
            )
        elif all(known != name for known, _ in ZONE):
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def server() -> AsyncIterator[tuple[NameServer, SystemResolver]]:
    loop = asyncio.get_running_loop()
    protocol = NameServer(servfail={"broken.example"}, silent={"slow.example"})
    transport, _ = await loop.create_datagram_endpoint(lambda: protocol, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        yield protocol, SystemResolver(nameservers=["127.0.0.1"], port=port, timeout=0.3)
    finally:
        transport.close()


async def test_txt_records_come_whole_with_their_strings_joined(
    server: tuple[NameServer, SystemResolver],
) -> None:
    _, resolver = server

    assert sorted(await resolver.txt("kunde.example")) == [
        b"google-site-verification=abc",
        b"v=spf1 ip4:192.0.2.0/24 -all",
    ]


async def test_addresses_and_mail_exchangers(server: tuple[NameServer, SystemResolver]) -> None:
    _, resolver = server

    assert sorted(await resolver.a("KUNDE.example.")) == ["192.0.2.10", "192.0.2.11"]
    assert await resolver.aaaa("kunde.example") == ["2001:db8::10"]
    assert await resolver.mx("kunde.example") == ["mx1.kunde.example", "mx2.kunde.example"]
    assert await resolver.mx("nomail.example") == []  # RFC 7505 null MX


async def test_missing_names_and_records_are_empty(server: tuple[NameServer, SystemResolver]) -> None:
    _, resolver = server

    assert await resolver.txt("nothing.example") == []  # NXDOMAIN
    assert await resolver.aaaa("nomail.example") == []  # the name exists, without AAAA


@pytest.mark.parametrize("name", ["broken.example", "slow.example"])
async def test_servfail_and_silence_are_temporary(
    server: tuple[NameServer, SystemResolver], name: str
) -> None:
    _, resolver = server

    with pytest.raises(DnsTemporaryError, match=name):
        await resolver.txt(name)


async def test_names_that_cannot_exist_are_not_asked(server: tuple[NameServer, SystemResolver]) -> None:
    protocol, resolver = server

    for name in ["", ".", "a..example", "x" * 64 + ".example", "white space.example", "bäcker.example"]:
        assert await resolver.txt(name) == []
    assert protocol.questions == []


async def test_answers_are_cached(server: tuple[NameServer, SystemResolver]) -> None:
    protocol, resolver = server

    await resolver.a("kunde.example")
    await resolver.a("kunde.example")

    assert protocol.questions == [("A", "kunde.example")]


def test_names_are_normalised() -> None:
    assert normalise_name("Kunde.Example.") == "kunde.example"
    assert normalise_name("strong+tag._spf.kunde.example") == "strong+tag._spf.kunde.example"
    assert normalise_name("a\\b.example") is None
    assert normalise_name("a" * 63 + ".example") is not None
    assert normalise_name(("a" * 63 + ".") * 4) is None  # 256 octets


async def test_static_resolver_answers_like_dns() -> None:
    resolver = StaticResolver(
        txt={"Kunde.Example.": ["v=spf1 -all", b"\xffbinary"]},
        aaaa={"kunde.example": ["2001:0db8::0010"]},
        failing=["slow.example"],
    )

    assert await resolver.txt("kunde.example") == [b"v=spf1 -all", b"\xffbinary"]
    assert await resolver.aaaa("KUNDE.EXAMPLE.") == ["2001:db8::10"]
    assert await resolver.a("kunde.example") == []
    with pytest.raises(DnsTemporaryError):
        await resolver.mx("slow.example")
    assert resolver.queries == [
        ("TXT", "kunde.example"),
        ("AAAA", "kunde.example"),
        ("A", "kunde.example"),
        ("MX", "slow.example"),
    ]
