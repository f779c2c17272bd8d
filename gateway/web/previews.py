"""The page of a change's preview: "being computed" with the messages checked so far, then the preview
with its confirmation; and its JSON for the page's script."""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from gateway.web.preview_tasks import KeptPreview
from gateway.web.releases_change import path_part, preview_path, preview_rows
from gateway.web.routes import Area, Scope, Visit

area = Area("previews")


def _kept(visit: Visit) -> KeptPreview | None:
    preview_id = str(visit.request.path_params["preview_id"])
    return visit.console.previews.find(preview_id, visit.account.id, visit.portfolio)


def _gone(visit: Visit) -> Response:
    # Unknown, expired, another account's, or computed by another node: the same answer for each, so an
    # id tells nothing about whose it is.
    return visit.render(
        "releases_preview_notice.html",
        404,
        code=404,
        text=visit.t("releases.preview.gone"),
        link=f"/portfolios/{path_part(visit.portfolio)}",
        link_text=visit.t("releases.preview.start_again"),
    )


def state(visit: Visit, preview: KeptPreview) -> dict[str, object]:
    """What the page's script is told; a failure's cause stays in the log."""
    if preview.result is not None:
        name = "done"
    elif preview.problem is not None:
        name = "refused"
    elif preview.failed:
        name = "failed"
    else:
        name = "computing"
    return {
        "state": name,
        "done": preview.done,
        "checked": preview.checked,
        "text": visit.t("releases.preview.checked", n=preview.checked),
    }


@area.route("/portfolios/{portfolio}/previews/{preview_id}", scope=Scope.PORTFOLIO, name="preview")
async def preview(visit: Visit) -> Response:
    kept = _kept(visit)
    if kept is None:
        return _gone(visit)
    shown, result = kept.shown, kept.result
    return visit.render(
        "releases_preview.html",
        kept=kept,
        state=state(visit, kept),
        path=preview_path(visit.portfolio, kept.id),
        proposal=shown,
        shown=result,
        directory=shown.directory,
        stale=shown.stale,
        changes=shown.changes,
        rows=preview_rows(result) if result is not None else [],
        carried=shown.carried,
    )


@area.route("/portfolios/{portfolio}/previews/{preview_id}/progress", scope=Scope.PORTFOLIO)
async def preview_progress(visit: Visit) -> Response:
    kept = _kept(visit)
    if kept is None:
        return JSONResponse({"state": "gone", "done": True}, status_code=404)
    return JSONResponse(state(visit, kept))
