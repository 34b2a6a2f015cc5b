"""Act on results: Again / Edit prompt / Extend / Delete / Try again on result messages, Cancel on
status messages, `/show`, and the "Animate image" message context menu.

Buttons are persistent `DynamicItem`s: the custom id carries the job id, so a press works after a
restart and for days, with no view held in memory. Every new job started here goes through the
same path as `/animate` (`Animate.begin`): checks, quote, confirm, budgets, charged to the member
who pressed.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from bot.catalog import CATALOG
from bot.errors import InputRejected
from bot.i18n import Message, Number, _t, _tn, render
from bot.jobs import Job, JobState, Outcome
from cogs.language import for_member, member_language, server_language

if TYPE_CHECKING:
    from bot.discord_bot import AnimateBot
    from bot.imaging import FitMode, OrientationChoice
    from cogs.animate import Animate

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".heic", ".heif", ".avif")


def _animate_cog(interaction: discord.Interaction[AnimateBot]) -> Animate:
    cog = interaction.client.get_cog("Animate")
    if cog is None:
        raise RuntimeError("the Animate cog is not loaded")
    return cast("Animate", cog)


_GONE = _t("That video's record no longer exists.")


async def _job_or_explain(interaction: discord.Interaction[AnimateBot], job_id: int) -> Job | None:
    job = await interaction.client.store.get(job_id)
    if job is None:
        await _say(interaction, _GONE)
    return job


async def _say(interaction: discord.Interaction[AnimateBot], text: Message) -> None:
    """A private answer, in the presser's language."""
    words = for_member(interaction, text)
    if interaction.response.is_done():
        await interaction.followup.send(words, ephemeral=True)
    else:
        await interaction.response.send_message(words, ephemeral=True)


async def _managed_job(
    interaction: discord.Interaction[AnimateBot], job_id: int, refusal: Message
) -> Job | None:
    """The job, if the presser may act on it (requester or Manage Messages); else `refusal`."""
    job = await interaction.client.store.get(job_id)
    if job is None or not _may_manage(interaction, job):
        await _say(interaction, refusal)
        return None
    return job


def _may_manage(interaction: discord.Interaction[AnimateBot], job: Job) -> bool:
    """The requester, or a member with Manage Messages where the button is."""
    if interaction.user.id == job.requester_id:
        return True
    permissions = interaction.permissions
    return permissions.manage_messages or permissions.administrator


async def _start_like(
    interaction: discord.Interaction[AnimateBot],
    source: Job,
    *,
    prompt: str | None = None,
    duration: int | None = None,
) -> None:
    """Again / Edit prompt / Try again: the same picture as `source`, as a new job."""
    from cogs.animate import _Params

    cog = _animate_cog(interaction)
    image = await interaction.client.store.kept_image(source.id)
    if image is None:
        days = interaction.client.settings.image_retention_days
        await _say(
            interaction,
            _t(
                "The picture of this video is no longer kept (pictures are kept {days} days). "
                "Run /animate with it again.",
                days=Number(days, 0 if float(days).is_integer() else 1),
            ),
        )
        return
    params = _Params(
        image=image,
        prompt=prompt or source.prompt,
        orientation=cast("OrientationChoice", source.orientation),
        fit=cast("FitMode", source.fit),
        already_fitted=True,
    )
    await _run(
        interaction,
        cog.begin(
            interaction,
            params,
            model=source.model,
            duration=duration or source.duration,
            resolution=source.resolution,
        ),
    )


async def _run(interaction: discord.Interaction[AnimateBot], work: Any) -> None:
    """Run a start and turn any failure into the same private words as /animate."""
    cog = _animate_cog(interaction)
    with cog._command_running():
        try:
            await work
        except Exception as exc:
            await cog.explain(interaction, exc)


# --- buttons ---------------------------------------------------------------------------------


class _JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"animate:base:(?P<job>[0-9]+)"
):
    """A button whose custom id is `animate:<action>:<job id>`; its label is in `language` (the
    custom id never depends on it, so any label works after a restart)."""

    action = ""
    label: Message = ""
    style = discord.ButtonStyle.secondary
    emoji: str | None = None

    def __init__(self, job_id: int, language: str = "en") -> None:
        super().__init__(
            discord.ui.Button(
                label=render(self.label, language),
                style=self.style,
                emoji=self.emoji,
                custom_id=f"animate:{self.action}:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> _JobButton:
        return cls(int(match["job"]))


class AgainButton(_JobButton, template=r"animate:again:(?P<job>[0-9]+)"):
    action, label, emoji = "again", _t("Again"), "🔁"

    async def callback(self, interaction: discord.Interaction[AnimateBot]) -> None:  # type: ignore[override]
        await interaction.response.defer(ephemeral=True, thinking=True)
        job = await _job_or_explain(interaction, self.job_id)
        if job is not None:
            await _start_like(interaction, job)


class TryAgainButton(AgainButton, template=r"animate:retry:(?P<job>[0-9]+)"):
    """Again, on a failure message."""

    action, label, emoji = "retry", _t("Try again"), "🔁"


class PromptModal(discord.ui.Modal):
    """Edit prompt / Extend / the context menu: the prompt (and duration where there is a
    choice), pre-filled."""

    def __init__(
        self,
        *,
        title: Message,
        prompt: str,
        durations: tuple[int, ...],
        duration: int | None,
        on_submit: Any,
        language: str,
    ) -> None:
        # Shown to the member who pressed: in their language.
        super().__init__(title=render(title, language), timeout=15 * 60)
        self.prompt: discord.ui.TextInput[PromptModal] = discord.ui.TextInput(
            label=render(_t("Prompt"), language),
            custom_id="prompt",
            style=discord.TextStyle.paragraph,
            default=prompt[:2000] or None,
            max_length=2000,
        )
        self.add_item(self.prompt)
        self.durations = durations
        self.duration: discord.ui.TextInput[PromptModal] | None = None
        if len(durations) > 1:
            self.duration = discord.ui.TextInput(
                label=render(
                    _t("Seconds ({choices})", choices=", ".join(map(str, durations))), language
                ),
                custom_id="duration",
                default=str(duration) if duration is not None else None,
                required=False,
                max_length=3,
            )
            self.add_item(self.duration)
        self._on_submit = on_submit

    async def on_submit(self, interaction: discord.Interaction[AnimateBot]) -> None:  # type: ignore[override]
        await interaction.response.defer(ephemeral=True, thinking=True)
        seconds: int | None = None
        raw = (self.duration.value if self.duration is not None else "").strip()
        if raw:
            if not raw.isdigit() or int(raw) not in self.durations:
                await _say(
                    interaction,
                    _t(
                        "Seconds must be one of {choices}.",
                        choices=", ".join(map(str, self.durations)),
                    ),
                )
                return
            seconds = int(raw)
        await self._on_submit(interaction, self.prompt.value, seconds)


def _durations(job: Job) -> tuple[int, ...]:
    spec = CATALOG.get(job.model)
    return tuple(spec.durations) if spec is not None else ()


class EditPromptButton(_JobButton, template=r"animate:edit:(?P<job>[0-9]+)"):
    action, label, emoji = "edit", _t("Edit prompt"), "✏️"

    async def callback(self, interaction: discord.Interaction[AnimateBot]) -> None:  # type: ignore[override]
        job = await interaction.client.store.get(self.job_id)
        if job is None:
            await _say(interaction, _GONE)
            return

        async def submitted(
            modal_interaction: discord.Interaction[AnimateBot], prompt: str, seconds: int | None
        ) -> None:
            await _start_like(modal_interaction, job, prompt=prompt, duration=seconds)

        await interaction.response.send_modal(
            PromptModal(
                title=_t("Edit prompt"),
                prompt=job.prompt,
                durations=_durations(job),
                duration=job.duration,
                on_submit=submitted,
                language=member_language(interaction),
            )
        )


class ExtendButton(_JobButton, template=r"animate:extend:(?P<job>[0-9]+)"):
    action, label, emoji = "extend", _t("Extend"), "⏩"

    async def callback(self, interaction: discord.Interaction[AnimateBot]) -> None:  # type: ignore[override]
        job = await interaction.client.store.get(self.job_id)
        if job is None:
            await _say(interaction, _GONE)
            return
        limit = interaction.client.settings.max_extends
        if job.chain_length > limit:
            await _say(
                interaction,
                _tn(
                    "This clip has been extended {count} time, the most allowed.",
                    "This clip has been extended {count} times, the most allowed.",
                    limit,
                ),
            )
            return

        async def submitted(
            modal_interaction: discord.Interaction[AnimateBot], prompt: str, seconds: int | None
        ) -> None:
            await _run(modal_interaction, _extend(modal_interaction, job, prompt, seconds))

        await interaction.response.send_modal(
            PromptModal(
                title=_t("Extend this clip"),
                prompt=job.prompt,
                durations=_durations(job),
                duration=job.duration,
                on_submit=submitted,
                language=member_language(interaction),
            )
        )


async def _extend(
    interaction: discord.Interaction[AnimateBot], source: Job, prompt: str, seconds: int | None
) -> None:
    """The last frame of `source`'s video becomes the first frame of a new job in its chain."""
    from bot.video import VideoError, last_frame_jpeg  # PyAV loads only when needed
    from cogs.animate import _Params

    video = await fetch_result_video(interaction.client, source)
    if video is None:
        raise InputRejected(_t("The video of this job is no longer available to extend."))
    with tempfile.TemporaryDirectory(prefix=f"extend{source.id}-") as tmp:
        path = Path(tmp) / "clip.mp4"
        await asyncio.to_thread(path.write_bytes, video)
        try:
            frame = await asyncio.to_thread(last_frame_jpeg, path)
        except VideoError as exc:
            raise InputRejected(_t("The bot could not read that video to extend it.")) from exc
    params = _Params(
        image=frame,
        prompt=prompt,
        orientation=cast("OrientationChoice", source.orientation),
        fit="crop",
        parent_job_id=source.id,
        chain_length=source.chain_length + 1,
    )
    await _animate_cog(interaction).begin(
        interaction,
        params,
        model=source.model,
        duration=seconds or source.duration,
        resolution=source.resolution,
    )


async def fetch_result_video(bot: AnimateBot, job: Job) -> bytes | None:
    """The job's mp4, read back from the bot's own result message (a fresh attachment URL),
    so no video is kept on disk; None when the message or its file is gone."""
    if job.delivery_message_id is None:
        return None
    try:
        if job.delivery_target == "dm":
            user = await bot.fetch_user(job.requester_id)
            channel: discord.abc.Messageable = await user.create_dm()
        else:
            channel = bot.get_partial_messageable(job.delivery_channel_id)
        message = await channel.fetch_message(job.delivery_message_id)
        for attachment in message.attachments:
            if attachment.filename.lower().endswith(".mp4"):
                return await attachment.read()
    except discord.HTTPException as exc:
        log.info("job %s: result message unreadable (HTTP %s)", job.id, exc.status)
    return None


class DeleteButton(_JobButton, template=r"animate:delete:(?P<job>[0-9]+)"):
    action, label, emoji = "delete", _t("Delete"), "🗑️"
    style = discord.ButtonStyle.danger

    async def callback(self, interaction: discord.Interaction[AnimateBot]) -> None:  # type: ignore[override]
        job = await _managed_job(
            interaction,
            self.job_id,
            _t(
                "Only the member who asked for this video, or someone who can manage messages "
                "here, can delete it."
            ),
        )
        if job is None:
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        if interaction.message is not None:
            await interaction.message.delete()
        if job.joined_message_id is not None and interaction.channel is not None:
            partial = interaction.client.get_partial_messageable(job.delivery_channel_id)
            try:
                await partial.get_partial_message(job.joined_message_id).delete()
            except discord.HTTPException:
                log.info("job %s: joined video already gone", job.id)
        await interaction.followup.send(for_member(interaction, _t("Deleted.")), ephemeral=True)


class CancelButton(_JobButton, template=r"animate:cancel:(?P<job>[0-9]+)"):
    action, label, emoji = "cancel", _t("Cancel"), "✖️"

    async def callback(self, interaction: discord.Interaction[AnimateBot]) -> None:  # type: ignore[override]
        job = await _managed_job(
            interaction,
            self.job_id,
            _t(
                "Only the member who asked for this video, or someone who can manage messages "
                "here, can cancel it."
            ),
        )
        if job is None:
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        service = interaction.client.service
        cancelled = await service.cancel(job.id, actor_id=interaction.user.id)
        if cancelled is None:
            await _say(interaction, _t("Too late to cancel: it has already finished."))
            return
        await service.refresh_status(_animate_cog(interaction).delivery, job.id)
        if cancelled.provider_job_id is None:
            text = _t("Cancelled before it was sent. Nothing was spent.")
        else:
            text = _t(
                "Cancelled. The bot will not post this video, but the video service already had "
                "it and may still charge for it."
            )
        await _say(interaction, text)


def result_view(
    job: Job, *, link: discord.ui.Button[Any] | None = None, language: str | None = None
) -> discord.ui.View:
    """The buttons under a result: Again, Edit prompt, Extend, Delete (Try again on failures),
    labelled in the job's public language unless `language` says otherwise."""
    language = language or job.language_for_delivery()
    view = discord.ui.View(timeout=None)
    if link is not None:
        view.add_item(link)
    if job.outcome == Outcome.VIDEO:
        view.add_item(AgainButton(job.id, language))
        view.add_item(EditPromptButton(job.id, language))
        view.add_item(ExtendButton(job.id, language))
    else:
        view.add_item(TryAgainButton(job.id, language))
    view.add_item(DeleteButton(job.id, language))
    return view


def _delete_only(job: Job) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(DeleteButton(job.id, job.language_for_delivery()))
    return view


def status_view(job: Job) -> discord.ui.View:
    """Cancel on the status message while the job is waiting or generating (none after)."""
    view = discord.ui.View(timeout=None)
    if job.state in (JobState.SUBMITTING, JobState.POLLING):
        view.add_item(CancelButton(job.id, job.language_for_delivery()))
    return view


DYNAMIC_ITEMS: tuple[type[_JobButton], ...] = (
    AgainButton,
    TryAgainButton,
    EditPromptButton,
    ExtendButton,
    DeleteButton,
    CancelButton,
)


# --- /show and the context menu ---------------------------------------------------------------


class Results(commands.Cog):
    def __init__(self, bot: AnimateBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(
            name=locale_str("Animate image"), callback=self.animate_image
        )

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(*DYNAMIC_ITEMS)
        self.bot.tree.add_command(self.menu)
        self.bot.service.add_delivered_listener(self.post_joined_chain)

    async def post_joined_chain(self, job: Job) -> None:
        """After an extended clip is delivered: the chain's clips joined into one video, when
        that fits the upload limit. The clips are read back from the bot's own messages."""
        if job.parent_job_id is None or job.outcome != Outcome.VIDEO:
            return
        chain = [job]
        while chain[0].parent_job_id is not None and len(chain) <= self.bot.settings.max_extends:
            parent = await self.bot.store.get(chain[0].parent_job_id)
            if parent is None:
                break
            chain.insert(0, parent)
        clips = [await fetch_result_video(self.bot, clip) for clip in chain]
        if any(clip is None for clip in clips):
            log.info("job %s: an earlier clip is gone; no joined video", job.id)
            return
        from bot.video import VideoError, fit_to_size, join

        with tempfile.TemporaryDirectory(prefix=f"chain{job.id}-") as tmp:
            paths = []
            for index, data in enumerate(clips):
                path = Path(tmp) / f"clip{index}.mp4"
                await asyncio.to_thread(path.write_bytes, cast("bytes", data))
                paths.append(path)
            joined = Path(tmp) / "joined.mp4"
            fitted = Path(tmp) / "fitted.mp4"
            try:
                async with self.bot.service.encode_slots:
                    info = await asyncio.to_thread(join, paths, joined)
                    if info.size_bytes > job.upload_limit_bytes:
                        smaller = await asyncio.to_thread(
                            fit_to_size, joined, fitted, int(job.upload_limit_bytes * 0.97)
                        )
                        if smaller is None:
                            log.info("job %s: the joined video does not fit; not posted", job.id)
                            return
                        joined = fitted
            except VideoError:
                log.warning("job %s: the chain could not be joined", job.id)
                return
            channel = self.bot.get_partial_messageable(job.delivery_channel_id)
            message = await channel.send(
                render(
                    _tn(
                        "<@{user}> the whole chain, {count} clip joined:",
                        "<@{user}> the whole chain, {count} clips joined:",
                        len(chain),
                        user=job.requester_id,
                    ),
                    job.language_for_delivery(),
                ),
                file=discord.File(joined, filename=f"animate-{job.id}-chain.mp4"),
                view=_delete_only(job),
                allowed_mentions=discord.AllowedMentions(
                    everyone=False, roles=False, users=[discord.Object(id=job.requester_id)]
                ),
            )
        await self.bot.store.transition(
            job.id,
            from_states=[JobState.DONE],
            now=self.bot.service.clock.now(),
            joined_message_id=message.id,
        )

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(*DYNAMIC_ITEMS)
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    @app_commands.command(
        name=locale_str("show"),
        description=locale_str("Post a finished video again, with its buttons"),
    )
    # A member who installed the app (not the server) gets a late video this way in the bot's
    # DMs, so /show must be there for them too.
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True)
    @app_commands.rename(job=locale_str("job"))
    @app_commands.describe(job=locale_str("The job number (from /jobs or the status message)"))
    async def show(self, interaction: discord.Interaction[AnimateBot], job: int) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        found = await self.bot.store.get(job)
        if found is None or found.state != JobState.DONE:
            await _say(interaction, _t("There is no finished job {job}.", job=job))
            return
        if found.requester_id != interaction.user.id and not (
            interaction.permissions.manage_messages or interaction.permissions.administrator
        ):
            await _say(
                interaction, _t("You can show your own videos (or any, with Manage Messages).")
            )
            return
        channel = interaction.channel
        if not isinstance(channel, discord.abc.Messageable):
            await _say(interaction, _t("I can't post in this kind of channel."))
            return
        from cogs.delivery import link_item, result_embed

        # Posted for everyone where /show is used: in that place's language.
        language = server_language(interaction)
        shown_by = render(
            _t("Job {job}, shown by <@{user}>", job=found.id, user=interaction.user.id), language
        )
        embed = result_embed(found, language=language)
        if found.outcome == Outcome.VIDEO:
            video = await fetch_result_video(self.bot, found)
            if video is not None:
                file = discord.File(io.BytesIO(video), filename=f"animate-{found.id}.mp4")
                await channel.send(
                    shown_by,
                    embed=embed,
                    file=file,
                    view=result_view(found, language=language),
                    allowed_mentions=discord.AllowedMentions.none(),
                )
                await _say(interaction, _t("Shown."))
                return
            if found.result_url is not None:
                await channel.send(
                    shown_by,
                    embed=result_embed(found, link=found.result_url, language=language),
                    view=result_view(
                        found, link=link_item(found.result_url, language), language=language
                    ),
                    allowed_mentions=discord.AllowedMentions.none(),
                )
                await _say(interaction, _t("Shown."))
                return
        await _say(
            interaction,
            _t(
                "Job {job} has no video to show ({outcome}).",
                job=found.id,
                outcome=found.outcome or _t("no outcome"),
            ),
        )

    # Like /animate: also from a member's own install, in DMs, group DMs and other servers.
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def animate_image(
        self, interaction: discord.Interaction[AnimateBot], message: discord.Message
    ) -> None:
        images = [a for a in message.attachments if _is_image(a)]
        if not images:
            await _say(interaction, _t("That message has no picture to animate."))
            return
        note: Message = (
            _tn(
                "That message has {count} picture; I used the first.",
                "That message has {count} pictures; I used the first.",
                len(images),
            )
            if len(images) > 1
            else ""
        )
        spec = CATALOG.get(self.bot.settings.default_model)
        durations = tuple(spec.durations) if spec is not None else ()

        async def submitted(
            modal_interaction: discord.Interaction[AnimateBot], prompt: str, seconds: int | None
        ) -> None:
            from cogs.animate import _Params

            params = _Params(image=images[0], prompt=prompt, orientation="auto", fit="crop")
            cog = _animate_cog(modal_interaction)
            await _run(
                modal_interaction,
                cog.begin(
                    modal_interaction,
                    params,
                    model=None,
                    duration=seconds,
                    resolution=None,
                    note=note,
                ),
            )

        await interaction.response.send_modal(
            PromptModal(
                title=_t("Animate image"),
                prompt="",
                durations=durations,
                duration=None,
                on_submit=submitted,
                language=member_language(interaction),
            )
        )


def _is_image(attachment: discord.Attachment) -> bool:
    content_type = (attachment.content_type or "").lower()
    if content_type.startswith("image/"):
        return True
    return attachment.filename.lower().endswith(_IMAGE_SUFFIXES)


async def setup(bot: AnimateBot) -> None:
    await bot.add_cog(Results(bot))
