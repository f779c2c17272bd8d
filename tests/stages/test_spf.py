"""SPF check_host() over a dictionary DNS: mechanisms, qualifiers, includes, limits, macros, errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.domain.senderauth_rules import SpfCheck, SpfResult
from gateway.senderauth.dns import StaticResolver
from gateway.senderauth.spf import MAX_LOOKUPS, check_spf

SENDER = "anna@kunde.example"


async def spf(record: str | None, ip: str = "192.0.2.10", *, sender: str = SENDER, **dns: Any) -> SpfCheck:
    """The check for ``ip`` when kunde.example publishes ``record`` (and ``dns`` holds the rest)."""
    txt = dict(dns.pop("txt", {}))
    if record is not None:
        txt.setdefault("kunde.example", [record])
    return await check_spf(ip, sender, "mail.kunde.example", StaticResolver(txt=txt, **dns))


async def result(record: str | None, ip: str = "192.0.2.10", **dns: Any) -> SpfResult:
    return (await spf(record, ip, **dns)).result


@pytest.mark.parametrize(
    ("record", "ip", "expected"),
    [
        ("v=spf1 ip4:192.0.2.10 -all", "192.0.2.10", SpfResult.PASS),
        ("v=spf1 ip4:192.0.2.10 -all", "192.0.2.11", SpfResult.FAIL),
        ("v=spf1 ip4:192.0.2.0/24 -all", "192.0.2.200", SpfResult.PASS),
        ("v=spf1 ip4:192.0.2.0/25 -all", "192.0.2.200", SpfResult.FAIL),
        ("v=spf1 ip4:192.0.2.0/24 ~all", "198.51.100.1", SpfResult.SOFTFAIL),
        ("v=spf1 ip4:192.0.2.0/24 ?all", "198.51.100.1", SpfResult.NEUTRAL),
        ("v=spf1 ip4:192.0.2.0/24", "198.51.100.1", SpfResult.NEUTRAL),
        ("v=spf1 -ip4:192.0.2.10 +all", "192.0.2.10", SpfResult.FAIL),
        ("v=spf1 ~ip4:192.0.2.10 -all", "192.0.2.10", SpfResult.SOFTFAIL),
        ("V=SPF1 IP4:192.0.2.10 -ALL", "192.0.2.10", SpfResult.PASS),
        ("v=spf1  ip4:192.0.2.10   -all", "192.0.2.10", SpfResult.PASS),
        ("v=spf1 ip6:2001:db8::/32 -all", "2001:db8::25", SpfResult.PASS),
        ("v=spf1 ip6:2001:db8::/32 -all", "2001:db9::25", SpfResult.FAIL),
        ("v=spf1 ip4:192.0.2.10 -all", "::ffff:192.0.2.10", SpfResult.PASS),
        ("v=spf1 ip6:::/0 -all", "192.0.2.10", SpfResult.FAIL),  # an IPv4 client never matches ip6
        ("v=spf1 unknown-modifier=x ip4:192.0.2.10 -all", "192.0.2.10", SpfResult.PASS),
    ],
)
async def test_addresses_and_qualifiers(record: str, ip: str, expected: SpfResult) -> None:
    assert await result(record, ip) is expected


async def test_a_and_mx_with_prefix_lengths() -> None:
    dns = {
        "a": {"kunde.example": ["192.0.2.10"], "mx1.kunde.example": ["198.51.100.20"]},
        "aaaa": {"kunde.example": ["2001:db8::10"]},
        "mx": {"kunde.example": ["mx1.kunde.example"]},
    }
    assert await result("v=spf1 a -all", "192.0.2.10", **dns) is SpfResult.PASS
    assert await result("v=spf1 a -all", "192.0.2.11", **dns) is SpfResult.FAIL
    assert await result("v=spf1 a/24 -all", "192.0.2.11", **dns) is SpfResult.PASS
    assert await result("v=spf1 a//64 -all", "2001:db8::ffff", **dns) is SpfResult.PASS
    assert await result("v=spf1 a -all", "2001:db8::ffff", **dns) is SpfResult.FAIL
    assert await result("v=spf1 mx -all", "198.51.100.20", **dns) is SpfResult.PASS
    assert await result("v=spf1 mx/30 -all", "198.51.100.22", **dns) is SpfResult.PASS
    assert await result("v=spf1 mx -all", "192.0.2.10", **dns) is SpfResult.FAIL
    assert await result("v=spf1 a:mx1.kunde.example -all", "198.51.100.20", **dns) is SpfResult.PASS
    assert await result("v=spf1 mx:kunde.example/24//64 -all", "198.51.100.99", **dns) is SpfResult.PASS


async def test_include_passes_only_on_pass() -> None:
    txt = {"_spf.provider.example": ["v=spf1 ip4:203.0.113.0/24 -all"]}
    record = "v=spf1 include:_spf.provider.example -all"

    assert await result(record, "203.0.113.5", txt=txt) is SpfResult.PASS
    # The included record's -all is "no match" for the includer, whose own -all then says fail.
    assert await result(record, "198.51.100.1", txt=txt) is SpfResult.FAIL
    assert (
        await result("v=spf1 include:_spf.provider.example ~all", "198.51.100.1", txt=txt)
        is SpfResult.SOFTFAIL
    )


async def test_include_of_a_domain_without_spf_is_permerror() -> None:
    check = await spf("v=spf1 include:nothing.example -all")

    assert check.result is SpfResult.PERMERROR
    assert check.problem == "include of nothing.example, which publishes no SPF record"


async def test_redirect_takes_the_other_domains_result() -> None:
    txt = {"_spf.kunde.example": ["v=spf1 ip4:192.0.2.0/24 -all"]}

    assert await result("v=spf1 redirect=_spf.kunde.example", "192.0.2.1", txt=txt) is SpfResult.PASS
    assert await result("v=spf1 redirect=_spf.kunde.example", "198.51.100.1", txt=txt) is SpfResult.FAIL
    # A mechanism that matches comes first; with "all" in the record the redirect is never used.
    assert await result("v=spf1 ip4:198.51.100.1 redirect=_spf.kunde.example", "198.51.100.1", txt=txt) is (
        SpfResult.PASS
    )
    assert await result("v=spf1 ?all redirect=_spf.kunde.example", "192.0.2.1", txt=txt) is SpfResult.NEUTRAL
    assert await result("v=spf1 redirect=nothing.example") is SpfResult.PERMERROR


async def test_ten_look_ups_are_allowed_and_eleven_are_not() -> None:
    def chain(length: int) -> dict[str, list[str]]:
        # kunde.example includes i1, which includes i2, ... each include one look-up.
        txt = {f"i{n}.example": [f"v=spf1 include:i{n + 1}.example -all"] for n in range(1, length)}
        txt[f"i{length}.example"] = ["v=spf1 ip4:192.0.2.10 -all"]
        return txt

    assert await result("v=spf1 include:i1.example -all", txt=chain(MAX_LOOKUPS)) is SpfResult.PASS
    check = await spf("v=spf1 include:i1.example -all", txt=chain(MAX_LOOKUPS + 1))
    assert check.result is SpfResult.PERMERROR
    assert check.problem == "more than 10 DNS look-ups"


async def test_an_include_loop_ends_at_the_look_up_limit() -> None:
    check = await spf("v=spf1 include:kunde.example -all")

    assert check.result is SpfResult.PERMERROR


async def test_more_than_two_void_look_ups_are_permerror() -> None:
    record = "v=spf1 a:n1.example a:n2.example a:n3.example ip4:192.0.2.10 -all"

    check = await spf(record)

    assert check.result is SpfResult.PERMERROR
    assert "found nothing" in check.problem
    assert await result("v=spf1 a:n1.example a:n2.example ip4:192.0.2.10 -all") is SpfResult.PASS


async def test_more_than_ten_mx_hosts_are_permerror() -> None:
    hosts = [f"mx{n}.kunde.example" for n in range(11)]

    assert await result("v=spf1 mx -all", mx={"kunde.example": hosts}) is SpfResult.PERMERROR
    assert await result("v=spf1 mx -all", mx={"kunde.example": hosts[:10]}) is SpfResult.FAIL


async def test_ptr_counts_but_never_matches() -> None:
    assert await result("v=spf1 ptr ip4:192.0.2.10 -all") is SpfResult.PASS
    assert await result("v=spf1 ptr -all") is SpfResult.FAIL
    assert await result("v=spf1 " + "ptr " * 11 + "+all") is SpfResult.PERMERROR


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (None, SpfResult.NONE),
        ("google-site-verification=abc", SpfResult.NONE),
        ("v=spf10 +all", SpfResult.NONE),
    ],
)
async def test_no_spf_record_is_none(record: str | None, expected: SpfResult) -> None:
    check = await spf(record)

    assert check.result is expected
    assert check.problem == "kunde.example publishes no SPF record"


async def test_two_spf_records_are_permerror() -> None:
    check = await spf(None, txt={"kunde.example": ["v=spf1 -all", "v=spf1 +all"]})

    assert check.result is SpfResult.PERMERROR


@pytest.mark.parametrize(
    "broken",
    [
        "foo",
        "ip4:192.0.2.300",
        "ip4:2001:db8::1",
        "ip6:192.0.2.10",
        "ip4:192.0.2.0/33",
        "ip4:192.0.2.0/024",
        "ip4",
        "a/33",
        "a:",
        "include",
        "all:x",
        "exists:%{z}.example",
        "include:%{c}.example",
        "include:%",
        "redirect=a.example redirect=b.example",
        "=foo",
    ],
)
async def test_a_syntax_error_anywhere_is_permerror(broken: str) -> None:
    # §4.6: the whole record is checked first; a mechanism that matches before the error does not help.
    check = await spf(f"v=spf1 ip4:192.0.2.10 {broken} -all")

    assert check.result is SpfResult.PERMERROR


async def test_dns_failure_is_temperror() -> None:
    check = await check_spf("192.0.2.10", SENDER, "h", StaticResolver(failing=["kunde.example"]))

    assert check.result is SpfResult.TEMPERROR
    assert "kunde.example" in check.problem


async def test_dns_failure_in_an_include_is_temperror() -> None:
    resolver = StaticResolver(
        txt={"kunde.example": ["v=spf1 include:slow.example -all"]}, failing=["slow.example"]
    )

    assert (await check_spf("192.0.2.10", SENDER, "h", resolver)).result is SpfResult.TEMPERROR


async def test_running_out_of_time_is_temperror() -> None:
    class Hanging(StaticResolver):
        async def txt(self, name: str) -> list[bytes]:
            await asyncio.Event().wait()
            raise AssertionError("never answered")

    check = await check_spf("192.0.2.10", SENDER, "h", Hanging(), time_limit=0.05)

    assert check == SpfCheck(
        SpfResult.TEMPERROR, "kunde.example", "192.0.2.10", "no answer within 0.05 seconds"
    )


async def test_macros_expand_as_rfc_7208_section_7_shows() -> None:
    # §7.4's examples: sender strong-bad@email.example.com, client 192.0.2.3.
    resolver = StaticResolver(
        txt={"email.example.com": ["v=spf1 exists:%{ir}.%{v}._spf.%{d2} exists:%{l1r+-}.%{l-}.%{o} -all"]},
        a={"strong.strong.bad.email.example.com": ["127.0.0.2"]},
    )

    check = await check_spf("192.0.2.3", "strong-bad@email.example.com", "h", resolver)

    assert check.result is SpfResult.PASS
    assert resolver.queries[1:] == [
        ("A", "3.2.0.192.in-addr._spf.example.com"),
        ("A", "strong.strong.bad.email.example.com"),
    ]


async def test_macros_for_ipv6_helo_and_escapes() -> None:
    nibbles = "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
    resolver = StaticResolver(
        txt={"kunde.example": ["v=spf1 exists:%{ir}.%{v}.%{h}.%{o} -all"]},
        a={f"{nibbles}.ip6.mail.kunde.example.kunde.example": ["127.0.0.2"]},
    )

    check = await check_spf("2001:db8::cb01", SENDER, "mail.kunde.example", resolver)

    assert check.result is SpfResult.PASS


async def test_null_sender_is_checked_as_postmaster_at_helo() -> None:
    resolver = StaticResolver(
        txt={"mail.kunde.example": ["v=spf1 exists:%{l}.%{d} -all"]},
        a={"postmaster.mail.kunde.example": ["127.0.0.2"]},
    )

    check = await check_spf("192.0.2.10", "", "mail.kunde.example", resolver)

    assert check == SpfCheck(SpfResult.PASS, "mail.kunde.example", "192.0.2.10")


@pytest.mark.parametrize(
    ("ip", "sender", "helo"),
    [
        ("not an ip", SENDER, "h"),
        ("192.0.2.10", "anna@", "h"),
        ("192.0.2.10", "", ""),
        ("192.0.2.10", "anna@localhost", "h"),
        ("192.0.2.10", "anna@exa mple.com", "h"),
        ("192.0.2.10", "anna@" + "a" * 64 + ".example", "h"),
    ],
)
async def test_nothing_to_check_is_none(ip: str, sender: str, helo: str) -> None:
    check = await check_spf(ip, sender, helo, StaticResolver(txt={"kunde.example": ["v=spf1 +all"]}))

    assert check.result is SpfResult.NONE


async def test_sender_domain_is_checked_in_its_a_label_form() -> None:
    resolver = StaticResolver(txt={"xn--mller-kva.example": ["v=spf1 ip4:192.0.2.10 -all"]})

    check = await check_spf("192.0.2.10", "anna@müller.example", "h", resolver)

    assert check == SpfCheck(SpfResult.PASS, "xn--mller-kva.example", "192.0.2.10")
