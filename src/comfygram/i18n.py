"""Texts in Russian and English, from the TOML files in ``locales/<language>/``.

Every component keeps its texts in its own file (``bot.toml``, ``worker.toml``); keys are
``<file>.<key>``, e.g. ``worker.result_caption``. Handlers never hold user-facing text.

A text with a count in it ("1 credit is back", "3 credits are back") is a table with one text
per plural form of its language (English: one, other; Russian: one, few, many) and ``count``
naming the value that chooses the form::

    [cancel.done]
    count = "price"
    one = "❌ Cancelled. {price} credit is back."
    other = "❌ Cancelled. {price} credits are back."

Callers do not change: ``t(lang, "bot.cancel.done", price=1)`` picks the form.
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path

LOCALES_DIR = Path(__file__).parent / "locales"
LANGUAGES = ("en", "ru")
DEFAULT_LANGUAGE = "en"
# Telegram language codes that get the Russian texts.
_RUSSIAN = ("ru", "be", "uk", "kk")
# The plural forms each language's plural texts have (CLDR's categories for whole numbers).
PLURAL_FORMS = {"en": ("one", "other"), "ru": ("one", "few", "many")}


def plural_form(language: str | None, count: int) -> str:
    """Which plural form ``count`` takes in ``language``: "one", "few", "many" or "other"."""
    n = abs(int(count))
    if language_of(language) == "ru":
        if n % 10 == 1 and n % 100 != 11:
            return "one"
        if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14:
            return "few"
        return "many"
    return "one" if n == 1 else "other"


def language_of(code: str | None) -> str:
    """Our language for a Telegram ``language_code`` (or a stored choice)."""
    if not code:
        return DEFAULT_LANGUAGE
    code = code.lower()
    if code in LANGUAGES:
        return code
    return "ru" if code.split("-")[0] in _RUSSIAN else DEFAULT_LANGUAGE


@cache
def catalog(language: str) -> dict[str, str]:
    """Every key of one language, flattened to ``file.key``."""
    texts: dict[str, str] = {}
    for path in sorted((LOCALES_DIR / language).glob("*.toml")):
        with path.open("rb") as file:
            _flatten(path.stem, tomllib.load(file), texts)
    return texts


def _flatten(prefix: str, table: dict[str, object], into: dict[str, str]) -> None:
    for key, value in table.items():
        if isinstance(value, dict):
            _flatten(f"{prefix}.{key}", value, into)
        else:
            into[f"{prefix}.{key}"] = str(value)


def _lookup(language: str, key: str, values: dict[str, object]) -> str | None:
    texts = catalog(language)
    text = texts.get(key)
    if text is not None:
        return text
    count_name = texts.get(f"{key}.count")
    if count_name is None:
        return None
    count = values[count_name]
    assert isinstance(count, int | str), f"{key}: {count_name} is not a number"
    form = plural_form(language, int(count))
    return texts.get(f"{key}.{form}") or texts[f"{key}.{PLURAL_FORMS[language][-1]}"]


def t(language: str | None, key: str, **values: object) -> str:
    """The text for ``key`` in ``language`` (English when missing), formatted with values;
    a plural text in the form its count takes."""
    language = language_of(language)
    text = _lookup(language, key, values)
    if text is None:
        text = _lookup(DEFAULT_LANGUAGE, key, values)
    if text is None:
        raise KeyError(key)
    return text.format(**values) if values else text
