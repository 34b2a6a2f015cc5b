"""Scaling out: several `python -m bot` processes, each with its own Discord shards, on one
database (an SQLite file, and the real PostgreSQL the tests start).

What a member would notice if this went wrong: a video posted twice, a job paid for twice, or
the provider asked about one job by two processes at once (twice the requests, and a rate limit
sooner). Each test drives real processes against the fake Discord and the fake provider, and
kills one of them with SIGKILL half-way.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.config import Settings
from bot.errors import ConfigError
from tests.fake_discord import FakeDiscord, FakeMessage
from tests.fake_provider import FakeProvider, RecordedRequest
from tests.test_process import REPO, VIDEO, photo

LEASE_SECONDS = 3
POLL_INTERVAL_SECONDS = 0.5
POLL_LATENCY_SECONDS = 0.15
JOBS = 20
REQUIRED = {"DISCORD_TOKEN": "discord-secret-token", "AIMLAPI_KEY": "aiml-secret-key"}


# --- settings ------------------------------------------------------------------------------------


def test_without_shard_settings_the_bot_keeps_one_connection() -> None:
    settings = Settings.from_env(REQUIRED)
    assert settings.shard_count is None and settings.shard_ids is None


def test_shard_settings_are_read() -> None:
    settings = Settings.from_env({**REQUIRED, "SHARD_COUNT": "4", "SHARD_IDS": " 2, 3 "})
    assert settings.shard_count == 4 and settings.shard_ids == (2, 3)
    assert Settings.from_env({**REQUIRED, "SHARD_COUNT": "AUTO"}).shard_count == "auto"


@pytest.mark.parametrize(
    ("count", "ids", "words"),
    [
        ("0", None, "SHARD_COUNT must be a whole number of at least 1"),
        ("two", None, "SHARD_COUNT must be a whole number"),
        ("2", "0,2", "SHARD_IDS must be below SHARD_COUNT (2)"),
        ("2", "1,1", "SHARD_IDS names a shard twice"),
        ("2", "first", "SHARD_IDS must be shard numbers"),
        (None, "0", "SHARD_IDS needs SHARD_COUNT"),
        ("auto", "0", "SHARD_IDS needs SHARD_COUNT"),
    ],
)
def test_bad_shard_settings_are_named(count: str | None, ids: str | None, words: str) -> None:
    env = dict(REQUIRED)
    if count is not None:
        env["SHARD_COUNT"] = count
    if ids is not None:
        env["SHARD_IDS"] = ids
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert words in str(info.value)


# --- several processes ---------------------------------------------------------------------------


@dataclass
class Cluster:
    """Two servers (one per shard of two), the fakes, and the bot processes started on them."""

    discord: FakeDiscord
    provider: FakeProvider
    tmp: Path
    database_url: str
    channels: dict[int, int] = field(default_factory=dict)
    """guild id -> its #animate channel."""
    users: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def environment(self, **overrides: str) -> dict[str, str]:
        no_limits = {
            key: "0"
            for key in (
                "MEMBER_DAILY_USD",
                "MEMBER_MONTHLY_USD",
                "GUILD_MONTHLY_USD",
                "BOT_MONTHLY_USD",
                "CONFIRM_ABOVE_USD",
                "COOLDOWN_SECONDS",
            )
        }
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.tmp),
            "PYTHONPATH": str(REPO),
            "DISCORD_TOKEN": self.discord.bot_token,
            "AIMLAPI_KEY": "test-key",
            "AIMLAPI_BASE_URL": self.provider.base_url,
            "DISCORD_API_BASE_URL": self.discord.rest_base_url,
            "DISCORD_GATEWAY_URL": self.discord.gateway_url,
            "DATABASE_URL": self.database_url,
            "POLL_SCHEDULE": "fixed",
            "POLL_MIN_INTERVAL_SECONDS": str(POLL_INTERVAL_SECONDS),
            "POLL_TICK_SECONDS": "0.1",
            "LEASE_SECONDS": str(LEASE_SECONDS),
            "SUBMIT_IN_FLIGHT_GRACE_SECONDS": "1",
            "MAX_ACTIVE_JOBS_PER_USER": "100",
            **no_limits,
            **overrides,
        }

    def start(self, name: str, **overrides: str) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "bot"],
                cwd=self.tmp,
                env=self.environment(**overrides),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("*.log")))

    async def wait_connected(self, connections: int) -> None:
        def ready() -> bool:
            for process in self.processes:
                if process.poll() is not None:
                    raise AssertionError(f"a bot exited with {process.returncode}:\n{self.logs()}")
            return len(self.discord.gateway.live) >= connections and any(
                c["name"] == "animate" for c in self.discord.commands.global_commands
            )

        await self.discord.wait_for(ready, timeout=40, what="every shard connected")

    async def animate(self, number: int) -> None:
        guild_id = list(self.channels)[number % len(self.channels)]
        attachment = self.discord.add_attachment(photo(), "photo.jpg", "image/jpeg")
        await self.discord.invoke_command(
            "animate",
            {"image": attachment, "prompt": f"a slow zoom, take {number}"},
            user_id=self.users[number % len(self.users)],
            guild_id=guild_id,
            channel_id=self.channels[guild_id],
        )

    def videos_by_thread(self) -> dict[int, list[FakeMessage]]:
        found: dict[int, list[FakeMessage]] = {}
        for thread in self.discord.threads():
            thread_id = int(thread["id"])
            found[thread_id] = [
                m
                for m in self.discord.messages(thread_id)
                if m.author_id == self.discord.bot_user_id
                and any(a.filename.endswith(".mp4") for a in m.attachments)
            ]
        return found

    def videos(self) -> int:
        return sum(len(posted) for posted in self.videos_by_thread().values())

    def polls_by_generation(self) -> dict[str, list[RecordedRequest]]:
        polls: dict[str, list[RecordedRequest]] = defaultdict(list)
        for request in self.provider.requests:
            if request.method == "GET" and "generation_id" in request.query:
                polls[request.query["generation_id"]].append(request)
        return polls


@contextmanager
def cluster_processes(cluster: Cluster) -> Iterator[Cluster]:
    try:
        yield cluster
    finally:
        cluster.stop_all()


async def make_cluster(tmp: Path, database_url: str) -> Cluster:
    discord_server = FakeDiscord()
    provider = FakeProvider()
    await discord_server.start()
    await provider.start()
    provider.poll_latency = POLL_LATENCY_SECONDS
    cluster = Cluster(discord_server, provider, tmp, database_url)
    for shard_id in (0, 1):
        guild_id = discord_server.add_guild(f"Studio {shard_id}", shard=(shard_id, 2))
        cluster.channels[guild_id] = discord_server.add_text_channel(guild_id, "animate")
    cluster.users = [discord_server.add_user(name) for name in ("grace", "ada", "alan")]
    return cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One database for every process of a test: an SQLite file, or a fresh PostgreSQL one."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'jobs.db'}"
    return str(request.getfixturevalue("fresh_postgres_url"))


@pytest.fixture
async def cluster(shared_database_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    made = await make_cluster(tmp_path, shared_database_url)
    try:
        with cluster_processes(made):
            yield made
        assert made.discord.openapi_violations == []
        logs = made.logs()
        assert made.discord.bot_token not in logs and "test-key" not in logs
        assert "Traceback" not in logs, logs
    finally:
        await made.provider.close()
        await made.discord.close()


def assert_no_job_polled_by_two_at_once(cluster: Cluster) -> None:
    """A poll's [sent, answered] interval never overlaps another poll of the same job, and
    consecutive polls of a job are at least the poll interval apart: the rate of one process."""
    polls = cluster.polls_by_generation()
    assert polls, "nothing was polled"
    for generation_id, requests in polls.items():
        ordered = sorted(requests, key=lambda r: r.time)
        for earlier, later in itertools.pairwise(ordered):
            assert earlier.finished is not None, f"{generation_id}: a poll never answered"
            assert later.time >= earlier.finished, f"{generation_id}: polled by two at once"
            gap = later.time - earlier.time
            assert gap >= POLL_INTERVAL_SECONDS * 0.9, f"{generation_id}: polled {gap:.2f}s apart"


async def test_two_shard_processes_share_the_jobs_and_survive_a_kill(cluster: Cluster) -> None:
    # Completions spread over time, so the kill lands with videos both posted and pending.
    for number in range(JOBS):
        cluster.provider.script_next_job(
            ["queued", "generating", "completed"], video=VIDEO, complete_after=2.0 + 0.35 * number
        )
    first = cluster.start("shard0", SHARD_COUNT="2", SHARD_IDS="0")
    second = cluster.start("shard1", SHARD_COUNT="2", SHARD_IDS="1")
    await cluster.wait_connected(2)
    shards = sorted(tuple(p["shard"]) for p in cluster.discord.identify_payloads)
    assert shards == [(0, 2), (1, 2)]

    for number in range(JOBS):
        await cluster.animate(number)  # half to each server, so to each process
    await cluster.discord.wait_for(lambda: cluster.provider.count("POST") == JOBS, timeout=40)
    await cluster.discord.wait_for(lambda: cluster.videos() >= 4, timeout=40)
    second.kill()  # SIGKILL: its claimed polls and deliveries are left mid-way
    second.wait()
    assert cluster.videos() < JOBS, "the kill came too late to prove anything"

    await cluster.discord.wait_for(lambda: cluster.videos() == JOBS, timeout=45)
    assert first.poll() is None
    await asyncio.sleep(LEASE_SECONDS + 1)  # any second post would have come by now
    by_thread = cluster.videos_by_thread()
    assert len(by_thread) == JOBS
    assert all(len(posted) == 1 for posted in by_thread.values()), by_thread
    assert cluster.provider.count("POST") == JOBS  # nobody paid twice
    assert_no_job_polled_by_two_at_once(cluster)
    # Both processes really worked: each posted status messages for its own server's members.
    logs = {name: (cluster.tmp / f"{name}.log").read_text() for name in ("shard0", "shard1")}
    assert all("submitted as" in text for text in logs.values())


async def test_an_upload_longer_than_the_lease_is_posted_once(cluster: Cluster) -> None:
    cluster.provider.script_next_job(
        ["queued", "generating", "completed"], video=VIDEO, complete_after=2.0
    )
    cluster.start("shard0", SHARD_COUNT="2", SHARD_IDS="0")
    cluster.start("shard1", SHARD_COUNT="2", SHARD_IDS="1")
    await cluster.wait_connected(2)
    await cluster.animate(0)
    await cluster.discord.wait_for(lambda: bool(cluster.discord.threads()), timeout=30)
    [thread] = cluster.discord.threads()
    # Discord takes the upload at once but answers only after almost three leases.
    cluster.discord.hold_next("POST", rf"^/channels/{thread['id']}/messages$", seconds=8)
    await cluster.discord.wait_for(lambda: cluster.videos() == 1, timeout=30)
    status_id = int(thread["id"])  # the thread was started on the status message
    await cluster.discord.wait_for(
        lambda: "Done" in str(cluster.discord.message(status_id).embeds), timeout=30
    )
    assert cluster.videos() == 1
    assert "took over" not in cluster.logs()


async def _bot_connections(database_url: str) -> int:
    """Connections to the database other than this one (the bots')."""
    import asyncpg

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    finally:
        await conn.close()


async def test_each_process_keeps_its_database_pool_size_of_connections(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    # Connections are opened at start and kept: none opened (and closed again) for a burst of
    # work, and never more than DATABASE_POOL_SIZE per process, whatever the load.
    made = await make_cluster(tmp_path, fresh_postgres_url)
    try:
        with cluster_processes(made):
            for _ in range(8):
                made.provider.script_next_job(["completed"], video=VIDEO)
            made.start("both", SHARD_COUNT="2", SHARD_IDS="0,1", DATABASE_POOL_SIZE="3")
            await made.wait_connected(2)
            assert await _bot_connections(fresh_postgres_url) == 3
            await asyncio.gather(*(made.animate(number) for number in range(8)))
            await made.discord.wait_for(lambda: made.videos() == 8, timeout=40)
            assert await _bot_connections(fresh_postgres_url) == 3
            assert "Traceback" not in made.logs()
    finally:
        await made.provider.close()
        await made.discord.close()
