"""The job service end to end against the fake provider and a real SQLite store.

Time is a fake clock; the provider client's retry sleeps are instant. What a user would notice:
exactly one video (or one explanation) per request, nothing lost across a restart, no money
spent on bad input.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from bot.catalog import CATALOG
from bot.config import Settings
from bot.errors import ImageRejected, InputRejected, ProviderValidationError, TooManyActiveJobs
from bot.i18n import Message, from_stored
from bot.imaging import ImageFitter
from bot.jobs import Job, JobState, Outcome
from bot.provider import DownloadedVideo, ProviderClient, RetryPolicy
from bot.service import AnimateRequest, Conversation, DestinationGone, JobService, UploadRejected
from bot.store import JobStore
from tests.fake_provider import FakeProvider

VIDEO = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 4096


class FakeClock:
    """Time moves only when a test says so; `sleep` wakes when the clock passes its target."""

    def __init__(self) -> None:
        self.moment = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
        self._moved = asyncio.Event()

    def now(self) -> datetime:
        return self.moment

    async def sleep(self, seconds: float) -> None:
        target = self.moment + timedelta(seconds=seconds)
        while self.moment < target:
            moved = self._moved
            await moved.wait()

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)
        self._moved.set()
        self._moved = asyncio.Event()


@dataclass
class Posted:
    kind: str
    job_id: int
    message_id: int
    detail: str = ""
    data: bytes = b""
    where: str = ""
    """The channel id posted in, or "dm"."""


@dataclass
class RecordingDelivery:
    """Stands in for Discord: remembers what would have been posted."""

    posts: list[Posted] = field(default_factory=list)
    statuses: list[tuple[int, JobState, str | None]] = field(default_factory=list)
    fail_next_posts: int = 0
    crash_after_post: int = 0
    refuse_uploads: bool = False

    attempts: list[datetime] = field(default_factory=list)
    clock: FakeClock | None = None
    gone_channels: set[int] = field(default_factory=set)
    """Channels and threads that were deleted (or the bot was removed from)."""
    dms_closed: bool = False

    def _post(self, kind: str, job: Job, detail: str = "", data: bytes = b"") -> int:
        if self.clock is not None:
            self.attempts.append(self.clock.now())
        if job.delivery_target == "dm":
            if self.dms_closed:
                raise DestinationGone("DMs closed")
            where = "dm"
        elif job.delivery_channel_id in self.gone_channels:
            raise DestinationGone("Unknown Channel")
        else:
            where = str(job.delivery_channel_id)
        if self.fail_next_posts:
            self.fail_next_posts -= 1
            raise ConnectionResetError("discord went away")
        message_id = 1000 + len(self.posts)
        self.posts.append(Posted(kind, job.id, message_id, detail, data, where))
        if self.crash_after_post:
            # The message is out, but the process "dies" before recording it.
            self.crash_after_post -= 1
            raise ConnectionResetError("crashed after posting")
        return message_id

    async def show_status(self, job: Job) -> None:
        self.statuses.append((job.id, job.state, job.provider_status))

    async def find_delivered(self, job: Job) -> int | None:
        for post in self.posts:
            if post.job_id == job.id:
                return post.message_id
        return None

    async def post_video(
        self,
        job: Job,
        video: DownloadedVideo,
        *,
        note: Message | None = None,
        link: str | None = None,
    ) -> int:
        if self.refuse_uploads or video.size > job.upload_limit_bytes:
            raise UploadRejected("too big")
        # Kept as English, the way the tests read them.
        return self._post("video", job, detail=str(note or ""), data=video.path.read_bytes())

    async def post_link(self, job: Job, url: str, reason: Message) -> int:
        return self._post("link", job, detail=f"{url} {reason}")

    async def post_failure(self, job: Job, reason: Message) -> int:
        return self._post("failure", job, detail=str(reason))

    def for_job(self, job_id: int) -> list[Posted]:
        return [p for p in self.posts if p.job_id == job_id]


def photo(width: int = 1600, height: int = 1000) -> bytes:
    image = Image.new("RGB", (width, height), (30, 120, 200))
    for x in range(0, width, 40):
        image.paste((240, 200, 40), (x, 0, x + 10, height))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


async def _no_sleep(_: float) -> None:
    return None


@dataclass
class World:
    service: JobService
    store: JobStore
    provider: FakeProvider
    clock: FakeClock
    delivery: RecordingDelivery
    settings: Settings
    session: aiohttp.ClientSession
    db_url: str
    fitters: list[ImageFitter] = field(default_factory=list)
    """Of every service made here: their fit processes end with the test."""

    def request(self, **overrides: object) -> AnimateRequest:
        values: dict[str, object] = {
            "image": photo(),
            "prompt": "the waves roll in @everyone",
            "requester_id": 111,
            "guild_id": 222,
            "channel_id": 333,
            "upload_limit_bytes": 10 * 1024 * 1024,
        }
        values.update(overrides)
        return AnimateRequest(**values)  # type: ignore[arg-type]

    async def animate(self, **overrides: object) -> Job:
        prepared = await self.service.prepare(self.request(**overrides))
        job = await self.service.record(prepared)
        job = await self.service.set_conversation(job, thread_id=444, status_message_id=555)
        return await self.service.submit(job)

    async def run_for(self, seconds: float, step: float = 1.0) -> None:
        """Drive the background loop as the bot would, on the fake clock.

        Deliveries run as their own tasks; each step lets them finish (they talk to local
        servers only), so what a step started has happened when the step ends.
        """
        elapsed = 0.0
        while elapsed < seconds:
            await self.service.run_due(self.delivery)
            await self.service.wait_for_deliveries()
            self.clock.advance(step)
            elapsed += step

    def new_service(
        self,
        store: JobStore | None = None,
        worker_id: str | None = None,
        rng: Callable[[], float] = lambda: 0.5,
    ) -> JobService:
        client = ProviderClient(
            self.session,
            base_url=self.provider.base_url,
            api_key=self.settings.aimlapi_key,
            retry=RetryPolicy(attempts=3),
            sleep=_no_sleep,
        )
        service = JobService(
            settings=self.settings,
            store=store or self.store,
            provider=client,
            clock=self.clock,
            worker_id=worker_id,
            rng=rng,
            retry_sleep=_no_sleep,
        )
        self.fitters.append(service.fitter)
        return service


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    provider = FakeProvider()
    await provider.start()
    settings = Settings.from_env(
        {
            "DISCORD_TOKEN": "discord-token",
            "AIMLAPI_KEY": "test-key",
            "AIMLAPI_BASE_URL": provider.base_url,
            "JOB_TIMEOUT_SECONDS": "600",
            "LEASE_SECONDS": "60",
            "MAX_ACTIVE_JOBS_PER_USER": "2",
        }
    )
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}"
    store = await JobStore.open(db_url)
    session = aiohttp.ClientSession()
    clock = FakeClock()
    w = World(
        service=None,  # type: ignore[arg-type]
        store=store,
        provider=provider,
        clock=clock,
        delivery=RecordingDelivery(),
        settings=settings,
        session=session,
        db_url=db_url,
    )
    w.service = w.new_service()
    try:
        yield w
    finally:
        for fitter in w.fitters:
            fitter.close()
        await session.close()
        await store.close()
        await provider.close()


def post_count(world: World) -> int:
    return sum(1 for r in world.provider.requests if r.method == "POST")


def poll_count(world: World) -> int:
    return sum(1 for r in world.provider.requests if r.method == "GET" and "generations" in r.path)


async def test_happy_path_delivers_the_video_once(world: World) -> None:
    world.provider.script_next_job(["queued", "generating", "generating", "completed"], video=VIDEO)
    job = await world.animate()
    assert job.state == JobState.POLLING
    await world.run_for(400)
    posts = world.delivery.for_job(job.id)
    assert [p.kind for p in posts] == ["video"]
    assert posts[0].data == VIDEO
    final = await world.store.get(job.id)
    assert final is not None and final.state == JobState.DONE and final.outcome == Outcome.VIDEO
    assert final.image_data is None  # the upload copy is not kept once the provider has it
    assert post_count(world) == 1


async def test_the_request_sent_is_the_fitted_image_at_the_model_preset(world: World) -> None:
    job = await world.animate(image=photo(900, 1600), resolution="1080p", duration=8)
    assert (job.image_width, job.image_height) == (1024, 1792)
    body = next(iter(world.provider.jobs.values())).body
    assert body["resolution"] == "1080p" and body["aspect_ratio"] == "9:16"
    assert body["duration"] == 8 and body["model"] == "openai/sora-2-pro-i2v"
    assert body["image_url"].startswith("data:image/jpeg;base64,")


async def test_few_polls_before_the_typical_time_and_short_gaps_after(world: World) -> None:
    world.provider.set_completion_time(None)
    world.provider.script_next_job(["generating"])
    await world.animate()
    await world.run_for(60)
    early = poll_count(world)
    await world.run_for(60)  # 60-120 s: Sora's typical 90 s falls in here
    window = poll_count(world) - early
    assert early <= 2, "polled too often while the video could not be ready"
    assert window >= 8, "not watching closely while the video may be ready"


async def test_provider_failure_is_explained_with_its_reason(world: World) -> None:
    world.provider.script_next_job(
        ["queued", "error"],
        error={"name": "GenerationError", "message": "Input image contains a human face"},
    )
    job = await world.animate()
    await world.run_for(200)
    posts = world.delivery.for_job(job.id)
    assert [p.kind for p in posts] == ["failure"]
    assert "human face" in posts[0].detail


async def test_unknown_status_and_completed_without_url_fail_cleanly(world: World) -> None:
    world.provider.script_next_job(["queued", "exploded"])
    first = await world.animate()
    world.provider.script_next_job([{"status": "completed", "video": None}])
    second = await world.animate(requester_id=999)
    await world.run_for(200)
    assert "exploded" in world.delivery.for_job(first.id)[0].detail
    assert world.delivery.for_job(second.id)[0].kind == "failure"


async def test_gives_up_after_the_deadline_and_says_so(world: World) -> None:
    world.provider.script_next_job(["generating"])
    job = await world.animate()
    await world.run_for(700, step=5)
    posts = world.delivery.for_job(job.id)
    assert [p.kind for p in posts] == ["failure"]
    assert "minutes" in posts[0].detail
    final = await world.store.get(job.id)
    assert final is not None and final.outcome == Outcome.TIMED_OUT


async def test_poll_errors_back_off_and_the_job_still_arrives(world: World) -> None:
    world.provider.script_next_job(["queued", "generating", "completed"], video=VIDEO)
    job = await world.animate()
    world.provider.fail_next("GET", status=500, count=6)
    await world.run_for(600)
    assert [p.kind for p in world.delivery.for_job(job.id)] == ["video"]


async def test_refused_submit_costs_nothing_and_is_reported(world: World) -> None:
    world.provider.fail_next("POST", status=400, message="Body validation error!\nbad prompt")
    with pytest.raises(ProviderValidationError):
        await world.animate()
    assert world.provider.jobs == {}
    await world.run_for(5)
    [post] = world.delivery.posts
    assert post.kind == "failure" and "bad prompt" in post.detail


async def test_rate_limited_submit_waits_and_submits_exactly_once(world: World) -> None:
    world.provider.fail_next("POST", status=429, count=3)  # more than the client's own retries
    job = await world.animate()
    assert job.state == JobState.SUBMITTING
    await world.run_for(900, step=5)
    assert len(world.provider.jobs) == 1
    assert [p.kind for p in world.delivery.for_job(job.id)] == ["video"]


async def test_bad_input_is_refused_before_anything_is_spent(world: World) -> None:
    with pytest.raises(ImageRejected):
        await world.service.prepare(world.request(image=b"%PDF-1.7 not a picture"))
    with pytest.raises(InputRejected, match="4, 8 or 12"):
        await world.service.prepare(world.request(duration=5))
    with pytest.raises(InputRejected, match="720p"):
        await world.service.prepare(world.request(model="openai/sora-2-i2v", resolution="1080p"))
    assert world.provider.requests == []


async def test_active_jobs_per_user_are_capped(world: World) -> None:
    await world.animate()
    await world.animate()
    with pytest.raises(TooManyActiveJobs):
        await world.animate()
    await world.animate(requester_id=4242)  # others are not affected


async def test_crash_before_submit_is_resubmitted_after_restart(world: World) -> None:
    prepared = await world.service.prepare(world.request())
    job = await world.service.record(prepared)  # ...and the process dies here
    await world.store.close()
    world.store = await JobStore.open(world.db_url)
    world.service = world.new_service()
    await world.run_for(30)
    assert world.provider.jobs == {}, "must not resubmit while the first worker may still be at it"
    await world.run_for(500)
    assert len(world.provider.jobs) == 1
    assert [p.kind for p in world.delivery.for_job(job.id)] == ["video"]


async def test_restart_while_polling_continues_the_job(world: World) -> None:
    world.provider.script_next_job(["queued", "generating", "generating", "completed"], video=VIDEO)
    job = await world.animate()
    await world.run_for(20)
    await world.store.close()
    world.store = await JobStore.open(world.db_url)
    world.service = world.new_service()
    await world.run_for(400)
    assert [p.kind for p in world.delivery.for_job(job.id)] == ["video"]
    assert post_count(world) == 1


async def test_failed_post_is_retried_and_lands_once(world: World) -> None:
    job = await world.animate()
    world.delivery.fail_next_posts = 2
    await world.run_for(400)
    assert [p.kind for p in world.delivery.for_job(job.id)] == ["video"]


async def test_crash_between_posting_and_recording_does_not_post_twice(world: World) -> None:
    job = await world.animate()
    world.delivery.crash_after_post = 1
    await world.run_for(400)
    assert len(world.delivery.for_job(job.id)) == 1
    final = await world.store.get(job.id)
    assert final is not None and final.state == JobState.DONE
    assert final.delivery_message_id == world.delivery.for_job(job.id)[0].message_id


async def test_two_workers_deliver_each_video_once(world: World) -> None:
    jobs = [await world.animate(requester_id=i) for i in range(1, 5)]
    other_store = await JobStore.open(world.db_url)
    try:
        other = world.new_service(store=other_store, worker_id="other")
        for _ in range(400):
            await world.service.run_due(world.delivery)
            await other.run_due(world.delivery)
            world.clock.advance(1)
    finally:
        await other_store.close()
    for job in jobs:
        assert len(world.delivery.for_job(job.id)) == 1


async def test_two_workers_started_together_share_the_polls(world: World) -> None:
    # Ten-second looks and a two-second pass, each worker drawing its own pass times as the
    # bot's background loop does (next_pass_in). With passes on a fixed tick, the worker that
    # looked first took every look for good.
    world.settings = dataclasses.replace(
        world.settings,
        poll_schedule="fixed",
        poll_min_interval_seconds=10.0,
        poll_tick_seconds=2.0,
        max_active_jobs_per_user=100,
    )
    world.provider.set_completion_time(None)
    for _ in range(10):
        world.provider.script_next_job(["generating"])
    other_store = await JobStore.open(world.db_url)
    try:
        workers = [
            world.new_service(worker_id="first", rng=random.Random(1).random),
            world.new_service(store=other_store, rng=random.Random(2).random),
        ]
        world.service = workers[0]
        for requester in range(10):
            await world.animate(requester_id=requester)
        polls = [0, 0]
        next_pass = [world.clock.now(), world.clock.now()]
        end = world.clock.now() + timedelta(seconds=200)
        while (moment := min(next_pass)) < end:
            which = next_pass.index(moment)
            world.clock.advance((moment - world.clock.now()).total_seconds())
            before = poll_count(world)
            await workers[which].run_due(world.delivery)
            polls[which] += poll_count(world) - before
            next_pass[which] = moment + timedelta(seconds=workers[which].next_pass_in())
    finally:
        await other_store.close()
    assert sum(polls) >= 10 * 18, "every job is looked at every ten seconds or so"
    assert min(polls) >= 0.35 * sum(polls), f"one worker did most of the polling: {polls}"


@dataclass
class GatedDelivery(RecordingDelivery):
    """Holds every video post until `gate` is set."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def post_video(
        self,
        job: Job,
        video: DownloadedVideo,
        *,
        note: Message | None = None,
        link: str | None = None,
    ) -> int:
        await self.gate.wait()
        return await super().post_video(job, video, note=note, link=link)


async def test_two_workers_passes_at_the_same_moment_split_the_finished_jobs(
    world: World,
) -> None:
    for _ in range(8):
        world.provider.script_next_job(["completed"], video=VIDEO)
    jobs = [await world.animate(requester_id=i) for i in range(1, 9)]
    for job in jobs:  # finished, not yet claimed by anyone for posting
        await world.service._poll(job, world.delivery)
    other_store = await JobStore.open(world.db_url)
    try:
        first = world.new_service(worker_id="first")
        second = world.new_service(store=other_store, worker_id="second")
        delivery = GatedDelivery()
        world.delivery = delivery
        # One pass each, at the same moment, four deliveries at most per process. Posting waits
        # until both passes have claimed (a freed slot would otherwise claim the next job).
        await asyncio.gather(first.run_due(delivery), second.run_due(delivery))
        delivery.gate.set()
        await asyncio.gather(first.wait_for_deliveries(), second.wait_for_deliveries())
    finally:
        await other_store.close()
    # Neither pass was wasted on jobs the other was taking: all eight went out, once each.
    for job in jobs:
        assert [p.kind for p in world.delivery.for_job(job.id)] == ["video"]
    workers = [stored.delivery_worker for job in jobs if (stored := await world.store.get(job.id))]
    assert sorted(workers) == ["first"] * 4 + ["second"] * 4


async def test_video_over_the_upload_limit_becomes_a_link(world: World) -> None:
    world.provider.script_next_job(["completed"], video=VIDEO * 4)
    job = await world.animate(upload_limit_bytes=len(VIDEO))
    await world.run_for(200)
    [post] = world.delivery.for_job(job.id)
    assert post.kind == "link" and "upload limit" in post.detail and "http" in post.detail


async def test_upload_refused_by_discord_becomes_a_link(world: World) -> None:
    world.delivery.refuse_uploads = True
    job = await world.animate()
    await world.run_for(200)
    [post] = world.delivery.for_job(job.id)
    assert post.kind == "link"


async def test_a_delivery_that_keeps_failing_backs_off_then_says_so(world: World) -> None:
    world.delivery.clock = world.clock
    world.delivery.fail_next_posts = 1000
    job = await world.animate()
    await world.run_for(3600, step=5)
    attempts = world.delivery.attempts
    assert len(attempts) == JobService.MAX_DELIVERY_ATTEMPTS
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(attempts)]
    assert gaps == sorted(gaps) and gaps[0] >= 10, "retries must back off, not hammer Discord"
    final = await world.store.get(job.id)
    assert final is not None and final.state == JobState.DONE
    assert final.outcome == Outcome.FAILED and "link" in str(from_stored(final.error_message))
    assert final.result_url is not None  # the status message links the video
    assert world.delivery.statuses[-1][1] == JobState.DONE  # the status message says so


async def test_a_submit_stuck_behind_429_gives_up_at_the_deadline(world: World) -> None:
    world.provider.fail_next("POST", status=429, count=10_000)
    job = await world.animate()
    await world.run_for(700, step=5)
    [post] = world.delivery.for_job(job.id)
    assert post.kind == "failure" and "minutes" in post.detail
    assert world.provider.jobs == {}


async def test_a_rotated_key_while_polling_does_not_lose_a_paid_job(world: World) -> None:
    job = await world.animate()
    world.provider.fail_next("GET", status=401, count=3)
    await world.run_for(600)
    assert [p.kind for p in world.delivery.for_job(job.id)] == ["video"]


async def test_racing_requests_cannot_pass_the_cap_together(world: World) -> None:
    results = await asyncio.gather(*(world.animate() for _ in range(5)), return_exceptions=True)
    accepted = [r for r in results if isinstance(r, Job)]
    assert all(isinstance(r, Job | TooManyActiveJobs) for r in results)
    assert 1 <= len(accepted) <= world.settings.max_active_jobs_per_user
    assert len(world.provider.jobs) == len(accepted)


async def test_an_abandoned_job_is_never_submitted(world: World) -> None:
    job = await world.service.record(await world.service.prepare(world.request()))
    await world.service.abandon(job, "status message refused")
    await world.run_for(600, step=5)
    assert world.provider.requests == []
    assert world.delivery.posts == []


# --- paid work is never lost or paid twice ------------------------------------------------------


def provider_on_fake_time(world: World) -> None:
    """The fake provider finishes jobs on the test's clock, not the wall clock."""
    world.provider.clock = lambda: world.clock.now().timestamp()


async def test_a_video_finished_just_before_the_deadline_is_delivered(world: World) -> None:
    provider_on_fake_time(world)
    world.provider.script_next_job(["generating", "completed"], video=VIDEO, complete_after=598)
    job = await world.animate()  # JOB_TIMEOUT_SECONDS is 600 here
    await world.run_for(700, step=2)
    assert [p.kind for p in world.delivery.for_job(job.id)] == ["video"]


async def test_time_the_bot_was_down_does_not_count_against_the_member(world: World) -> None:
    provider_on_fake_time(world)
    world.provider.script_next_job(["generating", "completed"], video=VIDEO, complete_after=500)
    job = await world.animate()
    await world.run_for(300, step=2)
    world.clock.advance(900)  # the bot is down across the deadline
    await world.run_for(60, step=2)
    assert [p.kind for p in world.delivery.for_job(job.id)] == ["video"]


async def test_a_job_that_never_finishes_times_out_after_a_last_look(world: World) -> None:
    provider_on_fake_time(world)
    world.provider.script_next_job(["generating"])
    job = await world.animate()
    await world.run_for(598, step=2)
    assert world.delivery.for_job(job.id) == []
    polls_before = poll_count(world)
    await world.run_for(30, step=2)
    [post] = world.delivery.for_job(job.id)
    assert post.kind == "failure" and "10 minutes" in post.detail
    assert poll_count(world) > polls_before  # it asked once more before giving up


class FlakyStore(JobStore):
    """The real store, whose writes of a provider id fail while `failing_polling_writes` > 0
    (SQLite locked, a PostgreSQL failover)."""

    failing_polling_writes = 0

    async def transition(self, job_id: int, **kwargs: object) -> Job | None:  # type: ignore[override]
        if kwargs.get("to_state") == JobState.POLLING and self.failing_polling_writes > 0:
            self.failing_polling_writes -= 1
            raise OSError("database is locked")
        return await super().transition(job_id, **kwargs)  # type: ignore[arg-type]


async def test_a_database_error_after_a_paid_submit_does_not_pay_twice(world: World) -> None:
    flaky = FlakyStore(world.store.engine)
    flaky.failing_polling_writes = 4
    other = world.new_service(worker_id="other")

    async def while_the_database_is_away(seconds: float) -> None:
        # Each retry waits; meanwhile time passes and another worker runs its passes.
        world.clock.advance(30)
        await other.run_due(world.delivery)

    service = world.new_service(store=flaky)
    service._retry_sleep = while_the_database_is_away
    prepared = await service.prepare(world.request())
    job = await service.submit(await service.record(prepared))
    assert job.state == JobState.POLLING and job.provider_job_id is not None
    await world.run_for(400)
    assert post_count(world) == 1, "the job was paid for twice"
    assert [p.kind for p in world.delivery.for_job(job.id)] == ["video"]


async def _lease_renewed(world: World, job_id: int) -> None:
    """Wait (briefly, in real time) until the job's submit lease has at least two thirds of a
    lease to run, as the keeper (renewing every third of a lease) always leaves it."""
    ahead = timedelta(seconds=world.settings.lease_seconds * 2 / 3)
    for _ in range(500):
        job = await world.store.get(job_id)
        assert job is not None and job.next_poll_at is not None
        if job.next_poll_at >= world.clock.now() + ahead:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the submit lease was not renewed")


async def test_a_slow_status_message_keeps_the_submit_to_its_command(world: World) -> None:
    other = world.new_service(worker_id="other")

    async def slow_announcement(job: Job) -> Conversation:
        # Discord rate-limits the status message for three leases; the loop keeps running.
        for _ in range(9):
            world.clock.advance(20)
            # In 20 real seconds the command's lease keeper renews (every third of a lease);
            # on the fake clock, give it that turn before the other worker looks.
            await _lease_renewed(world, job.id)
            await other.run_due(world.delivery)
        return Conversation(thread_id=444, status_message_id=555)

    job = await world.service.start(await world.service.prepare(world.request()), slow_announcement)
    assert job.state == JobState.POLLING
    assert post_count(world) == 1
    await world.run_for(400)
    assert [p.kind for p in world.delivery.for_job(job.id)] == ["video"]


async def test_a_worker_that_lost_its_submit_lease_does_not_send(world: World) -> None:
    job = await world.service.record(await world.service.prepare(world.request()))
    world.clock.advance(world.settings.lease_seconds + 1)  # the command stalled past its lease
    other = world.new_service(worker_id="other")
    await other.run_due(world.delivery)  # ... so the loop submitted it
    assert post_count(world) == 1
    late = await world.service.submit(job)  # the stalled command wakes up
    assert post_count(world) == 1
    assert late.state == JobState.POLLING


async def test_lease_seconds_default_is_short_and_a_small_value_is_allowed(
    world: World,
) -> None:
    defaults = Settings.from_env({"DISCORD_TOKEN": "t", "AIMLAPI_KEY": "k"})
    assert defaults.lease_seconds <= 60
    short = Settings.from_env({"DISCORD_TOKEN": "t", "AIMLAPI_KEY": "k", "LEASE_SECONDS": "10"})
    assert short.lease_seconds == 10


async def test_jobs_of_a_model_that_left_the_catalogue_keep_their_schedule(world: World) -> None:
    provider_on_fake_time(world)
    world.provider.script_next_job(["generating", "completed"], video=VIDEO, complete_after=200)
    job = await world.animate()
    # Recorded under a model this version of the bot no longer offers.
    await world.store.transition(
        job.id, from_states=[JobState.POLLING], now=world.clock.now(), model="retired/model-x"
    )
    assert "retired/model-x" not in CATALOG
    await world.run_for(300)
    assert [p.kind for p in world.delivery.for_job(job.id)] == ["video"]
    assert poll_count(world) <= 40, "a job of a removed model was polled every tick"


# --- one job must not hold up the others --------------------------------------------------------


async def test_a_trickling_download_holds_up_nobody_and_is_handed_back_at_shutdown(
    world: World,
) -> None:
    world.provider.script_next_job(["completed"], video=VIDEO, trickle_every=0.2)
    stuck = await world.animate(requester_id=1)
    world.provider.script_next_job(["queued", "generating", "completed"], video=VIDEO)
    normal = await world.animate(requester_id=2)
    async with asyncio.timeout(30):
        for _ in range(300):
            await world.service.run_due(world.delivery)
            world.clock.advance(1)
            await asyncio.sleep(0)
            finished = await world.store.get(normal.id)
            if finished is not None and finished.state == JobState.DONE:
                break
    assert [p.kind for p in world.delivery.for_job(normal.id)] == ["video"]
    assert world.delivery.for_job(stuck.id) == []
    assert world.service.is_delivering(stuck.id)  # still downloading, on its own

    await world.service.shutdown(grace_seconds=0.1)
    handed_back = await world.store.get(stuck.id)
    assert handed_back is not None and handed_back.state == JobState.DELIVERING
    assert handed_back.delivery_lease_until is not None
    assert handed_back.delivery_lease_until <= world.clock.now()  # free for the next worker

    impatient = Settings.from_env(
        {
            "DISCORD_TOKEN": "t",
            "AIMLAPI_KEY": "test-key",
            "AIMLAPI_BASE_URL": world.provider.base_url,
            "DOWNLOAD_TIMEOUT_SECONDS": "0.5",
        }
    )
    world.settings = impatient
    world.service = world.new_service(worker_id="next-start")
    async with asyncio.timeout(30):
        await world.run_for(5)
    [post] = world.delivery.for_job(stuck.id)
    assert post.kind == "link" and "in time" in post.detail


async def test_a_retried_delivery_does_not_download_again(world: World) -> None:
    job = await world.animate()
    world.delivery.fail_next_posts = 3
    await world.run_for(600)
    assert [p.kind for p in world.delivery.for_job(job.id)] == ["video"]
    assert len(world.provider.video_requests) == 1


async def test_a_deleted_thread_sends_the_video_to_the_channel_with_a_note(world: World) -> None:
    job = await world.animate()  # thread 444 in channel 333
    world.delivery.gone_channels.add(444)
    await world.run_for(400)
    [post] = world.delivery.for_job(job.id)
    assert post.kind == "video" and post.where == "333"
    final = await world.store.get(job.id)
    assert final is not None and final.state == JobState.DONE
    assert "thread was deleted" in str(from_stored(final.delivery_note))
    assert len(world.provider.video_requests) == 1


async def test_with_thread_and_channel_gone_the_requester_gets_a_dm(world: World) -> None:
    job = await world.animate()
    world.delivery.gone_channels.update({333, 444})
    await world.run_for(400)
    [post] = world.delivery.for_job(job.id)
    assert post.kind == "video" and post.where == "dm"


async def test_when_nobody_can_be_reached_the_job_ends_and_says_why(world: World) -> None:
    job = await world.animate()
    world.delivery.gone_channels.update({333, 444})
    world.delivery.dms_closed = True
    await world.run_for(400)
    assert world.delivery.for_job(job.id) == []
    final = await world.store.get(job.id)
    assert final is not None and final.state == JobState.DONE
    assert "DMs are closed" in str(from_stored(final.delivery_note))
    assert len(world.provider.video_requests) == 1


async def test_a_foreign_video_link_is_neither_fetched_nor_shown(world: World) -> None:
    metadata = "http://169.254.169.254/latest/meta-data/iam"
    world.provider.script_next_job(["completed"], result_url=metadata)
    job = await world.animate()
    await world.run_for(200)
    [post] = world.delivery.for_job(job.id)
    assert post.kind == "failure" and "own servers" in post.detail
    assert "169.254" not in post.detail
    final = await world.store.get(job.id)
    assert final is not None and final.outcome == Outcome.FAILED and final.result_url is None


async def test_pictures_are_kept_for_the_retention_period_then_removed(world: World) -> None:
    job = await world.animate()
    assert await world.store.kept_image(job.id) is not None  # kept after submit, for Again
    world.clock.advance(29 * 86400)
    assert await world.service.forget_old_images() == 0
    world.clock.advance(2 * 86400)
    assert await world.service.forget_old_images() == 1
    assert await world.store.kept_image(job.id) is None


async def test_a_freed_delivery_slot_posts_the_next_finished_video_at_once(world: World) -> None:
    """With one delivery slot and two videos ready, the second is posted as soon as the first
    is, not a background pass later (under load, finished videos queued for the next pass)."""
    world.settings = dataclasses.replace(world.settings, max_concurrent_deliveries=1)
    world.service = world.new_service()
    jobs = []
    for requester in (1, 2):
        world.provider.script_next_job(["completed"], video=VIDEO)
        jobs.append(await world.animate(requester_id=requester))
    world.clock.advance(300)  # past the first look of both
    await world.service.run_due(world.delivery)  # one pass: both found done, one slot
    await world.service.wait_for_deliveries()
    assert [len(world.delivery.for_job(job.id)) for job in jobs] == [1, 1]


async def test_no_delivery_starts_once_shutting_down(world: World) -> None:
    world.provider.script_next_job(["completed"], video=VIDEO)
    job = await world.animate()
    await world.service.shutdown(grace_seconds=1)
    world.clock.advance(300)
    await world.service.run_due(world.delivery)
    await world.service.wait_for_deliveries()
    assert world.delivery.for_job(job.id) == []
    current = await world.store.get(job.id)
    assert current is not None and current.state == JobState.TO_DELIVER, "left for the next start"
