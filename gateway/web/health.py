"""The operations endpoints on the console's listener: /healthz (the process lives), /readyz (it can
do its work: gateway.web.readiness) and /metrics (Prometheus: gateway.web.exposition).

/healthz and /readyz are public: a load balancer or systemd probe has no session, and the answers name
parts, never secrets. /metrics is public only with ``metrics_public = true``; otherwise only the
``metrics_allow`` addresses get it (loopback by default) and everyone else 404, as for any path that
is not there. Plain text throughout: these are read by machines and by curl.
"""

from __future__ import annotations

from starlette.responses import PlainTextResponse, Response

from gateway.web.exposition import CONTENT_TYPE
from gateway.web.routes import Area, Scope, Visit

area = Area("health")


@area.route("/healthz", scope=Scope.PUBLIC, name="healthz")
async def healthz(visit: Visit) -> Response:
    return PlainTextResponse("ok\n")


@area.route("/readyz", scope=Scope.PUBLIC, name="readyz")
async def readyz(visit: Visit) -> Response:
    readiness = visit.console.readiness
    if readiness is None:
        return PlainTextResponse("not ready: readiness is not checked by this server\n", status_code=503)
    report = await readiness.report()
    warnings = "".join(f"warning: {w}\n" for w in report.warnings)
    if report.problems:
        return PlainTextResponse(
            "not ready:\n" + "".join(f"{p}\n" for p in report.problems) + warnings, status_code=503
        )
    return PlainTextResponse("ready\n" + warnings)


@area.route("/metrics", scope=Scope.PUBLIC, name="metrics")
async def metrics(visit: Visit) -> Response:
    console = visit.console
    peer = visit.request.client.host if visit.request.client is not None else ""
    if console.exposition is None or not console.settings.may_scrape(peer):
        return PlainTextResponse("Not Found\n", status_code=404)
    return Response(await console.exposition.render(), media_type=CONTENT_TYPE)
