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
    "releases.title": "Freischaltung {name}",
    "releases.settings": "Einstellungen",
    "releases.save": "Speichern",
    "releases.saved": "Gespeichert.",
    "releases.and": " und ",
    "releases.field.name": "Name der Freischaltung",
    "releases.field.primary": "Hauptfreischaltung",
    "releases.field.share_vorgaenge": "Vorgänge teilen",
    "releases.field.read_sync": "Lesestatus teilen",
    "releases.field.backfill": "Bestehende Nachrichten nachliefern",
    "releases.field.revoked_copies": "Kopien, die ein Mitglied nicht mehr sehen darf",
    "releases.field.display_name": "Name",
    "releases.help.primary": "Ein Mitglied kann je Bestand nur in einer Hauptfreischaltung sein.",
    "releases.help.share": (
        "Alle Mitglieder dieser Freischaltung sehen und beantworten, was die anderen Mitglieder gesendet "
        "oder erhalten haben."
    ),
    "releases.help.share_unavailable": (
        "Nicht möglich: Der Bestand {portfolio} bietet „Vorgänge teilen“ nicht an. "
        "Der Betrieb kann es für den Bestand freigeben."
    ),
    "releases.help.read_sync": "Wessen Lesestatus die Mitglieder untereinander sehen.",
    "releases.help.backfill": (
        "Was ein Mitglied, das durch diese Freischaltung neu Zugriff bekommt, von den bereits "
        "vorhandenen Nachrichten erhält."
    ),
    "releases.help.revoked": (
        "Was mit Kopien geschieht, die ein Mitglied durch eine Änderung nicht mehr sehen darf."
    ),
    "releases.help.delete": (
        "Die Mitglieder verlieren, was diese Freischaltung ihnen "
        "gab. Vorher sehen Sie, welche Kopien das betrifft."
    ),
    "releases.read_sync.answered": "nur „beantwortet“",
    "releases.read_sync.seen": "„gelesen“ und „beantwortet“",
    "releases.read_sync.off": "nichts",
    "releases.backfill.which": "Welche",
    "releases.backfill.all": "alle",
    "releases.backfill.days": "die der letzten Tage",
    "releases.backfill.none": "keine",
    "releases.backfill.days_label": "Anzahl Tage (bei „die der letzten Tage“)",
    "releases.backfill.days_n": "die der letzten {days} Tage",
    "releases.revoked.remove": "aus dem Postfach entfernen",
    "releases.revoked.keep": "im Postfach lassen",
    "releases.members": "Mitglieder der Freischaltung",
    "releases.no_members": "Diese Freischaltung hat noch keine Mitglieder.",
    "releases.other_releases": "Weitere Freischaltungen",
    "releases.actions": "Aktionen",
    "releases.remove_member": "Entfernen",
    "releases.remove_member_of": "{member} aus der Freischaltung entfernen",
    "releases.add_member_label": "Mitglied hinzufügen",
    "releases.add_member": "Hinzufügen",
    "releases.all_members_in": "Alle Mitglieder des Bestands sind schon in dieser Freischaltung.",
    "releases.manage_members": "Mitglieder des Bestands verwalten",
    "releases.delete_short": "Löschen",
    "releases.delete_heading": "Freischaltung löschen",
    "releases.delete": "„{release}“ löschen",
    "releases.new": "Neue Freischaltung",
    "releases.new_title": "Neue Freischaltung",
    "releases.create": "Anlegen",
    "releases.error.see_fields": "Bitte prüfen Sie die markierten Felder.",
    "releases.error.primary": "{member} wäre zugleich in den Hauptfreischaltungen {releases}.",
    "releases.error.primary_rule": (
        "Ein Mitglied kann je Bestand nur in einer Hauptfreischaltung sein; für weitere Rechte nehmen "
        "Sie es in eine Freischaltung auf, die keine Hauptfreischaltung ist."
    ),
    "releases.error.sharing_unavailable": (
        "„{release}“ kann keine Vorgänge teilen: Der Bestand {portfolio} bietet „Vorgänge teilen“ nicht an."
    ),
    "releases.error.not_a_member": (
        "{member} ist kein Mitglied des Bestands {portfolio}. Eine Freischaltung nimmt nur Mitglieder "
        "ihres eigenen Bestands auf."
    ),
    "releases.error.choose_member": "Bitte wählen Sie ein Mitglied.",
    "releases.error.read_sync": "Bitte wählen Sie, welcher Lesestatus geteilt wird.",
    "releases.error.backfill": "Bitte wählen Sie „alle“, „keine“ oder eine Anzahl Tage von 1 bis 99999.",
    "releases.error.revoked": "Bitte wählen Sie, was mit nicht mehr erlaubten Kopien geschieht.",
    "releases.error.name": "Bitte geben Sie der Freischaltung einen Namen.",
    "releases.preview.title": "Vorschau der Änderung",
    "releases.preview.back": "Zurück, ohne zu ändern",
    "releases.preview.settings": "Einstellungen der Freischaltung „{release}“ ändern",
    "releases.preview.add_member": "{member} in die Freischaltung „{release}“ aufnehmen",
    "releases.preview.remove_member": "{member} aus der Freischaltung „{release}“ entfernen",
    "releases.preview.delete": "Die Freischaltung „{release}“ löschen",
    "releases.preview.create": "Die Freischaltung „{release}“ anlegen",
    "releases.preview.stale": (
        "Das Verzeichnis wurde inzwischen geändert. Dies ist die neue Vorschau; bitte prüfen und "
        "bestätigen Sie erneut."
    ),
    "releases.preview.changes": "Was geändert wird",
    "releases.preview.nothing": "Nichts: Es ist schon so eingestellt.",
    "releases.preview.effect": "Was mit den vorhandenen Nachrichten geschieht",
    "releases.preview.no_messages": (
        "Der Bestand hat noch keine Nachrichten: Es wird nichts nachgeliefert oder entfernt."
    ),
    "releases.preview.planned": "{n} Nachrichten geprüft, mit derselben Planung wie der Abgleich danach.",
    "releases.preview.gained": "Kopien, die nachgeliefert werden",
    "releases.preview.lost": "Kopien, die entfernt werden",
    "releases.preview.kept": "Kopien, die bleiben, obwohl nicht mehr geteilt",
    "releases.preview.held_back": "Nachrichten ohne Nachlieferung (Einstellung „nachliefern“)",
    "releases.preview.caption": (
        "Wer Zugriff auf wie viele Nachrichten in welchen Vorgängen bekommt oder verliert"
    ),
    "releases.preview.member": "Mitglied",
    "releases.preview.gains": "bekommt",
    "releases.preview.loses": "verliert",
    "releases.preview.keeps": "behält",
    "releases.preview.held_back_col": "darf sehen, ohne Kopie",
    "releases.preview.messages": "{n} Nachr.",
    "releases.preview.more": "und {n} weitere Vorgänge",
    "releases.preview.no_copies": "Keine Kopie wird nachgeliefert oder entfernt.",
    "releases.preview.confirm": "Bestätigen und ändern",
    "releases.preview.cancel": "Abbrechen",
    "releases.change.release_create": "Freischaltung „{name}“ anlegen",
    "releases.change.release_update": "Freischaltung „{name}“ ändern",
    "releases.change.release_delete": "Freischaltung „{name}“ löschen",
    "releases.change.member_create": "Mitglied {name} anlegen",
    "releases.change.member_update": "Mitglied {name} ändern",
    "releases.change.member_delete": "Mitglied {name} aus dem Bestand entfernen",
    "releases.change.membership_add": "{member} in „{release}“ aufnehmen",
    "releases.change.membership_remove": "{member} aus „{release}“ entfernen",
    "releases.run.title": "Abgleich {id}",
    "releases.run.state.open": "Läuft: Die vorhandenen Kopien werden angepasst …",
    "releases.run.state.done": "Fertig: Alle vorhandenen Nachrichten sind abgeglichen.",
    "releases.run.progress": "Fortschritt",
    "releases.run.messages": "Nachrichten",
    "releases.run.backfilled": "Nachgelieferte Kopien",
    "releases.run.revoked": "Entfernte Kopien",
    "releases.run.kept": "Behaltene Kopien",
    "releases.run.requested_by": "Ausgelöst von",
    "releases.run.reason": "Anlass",
    "releases.run.created": "Begonnen",
    "releases.run.troubled": (
        "Ein Schritt ist fehlgeschlagen und wird wiederholt; das Protokoll des Gateways nennt den Grund."
    ),
    "releases.run.copies_follow": "Die Kopien selbst schreibt die Zustellung kurz danach in die Postfächer.",
    "releases.run.reload": "Neu laden",
    "members.title": "Mitglieder des Bestands {name}",
    "members.list": "Mitglieder",
    "members.name_of": "Name von {member}",
    "members.rename": "Umbenennen",
    "members.rename_of": "{member} umbenennen",
    "members.remove": "Entfernen",
    "members.remove_of": "{member} aus dem Bestand entfernen",
    "members.pages": "Seiten",
    "members.previous": "Vorige Seite",
    "members.next": "Nächste Seite",
    "members.page_of": "Seite {page} von {pages}",
    "members.add_heading": "Mitglied hinzufügen",
    "members.address": "Adresse",
    "members.display_name": "Name",
    "members.add": "Hinzufügen",
    "members.preview.remove": "{member} aus dem Bestand entfernen",
    "members.error.address": "Bitte geben Sie die Adresse des Mitglieds an.",
    "members.error.exists": "{address} ist schon Mitglied dieses Bestands.",
    "members.error.invalid": "„{address}“ ist keine gültige Adresse.",
    #
    # --- who-sees, vorgaenge, events (anchor: add this area's ids below this line) ---
    #
    #
    # --- quarantine, queues, rules (anchor: add this area's ids below this line) ---
    #
}
