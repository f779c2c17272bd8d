"""The directory's conflicts as facts for the console's forms, whether a change needs a preview, and the
fingerprint that tells a confirmation of a directory that changed meanwhile."""

from __future__ import annotations

import dataclasses

from gateway.domain.directory import MemberSpec, PortfolioSpec, ReleaseSpec, check_portfolio
from gateway.domain.model import ReadSync
from gateway.domain.release_conflicts import (
    PrimaryConflict,
    SharingUnavailable,
    conflicts,
    fingerprint,
    needs_preview,
)

SEED = PortfolioSpec(
    name="makler-muster",
    share_vorgaenge_available=True,
    releases=(
        ReleaseSpec("Kunde B Sachbearbeiter", primary=True, share_vorgaenge=True),
        ReleaseSpec("Geschäftsführer", primary=True, share_vorgaenge=True),
        ReleaseSpec("Kunde B mit GF", primary=False, share_vorgaenge=True),
        ReleaseSpec("Ruhig"),
    ),
    members=(
        MemberSpec("sb-b1@kunde-b.example", "SB-B1", ("Kunde B Sachbearbeiter", "Kunde B mit GF")),
        MemberSpec("gf-b@kunde-b.example", "GF-B", ("Geschäftsführer", "Kunde B mit GF")),
    ),
)


def with_release(spec: PortfolioSpec, name: str, **changed: object) -> PortfolioSpec:
    releases = tuple(dataclasses.replace(r, **changed) if r.name == name else r for r in spec.releases)  # type: ignore[arg-type]
    return dataclasses.replace(spec, releases=releases)


def with_member(spec: PortfolioSpec, address: str, releases: tuple[str, ...]) -> PortfolioSpec:
    members = tuple(
        dataclasses.replace(m, releases=releases) if m.address == address else m for m in spec.members
    )
    return dataclasses.replace(spec, members=members)


def test_the_seed_has_no_conflict() -> None:
    assert conflicts(SEED) == []
    assert check_portfolio(SEED) == []


def test_gf_b_in_the_clerks_primary_release_is_a_primary_conflict_as_check_portfolio_finds() -> None:
    wanted = with_member(
        SEED, "gf-b@kunde-b.example", ("Geschäftsführer", "Kunde B mit GF", "Kunde B Sachbearbeiter")
    )
    assert conflicts(wanted) == [
        PrimaryConflict("gf-b@kunde-b.example", ("Geschäftsführer", "Kunde B Sachbearbeiter"))
    ]
    assert len(check_portfolio(wanted)) == 1


def test_kunde_b_mit_gf_made_primary_names_every_member_concerned() -> None:
    wanted = with_release(SEED, "Kunde B mit GF", primary=True)
    assert conflicts(wanted) == [
        PrimaryConflict("sb-b1@kunde-b.example", ("Kunde B Sachbearbeiter", "Kunde B mit GF")),
        PrimaryConflict("gf-b@kunde-b.example", ("Geschäftsführer", "Kunde B mit GF")),
    ]


def test_sharing_where_it_is_not_offered() -> None:
    unavailable = dataclasses.replace(SEED, share_vorgaenge_available=False)
    assert conflicts(unavailable) == [
        SharingUnavailable("Kunde B Sachbearbeiter"),
        SharingUnavailable("Geschäftsführer"),
        SharingUnavailable("Kunde B mit GF"),
    ]


def test_which_changes_are_previewed() -> None:
    assert needs_preview(SEED, with_release(SEED, "Kunde B mit GF", share_vorgaenge=False))
    assert needs_preview(SEED, with_member(SEED, "gf-b@kunde-b.example", ("Geschäftsführer",)))
    deleted = dataclasses.replace(SEED, releases=tuple(r for r in SEED.releases if r.name != "Ruhig"))
    assert needs_preview(SEED, deleted)
    # No audience changes: read state, the primary flag, a release that does not share.
    assert not needs_preview(SEED, with_release(SEED, "Kunde B mit GF", read_sync=ReadSync.SEEN))
    assert not needs_preview(SEED, with_release(SEED, "Ruhig", primary=True))
    assert not needs_preview(
        SEED,
        with_member(SEED, "sb-b1@kunde-b.example", ("Kunde B Sachbearbeiter", "Kunde B mit GF", "Ruhig")),
    )
    assert not needs_preview(SEED, SEED)


def test_the_fingerprint_follows_every_setting_and_membership_but_not_order_or_lines() -> None:
    assert fingerprint(SEED) == fingerprint(dataclasses.replace(SEED, line=7, releases=SEED.releases[::-1]))
    changed = [
        with_release(SEED, "Ruhig", read_sync=ReadSync.OFF),
        with_release(SEED, "Ruhig", primary=True),
        with_member(SEED, "gf-b@kunde-b.example", ("Geschäftsführer",)),
        dataclasses.replace(SEED, share_vorgaenge_available=False),
    ]
    assert len({fingerprint(SEED), *map(fingerprint, changed)}) == 1 + len(changed)
