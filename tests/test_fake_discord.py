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
    CREATE_PUBLIC_THREADS,
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_OPENAPI_SPEC,
    MANAGE_GUILD,
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
