"""How jobs look in Discord, and the `Delivery` the job service posts through.

Everything here uses the bot's own token (partial messageables by id), except for jobs started
where the bot cannot post itself (a user install in a group DM or a server without the bot):
those are answered through the interaction's webhook while its token lives (15 minutes), then
by DM.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import discord

from bot.catalog import CATALOG
from bot.jobs import Job, JobState, Outcome
from bot.provider import DownloadedVideo
from bot.service import DestinationGone, UploadRejected
from bot.timing import Eta, describe_seconds
from cogs.results import result_view, status_view

log = logging.getLogger(__name__)

FIRST_FRAME_FILENAME = "first-frame.jpg"
_PENDING_QUEUED = {"queued", "waiting", "rate_limited"}
_COLOURS = {
    "queued": discord.Colour.light_grey(),
    "generating": discord.Colour.blurple(),
    "posting": discord.Colour.blurple(),
    "done": discord.Colour.green(),
    "failed": discord.Colour.red(),
    "cancelled": discord.Colour.dark_grey(),
}
_TITLES = {
    "queued": "⏳ Queued",
    "generating": "🎬 Generating",
    "posting": "📤 Posting the video",
    "done": "✅ Done",
    "failed": "⚠️ No video this time",
    "cancelled": "✖️ Cancelled",
}


def phase(job: Job) -> str:
    """The one word a user sees for where the job is."""
    if job.outcome == Outcome.CANCELLED:
        return "cancelled"
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


def eta_text(eta: Eta) -> str:
    """The honest ETA: the usual time for these settings, or that this one is slow."""
    usual = describe_seconds(eta.usual_seconds)
    if eta.overdue:
        return f"Taking longer than usual (usually about {usual}); still checking."
    return f"Usually ready in about {usual}, so expected {_ts(eta.expected_at)}."


def status_embed(job: Job, eta: Eta | None = None) -> discord.Embed:
    """`eta` (bot.timing.CompletionTimes.eta) is shown while the video is generating."""
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
        status = f"Generating, started {_ts(started)}."
        if eta is not None:
            status += " " + eta_text(eta)
        embed.add_field(name="Status", value=status, inline=False)
    elif current == "done":
        embed.add_field(name="Status", value="Your video has been posted.", inline=False)
    elif current == "failed":
        embed.add_field(
            name="Why", value=_clip(job.error_message or "Unknown reason.", 1000), inline=False
        )
        if job.result_url is not None:
            _add_link(embed, job.result_url)
    elif current == "cancelled":
        who = f"<@{job.cancelled_by}>" if job.cancelled_by is not None else "a member"
        charge = (
            "The video service already had it, so it may still be charged."
            if job.provider_job_id is not None
            else "It was never sent, so nothing was spent."
        )
        embed.add_field(name="Status", value=f"Cancelled by {who}. {charge}", inline=False)
    if job.delivery_note:
        embed.add_field(name="Note", value=_clip(job.delivery_note, 1000), inline=False)
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


# Discord's limits: a link button's URL, an embed's title URL, an embed's description.
BUTTON_URL_LIMIT = 512
EMBED_URL_LIMIT = 2048
EMBED_DESCRIPTION_LIMIT = 4096


def _add_link(embed: discord.Embed, url: str) -> None:
    """The provider's link in the embed, whatever its length (a field holds 1,024 characters)."""
    if len(url) <= EMBED_URL_LIMIT:
        embed.url = url  # the title becomes the link
        if embed.title is None:
            embed.title = "▶️ Open the video"
    link = f"[Open the video]({url})"
    if len(url) <= 1000:
        embed.add_field(name="Link", value=link, inline=False)
    elif len(link) + len(embed.description or "") + 2 <= EMBED_DESCRIPTION_LIMIT:
        embed.description = f"{link}\n\n{embed.description or ''}".rstrip()


def result_embed(job: Job, *, extra: str | None = None, link: str | None = None) -> discord.Embed:
    embed = discord.Embed(description=_clip(job.prompt, 1500), colour=_COLOURS[phase(job)])
    embed.add_field(name="Settings", value=settings_line(job), inline=False)
    for note in (extra, job.delivery_note):
        if note:
            embed.add_field(name="Note", value=_clip(note, 1000), inline=False)
    if link is not None:
        _add_link(embed, link)
    embed.set_footer(text=result_footer(job))
    return embed


def link_item(url: str) -> discord.ui.Button[Any] | None:
    """A button that opens the video, where Discord allows one (URLs up to 512 characters)."""
    if len(url) > BUTTON_URL_LIMIT:
        return None
    return discord.ui.Button(label="Open the video", url=url)


def jump_url(job: Job) -> str | None:
    guild: int | str | None = job.guild_id or job.origin_guild_id
    if guild is None and job.interaction_expires_at is not None:
        guild = "@me"  # a user install in a group DM or a DM
    if guild is None or job.status_message_id is None:
        return None
    return f"https://discord.com/channels/{guild}/{job.channel_id}/{job.status_message_id}"


# An upload must finish before the token dies: with less left than this, the DM is used.
INTERACTION_MARGIN = timedelta(seconds=60)
# Discord's answers for a dead interaction token: Unknown Webhook, Invalid Webhook Token.
_TOKEN_DEAD_STATUSES = frozenset({401, 404})


# Discord's answers that mean "this place is gone or closed to the bot": Unknown Channel,
# Missing Access, Missing Permissions, Cannot send messages to this user, Thread is archived.
_GONE_CODES = frozenset({10003, 50001, 50013, 50007, 50083})


class DiscordDelivery:
    """Implements bot.service.Delivery with the bot's token."""

    def __init__(
        self,
        client: discord.Client,
        on_posted: Callable[[Job, str], Awaitable[None]] | None = None,
        eta: Callable[[Job], Eta | None] | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.client = client
        # The service's clock: interaction token expiries are recorded on it.
        self.now = now or (lambda: datetime.now(UTC))
        # The job's ETA from learned completion times (JobService.timing.eta), if known.
        self.eta = eta
        # Told what was posted (for the server's audit log); its failures never matter here.
        self.on_posted = on_posted

    async def _posted(self, job: Job, what: str) -> None:
        if self.on_posted is None:
            return
        try:
            await self.on_posted(job, what)
        except Exception:
            log.warning("job %s: could not write the audit line", job.id, exc_info=True)

    def _channel(self, channel_id: int) -> discord.PartialMessageable:
        return self.client.get_partial_messageable(channel_id)

    def _token_alive(self, job: Job, margin: timedelta = timedelta(0)) -> bool:
        return (
            job.interaction_token is not None
            and job.interaction_expires_at is not None
            and self.now() + margin < job.interaction_expires_at
        )

    def _webhook(self, job: Job) -> discord.Webhook:
        """The interaction's webhook, as discord.py builds `Interaction.followup`."""
        application_id = self.client.application_id
        if job.interaction_token is None or application_id is None:
            raise DestinationGone("no interaction token")
        return discord.Webhook.from_state(
            data={"id": application_id, "type": 3, "token": job.interaction_token},
            state=self.client._connection,
        )

    async def _destination(self, job: Job) -> discord.abc.Messageable:
        if job.delivery_target == "dm":
            try:
                return await self.client.create_dm(discord.Object(id=job.requester_id))
            except discord.HTTPException as exc:
                raise DestinationGone(f"no DM channel with the requester ({exc.status})") from exc
        return self._channel(job.delivery_channel_id)

    async def show_status(self, job: Job) -> None:
        if job.status_message_id is None:
            return
        # Cancel stays while the job waits or generates; it goes once it is past that.
        eta = self.eta(job) if self.eta is not None else None
        if job.interaction_expires_at is not None:
            # The status message is the interaction's own follow-up: editable only through its
            # token, and only while that lives (after that it keeps its last state).
            if not self._token_alive(job):
                return
            try:
                await self._webhook(job).edit_message(
                    job.status_message_id, embed=status_embed(job, eta), view=status_view(job)
                )
            except discord.HTTPException as exc:
                if exc.status not in _TOKEN_DEAD_STATUSES:
                    raise
                log.info("job %s: the status can no longer be edited (token refused)", job.id)
            return
        message = self._channel(job.channel_id).get_partial_message(job.status_message_id)
        await message.edit(embed=status_embed(job, eta), view=status_view(job))

    async def find_delivered(self, job: Job) -> int | None:
        if job.delivery_target == "interaction":
            # A webhook cannot read the channel's history; the claim in the store still keeps
            # a result from being posted twice.
            return None
        me = self.client.user
        marker = result_footer(job)
        destination = await self._destination(job)
        # Newest first: a result posted by a dead attempt is among the latest messages.
        async for message in destination.history(limit=200):
            if me is not None and message.author.id != me.id:
                continue
            if any(embed.footer.text == marker for embed in message.embeds):
                return message.id
        return None

    def _greeting(self, job: Job, text: str) -> str:
        if job.delivery_target != "dm":
            return f"<@{job.requester_id}> {text}"
        where = jump_url(job)
        origin = f" (you asked for it here: {where})" if where else ""
        return f"{text}{origin}"

    async def _send(
        self,
        job: Job,
        content: str,
        embed: discord.Embed,
        file: discord.File | None = None,
        link: str | None = None,
    ) -> int:
        destination = await self._destination(job)
        # Discord drops a second message with the same nonce (enforce_nonce), a second guard
        # against double posting besides the claim in the store.
        nonce = f"animate-result-{job.id}"
        mentions = requester_only(job)
        # Persistent buttons (Again, Edit prompt, Extend, Delete / Try again); a link button
        # first when the result is a link Discord allows on a button.
        view = result_view(job, link=link_item(link) if link is not None else None)
        if job.delivery_target == "interaction":
            return await self._send_through_interaction(job, content, embed, file, view)
        try:
            if file is not None:
                message = await destination.send(
                    content,
                    embed=embed,
                    file=file,
                    view=view,
                    allowed_mentions=mentions,
                    nonce=nonce,
                )
            else:
                message = await destination.send(
                    content, embed=embed, view=view, allowed_mentions=mentions, nonce=nonce
                )
        except (discord.NotFound, discord.Forbidden) as exc:
            if isinstance(exc, discord.NotFound) or exc.code in _GONE_CODES:
                log.info(
                    "job %s: destination refused (HTTP %s, code %s)", job.id, exc.status, exc.code
                )
                raise DestinationGone(f"HTTP {exc.status} code {exc.code}") from exc
            raise
        return message.id

    async def _send_through_interaction(
        self,
        job: Job,
        content: str,
        embed: discord.Embed,
        file: discord.File | None,
        view: discord.ui.View,
    ) -> int:
        if not self._token_alive(job, INTERACTION_MARGIN):
            raise DestinationGone("the interaction token has expired")
        webhook = self._webhook(job)
        mentions = requester_only(job)
        try:
            if file is not None:
                message = await webhook.send(
                    content, embed=embed, file=file, view=view, allowed_mentions=mentions, wait=True
                )
            else:
                message = await webhook.send(
                    content, embed=embed, view=view, allowed_mentions=mentions, wait=True
                )
        except discord.HTTPException as exc:
            if exc.status in _TOKEN_DEAD_STATUSES:
                log.info("job %s: the interaction token was refused (HTTP %s)", job.id, exc.status)
                raise DestinationGone(f"interaction token refused (HTTP {exc.status})") from exc
            raise
        return message.id

    async def post_video(
        self, job: Job, video: DownloadedVideo, *, note: str | None = None, link: str | None = None
    ) -> int:
        if video.size > job.upload_limit_bytes:
            raise UploadRejected("larger than the upload limit")
        file = discord.File(video.path, filename=f"animate-{job.id}.mp4")
        try:
            message_id = await self._send(
                job,
                self._greeting(job, "your video is ready!"),
                result_embed(job, extra=note, link=link),
                file,
                link=link,
            )
        except discord.HTTPException as exc:
            if exc.status == 413 or exc.code == 40005:
                raise UploadRejected("Discord refused the file size") from exc
            raise
        await self._posted(job, "delivered" if note is None else "delivered (re-encoded)")
        return message_id

    async def post_link(self, job: Job, url: str, reason: str) -> int:
        # The link goes in the embed and a button, never in the 2,000-character content.
        message_id = await self._send(
            job,
            self._greeting(job, "your video is ready."),
            result_embed(job, extra=reason, link=url),
            link=url,
        )
        await self._posted(job, "delivered as a link")
        return message_id

    async def post_failure(self, job: Job, reason: str) -> int:
        message_id = await self._send(
            job,
            self._greeting(job, "sorry, no video this time."),
            result_embed(job, extra=_clip(reason, 1000)),
        )
        await self._posted(job, "failed")
        return message_id


def first_frame_file(jpeg: bytes) -> discord.File:
    return discord.File(io.BytesIO(jpeg), filename=FIRST_FRAME_FILENAME)
