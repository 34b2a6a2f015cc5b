"""Acting on results: the persistent buttons under results and status messages, and `/show` —
the real bot against the fake Discord and the fake provider.
"""

from __future__ import annotations

import base64
import io
from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest
from PIL import Image, ImageChops, ImageStat

from bot.discord_bot import AnimateBot
from bot.jobs import Outcome
from bot.video import last_frame_jpeg, probe
from tests.fake_discord import FakeMessage
from tests.test_discord_bot import VIDEO, Env, jpeg, started, thread_for
from tests.test_discord_bot import env as env  # the fixture, shared with the end-to-end tests
from tests.videos import make_test_clip


def buttons(message: FakeMessage) -> dict[str, str]:
    """label → custom_id of the (non-link) buttons on a message."""
    return {
        str(item["label"]): str(item["custom_id"])
        for row in message.components
        for item in row.get("components", [])
        if item.get("type") == 2 and "custom_id" in item
    }


async def first_video(env: Env) -> tuple[FakeMessage, int]:
    """Run /animate once; return the result message and its thread."""
    env.provider.script_next_job(["queued", "completed"], video=VIDEO)
    await env.wait_reply(await env.animate())
    [status] = env.bot_messages(env.channel_id)
    thread_id = thread_for(env, status)
    await env.discord.wait_for(lambda: len(env.videos(thread_id)) == 1, timeout=20)
    await env.discord.wait_for(lambda: "Done" in str(env.discord.message(status.id).embeds))
    return env.videos(thread_id)[0], thread_id


async def press(env: Env, message: FakeMessage, label: str, user_id: int) -> str:
    """Press a button; the private answer the presser finally sees."""
    interaction = await env.discord.invoke_component(
        message.id, buttons(env.discord.message(message.id))[label], user_id=user_id
    )
    return await env.wait_reply(interaction)


def bot_of(env: Env) -> AnimateBot:
    assert env.run is not None
    return cast("AnimateBot", env.run.bot)


async def test_a_result_has_again_edit_extend_and_delete(env: Env) -> None:
    async with started(env) as run:
        env.run = run
        video, _ = await first_video(env)
    assert set(buttons(video)) == {"Again", "Edit prompt", "Extend", "Delete"}


async def test_again_by_another_member_starts_their_own_job_with_the_same_picture(
    env: Env,
) -> None:
    other = env.discord.add_user("bob")
    env.discord.add_guild_member(env.guild_id, other)
    async with started(env) as run:
        env.run = run
        video, _ = await first_video(env)
        reply = await press(env, video, "Again", other)
        assert reply.startswith("Started")
        first, second = sorted(env.provider.jobs.values(), key=lambda job: job.created_at)
        jobs = [await bot_of(env).store.get(i) for i in (1, 2)]
    assert second.body["image_url"] == first.body["image_url"]  # the very same picture
    assert second.body["prompt"] == first.body["prompt"]
    assert jobs[1] is not None and jobs[1].requester_id == other  # the presser pays
    assert jobs[0] is not None and jobs[0].requester_id == env.user_id


async def test_delete_is_refused_to_others_and_done_for_the_requester(env: Env) -> None:
    other = env.discord.add_user("mallory")
    env.discord.add_guild_member(env.guild_id, other)
    async with started(env) as run:
        env.run = run
        video, thread_id = await first_video(env)
        refusal = await press(env, video, "Delete", other)
        assert "Only the member who asked" in refusal
        assert len(env.videos(thread_id)) == 1
        done = await press(env, video, "Delete", env.user_id)
    assert done == "Deleted."
    assert env.videos(thread_id) == []


async def test_buttons_still_work_after_a_restart(env: Env) -> None:
    async with started(env) as run:
        env.run = run
        video, _ = await first_video(env)
    async with started(env) as run:  # a new process, the same database
        env.run = run
        reply = await press(env, video, "Again", env.user_id)
    assert reply.startswith("Started")
    assert len(env.provider.jobs) == 2


async def test_try_again_on_a_failure(env: Env) -> None:
    env.provider.script_next_job(
        ["queued", "error"], error={"name": "GenerationError", "message": "content policy"}
    )
    async with started(env) as run:
        env.run = run
        await env.wait_reply(await env.animate())
        [status] = env.bot_messages(env.channel_id)
        thread_id = thread_for(env, status)
        await env.discord.wait_for(
            lambda: any(buttons(m) for m in env.bot_messages(thread_id)), timeout=20
        )
        [failure] = env.bot_messages(thread_id)
        assert set(buttons(failure)) == {"Try again", "Delete"}
        reply = await press(env, failure, "Try again", env.user_id)
    assert reply.startswith("Started")
    assert len(env.provider.jobs) == 2


async def test_cancel_before_the_provider_has_it_spends_nothing(env: Env) -> None:
    env.provider.fail_next("POST", status=429, count=50)  # the job waits to be sent
    async with started(env, MEMBER_DAILY_USD="5") as run:
        env.run = run
        await env.wait_reply(await env.animate())
        [status] = env.bot_messages(env.channel_id)
        reply = await press(env, status, "Cancel", env.user_id)
        assert "Nothing was spent" in reply
        await env.discord.wait_for(
            lambda: "Cancelled" in str(env.discord.message(status.id).embeds), timeout=10
        )
        assert buttons(env.discord.message(status.id)) == {}  # Cancel is gone
        job = await bot_of(env).store.get(1)

        async def released() -> bool:  # the background pass closes the reservation
            usage = await bot_of(env).spending.usage(
                requester_id=env.user_id,
                guild_id=env.guild_id,
                now=bot_of(env).service.clock.now(),
            )
            return usage.member_today_usd == 0

        await env.until(released)
    assert job is not None and job.outcome == Outcome.CANCELLED
    assert env.provider.jobs == {}


async def test_cancel_after_submit_never_posts_and_says_it_may_be_charged(env: Env) -> None:
    env.provider.script_next_job(["queued", "generating", "completed"], video=VIDEO)
    env.provider.set_completion_time(1.5)
    other = env.discord.add_user("mallory")
    env.discord.add_guild_member(env.guild_id, other)
    async with started(env) as run:
        env.run = run
        await env.wait_reply(await env.animate())
        [status] = env.bot_messages(env.channel_id)
        thread_id = thread_for(env, status)
        assert "Only the member who asked" in await press(env, status, "Cancel", other)
        reply = await press(env, status, "Cancel", env.user_id)
        assert "may still charge" in reply
        await env.discord.wait_for(lambda: env.provider.count("GET") >= 0, timeout=1)
        job = await bot_of(env).store.get(1)
    assert job is not None and job.outcome == Outcome.CANCELLED
    assert env.videos(thread_id) == []


async def test_show_reposts_a_finished_video_with_its_buttons(env: Env) -> None:
    async with started(env) as run:
        env.run = run
        await first_video(env)
        reply = await env.wait_reply(
            await env.discord.invoke_command(
                "show",
                {"job": 1},
                user_id=env.user_id,
                guild_id=env.guild_id,
                channel_id=env.channel_id,
            )
        )
    assert reply == "Shown."
    shown = [m for m in env.videos(env.channel_id)]
    assert len(shown) == 1 and shown[0].attachments[0].data == VIDEO
    assert "Again" in buttons(shown[0])


# --- modals, Extend, the context menu and videos that fit --------------------------------------


def picture_of(data_uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))).convert("RGB")


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB").resize(a.size))
    return sum(ImageStat.Stat(diff).mean) / 3


async def test_edit_prompt_shows_the_old_prompt_and_starts_a_new_job(env: Env) -> None:
    async with started(env) as run:
        env.run = run
        video, _ = await first_video(env)
        click = await env.discord.invoke_component(
            video.id, buttons(video)["Edit prompt"], user_id=env.user_id
        )
        await env.discord.wait_for(lambda: click.modal is not None)
        assert click.modal is not None
        assert click.modal.values["prompt"] == "the waves roll in slowly"
        assert click.modal.values["duration"] == "4"
        submit = await env.discord.submit_modal(
            click, {"prompt": "the waves crash", "duration": "8"}
        )
        assert (await env.wait_reply(submit)).startswith("Started")
    first, second = sorted(env.provider.jobs.values(), key=lambda job: job.created_at)
    assert second.body["prompt"] == "the waves crash" and second.body["duration"] == 8
    assert second.body["image_url"] == first.body["image_url"]


async def test_extend_starts_from_the_last_frame_and_posts_the_joined_chain(
    env: Env, tmp_path: Path
) -> None:
    clip = make_test_clip(tmp_path / "clip.mp4", width=640, height=360, seconds=1.0, fps=12)
    clip_bytes = clip.read_bytes()
    last_frame = Image.open(io.BytesIO(last_frame_jpeg(clip)))
    async with started(env) as run:
        env.run = run
        env.provider.script_next_job(["queued", "completed"], video=clip_bytes)
        await env.wait_reply(await env.animate())
        [status] = env.bot_messages(env.channel_id)
        thread_id = thread_for(env, status)
        await env.discord.wait_for(lambda: len(env.videos(thread_id)) == 1, timeout=20)
        await env.discord.wait_for(lambda: "Done" in str(env.discord.message(status.id).embeds))
        [video] = env.videos(thread_id)
        click = await env.discord.invoke_component(
            video.id, buttons(video)["Extend"], user_id=env.user_id
        )
        await env.discord.wait_for(lambda: click.modal is not None)
        env.provider.script_next_job(["queued", "completed"], video=clip_bytes)
        submit = await env.discord.submit_modal(click, {"prompt": "and then it rains"})
        assert (await env.wait_reply(submit)).startswith("Started")
        [_, extended] = sorted(env.provider.jobs.values(), key=lambda job: job.created_at)
        # The new job's first frame is the clip's last frame (fitted to the preset).
        assert mean_difference(picture_of(extended.body["image_url"]), last_frame) < 12

        def joined() -> bool:
            return any("chain" in m.content for m in env.bot_messages(thread_id))

        await env.discord.wait_for(joined, timeout=30)
        [chain] = [m for m in env.bot_messages(thread_id) if "chain" in m.content]
        path = tmp_path / "joined.mp4"
        path.write_bytes(chain.attachments[0].data)
    assert probe(path).duration_seconds == pytest.approx(2 * probe(clip).duration_seconds, abs=0.3)


async def test_the_context_menu_animates_the_first_picture_of_a_message(env: Env) -> None:
    async with started(env) as run:
        env.run = run
        post = await env.discord.post_user_message(
            env.channel_id,
            env.user_id,
            "two pictures",
            files=[("a.jpg", jpeg(1600, 900)), ("b.jpg", jpeg(1600, 900))],
        )
        menu = await env.discord.invoke_message_command(
            "Animate image", post.id, user_id=env.user_id
        )
        await env.discord.wait_for(lambda: menu.modal is not None)
        submit = await env.discord.submit_modal(menu, {"prompt": "make it move"})
        reply = await env.wait_reply(submit)
        empty = await env.discord.post_user_message(env.channel_id, env.user_id, "no picture")
        refused = await env.wait_reply(
            await env.discord.invoke_message_command("Animate image", empty.id, user_id=env.user_id)
        )
    assert "used the first" in reply and "Started" in reply
    [job] = env.provider.jobs.values()
    assert job.body["prompt"] == "make it move"
    assert "no picture" in refused


async def test_a_video_over_the_upload_limit_is_re_encoded_to_fit(env: Env, tmp_path: Path) -> None:
    clip = make_test_clip(tmp_path / "big.mp4", width=640, height=360, seconds=2.0, fps=24, crf=8)
    small_guild = env.discord.add_guild("Small", filesize_limit=clip.stat().st_size // 2)
    channel = env.discord.add_text_channel(small_guild, "clips")
    env.provider.script_next_job(["queued", "completed"], video=clip.read_bytes())
    async with started(env, DEV_GUILD_ID=""):
        await env.wait_reply(await env.animate(channel_id=channel, guild_id=small_guild))
        [status] = env.bot_messages(channel)
        thread_id = thread_for(env, status)
        await env.discord.wait_for(lambda: len(env.videos(thread_id)) == 1, timeout=60)
    [video] = env.videos(thread_id)
    upload = tmp_path / "upload.mp4"
    upload.write_bytes(video.attachments[0].data)
    fitted, source = probe(upload), probe(clip)
    assert fitted.size_bytes <= clip.stat().st_size // 2
    assert fitted.has_audio
    assert fitted.duration_seconds == pytest.approx(source.duration_seconds, abs=0.1)
    assert "Re-encoded" in str(video.embeds)
    assert env.provider.base_url in str(video.embeds)  # the original is linked


async def test_a_video_that_cannot_fit_is_linked(env: Env, tmp_path: Path) -> None:
    clip = make_test_clip(tmp_path / "big.mp4", width=640, height=360, seconds=8.0, crf=8)
    # Room for the status message's first frame (~180 KB), not for any acceptable encode of 8 s
    # of video (640×360 at 24 fps needs ~340 kbit/s with sound at the quality floor: ~340 KB).
    tiny_guild = env.discord.add_guild("Tiny", filesize_limit=240 * 1024)
    channel = env.discord.add_text_channel(tiny_guild, "clips")
    env.provider.script_next_job(["queued", "completed"], video=clip.read_bytes())
    async with started(env, DEV_GUILD_ID=""):
        await env.wait_reply(await env.animate(channel_id=channel, guild_id=tiny_guild))
        [status] = env.bot_messages(channel)
        thread_id = thread_for(env, status)

        def linked() -> bool:
            return any(env.provider.base_url in str(m.embeds) for m in env.bot_messages(thread_id))

        await env.discord.wait_for(linked, timeout=60)
    assert env.videos(thread_id) == []


async def test_again_on_a_job_whose_picture_expired_says_so(env: Env) -> None:
    async with started(env) as run:
        env.run = run
        video, _ = await first_video(env)
        later = bot_of(env).service.clock.now() + timedelta(days=31)
        assert await bot_of(env).store.forget_images(older_than=later) == 1
        reply = await press(env, video, "Again", env.user_id)
    assert "no longer kept" in reply and "30 days" in reply
    assert len(env.provider.jobs) == 1


# --- end frames ----------------------------------------------------------------------------


async def test_an_end_frame_is_sent_at_the_preset_size_with_the_first(env: Env) -> None:
    async with started(env) as run:
        env.run = run
        end = env.discord.add_attachment(jpeg(900, 1600), "end.jpg", "image/jpeg")
        reply = await env.wait_reply(
            await env.animate(model="bytedance/seedance-2-0", end_image=end, duration=5)
        )
    assert reply.startswith("Started")
    [job] = env.provider.jobs.values()
    first = picture_of(job.body["image_url"])
    last = picture_of(job.body["last_image_url"])
    # Both frames at the 720p preset, in the first picture's orientation (a portrait end frame
    # is fitted to the landscape clip).
    assert first.size == last.size == (1280, 720)


async def test_an_end_frame_on_a_model_without_one_is_refused_by_name(env: Env) -> None:
    async with started(env) as run:
        env.run = run
        end = env.discord.add_attachment(jpeg(1600, 900), "end.jpg", "image/jpeg")
        refused = await env.wait_reply(await env.animate(end_image=end))
        needs = await env.wait_reply(
            await env.animate(model="google/veo-3.1-first-last-image-to-video")
        )
    assert "can't take an end frame" in refused and "Seedance 2.0" in refused
    assert "needs an end frame" in needs
    assert env.provider.requests == []
