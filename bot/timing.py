"""How long each model really takes, learned from the jobs it finished.

Discord-free. `CompletionTimes` reads the jobs table (submitted → finished, video outcomes only)
for each (model, resolution, duration), keeps the result in memory and reads again every few
minutes; until a setting has enough finished jobs it answers from the catalogue's typical time.
The answer (`Estimate`: 10th, 50th and 90th percentile, seconds from submission) drives the poll
schedule (bot.service.PollSchedule) and the ETA on the status message (`Eta`).
"""

from __future__ import annotations

import asyncio
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
        self._learned = {
            key: Estimate.from_samples(seconds)
            for key, seconds in durations.items()
            if len(seconds) >= self.min_samples
        }
        self._next_refresh = self._now() + timedelta(seconds=self.refresh_seconds)

    async def _read(self) -> dict[TimingKey, list[float]]:
        if self.store is None:
            return {}
        async with self.store.engine.connect() as connection:
            newest = (await connection.execute(sa.select(sa.func.max(jobs.c.id)))).scalar()
            if newest is None:
                return {}
            query = (
                sa.select(
                    jobs.c.model,
                    jobs.c.resolution,
                    jobs.c.duration,
                    jobs.c.submitted_at,
                    jobs.c.last_checked_at,
                    jobs.c.finished_at,
                )
                .where(
                    jobs.c.id > int(newest) - self.recent_jobs,
                    jobs.c.outcome == Outcome.VIDEO,
                    jobs.c.submitted_at.is_not(None),
                    jobs.c.finished_at.is_not(None),
                )
                .order_by(jobs.c.id.desc())
            )
            rows = (await connection.execute(query)).all()
        durations: dict[TimingKey, list[float]] = {}
        for model, resolution, duration, submitted_at, last_checked_at, finished_at in rows:
            seconds = _completion_seconds(submitted_at, last_checked_at, finished_at)
            kept = durations.setdefault(TimingKey(model, resolution, int(duration)), [])
            if seconds > 0 and len(kept) < self.samples_per_key:
                kept.append(seconds)
        return durations


def _completion_seconds(
    submitted_at: datetime, last_checked_at: datetime | None, finished_at: datetime
) -> float:
    """When the provider finished, as best we know: between the last look that found the job
    still running and the look that found it done. The middle of that gap, not its end: a job
    that finished long before a sparse look would otherwise teach the schedule to look later
    still."""
    before = last_checked_at if last_checked_at is not None else submitted_at
    if not submitted_at <= before <= finished_at:
        before = finished_at
    return ((before - submitted_at) + (finished_at - before) / 2).total_seconds()


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
