"""The job service: accept → fit → record → submit → poll → deliver, exactly once.

Discord-free. The cog calls `prepare()`, `record()`, `set_conversation()` and `submit()`; the
background loop calls `run_due()`;
results go out through a `Delivery` that the Discord layer implements. Time comes from an
injectable clock so tests and benchmarks never sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import random
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from PIL import Image

from bot.catalog import CATALOG, ModelSpec
from bot.config import Settings
from bot.errors import (
    BotError,
    GenerationFailed,
    InputRejected,
    JobTimedOut,
    ProviderAuthError,
    ProviderCreditsError,
    ProviderError,
    ProviderNotFound,
    ProviderRateLimited,
    TooManyActiveJobs,
    VideoTooLarge,
    user_message,
)
from bot.i18n import Message, Number, _t, from_stored, join, to_stored
from bot.imaging import (
    FitMode,
    ImageFitter,
    ImageLimits,
    OrientationChoice,
    PreparedImage,
    jpeg_data_uri,
)
from bot.jobs import Job, JobState, NewJob, Outcome
from bot.metrics import NO_METRICS, Metrics
from bot.polling import FixedPollSchedule, PollSchedule
from bot.provider import DownloadedVideo, GenerationState, ProviderClient, VideoLinkRefused
from bot.store import JobStore
from bot.timing import CompletionTimes, Estimate

log = logging.getLogger(__name__)

T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time (lease renewals run on it)."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class DestinationGone(BotError):
    """The place results go no longer exists or is closed to the bot (thread deleted, bot
    removed from the channel, DMs closed); the service moves on to the next place."""


class LeaseLost(BotError):
    """Another worker took over a job this worker was working on; stop before doing it twice."""


@dataclass(frozen=True)
class Conversation:
    """Where a job's status message and results live, once announced in Discord."""

    thread_id: int | None
    status_message_id: int | None


class UploadRejected(BotError):
    """Discord refused the file (too large for this server); the link is posted instead."""


class Delivery(Protocol):
    """What the Discord layer does for the service. Every call may raise; the service retries."""

    async def show_status(self, job: Job) -> None:
        """Edit the job's status message in place to reflect `job` (state, outcome, timing)."""

    async def find_delivered(self, job: Job) -> int | None:
        """The id of a result message already posted for this job (after a crash), else None."""

    async def post_video(
        self,
        job: Job,
        video: DownloadedVideo,
        *,
        note: Message | None = None,
        link: str | None = None,
    ) -> int:
        """Upload the mp4; return the message id. Raise UploadRejected if it is too large.

        `note` and `link` (the provider's original) accompany a re-encoded video."""

    async def post_link(self, job: Job, url: str, reason: Message) -> int:
        """Post the provider's link instead of the file, saying why."""

    async def post_failure(self, job: Job, reason: Message) -> int:
        """Tell the requester in plain words that no video is coming, and why."""


# Every post_* call goes to the job's destination (`Job.delivery_channel_id`, or the requester's
# DMs when `Job.delivery_target` is "dm") and raises DestinationGone when that place is gone.


@dataclass(frozen=True)
class InteractionAnswer:
    """How to answer through an interaction's webhook when the bot cannot post itself."""

    token: str = field(repr=False)
    """A credential: never logged, cleared from the job once it is done."""
    expires_at: datetime
    origin_guild_id: int | None
    """The server the command came from (the bot is not in it), for the link back only."""


@dataclass(frozen=True)
class AnimateRequest:
    """A member's `/animate`, after Discord-specific parsing."""

    image: bytes
    prompt: str
    requester_id: int
    guild_id: int | None
    channel_id: int
    upload_limit_bytes: int
    model: str | None = None
    duration: int | None = None
    resolution: str | None = None
    orientation: OrientationChoice = "auto"
    fit: FitMode = "crop"
    interaction_id: int | None = None
    parent_job_id: int | None = None
    """Extend: the job whose last frame is `image`."""
    chain_length: int = 1
    already_fitted: bool = False
    """`image` is a frame this bot fitted before (Again, Edit prompt): used as it is when it
    already has the preset's size, so repeated Agains never lose quality to re-encoding."""
    max_active: int | None = None
    """The member's unfinished-videos limit in force where they asked (a server may set its
    own; 0: none); None: MAX_ACTIVE_JOBS_PER_USER."""
    end_image: bytes | None = None
    """An end frame, for models that take a last frame; fitted like the first."""
    answer_through: InteractionAnswer | None = None
    """Set when the bot cannot post where the command was used (a user install): results go
    through the interaction's follow-ups while its token lives, then by DM."""
    member_language: str | None = None
    """The requester's language (bot/i18n.py), for private words and DMs about the job."""
    public_language: str | None = None
    """The language of public messages where the command was used (the server's preferred)."""


@dataclass(frozen=True)
class PreparedRequest:
    """A request whose choices and image have been checked and fitted. Nothing is spent yet."""

    request: AnimateRequest
    spec: ModelSpec
    duration: int
    resolution: str
    image: PreparedImage
    end_image: PreparedImage | None = None

    @property
    def estimated_usd(self) -> float | None:
        return self.spec.estimate_usd(duration=self.duration, resolution=self.resolution)


# When a submit request may have reached the provider but its answer was never recorded, the job
# is resubmitted only SUBMIT_IN_FLIGHT_GRACE_SECONDS after the submitting worker's lease ran out.
# The provider has no idempotency key, so a resubmit may pay twice: meanwhile a live worker keeps
# retrying the write of the provider's id (JobService._durably) and stops before the grace ends,
# so only a worker that is truly gone is replaced. Without a submit in flight, an expired lease is
# taken at once.
DURABLE_WRITE_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 30.0, 30.0, 30.0, 30.0)


class JobService:
    MAX_DELIVERY_ATTEMPTS = 8
    DELIVERY_RETRY_BASE_SECONDS = 15.0

    def __init__(
        self,
        *,
        settings: Settings,
        store: JobStore,
        provider: ProviderClient,
        clock: Clock | None = None,
        worker_id: str | None = None,
        rng: Callable[[], float] = random.random,
        retry_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        fitter: ImageFitter | None = None,
        timing: CompletionTimes | None = None,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.provider = provider
        self.clock: Clock = clock or SystemClock()
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        schedule = FixedPollSchedule if settings.poll_schedule == "fixed" else PollSchedule
        self.schedule: PollSchedule = schedule(settings, rng)
        self._rng = rng
        # How long each model really takes: drives the schedule and the status message's ETA.
        self.timing = timing or CompletionTimes(store, now=self.clock.now)
        self.limits = ImageLimits(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            min_side=settings.min_image_side,
        )
        self._retry_sleep = retry_sleep
        self.fitter = fitter or ImageFitter()
        self._poll_slots = asyncio.Semaphore(settings.max_concurrent_polls)
        # Deliveries (download + upload) run as tasks of their own, so a slow one never holds
        # up polling; at most max_concurrent_deliveries of them at once in this process.
        self._deliveries: dict[int, asyncio.Task[None]] = {}
        self._stopping = False
        # Downloaded videos kept between delivery attempts, so a retry does not fetch again.
        self._videos: dict[int, DownloadedVideo] = {}
        self._encoded: dict[int, DownloadedVideo] = {}
        # Told about every job this process finished delivering (the Discord layer posts an
        # Extend chain's joined video from here).
        self._delivered_listeners: list[Callable[[Job], Awaitable[None]]] = []
        # Re-encoding takes both cores: one at a time in the process (deliveries and joined
        # chains share it) keeps polling and Discord responsive.
        self.encode_slots = asyncio.Semaphore(1)
        self._video_dir: Path | None = None
        # A poll that arrives this much after its planned time is late because of us (down,
        # backlogged); the lateness does not count against the member's timeout.
        self._late_grace = max(2 * settings.poll_tick_seconds, 5.0)

    # --- accepting a request -------------------------------------------------------------------

    def resolve_choices(
        self, *, model: str | None, duration: int | None, resolution: str | None, prompt: str
    ) -> tuple[ModelSpec, int, str]:
        """Fill defaults and check the choices against the model. Cheap; raises InputRejected."""
        spec = CATALOG.get(model or self.settings.default_model)
        if spec is None:
            raise InputRejected(
                _t("Unknown model {model}. Choose one from the list.", model=repr(model))
            )
        if resolution is None:
            same_model = spec.id == self.settings.default_model
            resolution = self.settings.default_resolution if same_model else spec.default_resolution
            if resolution not in spec.resolutions:
                resolution = spec.default_resolution
        if duration is None:
            duration = self.settings.default_duration
            if duration not in spec.durations:
                duration = spec.default_duration
        spec.check(prompt=prompt, duration=duration, resolution=resolution)
        return spec, duration, resolution

    def _active_limit(self, limit: int | None) -> int:
        """The unfinished-videos limit: the one in force here, else MAX_ACTIVE_JOBS_PER_USER."""
        return self.settings.max_active_jobs_per_user if limit is None else limit

    async def check_quota(self, requester_id: int, limit: int | None = None) -> None:
        """Refuse a member already at their unfinished-videos limit (0: no limit)."""
        limit = self._active_limit(limit)
        if limit > 0 and await self.store.count_active(requester_id) >= limit:
            raise TooManyActiveJobs(limit)

    async def prepare(self, request: AnimateRequest) -> PreparedRequest:
        """Validate everything and fit the image (in a thread). Spends nothing."""
        spec, duration, resolution = self.resolve_choices(
            model=request.model,
            duration=request.duration,
            resolution=request.resolution,
            prompt=request.prompt,
        )
        await self.check_quota(request.requester_id, request.max_active)
        check_end_frame(spec, has_end_image=request.end_image is not None)
        preset = spec.preset(resolution)
        if request.already_fitted:
            reused = await asyncio.to_thread(
                _reuse_fitted, request.image, preset.size(_orientation_of(request.orientation))
            )
            if reused is not None:
                return PreparedRequest(request, spec, duration, resolution, reused)
        # One memory budget for every fit in the process: members beyond it wait their turn.
        image = await self.fitter.fit(
            request.image,
            preset=spec.preset(resolution),
            orientation=request.orientation,
            fit=request.fit,
            limits=self.limits,
        )
        end_image = None
        if request.end_image is not None:
            # The same frame as the first: the clip must end where it began, size-wise.
            end_image = await self.fitter.fit(
                request.end_image,
                preset=preset,
                orientation=image.orientation,
                fit=request.fit,
                limits=self.limits,
            )
        return PreparedRequest(request, spec, duration, resolution, image, end_image)

    async def start(
        self,
        prepared: PreparedRequest,
        announce: Callable[[Job], Coroutine[Any, Any, Conversation]],
    ) -> Job:
        """Record, announce and submit a prepared request (without money checks: tests)."""
        return await self.announce_and_submit(await self.record(prepared), announce)

    async def announce_and_submit(
        self, job: Job, announce: Callable[[Job], Coroutine[Any, Any, Conversation]]
    ) -> Job:
        """Announce a recorded job (the Discord layer posts the status message), then submit.

        The submit lease is renewed for the whole time, so however slow the announcement (Discord
        429 waits, say), no background pass can submit the job a second time.
        """
        renew = self._submit_renewer(job.id)
        try:
            conversation = await self._while_holding(renew, announce(job))
        except Exception:
            # The user hears that it failed, so it must not be submitted (and charged) later.
            # (A cancelled command, at shutdown, is instead submitted by the next start.)
            await self.abandon(job, _t("the status message could not be posted"))
            raise
        job = await self.set_conversation(
            job,
            thread_id=conversation.thread_id,
            status_message_id=conversation.status_message_id,
        )
        return await self.submit(job)

    async def record(self, prepared: PreparedRequest) -> Job:
        """Store the accepted job before anything is spent, so nothing can be lost after this."""
        req = prepared.request
        now = self.clock.now()
        job = await self.store.create(
            NewJob(
                requester_id=req.requester_id,
                guild_id=req.guild_id,
                channel_id=req.channel_id,
                model=prepared.spec.id,
                prompt=req.prompt,
                duration=prepared.duration,
                resolution=prepared.resolution,
                orientation=prepared.image.orientation,
                fit=req.fit,
                image_width=prepared.image.width,
                image_height=prepared.image.height,
                image_data=prepared.image.jpeg,
                upload_limit_bytes=req.upload_limit_bytes,
                estimated_usd=prepared.estimated_usd,
                interaction_id=req.interaction_id,
                parent_job_id=req.parent_job_id,
                chain_length=req.chain_length,
                end_image_data=prepared.end_image.jpeg if prepared.end_image else None,
                member_language=req.member_language,
                public_language=req.public_language,
                **_answer_fields(req.answer_through),
            ),
            now=now,
            # Leased to us from the start: if we crash before submitting, the loop submits it
            # after the lease; until then the loop leaves it to us.
            submit_lease_until=now + timedelta(seconds=self.settings.lease_seconds),
            worker=self.worker_id,
        )
        log.info(
            "job %s: recorded (model %s, %s, %ss)", job.id, job.model, job.resolution, job.duration
        )
        # Checked again now that the job counts: two requests racing past check_quota must not
        # both get through. Both may be refused; neither is charged.
        limit = self._active_limit(req.max_active)
        if limit > 0 and await self.store.count_active(req.requester_id) > limit:
            await self.abandon(job, _t("too many videos in progress"))
            raise TooManyActiveJobs(limit)
        return job

    async def abandon(self, job: Job, reason: Message) -> None:
        """Give up on a recorded job that was never submitted, so the loop will not submit it.

        For when the Discord side fails after `record` (the status message could not be posted,
        say) and the user has been told so: nothing is charged for a request that failed.
        """
        abandoned = await self.store.transition(
            job.id,
            from_states=[JobState.SUBMITTING],
            to_state=JobState.DONE,
            now=self.clock.now(),
            outcome=Outcome.FAILED,
            error_message=to_stored(reason),
            image_data=None,
            end_image_data=None,
            next_poll_at=None,
            interaction_token=None,
        )
        if abandoned is not None:
            self.metrics.job_finished(outcome=Outcome.FAILED, model=job.model)
            log.info("job %s: abandoned before submit (%s)", job.id, reason)

    async def cancel(self, job_id: int, *, actor_id: int) -> Job | None:
        """Stop a job that is waiting or generating; None when it is too late (already finished).

        Before the provider has it nothing is spent (the ledger releases it); after, the bot
        stops waiting and never posts the video, but the provider may still charge for it (the
        ledger keeps the charge).
        """
        cancelled = await self.store.transition(
            job_id,
            from_states=[JobState.SUBMITTING, JobState.POLLING],
            to_state=JobState.DONE,
            now=self.clock.now(),
            outcome=Outcome.CANCELLED,
            cancelled_by=actor_id,
            finished_at=self.clock.now(),
            next_poll_at=None,
            image_data=None,
            end_image_data=None,
        )
        if cancelled is not None:
            self.metrics.job_finished(outcome=Outcome.CANCELLED, model=cancelled.model)
            log.info("job %s: cancelled by %s", job_id, actor_id)
        return cancelled

    async def forget_old_images(self) -> int:
        """Retention: drop kept pictures older than IMAGE_RETENTION_DAYS."""
        cutoff = self.clock.now() - timedelta(days=self.settings.image_retention_days)
        return await self.store.forget_images(older_than=cutoff)

    async def set_conversation(
        self, job: Job, *, thread_id: int | None, status_message_id: int | None
    ) -> Job:
        """Remember where the job's status message and results live."""
        updated = await self.store.transition(
            job.id,
            from_states=[JobState.SUBMITTING],
            now=self.clock.now(),
            thread_id=thread_id,
            status_message_id=status_message_id,
        )
        return updated or job

    async def submit(self, job: Job) -> Job:
        """Send a recorded job to the provider. Raises ProviderError if it was refused.

        Only the worker holding the job's submit lease sends it, and it checks that it still
        holds it right before the request leaves; the lease is renewed while the call runs.
        """
        spec = CATALOG.get(job.model)
        if spec is None:
            await self._conclude(
                job,
                Outcome.FAILED,
                error=_t("The model {model} is no longer offered by this bot.", model=job.model),
                from_states=[JobState.SUBMITTING],
            )
            return (await self.store.get(job.id)) or job
        if job.image_data is None:
            raise RuntimeError(f"job {job.id} has no image left to submit")
        image_url = await asyncio.to_thread(jpeg_data_uri, job.image_data)  # ~1 MB of base64
        estimate = await self._estimate(job)  # read now: nothing may delay recording the id
        last_image_url = (
            await asyncio.to_thread(jpeg_data_uri, job.end_image_data)
            if job.end_image_data is not None
            else None
        )
        body = spec.build_request(
            prompt=job.prompt,
            image_url=image_url,
            duration=job.duration,
            resolution=job.resolution,
            orientation="portrait" if job.orientation == "portrait" else "landscape",
            last_image_url=last_image_url,
        )
        held = await self.store.hold_submit(
            job.id,
            worker=self.worker_id,
            now=self.clock.now(),
            lease_seconds=self.settings.lease_seconds,
            sending=True,
        )
        if held is None:
            log.info("job %s: no longer ours to submit; leaving it", job.id)
            return (await self.store.get(job.id)) or job
        try:
            state = await self._while_holding(
                self._submit_renewer(job.id), self.provider.submit(body)
            )
        except ProviderRateLimited as exc:
            # 429 means no job was created, so waiting and trying again costs nothing.
            now = self.clock.now()
            delay = self.schedule.error_delay(max(job.submit_attempts, 1))
            log.warning(
                "job %s: provider busy on submit (%s); retrying in %.0f s",
                job.id,
                exc.message,
                delay,
            )
            updated = await self.store.transition(
                job.id,
                from_states=[JobState.SUBMITTING],
                now=now,
                provider_status="rate_limited",
                submit_sent_at=None,  # certainly not at the provider
                next_poll_at=now + timedelta(seconds=delay),
            )
            return updated or job
        except ProviderError as exc:
            log.warning("job %s: submit refused: %s", job.id, exc)
            await self._conclude(
                job, Outcome.FAILED, error=user_message(exc), from_states=[JobState.SUBMITTING]
            )
            raise
        now = self.clock.now()
        log.info("job %s: submitted as %s (%s)", job.id, state.id, state.status)
        # The provider has a paid job now: its id must reach the database, or the job would be
        # submitted (and paid for) again. Retried; the in-flight rule protects it meanwhile.
        updated = await self._durably(
            f"job {job.id}: record provider job {state.id}",
            lambda: self.store.transition(
                job.id,
                from_states=[JobState.SUBMITTING],
                to_state=JobState.POLLING,
                now=now,
                provider_job_id=state.id,
                provider_status=state.status,
                submitted_at=now,
                last_checked_at=now,
                waited_seconds=0.0,
                image_data=None,  # no longer needed once the provider has it
                end_image_data=None,
                next_poll_at=now + timedelta(seconds=self.schedule.first_delay(estimate)),
            ),
        )
        if updated is None:
            current = await self.store.get(job.id)
            if current is not None and current.outcome == Outcome.CANCELLED:
                # Cancelled while the request was out: the provider has it (and may charge), so
                # its id is kept for the ledger, but nothing is polled or posted.
                await self.store.transition(
                    job.id,
                    from_states=[JobState.DONE],
                    now=now,
                    provider_job_id=state.id,
                    provider_status=state.status,
                    submitted_at=now,
                )
                log.info("job %s: cancelled during submit; %s is left alone", job.id, state.id)
                return (await self.store.get(job.id)) or current
            raise RuntimeError(f"job {job.id} left 'submitting' while being submitted")
        if state.kind != "pending":
            updated = await self._apply_state(updated, state)
        return updated

    async def _durably(self, what: str, write: Callable[[], Awaitable[Job | None]]) -> Job | None:
        """Run a database write that must not be lost, retrying through database errors.

        Retries stop before another worker could take the job over (lease + in-flight grace).
        """
        budget = self.settings.lease_seconds + self.settings.submit_in_flight_grace_seconds
        started = self.clock.now()
        for attempt, delay in enumerate((*DURABLE_WRITE_DELAYS, None)):
            try:
                return await write()
            except Exception as exc:
                spent = (self.clock.now() - started).total_seconds()
                if delay is None or spent + delay >= budget:
                    log.error("%s: gave up after %d database errors", what, attempt + 1)
                    raise
                log.warning(
                    "%s: database error (%s); retrying in %.0f s", what, type(exc).__name__, delay
                )
                await self._retry_sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- leases ----------------------------------------------------------------------------------

    def _submit_renewer(self, job_id: int) -> Callable[[], Awaitable[bool]]:
        async def renew() -> bool:
            held = await self.store.hold_submit(
                job_id,
                worker=self.worker_id,
                now=self.clock.now(),
                lease_seconds=self.settings.lease_seconds,
            )
            return held is not None

        return renew

    def _poll_renewer(self, job_id: int) -> Callable[[], Awaitable[bool]]:
        async def renew() -> bool:
            return await self.store.hold_poll(
                job_id,
                worker=self.worker_id,
                now=self.clock.now(),
                lease_seconds=self.settings.lease_seconds,
            )

        return renew

    def _delivery_renewer(self, job_id: int) -> Callable[[], Awaitable[bool]]:
        async def renew() -> bool:
            return await self.store.hold_delivery(
                job_id,
                worker=self.worker_id,
                now=self.clock.now(),
                lease_seconds=self.settings.lease_seconds,
            )

        return renew

    async def _while_holding(
        self, renew: Callable[[], Awaitable[bool]], work: Coroutine[Any, Any, T]
    ) -> T:
        """Run `work`, renewing a lease every third of its length until it finishes.

        A renewal that finds the lease taken over cancels the work (LeaseLost): someone else is
        doing it now. A renewal that fails (database away) is logged and tried again.
        """
        task: asyncio.Task[T] = asyncio.ensure_future(work)
        lost = False

        async def keep() -> None:
            nonlocal lost
            while not task.done():
                await self.clock.sleep(self.settings.lease_seconds / 3)
                if task.done():
                    return
                try:
                    held = await renew()
                except Exception as exc:
                    log.warning("could not renew a lease (%s); retrying", type(exc).__name__)
                    continue
                if not held:
                    lost = True
                    task.cancel()
                    return

        keeper = asyncio.create_task(keep())
        try:
            return await task
        except asyncio.CancelledError:
            if lost and not _current_task_cancelling():
                raise LeaseLost("another worker took over") from None
            raise
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # --- the background loop -------------------------------------------------------------------

    async def run_due(self, delivery: Delivery) -> int:
        """One pass: resubmit interrupted jobs, poll due ones, start deliveries of finished ones.

        Returns how many jobs were touched. Each job is isolated: one failure never stops the
        others or the loop. Deliveries run as tasks of their own; the pass never waits for them.
        """
        now = self.clock.now()
        touched = 0
        # Claimed one at a time, right before each is sent: a claimed job waiting behind slow
        # submits would age its lease. Claims skip rows another process is claiming (no
        # collisions on PostgreSQL); an empty claim means nothing more is due.
        for _ in range(self.settings.max_concurrent_polls):
            claimed = await self.store.claim_due_submits(
                self.clock.now(),
                worker=self.worker_id,
                lease_seconds=self.settings.lease_seconds,
                limit=1,
                in_flight_grace_seconds=self.settings.submit_in_flight_grace_seconds,
            )
            if not claimed:
                break
            touched += 1
            await self._guarded(claimed[0], self._resubmit(claimed[0], delivery))
        # Claimed, not just read: another process sharing the database never polls these
        # at the same moment (the claim moves next_poll_at a lease ahead).
        due = await self.store.claim_due_polls(
            now,
            worker=self.worker_id,
            lease_seconds=self.settings.lease_seconds,
            limit=self.settings.max_concurrent_polls * 4,
        )
        touched += len(due)
        await asyncio.gather(*(self._guarded(job, self._poll(job, delivery)) for job in due))
        touched += await self._start_due_deliveries(delivery)
        return touched

    def next_pass_in(self) -> float:
        """Seconds until this process's next background pass: POLL_TICK_SECONDS on average,
        drawn afresh each time between half and one and a half of it.

        Processes sharing the database each claim what is due at their pass. With a fixed
        tick, a job's next look comes due one interval after its last answer; if another
        process's tick falls between a pass and its answers (milliseconds to a few hundred),
        every look comes due just after that other process has looked, and the same process
        takes it again. Processes started together stayed so for good (bench/load.py: one took
        2,101 polls, the other 17). With drawn pass times, whichever looks first takes the work
        and neither looks first more often.
        """
        return self.settings.poll_tick_seconds * (0.5 + self._rng())

    async def _start_due_deliveries(self, delivery: Delivery, *, finishing: int = 0) -> int:
        """Claim finished jobs for the free delivery slots (`finishing`: slots whose delivery
        is ending right now) and start posting them; how many were started."""
        free = self.settings.max_concurrent_deliveries - len(self._deliveries) + finishing
        if free <= 0 or self._stopping:
            return 0
        # Claimed in one go, skipping rows another process is claiming; the ones this process
        # is posting already are never taken over by itself.
        claimed = await self.store.claim_due_deliveries(
            self.clock.now(),
            worker=self.worker_id,
            lease_seconds=self.settings.lease_seconds,
            limit=free,
            skip=list(self._deliveries),
        )
        for job in claimed:
            self._start_delivery(job, delivery)
        return len(claimed)

    def _start_delivery(self, job: Job, delivery: Delivery) -> None:
        """Post a job whose delivery this worker has claimed, as a task of its own."""
        task = asyncio.create_task(
            self._deliver_then_next(job, delivery), name=f"deliver-job-{job.id}"
        )
        self._deliveries[job.id] = task
        task.add_done_callback(lambda _: self._deliveries.pop(job.id, None))

    async def _deliver_then_next(self, job: Job, delivery: Delivery) -> None:
        await self._guarded(job, self._deliver_leased(job, delivery))
        # The slot is free: a video that finished meanwhile is posted now, not a pass later
        # (under load, finished jobs would otherwise queue for the next pass's few slots).
        try:
            await self._start_due_deliveries(delivery, finishing=1)
        except Exception as exc:
            log.warning(
                "could not claim the next delivery (%s); the next pass will", type(exc).__name__
            )

    def add_delivered_listener(self, listener: Callable[[Job], Awaitable[None]]) -> None:
        self._delivered_listeners.append(listener)

    async def _tell_delivered(self, job_id: int) -> None:
        job = await self.store.get(job_id)
        if job is None:
            return
        for listener in self._delivered_listeners:
            try:
                await listener(job)
            except Exception:
                log.exception("job %s: a delivered-listener failed", job_id)

    @property
    def deliveries_running(self) -> int:
        return len(self._deliveries)

    def is_delivering(self, job_id: int) -> bool:
        """Whether this process is posting (downloading, uploading) that job right now."""
        task = self._deliveries.get(job_id)
        return task is not None and not task.done()

    async def wait_for_deliveries(self) -> None:
        """Wait until every delivery this process started has finished (tests, benchmarks)."""
        while self._deliveries:
            await asyncio.gather(*self._deliveries.values(), return_exceptions=True)

    async def shutdown(self, grace_seconds: float) -> None:
        """Let running deliveries finish for up to `grace_seconds`, then hand the rest back.

        A handed-back delivery keeps its state with an expired lease, so the next worker (or
        the next start) takes it up at once; an earlier post is found before posting again.
        """
        self._stopping = True  # no delivery starts now, not even one chained to another
        running = list(self._deliveries.values())
        if running:
            _, pending = await asyncio.wait(running, timeout=grace_seconds)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        await asyncio.to_thread(self._remove_video_dir)
        self.fitter.close()

    async def _guarded(self, job: Job, work: Awaitable[object]) -> None:
        try:
            await work
        except LeaseLost:
            log.info("job %s: another worker took over; stopped here", job.id)
        except Exception:
            log.exception("job %s: unexpected error in the background loop", job.id)

    async def _resubmit(self, job: Job, delivery: Delivery) -> None:
        """Submit a job whose submit lease this worker has just claimed."""
        now = self.clock.now()
        if self._deadline_passed(job, now):
            # A request stuck behind a long provider outage is not charged days later.
            await self._time_out(job, now, from_states=[JobState.SUBMITTING])
            return
        if job.submit_sent_at is not None:
            log.warning(
                "job %s: an earlier submit may have reached the provider but was never recorded; "
                "submitting again (it may be charged twice)",
                job.id,
            )
        log.info("job %s: resubmitting (attempt %s)", job.id, job.submit_attempts)
        try:
            updated = await self.submit(job)
        except ProviderError:
            return  # recorded as failed by submit; delivery reports it
        if updated.state == JobState.POLLING:
            await self._safe_status(delivery, updated)

    async def _poll(self, job: Job, delivery: Delivery) -> None:
        if job.provider_job_id is None:
            raise RuntimeError(f"job {job.id} is polling without a provider id")
        async with self._poll_slots:
            # Always ask the provider, even past the deadline: it may have finished in time.
            try:
                state = await self._while_holding(
                    self._poll_renewer(job.id), self.provider.fetch(job.provider_job_id)
                )
            except ProviderNotFound as exc:
                await self._conclude(job, Outcome.FAILED, error=user_message(exc))
                return
            except (ProviderAuthError, ProviderCreditsError) as exc:
                # The job is already paid for: a rotated key or an empty balance must not throw
                # it away. Keep trying (with backoff) until the deadline; the operator is told.
                log.error("job %s: provider refused our key while polling: %s", job.id, exc)
                await self._poll_error(job, exc)
                return
            except ProviderError as exc:
                if not exc.retryable:
                    await self._conclude(job, Outcome.FAILED, error=user_message(exc))
                    return
                await self._poll_error(job, exc)
                return
        previous = job.provider_status
        updated = await self._apply_state(job, state)
        # Phase changes show at once; so does "taking longer than usual", once, past p90.
        if (
            updated is not None
            and updated.state == JobState.POLLING
            and (state.status != previous or self.timing.became_overdue(job, updated))
        ):
            await self._safe_status(delivery, updated)

    async def _apply_state(self, job: Job, state: GenerationState) -> Job:
        now = self.clock.now()
        if state.kind == "completed":
            log.info("job %s: completed", job.id)
            return (
                await self._conclude(
                    job,
                    Outcome.VIDEO,
                    result_url=state.video_url,
                    cost_usd=state.usd_spent,
                    status=state.status,
                )
                or job
            )
        if state.kind == "failed":
            reason: Message = state.error or _t("the video service gave no reason")
            log.info("job %s: failed at the provider: %s", job.id, reason)
            return (
                await self._conclude(
                    job,
                    Outcome.FAILED,
                    error=user_message(GenerationFailed(reason, status=state.status)),
                    cost_usd=state.usd_spent,
                    status=state.status,
                )
                or job
            )
        waited = self._waited(job, now)
        if waited >= self.settings.job_timeout_seconds:
            # That was the last look; it is still not done.
            await self._time_out(job, now, waited=waited)
            return (await self.store.get(job.id)) or job
        elapsed = (now - (job.submitted_at or now)).total_seconds()
        delay = self.schedule.next_delay(elapsed=elapsed, estimate=await self._estimate(job))
        updated = await self.store.transition(
            job.id,
            from_states=[JobState.POLLING],
            now=now,
            provider_status=state.status,
            poll_attempts=job.poll_attempts + 1,
            consecutive_errors=0,
            last_checked_at=now,
            waited_seconds=waited,
            next_poll_at=now + timedelta(seconds=self._until_deadline(delay, waited)),
        )
        return updated or job

    async def _poll_error(self, job: Job, exc: ProviderError) -> None:
        now = self.clock.now()
        waited = self._waited(job, now)
        if waited >= self.settings.job_timeout_seconds:
            await self._time_out(job, now, waited=waited)
            return
        errors = job.consecutive_errors + 1
        delay = self._until_deadline(self.schedule.error_delay(errors), waited)
        log.warning(
            "job %s: poll failed (%s); next try in %.0f s", job.id, type(exc).__name__, delay
        )
        await self.store.transition(
            job.id,
            from_states=[JobState.POLLING],
            now=now,
            poll_attempts=job.poll_attempts + 1,
            consecutive_errors=errors,
            last_checked_at=now,
            waited_seconds=waited,
            next_poll_at=now + timedelta(seconds=delay),
        )

    async def _estimate(self, job: Job) -> Estimate:
        await self.timing.refresh_if_stale()
        estimate = self.timing.for_job(job)
        await self.schedule.prepare(estimate)
        return estimate

    def _waited(self, job: Job, now: datetime) -> float:
        """Time this job has waited that counts against the member's timeout.

        Each gap between two looks counts as planned; lateness beyond a small grace (the bot
        was down, or behind on its work) is the bot's, not the member's, and does not count.
        """
        last = job.last_checked_at or job.submitted_at or job.created_at
        elapsed = max(0.0, (now - last).total_seconds())
        planned_at = job.next_poll_at or last
        planned = max(0.0, (planned_at - last).total_seconds())
        late = max(0.0, (now - planned_at).total_seconds())
        return job.waited_seconds + min(elapsed, planned + min(late, self._late_grace))

    def _until_deadline(self, delay: float, waited: float) -> float:
        """A poll never lands after the deadline: the last one is right at it."""
        remaining = self.settings.job_timeout_seconds - waited
        return max(1.0, min(delay, remaining))

    def _deadline_passed(self, job: Job, now: datetime) -> bool:
        """For jobs not yet at the provider (stuck behind 429s): wall time since the request."""
        return (now - job.created_at).total_seconds() > self.settings.job_timeout_seconds

    async def _time_out(
        self,
        job: Job,
        now: datetime,
        *,
        waited: float | None = None,
        from_states: list[JobState] | None = None,
    ) -> None:
        if waited is None:
            waited = (now - job.created_at).total_seconds()
        log.warning("job %s: timed out after %.0f s", job.id, waited)
        await self._conclude(
            job,
            Outcome.TIMED_OUT,
            error=user_message(JobTimedOut(waited)),
            from_states=from_states,
        )

    async def _conclude(
        self,
        job: Job,
        outcome: Outcome,
        *,
        error: Message | None = None,
        result_url: str | None = None,
        cost_usd: float | None = None,
        status: str | None = None,
        from_states: list[JobState] | None = None,
    ) -> Job | None:
        now = self.clock.now()
        changes: dict[str, object] = {
            "outcome": outcome,
            "finished_at": now,
            "next_poll_at": None,
            "image_data": None,
            "end_image_data": None,
        }
        if error is not None:
            changes["error_message"] = to_stored(error)
        if result_url is not None:
            changes["result_url"] = result_url
        if cost_usd is not None:
            changes["cost_usd"] = cost_usd
        if status is not None:
            changes["provider_status"] = status
        concluded = await self.store.transition(
            job.id,
            from_states=from_states or [JobState.POLLING],
            to_state=JobState.TO_DELIVER,
            now=now,
            **changes,
        )
        if concluded is not None:  # counted once, by the process whose transition won
            self.metrics.job_finished(outcome=outcome, model=job.model)
        return concluded

    # --- delivery ------------------------------------------------------------------------------

    async def deliver(self, job: Job, delivery: Delivery) -> bool:
        """Post the outcome exactly once. Returns True if this call completed the delivery."""
        claimed = await self.store.claim_delivery(
            job.id,
            worker=self.worker_id,
            now=self.clock.now(),
            lease_seconds=self.settings.lease_seconds,
        )
        if claimed is None:
            return False
        return await self._deliver_leased(claimed, delivery)

    async def _deliver_leased(self, claimed: Job, delivery: Delivery) -> bool:
        """Post the outcome of a job whose delivery this worker has just claimed."""
        job = claimed
        try:
            message_id = await self._while_holding(
                self._delivery_renewer(job.id), self._deliver_claimed(claimed, delivery)
            )
        except LeaseLost:
            raise
        except asyncio.CancelledError:
            # Shutdown: hand the job back so the next worker takes it up at once.
            await self.store.release_delivery(job.id, worker=self.worker_id, now=self.clock.now())
            log.info("job %s: delivery handed back at shutdown", job.id)
            raise
        except Exception:
            log.exception("job %s: delivery attempt %s failed", job.id, claimed.delivery_attempts)
            await self._retry_delivery_later(job.id, delivery)
            return False
        done = await self.store.finish_delivery(
            job.id, worker=self.worker_id, now=self.clock.now(), message_id=message_id
        )
        await self._forget_video(job.id)
        if done:
            if claimed.finished_at is not None and claimed.outcome is not None:
                lag = (self.clock.now() - claimed.finished_at).total_seconds()
                self.metrics.delivered(outcome=claimed.outcome, lag_seconds=lag)
            await self.refresh_status(delivery, job.id)
            if claimed.interaction_token is not None:
                await self.store.forget_interaction_token(job.id)
            log.info("job %s: delivered (%s)", job.id, claimed.outcome)
            await self._tell_delivered(job.id)
        return done

    async def _deliver_claimed(self, job: Job, delivery: Delivery) -> int | None:
        """Post the outcome, moving to the next place when the usual one is gone.

        Returns the message id, or None when the requester could not be reached anywhere.
        """
        if job.delivery_attempts > 1:
            found = await self._find_earlier_post(job, delivery)
            if found is not None:
                return found
        while True:
            try:
                return await self._post_outcome(job, delivery)
            except DestinationGone:
                moved = await self._next_destination(job)
                if moved is None:
                    return None
                job = moved

    async def _next_destination(self, job: Job) -> Job | None:
        """Thread → its channel → the requester's DMs → nowhere (said in the status)."""
        if job.delivery_target == "interaction":
            # Discord accepts an interaction's follow-ups for 15 minutes only.
            target: str | None = "dm"
            note = _t(
                "It took longer than the 15 minutes Discord lets the bot answer a command "
                "there, so it was sent to you by DM."
            )
        elif job.delivery_target is None and job.thread_id is not None:
            target = "channel"
            note = _t("The thread was deleted, so the result was posted in the channel.")
        elif job.interaction_expires_at is not None:
            target = None
            note = _t(
                "The bot could not reach you: the command's 15 minutes had passed and your DMs "
                "are closed. Use /show {job} in a DM with the bot to get it.",
                job=job.id,
            )
        elif job.delivery_target != "dm":
            target = "dm"
            note = _t("The bot could not post in the channel any more, so it sent you a DM.")
        else:
            target = None
            note = _t(
                "The bot could not post the result: the channel is gone and your DMs are closed."
            )
        log.warning("job %s: destination gone; %s", job.id, "moving to " + (target or "nowhere"))
        changes: dict[str, Any] = {"delivery_note": to_stored(note)}
        if target is not None:
            changes["delivery_target"] = target
        updated = await self.store.transition(
            job.id, from_states=[JobState.DELIVERING], now=self.clock.now(), **changes
        )
        if updated is None:
            raise LeaseLost("the job left 'delivering'")
        return updated if target is not None else None

    async def _find_earlier_post(self, job: Job, delivery: Delivery) -> int | None:
        """An earlier attempt may have posted before dying: look before posting again."""
        try:
            found = await delivery.find_delivered(job)
        except Exception:
            # Not being able to look must not stop the video forever; Discord's nonce check
            # still drops a repeat of a very recent post.
            log.warning("job %s: could not check for an earlier post", job.id, exc_info=True)
            return None
        if found is not None:
            log.info("job %s: already delivered as message %s", job.id, found)
        return found

    async def _post_outcome(self, job: Job, delivery: Delivery) -> int:
        if job.outcome != Outcome.VIDEO or job.result_url is None:
            return await delivery.post_failure(
                job, from_stored(job.error_message) or user_message(GenerationFailed(_t("unknown")))
            )
        await self._safe_status(delivery, job)
        url = job.result_url
        if not self.provider.video_url_allowed(url):
            log.warning("job %s: the provider's video link is not on its own hosts", job.id)
            return await self._refuse_link(job, delivery, _foreign_link())
        # Fetched even when over the upload limit: it may be re-encoded to fit.
        cap = self.settings.max_video_bytes
        try:
            video = await self._fetch_video(job, url, cap)
        except VideoLinkRefused:  # a redirect led elsewhere
            log.warning("job %s: the video link redirected off the provider's hosts", job.id)
            return await self._refuse_link(job, delivery, _foreign_link())
        except VideoTooLarge:
            return await delivery.post_link(job, url, _too_large_reason(job.upload_limit_bytes))
        except TimeoutError:
            log.warning("job %s: download did not finish in time; posting the link", job.id)
            return await delivery.post_link(
                job,
                url,
                _t("The video could not be fetched in time, so here is the provider's link."),
            )
        except ProviderError as exc:
            log.warning("job %s: download failed (%s); posting the link", job.id, exc)
            return await delivery.post_link(
                job, url, _t("The bot could not fetch the file, so here is the provider's link.")
            )
        limit = max(job.upload_limit_bytes, 1)
        if video.size <= limit:
            try:
                return await delivery.post_video(job, video)
            except UploadRejected:
                pass  # Discord counted differently: try a smaller encode
        fitted = await self._fit_to_limit(job, video, limit)
        if fitted is not None:
            note = _t(
                "Re-encoded to fit this server's {size} MB upload limit; the original is linked.",
                size=Number(limit / 1_048_576),
            )
            try:
                return await delivery.post_video(job, fitted, note=note, link=url)
            except UploadRejected:
                log.warning("job %s: the re-encoded video was refused too", job.id)
        return await delivery.post_link(job, url, _too_large_reason(job.upload_limit_bytes))

    async def _fit_to_limit(
        self, job: Job, video: DownloadedVideo, limit: int
    ) -> DownloadedVideo | None:
        """Re-encode (H.264 + AAC, off the event loop, one at a time) to fit `limit`; None when
        no acceptable encode fits. Kept between delivery attempts like the download."""
        kept = self._encoded.get(job.id)
        if kept is not None and kept.path.exists():
            return kept
        from bot.video import VideoError, fit_to_size  # PyAV loads only when needed

        dest = video.path.with_name(f"fitted-{job.id}.mp4")
        # A little under the limit: Discord counts the upload, not just the file.
        budget = int(limit * 0.97)
        async with self.encode_slots:
            try:
                info = await asyncio.to_thread(fit_to_size, video.path, dest, budget)
            except VideoError:
                log.warning("job %s: the video could not be re-encoded", job.id)
                self.metrics.reencoded("error")
                return None
        if info is None:
            log.info("job %s: no acceptable encode fits %d bytes", job.id, budget)
            self.metrics.reencoded("no_fit")
            return None
        self.metrics.reencoded("fitted")
        log.info("job %s: re-encoded %d -> %d bytes", job.id, video.size, info.size_bytes)
        fitted = DownloadedVideo(path=dest, size=info.size_bytes, content_type="video/mp4")
        self._encoded[job.id] = fitted
        return fitted

    async def _refuse_link(self, job: Job, delivery: Delivery, exc: VideoLinkRefused) -> int:
        """A link that may point inside our network is never fetched nor shown: the job ends
        as failed, without the link."""
        reason = user_message(exc)
        updated = await self.store.transition(
            job.id,
            from_states=[JobState.DELIVERING],
            now=self.clock.now(),
            outcome=Outcome.FAILED,
            error_message=to_stored(reason),
            result_url=None,
        )
        if updated is None:
            raise LeaseLost("the job left 'delivering'")
        return await delivery.post_failure(updated, reason)

    async def _fetch_video(self, job: Job, url: str, cap: int) -> DownloadedVideo:
        """Download once per job and keep it until delivered: a retry reuses the file."""
        kept = self._videos.get(job.id)
        if kept is not None and kept.path.exists():
            return kept
        directory = await asyncio.to_thread(self._job_video_dir, job.id)
        async with asyncio.timeout(self.settings.download_timeout_seconds):
            video = await self.provider.download(url, directory, max_bytes=cap)
        self._videos[job.id] = video
        return video

    def _job_video_dir(self, job_id: int) -> Path:
        if self._video_dir is None:
            self._video_dir = Path(tempfile.mkdtemp(prefix=f"animate-{self.worker_id}-"))
        directory = self._video_dir / f"job{job_id}"
        directory.mkdir(exist_ok=True)
        return directory

    async def _forget_video(self, job_id: int) -> None:
        self._videos.pop(job_id, None)
        self._encoded.pop(job_id, None)
        if self._video_dir is not None:
            directory = self._video_dir / f"job{job_id}"
            await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)

    def _remove_video_dir(self) -> None:
        if self._video_dir is not None:
            shutil.rmtree(self._video_dir, ignore_errors=True)
            self._video_dir = None
            self._videos.clear()
            self._encoded.clear()

    async def _retry_delivery_later(self, job_id: int, delivery: Delivery) -> None:
        job = await self.store.get(job_id)
        if job is None or job.state != JobState.DELIVERING:
            return
        now = self.clock.now()
        if job.delivery_attempts >= self.MAX_DELIVERY_ATTEMPTS:
            await self._give_up_delivery(job, delivery, now)
            return
        # Keep the claim but let it lapse after a growing pause; the next claim is the retry.
        delay = self.DELIVERY_RETRY_BASE_SECONDS * math.pow(2, job.delivery_attempts - 1)
        await self.store.transition(
            job.id,
            from_states=[JobState.DELIVERING],
            now=now,
            delivery_lease_until=now + timedelta(seconds=min(delay, 600.0)),
        )

    async def _give_up_delivery(self, job: Job, delivery: Delivery, now: datetime) -> None:
        log.error("job %s: giving up delivery after %s attempts", job.id, job.delivery_attempts)
        reason: Message = _t("The bot could not post here (Discord kept refusing).")
        if job.result_url:
            reason = join([reason, _t("The provider's link is on this message.")])
        await self.store.transition(
            job.id,
            from_states=[JobState.DELIVERING],
            now=now,
            outcome=Outcome.FAILED,
            error_message=to_stored(reason),
        )
        await self.store.finish_delivery(job.id, worker=self.worker_id, now=now, message_id=None)
        await self._forget_video(job.id)
        # The status message may still be reachable when the thread is not.
        await self.refresh_status(delivery, job.id)
        if job.interaction_token is not None:
            await self.store.forget_interaction_token(job.id)

    async def refresh_status(self, delivery: Delivery, job_id: int) -> None:
        """Show the job's current state, read fresh so a late edit never undoes a newer one."""
        job = await self.store.get(job_id)
        if job is not None:
            await self._safe_status(delivery, job)

    async def _safe_status(self, delivery: Delivery, job: Job) -> None:
        """Status edits are cosmetic: a failure is logged, never fatal to the job."""
        try:
            await delivery.show_status(job)
        except Exception:
            log.warning("job %s: could not update the status message", job.id, exc_info=True)


def _answer_fields(answer: InteractionAnswer | None) -> dict[str, Any]:
    if answer is None:
        return {}
    return {
        "delivery_target": "interaction",
        "interaction_token": answer.token,
        "interaction_expires_at": answer.expires_at,
        "origin_guild_id": answer.origin_guild_id,
    }


def check_end_frame(spec: ModelSpec, *, has_end_image: bool) -> None:
    """An end frame only for models that take one; required by some (InputRejected)."""
    if has_end_image and spec.last_image_field is None:
        takers = [s.label for s in CATALOG.values() if s.last_image_field is not None]
        raise InputRejected(
            _t(
                "{model} can't take an end frame. Models that can: {models}.",
                model=spec.label,
                models=", ".join(takers),
            )
        )
    if not has_end_image and spec.last_image_required:
        raise InputRejected(
            _t(
                "{model} needs an end frame too: attach one as end_image, or choose another model.",
                model=spec.label,
            )
        )


def _orientation_of(choice: OrientationChoice) -> Literal["landscape", "portrait"]:
    return "portrait" if choice == "portrait" else "landscape"


def _reuse_fitted(data: bytes, size: tuple[int, int]) -> PreparedImage | None:
    """A JPEG this bot fitted earlier, if it already has exactly `size`; else None."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG" or image.size != size or image.mode != "RGB":
                return None
    except (OSError, ValueError):
        return None
    orientation: Literal["landscape", "portrait"] = "portrait" if size[1] > size[0] else "landscape"
    return PreparedImage(
        jpeg=data,
        width=size[0],
        height=size[1],
        orientation=orientation,
        source_format="JPEG",
        source_size=size,
    )


def _foreign_link() -> VideoLinkRefused:
    return VideoLinkRefused(_t("the video link does not point to the video service's own servers"))


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _too_large_reason(limit: int) -> Message:
    return _t(
        "The video is larger than this server's {size} MB upload limit, so here is the "
        "provider's link instead.",
        size=Number(limit / (1024 * 1024)),
    )
