"""How fast /animate answers under load, and what the poll schedule costs.

Part 1: 20 members run /animate at the same moment, each with a 12-megapixel JPEG. The real bot
(discord.py, cog, service, store on SQLite) runs against the fake Discord and the fake provider
on 127.0.0.1. Reports time to acknowledge (Discord allows 3 s; goal p99 <= 100 ms) and time
until the job reached the provider.

Part 2: provider requests per job and delivery lag (provider completed -> video posted) for the
default adaptive poll schedule next to a fixed 10 s poll (bench/poll_schedule.py).

    python bench/ack_latency.py
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from imaging import build_photo
from poll_schedule import main as poll_schedule_main

from bot.config import Settings
from bot.discord_bot import AnimateBot
from tests.fake_discord import FakeDiscord
from tests.fake_discord.harness import run_bot
from tests.fake_provider import FakeProvider

MEMBERS = 20


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def measure_ack() -> None:
    photo = build_photo((4000, 3000))
    discord_server = FakeDiscord()
    provider = FakeProvider()
    await discord_server.start()
    await provider.start()
    guild = discord_server.add_guild("Bench")
    channel = discord_server.add_text_channel(guild, "animate")
    users = [discord_server.add_user(f"member{i}") for i in range(MEMBERS)]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(
            {
                "DISCORD_TOKEN": discord_server.bot_token,
                "AIMLAPI_KEY": "test-key",
                "AIMLAPI_BASE_URL": provider.base_url,
                "DATABASE_URL": f"sqlite:///{tmp}/bench.db",
                "DEV_GUILD_ID": str(guild),
            }
        )
        bot = AnimateBot(settings, guild_ready_timeout=0.1)
        async with run_bot(bot, discord_server):
            attachments = [
                discord_server.add_attachment(photo, f"photo{i}.jpg", "image/jpeg")
                for i in range(MEMBERS)
            ]
            started = time.monotonic()
            interactions = await asyncio.gather(
                *(
                    discord_server.invoke_command(
                        "animate",
                        {"image": attachments[i], "prompt": f"bench job {i}"},
                        user_id=users[i],
                        guild_id=guild,
                        channel_id=channel,
                    )
                    for i in range(MEMBERS)
                )
            )
            await discord_server.wait_for(lambda: len(provider.jobs) == MEMBERS, timeout=120)
            wall = time.monotonic() - started
        submitted_at = {
            r.json["prompt"]: r.time
            for r in provider.requests
            if r.method == "POST" and isinstance(r.json, dict)
        }
    await provider.close()
    await discord_server.close()

    acks = [i.ack_delay * 1000 for i in interactions if i.ack_delay is not None]
    submits = [
        (submitted_at[f"bench job {n}"] - i.sent_at) * 1000
        for n, i in enumerate(interactions)
        if i.sent_at is not None
    ]
    if len(acks) != MEMBERS:
        raise SystemExit(f"only {len(acks)} of {MEMBERS} interactions were acknowledged")
    print(
        f"{MEMBERS} simultaneous /animate, each a 12 MP JPEG ({len(photo) / 1e6:.1f} MB), "
        f"{os.cpu_count()} cores; all {MEMBERS} jobs at the provider after {wall:.1f} s\n"
    )
    print("| measure | p50 | p99 | max |")
    print("|---|---|---|---|")
    for name, values in (("acknowledge", acks), ("job at the provider", submits)):
        print(
            f"| {name} | {statistics.median(values):.0f} ms | {percentile(values, 0.99):.0f} ms "
            f"| {max(values):.0f} ms |"
        )
    goal = "met" if percentile(acks, 0.99) <= 100 else "NOT met"
    print(f"\nack goal (p99 <= 100 ms): {goal}\n")


async def main() -> None:
    await measure_ack()
    await poll_schedule_main()


if __name__ == "__main__":
    asyncio.run(main())
