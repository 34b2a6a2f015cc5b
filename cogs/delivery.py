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
from bot.i18n import Message, Money, _t, from_stored, join, render
from bot.jobs import Job, JobState, Outcome
from bot.provider import DownloadedVideo
from bot.service import DestinationGone, UploadRejected
from bot.timing import Eta, about_seconds
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
_TITLES: dict[str, Message] = {
    "queued": join(["⏳", _t("Queued")]),
    "generating": join(["🎬", _t("Generating")]),
    "posting": join(["📤", _t("Posting the video")]),
    "done": join(["✅", _t("Done")]),
    "failed": join(["⚠️", _t("No video this time")]),
    "cancelled": join(["✖️", _t("Cancelled")]),
}
# The words for the job's settings (the values stored are these English keys).
_SETTING_WORDS: dict[str, Message] = {
    "auto": _t("auto"),
    "landscape": _t("landscape"),
    "portrait": _t("portrait"),
    "crop": _t("crop"),
    "pad": _t("pad"),
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


def settings_line(job: Job) -> Message:
    spec = CATALOG.get(job.model)
    return _t(
        "{model} · {resolution} {orientation} · {duration} s · {fit}",
        model=spec.label if spec else job.model,
        resolution=job.resolution,
        orientation=_SETTING_WORDS.get(job.orientation, job.orientation),
        duration=job.duration,
        fit=_SETTING_WORDS.get(job.fit, job.fit),
    )


def _ts(moment: datetime, style: str = "R") -> str:
    # Discord renders <t:…:R> as a live "2 minutes ago": elapsed time without extra edits.
    return f"<t:{int(moment.timestamp())}:{style}>"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def eta_text(eta: Eta) -> Message:
    """The honest ETA: the usual time for these settings, or that this one is slow."""
    # Rounded as much as a typical time deserves, rendered for the reader ("1 min 40 sec").
    usual = about_seconds(eta.usual_seconds)
    if eta.overdue:
        return _t("Taking longer than usual (usually about {usual}); still checking.", usual=usual)
    return _t(
        "Usually ready in about {usual}, so expected {time}.",
        usual=usual,
        time=_ts(eta.expected_at),
    )


def status_embed(job: Job, eta: Eta | None = None) -> discord.Embed:
    """`eta` (bot.timing.CompletionTimes.eta) is shown while the video is generating. In the
    language of the job's public messages (`Job.language_for_delivery`)."""
    language = job.language_for_delivery()

    def tr(message: object) -> str:
        return render(message, language)

    current = phase(job)
    embed = discord.Embed(
        title=tr(_TITLES[current]), description=_clip(job.prompt, 1000), colour=_COLOURS[current]
    )
    embed.add_field(name=tr(_t("Requested by")), value=f"<@{job.requester_id}>", inline=True)
    embed.add_field(name=tr(_t("Settings")), value=tr(settings_line(job)), inline=True)
    if job.estimated_usd is not None:
        embed.add_field(
            name=tr(_t("Estimated cost")), value=tr(Money(job.estimated_usd)), inline=True
        )
    status: Message | None = None
    if current == "queued":
        waiting = (
            _t("The video service is busy; the bot will keep trying.")
            if job.provider_status == "rate_limited"
            else _t("Waiting for the video service.")
        )
        status = join([waiting, _t("Requested {time}.", time=_ts(job.created_at))])
    elif current == "generating":
        started = _t("Generating, started {time}.", time=_ts(job.submitted_at or job.created_at))
        status = join([started, eta_text(eta)]) if eta is not None else started
    elif current == "done":
        status = _t("Your video has been posted.")
    elif current == "failed":
        why = from_stored(job.error_message) or _t("Unknown reason.")
        embed.add_field(name=tr(_t("Why")), value=_clip(tr(why), 1000), inline=False)
        if job.result_url is not None:
            _add_link(embed, job.result_url, language)
    elif current == "cancelled":
        who = (
            _t("Cancelled by <@{user}>.", user=job.cancelled_by)
            if job.cancelled_by is not None
            else _t("Cancelled by a member.")
        )
        charge = (
            _t("The video service already had it, so it may still be charged.")
            if job.provider_job_id is not None
            else _t("It was never sent, so nothing was spent.")
        )
        status = join([who, charge])
    if status is not None:
        embed.add_field(name=tr(_t("Status")), value=tr(status), inline=False)
    delivery_note = from_stored(job.delivery_note)
    if delivery_note:
        embed.add_field(name=tr(_t("Note")), value=_clip(tr(delivery_note), 1000), inline=False)
    embed.set_thumbnail(url=f"attachment://{FIRST_FRAME_FILENAME}")
    embed.set_footer(text=tr(_t("Job {job}", job=job.id)))
    return embed


def thread_name(prompt: str, language: str = "en") -> str:
    name = " ".join(prompt.split()) or render(_t("Your video"), language)
    return _clip(name, 90)


def result_footer(job: Job, language: str | None = None) -> str:
    """Marks a result message so a restarted bot can see it was already posted (also by its
    Delete button's custom id, which no translation changes)."""
    return render(_t("Result of job {job}", job=job.id), language or job.language_for_delivery())


def requester_only(job: Job) -> discord.AllowedMentions:
    return discord.AllowedMentions(
        everyone=False, roles=False, replied_user=False, users=[discord.Object(id=job.requester_id)]
    )


# Discord's limits: a link button's URL, an embed's title URL, an embed's description.
BUTTON_URL_LIMIT = 512
EMBED_URL_LIMIT = 2048
EMBED_DESCRIPTION_LIMIT = 4096


def _add_link(embed: discord.Embed, url: str, language: str) -> None:
    """The provider's link in the embed, whatever its length (a field holds 1,024 characters)."""
    if len(url) <= EMBED_URL_LIMIT:
        embed.url = url  # the title becomes the link
        if embed.title is None:
            embed.title = "▶️ " + render(_t("Open the video"), language)
    link = render(_t("[Open the video]({url})", url=url), language)
    if len(url) <= 1000:
        embed.add_field(name=render(_t("Link"), language), value=link, inline=False)
    elif len(link) + len(embed.description or "") + 2 <= EMBED_DESCRIPTION_LIMIT:
        embed.description = f"{link}\n\n{embed.description or ''}".rstrip()


def result_embed(
    job: Job,
    *,
    extra: Message | None = None,
    link: str | None = None,
    language: str | None = None,
) -> discord.Embed:
    """A result's embed, in the job's public language unless `language` says otherwise (/show
    posts it where it is used)."""
    language = language or job.language_for_delivery()
    embed = discord.Embed(description=_clip(job.prompt, 1500), colour=_COLOURS[phase(job)])
    embed.add_field(
        name=render(_t("Settings"), language),
        value=render(settings_line(job), language),
        inline=False,
    )
    for note in (extra, from_stored(job.delivery_note)):
        if note:
            embed.add_field(
                name=render(_t("Note"), language),
                value=_clip(render(note, language), 1000),
                inline=False,
            )
    if link is not None:
        _add_link(embed, link, language)
    embed.set_footer(text=result_footer(job, language))
    return embed


def link_item(url: str, language: str) -> discord.ui.Button[Any] | None:
    """A button that opens the video, where Discord allows one (URLs up to 512 characters)."""
    if len(url) > BUTTON_URL_LIMIT:
        return None
    return discord.ui.Button(label=render(_t("Open the video"), language), url=url)


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
        # The footer as posted (in the job's language, or English from before translations),
        # or the Delete button, whose custom id no translation changes.
        markers = {result_footer(job), result_footer(job, "en")}
        delete_id = f"animate:delete:{job.id}"
        destination = await self._destination(job)
        # Newest first: a result posted by a dead attempt is among the latest messages.
        async for message in destination.history(limit=200):
            if me is not None and message.author.id != me.id:
                continue
            if any(embed.footer.text in markers for embed in message.embeds):
                return message.id
            if any(_has_custom_id(row, delete_id) for row in message.components):
                return message.id
        return None

    def _greeting(self, job: Job, text: Message) -> str:
        language = job.language_for_delivery()
        if job.delivery_target != "dm":
            return render(join([f"<@{job.requester_id}>", text]), language)
        where = jump_url(job)
        origin = _t("(you asked for it here: {url})", url=where) if where else ""
        return render(join([text, origin]), language)

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
        view = result_view(
            job, link=link_item(link, job.language_for_delivery()) if link is not None else None
        )
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
        self,
        job: Job,
        video: DownloadedVideo,
        *,
        note: Message | None = None,
        link: str | None = None,
    ) -> int:
        if video.size > job.upload_limit_bytes:
            raise UploadRejected("larger than the upload limit")
        file = discord.File(video.path, filename=f"animate-{job.id}.mp4")
        try:
            message_id = await self._send(
                job,
                self._greeting(job, _t("your video is ready!")),
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

    async def post_link(self, job: Job, url: str, reason: Message) -> int:
        # The link goes in the embed and a button, never in the 2,000-character content.
        message_id = await self._send(
            job,
            self._greeting(job, _t("your video is ready.")),
            result_embed(job, extra=reason, link=url),
            link=url,
        )
        await self._posted(job, "delivered as a link")
        return message_id

    async def post_failure(self, job: Job, reason: Message) -> int:
        message_id = await self._send(
            job,
            self._greeting(job, _t("sorry, no video this time.")),
            result_embed(job, extra=reason),
        )
        await self._posted(job, "failed")
        return message_id


def _has_custom_id(component: Any, wanted: str) -> bool:
    """Whether a message component (an action row and what it holds) has custom id `wanted`."""
    if getattr(component, "custom_id", None) == wanted:
        return True
    return any(_has_custom_id(child, wanted) for child in getattr(component, "children", ()))


def first_frame_file(jpeg: bytes) -> discord.File:
    return discord.File(io.BytesIO(jpeg), filename=FIRST_FRAME_FILENAME)
