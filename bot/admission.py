"""The one way a job starts: checks → reserve money → fit → record → announce → submit.

Every entry point (the slash command, a confirm click, and later buttons and the context menu)
calls `quote()` to learn what the request would cost and whether the member must confirm, then
`admit()` to spend. Discord-free: the caller passes who asks, where, and how to announce.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Collection, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bot.catalog import ModelSpec
from bot.config import Settings
from bot.errors import InputRejected, ProviderCreditsError, ProviderError
from bot.guild_settings import GuildConfig, GuildSettings, ServerPaused
from bot.i18n import Message, _t, _tn, join
from bot.jobs import Job
from bot.model_health import ModelHealth, ModelUnavailable, rejects_model, working_labels
from bot.service import AnimateRequest, Clock, Conversation, JobService, check_end_frame
from bot.spending import LimitStatus, Spending, money

log = logging.getLogger(__name__)

# After the provider answers "out of credits", new submissions wait this long bot-wide (jobs
# already paid for keep polling). Long enough not to hammer an empty account, short enough that
# a top-up is noticed soon.
CREDITS_PAUSE_SECONDS = 15 * 60


@dataclass(frozen=True)
class Requester:
    """Who asks, and where: what the limits and access rules are checked against."""

    user_id: int
    guild_id: int | None
    channel_ids: Collection[int]
    """The channel, and in a thread also its parent (access lists name channels)."""
    role_ids: Collection[int] = ()
    existing_channels: Collection[int] | None = None
    """The server's live channels and roles, when known: deleted ones drop out of the lists."""
    existing_roles: Collection[int] | None = None


@dataclass(frozen=True)
class Quote:
    """What a request would be and cost, before anything is spent."""

    spec: ModelSpec
    duration: int
    resolution: str
    estimate_usd: float | None
    needs_confirmation: bool
    limits: tuple[LimitStatus, ...]

    def left_line(self) -> Message:
        """What the member has left, e.g. "Left: $4.80 your daily allowance; $18.80 your
        monthly allowance (days and months in UTC)."; "" when no limit applies."""
        parts = [
            _t("{amount} {limit}", amount=money(status.left_usd), limit=status.label)
            for status in self.limits
            if status.left_usd is not None
        ]
        if not parts:
            return ""
        return _t("Left: {amounts} (days and months in UTC).", amounts=join(parts, "; "))


# Tells every server with a log channel about a bot-wide event (credits out, a model gone); called
# once per event, by the process that noticed it first.
# The notice is a Message: each server reads it in its own language.
ServerNotice = Callable[[Message], Awaitable[None]]


class Admission:
    def __init__(
        self,
        *,
        settings: Settings,
        service: JobService,
        spending: Spending,
        guild_settings: GuildSettings,
        clock: Clock,
        notify_servers: ServerNotice | None = None,
        models: ModelHealth | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.spending = spending
        self.guild_settings = guild_settings
        self.clock = clock
        self.notify_servers = notify_servers
        # Models the provider lately refused; the notice goes to the same place as credits.
        self.models = models

    async def quote(
        self,
        requester: Requester,
        *,
        prompt: str,
        model: str | None,
        duration: int | None,
        resolution: str | None,
        has_end_image: bool = False,
    ) -> Quote:
        """The cheap checks, in the member's order of interest; raises InputRejected."""
        config = await self.guild_settings.get(requester.guild_id)
        self._check_access(config, requester)
        if model is None and requester.guild_id is not None:
            model = config.default_model.value
            if resolution is None and config.default_resolution.own:
                resolution = config.default_resolution.value
            if duration is None and config.default_duration.own:
                duration = config.default_duration.value
        spec, duration, resolution = self.service.resolve_choices(
            model=model, duration=duration, resolution=resolution, prompt=prompt
        )
        check_end_frame(spec, has_end_image=has_end_image)
        if self.models is not None:
            await self.models.check(spec.id, now=self.clock.now())
        # Early and cheap; the reservation checks it again atomically.
        await self.service.check_quota(requester.user_id, config.max_active.value)
        estimate = self.spending.estimate(spec, duration, resolution)
        limits = await self.spending.limits(
            requester_id=requester.user_id,
            guild_id=requester.guild_id,
            now=self.clock.now(),
            role_ids=requester.role_ids,
        )
        return Quote(
            spec=spec,
            duration=duration,
            resolution=resolution,
            estimate_usd=estimate,
            needs_confirmation=config.needs_confirmation(estimate),
            limits=tuple(limits),
        )

    async def admit(
        self,
        requester: Requester,
        quote: Quote,
        request: AnimateRequest,
        announce: Callable[[Job], Coroutine[Any, Any, Conversation]],
    ) -> Job:
        """Spend: reserve the estimate against every limit, fit, record, announce, submit.

        On any failure before the provider has the job, the reservation is released, so a
        refused or broken request costs the member nothing.
        """
        # Settings may have changed since the quote (a confirm waits up to minutes).
        config = await self.guild_settings.get(requester.guild_id)
        self._check_access(config, requester)
        reservation = await self.spending.reserve(
            requester_id=requester.user_id,
            guild_id=requester.guild_id,
            estimate_usd=quote.estimate_usd,
            now=self.clock.now(),
            role_ids=requester.role_ids,
            model_label=quote.spec.label,
            resolution=quote.resolution,
        )
        request = dataclasses.replace(
            request,
            model=quote.spec.id,
            duration=quote.duration,
            resolution=quote.resolution,
            max_active=config.max_active.value,  # a server's own limit, not the bot's default
        )
        try:
            prepared = await self.service.prepare(request)
            job = await self.service.record(prepared)
        except BaseException:
            await self._release(reservation.id, "not accepted")
            raise
        # From here the ledger follows the job: reconcile() settles or refunds it when it ends,
        # even if this process dies first.
        await self.spending.attach(reservation.id, job.id)
        try:
            return await self.service.announce_and_submit(job, announce)
        except ProviderCreditsError:
            await self._credits_exhausted()
            await self._release(reservation.id, "refused at submit: out of credits")
            raise
        except ProviderError as exc:
            await self._release(reservation.id, "refused at submit")
            if self.models is not None and rejects_model(exc):
                raise await self._model_gone(self.models, quote) from exc
            raise
        except Exception:
            await self._release(reservation.id, "refused at submit or not announced")
            raise

    async def _model_gone(self, models: ModelHealth, quote: Quote) -> ModelUnavailable:
        """The provider refused the model itself: off for a while; servers told once."""
        now = self.clock.now()
        newly = await models.mark_unavailable(quote.spec.id, now=now)
        working = working_labels(await models.unavailable(now=now))
        if newly:
            await self._notify(
                _t(
                    "⚠️ The video service refused {model}: it is off for new videos for an "
                    "hour. Videos already being made are not affected. Models that work: "
                    "{working}.",
                    model=quote.spec.label,
                    working=", ".join(working) or _t("none right now"),
                )
            )
        return ModelUnavailable(quote.spec.label, working)

    async def _release(self, reservation_id: int, note: str) -> None:
        try:
            await self.spending.release(reservation_id, now=self.clock.now(), note=note)
        except Exception:
            # reconcile() / release_unlinked() close it later; never hide the original error.
            log.warning("reservation %s: release failed; left to reconcile", reservation_id)

    def _check_access(self, config: GuildConfig, requester: Requester) -> None:
        if requester.guild_id is None:
            return  # in DMs only the member and bot limits apply
        if config.paused:
            raise ServerPaused()
        refusal = config.access.refusal(
            channel_ids=requester.channel_ids,
            role_ids=requester.role_ids,
            existing_channels=requester.existing_channels,
            existing_roles=requester.existing_roles,
        )
        if refusal is not None:
            raise InputRejected(refusal)

    async def _credits_exhausted(self) -> None:
        now = self.clock.now()
        until = now + timedelta(seconds=CREDITS_PAUSE_SECONDS)
        started = await self.spending.pause_submissions(until, now=now)
        log.error("provider account out of credits; new submissions paused until %s", until)
        if started:
            await self._notify(
                _tn(
                    "⚠️ The bot's video service account is out of credits: new videos are "
                    "paused for {count} minute. Videos already being made will still arrive.",
                    "⚠️ The bot's video service account is out of credits: new videos are "
                    "paused for {count} minutes. Videos already being made will still arrive.",
                    CREDITS_PAUSE_SECONDS // 60,
                )
            )

    async def _notify(self, text: Message) -> None:
        if self.notify_servers is None:
            return
        try:
            await self.notify_servers(text)
        except Exception:
            first = str(text).splitlines()[0]  # English, for the log
            log.warning("could not tell the servers: %s", first, exc_info=True)

    async def settle_finished(self) -> int:
        """Settle or refund the reservations of jobs that ended (each background pass)."""
        now = self.clock.now()
        closed = await self.spending.reconcile(
            now=now, refund_failed_jobs=self.settings.refund_failed_jobs
        )
        closed += await self.spending.release_unlinked(
            now=now, older_than_seconds=max(600.0, 4 * self.settings.lease_seconds)
        )
        return closed
