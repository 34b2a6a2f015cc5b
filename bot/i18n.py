"""Every user-facing word in six languages, from gettext catalogues (`bot/locales/*/messages.po`).

Core code never decides a language: it builds `Text` values (`_t("...", name=value)`), and the
Discord layer renders them for whoever reads them (`render(text, language)`): a private reply in
the member's language, a public message in the server's preferred one. Placeholders use
`str.format` names; their values are rendered for the language too (`Money`, `Seconds`, `Number`,
nested `Text`). A message missing from a catalogue, or translated with a broken placeholder, falls
back to English rather than failing.

The `.po` files are the source (edited by translators, checked by tests/test_i18n.py); they are
compiled in memory with Babel when first used, so there is no stale `.mo` to forget.
`python -m bot.i18n` re-extracts the messages from the code into the catalogues.
"""

from __future__ import annotations

import functools
import gettext
import io
import json
import logging
import math
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from babel import Locale
from babel.lists import format_list
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_currency, format_decimal
from babel.units import format_unit

log = logging.getLogger(__name__)

LOCALES_DIR = Path(__file__).with_name("locales")
DOMAIN = "messages"
ENGLISH = "en"
# Our languages, by catalogue name, with the name each shows itself by.
LANGUAGES: dict[str, str] = {
    "en": "English",
    "de": "Deutsch",
    "fr": "Français",
    "es": "Español",
    "pt_BR": "Português (Brasil)",
    "ja": "日本語",
}
# Discord's locale codes (https://discord.com/developers/docs/reference#locales) → catalogue.
_DISCORD_LOCALES: dict[str, str] = {
    "en-US": "en",
    "en-GB": "en",
    "de": "de",
    "fr": "fr",
    "es-ES": "es",
    "es-419": "es",
    "pt-BR": "pt_BR",
    "ja": "ja",
}


def language_for(discord_locale: object) -> str:
    """Our catalogue for a Discord locale (`discord.Locale` or its code); English otherwise."""
    code = str(getattr(discord_locale, "value", discord_locale) or "")
    if code in _DISCORD_LOCALES:
        return _DISCORD_LOCALES[code]
    base = code.replace("_", "-").split("-")[0]
    return base if base in LANGUAGES else ENGLISH


# --- values that format themselves for a language ------------------------------------------------


@runtime_checkable
class Localized(Protocol):
    def render(self, language: str) -> str: ...


@dataclass(frozen=True)
class Money:
    """An amount in US dollars, e.g. "$0.40" in English, "0,40 $" in German."""

    usd: float

    def render(self, language: str) -> str:
        # The language's own pattern ("$0.40", "0,40 $"); amounts under a cent keep their digits.
        try:
            return format_currency(
                self.usd, "USD", locale=_babel_locale(language), decimal_quantization=False
            )
        except ArithmeticError:  # beyond Babel's decimal precision: absurd, but never a crash
            return f"${self.usd:g}"

    def __str__(self) -> str:
        return self.render(ENGLISH)


@dataclass(frozen=True)
class Number:
    """A number with the language's digit grouping and decimal sign ("1,234.5" / "1.234,5")."""

    value: float
    decimals: int = 0

    def render(self, language: str) -> str:
        pattern = "#,##0" + ("." + "0" * self.decimals if self.decimals else "")
        try:
            return format_decimal(self.value, format=pattern, locale=_babel_locale(language))
        except ArithmeticError:
            return f"{self.value:g}"

    def __str__(self) -> str:
        return self.render(ENGLISH)


@dataclass(frozen=True)
class Seconds:
    """A duration, the way people say it: "45 s", "1 min 40 s", "2 h 5 min" (short units)."""

    value: float

    def render(self, language: str) -> str:
        total = max(0, math.ceil(self.value))
        hours, rest = divmod(total, 3600)
        minutes, seconds = divmod(rest, 60)
        if hours:
            parts = [("hour", hours)] + ([("minute", minutes)] if minutes else [])
        elif minutes:
            parts = [("minute", minutes)] + ([("second", seconds)] if seconds else [])
        else:
            parts = [("second", seconds)]
        locale = _babel_locale(language)
        units = [
            format_unit(amount, f"duration-{unit}", length="short", locale=locale)
            for unit, amount in parts
        ]
        try:
            said = format_list(units, style="unit-narrow", locale=locale)
        except (KeyError, ValueError):
            said = " ".join(units)
        # CLDR's short Japanese units are spaced ("1 分40 秒"); written Japanese is "1分40秒".
        return said.replace(" ", "").replace("\u00a0", "") if language == "ja" else said

    def __str__(self) -> str:
        return self.render(ENGLISH)


class _Shown:
    """What messages share: English by `str()`, and `+` to put messages side by side."""

    def render(self, language: str) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.render(ENGLISH)

    def __add__(self, other: object) -> Joined:
        if not isinstance(other, _Shown | str):
            return NotImplemented
        return Joined((self, other), separator="")

    def __radd__(self, other: object) -> Joined:
        if not isinstance(other, str):
            return NotImplemented
        return Joined((other, self), separator="")


@dataclass(frozen=True)
class Text(_Shown):
    """A message to be rendered in a reader's language: a gettext msgid and its values.

    `str(text)` is the English rendering (logs, and code that has no reader)."""

    msgid: str
    params: Mapping[str, object]
    plural: str | None = None
    count: int | None = None

    def render(self, language: str) -> str:
        translations = _translations(language)
        if self.plural is not None:
            template = translations.ngettext(self.msgid, self.plural, self.count or 0)
        else:
            template = translations.gettext(self.msgid)
        values = {name: render(value, language) for name, value in self.params.items()}
        try:
            return template.format_map(values)
        except (KeyError, IndexError, ValueError):
            # A translation with a broken placeholder: English beats a crash.
            log.warning("translation of %r into %s is broken; using English", self.msgid, language)
            english = self.msgid if self.plural is None or self.count == 1 else self.plural
            return english.format_map(values)

    # Stored in the database (failure reasons, delivery notes) so a message posted later is
    # rendered in the language of whoever reads it then.
    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"m": self.msgid, "p": {k: _dump(v) for k, v in self.params.items()}}
        if self.plural is not None:
            data["pl"], data["n"] = self.plural, self.count
        return data


@dataclass(frozen=True)
class Joined(_Shown):
    """Messages (or plain strings) shown one after another, e.g. a sentence and a hint."""

    parts: tuple[_Shown | str, ...]
    separator: str = " "

    def render(self, language: str) -> str:
        return self.separator.join(render(part, language) for part in self.parts if part)

    def to_json(self) -> dict[str, Any]:
        return {"j": [_dump(part) for part in self.parts], "s": self.separator}


Message = Text | Joined | str
"""Anything the bot may show: a translatable message, or text that is not translated (a
provider's own words, a prompt, a name)."""


def _t(msgid: str, **params: object) -> Text:
    """Mark a message for translation; render it later with `render(text, language)`."""
    return Text(msgid, params)


def _tn(singular: str, plural: str, count: int, **params: object) -> Text:
    """A message with singular and plural forms chosen by `count` (also available as {count})."""
    return Text(singular, {"count": count, **params}, plural=plural, count=count)


def join(parts: Iterable[Message], separator: str = " ") -> Joined:
    return Joined(tuple(parts), separator=separator)


def render(value: object, language: str) -> str:
    """Any message or value, in `language` (English for strings that are not translated)."""
    if isinstance(value, Localized):
        return value.render(language)
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)  # ids and small counts; use Number(...) for grouped digits
    if isinstance(value, float):
        return Number(value, decimals=0 if value.is_integer() else 1).render(language)
    return str(value)


# --- storing messages ----------------------------------------------------------------------------

_STORED_PREFIX = "i18n:"


def _dump(value: object) -> Any:
    if isinstance(value, Text | Joined):
        return {"t": value.to_json()}
    if isinstance(value, Money):
        return {"usd": value.usd}
    if isinstance(value, Seconds):
        return {"sec": value.value}
    if isinstance(value, Number):
        return {"num": value.value, "d": value.decimals}
    if isinstance(value, str | int | float) or value is None:
        return value
    return str(value)


def _load(data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    if "t" in data:
        return _load_message(data["t"])
    if "usd" in data:
        return Money(float(data["usd"]))
    if "sec" in data:
        return Seconds(float(data["sec"]))
    if "num" in data:
        return Number(float(data["num"]), int(data.get("d", 0)))
    return str(data)


def _load_message(data: dict[str, Any]) -> Text | Joined:
    if "j" in data:
        return Joined(tuple(_load(part) for part in data["j"]), separator=str(data.get("s", " ")))
    params = {str(k): _load(v) for k, v in dict(data.get("p", {})).items()}
    plural = data.get("pl")
    count = data.get("n")
    return Text(str(data["m"]), params, plural=plural, count=count)


def to_stored(message: Message | None) -> str | None:
    """A message as a database text; `from_stored` gives it back, still translatable."""
    if message is None or isinstance(message, str):
        return message
    return _STORED_PREFIX + json.dumps(message.to_json(), ensure_ascii=False)


def from_stored(stored: str | None) -> Message | None:
    """Undo `to_stored`; plain text (stored before translations existed) stays as it is."""
    if stored is None or not stored.startswith(_STORED_PREFIX):
        return stored
    try:
        return _load_message(json.loads(stored[len(_STORED_PREFIX) :]))
    except (ValueError, KeyError, TypeError):
        return stored[len(_STORED_PREFIX) :]


# --- catalogues ----------------------------------------------------------------------------------


@functools.cache
def _babel_locale(language: str) -> Locale:
    return Locale.parse(language if language in LANGUAGES else ENGLISH)


@functools.cache
def _translations(language: str) -> gettext.NullTranslations:
    """The language's catalogue, compiled from its .po file; English (the msgids) otherwise."""
    path = LOCALES_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    if language == ENGLISH or not path.is_file():
        return gettext.NullTranslations()
    with path.open("rb") as po:
        catalog = read_po(po, locale=language, domain=DOMAIN)
    compiled = io.BytesIO()
    # Fuzzy entries are drafts: left out, so English shows until a translator confirms them.
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


def load_catalogues() -> None:
    """Read every language's catalogue now (~80 ms in all). The launcher calls this before
    the event loop runs, so the first command sync does not hold the loop reading .po files."""
    for language in LANGUAGES:
        _translations(language)


def translate_if_known(msgid: str, language: str) -> str | None:
    """The translation of an exact msgid, or None (command names and descriptions: Discord
    then shows its default)."""
    if language == ENGLISH:
        return None
    translated = _translations(language).gettext(msgid)
    return None if translated == msgid else translated


def placeholders(template: str) -> set[str]:
    """The `{name}` placeholders of a message (for the completeness test)."""
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


# --- extraction ----------------------------------------------------------------------------------

# How the code marks messages: _t(msgid, ...), _tn(singular, plural, count, ...) and
# discord.py's locale_str(...) for command names, descriptions and choices.
KEYWORDS: dict[str, Any] = {"_t": None, "_tn": (1, 2), "locale_str": None}
SOURCE_DIRS = ("bot", "cogs")


def main() -> None:  # pragma: no cover - a maintainer's tool, run by hand
    """Re-extract messages into bot/locales/messages.pot and merge them into every .po file."""
    import datetime

    from babel.messages.catalog import Catalog
    from babel.messages.extract import extract_from_dir
    from babel.messages.pofile import write_po

    root = Path(__file__).resolve().parent.parent
    template = Catalog(project="animate-bot", domain=DOMAIN, charset="utf-8")
    template.creation_date = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
    for directory in SOURCE_DIRS:
        for filename, lineno, message, comments, _ in extract_from_dir(
            root / directory, method_map=[("**.py", "python")], keywords=KEYWORDS
        ):
            template.add(
                message,
                locations=[(f"{directory}/{filename}", lineno)],
                auto_comments=comments,
                flags=("python-brace-format",),
            )
    LOCALES_DIR.mkdir(exist_ok=True)
    with (LOCALES_DIR / f"{DOMAIN}.pot").open("wb") as out:
        write_po(out, template, width=100, omit_header=False)
    for language in LANGUAGES:
        if language == ENGLISH:
            continue
        path = LOCALES_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            with path.open("rb") as po:
                catalog = read_po(po, locale=language, domain=DOMAIN)
        else:
            catalog = Catalog(locale=language, domain=DOMAIN, charset="utf-8")
        catalog.update(template, no_fuzzy_matching=True)
        with path.open("wb") as out:
            write_po(out, catalog, width=100, ignore_obsolete=True)
        missing = sum(1 for m in catalog if m.id and not m.string)
        print(f"{language}: {len(catalog) - 1} messages, {missing} untranslated")


if __name__ == "__main__":  # pragma: no cover
    main()
