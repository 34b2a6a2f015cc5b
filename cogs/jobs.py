"""`/jobs`: a member's recent videos and what they have left to spend, privately.

Works in servers and in DMs (where only the member's and the bot's limits apply). Every figure
comes from the ledger (`bot.spending`); the list comes from the job store.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.catalog import CATALOG
from bot.errors import user_message
from bot.jobs import Job, JobState, Outcome
from bot.spending import LimitStatus, discord_time, format_usd

if TYPE_CHECKING:
    from bot.discord_bot import AnimateBot

log = logging.getLogger(__name__)

RECENT_JOBS = 8
MESSAGE_LIMIT = 2000
PROMPT_PREVIEW = 40

_IN_PROGRESS = {
    JobState.SUBMITTING: "⏳ starting",
    JobState.POLLING: "⏳ generating",
    JobState.TO_DELIVER: "⏳ posting",
    JobState.DELIVERING: "⏳ posting",
}
_FINISHED = {
    Outcome.VIDEO: "✅ delivered",
    Outcome.FAILED: "❌ failed",
    Outcome.TIMED_OUT: "⌛ timed out",
}
_PERIOD = {
    "member_daily": "today",
    "member_monthly": "this month",
    "guild_monthly": "this month",
    "bot_monthly": "this month",
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


def job_status(job: Job) -> str:
    if job.state != JobState.DONE or job.outcome is None:
        return _IN_PROGRESS.get(job.state, "⏳ in progress")
    return _FINISHED.get(job.outcome, str(job.outcome))


def job_cost(job: Job, *, refund_failed_jobs: bool) -> str:
    """What the job costs the member, as the ledger will have it."""
    failed = job.outcome is not None and job.outcome != Outcome.VIDEO
    if failed and (refund_failed_jobs or job.provider_job_id is None):
        return "not charged"
    if job.cost_usd is not None:
        return format_usd(job.cost_usd)
    if job.estimated_usd is not None:
        return f"~{format_usd(job.estimated_usd)}"
    return "price unknown"


def job_line(job: Job, *, refund_failed_jobs: bool) -> str:
    spec = CATALOG.get(job.model)
    model = spec.label if spec is not None else job.model
    prompt = " ".join(job.prompt.split())
    if len(prompt) > PROMPT_PREVIEW:
        prompt = prompt[: PROMPT_PREVIEW - 1] + "…"
    # Shown to the member only, but a prompt may hold markdown or mentions: keep it inert.
    prompt = discord.utils.escape_mentions(discord.utils.escape_markdown(prompt))
    parts = [
        job_status(job),
        f"{model} {job.resolution} {job.duration} s",
        job_cost(job, refund_failed_jobs=refund_failed_jobs),
        discord_time(job.created_at),
    ]
    link = jump_link(job)
    text = f"• {' · '.join(parts)} — “{prompt}”"
    return f"{text} [open]({link})" if link is not None else text


def allowance_line(status: LimitStatus) -> str:
    label = status.label[0].upper() + status.label[1:]
    left = status.left_usd
    if left is None:
        return f"{label}: no limit ({format_usd(status.spent_usd)} used {_PERIOD[status.key]})."
    return (
        f"{label}: {format_usd(left)} left of {format_usd(status.limit_usd)}, "
        f"resets {discord_time(status.resets_at)}."
    )


class Jobs(commands.Cog):
    def __init__(self, bot: AnimateBot) -> None:
        self.bot = bot

    @app_commands.command(name="jobs", description="Your recent videos and what you have left")
    async def jobs(self, interaction: discord.Interaction[AnimateBot]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        user = interaction.user
        now = self.bot.service.clock.now()
        recent = await self.bot.store.recent_for(user.id, limit=RECENT_JOBS)
        roles = [role.id for role in user.roles] if isinstance(user, discord.Member) else []
        statuses = await self.bot.spending.limits(
            requester_id=user.id, guild_id=interaction.guild_id, now=now, role_ids=roles
        )
        # The member's own allowances always; server and bot budgets only where they bind.
        shown = [s for s in statuses if s.key.startswith("member_") or s.left_usd is not None]
        tail = [allowance_line(s) for s in shown]
        tail.append("Days and months run on UTC; videos in progress count at their estimate.")
        refund = self.bot.settings.refund_failed_jobs
        lines = [job_line(job, refund_failed_jobs=refund) for job in recent]
        head = ["**Your recent videos**" if lines else "You have not made any videos yet."]
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
        text = user_message(cause)
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException:
            log.warning("could not answer interaction %s", interaction.id)


async def setup(bot: AnimateBot) -> None:
    await bot.add_cog(Jobs(bot))
