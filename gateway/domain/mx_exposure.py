"""When a portfolio's ``sender_auth: off`` is safe: only where nobody outside can reach the MX listener
without a border MTA that authenticates senders (DESIGN.md §5, issue 13 item 9).

With ``off`` a reply is taken on its reply address and the From address alone: whoever holds a member's
copy (a forwarded mail, a leaked archive) can post as any member of its audience. That is fine for the
embedded default, whose MX listener binds to loopback, and behind a border MTA that refuses mail failing
SPF/DKIM/DMARC (``[replies] border_mta_authenticates = true``); anywhere else it is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["off_refusal"]


def off_refusal(
    portfolios_off: Sequence[str],
    *,
    mx_enabled: bool,
    mx_host: str,
    mx_loopback_only: bool,
    border_mta_authenticates: bool,
) -> str | None:
    """Why ``sender_auth: off`` of ``portfolios_off`` cannot stand here, with what to do; None if it can."""
    if not portfolios_off or not mx_enabled or mx_loopback_only or border_mta_authenticates:
        return None
    names = ", ".join(sorted(portfolios_off))
    return (
        f"sender_auth is off for portfolio(s) {names}, but the MX listener binds to {mx_host} (not loopback "
        "only) and [replies] border_mta_authenticates is false: anyone holding a member's copy could post "
        "as any member of its audience. Set `gateway portfolio set NAME --sender-auth verify` (or "
        "trust-authentication-results with [replies] authserv_id), or, if a border MTA in front of the "
        "gateway checks SPF/DKIM/DMARC and refuses what fails, set [replies] border_mta_authenticates = true"
    )
