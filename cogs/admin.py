"""`/animate-admin`: a server's admins set limits, access, defaults, pause and the log channel.

Thin: `bot.guild_settings` validates and stores every change (a bad value raises
SettingRejected and changes nothing) and `bot.spending` sums the money. This module checks who
may act, that roles and channels belong to this server, renders short private replies and
posts an audit line for every change (cogs/audit.py).

Discord hides the group from members without Manage Server (`default_permissions`), but a
server can override that in its integration settings, so the bot checks the invoking member's
permissions again on every use.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from bot.catalog import CATALOG
from bot.errors import BotError, InputRejected, user_message
from bot.guild_settings import AccessKind, AccessLists, GuildConfig, SettingChange
from bot.i18n import Message, _t, _tn, join, render
from bot.model_health import ModelHealth
from bot.spending import money, next_month, unix_time
from cogs.audit import post_audit, post_to_channel
from cogs.language import for_member, member_language

if TYPE_CHECKING:
    from datetime import datetime

    from bot.discord_bot import AnimateBot

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000
TOP_SPENDERS = 10

_RESOLUTIONS = sorted(
    {r for spec in CATALOG.values() for r in spec.resolutions}, key=lambda r: int(r.rstrip("pPk"))
)
_BOT_DEFAULT = "default"

# Where /animate can be used (threads count through their parent) and where a log can go.
# Only types Discord's API description lists, so the command definitions validate.
_PLACE_TYPES = (
    discord.ChannelType.text,
    discord.ChannelType.news,
    discord.ChannelType.voice,
    discord.ChannelType.stage_voice,
    discord.ChannelType.forum,
)
_LOG_TYPES = (discord.ChannelType.text, discord.ChannelType.news)


class NotServerAdmin(app_commands.CheckFailure):
    """The invoking member lacks Manage Server (Discord's own gate can be overridden)."""

    def __init__(self, reason: Message) -> None:
        self.reason = reason
        super().__init__(str(reason))


class _ChannelOption(app_commands.Transformer):
    """A channel option passed through as Discord resolved it (no cache lookup, so a channel
    the cache has not heard of yet is not an error); the command checks it is this server's."""

    def __init__(self, *types: discord.ChannelType) -> None:
        self._types = list(types)

    @property
    def type(self) -> discord.AppCommandOptionType:
        return discord.AppCommandOptionType.channel

    @property
    def channel_types(self) -> list[discord.ChannelType]:
        return self._types

    async def transform(self, interaction: discord.Interaction[Any], value: Any, /) -> Any:
        return value


PlaceOption = app_commands.Transform[app_commands.AppCommandChannel, _ChannelOption(*_PLACE_TYPES)]
LogChannelOption = app_commands.Transform[
    app_commands.AppCommandChannel, _ChannelOption(*_LOG_TYPES)
]


def _clip(lines: Iterable[Message], language: str, limit: int = MESSAGE_LIMIT) -> str:
    """Render and join lines, dropping whole lines from the end (with a note) to fit one
    message."""
    out: list[str] = []
    total = 0
    collected = [render(line, language) for line in lines]
    for index, line in enumerate(collected):
        if total + len(line) + 1 > limit - 40:
            more = len(collected) - index
            out.append(
                render(_tn("… and {count} more line.", "… and {count} more lines.", more), language)
            )
            break
        out.append(line)
        total += len(line) + 1
    return "\n".join(out)


def _change_lines(changes: Iterable[SettingChange]) -> list[Message]:
    lines: list[Message] = []
    for change in changes:
        if change.changed:
            lines.append(
                _t(
                    "• {setting}: {before} → {after}",
                    setting=change.setting,
                    before=change.before,
                    after=change.after,
                )
            )
        else:
            lines.append(
                _t("• {setting}: already {after}", setting=change.setting, after=change.after)
            )
    return lines


def _live_config(config: GuildConfig, guild: discord.Guild | None) -> GuildConfig:
    """The settings with deleted channels and roles dropped out, as they apply."""
    if guild is None:
        return config
    channels = {c.id for c in guild.channels}
    roles = {r.id for r in guild.roles}
    return dataclasses.replace(
        config,
        access=AccessLists(
            channel_ids=frozenset(c for c in config.access.channel_ids if c in channels),
            role_ids=frozenset(r for r in config.access.role_ids if r in roles),
        ),
        role_limits=tuple(r for r in config.role_limits if r.role_id in roles),
        log_channel_id=config.log_channel_id if config.log_channel_id in channels else None,
    )


def _access_lines(config: GuildConfig) -> list[Message]:
    channels = ", ".join(f"<#{c}>" for c in sorted(config.access.channel_ids))
    roles = ", ".join(f"<@&{r}>" for r in sorted(config.access.role_ids))
    return [
        _t("/animate works in: {channels}", channels=channels or _t("every channel")),
        _t("/animate is for: {roles}", roles=roles or _t("everyone")),
    ]


class Admin(commands.Cog):
    admin = app_commands.Group(
        name=locale_str("animate-admin"),
        description=locale_str(
            "Server settings for /animate: limits, access, defaults, pause, log"
        ),
        guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )

    def __init__(self, bot: AnimateBot) -> None:
        self.bot = bot

    def _now(self) -> datetime:
        return self.bot.service.clock.now()

    async def interaction_check(  # type: ignore[override]
        self, interaction: discord.Interaction[AnimateBot]
    ) -> bool:
        """Every subcommand: the member must have Manage Server here (or Administrator)."""
        permissions = interaction.permissions
        if interaction.guild_id is None or not (
            permissions.manage_guild or permissions.administrator
        ):
            raise NotServerAdmin(
                _t(
                    "Only members with the **Manage Server** permission can change /animate's "
                    "settings here."
                )
            )
        return True

    # --- show ------------------------------------------------------------------------------

    @admin.command(
        name=locale_str("show"),
        description=locale_str("Every /animate setting in force in this server"),
    )
    async def show(self, interaction: discord.Interaction[AnimateBot]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id = _guild_id(interaction)
        config = _live_config(await self.bot.guild_settings.get(guild_id), interaction.guild)
        usage = await self.bot.spending.usage(
            requester_id=interaction.user.id, guild_id=guild_id, now=self._now()
        )
        lines: list[Message] = [_t("**/animate in this server**")]
        lines += ["• " + line for line in config.lines()]
        off = await ModelHealth(self.bot.store).unavailable(now=self._now())
        for model, until in sorted(off.items()):
            spec = CATALOG.get(model)
            label = spec.label if spec is not None else model
            lines.append(
                _t(
                    "• {model} is unavailable at the video service (tried again <t:{until}:R>)",
                    model=label,
                    until=unix_time(until),
                )
            )
        lines.append(
            _t(
                "This server has spent {spent} this month. 0 means no limit. Days and months "
                "run on UTC.",
                spent=money(usage.guild_month_usd or 0.0),
            )
        )
        await _reply(interaction, _clip(lines, member_language(interaction)))

    # --- limits ----------------------------------------------------------------------------

    @admin.command(
        name=locale_str("limits"),
        description=locale_str("Money and usage limits (0: none; negative: default)"),
    )
    @app_commands.rename(
        member_daily_usd=locale_str("member_daily_usd"),
        member_monthly_usd=locale_str("member_monthly_usd"),
        server_monthly_usd=locale_str("server_monthly_usd"),
        confirm_above_usd=locale_str("confirm_above_usd"),
        max_active=locale_str("max_active"),
        cooldown_seconds=locale_str("cooldown_seconds"),
    )
    @app_commands.describe(
        member_daily_usd=locale_str("Each member's spend per UTC day, in US dollars"),
        member_monthly_usd=locale_str("Each member's spend per UTC month, in US dollars"),
        server_monthly_usd=locale_str("This server's total spend per UTC month, in US dollars"),
        confirm_above_usd=locale_str("Ask the member to confirm videos estimated at or above this"),
        max_active=locale_str("Unfinished videos per member at a time"),
        cooldown_seconds=locale_str("Seconds a member waits between requests"),
    )
    async def limits(
        self,
        interaction: discord.Interaction[AnimateBot],
        member_daily_usd: float | None = None,
        member_monthly_usd: float | None = None,
        server_monthly_usd: float | None = None,
        confirm_above_usd: float | None = None,
        max_active: int | None = None,
        cooldown_seconds: int | None = None,
    ) -> None:
        given: dict[str, object] = {
            "member_daily_usd": member_daily_usd,
            "member_monthly_usd": member_monthly_usd,
            "guild_monthly_usd": server_monthly_usd,
            "confirm_above_usd": confirm_above_usd,
            "max_active": max_active,
            "cooldown_seconds": cooldown_seconds,
        }
        changes = {name: value for name, value in given.items() if value is not None}
        if not changes:
            await _reply(
                interaction,
                _t(
                    "Give at least one limit to change (0: no limit; a negative number: back to "
                    "the bot's default). `/animate-admin show` lists them all."
                ),
            )
            return
        await self._update(interaction, changes)

    # --- role allowances -------------------------------------------------------------------

    @admin.command(
        name=locale_str("role-limit"),
        description=locale_str("A role's own allowance (members get the best)"),
    )
    @app_commands.rename(
        role=locale_str("role"),
        member_daily_usd=locale_str("member_daily_usd"),
        member_monthly_usd=locale_str("member_monthly_usd"),
        remove=locale_str("remove"),
    )
    @app_commands.describe(
        role=locale_str("The role"),
        member_daily_usd=locale_str(
            "Daily allowance for members with this role (negative: the server's)"
        ),
        member_monthly_usd=locale_str(
            "Monthly allowance for members with this role (negative: the server's)"
        ),
        remove=locale_str("Remove this role's allowance"),
    )
    async def role_limit(
        self,
        interaction: discord.Interaction[AnimateBot],
        role: discord.Role,
        member_daily_usd: float | None = None,
        member_monthly_usd: float | None = None,
        remove: bool = False,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id = _guild_id(interaction)
        _check_role(interaction, role)
        settings = self.bot.guild_settings
        if remove:
            change = await settings.remove_role_limit(
                guild_id, role.id, actor_id=interaction.user.id
            )
        else:
            if member_daily_usd is None and member_monthly_usd is None:
                raise InputRejected(
                    _t("Give member_daily_usd and/or member_monthly_usd, or remove:True.")
                )
            current = next(
                (r for r in (await settings.get(guild_id)).role_limits if r.role_id == role.id),
                None,
            )
            # An option left out keeps the role's current value for that period.
            daily = member_daily_usd
            if daily is None and current is not None:
                daily = current.member_daily_usd
            monthly = member_monthly_usd
            if monthly is None and current is not None:
                monthly = current.member_monthly_usd
            change = await settings.set_role_limit(
                guild_id,
                role.id,
                member_daily_usd=daily,
                member_monthly_usd=monthly,
                actor_id=interaction.user.id,
                now=self._now(),
            )
        await self._done(interaction, guild_id, [change])

    # --- access ----------------------------------------------------------------------------

    @admin.command(
        name=locale_str("access"),
        description=locale_str("Limit /animate to some channels or roles"),
    )
    @app_commands.rename(
        action=locale_str("action"), channel=locale_str("channel"), role=locale_str("role")
    )
    @app_commands.describe(
        action=locale_str("What to do (show: the current lists)"),
        channel=locale_str("A channel to add or remove (threads follow their channel)"),
        role=locale_str("A role to add or remove"),
    )
    @app_commands.choices(
        action=[
            app_commands.Choice(name=locale_str("show"), value="show"),
            app_commands.Choice(name=locale_str("add"), value="add"),
            app_commands.Choice(name=locale_str("remove"), value="remove"),
            app_commands.Choice(
                name=locale_str("clear channels (every channel)"), value="clear-channels"
            ),
            app_commands.Choice(name=locale_str("clear roles (everyone)"), value="clear-roles"),
        ]
    )
    async def access(
        self,
        interaction: discord.Interaction[AnimateBot],
        action: str = "show",
        channel: PlaceOption | None = None,
        role: discord.Role | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id = _guild_id(interaction)
        settings = self.bot.guild_settings
        actor = interaction.user.id
        changes: list[SettingChange] = []
        if action in ("add", "remove"):
            if channel is None and role is None:
                raise InputRejected(
                    _t("Give a channel and/or a role to add.")
                    if action == "add"
                    else _t("Give a channel and/or a role to remove.")
                )
            targets: list[tuple[AccessKind, int]] = []
            if channel is not None:
                targets.append(("channel", _check_channel(interaction, channel).id))
            if role is not None:
                if role.is_default():
                    raise InputRejected(
                        _t("@everyone is everyone already; use `clear roles` to let everyone in.")
                    )
                targets.append(("role", _check_role(interaction, role).id))
            for kind, target in targets:
                changes.append(
                    await settings.set_access(
                        guild_id, kind, target, allowed=action == "add", actor_id=actor
                    )
                )
        elif action in ("clear-channels", "clear-roles"):
            cleared: AccessKind = "channel" if action == "clear-channels" else "role"
            changes.append(await settings.clear_access(guild_id, cleared, actor_id=actor))
        config = _live_config(await settings.get(guild_id), interaction.guild)
        lines = _change_lines(changes) + _access_lines(config)
        await _reply(interaction, _clip(lines, member_language(interaction)))
        await self._audit(guild_id, changes)

    # --- defaults --------------------------------------------------------------------------

    @admin.command(
        name=locale_str("defaults"),
        description=locale_str("This server's default model, resolution, length"),
    )
    @app_commands.rename(
        model=locale_str("model"),
        resolution=locale_str("resolution"),
        duration=locale_str("duration"),
    )
    @app_commands.describe(
        model=locale_str("Model used when a member picks none"),
        resolution=locale_str("Resolution used when a member picks none"),
        duration=locale_str("Seconds, when a member picks none (0: the bot's default)"),
    )
    @app_commands.choices(
        model=[app_commands.Choice(name=locale_str("bot default"), value=_BOT_DEFAULT)]
        + [app_commands.Choice(name=spec.label, value=spec.id) for spec in CATALOG.values()],
        resolution=[app_commands.Choice(name=locale_str("bot default"), value=_BOT_DEFAULT)]
        + [app_commands.Choice(name=r, value=r) for r in _RESOLUTIONS],
    )
    async def defaults(
        self,
        interaction: discord.Interaction[AnimateBot],
        model: str | None = None,
        resolution: str | None = None,
        duration: int | None = None,
    ) -> None:
        changes: dict[str, object] = {}
        if model is not None:
            changes["default_model"] = None if model == _BOT_DEFAULT else model
        if resolution is not None:
            changes["default_resolution"] = None if resolution == _BOT_DEFAULT else resolution
        if duration is not None:
            # 0 and negatives: back to the default (no model makes 0-second videos).
            changes["default_duration"] = None if duration <= 0 else duration
        if not changes:
            await _reply(interaction, _t("Give a model, a resolution and/or a duration."))
            return
        await self._update(interaction, changes)

    # --- pause -----------------------------------------------------------------------------

    @admin.command(
        name=locale_str("pause"),
        description=locale_str("Stop new /animate requests in this server"),
    )
    async def pause(self, interaction: discord.Interaction[AnimateBot]) -> None:
        await self._update(
            interaction,
            {"paused": True},
            note=_t(
                "New /animate requests are paused here; videos already being made will "
                "still arrive. `/animate-admin resume` undoes it."
            ),
        )

    @admin.command(
        name=locale_str("resume"), description=locale_str("Accept /animate requests again")
    )
    async def resume(self, interaction: discord.Interaction[AnimateBot]) -> None:
        await self._update(
            interaction, {"paused": False}, note=_t("/animate accepts requests here again.")
        )

    # --- usage -----------------------------------------------------------------------------

    @admin.command(
        name=locale_str("usage"), description=locale_str("Spend of one member, or the top spenders")
    )
    @app_commands.rename(member=locale_str("member"))
    @app_commands.describe(member=locale_str("Whose spend to show (leave out: the top spenders)"))
    async def usage(
        self,
        interaction: discord.Interaction[AnimateBot],
        member: discord.Member | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id = _guild_id(interaction)
        now = self._now()
        spending = self.bot.spending
        if member is not None:
            usage = await spending.usage(requester_id=member.id, guild_id=guild_id, now=now)
            statuses = await spending.limits(
                requester_id=member.id,
                guild_id=guild_id,
                now=now,
                role_ids=[r.id for r in member.roles],
            )
            allowance = {s.key: s for s in statuses}
            lines: list[Message] = [
                _t(
                    "<@{member}> has used {today} today and {month} this month (videos in "
                    "progress included).",
                    member=member.id,
                    today=money(usage.member_today_usd),
                    month=money(usage.member_month_usd),
                )
            ]
            daily, monthly = allowance.get("member_daily"), allowance.get("member_monthly")
            if daily is None or daily.left_usd is None:
                lines.append(_t("Their daily allowance: no limit."))
            else:
                lines.append(
                    _t(
                        "Their daily allowance: {left} left of {limit}, resets <t:{resets}:R>.",
                        left=money(daily.left_usd),
                        limit=money(daily.limit_usd),
                        resets=unix_time(daily.resets_at),
                    )
                )
            if monthly is None or monthly.left_usd is None:
                lines.append(_t("Their monthly allowance: no limit."))
            else:
                lines.append(
                    _t(
                        "Their monthly allowance: {left} left of {limit}, resets <t:{resets}:R>.",
                        left=money(monthly.left_usd),
                        limit=money(monthly.limit_usd),
                        resets=unix_time(monthly.resets_at),
                    )
                )
        else:
            top = await spending.top_spenders(guild_id=guild_id, now=now, limit=TOP_SPENDERS)
            usage = await spending.usage(
                requester_id=interaction.user.id, guild_id=guild_id, now=now
            )
            lines = [
                _t(
                    "This server has spent {spent} this month (resets <t:{resets}:R>).",
                    spent=money(usage.guild_month_usd or 0.0),
                    resets=unix_time(next_month(now)),
                )
            ]
            if top:
                lines.append(_t("Top spenders this month:"))
                lines += [
                    _t(
                        "{rank}. <@{member}> {amount}",
                        rank=rank,
                        member=member_id,
                        amount=money(usd),
                    )
                    for rank, (member_id, usd) in enumerate(top, start=1)
                ]
            else:
                lines.append(_t("Nobody has spent anything this month."))
        lines.append(_t("Days and months run on UTC."))
        await _reply(interaction, _clip(lines, member_language(interaction)))

    # --- log channel -----------------------------------------------------------------------

    @admin.command(
        name=locale_str("log-channel"),
        description=locale_str("Where audit lines go (leave out: turn off)"),
    )
    @app_commands.rename(channel=locale_str("channel"))
    @app_commands.describe(
        channel=locale_str("A text channel for audit lines; leave out to turn them off")
    )
    async def log_channel(
        self,
        interaction: discord.Interaction[AnimateBot],
        channel: LogChannelOption | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id = _guild_id(interaction)
        new_id: int | None = None
        if channel is not None:
            target = _check_channel(interaction, channel)
            if not isinstance(target, discord.TextChannel):
                raise InputRejected(_t("The log channel must be a text channel."))
            missing = _missing_to_post(target)
            if missing:
                # Permission names as Discord shows them (Discord's own words).
                raise InputRejected(
                    _t(
                        "I can't post in <#{channel}>: I'm missing the {permissions} permission "
                        "there. Grant it, or choose another channel.",
                        channel=target.id,
                        permissions=", ".join(f"**{m}**" for m in missing),
                    )
                )
            new_id = target.id
        before = await self.bot.guild_settings.get(guild_id)
        changes = await self.bot.guild_settings.update(
            guild_id, {"log_channel_id": new_id}, actor_id=interaction.user.id, now=self._now()
        )
        note = (
            _t("Audit lines now go to <#{channel}>; they never ping anyone.", channel=new_id)
            if new_id is not None
            else _t("Audit lines are off.")
        )
        await _reply(interaction, join([note, *_change_lines(changes)], "\n"))
        old_id = before.log_channel_id
        if old_id is not None and old_id != new_id:
            # The channel that stops receiving lines records where they went.
            await post_to_channel(
                self.bot, guild_id, old_id, join([c.describe() for c in changes if c.changed], "\n")
            )
        await self._audit(guild_id, changes)

    # --- shared ----------------------------------------------------------------------------

    async def _update(
        self,
        interaction: discord.Interaction[AnimateBot],
        changes: Mapping[str, object],
        *,
        note: Message | None = None,
    ) -> None:
        if not interaction.response.is_done():
            await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id = _guild_id(interaction)
        applied = await self.bot.guild_settings.update(
            guild_id, changes, actor_id=interaction.user.id, now=self._now()
        )
        await self._done(interaction, guild_id, applied, note=note)

    async def _done(
        self,
        interaction: discord.Interaction[AnimateBot],
        guild_id: int,
        changes: list[SettingChange],
        *,
        note: Message | None = None,
    ) -> None:
        lines = _change_lines(changes)
        if note is not None:
            lines.append(note)
        await _reply(
            interaction, _clip(lines or [_t("Nothing changed.")], member_language(interaction))
        )
        await self._audit(guild_id, changes)

    async def _audit(self, guild_id: int, changes: Iterable[SettingChange]) -> None:
        # Rendered by post_audit in the server's own language.
        described = [change.describe() for change in changes if change.changed]
        if described:
            await post_audit(self.bot, guild_id, join(described, "\n"))

    # --- deleted channels and roles drop out -----------------------------------------------

    @commands.Cog.listener()
    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        await self._forget(channel.guild.id, channel_id=channel.id)

    @commands.Cog.listener()
    async def on_guild_role_delete(self, role: discord.Role) -> None:
        await self._forget(role.guild.id, role_id=role.id)

    async def _forget(
        self, guild_id: int, *, channel_id: int | None = None, role_id: int | None = None
    ) -> None:
        try:
            await self.bot.guild_settings.forget(guild_id, channel_id=channel_id, role_id=role_id)
        except Exception as exc:
            # Harmless: settings are read against the live channels and roles anyway.
            log.warning("could not forget a deleted channel/role: %s", type(exc).__name__)

    # --- errors ----------------------------------------------------------------------------

    async def cog_app_command_error(
        self,
        interaction: discord.Interaction[AnimateBot],  # type: ignore[override]
        error: app_commands.AppCommandError,
    ) -> None:
        cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        if isinstance(cause, NotServerAdmin):
            log.info(
                "user %s without Manage Server tried /animate-admin in guild %s",
                interaction.user.id,
                interaction.guild_id,
            )
            text: Message = cause.reason
        elif isinstance(cause, InputRejected):
            text = user_message(cause)
        elif isinstance(cause, BotError):
            text = user_message(cause)
            log.warning("/animate-admin failed: %s", type(cause).__name__)
        else:
            text = user_message(cause)
            log.error(
                "/animate-admin crashed (interaction %s, guild %s)",
                interaction.id,
                interaction.guild_id,
                exc_info=cause,
            )
        try:
            await _reply(interaction, text)
        except discord.HTTPException:
            log.warning("could not answer interaction %s", interaction.id)


# --- helpers -------------------------------------------------------------------------------------


def _guild_id(interaction: discord.Interaction[AnimateBot]) -> int:
    if interaction.guild_id is None:  # guild_only; Discord never sends it elsewhere
        raise InputRejected(_t("This command works only in a server."))
    return interaction.guild_id


def _check_role(interaction: discord.Interaction[AnimateBot], role: discord.Role) -> discord.Role:
    """The role, if it is one of this server's live roles."""
    guild = interaction.guild
    live = guild.get_role(role.id) if guild is not None else None
    if live is None:
        raise InputRejected(_t("That role is not one of this server's roles. Nothing was changed."))
    return live


def _check_channel(
    interaction: discord.Interaction[AnimateBot], channel: app_commands.AppCommandChannel
) -> discord.abc.GuildChannel:
    """The channel, if it is one of this server's live channels."""
    guild = interaction.guild
    live = guild.get_channel(channel.id) if guild is not None else None
    if live is None:
        raise InputRejected(
            _t("That channel is not one of this server's channels. Nothing was changed.")
        )
    return live


_POST_NEEDS = {
    "view_channel": "View Channel",
    "send_messages": "Send Messages",
}


def _missing_to_post(channel: discord.TextChannel) -> list[str]:
    permissions = channel.permissions_for(channel.guild.me)
    return [label for attr, label in _POST_NEEDS.items() if not getattr(permissions, attr)]


async def _reply(interaction: discord.Interaction[AnimateBot], message: Message) -> None:
    """A private reply in the member's language that pings nobody (after a defer: fills the
    'thinking' message)."""
    text = for_member(interaction, message)
    if interaction.response.is_done():
        await interaction.followup.send(
            text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )
    else:
        await interaction.response.send_message(
            text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )


async def setup(bot: AnimateBot) -> None:
    await bot.add_cog(Admin(bot))
