"""FakeDiscord: a Discord-compatible server on 127.0.0.1 (REST, gateway and CDN) for tests."""

from __future__ import annotations

import asyncio
import base64
import inspect
import math
import re
import secrets
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from .gateway import GatewayHub
from .models import (
    DEFAULT_BOT_PERMISSIONS,
    DM,
    GROUP_DM,
    MANAGE_GUILD,
    DiscordError,
    FailureRule,
    FakeAttachment,
    FakeChannel,
    FakeInteraction,
    FakeMessage,
    FakeModal,
    ModalField,
    RecordedRequest,
    compute_mentions,
    utcnow,
)
from .openapi import OpenApiSpec, load_spec
from .rest import RestApi, json_response
from .world import CommandRegistry, World

DEFAULT_OPENAPI_SPEC = Path(__file__).resolve().parent / "discord-openapi.json.gz"
"""Discord's OpenAPI document, shipped with the fake (source and version in SPEC.md)."""

DEFAULT_RETRY_AFTER = 0.05

_OPTION_TYPES: dict[int, type | tuple[type, ...]] = {3: str, 4: int, 5: bool, 10: (int, float)}


def _as_id(value: object) -> int:
    """An id from an int, a digit string, a dict with "id" or an object with ``.id``."""
    raw = value.get("id") if isinstance(value, dict) else getattr(value, "id", value)
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise TypeError(f"expected an id, got {value!r}")
    return int(raw)


class FakeDiscord:
    """A fake Discord the real discord.py client connects to (see the package docstring)."""

    def __init__(
        self,
        *,
        ack_deadline: float = 3.0,
        token_lifetime: float = 900.0,
        openapi_spec: Path = DEFAULT_OPENAPI_SPEC,
    ) -> None:
        self.ack_deadline = ack_deadline
        self.token_lifetime = token_lifetime
        self.world = World()
        app_part = base64.b64encode(str(self.world.application_id).encode()).decode().rstrip("=")
        self._bot_token = f"{app_part}.fake.{secrets.token_urlsafe(27)}"
        self.gateway = GatewayHub(self.world, token=self._bot_token, url=lambda: self.gateway_url)
        # Raises SpecUnavailable: a fake that cannot validate must not run at all.
        self.openapi: OpenApiSpec = load_spec(openapi_spec)
        self.openapi_violations: list[str] = []
        """Problems found validating request bodies against the OpenAPI spec."""
        self.internal_errors: list[str] = []
        """Tracebacks of bugs in the fake itself (those requests were answered 400)."""
        self.unhandled_routes: list[str] = []
        """``"METHOD /path"`` of every request no route handled (answered 404)."""
        self.recorded_requests: list[RecordedRequest] = []
        self.recorded_cdn_requests: list[RecordedRequest] = []
        self.interactions_by_id: dict[int, FakeInteraction] = {}
        self.interactions_by_token: dict[str, FakeInteraction] = {}
        self._failures: list[FailureRule] = []
        self._holds: list[list[Any]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watched: list[tuple[asyncio.Task[Any], str]] = []
        self._rest = RestApi(self)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # ----- lifecycle -----

    async def start(self) -> None:
        """Listen on 127.0.0.1 on a free port."""
        if self._runner is not None:
            raise RuntimeError("FakeDiscord already started")
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/api/{version}/{tail:.*}", self._rest.handle)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/cdn/{tail:.*}", self._cdn)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def close(self) -> None:
        """Close gateway sockets and stop the server (idempotent)."""
        await self._settle()
        await self.gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ----- addresses and identity -----

    def _base(self, scheme: str) -> str:
        if self._port is None:
            raise RuntimeError("FakeDiscord is not started (await fake.start() first)")
        return f"{scheme}://127.0.0.1:{self._port}"

    @property
    def rest_base_url(self) -> str:
        """Value for ``discord.http.Route.BASE``."""
        return self._base("http") + "/api/v10"

    @property
    def gateway_url(self) -> str:
        """Value for ``DiscordWebSocket.DEFAULT_GATEWAY`` (also READY's resume_gateway_url)."""
        return self._base("ws") + "/gateway"

    @property
    def cdn_base_url(self) -> str:
        """Where attachments are served."""
        return self._base("http") + "/cdn"

    @property
    def bot_token(self) -> str:
        """The only token accepted (``Authorization: Bot <token>``, IDENTIFY)."""
        return self._bot_token

    @property
    def application_id(self) -> int:
        """The application's id (also the bot user's id)."""
        return self.world.application_id

    @property
    def bot_user_id(self) -> int:
        """The bot user's id."""
        return self.world.bot.id

    @property
    def commands(self) -> CommandRegistry:
        """Registered commands: ``global_commands``, ``guild_commands``, ``sync_count``."""
        return self.world.commands

    # ----- world building -----

    def add_guild(
        self,
        name: str = "Test Guild",
        *,
        filesize_limit: int = 10 * 1024 * 1024,
        shard: tuple[int, int] | None = None,
        bot_member: bool = True,
    ) -> int:
        """A guild with the bot in it; dispatched as GUILD_CREATE if a bot is connected.

        ``shard=(shard_id, shard_count)``: an id that puts the guild on that shard.
        ``bot_member=False``: a server that has not installed the bot; members who installed the
        app to their account use it there (``invoke_command``), the bot gets no events from it
        and every channel route answers 403 Missing Access, while the interaction's webhook
        works as usual."""
        guild = self.world.add_guild(name, filesize_limit, shard)
        if not bot_member:
            guild.bot_member = False
            guild.member_ids.remove(self.world.bot.id)
            return guild.id
        self._schedule(
            self.gateway.dispatch("GUILD_CREATE", self.world.guild_create_payload(guild))
        )
        return guild.id

    def add_text_channel(
        self,
        guild_id: int,
        name: str = "general",
        *,
        bot_permissions: int = DEFAULT_BOT_PERMISSIONS,
    ) -> int:
        """A text channel where the bot has exactly ``bot_permissions``."""
        channel = self.world.add_text_channel(guild_id, name, bot_permissions)
        self._schedule(self.gateway.dispatch("CHANNEL_CREATE", self.world.channel_payload(channel)))
        return channel.id

    def set_bot_permissions(self, channel_id: int, bot_permissions: int) -> None:
        """Change the bot's permissions in a text channel (dispatches CHANNEL_UPDATE)."""
        channel = self._channel(channel_id)
        if channel.is_thread or channel.type == DM:
            raise ValueError("permissions are set on text channels (threads inherit them)")
        channel.bot_permissions = bot_permissions
        self._schedule(self.gateway.dispatch("CHANNEL_UPDATE", self.world.channel_payload(channel)))

    def add_user(self, name: str) -> int:
        """A user; it becomes a member of the guilds it is used in."""
        return self.world.add_user(name).id

    def set_user_locale(self, user_id: int, locale: str) -> None:
        """The language of a user's Discord client (``"de"``, ``"ja"``, ``"pt-BR"``): sent as
        ``locale`` in that user's interactions from now on."""
        self.world.user(user_id).locale = locale

    def set_guild_locale(self, guild_id: int, locale: str) -> None:
        """A server's preferred language: its ``preferred_locale`` (GUILD_UPDATE when the bot
        is in it) and ``guild_locale`` in interactions there from now on."""
        guild = self.world.guild(guild_id)
        guild.preferred_locale = locale
        if guild.bot_member:
            self._schedule(self.gateway.dispatch("GUILD_UPDATE", self.world.guild_payload(guild)))

    def add_guild_member(self, guild_id: int, user_id: int) -> None:
        """Make a user a member of a guild now."""
        self.world.user(user_id)
        self.world.ensure_member(guild_id, user_id)

    def add_thread(self, parent_channel_id: int, name: str) -> int:
        """An existing public thread (type 11) under a text channel, owned by another user."""
        parent = self._channel(parent_channel_id)
        if parent.is_thread or parent.type == DM:
            raise ValueError("threads live under guild text channels")
        thread = self.world.add_thread(parent, name, owner_id=self.world.owner.id)
        self._schedule(self.announce_thread(thread))
        return thread.id

    def add_dm_channel(self, user_id: int) -> int:
        """The DM channel between the bot and a user."""
        return self.world.dm_channel(user_id).id

    def add_group_dm(self, user_ids: list[int], name: str = "friends") -> int:
        """A group DM of these users; the bot is not in it (use ``invoke_command`` there: a
        member's own install, context 2)."""
        return self.world.add_group_dm(user_ids, name).id

    def close_dms(self, user_id: int, closed: bool = True) -> None:
        """The user no longer accepts DMs from the bot: its messages there get 403, code 50007
        ("Cannot send messages to this user"); opening the DM channel still works."""
        self.world.user(user_id).accepts_dms = not closed

    def delete_channel(self, channel_id: int, *, announce: bool = False) -> None:
        """A moderator deletes a channel or thread: from now on it is 404 Unknown Channel.

        By default no gateway event is sent, as for a bot that was offline when it happened: it
        must cope with learning it from a refused post. ``announce=True`` dispatches
        CHANNEL_DELETE (THREAD_DELETE for a thread), as Discord does to a connected bot.
        """
        channel = self._channel(channel_id)
        if announce:
            if channel.is_thread:
                event, payload = (
                    "THREAD_DELETE",
                    {
                        "id": str(channel.id),
                        "guild_id": str(channel.guild_id),
                        "parent_id": str(channel.parent_id),
                        "type": channel.type,
                    },
                )
            else:
                event, payload = "CHANNEL_DELETE", self.world.channel_payload(channel)
            self._schedule(self.gateway.dispatch(event, payload))
        del self.world.channels[channel_id]

    # ----- roles and permissions -----

    def add_role(
        self,
        guild_id: int,
        name: str,
        permissions: int = 0,
        *,
        mentionable: bool = False,
    ) -> int:
        """A new role with these permission bits (dispatched as GUILD_ROLE_CREATE)."""
        role = self.world.add_role(guild_id, name, permissions, mentionable=mentionable)
        payload = {"guild_id": str(guild_id), "role": self.world.role_payload(role)}
        self._schedule(self.gateway.dispatch("GUILD_ROLE_CREATE", payload))
        return role.id

    def give_role(self, guild_id: int, user_id: int, role_id: int) -> None:
        """The user becomes a member holding the role (GUILD_MEMBER_UPDATE, which only bots with
        the privileged Server Members intent receive; interactions always carry the roles)."""
        self.world.user(user_id)
        self.world.give_role(guild_id, user_id, role_id)
        self._schedule(self._announce_member(guild_id, user_id))

    def take_role(self, guild_id: int, user_id: int, role_id: int) -> None:
        """The member loses the role."""
        self.world.take_role(guild_id, user_id, role_id)
        self._schedule(self._announce_member(guild_id, user_id))

    def delete_role(self, guild_id: int, role_id: int) -> None:
        """A moderator deletes a role: members lose it (dispatched as GUILD_ROLE_DELETE)."""
        self.world.delete_role(guild_id, role_id)
        payload = {"guild_id": str(guild_id), "role_id": str(role_id)}
        self._schedule(self.gateway.dispatch("GUILD_ROLE_DELETE", payload))

    def make_admin(
        self, guild_id: int, user_id: int, *, permissions: int = MANAGE_GUILD, name: str = "Admin"
    ) -> int:
        """Give the user a new role with ``permissions`` (Manage Server: a server admin);
        returns the role's id."""
        role_id = self.add_role(guild_id, name, permissions)
        self.give_role(guild_id, user_id, role_id)
        return role_id

    def member_permissions(self, guild_id: int, user_id: int, channel_id: int | None = None) -> int:
        """The member's permissions in the server, or in a channel as interactions carry them."""
        if channel_id is None:
            return self.world.guild_permissions(self.world.guild(guild_id), user_id)
        return self.world.member_permissions(self._channel(channel_id), user_id)

    def set_permission_overwrite(
        self, channel_id: int, target_id: int, *, allow: int = 0, deny: int = 0
    ) -> None:
        """A moderator sets a channel's overwrite for a role, @everyone (the guild's id) or a
        member (allow = deny = 0 removes it); dispatched as CHANNEL_UPDATE. Interactions in the
        channel then carry the member's permissions with it applied, e.g.
        ``set_permission_overwrite(channel, user, allow=MANAGE_MESSAGES)``."""
        channel = self._channel(channel_id)
        self.world.set_overwrite(channel, target_id, allow, deny)
        self._schedule(self.gateway.dispatch("CHANNEL_UPDATE", self.world.channel_payload(channel)))

    async def _announce_member(self, guild_id: int, user_id: int) -> None:
        guild = self.world.guild(guild_id)
        payload = {**self.world.member_payload(guild, user_id), "guild_id": str(guild_id)}
        await self.gateway.dispatch("GUILD_MEMBER_UPDATE", payload)

    def add_attachment(
        self, data: bytes, filename: str, content_type: str | None = None
    ) -> dict[str, Any]:
        """A file a user uploads (served from the CDN); returns its attachment payload."""
        attachment = self.world.store_attachment(
            data,
            filename,
            content_type,
            cdn_base_url=self.cdn_base_url,
            folder=f"ephemeral-attachments/{self.application_id}",
            ephemeral=True,
        )
        return attachment.payload()

    @property
    def cdn_url_lifetime(self) -> float:
        """Seconds an attachment link works after it is handed out (Discord: about a day)."""
        return self.world.cdn_url_lifetime

    @cdn_url_lifetime.setter
    def cdn_url_lifetime(self, seconds: float) -> None:
        self.world.cdn_url_lifetime = seconds

    def expire_cdn_urls(self) -> None:
        """Every attachment link handed out so far stops working (404), as Discord's signed
        links do after a day; fetching the message again gives fresh ones."""
        self.world.cdn_generation += 1

    # ----- acting as a user -----

    async def invoke_command(
        self,
        name: str,
        options: dict[str, object] | None = None,
        *,
        user_id: int,
        guild_id: int | None,
        channel_id: int,
        user_install: bool = False,
    ) -> FakeInteraction:
        """Send a slash-command INTERACTION_CREATE to the connected bot.

        ``name`` may be ``"group sub"`` for subcommands. Attachment options take the dict from
        :meth:`add_attachment` (or its id); user/channel/role options take ids.
        ``user_install``: the member uses the app installed to their own account
        (``authorizing_integration_owners`` names the user); in a guild added with
        ``bot_member=False`` that is always so.
        """
        await self._settle()
        channel = self._interaction_channel(channel_id, guild_id, user_id)
        parts = name.split()
        command = self._find_command(parts[0], guild_id, kind=1)
        in_group_dm = channel.type == GROUP_DM
        if (
            user_install
            or in_group_dm
            or (guild_id is not None and not self.world.guild(guild_id).bot_member)
        ):
            user_install = True
            context = 0 if guild_id is not None else 2 if in_group_dm else 1
            _check_user_installable(command, context=context)
        option_payload, resolved = self._build_options(
            command, parts[1:], dict(options or {}), channel, user_id
        )
        data: dict[str, Any] = {
            "id": command["id"],
            "name": command["name"],
            "type": 1,
            "options": option_payload,
        }
        if resolved:
            data["resolved"] = resolved
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        payload = self._interaction_base(2, channel, user_id, guild_id, user_install=user_install)
        payload["data"] = data
        return await self._send_interaction(payload, name, user_id, guild_id, channel)

    async def invoke_component(
        self,
        message_id: int,
        custom_id: str,
        *,
        user_id: int,
        values: list[str] | None = None,
    ) -> FakeInteraction:
        """Click a button (or choose select ``values``) on a message the bot posted.

        Only what a member could really press: a component with that custom id on the
        message's current version (in action rows, sections or containers), not disabled. The
        message may be any the bot posted, ephemeral or not, by a bot that has restarted since.
        """
        await self._settle()
        message = self.world.messages.get(message_id)
        if message is None or message.deleted:
            raise LookupError(f"no message {message_id}")
        component = _find_component(message.components, custom_id)
        if component is None:
            ids = [c["custom_id"] for c in _walk_components(message.components)
                   if "custom_id" in c]  # fmt: skip
            raise LookupError(f"message {message_id} has no component {custom_id!r} (has {ids})")
        if component.get("disabled"):
            raise ValueError(f"{custom_id!r} is disabled: Discord does not let anyone press it")
        kind = int(component["type"])
        if kind == 2 and values is not None:
            raise ValueError("a button takes no values")
        if kind != 2:
            values = _check_select_values(component, values or [])
        channel = self._channel(message.channel_id)
        self._interaction_channel(channel.id, channel.guild_id, user_id)
        payload = self._interaction_base(3, channel, user_id, channel.guild_id)
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": kind}
        if "id" in component:
            data["id"] = component["id"]
        if values is not None:
            data["values"] = values
        payload["data"] = data
        payload["message"] = self.world.message_payload(message)
        metadata = {"type": 3, "interacted_message_id": str(message.id)}
        return await self._send_interaction(
            payload, custom_id, user_id, channel.guild_id, channel, metadata=metadata
        )

    async def submit_modal(
        self,
        interaction: FakeInteraction,
        values: Mapping[str, str | Sequence[str]] | None = None,
        *,
        user_id: int | None = None,
    ) -> FakeInteraction:
        """The member fills in the modal the bot answered ``interaction`` with and presses
        Submit: a MODAL_SUBMIT interaction (type 5) as Discord sends it.

        ``values`` maps an input's custom id to its text (a list of option values for a string
        select); inputs left out keep their pre-filled value. Discord's client rules apply:
        required inputs must be filled, lengths within min/max. Returns the new interaction,
        whose responses the test reads.
        """
        await self._settle()
        modal = interaction.modal
        if modal is None:
            raise LookupError(
                f"interaction {interaction.name!r} was not answered with a modal "
                f"(response type {interaction.response_type})"
            )
        submitter = interaction.user_id if user_id is None else user_id
        if submitter != interaction.user_id:
            raise ValueError("only the member the modal was shown to can submit it")
        given = dict(values or {})
        unknown = sorted(set(given) - {f.custom_id for f in modal.fields})
        if unknown:
            ids = [f.custom_id for f in modal.fields]
            raise ValueError(f"modal {modal.custom_id!r} has no input(s) {unknown} (has {ids})")
        channel = self._channel(interaction.channel_id)
        payload = self._interaction_base(5, channel, submitter, interaction.guild_id)
        payload["data"] = {
            "custom_id": modal.custom_id,
            "components": _modal_submit_components(modal, given),
        }
        opened_on = interaction.payload.get("message")
        if opened_on is not None:
            # A modal opened from a button carries that message as it is now.
            current = self.world.messages.get(int(opened_on["id"]))
            payload["message"] = (
                self.world.message_payload(current)
                if current is not None and not current.deleted
                else opened_on
            )
        metadata = {"type": 5, "triggering_interaction_id": interaction.id}
        return await self._send_interaction(
            payload, modal.custom_id, submitter, interaction.guild_id, channel, metadata=metadata
        )

    async def invoke_message_command(
        self,
        name: str,
        message_id: int,
        *,
        user_id: int,
        guild_id: int | None = None,
        channel_id: int | None = None,
    ) -> FakeInteraction:
        """Right-click a message → Apps → ``name``: a message context menu command (type 3)
        with ``data.target_id`` and the message in ``data.resolved.messages``. The guild and
        channel default to the message's own (they must match it when given)."""
        await self._settle()
        message = self.world.messages.get(message_id)
        if message is None or message.deleted:
            raise LookupError(f"no message {message_id}")
        if message.ephemeral and self.world.interaction_users.get(
            message.interaction_id or 0
        ) not in (None, user_id):
            raise LookupError(f"user {user_id} cannot see ephemeral message {message_id}")
        if channel_id is not None and channel_id != message.channel_id:
            raise ValueError(f"message {message_id} is in channel {message.channel_id}")
        channel_id = message.channel_id
        if guild_id is None:
            guild_id = message.guild_id
        channel = self._interaction_channel(channel_id, guild_id, user_id)
        command = self._find_command(name, guild_id, kind=3)
        data: dict[str, Any] = {
            "id": command["id"],
            "name": command["name"],
            "type": 3,
            "target_id": str(message.id),
            "resolved": {"messages": {str(message.id): self.world.message_payload(message)}},
        }
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        payload = self._interaction_base(2, channel, user_id, guild_id)
        payload["data"] = data
        metadata = {"type": 2, "target_message_id": str(message.id)}
        return await self._send_interaction(
            payload, name, user_id, guild_id, channel, metadata=metadata
        )

    async def invoke_user_command(
        self,
        name: str,
        target_user_id: int,
        *,
        user_id: int,
        guild_id: int | None,
        channel_id: int,
    ) -> FakeInteraction:
        """Right-click a member → Apps → ``name``: a user context menu command (type 2)."""
        await self._settle()
        channel = self._interaction_channel(channel_id, guild_id, user_id)
        command = self._find_command(name, guild_id, kind=2)
        target = self.world.user(target_user_id)
        resolved: dict[str, Any] = {"users": {str(target.id): self.world.user_payload(target)}}
        if guild_id is not None:
            self.world.ensure_member(guild_id, target.id)
            member = self.world.member_payload(
                self.world.guild(guild_id), target.id, with_user=False
            )
            member["permissions"] = str(self.world.member_permissions(channel, target.id))
            resolved["members"] = {str(target.id): member}
        data: dict[str, Any] = {
            "id": command["id"],
            "name": command["name"],
            "type": 2,
            "target_id": str(target.id),
            "resolved": resolved,
        }
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        payload = self._interaction_base(2, channel, user_id, guild_id)
        payload["data"] = data
        metadata = {"type": 2, "target_user": self.world.user_payload(target)}
        return await self._send_interaction(
            payload, name, user_id, guild_id, channel, metadata=metadata
        )

    async def post_user_message(
        self,
        channel_id: int,
        user_id: int,
        content: str = "",
        *,
        reply_to: int | None = None,
        files: Sequence[tuple[str, bytes]] = (),
    ) -> FakeMessage:
        """A user posts a message, with ``files`` as (filename, bytes) attachments served from
        the CDN (dispatched as MESSAGE_CREATE)."""
        await self._settle()
        channel = self._channel(channel_id)
        if not content and not files:
            raise ValueError("a message needs content or files")
        if channel.guild_id is not None:
            self.world.ensure_member(channel.guild_id, user_id)
        reference = None
        replied = None
        if reply_to is not None:
            target = self.world.message(channel_id, reply_to)
            replied = target.author_id
            reference = {"type": 0, "message_id": str(target.id), "channel_id": str(channel_id)}
        message = FakeMessage(
            id=self.world.snowflakes.next(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author_id=user_id,
            content=content,
            embeds=[],
            attachments=[
                self.world.store_attachment(
                    data,
                    filename,
                    None,
                    cdn_base_url=self.cdn_base_url,
                    folder=f"attachments/{channel.id}",
                )
                for filename, data in files
            ],
            components=[],
            flags=0,
            nonce=None,
            allowed_mentions=None,
            mentions_pinged=compute_mentions(content, None, replied_user_id=replied),
            created_at=utcnow(),
            source="user",
            message_reference=reference,
        )
        self.world.add_message(message)
        await self._rest.announce("MESSAGE_CREATE", message)
        return message

    # ----- observing -----

    def messages(self, channel_id: int, *, include_deleted: bool = False) -> list[FakeMessage]:
        """Everything posted in a channel (ephemeral too), oldest first, edits applied."""
        found = self.world.channel_history(channel_id, include_hidden=True)
        return found if include_deleted else [m for m in found if not m.deleted]

    def message(self, message_id: int) -> FakeMessage:
        """One message by id."""
        try:
            return self.world.messages[message_id]
        except KeyError:
            raise AssertionError(f"the fake has no message {message_id}") from None

    def threads(self) -> list[dict[str, Any]]:
        """All threads, as thread channel payloads."""
        return [self.world.thread_payload(c) for c in self.world.channels.values() if c.is_thread]

    def requests(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Every REST request received, optionally filtered by method and a path regex."""
        return [
            r
            for r in self.recorded_requests
            if (method is None or r.method == method.upper())
            and (path is None or re.search(path, r.path))
        ]

    def cdn_requests(self) -> list[RecordedRequest]:
        """Every CDN download."""
        return list(self.recorded_cdn_requests)

    @property
    def interactions(self) -> list[FakeInteraction]:
        """Interactions sent, oldest first."""
        return list(self.interactions_by_id.values())

    @property
    def identify_payloads(self) -> list[dict[str, Any]]:
        """Every IDENTIFY ``d`` the gateway received."""
        return self.gateway.identifies

    @property
    def requested_intents(self) -> list[int]:
        """The intents of every IDENTIFY, in order."""
        return [int(p.get("intents") or 0) for p in self.gateway.identifies]

    @property
    def allowed_privileged_intents(self) -> int:
        """Privileged intents the application may use (others: close code 4014)."""
        return self.gateway.allowed_privileged_intents

    @allowed_privileged_intents.setter
    def allowed_privileged_intents(self, value: int) -> None:
        self.gateway.allowed_privileged_intents = value

    def watch(self, task: asyncio.Task[Any], what: str = "the bot") -> None:
        """Make :meth:`wait_for` fail at once if ``task`` dies (used by the harness)."""
        self._watched.append((task, what))

    def unwatch(self, task: asyncio.Task[Any]) -> None:
        """Stop watching a task."""
        self._watched = [(t, w) for t, w in self._watched if t is not task]

    def check_watched(self) -> None:
        """Raise if a watched task has finished (with its exception as the cause)."""
        for task, what in self._watched:
            if not task.done():
                continue
            if task.cancelled():
                raise AssertionError(f"{what} task was cancelled")
            exc = task.exception()
            if exc is not None:
                raise AssertionError(f"{what} task died: {exc!r}") from exc
            raise AssertionError(f"{what} task stopped unexpectedly")

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - documented signature: polls with a timeout
        *,
        what: str | None = None,
    ) -> None:
        """Poll ``predicate`` until true; AssertionError with context on timeout or bot death."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            await self._settle()
            self.check_watched()
            if predicate():
                return
            if loop.time() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout:.1f}s waiting for {what or _describe(predicate)}\n"
                    + self.summary()
                )
            await asyncio.sleep(0.01)

    def summary(self, last: int = 15) -> str:
        """Recent requests and problems, for failure messages."""
        lines = ["last requests:"]
        for r in self.recorded_requests[-last:]:
            lines.append(
                f"  {r.method} {r.path} -> {r.status}{' (injected)' if r.injected else ''}"
            )
        if self.internal_errors:
            lines.append(f"fake internal errors: {self.internal_errors}")
        if self.unhandled_routes:
            lines.append(f"unhandled routes: {self.unhandled_routes}")
        if self.openapi_violations:
            lines.append(f"openapi violations: {self.openapi_violations}")
        return "\n".join(lines)

    # ----- fault injection -----

    def fail_next(
        self,
        method: str,
        path_regex: str,
        *,
        status: int,
        count: int = 1,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests with ``status`` instead of handling them.

        ``path_regex`` is searched in the path after ``/api/v10`` (``/channels/1/messages``) or
        in the CDN path (``/cdn/...``). A 429 carries ``Via``, ``retry_after`` (default 0.05 s)
        and X-RateLimit headers, so discord.py waits and retries; discord.py retries 500, 502,
        504 and 524 after 1 + 2n seconds.
        """
        self._failures.append(
            FailureRule(
                method=method.upper(),
                pattern=re.compile(path_regex),
                status=status,
                remaining=count,
                body=json,
                headers=dict(headers or {}),
            )
        )

    def hold_next(self, method: str, path_regex: str, *, seconds: float, count: int = 1) -> None:
        """Handle the next ``count`` matching requests normally, then wait ``seconds`` before
        answering: the work is done on Discord's side but the client has not heard yet (kill the
        bot meanwhile to test "died while uploading")."""
        self._holds.append([method.upper(), re.compile(path_regex), seconds, count])

    def take_hold(self, method: str, path: str) -> float:
        """Seconds to hold this request's answer (0 when no ``hold_next`` rule matches)."""
        for rule in self._holds:
            if rule[0] == method and rule[3] > 0 and rule[1].search(path):
                rule[3] -= 1
                return float(rule[2])
        return 0.0

    def take_failure(self, method: str, path: str) -> web.Response | None:
        """The injected answer for this request, if a ``fail_next`` rule matches."""
        for rule in self._failures:
            if rule.method not in (method, "*") or not rule.pattern.search(path):
                continue
            rule.remaining -= 1
            if rule.remaining <= 0:
                self._failures.remove(rule)
            return _failure_response(rule)
        return None

    def expire_interaction_tokens(self) -> None:
        """Expire every interaction token now (webhook calls get 401, code 50027)."""
        for interaction in self.interactions_by_id.values():
            interaction.expired = True

    def token_expired(self, interaction: FakeInteraction) -> bool:
        """Whether an interaction's token is no longer valid."""
        if interaction.expired:
            return True
        sent = interaction.sent_at
        return sent is not None and time.monotonic() - sent > self.token_lifetime

    async def reconnect_gateway(self) -> None:
        """Send op 7 RECONNECT to connected bots (they close and RESUME)."""
        await self.gateway.send_reconnect()

    # ----- internals used by the REST and gateway halves -----

    def validate_body(self, method: str, template: str, body: Any) -> None:
        """Validate a request body against the spec; record problems."""
        if body is None:
            return
        self.openapi_violations.extend(self.openapi.validate(method, template, body))

    async def announce_thread(self, thread: FakeChannel) -> None:
        """Dispatch THREAD_CREATE (newly_created) for a thread."""
        payload = {**self.world.thread_payload(thread), "newly_created": True}
        await self.gateway.dispatch("THREAD_CREATE", payload)

    def _schedule(self, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()  # no loop, so no bot connected: READY will carry the state
            return
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self) -> None:
        """Let scheduled dispatches go out first."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _channel(self, channel_id: int) -> FakeChannel:
        try:
            return self.world.channel(channel_id)
        except DiscordError:
            raise LookupError(f"the fake has no channel {channel_id}") from None

    def _interaction_channel(
        self, channel_id: int, guild_id: int | None, user_id: int
    ) -> FakeChannel:
        channel = self._channel(channel_id)
        if user_id not in self.world.users:
            raise LookupError(f"the fake has no user {user_id} (use add_user)")
        if guild_id is None:
            in_dm = channel.type == DM and channel.recipient_id == user_id
            in_group = channel.type == GROUP_DM and user_id in channel.recipient_ids
            if not (in_dm or in_group):
                raise ValueError(
                    f"without a guild, channel_id must be the DM channel of user {user_id} "
                    "(use add_dm_channel) or a group DM they are in (add_group_dm)"
                )
        else:
            if channel.guild_id != guild_id:
                raise ValueError(f"channel {channel_id} is not in guild {guild_id}")
            self.world.ensure_member(guild_id, user_id)
        return channel

    def _interaction_base(
        self,
        kind: int,
        channel: FakeChannel,
        user_id: int,
        guild_id: int | None,
        *,
        user_install: bool = False,
    ) -> dict[str, Any]:
        world = self.world
        channel_payload = world.channel_payload(channel)
        channel_payload["permissions"] = str(world.member_permissions(channel, user_id))
        payload: dict[str, Any] = {
            "id": str(world.snowflakes.next()),
            "application_id": str(world.application_id),
            "type": kind,
            "token": "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(96),
            "version": 1,
            "channel_id": str(channel.id),
            "channel": channel_payload,
            "app_permissions": str(world.app_permissions(channel)),
            "locale": world.user(user_id).locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "attachment_size_limit": world.upload_limit(channel),
        }
        if guild_id is not None:
            guild = world.guild(guild_id)
            member = world.member_payload(guild, user_id)
            member["permissions"] = str(world.member_permissions(channel, user_id))
            payload.update(
                guild_id=str(guild_id),
                guild={"id": str(guild_id), "locale": guild.preferred_locale, "features": []},
                guild_locale=guild.preferred_locale,
                member=member,
                authorizing_integration_owners=_integration_owners(
                    guild_id if guild.bot_member else None,
                    user_id if user_install or not guild.bot_member else None,
                ),
                context=0,
            )
        else:
            in_group_dm = channel.type == GROUP_DM
            payload.update(
                user=world.user_payload(world.user(user_id)),
                authorizing_integration_owners=(
                    _integration_owners(None, user_id)
                    if user_install or in_group_dm
                    else {"0": "0"}
                ),
                context=2 if in_group_dm else 1,
            )
        return payload

    def _find_command(self, name: str, guild_id: int | None, *, kind: int) -> dict[str, Any]:
        commands = self.world.commands
        command = commands.find(name, guild_id, kind)
        if command is None:
            label = {1: "/", 2: "user menu ", 3: "message menu "}[kind]

            def names(found: list[dict[str, Any]]) -> list[str]:
                return [c["name"] for c in found if c["type"] == kind]

            raise LookupError(
                f"{label}{name!r} was never synced (global: {names(commands.global_commands)}, "
                f"guild {guild_id}: {names(commands.guild_commands.get(guild_id or 0, []))}); "
                "did the bot call tree.sync()?"
            )
        return command

    async def _send_interaction(
        self,
        payload: dict[str, Any],
        name: str,
        user_id: int,
        guild_id: int | None,
        channel: FakeChannel,
        *,
        metadata: dict[str, Any] | None = None,
    ) -> FakeInteraction:
        await self.gateway.wait_until_live(within=10.0)
        interaction = FakeInteraction(
            id=int(payload["id"]),
            token=payload["token"],
            application_id=self.application_id,
            name=name,
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel.id,
            payload=payload,
            created_at=utcnow(),
            _lookup=self.world.messages.get,
        )
        self.interactions_by_id[interaction.id] = interaction
        self.interactions_by_token[interaction.token] = interaction
        self.world.interaction_users[interaction.id] = user_id
        self.world.interaction_metadata[interaction.id] = metadata or {"type": 2}
        interaction.sent_at = time.monotonic()
        delivered = await self.gateway.dispatch("INTERACTION_CREATE", payload)
        if not delivered:
            raise AssertionError("no connected bot received the interaction")
        return interaction

    def _build_options(
        self,
        command: dict[str, Any],
        path: list[str],
        given: dict[str, object],
        channel: FakeChannel,
        user_id: int,
    ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        definitions: list[dict[str, Any]] = command.get("options") or []
        for sub in path:
            match = next(
                (o for o in definitions if o.get("name") == sub and o.get("type") in (1, 2)), None
            )
            if match is None:
                raise LookupError(f"/{command['name']} has no subcommand {sub!r}")
            definitions = match.get("options") or []
        known = {o["name"]: o for o in definitions}
        resolved: dict[str, dict[str, Any]] = {}
        values: list[dict[str, Any]] = []
        for option_name, value in given.items():
            if option_name not in known:
                raise ValueError(
                    f"/{command['name']} has no option {option_name!r} (has {sorted(known)})"
                )
            kind = int(known[option_name]["type"])
            values.append(
                {
                    "name": option_name,
                    "type": kind,
                    "value": self._option_value(
                        kind, option_name, value, resolved, channel, user_id
                    ),
                }
            )
        missing = [o["name"] for o in definitions if o.get("required") and o["name"] not in given]
        if missing:
            raise ValueError(f"/{command['name']} needs option(s) {missing}")
        for depth in reversed(range(len(path))):
            kind = 2 if depth < len(path) - 1 else 1  # group, then subcommand
            values = [{"name": path[depth], "type": kind, "options": values}]
        return values, resolved

    def _option_value(
        self,
        kind: int,
        name: str,
        value: object,
        resolved: dict[str, dict[str, Any]],
        channel: FakeChannel,
        user_id: int,
    ) -> Any:
        world = self.world
        guild_id = channel.guild_id
        if kind == 11:
            attachment = self._attachment_of(value)
            resolved.setdefault("attachments", {})[str(attachment.id)] = attachment.payload()
            return str(attachment.id)
        if kind == 9 and self._role_payload_of(value, guild_id) is not None:
            kind = 8  # a mentionable option given a role
        if kind in (6, 9):
            user = world.user(_as_id(value))
            resolved.setdefault("users", {})[str(user.id)] = world.user_payload(user)
            if guild_id is not None:
                world.ensure_member(guild_id, user.id)
                member = world.member_payload(world.guild(guild_id), user.id, with_user=False)
                # Discord: the member's permissions in the channel the command was used in.
                member["permissions"] = str(world.member_permissions(channel, user.id))
                resolved.setdefault("members", {})[str(user.id)] = member
            return str(user.id)
        if kind == 7:
            target = self._channel(_as_id(value))
            payload = world.channel_payload(target)
            # Discord: the invoking member's permissions in that channel.
            payload["permissions"] = str(world.member_permissions(target, user_id))
            resolved.setdefault("channels", {})[str(target.id)] = payload
            return str(target.id)
        if kind == 8:
            role = self._role_payload_of(value, guild_id)
            if role is None:
                raise LookupError(f"unknown role {value!r} (use add_role)")
            resolved.setdefault("roles", {})[role["id"]] = role
            return role["id"]
        expected = _OPTION_TYPES.get(kind)
        if expected is not None and (
            not isinstance(value, expected) or (kind in (4, 10) and isinstance(value, bool))
        ):
            raise TypeError(f"option {name!r} (type {kind}) got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            # JSON has no NaN or infinity, so Discord can never send one.
            raise ValueError(f"option {name!r}: Discord cannot send {value!r}")
        return value

    def _role_payload_of(self, value: object, guild_id: int | None) -> dict[str, Any] | None:
        """The role with that id: @everyone (a guild's id) or any guild's role. Another guild's
        role is allowed on purpose: Discord's picker never offers one, but a bot must not trust
        that (tests send one to check the bot refuses it)."""
        try:
            role_id = _as_id(value)
        except (TypeError, ValueError):
            return None
        if role_id in self.world.guilds:
            return self.world.everyone_role_payload(self.world.guilds[role_id])
        role = self.world.find_role(role_id)
        return None if role is None else self.world.role_payload(role)

    def _attachment_of(self, value: object) -> FakeAttachment:
        if isinstance(value, FakeAttachment):
            return value
        try:
            return self.world.attachments[_as_id(value)]
        except (KeyError, TypeError, ValueError):
            raise LookupError(f"unknown attachment {value!r} (use add_attachment)") from None

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        path = "/cdn/" + request.match_info["tail"]
        record = RecordedRequest.arriving(request, path)
        self.recorded_cdn_requests.append(record)
        injected = self.take_failure(request.method, path)
        if injected is not None:
            record.injected = True
            record.status = injected.status
            return injected
        parts = path.rsplit("/", 2)
        attachment = None
        if len(parts) == 3 and parts[1].isdigit():
            attachment = self.world.attachments.get(int(parts[1]))
        if attachment is None or attachment.filename != parts[2]:
            record.status = 404
            return web.Response(status=404, text="Not Found")
        if attachment.removed or not self.world.cdn_link_valid(path, dict(request.query)):
            # Discord's answer to an expired or unsigned link, or a deleted file.
            record.status = 404
            return web.Response(status=404, text="This content is no longer available.")
        record.status = 200
        return web.Response(
            body=attachment.data, content_type=attachment.content_type or "application/octet-stream"
        )


def _check_user_installable(command: dict[str, Any], *, context: int) -> None:
    """Discord offers a command from a member's own install only when the command says so
    (``integration_types`` has 1, ``contexts`` has the place: 0 guild, 1 bot DM, 2 group DM)."""
    if 1 not in (command.get("integration_types") or [0]):
        raise LookupError(f"/{command['name']} is not installable to a user (integration_types)")
    contexts = command.get("contexts")
    if contexts is not None and context not in contexts:
        raise LookupError(f"/{command['name']} is not offered in context {context}")


def _integration_owners(guild_id: int | None, user_id: int | None) -> dict[str, str]:
    """``authorizing_integration_owners`` as Discord sends it: "0" the installing guild, "1"
    the user who installed the app to their account."""
    owners: dict[str, str] = {}
    if guild_id is not None:
        owners["0"] = str(guild_id)
    if user_id is not None:
        owners["1"] = str(user_id)
    return owners


def _walk_components(components: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every component of a message, depth first: action rows' children, sections'
    accessories and containers' contents (components v2)."""
    for component in components:
        if not isinstance(component, dict):
            continue
        yield component
        children = list(component.get("components") or [])
        for key in ("accessory", "component"):
            if isinstance(component.get(key), dict):
                children.append(component[key])
        yield from _walk_components(children)


def _find_component(components: list[dict[str, Any]], custom_id: str) -> dict[str, Any] | None:
    for component in _walk_components(components):
        if component.get("custom_id") == custom_id and component.get("type") in (2, 3, 5, 6, 7, 8):
            return component
    return None


def _check_select_values(component: dict[str, Any], values: list[str]) -> list[str]:
    low = int(component.get("min_values", 1))
    high = int(component.get("max_values", 1))
    if not low <= len(values) <= high:
        raise ValueError(f"choose between {low} and {high} values, got {values}")
    if component["type"] == 3:
        offered = {str(o.get("value")) for o in component.get("options") or []}
        missing = [v for v in values if v not in offered]
        if missing:
            raise ValueError(f"{missing} are not options of {component['custom_id']!r}")
    return values


def _modal_submit_components(
    modal: FakeModal, given: dict[str, str | Sequence[str]]
) -> list[dict[str, Any]]:
    """``data.components`` of a modal submit, in the layout the bot sent: an action row or a
    label around each input, with ``value`` (or ``values``) and Discord's numeric ids."""
    fields = {f.custom_id: f for f in modal.fields}
    next_id = iter(range(1, 1000))
    out: list[dict[str, Any]] = []
    for top in modal.components:
        top_id = top.get("id") or next(next_id)
        if top["type"] == 10:
            out.append({"type": 10, "id": top_id})
            continue
        child = top["components"][0] if top["type"] == 1 else top["component"]
        answer = _field_answer(fields[child["custom_id"]], given.get(child["custom_id"]))
        answer["id"] = child.get("id") or next(next_id)
        if top["type"] == 1:
            out.append({"type": 1, "id": top_id, "components": [answer]})
        else:
            out.append({"type": 18, "id": top_id, "component": answer})
    return out


def _field_answer(field: ModalField, value: str | Sequence[str] | None) -> dict[str, Any]:
    if field.type == 4:
        if value is not None and not isinstance(value, str):
            raise TypeError(f"text input {field.custom_id!r} takes a str, got {value!r}")
        text = value if value is not None else (field.value or "")
        if field.required and not text:
            raise ValueError(f"{field.custom_id!r} is required: Discord will not submit it empty")
        low = field.min_length or 0
        high = field.max_length or 4000
        if text and not low <= len(text) <= high:
            raise ValueError(
                f"{field.custom_id!r} takes {low} to {high} characters, got {len(text)}"
            )
        return {"type": 4, "custom_id": field.custom_id, "value": text}
    if field.type != 3:
        raise NotImplementedError(
            f"the fake submits text inputs and string selects, not type {field.type}"
        )
    chosen = [value] if isinstance(value, str) else list(value or [])
    low = field.min_values if field.required else 0
    if not low <= len(chosen) <= field.max_values:
        raise ValueError(f"{field.custom_id!r}: choose {low} to {field.max_values}, got {chosen}")
    missing = [v for v in chosen if v not in field.options]
    if missing:
        raise ValueError(f"{missing} are not options of {field.custom_id!r}")
    return {"type": 3, "custom_id": field.custom_id, "values": chosen}


def _failure_response(rule: FailureRule) -> web.Response:
    headers = dict(rule.headers)
    if rule.status == 429:
        body = {
            "message": "You are being rate limited.",
            "retry_after": DEFAULT_RETRY_AFTER,
            "global": False,
            "code": 0,
            **(rule.body or {}),
        }
        retry_after = float(body["retry_after"])
        headers = {
            "Via": "1.1 google",
            "Retry-After": str(max(1, round(retry_after))),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}",
            "X-RateLimit-Bucket": "fake-" + secrets.token_hex(8),
            "X-RateLimit-Scope": "shared" if not body.get("global") else "global",
            **headers,
        }
        if body.get("global"):
            headers["X-RateLimit-Global"] = "true"
        return json_response(429, body, headers)
    defaults = {
        403: {"message": "Missing Permissions", "code": 50013},
        404: {"message": "404: Not Found", "code": 0},
        413: {"message": "Request entity too large", "code": 40005},
    }
    body = (
        rule.body
        or defaults.get(rule.status)
        or {"message": f"{rule.status}: injected failure", "code": 0}
    )
    return json_response(rule.status, body, headers)


def _describe(predicate: Callable[[], bool]) -> str:
    try:
        source = inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return getattr(predicate, "__qualname__", repr(predicate))
    return source if len(source) < 300 else source[:300] + "..."


__all__ = ["DEFAULT_OPENAPI_SPEC", "FakeDiscord"]
