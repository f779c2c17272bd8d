"""The members (Mitglieder) of a portfolio: the list, adding one, renaming one, removing one."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import RedirectResponse, Response

from gateway.admin import api
from gateway.domain.directory import PortfolioSpec
from gateway.errors import DirectoryConflict, InputError
from gateway.web.releases_change import FormErrors, Proposal, add, carry_out, path_part
from gateway.web.routes import Area, Scope, Visit

area = Area("members")

# Members per page; a portfolio's directory is read whole anyway, the page stays short.
PAGE_SIZE = 50


def members_path(portfolio: str) -> str:
    return f"/portfolios/{path_part(portfolio)}/members"


def _page_number(visit: Visit) -> int:
    text = visit.request.query_params.get("page", "1")
    return int(text) if text.isdigit() and 0 < int(text) < 10**6 else 1


async def _members_page(
    visit: Visit,
    *,
    values: Mapping[str, str] | None = None,
    errors: FormErrors | None = None,
    status: int = 200,
) -> Response:
    async with visit.console.sessions() as session:
        spec = await api.show_portfolio(session, visit.portfolio)
    pages = max(1, -(-len(spec.members) // PAGE_SIZE))
    page = min(_page_number(visit), pages)
    shown = spec.members[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    return visit.render(
        "members_list.html",
        status,
        p=spec,
        members=shown,
        page=page,
        pages=pages,
        values=values or {},
        errors=errors or {},
        saved=visit.request.query_params.get("saved") == "1",
        path=members_path(spec.name),
        portfolio_path=f"/portfolios/{path_part(spec.name)}",
    )


@area.route("/portfolios/{portfolio}/members", scope=Scope.PORTFOLIO, name="members")
async def members(visit: Visit) -> Response:
    return await _members_page(visit)


@area.route("/portfolios/{portfolio}/members", scope=Scope.PORTFOLIO, methods=("POST",))
async def add_member(visit: Visit) -> Response:
    """A new member: no release yet, so nobody's audience changes and no preview is needed."""
    address = visit.form.get("address", "").strip()
    display_name = visit.form.get("display_name", "").strip()
    errors: FormErrors = {}
    if not address:
        add(errors, "address", visit.t("members.error.address"))
    if errors:
        return await _members_page(visit, values=visit.form, errors=errors, status=400)
    try:
        async with visit.console.sessions() as session:
            await api.add_member(session, visit.portfolio, address, display_name, visit.actor)
            await session.commit()
    except DirectoryConflict:
        errors = {"address": [visit.t("members.error.exists", address=address)]}
        return await _members_page(visit, values=visit.form, errors=errors, status=409)
    except InputError:
        errors = {"address": [visit.t("members.error.invalid", address=address)]}
        return await _members_page(visit, values=visit.form, errors=errors, status=400)
    return RedirectResponse(members_path(visit.portfolio) + "?saved=1", status_code=303)


def _chosen(visit: Visit) -> str:
    """The member a row's form names, normalised; InputError (400) when it is no address at all."""
    return api.address(visit.form.get("member", ""))


@area.route("/portfolios/{portfolio}/members/rename", scope=Scope.PORTFOLIO, methods=("POST",))
async def rename_member(visit: Visit) -> Response:
    member = _chosen(visit)
    display_name = visit.form.get("display_name", "").strip()
    async with visit.console.sessions() as session:
        # NotFound for a member that is not (or no longer) in the portfolio: the 404 page.
        await api.set_member(session, visit.portfolio, member, display_name, visit.actor)
        await session.commit()
    return RedirectResponse(members_path(visit.portfolio) + "?saved=1", status_code=303)


@area.route("/portfolios/{portfolio}/members/remove", scope=Scope.PORTFOLIO, methods=("POST",))
async def remove_member(visit: Visit) -> Response:
    """Removing a member revokes what its releases gave it: previewed, then confirmed."""
    member = _chosen(visit)

    async def reshow(found: FormErrors, status: int) -> Response:
        return await _members_page(visit, errors=found, status=status)

    def precheck(spec: PortfolioSpec) -> FormErrors:
        if not any(m.address == member for m in spec.members):
            return {"": [visit.t("releases.error.not_a_member", member=member, portfolio=spec.name)]}
        return {}

    path = members_path(visit.portfolio)
    proposal = Proposal(
        path + "/remove",
        api.member_removed(member),
        visit.t("members.preview.remove", member=member),
        path,
        precheck=precheck,
    )
    return await carry_out(visit, proposal, reshow)
