"""Texts in Russian and English, from the TOML files in ``locales/<language>/``.

Every component keeps its texts in its own file (``bot.toml``, ``worker.toml``); keys are
``<file>.<key>``, e.g. ``worker.result_caption``. Handlers never hold user-facing text.
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


def t(language: str | None, key: str, **values: object) -> str:
    """The text for ``key`` in ``language`` (English when missing), formatted with values."""
    text = catalog(language_of(language)).get(key) or catalog(DEFAULT_LANGUAGE)[key]
    return text.format(**values) if values else text
