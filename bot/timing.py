"""How long each model really takes, learned from the jobs it finished.

Discord-free. `CompletionTimes` reads the jobs table (submitted → finished, video outcomes only)
for each (model, resolution, duration), keeps the result in memory and reads again every few
minutes; until a setting has enough finished jobs it answers from the catalogue's typical time.
The answer (`Estimate`: 10th, 50th and 90th percentile, seconds from submission) drives the poll
schedule (bot.polling.PollSchedule) and the ETA on the status message (`Eta`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from bot.catalog import CATALOG
from bot.i18n import Seconds
from bot.jobs import Job, JobState, Outcome
from bot.store import JobStore, jobs

log = logging.getLogger(__name__)

# Seconds assumed for a model that has left the catalogue while its jobs were running: they keep
# polling on an ordinary schedule instead of failing (the provider still has them).
UNKNOWN_MODEL_TYPICAL_SECONDS = 120.0

# Cold start: the catalogue gives one typical time; real generations spread around it. These
# factors make the 10th–90th percentile 0.7–1.5× the typical time (a log-normal spread of about
# 0.3), the window the schedule watched before it learned.
COLD_P10_FACTOR = 0.7
COLD_P90_FACTOR = 1.5

MIN_SAMPLES = 5
"""Finished jobs a setting needs before its own times replace the catalogue's."""
SAMPLES_PER_KEY = 200
"""The newest finished jobs per setting that count (older ones may predate a provider change)."""
RECENT_JOBS = 5000
"""Only this many newest jobs (by id) are read, so each refresh is a short primary-key range."""
REFRESH_SECONDS = 60.0
"""One short query a minute per process: a new model's times are learned within minutes."""
RETRY_SECONDS = 30.0
"""After a failed read (database away), try again this soon; the old figures stay meanwhile."""

_Z90 = 1.2815515655446004  # standard normal 90th percentile
_MIN_SIGMA = 0.05  # identical samples still leave a window a few polls wide


@dataclass(frozen=True)
class TimingKey:
    model: str
    resolution: str
    duration: int

    @classmethod
    def of(cls, job: Job) -> TimingKey:
        return cls(job.model, job.resolution, job.duration)


@dataclass(frozen=True)
class Estimate:
    """How long a job of one setting takes, in seconds from submission to the provider."""

    p10: float
    p50: float
    p90: float
    samples: int = 0
    """Finished jobs behind these figures; 0 when they come from the catalogue."""
    quick_failures: float = 0.0
    """Share of this setting's finished jobs that failed before its 10th percentile (a refusal
    the provider reports soon after submission): worth an early look when it is not rare."""

    @property
    def learned(self) -> bool:
        return self.samples > 0

    @classmethod
    def cold(cls, typical_seconds: float) -> Estimate:
        typical = max(typical_seconds, 1.0)
        return cls(COLD_P10_FACTOR * typical, typical, COLD_P90_FACTOR * typical)

    @classmethod
    def from_samples(cls, seconds: Sequence[float]) -> Estimate:
        ordered = sorted(seconds)
        if not ordered:
            raise ValueError("no samples")
        return cls(
            percentile(ordered, 0.1),
            percentile(ordered, 0.5),
            percentile(ordered, 0.9),
            samples=len(ordered),
        )

    @classmethod
    def from_intervals(
        cls, intervals: Sequence[tuple[float, float]], failed_after: Sequence[float] = ()
    ) -> Estimate:
        """From what the looks saw: each job finished after the last look that found it running
        and by the look that found it done (seconds from submission; by = infinity: still
        running, or given up, at the last look). The log-normal that makes those observations
        most likely, not their midpoints: a video that finished just before a late look would
        otherwise count as finishing halfway through a long quiet gap, and the spread would come
        out far too wide. Jobs still running must count too, or the newest finished jobs (the
        quick ones) make the times look shorter and narrower than they are."""
        if not intervals:
            raise ValueError("no samples")
        mu, sigma = fit_log_normal(intervals)
        if not (math.isfinite(mu) and math.isfinite(sigma) and -5 < mu < 12):
            raise ValueError("no sensible fit")  # (e^-5 s to e^12 s: ~2 days)
        finished = sum(1 for _, by in intervals if by != math.inf)
        fitted = cls.log_normal(math.exp(mu), sigma, samples=finished)
        quick = sum(1 for seconds in failed_after if seconds < fitted.p10)
        share = quick / max(1, finished + len(failed_after))
        return dataclasses.replace(fitted, quick_failures=share)

    @classmethod
    def log_normal(cls, median: float, sigma: float, *, samples: int) -> Estimate:
        """The percentiles of a log-normal with this median and spread σ."""
        return cls(
            median * math.exp(-_Z90 * sigma),
            median,
            median * math.exp(_Z90 * sigma),
            samples=samples,
        )

    @property
    def spread(self) -> float:
        """The log-normal σ through p10 and p90 (completion times are skewed to the right)."""
        if self.p10 <= 0 or self.p90 <= self.p10:
            return _MIN_SIGMA
        return max(_MIN_SIGMA, math.log(self.p90 / self.p10) / (2 * _Z90))

    @property
    def mean(self) -> float:
        return max(self.p50, 1.0) * math.exp(self.spread**2 / 2)

    def survival(self, seconds: float) -> float:
        """The share of jobs still running `seconds` after submission."""
        if seconds <= 0:
            return 1.0
        z = math.log(seconds / max(self.p50, 1.0)) / self.spread
        return 0.5 * math.erfc(z / math.sqrt(2))

    def quantile(self, z: float) -> float:
        """The time by which a fraction Φ(z) of jobs is done (log-normal through p50 and σ)."""
        return max(self.p50, 1.0) * math.exp(self.spread * z)


def fit_log_normal(
    intervals: Sequence[tuple[float, float]], *, iterations: int = 200
) -> tuple[float, float]:
    """Maximum-likelihood (μ, σ) of log completion times seen only as intervals (after, by].

    Expectation–maximisation: each log time is replaced by its expected value (and square) under
    the current fit, restricted to its interval; the new fit is their mean and spread. Every step
    raises the likelihood. An interval starting at 0 is open below; one ending at infinity is a
    job still running (or given up) after `after` seconds."""
    bounds: list[tuple[float, float]] = []
    for after, by in intervals:
        by = max(by, 1e-3)
        after = min(max(after, 0.0), by)
        if by - after < 1e-3:
            after = max(0.0, by - 1e-3)  # a point: a sliver around it
        if after <= 0 and by == math.inf:
            continue  # running, never looked at yet: says nothing
        bounds.append((math.log(after) if after > 0 else -math.inf, math.log(by)))
    if not any(high != math.inf for _, high in bounds):
        raise ValueError("no finished job to learn from")
    centres = [
        high if low == -math.inf else low if high == math.inf else (low + high) / 2
        for low, high in bounds
    ]
    mu = sum(centres) / len(centres)
    sigma = max(_MIN_SIGMA, math.sqrt(sum((c - mu) ** 2 for c in centres) / len(centres)))
    for _ in range(iterations):
        first_moment = second_moment = 0.0
        for (low, high), centre in zip(bounds, centres, strict=True):
            alpha, beta = (low - mu) / sigma, (high - mu) / sigma
            mass = normal_cdf(beta) - normal_cdf(alpha)
            if mass < 1e-12:
                # Far in a tail of the current fit: its nearest end stands in.
                value = high if beta < 0 else (centre if alpha == -math.inf else low)
                first_moment += value
                second_moment += value * value
                continue
            pdf_alpha = _normal_pdf(alpha) if alpha != -math.inf else 0.0
            alpha_pdf = alpha * pdf_alpha if alpha != -math.inf else 0.0
            pdf_beta = _normal_pdf(beta) if beta != math.inf else 0.0
            beta_pdf = beta * pdf_beta if beta != math.inf else 0.0
            shift = (pdf_alpha - pdf_beta) / mass
            mean = mu + sigma * shift
            variance = sigma**2 * (1 + (alpha_pdf - beta_pdf) / mass - shift**2)
            first_moment += mean
            second_moment += max(variance, 0.0) + mean * mean
        new_mu = first_moment / len(bounds)
        new_sigma = math.sqrt(max(second_moment / len(bounds) - new_mu**2, _MIN_SIGMA**2))
        converged = abs(new_mu - mu) < 1e-6 and abs(new_sigma - sigma) < 1e-6
        mu, sigma = new_mu, new_sigma
        if converged:
            break
    return mu, max(sigma, _MIN_SIGMA)


def normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def _normal_pdf(z: float) -> float:
    return math.exp(-z * z / 2) / math.sqrt(2 * math.pi)


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks of an ascending sequence."""
    if not ordered:
        raise ValueError("no values")
    position = fraction * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    weight = position - below
    return ordered[below] * (1 - weight) + ordered[above] * weight


@dataclass(frozen=True)
class Eta:
    """What the status message says about when the video should be ready."""

    usual_seconds: float
    """p50, measured from submission."""
    expected_at: datetime
    overdue: bool
    """Past the 90th percentile: taking longer than usual."""
    learned: bool


class CompletionTimes:
    """Learned completion times per (model, resolution, duration), cached in memory.

    `estimate`, `for_job` and `eta` answer at once from the cache (never touching the database);
    `refresh_if_stale` reads the jobs table when the cache is older than `refresh_seconds`.
    Several processes on one database each read it; they learn from each other's jobs.
    """

    def __init__(
        self,
        store: JobStore | None,
        *,
        now: Callable[[], datetime],
        refresh_seconds: float = REFRESH_SECONDS,
        min_samples: int = MIN_SAMPLES,
        samples_per_key: int = SAMPLES_PER_KEY,
        recent_jobs: int = RECENT_JOBS,
    ) -> None:
        self.store = store
        self._now = now
        self.refresh_seconds = refresh_seconds
        self.min_samples = min_samples
        self.samples_per_key = samples_per_key
        self.recent_jobs = recent_jobs
        self._learned: dict[TimingKey, Estimate] = {}
        self._next_refresh: datetime | None = None
        self._lock = asyncio.Lock()

    # --- answers (no I/O) ----------------------------------------------------------------------

    def estimate(self, model: str, resolution: str, duration: int) -> Estimate:
        learned = self._learned.get(TimingKey(model, resolution, duration))
        if learned is not None:
            return learned
        spec = CATALOG.get(model)
        return Estimate.cold(spec.typical_seconds if spec else UNKNOWN_MODEL_TYPICAL_SECONDS)

    def for_job(self, job: Job) -> Estimate:
        return self.estimate(job.model, job.resolution, job.duration)

    def eta(self, job: Job) -> Eta | None:
        """For a job the provider is working on; None before submission or once finished."""
        if job.state != JobState.POLLING or job.submitted_at is None:
            return None
        estimate = self.for_job(job)
        elapsed = (self._now() - job.submitted_at).total_seconds()
        return Eta(
            usual_seconds=estimate.p50,
            expected_at=job.submitted_at + timedelta(seconds=estimate.p50),
            overdue=elapsed > estimate.p90,
            learned=estimate.learned,
        )

    def became_overdue(self, before: Job, after: Job) -> bool:
        """Whether the 90th percentile fell between two consecutive looks at a job: the moment
        its status should say "taking longer than usual" (once per job)."""
        if after.submitted_at is None or before.last_checked_at is None:
            return False
        if after.last_checked_at is None:
            return False
        p90 = self.for_job(after).p90
        was = (before.last_checked_at - after.submitted_at).total_seconds()
        now = (after.last_checked_at - after.submitted_at).total_seconds()
        return was <= p90 < now

    # --- learning ------------------------------------------------------------------------------

    async def refresh_if_stale(self) -> None:
        if self._next_refresh is not None and self._now() < self._next_refresh:
            return
        async with self._lock:
            # Many polls ask at once: only the first reads, the rest find it fresh.
            if self._next_refresh is not None and self._now() < self._next_refresh:
                return
            await self.refresh()

    async def refresh(self) -> None:
        """Read the newest finished jobs and recompute every setting's percentiles."""
        if self.store is None:
            return
        try:
            durations = await self._read()
        except Exception as exc:
            exc_kind = type(exc).__name__
            # Learned times are a refinement: without them the catalogue's time still works.
            log.warning("could not read completion times (%s); keeping the old ones", exc_kind)
            self._next_refresh = self._now() + timedelta(seconds=RETRY_SECONDS)
            return
        videos, failures = durations
        enough = {
            key: seen
            for key, seen in videos.items()
            if sum(1 for _, by in seen if by != math.inf) >= self.min_samples
        }
        # Fitting is a few milliseconds of arithmetic per setting: kept off the event loop.
        self._learned = await asyncio.to_thread(self._fit_all, enough, failures)
        self._next_refresh = self._now() + timedelta(seconds=self.refresh_seconds)

    def _fit_all(
        self,
        videos: dict[TimingKey, list[tuple[float, float]]],
        failures: dict[TimingKey, list[float]],
    ) -> dict[TimingKey, Estimate]:
        learned: dict[TimingKey, Estimate] = {}
        for key, seen in videos.items():
            try:
                learned[key] = Estimate.from_intervals(seen, failures.get(key, ()))
            except (ValueError, ArithmeticError):
                # One setting's odd data never costs the others their figures.
                log.warning("no usable completion times for %s; keeping the previous", key.model)
                if key in self._learned:
                    learned[key] = self._learned[key]
        return learned

    async def _read(
        self,
    ) -> tuple[dict[TimingKey, list[tuple[float, float]]], dict[TimingKey, list[float]]]:
        """Per setting: what the looks saw of its newest jobs (intervals, see
        `_completion_interval`), going back until `samples_per_key` of them are finished videos;
        every job on the way counts, the ones still running (or given up) as "longer than the
        last look", so slow jobs are not left out. And after how many seconds its newest
        failures were noticed."""
        if self.store is None:
            return {}, {}
        async with self.store.engine.connect() as connection:
            newest = (await connection.execute(sa.select(sa.func.max(jobs.c.id)))).scalar()
            if newest is None:
                return {}, {}
            query = (
                sa.select(
                    jobs.c.model,
                    jobs.c.resolution,
                    jobs.c.duration,
                    jobs.c.submitted_at,
                    jobs.c.last_checked_at,
                    jobs.c.finished_at,
                    jobs.c.outcome,
                )
                .where(
                    jobs.c.id > int(newest) - self.recent_jobs,
                    jobs.c.submitted_at.is_not(None),
                )
                .order_by(jobs.c.id.desc())
            )
            rows = (await connection.execute(query)).all()
        videos: dict[TimingKey, list[tuple[float, float]]] = {}
        finished_videos: dict[TimingKey, int] = {}
        failures: dict[TimingKey, list[float]] = {}
        for model, resolution, duration, submitted, checked, finished, outcome in rows:
            key = TimingKey(model, resolution, int(duration))
            if outcome == Outcome.FAILED:
                failed = failures.setdefault(key, [])
                if finished is not None and len(failed) < self.samples_per_key:
                    failed.append(_completion_interval(submitted, checked, finished)[1])
                continue
            if finished_videos.get(key, 0) >= self.samples_per_key:
                continue
            if outcome == Outcome.VIDEO and finished is not None:
                seen = _completion_interval(submitted, checked, finished)
                if seen[1] <= 0:
                    continue
                finished_videos[key] = finished_videos.get(key, 0) + 1
            else:
                # Running, timed out or cancelled: it took longer than the last look.
                last_look = checked if checked is not None else submitted
                seen = (max(0.0, (last_look - submitted).total_seconds()), math.inf)
            videos.setdefault(key, []).append(seen)
        return videos, failures


def _completion_interval(
    submitted_at: datetime, last_checked_at: datetime | None, finished_at: datetime
) -> tuple[float, float]:
    """When the provider finished, as the looks saw it: after the last look that found the job
    still running and by the look that found it done (seconds from submission)."""
    before = last_checked_at if last_checked_at is not None else submitted_at
    if not submitted_at <= before <= finished_at:
        before = finished_at
    return (before - submitted_at).total_seconds(), (finished_at - submitted_at).total_seconds()


def round_duration(seconds: float) -> float:
    """About as precise as a typical time deserves: 5 s steps under a minute, 10 s steps under
    ten minutes, whole minutes beyond."""
    if seconds < 57.5:
        return float(max(5, round(seconds / 5) * 5))
    if seconds < 595:
        return float(round(seconds / 10) * 10)
    return float(round(seconds / 60) * 60)


def about_seconds(seconds: float) -> Seconds:
    """A typical time as members see it, in their language ("1 min 40 sec", "1 Min., 40 Sek.")."""
    return Seconds(round_duration(seconds))


def describe_seconds(seconds: float) -> str:
    """'45 s', '1 min 40 s', '12 min' in English, for logs (members get `about_seconds`)."""
    rounded = int(round_duration(seconds))
    if rounded < 60:
        return f"{rounded} s"
    minutes, rest = divmod(rounded, 60)
    return f"{minutes} min" if rest == 0 else f"{minutes} min {rest} s"
