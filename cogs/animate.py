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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, cast

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands, tasks

from bot.admission import Admission, Quote, Requester
from bot.catalog import CATALOG
from bot.errors import BotError, ImageRejected, InputRejected, user_message
from bot.i18n import Message, Money, Number, _t, join, render
from bot.imaging import FitMode, OrientationChoice
from bot.jobs import Job
from bot.model_health import ModelHealth
from bot.service import AnimateRequest, Conversation, InteractionAnswer, JobService
from cogs.audit import post_audit, post_audit_everywhere
from cogs.delivery import DiscordDelivery, first_frame_file, status_embed, thread_name
from cogs.language import for_member, member_language, server_language
from cogs.results import status_view

if TYPE_CHECKING:
    from bot.discord_bot import AnimateBot

log = logging.getLogger(__name__)

# What the bot needs wherever /animate is used, with the names Discord shows in its settings
# (translated as Discord's client names them in each language).
# Read Message History lets a restarted bot see that a video was already posted.
NEEDED_EVERYWHERE: dict[str, Message] = {
    "view_channel": _t("View Channel"),
    "send_messages": _t("Send Messages"),
    "embed_links": _t("Embed Links"),
    "attach_files": _t("Attach Files"),
    "read_message_history": _t("Read Message History"),
}
NEEDED_IN_THREADS: dict[str, Message] = {
    "view_channel": _t("View Channel"),
    "send_messages_in_threads": _t("Send Messages in Threads"),
    "embed_links": _t("Embed Links"),
    "attach_files": _t("Attach Files"),
    "read_message_history": _t("Read Message History"),
}
NEEDED_FOR_NEW_THREADS: dict[str, Message] = {
    "create_public_threads": _t("Create Public Threads"),
    "send_messages_in_threads": _t("Send Messages in Threads"),
}
# Content types that can never be an image; anything else (including none or a wrong image
# type) is decided from the bytes.
_NOT_IMAGE_PREFIXES = ("text/", "video/", "audio/", "application/pdf", "application/zip")

_RETENTION_EVERY = timedelta(hours=1)
# How long Discord accepts an interaction's follow-ups and edits.
INTERACTION_TOKEN_LIFETIME = timedelta(minutes=15)

_RESOLUTIONS = sorted(
    {r for spec in CATALOG.values() for r in spec.resolutions}, key=lambda r: int(r.rstrip("pPk"))
)


def _missing(permissions: discord.Permissions, needed: dict[str, Message]) -> list[Message]:
    return [label for attr, label in needed.items() if not getattr(permissions, attr)]


def _bold_list(labels: list[Message]) -> Message:
    return join([join(["**", label, "**"], separator="") for label in labels], separator=", ")


class MissingPermissions(InputRejected):
    def __init__(self, labels: list[Message]) -> None:
        super().__init__(
            _t(
                "I can't work in this channel: I'm missing the {permissions} permission. "
                "Ask a server admin to grant it, or use /animate in another channel.",
                permissions=_bold_list(labels),
            )
        )


class Animate(commands.Cog):
    def __init__(self, bot: AnimateBot) -> None:
        self.bot = bot
        self.delivery = DiscordDelivery(
            bot, on_posted=self._audit_result, eta=bot.service.timing.eta, now=bot.service.clock.now
        )
        # Commands in progress, so shutdown can let them finish their submit and reply.
        self._commands_running = 0
        self._no_commands = asyncio.Event()
        self._no_commands.set()
        self._admission: Admission | None = None
        self._last_retention: datetime | None = None

    @property
    def service(self) -> JobService:
        return self.bot.service

    @property
    def admission(self) -> Admission:
        if self._admission is None:
            self._admission = Admission(
                settings=self.bot.settings,
                service=self.bot.service,
                spending=self.bot.spending,
                guild_settings=self.bot.guild_settings,
                clock=self.bot.service.clock,
                notify_servers=self._announce_credits,
                models=ModelHealth(self.bot.store),
            )
        return self._admission

    async def _retention(self) -> None:
        """Hourly: drop kept pictures older than IMAGE_RETENTION_DAYS."""
        now = self.service.clock.now()
        if self._last_retention is not None and now - self._last_retention < _RETENTION_EVERY:
            return
        self._last_retention = now
        removed = await self.service.forget_old_images()
        if removed:
            log.info("retention: removed %d kept pictures", removed)
        # Tokens of cancelled or expired jobs: credentials nobody can use any more.
        await self.bot.store.forget_interaction_tokens(now=now)

    async def _audit_result(self, job: Job, what: str) -> None:
        if job.guild_id is None:
            return
        if what == "failed" and self.bot.settings.refund_failed_jobs:
            what = "failed (refunded)"
        values: dict[str, object] = {
            "job": job.id,
            "user": job.requester_id,
            "model": job.model,
            "resolution": job.resolution,
            "duration": job.duration,
        }
        # One whole sentence per outcome (translators need them whole); `what` is
        # DiscordDelivery's word for what it posted.
        lines: dict[str, Message] = {
            "delivered": _t(
                "Job {job} delivered: <@{user}>, {model} {resolution}, {duration} s.", **values
            ),
            "delivered (re-encoded)": _t(
                "Job {job} delivered (re-encoded): <@{user}>, {model} {resolution}, {duration} s.",
                **values,
            ),
            "delivered as a link": _t(
                "Job {job} delivered as a link: <@{user}>, {model} {resolution}, {duration} s.",
                **values,
            ),
            "failed": _t(
                "Job {job} failed: <@{user}>, {model} {resolution}, {duration} s.", **values
            ),
            "failed (refunded)": _t(
                "Job {job} failed (refunded): <@{user}>, {model} {resolution}, {duration} s.",
                **values,
            ),
        }
        line = lines.get(what) or (
            f"Job {job.id} {what}: <@{job.requester_id}>, {job.model} {job.resolution}, "
            f"{job.duration} s."
        )
        await post_audit(self.bot, job.guild_id, line, fallback_language=job.public_language)

    async def _announce_credits(self, text: Message) -> None:
        # Every server that has a log channel hears it once per pause.
        await post_audit_everywhere(self.bot, text)

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
        if task is not None and not task.done() and not self.bot.is_ready():
            # Still waiting for the gateway (a failed start): nothing to finish.
            self.background.cancel()
        elif task is not None and not task.done():
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
            # Settle or refund the money of jobs that ended (exactly once, from any worker).
            await self.admission.settle_finished()
            await self._retention()
        except Exception:
            log.exception("background pass failed; trying again next tick")
        self.background.change_interval(seconds=self.service.next_pass_in())

    @background.before_loop
    async def _wait_until_ready(self) -> None:
        await self.bot.wait_until_ready()

    @app_commands.command(
        name=locale_str("animate"), description=locale_str("Turn a picture into a short video")
    )
    # Also installable to a member's account and usable in DMs, group DMs and servers without
    # the bot; there it answers through the interaction (see _answers_through_interaction).
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    # Option names in the member's language too (the catalogue's "image" → "bild", …).
    @app_commands.rename(
        image=locale_str("image"),
        prompt=locale_str("prompt"),
        duration=locale_str("duration"),
        orientation=locale_str("orientation"),
        resolution=locale_str("resolution"),
        model=locale_str("model"),
        fit=locale_str("fit"),
        end_image=locale_str("end_image"),
    )
    @app_commands.describe(
        image=locale_str(
            "The picture to animate (JPEG, PNG, WebP, GIF, BMP, HEIC or AVIF); "
            "it becomes the first frame"
        ),
        prompt=locale_str("What should happen in the video"),
        duration=locale_str("Length in seconds (depends on the model; Sora 2: 4, 8 or 12)"),
        orientation=locale_str("Landscape or portrait; auto follows the picture"),
        resolution=locale_str("Output resolution (depends on the model)"),
        model=locale_str("Which video model to use"),
        end_image=locale_str(
            "Optional: where the video should end (models that take a last frame)"
        ),
        fit=locale_str("crop: fill the frame and trim edges; pad: keep the whole picture"),
    )
    @app_commands.choices(
        orientation=[
            app_commands.Choice(name=locale_str("auto (follow the picture)"), value="auto"),
            app_commands.Choice(name=locale_str("landscape 16:9"), value="landscape"),
            app_commands.Choice(name=locale_str("portrait 9:16"), value="portrait"),
        ],
        fit=[
            app_commands.Choice(name=locale_str("crop to fill"), value="crop"),
            app_commands.Choice(name=locale_str("pad (keep everything)"), value="pad"),
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
        end_image: discord.Attachment | None = None,
    ) -> None:
        with self._command_running():
            await self._animate(
                interaction,
                image,
                prompt,
                duration,
                orientation,
                resolution,
                model,
                fit,
                end_image,
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
        end_image: discord.Attachment | None = None,
    ) -> None:
        # Acknowledge first: Discord allows 3 s, and downloading a photo can take longer.
        await interaction.response.defer(ephemeral=True, thinking=True)
        params = _Params(
            image=image,
            prompt=prompt,
            orientation=cast("OrientationChoice", orientation),  # Discord sends only choices
            fit=cast("FitMode", fit),
            end_image=end_image,
        )
        await self.begin(interaction, params, model=model, duration=duration, resolution=resolution)

    async def begin(
        self,
        interaction: discord.Interaction[AnimateBot],
        params: _Params,
        *,
        model: str | None,
        duration: int | None,
        resolution: str | None,
        note: Message = "",
    ) -> None:
        """Every way of starting a job (command, buttons, modals, context menu) after it has
        acknowledged the interaction privately: checks, quote, confirm if costly, then admit.
        The job's languages are those of `interaction` (the member who started it, where)."""
        self._check_permissions(interaction)
        requester = _requester(interaction)
        quote = await self.admission.quote(
            requester,
            prompt=params.prompt,
            model=model,
            duration=duration,
            resolution=resolution,
            has_end_image=params.end_image is not None,
        )
        if not quote.needs_confirmation:
            text = for_member(
                interaction, join([note, await self._admit(interaction, requester, quote, params)])
            )
            if _answers_through_interaction(interaction):
                # The first reply already holds the note about 15 minutes; it becomes this.
                await interaction.edit_original_response(content=text)
            else:
                await interaction.followup.send(text, ephemeral=True)
            return
        view = ConfirmView(self, interaction, requester, quote, params)
        prompt: Message = join(
            [
                note,
                _t(
                    "This video will cost about **{cost}** ({model}, {resolution}, {duration} s).",
                    cost=Money(quote.estimate_usd or 0.0),
                    model=quote.spec.label,
                    resolution=quote.resolution,
                    duration=quote.duration,
                ),
                quote.left_line(),
                _t("Nothing is spent until you press Generate."),
            ]
        )
        if _answers_through_interaction(interaction):
            prompt = join([prompt, interaction_note(None)], separator="\n")
        await interaction.followup.send(for_member(interaction, prompt), view=view, ephemeral=True)

    def _check_permissions(self, interaction: discord.Interaction[AnimateBot]) -> None:
        in_thread = isinstance(interaction.channel, discord.Thread)
        if interaction.guild_id is not None and not _answers_through_interaction(interaction):
            needed = NEEDED_IN_THREADS if in_thread else NEEDED_EVERYWHERE
            missing = _missing(interaction.app_permissions, needed)
            if missing:
                raise MissingPermissions(missing)

    async def _admit(
        self,
        interaction: discord.Interaction[AnimateBot],
        requester: Requester,
        quote: Quote,
        params: _Params,
        presser: discord.Interaction[AnimateBot] | None = None,
    ) -> Message:
        """Spend and start: the one path every way of starting a job ends in. Returns the
        private reply ("Started! …"). The job's languages come from `presser` (Generate on a
        confirmation) or else `interaction`: whoever started it, where they did."""
        started_by = presser or interaction
        data = (
            params.image
            if isinstance(params.image, bytes)
            else await self._read_image(params.image)
        )
        end = None if params.end_image is None else await self._read_image(params.end_image)
        request = AnimateRequest(
            image=data,
            prompt=params.prompt,
            requester_id=requester.user_id,
            guild_id=requester.guild_id,
            channel_id=interaction.channel_id or 0,
            upload_limit_bytes=interaction.filesize_limit,
            orientation=params.orientation,
            fit=params.fit,
            interaction_id=interaction.id,
            parent_job_id=params.parent_job_id,
            chain_length=params.chain_length,
            already_fitted=params.already_fitted,
            end_image=end,
            answer_through=self._interaction_answer(interaction),
            member_language=member_language(started_by),
            public_language=server_language(started_by),
        )
        announced: list[Message] = []

        async def announce(job: Job) -> Conversation:
            where, thread_id, status_id = await self._open_conversation(interaction, job)
            announced.append(where)
            return Conversation(thread_id=thread_id, status_message_id=status_id)

        job = await self.admission.admit(requester, quote, request, announce)
        # Cosmetic from here on: the job is paid for and will be delivered whatever happens.
        await self.service.refresh_status(self.delivery, job.id)
        if job.guild_id is not None:
            values: dict[str, object] = {
                "job": job.id,
                "user": job.requester_id,
                "model": quote.spec.label,
                "resolution": job.resolution,
                "duration": job.duration,
            }
            await post_audit(
                self.bot,
                job.guild_id,
                _t(
                    "Job {job} accepted: <@{user}>, {model} {resolution}, {duration} s, "
                    "price unknown.",
                    **values,
                )
                if quote.estimate_usd is None
                else _t(
                    "Job {job} accepted: <@{user}>, {model} {resolution}, {duration} s, "
                    "about {cost}.",
                    cost=Money(quote.estimate_usd),
                    **values,
                ),
            )
        return join([_t("Started!"), announced[0]])

    def _interaction_answer(
        self, interaction: discord.Interaction[AnimateBot]
    ) -> InteractionAnswer | None:
        if not _answers_through_interaction(interaction):
            return None
        # The token lives 15 minutes from the interaction; recorded on the service's clock.
        age = discord.utils.utcnow() - interaction.created_at
        return InteractionAnswer(
            token=interaction.token,
            expires_at=self.service.clock.now() + INTERACTION_TOKEN_LIFETIME - age,
            origin_guild_id=interaction.guild_id,
        )

    async def _read_image(self, attachment: discord.Attachment) -> bytes:
        limit = self.bot.settings.max_image_bytes
        if attachment.size > limit:
            raise ImageRejected(
                "too_large",
                _t(
                    "The file is {size} MB; the limit is {limit} MB.",
                    # Rounded up, so a file just over the limit never reads as equal to it.
                    size=Number(math.ceil(attachment.size / 104_857.6) / 10, 1),
                    limit=Number(limit / 1_048_576),
                ),
            )
        content_type = (attachment.content_type or "").lower()
        if content_type.startswith(_NOT_IMAGE_PREFIXES):
            raise ImageRejected(
                "not_image",
                _t(
                    "“{file}” is not a picture. Attach a JPEG, PNG, WebP, GIF, BMP, HEIC or AVIF "
                    "image.",
                    file=attachment.filename,
                ),
            )
        return await attachment.read()

    async def _open_conversation(
        self, interaction: discord.Interaction[AnimateBot], job: Job
    ) -> tuple[Message, int | None, int]:
        """Post the public status message and open a thread on it where possible.

        Returns (where to look, for the member; thread id or None; status message id).
        The status is in the job's public language, what the member is told in theirs.
        """
        if _answers_through_interaction(interaction):
            return await self._open_through_interaction(interaction, job)
        channel = interaction.channel
        if not isinstance(channel, discord.abc.Messageable):
            raise InputRejected(_t("I can't post in this kind of channel. Try a text channel."))
        public = job.language_for_delivery()
        note: Message = ""
        can_thread = interaction.guild_id is not None and not isinstance(channel, discord.Thread)
        if can_thread:
            missing = _missing(interaction.app_permissions, NEEDED_FOR_NEW_THREADS)
            if missing:
                can_thread = False
                note = _t(
                    "I can't open a thread here (missing {permissions}), so results will be "
                    "posted in this channel.",
                    permissions=join(missing, separator=", "),
                )
        elif interaction.guild_id is None:
            note = _t("Direct messages have no threads, so the video will be posted right here.")
        status = await channel.send(
            render(note, public),
            embed=status_embed(job),
            file=first_frame_file(job.image_data or b""),
            view=status_view(job),
            allowed_mentions=discord.AllowedMentions.none(),
        )
        in_channel = _t("Your video will be posted in this channel.")
        if isinstance(channel, discord.Thread):
            return _t("Follow along in {thread}.", thread=channel.mention), None, status.id
        if not can_thread:
            return in_channel, None, status.id
        try:
            thread = await status.create_thread(
                name=thread_name(job.prompt, public), auto_archive_duration=1440
            )
        except discord.HTTPException as exc:
            forbidden = isinstance(exc, discord.Forbidden)
            log.info(
                "no thread for interaction %s: %s (HTTP %s)",
                interaction.id,
                "no permission" if forbidden else "threads not allowed",
                exc.status,
            )
            why = (
                _t(
                    "I couldn't open a thread here (no permission to create threads), so "
                    "results will be posted in this channel."
                )
                if forbidden
                else _t(
                    "I couldn't open a thread here (this channel does not allow threads), so "
                    "results will be posted in this channel."
                )
            )
            await status.edit(content=render(why, public))
            return in_channel, None, status.id
        return _t("Follow along in {thread}.", thread=thread.mention), thread.id, status.id

    async def _open_through_interaction(
        self, interaction: discord.Interaction[AnimateBot], job: Job
    ) -> tuple[Message, int | None, int]:
        """Where the bot cannot post (a user install): the status is the interaction's own
        follow-up, and nothing can reach the member there after 15 minutes, so say so now."""
        where = join([_t("The video will be posted here."), interaction_note(job.id)])
        # Fills the "thinking…" reply first, so the status below is a public follow-up of its
        # own rather than the edit of that private reply.
        await interaction.edit_original_response(
            content=for_member(interaction, join([_t("Starting…"), where]))
        )
        status = await interaction.followup.send(
            embed=status_embed(job),
            file=first_frame_file(job.image_data or b""),
            view=status_view(job),
            allowed_mentions=discord.AllowedMentions.none(),
            wait=True,
        )
        return where, None, status.id

    async def cog_app_command_error(
        self,
        interaction: discord.Interaction[AnimateBot],  # type: ignore[override]
        error: app_commands.AppCommandError,
    ) -> None:
        cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        await self.explain(interaction, cause)

    async def explain(
        self, interaction: discord.Interaction[AnimateBot], cause: BaseException
    ) -> None:
        """The one place an /animate failure becomes words for the user (privately)."""
        if isinstance(cause, discord.Forbidden):
            # Discord refused something the permission check could not foresee (an override on
            # a thread, say): say so instead of a generic apology.
            log.warning(
                "/animate refused by Discord for user %s in guild %s (code %s)",
                interaction.user.id,
                interaction.guild_id,
                cause.code,
            )
            text: Message = _t(
                "Discord did not let me post here. Ask a server admin to check my permissions "
                "in this channel ({permissions}).",
                permissions=join(NEEDED_EVERYWHERE.values(), separator=", "),
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
        words = for_member(interaction, text)
        try:
            if interaction.response.is_done():
                await interaction.followup.send(words, ephemeral=True)
            else:
                await interaction.response.send_message(words, ephemeral=True)
        except (discord.HTTPException, ValueError):
            log.warning(
                "could not tell user %s about the failure (interaction %s)",
                interaction.user.id,
                interaction.id,
            )


@dataclass(frozen=True)
class _Params:
    """What the member chose that the quote does not cover."""

    image: discord.Attachment | bytes
    """An attachment to read, or a picture already at hand (a kept one, an Extend frame)."""
    prompt: str
    orientation: OrientationChoice
    fit: FitMode
    parent_job_id: int | None = None
    chain_length: int = 1
    already_fitted: bool = False
    end_image: discord.Attachment | None = None


def _answers_through_interaction(interaction: discord.Interaction[AnimateBot]) -> bool:
    """A user install where the bot cannot post itself: a group DM, or a server that has not
    installed the bot. (In its own DMs the bot can post, as with a guild install.)"""
    if interaction.context.private_channel:
        return True
    return interaction.guild_id is not None and not interaction.is_guild_integration()


def interaction_note(job_id: int | None) -> Message:
    """Said up front: after 15 minutes nothing can reach the member where they asked."""
    if job_id is None:
        return _t(
            "I'm not a member here, so I answer through this command, which Discord allows for "
            "15 minutes. A video that takes longer is sent to you by DM; if your DMs are closed, "
            "use `/show` with the job number in a DM with me to get it."
        )
    return _t(
        "I'm not a member here, so I answer through this command, which Discord allows for "
        "15 minutes. A video that takes longer is sent to you by DM; if your DMs are closed, "
        "use `/show {job}` in a DM with me to get it.",
        job=job_id,
    )


def _requester(interaction: discord.Interaction[AnimateBot]) -> Requester:
    if _answers_through_interaction(interaction):
        # The server has not installed the bot: its settings and limits do not apply, only
        # the member's and the bot's (as in DMs).
        return Requester(
            user_id=interaction.user.id,
            guild_id=None,
            channel_ids={interaction.channel_id or 0},
            role_ids=[],
            existing_channels=None,
            existing_roles=None,
        )
    channel = interaction.channel
    channel_ids = {interaction.channel_id or 0}
    if isinstance(channel, discord.Thread) and channel.parent_id is not None:
        channel_ids.add(channel.parent_id)
    user = interaction.user
    roles = [role.id for role in user.roles] if isinstance(user, discord.Member) else []
    guild = interaction.guild
    return Requester(
        user_id=user.id,
        guild_id=interaction.guild_id,
        channel_ids=channel_ids,
        role_ids=roles,
        existing_channels={c.id for c in guild.channels} if guild is not None else None,
        existing_roles={r.id for r in guild.roles} if guild is not None else None,
    )


class ConfirmView(discord.ui.View):
    """Generate / Cancel for a costly request. Only the requester can press; nothing is spent
    until Generate; after CONFIRM_TIMEOUT_SECONDS the buttons go inert with a note."""

    def __init__(
        self,
        cog: Animate,
        origin: discord.Interaction[AnimateBot],
        requester: Requester,
        quote: Quote,
        params: _Params,
    ) -> None:
        super().__init__(timeout=cog.bot.settings.confirm_timeout_seconds)
        self.cog = cog
        self.origin = origin
        self.requester = requester
        self.quote = quote
        self.params = params
        self._decided = False
        # A private prompt: its buttons in the member's language.
        self.generate.label = for_member(origin, _t("Generate"))
        self.cancel.label = for_member(origin, _t("Cancel"))

    async def interaction_check(self, interaction: discord.Interaction[AnimateBot]) -> bool:  # type: ignore[override]
        if interaction.user.id == self.requester.user_id:
            return True
        await interaction.response.send_message(
            for_member(interaction, _t("Only the member who asked for this video can confirm it.")),
            ephemeral=True,
        )
        return False

    async def _close(self, interaction: discord.Interaction[AnimateBot], text: Message) -> None:
        self._decided = True
        self.stop()
        for item in self.children:
            if isinstance(item, discord.ui.Button):
                item.disabled = True
        await interaction.response.edit_message(content=for_member(interaction, text), view=self)

    @discord.ui.button(label="Generate", style=discord.ButtonStyle.success)
    async def generate(
        self, interaction: discord.Interaction[AnimateBot], button: discord.ui.Button[ConfirmView]
    ) -> None:
        if self._decided:
            return
        await self._close(interaction, _t("Starting…"))
        with self.cog._command_running():
            try:
                text = await self.cog._admit(
                    self.origin, self.requester, self.quote, self.params, presser=interaction
                )
            except Exception as exc:
                await interaction.edit_original_response(
                    content=for_member(interaction, _t("Not started."))
                )
                await self.cog.explain(interaction, exc)
                return
        await interaction.edit_original_response(content=for_member(interaction, text))

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel(
        self, interaction: discord.Interaction[AnimateBot], button: discord.ui.Button[ConfirmView]
    ) -> None:
        if self._decided:
            return
        await self._close(interaction, _t("Cancelled. Nothing was spent."))

    async def on_timeout(self) -> None:
        if self._decided:
            return
        self._decided = True
        for item in self.children:
            if isinstance(item, discord.ui.Button):
                item.disabled = True
        try:
            await self.origin.edit_original_response(
                content=for_member(
                    self.origin,
                    _t("This request expired before it was confirmed. Nothing was spent."),
                ),
                view=self,
            )
        except discord.HTTPException:
            log.info("could not mark an expired confirmation (interaction %s)", self.origin.id)


async def setup(bot: AnimateBot) -> None:
    await bot.add_cog(Animate(bot))
