"""Provider requests per job and delivery lag: the adaptive poll schedule vs a fixed 10 s poll.

The real JobService, store (SQLite) and provider client run against the fake provider; time is
simulated, so the many minutes of a real generation take a few seconds. Each job completes at
the provider after a time drawn around the model's typical time (Sora 2: ~90 s).

    python bench/poll_schedule.py
"""

from __future__ import annotations

import asyncio
import io
import random
import statistics
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.config import Settings
from bot.jobs import Job
from bot.provider import DownloadedVideo, ProviderClient
from bot.service import AnimateRequest, JobService
from bot.store import JobStore
from tests.fake_provider import FakeProvider

JOBS = 40
SEED = 7


class SimClock:
    def __init__(self) -> None:
        self.moment = datetime(2026, 1, 1, tzinfo=UTC)
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self.moment

    async def sleep(self, seconds: float) -> None:
        """Wait until the simulation has moved `seconds` on (lease renewals sleep on the clock)."""
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.moment + timedelta(seconds=seconds), woken))
        await woken

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)
        due = [entry for entry in self._sleepers if entry[0] <= self.moment]
        for entry in due:
            self._sleepers.remove(entry)
            if not entry[1].done():
                entry[1].set_result(None)

    def seconds(self) -> float:
        return self.moment.timestamp()


@dataclass
class TimedDelivery:
    clock: SimClock
    delivered_at: dict[int, float]

    async def show_status(self, job: Job) -> None:
        return None

    async def find_delivered(self, job: Job) -> int | None:
        return None

    def _delivered(self, job: Job) -> int:
        self.delivered_at[job.id] = self.clock.seconds()
        return job.id

    async def post_video(
        self, job: Job, video: DownloadedVideo, *, note: str | None = None, link: str | None = None
    ) -> int:
        return self._delivered(job)

    async def post_link(self, job: Job, url: str, reason: str) -> int:
        return self._delivered(job)

    async def post_failure(self, job: Job, reason: str) -> int:
        raise AssertionError(f"job {job.id} failed: {reason}")


def small_photo() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1600, 900), (20, 90, 160)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


async def simulate(fixed: bool) -> dict[str, float]:
    clock = SimClock()
    provider = FakeProvider(clock=clock.seconds)
    await provider.start()
    settings = Settings.from_env(
        {
            "DISCORD_TOKEN": "x",
            "AIMLAPI_KEY": "test-key",
            "AIMLAPI_BASE_URL": provider.base_url,
            # The comparison point: the common "poll every 10 s" loop.
            **({"POLL_SCHEDULE": "fixed", "POLL_MIN_INTERVAL_SECONDS": "10"} if fixed else {}),
        }
    )
    rng = random.Random(SEED)
    completes_at: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = await JobStore.open(f"sqlite+aiosqlite:///{tmp}/bench.db")
        async with aiohttp.ClientSession() as session:
            client = ProviderClient(
                session, base_url=provider.base_url, api_key=settings.aimlapi_key
            )
            service = JobService(settings=settings, store=store, provider=client, clock=clock)
            delivery = TimedDelivery(clock, {})
            image = small_photo()
            for user in range(JOBS):
                # Around Sora 2's documented ~90 s, with the spread real queues show.
                after = rng.uniform(60, 180)
                provider.script_next_job(
                    ["queued", "generating", "completed"], complete_after=after
                )
                prepared = await service.prepare(
                    AnimateRequest(
                        image=image,
                        prompt="waves",
                        requester_id=user,
                        guild_id=1,
                        channel_id=2,
                        upload_limit_bytes=10 * 1024 * 1024,
                        resolution="720p",
                    )
                )
                job = await service.submit(await service.record(prepared))
                completes_at[job.id] = clock.seconds() + after
            while len(delivery.delivered_at) < JOBS:
                await service.run_due(delivery)
                clock.advance(settings.poll_tick_seconds)
        await store.close()
    await provider.close()
    polls = sum(1 for r in provider.requests if r.method == "GET" and "generations" in r.path)
    lags = [delivery.delivered_at[j] - completes_at[j] for j in completes_at]
    return {
        "requests_per_job": (polls + JOBS) / JOBS,
        "lag_p50": statistics.median(lags),
        "lag_p95": statistics.quantiles(lags, n=20)[18],
        "lag_max": max(lags),
    }


async def main() -> None:
    adaptive = await simulate(fixed=False)
    fixed = await simulate(fixed=True)
    print(f"{JOBS} jobs, completion uniform in 60-180 s, loop tick 2 s, simulated time\n")
    print("| schedule | provider requests / job | delivery lag p50 | p95 | max |")
    print("|---|---|---|---|---|")
    for name, r in (("adaptive (default)", adaptive), ("fixed 10 s", fixed)):
        print(
            f"| {name} | {r['requests_per_job']:.1f} | {r['lag_p50']:.1f} s "
            f"| {r['lag_p95']:.1f} s | {r['lag_max']:.1f} s |"
        )


if __name__ == "__main__":
    asyncio.run(main())
