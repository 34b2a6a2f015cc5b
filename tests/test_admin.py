"""`/animate-admin`, `/jobs` and audit lines as server admins and members meet them: the real bot
against the fake Discord (roles and permissions as Discord computes them) and the fake
provider, with the real settings and ledger in SQLite.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from bot.discord_bot import AnimateBot
from bot.errors import user_message
from bot.guild_settings import SettingRejected
from bot.jobs import JobState, NewJob, Outcome
from bot.store import JobStore
from cogs.audit import post_audit, post_audit_everywhere
from tests.fake_discord import ADMINISTRATOR, DEFAULT_BOT_PERMISSIONS, SEND_MESSAGES, FakeMessage
from tests.fake_discord.harness import BotRun
from tests.test_discord_bot import VIDEO, Env, started, thread_for
from tests.test_discord_bot import env as env  # the fixture, shared with the end-to-end tests

MANAGE_GUILD_BITS = str(1 << 5)


@dataclass
class Server:
    """A running bot in the env's guild, with an admin and an ordinary member."""

    env: Env
    run: BotRun
    admin_id: int
    member_id: int

    @property
    def bot(self) -> AnimateBot:
        return cast("AnimateBot", self.run.bot)

    def now(self) -> datetime:
        return self.bot.service.clock.now()

    async def command(
        self,
        name: str,
        options: dict[str, object] | None = None,
        *,
        user_id: int | None = None,
        channel_id: int | None = None,
        guild_id: int | str | None = "default",
    ) -> str:
        """Run a command and return the private reply the user sees."""
        interaction = await self.env.discord.invoke_command(
            name,
            options or {},
            user_id=user_id or self.admin_id,
            guild_id=self.env.guild_id if guild_id == "default" else guild_id,  # type: ignore[arg-type]
            channel_id=channel_id or self.env.channel_id,
        )
        reply = await self.env.wait_reply(interaction)
        assert all(m.ephemeral for m in interaction.responses())
        assert all(m.mentions_pinged.nobody for m in interaction.responses())
        return reply

    async def admin(self, sub: str, user_id: int | None = None, **options: object) -> str:
        return await self.command(f"animate-admin {sub}", options, user_id=user_id)

    def lines_in(self, channel_id: int) -> list[FakeMessage]:
        return self.env.bot_messages(channel_id)


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Poll an async check (a database read) until it holds, like FakeDiscord.wait_for."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"{check.__qualname__} still false after {within} s"
        await asyncio.sleep(0.01)


@pytest.fixture
async def server(env: Env) -> AsyncIterator[Server]:
    admin_id = env.discord.add_user("grace")
    env.discord.make_admin(env.guild_id, admin_id)
    async with started(env, MEMBER_DAILY_USD="5", MEMBER_MONTHLY_USD="20") as run:
        env.run = run
        yield Server(env, run, admin_id, env.user_id)


# --- who may use it ------------------------------------------------------------------------------


async def test_a_member_without_manage_server_is_refused_and_nothing_changes(
    server: Server,
) -> None:
    [group] = [
        c
        for c in server.env.discord.commands.guild_commands[server.env.guild_id]
        if c["name"] == "animate-admin"
    ]
    assert group["default_member_permissions"] == MANAGE_GUILD_BITS
    # A server can override Discord's gate; the bot checks again.
    reply = await server.admin("limits", user_id=server.member_id, member_daily_usd=100.0)
    assert "Manage Server" in reply and "\n" not in reply
    config = await server.bot.guild_settings.get(server.env.guild_id)
    assert config.member_daily_usd.value == 5.0 and not config.member_daily_usd.own
    reply = await server.admin("pause", user_id=server.member_id)
    assert "Manage Server" in reply
    assert not (await server.bot.guild_settings.get(server.env.guild_id)).paused
    # Administrator (and the owner) may.
    root = server.env.discord.add_user("root")
    server.env.discord.make_admin(server.env.guild_id, root, permissions=ADMINISTRATOR)
    assert "→" in await server.admin("pause", user_id=root)


# --- limits --------------------------------------------------------------------------------------


async def test_limits_are_set_shown_and_a_negative_value_returns_to_the_default(
    server: Server,
) -> None:
    reply = await server.admin(
        "limits", member_daily_usd=2.5, server_monthly_usd=50.0, max_active=2, cooldown_seconds=30
    )
    assert "the member daily allowance: $5.00 (bot default) → $2.50" in reply
    assert "this server's monthly budget: no limit (bot default) → $50.00" in reply
    assert "unfinished videos per member" in reply and "30 s" in reply
    shown = await server.admin("show")
    assert "the member daily allowance: $2.50 (this server)" in shown
    assert "the member monthly allowance: $20.00 (bot default)" in shown
    assert "this server's monthly budget: $50.00 (this server)" in shown
    assert "spent $0.00 this month" in shown and "UTC" in shown
    reply = await server.admin("limits", member_daily_usd=-1.0, max_active=0)
    assert "$2.50 → $5.00 (bot default)" in reply
    config = await server.bot.guild_settings.get(server.env.guild_id)
    assert config.member_daily_usd.value == 5.0 and not config.member_daily_usd.own
    assert config.max_active.value == 0 and config.max_active.own  # 0: no limit, the server's
    assert config.guild_monthly_usd.value == 50.0


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"member_monthly_usd": 1e12}, "not a sensible"),
        ({"server_monthly_usd": 1e300}, "not a sensible"),
        ({"max_active": 10**6}, "too large"),
        ({"member_daily_usd": 3.0, "cooldown_seconds": 10**9}, "too large"),
    ],
)
async def test_nonsense_values_are_refused_in_one_line_and_change_nothing(
    server: Server, options: dict[str, object], words: str
) -> None:
    reply = await server.admin("limits", **options)
    assert words in reply and "\n" not in reply
    config = await server.bot.guild_settings.get(server.env.guild_id)
    assert not config.member_daily_usd.own and not config.member_monthly_usd.own
    assert not config.max_active.own and not config.cooldown_seconds.own


async def test_nan_cannot_come_from_discord_and_is_refused_by_the_settings(
    server: Server,
) -> None:
    # JSON has no NaN, so Discord never sends one; the settings refuse it all the same.
    with pytest.raises(ValueError, match="cannot send"):
        await server.admin("limits", member_daily_usd=math.nan)
    with pytest.raises(SettingRejected, match="not nan") as refused:
        await server.bot.guild_settings.update(
            server.env.guild_id,
            {"member_daily_usd": 2.0, "member_monthly_usd": math.nan},
            actor_id=server.admin_id,
            now=server.now(),
        )
    assert "\n" not in str(user_message(refused.value))
    assert not (await server.bot.guild_settings.get(server.env.guild_id)).member_daily_usd.own


# --- role allowances -----------------------------------------------------------------------------


async def test_a_role_allowance_applies_to_members_with_that_role(server: Server) -> None:
    discord_fake, guild_id = server.env.discord, server.env.guild_id
    patrons = discord_fake.add_role(guild_id, "patrons")
    discord_fake.give_role(guild_id, server.member_id, patrons)
    reply = await server.admin("role-limit", role=patrons, member_daily_usd=12.0)
    assert f"<@&{patrons}>" in reply and "daily $12.00, monthly server's" in reply
    # The member sees it in /jobs; an ordinary member keeps the server's allowance.
    jobs = await server.command("jobs", user_id=server.member_id)
    assert "Your daily allowance: $12.00 left of $12.00" in jobs
    other = discord_fake.add_user("lin")
    assert "Your daily allowance: $5.00 left of $5.00" in await server.command(
        "jobs", user_id=other
    )
    statuses = await server.bot.spending.limits(
        requester_id=server.member_id, guild_id=guild_id, now=server.now(), role_ids=[patrons]
    )
    assert {s.key: s.limit_usd for s in statuses}["member_daily"] == 12.0
    # Setting only the monthly keeps the daily.
    reply = await server.admin("role-limit", role=patrons, member_monthly_usd=40.0)
    assert "daily $12.00, monthly $40.00" in reply
    assert "$12.00" in await server.admin("show")
    # Removing it.
    reply = await server.admin("role-limit", role=patrons, remove=True)
    assert "→ none" in reply
    assert (await server.bot.guild_settings.get(guild_id)).role_limits == ()


async def test_a_role_of_another_server_is_refused(server: Server) -> None:
    elsewhere = server.env.discord.add_guild("Elsewhere")
    foreign = server.env.discord.add_role(elsewhere, "strangers")
    reply = await server.admin("role-limit", role=foreign, member_daily_usd=99.0)
    assert "not one of this server's roles" in reply and "\n" not in reply
    assert "not one of this server's roles" in await server.admin(
        "access", action="add", role=foreign
    )
    config = await server.bot.guild_settings.get(server.env.guild_id)
    assert config.role_limits == () and config.access.role_ids == frozenset()


async def test_a_deleted_role_drops_out_of_allowances_and_access(server: Server) -> None:
    discord_fake, guild_id = server.env.discord, server.env.guild_id
    doomed = discord_fake.add_role(guild_id, "doomed")
    await server.admin("role-limit", role=doomed, member_daily_usd=9.0)
    await server.admin("access", action="add", role=doomed)
    discord_fake.delete_role(guild_id, doomed)

    async def forgotten() -> bool:
        config = await server.bot.guild_settings.get(guild_id)
        return config.role_limits == () and not config.access.role_ids

    await eventually(forgotten)
    shown = await server.admin("show")
    assert f"<@&{doomed}>" not in shown and "for: everyone" in shown


# --- access --------------------------------------------------------------------------------------


async def test_access_by_channel_and_by_role(server: Server) -> None:
    discord_fake, guild_id = server.env.discord, server.env.guild_id
    studio = discord_fake.add_text_channel(guild_id, "studio")
    artists = discord_fake.add_role(guild_id, "artists")
    assert "every channel" in await server.admin("access")
    reply = await server.admin("access", action="add", channel=studio, role=artists)
    assert f"/animate works in: <#{studio}>" in reply and f"/animate is for: <@&{artists}>" in reply
    config = await server.bot.guild_settings.get(guild_id)
    assert config.access.channel_ids == {studio} and config.access.role_ids == {artists}
    shown = await server.admin("show")
    assert f"<#{studio}>" in shown and f"<@&{artists}>" in shown
    # The member (no role, wrong channel) is turned away by /animate.
    refusal = await server.env.wait_reply(await server.env.animate())
    assert "only in" in refusal
    assert server.env.provider.requests == []
    # Removing and clearing.
    reply = await server.admin("access", action="remove", role=artists)
    assert "/animate is for: everyone" in reply
    reply = await server.admin("access", action="clear-channels")
    assert "every channel" in reply
    config = await server.bot.guild_settings.get(guild_id)
    assert not config.access.channel_ids and not config.access.role_ids
    assert "Give a channel" in await server.admin("access", action="add")


async def test_a_deleted_channel_drops_out_of_the_access_list(env: Env) -> None:
    admin_id = env.discord.add_user("grace")
    env.discord.make_admin(env.guild_id, admin_id)
    studio = env.discord.add_text_channel(env.guild_id, "studio")
    gallery = env.discord.add_text_channel(env.guild_id, "gallery")
    async with started(env) as run:
        server = Server(env, run, admin_id, env.user_id)
        reply = await server.admin("access", action="add", channel=studio)
        assert f"<#{studio}>" in reply
        await server.admin("access", action="add", channel=gallery)
    # Deleted while the bot was offline (no event reached it): it drops out all the same.
    env.discord.delete_channel(studio)
    async with started(env) as run:
        server = Server(env, run, admin_id, env.user_id)
        reply = await server.admin("access")
        assert f"<#{studio}>" not in reply and f"<#{gallery}>" in reply
        # Deleted while the bot listens: forgotten in the database too.
        env.discord.delete_channel(gallery, announce=True)
        await env.discord.wait_for(lambda: server.bot.get_channel(gallery) is None)

        async def forgotten() -> bool:
            config = await server.bot.guild_settings.get(env.guild_id)
            return gallery not in config.access.channel_ids

        await eventually(forgotten)
        config = await server.bot.guild_settings.get(env.guild_id)
        assert config.access.channel_ids == {studio}  # the offline deletion stays, harmless
        assert "every channel" in await server.admin("access")


# --- defaults, pause -----------------------------------------------------------------------------


async def test_defaults_are_checked_against_the_model(server: Server) -> None:
    reply = await server.admin("defaults", model="openai/sora-2-i2v", duration=8)
    assert "the default model: openai/sora-2-pro-i2v (bot default) → openai/sora-2-i2v" in reply
    assert "the default duration: 4 s (bot default) → 8 s" in reply
    refused = await server.admin("defaults", resolution="1080p")
    assert "720p" in refused and "\n" not in refused
    config = await server.bot.guild_settings.get(server.env.guild_id)
    assert config.default_model.value == "openai/sora-2-i2v" and config.default_duration.own
    reply = await server.admin("defaults", model="default", duration=0)
    config = await server.bot.guild_settings.get(server.env.guild_id)
    assert not config.default_model.own and not config.default_duration.own


async def test_pause_and_resume_are_stored(server: Server) -> None:
    reply = await server.admin("pause")
    assert "paused" in reply and "still arrive" in reply
    assert (await server.bot.guild_settings.get(server.env.guild_id)).paused
    refusal = await server.env.wait_reply(await server.env.animate())
    assert "paused" in refusal
    await server.admin("resume")
    assert not (await server.bot.guild_settings.get(server.env.guild_id)).paused


# --- audit lines ---------------------------------------------------------------------------------


async def test_log_channel_gets_a_line_per_change_that_pings_nobody(server: Server) -> None:
    discord_fake, guild_id = server.env.discord, server.env.guild_id
    log_channel = discord_fake.add_text_channel(guild_id, "mod-log")
    reply = await server.admin("log-channel", channel=log_channel)
    assert f"<#{log_channel}>" in reply and "never ping" in reply
    await discord_fake.wait_for(lambda: len(server.lines_in(log_channel)) == 1)
    await server.admin("limits", member_daily_usd=3.0)
    await discord_fake.wait_for(lambda: len(server.lines_in(log_channel)) == 2)
    first, second = server.lines_in(log_channel)
    assert first.content == (
        f"<@{server.admin_id}> changed the log channel from none to <#{log_channel}>."
    )
    assert second.content == (
        f"<@{server.admin_id}> changed the member daily allowance from $5.00 (bot default) "
        "to $3.00."
    )
    for line in (first, second):
        assert line.mentions_pinged.nobody and not line.ephemeral
    # Bot-wide notices and job events go there too.
    await post_audit_everywhere(server.bot, "⚠️ out of credits @everyone")
    await post_audit(server.bot, guild_id, f"<@{server.member_id}> accepted: Sora 2 Pro 4 s $1.20")
    third, fourth = server.lines_in(log_channel)[2:]
    assert "out of credits" in third.content and third.mentions_pinged.nobody
    assert fourth.mentions_pinged.nobody
    # Turning it off: the old channel records it, then stays quiet.
    assert "off" in await server.admin("log-channel")
    await discord_fake.wait_for(lambda: len(server.lines_in(log_channel)) == 5)
    assert server.lines_in(log_channel)[-1].content.endswith(f"from <#{log_channel}> to none.")
    await server.admin("limits", member_daily_usd=4.0)
    await server.admin("show")  # the change's handler has long finished by then
    assert len(server.lines_in(log_channel)) == 5


async def test_a_deleted_log_channel_breaks_nothing(server: Server) -> None:
    discord_fake, guild_id = server.env.discord, server.env.guild_id
    log_channel = discord_fake.add_text_channel(guild_id, "mod-log")
    await server.admin("log-channel", channel=log_channel)
    discord_fake.delete_channel(log_channel)  # unannounced: found out by posting
    await post_audit(server.bot, guild_id, "a job was delivered")
    assert (await server.bot.guild_settings.get(guild_id)).log_channel_id is None
    assert "→ $3.00" in await server.admin("limits", member_daily_usd=3.0)
    assert server.run.logged_errors == []


async def test_a_log_channel_the_bot_cannot_post_in_is_refused(server: Server) -> None:
    discord_fake, guild_id = server.env.discord, server.env.guild_id
    muted = discord_fake.add_text_channel(
        guild_id, "read-only", bot_permissions=DEFAULT_BOT_PERMISSIONS & ~SEND_MESSAGES
    )
    reply = await server.admin("log-channel", channel=muted)
    assert "Send Messages" in reply and "\n" not in reply
    assert (await server.bot.guild_settings.get(guild_id)).log_channel_id is None


# --- usage and /jobs -----------------------------------------------------------------------------


async def test_usage_of_a_member_and_the_top_spenders(server: Server) -> None:
    spending, guild_id, now = server.bot.spending, server.env.guild_id, server.now()
    big = server.env.discord.add_user("big")
    for requester, amount in ((big, 3.0), (server.member_id, 1.2)):
        await spending.reserve(
            requester_id=requester, guild_id=guild_id, estimate_usd=amount, now=now
        )
    top = await server.admin("usage")
    assert "This server has spent $4.20 this month" in top
    assert top.index(f"<@{big}> $3.00") < top.index(f"<@{server.member_id}> $1.20")
    one = await server.admin("usage", member=big)
    assert f"<@{big}> has used $3.00 today and $3.00 this month" in one
    assert "Their daily allowance: $2.00 left of $5.00" in one and "UTC" in one


async def test_jobs_lists_a_finished_job_and_what_is_left(server: Server) -> None:
    env = server.env
    env.provider.script_next_job(["queued", "completed"], video=VIDEO)
    await env.wait_reply(await env.animate())
    [status] = env.bot_messages(env.channel_id)
    thread_id = thread_for(env, status)
    await env.discord.wait_for(lambda: len(env.videos(thread_id)) == 1, timeout=20)
    [video] = env.videos(thread_id)
    await env.discord.wait_for(lambda: "Done" in str(env.discord.message(status.id).embeds))
    reply = await server.command("jobs", user_id=env.user_id)
    assert "✅ delivered" in reply and "Sora 2 Pro" in reply and "$1.20" in reply
    assert f"/channels/{env.guild_id}/{thread_id}/{video.id}" in reply
    assert "Your daily allowance: $3.80 left of $5.00" in reply
    assert "Your monthly allowance: $18.80 left of $20.00" in reply
    assert "UTC" in reply


async def test_jobs_in_a_dm(env: Env) -> None:
    async with started(env, DEV_GUILD_ID="", MEMBER_DAILY_USD="5", GUILD_MONTHLY_USD="7") as run:
        env.run = run
        server = Server(env, run, env.user_id, env.user_id)
        dm = env.discord.add_dm_channel(env.user_id)
        reply = await server.command("jobs", channel_id=dm, guild_id=None)
    assert "You have not made any videos yet." in reply
    assert "Your daily allowance: $5.00 left of $5.00" in reply
    assert "server" not in reply  # no server budget in DMs


# --- the store's listing -------------------------------------------------------------------------


def _new_job(requester_id: int, prompt: str) -> NewJob:
    return NewJob(
        requester_id=requester_id,
        guild_id=1,
        channel_id=2,
        model="openai/sora-2-i2v",
        prompt=prompt,
        duration=4,
        resolution="720p",
        orientation="landscape",
        fit="crop",
        image_width=1280,
        image_height=720,
        image_data=b"\xff\xd8" + b"\0" * 1000,
        upload_limit_bytes=10 * 1024 * 1024,
        estimated_usd=0.4,
    )


async def test_recent_for_lists_a_members_jobs_newest_first(store_url: str) -> None:
    store = await JobStore.open(store_url)
    try:
        t0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
        for minute, (requester, prompt) in enumerate(
            [(7, "first"), (8, "someone else"), (7, "second"), (7, "third")]
        ):
            await store.create(_new_job(requester, prompt), now=t0 + timedelta(minutes=minute))
        [newest] = await store.recent_for(7, limit=1)
        finished = await store.transition(
            newest.id,
            from_states=[JobState.SUBMITTING],
            to_state=JobState.DONE,
            now=t0 + timedelta(minutes=9),
            outcome=Outcome.FAILED,
        )
        assert finished is not None
        listed = await store.recent_for(7, limit=10)
        assert [j.prompt for j in listed] == ["third", "second", "first"]
        assert listed[0].outcome == Outcome.FAILED
        assert all(j.image_data is None for j in listed)  # never loaded for a listing
        assert await store.recent_for(99) == []
    finally:
        await store.close()
