"""The console's English texts, by the message ids of texts_de.py (which has every id)."""

from __future__ import annotations

TEXTS: dict[str, str] = {
    # --- the frame of every page ---
    "app.title": "Vorgang gateway",
    "app.skip": "Skip to content",
    "app.navigation": "Areas",
    "app.logged_in_as": "Logged in as {login}",
    "app.role.operator": "operator",
    "app.role.portfolio_admin": "portfolio admin",
    "app.language": "Language",
    "app.language.de": "Deutsch",
    "app.language.en": "English",
    "app.language.switch": "Switch",
    "app.yes": "yes",
    "app.no": "no",
    "app.none": "–",
    # --- navigation ---
    "nav.overview": "Portfolios",
    # --- errors ---
    "error.title": "Error {code}",
    "error.not_found": "This page does not exist, or your account may not open it.",
    "error.forbidden": "This page is for operators only.",
    "error.csrf": (
        "The form was no longer valid (after a logout, or sent from another window). "
        "Please reload the page and send it again."
    ),
    "error.method": "This action is not possible here.",
    "error.too_large": "What was sent is too large.",
    "error.bad_request": "The input is not valid.",
    "error.internal": "An internal error occurred and was logged. Please try again later.",
    "error.back": "To the overview",
    # --- login.py ---
    "login.title": "Log in",
    "login.login": "Login",
    "login.password": "Password",
    "login.submit": "Log in",
    "login.failed": "Login or password is wrong.",
    "login.throttled": "Too many failed logins. Please wait a few minutes before trying again.",
    "login.logout": "Log out",
    "login.logged_out": "You are logged out.",
    # --- overview.py ---
    "overview.title": "Overview",
    "overview.portfolios": "Portfolios (Bestände)",
    "overview.none": "Your account administers no portfolio.",
    "overview.name": "Portfolio",
    "overview.display_name": "Display name",
    "overview.members": "Members",
    "overview.releases": "Releases",
    "overview.sharing": "Vorgänge teilen available",
    # --- portfolios.py ---
    "portfolio.title": "Portfolio {name}",
    "portfolio.display_name": "Display name",
    "portfolio.sharing_available": "Vorgänge teilen available",
    "portfolio.sender_auth": "Sender authentication",
    "portfolio.backoffices": "Back offices",
    "portfolio.backoffice": "Name",
    "portfolio.ams_version": "ams version",
    "portfolio.addresses": "Addresses",
    "portfolio.relay": "Relay",
    "portfolio.no_relay": "none (replies cannot be relayed)",
    "portfolio.members": "Members",
    "portfolio.member_address": "Address",
    "portfolio.member_name": "Name",
    "portfolio.member_releases": "Releases (Freischaltungen)",
    "portfolio.releases": "Releases (Freischaltungen)",
    "portfolio.release": "Release",
    "portfolio.primary": "Primary (Hauptfreischaltung)",
    "portfolio.share_vorgaenge": "Vorgänge teilen",
    "portfolio.read_sync": "Read state",
    "portfolio.release_members": "Members",
    "portfolio.none": "none",
    "portfolio.areas": "Areas of the portfolio",
    #
    # --- releases.py, members (anchor: add this area's ids below this line) ---
    #
    #
    # --- who-sees, vorgaenge, events (anchor: add this area's ids below this line) ---
    #
    #
    # --- quarantine, queues, rules (anchor: add this area's ids below this line) ---
    #
}
