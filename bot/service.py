"""The job service: accept → fit → record → submit → poll → deliver, exactly once.

Discord-free. The cog calls `prepare()`, `record()`, `set_conversation()` and `submit()`; the
background loop calls `run_due()`;
results go out through a `Delivery` that the Discord layer implements. Time comes from an
injectable clock so tests and benchmarks never sleep.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

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
from bot.imaging import (
    FitMode,
    ImageLimits,
    OrientationChoice,
    PreparedImage,
    jpeg_data_uri,
    prepare_image,
)
from bot.jobs import Job, JobState, NewJob, Outcome
from bot.provider import DownloadedVideo, GenerationState, ProviderClient
from bot.store import JobStore

log = logging.getLogger(__name__)


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class UploadRejected(BotError):
    """Discord refused the file (too large for this server); the link is posted instead."""


class Delivery(Protocol):
    """What the Discord layer does for the service. Every call may raise; the service retries."""

    async def show_status(self, job: Job) -> None:
        """Edit the job's status message in place to reflect `job` (state, outcome, timing)."""

    async def find_delivered(self, job: Job) -> int | None:
        """The id of a result message already posted for this job (after a crash), else None."""

    async def post_video(self, job: Job, video: DownloadedVideo) -> int:
        """Upload the mp4; return the message id. Raise UploadRejected if it is too large."""

    async def post_link(self, job: Job, url: str, reason: str) -> int:
        """Post the provider's link instead of the file, saying why."""

    async def post_failure(self, job: Job, reason: str) -> int:
        """Tell the requester in plain words that no video is coming, and why."""


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


@dataclass(frozen=True)
class PreparedRequest:
    """A request whose choices and image have been checked and fitted. Nothing is spent yet."""

    request: AnimateRequest
    spec: ModelSpec
    duration: int
    resolution: str
    image: PreparedImage

    @property
    def estimated_usd(self) -> float | None:
        return self.spec.estimate_usd(duration=self.duration, resolution=self.resolution)


class PollSchedule:
    """When to ask the provider again.

    A job cannot be done long before the model's typical time, so we look once early (to catch
    quick refusals such as moderation), then stay quiet until about 70 % of the typical time, poll
    at the minimum interval through the window where completion is likely, and slow down
    gradually after that. Errors back off exponentially with jitter.
    """

    EARLY_CHECK_FRACTION = 0.2
    WINDOW_START_FRACTION = 0.7
    WINDOW_END_FRACTION = 1.5
    GROWTH = 1.5
    MAX_ERROR_DELAY = 300.0

    def __init__(self, settings: Settings, rng: Callable[[], float] = random.random) -> None:
        self.min_interval = settings.poll_min_interval_seconds
        self.max_interval = settings.poll_max_interval_seconds
        self.rng = rng

    def first_delay(self, typical: float) -> float:
        return max(self.min_interval, self.EARLY_CHECK_FRACTION * typical)

    def next_delay(self, *, elapsed: float, typical: float, consecutive_errors: int = 0) -> float:
        if consecutive_errors > 0:
            ceiling = min(self.MAX_ERROR_DELAY, self.min_interval * math.pow(2, consecutive_errors))
            # Full jitter keeps many bots (or jobs) from retrying in lock-step.
            return max(self.min_interval, ceiling * (0.5 + 0.5 * self.rng()))
        window_start = self.WINDOW_START_FRACTION * typical
        if elapsed < window_start - self.min_interval:
            return window_start - elapsed
        window_end = self.WINDOW_END_FRACTION * typical
        if elapsed < window_end:
            return self.min_interval
        overdue = elapsed - window_end
        delay = self.min_interval * math.pow(self.GROWTH, overdue / max(typical, 1.0) * 4)
        return min(self.max_interval, delay)


class FixedPollSchedule(PollSchedule):
    """Poll every POLL_MIN_INTERVAL_SECONDS from the start (errors still back off)."""

    def first_delay(self, typical: float) -> float:
        return self.min_interval

    def next_delay(self, *, elapsed: float, typical: float, consecutive_errors: int = 0) -> float:
        if consecutive_errors > 0:
            return super().next_delay(
                elapsed=elapsed, typical=typical, consecutive_errors=consecutive_errors
            )
        return self.min_interval


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
    ) -> None:
        self.settings = settings
        self.store = store
        self.provider = provider
        self.clock: Clock = clock or SystemClock()
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        schedule = FixedPollSchedule if settings.poll_schedule == "fixed" else PollSchedule
        self.schedule: PollSchedule = schedule(settings, rng)
        self.limits = ImageLimits(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            min_side=settings.min_image_side,
        )
        self._poll_slots = asyncio.Semaphore(settings.max_concurrent_polls)

    # --- accepting a request -------------------------------------------------------------------

    def resolve_choices(
        self, *, model: str | None, duration: int | None, resolution: str | None, prompt: str
    ) -> tuple[ModelSpec, int, str]:
        """Fill defaults and check the choices against the model. Cheap; raises InputRejected."""
        spec = CATALOG.get(model or self.settings.default_model)
        if spec is None:
            raise InputRejected(f"Unknown model {model!r}. Choose one from the list.")
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

    async def check_quota(self, requester_id: int) -> None:
        active = await self.store.count_active(requester_id)
        if active >= self.settings.max_active_jobs_per_user:
            raise TooManyActiveJobs(self.settings.max_active_jobs_per_user)

    async def prepare(self, request: AnimateRequest) -> PreparedRequest:
        """Validate everything and fit the image (in a thread). Spends nothing."""
        spec, duration, resolution = self.resolve_choices(
            model=request.model,
            duration=request.duration,
            resolution=request.resolution,
            prompt=request.prompt,
        )
        await self.check_quota(request.requester_id)
        image = await asyncio.to_thread(
            prepare_image,
            request.image,
            preset=spec.preset(resolution),
            orientation=request.orientation,
            fit=request.fit,
            limits=self.limits,
        )
        return PreparedRequest(request, spec, duration, resolution, image)

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
            ),
            now=now,
            # Leased from the start: if we crash before submitting, the loop submits it after
            # the lease; until then the loop leaves it to us.
            submit_lease_until=now + timedelta(seconds=self.settings.lease_seconds),
        )
        log.info(
            "job %s: recorded (model %s, %s, %ss)", job.id, job.model, job.resolution, job.duration
        )
        # Checked again now that the job counts: two requests racing past check_quota must not
        # both get through. Both may be refused; neither is charged.
        if await self.store.count_active(req.requester_id) > self.settings.max_active_jobs_per_user:
            await self.abandon(job, "too many videos in progress")
            raise TooManyActiveJobs(self.settings.max_active_jobs_per_user)
        return job

    async def abandon(self, job: Job, reason: str) -> None:
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
            error_message=reason,
            image_data=None,
            next_poll_at=None,
        )
        if abandoned is not None:
            log.info("job %s: abandoned before submit (%s)", job.id, reason)

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
        """Send a recorded job to the provider. Raises ProviderError if it was refused."""
        spec = CATALOG[job.model]
        if job.image_data is None:
            raise RuntimeError(f"job {job.id} has no image left to submit")
        body = spec.build_request(
            prompt=job.prompt,
            image_url=jpeg_data_uri(job.image_data),
            duration=job.duration,
            resolution=job.resolution,
            orientation="portrait" if job.orientation == "portrait" else "landscape",
        )
        try:
            state = await self.provider.submit(body)
        except ProviderRateLimited as exc:
            # 429 means no job was created, so waiting and trying again costs nothing.
            now = self.clock.now()
            delay = self.schedule.next_delay(
                elapsed=0, typical=spec.typical_seconds, consecutive_errors=job.submit_attempts
            )
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
        updated = await self.store.transition(
            job.id,
            from_states=[JobState.SUBMITTING],
            to_state=JobState.POLLING,
            now=now,
            provider_job_id=state.id,
            provider_status=state.status,
            submitted_at=now,
            image_data=None,  # no longer needed once the provider has it
            next_poll_at=now + timedelta(seconds=self.schedule.first_delay(spec.typical_seconds)),
        )
        if updated is None:
            raise RuntimeError(f"job {job.id} left 'submitting' while being submitted")
        if state.kind != "pending":
            updated = await self._apply_state(updated, state)
        return updated

    # --- the background loop -------------------------------------------------------------------

    async def run_due(self, delivery: Delivery) -> int:
        """One pass: resubmit interrupted jobs, poll due ones, deliver finished ones.

        Returns how many jobs were touched. Each job is isolated: one failure never stops the
        others or the loop.
        """
        now = self.clock.now()
        touched = 0
        for job in await self.store.due_for_submit(now, limit=self.settings.max_concurrent_polls):
            touched += 1
            await self._guarded(job, self._resubmit(job, delivery))
        due = await self.store.due_for_poll(now, limit=self.settings.max_concurrent_polls * 4)
        touched += len(due)
        await asyncio.gather(*(self._guarded(job, self._poll(job, delivery)) for job in due))
        ready = await self.store.due_for_delivery(now, limit=self.settings.max_concurrent_polls)
        touched += len(ready)
        await asyncio.gather(*(self._guarded(job, self.deliver(job, delivery)) for job in ready))
        return touched

    async def _guarded(self, job: Job, work: Awaitable[object]) -> None:
        try:
            await work
        except Exception:
            log.exception("job %s: unexpected error in the background loop", job.id)

    async def _resubmit(self, job: Job, delivery: Delivery) -> None:
        now = self.clock.now()
        if self._deadline_passed(job, now):
            # A request stuck behind a long provider outage is not charged days later.
            await self._time_out(job, now, from_states=[JobState.SUBMITTING])
            return
        if job.model not in CATALOG:
            await self._conclude(
                job,
                Outcome.FAILED,
                error=f"The model {job.model} is no longer offered by this bot.",
                from_states=[JobState.SUBMITTING],
            )
            return
        leased = await self.store.claim_submit(
            job.id, now=now, lease_seconds=self.settings.lease_seconds
        )
        if leased is None:
            return  # another worker took it
        log.info("job %s: resubmitting (attempt %s)", job.id, leased.submit_attempts)
        try:
            updated = await self.submit(leased)
        except ProviderError:
            return  # recorded as failed by _submit; delivery reports it
        if updated.state == JobState.POLLING:
            await self._safe_status(delivery, updated)

    async def _poll(self, job: Job, delivery: Delivery) -> None:
        if job.provider_job_id is None:
            raise RuntimeError(f"job {job.id} is polling without a provider id")
        async with self._poll_slots:
            now = self.clock.now()
            if self._deadline_passed(job, now):
                await self._time_out(job, now)
                return
            try:
                state = await self.provider.fetch(job.provider_job_id)
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
        if updated is not None and updated.state == JobState.POLLING and state.status != previous:
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
            reason = state.error or "the video service gave no reason"
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
        spec = CATALOG[job.model]
        elapsed = (now - (job.submitted_at or now)).total_seconds()
        delay = self.schedule.next_delay(elapsed=elapsed, typical=spec.typical_seconds)
        updated = await self.store.transition(
            job.id,
            from_states=[JobState.POLLING],
            now=now,
            provider_status=state.status,
            poll_attempts=job.poll_attempts + 1,
            consecutive_errors=0,
            next_poll_at=now + timedelta(seconds=delay),
        )
        return updated or job

    async def _poll_error(self, job: Job, exc: ProviderError) -> None:
        now = self.clock.now()
        errors = job.consecutive_errors + 1
        spec = CATALOG[job.model]
        delay = self.schedule.next_delay(
            elapsed=0, typical=spec.typical_seconds, consecutive_errors=errors
        )
        log.warning(
            "job %s: poll failed (%s); next try in %.0f s", job.id, type(exc).__name__, delay
        )
        await self.store.transition(
            job.id,
            from_states=[JobState.POLLING],
            now=now,
            poll_attempts=job.poll_attempts + 1,
            consecutive_errors=errors,
            next_poll_at=now + timedelta(seconds=delay),
        )

    def _deadline_passed(self, job: Job, now: datetime) -> bool:
        started = job.submitted_at or job.created_at
        return (now - started).total_seconds() > self.settings.job_timeout_seconds

    async def _time_out(
        self, job: Job, now: datetime, *, from_states: list[JobState] | None = None
    ) -> None:
        started = job.submitted_at or job.created_at
        waited = (now - started).total_seconds()
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
        error: str | None = None,
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
        }
        if error is not None:
            changes["error_message"] = error
        if result_url is not None:
            changes["result_url"] = result_url
        if cost_usd is not None:
            changes["cost_usd"] = cost_usd
        if status is not None:
            changes["provider_status"] = status
        return await self.store.transition(
            job.id,
            from_states=from_states or [JobState.POLLING],
            to_state=JobState.TO_DELIVER,
            now=now,
            **changes,
        )

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
        try:
            message_id = None
            if claimed.delivery_attempts > 1:
                message_id = await self._find_earlier_post(claimed, delivery)
            if message_id is None:
                message_id = await self._post_outcome(claimed, delivery)
        except Exception:
            log.exception("job %s: delivery attempt %s failed", job.id, claimed.delivery_attempts)
            await self._retry_delivery_later(claimed, delivery)
            return False
        done = await self.store.finish_delivery(
            job.id, worker=self.worker_id, now=self.clock.now(), message_id=message_id
        )
        if done:
            await self.refresh_status(delivery, job.id)
            log.info("job %s: delivered (%s)", job.id, claimed.outcome)
        return done

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
                job, job.error_message or user_message(GenerationFailed("unknown"))
            )
        await self._safe_status(delivery, job)
        url = job.result_url
        cap = min(self.settings.max_video_bytes, max(job.upload_limit_bytes, 1))
        with tempfile.TemporaryDirectory(prefix=f"job{job.id}-") as tmp:
            try:
                video = await self.provider.download(url, Path(tmp), max_bytes=cap)
            except VideoTooLarge:
                return await delivery.post_link(job, url, _too_large_reason(job.upload_limit_bytes))
            except ProviderError as exc:
                log.warning("job %s: download failed (%s); posting the link", job.id, exc)
                return await delivery.post_link(
                    job, url, "The bot could not fetch the file, so here is the provider's link."
                )
            try:
                return await delivery.post_video(job, video)
            except UploadRejected:
                return await delivery.post_link(job, url, _too_large_reason(job.upload_limit_bytes))

    async def _retry_delivery_later(self, job: Job, delivery: Delivery) -> None:
        now = self.clock.now()
        if job.delivery_attempts >= self.MAX_DELIVERY_ATTEMPTS:
            await self._give_up_delivery(job, delivery, now)
            return
        # Keep the claim but let it lapse after a growing pause; the next claim is the retry.
        delay = min(
            self.settings.lease_seconds,
            self.DELIVERY_RETRY_BASE_SECONDS * math.pow(2, job.delivery_attempts - 1),
        )
        await self.store.transition(
            job.id,
            from_states=[JobState.DELIVERING],
            now=now,
            delivery_lease_until=now + timedelta(seconds=delay),
        )

    async def _give_up_delivery(self, job: Job, delivery: Delivery, now: datetime) -> None:
        link = f" Here is the provider's link: {job.result_url}" if job.result_url else ""
        reason = f"The bot could not post here (Discord kept refusing).{link}"
        log.error(
            "job %s: giving up delivery after %s attempts; result %s",
            job.id,
            job.delivery_attempts,
            job.result_url,
        )
        await self.store.transition(
            job.id,
            from_states=[JobState.DELIVERING],
            now=now,
            outcome=Outcome.FAILED,
            error_message=reason,
        )
        await self.store.finish_delivery(job.id, worker=self.worker_id, now=now, message_id=None)
        # The status message may still be reachable when the thread is not.
        await self.refresh_status(delivery, job.id)

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


def _too_large_reason(limit: int) -> str:
    return (
        f"The video is larger than this server's {limit / (1024 * 1024):.0f} MB upload limit, "
        "so here is the provider's link instead."
    )
