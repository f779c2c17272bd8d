"""The console's languages: German by default, English on request (a cookie), and ``t()`` for texts.

The texts are dicts of message ids, one module per language (texts_de.py, texts_en.py); ids are
grouped by area with the area's name as prefix (``portfolio.members``), so areas added in parallel
add their own blocks. A missing English text falls back to German, a missing id shows the id.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request

from gateway.web.texts_de import TEXTS as GERMAN
from gateway.web.texts_en import TEXTS as ENGLISH

LANGUAGE_COOKIE = "gw_lang"
DEFAULT_LANGUAGE = "de"
LANGUAGES: Mapping[str, Mapping[str, str]] = {"de": GERMAN, "en": ENGLISH}


class Texts:
    def __init__(self, languages: Mapping[str, Mapping[str, str]] = LANGUAGES) -> None:
        self.languages = languages

    def language_of(self, request: Request) -> str:
        wanted = request.cookies.get(LANGUAGE_COOKIE, DEFAULT_LANGUAGE)
        return wanted if wanted in self.languages else DEFAULT_LANGUAGE

    def t(self, lang: str, key: str, **values: object) -> str:
        text = self.languages.get(lang, {}).get(key) or self.languages[DEFAULT_LANGUAGE].get(key) or key
        return text.format(**values) if values else text
