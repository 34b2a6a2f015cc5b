"""Translations: every message the code can show exists in every language with its placeholders,
values are formatted for the language, and a missing or broken translation falls back to English."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from bot import i18n
from bot.i18n import (
    LANGUAGES,
    Money,
    Number,
    Seconds,
    _t,
    _tn,
    from_stored,
    join,
    language_for,
    placeholders,
    render,
    to_stored,
)

ROOT = Path(__file__).resolve().parent.parent
TRANSLATED = [language for language in LANGUAGES if language != "en"]
_NAME_RULE = re.compile(r"^[-_'\w]{1,32}$")


def _code_messages(keywords: dict[str, object] | None = None) -> dict[str, tuple[str, ...]]:
    """msgid → (msgid,) or (singular, plural), as the extractor sees the code (all messages, or
    those marked with `keywords`: {"locale_str": None} gives the slash-command metadata)."""
    found: dict[str, tuple[str, ...]] = {}
    for directory in i18n.SOURCE_DIRS:
        for _, _, message, _, _ in extract_from_dir(
            ROOT / directory,
            method_map=[("**.py", "python")],
            keywords=keywords or i18n.KEYWORDS,
        ):
            forms = message if isinstance(message, tuple) else (message,)
            found[forms[0]] = forms
    return found


def _catalog(language: str):  # type: ignore[no-untyped-def]
    path = ROOT / "bot" / "locales" / language / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as po:
        return read_po(po, locale=language)


def test_code_has_messages_to_translate() -> None:
    # Guards the tests below against passing on an empty extraction.
    assert len(_code_messages()) >= 100


@pytest.mark.parametrize("language", TRANSLATED)
def test_every_message_is_translated_with_its_placeholders(language: str) -> None:
    catalog = _catalog(language)
    problems: list[str] = []
    for msgid, forms in _code_messages().items():
        entry = catalog.get(msgid)
        if entry is None:
            problems.append(f"missing: {msgid!r}")
            continue
        translations = entry.string if isinstance(entry.string, tuple) else (entry.string,)
        if not all(translations) or entry.fuzzy:
            problems.append(f"untranslated or fuzzy: {msgid!r}")
            continue
        expected = set().union(*(placeholders(form) for form in forms))
        for translated in translations:
            got = placeholders(translated)
            # A singular form may say "one" instead of {count}; nothing else may be dropped.
            if got - expected or (expected - {"count"}) - got:
                problems.append(f"placeholders {sorted(got)} ≠ {sorted(expected)}: {msgid!r}")
    assert not problems, f"{language}: " + "\n".join(problems[:20])


def test_every_marked_message_gets_the_values_it_names() -> None:
    """`_t("… {name} …", name=…)`: a literal msgid (extractable) whose placeholders are passed."""
    problems: list[str] = []
    for directory in i18n.SOURCE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                    continue
                if node.func.id not in ("_t", "_tn") or path.name == "i18n.py":
                    continue
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                literal_count = 1 if node.func.id == "_t" else 2
                literals = node.args[:literal_count]
                if len(literals) < literal_count or not all(
                    isinstance(a, ast.Constant) and isinstance(a.value, str) for a in literals
                ):
                    problems.append(f"{where}: the message is not a string literal")
                    continue
                if any(k.arg is None for k in node.keywords):
                    continue  # **values: checked when rendered
                needed = set().union(*(placeholders(a.value) for a in literals))  # type: ignore[attr-defined]
                passed = {k.arg for k in node.keywords if k.arg}
                if node.func.id == "_tn":
                    passed.add("count")
                if needed != passed:
                    problems.append(
                        f"{where}: placeholders {sorted(needed)}, given {sorted(passed)}"
                    )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("language", TRANSLATED)
def test_translated_command_names_follow_discords_rules(language: str) -> None:
    """Discord refuses a whole command sync over one bad name; names come from locale_str."""
    catalog = _catalog(language)
    for msgid in _code_messages({"locale_str": None}):
        if not _NAME_RULE.match(msgid) or msgid.lower() != msgid:
            continue  # a description or a choice, not a command or option name
        entry = catalog.get(msgid)
        if entry is not None and entry.string:
            assert _NAME_RULE.match(str(entry.string)), (language, msgid, entry.string)
            assert str(entry.string).lower() == entry.string, (language, msgid, entry.string)


def test_discord_locales_map_to_our_languages() -> None:
    assert language_for("de") == "de"
    assert language_for("es-419") == "es"
    assert language_for("es-ES") == "es"
    assert language_for("pt-BR") == "pt_BR"
    assert language_for("ja") == "ja"
    assert language_for("en-GB") == "en"
    assert language_for("ko") == "en"  # not offered: English
    assert language_for(None) == "en"


def test_values_are_formatted_for_the_language() -> None:
    assert render(Money(0.4), "en") == "$0.40"
    assert render(Money(0.4), "de") == "0,40\xa0$"
    assert render(Money(1234.5), "fr").replace("\u202f", " ") == "1 234,50\xa0$US"
    assert render(Money(0.004), "en") == "$0.004"  # never "$0.00" for a real cost
    assert render(Number(12345), "de") == "12.345"
    assert render(Seconds(100), "en") == "1 min 40 sec"
    assert render(Seconds(100), "de") == "1 Min., 40 Sek."
    assert render(Seconds(100), "ja") == "1分40秒"
    assert render(Seconds(45), "fr").replace("\u202f", " ") == "45 s"


def test_a_missing_translation_falls_back_to_english() -> None:
    text = _t("A message no catalogue has heard of, for {who}.", who="you")
    for language in LANGUAGES:
        assert render(text, language) == "A message no catalogue has heard of, for you."


def test_a_broken_translation_falls_back_to_english(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    po = tmp_path / "de" / "LC_MESSAGES" / "messages.po"
    po.parent.mkdir(parents=True)
    po.write_text(
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=utf-8\\n"\n\n'
        'msgid "Hello {name}."\nmsgstr "Hallo {nmae}."\n\n'
        'msgid "Bye {name}."\nmsgstr "Tschüss {name}."\n',
        encoding="utf-8",
    )
    monkeypatch.setattr(i18n, "LOCALES_DIR", tmp_path)
    i18n._translations.cache_clear()
    try:
        assert render(_t("Hello {name}.", name="Ana"), "de") == "Hello Ana."
        assert render(_t("Bye {name}.", name="Ana"), "de") == "Tschüss Ana."
    finally:
        i18n._translations.cache_clear()


def test_plural_forms_and_joined_messages() -> None:
    one = _tn("{count} video in progress", "{count} videos in progress", 1)
    many = _tn("{count} video in progress", "{count} videos in progress", 3)
    assert str(one) == "1 video in progress"
    assert str(many) == "3 videos in progress"
    assert str(join([_t("Sorry."), "Plain words"])) == "Sorry. Plain words"


def test_stored_messages_are_rendered_later_in_the_readers_language() -> None:
    text = join([_t("Hello {name}, that is {cost}.", name="Ana", cost=Money(1.5)), "ok"])
    stored = to_stored(text)
    assert stored is not None and stored.startswith("i18n:")
    assert render(from_stored(stored), "de") == "Hello Ana, that is 1,50\xa0$. ok"
    # Text stored before translations existed is shown as it was.
    assert from_stored("The thread was deleted.") == "The thread was deleted."


def test_absurd_values_still_render() -> None:
    # Babel's decimal precision ends near 1e27; a hostile amount must not crash a reply.
    assert render(Money(1e300), "de") == "$1e+300"
    assert render(Number(1e40), "ja") == "1e+40"
    assert str(Money(2.5)) == "$2.50"
