"""What a German or Japanese member sees before and around a job: the commands in their Discord
client's language (as synced to the fake Discord, validated against Discord's OpenAPI document),
and a refusal in their language."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_discord_bot import Env, started
from tests.test_discord_bot import env as env  # the fixture, shared with the end-to-end tests


def _by_name(commands: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(c["name"]): c for c in commands}


def _options(command: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(o["name"]): o for o in command.get("options", [])}


def _assert_unique_option_names(options: list[dict[str, Any]], where: str) -> None:
    for locale in ("de", "fr", "es-ES", "es-419", "pt-BR", "ja"):
        names = [(o.get("name_localizations") or {}).get(locale, o["name"]) for o in options]
        assert len(names) == len(set(names)), (where, locale, names)
    for option in options:
        if option.get("type") in (1, 2):  # a subcommand (group): its own options
            _assert_unique_option_names(option.get("options") or [], f"{where} {option['name']}")


async def test_commands_reach_discord_in_every_language(env: Env) -> None:
    async with started(env, DEV_GUILD_ID=""):
        commands = _by_name(env.discord.commands.global_commands)

    animate = commands["animate"]
    assert animate["name_localizations"]["de"] == "animieren"
    assert animate["name_localizations"]["ja"] == "アニメ化"
    # Both Spanish variants Discord offers get the Spanish catalogue.
    assert animate["name_localizations"]["es-ES"] == animate["name_localizations"]["es-419"]
    assert animate["description_localizations"]["fr"] != animate["description"]
    assert animate["description_localizations"]["pt-BR"] != animate["description"]
    options = _options(animate)
    assert options["image"]["name_localizations"]["de"] == "bild"
    assert options["end_image"]["name_localizations"]["fr"] == "image_finale"
    orientation = {c["value"]: c for c in options["orientation"]["choices"]}
    assert orientation["portrait"]["name_localizations"]["de"] != orientation["portrait"]["name"]
    # Brand names are not translated: model choices carry no localizations.
    assert all(not c.get("name_localizations") for c in options["model"]["choices"])
    # A context-menu name is free text, spaces and capitals included.
    assert commands["Animate image"]["name_localizations"]["de"] == "Bild animieren"
    # Discord refuses a command whose options share a name in some language.
    for command in commands.values():
        _assert_unique_option_names(command.get("options") or [], command["name"])
    # Every command has a name in every language we offer, within Discord's limits.
    for command in commands.values():
        names = command.get("name_localizations") or {}
        assert {"de", "fr", "es-ES", "es-419", "pt-BR", "ja"} <= set(names), command["name"]
        assert all(0 < len(name) <= 32 for name in names.values())
        for text in (command.get("description_localizations") or {}).values():
            assert len(text) <= 100


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("de", "„notes.txt“ ist kein Bild."),
        ("ja", "「notes.txt」は画像ではありません。"),
    ],
)
async def test_a_refusal_is_in_the_members_language(env: Env, locale: str, expected: str) -> None:
    env.discord.set_user_locale(env.user_id, locale)
    async with started(env):
        reply = await env.wait_reply(
            await env.animate(image=b"just words", filename="notes.txt", content_type="text/plain")
        )
    assert reply.startswith(expected)
    assert not env.provider.jobs  # nothing submitted, nothing spent
