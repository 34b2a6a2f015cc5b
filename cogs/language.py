"""Who reads a message decides its language (bot/i18n.py renders it).

Private replies (ephemeral answers, modals, confirmations) follow the member's Discord language;
public messages (status, results, audit lines) follow the server's preferred language; DMs follow
the member's. Command names, descriptions and choices are localized for Discord's client by
`CatalogTranslator`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import discord
from discord import app_commands

from bot.i18n import ENGLISH, Message, language_for, render, translate_if_known

log = logging.getLogger(__name__)

# Discord's rule for slash-command and option names (context-menu names are free text).
_NAME_RULE = re.compile(r"^[-_'\w]{1,32}$")
_MENU_NAME_LIMIT = 32
# Discord's limit for descriptions and choice names.
_TEXT_LIMIT = 100
_NAME_LOCATIONS = frozenset(
    {
        app_commands.TranslationContextLocation.command_name,
        app_commands.TranslationContextLocation.group_name,
        app_commands.TranslationContextLocation.parameter_name,
    }
)


def member_language(interaction: discord.Interaction[Any]) -> str:
    """The language of the member who used the interaction (their Discord client's)."""
    return language_for(interaction.locale)


def server_language(interaction: discord.Interaction[Any]) -> str:
    """The language of public messages where the interaction happened: the server's preferred
    language in a server, the member's own elsewhere (DMs, group DMs)."""
    if interaction.guild_id is not None and interaction.guild_locale is not None:
        return language_for(interaction.guild_locale)
    return member_language(interaction)


def guild_language(guild: discord.Guild | None) -> str:
    """A server's preferred language, for messages with no interaction (audit lines)."""
    return language_for(guild.preferred_locale) if guild is not None else ENGLISH


def for_member(interaction: discord.Interaction[Any], message: Message) -> str:
    return render(message, member_language(interaction))


class CatalogTranslator(app_commands.Translator):
    """Command names, descriptions and choice names from the same catalogues as the messages."""

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        language = language_for(locale)
        if language == ENGLISH:
            return None
        translated = translate_if_known(string.message, language)
        if translated is None:
            return None
        if isinstance(context.data, app_commands.ContextMenu):
            # A context-menu name is free text ("Bild animieren"), up to 32 characters.
            return translated if 0 < len(translated) <= _MENU_NAME_LIMIT else None
        if context.location in _NAME_LOCATIONS:
            # Discord refuses the whole command sync over one bad name: keep the English one.
            name = translated.lower()
            if not _NAME_RULE.match(name):
                log.warning("translated name %r (%s) breaks Discord's rules", name, language)
                return None
            return name
        if len(translated) > _TEXT_LIMIT:
            log.warning("translated text %r (%s) is over Discord's limit", string.message, language)
            return None
        return translated
