"""Members on IMAP servers and logins of their own ([mailbox.imap.members]), with two real Dovecots.

SB-B1 and SB-B2 are on the first Dovecot, reached with the master user; GF-B's mailbox is on a second
Dovecot, where the gateway has no master user and logs in with GF-B's own password from an environment
variable (in one test with implicit TLS, which only GF-B's table asks for). Every member exists on both
servers, with a decoy copy under the same copy id on the server that is not theirs, so a call routed to
the wrong server shows.
"""

from __future__ import annotations

import asyncio
import errno
import re
from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.config import ImapSettings, Settings
from gateway.mailbox import Delivery, Flag, FlagChange, Located, MailboxError, MailboxOwner
from gateway.mailbox.imap import ImapMailbox
from gateway.mailbox.imap_connection import ImapLogin, ImapServer, Secret
from gateway.mailbox.imap_protocol import parse_ref
from gateway.mailbox.routed import RoutedMailbox
from gateway.service import mailbox_for
from tests.dovecot import Dovecot, private_dovecot

SB_B1 = MailboxOwner("makler-muster", "sb-b1@kunde-b.example")
SB_B2 = MailboxOwner("makler-muster", "sb-b2@kunde-b.example")
GF_B = MailboxOwner("makler-muster", "gf-b@kunde-b.example")
PASSWORD_VARIABLE = "KUNDE_B_GF_IMAP_PASSWORD"
MESSAGE = b"From: ams@makler.example\r\nSubject: Schaden 4711\r\n\r\nHallo\r\n"


def copy(copy_id: str, marker: str = "") -> bytes:
    return f"X-Gateway-Copy-Id: {copy_id}\r\nX-Marker: {marker}\r\n".encode() + MESSAGE


def member_settings(first: Dovecot, second: Dovecot, *, tls: bool = False) -> ImapSettings:
    """[mailbox.imap] on the first Dovecot; GF-B's table points at the second with GF-B's own login."""
    base = first.imap_settings(tls="none").model_dump()
    return ImapSettings.model_validate(
        base
        | {
            "members": {
                GF_B.address: {
                    "host": second.host,
                    "port": second.tls_port if tls else second.port,
                    "tls": "tls" if tls else "none",
                    "login": GF_B.address,
                    "password_env": PASSWORD_VARIABLE,
                }
            }
        }
    )


def place(dovecot: Dovecot, address: str, data: bytes, flags: str = "()") -> None:
    """APPEND as the member's own client would, on that server."""
    client = dovecot.client(address)
    try:
        status, _ = client.append("INBOX", flags, None, data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        assert status == "OK"
    finally:
        client.logout()


def flags_on(dovecot: Dovecot, address: str, copy_id: str) -> list[set[str]]:
    """The flags (\\Recent aside) of every instance of the copy in the member's INBOX on that server."""
    client = dovecot.client(address)
    try:
        client.select("INBOX", readonly=True)
        _, found = client.uid("SEARCH", "HEADER", "X-Gateway-Copy-Id", copy_id)
        if not found[0]:
            return []
        _, data = client.uid("FETCH", found[0].decode().replace(" ", ","), "(FLAGS)")
        listed = [re.search(rb"FLAGS \(([^)]*)\)", item) for item in data if isinstance(item, bytes)]
        return [set(m[1].decode().split()) - {"\\Recent"} for m in listed if m is not None]
    finally:
        client.logout()


@pytest.fixture
def second() -> Iterator[Dovecot]:
    """GF-B's own server: a second private Dovecot, whose master user the gateway is not told about."""
    with private_dovecot() as instance:
        yield instance


@pytest.fixture
def servers(dovecot: Dovecot, second: Dovecot, monkeypatch: pytest.MonkeyPatch) -> tuple[Dovecot, Dovecot]:
    for server in (dovecot, second):
        for owner in (SB_B1, SB_B2, GF_B):
            server.add_user(owner.address)
    monkeypatch.setenv(PASSWORD_VARIABLE, second.password(GF_B.address))
    return dovecot, second


@pytest.fixture
async def routed(servers: tuple[Dovecot, Dovecot]) -> AsyncIterator[RoutedMailbox]:
    first, second = servers
    box = RoutedMailbox.from_imap_settings(member_settings(first, second), timeout=10)
    yield box
    await box.close()


# --- from settings to servers ------------------------------------------------------------------------


def test_a_member_table_overrides_what_it_names_and_keeps_the_rest(tmp_path: object) -> None:
    settings = ImapSettings.model_validate(
        {
            "host": "imap.makler.example",
            "port": 143,
            "tls": "starttls",
            "master_user": "gw",
            "master_password_env": "IMAP_MASTER",
            "folder": "Vorgänge",
            "members": {
                "gf-b@kunde-b.example": {
                    "host": "imap.kunde-b.example",
                    "port": 993,
                    "tls": "tls",
                    "login": "gfb",
                    "password_env": "GFB_PASSWORD",
                },
                "sb-b1@kunde-b.example": {"folder": "INBOX"},
                "sb-b2@kunde-b.example": {"master_user": "gw2", "master_password_file": "/run/gw2"},
            },
        }
    )
    master = ImapLogin("gw", Secret(env="IMAP_MASTER"))
    assert ImapServer.from_settings(settings) == ImapServer(
        "imap.makler.example", 143, "starttls", master, "Vorgänge"
    )
    assert ImapServer.from_settings(settings, member="nobody@kunde-b.example") == ImapServer.from_settings(
        settings
    )
    gf_b = ImapServer.from_settings(settings, member="gf-b@kunde-b.example")
    assert gf_b == ImapServer(
        "imap.kunde-b.example",
        993,
        "tls",
        ImapLogin("gfb", Secret(env="GFB_PASSWORD"), master=False),
        "Vorgänge",
    )
    assert gf_b.login.user_for("gf-b@kunde-b.example") == "gfb", "the member's own account, no master user"
    sb_b1 = ImapServer.from_settings(settings, member="sb-b1@kunde-b.example")
    assert (sb_b1.host, sb_b1.login, sb_b1.folder) == ("imap.makler.example", master, "INBOX")
    sb_b2 = ImapServer.from_settings(settings, member="sb-b2@kunde-b.example")
    assert sb_b2.login.user_for("sb-b2@kunde-b.example") == "sb-b2@kunde-b.example*gw2"


def test_a_password_comes_from_exactly_one_place() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Secret()
    with pytest.raises(ValueError, match="exactly one"):
        Secret(env="A", file=__import__("pathlib").Path("/run/a"))


async def test_one_mailbox_and_pool_per_distinct_server_and_login(dovecot: Dovecot) -> None:
    settings = ImapSettings.model_validate(
        dovecot.imap_settings().model_dump()
        | {
            "members": {
                # The same server and login as [mailbox.imap]: no mailbox of its own.
                SB_B1.address: {"tls": "none"},
                # Two members with one other login share that login's mailbox.
                SB_B2.address: {"master_password_env": "OTHER_MASTER"},
                GF_B.address: {"master_password_env": "OTHER_MASTER"},
                "gf-a@kunde-a.example": {"login": "gf-a", "password_env": "GFA_PASSWORD"},
            }
        }
    )
    box = RoutedMailbox.from_imap_settings(settings)
    try:
        default = box.mailbox_of(MailboxOwner("makler-muster", "sb-a1@kunde-a.example"))
        assert box.mailbox_of(SB_B1) is default
        assert box.mailbox_of(SB_B2) is box.mailbox_of(GF_B) is not default
        gf_a = box.mailbox_of(MailboxOwner("makler-muster", "gf-a@kunde-a.example"))
        assert len({id(default), id(box.mailbox_of(SB_B2)), id(gf_a)}) == 3
        assert isinstance(gf_a, ImapMailbox)
        assert gf_a.server.login == ImapLogin("gf-a", Secret(env="GFA_PASSWORD"), master=False)
        # Routing is by address alone: the portfolio does not change a member's account.
        assert box.mailbox_of(MailboxOwner("other-portfolio", GF_B.address)) is box.mailbox_of(GF_B)
    finally:
        await box.close()


def test_serve_routes_only_when_members_have_tables(dovecot: Dovecot) -> None:
    plain = Settings.model_validate(
        {"mailbox": {"backend": "imap", "imap": dovecot.imap_settings().model_dump()}}
    )
    assert type(mailbox_for(plain)) is ImapMailbox
    with_members = Settings.model_validate(
        {
            "mailbox": {
                "backend": "imap",
                "imap": dovecot.imap_settings().model_dump()
                | {"members": {GF_B.address: {"folder": "Vorgänge"}}},
            }
        }
    )
    routed = mailbox_for(with_members)
    assert isinstance(routed, RoutedMailbox)
    routed_gf_b = routed.mailbox_of(GF_B)
    assert isinstance(routed_gf_b, ImapMailbox)
    assert routed_gf_b.server.folder == "Vorgänge"


# --- against two Dovecots ---------------------------------------------------------------------------------


async def test_each_member_is_delivered_on_their_own_server(
    routed: RoutedMailbox, servers: tuple[Dovecot, Dovecot]
) -> None:
    first, second = servers
    results = await routed.append_batch(
        [
            Delivery(SB_B1, "c1", copy("c1"), first_attempt=True),
            Delivery(GF_B, "c2", copy("c2"), frozenset({Flag.FLAGGED}), first_attempt=True),
            Delivery(SB_B2, "c3", copy("c3"), first_attempt=True),
            Delivery(GF_B, "c4", copy("c4"), first_attempt=True),
        ]
    )

    assert [r.copy_id if isinstance(r, Located) else r for r in results] == ["c1", "c2", "c3", "c4"]
    # On the second server the gateway logged in as GF-B, with GF-B's own password (its master user,
    # whose password the gateway does not have, was never used there), and nobody else logged in yet.
    assert f"Login: user=<{GF_B.address}>, method=PLAIN" in second.log_text()
    assert "Login: user=<sb-b" not in second.log_text()
    assert len(first.copies(SB_B1.address, "c1")) == 1
    assert len(first.copies(SB_B2.address, "c3")) == 1
    assert [len(second.copies(GF_B.address, c)) for c in ("c2", "c4")] == [1, 1]
    assert first.copy_counts(GF_B.address) == {}, "GF-B's copies go to GF-B's server only"
    assert second.copy_counts(SB_B1.address) == {}
    assert second.copy_counts(SB_B2.address) == {}
    assert flags_on(second, GF_B.address, "c2") == [{"\\Flagged"}]


async def test_a_member_table_brings_its_own_tls(servers: tuple[Dovecot, Dovecot]) -> None:
    first, second = servers
    # The context trusts the second instance's self-signed certificate only: [mailbox.imap]'s server
    # is reached without TLS, so only GF-B's table can have asked for it.
    box = RoutedMailbox.from_imap_settings(
        member_settings(first, second, tls=True), ssl_context=second.ssl_context(), timeout=10
    )
    try:
        await box.append(GF_B, "c1", copy("c1"), first_attempt=True)
        await box.append(SB_B1, "c1", copy("c1"), first_attempt=True)
    finally:
        await box.close()
        # ImapMailbox.close() returns before a TLS connection's close_notify exchange is over; the
        # test's event loop must outlive it, or the socket is reported unclosed in a later test.
        await asyncio.sleep(0.5)
    assert len(second.copies(GF_B.address, "c1")) == 1
    assert len(first.copies(SB_B1.address, "c1")) == 1
    assert re.search(rf"Login: user=<{GF_B.address}>.*TLS", second.log_text())
    assert "TLS" not in first.log_text()


async def test_find_flags_changes_and_removal_go_to_the_members_server(
    routed: RoutedMailbox, servers: tuple[Dovecot, Dovecot]
) -> None:
    first, second = servers
    # Decoys under the same copy id where each member's mailbox is not: wrong routing touches them.
    place(first, GF_B.address, copy("c1", "decoy"))
    place(second, SB_B1.address, copy("c1", "decoy"))
    await routed.append(GF_B, "c1", copy("c1"), first_attempt=True)
    await routed.append(SB_B1, "c1", copy("c1"), first_attempt=True)
    _, gf_b_token = await routed.flag_changes(GF_B, None)
    _, sb_b1_token = await routed.flag_changes(SB_B1, None)

    # GF-B reads on the own server with the own client; the gateway sees it there, for GF-B only.
    second.member_stores(GF_B.address, "c1", "+FLAGS", "(\\Seen)")
    changes, gf_b_token = await routed.flag_changes(GF_B, gf_b_token)
    assert changes == [FlagChange("c1", "INBOX", frozenset({Flag.SEEN}))]
    assert (await routed.flag_changes(SB_B1, sb_b1_token))[0] == []

    [found] = await routed.find(GF_B, "c1")
    assert found.flags == {Flag.SEEN}
    assert parse_ref(found.ref)[0] == "INBOX"

    [answered] = await routed.add_flags(GF_B, "c1", frozenset({Flag.ANSWERED}))
    assert answered.flags == {Flag.SEEN, Flag.ANSWERED}
    [sb_b1] = await routed.add_flags(SB_B1, "c1", frozenset({Flag.FLAGGED}))
    assert sb_b1.flags == {Flag.FLAGGED}
    [cleared] = await routed.remove_flags(GF_B, "c1", frozenset({Flag.SEEN}))
    assert cleared.flags == {Flag.ANSWERED}
    assert flags_on(second, GF_B.address, "c1") == [{"\\Answered"}]
    assert flags_on(first, SB_B1.address, "c1") == [{"\\Flagged"}]

    assert await routed.remove(GF_B, "c1") == 1
    assert second.copies(GF_B.address, "c1") == []
    assert len(first.copies(SB_B1.address, "c1")) == 1

    # The decoys are exactly as they were placed.
    assert flags_on(first, GF_B.address, "c1") == [set()]
    assert flags_on(second, SB_B1.address, "c1") == [set()]


async def test_a_watch_is_kept_on_the_members_server(
    routed: RoutedMailbox, servers: tuple[Dovecot, Dovecot]
) -> None:
    _, second = servers
    await routed.append(GF_B, "c1", copy("c1"), first_attempt=True)
    watch = routed.watch(GF_B)
    assert watch is not None, "the IMAP backend can push changes; routing must not lose that"
    try:
        assert await watch.wait(0.3) is False
        second.member_stores(GF_B.address, "c1", "+FLAGS", "(\\Seen)")
        assert await watch.wait(5) is True
    finally:
        await watch.close()


async def test_a_missing_or_empty_password_variable_names_it(
    routed: RoutedMailbox, servers: tuple[Dovecot, Dovecot], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = servers
    monkeypatch.delenv(PASSWORD_VARIABLE)
    with pytest.raises(MailboxError) as caught:
        await routed.append(GF_B, "c1", copy("c1"))
    assert caught.value.filename == PASSWORD_VARIABLE
    assert caught.value.errno == errno.ENOENT
    assert str(caught.value) == (
        f"append copy c1 for {GF_B.address}: "
        f"member password environment variable is not set: {PASSWORD_VARIABLE}"
    )
    # Members on other servers and logins do not wait for GF-B's password.
    await routed.append(SB_B1, "c1", copy("c1"))
    assert len(first.copies(SB_B1.address, "c1")) == 1

    monkeypatch.setenv(PASSWORD_VARIABLE, "  \n")
    with pytest.raises(
        MailboxError, match=f"member password environment variable is empty: {PASSWORD_VARIABLE}"
    ):
        await routed.find(GF_B, "c1")


async def test_a_master_password_variable_is_read_at_every_new_connection(
    dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    dovecot.add_user(SB_B1.address)
    settings = dovecot.imap_settings().model_copy(
        update={"master_password_file": None, "master_password_env": "IMAP_MASTER_PASSWORD"}
    )
    box = ImapMailbox.from_settings(settings, timeout=5)
    try:
        with pytest.raises(MailboxError, match="master password environment variable is not set") as caught:
            await box.find(SB_B1, "c1")
        assert caught.value.filename == "IMAP_MASTER_PASSWORD"
        monkeypatch.setenv("IMAP_MASTER_PASSWORD", dovecot.master_password)
        await box.append(SB_B1, "c1", copy("c1"))
        assert len(dovecot.copies(SB_B1.address, "c1")) == 1
    finally:
        await box.close()


async def test_closing_closes_every_server_s_mailbox(routed: RoutedMailbox) -> None:
    await routed.append(GF_B, "c1", copy("c1"), first_attempt=True)
    await routed.append(SB_B1, "c1", copy("c1"), first_attempt=True)
    await routed.close()
    for owner in (GF_B, SB_B1):
        with pytest.raises(MailboxError, match="closed"):
            await routed.find(owner, "c1")
