"""`/animate`: acknowledge at once, check, fit, post a status message and thread, submit.

Thin on purpose: the job service does the work; this translates the interaction into core calls
and renders the results. The background loop and the one error handler live here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

import discord
from discord import app_commands
from discord.ext import commands, tasks

from bot.catalog import CATALOG
from bot.errors import BotError, ImageRejected, InputRejected, user_message
from bot.jobs import Job
from bot.service import AnimateRequest, Conversation, JobService, PreparedRequest
from cogs.delivery import DiscordDelivery, first_frame_file, status_embed, thread_name

if TYPE_CHECKING:
    from bot.discord_bot import AnimateBot
    from bot.imaging import FitMode, OrientationChoice

log = logging.getLogger(__name__)

# What the bot needs wherever /animate is used, with the names Discord shows in its settings.
# Read Message History lets a restarted bot see that a video was already posted.
NEEDED_EVERYWHERE = {
    "view_channel": "View Channel",
    "send_messages": "Send Messages",
    "embed_links": "Embed Links",
    "attach_files": "Attach Files",
    "read_message_history": "Read Message History",
}
NEEDED_IN_THREADS = {
    "view_channel": "View Channel",
    "send_messages_in_threads": "Send Messages in Threads",
    "embed_links": "Embed Links",
    "attach_files": "Attach Files",
    "read_message_history": "Read Message History",
}
NEEDED_FOR_NEW_THREADS = {
    "create_public_threads": "Create Public Threads",
    "send_messages_in_threads": "Send Messages in Threads",
}
# Content types that can never be an image; anything else (including none or a wrong image
# type) is decided from the bytes.
_NOT_IMAGE_PREFIXES = ("text/", "video/", "audio/", "application/pdf", "application/zip")

_RESOLUTIONS = sorted(
    {r for spec in CATALOG.values() for r in spec.resolutions}, key=lambda r: int(r.rstrip("pPk"))
)


def _missing(permissions: discord.Permissions, needed: dict[str, str]) -> list[str]:
    return [label for attr, label in needed.items() if not getattr(permissions, attr)]


class MissingPermissions(InputRejected):
    def __init__(self, labels: list[str]) -> None:
        super().__init__(
            "I can't work in this channel: I'm missing the "
            + ", ".join(f"**{label}**" for label in labels)
            + " permission. Ask a server admin to grant it, or use /animate in another channel."
        )


class Animate(commands.Cog):
    def __init__(self, bot: AnimateBot) -> None:
        self.bot = bot
        self.delivery = DiscordDelivery(bot)
        # Commands in progress, so shutdown can let them finish their submit and reply.
        self._commands_running = 0
        self._no_commands = asyncio.Event()
        self._no_commands.set()

    @property
    def service(self) -> JobService:
        return self.bot.service

    async def cog_load(self) -> None:
        self.background.change_interval(seconds=self.bot.settings.poll_tick_seconds)
        self.background.start()

    @contextlib.contextmanager
    def _command_running(self) -> Iterator[None]:
        self._commands_running += 1
        self._no_commands.clear()
        try:
            yield
        finally:
            self._commands_running -= 1
            if self._commands_running == 0:
                self._no_commands.set()

    async def cog_unload(self) -> None:
        # A command cut off mid-submit would be marked failed although it may be charged; give
        # running ones a moment to finish while the HTTP session is still open.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_commands.wait(), timeout=15)
        # Let a running pass finish (cancelling mid-write helps nobody), but not forever: a
        # job cut off here is picked up again after its lease.
        self.background.stop()
        task = self.background.get_task()
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=10)
            except TimeoutError:
                self.background.cancel()
        # Deliveries in progress get a moment to finish; the rest are handed back at once.
        await self.service.shutdown(grace_seconds=15)

    @tasks.loop(seconds=2.0)
    async def background(self) -> None:
        # An exception escaping a tasks.loop body stops it for good; the service isolates each
        # job, and this catches anything else (say, the database briefly away).
        try:
            await self.service.run_due(self.delivery)
        except Exception:
            log.exception("background pass failed; trying again next tick")

    @background.before_loop
    async def _wait_until_ready(self) -> None:
        await self.bot.wait_until_ready()

    @app_commands.command(name="animate", description="Turn a picture into a short video")
    @app_commands.describe(
        image="The picture to animate (JPEG, PNG, WebP, GIF or BMP); it becomes the first frame",
        prompt="What should happen in the video",
        duration="Length in seconds (depends on the model; Sora 2: 4, 8 or 12)",
        orientation="Landscape or portrait; auto follows the picture",
        resolution="Output resolution (depends on the model)",
        model="Which video model to use",
        fit="crop: fill the frame and trim edges; pad: keep the whole picture",
    )
    @app_commands.choices(
        orientation=[
            app_commands.Choice(name="auto (follow the picture)", value="auto"),
            app_commands.Choice(name="landscape 16:9", value="landscape"),
            app_commands.Choice(name="portrait 9:16", value="portrait"),
        ],
        fit=[
            app_commands.Choice(name="crop to fill", value="crop"),
            app_commands.Choice(name="pad (keep everything)", value="pad"),
        ],
        resolution=[app_commands.Choice(name=r, value=r) for r in _RESOLUTIONS],
        model=[app_commands.Choice(name=spec.label, value=spec.id) for spec in CATALOG.values()],
    )
    async def animate(
        self,
        interaction: discord.Interaction[AnimateBot],
        image: discord.Attachment,
        prompt: app_commands.Range[str, 1, 2000],
        duration: app_commands.Range[int, 1, 15] | None = None,
        orientation: str = "auto",
        resolution: str | None = None,
        model: str | None = None,
        fit: str = "crop",
    ) -> None:
        with self._command_running():
            await self._animate(
                interaction, image, prompt, duration, orientation, resolution, model, fit
            )

    async def _animate(
        self,
        interaction: discord.Interaction[AnimateBot],
        image: discord.Attachment,
        prompt: str,
        duration: int | None,
        orientation: str,
        resolution: str | None,
        model: str | None,
        fit: str,
    ) -> None:
        # Acknowledge first: Discord allows 3 s, and downloading a photo can take longer.
        await interaction.response.defer(ephemeral=True, thinking=True)
        in_thread = isinstance(interaction.channel, discord.Thread)
        if interaction.guild_id is not None:
            needed = NEEDED_IN_THREADS if in_thread else NEEDED_EVERYWHERE
            missing = _missing(interaction.app_permissions, needed)
            if missing:
                raise MissingPermissions(missing)
        # Cheap refusals before the download; `prepare` checks them again with the image.
        self.service.resolve_choices(
            model=model, duration=duration, resolution=resolution, prompt=prompt
        )
        await self.service.check_quota(interaction.user.id)
        data = await self._read_image(image)
        prepared = await self.service.prepare(
            AnimateRequest(
                image=data,
                prompt=prompt,
                requester_id=interaction.user.id,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id or 0,
                upload_limit_bytes=interaction.filesize_limit,
                model=model,
                duration=duration,
                resolution=resolution,
                # Discord only sends the declared choices.
                orientation=cast("OrientationChoice", orientation),
                fit=cast("FitMode", fit),
                interaction_id=interaction.id,
            )
        )

        async def announce(job: Job) -> Conversation:
            where, thread_id, status_id = await self._open_conversation(interaction, job, prepared)
            announced.append(where)
            return Conversation(thread_id=thread_id, status_message_id=status_id)

        announced: list[str] = []
        job = await self.service.start(prepared, announce)
        # Cosmetic from here on: the job is paid for and will be delivered whatever happens.
        await self.service.refresh_status(self.delivery, job.id)
        await interaction.followup.send(f"Started! {announced[0]}", ephemeral=True)

    async def _read_image(self, attachment: discord.Attachment) -> bytes:
        limit = self.bot.settings.max_image_bytes
        if attachment.size > limit:
            raise ImageRejected(
                "too_large",
                # Rounded up, so a file just over the limit never reads as equal to it.
                f"The file is {math.ceil(attachment.size / 104_857.6) / 10:.1f} MB; "
                f"the limit is {limit / 1_048_576:.0f} MB.",
            )
        content_type = (attachment.content_type or "").lower()
        if content_type.startswith(_NOT_IMAGE_PREFIXES):
            raise ImageRejected(
                "not_image",
                f"“{attachment.filename}” is not a picture. "
                "Attach a JPEG, PNG, WebP, GIF or BMP image.",
            )
        return await attachment.read()

    async def _open_conversation(
        self, interaction: discord.Interaction[AnimateBot], job: Job, prepared: PreparedRequest
    ) -> tuple[str, int | None, int]:
        """Post the public status message and open a thread on it where possible.

        Returns (where to look, thread id or None, status message id).
        """
        channel = interaction.channel
        if not isinstance(channel, discord.abc.Messageable):
            raise InputRejected("I can't post in this kind of channel. Try a text channel.")
        note = None
        can_thread = interaction.guild_id is not None and not isinstance(channel, discord.Thread)
        if can_thread:
            missing = _missing(interaction.app_permissions, NEEDED_FOR_NEW_THREADS)
            if missing:
                can_thread = False
                note = (
                    "I can't open a thread here (missing "
                    + ", ".join(missing)
                    + "), so results will be posted in this channel."
                )
        elif interaction.guild_id is None:
            note = "Direct messages have no threads, so the video will be posted right here."
        status = await channel.send(
            note or "",
            embed=status_embed(job),
            file=first_frame_file(prepared.image.jpeg),
            allowed_mentions=discord.AllowedMentions.none(),
        )
        if isinstance(channel, discord.Thread):
            return f"Follow along in {channel.mention}.", None, status.id
        if not can_thread:
            return "Your video will be posted in this channel.", None, status.id
        try:
            thread = await status.create_thread(
                name=thread_name(prepared.request.prompt), auto_archive_duration=1440
            )
        except discord.HTTPException as exc:
            reason = (
                "no permission to create threads"
                if isinstance(exc, discord.Forbidden)
                else "this channel does not allow threads"
            )
            log.info(
                "no thread for interaction %s: %s (HTTP %s)", interaction.id, reason, exc.status
            )
            await status.edit(
                content=f"I couldn't open a thread here ({reason}), "
                "so results will be posted in this channel."
            )
            return "Your video will be posted in this channel.", None, status.id
        return f"Follow along in {thread.mention}.", thread.id, status.id

    async def cog_app_command_error(
        self,
        interaction: discord.Interaction[AnimateBot],  # type: ignore[override]
        error: app_commands.AppCommandError,
    ) -> None:
        """The one place an /animate failure becomes words for the user."""
        cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        if isinstance(cause, discord.Forbidden):
            # Discord refused something the permission check could not foresee (an override on
            # a thread, say): say so instead of a generic apology.
            log.warning(
                "/animate refused by Discord for user %s in guild %s (code %s)",
                interaction.user.id,
                interaction.guild_id,
                cause.code,
            )
            text = (
                "Discord did not let me post here. Ask a server admin to check my permissions "
                "in this channel (" + ", ".join(NEEDED_EVERYWHERE.values()) + ")."
            )
        elif isinstance(cause, BotError):
            text = user_message(cause)
            if not isinstance(cause, InputRejected):
                log.warning(
                    "/animate failed for user %s in guild %s: %s",
                    interaction.user.id,
                    interaction.guild_id,
                    type(cause).__name__,
                )
        else:
            text = user_message(cause)
            log.error(
                "/animate crashed (interaction %s, user %s, guild %s)",
                interaction.id,
                interaction.user.id,
                interaction.guild_id,
                exc_info=cause,
            )
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException:
            log.warning(
                "could not tell user %s about the failure (interaction %s)",
                interaction.user.id,
                interaction.id,
            )


async def setup(bot: AnimateBot) -> None:
    await bot.add_cog(Animate(bot))
