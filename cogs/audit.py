"""Audit lines: one short message in a server's log channel per settings change or job event.

Not a cog: two functions other code awaits. They never raise, so a missing, deleted or
read-only log channel can never break the command or job that caused the line, and they never
ping anyone (`AllowedMentions.none()`): a line names members with mentions only so Discord
shows their names. A line is a `Message`, rendered in each server's preferred language (a plain
`str` is posted as it is).

    await post_audit(bot, guild_id, change.describe())
    await post_audit_everywhere(bot, _t("The bot's video service account is out of credits …"))
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord

from bot.i18n import Message, render
from cogs.language import guild_language

if TYPE_CHECKING:
    from bot.discord_bot import AnimateBot

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000
UNKNOWN_CHANNEL = 10003


async def post_audit(
    bot: AnimateBot, guild_id: int, text: Message, *, fallback_language: str | None = None
) -> None:
    """Post `text` in the server's log channel, in the server's language, if it has one.
    `fallback_language` (a job's recorded public language) serves when this process does not
    see the server (another process's shard). Never raises."""
    try:
        config = await bot.guild_settings.get(guild_id)
    except Exception:
        log.warning("audit line for guild %s not posted: settings unreadable", guild_id)
        return
    if config.log_channel_id is not None:
        await post_to_channel(
            bot, guild_id, config.log_channel_id, text, fallback_language=fallback_language
        )


async def post_audit_everywhere(bot: AnimateBot, text: Message) -> None:
    """Post `text` in the log channel of every server that has one (bot-wide notices), each
    in its own language. Never raises."""
    try:
        channels = await bot.guild_settings.log_channels()
    except Exception:
        log.warning("bot-wide audit line not posted: settings unreadable")
        return
    # One after another: discord.py paces them within Discord's rate limits.
    for guild_id, channel_id in sorted(channels.items()):
        await post_to_channel(bot, guild_id, channel_id, text)


async def post_to_channel(
    bot: AnimateBot,
    guild_id: int,
    channel_id: int,
    message: Message,
    *,
    fallback_language: str | None = None,
) -> bool:
    """Post one audit line in a given channel (say, the log channel an admin just replaced),
    in the server's preferred language.

    True when posted. A log channel that no longer exists is forgotten, so the next lines do
    not try it again; any other failure is logged and ignored.
    """
    text = render(message, _language(bot, guild_id, fallback_language))
    if len(text) > MESSAGE_LIMIT:
        text = text[: MESSAGE_LIMIT - 1] + "…"
    # A partial channel: no cache needed (another process may own the guild's shard).
    channel = bot.get_partial_messageable(channel_id, guild_id=guild_id)
    try:
        await channel.send(text, allowed_mentions=discord.AllowedMentions.none())
    except discord.NotFound as exc:
        if exc.code == UNKNOWN_CHANNEL:
            log.info("log channel %s of guild %s is gone; forgetting it", channel_id, guild_id)
            await _forget_channel(bot, guild_id, channel_id)
        else:
            log.warning("audit line not posted in %s (HTTP 404, code %s)", channel_id, exc.code)
        return False
    except discord.HTTPException as exc:
        log.warning(
            "audit line not posted in channel %s of guild %s (HTTP %s, code %s)",
            channel_id,
            guild_id,
            exc.status,
            exc.code,
        )
        return False
    except Exception as exc:
        log.warning(
            "audit line not posted in channel %s of guild %s: %s",
            channel_id,
            guild_id,
            type(exc).__name__,
        )
        return False
    return True


def _language(bot: AnimateBot, guild_id: int, fallback: str | None) -> str:
    # A server this process does not see (another shard's): the caller's fallback, else English.
    try:
        guild = bot.get_guild(guild_id)
    except Exception:
        guild = None
    if guild is None:
        return fallback or guild_language(None)
    return guild_language(guild)


async def _forget_channel(bot: AnimateBot, guild_id: int, channel_id: int) -> None:
    try:
        await bot.guild_settings.forget(guild_id, channel_id=channel_id)
    except Exception:
        log.warning("could not forget deleted log channel %s of guild %s", channel_id, guild_id)
