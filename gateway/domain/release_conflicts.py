"""Which directory rule a wanted portfolio breaks, as facts a page can say in its own language.

``gateway.domain.directory.check_portfolio`` answers with sentences for the CLI and the directory file.
The console must say the same in German or English, next to the form field the problem concerns (the
Hauptfreischaltung checkbox, "Vorgänge teilen", the member chosen), so it needs the facts rather than
the sentence: who would be in which primary releases, which release would share where sharing is not
offered. The checks here find exactly those cases of ``check_portfolio``; anything else it finds the
console shows as the directory's own sentence.

It also tells whether what an admin previewed is still what they would change: :func:`fingerprint` of
the portfolio's directory, carried by the confirmation form, is compared with the directory at the
moment of the confirmation (it decides nothing about authority; the change is checked again anyway).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from gateway.domain.directory import PortfolioSpec, audience_changes, merge_portfolio, plan_changes


@dataclass(frozen=True, slots=True)
class PrimaryConflict:
    """``member`` would be in more than one primary release (``releases``) of the portfolio."""

    member: str
    releases: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SharingUnavailable:
    """``release`` would share Vorgänge, but the portfolio does not offer sharing."""

    release: str


Conflict = PrimaryConflict | SharingUnavailable


def conflicts(wanted: PortfolioSpec) -> list[Conflict]:
    """The primary-release and sharing conflicts of ``wanted``, members in the portfolio's order."""
    found: list[Conflict] = []
    if not wanted.share_vorgaenge_available:
        found += [SharingUnavailable(r.name) for r in wanted.releases if r.share_vorgaenge]
    primary = {r.name for r in wanted.releases if r.primary}
    for member in wanted.members:
        theirs = tuple(name for name in member.releases if name in primary)
        if len(theirs) > 1:
            found.append(PrimaryConflict(member.address, theirs))
    return found


def fingerprint(spec: PortfolioSpec) -> str:
    """A digest of the portfolio's directory: equal digests, equal directories (lines aside)."""
    described = repr(
        (
            spec.name,
            spec.share_vorgaenge_available,
            sorted(
                (
                    r.name,
                    r.primary,
                    r.share_vorgaenge,
                    str(r.read_sync),
                    str(r.backfill),
                    str(r.revoked_copies),
                )
                for r in spec.releases
            ),
            sorted((m.address, m.display_name, tuple(sorted(m.releases))) for m in spec.members),
        )
    )
    return hashlib.sha256(described.encode()).hexdigest()[:32]


def needs_preview(current: PortfolioSpec, wanted: PortfolioSpec) -> bool:
    """Whether the admin sees a preview and confirms before the change is made.

    Changes that can alter who sees existing messages, or what reconciliation does about them, are
    previewed (``audience_changes``); so is every deletion, which cannot be taken back by unticking a box.
    A name, ``primary`` or ``read_sync`` is changed at once.
    """
    result = merge_portfolio(current, wanted, prune=True)
    changes = plan_changes(current, result)
    return bool(audience_changes(current, result, changes)) or any(c.action == "delete" for c in changes)
