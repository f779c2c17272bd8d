"""The page "Wer sieht was": who may see a message sent to or by members, or a stored message, and why.

The question is a GET form (nothing changes); the answer is the admin API's explanation, shown as a
table in the console's language and as the very text `gateway who-can-see` prints (``Explanation.text``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import Response

from gateway.admin import api
from gateway.domain.audience import AsParticipant, Reason
from gateway.domain.directory import PortfolioSpec
from gateway.domain.model import ParticipantRole
from gateway.errors import InputError, NotFound
from gateway.web.routes import Area, Scope, Visit

area = Area("whosees")

# The address fields of the form and the role each names; "to" and "cc" take several addresses.
FIELDS = (("from", ParticipantRole.SENDER), ("to", ParticipantRole.TO), ("cc", ParticipantRole.CC))
_SEPARATORS = re.compile(r"[\s,;]+")
MAX_ADDRESSES = 50  # per field: more is no question a person asks, and each one is looked up


@dataclass(frozen=True, slots=True)
class ReasonText:
    """One reason in the page's words: a participant's role, or the release it is shared through."""

    role: str | None = None
    release: str | None = None
    because: str | None = None


@dataclass(frozen=True, slots=True)
class Seer:
    address: str
    name: str
    reasons: tuple[ReasonText, ...]


@area.route("/portfolios/{portfolio}/who-sees", scope=Scope.PORTFOLIO, name="whosees")
async def who_sees(visit: Visit) -> Response:
    query = visit.request.query_params
    values = {name: query.get(name, "").strip() for name in ("from", "to", "cc", "message")}
    problems: dict[str, str] = {}
    async with visit.console.sessions() as session:
        spec = await api.show_portfolio(session, visit.portfolio)
        addressed = _addressed(visit, spec, values, problems)
        explanation = None
        if values["message"] and addressed:
            problems["message"] = visit.t("whosees.error.both")
        elif values["message"] and not problems:
            try:
                explanation = await api.who_can_see_message(session, values["message"], visit.portfolio)
            except NotFound:
                problems["message"] = visit.t("whosees.error.no_message", id=values["message"])
        elif addressed and not problems:
            explanation = await api.who_can_see_hypothetical(session, visit.portfolio, addressed)
    seers: list[Seer] = []
    if explanation is not None:
        for member_id in explanation.audience.ordered():
            member = explanation.members[member_id]
            reasons = tuple(_reason(r, explanation.name_of) for r in explanation.audience.via(member_id))
            seers.append(Seer(member.address, member.display_name, reasons))
    return visit.render(
        "whosees.html",
        400 if problems else 200,
        p=spec,
        values=values,
        problems=problems,
        explanation=explanation,
        seers=seers,
        cli_text=explanation.text() if explanation is not None else "",
    )


def _addressed(
    visit: Visit, spec: PortfolioSpec, values: dict[str, str], problems: dict[str, str]
) -> list[tuple[ParticipantRole, str]]:
    """The (role, address) pairs the form names; what is wrong with a field goes into ``problems``."""
    members = {m.address for m in spec.members}
    addressed: list[tuple[ParticipantRole, str]] = []
    for name, role in FIELDS:
        entries = [e for e in _SEPARATORS.split(values[name]) if e]
        if name == "from" and len(entries) > 1:
            problems[name] = visit.t("whosees.error.one_sender")
            continue
        if len(entries) > MAX_ADDRESSES:
            problems[name] = visit.t("whosees.error.too_many", most=MAX_ADDRESSES)
            continue
        for entry in entries:
            try:
                address = api.address(entry)
            except InputError:
                problems[name] = visit.t("whosees.error.invalid", address=entry)
                break
            if address not in members:
                problems[name] = visit.t("whosees.error.no_member", address=entry)
                break
            addressed.append((role, address))
    return addressed


def _reason(reason: Reason, name_of: Callable[[int], str]) -> ReasonText:
    if isinstance(reason, AsParticipant):
        return ReasonText(role=reason.role.value)
    return ReasonText(release=reason.release_name, because=name_of(reason.because_of))
