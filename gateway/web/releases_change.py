"""A directory change asked for by a console form: checked, previewed and confirmed when it can alter
who sees existing messages, made through the admin API, and followed to the reconcile run it recorded.

The form is answered at once: the change is checked (the directory's conflicts go next to their field)
and its preview planned in the background (``gateway.web.preview_tasks``), on a page of its own that
fills in when the planning is done (``gateway.web.previews``).

The confirmation is a second POST of the same form fields (plus ``confirm``): the change is rebuilt
from them and checked again against the directory as it is then, with the account's scope checked by
the route as on every request; nothing in the hidden fields grants anything. The form also carries
the fingerprint of the directory the preview was computed on: if the directory changed meanwhile, the
admin sees the new preview instead of a change they did not preview.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from starlette.responses import RedirectResponse, Response

from gateway.admin import api
from gateway.db.directory import RECONCILE_RUNS
from gateway.domain.collision import format_duration
from gateway.domain.directory import Change, PortfolioSpec
from gateway.domain.release_conflicts import (
    PrimaryConflict,
    SharingUnavailable,
    conflicts,
    fingerprint,
    needs_preview,
)
from gateway.errors import DirectoryConflict, InputError
from gateway.web.preview_tasks import Busy, Shown
from gateway.web.routes import Visit

# The problems of a form: field name -> messages in the visitor's language; "" is the form as a whole.
FormErrors = dict[str, list[str]]
# Shows the form again, with the fields as posted and the problems next to them.
Reshow = Callable[[FormErrors, int], Awaitable[Response]]
# Problems the console finds before the directory's rules: a member of another portfolio, a bad number.
Precheck = Callable[[PortfolioSpec], FormErrors]

# Vorgänge named per member and kind in a preview; the rest are counted ("and 12 more").
SHOWN_VORGAENGE = 8
# Form fields that steer the confirmation rather than describe the change.
CONTROL_FIELDS = frozenset({"csrf", "confirm", "directory"})
# Messages planned between two turns of the event loop in a console's preview: a few milliseconds each
# (bench/web.py), so the process's SMTP sessions and pages are served while a preview plans.
PLAN_BATCH = 100
# Seconds a refused preview (too many computing) is told to wait: about what one takes on a big portfolio.
RETRY_AFTER = 2


@dataclass(frozen=True)
class Proposal:
    """The change a form asks for, and what the pages around it need to know."""

    action: str  # the path the form posts to (the confirmation posts there again)
    edit: api.Edit
    title: str  # what the change is, in words, for the preview's heading
    back: str  # the page to return to (cancel; after a change that starts no run)
    field: str = ""  # the form field the edit's own refusals concern ("" the whole form)
    primary_field: str = "primary"  # where a primary-release conflict is shown
    precheck: Precheck | None = None


def path_part(name: str) -> str:
    """A portfolio or release name as one part of a console path."""
    return quote(name, safe="")


def add(errors: FormErrors, key: str, message: str) -> FormErrors:
    errors.setdefault(key, []).append(message)
    return errors


def conflict_errors(visit: Visit, wanted: PortfolioSpec, primary_field: str) -> FormErrors:
    """The directory's conflicts of ``wanted`` in the visitor's words, by the field they concern."""
    errors: FormErrors = {}
    for found in conflicts(wanted):
        if isinstance(found, PrimaryConflict):
            releases = visit.t("releases.and").join(f"„{r}“" for r in found.releases)
            add(
                errors,
                primary_field,
                visit.t("releases.error.primary", member=found.member, releases=releases),
            )
        elif isinstance(found, SharingUnavailable):
            add(
                errors,
                "share_vorgaenge",
                visit.t("releases.error.sharing_unavailable", release=found.release, portfolio=wanted.name),
            )
    if primary_field in errors:
        add(errors, primary_field, visit.t("releases.error.primary_rule"))  # once, after the members
    return errors


async def carry_out(visit: Visit, proposal: Proposal, reshow: Reshow) -> Response:
    """Check the proposal; preview it when it needs one and is not confirmed; else make it."""
    outcome = await _decide(visit, proposal)
    if isinstance(outcome, tuple):
        # The form is shown again after the session is closed: its page opens one of its own.
        return await reshow(*outcome)
    return outcome


async def _decide(visit: Visit, proposal: Proposal) -> Response | tuple[FormErrors, int]:
    portfolio = visit.portfolio
    confirmed = visit.form.get("confirm") == "1"
    async with visit.console.sessions() as session:
        current = await api.show_portfolio(session, portfolio)
        if proposal.precheck is not None and (errors := proposal.precheck(current)):
            return errors, 400
        try:
            wanted = proposal.edit(current)
        except DirectoryConflict as exc:
            return {proposal.field: [str(exc)]}, 409
        except InputError as exc:
            return {proposal.field: [str(exc)]}, 400
        if errors := conflict_errors(visit, wanted, proposal.primary_field):
            return errors, 409
        directory = fingerprint(current)
        if needs_preview(current, wanted) and not (confirmed and visit.form.get("directory") == directory):
            try:
                work = await api.prepare_preview(session, portfolio, proposal.edit)
            except DirectoryConflict as exc:
                return {"": [str(exc)]}, 409
            carried = {k: v for k, v in visit.form.items() if k not in CONTROL_FIELDS}
            changes = tuple(describe(visit, c) for c in work.changes)
            shown = Shown(
                proposal.action, proposal.title, proposal.back, carried, directory, confirmed, changes
            )
            return _start_preview(visit, work, shown)
        try:
            await api.make_change(session, portfolio, proposal.edit, visit.actor)
        except DirectoryConflict as exc:
            return {"": [str(exc)]}, 409
        runs = [run for name, run, _ in session.info.get(RECONCILE_RUNS, []) if name == portfolio]
        await session.commit()
    if runs:
        return RedirectResponse(f"/portfolios/{path_part(portfolio)}/reconcile/{runs[-1]}", status_code=303)
    return RedirectResponse(proposal.back + "?saved=1", status_code=303)


def preview_path(portfolio: str, preview_id: str) -> str:
    return f"/portfolios/{path_part(portfolio)}/previews/{preview_id}"


def _start_preview(visit: Visit, work: api.PreviewWork, shown: Shown) -> Response:
    """Plan the checked change in the background and send the admin to its page (303), or say why not."""
    sessions = visit.console.sessions

    async def planning(checked: Callable[[int], None]) -> api.ChangePreview:
        # A session of its own: the form's request, and its session, end with the redirect.
        async with sessions() as session:
            return await api.plan_preview(session, work, batch_size=PLAN_BATCH, planned=checked)

    try:
        kept = visit.console.previews.start(visit.account.id, visit.portfolio, shown, planning)
    except Busy as busy:
        yours = preview_path(visit.portfolio, busy.yours.id) if busy.yours is not None else None
        page = visit.render(
            "releases_preview_notice.html",
            429,
            code=429,
            text=visit.t("releases.preview.busy_yours" if yours else "releases.preview.busy"),
            link=yours or shown.back,
            link_text=visit.t("releases.preview.to_yours" if yours else "releases.preview.back"),
        )
        page.headers["Retry-After"] = str(RETRY_AFTER)
        return page
    return RedirectResponse(preview_path(visit.portfolio, kept.id), status_code=303)


# --- how a preview is shown --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Counted:
    """Copies of one kind for one member: the total, the first Vorgänge by name, how many more."""

    total: int
    vorgaenge: tuple[tuple[str, str, int], ...]  # reference, subject, messages
    more: int


@dataclass(frozen=True, slots=True)
class MemberRow:
    name: str
    address: str
    gains: Counted
    loses: Counted
    keeps: Counted
    held_back: Counted


def _counted(shown: api.ChangePreview, counts: Mapping[int, int]) -> Counted:
    named = [
        (shown.vorgaenge[v].reference, shown.vorgaenge[v].subject, n)
        for v, n in list(counts.items())[:SHOWN_VORGAENGE]
    ]
    return Counted(sum(counts.values()), tuple(named), max(0, len(counts) - SHOWN_VORGAENGE))


def preview_rows(shown: api.ChangePreview) -> list[MemberRow]:
    return [
        MemberRow(
            shown.name_of(m.member_id),
            shown.members[m.member_id].address,
            _counted(shown, m.gains),
            _counted(shown, m.loses),
            _counted(shown, m.keeps),
            _counted(shown, m.held_back),
        )
        for m in shown.preview.members
    ]


def _value(visit: Visit, key: str, value: object) -> str:
    if isinstance(value, bool):
        return visit.t("app.yes") if value else visit.t("app.no")
    if key == "read_sync":
        return visit.t(f"releases.read_sync.{value}")
    if key == "revoked_copies":
        return visit.t(f"releases.revoked.{value}")
    if key == "collision_guard":
        return visit.t(f"releases.guard.{value or 'default'}")
    if key == "after_hold_timeout":
        return visit.t(f"releases.after.{value}")
    if key == "hold_timeout" and isinstance(value, int):
        return format_duration(value)
    if key == "backfill":
        text = str(value)
        if text.startswith("days:"):
            return visit.t("releases.backfill.days_n", days=text.removeprefix("days:"))
        return visit.t(f"releases.backfill.{text}")
    return str(value)


def describe(visit: Visit, change: Change) -> str:
    """One step of a change in the visitor's words (the CLI's ``Change.describe`` is English)."""
    if change.kind == "membership":
        return visit.t(
            f"releases.change.membership_{change.action}", member=change.name, release=change.release
        )
    if change.kind in ("release", "member") and change.action in ("create", "update", "delete"):
        settings = ", ".join(
            f"{visit.t('releases.field.' + key)}: {_value(visit, key, value)}" for key, value in change.fields
        )
        text = visit.t(f"releases.change.{change.kind}_{change.action}", name=change.name)
        return f"{text} ({settings})" if settings and change.action != "delete" else text
    return change.describe()
