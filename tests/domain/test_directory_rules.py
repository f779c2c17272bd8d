"""The directory's rules and change planning, pure: checks, merge, and plans that are safe at every step."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.directory import (
    BackOfficeSpec,
    Change,
    MemberSpec,
    PortfolioSpec,
    RelaySpec,
    RelayTls,
    ReleaseSpec,
    SenderAuth,
    check_portfolio,
    merge_portfolio,
    plan_changes,
)
from gateway.domain.model import ReadSync

RELEASE_NAMES = ["R1", "R2", "R3", "R4"]
ADDRESSES = ["a@x.example", "b@x.example", "c@x.example", "d@x.example"]


@st.composite
def portfolios(draw: st.DrawFn, *, valid: bool = True) -> PortfolioSpec:
    available = draw(st.booleans())
    names = draw(st.lists(st.sampled_from(RELEASE_NAMES), unique=True, max_size=4))
    releases = tuple(
        ReleaseSpec(
            name,
            primary=draw(st.booleans()),
            share_vorgaenge=available and draw(st.booleans()),
            read_sync=draw(st.sampled_from(list(ReadSync))),
        )
        for name in names
    )
    primaries = {r.name for r in releases if r.primary}
    members = []
    for address in draw(st.lists(st.sampled_from(ADDRESSES), unique=True, max_size=4)):
        chosen = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
        if valid:
            # keep at most one primary release per member
            first_primary = next((r for r in chosen if r in primaries), None)
            chosen = [r for r in chosen if r not in primaries or r == first_primary]
        members.append(MemberSpec(address, draw(st.sampled_from(["", "X", "Y"])), tuple(chosen)))
    backoffices = tuple(
        BackOfficeSpec(
            name,
            draw(st.sampled_from(["", "4.7.0.1", "4.8.0.64470"])),
            (f"{name}@bo.example",),
            draw(st.none() | relays()),
        )
        for name in draw(st.lists(st.sampled_from(["ams", "other"]), unique=True, max_size=2))
    )
    sender_auth = draw(st.sampled_from(list(SenderAuth)))
    return PortfolioSpec("p", "P", available, backoffices, tuple(members), releases, sender_auth)


@st.composite
def relays(draw: st.DrawFn) -> RelaySpec:
    login = draw(st.sampled_from(["", "gateway"]))
    return RelaySpec(
        draw(st.sampled_from(["127.0.0.1", "smtp.bo.example"])),
        draw(st.sampled_from([25, 587, 2526])),
        draw(st.sampled_from(list(RelayTls))),
        login,
        "/run/secrets/relay" if login else "",
        draw(st.sampled_from([30, 60])),
    )


@dataclass
class Model:
    """A tiny in-memory directory that executes Changes one by one, checking the rules after each."""

    available: bool = False
    display_name: str = ""
    sender_auth: SenderAuth = SenderAuth.OFF
    releases: dict[str, ReleaseSpec] = field(default_factory=dict)
    members: dict[str, tuple[str, set[str]]] = field(default_factory=dict)
    backoffices: dict[str, BackOfficeSpec] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: PortfolioSpec) -> Model:
        return cls(
            spec.share_vorgaenge_available,
            spec.display_name,
            spec.sender_auth,
            {r.name: r for r in spec.releases},
            {m.address: (m.display_name, set(m.releases)) for m in spec.members},
            {b.name: b for b in spec.backoffices},
        )

    def apply(self, change: Change) -> None:
        f = dict(change.fields)
        if change.kind == "portfolio":
            self.available = bool(f.get("share_vorgaenge_available", self.available))
            self.display_name = str(f.get("display_name", self.display_name))
            self.sender_auth = SenderAuth(str(f.get("sender_auth", self.sender_auth)))
        elif change.kind == "release":
            if change.action == "delete":
                del self.releases[change.name]
                for _, releases in self.members.values():
                    releases.discard(change.name)
            elif change.action == "create":
                self.releases[change.name] = ReleaseSpec(
                    change.name, bool(f["primary"]), bool(f["share_vorgaenge"]), ReadSync(str(f["read_sync"]))
                )
            else:
                old = self.releases[change.name]
                self.releases[change.name] = ReleaseSpec(
                    change.name,
                    bool(f.get("primary", old.primary)),
                    bool(f.get("share_vorgaenge", old.share_vorgaenge)),
                    ReadSync(str(f.get("read_sync", old.read_sync.value))),
                )
        elif change.kind == "member":
            if change.action == "delete":
                assert not self.members[change.name][1], "memberships are removed before the member"
                del self.members[change.name]
            elif change.action == "create":
                self.members[change.name] = (str(f["display_name"]), set())
            else:
                self.members[change.name] = (str(f["display_name"]), self.members[change.name][1])
        elif change.kind == "membership":
            assert change.release in self.releases, "a membership names an existing release"
            if change.action == "add":
                self.members[change.name][1].add(change.release)
            else:
                self.members[change.name][1].remove(change.release)
        elif change.action == "delete":
            del self.backoffices[change.name]
        else:
            old = self.backoffices.get(change.name, BackOfficeSpec(change.name))
            self.backoffices[change.name] = BackOfficeSpec(
                change.name,
                str(f.get("ams_version", old.ams_version)),
                tuple(f.get("addresses", old.addresses)),  # type: ignore[call-overload]
                f.get("relay", old.relay),  # type: ignore[arg-type]
            )

    def rules_hold(self) -> bool:
        for _, releases in self.members.values():
            if sum(1 for r in releases if self.releases[r].primary) > 1:
                return False
        return self.available or not any(r.share_vorgaenge for r in self.releases.values())

    def same_as(self, spec: PortfolioSpec) -> bool:
        return self == Model.of(spec)


@given(portfolios(), portfolios())
def test_a_plan_reaches_the_wanted_directory_and_is_safe_at_every_step(
    current: PortfolioSpec, wanted: PortfolioSpec
) -> None:
    model = Model.of(current)
    for change in plan_changes(current, wanted):
        model.apply(change)
        assert model.rules_hold(), f"rules broken after {change.describe()}"
    assert model.same_as(wanted)


@given(portfolios())
def test_a_directory_equal_to_the_current_one_plans_nothing(spec: PortfolioSpec) -> None:
    assert plan_changes(spec, spec) == []


@given(portfolios())
def test_a_new_portfolio_is_created_first(spec: PortfolioSpec) -> None:
    model = Model()
    changes = plan_changes(None, spec)
    assert changes[0].action == "create"
    assert changes[0].kind == "portfolio"
    for change in changes:
        model.apply(change)
        assert model.rules_hold()
    assert model.same_as(spec)


@given(portfolios(valid=False))
def test_check_finds_every_double_primary(spec: PortfolioSpec) -> None:
    primaries = {r.name for r in spec.releases if r.primary}
    doubled = {m.address for m in spec.members if len(primaries & set(m.releases)) > 1}
    reported = {
        m.address for m in spec.members for v in check_portfolio(spec) if f"member {m.address} " in v.reason
    }
    assert reported == doubled


@given(portfolios(), portfolios())
def test_merge_keeps_what_the_file_does_not_name_and_prune_drops_it(
    current: PortfolioSpec, wanted: PortfolioSpec
) -> None:
    kept = merge_portfolio(current, wanted, prune=False)
    assert {m.address for m in kept.members} == {m.address for m in current.members + wanted.members}
    assert {r.name for r in kept.releases} == {r.name for r in current.releases + wanted.releases}
    for member in wanted.members:
        assert member in kept.members, "a member named in the file takes the file's values"
    assert merge_portfolio(current, wanted, prune=True) == wanted


def test_sharing_without_availability_is_refused_with_the_operator_command() -> None:
    spec = PortfolioSpec("p", releases=(ReleaseSpec("Team", share_vorgaenge=True),))
    [violation] = check_portfolio(spec)
    assert "not available in portfolio p" in violation.reason
    assert "gateway portfolio set p --share-vorgaenge-available" in violation.reason


def test_the_seeds_primary_conflict_names_both_releases() -> None:
    spec = PortfolioSpec(
        "makler-muster",
        releases=(
            ReleaseSpec("Kunde B Sachbearbeiter", primary=True),
            ReleaseSpec("Geschäftsführer", primary=True),
        ),
        members=(
            MemberSpec("gf-b@kunde-b.example", "GF-B", ("Geschäftsführer", "Kunde B Sachbearbeiter"), line=7),
        ),
    )
    [violation] = check_portfolio(spec)
    assert violation.line == 7
    assert '"Geschäftsführer" and "Kunde B Sachbearbeiter"' in violation.reason


# --- the reply path's settings: sender_auth and a back office's relay -------------------------------------


RELAY = RelaySpec("127.0.0.1", 2526, RelayTls.NONE)


def test_a_changed_relay_or_sender_auth_is_one_update_with_the_new_value() -> None:
    current = PortfolioSpec("p", backoffices=(BackOfficeSpec("ams", relay=RELAY),))
    wanted = PortfolioSpec(
        "p",
        backoffices=(BackOfficeSpec("ams", relay=RelaySpec("127.0.0.1", 2527, RelayTls.NONE)),),
        sender_auth=SenderAuth.VERIFY,
    )
    changes = plan_changes(current, wanted)
    assert [c.describe() for c in changes] == [
        "update portfolio p (sender_auth=verify)",
        "update backoffice ams (relay=127.0.0.1:2527 tls=none timeout=30)",
    ]
    assert changes[0].field("sender_auth") == "verify"
    assert changes[1].field("relay") == wanted.backoffices[0].relay


def test_removing_a_relay_is_an_update_to_none() -> None:
    current = PortfolioSpec("p", backoffices=(BackOfficeSpec("ams", relay=RELAY),))
    wanted = PortfolioSpec("p", backoffices=(BackOfficeSpec("ams"),))
    [change] = plan_changes(current, wanted)
    assert change.describe() == "update backoffice ams (relay=none)"
    assert change.fields == (("relay", None),)


def test_a_new_portfolio_and_back_office_carry_their_reply_settings() -> None:
    wanted = PortfolioSpec(
        "p",
        backoffices=(BackOfficeSpec("ams", relay=RELAY),),
        sender_auth=SenderAuth.TRUST_AUTHENTICATION_RESULTS,
    )
    portfolio, backoffice = plan_changes(None, wanted)
    assert portfolio.field("sender_auth") == "trust-authentication-results"
    assert backoffice.field("relay") == RELAY


def test_a_relay_login_is_shown_with_its_password_file_never_a_password() -> None:
    relay = RelaySpec("smtp.bo.example", 587, RelayTls.STARTTLS, "gateway", "/run/secrets/relay", 60)
    assert str(relay) == (
        "smtp.bo.example:587 tls=starttls timeout=60 login=gateway password_file=/run/secrets/relay"
    )


@pytest.mark.parametrize(
    ("relay", "key", "reason"),
    [
        (RelaySpec(""), "host", "the relay needs a host"),
        (RelaySpec("smtp bo"), "host", "is not a host name or IP address"),
        (RelaySpec("smtp.bo.example:587"), "host", "give the port separately"),
        (RelaySpec("h", port=0), "port", "relay port 0 is not a TCP port: use 1 to 65535"),
        (RelaySpec("h", port=65536), "port", "relay port 65536 is not a TCP port"),
        (RelaySpec("h", timeout=0), "timeout", "relay timeout 0 must be 1 to 600 seconds"),
        (RelaySpec("h", timeout=601), "timeout", "relay timeout 601 must be 1 to 600 seconds"),
        (RelaySpec("h", login="gw"), "login", "has a login but no password file"),
        (RelaySpec("h", password_file="/p"), "password_file", "has a password file but no login"),
        (RelaySpec("h", login="gw", password_file="p"), "password_file", "must be an absolute path"),
    ],
)
def test_relay_problems_name_the_setting(relay: RelaySpec, key: str, reason: str) -> None:
    [(found_key, found_reason)] = relay.problems()
    assert found_key == key
    assert reason in found_reason


@pytest.mark.parametrize(
    "relay",
    [
        RelaySpec("127.0.0.1", 2526, RelayTls.NONE),
        RelaySpec("::1", 25),
        RelaySpec("smtp.bo.example", 465, RelayTls.TLS, "gw", "/run/secrets/relay", 600),
        RelaySpec("h", 65535, timeout=1),
    ],
)
def test_valid_relays_have_no_problems(relay: RelaySpec) -> None:
    assert relay.problems() == []
