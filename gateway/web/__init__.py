"""The admin web console: pages on the admin API, served by ``gateway serve`` (issue 15).

One job per module:

    app.py        the ASGI application: security headers, body limit, error pages, every area's routes
    routes.py     how a page declares its path and scope (``Area``, ``Scope``), and the checks each
                  request passes before a page runs (session, CSRF, scope): ``Visit`` is what a page gets
    console.py    what the pages share: settings, database sessions, templates, login failures
    auth.py       logging in and out, sessions from cookies or a trusted proxy's header
    i18n.py       the language of a request and ``t()``; the texts are in texts_de.py and texts_en.py
    server.py     uvicorn in the service's own event loop
    exposition.py /metrics: the process's instruments and the stored queues, in Prometheus' format
    readiness.py  /readyz's checks: database, mailboxes, listeners

Pages, one module per area (each holds an ``area = Area(...)``; ``app.py`` finds them all):

    login.py      login, logout, language switch
    overview.py   the start page (Übersicht): the portfolios the account may see
    portfolios.py a portfolio: back offices, members, releases
    health.py     /healthz, /readyz, /metrics (public routes; /metrics checks the peer itself)

A new area is a module here with an ``area``, its templates under templates/ named after it, and its
texts in texts_de.py and texts_en.py under its own prefix; nothing else needs to change.
"""
