"""1,000 jobs in flight over two `python -m bot` processes on one PostgreSQL.

The benchmark starts its own PostgreSQL (tests/postgres.py), the fake Discord and the fake
provider in this process, and two real bot processes (SHARD_COUNT=2, one shard each), each with
METRICS_PORT set. It runs /animate JOBS times, spread over two servers (one per shard), at
RATE per second; the fake provider completes each job a long-tailed time after it was submitted
(time compressed: 60 s + a log-normal tail with a 20 s median, so every job is still generating
when the last one is submitted). Then it waits for every video.

Reported: videos posted exactly once (per job and in all), provider requests per job, delivery
lag (provider completed -> video posted) p50/p99, the longest event-loop stall in each process
(the process's own monitor, scraped from /metrics every second; it wakes every 10 ms, so a
stall shows as up to 10 ms shorter than it was), peak RSS per process (VmHWM; the image-fit
processes each bot starts are reported too), and wall time. Goals: every video exactly once,
no stall over 50 ms, <= 200 MB per process.

    python bench/load.py [--jobs 1000] [--rate 20] [--fakes-niceness 10]
                         [--postgres-niceness 0] [--deliveries N] [--trace-stalls DIR]

Discord and the provider are remote services in production, but here the fakes run in this
process on the bots' cores. By default this process (fakes and driver) runs at nice +10 once the
bots are started, so it does not take cores from the bots the way a remote service never
would; `--fakes-niceness 0` shares the cores equally (the harsher, less realistic setting).
`--postgres-niceness` does the same for the PostgreSQL server the benchmark starts (default 0:
a database on the same machine is a real deployment). The settings are printed with the results.

With --trace-stalls the bots run under bench/stall_trace.py, which writes where each stall
over 50 ms happened (the loop thread's stack) to DIR/shard<N>.stalls.txt. Also reported: the
CPU time each process used, since all of them share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import math
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bot.metrics import LOOP_MONITOR_INTERVAL_SECONDS  # noqa: E402
from tests.fake_discord import FakeDiscord  # noqa: E402
from tests.fake_provider import FakeProvider  # noqa: E402
from tests.postgres import running_postgres  # noqa: E402

SHARDS = 2
POLL_INTERVAL_SECONDS = 10.0
MIN_COMPLETION_SECONDS = 60.0
TAIL_MEDIAN_SECONDS = 20.0
TAIL_SIGMA = 0.6
MAX_COMPLETION_SECONDS = 240.0
STALL_GOAL_SECONDS = 0.05
DEFAULT_FAKES_NICENESS = 10
DEFAULT_POSTGRES_NICENESS = 0
RSS_GOAL_MB = 200.0
VIDEO_PREFIX = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
_LAG_MAX = re.compile(r"^animate_event_loop_lag_max_seconds(?:\{[^}]*\})? (\S+)$", re.M)
_LAG_BUCKET = re.compile(
    r'^animate_event_loop_lag_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\} (\S+)$', re.M
)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def picture() -> bytes:
    """A small, plain picture: the benchmark is about the bot's plumbing, not image fitting."""
    buffer = io.BytesIO()
    Image.new("RGB", (1400, 800), (70, 120, 200)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def completion_seconds(rng: random.Random, scale: float) -> float:
    tail = rng.lognormvariate(math.log(TAIL_MEDIAN_SECONDS), TAIL_SIGMA)
    return scale * min(MAX_COMPLETION_SECONDS, MIN_COMPLETION_SECONDS + tail)


async def wait_until(predicate: Callable[[], bool], within: float, what: str) -> None:
    """Check once a second (a scan of every thread is not free with 1,000 of them)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(1.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def parent_pids() -> dict[int, int]:
    """Every running process -> its parent."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):  # gone meanwhile
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def descendants(pid: int) -> list[int]:
    """Every process started by `pid` or by one of those (the bot's fit processes)."""
    parents = parent_pids()
    found: list[int] = []
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found.extend(sorted(frontier))
    return found


def renice(pid: int, niceness: int) -> None:
    """Set every thread of process `pid` to `niceness` (on Linux nice is per thread; threads
    started later inherit it from the thread that starts them)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), niceness)


def renice_postgres(data_directory: Path, niceness: int) -> None:
    """The postmaster and the processes it has forked so far; later backends inherit it."""
    postmaster = int((data_directory / "postmaster.pid").read_text().split()[0])
    for pid, parent in parent_pids().items():
        if postmaster in (pid, parent):
            with contextlib.suppress(OSError):
                renice(pid, niceness)


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    metrics_port: int
    longest_stall: float = 0.0
    stalls_over_goal: int = 0
    peak_rss_mb: float = math.nan
    cpu_seconds: float = math.nan
    helpers_peak_rss_mb: float = math.nan
    """The largest peak among the bot's own helper processes (image fits)."""
    helpers_cpu_seconds: float = math.nan


@dataclass
class Run:
    discord: FakeDiscord
    provider: FakeProvider
    channels: dict[int, int]
    users: list[int]
    workers: list[Worker] = field(default_factory=list)
    completes_at: dict[bytes, float] = field(default_factory=dict)
    """Video bytes -> when the provider starts answering "completed" (wall clock)."""
    posted_at: dict[int, float] = field(default_factory=dict)
    """Message id of each video -> when it was seen posted (wall clock)."""
    in_flight_peak: int = 0
    """Most jobs at the provider and not yet posted at one time (seen once a second)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    """Settings given to both bots on top of the benchmark's own (--deliveries)."""


def bot_environment(
    run: Run, tmp: Path, database_url: str, shard: int, metrics_port: int
) -> dict[str, str]:
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
        "HOME": str(tmp),
        "PYTHONPATH": str(REPO),
        "DISCORD_TOKEN": run.discord.bot_token,
        "AIMLAPI_KEY": "test-key",
        "AIMLAPI_BASE_URL": run.provider.base_url,
        "DISCORD_API_BASE_URL": run.discord.rest_base_url,
        "DISCORD_GATEWAY_URL": run.discord.gateway_url,
        "DATABASE_URL": database_url,
        "SHARD_COUNT": str(SHARDS),
        "SHARD_IDS": str(shard),
        "METRICS_PORT": str(metrics_port),
        "POLL_SCHEDULE": "fixed",
        "POLL_MIN_INTERVAL_SECONDS": str(POLL_INTERVAL_SECONDS),
        "POLL_TICK_SECONDS": "1",
        # 1,000 jobs polled every 10 s is 100 polls a second between the two processes.
        "MAX_CONCURRENT_POLLS": "32",
        "MAX_ACTIVE_JOBS_PER_USER": "100000",
        "LOG_LEVEL": "WARNING",
        **no_limits,
        **run.extra_env,
    }


def start_bot(
    run: Run, tmp: Path, database_url: str, shard: int, port: int, trace: Path | None
) -> subprocess.Popen[bytes]:
    env = bot_environment(run, tmp, database_url, shard, port)
    command = [sys.executable, "-m", "bot"]
    if trace is not None:
        # The tracer's other settings (STALL_TRACE_SAMPLE_MS, STALL_TRACE_GC_CENSUS) pass through.
        env.update({k: v for k, v in os.environ.items() if k.startswith("STALL_TRACE_")})
        env["STALL_TRACE_FILE"] = str(trace / f"shard{shard}.stalls.txt")
        command = [sys.executable, str(REPO / "bench" / "stall_trace.py")]
    with (tmp / f"shard{shard}.log").open("wb") as log:
        return subprocess.Popen(
            command,
            cwd=tmp,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def watch(run: Run, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
    """Every second: scrape each process's event-loop figures and note newly posted videos."""
    while not stop.is_set():
        for worker in run.workers:
            url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
            try:
                async with session.get(url) as response:
                    text = await response.text()
            except (aiohttp.ClientError, TimeoutError):
                continue
            for value in _LAG_MAX.findall(text):
                worker.longest_stall = max(worker.longest_stall, float(value))
            buckets = {float(le): float(n) for le, n in _LAG_BUCKET.findall(text) if le != "+Inf"}
            total = next(
                (float(n) for le, n in _LAG_BUCKET.findall(text) if le == "+Inf"), math.nan
            )
            if buckets and not math.isnan(total):
                worker.stalls_over_goal = int(total - buckets.get(STALL_GOAL_SECONDS, total))
        note_videos(run)
        run.in_flight_peak = max(run.in_flight_peak, len(run.provider.jobs) - len(run.posted_at))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)


def video_messages(run: Run) -> list[tuple[int, int, bytes]]:
    """(thread id, message id, video bytes) of every video the bot posted."""
    found = []
    for thread in run.discord.threads():
        thread_id = int(thread["id"])
        for message in run.discord.messages(thread_id):
            if message.author_id != run.discord.bot_user_id:
                continue
            for attachment in message.attachments:
                if attachment.filename.endswith(".mp4"):
                    found.append((thread_id, message.id, attachment.data))
    return found


def note_videos(run: Run) -> None:
    now = time.time()
    for _, message_id, _ in video_messages(run):
        run.posted_at.setdefault(message_id, now)


async def main(
    jobs: int,
    rate: float,
    seed: int,
    scale: float,
    trace: Path | None,
    fakes_niceness: int,
    postgres_niceness: int,
    deliveries: int | None = None,
    bot_settings: dict[str, str] | None = None,
) -> None:
    rng = random.Random(seed)
    started = time.monotonic()
    wall_offset = time.time() - time.monotonic()
    with running_postgres() as postgres, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        discord_server = FakeDiscord()
        provider = FakeProvider()
        await discord_server.start()
        await provider.start()
        channels: dict[int, int] = {}
        for shard in range(SHARDS):
            guild = discord_server.add_guild(f"Load {shard}", shard=(shard, SHARDS))
            channels[guild] = discord_server.add_text_channel(guild, "animate")
        users = [discord_server.add_user(f"member{i}") for i in range(50)]
        run = Run(discord_server, provider, channels, users)
        run.extra_env.update(bot_settings or {})
        if deliveries is not None:
            run.extra_env["MAX_CONCURRENT_DELIVERIES"] = str(deliveries)
        # Each job gets its own video bytes, so every post can be traced to its job.
        for number in range(jobs):
            video = VIDEO_PREFIX + f"job-{number:05d}".encode() * 64
            # "generating" until complete_after, then "completed" at the first poll after it.
            provider.script_next_job(
                ["completed"],
                video=video,
                complete_after=completion_seconds(rng, scale),
            )
        if postgres_niceness:
            renice_postgres(postgres.data, postgres_niceness)  # before the bots connect
        for shard in range(SHARDS):
            port = free_port()
            process = start_bot(run, tmp, postgres.url, shard, port, trace)
            run.workers.append(Worker(f"shard {shard}", process, port))
        if fakes_niceness:
            renice(os.getpid(), fakes_niceness)  # after the bots are forked: not inherited
        stop = asyncio.Event()
        try:
            await discord_server.wait_for(
                lambda: (
                    len(discord_server.gateway.live) >= SHARDS
                    and any(c["name"] == "animate" for c in discord_server.commands.global_commands)
                ),
                timeout=60,
                what="both processes connected",
            )
            ready = time.monotonic()
            async with aiohttp.ClientSession() as session:
                watcher = asyncio.create_task(watch(run, session, stop))
                image = picture()
                guilds = list(channels)
                for number in range(jobs):
                    target = ready + number / rate
                    await asyncio.sleep(max(0.0, target - time.monotonic()))
                    guild = guilds[number % len(guilds)]
                    attachment = discord_server.add_attachment(image, "photo.jpg", "image/jpeg")
                    await discord_server.invoke_command(
                        "animate",
                        {"image": attachment, "prompt": f"a slow zoom, take {number}"},
                        user_id=users[number % len(users)],
                        guild_id=guild,
                        channel_id=channels[guild],
                    )
                issued = time.monotonic()
                in_flight_peak = sum(
                    1 for job in provider.jobs.values() if job.served[-1:] != ["completed"]
                )
                await wait_until(
                    lambda: len(video_messages(run)) >= jobs,
                    within=MAX_COMPLETION_SECONDS + 600,
                    what="every video posted",
                )
                await asyncio.sleep(3)  # a second post of anything would show by now
                note_videos(run)
                for worker in run.workers:
                    worker.peak_rss_mb = peak_rss_mb(worker.process.pid)
                    worker.cpu_seconds = cpu_seconds(worker.process.pid)
                    helpers = descendants(worker.process.pid)
                    worker.helpers_peak_rss_mb = max(map(peak_rss_mb, helpers), default=0.0)
                    worker.helpers_cpu_seconds = sum(map(cpu_seconds, helpers))
                bench_cpu = cpu_seconds(os.getpid())
                stop.set()
                await watcher
            finished = time.monotonic()
        finally:
            stop.set()
            for worker in run.workers:
                if worker.process.poll() is None:
                    worker.process.send_signal(signal.SIGTERM)
            for worker in run.workers:
                try:
                    worker.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.process.kill()
                    worker.process.wait()
            await provider.close()
            await discord_server.close()
        report(run, jobs, rate, wall_offset, ready - started, issued - ready, finished - ready)
        print(
            "CPU time: "
            + ", ".join(
                f"{w.name} {w.cpu_seconds:.0f} s (+ {w.helpers_cpu_seconds:.0f} s fitting images)"
                for w in run.workers
            )
            + f", this process (fake Discord, fake provider, driver) {bench_cpu:.0f} s, "
            f"on {os.cpu_count()} cores"
        )
        print(
            f"jobs in flight (at the provider, not yet posted): at most {run.in_flight_peak}; "
            f"{in_flight_peak} not completed when the last /animate was sent"
        )
        print(
            f"priorities: bots nice 0 (their image fits +10), fakes and driver (this process) "
            f"nice +{fakes_niceness} (--fakes-niceness, default {DEFAULT_FAKES_NICENESS}), "
            f"PostgreSQL nice +{postgres_niceness} "
            f"(--postgres-niceness, default {DEFAULT_POSTGRES_NICENESS})"
        )
        print(
            "delivery slots per process: "
            + run.extra_env.get("MAX_CONCURRENT_DELIVERIES", "the bot's default")
            + " (--deliveries)"
        )
        if bot_settings:
            print("bot settings: " + ", ".join(f"{k}={v}" for k, v in bot_settings.items()))


def report(
    run: Run,
    jobs: int,
    rate: float,
    wall_offset: float,
    startup: float,
    issuing: float,
    wall: float,
) -> None:
    provider = run.provider
    posted = video_messages(run)
    per_thread: dict[int, int] = {}
    for thread_id, _, _ in posted:
        per_thread[thread_id] = per_thread.get(thread_id, 0) + 1
    by_video = {job.video: job for job in provider.jobs.values()}
    seen: dict[bytes, int] = {}
    lags: list[float] = []
    for _, message_id, data in posted:
        seen[data] = seen.get(data, 0) + 1
        job = by_video.get(data)
        if job is None or job.complete_after is None:
            continue
        completed_at = wall_offset + job.created_at + job.complete_after
        lags.append(run.posted_at.get(message_id, math.nan) - completed_at)
    exactly_once = (
        len(posted) == jobs
        and len(per_thread) == jobs
        and all(count == 1 for count in per_thread.values())
        and len(seen) == jobs
        and provider.count("POST") == jobs
    )
    polls = provider.count("GET")
    downloads = len(provider.video_requests)
    lags = [lag for lag in lags if not math.isnan(lag)]
    print(f"jobs {jobs} over {len(run.workers)} processes on one PostgreSQL, /animate at {rate}/s")
    print(f"start-up {startup:.1f} s; sending every /animate took {issuing:.1f} s")
    created = sorted(job.created_at for job in provider.jobs.values())
    if len(created) > 1:
        span = created[-1] - created[0]
        print(
            f"admission: {len(created)} jobs reached the provider in {span:.1f} s "
            f"({(len(created) - 1) / span:.1f} jobs/s against {rate:g} offered)"
        )
    print(
        f"videos posted {len(posted)} in {len(per_thread)} threads; provider submits "
        f"{provider.count('POST')}; exactly once: {'yes' if exactly_once else 'NO'}"
    )
    print(
        f"provider requests per job: {(polls + provider.count('POST') + downloads) / jobs:.2f} "
        f"({polls / jobs:.2f} polls, fixed {POLL_INTERVAL_SECONDS:.0f} s schedule)"
    )
    if lags:
        print(
            f"delivery lag p50 {statistics.median(lags):.1f} s, "
            f"p99 {percentile(lags, 0.99):.1f} s, "
            f"max {max(lags):.1f} s (measured to within the 1 s scrape)"
        )
    for worker in run.workers:
        print(
            f"{worker.name}: longest event-loop stall {worker.longest_stall * 1000:.0f} ms "
            f"(to within {LOOP_MONITOR_INTERVAL_SECONDS * 1000:.0f} ms) "
            f"({worker.stalls_over_goal} over {STALL_GOAL_SECONDS * 1000:.0f} ms), "
            f"peak RSS {worker.peak_rss_mb:.0f} MB "
            f"(its image-fit processes: at most {worker.helpers_peak_rss_mb:.0f} MB each)"
        )
    print(f"wall time (connected -> every video posted) {wall:.1f} s")
    missed = []
    if not exactly_once:
        missed.append("exactly once")
    if any(w.longest_stall > STALL_GOAL_SECONDS for w in run.workers):
        missed.append(f"no stall over {STALL_GOAL_SECONDS * 1000:.0f} ms")
    if any(max(w.peak_rss_mb, w.helpers_peak_rss_mb) > RSS_GOAL_MB for w in run.workers):
        missed.append(f"<= {RSS_GOAL_MB:.0f} MB per process")
    print("goals missed: " + (", ".join(missed) if missed else "none"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="/animate per second")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply completion times (quick trial: 0.1)"
    )
    parser.add_argument(
        "--fakes-niceness",
        type=int,
        choices=range(20),
        default=DEFAULT_FAKES_NICENESS,
        metavar="0-19",
        help="nice value of this process (fake Discord, fake provider, driver) once the bots run;"
        " they are remote services in production (default %(default)s)",
    )
    parser.add_argument(
        "--postgres-niceness",
        type=int,
        choices=range(20),
        default=DEFAULT_POSTGRES_NICENESS,
        metavar="0-19",
        help="nice value of the PostgreSQL server the benchmark starts (default %(default)s)",
    )
    parser.add_argument(
        "--deliveries",
        type=int,
        default=None,
        help="MAX_CONCURRENT_DELIVERIES for both bots (default: the bot's own default)",
    )
    parser.add_argument(
        "--bot-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment setting for both bots, e.g. DATABASE_POOL_SIZE=5 (repeatable)",
    )
    parser.add_argument(
        "--trace-stalls", type=Path, default=None, help="write where stalls happened to this dir"
    )
    arguments = parser.parse_args()
    if arguments.trace_stalls is not None:
        arguments.trace_stalls.mkdir(parents=True, exist_ok=True)
    asyncio.run(
        main(
            arguments.jobs,
            arguments.rate,
            arguments.seed,
            arguments.scale,
            arguments.trace_stalls and arguments.trace_stalls.resolve(),
            arguments.fakes_niceness,
            arguments.postgres_niceness,
            arguments.deliveries,
            dict(setting.split("=", 1) for setting in arguments.bot_setting),
        )
    )
