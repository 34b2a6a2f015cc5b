"""User install: /animate from a member's own install, where the bot cannot post itself.

In a server that has not installed the bot (and in group DMs) the bot answers through the
interaction: the status message and the result are the interaction's follow-ups, while its token
lives (15 minutes); a later result goes by DM, and when DMs are closed the job ends with a note.
The real bot runs against the fake Discord and the fake provider (see test_discord_bot.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.discord_bot import AnimateBot
from bot.i18n import from_stored
from bot.jobs import Job, JobState
from tests.fake_discord import FakeInteraction, FakeMessage
from tests.fake_discord.harness import BotRun
from tests.fake_provider import ScriptEntry
from tests.test_discord_bot import VIDEO, Env, env, jpeg, started  # noqa: F401 (fixture)

SLOW: list[ScriptEntry] = ["queued", *["generating"] * 6, "completed"]


@pytest.fixture
async def bot(env: Env) -> AsyncIterator[BotRun]:  # noqa: F811 (env is the shared fixture)
    # No dev guild: commands are synced globally, as a member's own install sees them.
    async with started(env, DEV_GUILD_ID="") as run:
        yield run


@pytest.fixture
def elsewhere(env: Env) -> tuple[int, int]:  # noqa: F811
    """A server without the bot, where the member uses the app installed to their account."""
    guild_id = env.discord.add_guild("Elsewhere", bot_member=False)
    channel_id = env.discord.add_text_channel(guild_id, "chat")
    return guild_id, channel_id


async def animate_elsewhere(env: Env, place: tuple[int, int]) -> FakeInteraction:  # noqa: F811
    guild_id, channel_id = place
    attachment = env.discord.add_attachment(jpeg(1600, 900), "photo.jpg", "image/jpeg")
    return await env.discord.invoke_command(
        "animate",
        {"image": attachment, "prompt": "the waves roll in slowly"},
        user_id=env.user_id,
        guild_id=guild_id,
        channel_id=channel_id,
    )


async def started_reply(env: Env, interaction: FakeInteraction) -> str:  # noqa: F811
    """The private reply once the job has started (it first says "Starting…")."""

    def started() -> bool:
        original = interaction.original_response()
        return original is not None and "Started" in original.content

    await env.discord.wait_for(started, timeout=15)
    original = interaction.original_response()
    assert original is not None
    return original.content


def videos(messages: list[FakeMessage]) -> list[FakeMessage]:
    return [m for m in messages if any(a.filename.endswith(".mp4") for a in m.attachments)]


def status_of(interaction: FakeInteraction) -> FakeMessage:
    [status] = [
        m
        for m in interaction.followups()
        if any(a.filename == "first-frame.jpg" for a in m.attachments)
    ]
    return status


async def only_job(run: BotRun, env: Env) -> Job:  # noqa: F811
    bot = run.bot
    assert isinstance(bot, AnimateBot)
    [job] = await bot.store.recent_for(env.user_id)
    return job


async def finished_job(run: BotRun, env: Env) -> Job:  # noqa: F811
    async def done() -> bool:
        # The token (a credential) is cleared right after the final status edit.
        job = await only_job(run, env)
        return job.state == JobState.DONE and job.interaction_token is None

    await env.until(done, within=20)
    return await only_job(run, env)


async def test_animate_and_the_context_menu_are_installable_to_users(
    env: Env,  # noqa: F811
    bot: BotRun,
) -> None:
    synced = {c["name"]: c for c in env.discord.commands.global_commands}
    for name in ("animate", "Animate image"):
        assert sorted(synced[name]["integration_types"]) == [0, 1]
        assert sorted(synced[name]["contexts"]) == [0, 1, 2]


async def test_in_a_server_without_the_bot_everything_goes_through_the_interaction(
    env: Env,  # noqa: F811
    bot: BotRun,
    elsewhere: tuple[int, int],
) -> None:
    guild_id, channel_id = elsewhere
    env.provider.script_next_job(["queued", "generating", "completed"], video=VIDEO)
    interaction = await animate_elsewhere(env, elsewhere)
    reply = await started_reply(env, interaction)
    # Said up front: nothing can reach the member here after 15 minutes.
    assert "15 minutes" in reply and "/show" in reply
    assert interaction.original_response() is not None
    assert interaction.original_response().ephemeral  # type: ignore[union-attr]
    status = status_of(interaction)
    assert not status.ephemeral and status.channel_id == channel_id

    await env.discord.wait_for(lambda: len(videos(interaction.followups())) == 1, timeout=20)
    [video] = videos(interaction.followups())
    assert video.attachments[0].data == VIDEO and not video.ephemeral
    assert f"<@{env.user_id}>" in video.content
    await env.discord.wait_for(lambda: "Done" in str(env.discord.message(status.id).embeds))
    job = await finished_job(run=bot, env=env)
    # The bot never tried to post or open a thread itself, and posted the video once.
    assert env.discord.requests("POST", r"^/api/v10/channels/") == []
    assert env.discord.threads() == []
    assert len(videos(env.discord.messages(channel_id))) == 1
    # Only member and bot limits apply (no server); the channel is kept for the record, and
    # the token, a credential, is gone once the job is done.
    assert job.guild_id is None and job.origin_guild_id == guild_id
    assert job.channel_id == channel_id and job.delivery_message_id == video.id
    assert job.interaction_token is None
    assert "interaction_token" not in repr(job)
    assert bot.error_messages() == []


async def test_a_job_outliving_the_token_is_sent_by_dm_saying_where_it_came_from(
    env: Env,  # noqa: F811
    bot: BotRun,
    elsewhere: tuple[int, int],
) -> None:
    guild_id, channel_id = elsewhere
    env.provider.script_next_job(SLOW, video=VIDEO)
    interaction = await animate_elsewhere(env, elsewhere)
    await started_reply(env, interaction)
    status = status_of(interaction)
    # 15 minutes pass (the fake enforces the token's lifetime): follow-ups get 401.
    env.discord.expire_interaction_tokens()

    dm_channel = env.discord.add_dm_channel(env.user_id)
    await env.discord.wait_for(lambda: len(videos(env.discord.messages(dm_channel))) == 1, 20)
    [video] = videos(env.discord.messages(dm_channel))
    assert video.attachments[0].data == VIDEO
    assert f"https://discord.com/channels/{guild_id}/{channel_id}/{status.id}" in video.content
    assert "15 minutes" in str(video.embeds)
    assert videos(interaction.followups()) == []
    job = await finished_job(run=bot, env=env)
    assert job.delivery_target == "dm" and job.delivery_message_id == video.id
    assert job.interaction_token is None


async def test_with_dms_closed_the_job_ends_with_a_note_and_nothing_crashes(
    env: Env,  # noqa: F811
    bot: BotRun,
    elsewhere: tuple[int, int],
) -> None:
    env.discord.close_dms(env.user_id)
    env.provider.script_next_job(SLOW, video=VIDEO)
    interaction = await animate_elsewhere(env, elsewhere)
    await started_reply(env, interaction)
    env.discord.expire_interaction_tokens()

    job = await finished_job(run=bot, env=env)
    assert job.delivery_message_id is None
    assert job.delivery_note is not None
    note = str(from_stored(job.delivery_note))  # stored translatable; English here
    assert "DMs are closed" in note and f"/show {job.id}" in note
    dm_channel = env.discord.add_dm_channel(env.user_id)
    assert env.discord.messages(dm_channel) == []
    assert job.interaction_token is None
    bot.check()
    assert bot.error_messages() == []


async def test_a_member_install_in_a_server_with_the_bot_posts_as_before(
    env: Env,  # noqa: F811
    bot: BotRun,
) -> None:
    env.provider.script_next_job(["queued", "generating", "completed"], video=VIDEO)
    attachment = env.discord.add_attachment(jpeg(1600, 900), "photo.jpg", "image/jpeg")
    interaction = await env.discord.invoke_command(
        "animate",
        {"image": attachment, "prompt": "the waves roll in slowly"},
        user_id=env.user_id,
        guild_id=env.guild_id,
        channel_id=env.channel_id,
        user_install=True,
    )
    reply = await env.wait_reply(interaction)
    assert "Follow along" in reply and "/show" not in reply
    [status] = env.bot_messages(env.channel_id)
    [thread] = env.discord.threads()
    await env.discord.wait_for(lambda: len(env.videos(int(thread["id"]))) == 1, timeout=20)
    job = await finished_job(run=bot, env=env)
    assert job.guild_id == env.guild_id and job.status_message_id == status.id
    assert job.interaction_token is None and job.interaction_expires_at is None


async def test_in_a_group_dm_the_video_comes_through_the_interaction(
    env: Env,  # noqa: F811
    bot: BotRun,
) -> None:
    friend = env.discord.add_user("grace")
    group = env.discord.add_group_dm([env.user_id, friend])
    env.provider.script_next_job(["queued", "generating", "completed"], video=VIDEO)
    attachment = env.discord.add_attachment(jpeg(1600, 900), "photo.jpg", "image/jpeg")
    interaction = await env.discord.invoke_command(
        "animate",
        {"image": attachment, "prompt": "the waves roll in slowly"},
        user_id=env.user_id,
        guild_id=None,
        channel_id=group,
    )
    assert interaction.payload["context"] == 2
    assert "/show" in await started_reply(env, interaction)
    await env.discord.wait_for(lambda: len(videos(interaction.followups())) == 1, timeout=20)
    [video] = videos(interaction.followups())
    assert video.channel_id == group and video.attachments[0].data == VIDEO
    job = await finished_job(run=bot, env=env)
    assert job.guild_id is None and job.channel_id == group
    assert env.discord.requests("POST", r"^/api/v10/channels/") == []
    assert bot.error_messages() == []


async def test_a_costly_request_elsewhere_is_confirmed_and_answered_through_the_interaction(
    env: Env,  # noqa: F811
    elsewhere: tuple[int, int],
) -> None:
    async with started(env, DEV_GUILD_ID="", CONFIRM_ABOVE_USD="1") as run:
        env.provider.script_next_job(["queued", "generating", "completed"], video=VIDEO)
        interaction = await animate_elsewhere(env, elsewhere)

        def asked() -> bool:
            return any(m.components for m in interaction.responses())

        await env.discord.wait_for(asked, timeout=15)
        [prompt] = [m for m in interaction.responses() if m.components]
        assert prompt.ephemeral and "/show" in prompt.content  # said before anything starts
        [generate] = [
            item["custom_id"]
            for row in prompt.components
            for item in row.get("components", [])
            if item.get("label") == "Generate"
        ]
        await env.discord.invoke_component(prompt.id, generate, user_id=env.user_id)
        await env.discord.wait_for(lambda: "Started" in env.discord.message(prompt.id).content)
        assert f"/show {(await only_job(run, env)).id}" in env.discord.message(prompt.id).content
        status = status_of(interaction)
        assert not status.ephemeral
        await env.discord.wait_for(lambda: len(videos(interaction.followups())) == 1, timeout=20)
        await finished_job(run=run, env=env)
        assert env.discord.requests("POST", r"^/api/v10/channels/") == []
        assert run.error_messages() == []
