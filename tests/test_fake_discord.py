"""The fake Discord against the real discord.py client: login, sync, gateway, interactions,
threads, uploads, permissions, deadlines, rate limits and OpenAPI validation."""

from __future__ import annotations

import asyncio
import io
import struct
import sys
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
import pytest_asyncio
from discord import app_commands
from discord.ext import commands

from tests.fake_discord import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    ATTACH_FILES,
    CREATE_PUBLIC_THREADS,
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_OPENAPI_SPEC,
    MANAGE_GUILD,
    MANAGE_MESSAGES,
    MANAGE_ROLES,
    PRIVILEGED_INTENTS,
    FakeDiscord,
    FakeInteraction,
    SpecUnavailable,
)
from tests.fake_discord.harness import run_bot

pytestmark = pytest.mark.asyncio

REPO = Path(__file__).resolve().parents[1]


def png(width: int, height: int) -> bytes:
    """A tiny valid PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"\x00\x00\x00" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@dataclass
class EchoControl:
    """How the test bot's /echo behaves, and what happened."""

    sleep_before_ack: float = 0.0
    gate: asyncio.Event | None = None
    file_size: int | None = None
    errors: list[BaseException] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    thread_id: int | None = None


def make_bot(control: EchoControl, *, sync: bool = True) -> commands.Bot:
    """A plain commands.Bot with /echo (defer, read, thread, file, edit, followup) and /ping."""
    bot = commands.Bot(
        command_prefix=commands.when_mentioned,
        intents=discord.Intents.default(),
        guild_ready_timeout=0.1,
        help_command=None,
    )

    @bot.tree.command(name="echo", description="Echo text and an attachment")
    @app_commands.describe(text="What to say", attachment="A file to echo")
    async def echo(
        interaction: discord.Interaction, text: str, attachment: discord.Attachment
    ) -> None:
        try:
            if control.sleep_before_ack:
                await asyncio.sleep(control.sleep_before_ack)
            await interaction.response.defer(ephemeral=True, thinking=True)
            data = await attachment.read()
            assert isinstance(interaction.channel, discord.TextChannel)
            status = await interaction.channel.send(
                f"Working on {text} @everyone", allowed_mentions=discord.AllowedMentions.none()
            )
            thread = await status.create_thread(name=f"echo {text}", auto_archive_duration=1440)
            control.thread_id = thread.id
            payload = data if control.file_size is None else b"\0" * control.file_size
            await thread.send(
                f"<@{interaction.user.id}> here is your file @everyone",
                file=discord.File(io.BytesIO(payload), filename="echo.png"),
                allowed_mentions=discord.AllowedMentions(
                    everyone=False, roles=False, users=[interaction.user]
                ),
            )
            await status.edit(content=f"Done: {text}")
            if control.gate is not None:
                await control.gate.wait()
            await interaction.followup.send(f"Posted in {thread.mention}", ephemeral=True)
        except Exception as exc:
            control.errors.append(exc)
        finally:
            control.done.set()

    @bot.tree.command(name="ping", description="Answer at once")
    async def ping(interaction: discord.Interaction) -> None:
        kind = type(interaction.channel).__name__
        await interaction.response.send_message(f"pong {kind}", ephemeral=True)

    class Confirm(discord.ui.View):
        @discord.ui.button(label="OK", custom_id="ok")
        async def ok(
            self, interaction: discord.Interaction, button: discord.ui.Button[Confirm]
        ) -> None:
            await interaction.response.edit_message(content="confirmed", view=None)

    @bot.tree.command(name="menu", description="Offer a button")
    async def menu(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("choose", view=Confirm(timeout=None))

    async def setup_hook() -> None:
        if sync:
            await bot.tree.sync()

    bot.setup_hook = setup_hook  # type: ignore[method-assign]
    return bot


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@dataclass
class World:
    guild_id: int
    channel_id: int
    user_id: int


def build_world(fake: FakeDiscord, *, bot_permissions: int = DEFAULT_BOT_PERMISSIONS) -> World:
    guild_id = fake.add_guild()
    channel_id = fake.add_text_channel(guild_id, bot_permissions=bot_permissions)
    return World(guild_id, channel_id, fake.add_user("alice"))


async def invoke_echo(
    fake: FakeDiscord, world: World, control: EchoControl, text: str = "hi"
) -> FakeInteraction:
    attachment = fake.add_attachment(png(4, 3), "cat.png", "image/png")
    interaction = await fake.invoke_command(
        "echo",
        {"text": text, "attachment": attachment},
        user_id=world.user_id,
        guild_id=world.guild_id,
        channel_id=world.channel_id,
    )
    await asyncio.wait_for(control.done.wait(), timeout=10)
    return interaction


async def test_happy_path_end_to_end(fake: FakeDiscord) -> None:
    world = build_world(fake)
    control = EchoControl()
    bot = make_bot(control)
    async with run_bot(bot, fake) as run:
        # login + sync + gateway
        assert fake.commands.sync_count == 1
        assert [c["name"] for c in fake.commands.global_commands] == ["echo", "ping", "menu"]
        assert fake.requested_intents == [discord.Intents.default().value]
        assert fake.requested_intents[0] & PRIVILEGED_INTENTS == 0
        guild = bot.get_guild(world.guild_id)
        assert guild is not None and guild.me is not None
        channel = bot.get_channel(world.channel_id)
        assert isinstance(channel, discord.TextChannel)
        assert channel.permissions_for(guild.me).value == DEFAULT_BOT_PERMISSIONS

        interaction = await invoke_echo(fake, world, control)
        assert control.errors == []
        assert int(interaction.payload["app_permissions"]) == DEFAULT_BOT_PERMISSIONS

        # the acknowledgement: an ephemeral thinking defer, in time
        assert interaction.response_type == 5 and interaction.deferred_ephemeral
        assert interaction.ack_delay is not None and interaction.ack_delay < fake.ack_deadline
        original = interaction.original_response()
        assert original is not None and original.ephemeral
        assert original.content == f"Posted in <#{control.thread_id}>"
        assert interaction.followups() == []  # the first followup filled the thinking message

        # the status message: @everyone pinged nobody; edited once
        channel_messages = [m for m in fake.messages(world.channel_id) if m.source == "channel"]
        assert len(channel_messages) == 1
        status = channel_messages[0]
        assert status.content == "Done: hi"
        assert [v.content for v in status.history] == ["Working on hi @everyone"]
        assert len(status.edit_timestamps) == 1 and status.edited_at is not None
        assert status.mentions_pinged.nobody
        assert status.allowed_mentions == {"parse": []}

        # the thread: id of the status message, known to discord.py, holding the file
        assert control.thread_id == status.id
        assert [t["id"] for t in fake.threads()] == [str(status.id)]
        assert isinstance(bot.get_channel(status.id), discord.Thread)
        (posted,) = fake.messages(status.id)
        assert posted.attachment("echo.png").data == png(4, 3)
        assert posted.mentions_pinged.users == {world.user_id}
        assert not posted.mentions_pinged.everyone
        assert posted.author_id == fake.bot_user_id

        # wire-level facts
        callback = fake.requests("POST", r"/callback$")[0]
        assert not callback.authorized and callback.query == {"with_response": "1"}
        assert all(r.authorized for r in fake.requests(path=r"^/channels/"))
        upload = fake.requests("POST", rf"^/channels/{status.id}/messages$")[0]
        assert upload.files[0].field_name == "files[0]" and upload.json["content"]
        assert [r.status for r in fake.cdn_requests()] == [200]
        session = fake.gateway.live[-1]
        seqs = [p["s"] for p in session.sent if p["op"] == 0]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert fake.openapi_violations == []
        assert fake.unhandled_routes == []
        assert run.logged_errors == []


async def test_ack_deadline_gives_unknown_interaction(fake: FakeDiscord) -> None:
    fake.ack_deadline = 0.2
    world = build_world(fake)
    control = EchoControl(sleep_before_ack=0.35)
    async with run_bot(make_bot(control), fake):
        interaction = await invoke_echo(fake, world, control)
    (error,) = control.errors
    assert isinstance(error, discord.NotFound) and error.code == 10062
    assert interaction.acknowledged_at is None and interaction.callbacks == [404]


async def test_second_acknowledgement_is_rejected(fake: FakeDiscord) -> None:
    world = build_world(fake)
    async with run_bot(make_bot(EchoControl()), fake):
        interaction = await fake.invoke_command(
            "ping",
            {},
            user_id=world.user_id,
            guild_id=world.guild_id,
            channel_id=world.channel_id,
        )
        await fake.wait_for(lambda: interaction.acknowledged_at is not None, timeout=5)
        async with aiohttp.ClientSession() as session:
            url = f"{fake.rest_base_url}/interactions/{interaction.id}/{interaction.token}/callback"
            async with session.post(url, json={"type": 5}) as response:
                assert response.status == 400
                assert response.headers["Content-Type"] == "application/json"
                assert (await response.json())["code"] == 40060


async def test_expired_token_fails_followup(fake: FakeDiscord) -> None:
    world = build_world(fake)
    control = EchoControl(gate=asyncio.Event())
    async with run_bot(make_bot(control), fake):
        attachment = fake.add_attachment(png(2, 2), "cat.png", "image/png")
        interaction = await fake.invoke_command(
            "echo",
            {"text": "late", "attachment": attachment},
            user_id=world.user_id,
            guild_id=world.guild_id,
            channel_id=world.channel_id,
        )
        await fake.wait_for(
            lambda: control.thread_id is not None and bool(fake.messages(control.thread_id)),
            timeout=5,
        )
        fake.expire_interaction_tokens()
        assert control.gate is not None
        control.gate.set()
        await asyncio.wait_for(control.done.wait(), timeout=5)
    (error,) = control.errors
    assert isinstance(error, discord.HTTPException)
    assert error.status == 401 and error.code == 50027
    original = interaction.original_response()
    assert original is not None and original.loading  # the followup never filled it


async def test_thread_creation_refused_without_permission(fake: FakeDiscord) -> None:
    permissions = DEFAULT_BOT_PERMISSIONS & ~CREATE_PUBLIC_THREADS
    world = build_world(fake, bot_permissions=permissions)
    control = EchoControl()
    bot = make_bot(control)
    async with run_bot(bot, fake):
        guild = bot.get_guild(world.guild_id)
        channel = bot.get_channel(world.channel_id)
        assert guild is not None and isinstance(channel, discord.TextChannel)
        assert channel.permissions_for(guild.me).value == permissions
        interaction = await invoke_echo(fake, world, control)
    assert int(interaction.payload["app_permissions"]) == permissions
    (error,) = control.errors
    assert isinstance(error, discord.Forbidden) and error.code == 50013
    assert fake.threads() == []


async def test_injected_403_on_thread_creation(fake: FakeDiscord) -> None:
    world = build_world(fake)
    control = EchoControl()
    fake.fail_next("POST", r"/messages/\d+/threads$", status=403)
    async with run_bot(make_bot(control), fake):
        await invoke_echo(fake, world, control)
    (error,) = control.errors
    assert isinstance(error, discord.Forbidden) and error.code == 50013


async def test_upload_over_the_guild_limit_is_413(fake: FakeDiscord) -> None:
    guild_id = fake.add_guild("Small", filesize_limit=1000)
    world = World(guild_id, fake.add_text_channel(guild_id), fake.add_user("bob"))
    control = EchoControl(file_size=1001)
    async with run_bot(make_bot(control), fake):
        interaction = await invoke_echo(fake, world, control)
    assert interaction.payload["attachment_size_limit"] == 1000
    (error,) = control.errors
    assert isinstance(error, discord.HTTPException)
    assert error.status == 413 and error.code == 40005


async def test_injected_429_is_retried(fake: FakeDiscord) -> None:
    world = build_world(fake)
    control = EchoControl()
    fake.fail_next("POST", rf"^/channels/{world.channel_id}/messages$", status=429)
    async with run_bot(make_bot(control), fake):
        await invoke_echo(fake, world, control)
    assert control.errors == []
    posts = fake.requests("POST", rf"^/channels/{world.channel_id}/messages$")
    assert [(r.status, r.injected) for r in posts] == [(429, True), (200, False)]
    assert posts[1].received_at - posts[0].received_at >= 0.04
    assert fake.openapi_violations == []


async def test_openapi_violations_are_caught(fake: FakeDiscord) -> None:
    world = build_world(fake)
    bot = make_bot(EchoControl())
    async with run_bot(bot, fake):
        channel = bot.get_channel(world.channel_id)
        assert isinstance(channel, discord.TextChannel)
        view = discord.ui.View()
        view.add_item(discord.ui.Button(label="x" * 81, custom_id="too-long"))
        await channel.send("buttons", view=view)  # discord.py lets an 81-char label through
        assert len(fake.openapi_violations) == 1
        assert "label" in fake.openapi_violations[0]
        assert "POST /channels/{channel_id}/messages" in fake.openapi_violations[0]

    headers = {"Authorization": f"Bot {fake.bot_token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        url = f"{fake.rest_base_url}/channels/{world.channel_id}/messages"
        async with session.post(url, json={"content": "y" * 4001}) as response:
            assert response.status == 400
            assert (await response.json())["code"] == 50035
        async with session.get(f"{fake.rest_base_url}/nope") as response:
            assert response.status == 404
    assert "$.content" in fake.openapi_violations[1]
    assert fake.unhandled_routes == ["GET /nope"]


async def test_the_spec_shipped_in_the_repository_reports_invalid_bodies(
    fake: FakeDiscord,
) -> None:
    # The document is inside the repository, so a fresh clone validates as much as we do here.
    assert REPO in DEFAULT_OPENAPI_SPEC.parents and DEFAULT_OPENAPI_SPEC.is_file()
    world = build_world(fake)
    headers = {"Authorization": f"Bot {fake.bot_token}"}
    url = f"{fake.rest_base_url}/channels/{world.channel_id}/messages"
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(url, json={"content": "fine"}) as response:
            assert response.status == 200
        assert fake.openapi_violations == []
        invalid = {"content": "hi", "tts": "yes", "embeds": [{"title": "t" * 257}]}
        async with session.post(url, json=invalid) as response:
            assert response.status == 200  # Discord-shaped answer; the test sees the violation
    assert sorted(v.split(": ")[1] for v in fake.openapi_violations) == [
        "$.embeds[0].title",
        "$.tts",
    ]


async def test_a_missing_spec_stops_the_fake_instead_of_validating_nothing(
    tmp_path: Path,
) -> None:
    with pytest.raises(SpecUnavailable, match=r"missing-openapi\.json"):
        FakeDiscord(openapi_spec=tmp_path / "missing-openapi.json")


async def test_a_damaged_spec_stops_the_fake(tmp_path: Path) -> None:
    truncated = tmp_path / "openapi.json.gz"
    truncated.write_bytes(DEFAULT_OPENAPI_SPEC.read_bytes()[:4096])
    not_openapi = tmp_path / "openapi.json"
    not_openapi.write_text('{"openapi": "3.1.0"}')
    for path in (truncated, not_openapi):
        with pytest.raises(SpecUnavailable, match=path.name):
            FakeDiscord(openapi_spec=path)


async def test_unsynced_command_is_refused(fake: FakeDiscord) -> None:
    world = build_world(fake)
    async with run_bot(make_bot(EchoControl(), sync=False), fake):
        with pytest.raises(LookupError, match="never synced"):
            await fake.invoke_command(
                "ping",
                {},
                user_id=world.user_id,
                guild_id=world.guild_id,
                channel_id=world.channel_id,
            )


async def test_direct_message_interaction(fake: FakeDiscord) -> None:
    user_id = fake.add_user("carol")
    dm_id = fake.add_dm_channel(user_id)
    async with run_bot(make_bot(EchoControl()), fake):
        interaction = await fake.invoke_command(
            "ping", {}, user_id=user_id, guild_id=None, channel_id=dm_id
        )
        await fake.wait_for(lambda: interaction.original_response() is not None, timeout=5)
    assert "member" not in interaction.payload and interaction.payload["context"] == 1
    assert interaction.payload["channel"]["type"] == 1
    reply = interaction.original_response()
    assert reply is not None and reply.ephemeral and reply.content == "pong DMChannel"
    assert interaction.response_type == 4


async def test_button_click_updates_the_message(fake: FakeDiscord) -> None:
    world = build_world(fake)
    async with run_bot(make_bot(EchoControl()), fake):
        command = await fake.invoke_command(
            "menu", {}, user_id=world.user_id, guild_id=world.guild_id, channel_id=world.channel_id
        )
        await fake.wait_for(lambda: command.original_message_id is not None, timeout=5)
        message = command.original_response()
        assert message is not None and message.components[0]["components"][0]["label"] == "OK"
        click = await fake.invoke_component(message.id, "ok", user_id=world.user_id)
        await fake.wait_for(lambda: message.content == "confirmed", timeout=5)
    assert click.response_type == 7 and click.original_message_id == message.id
    assert [v.content for v in message.history] == ["choose"] and message.components == []
    assert fake.openapi_violations == []


async def test_default_allowed_mentions_ping_everything(fake: FakeDiscord) -> None:
    world = build_world(fake)
    bot = make_bot(EchoControl())
    async with run_bot(bot, fake):
        channel = bot.get_channel(world.channel_id)
        assert isinstance(channel, discord.TextChannel)
        await channel.send(f"@everyone <@{world.user_id}>")
        sent = await channel.send("@everyone", allowed_mentions=discord.AllowedMentions.none())
        history = [m.id async for m in channel.history(limit=10)]
    loud, quiet = fake.messages(world.channel_id)
    assert loud.allowed_mentions is None
    assert loud.mentions_pinged.everyone and loud.mentions_pinged.users == {world.user_id}
    assert quiet.mentions_pinged.nobody
    assert history == [sent.id, loud.id]


async def test_dead_bot_task_is_surfaced(fake: FakeDiscord) -> None:
    world = build_world(fake)
    saved_base = discord.http.Route.BASE
    with pytest.raises(AssertionError, match="died"):
        async with run_bot(make_bot(EchoControl()), fake):
            # A THREAD_CREATE without "id" makes discord.py's parser raise KeyError, which
            # kills the start() task while the socket stays open.
            await fake.gateway.dispatch("THREAD_CREATE", {"guild_id": str(world.guild_id)})
            await fake.wait_for(lambda: False, timeout=5)
    assert saved_base == discord.http.Route.BASE


async def test_reconnect_resume_and_restart(fake: FakeDiscord) -> None:
    world = build_world(fake)
    async with run_bot(make_bot(EchoControl()), fake):
        first_ids = {c["name"]: c["id"] for c in fake.commands.global_commands}
        await fake.reconnect_gateway()
        await fake.wait_for(lambda: len(fake.gateway.resumes) == 1 and bool(fake.gateway.live))
        assert fake.gateway.live[-1].resumed
        interaction = await fake.invoke_command(
            "ping",
            {},
            user_id=world.user_id,
            guild_id=world.guild_id,
            channel_id=world.channel_id,
        )
        await fake.wait_for(lambda: interaction.acknowledged_at is not None, timeout=5)
    # a restarted bot identifies again and re-syncs to the same ids
    restarted = make_bot(EchoControl())
    async with run_bot(restarted, fake):
        assert len(fake.identify_payloads) == 2
        assert fake.commands.sync_count == 2
        assert {c["name"]: c["id"] for c in fake.commands.global_commands} == first_ids
        later = fake.add_guild("Later")  # dispatched as GUILD_CREATE to the connected bot
        await fake.wait_for(lambda: restarted.get_guild(later) is not None, timeout=5)


SUBPROCESS_BOT = """
import sys

import discord
import yarl
from discord.ext import commands

discord.http.Route.BASE = sys.argv[1]
discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(sys.argv[2])
bot = commands.Bot(
    command_prefix="!", intents=discord.Intents.default(), guild_ready_timeout=0.1
)


@bot.tree.command(name="ping", description="Answer at once")
async def ping(interaction: discord.Interaction) -> None:
    await interaction.response.send_message("pong from another process")


async def setup_hook() -> None:
    await bot.tree.sync()


bot.setup_hook = setup_hook
bot.run(sys.argv[3], log_handler=None)
"""


async def test_bot_in_another_process(fake: FakeDiscord) -> None:
    world = build_world(fake)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SUBPROCESS_BOT,
        fake.rest_base_url,
        fake.gateway_url,
        fake.bot_token,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await fake.wait_for(
            lambda: fake.commands.sync_count == 1 and bool(fake.gateway.live), timeout=20
        )
        interaction = await fake.invoke_command(
            "ping",
            {},
            user_id=world.user_id,
            guild_id=world.guild_id,
            channel_id=world.channel_id,
        )
        await fake.wait_for(lambda: interaction.original_response() is not None, timeout=10)
        reply = interaction.original_response()
        assert reply is not None and reply.content == "pong from another process"
        assert [m.id for m in fake.messages(world.channel_id)] == [reply.id]
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.communicate(), timeout=10)
    await fake.wait_for(lambda: not fake.gateway.live, timeout=5)


# ----- roles and member permissions -----


@dataclass
class Seen:
    """What the /inspect command saw, per invocation."""

    answers: list[dict[str, object]] = field(default_factory=list)


def make_role_bot(seen: Seen) -> commands.Bot:
    """A bot whose /inspect reports the member's permissions and roles and the resolved role."""
    bot = commands.Bot(
        command_prefix=commands.when_mentioned,
        intents=discord.Intents.default(),
        guild_ready_timeout=0.1,
        help_command=None,
    )

    @bot.tree.command(name="inspect", description="Report what the interaction carried")
    @app_commands.describe(role="A role", place="A channel", who="A member")
    async def inspect(
        interaction: discord.Interaction,
        role: discord.Role | None = None,
        place: discord.TextChannel | None = None,
        who: discord.Member | None = None,
    ) -> None:
        guild = interaction.guild
        assert guild is not None and isinstance(interaction.user, discord.Member)
        seen.answers.append(
            {
                "permissions": interaction.permissions.value,
                "manage_guild": interaction.permissions.manage_guild,
                "roles": sorted(r.id for r in interaction.user.roles if not r.is_default()),
                "role": None if role is None else (role.id, role.name),
                "role_in_this_guild": role is not None and guild.get_role(role.id) is not None,
                "place": None
                if place is None
                else (place.id, _resolved_permissions(interaction, place.id)),
                "who_roles": None if who is None else sorted(r.id for r in who.roles[1:]),
            }
        )
        await interaction.response.send_message("seen", ephemeral=True)

    async def setup_hook() -> None:
        await bot.tree.sync()

    bot.setup_hook = setup_hook  # type: ignore[method-assign]
    return bot


def _resolved_permissions(interaction: discord.Interaction, channel_id: int) -> int:
    """The invoking member's permissions in a channel option, as Discord resolved them."""
    data: Any = interaction.data
    return int(data["resolved"]["channels"][str(channel_id)]["permissions"])


async def inspect(
    fake: FakeDiscord, world: World, seen: Seen, user_id: int, **options: object
) -> dict[str, object]:
    before = len(seen.answers)
    interaction = await fake.invoke_command(
        "inspect", options, user_id=user_id, guild_id=world.guild_id, channel_id=world.channel_id
    )
    await fake.wait_for(lambda: interaction.original_response() is not None, timeout=5)
    assert len(seen.answers) == before + 1
    return seen.answers[-1]


async def test_roles_and_member_permissions_reach_the_bot(fake: FakeDiscord) -> None:
    world = build_world(fake)
    seen = Seen()
    bot = make_role_bot(seen)
    async with run_bot(bot, fake):
        admin_role = fake.make_admin(world.guild_id, world.user_id)
        artists = fake.add_role(world.guild_id, "artists")
        bob = fake.add_user("bob")
        fake.give_role(world.guild_id, bob, artists)
        guild = bot.get_guild(world.guild_id)
        assert guild is not None
        # GUILD_ROLE_CREATE reached the cache, as on Discord.
        await fake.wait_for(lambda: guild.get_role(artists) is not None, timeout=5)
        assert guild.get_role(admin_role).permissions.manage_guild  # type: ignore[union-attr]

        admin = await inspect(
            fake, world, seen, world.user_id, role=artists, place=world.channel_id
        )
        assert admin["manage_guild"] is True and admin["roles"] == [admin_role]
        assert admin["role"] == (artists, "artists") and admin["role_in_this_guild"] is True
        assert admin["place"] == (world.channel_id, admin["permissions"])
        member = await inspect(fake, world, seen, bob, who=bob)
        assert member["manage_guild"] is False and member["roles"] == [artists]
        assert member["who_roles"] == [artists]
        assert member["permissions"] == fake.member_permissions(
            world.guild_id, bob, world.channel_id
        )
        # The owner and Administrator holders get every permission.
        owner = await inspect(fake, world, seen, guild.owner_id or 0)
        assert owner["permissions"] == ALL_PERMISSIONS
        carol = fake.add_user("carol")
        fake.make_admin(world.guild_id, carol, permissions=ADMINISTRATOR, name="Root")
        assert (await inspect(fake, world, seen, carol))["permissions"] == ALL_PERMISSIONS

        # A role of another server resolves (Discord's picker never offers one; a bot must
        # still check), but is not in this guild.
        other_guild = fake.add_guild("Elsewhere")
        foreign = fake.add_role(other_guild, "strangers")
        answer = await inspect(fake, world, seen, bob, role=foreign)
        assert answer["role"] == (foreign, "strangers") and answer["role_in_this_guild"] is False

        roles = await guild.fetch_roles()
        assert {r.id for r in roles} == {world.guild_id, admin_role, artists} | {
            r.id for r in guild.roles if r.name == "Root"
        }
        fetched = await guild.fetch_member(bob)
        assert [r.id for r in fetched.roles[1:]] == [artists]

        # Deleting a role: members lose it, the bot's cache drops it.
        fake.delete_role(world.guild_id, artists)
        await fake.wait_for(lambda: guild.get_role(artists) is None, timeout=5)
        assert (await inspect(fake, world, seen, bob))["roles"] == []
        # A deleted channel, announced as Discord does to a connected bot, leaves the cache.
        doomed = fake.add_text_channel(world.guild_id, "doomed")
        await fake.wait_for(lambda: bot.get_channel(doomed) is not None, timeout=5)
        fake.delete_channel(doomed, announce=True)
        await fake.wait_for(lambda: bot.get_channel(doomed) is None, timeout=5)
    assert fake.openapi_violations == []
    assert fake.unhandled_routes == []
    assert fake.internal_errors == []


async def test_member_permissions_follow_roles_and_implicit_denies(fake: FakeDiscord) -> None:
    world = build_world(fake)
    user = world.user_id
    assert not fake.member_permissions(world.guild_id, user) & MANAGE_GUILD
    role = fake.add_role(world.guild_id, "mods", MANAGE_GUILD | MANAGE_ROLES)
    fake.give_role(world.guild_id, user, role)
    assert fake.member_permissions(world.guild_id, user) & MANAGE_GUILD
    assert fake.member_permissions(world.guild_id, user, world.channel_id) & MANAGE_ROLES
    fake.take_role(world.guild_id, user, role)
    assert not fake.member_permissions(world.guild_id, user) & MANAGE_GUILD
    fake.give_role(world.guild_id, user, role)
    fake.delete_role(world.guild_id, role)
    assert not fake.member_permissions(world.guild_id, user) & MANAGE_GUILD
    with pytest.raises(Exception, match="Unknown Role"):
        fake.give_role(world.guild_id, user, role)


# ----- persistent buttons, modals, message context menus, CDN links -----


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"job:(?P<action>again|edit|label|extend|delete):(?P<job>\d+)",
):
    """A persistent button whose custom id carries what it needs, as the bot's are."""

    def __init__(self, action: str, job: int) -> None:
        super().__init__(discord.ui.Button(label=action.title(), custom_id=f"job:{action}:{job}"))
        self.action = action
        self.job = job

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: Any,
    ) -> JobButton:
        return cls(str(match["action"]), int(match["job"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        if self.action in ("edit", "label"):
            modal = EditPrompt(self.job, "a cat", labelled=self.action == "label")
            await interaction.response.send_modal(modal)
            return
        manage = interaction.permissions.manage_messages
        await interaction.response.send_message(
            f"{self.action} {self.job} by {interaction.user.id} manage={manage}", ephemeral=True
        )


class EditPrompt(discord.ui.Modal):
    """Edit prompt: a text input pre-filled with the old prompt, and a duration — in action
    rows (the classic layout) or in discord.py's ``ui.Label`` wrappers."""

    def __init__(self, job: int, prompt: str, *, labelled: bool) -> None:
        super().__init__(title="Edit prompt", custom_id=f"edit:{job}")
        self.job = job
        self.duration_choice: discord.ui.Select[discord.ui.View] | None = None
        self.prompt: discord.ui.TextInput[EditPrompt]
        self.duration: discord.ui.TextInput[EditPrompt]
        if labelled:
            self.prompt = discord.ui.TextInput(
                custom_id="prompt", default=prompt, max_length=100, style=discord.TextStyle.long
            )
            self.add_item(discord.ui.Label(text="Prompt", component=self.prompt))
            self.duration_choice = discord.ui.Select(
                custom_id="duration",
                options=[discord.SelectOption(label=f"{s} s", value=str(s)) for s in (4, 8)],
                required=True,
            )
            self.add_item(discord.ui.Label(text="Duration", component=self.duration_choice))
        else:
            self.prompt = discord.ui.TextInput(
                label="Prompt", custom_id="prompt", default=prompt, max_length=100
            )
            self.duration = discord.ui.TextInput(
                label="Duration (s)", custom_id="duration", default="4", required=False
            )
            self.add_item(self.prompt)
            self.add_item(self.duration)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        if self.duration_choice is not None:
            duration = self.duration_choice.values[0]
        else:
            duration = self.duration.value or "default"
        await interaction.response.send_message(
            f"job {self.job} again: {self.prompt.value!r} for {duration} s by {interaction.user.id}"
        )


class AnimateImage(discord.ui.Modal, title="Animate image"):
    """The context menu's modal."""

    prompt: discord.ui.TextInput[AnimateImage] = discord.ui.TextInput(
        label="Prompt", custom_id="prompt"
    )

    def __init__(self, image: bytes, count: int) -> None:
        super().__init__(custom_id="animate-image")
        self.image = image
        self.count = count

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        if self.prompt.value == "another modal":
            try:
                await interaction.response.send_modal(AnimateImage(self.image, self.count))
            except discord.HTTPException as exc:
                await interaction.response.send_message(f"refused: {exc.status} {exc.code}")
            return
        await interaction.response.send_message(
            f"animating {len(self.image)} bytes ({self.count} images): {self.prompt.value}"
        )


@dataclass
class ResultControl:
    """What the result bot posted and saw."""

    message_ids: dict[str, int] = field(default_factory=dict)
    reads: list[bytes | str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


def make_result_bot(control: ResultControl) -> commands.Bot:
    """A bot posting results with persistent buttons, and an "Animate image" context menu."""
    bot = commands.Bot(
        command_prefix=commands.when_mentioned,
        intents=discord.Intents.default(),
        guild_ready_timeout=0.1,
        help_command=None,
    )

    def buttons(*actions: str) -> discord.ui.View:
        view = discord.ui.View(timeout=None)
        for action in actions:
            view.add_item(JobButton(action, 7))
        return view

    @bot.tree.command(name="result", description="Post a result with buttons")
    async def result(interaction: discord.Interaction) -> None:
        try:
            await interaction.response.defer(thinking=True)
            public = await interaction.followup.send(
                "result 7", view=buttons("again", "edit", "label"), wait=True
            )
            private = await interaction.followup.send(
                "only you", view=buttons("delete"), ephemeral=True, wait=True
            )
            later = await interaction.followup.send("clip 7", wait=True)
            await later.edit(view=buttons("extend"))  # buttons added by an edit
            assert isinstance(interaction.channel, discord.TextChannel)
            video = await interaction.channel.send(
                "video", file=discord.File(io.BytesIO(b"\0mp4" * 100), filename="clip.mp4")
            )
            control.message_ids.update(
                public=public.id, private=private.id, later=later.id, video=video.id
            )
        except Exception as exc:
            control.errors.append(exc)
        finally:
            control.done.set()

    @bot.tree.context_menu(name="Animate image")
    async def animate_image(interaction: discord.Interaction, message: discord.Message) -> None:
        images = [a for a in message.attachments if (a.content_type or "").startswith("image/")]
        if not images:
            await interaction.response.send_message("no image there", ephemeral=True)
            return
        data = await images[0].read()
        await interaction.response.send_modal(AnimateImage(data, len(images)))

    async def setup_hook() -> None:
        bot.add_dynamic_items(JobButton)
        await bot.tree.sync()

    bot.setup_hook = setup_hook  # type: ignore[method-assign]
    return bot


async def post_results(fake: FakeDiscord, world: World, control: ResultControl) -> None:
    await fake.invoke_command(
        "result", {}, user_id=world.user_id, guild_id=world.guild_id, channel_id=world.channel_id
    )
    await asyncio.wait_for(control.done.wait(), timeout=10)
    assert control.errors == []


async def reply_of(fake: FakeDiscord, interaction: FakeInteraction) -> str:
    await fake.wait_for(lambda: bool(interaction.responses()), timeout=5)
    return interaction.responses()[0].content


async def test_persistent_buttons_work_after_a_restart(fake: FakeDiscord) -> None:
    world = build_world(fake)
    control = ResultControl()
    async with run_bot(make_result_bot(control), fake):
        await post_results(fake, world, control)
    ids = control.message_ids
    assert fake.message(ids["private"]).ephemeral
    assert [v.components for v in fake.message(ids["later"]).history] == [[]]

    # A new client on the same fake: the buttons are Discord's, not the old process's.
    async with run_bot(make_result_bot(ResultControl()), fake) as run:
        bob = fake.add_user("bob")
        again = await fake.invoke_component(ids["public"], "job:again:7", user_id=bob)
        assert await reply_of(fake, again) == f"again 7 by {bob} manage=False"
        assert again.payload["message"]["id"] == str(ids["public"])
        private = await fake.invoke_component(ids["private"], "job:delete:7", user_id=world.user_id)
        assert await reply_of(fake, private) == f"delete 7 by {world.user_id} manage=False"
        assert private.payload["message"]["flags"] & 64
        extend = await fake.invoke_component(ids["later"], "job:extend:7", user_id=bob)
        assert (await reply_of(fake, extend)).startswith("extend 7")
        # The reply to a button says which message it was pressed on.
        reply = extend.responses()[0]
        metadata = fake.world.message_payload(reply)["interaction_metadata"]
        assert metadata["type"] == 3 and metadata["interacted_message_id"] == str(ids["later"])

        # Only what a member could press.
        with pytest.raises(LookupError, match="job:again:7"):
            await fake.invoke_component(ids["public"], "job:again:8", user_id=bob)
        assert run.logged_errors == []
    assert fake.openapi_violations == [] and fake.internal_errors == []


async def test_a_disabled_button_cannot_be_pressed(fake: FakeDiscord) -> None:
    world = build_world(fake)
    bot = make_bot(EchoControl())
    async with run_bot(bot, fake):
        channel = bot.get_channel(world.channel_id)
        assert isinstance(channel, discord.TextChannel)
        view = discord.ui.View()
        view.add_item(discord.ui.Button(label="Gone", custom_id="gone", disabled=True))
        sent = await channel.send("old", view=view)
        with pytest.raises(ValueError, match="disabled"):
            await fake.invoke_component(sent.id, "gone", user_id=world.user_id)


async def test_edit_prompt_modal_shows_the_old_prompt_and_submits_the_new_one(
    fake: FakeDiscord,
) -> None:
    world = build_world(fake)
    control = ResultControl()
    async with run_bot(make_result_bot(control), fake) as run:
        await post_results(fake, world, control)
        public = control.message_ids["public"]
        press = await fake.invoke_component(public, "job:edit:7", user_id=world.user_id)
        await fake.wait_for(lambda: press.modal is not None, timeout=5)
        modal = press.modal
        assert modal is not None and press.response_type == 9
        assert (modal.title, modal.custom_id) == ("Edit prompt", "edit:7")
        assert modal.values == {"prompt": "a cat", "duration": "4"}
        assert modal.field("prompt").label == "Prompt" and modal.field("prompt").max_length == 100
        assert not modal.field("duration").required
        assert press.responses() == []  # a modal posts nothing

        submit = await fake.submit_modal(press, {"prompt": "a dog", "duration": ""})
        assert (
            await reply_of(fake, submit) == f"job 7 again: 'a dog' for default s by {world.user_id}"
        )
        data = submit.payload["data"]
        assert submit.payload["type"] == 5 and data["custom_id"] == "edit:7"
        assert [row["type"] for row in data["components"]] == [1, 1]
        assert data["components"][0]["components"][0] | {"id": 0} == {
            "type": 4, "id": 0, "custom_id": "prompt", "value": "a dog",
        }  # fmt: skip
        assert submit.payload["message"]["id"] == str(public)  # opened from that message
        metadata = fake.world.message_payload(submit.responses()[0])["interaction_metadata"]
        assert metadata["type"] == 5
        assert metadata["triggering_interaction_metadata"]["interacted_message_id"] == str(public)

        # Pre-filled values are sent when the member changes nothing; Discord's client rules.
        again = await fake.invoke_component(public, "job:edit:7", user_id=world.user_id)
        await fake.wait_for(lambda: again.modal is not None, timeout=5)
        with pytest.raises(ValueError, match="required"):
            await fake.submit_modal(again, {"prompt": ""})
        with pytest.raises(ValueError, match="0 to 100 characters"):
            await fake.submit_modal(again, {"prompt": "x" * 101})
        with pytest.raises(ValueError, match="no input"):
            await fake.submit_modal(again, {"seed": "1"})
        with pytest.raises(ValueError, match="only the member"):
            await fake.submit_modal(again, user_id=fake.add_user("eve"))
        unchanged = await fake.submit_modal(again)
        assert await reply_of(fake, unchanged) == f"job 7 again: 'a cat' for 4 s by {world.user_id}"
        assert run.logged_errors == []
    assert fake.openapi_violations == [] and fake.internal_errors == []


async def test_modal_in_label_components_with_a_select(fake: FakeDiscord) -> None:
    world = build_world(fake)
    control = ResultControl()
    async with run_bot(make_result_bot(control), fake) as run:
        await post_results(fake, world, control)
        press = await fake.invoke_component(
            control.message_ids["public"], "job:label:7", user_id=world.user_id
        )
        await fake.wait_for(lambda: press.modal is not None, timeout=5)
        modal = press.modal
        assert modal is not None
        assert [c["type"] for c in modal.components] == [18, 18]  # discord.py's ui.Label
        prompt, duration = modal.fields
        assert (prompt.label, prompt.value, prompt.wrapped_in_label) == ("Prompt", "a cat", True)
        assert (duration.type, duration.options) == (3, ("4", "8"))
        with pytest.raises(ValueError, match="not options"):
            await fake.submit_modal(press, {"duration": ["12"]})
        submit = await fake.submit_modal(press, {"prompt": "a fox", "duration": ["8"]})
        assert await reply_of(fake, submit) == f"job 7 again: 'a fox' for 8 s by {world.user_id}"
        first, second = submit.payload["data"]["components"]
        assert first["type"] == 18 and first["component"]["value"] == "a fox"
        assert second["component"]["values"] == ["8"] and second["component"]["type"] == 3
        assert run.logged_errors == []
    assert fake.openapi_violations == [] and fake.internal_errors == []


async def test_animate_image_context_menu(fake: FakeDiscord) -> None:
    world = build_world(fake)
    async with run_bot(make_result_bot(ResultControl()), fake) as run:
        menu = [c for c in fake.commands.global_commands if c["type"] == 3]
        assert [c["name"] for c in menu] == ["Animate image"]
        image = png(5, 4)
        post = await fake.post_user_message(
            world.channel_id, world.user_id, "look", files=[("cat.png", image), ("b.png", image)]
        )
        invoked = await fake.invoke_message_command("Animate image", post.id, user_id=world.user_id)
        await fake.wait_for(lambda: invoked.modal is not None, timeout=5)
        data = invoked.payload["data"]
        assert (data["type"], data["target_id"]) == (3, str(post.id))
        resolved = data["resolved"]["messages"][str(post.id)]
        assert resolved["attachments"][0]["content_type"] == "image/png"
        assert resolved["attachments"][0]["width"] == 5
        assert invoked.modal is not None and invoked.modal.title == "Animate image"
        submit = await fake.submit_modal(invoked, {"prompt": "make it move"})
        expected = f"animating {len(image)} bytes (2 images): make it move"
        assert await reply_of(fake, submit) == expected
        assert "message" not in submit.payload  # opened from a command, not a button
        reply = fake.world.message_payload(submit.responses()[0])
        trigger = reply["interaction_metadata"]["triggering_interaction_metadata"]
        assert trigger["target_message_id"] == str(post.id)

        text_only = await fake.post_user_message(world.channel_id, world.user_id, "no pictures")
        none = await fake.invoke_message_command(
            "Animate image", text_only.id, user_id=world.user_id
        )
        assert await reply_of(fake, none) == "no image there"
        with pytest.raises(LookupError, match="never synced"):
            await fake.invoke_message_command("Nope", post.id, user_id=world.user_id)
        assert run.logged_errors == []
    assert fake.openapi_violations == [] and fake.internal_errors == []


async def test_a_modal_cannot_answer_a_modal_submit(fake: FakeDiscord) -> None:
    world = build_world(fake)
    async with run_bot(make_result_bot(ResultControl()), fake):
        post = await fake.post_user_message(
            world.channel_id, world.user_id, files=[("cat.png", png(2, 2))]
        )
        invoked = await fake.invoke_message_command("Animate image", post.id, user_id=world.user_id)
        await fake.wait_for(lambda: invoked.modal is not None, timeout=5)
        submit = await fake.submit_modal(invoked, {"prompt": "another modal"})
        assert await reply_of(fake, submit) == "refused: 400 40043"
    assert submit.modal is None and submit.callbacks == [400, 200]


async def test_fetching_a_message_gives_fresh_cdn_links_and_deleting_removes_it(
    fake: FakeDiscord,
) -> None:
    world = build_world(fake)
    control = ResultControl()
    bot = make_result_bot(control)
    async with run_bot(bot, fake):
        await post_results(fake, world, control)
        channel = bot.get_channel(world.channel_id)
        assert isinstance(channel, discord.TextChannel)
        old = await channel.fetch_message(control.message_ids["video"])
        assert "?ex=" in old.attachments[0].url and "&hm=" in old.attachments[0].url
        assert await old.attachments[0].read() == b"\0mp4" * 100

        fake.expire_cdn_urls()  # a day later: links handed out before stop working
        with pytest.raises(discord.NotFound):
            await old.attachments[0].read()
        fresh = await channel.fetch_message(old.id)
        assert fresh.attachments[0].url != old.attachments[0].url
        assert await fresh.attachments[0].read() == b"\0mp4" * 100

        await fresh.delete()
        assert old.id not in [m.id for m in fake.messages(world.channel_id)]
        assert fake.message(old.id).deleted
        with pytest.raises(discord.NotFound):
            await channel.fetch_message(old.id)
        fake.cdn_url_lifetime = 3600
        with pytest.raises(discord.NotFound):  # a deleted message's file is gone too
            await fresh.attachments[0].read()
    assert [r.status for r in fake.cdn_requests()] == [200, 404, 200, 404]
    assert fake.openapi_violations == [] and fake.internal_errors == []


async def test_manage_messages_per_channel(fake: FakeDiscord) -> None:
    world = build_world(fake)
    other_channel = fake.add_text_channel(world.guild_id, "other")
    control = ResultControl()
    bot = make_result_bot(control)
    async with run_bot(bot, fake):
        await post_results(fake, world, control)
        public = control.message_ids["public"]
        mod, member = fake.add_user("mod"), fake.add_user("member")
        fake.set_permission_overwrite(world.channel_id, mod, allow=MANAGE_MESSAGES)
        assert fake.member_permissions(world.guild_id, mod, world.channel_id) & MANAGE_MESSAGES
        assert not fake.member_permissions(world.guild_id, mod, other_channel) & MANAGE_MESSAGES
        assert not fake.member_permissions(world.guild_id, mod) & MANAGE_MESSAGES
        press = await fake.invoke_component(public, "job:again:7", user_id=mod)
        assert (await reply_of(fake, press)).endswith("manage=True")
        press = await fake.invoke_component(public, "job:again:7", user_id=member)
        assert (await reply_of(fake, press)).endswith("manage=False")

        # A role with Manage Messages server-wide, denied in this channel for that role.
        helpers = fake.add_role(world.guild_id, "helpers", MANAGE_MESSAGES)
        fake.give_role(world.guild_id, member, helpers)
        assert fake.member_permissions(world.guild_id, member, world.channel_id) & MANAGE_MESSAGES
        fake.set_permission_overwrite(world.channel_id, helpers, deny=MANAGE_MESSAGES)
        press = await fake.invoke_component(public, "job:again:7", user_id=member)
        assert (await reply_of(fake, press)).endswith("manage=False")
        # ...and a member overwrite beats the role's.
        fake.set_permission_overwrite(world.channel_id, member, allow=MANAGE_MESSAGES)
        assert fake.member_permissions(world.guild_id, member, world.channel_id) & MANAGE_MESSAGES

        # An @everyone deny does not change the bot's own permissions, here or in its cache.
        fake.set_permission_overwrite(world.channel_id, world.guild_id, deny=ATTACH_FILES)
        guild = bot.get_guild(world.guild_id)
        channel = bot.get_channel(world.channel_id)
        assert guild is not None and isinstance(channel, discord.TextChannel)
        await fake.wait_for(lambda: len(channel.overwrites) == 5, timeout=5)
        assert channel.permissions_for(guild.me).value == DEFAULT_BOT_PERMISSIONS
        assert not fake.member_permissions(world.guild_id, fake.add_user("x"), world.channel_id) & (
            ATTACH_FILES
        )
        # The owner keeps everything.
        assert fake.member_permissions(world.guild_id, guild.owner_id or 0, world.channel_id) == (
            ALL_PERMISSIONS
        )
    assert fake.openapi_violations == [] and fake.internal_errors == []
