"""The locale files: every language has every key with the same placeholders, and the bot's
texts are valid for Telegram's HTML mode."""

from __future__ import annotations

import re
import string
import tomllib
from html.parser import HTMLParser

import pytest

from comfygram.i18n import (
    LANGUAGES,
    LOCALES_DIR,
    PLURAL_FORMS,
    _flatten,
    catalog,
    language_of,
    plural_form,
    t,
)

# Tags Telegram's HTML mode accepts that our texts may use.
ALLOWED_TAGS = {"b", "i", "u", "s", "code", "pre"}
# t(language, key, **values): a placeholder with one of these names cannot be filled.
RESERVED = {"language", "key"}


def _files(language: str) -> dict[str, dict[str, str]]:
    """Each locale file of one language, flattened to ``file.key``."""
    files: dict[str, dict[str, str]] = {}
    for path in sorted((LOCALES_DIR / language).glob("*.toml")):
        texts: dict[str, str] = {}
        with path.open("rb") as file:
            _flatten(path.stem, tomllib.load(file), texts)
        files[path.name] = texts
    return files


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def _plural_keys(texts: dict[str, str]) -> set[str]:
    """The keys of plural texts (tables naming their ``count`` value, one text per form)."""
    return {key.removesuffix(".count") for key in texts if key.endswith(".count")}


def _texts(texts: dict[str, str]) -> dict[str, str]:
    """Every text, a plural text under its key (its forms' placeholders joined)."""
    plural = _plural_keys(texts)
    single = {k: v for k, v in texts.items() if k.rsplit(".", 1)[0] not in plural}
    for key in plural:
        forms = [v for k, v in texts.items() if k.startswith(f"{key}.") and k != f"{key}.count"]
        single[key] = " ".join(sorted(forms))
    return single


def test_every_language_has_the_same_files():
    names = {language: set(_files(language)) for language in LANGUAGES}
    assert names["en"], "no locale files found"
    for language in LANGUAGES:
        assert names[language] == names["en"], language


@pytest.mark.parametrize("language", [lang for lang in LANGUAGES if lang != "en"])
def test_every_key_exists_in_every_language(language: str):
    for name, english_texts in _files("en").items():
        english, other = _texts(english_texts), _texts(_files(language)[name])
        assert set(english) - set(other) == set(), f"{language}/{name} lacks these keys"
        assert set(other) - set(english) == set(), f"en/{name} lacks these keys"


@pytest.mark.parametrize("language", [lang for lang in LANGUAGES if lang != "en"])
def test_placeholders_are_the_same_in_every_language(language: str):
    english, other = catalog("en"), catalog(language)
    for key, text in _texts(english).items():
        assert _placeholders(_texts(other)[key]) == _placeholders(text), key


@pytest.mark.parametrize("language", LANGUAGES)
def test_plural_texts_have_every_form_of_their_language(language: str):
    texts = catalog(language)
    plural = _plural_keys(texts)
    assert "bot.cancel.done" in plural
    for key in plural:
        forms = {k.rsplit(".", 1)[1] for k in texts if k.startswith(f"{key}.")} - {"count"}
        assert forms == set(PLURAL_FORMS[language]), key
        count = texts[f"{key}.count"]
        for form in forms:
            assert count in _placeholders(texts[f"{key}.{form}"]), (key, form)


def test_plural_forms():
    assert [plural_form("en", n) for n in (0, 1, 2, 5, 11, 21, -1)] == [
        "other",
        "one",
        "other",
        "other",
        "other",
        "other",
        "one",
    ]
    numbers = (0, 1, 2, 4, 5, 11, 12, 14, 21, 22, 25, 101, 111, 1002)
    assert [plural_form("ru", n) for n in numbers] == [
        "many",
        "one",
        "few",
        "few",
        "many",
        "many",
        "many",
        "many",
        "one",
        "few",
        "many",
        "one",
        "many",
        "few",
    ]


def test_counts_agree_with_their_nouns():
    assert t("en", "bot.cancel.done", price=1, balance=4) == (
        "❌ Cancelled. 1 credit is back. Balance: <b>4</b>."
    )
    assert "3 credits are back" in t("en", "bot.cancel.done", price=3, balance=4)
    assert "1 кредит вернулся" in t("ru", "bot.cancel.done", price=1, balance=4)
    assert "3 кредита вернулись" in t("ru", "bot.cancel.done", price=3, balance=4)
    assert "5 кредитов вернулись" in t("ru", "bot.cancel.done", price=5, balance=4)
    assert t("en", "bot.invoice.title", credits=1) == "1 credit"
    assert t("ru", "bot.invoice.title", credits=21) == "21 кредит"
    assert "1 credit added" in t("en", "bot.pay.thanks", credits=1, balance=4)
    assert "1 credit is back" in t("en", "worker.failed.intro", title="x", reason="y", price=1)
    assert "2 кредита вернулись" in t("ru", "worker.failed.intro", title="x", reason="y", price=2)


@pytest.mark.parametrize("language", LANGUAGES)
def test_texts_can_be_formatted(language: str):
    for key, text in catalog(language).items():
        if key.endswith(".count"):
            continue  # the name of a plural text's count, not a text
        names = _placeholders(text)
        assert not names & RESERVED, f"{key} uses a reserved placeholder name"
        assert all(re.fullmatch(r"[a-z_]+", name) for name in names), key
        assert text.format(**dict.fromkeys(names, "x")), key
        assert text.strip(), f"{key} is empty"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag not in ALLOWED_TAGS:
            self.problems.append(f"<{tag}>")
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.problems.append(f"</{tag}> does not close the last tag")


@pytest.mark.parametrize("language", LANGUAGES)
def test_bot_texts_are_telegram_html(language: str):
    """Messages go out with parse_mode HTML: a stray < or & would be refused by Telegram."""
    for key, text in catalog(language).items():
        if not key.startswith("bot."):
            continue
        parser = _Tags()
        parser.feed(text)
        parser.close()
        assert not parser.problems and not parser.open, (key, parser.problems, parser.open)
        bare = re.sub(r"</?[a-z]+>|&(lt|gt|amp|quot);", "", text)
        assert "<" not in bare and ">" not in bare and "&" not in bare, key


def test_telegram_languages_map_to_ours():
    assert language_of("ru") == "ru"
    assert language_of("uk") == "ru"
    assert language_of("pt-br") == "en"
    assert language_of(None) == "en"
    assert t("de", "bot.balance.text", balance=5) == t("en", "bot.balance.text", balance=5)
