"""Login, logout and the language switch: the pages every visitor passes through."""

from __future__ import annotations

from starlette.responses import RedirectResponse, Response

from gateway.web import auth
from gateway.web.i18n import LANGUAGE_COOKIE
from gateway.web.routes import Area, Scope, Visit, safe_next

area = Area("login")

# A year: the choice of language is no secret and should outlive sessions.
LANGUAGE_COOKIE_AGE = 365 * 24 * 3600


@area.route("/login", scope=Scope.PUBLIC, name="login")
async def login_page(visit: Visit) -> Response:
    target = safe_next(visit.request.query_params.get("next"))
    if visit.visitor is not None:
        return RedirectResponse(target, status_code=303)
    notice = "login.logged_out" if visit.request.query_params.get("bye") else None
    return visit.render("login.html", next=target, problem=None, notice=notice, login="")


@area.route("/login", scope=Scope.PUBLIC, methods=("POST",), name="login.submit")
async def login_submit(visit: Visit) -> Response:
    login = visit.form.get("login", "")[:200]
    password = visit.form.get("password", "")[:1000]
    target = safe_next(visit.form.get("next"))
    result = await auth.log_in(visit.console, login, password, auth.client_of(visit.request))
    if result.outcome is auth.Outcome.LOGGED_IN:
        assert result.token is not None
        response = RedirectResponse(target, status_code=303)
        auth.set_session_cookie(visit.console, response, result.token)
        return response
    throttled = result.outcome is auth.Outcome.THROTTLED
    status, problem = (429, "login.throttled") if throttled else (401, "login.failed")
    return visit.render("login.html", status, next=target, problem=problem, notice=None, login=login)


@area.route("/logout", scope=Scope.ACCOUNT, methods=("POST",), name="logout")
async def logout(visit: Visit) -> Response:
    assert visit.visitor is not None
    await auth.log_out(visit.console, visit.request, visit.visitor)
    response = RedirectResponse("/login?bye=1", status_code=303)
    auth.clear_session_cookie(visit.console, response)
    return response


@area.route("/language", scope=Scope.PUBLIC, methods=("POST",), name="language")
async def language(visit: Visit) -> Response:
    wanted = visit.form.get("language", "")
    response = RedirectResponse(safe_next(visit.form.get("next")), status_code=303)
    if wanted in visit.console.texts.languages:
        response.set_cookie(
            LANGUAGE_COOKIE,
            wanted,
            max_age=LANGUAGE_COOKIE_AGE,
            path="/",
            secure=visit.console.secure_cookies,
            httponly=True,
            samesite="strict",
        )
    return response
