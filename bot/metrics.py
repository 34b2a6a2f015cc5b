"""Prometheus metrics and a health check for one bot process. Discord-free.

`Metrics` holds every metric in a registry of its own (never prometheus_client's global one, so
two bots in one test process, or a benchmark, never mix figures). The core takes one through its
constructors and defaults to `NullMetrics`, which records nothing: nothing depends on metrics
being configured.

What is measured where:

* hooks (one call each): provider requests in bot.provider, jobs finished / delivery lag /
  re-encodes in bot.service;
* at scrape time (`MetricsServer` calls its `refresh` before answering /metrics): jobs by state
  and this month's reserved and spent dollars (read from the database, so they are bot-wide
  and the same in every process), gateway latency (set by the Discord layer);
* continuously: event-loop lag (`MetricsServer` runs the monitor task).

Per process: no `worker` label; each process serves its own endpoint, so Prometheus' `instance`
label (the scrape target) tells processes apart. `animate_process_info{worker=...}` ties an
instance to the worker id in the logs and in the jobs table's lease columns.

`MetricsServer` serves `/metrics` (Prometheus text format) and `/healthz` (200 when the gateway
is connected and the database answers `SELECT 1`, else 503, each with a one-line reason) with
aiohttp, in the bot's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.jobs import ACTIVE_STATES

log = logging.getLogger(__name__)

PROVIDER_OPERATIONS = ("submit", "poll", "download")
REENCODE_RESULTS = ("fitted", "no_fit", "error")

# Seconds. Provider calls: a poll answers in well under a second, a submit carries ~1 MB of
# image, a download a whole video (up to DOWNLOAD_TIMEOUT_SECONDS).
_PROVIDER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# The poll-schedule goal is a p50 of 2 s; re-encoded uploads take tens of seconds.
_DELIVERY_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
# The load goal is "no stall over 50 ms".
_LOOP_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

LOOP_MONITOR_INTERVAL_SECONDS = 0.01
"""How often the event-loop monitor wakes up. A stall shows as its length less up to this much
(it began after the last wake-up), so the interval is well under the 50 ms that matters; each
wake-up costs microseconds. At 0.1 s a 66 ms stall could show as 6."""
DATABASE_CHECK_TIMEOUT_SECONDS = 3.0
REFRESH_TIMEOUT_SECONDS = 5.0


class Metrics:
    """Every metric of one process, in its own `CollectorRegistry`.

    The hook methods are what the core calls; each is cheap (a dictionary look-up and a lock).
    """

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # RSS, CPU and open files of this process (the load benchmark's memory goal).
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self._info = Info("animate_process", "This bot process (its worker id).", registry=r)
        self._jobs = Gauge(
            "animate_jobs",
            "Unfinished jobs by state, whole bot (read from the database at scrape time).",
            ["state"],
            registry=r,
        )
        self._finished = Counter(
            "animate_jobs_finished",
            "Jobs whose outcome this process learned, by outcome and model.",
            ["outcome", "model"],
            registry=r,
        )
        self._provider_seconds = Histogram(
            "animate_provider_request_seconds",
            "Provider calls (submit, poll, download), retries included, by operation.",
            ["operation"],
            buckets=_PROVIDER_BUCKETS,
            registry=r,
        )
        self._provider_errors = Counter(
            "animate_provider_errors",
            "Provider calls that failed, by operation and error class.",
            ["operation", "kind"],
            registry=r,
        )
        self._delivery_lag = Histogram(
            "animate_delivery_lag_seconds",
            "From the poll that saw the outcome to the result posted in Discord, by outcome.",
            ["outcome"],
            buckets=_DELIVERY_BUCKETS,
            registry=r,
        )
        self._reencodes = Counter(
            "animate_reencodes",
            "Videos re-encoded to fit an upload limit, by result "
            "(fitted, no_fit: no acceptable encode fits, error: unreadable video).",
            ["result"],
            registry=r,
        )
        self._reserved = Gauge(
            "animate_month_reserved_usd",
            "Dollars held for unfinished videos accepted this UTC month, whole bot.",
            registry=r,
        )
        self._spent = Gauge(
            "animate_month_spent_usd",
            "Dollars settled (charged) for videos accepted this UTC month, whole bot.",
            registry=r,
        )
        self._loop_lag = Histogram(
            "animate_event_loop_lag_seconds",
            "How late the event loop ran a timer (scheduling delay).",
            buckets=_LOOP_LAG_BUCKETS,
            registry=r,
        )
        self._loop_lag_max = Gauge(
            "animate_event_loop_lag_max_seconds",
            "The longest event-loop delay since the previous scrape.",
            registry=r,
        )
        self._gateway_latency = Gauge(
            "animate_gateway_latency_seconds",
            "Discord gateway heartbeat latency of this process (mean over its shards); "
            "NaN while not connected.",
            registry=r,
        )
        self._gateway_latency.set(math.nan)
        self._lag_window_max = 0.0
        # Label values known up front are shown as 0 from the start, so rate() and alerts work
        # before the first event.
        for state in ACTIVE_STATES:
            self._jobs.labels(state=str(state))
        for operation in PROVIDER_OPERATIONS:
            self._provider_seconds.labels(operation=operation)
        for result in REENCODE_RESULTS:
            self._reencodes.labels(result=result)

    # --- hooks -----------------------------------------------------------------------------------

    def set_worker(self, worker: str) -> None:
        """The worker id this process writes into the jobs it leases (and logs)."""
        self._info.info({"worker": worker})

    @contextlib.contextmanager
    def provider_call(self, operation: str) -> Iterator[None]:
        """Time one provider call; an exception (not a cancellation) counts as an error."""
        started = time.perf_counter()
        try:
            yield
        except Exception as exc:
            self._provider_errors.labels(operation=operation, kind=type(exc).__name__).inc()
            raise
        finally:
            self._provider_seconds.labels(operation=operation).observe(
                time.perf_counter() - started
            )

    def job_finished(self, *, outcome: str, model: str) -> None:
        self._finished.labels(outcome=str(outcome), model=model).inc()

    def delivered(self, *, outcome: str, lag_seconds: float) -> None:
        self._delivery_lag.labels(outcome=str(outcome)).observe(max(0.0, lag_seconds))

    def reencoded(self, result: str) -> None:
        self._reencodes.labels(result=result).inc()

    def set_jobs_by_state(self, counts: Mapping[str, int]) -> None:
        for state in ACTIVE_STATES:
            self._jobs.labels(state=str(state)).set(counts.get(str(state), 0))

    def set_month_money(self, *, reserved_usd: float, spent_usd: float) -> None:
        self._reserved.set(reserved_usd)
        self._spent.set(spent_usd)

    def set_gateway_latency(self, seconds: float) -> None:
        self._gateway_latency.set(seconds if math.isfinite(seconds) else math.nan)

    def loop_lag(self, seconds: float) -> None:
        self._loop_lag.observe(seconds)
        self._lag_window_max = max(self._lag_window_max, seconds)

    # --- output ----------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition; closes the window of the max event-loop lag."""
        self._loop_lag_max.set(self._lag_window_max)
        self._lag_window_max = 0.0
        return generate_latest(self.registry)


class NullMetrics(Metrics):
    """Records nothing: the default wherever no metrics endpoint is configured."""

    def __init__(self) -> None:  # no registry, no collectors
        pass

    def set_worker(self, worker: str) -> None:
        pass

    @contextlib.contextmanager
    def provider_call(self, operation: str) -> Iterator[None]:
        yield

    def job_finished(self, *, outcome: str, model: str) -> None:
        pass

    def delivered(self, *, outcome: str, lag_seconds: float) -> None:
        pass

    def reencoded(self, result: str) -> None:
        pass

    def set_jobs_by_state(self, counts: Mapping[str, int]) -> None:
        pass

    def set_month_money(self, *, reserved_usd: float, spent_usd: float) -> None:
        pass

    def set_gateway_latency(self, seconds: float) -> None:
        pass

    def loop_lag(self, seconds: float) -> None:
        pass

    def render(self) -> bytes:
        return b""


NO_METRICS: Metrics = NullMetrics()


# --- figures read from the database --------------------------------------------------------------


async def jobs_by_state(engine: AsyncEngine) -> dict[str, int]:
    """Unfinished jobs per state. Only active states: `done` grows forever (the finished counter
    covers it), and the state index makes this count cheap."""
    from bot.store import jobs  # the table; imported late so this module stays light

    query = (
        sa.select(jobs.c.state, sa.func.count())
        .where(jobs.c.state.in_(ACTIVE_STATES))
        .group_by(jobs.c.state)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return {str(state): int(count) for state, count in rows}


async def database_answers(engine: AsyncEngine) -> None:
    """`SELECT 1`, within DATABASE_CHECK_TIMEOUT_SECONDS; raises when the database does not
    answer (TimeoutError when it is too slow)."""
    async with asyncio.timeout(DATABASE_CHECK_TIMEOUT_SECONDS), engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))


async def monitor_event_loop(
    metrics: Metrics, interval: float = LOOP_MONITOR_INTERVAL_SECONDS
) -> None:
    """Forever: ask the loop to run a callback `interval` from now, and record how much later
    than asked it ran it.

    Any callback that holds the loop (a blocking call, a long computation) shows up here as lag.
    A plain timer callback, not a task that sleeps: a task resumes one loop pass after its
    timer fired, so its delay added up two passes as if the loop had never returned to its
    events in between (bench/load.py: 51 ms where no pass took over 50).
    """
    loop = asyncio.get_running_loop()
    handle: asyncio.TimerHandle

    def beat(asked: float) -> None:
        nonlocal handle
        metrics.loop_lag(max(0.0, loop.time() - asked))
        due = loop.time() + interval
        handle = loop.call_at(due, beat, due)

    due = loop.time() + interval
    handle = loop.call_at(due, beat, due)
    try:
        await loop.create_future()  # until cancelled
    finally:
        handle.cancel()


# --- the HTTP endpoint ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthChecks:
    """What /healthz asks. `gateway` returns why the gateway is not usable, or None when it is;
    `database` raises when the database does not answer."""

    gateway: Callable[[], str | None]
    database: Callable[[], Awaitable[None]]


class MetricsServer:
    """/metrics and /healthz on `host:port`, in the running event loop."""

    def __init__(
        self,
        metrics: Metrics,
        checks: HealthChecks,
        *,
        host: str,
        port: int,
        refresh: Callable[[], Awaitable[None]] | None = None,
        loop_interval: float = LOOP_MONITOR_INTERVAL_SECONDS,
    ) -> None:
        self.metrics = metrics
        self.checks = checks
        self.host = host
        self.port = port
        self._refresh = refresh
        self._loop_interval = loop_interval
        self._runner: web.AppRunner | None = None
        self._monitor: asyncio.Task[None] | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._monitor = asyncio.create_task(
            monitor_event_loop(self.metrics, self._loop_interval), name="event-loop-monitor"
        )
        log.info("metrics and health on http://%s:%d/metrics and /healthz", self.host, self.port)

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        if self._refresh is not None:
            try:
                async with asyncio.timeout(REFRESH_TIMEOUT_SECONDS):
                    await self._refresh()
            except Exception as exc:
                # The process's own figures are still worth serving; the database ones stay
                # as last read, and /healthz says what is wrong.
                log.warning("metrics: could not read the database figures (%s)", type(exc).__name__)
        body = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        reason = await self.problem()
        if reason is None:
            return web.Response(text="ok: gateway connected, database answers\n")
        return web.Response(status=503, text=reason + "\n")

    async def problem(self) -> str | None:
        """Why this process is unhealthy, in one line; None when it is healthy."""
        gateway = self.checks.gateway()
        if gateway is not None:
            return gateway
        try:
            await self.checks.database()
        except TimeoutError:
            return f"the database did not answer within {DATABASE_CHECK_TIMEOUT_SECONDS:g} s"
        except Exception as exc:
            # The class only: driver messages can carry host names and user names.
            return f"the database does not answer ({type(exc).__name__})"
        return None


async def refresh_database_figures(
    metrics: Metrics,
    engine: AsyncEngine,
    month_money: Callable[[datetime], Awaitable[tuple[float, float]]],
    now: datetime,
) -> None:
    """Jobs by state and this month's money, read fresh (called at scrape time)."""
    metrics.set_jobs_by_state(await jobs_by_state(engine))
    reserved, spent = await month_money(now)
    metrics.set_month_money(reserved_usd=reserved, spent_usd=spent)
