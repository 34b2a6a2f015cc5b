"""Learned timing: how long each model really takes, the poll schedule built on it, and the ETA
members see on the status message.

Real stores (SQLite and PostgreSQL), the real service against the fake provider on a fake clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import threading
from datetime import UTC, datetime, timedelta
from statistics import NormalDist

import pytest

from bot.catalog import CATALOG
from bot.config import Settings
from bot.jobs import Job, JobState, NewJob, Outcome
from bot.polling import FixedPollSchedule, PollPlan, PollSchedule, plan_polls
from bot.store import JobStore
from bot.timing import CompletionTimes, Estimate, describe_seconds
from cogs.delivery import status_embed
from tests.test_service import World, poll_count, provider_on_fake_time
from tests.test_service import world as world  # the service tests' fixture, shared

SORA = "openai/sora-2-i2v"
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class Now:
    def __init__(self) -> None:
        self.moment = T0

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


def new_job(model: str = SORA, resolution: str = "720p", duration: int = 4) -> NewJob:
    return NewJob(
        requester_id=1,
        guild_id=2,
        channel_id=3,
        model=model,
        prompt="waves",
        duration=duration,
        resolution=resolution,
        orientation="landscape",
        fit="crop",
        image_width=1280,
        image_height=720,
        image_data=b"jpeg",
        upload_limit_bytes=10 * 1024 * 1024,
    )


async def running_job(store: JobStore, running_at: float, **key: object) -> Job:
    """A job submitted at T0 whose last look, `running_at` s later, found it still running."""
    job = await store.create(new_job(**key), now=T0)  # type: ignore[arg-type]
    running = await store.transition(
        job.id,
        from_states=[JobState.SUBMITTING],
        to_state=JobState.POLLING,
        now=T0,
        provider_job_id=f"gen-{job.id}",
        submitted_at=T0,
        last_checked_at=T0 + timedelta(seconds=running_at),
    )
    assert running is not None
    return running


async def finished_job_seen(
    store: JobStore,
    running_at: float,
    done_by: float,
    *,
    outcome: Outcome = Outcome.VIDEO,
    **key: object,
) -> None:
    """A job whose last look found it running `running_at` s after submission and whose next
    look, `done_by` s after, found it finished."""
    job = await running_job(store, running_at, **key)
    await store.transition(
        job.id,
        from_states=[JobState.POLLING],
        to_state=JobState.TO_DELIVER,
        now=T0,
        outcome=outcome,
        finished_at=T0 + timedelta(seconds=done_by),
    )


async def finished_job(
    store: JobStore, seconds: float, *, outcome: Outcome = Outcome.VIDEO, **key: object
) -> None:
    """A job the provider took `seconds` to finish (submitted at T0, polled every 2 s: the last
    look that found it running was 2 s before the one that found it done)."""
    await finished_job_seen(store, max(seconds - 1, 0), seconds + 1, outcome=outcome, **key)


# --- learning ------------------------------------------------------------------------------------


async def test_cold_start_uses_the_catalogue_time(store: JobStore) -> None:
    timing = CompletionTimes(store, now=Now())
    await timing.refresh()
    estimate = timing.estimate(SORA, "720p", 4)
    typical = CATALOG[SORA].typical_seconds
    assert not estimate.learned
    assert estimate.p50 == typical
    assert estimate.p10 < typical < estimate.p90
    # A model that left the catalogue still gets a sensible time.
    assert timing.estimate("retired/model-x", "720p", 4).p50 > 0


async def test_after_enough_finished_jobs_the_percentiles_follow_them(store: JobStore) -> None:
    now = Now()
    timing = CompletionTimes(store, now=now, refresh_seconds=60)
    for seconds in (200, 210, 220, 230):
        await finished_job(store, seconds)
    await timing.refresh()
    assert timing.estimate(SORA, "720p", 4).p50 == CATALOG[SORA].typical_seconds, "4 is too few"

    for seconds in (240, 250, 260, 270, 280, 290):
        await finished_job(store, seconds)
    await finished_job(store, 5, outcome=Outcome.FAILED)  # a quick refusal is not a video
    await timing.refresh_if_stale()
    assert not timing.estimate(SORA, "720p", 4).learned, "read again before the refresh time"
    now.advance(61)
    await timing.refresh_if_stale()
    estimate = timing.estimate(SORA, "720p", 4)
    assert estimate.learned and estimate.samples == 10
    # The log-normal through ten jobs of 200–290 s: the middle near 245 s, 10 % by ~209 s,
    # 90 % by ~283 s (within 3 %: a fit, not the sample's own percentiles).
    assert estimate.p50 == pytest.approx(245, rel=0.03)
    assert estimate.p10 == pytest.approx(209, rel=0.03)
    assert estimate.p90 == pytest.approx(283, rel=0.03)
    # Other settings of the same model keep their own (cold) figures.
    assert timing.estimate(SORA, "720p", 8).p50 == CATALOG[SORA].typical_seconds


async def test_sparse_looks_do_not_widen_the_learned_spread(store: JobStore) -> None:
    """Before it has learned, the bot looks at 18 s and then every 5 s from 63 s: a video that
    finished at 60 s is only known to have finished between 18 and 63 s. Learning must not
    take the middle of that gap (40 s) as its time, or every later plan watches far too early."""
    median, sigma = 90.0, 0.3
    looks = [18.0, *(63.0 + 5 * k for k in range(60))]
    normal = NormalDist()
    for i in range(40):
        seconds = median * math.exp(sigma * normal.inv_cdf((i + 0.5) / 40))
        done_by = next(t for t in looks if t >= seconds)
        running_at = max([0.0, *(t for t in looks if t < seconds)])
        await finished_job_seen(store, running_at, done_by)
    timing = CompletionTimes(store, now=Now())
    await timing.refresh()
    learned = timing.estimate(SORA, "720p", 4)
    truth = Estimate.log_normal(median, sigma, samples=40)
    assert learned.p50 == pytest.approx(median, rel=0.05)
    assert learned.p10 == pytest.approx(truth.p10, rel=0.08)  # midpoints would say ~47 s
    assert learned.p90 == pytest.approx(truth.p90, rel=0.08)


async def test_jobs_still_running_count_as_slow_ones(store: JobStore) -> None:
    """The newest finished jobs are the quick ones (the slow ones started at the same time are
    still running): learning from them alone would promise too soon a time on every status."""
    for seconds in (60, 62, 64, 66, 68, 70, 72, 74, 76, 78):
        await finished_job(store, seconds)
    for _ in range(10):  # submitted with them, still generating when last looked at, at 200 s
        await running_job(store, 200)
    timing = CompletionTimes(store, now=Now())
    await timing.refresh()
    estimate = timing.estimate(SORA, "720p", 4)
    assert estimate.samples == 10, "ten videos have finished"
    assert estimate.p50 > 78, "half the jobs took longer than every finished one"
    assert estimate.p90 > 200


async def test_one_setting_with_impossible_times_does_not_stop_the_others(
    store: JobStore,
) -> None:
    for _ in range(5):  # "finished" a tenth of a millisecond after submission (clock trouble)
        await finished_job_seen(store, 0.0, 0.0001)
    for seconds in (100, 110, 120, 130, 140):
        await finished_job(store, seconds, duration=8)
    timing = CompletionTimes(store, now=Now())
    await timing.refresh()
    assert not timing.estimate(SORA, "720p", 4).learned, "the catalogue's time stands in"
    assert timing.estimate(SORA, "720p", 8).learned


def test_figures_that_cannot_be_planned_for_still_get_polled() -> None:
    schedule = PollSchedule(settings(POLL_MIN_INTERVAL_SECONDS="2"))
    broken = Estimate(p10=math.nan, p50=math.nan, p90=math.nan, samples=10)
    first = schedule.first_delay(broken)
    later = [schedule.next_delay(elapsed=t, estimate=broken) for t in (first, 100.0, 1000.0)]
    assert all(math.isfinite(d) and 0 < d <= 30 for d in [first, *later])


async def test_an_early_look_only_where_refusals_come_early(store: JobStore) -> None:
    """An early look costs nearly a request per job (almost every job is still running), so it
    is kept only for settings whose failures have come early."""
    schedule = PollSchedule(settings(POLL_MIN_INTERVAL_SECONDS="2"))
    for seconds in (160, 170, 180, 185, 190, 195, 200, 210, 220, 240):
        await finished_job(store, seconds)
    timing = CompletionTimes(store, now=Now())
    await timing.refresh()
    calm = timing.estimate(SORA, "720p", 4)
    assert schedule.first_delay(calm) > calm.p10 / 2, "no look while no video can be ready"

    await finished_job(store, 12, outcome=Outcome.FAILED)  # refused soon after submission
    await finished_job(store, 14, outcome=Outcome.FAILED)
    await timing.refresh()
    refusing = timing.estimate(SORA, "720p", 4)
    assert refusing.quick_failures > 0.1
    assert schedule.first_delay(refusing) == pytest.approx(0.2 * refusing.p50)


async def test_only_the_newest_jobs_of_a_setting_count(store: JobStore) -> None:
    timing = CompletionTimes(store, now=Now(), samples_per_key=5)
    for seconds in (500, 500, 500, 500, 500, 100, 100, 100, 100, 100):
        await finished_job(store, seconds)
    await timing.refresh()
    assert timing.estimate(SORA, "720p", 4).p90 == pytest.approx(100, rel=0.1)


async def test_a_database_error_keeps_the_figures_it_had(store: JobStore) -> None:
    now = Now()
    timing = CompletionTimes(store, now=now)
    for seconds in (100, 110, 120, 130, 140):
        await finished_job(store, seconds)
    await timing.refresh()
    await store.close()  # the database goes away
    now.advance(3600)
    await timing.refresh_if_stale()
    assert timing.estimate(SORA, "720p", 4).p50 == pytest.approx(120, rel=0.03)


def test_durations_read_naturally() -> None:
    assert describe_seconds(100) == "1 min 40 s"
    assert describe_seconds(44) == "45 s"
    assert describe_seconds(59) == "1 min"
    assert describe_seconds(120) == "2 min"
    assert describe_seconds(1500) == "25 min"


# --- the poll schedule ---------------------------------------------------------------------------


def poll_times(schedule: PollSchedule, estimate: Estimate, until: float) -> list[float]:
    times = [schedule.first_delay(estimate)]
    while times[-1] < until:
        times.append(times[-1] + schedule.next_delay(elapsed=times[-1], estimate=estimate))
    return times


def settings(**env: str) -> Settings:
    return Settings.from_env({"DISCORD_TOKEN": "t", "AIMLAPI_KEY": "k", **env})


def test_polls_are_close_where_videos_finish_and_rare_elsewhere() -> None:
    schedule = PollSchedule(settings(POLL_MIN_INTERVAL_SECONDS="2"))
    learned = Estimate(p10=150, p50=200, p90=260, samples=50)
    times = poll_times(schedule, learned, 800)
    before = [t for t in times if t < learned.p10]
    window = [t for t in times if learned.p50 <= t <= learned.p90]
    long_after = [t for t in times if 450 <= t <= 800]  # beyond the 99.9th percentile (~390 s)
    assert len(before) <= 2, "polled while the video could not be ready"
    assert all(b - a <= 2 for a, b in itertools.pairwise(window))
    assert len(window) >= 25, "not watching closely where most videos finish"
    assert all(b - a >= 10 for a, b in itertools.pairwise(long_after)), (
        "still polling closely long after the usual time"
    )
    gaps_after_first_look = [b - a for a, b in itertools.pairwise(times[1:])]
    assert max(gaps_after_first_look) <= 30, "once watching starts, no gap over the maximum"


def test_the_window_moves_with_what_was_learned() -> None:
    schedule = PollSchedule(settings(POLL_MIN_INTERVAL_SECONDS="2"))
    fast = poll_times(schedule, Estimate(p10=40, p50=50, p90=65, samples=20), 300)
    slow = poll_times(schedule, Estimate(p10=160, p50=200, p90=260, samples=20), 300)
    assert sum(1 for t in fast if 40 <= t <= 65) >= sum(1 for t in slow if 40 <= t <= 65) + 7
    assert sum(1 for t in slow if 190 <= t <= 260) > sum(1 for t in fast if 190 <= t <= 260) + 20


def test_before_anything_is_learned_close_polls_are_spaced_wider() -> None:
    schedule = PollSchedule(settings(POLL_MIN_INTERVAL_SECONDS="2"))
    cold = poll_times(schedule, Estimate.cold(90), 300)
    window = [t for t in cold if 70 <= t <= 130]
    assert all(b - a >= PollSchedule.COLD_INTERVAL for a, b in itertools.pairwise(window))


def test_errors_still_back_off_and_fixed_stays_fixed() -> None:
    schedule = PollSchedule(settings(), rng=lambda: 1.0)
    estimate = Estimate(p10=60, p50=80, p90=110, samples=10)
    delays = [
        schedule.next_delay(elapsed=90, estimate=estimate, consecutive_errors=n) for n in (1, 3, 6)
    ]
    assert delays[0] < delays[1] < delays[2] <= PollSchedule.MAX_ERROR_DELAY
    fixed = FixedPollSchedule(settings(POLL_SCHEDULE="fixed", POLL_MIN_INTERVAL_SECONDS="10"))
    assert fixed.first_delay(estimate) == 10
    assert {fixed.next_delay(elapsed=t, estimate=estimate) for t in (0, 90, 500)} == {10}


async def test_the_service_polls_a_learned_model_where_it_finishes(world: World) -> None:
    """Ten earlier videos took about three minutes: the next job is left alone for most of
    that and watched closely around it."""
    provider_on_fake_time(world)
    for seconds in (170, 175, 180, 182, 185, 188, 190, 195, 200, 210):
        await finished_job(world.store, seconds, model="openai/sora-2-pro-i2v")
    world.provider.script_next_job(["generating", "completed"], complete_after=186)
    job = await world.animate()
    await world.run_for(150)
    assert poll_count(world) <= 2, "polled often while the video could not be ready"
    await world.run_for(100)
    assert [p.kind for p in world.delivery.for_job(job.id)] == ["video"]
    final = await world.store.get(job.id)
    assert final is not None and final.finished_at is not None and final.submitted_at is not None
    lag = (final.finished_at - final.submitted_at).total_seconds() - 186
    assert lag <= world.settings.poll_min_interval_seconds


# --- the ETA on the status message ---------------------------------------------------------------


def generating_job(since: datetime, **changes: object) -> Job:
    job = Job(
        id=7,
        state=JobState.POLLING,
        outcome=None,
        requester_id=1,
        guild_id=2,
        channel_id=3,
        thread_id=None,
        status_message_id=None,
        interaction_id=None,
        model=SORA,
        prompt="waves",
        duration=4,
        resolution="720p",
        orientation="landscape",
        fit="crop",
        image_width=1280,
        image_height=720,
        image_data=None,
        upload_limit_bytes=10 * 1024 * 1024,
        estimated_usd=None,
        provider_job_id="gen-7",
        provider_status="generating",
        submit_attempts=1,
        poll_attempts=1,
        consecutive_errors=0,
        next_poll_at=None,
        result_url=None,
        error_message=None,
        cost_usd=None,
        delivery_worker=None,
        delivery_lease_until=None,
        delivery_attempts=0,
        delivery_message_id=None,
        created_at=since,
        updated_at=since,
        submitted_at=since,
        finished_at=None,
        delivered_at=None,
    )
    return dataclasses.replace(job, **changes)  # type: ignore[arg-type]


def status_text(job: Job, timing: CompletionTimes) -> str:
    embed = status_embed(job, timing.eta(job))
    return " ".join(str(field.value) for field in embed.fields if field.name == "Status")


async def test_the_status_says_when_the_video_is_usually_ready(store: JobStore) -> None:
    now = Now()
    timing = CompletionTimes(store, now=now)
    for seconds in (80, 90, 95, 100, 100, 105, 110, 120, 130, 150):
        await finished_job(store, seconds)
    await timing.refresh()
    job = generating_job(now())
    now.advance(20)
    text = status_text(job, timing)
    # The fitted middle of those ten times is about 106 s, shown rounded to 10 s.
    assert "Usually ready in about 1 min 50 sec" in text
    p50 = timing.for_job(job).p50
    assert 100 <= p50 <= 110
    expected = int((job.created_at + timedelta(seconds=p50)).timestamp())
    assert f"<t:{expected}:R>" in text  # Discord keeps it live without edits
    assert "longer than usual" not in text
    now.advance(140)  # 160 s: past the 90th percentile (about 134 s)
    assert "Taking longer than usual" in status_text(job, timing)


def test_no_eta_before_generating_or_once_done() -> None:
    timing = CompletionTimes(None, now=Now())
    assert "Usually" in status_text(generating_job(T0), timing)  # cold start: the catalogue
    queued = generating_job(T0, state=JobState.SUBMITTING, submitted_at=None)
    assert timing.eta(queued) is None
    done = generating_job(T0, state=JobState.DONE, outcome=Outcome.VIDEO)
    assert timing.eta(done) is None
    assert "Usually" not in status_text(done, timing)


async def test_the_status_is_refreshed_once_when_a_job_runs_late(world: World) -> None:
    provider_on_fake_time(world)
    world.provider.script_next_job(["generating", "completed"], complete_after=400)
    job = await world.animate()
    p90 = world.service.timing.for_job(job).p90
    await world.run_for(p90 - 5, step=2)
    before = [s for s in world.delivery.statuses if s[0] == job.id]
    await world.run_for(60, step=2)
    after = [s for s in world.delivery.statuses if s[0] == job.id]
    assert len(after) == len(before) + 1, "one refresh to say it is taking longer than usual"
    current = await world.store.get(job.id)
    assert current is not None and world.service.timing.eta(current) is not None
    eta = world.service.timing.eta(current)
    assert eta is not None and eta.overdue


def look_outcome(
    estimate: Estimate, times: list[float], window: float = 2.0
) -> tuple[float, float]:
    """(expected requests per job, share of videos noticed within `window` s) of looks at
    `times`, from the estimate's log-normal: each look is paid for by the jobs still running at
    the look before it; a video finishing in (t − window, t] before look t is noticed in time."""
    requests = 1 + sum(estimate.survival(t) for t in [0.0, *times[:-1]])
    in_time = 0.0
    for previous, look in itertools.pairwise([0.0, *times]):
        in_time += estimate.survival(max(previous, look - window)) - estimate.survival(look)
    return requests, in_time


def spread_of(sigma: float, median: float = 90.0, samples: int = 100) -> Estimate:
    return Estimate.log_normal(median, sigma, samples=samples)


@pytest.mark.parametrize("sigma", [0.1, 0.2, 0.3, 0.5, 0.8])
def test_no_spread_costs_more_requests_than_a_10_second_poll(sigma: float) -> None:
    """Where half the videos cannot be caught within 2 s for that price (a wide spread), the
    median lag rises, never the number of requests (the operator's bill for polling)."""
    schedule = PollSchedule(settings(POLL_MIN_INTERVAL_SECONDS="2"))
    estimate = spread_of(sigma)
    requests, _ = look_outcome(estimate, poll_times(schedule, estimate, 3000))
    every_10_s, _ = look_outcome(estimate, [10.0 * k for k in range(1, 301)])
    assert requests <= every_10_s


def test_a_model_with_a_huge_spread_is_still_watched_from_early_on() -> None:
    """Half its videos take under a minute, some an hour: looks must not be spaced by the hour."""
    schedule = PollSchedule(settings(POLL_MIN_INTERVAL_SECONDS="2"))
    erratic = Estimate(p10=4, p50=60, p90=1000, samples=40)
    plan = schedule.plan(erratic)
    assert plan.times[0] <= 14, "the early look"
    assert sum(1 for t in plan.times if t <= 60) >= 5, "looks before the median"
    assert plan.times[-1] <= settings().job_timeout_seconds, "nothing planned past the time-out"


@pytest.mark.parametrize("sigma", [0.2, 0.3])
def test_half_the_videos_are_noticed_within_2_seconds(sigma: float) -> None:
    """The learned plan's point: for no more requests than a 10 s poll (which notices ~20 %
    within 2 s), most videos of a model with a typical spread are posted within one gap."""
    schedule = PollSchedule(settings(POLL_MIN_INTERVAL_SECONDS="2"))
    estimate = spread_of(sigma)
    _, in_time = look_outcome(estimate, poll_times(schedule, estimate, 3000))
    _, fixed_in_time = look_outcome(estimate, [10.0 * k for k in range(1, 301)])
    assert in_time >= 0.5
    assert fixed_in_time < 0.25


def test_a_new_plan_is_worked_out_off_the_event_loop() -> None:
    schedule = PollSchedule(settings(POLL_MIN_INTERVAL_SECONDS="2"))
    estimate = spread_of(0.37, median=123.0)  # a figure no other test plans for
    plan_polls.cache_clear()

    async def prepare_in_a_loop() -> None:
        loop_thread = threading.get_ident()
        planned_in: list[int] = []
        original = schedule.plan

        def plan(e: Estimate) -> PollPlan:
            planned_in.append(threading.get_ident())
            return original(e)

        schedule.plan = plan  # type: ignore[method-assign]
        await schedule.prepare(estimate)
        assert planned_in and loop_thread not in planned_in
        await schedule.prepare(estimate)
        assert len(planned_in) == 1, "a known estimate is not handed to a thread again"

    asyncio.run(prepare_in_a_loop())
    assert plan_polls.cache_info().currsize == 1, "the next look finds the plan ready"
