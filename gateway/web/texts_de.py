"""The console's German texts (the default), by message id; grouped by area, the area's name first.

The product's words: Bestand (portfolio), Freischaltung (release), Hauptfreischaltung (primary),
Vorgänge teilen, Vorgang.
"""

from __future__ import annotations

TEXTS: dict[str, str] = {
    # --- the frame of every page ---
    "app.title": "Vorgang-Gateway",
    "app.skip": "Zum Inhalt springen",
    "app.navigation": "Bereiche",
    "app.logged_in_as": "Angemeldet als {login}",
    "app.role.operator": "Betrieb",
    "app.role.portfolio_admin": "Bestandsverwaltung",
    "app.language": "Sprache",
    "app.language.de": "Deutsch",
    "app.language.en": "English",
    "app.language.switch": "Wechseln",
    "app.yes": "ja",
    "app.no": "nein",
    "app.none": "–",
    # --- navigation (each area adds its own entry) ---
    "nav.overview": "Bestände",
    # --- errors ---
    "error.title": "Fehler {code}",
    "error.not_found": "Diese Seite gibt es nicht, oder sie ist für Ihr Konto nicht freigegeben.",
    "error.forbidden": "Diese Seite ist dem Betrieb vorbehalten.",
    "error.csrf": (
        "Das Formular war nicht mehr gültig (etwa nach einer Abmeldung oder aus einem anderen Fenster). "
        "Bitte laden Sie die Seite neu und senden Sie es noch einmal."
    ),
    "error.method": "Diese Aktion ist hier nicht möglich.",
    "error.too_large": "Die gesendeten Daten sind zu groß.",
    "error.bad_request": "Die Eingabe ist nicht gültig.",
    "error.internal": (
        "Ein interner Fehler ist aufgetreten; er wurde protokolliert. Bitte versuchen Sie es später erneut."
    ),
    "error.back": "Zur Übersicht",
    # --- login.py ---
    "login.title": "Anmelden",
    "login.login": "Benutzername",
    "login.password": "Passwort",
    "login.submit": "Anmelden",
    "login.failed": "Benutzername oder Passwort ist falsch.",
    "login.throttled": (
        "Zu viele fehlgeschlagene Anmeldungen. "
        "Bitte warten Sie einige Minuten, bevor Sie es erneut versuchen."
    ),
    "login.logout": "Abmelden",
    "login.logged_out": "Sie sind abgemeldet.",
    # --- overview.py ---
    "overview.title": "Übersicht",
    "overview.portfolios": "Bestände",
    "overview.none": "Ihrem Konto ist kein Bestand zugeordnet.",
    "overview.name": "Bestand",
    "overview.display_name": "Bezeichnung",
    "overview.members": "Mitglieder",
    "overview.releases": "Freischaltungen",
    "overview.sharing": "Vorgänge teilen verfügbar",
    # --- portfolios.py ---
    "portfolio.title": "Bestand {name}",
    "portfolio.display_name": "Bezeichnung",
    "portfolio.sharing_available": "Vorgänge teilen verfügbar",
    "portfolio.sender_auth": "Absenderprüfung",
    "portfolio.backoffices": "Maklersysteme",
    "portfolio.backoffice": "Name",
    "portfolio.ams_version": "ams-Version",
    "portfolio.addresses": "Adressen",
    "portfolio.relay": "Zustellung",
    "portfolio.no_relay": "keine (Antworten können nicht zugestellt werden)",
    "portfolio.members": "Mitglieder",
    "portfolio.member_address": "Adresse",
    "portfolio.member_name": "Name",
    "portfolio.member_releases": "Freischaltungen",
    "portfolio.releases": "Freischaltungen",
    "portfolio.release": "Freischaltung",
    "portfolio.primary": "Hauptfreischaltung",
    "portfolio.share_vorgaenge": "Vorgänge teilen",
    "portfolio.read_sync": "Lesestatus",
    "portfolio.release_members": "Mitglieder",
    "portfolio.none": "keine",
    "portfolio.areas": "Bereiche des Bestands",
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
