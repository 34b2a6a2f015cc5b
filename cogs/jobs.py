"""`/jobs`: a member's recent videos and what they have left to spend, privately.

Works in servers and in DMs (where only the member's and the bot's limits apply). Every figure
comes from the ledger (`bot.spending`); the list comes from the job store.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from bot.catalog import CATALOG
from bot.errors import user_message
from bot.i18n import Message, Money, Text, _t, render
from bot.jobs import Job, JobState, Outcome
from bot.spending import LimitStatus, money, unix_time
from cogs.language import for_member, member_language

if TYPE_CHECKING:
    from bot.discord_bot import AnimateBot

log = logging.getLogger(__name__)

RECENT_JOBS = 8
MESSAGE_LIMIT = 2000
PROMPT_PREVIEW = 40

_IN_PROGRESS: dict[JobState, Message] = {
    JobState.SUBMITTING: _t("⏳ starting"),
    JobState.POLLING: _t("⏳ generating"),
    JobState.TO_DELIVER: _t("⏳ posting"),
    JobState.DELIVERING: _t("⏳ posting"),
}
_FINISHED: dict[Outcome, Message] = {
    Outcome.VIDEO: _t("✅ delivered"),
    Outcome.FAILED: _t("❌ failed"),
    Outcome.TIMED_OUT: _t("⌛ timed out"),
}


def jump_link(job: Job) -> str | None:
    """Where the member finds the result: the posted video, else the status message, else the
    thread. None when the result went to a DM whose channel the job does not record."""
    guild = str(job.guild_id) if job.guild_id is not None else "@me"
    base = f"https://discord.com/channels/{guild}"
    if job.delivery_message_id is not None and job.delivery_target != "dm":
        return f"{base}/{job.delivery_channel_id}/{job.delivery_message_id}"
    if job.status_message_id is not None:
        return f"{base}/{job.channel_id}/{job.status_message_id}"
    if job.thread_id is not None:
        return f"{base}/{job.thread_id}"
    return None


def job_status(job: Job) -> Message:
    if job.state != JobState.DONE or job.outcome is None:
        return _IN_PROGRESS.get(job.state, _t("⏳ in progress"))
    return _FINISHED.get(job.outcome, str(job.outcome))


def job_cost(job: Job, *, refund_failed_jobs: bool) -> Message | Money:
    """What the job costs the member, as the ledger will have it."""
    failed = job.outcome is not None and job.outcome != Outcome.VIDEO
    if failed and (refund_failed_jobs or job.provider_job_id is None):
        return _t("not charged")
    if job.cost_usd is not None:
        return money(job.cost_usd)
    if job.estimated_usd is not None:
        return _t("~{amount}", amount=money(job.estimated_usd))
    return _t("price unknown")


def job_line(job: Job, *, refund_failed_jobs: bool) -> Text:
    spec = CATALOG.get(job.model)
    model = spec.label if spec is not None else job.model
    prompt = " ".join(job.prompt.split())
    if len(prompt) > PROMPT_PREVIEW:
        prompt = prompt[: PROMPT_PREVIEW - 1] + "…"
    # Shown to the member only, but a prompt may hold markdown or mentions: keep it inert.
    prompt = discord.utils.escape_mentions(discord.utils.escape_markdown(prompt))
    status = job_status(job)
    cost = job_cost(job, refund_failed_jobs=refund_failed_jobs)
    created = unix_time(job.created_at)
    link = jump_link(job)
    if link is None:
        return _t(
            "• {status} · {model} {resolution} {duration} s · {cost} · <t:{created}:R> — "
            "“{prompt}”",
            status=status,
            model=model,
            resolution=job.resolution,
            duration=job.duration,
            cost=cost,
            created=created,
            prompt=prompt,
        )
    return _t(
        "• {status} · {model} {resolution} {duration} s · {cost} · <t:{created}:R> — "
        "“{prompt}” [open]({link})",
        status=status,
        model=model,
        resolution=job.resolution,
        duration=job.duration,
        cost=cost,
        created=created,
        prompt=prompt,
        link=link,
    )


def allowance_line(status: LimitStatus) -> Text:
    left = status.left_usd
    if left is None:
        return _no_limit_line(status.key, money(status.spent_usd))
    return _left_line(status.key, money(left), money(status.limit_usd), unix_time(status.resets_at))


def _no_limit_line(key: str, spent: Money) -> Text:
    # One whole sentence per limit, so each translates on its own.
    if key == "member_daily":
        return _t("Your daily allowance: no limit ({spent} used today).", spent=spent)
    if key == "member_monthly":
        return _t("Your monthly allowance: no limit ({spent} used this month).", spent=spent)
    if key == "guild_monthly":
        return _t("This server's monthly budget: no limit ({spent} used this month).", spent=spent)
    return _t("The bot's monthly budget: no limit ({spent} used this month).", spent=spent)


def _left_line(key: str, left: Money, limit: Money, resets: int) -> Text:
    if key == "member_daily":
        return _t(
            "Your daily allowance: {left} left of {limit}, resets <t:{resets}:R>.",
            left=left,
            limit=limit,
            resets=resets,
        )
    if key == "member_monthly":
        return _t(
            "Your monthly allowance: {left} left of {limit}, resets <t:{resets}:R>.",
            left=left,
            limit=limit,
            resets=resets,
        )
    if key == "guild_monthly":
        return _t(
            "This server's monthly budget: {left} left of {limit}, resets <t:{resets}:R>.",
            left=left,
            limit=limit,
            resets=resets,
        )
    return _t(
        "The bot's monthly budget: {left} left of {limit}, resets <t:{resets}:R>.",
        left=left,
        limit=limit,
        resets=resets,
    )


class Jobs(commands.Cog):
    def __init__(self, bot: AnimateBot) -> None:
        self.bot = bot

    @app_commands.command(
        name=locale_str("jobs"), description=locale_str("Your recent videos and what you have left")
    )
    async def jobs(self, interaction: discord.Interaction[AnimateBot]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        language = member_language(interaction)  # a private reply: the member's own language
        user = interaction.user
        now = self.bot.service.clock.now()
        recent = await self.bot.store.recent_for(user.id, limit=RECENT_JOBS)
        roles = [role.id for role in user.roles] if isinstance(user, discord.Member) else []
        statuses = await self.bot.spending.limits(
            requester_id=user.id, guild_id=interaction.guild_id, now=now, role_ids=roles
        )
        # The member's own allowances always; server and bot budgets only where they bind.
        shown = [s for s in statuses if s.key.startswith("member_") or s.left_usd is not None]
        tail = [render(allowance_line(s), language) for s in shown]
        tail.append(
            render(
                _t("Days and months run on UTC; videos in progress count at their estimate."),
                language,
            )
        )
        refund = self.bot.settings.refund_failed_jobs
        lines = [render(job_line(job, refund_failed_jobs=refund), language) for job in recent]
        head = [
            render(
                _t("**Your recent videos**") if lines else _t("You have not made any videos yet."),
                language,
            )
        ]
        # Drop the oldest jobs first if the reply would be too long for one message.
        while lines and len("\n".join(head + lines + [""] + tail)) > MESSAGE_LIMIT:
            lines.pop()
        await interaction.followup.send(
            "\n".join(head + lines + [""] + tail),
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
            suppress_embeds=True,
        )

    async def cog_app_command_error(
        self,
        interaction: discord.Interaction[AnimateBot],  # type: ignore[override]
        error: app_commands.AppCommandError,
    ) -> None:
        cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        log.error("/jobs failed (interaction %s)", interaction.id, exc_info=cause)
        text = for_member(interaction, user_message(cause))
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException:
            log.warning("could not answer interaction %s", interaction.id)


async def setup(bot: AnimateBot) -> None:
    await bot.add_cog(Jobs(bot))
