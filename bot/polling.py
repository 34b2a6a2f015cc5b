"""When to ask the provider about a running job again.

Discord-free. The provider says nothing about progress (its statuses are not even monotonic), so
every look costs one request and the only knowledge is how long this model, resolution and
duration usually take (bot.timing). From that, `plan_polls` works out the looks that notice the
most videos within one gap (`POLL_MIN_INTERVAL_SECONDS`) while keeping the wait short for the
others, for no more requests than a fixed 10 s poll would make. `PollSchedule` follows the plan;
`FixedPollSchedule` polls at a constant rate.

A look at a moment `t` is paid for by every job still running at the look before it, so looks
where nearly every job is still running (early) are dear and looks late in the spread are cheap.
The plan is the best such trade-off on a grid of one gap (for the weight the budget allows),
found by dynamic programming over the log-normal fit of the learned times (see `plan_polls`).
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from bot.config import Settings
from bot.timing import Estimate, normal_cdf

log = logging.getLogger(__name__)

HORIZON_Z = 3.1
"""The plan ends at the 99.9th percentile; later looks follow the growing tail gaps."""
BUDGET_SHARE = 0.95
"""Plans aim this far under a fixed poll's requests: the learned spread is an estimate, and a tail
wider than estimated makes the late close looks dearer than planned."""
SPREAD_MARGIN = 1.1
"""... and stay under it even if the true spread is this much wider than the learned one (with
200 jobs the estimate is good to about ±5 %; a wider tail makes late close looks dearer)."""
MAX_PLAN_POINTS = 600
"""Grid points at most (a model that takes an hour gets a coarser grid, not a slow plan)."""


@dataclass(frozen=True)
class PollPlan:
    """Planned looks, in seconds after submission, and what they are expected to achieve."""

    times: tuple[float, ...]
    requests: float
    """Expected looks per job (the submit not counted)."""
    budget: float
    """Expected looks per job of a fixed poll every BUDGET_INTERVAL seconds, the ceiling."""
    noticed_within_gap: float
    """Share of videos noticed within one gap of finishing."""
    mean_lag: float
    """Expected seconds from finishing to being noticed (within the plan's horizon)."""

    def next_after(self, elapsed: float) -> float | None:
        index = bisect.bisect_left(self.times, elapsed)
        return self.times[index] if index < len(self.times) else None


class _LogNormal:
    """Completion times as the estimate fits them: log-normal through p50 with its spread."""

    def __init__(self, estimate: Estimate, widen: float = 1.0) -> None:
        self.sigma = estimate.spread * widen
        self.mu = math.log(max(estimate.p50, 1.0))
        self.mean = math.exp(self.mu + self.sigma**2 / 2)

    def done_by(self, seconds: float) -> float:
        if seconds <= 0:
            return 0.0
        return normal_cdf((math.log(seconds) - self.mu) / self.sigma)

    def partial_mean(self, seconds: float) -> float:
        """E[T; T ≤ seconds]: what the completion times of the jobs done by then add up to."""
        if seconds <= 0:
            return 0.0
        return self.mean * normal_cdf((math.log(seconds) - self.mu - self.sigma**2) / self.sigma)


@functools.lru_cache(maxsize=256)
def plan_polls(
    estimate: Estimate,
    *,
    first: float | None,
    window: float,
    max_gap: float,
    budget_interval: float,
    lag_weight: float,
    budget_share: float = BUDGET_SHARE,
    spread_margin: float = SPREAD_MARGIN,
    give_up_after: float = math.inf,
) -> PollPlan:
    """The looks that minimise  requests + a·P(noticed later than `window`) + lag_weight·E[lag]
    with `a` as large as the request budget (`budget_share` of a fixed `budget_interval` poll's)
    allows.

    Grid: every `window` seconds (coarser for very slow models). The first look is fixed at
    `first` (an early look for quick refusals) or, with None, planned like the rest; after it
    the next may come at any time, later gaps are at most `max_gap` so no video waits long once
    the usual time has come. Cached per estimate (they
    change at most once a refresh); `PollSchedule.prepare` computes new ones off the loop.
    """
    times_fit = _LogNormal(estimate)
    # Nothing is planned past the job's time-out: with a very wide spread the 99.9th percentile
    # could be days away and the grid would become too coarse to place the first looks.
    horizon = min(estimate.quantile(HORIZON_Z), max(give_up_after, 4 * window))
    step = max(window, horizon / MAX_PLAN_POINTS)
    # From `free_index` (the submission, or the early look) the next look may come at any time.
    free_index = 0 if first is None else max(1, math.ceil(first / step - 1e-9))
    last_index = max(free_index + 1, math.ceil(horizon / step))
    grid = [k * step for k in range(last_index + 1)]
    done = [times_fit.done_by(t) for t in grid]
    partial = [times_fit.partial_mean(t) for t in grid]
    done_before_window = [times_fit.done_by(t - window) for t in grid]
    longest = max(1, int(max_gap / step))
    # A fixed poll's look k + 1 is paid for by the jobs still running at look k.
    fixed_looks = range(int(horizon // budget_interval) + 2)
    budget = budget_share * sum(1 - times_fit.done_by(budget_interval * k) for k in fixed_looks)
    wider = _LogNormal(estimate, widen=spread_margin)
    budget_if_wider = sum(1 - wider.done_by(budget_interval * k) for k in fixed_looks)

    def affordable(plan: PollPlan) -> bool:
        if plan.requests > budget:
            return False
        looks = [0.0, *plan.times[:-1]]
        return sum(1 - wider.done_by(t) for t in looks) <= budget_if_wider

    def solve(miss_weight: float, weight: float) -> PollPlan:
        # best[k]: the least cost from a look at grid[k] (job still running) to the horizon.
        best = [0.0] * (last_index + 1)
        following = [last_index] * (last_index + 1)
        for k in range(last_index - 1, free_index - 1, -1):
            running, done_k, partial_k = 1 - done[k], done[k], partial[k]
            end = last_index if k == free_index else min(last_index, k + longest)
            cheapest = math.inf
            for j in range(k + 1, end + 1):
                finished = done[j] - done_k
                lag = grid[j] * finished - (partial[j] - partial_k)
                missed = done_before_window[j] - done_k
                cost = running + weight * lag + best[j]
                if missed > 0:
                    cost += miss_weight * missed
                if cost < cheapest:
                    cheapest, following[k] = cost, j
            best[k] = cheapest
        # Walk the plan and measure it (from the submission, every look counted on the way).
        looks: list[float] = []
        requests = lag = missed = 0.0
        k = 0
        if free_index > 0:  # the early look, paid for by every job
            looks.append(grid[free_index])
            requests = 1.0
            lag = grid[free_index] * done[free_index] - partial[free_index]
            missed = done_before_window[free_index]
            k = free_index
        while k < last_index:
            j = following[k]
            requests += 1 - done[k]
            lag += grid[j] * (done[j] - done[k]) - (partial[j] - partial[k])
            missed += max(0.0, done_before_window[j] - done[k])
            looks.append(grid[j])
            k = j
        return PollPlan(tuple(looks), requests, budget, 1 - missed, lag)

    weight = lag_weight
    plan = solve(0.0, weight)
    while not affordable(plan) and weight > 1e-4:
        # The lag term alone asks for more looks than the budget: weigh it less.
        weight /= 2
        plan = solve(0.0, weight)
    low, high = 0.0, 256.0
    chosen = plan
    for _ in range(12):
        middle = (low + high) / 2
        candidate = solve(middle, weight)
        if affordable(candidate):
            low, chosen = middle, candidate
        else:
            high = middle
    return chosen


class PollSchedule:
    """When to ask the provider again, from the learned completion times (bot.timing).

    The plan of `plan_polls` on the learned times: an early look only where this setting has
    had quick refusals (a look when nearly every job is still running costs almost a request per
    job), then typically quiet until shortly before the median, a look every
    POLL_MIN_INTERVAL_SECONDS through the late part of the spread, and gaps of at most
    POLL_MAX_INTERVAL_SECONDS elsewhere, costing no more requests than a fixed 10 s poll. Past
    the plan (the 99.9th percentile) gaps grow. Until a setting has learned times, a window of
    0.7–1.5× the catalogue's time is watched every COLD_INTERVAL seconds. Errors back off
    exponentially with jitter.
    """

    EARLY_CHECK_FRACTION = 0.2
    """The early look, at this fraction of the usual time: always before anything is learned."""
    QUICK_FAILURES_FOR_EARLY_LOOK = 0.02
    """Once learned, the early look stays if at least this share of jobs failed that early."""
    BUDGET_INTERVAL = 10.0
    """A plan never expects more requests than polling every this many seconds."""
    LAG_WEIGHT = 0.2
    """Requests one second of expected waiting is worth: besides noticing many videos within one
    gap, the plan keeps the others' wait short (0 would leave early finishers waiting long)."""
    TAIL_GROWTH = 0.25
    """Past the plan each gap grows by a quarter of the time since it ended."""
    COLD_INTERVAL = 5.0
    """Until a setting has learned times, the window is the cold estimate's p10–p90 (0.7–1.5×
    the catalogue's time) with polls this far apart: the catalogue's figure can be far off, and
    close polls in the wrong place cost a request each for nothing."""
    MAX_ERROR_DELAY = 300.0

    def __init__(self, settings: Settings, rng: Callable[[], float] = random.random) -> None:
        self.min_interval = settings.poll_min_interval_seconds
        self.max_interval = settings.poll_max_interval_seconds
        self.give_up_after = settings.job_timeout_seconds
        self.rng = rng
        self._planned: set[Estimate] = set()

    def first_delay(self, estimate: Estimate) -> float:
        if self._early_look(estimate) is None and (plan := self._plan_or_none(estimate)):
            return plan.times[0]
        return self._early_look_at(estimate)

    def _early_look(self, estimate: Estimate) -> float | None:
        if estimate.learned and estimate.quick_failures < self.QUICK_FAILURES_FOR_EARLY_LOOK:
            return None
        return self._early_look_at(estimate)

    def _early_look_at(self, estimate: Estimate) -> float:
        return max(self.min_interval, self.EARLY_CHECK_FRACTION * estimate.p50)

    def plan(self, estimate: Estimate) -> PollPlan:
        return plan_polls(
            estimate,
            first=self._early_look(estimate),
            window=self.min_interval,
            max_gap=self.max_interval,
            budget_interval=self.BUDGET_INTERVAL,
            lag_weight=self.LAG_WEIGHT,
            give_up_after=self.give_up_after,
        )

    async def prepare(self, estimate: Estimate) -> None:
        """Work out a new estimate's plan in a thread (tens of milliseconds of CPU), so the event
        loop never waits for it; later `next_delay` calls find it cached."""
        if estimate.learned and estimate not in self._planned:
            await asyncio.to_thread(self._plan_or_none, estimate)
            if len(self._planned) > 256:
                self._planned.clear()  # estimates are replaced every refresh; old ones go
            self._planned.add(estimate)

    def next_delay(
        self, *, elapsed: float, estimate: Estimate, consecutive_errors: int = 0
    ) -> float:
        if consecutive_errors > 0:
            return self.error_delay(consecutive_errors)
        plan = self._plan_or_none(estimate)
        if plan is None:
            return self._cold_delay(elapsed, estimate)
        # Looks happen on the loop's tick, a little after their planned moment: a planned look
        # less than half a gap away counts as this one.
        upcoming = plan.next_after(elapsed + self.min_interval / 2)
        if upcoming is not None:
            return upcoming - elapsed
        overdue = max(0.0, elapsed - plan.times[-1])
        return min(self.max_interval, self.min_interval + self.TAIL_GROWTH * overdue)

    def _plan_or_none(self, estimate: Estimate) -> PollPlan | None:
        """The plan, or None before anything is learned, or if the figures cannot be planned
        for (the catalogue-time schedule then stands in: polling never stops over it)."""
        if not estimate.learned:
            return None
        try:
            return self.plan(estimate)
        except (ValueError, ArithmeticError):
            log.warning(
                "could not plan polls for p50 %.0f s; using the catalogue window", estimate.p50
            )
            return None

    def _cold_delay(self, elapsed: float, estimate: Estimate) -> float:
        # The catalogue's time may be far off: a wide window, not closely watched.
        window_start, window_end = estimate.p10, estimate.p90
        gap = max(self.min_interval, self.COLD_INTERVAL)
        if elapsed < window_start - gap:
            return window_start - elapsed
        if elapsed < max(window_end, window_start + 2 * gap):
            return gap
        overdue = elapsed - window_end
        return min(self.max_interval, self.min_interval + self.TAIL_GROWTH * overdue)

    def error_delay(self, consecutive_errors: int) -> float:
        ceiling = min(self.MAX_ERROR_DELAY, self.min_interval * math.pow(2, consecutive_errors))
        # Full jitter keeps many bots (or jobs) from retrying in lock-step.
        return max(self.min_interval, ceiling * (0.5 + 0.5 * self.rng()))


class FixedPollSchedule(PollSchedule):
    """Poll every POLL_MIN_INTERVAL_SECONDS from the start (errors still back off)."""

    def first_delay(self, estimate: Estimate) -> float:
        return self.min_interval

    async def prepare(self, estimate: Estimate) -> None:
        return None

    def next_delay(
        self, *, elapsed: float, estimate: Estimate, consecutive_errors: int = 0
    ) -> float:
        if consecutive_errors > 0:
            return self.error_delay(consecutive_errors)
        return self.min_interval
