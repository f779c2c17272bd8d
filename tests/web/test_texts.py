"""The console's texts: both languages have every message id, and every id a template names exists."""

from __future__ import annotations

import re

from gateway.web.console import TEMPLATES
from gateway.web.i18n import Texts
from gateway.web.texts_de import TEXTS as GERMAN
from gateway.web.texts_en import TEXTS as ENGLISH

USED = re.compile(r"""\bt\(\s*["']([a-z_.]+)["']\s*[,)]""")


def test_both_languages_have_the_same_message_ids() -> None:
    assert sorted(set(GERMAN) - set(ENGLISH)) == []
    assert sorted(set(ENGLISH) - set(GERMAN)) == []


def test_every_message_id_in_the_templates_exists() -> None:
    used = {key for path in TEMPLATES.glob("*.html") for key in USED.findall(path.read_text("utf-8"))}
    assert used
    assert sorted(used - set(GERMAN)) == []


def test_the_products_words() -> None:
    assert GERMAN["portfolio.primary"] == "Hauptfreischaltung"
    assert GERMAN["portfolio.share_vorgaenge"] == "Vorgänge teilen"
    assert GERMAN["nav.overview"] == "Bestände"
    assert GERMAN["portfolio.releases"] == "Freischaltungen"


def test_t_falls_back_to_german_then_to_the_id() -> None:
    texts = Texts({"de": {"a": "eins {n}"}, "en": {}})
    assert texts.t("en", "a", n=1) == "eins 1"
    assert texts.t("en", "missing") == "missing"
