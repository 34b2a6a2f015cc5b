"""`/animate` end to end: the real bot (discord.py, cogs, service, store) against the fake Discord
and the fake provider, both real servers on 127.0.0.1.

The bot's clock runs 50x faster than the wall clock, so a generation the model takes ~90 s for is
polled and delivered in about two seconds of test time, on the real poll schedule.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.config import Settings
from bot.discord_bot import AnimateBot
from tests.fake_discord import (
    ATTACH_FILES,
    CREATE_PUBLIC_THREADS,
    DEFAULT_BOT_PERMISSIONS,
    PRIVILEGED_INTENTS,
    FakeDiscord,
    FakeInteraction,
    FakeMessage,
)
from tests.fake_discord.harness import BotRun, run_bot
from tests.fake_provider import FakeProvider

SPEED = 50.0
VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64


class FastClock:
    """The service's clock, running SPEED times faster than real time."""

    def __init__(self) -> None:
        self.start = datetime.now(UTC)
        self.origin = time.monotonic()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self.origin) * SPEED)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / SPEED)


def jpeg(width: int, height: int, quality: int = 90) -> bytes:
    image = Image.new("RGB", (width, height), (40, 110, 190))
    for x in range(0, width, max(1, width // 20)):
        image.paste((230, 190, 50), (x, 0, x + max(1, width // 80), height))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@dataclass
class Env:
    discord: FakeDiscord
    provider: FakeProvider
    guild_id: int
    channel_id: int
    user_id: int
    tmp: Path
    run: BotRun | None = None

    def settings(self, **extra: str) -> Settings:
        values = {
            "DISCORD_TOKEN": self.discord.bot_token,
            "AIMLAPI_KEY": "test-key",
            "AIMLAPI_BASE_URL": self.provider.base_url,
            "DISCORD_API_BASE_URL": self.discord.rest_base_url,
            "DISCORD_GATEWAY_URL": self.discord.gateway_url,
            "DATABASE_URL": f"sqlite:///{self.tmp / 'jobs.db'}",
            "DEV_GUILD_ID": str(self.guild_id),
            "POLL_TICK_SECONDS": "0.1",
            "LEASE_SECONDS": "100",
            # Spending control has tests of its own; here every request goes straight through.
            "CONFIRM_ABOVE_USD": "0",
            "COOLDOWN_SECONDS": "0",
            "MEMBER_DAILY_USD": "0",
            "MEMBER_MONTHLY_USD": "0",
            "GUILD_MONTHLY_USD": "0",
            "BOT_MONTHLY_USD": "0",
        }
        values.update(extra)
        return Settings.from_env(values)

    async def animate(
        self,
        *,
        image: bytes | None = None,
        filename: str = "photo.jpg",
        content_type: str | None = "image/jpeg",
        prompt: str = "the waves roll in slowly",
        channel_id: int | None = None,
        guild_id: int | str | None = "default",
        user_id: int | None = None,
        **options: object,
    ) -> FakeInteraction:
        attachment = self.discord.add_attachment(
            image if image is not None else jpeg(1600, 900), filename, content_type
        )
        return await self.discord.invoke_command(
            "animate",
            {"image": attachment, "prompt": prompt, **options},
            user_id=user_id or self.user_id,
            guild_id=self.guild_id if guild_id == "default" else guild_id,  # type: ignore[arg-type]
            channel_id=channel_id or self.channel_id,
        )

    def bot_messages(self, channel_id: int) -> list[FakeMessage]:
        return [
            m
            for m in self.discord.messages(channel_id)
            if m.author_id == self.discord.bot_user_id and m.source == "channel"
        ]

    def videos(self, channel_id: int) -> list[FakeMessage]:
        return [
            m
            for m in self.bot_messages(channel_id)
            if any(a.filename.endswith(".mp4") for a in m.attachments)
        ]

    async def until(self, check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
        """Poll an async condition (a database read, say) until it holds, like wait_for."""
        async with asyncio.timeout(within):
            while not await check():
                await self.discord.wait_for(lambda: True)  # lets the bot and the fake run
                await asyncio.sleep(0.02)

    async def wait_reply(self, interaction: FakeInteraction, within: float = 15.0) -> str:
        """The ephemeral text the requester finally sees."""

        def answered() -> bool:
            return any(m.content and not m.loading for m in interaction.responses())

        await self.discord.wait_for(answered, timeout=within)
        return next(m.content for m in interaction.responses() if m.content and not m.loading)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    discord_server = FakeDiscord()
    provider = FakeProvider()
    await discord_server.start()
    await provider.start()
    guild_id = discord_server.add_guild("Artists")
    channel_id = discord_server.add_text_channel(guild_id, "animate")
    user_id = discord_server.add_user("ada")
    try:
        yield Env(discord_server, provider, guild_id, channel_id, user_id, tmp_path)
        assert discord_server.openapi_violations == []
        assert discord_server.unhandled_routes == []
    finally:
        await provider.close()
        await discord_server.close()


@pytest.fixture
async def bot(env: Env) -> AsyncIterator[BotRun]:
    async with started(env) as run:
        yield run


def started(env: Env, **settings: str) -> Any:
    bot = AnimateBot(env.settings(**settings), clock=FastClock(), guild_ready_timeout=0.1)
    return run_bot(bot, env.discord)


def thread_for(env: Env, status: FakeMessage) -> int:
    [thread] = [t for t in env.discord.threads() if int(t["id"]) == status.id]
    return int(thread["id"])


async def test_landscape_photo_becomes_a_video_in_a_thread(env: Env, bot: BotRun) -> None:
    env.provider.script_next_job(["queued", "generating", "generating", "completed"], video=VIDEO)
    interaction = await env.animate(prompt="the waves roll in slowly")
    assert "Started" in await env.wait_reply(interaction)
    [status] = env.bot_messages(env.channel_id)
    thread_id = thread_for(env, status)
    await env.discord.wait_for(lambda: len(env.videos(thread_id)) == 1, timeout=20)
    [video] = env.videos(thread_id)
    assert video.attachments[0].data == VIDEO
    assert f"<@{env.user_id}>" in video.content
    assert video.mentions_pinged.users == {env.user_id}
    assert "the waves roll in slowly" in str(video.embeds)
    # The status message was edited in place, never re-posted, and ends as done.
    await env.discord.wait_for(lambda: "Done" in str(env.discord.message(status.id).embeds))
    assert len(env.bot_messages(env.channel_id)) == 1
    titles = [str(v.embeds[0]["title"]) for v in env.discord.message(status.id).history if v.embeds]
    assert any("Queued" in t for t in titles) and any("Generating" in t for t in titles)
    assert status.attachments[0].filename == "first-frame.jpg"
    frame = Image.open(io.BytesIO(status.attachments[0].data))
    assert frame.size == (1280, 720)
    [job] = env.provider.jobs.values()
    assert job.body["aspect_ratio"] == "16:9" and job.body["resolution"] == "720p"
    thread = next(t for t in env.discord.threads() if int(t["id"]) == thread_id)
    assert thread["name"] == "the waves roll in slowly"


async def test_portrait_photo_is_fitted_portrait(env: Env, bot: BotRun) -> None:
    interaction = await env.animate(image=jpeg(900, 1600), resolution="1080p", duration=8)
    await env.wait_reply(interaction)
    [job] = env.provider.jobs.values()
    assert job.body["aspect_ratio"] == "9:16"
    assert job.body["resolution"] == "1080p" and job.body["duration"] == 8
    [status] = env.bot_messages(env.channel_id)
    assert Image.open(io.BytesIO(status.attachments[0].data)).size == (1024, 1792)


async def test_a_non_image_file_gets_a_short_private_answer(env: Env, bot: BotRun) -> None:
    interaction = await env.animate(
        image=b"%PDF-1.7 quarterly report", filename="report.pdf", content_type="application/pdf"
    )
    reply = await env.wait_reply(interaction)
    assert "not a picture" in reply
    assert interaction.deferred_ephemeral
    assert env.provider.requests == []
    assert env.bot_messages(env.channel_id) == []
    # A file that claims to be a JPEG but is not is caught from its bytes.
    interaction = await env.animate(image=b"GIF? no, plain text", filename="cat.jpg")
    assert "JPEG" in await env.wait_reply(interaction)
    assert env.provider.requests == []


async def test_bad_choices_are_explained_and_cost_nothing(env: Env, bot: BotRun) -> None:
    interaction = await env.animate(model="openai/sora-2-i2v", resolution="1080p")
    assert "720p" in await env.wait_reply(interaction)
    interaction = await env.animate(duration=5)
    assert "4, 8 or 12" in await env.wait_reply(interaction)
    assert env.provider.requests == []


async def test_provider_refusal_is_told_in_the_thread(env: Env, bot: BotRun) -> None:
    env.provider.script_next_job(
        ["queued", "error"],
        error={"name": "GenerationError", "message": "The image violates our content policy"},
    )
    await env.wait_reply(await env.animate())
    [status] = env.bot_messages(env.channel_id)
    thread_id = thread_for(env, status)

    def failure_posted() -> bool:
        return any("content policy" in str(m.embeds) for m in env.bot_messages(thread_id))

    await env.discord.wait_for(failure_posted, timeout=20)
    await env.discord.wait_for(lambda: "No video" in str(env.discord.message(status.id).embeds))
    assert env.videos(thread_id) == []


async def test_provider_bursts_of_429_and_5xx_are_ridden_out(env: Env, bot: BotRun) -> None:
    env.provider.fail_next("POST", status=429, count=2)
    env.provider.fail_next("GET", status=503, count=4)
    env.provider.fail_next("GET", status=429, count=3)
    env.provider.script_next_job(["queued", "generating", "completed"], video=VIDEO)
    await env.wait_reply(await env.animate())
    [status] = env.bot_messages(env.channel_id)
    thread_id = thread_for(env, status)
    await env.discord.wait_for(lambda: len(env.videos(thread_id)) == 1, timeout=30)
    assert len(env.provider.jobs) == 1


async def test_in_a_dm_everything_goes_to_the_dm(env: Env) -> None:
    # DMs only see global commands, as on Discord, so no dev guild here.
    async with started(env, DEV_GUILD_ID=""):
        dm = env.discord.add_dm_channel(env.user_id)
        await env.wait_reply(await env.animate(channel_id=dm, guild_id=None))
        [status] = env.bot_messages(dm)
        assert "no threads" in status.content
        await env.discord.wait_for(lambda: len(env.videos(dm)) == 1, timeout=20)
        assert env.discord.threads() == []


async def test_used_inside_a_thread_that_thread_is_used(env: Env, bot: BotRun) -> None:
    thread_id = env.discord.add_thread(env.channel_id, "ideas")
    await env.wait_reply(await env.animate(channel_id=thread_id))
    assert len(env.bot_messages(thread_id)) == 1  # the status message
    await env.discord.wait_for(lambda: len(env.videos(thread_id)) == 1, timeout=20)
    assert env.bot_messages(env.channel_id) == []
    assert len(env.discord.threads()) == 1


async def test_without_thread_permission_results_go_to_the_channel(env: Env, bot: BotRun) -> None:
    env.discord.set_bot_permissions(
        env.channel_id, DEFAULT_BOT_PERMISSIONS & ~CREATE_PUBLIC_THREADS
    )
    await env.wait_reply(await env.animate())
    [status] = env.bot_messages(env.channel_id)
    assert "Create Public Threads" in status.content
    await env.discord.wait_for(lambda: len(env.videos(env.channel_id)) == 1, timeout=20)
    assert env.discord.threads() == []


async def test_thread_creation_refused_by_discord_falls_back(env: Env, bot: BotRun) -> None:
    env.discord.fail_next("POST", r"/channels/\d+/messages/\d+/threads", status=403)
    await env.wait_reply(await env.animate())
    [status] = env.bot_messages(env.channel_id)
    await env.discord.wait_for(
        lambda: "couldn't open a thread" in env.discord.message(status.id).content
    )
    await env.discord.wait_for(lambda: len(env.videos(env.channel_id)) == 1, timeout=20)


async def test_missing_permissions_are_named(env: Env, bot: BotRun) -> None:
    env.discord.set_bot_permissions(env.channel_id, DEFAULT_BOT_PERMISSIONS & ~ATTACH_FILES)
    reply = await env.wait_reply(await env.animate())
    assert "Attach Files" in reply
    assert env.provider.requests == []


async def test_video_over_the_upload_limit_is_linked(env: Env) -> None:
    big_video = VIDEO * 128  # 2 MiB, over this server's 1 MiB limit
    small_guild = env.discord.add_guild("Small", filesize_limit=1024 * 1024)
    channel = env.discord.add_text_channel(small_guild, "clips")
    env.provider.script_next_job(["queued", "completed"], video=big_video)
    async with started(env, DEV_GUILD_ID=""):
        await env.wait_reply(await env.animate(channel_id=channel, guild_id=small_guild))
        [status] = env.bot_messages(channel)
        thread_id = thread_for(env, status)

        def linked() -> bool:
            return any(env.provider.base_url in str(m.embeds) for m in env.bot_messages(thread_id))

        await env.discord.wait_for(linked, timeout=20)
    [link] = env.bot_messages(thread_id)
    assert "upload limit" in str(link.embeds)
    assert env.provider.base_url in str(link.components)  # a button that opens the video
    assert env.videos(thread_id) == []


async def test_everyone_in_the_prompt_pings_nobody(env: Env, bot: BotRun) -> None:
    other = env.discord.add_user("bob")
    prompt = f"@everyone @here <@{other}> look at this"
    await env.wait_reply(await env.animate(prompt=prompt))
    [status] = env.bot_messages(env.channel_id)
    thread_id = thread_for(env, status)
    await env.discord.wait_for(lambda: len(env.videos(thread_id)) == 1, timeout=20)
    for message in env.bot_messages(env.channel_id) + env.bot_messages(thread_id):
        assert not message.mentions_pinged.everyone
        assert message.mentions_pinged.users <= {env.user_id}
        assert not message.mentions_pinged.roles


async def test_big_photos_are_acknowledged_within_discords_deadline(env: Env, bot: BotRun) -> None:
    env.discord.ack_deadline = 3.0
    photo = jpeg(4000, 3000, quality=95)
    interaction = await env.animate(image=photo)
    await env.wait_reply(interaction, within=30)
    assert interaction.ack_delay is not None and interaction.ack_delay < 1.0
    assert interaction.callbacks == [200]


async def test_delivery_works_after_the_interaction_token_expired(env: Env, bot: BotRun) -> None:
    env.provider.script_next_job(["queued"] + ["generating"] * 10 + ["completed"], video=VIDEO)
    await env.wait_reply(await env.animate())
    env.discord.expire_interaction_tokens()
    [status] = env.bot_messages(env.channel_id)
    thread_id = thread_for(env, status)
    await env.discord.wait_for(lambda: len(env.videos(thread_id)) == 1, timeout=30)
    await env.discord.wait_for(lambda: "Done" in str(env.discord.message(status.id).embeds))


async def test_no_privileged_intents_and_commands_synced_to_the_dev_guild(
    env: Env, bot: BotRun
) -> None:
    assert all(intents & PRIVILEGED_INTENTS == 0 for intents in env.discord.requested_intents)
    guild_commands = env.discord.commands.guild_commands[env.guild_id]
    [animate] = [c for c in guild_commands if c["name"] == "animate"]
    names = {o["name"] for o in animate["options"]}
    assert {"image", "prompt", "duration", "orientation", "resolution", "model", "fit"} <= names
    assert all(o.get("description") for o in animate["options"])


async def test_global_commands_sync_only_when_they_change(env: Env) -> None:
    for _ in range(2):
        async with started(env, DEV_GUILD_ID=""):
            pass
    global_syncs = [
        r
        for r in env.discord.requests("PUT")
        if r.path.endswith("/commands") and "/guilds/" not in r.path
    ]
    assert len(global_syncs) == 1
    assert any(c["name"] == "animate" for c in env.discord.commands.global_commands)


async def test_a_second_request_while_busy_is_capped(env: Env) -> None:
    async with started(env, MAX_ACTIVE_JOBS_PER_USER="1"):
        env.provider.script_next_job(["queued"] + ["generating"] * 50)
        await env.wait_reply(await env.animate())
        reply = await env.wait_reply(await env.animate())
        assert "already have 1" in reply
        assert len(env.provider.jobs) == 1


async def test_if_the_status_message_is_refused_nothing_is_ever_charged(
    env: Env, bot: BotRun
) -> None:
    env.discord.fail_next("POST", rf"^/channels/{env.channel_id}/messages$", status=403)
    reply = await env.wait_reply(await env.animate())
    assert "did not let me post here" in reply and "Send Messages" in reply
    # Well past the submit lease (100 s on the bot's clock, 2 s here): still nothing sent.
    await asyncio.sleep(4)
    assert env.provider.requests == []


async def test_an_oversized_file_is_refused_without_downloading_it(env: Env) -> None:
    async with started(env, MAX_IMAGE_BYTES="50000"):
        reply = await env.wait_reply(await env.animate(image=jpeg(3000, 2000, quality=95)))
    assert "the limit is" in reply and "MB" in reply
    assert env.discord.cdn_requests() == []
    assert env.provider.requests == []


async def test_shutdown_lets_a_command_in_progress_finish(env: Env) -> None:
    env.provider.fail_next("POST", delay=1.5)  # the submit is in flight when we stop
    async with started(env):
        interaction = await env.animate()
        await env.discord.wait_for(
            lambda: any(r.method == "POST" for r in env.provider.requests), timeout=15
        )
    # The bot has closed: the submit completed and the requester heard back.
    assert len(env.provider.jobs) == 1
    assert any("Started" in m.content for m in interaction.responses())


async def test_a_deleted_thread_sends_the_video_to_the_channel(env: Env, bot: BotRun) -> None:
    env.provider.script_next_job(["queued", "completed"], video=VIDEO, complete_after=1.0)
    await env.wait_reply(await env.animate())
    [status] = env.bot_messages(env.channel_id)
    env.discord.delete_channel(thread_for(env, status))  # a moderator removes the thread
    await env.discord.wait_for(lambda: len(env.videos(env.channel_id)) == 1, timeout=20)
    [video] = env.videos(env.channel_id)
    assert f"<@{env.user_id}>" in video.content
    assert "thread was deleted" in str(video.embeds)
    await env.discord.wait_for(
        lambda: "thread was deleted" in str(env.discord.message(status.id).embeds)
    )
    assert len(env.provider.video_requests) == 1  # fetched once, however many tries


async def test_a_2000_character_link_is_posted_in_one_try(env: Env, bot: BotRun) -> None:
    long_url = env.provider.base_url + "/files/expired.mp4?signature=" + "a" * 1960
    env.provider.script_next_job(["queued", {"status": "completed", "video": {"url": long_url}}])
    await env.wait_reply(await env.animate())
    [status] = env.bot_messages(env.channel_id)
    thread_id = thread_for(env, status)

    def linked() -> bool:
        return any(long_url in str(m.embeds) for m in env.bot_messages(thread_id))

    await env.discord.wait_for(linked, timeout=20)
    [link] = env.bot_messages(thread_id)
    assert len(link.content) <= 2000 and f"<@{env.user_id}>" in link.content
    posts = env.discord.requests("POST", f"/channels/{thread_id}/messages")
    assert [r.status for r in posts] == [200]
