"""Languages as members meet them: the real bot against the fake Discord, with members and
servers whose Discord language is not English.

Private replies follow the member's Discord language, what is posted for everyone (the status,
results, their buttons) the server's preferred one (the member's own in DMs), and every job keeps
the languages of whoever started it, however they started it.

The expected words come from the catalogues (`render(_t("<English>"), language)`), and `Said`
also checks that they are really translated: tests using it fail while the catalogues are
empty, on purpose, and pass once translators have filled them.
"""

from __future__ import annotations

from typing import cast

import pytest

from bot.discord_bot import AnimateBot
from bot.i18n import ENGLISH, Message, _t, join, render
from bot.jobs import Job
from tests.fake_discord import FakeInteraction, FakeMessage
from tests.fake_discord.models import MessageVersion
from tests.test_discord_bot import VIDEO, Env, jpeg, started, thread_for
from tests.test_discord_bot import env as env  # the fixture, shared with the end-to-end tests

# Spend control's own settings as in tests/test_spend_control.py: the default model's 4-second
# clip costs $1.20, so a threshold of $1 asks first.
PRICE_DE = "1,20\xa0$"


class Said:
    """What the bot should say in `language`: `said(message)` is its rendering, to compare
    with what was sent; `assert_translated()` (last) checks that it is not English."""

    def __init__(self, language: str) -> None:
        self.language = language
        self.messages: list[Message] = []

    def __call__(self, message: Message) -> str:
        self.messages.append(message)
        return render(message, self.language)

    def assert_translated(self) -> None:
        untranslated = sorted(
            {
                render(message, ENGLISH)
                for message in self.messages
                if render(message, self.language) == render(message, ENGLISH)
            }
        )
        assert not untranslated, f"not translated into {self.language} yet: {untranslated}"


Posted = FakeMessage | MessageVersion
"""A message, or one of its versions before an edit."""


def buttons(message: Posted) -> dict[str, str]:
    """label → custom_id of the (non-link) buttons on a message."""
    return {
        str(item["label"]): str(item["custom_id"])
        for row in message.components
        for item in row.get("components", [])
        if item.get("type") == 2 and "custom_id" in item
    }


def as_first_posted(message: FakeMessage) -> Posted:
    """The message as the bot first posted it (before any edit)."""
    return message.history[0] if message.history else message


def field_names(message: Posted) -> list[str]:
    return [str(field["name"]) for field in message.embeds[0].get("fields", [])]


def title(message: Posted) -> str:
    return str(message.embeds[0]["title"])


def bot_of(env: Env) -> AnimateBot:
    assert env.run is not None
    return cast("AnimateBot", env.run.bot)


async def job(env: Env, job_id: int) -> Job:
    found = await bot_of(env).store.get(job_id)
    assert found is not None
    return found


async def confirm_prompt(env: Env, interaction: FakeInteraction) -> FakeMessage:
    def asked() -> bool:
        return any(buttons(m) for m in interaction.responses())

    await env.discord.wait_for(asked, timeout=15)
    return next(m for m in interaction.responses() if buttons(m))


def result_buttons(said: Said, job_id: int) -> dict[str, str]:
    return {
        said(_t("Again")): f"animate:again:{job_id}",
        said(_t("Edit prompt")): f"animate:edit:{job_id}",
        said(_t("Extend")): f"animate:extend:{job_id}",
        said(_t("Delete")): f"animate:delete:{job_id}",
    }


@pytest.mark.parametrize(
    ("locale", "language", "where"),
    [("de", "de", "a German server"), ("ja", "ja", "a DM")],
)
async def test_a_member_reads_the_bot_in_their_language(
    env: Env, locale: str, language: str, where: str
) -> None:
    env.discord.set_user_locale(env.user_id, locale)
    in_dm = where == "a DM"
    if not in_dm:
        env.discord.set_guild_locale(env.guild_id, locale)
    said = Said(language)
    env.provider.script_next_job(["queued", "completed"], video=VIDEO)
    # DMs only see global commands, as on Discord, so no dev guild there.
    async with started(env, **({"DEV_GUILD_ID": ""} if in_dm else {})) as run:
        env.run = run
        if in_dm:
            channel_id = env.discord.add_dm_channel(env.user_id)
            reply = await env.wait_reply(await env.animate(channel_id=channel_id, guild_id=None))
            [status] = env.bot_messages(channel_id)
            results_in = channel_id
            where_to_look: Message = _t("Your video will be posted in this channel.")
        else:
            reply = await env.wait_reply(await env.animate())
            [status] = env.bot_messages(env.channel_id)
            results_in = thread_for(env, status)
            where_to_look = _t("Follow along in {thread}.", thread=f"<#{results_in}>")
        await env.discord.wait_for(lambda: len(env.videos(results_in)) == 1, timeout=20)
        [video] = env.videos(results_in)
        stored = await job(env, 1)

    assert (stored.member_language, stored.public_language) == (language, language)
    # The private reply.
    assert reply == said(join([_t("Started!"), where_to_look]))
    # The public status, as first posted: title, field names, footer, Cancel.
    posted = as_first_posted(status)
    assert title(posted) == said(join(["⏳", _t("Queued")]))
    names = field_names(posted)
    for name in (_t("Requested by"), _t("Settings")):
        assert said(name) in names
    # Words a translation may rightly leave as they are (German "Status", "Job"): rendered
    # from the catalogue, not required to differ.
    assert render(_t("Status"), language) in names
    assert posted.embeds[0]["footer"]["text"] == render(_t("Job {job}", job=1), language)
    assert buttons(posted) == {said(_t("Cancel")): "animate:cancel:1"}
    # The status once done, and the result with its buttons (the same custom ids as ever).
    assert title(env.discord.message(status.id)) == said(join(["✅", _t("Done")]))
    assert said(_t("your video is ready!")) in video.content
    assert said(_t("Settings")) in field_names(video)
    assert buttons(video) == result_buttons(said, 1)
    said.assert_translated()


async def test_a_french_server_sees_french_while_a_german_member_reads_german(env: Env) -> None:
    env.discord.set_guild_locale(env.guild_id, "fr")
    env.discord.set_user_locale(env.user_id, "de")
    german, french = Said("de"), Said("fr")
    env.provider.script_next_job(["queued", "completed"], video=VIDEO)
    async with started(env) as run:
        env.run = run
        reply = await env.wait_reply(await env.animate())
        [status] = env.bot_messages(env.channel_id)
        thread_id = thread_for(env, status)
        await env.discord.wait_for(lambda: len(env.videos(thread_id)) == 1, timeout=20)
        [video] = env.videos(thread_id)
        stored = await job(env, 1)

    assert (stored.member_language, stored.public_language) == ("de", "fr")
    assert reply == german(
        join([_t("Started!"), _t("Follow along in {thread}.", thread=f"<#{thread_id}>")])
    )
    posted = as_first_posted(status)
    assert title(posted) == french(join(["⏳", _t("Queued")]))
    assert french(_t("Requested by")) in field_names(posted)
    assert buttons(posted) == {french(_t("Cancel")): "animate:cancel:1"}
    assert video.content == french(join([f"<@{env.user_id}>", _t("your video is ready!")]))
    assert buttons(video) == result_buttons(french, 1)
    german.assert_translated()
    french.assert_translated()


async def test_a_job_takes_the_languages_of_whoever_started_it(env: Env) -> None:
    """/animate, Again and Edit prompt (a modal) by members with different languages in a
    French server: each new job has its starter's language for private words and the server's
    for public ones. The buttons keep their custom ids whatever their labels say."""
    env.discord.set_guild_locale(env.guild_id, "fr")
    env.discord.set_user_locale(env.user_id, "de")
    other = env.discord.add_user("kenji")
    env.discord.add_guild_member(env.guild_id, other)
    env.discord.set_user_locale(other, "ja")
    env.provider.script_next_job(["queued", "completed"], video=VIDEO)
    async with started(env) as run:
        env.run = run
        await env.wait_reply(await env.animate())
        [status] = env.bot_messages(env.channel_id)
        thread_id = thread_for(env, status)
        await env.discord.wait_for(lambda: len(env.videos(thread_id)) == 1, timeout=20)
        [video] = env.videos(thread_id)
        ids = sorted(buttons(video).values())
        assert ids == sorted(
            f"animate:{action}:1" for action in ("again", "edit", "extend", "delete")
        )
        again = await env.discord.invoke_component(video.id, "animate:again:1", user_id=other)
        assert (await env.wait_reply(again)).startswith(render(_t("Started!"), "ja"))
        edit = await env.discord.invoke_component(video.id, "animate:edit:1", user_id=other)
        await env.discord.wait_for(lambda: edit.modal is not None)
        assert edit.modal is not None
        assert edit.modal.title == render(_t("Edit prompt"), "ja")
        submit = await env.discord.submit_modal(edit, {"prompt": "the waves crash"})
        await env.wait_reply(submit)
        jobs = [await job(env, job_id) for job_id in (1, 2, 3)]

    assert [(j.requester_id, j.member_language, j.public_language) for j in jobs] == [
        (env.user_id, "de", "fr"),
        (other, "ja", "fr"),
        (other, "ja", "fr"),
    ]


async def test_the_context_menu_job_takes_the_languages_of_the_member_who_used_it(
    env: Env,
) -> None:
    env.discord.set_guild_locale(env.guild_id, "es-ES")
    env.discord.set_user_locale(env.user_id, "pt-BR")
    async with started(env) as run:
        env.run = run
        post = await env.discord.post_user_message(
            env.channel_id, env.user_id, "a picture", files=[("a.jpg", jpeg(1600, 900))]
        )
        menu = await env.discord.invoke_message_command(
            "Animate image", post.id, user_id=env.user_id
        )
        await env.discord.wait_for(lambda: menu.modal is not None)
        assert menu.modal is not None
        assert menu.modal.title == render(_t("Animate image"), "pt_BR")
        await env.wait_reply(await env.discord.submit_modal(menu, {"prompt": "make it move"}))
        stored = await job(env, 1)
    assert (stored.member_language, stored.public_language) == ("pt_BR", "es")


async def test_the_price_in_the_confirmation_follows_the_members_language(env: Env) -> None:
    """A German member in a French server: the private prompt shows the price the German way
    (not "$1.20", nor French "1,20 $US"); Generate starts the job with their languages."""
    env.discord.set_guild_locale(env.guild_id, "fr")
    env.discord.set_user_locale(env.user_id, "de")
    env.provider.script_next_job(["queued", "completed"], video=VIDEO)
    async with started(env, CONFIRM_ABOVE_USD="1") as run:
        env.run = run
        prompt = await confirm_prompt(env, await env.animate())
        assert PRICE_DE in prompt.content
        assert "$1.20" not in prompt.content and "$US" not in prompt.content
        assert set(buttons(prompt)) == {render(_t("Generate"), "de"), render(_t("Cancel"), "de")}
        generate = buttons(prompt)[render(_t("Generate"), "de")]
        await env.discord.invoke_component(prompt.id, generate, user_id=env.user_id)
        started_de = render(_t("Started!"), "de")
        await env.discord.wait_for(lambda: started_de in env.discord.message(prompt.id).content)
        stored = await job(env, 1)
    assert (stored.member_language, stored.public_language) == ("de", "fr")
