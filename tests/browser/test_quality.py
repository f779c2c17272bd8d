"""What every console page owes a person, checked in chromium on a laptop and on a phone: the page has
its language, one main landmark and one h1; every visible form control has a name a screen reader
reads (a label, aria-label or aria-labelledby); every button and link says what it does; and on a
phone's width the page itself never scrolls sideways (wide tables scroll in their own box).

The pages are those an operator reaches from the seed's directory, one of each kind."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Browser

from tests.browser.conftest import Console, log_in, screenshot
from tests.web.conftest import OPERATOR, OPERATOR_PASSWORD

MUSTER = "makler-muster"
PAGES = (
    "/",
    f"/portfolios/{MUSTER}",
    f"/portfolios/{MUSTER}/members",
    f"/portfolios/{MUSTER}/releases",
    f"/portfolios/{MUSTER}/releases/Kunde B mit GF",
    f"/portfolios/{MUSTER}/who-sees?from=gf-b@kunde-b.example",
    f"/portfolios/{MUSTER}/vorgaenge",
    f"/portfolios/{MUSTER}/events",
    f"/portfolios/{MUSTER}/quarantine",
    "/events",
    "/queues",
    "/rules",
)
VIEWPORTS = {"laptop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}

# Run in the page: what a screen reader and a small screen would meet.
AUDIT = """() => {
  const visible = (el) => {
    const style = getComputedStyle(el);
    return style.display !== 'none' && style.visibility !== 'hidden' && el.getClientRects().length > 0;
  };
  const named = (el) => (el.labels && el.labels.length > 0) || el.getAttribute('aria-label')
      || el.getAttribute('aria-labelledby') || el.getAttribute('title');
  const controls = [...document.querySelectorAll('input, select, textarea')]
      .filter((el) => el.type !== 'hidden' && visible(el));
  const unnamed = controls.filter((el) => !named(el)).map((el) => el.outerHTML.slice(0, 120));
  const silent = [...document.querySelectorAll('button, a[href]')]
      .filter((el) => visible(el) && !(el.innerText.trim() || el.getAttribute('aria-label')))
      .map((el) => el.outerHTML.slice(0, 120));
  return {
    lang: document.documentElement.lang,
    mains: document.querySelectorAll('main').length,
    h1s: document.querySelectorAll('h1').length,
    unnamed, silent,
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    widest: [...document.querySelectorAll('body *')]
      .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 1
                      && !(el.parentElement && el.parentElement.closest('.scroll')))
      .slice(0, 3).map((el) => el.outerHTML.slice(0, 100)),
  };
}"""


@pytest.mark.browser
@pytest.mark.parametrize("device", sorted(VIEWPORTS))
def test_every_page_is_labelled_and_fits_the_screen(chromium: Browser, console: Console, device: str) -> None:
    context = chromium.new_context(viewport=VIEWPORTS[device])  # type: ignore[arg-type]
    try:
        page = context.new_page()
        log_in(page, console, OPERATOR, OPERATOR_PASSWORD)
        failures: list[str] = []
        for path in PAGES:
            response = page.goto(console.url + path)
            assert response is not None
            assert response.status == 200, f"{path}: {response.status}"
            found: dict[str, Any] = page.evaluate(AUDIT)
            if found["lang"] not in ("de", "en"):
                failures.append(f"{path}: html lang is {found['lang']!r}")
            if found["mains"] != 1 or found["h1s"] != 1:
                failures.append(f"{path}: {found['mains']} main and {found['h1s']} h1 (one each)")
            failures += [f"{path}: control without a name: {html}" for html in found["unnamed"]]
            failures += [f"{path}: button or link that says nothing: {html}" for html in found["silent"]]
            if found["overflow"] > 0:
                failures.append(
                    f"{path}: on a {device} the page scrolls sideways by {found['overflow']} px "
                    f"(wider than the screen: {found['widest']})"
                )
        if device == "phone":
            page.goto(console.url + f"/portfolios/{MUSTER}/releases/Kunde B mit GF")
            screenshot(page, "phone-release")
        assert not failures, "\n".join(failures)
    finally:
        context.close()
