"""How jobs look in Discord, and the `Delivery` the job service posts through.

Everything here uses the bot's own token (partial messageables by id), never the interaction's:
interaction tokens die after 15 minutes and jobs outlive restarts.
"""

from __future__ import annotations

import io
import logging
from datetime import datetime

import discord

from bot.catalog import CATALOG
from bot.jobs import Job, JobState, Outcome
from bot.provider import DownloadedVideo
from bot.service import UploadRejected

log = logging.getLogger(__name__)

FIRST_FRAME_FILENAME = "first-frame.jpg"
_PENDING_QUEUED = {"queued", "waiting", "rate_limited"}
_COLOURS = {
    "queued": discord.Colour.light_grey(),
    "generating": discord.Colour.blurple(),
    "posting": discord.Colour.blurple(),
    "done": discord.Colour.green(),
    "failed": discord.Colour.red(),
}
_TITLES = {
    "queued": "⏳ Queued",
    "generating": "🎬 Generating",
    "posting": "📤 Posting the video",
    "done": "✅ Done",
    "failed": "⚠️ No video this time",
}


def phase(job: Job) -> str:
    """The one word a user sees for where the job is."""
    if job.outcome is not None and job.outcome != Outcome.VIDEO:
        return "failed"
    if job.state == JobState.DONE:
        return "done"
    if job.state in (JobState.TO_DELIVER, JobState.DELIVERING):
        return "posting"
    if job.state == JobState.SUBMITTING or (job.provider_status or "queued") in _PENDING_QUEUED:
        return "queued"
    return "generating"


def settings_line(job: Job) -> str:
    spec = CATALOG.get(job.model)
    label = spec.label if spec else job.model
    return f"{label} · {job.resolution} {job.orientation} · {job.duration} s · {job.fit}"


def _ts(moment: datetime, style: str = "R") -> str:
    # Discord renders <t:…:R> as a live "2 minutes ago": elapsed time without extra edits.
    return f"<t:{int(moment.timestamp())}:{style}>"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_embed(job: Job) -> discord.Embed:
    current = phase(job)
    embed = discord.Embed(
        title=_TITLES[current], description=_clip(job.prompt, 1000), colour=_COLOURS[current]
    )
    embed.add_field(name="Requested by", value=f"<@{job.requester_id}>", inline=True)
    embed.add_field(name="Settings", value=settings_line(job), inline=True)
    if job.estimated_usd is not None:
        embed.add_field(name="Estimated cost", value=f"${job.estimated_usd:.2f}", inline=True)
    if current == "queued":
        note = (
            "The video service is busy; the bot will keep trying."
            if job.provider_status == "rate_limited"
            else "Waiting for the video service."
        )
        embed.add_field(
            name="Status", value=f"{note} Requested {_ts(job.created_at)}.", inline=False
        )
    elif current == "generating":
        started = job.submitted_at or job.created_at
        embed.add_field(name="Status", value=f"Generating, started {_ts(started)}.", inline=False)
    elif current == "done":
        embed.add_field(name="Status", value="Your video has been posted.", inline=False)
    elif current == "failed":
        embed.add_field(
            name="Why", value=_clip(job.error_message or "Unknown reason.", 1000), inline=False
        )
    embed.set_thumbnail(url=f"attachment://{FIRST_FRAME_FILENAME}")
    embed.set_footer(text=f"Job {job.id}")
    return embed


def thread_name(prompt: str) -> str:
    name = " ".join(prompt.split()) or "Your video"
    return _clip(name, 90)


def result_footer(job: Job) -> str:
    """Marks a result message so a restarted bot can see it was already posted."""
    return f"Result of job {job.id}"


def requester_only(job: Job) -> discord.AllowedMentions:
    return discord.AllowedMentions(
        everyone=False, roles=False, replied_user=False, users=[discord.Object(id=job.requester_id)]
    )


def result_embed(job: Job, *, extra: str | None = None) -> discord.Embed:
    embed = discord.Embed(description=_clip(job.prompt, 1500), colour=_COLOURS[phase(job)])
    embed.add_field(name="Settings", value=settings_line(job), inline=False)
    if extra:
        embed.add_field(name="Note", value=extra, inline=False)
    embed.set_footer(text=result_footer(job))
    return embed


class DiscordDelivery:
    """Implements bot.service.Delivery with the bot's token."""

    def __init__(self, client: discord.Client) -> None:
        self.client = client

    def _channel(self, channel_id: int) -> discord.PartialMessageable:
        return self.client.get_partial_messageable(channel_id)

    async def show_status(self, job: Job) -> None:
        if job.status_message_id is None:
            return
        message = self._channel(job.channel_id).get_partial_message(job.status_message_id)
        await message.edit(embed=status_embed(job))

    async def find_delivered(self, job: Job) -> int | None:
        me = self.client.user
        marker = result_footer(job)
        # Newest first: a result posted by a dead attempt is among the latest messages.
        async for message in self._channel(job.delivery_channel_id).history(limit=200):
            if me is not None and message.author.id != me.id:
                continue
            if any(embed.footer.text == marker for embed in message.embeds):
                return message.id
        return None

    async def _send(
        self, job: Job, content: str, embed: discord.Embed, file: discord.File | None = None
    ) -> int:
        channel = self._channel(job.delivery_channel_id)
        # Discord drops a second message with the same nonce (enforce_nonce), a second guard
        # against double posting besides the claim in the store.
        nonce = f"animate-result-{job.id}"
        if file is None:
            message = await channel.send(
                content, embed=embed, allowed_mentions=requester_only(job), nonce=nonce
            )
        else:
            message = await channel.send(
                content, embed=embed, file=file, allowed_mentions=requester_only(job), nonce=nonce
            )
        return message.id

    async def post_video(self, job: Job, video: DownloadedVideo) -> int:
        if video.size > job.upload_limit_bytes:
            raise UploadRejected("larger than the upload limit")
        file = discord.File(video.path, filename=f"animate-{job.id}.mp4")
        try:
            return await self._send(
                job, f"<@{job.requester_id}> your video is ready!", result_embed(job), file
            )
        except discord.HTTPException as exc:
            if exc.status == 413 or exc.code == 40005:
                raise UploadRejected("Discord refused the file size") from exc
            raise

    async def post_link(self, job: Job, url: str, reason: str) -> int:
        return await self._send(
            job,
            f"<@{job.requester_id}> your video is ready: {url}",
            result_embed(job, extra=reason),
        )

    async def post_failure(self, job: Job, reason: str) -> int:
        return await self._send(
            job,
            f"<@{job.requester_id}> sorry, no video this time. {reason}",
            result_embed(job),
        )


def first_frame_file(jpeg: bytes) -> discord.File:
    return discord.File(io.BytesIO(jpeg), filename=FIRST_FRAME_FILENAME)
