"""Metrics and health: what an operator's Prometheus and health check see.

End to end: the real bot (fake Discord, fake provider) with METRICS_PORT set serves the metric
names and figures after a job runs, and /healthz follows the gateway and the database (a real
PostgreSQL that stops accepting connections). At the core: the hooks in the job service and
the provider client count what happened, and nothing listens without METRICS_PORT.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import math
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.catalog import DEFAULT_MODEL_ID
from bot.config import Settings
from bot.errors import ConfigError
from bot.metrics import (
    NO_METRICS,
    HealthChecks,
    Metrics,
    MetricsServer,
    NullMetrics,
    monitor_event_loop,
)
from bot.provider import ProviderClient, RetryPolicy
from bot.service import JobService
from tests.postgres import SUPERUSER, PostgresServer
from tests.test_discord_bot import VIDEO, Env, started, thread_for
from tests.test_discord_bot import env as env  # the fixture, shared with the end-to-end tests
from tests.test_service import World, _no_sleep
from tests.test_service import world as world  # the fixture, shared with the service tests

METRIC_NAMES = (
    "animate_jobs",
    "animate_jobs_finished_total",
    "animate_provider_request_seconds",
    "animate_provider_errors",  # a counter family: no sample before the first error
    "animate_delivery_lag_seconds",
    "animate_reencodes_total",
    "animate_month_reserved_usd",
    "animate_month_spent_usd",
    "animate_event_loop_lag_seconds",
    "animate_event_loop_lag_max_seconds",
    "animate_gateway_latency_seconds",
    "animate_process_info",
    "process_resident_memory_bytes",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition, or None when absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def names_in(text: str) -> set[str]:
    found = set()
    for family in text_string_to_metric_families(text):
        found.add(family.name)
        found.update(s.name for s in family.samples)
    return found


async def get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return resp.status, await resp.text()


def listening_sockets() -> set[int]:
    """Inodes of the TCP sockets this process listens on (Linux /proc)."""
    listening: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    listening.add(int(fields[9]))
    mine: set[int] = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                mine.add(int(target[len("socket:[") : -1]))
    return listening & mine


needs_proc = pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(), reason="needs Linux /proc to list listening sockets"
)


async def until_status(port: int, path: str, status: int, within: float = 10.0) -> str:
    """Ask `path` until it answers `status`; its body then."""
    async with asyncio.timeout(within):
        while True:
            code, body = await get(port, path)
            if code == status:
                return body
            await asyncio.sleep(0.05)


# --- end to end: the real bot -------------------------------------------------------------------


@needs_proc
async def test_a_job_shows_up_in_metrics_and_the_bot_is_healthy(env: Env) -> None:
    port = free_port()
    before = listening_sockets()
    async with started(env, METRICS_PORT=str(port)) as run:
        assert len(listening_sockets() - before) == 1  # the metrics endpoint, nothing else
        env.provider.script_next_job(["queued", "generating", "completed"], video=VIDEO)
        interaction = await env.animate()
        assert "Started" in await env.wait_reply(interaction)
        [status] = env.bot_messages(env.channel_id)
        thread_id = thread_for(env, status)
        await env.discord.wait_for(lambda: len(env.videos(thread_id)) == 1, timeout=20)

        code, body = await get(port, "/healthz")
        assert (code, body.strip()) == (200, "ok: gateway connected, database answers")

        async def recorded_and_settled() -> bool:
            # The video is up a moment before its delivery is recorded; the background pass
            # settles the reservation independently.
            _, text = await get(port, "/metrics")
            delivered = sample(text, "animate_delivery_lag_seconds_count", outcome="video")
            return delivered == 1 and sample(text, "animate_month_spent_usd") == pytest.approx(1.2)

        await env.until(recorded_and_settled)
        code, text = await get(port, "/metrics")
        assert code == 200
        assert set(METRIC_NAMES) <= names_in(text)
        model = DEFAULT_MODEL_ID
        assert sample(text, "animate_jobs_finished_total", outcome="video", model=model) == 1
        for operation in ("submit", "download"):
            count = "animate_provider_request_seconds_count"
            assert sample(text, count, operation=operation) == 1
        assert (sample(text, "animate_provider_request_seconds_count", operation="poll") or 0) >= 1
        assert sample(text, "animate_delivery_lag_seconds_count", outcome="video") == 1
        assert sample(text, "animate_jobs", state="polling") == 0
        assert sample(text, "animate_month_reserved_usd") == 0
        assert (sample(text, "animate_event_loop_lag_seconds_count") or 0) > 0
        worker = run.bot.service.worker_id
        assert sample(text, "animate_process_info", worker=worker) == 1


async def test_what_start_up_loaded_is_kept_out_of_full_collections(env: Env) -> None:
    # A full pass of the cyclic collector over it held the loop 250 ms+ under load.
    async with started(env):
        assert gc.get_freeze_count() > 50_000


@needs_proc
async def test_without_metrics_port_nothing_listens(env: Env) -> None:
    before = listening_sockets()
    async with started(env) as run:
        assert listening_sockets() - before == set()
        assert isinstance(run.bot.metrics, NullMetrics)
        assert run.bot.metrics_server is None


async def test_healthz_is_503_while_the_gateway_is_down(env: Env) -> None:
    port = free_port()
    async with started(env, METRICS_PORT=str(port)):
        await until_status(port, "/healthz", 200)
        await env.discord.close()  # Discord goes away: the bot keeps trying to reconnect
        reason = await until_status(port, "/healthz", 503)
        assert "gateway" in reason and reason.count("\n") == 1
        # The process's own figures are still there for the operator.
        code, text = await get(port, "/metrics")
        assert code == 200 and "animate_jobs_finished_total" in text


async def test_healthz_is_503_while_the_database_refuses_connections(
    env: Env, fresh_postgres_url: str, postgres_server: PostgresServer
) -> None:
    import asyncpg

    port = free_port()
    database = fresh_postgres_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(
        host="127.0.0.1", port=postgres_server.port, user=SUPERUSER, database="test"
    )
    try:
        async with started(env, METRICS_PORT=str(port), DATABASE_URL=fresh_postgres_url):
            await until_status(port, "/healthz", 200)
            await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                database,
            )
            reason = await until_status(port, "/healthz", 503)
            assert reason.startswith("the database does not answer") and reason.count("\n") == 1
            assert "127.0.0.1" not in reason and SUPERUSER not in reason.split("(")[-1]
            await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
            await until_status(port, "/healthz", 200)
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        await admin.close()


# --- the endpoint on its own ---------------------------------------------------------------------


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[MetricsServer, dict[str, str | None]]]:
    state: dict[str, str | None] = {"gateway": None, "database": None}

    async def database() -> None:
        if state["database"] is not None:
            raise ConnectionRefusedError(state["database"])

    async def refresh() -> None:
        raise OSError("database away")

    server = MetricsServer(
        Metrics(),
        HealthChecks(gateway=lambda: state["gateway"], database=database),
        host="127.0.0.1",
        port=free_port(),
        refresh=refresh,
    )
    await server.start()
    try:
        yield server, state
    finally:
        await server.stop()


async def test_healthz_names_the_first_problem_in_one_line(
    endpoint: tuple[MetricsServer, dict[str, str | None]],
) -> None:
    server, state = endpoint
    assert (await get(server.port, "/healthz"))[0] == 200
    state["database"] = "secret-host:5432 refused"
    code, body = await get(server.port, "/healthz")
    assert code == 503
    # The driver's message may name hosts and users; only the kind of failure is shown.
    assert body == "the database does not answer (ConnectionRefusedError)\n"
    state["gateway"] = reason = "not connected to the Discord gateway yet"
    assert await get(server.port, "/healthz") == (503, reason + "\n")


async def test_metrics_are_served_even_when_the_database_figures_fail(
    endpoint: tuple[MetricsServer, dict[str, str | None]],
) -> None:
    server, _ = endpoint
    code, text = await get(server.port, "/metrics")
    assert code == 200 and "animate_provider_request_seconds_bucket" in text
    await server.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(server.port, "/metrics")


class StallSeen(Metrics):
    def __init__(self) -> None:
        super().__init__()
        self.stall_seen = asyncio.Event()

    def loop_lag(self, seconds: float) -> None:
        super().loop_lag(seconds)
        if seconds >= 0.05:
            self.stall_seen.set()


async def test_an_event_loop_stall_is_measured() -> None:
    metrics = StallSeen()
    monitor = asyncio.create_task(monitor_event_loop(metrics, interval=0.005))
    try:
        await asyncio.sleep(0.02)  # a few ordinary wake-ups first
        time.sleep(0.06)  # noqa: ASYNC251 - the stall being measured, on purpose
        await asyncio.wait_for(metrics.stall_seen.wait(), timeout=5)
    finally:
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
    text = metrics.render().decode()
    worst = sample(text, "animate_event_loop_lag_max_seconds")
    assert worst is not None and 0.05 <= worst < 1.0
    stalled = sample(text, "animate_event_loop_lag_seconds_bucket", le="0.025")
    total = sample(text, "animate_event_loop_lag_seconds_count")
    assert stalled is not None and total is not None and stalled < total
    # The max covers the time since the previous scrape only.
    assert sample(metrics.render().decode(), "animate_event_loop_lag_max_seconds") == 0


# --- hooks in the core ---------------------------------------------------------------------------


def metered_service(world: World, metrics: Metrics) -> JobService:
    client = ProviderClient(
        world.session,
        base_url=world.provider.base_url,
        api_key=world.settings.aimlapi_key,
        retry=RetryPolicy(attempts=2),
        sleep=_no_sleep,
        metrics=metrics,
    )
    service = JobService(
        settings=world.settings,
        store=world.store,
        provider=client,
        clock=world.clock,
        rng=lambda: 0.5,
        retry_sleep=_no_sleep,
        metrics=metrics,
    )
    world.fitters.append(service.fitter)
    return service


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_the_service_counts_outcomes_lag_and_provider_errors(world: World) -> None:
    metrics = Metrics()
    world.service = metered_service(world, metrics)
    world.provider.script_next_job(["queued", "completed"], video=VIDEO)
    world.provider.fail_next("GET", status=503, count=2)  # one poll fails after its retry
    video = await world.animate()
    await world.run_for(300)
    world.provider.script_next_job(["failed"])
    failed = await world.animate(requester_id=112)
    await world.run_for(300)
    assert [p.kind for p in world.delivery.for_job(video.id)] == ["video"]
    assert [p.kind for p in world.delivery.for_job(failed.id)] == ["failure"]
    model = video.model
    assert value(metrics, "animate_jobs_finished_total", outcome="video", model=model) == 1
    assert value(metrics, "animate_jobs_finished_total", outcome="failed", model=model) == 1
    lag = "animate_delivery_lag_seconds"
    assert value(metrics, lag + "_count", outcome="video") == 1
    # The pass after the completing poll starts the delivery: at most one loop step (1 s) late.
    assert value(metrics, lag + "_sum", outcome="video") <= 1.0
    assert value(metrics, "animate_provider_request_seconds_count", operation="submit") == 2
    errors = "animate_provider_errors_total"
    assert value(metrics, errors, operation="poll", kind="ProviderServerError") == 1
    assert value(metrics, "animate_provider_request_seconds_count", operation="download") == 1


async def test_cancelled_jobs_count_as_finished(world: World) -> None:
    metrics = Metrics()
    world.service = metered_service(world, metrics)
    job = await world.animate()
    assert await world.service.cancel(job.id, actor_id=1) is not None
    assert await world.service.cancel(job.id, actor_id=1) is None  # counted once
    finished = "animate_jobs_finished_total"
    assert value(metrics, finished, outcome="cancelled", model=job.model) == 1


async def test_a_video_that_cannot_be_reencoded_is_counted(world: World) -> None:
    metrics = Metrics()
    world.service = metered_service(world, metrics)
    # Over the upload limit and not a decodable mp4: the re-encode fails, the link is posted.
    world.provider.script_next_job(["completed"], video=VIDEO * 4)
    job = await world.animate(upload_limit_bytes=len(VIDEO))
    await world.run_for(200)
    [post] = world.delivery.for_job(job.id)
    assert post.kind == "link"
    assert value(metrics, "animate_reencodes_total", result="error") == 1
    assert value(metrics, "animate_reencodes_total", result="fitted") == 0


async def test_month_figures_split_held_and_settled_money(world: World) -> None:
    from bot.guild_settings import BotDefaults
    from bot.spending import Spending

    settings = world.settings
    spending = Spending(world.store.engine, BotDefaults.from_settings(settings))
    now = world.clock.now()
    held = await spending.reserve(requester_id=1, guild_id=None, estimate_usd=1.20, now=now)
    settled = await spending.reserve(requester_id=2, guild_id=None, estimate_usd=2.00, now=now)
    released = await spending.reserve(requester_id=3, guild_id=None, estimate_usd=0.40, now=now)
    assert await spending.settle(settled.id, 1.50, now=now)
    assert await spending.release(released.id, now=now)
    assert held.amount_usd == 1.20
    reserved, spent = await spending.month_totals(now)
    assert (reserved, spent) == (1.20, 1.50)  # exact: the ledger counts micro-dollars


# --- the default and the settings ---------------------------------------------------------------


def test_the_default_records_nothing_and_covers_every_hook() -> None:
    hooks = {
        name
        for name, member in inspect.getmembers(Metrics, inspect.isfunction)
        if not name.startswith("_")
    }
    assert hooks and all(name in vars(NullMetrics) for name in hooks)
    NO_METRICS.job_finished(outcome="video", model="m")
    NO_METRICS.set_gateway_latency(math.inf)
    with NO_METRICS.provider_call("poll"):
        pass
    assert NO_METRICS.render() == b""


BASE = {"DISCORD_TOKEN": "t", "AIMLAPI_KEY": "k"}


def test_metrics_are_off_by_default_and_bind_to_loopback() -> None:
    settings = Settings.from_env(BASE)
    assert settings.metrics_port is None and settings.metrics_host == "127.0.0.1"
    everywhere = "0.0.0.0"  # noqa: S104 - the documented choice for a scraper elsewhere
    chosen = Settings.from_env({**BASE, "METRICS_PORT": "9464", "METRICS_HOST": everywhere})
    assert (chosen.metrics_port, chosen.metrics_host) == (9464, everywhere)


@pytest.mark.parametrize("raw", ["0", "65536", "http", "-1", "９４６４"])
def test_a_bad_metrics_port_is_named(raw: str) -> None:
    with pytest.raises(ConfigError, match="METRICS_PORT must be a TCP port"):
        Settings.from_env({**BASE, "METRICS_PORT": raw})


def test_a_bad_metrics_host_is_named() -> None:
    with pytest.raises(ConfigError, match="METRICS_HOST must be an IP address"):
        Settings.from_env({**BASE, "METRICS_HOST": "http://0.0.0.0"})
