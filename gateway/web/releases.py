"""A release (Freischaltung) of a portfolio: its members, its flags ("Vorgänge teilen" first), creating
and deleting one, and the progress of the reconcile run a change recorded."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse, Response

from gateway.admin import api
from gateway.admin.api import GuardSettings
from gateway.db.reconcile import RunView, run_of
from gateway.domain.collision import (
    DEFAULT_HOLD_TIMEOUT,
    AfterTimeout,
    CollisionGuard,
    format_duration,
    parse_duration,
)
from gateway.domain.directory import PortfolioSpec, ReleaseSpec
from gateway.domain.model import ReadSync
from gateway.domain.reconcile import Backfill, RevokedCopies
from gateway.errors import InputError, NotFound
from gateway.web.releases_change import FormErrors, Proposal, add, carry_out, path_part
from gateway.web.routes import Area, Scope, Visit

area = Area("releases")

READ_SYNCS = tuple(r.value for r in ReadSync)
REVOCATIONS = tuple(r.value for r in RevokedCopies)
BACKFILLS = ("all", "days", "none")


def release_path(portfolio: str, release: str) -> str:
    return f"/portfolios/{path_part(portfolio)}/releases/{path_part(release)}"


def _release_name(visit: Visit) -> str:
    return str(visit.request.path_params["release"])


def _existing(spec: PortfolioSpec, name: str) -> ReleaseSpec:
    release = spec.release(name)
    if release is None:
        raise NotFound(f"there is no release {name!r} in portfolio {spec.name}")
    return release


# --- the fields of a release's settings ------------------------------------------------------------


def values_of(release: ReleaseSpec) -> dict[str, str]:
    """A release's settings as the form's fields."""
    backfill = str(release.backfill)
    return {
        "name": release.name,
        "primary": "on" if release.primary else "",
        "share_vorgaenge": "on" if release.share_vorgaenge else "",
        "read_sync": release.read_sync.value,
        "backfill": "days" if backfill.startswith("days:") else backfill,
        "backfill_days": backfill.removeprefix("days:") if backfill.startswith("days:") else "",
        "revoked_copies": release.revoked_copies.value,
        "collision_guard": release.collision_guard.value if release.collision_guard else "default",
        "hold_timeout": format_duration(release.hold_timeout),
        "after_hold_timeout": release.after_hold_timeout.value,
    }


GUARDS = ("default", *(g.value for g in CollisionGuard))


def _guard_settings(visit: Visit, form: Mapping[str, str], errors: FormErrors) -> GuardSettings:
    """The collision guard's fields (docs/collisions.md); problems go into ``errors``."""
    guard = form.get("collision_guard", "default")
    if guard not in GUARDS:
        add(errors, "collision_guard", visit.t("releases.error.collision_guard"))
        guard = "default"
    timeout = None
    try:
        timeout = parse_duration(form.get("hold_timeout", "24h"))
    except ValueError:
        add(errors, "hold_timeout", visit.t("releases.error.hold_timeout"))
    after = None
    try:
        after = AfterTimeout(form.get("after_hold_timeout", AfterTimeout.RELEASE.value))
    except ValueError:
        add(errors, "after_hold_timeout", visit.t("releases.error.after_hold_timeout"))
    return GuardSettings(guard, timeout, after)


def _settings(
    visit: Visit, form: Mapping[str, str]
) -> tuple[ReadSync | None, Backfill | None, RevokedCopies | None, FormErrors]:
    errors: FormErrors = {}
    read_sync = backfill = revoked = None
    try:
        read_sync = ReadSync(form.get("read_sync", ""))
    except ValueError:
        add(errors, "read_sync", visit.t("releases.error.read_sync"))
    kind = form.get("backfill", "")
    try:
        if kind not in BACKFILLS:
            raise ValueError(kind)
        backfill = Backfill.parse(f"days:{form.get('backfill_days', '').strip()}" if kind == "days" else kind)
    except ValueError:
        add(errors, "backfill_days" if kind == "days" else "backfill", visit.t("releases.error.backfill"))
    try:
        revoked = RevokedCopies(form.get("revoked_copies", ""))
    except ValueError:
        add(errors, "revoked_copies", visit.t("releases.error.revoked"))
    return read_sync, backfill, revoked, errors


# --- the release page ------------------------------------------------------------------------------


async def _release_page(
    visit: Visit,
    name: str,
    *,
    values: Mapping[str, str] | None = None,
    errors: FormErrors | None = None,
    status: int = 200,
) -> Response:
    async with visit.console.sessions() as session:
        spec = await api.show_portfolio(session, visit.portfolio)
    release = _existing(spec, name)
    members = [m for m in spec.members if name in m.releases]
    candidates = [m for m in spec.members if name not in m.releases]
    return visit.render(
        "releases_release.html",
        status,
        p=spec,
        r=release,
        members=members,
        candidates=candidates,
        values=values or values_of(release),
        errors=errors or {},
        saved=visit.request.query_params.get("saved") == "1",
        path=release_path(spec.name, name),
        portfolio_path=f"/portfolios/{path_part(spec.name)}",
        read_syncs=READ_SYNCS,
        revocations=REVOCATIONS,
        guards=GUARDS,
    )


@area.route("/portfolios/{portfolio}/releases/{release}", scope=Scope.PORTFOLIO, name="release")
async def release(visit: Visit) -> Response:
    return await _release_page(visit, _release_name(visit))


@area.route("/portfolios/{portfolio}/releases/{release}", scope=Scope.PORTFOLIO, methods=("POST",))
async def change_release(visit: Visit) -> Response:
    """The settings form: flags and policies of the release."""
    name = _release_name(visit)
    read_sync, backfill, revoked, errors = _settings(visit, visit.form)
    guard = _guard_settings(visit, visit.form, errors)

    async def reshow(found: FormErrors, status: int) -> Response:
        return await _release_page(visit, name, values=visit.form, errors=found, status=status)

    if errors:
        return await reshow(errors, 400)
    edit = api.release_changed(
        name,
        primary=visit.form.get("primary") == "on",
        share_vorgaenge=visit.form.get("share_vorgaenge") == "on",
        read_sync=read_sync,
        backfill=backfill,
        revoked_copies=revoked,
        guard=guard,
    )
    path = release_path(visit.portfolio, name)
    proposal = Proposal(path, edit, visit.t("releases.preview.settings", release=name), path)
    return await carry_out(visit, proposal, reshow)


@area.route("/portfolios/{portfolio}/releases/{release}/members", scope=Scope.PORTFOLIO, methods=("POST",))
async def add_member(visit: Visit) -> Response:
    return await _membership(visit, joins=True)


@area.route(
    "/portfolios/{portfolio}/releases/{release}/members/remove", scope=Scope.PORTFOLIO, methods=("POST",)
)
async def remove_member(visit: Visit) -> Response:
    return await _membership(visit, joins=False)


async def _membership(visit: Visit, *, joins: bool) -> Response:
    name = _release_name(visit)
    chosen = visit.form.get("member", "").strip()

    async def reshow(found: FormErrors, status: int) -> Response:
        return await _release_page(visit, name, errors=found, status=status)

    not_ours = {"member": [visit.t("releases.error.not_a_member", member=chosen, portfolio=visit.portfolio)]}
    if not chosen:
        return await reshow({"member": [visit.t("releases.error.choose_member")]}, 400)
    try:
        wanted = api.address(chosen)
    except InputError:
        return await reshow(not_ours, 400)

    def precheck(spec: PortfolioSpec) -> FormErrors:
        _existing(spec, name)  # an unknown release is a 404, not a problem of the member field
        # A member of another portfolio (mixing portfolios) is refused as if it were nobody: a portfolio
        # admin learns nothing about portfolios that are not theirs.
        return {} if any(m.address == wanted for m in spec.members) else not_ours

    edit = api.release_membership(name, wanted, joins=joins)
    path = release_path(visit.portfolio, name)
    title = "releases.preview.add_member" if joins else "releases.preview.remove_member"
    proposal = Proposal(
        f"{path}/members" + ("" if joins else "/remove"),
        edit,
        visit.t(title, member=chosen, release=name),
        path,
        field="member",
        primary_field="member",
        precheck=precheck,
    )
    return await carry_out(visit, proposal, reshow)


@area.route("/portfolios/{portfolio}/releases/{release}/delete", scope=Scope.PORTFOLIO, methods=("POST",))
async def delete_release(visit: Visit) -> Response:
    name = _release_name(visit)

    async def reshow(found: FormErrors, status: int) -> Response:
        return await _release_page(visit, name, errors=found, status=status)

    def precheck(spec: PortfolioSpec) -> FormErrors:
        _existing(spec, name)
        return {}

    portfolio_path = f"/portfolios/{path_part(visit.portfolio)}"
    proposal = Proposal(
        release_path(visit.portfolio, name) + "/delete",
        api.release_deleted(name),
        visit.t("releases.preview.delete", release=name),
        portfolio_path,
        precheck=precheck,
    )
    return await carry_out(visit, proposal, reshow)


# --- creating a release ----------------------------------------------------------------------------

NEW_RELEASE = {
    "name": "",
    "primary": "",
    "share_vorgaenge": "",
    "read_sync": ReadSync.ANSWERED.value,
    "backfill": "all",
    "backfill_days": "",
    "revoked_copies": RevokedCopies.REMOVE.value,
    "collision_guard": "default",
    "hold_timeout": format_duration(DEFAULT_HOLD_TIMEOUT),
    "after_hold_timeout": AfterTimeout.RELEASE.value,
}


async def _new_page(
    visit: Visit, values: Mapping[str, str], errors: FormErrors | None = None, status: int = 200
) -> Response:
    async with visit.console.sessions() as session:
        spec = await api.show_portfolio(session, visit.portfolio)
    return visit.render(
        "releases_new.html",
        status,
        p=spec,
        values={**NEW_RELEASE, **values},
        errors=errors or {},
        portfolio_path=f"/portfolios/{path_part(spec.name)}",
        read_syncs=READ_SYNCS,
        revocations=REVOCATIONS,
        guards=GUARDS,
    )


@area.route("/portfolios/{portfolio}/releases", scope=Scope.PORTFOLIO, name="new_release")
async def new_release(visit: Visit) -> Response:
    return await _new_page(visit, {})


@area.route("/portfolios/{portfolio}/releases", scope=Scope.PORTFOLIO, methods=("POST",))
async def create_release(visit: Visit) -> Response:
    form = {**NEW_RELEASE, **visit.form}
    name = form["name"].strip()
    read_sync, backfill, revoked, errors = _settings(visit, form)
    guard = _guard_settings(visit, form, errors)
    if not name:
        add(errors, "name", visit.t("releases.error.name"))

    async def reshow(found: FormErrors, status: int) -> Response:
        return await _new_page(visit, visit.form, found, status)

    if errors:
        return await reshow(errors, 400)
    assert read_sync is not None
    edit = api.release_created(
        name,
        primary=form.get("primary") == "on",
        share_vorgaenge=form.get("share_vorgaenge") == "on",
        read_sync=read_sync,
        backfill=backfill,
        revoked_copies=revoked,
        guard=guard,
    )
    path = release_path(visit.portfolio, name)
    proposal = Proposal(
        f"/portfolios/{path_part(visit.portfolio)}/releases",
        edit,
        visit.t("releases.preview.create", release=name),
        path,
        field="name",
    )
    return await carry_out(visit, proposal, reshow)


# --- the progress of a reconcile run ---------------------------------------------------------------


async def _run(visit: Visit) -> RunView:
    text = str(visit.request.path_params["run_id"])
    if not text.isdigit() or len(text) > 18:
        raise NotFound(f"there is no reconcile run {text!r}")
    portfolio, run_id = visit.portfolio, int(text)
    async with visit.console.sessions() as session:
        return await session.run_sync(lambda s: run_of(s.connection(), portfolio, run_id))


def progress(run: RunView) -> dict[str, object]:
    """What the page and its JSON say about a run; an error's text stays in the log, not on the network."""
    return {
        "state": run.state,
        "done": run.state != "open",
        "processed": run.processed,
        "total": run.total,
        "backfilled": run.backfilled,
        "revoked": run.revoked,
        "kept": run.kept,
        "restarts": run.restarts,
        "troubled": run.last_error is not None,
    }


@area.route("/portfolios/{portfolio}/reconcile/{run_id}", scope=Scope.PORTFOLIO, name="reconcile_run")
async def reconcile_run(visit: Visit) -> Response:
    run = await _run(visit)
    return visit.render(
        "releases_reconcile.html",
        run=run,
        state=progress(run),
        portfolio_path=f"/portfolios/{path_part(visit.portfolio)}",
        path=visit.request.url.path,
    )


@area.route("/portfolios/{portfolio}/reconcile/{run_id}/progress", scope=Scope.PORTFOLIO)
async def reconcile_progress(visit: Visit) -> Response:
    run = await _run(visit)
    state = progress(run)
    state["text"] = visit.t(f"releases.run.state.{run.state}")
    return JSONResponse(state)
