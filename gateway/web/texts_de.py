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
    "nav.queues": "Warteschlangen",
    "nav.rules": "Regeln",
    "ops.pages": "Seiten",
    "ops.previous": "Vorherige Seite",
    "ops.next": "Nächste Seite",
    "ops.state.pending": "wartet",
    "ops.state.delivered": "zugestellt",
    "ops.state.held": "zurückgehalten",
    "ops.state.failed": "aufgegeben",
    "ops.state.revoking": "wird entfernt",
    "ops.state.revoked": "entfernt",
    "ops.state.dropped": "verworfen",
    "ops.state.sent": "gesendet",
    "quarantine.link": "Quarantäne",
    "quarantine.title": "Quarantäne von {name}",
    "quarantine.intro": (
        "Nachrichten, die eine Routing-Regel zurückgehalten hat. Freigeben stellt sie allen zu, die sie "
        "heute sehen dürfen; Verwerfen löscht sie endgültig (das Ereignisprotokoll behält, wer es tat)."
    ),
    "quarantine.caption": "Zurückgehaltene Nachrichten, älteste zuerst (Seite {page})",
    "quarantine.none": "In der Quarantäne liegt nichts.",
    "quarantine.dropped": "Die Nachricht {id} wurde verworfen.",
    "quarantine.message": "Nachricht",
    "quarantine.since": "Zurückgehalten seit",
    "quarantine.vorgang": "Vorgang",
    "quarantine.sender": "Absender",
    "quarantine.envelope_sender": "Absender (Umschlag)",
    "quarantine.subject": "Betreff",
    "quarantine.size": "Größe",
    "quarantine.bytes": "{n} Bytes",
    "quarantine.rule": "Regel",
    "quarantine.reason": "Begründung",
    "quarantine.rule_set": "Regelsatz",
    "quarantine.show_title": "Zurückgehaltene Nachricht {id}",
    "quarantine.audience": "Wer eine Kopie bekäme",
    "quarantine.nobody": "Niemand im Bestand darf diese Nachricht sehen; sie bekäme keine Kopie.",
    "quarantine.decide": "Entscheiden",
    "quarantine.release": "Freigeben und zustellen",
    "quarantine.confirm_label": "Ja, endgültig löschen",
    "quarantine.drop": "Verwerfen",
    "quarantine.confirm_drop": (
        "Bitte bestätigen Sie das Verwerfen mit dem Häkchen: die Nachricht wird gelöscht."
    ),
    "quarantine.header": "Kopfzeilen",
    "quarantine.released_title": "Nachricht {id} freigegeben",
    "quarantine.released": "Die Nachricht ist freigegeben: {n} Kopie(n) gehen an die Postfächer.",
    "quarantine.member": "Mitglied",
    "quarantine.copy_state": "Kopie",
    "quarantine.reload": "Laden Sie die Seite neu, um den Stand der Zustellung zu sehen.",
    "queues.title": "Warteschlangen",
    "queues.intro": (
        "Was noch zu tun ist: Kopien schreiben, Markierungen nachziehen, entzogene Kopien entfernen, "
        "Mails an Maklersysteme senden. Wie `gateway queue list`."
    ),
    "queues.done.retried": "{id} wird jetzt erneut versucht.",
    "queues.done.dropped": "{id} wurde verworfen und wird nicht mehr versucht.",
    "queues.done.busy": "{id} wird gerade bearbeitet; nichts geändert. Versuchen Sie es gleich noch einmal.",
    "queues.kind": "Art",
    "queues.any": "alle",
    "queues.kind.copy": "Kopie",
    "queues.kind.flags": "Markierungen",
    "queues.kind.removal": "Entfernen",
    "queues.kind.relay": "Weiterleitung",
    "queues.purpose.delayed": "Verzögerungsnachricht",
    "queues.purpose.failed": "Fehlschlagnachricht",
    "queues.state": "Zustand",
    "queues.portfolio": "Bestand",
    "queues.member": "Mitglied",
    "queues.filter": "Filtern",
    "queues.bad_kind": "Diese Art gibt es nicht.",
    "queues.bad_state": "Diesen Zustand gibt es nicht.",
    "queues.caption": "Wartende Aufträge, älteste zuerst (Seite {page})",
    "queues.item": "Auftrag",
    "queues.queued": "Eingereiht",
    "queues.attempts": "Versuche",
    "queues.to": "An",
    "queues.message": "Nachricht",
    "queues.last_error": "Letzter Fehler",
    "queues.empty": "Die Warteschlangen sind leer.",
    "queues.show_title": "Auftrag {id}",
    "queues.next_attempt": "Nächster Versuch",
    "queues.not_scheduled": "nicht geplant",
    "queues.retry": "Jetzt erneut versuchen",
    "queues.confirm_label": "Ja, nicht mehr versuchen",
    "queues.drop": "Verwerfen",
    "queues.confirm_drop": "Bitte bestätigen Sie das Verwerfen mit dem Häkchen.",
    "queues.removal_stays": (
        "Eine entzogene Kopie kann nicht verworfen werden: das Mitglied darf sie nicht mehr sehen, "
        "sie muss aus dem Postfach."
    ),
    "rules.title": "Routing-Regeln",
    "rules.files": "Dateien in {dir}",
    "rules.invalid": "{n} Problem(e): ein laufendes Gateway behält die Regeln, die es hat.",
    "rules.valid": "Gültig: {n} Regel(n), Regelsatz {digest}.",
    "rules.file": "Datei",
    "rules.check": "Prüfung",
    "rules.file_ok": "in Ordnung",
    "rules.no_files": "Keine Regeldateien: Mail wird ohne Regeln angenommen.",
    "rules.check_output": "Ausgabe wie `gateway rules check`",
    "rules.in_force": "Regelsatz in Kraft",
    "rules.live": (
        "Das laufende Gateway routet nach Regelsatz {digest} ({n} Regel(n)), in dieser Reihenfolge:"
    ),
    "rules.loaded_here": "Aus den Dateien geladen: Regelsatz {digest} ({n} Regel(n)), in dieser Reihenfolge:",
    "rules.none_in_force": "Die Dateien sind ungültig; hier ist kein Regelsatz geladen.",
    "rules.no_rules": "Keine Regeln.",
    "rules.test": "Eine Nachricht testen",
    "rules.test_intro": (
        "Laden Sie eine .eml-Datei hoch (höchstens {limit} Bytes) oder nennen Sie eine gespeicherte "
        "Nachricht: Sie sehen, was die Regeln täten, wie bei `gateway rules test`. Nichts wird geändert."
    ),
    "rules.upload": "Nachricht (.eml)",
    "rules.gateway_id": "oder gespeicherte Nachricht (gw-…)",
    "rules.auth": "Maklersystem (Login oder Name)",
    "rules.portfolio": "Bestand (wenn kein Maklersystem)",
    "rules.mail_from": "Absender im Umschlag (sonst From)",
    "rules.rcpt_to": "Empfänger im Umschlag (sonst To und Cc)",
    "rules.run": "Testen",
    "rules.result": "Ergebnis",
    "rules.no_such_message": "Eine Nachricht mit dieser Kennung gibt es nicht.",
    "rules.choose_message": (
        "Bitte laden Sie eine .eml-Datei hoch oder nennen Sie eine gespeicherte Nachricht."
    ),
    "rules.unreadable": "Die Nachricht ließ sich nicht in der vorgesehenen Zeit lesen.",
    "rules.files_invalid": "Die Regeldateien sind ungültig; erst nach ihrer Korrektur lässt sich testen.",
    "rules.not_run": "Der Test lief nicht:",
}
