"""Spend control as members meet it: the price first, Generate / Cancel, refusals that name the
limit, refunds and the out-of-credits pause — the real bot against the fake Discord and the fake
provider, with the real ledger in SQLite.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

import pytest

from bot.discord_bot import AnimateBot
from bot.spending import Spending
from tests.fake_discord import FakeInteraction, FakeMessage
from tests.test_discord_bot import Env, started, thread_for
from tests.test_discord_bot import env as env  # the fixture, shared with the end-to-end tests

# One default video (Sora 2 Pro, 720p, 4 s) is estimated at $1.20.
PRICE = 1.20


def buttons(message: FakeMessage) -> dict[str, str]:
    """label → custom_id of the buttons on a message."""
    found: dict[str, str] = {}
    for row in message.components:
        for item in row.get("components", []):
            if item.get("type") == 2 and "custom_id" in item:
                found[str(item["label"])] = str(item["custom_id"])
    return found


async def confirm_prompt(env: Env, interaction: FakeInteraction) -> FakeMessage:
    def asked() -> bool:
        return any(buttons(m) for m in interaction.responses())

    await env.discord.wait_for(asked, timeout=15)
    return next(m for m in interaction.responses() if buttons(m))


def bot_of(env: Env) -> AnimateBot:
    assert env.run is not None
    return cast("AnimateBot", env.run.bot)


async def spending_of(env: Env) -> Spending:
    return bot_of(env).spending


def now_of(env: Env) -> datetime:
    return bot_of(env).service.clock.now()


async def test_an_expensive_request_asks_first_and_generate_starts_it(env: Env) -> None:
    async with started(env, CONFIRM_ABOVE_USD="1", MEMBER_DAILY_USD="5") as run:
        env.run = run
        interaction = await env.animate()
        prompt = await confirm_prompt(env, interaction)
        assert "$1.20" in prompt.content and "Nothing is spent" in prompt.content
        assert "left" in prompt.content.lower()
        assert env.provider.requests == []  # nothing sent before Generate
        await env.discord.invoke_component(
            prompt.id, buttons(prompt)["Generate"], user_id=env.user_id
        )
        await env.discord.wait_for(lambda: "Started" in env.discord.message(prompt.id).content)
        [status] = env.bot_messages(env.channel_id)
        thread_id = thread_for(env, status)
        await env.discord.wait_for(lambda: len(env.videos(thread_id)) == 1, timeout=20)
        assert len(env.provider.jobs) == 1


async def test_cancel_spends_nothing(env: Env) -> None:
    async with started(env, CONFIRM_ABOVE_USD="1") as run:
        env.run = run
        interaction = await env.animate()
        prompt = await confirm_prompt(env, interaction)
        await env.discord.invoke_component(
            prompt.id, buttons(prompt)["Cancel"], user_id=env.user_id
        )
        await env.discord.wait_for(lambda: "Cancelled" in env.discord.message(prompt.id).content)
        assert "Nothing was spent" in env.discord.message(prompt.id).content
        spending = await spending_of(env)
        usage = await spending.usage(
            requester_id=env.user_id, guild_id=env.guild_id, now=now_of(env)
        )
    assert env.provider.requests == []
    assert usage.member_today_usd == 0


async def test_an_unanswered_confirmation_expires_and_costs_nothing(env: Env) -> None:
    async with started(env, CONFIRM_ABOVE_USD="1", CONFIRM_TIMEOUT_SECONDS="0.3") as run:
        env.run = run
        interaction = await env.animate()
        prompt = await confirm_prompt(env, interaction)
        await env.discord.wait_for(
            lambda: "expired" in env.discord.message(prompt.id).content, timeout=10
        )
        late = env.discord.message(prompt.id)
        assert all(item.get("disabled") for row in late.components for item in row["components"])
    assert env.provider.requests == []


async def test_only_the_requester_can_confirm(env: Env) -> None:
    other = env.discord.add_user("mallory")
    env.discord.add_guild_member(env.guild_id, other)
    async with started(env, CONFIRM_ABOVE_USD="1") as run:
        env.run = run
        interaction = await env.animate()
        prompt = await confirm_prompt(env, interaction)
        click = await env.discord.invoke_component(
            prompt.id, buttons(prompt)["Generate"], user_id=other
        )
        await env.discord.wait_for(lambda: any(m.content for m in click.responses()))
        assert "Only the member who asked" in click.responses()[0].content
    assert env.provider.requests == []


async def test_a_request_over_the_daily_allowance_is_refused_by_name(env: Env) -> None:
    async with started(env, MEMBER_DAILY_USD="1") as run:
        env.run = run
        reply = await env.wait_reply(await env.animate())
    assert "daily allowance" in reply and "$1.20" in reply and "$1.00" in reply
    assert "<t:" in reply and "Nothing was spent" in reply
    assert env.provider.requests == []


async def test_two_videos_fit_then_the_third_is_refused_and_sums_are_exact(env: Env) -> None:
    async with started(env, MEMBER_DAILY_USD="2.40") as run:
        env.run = run
        replies = [await env.wait_reply(await env.animate()) for _ in range(3)]
        spending = await spending_of(env)
        usage = await spending.usage(
            requester_id=env.user_id, guild_id=env.guild_id, now=now_of(env)
        )
    assert [r.startswith("Started") for r in replies] == [True, True, False]
    assert "daily allowance" in replies[2]
    assert usage.member_today_usd == pytest.approx(2 * PRICE)
    assert len(env.provider.jobs) == 2


async def test_a_failed_video_is_refunded(env: Env) -> None:
    env.provider.script_next_job(
        ["queued", "error"], error={"name": "GenerationError", "message": "content policy"}
    )
    async with started(env, MEMBER_DAILY_USD="5") as run:
        env.run = run
        await env.wait_reply(await env.animate())
        spending = await spending_of(env)

        async def refunded() -> bool:
            usage = await spending.usage(
                requester_id=env.user_id, guild_id=env.guild_id, now=now_of(env)
            )
            return usage.member_today_usd == 0

        [status] = env.bot_messages(env.channel_id)
        thread_id = thread_for(env, status)
        await env.discord.wait_for(
            lambda: any("content policy" in str(m.embeds) for m in env.bot_messages(thread_id)),
            timeout=20,
        )
        await env.until(refunded)


async def test_out_of_credits_pauses_new_videos_bot_wide(env: Env) -> None:
    env.provider.fail_next("POST", status=403, message="Insufficient credits")
    async with started(env) as run:
        env.run = run
        first = await env.wait_reply(await env.animate())
        second = await env.wait_reply(await env.animate())
    assert "out of credits" in first
    assert "paused" in second and "<t:" in second
    assert len([r for r in env.provider.requests if r.method == "POST"]) == 1


async def test_a_paused_server_and_access_lists_refuse_politely(env: Env) -> None:
    async with started(env) as run:
        env.run = run
        settings = bot_of(env).guild_settings
        now = now_of(env)
        await settings.update(env.guild_id, {"paused": True}, actor_id=1, now=now)
        paused = await env.wait_reply(await env.animate())
        await settings.update(env.guild_id, {"paused": False}, actor_id=1, now=now)
        other_channel = env.discord.add_text_channel(env.guild_id, "art-only")
        await settings.set_access(env.guild_id, "channel", other_channel, allowed=True, actor_id=1)
        elsewhere = await env.wait_reply(await env.animate())
    assert "paused" in paused
    assert f"<#{other_channel}>" in elsewhere
    assert env.provider.requests == []


async def test_job_events_are_audited_in_the_log_channel_pinging_nobody(env: Env) -> None:
    log_channel = env.discord.add_text_channel(env.guild_id, "bot-log")
    async with started(env) as run:
        env.run = run
        await bot_of(env).guild_settings.update(
            env.guild_id, {"log_channel_id": log_channel}, actor_id=1, now=now_of(env)
        )
        await env.wait_reply(await env.animate())
        [status] = env.bot_messages(env.channel_id)
        thread_id = thread_for(env, status)
        await env.discord.wait_for(lambda: len(env.videos(thread_id)) == 1, timeout=20)

        def audited() -> bool:
            text = " ".join(m.content for m in env.bot_messages(log_channel))
            return "accepted" in text and "delivered" in text

        await env.discord.wait_for(audited, timeout=10)
    lines = env.bot_messages(log_channel)
    assert all(f"<@{env.user_id}>" in m.content for m in lines)
    assert all(not m.mentions_pinged.users and not m.mentions_pinged.everyone for m in lines)
