"""The fake's state (users, guilds, channels, messages, commands) and Discord-shaped payloads."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from .media import guess_content_type, image_size
from .models import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    ATTACH_FILES,
    DEFAULT_BOT_PERMISSIONS,
    DM,
    DM_UPLOAD_LIMIT,
    EMBED_LINKS,
    FLAG_HAS_THREAD,
    GROUP_DM,
    GUILD_TEXT,
    MEMBER_PERMISSIONS,
    PUBLIC_THREAD,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    VIEW_CHANNEL,
    DiscordError,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeMessage,
    FakeRole,
    FakeUser,
    SnowflakeFactory,
    implicit_permissions,
    iso,
    snowflake_time,
    utcnow,
)

DM_PERMISSIONS = VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES | READ_MESSAGE_HISTORY


class CommandRegistry:
    """Application commands registered by the bot (global and per guild), with stable ids."""

    def __init__(self, snowflakes: SnowflakeFactory, application_id: int) -> None:
        self._snowflakes = snowflakes
        self._application_id = application_id
        self._ids: dict[tuple[int | None, int, str], int] = {}
        self._global: dict[int, dict[str, Any]] = {}
        self._guild: dict[int, dict[int, dict[str, Any]]] = {}
        self.syncs: list[int | None] = []
        """One entry per bulk-overwrite PUT: the guild id, or None for global."""

    @property
    def sync_count(self) -> int:
        """How many bulk-overwrite PUTs the bot made."""
        return len(self.syncs)

    @property
    def global_commands(self) -> list[dict[str, Any]]:
        """The registered global commands."""
        return list(self._global.values())

    @property
    def guild_commands(self) -> dict[int, list[dict[str, Any]]]:
        """The registered guild commands, per guild id."""
        return {gid: list(cmds.values()) for gid, cmds in self._guild.items()}

    def _scope(self, guild_id: int | None) -> dict[int, dict[str, Any]]:
        if guild_id is None:
            return self._global
        return self._guild.setdefault(guild_id, {})

    def _build(self, guild_id: int | None, body: dict[str, Any]) -> dict[str, Any]:
        kind = int(body.get("type") or 1)
        key = (guild_id, kind, str(body.get("name")))
        command_id = self._ids.setdefault(key, self._snowflakes.next())
        command: dict[str, Any] = {
            "id": str(command_id),
            "application_id": str(self._application_id),
            "version": str(self._snowflakes.next()),
            "type": kind,
            "name": body.get("name"),
            "description": body.get("description") or "",
            "options": body.get("options") or [],
            # Sent as an integer, answered as a string (as Discord does).
            "default_member_permissions": _permission_string(
                body.get("default_member_permissions")
            ),
            "nsfw": bool(body.get("nsfw", False)),
            "name_localizations": body.get("name_localizations"),
            "description_localizations": body.get("description_localizations"),
            "contexts": body.get("contexts"),
            "integration_types": body.get("integration_types") or [0],
        }
        if guild_id is None:
            command["dm_permission"] = body.get("dm_permission", True)
        else:
            command["guild_id"] = str(guild_id)
        return command

    def overwrite(self, guild_id: int | None, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Bulk overwrite (PUT): the scope holds exactly these commands afterwards."""
        self.syncs.append(guild_id)
        commands = [self._build(guild_id, body) for body in bodies]
        scope = self._scope(guild_id)
        scope.clear()
        scope.update({int(c["id"]): c for c in commands})
        return commands

    def upsert(self, guild_id: int | None, body: dict[str, Any]) -> dict[str, Any]:
        """Create or replace one command (POST)."""
        command = self._build(guild_id, body)
        self._scope(guild_id)[int(command["id"])] = command
        return command

    def get(self, guild_id: int | None, command_id: int) -> dict[str, Any]:
        """One command, or 404 Unknown application command."""
        try:
            return self._scope(guild_id)[command_id]
        except KeyError:
            raise DiscordError(404, 10063, "Unknown application command") from None

    def edit(self, guild_id: int | None, command_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """Edit one command (PATCH)."""
        merged = {**self.get(guild_id, command_id), **body}
        command = self._build(guild_id, merged)
        scope = self._scope(guild_id)
        del scope[command_id]
        scope[int(command["id"])] = command
        return command

    def delete(self, guild_id: int | None, command_id: int) -> None:
        """Delete one command."""
        self.get(guild_id, command_id)
        del self._scope(guild_id)[command_id]

    def in_scope(self, guild_id: int | None) -> list[dict[str, Any]]:
        """The commands of one scope."""
        return list(self._scope(guild_id).values())

    def find(self, name: str, guild_id: int | None, kind: int = 1) -> dict[str, Any] | None:
        """A command of that type (1 slash, 2 user menu, 3 message menu) by name: the guild's
        own first, then global."""
        scopes: list[dict[int, dict[str, Any]]] = []
        if guild_id is not None and guild_id in self._guild:
            scopes.append(self._guild[guild_id])
        scopes.append(self._global)
        for scope in scopes:
            for command in scope.values():
                if command["name"] == name and command["type"] == kind:
                    return command
        return None


class World:
    """Everything the fake knows, and the payloads discord.py expects for it."""

    def __init__(self) -> None:
        self.snowflakes = SnowflakeFactory()
        self.application_id = self.snowflakes.next()
        self.bot = FakeUser(id=self.application_id, username="FakeBot", bot=True)
        self.owner = FakeUser(id=self.snowflakes.next(), username="owner")
        self.users: dict[int, FakeUser] = {self.bot.id: self.bot, self.owner.id: self.owner}
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.messages: dict[int, FakeMessage] = {}
        self.channel_messages: dict[int, list[int]] = {}
        self.attachments: dict[int, FakeAttachment] = {}
        self.commands = CommandRegistry(self.snowflakes, self.application_id)
        self.verify_key = secrets.token_hex(32)
        self.interaction_users: dict[int, int] = {}
        """Interaction id -> invoking user id (for interaction_metadata on its messages)."""
        self.interaction_metadata: dict[int, dict[str, Any]] = {}
        """Interaction id -> the type-specific part of interaction_metadata (type, target...)."""
        self.cdn_url_lifetime = 24 * 3600.0
        """Seconds a signed attachment link works (Discord: about a day)."""
        self.cdn_generation = 0
        """Bumped by ``expire_cdn_urls``: every link signed before stops working."""
        self._cdn_secret = secrets.token_bytes(32)

    # ----- lookups -----

    def user(self, user_id: int) -> FakeUser:
        """A user or 404 Unknown User."""
        try:
            return self.users[user_id]
        except KeyError:
            raise DiscordError(404, 10013, "Unknown User") from None

    def guild(self, guild_id: int) -> FakeGuild:
        """A guild or 404 Unknown Guild."""
        try:
            return self.guilds[guild_id]
        except KeyError:
            raise DiscordError(404, 10004, "Unknown Guild") from None

    def channel(self, channel_id: int) -> FakeChannel:
        """A channel or 404 Unknown Channel."""
        try:
            return self.channels[channel_id]
        except KeyError:
            raise DiscordError(404, 10003, "Unknown Channel") from None

    def message(self, channel_id: int, message_id: int) -> FakeMessage:
        """A live message of that channel or 404 Unknown Message."""
        message = self.messages.get(message_id)
        if message is None or message.deleted or message.channel_id != channel_id:
            raise DiscordError(404, 10008, "Unknown Message")
        return message

    def text_channel_of(self, channel: FakeChannel) -> FakeChannel:
        """The channel whose permissions apply (a thread's parent)."""
        if channel.is_thread and channel.parent_id is not None:
            return self.channel(channel.parent_id)
        return channel

    # ----- permissions and limits -----

    def bot_raw_permissions(self, channel: FakeChannel) -> int:
        """The bot's permission bits configured for the channel (threads: the parent's)."""
        if channel.type == DM:
            return DM_PERMISSIONS
        if not self.bot_in_guild(channel.guild_id):
            return 0
        return self.text_channel_of(channel).bot_permissions

    def app_permissions(self, channel: FakeChannel) -> int:
        """The bot's computed permissions there, as discord.py's ``permissions_for`` gets them."""
        if channel.type == DM:
            return DM_PERMISSIONS
        return implicit_permissions(self.bot_raw_permissions(channel), thread=channel.is_thread)

    def guild_permissions(self, guild: FakeGuild, user_id: int) -> int:
        """A member's server-wide permissions: @everyone's, plus every role's they hold; the
        owner and holders of Administrator get every permission."""
        if user_id == guild.owner_id:
            return ALL_PERMISSIONS
        total = MEMBER_PERMISSIONS
        for role_id in guild.member_roles.get(user_id, []):
            role = guild.roles.get(role_id)
            if role is not None:
                total |= role.permissions
        return ALL_PERMISSIONS if total & ADMINISTRATOR else total

    def member_permissions(self, channel: FakeChannel, user_id: int | None = None) -> int:
        """A member's computed permissions in the channel, as interactions carry them
        (``user_id`` None: an ordinary member with no roles): server permissions, then the
        channel's overwrites in Discord's order (@everyone, the member's roles together, the
        member), then the implicit denies. Administrator (or owning the server) overrides all of
        it; threads use their parent's overwrites."""
        if channel.type == DM:
            return DM_PERMISSIONS
        if channel.guild_id is None:
            return implicit_permissions(MEMBER_PERMISSIONS, thread=channel.is_thread)
        guild = self.guild(channel.guild_id)
        raw = MEMBER_PERMISSIONS if user_id is None else self.guild_permissions(guild, user_id)
        if raw == ALL_PERMISSIONS:
            return raw
        overwrites = self.text_channel_of(channel).overwrites
        allow, deny = overwrites.get(guild.id, (0, 0))
        raw = (raw & ~deny) | allow
        roles_allow = roles_deny = 0
        for role_id in guild.member_roles.get(user_id, []) if user_id is not None else []:
            role_allow, role_deny = overwrites.get(role_id, (0, 0))
            roles_allow |= role_allow
            roles_deny |= role_deny
        raw = (raw & ~roles_deny) | roles_allow
        if user_id is not None:
            allow, deny = overwrites.get(user_id, (0, 0))
            raw = (raw & ~deny) | allow
        return implicit_permissions(raw, thread=channel.is_thread)

    def set_overwrite(self, channel: FakeChannel, target_id: int, allow: int, deny: int) -> None:
        """Set (or with allow = deny = 0, remove) a channel overwrite for a role, @everyone
        (the guild's id) or a member."""
        if channel.guild_id is None or channel.is_thread:
            raise ValueError("overwrites are set on guild text channels (threads inherit them)")
        if target_id == self.bot.id:
            raise ValueError("the bot's permissions are set with set_bot_permissions")
        guild = self.guild(channel.guild_id)
        if target_id != guild.id and target_id not in guild.roles:
            self.user(target_id)
            self.ensure_member(guild.id, target_id)
        if allow & deny:
            raise ValueError("a permission cannot be both allowed and denied")
        if allow or deny:
            channel.overwrites[target_id] = (allow, deny)
        else:
            channel.overwrites.pop(target_id, None)

    # ----- CDN links -----

    def _cdn_signature(self, path: str, expires: int, issued: int) -> str:
        message = f"{path}|{expires:x}|{issued:x}|{self.cdn_generation}".encode()
        return hmac.new(self._cdn_secret, message, hashlib.sha256).hexdigest()

    def sign_cdn_url(self, url: str) -> str:
        """``url`` with Discord's ``ex`` (expiry), ``is`` (issued) and ``hm`` (signature)."""
        issued = int(time.time())
        expires = issued + max(1, int(self.cdn_url_lifetime))
        signature = self._cdn_signature(urlsplit(url).path, expires, issued)
        return f"{url}?ex={expires:x}&is={issued:x}&hm={signature}&"

    def cdn_link_valid(self, path: str, query: dict[str, str]) -> bool:
        """Whether a CDN request carries a signature of ours that has not expired."""
        try:
            expires, issued = int(query["ex"], 16), int(query["is"], 16)
        except (KeyError, ValueError):
            return False
        expected = self._cdn_signature(path, expires, issued)
        return hmac.compare_digest(expected, query.get("hm", "")) and time.time() < expires

    def upload_limit(self, channel: FakeChannel) -> int:
        """Maximum total upload size for a message there."""
        if channel.guild_id is None:
            return DM_UPLOAD_LIMIT
        return self.guild(channel.guild_id).filesize_limit

    # ----- building -----

    def add_user(self, name: str) -> FakeUser:
        """Register a user."""
        user = FakeUser(id=self.snowflakes.next(), username=name)
        self.users[user.id] = user
        return user

    def bot_in_guild(self, guild_id: int | None) -> bool:
        """Whether the bot is a member of the guild (None, a DM: yes)."""
        if guild_id is None:
            return True
        guild = self.guilds.get(guild_id)
        return guild is not None and guild.bot_member

    def bot_in_channel(self, event_data: dict[str, Any]) -> bool:
        """Whether an event's channel (if it names one) is one the bot is in: not a group DM."""
        raw = event_data.get("channel_id")
        channel = self.channels.get(int(raw)) if raw is not None else None
        return channel is None or channel.type != GROUP_DM

    def ensure_member(self, guild_id: int, user_id: int) -> None:
        """Make the user a guild member."""
        guild = self.guild(guild_id)
        if user_id not in guild.member_ids:
            guild.member_ids.append(user_id)

    def add_guild(
        self, name: str, filesize_limit: int, shard: tuple[int, int] | None = None
    ) -> FakeGuild:
        """Create a guild the bot is a member of (the owner is a separate user); with
        ``shard=(shard_id, shard_count)`` its id puts it on that shard."""
        guild = FakeGuild(
            id=self.snowflakes.next() if shard is None else self.snowflakes.next_on_shard(*shard),
            name=name,
            owner_id=self.owner.id,
            filesize_limit=filesize_limit,
            joined_at=utcnow(),
            member_ids=[self.bot.id, self.owner.id],
        )
        self.guilds[guild.id] = guild
        return guild

    def add_role(
        self, guild_id: int, name: str, permissions: int, *, mentionable: bool = False
    ) -> FakeRole:
        """Create a role above the guild's existing ones."""
        guild = self.guild(guild_id)
        role = FakeRole(
            id=self.snowflakes.next(),
            guild_id=guild_id,
            name=name,
            permissions=permissions,
            position=1 + max((r.position for r in guild.roles.values()), default=0),
            mentionable=mentionable,
        )
        guild.roles[role.id] = role
        return role

    def role(self, guild_id: int, role_id: int) -> FakeRole:
        """A guild's role or 404 Unknown Role."""
        role = self.guild(guild_id).roles.get(role_id)
        if role is None:
            raise DiscordError(404, 10011, "Unknown Role")
        return role

    def find_role(self, role_id: int) -> FakeRole | None:
        """A role of any guild."""
        for guild in self.guilds.values():
            if role_id in guild.roles:
                return guild.roles[role_id]
        return None

    def give_role(self, guild_id: int, user_id: int, role_id: int) -> None:
        """Make the user a member holding the role (idempotent)."""
        self.role(guild_id, role_id)
        self.ensure_member(guild_id, user_id)
        held = self.guild(guild_id).member_roles.setdefault(user_id, [])
        if role_id not in held:
            held.append(role_id)

    def take_role(self, guild_id: int, user_id: int, role_id: int) -> None:
        """Remove a role from a member (no-op if they do not hold it)."""
        held = self.guild(guild_id).member_roles.get(user_id, [])
        if role_id in held:
            held.remove(role_id)

    def delete_role(self, guild_id: int, role_id: int) -> FakeRole:
        """Delete a role: every member loses it."""
        guild = self.guild(guild_id)
        role = self.role(guild_id, role_id)
        del guild.roles[role_id]
        for held in guild.member_roles.values():
            if role_id in held:
                held.remove(role_id)
        for channel in self.channels.values():
            channel.overwrites.pop(role_id, None)
        return role

    def add_text_channel(self, guild_id: int, name: str, bot_permissions: int) -> FakeChannel:
        """Create a text channel."""
        self.guild(guild_id)
        position = sum(
            1 for c in self.channels.values() if c.guild_id == guild_id and c.type == GUILD_TEXT
        )
        channel = FakeChannel(
            id=self.snowflakes.next(),
            type=GUILD_TEXT,
            name=name,
            guild_id=guild_id,
            bot_permissions=bot_permissions,
            position=position,
        )
        self.channels[channel.id] = channel
        return channel

    def add_thread(
        self,
        parent: FakeChannel,
        name: str,
        *,
        owner_id: int,
        thread_id: int | None = None,
        kind: int = PUBLIC_THREAD,
        auto_archive_duration: int = 1440,
    ) -> FakeChannel:
        """Create a thread under a text channel."""
        thread = FakeChannel(
            id=thread_id if thread_id is not None else self.snowflakes.next(),
            type=kind,
            name=name,
            guild_id=parent.guild_id,
            parent_id=parent.id,
            owner_id=owner_id,
            bot_permissions=DEFAULT_BOT_PERMISSIONS,
            auto_archive_duration=auto_archive_duration,
        )
        self.channels[thread.id] = thread
        return thread

    def dm_channel(self, user_id: int) -> FakeChannel:
        """The DM channel between the bot and a user (created on first use)."""
        self.user(user_id)
        for channel in self.channels.values():
            if channel.type == DM and channel.recipient_id == user_id:
                return channel
        channel = FakeChannel(
            id=self.snowflakes.next(),
            type=DM,
            name="",
            recipient_id=user_id,
            bot_permissions=DM_PERMISSIONS,
        )
        self.channels[channel.id] = channel
        return channel

    def add_group_dm(self, user_ids: list[int], name: str) -> FakeChannel:
        """A group DM of users, without the bot (it has no access; only user installs work)."""
        for user_id in user_ids:
            self.user(user_id)
        channel = FakeChannel(
            id=self.snowflakes.next(),
            type=GROUP_DM,
            name=name,
            owner_id=user_ids[0],
            recipient_ids=list(user_ids),
            bot_permissions=0,
        )
        self.channels[channel.id] = channel
        return channel

    def store_attachment(
        self,
        data: bytes,
        filename: str,
        content_type: str | None,
        *,
        cdn_base_url: str,
        folder: str,
        description: str | None = None,
        ephemeral: bool = False,
    ) -> FakeAttachment:
        """Store bytes to serve from the CDN at ``{cdn}/{folder}/{id}/{filename}``."""
        attachment_id = self.snowflakes.next()
        size = image_size(data)
        attachment = FakeAttachment(
            id=attachment_id,
            filename=filename,
            data=data,
            content_type=content_type or guess_content_type(filename, data),
            url=f"{cdn_base_url}/{folder}/{attachment_id}/{filename}",
            description=description,
            width=size[0] if size else None,
            height=size[1] if size else None,
            ephemeral=ephemeral,
            sign=self.sign_cdn_url,
        )
        self.attachments[attachment_id] = attachment
        return attachment

    def add_message(self, message: FakeMessage) -> None:
        """Store a new message at the end of its channel."""
        self.messages[message.id] = message
        self.channel_messages.setdefault(message.channel_id, []).append(message.id)
        channel = self.channels.get(message.channel_id)
        if channel is not None and channel.is_thread:
            channel.message_count += 1

    def channel_history(self, channel_id: int, *, include_hidden: bool) -> list[FakeMessage]:
        """A channel's messages, oldest first (hidden: deleted and ephemeral ones)."""
        found = (self.messages[mid] for mid in self.channel_messages.get(channel_id, []))
        if include_hidden:
            return list(found)
        return [m for m in found if not m.deleted and not m.ephemeral]

    # ----- payloads -----

    def user_payload(self, user: FakeUser) -> dict[str, Any]:
        """A user object."""
        return {
            "id": str(user.id),
            "username": user.username,
            "discriminator": "0",
            "global_name": user.global_name,
            "avatar": None,
            "avatar_decoration_data": None,
            "banner": None,
            "accent_color": None,
            "public_flags": 0,
            "flags": 0,
            "bot": user.bot,
            "system": False,
        }

    def bot_user_payload(self) -> dict[str, Any]:
        """The bot's own user (GET /users/@me, READY)."""
        payload = self.user_payload(self.bot)
        payload.update(verified=True, mfa_enabled=False, locale="en-US", email=None)
        return payload

    def member_payload(
        self, guild: FakeGuild, user_id: int, *, with_user: bool = True
    ) -> dict[str, Any]:
        """A guild member object."""
        joined = guild.joined_at if user_id == self.bot.id else snowflake_time(guild.id)
        payload: dict[str, Any] = {
            "roles": [str(r) for r in guild.member_roles.get(user_id, [])],
            "joined_at": iso(joined),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "nick": None,
            "avatar": None,
            "banner": None,
            "premium_since": None,
            "communication_disabled_until": None,
        }
        if with_user:
            payload["user"] = self.user_payload(self.user(user_id))
        return payload

    def everyone_role_payload(self, guild: FakeGuild) -> dict[str, Any]:
        """The @everyone role (id = guild id) with the ordinary member permissions."""
        return _role_payload(guild.id, "@everyone", MEMBER_PERMISSIONS, 0, mentionable=False)

    def role_payload(self, role: FakeRole) -> dict[str, Any]:
        """A role object."""
        return _role_payload(
            role.id, role.name, role.permissions, role.position, mentionable=role.mentionable
        )

    def roles_payload(self, guild: FakeGuild) -> list[dict[str, Any]]:
        """@everyone, then the guild's roles by position."""
        ordered = sorted(guild.roles.values(), key=lambda r: (r.position, r.id))
        return [self.everyone_role_payload(guild)] + [self.role_payload(r) for r in ordered]

    def _last_message_id(self, channel: FakeChannel) -> str | None:
        history = self.channel_history(channel.id, include_hidden=False)
        return str(history[-1].id) if history else None

    def channel_payload(self, channel: FakeChannel) -> dict[str, Any]:
        """A channel object: text channel, thread or DM."""
        if channel.is_thread:
            return self.thread_payload(channel)
        if channel.type == DM:
            recipient = self.user(channel.recipient_id or 0)
            return {
                "id": str(channel.id),
                "type": DM,
                "last_message_id": self._last_message_id(channel),
                "recipients": [self.user_payload(recipient)],
                "flags": 0,
            }
        if channel.type == GROUP_DM:
            return {
                "id": str(channel.id),
                "type": GROUP_DM,
                "name": channel.name,
                "icon": None,
                "owner_id": str(channel.owner_id),
                "last_message_id": self._last_message_id(channel),
                "recipients": [self.user_payload(self.user(u)) for u in channel.recipient_ids],
                "flags": 0,
            }
        overwrites = []
        for target_id, (allow, deny) in channel.overwrites.items():
            kind = 0 if target_id == channel.guild_id or self.find_role(target_id) else 1
            overwrites.append(
                {"id": str(target_id), "type": kind, "allow": str(allow), "deny": str(deny)}
            )
        # The bot's own overwrite comes last in Discord's order, so it fixes every bit the
        # others could change (an @everyone deny must not take away what the test gave it).
        changeable = MEMBER_PERMISSIONS
        for allow, deny in channel.overwrites.values():
            changeable |= allow | deny
        allow = channel.bot_permissions & ~MEMBER_PERMISSIONS
        deny = changeable & ~channel.bot_permissions
        if channel.overwrites:
            allow = channel.bot_permissions
        if allow or deny:
            overwrites.append(
                {"id": str(self.bot.id), "type": 1, "allow": str(allow), "deny": str(deny)}
            )
        return {
            "id": str(channel.id),
            "type": channel.type,
            "guild_id": str(channel.guild_id),
            "name": channel.name,
            "position": channel.position,
            "permission_overwrites": overwrites,
            "parent_id": None,
            "topic": None,
            "nsfw": False,
            "last_message_id": self._last_message_id(channel),
            "rate_limit_per_user": 0,
            "default_auto_archive_duration": 1440,
            "flags": 0,
        }

    def thread_payload(self, thread: FakeChannel) -> dict[str, Any]:
        """A thread channel object, with the bot's thread member when it owns the thread."""
        metadata: dict[str, Any] = {
            "archived": thread.archived,
            "auto_archive_duration": thread.auto_archive_duration,
            "archive_timestamp": iso(thread.created_at),
            "locked": False,
            "create_timestamp": iso(thread.created_at),
        }
        if thread.type != PUBLIC_THREAD:
            metadata["invitable"] = True
        payload: dict[str, Any] = {
            "id": str(thread.id),
            "type": thread.type,
            "guild_id": str(thread.guild_id),
            "parent_id": str(thread.parent_id),
            "owner_id": str(thread.owner_id),
            "name": thread.name,
            "last_message_id": self._last_message_id(thread),
            "message_count": thread.message_count,
            "member_count": 1,
            "total_message_sent": thread.message_count,
            "rate_limit_per_user": 0,
            "flags": 0,
            "applied_tags": [],
            "thread_metadata": metadata,
        }
        if thread.owner_id == self.bot.id:
            payload["member"] = {
                "id": str(thread.id),
                "user_id": str(self.bot.id),
                "join_timestamp": iso(thread.created_at),
                "flags": 0,
            }
        return payload

    def guild_payload(self, guild: FakeGuild) -> dict[str, Any]:
        """A REST guild object (no channels or members)."""
        limit = guild.filesize_limit
        tier = 3 if limit >= 100 * 1024 * 1024 else 2 if limit >= 50 * 1024 * 1024 else 0
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(guild.owner_id),
            "region": "deprecated",
            "afk_channel_id": None,
            "afk_timeout": 300,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "widget_enabled": False,
            "widget_channel_id": None,
            "verification_level": 0,
            "default_message_notifications": 1,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": tier,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": guild.preferred_locale,
            "vanity_url_code": None,
            "features": [],
            "roles": self.roles_payload(guild),
            "emojis": [],
            "stickers": [],
            "max_members": 500000,
            "max_video_channel_users": 25,
            "application_id": None,
        }

    def guild_channels(self, guild_id: int) -> list[FakeChannel]:
        """The guild's non-thread channels."""
        return [c for c in self.channels.values() if c.guild_id == guild_id and not c.is_thread]

    def guild_threads(self, guild_id: int) -> list[FakeChannel]:
        """The guild's threads."""
        return [c for c in self.channels.values() if c.guild_id == guild_id and c.is_thread]

    def guild_create_payload(self, guild: FakeGuild) -> dict[str, Any]:
        """The GUILD_CREATE payload: guild plus channels, threads, members and counts."""
        payload = self.guild_payload(guild)
        payload.update(
            unavailable=False,
            large=False,
            lazy=True,
            joined_at=iso(guild.joined_at),
            member_count=len(guild.member_ids),
            channels=[self.channel_payload(c) for c in self.guild_channels(guild.id)],
            threads=[self.thread_payload(t) for t in self.guild_threads(guild.id)],
            members=[self.member_payload(guild, uid) for uid in guild.member_ids],
            voice_states=[],
            presences=[],
            stage_instances=[],
            guild_scheduled_events=[],
            soundboard_sounds=[],
            embedded_activities=[],
        )
        return payload

    def interaction_metadata_payload(self, interaction_id: int) -> dict[str, Any]:
        """interaction_metadata for a message answering that interaction (a modal submit's
        carries the metadata of the interaction that opened the modal)."""
        user_id = self.interaction_users.get(interaction_id, self.bot.id)
        extra = dict(self.interaction_metadata.get(interaction_id, {"type": 2}))
        trigger = extra.pop("triggering_interaction_id", None)
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "user": self.user_payload(self.user(user_id)),
            "authorizing_integration_owners": {},
            **extra,
        }
        if trigger is not None:
            payload["triggering_interaction_metadata"] = self.interaction_metadata_payload(
                int(trigger)
            )
        return payload

    def message_payload(self, message: FakeMessage, *, gateway: bool = False) -> dict[str, Any]:
        """A message object (``gateway``: with guild_id and the author's member, as dispatched)."""
        author = self.user(message.author_id)
        mentions = [
            self.user_payload(self.users[uid])
            for uid in sorted(message.mentions_pinged.users)
            if uid in self.users
        ]
        payload: dict[str, Any] = {
            "id": str(message.id),
            "channel_id": str(message.channel_id),
            "author": self.user_payload(author),
            "content": message.content,
            "timestamp": iso(message.created_at),
            "edited_timestamp": iso(message.edited_at) if message.edited_at else None,
            "tts": message.tts,
            "mention_everyone": message.mentions_pinged.everyone,
            "mentions": mentions,
            "mention_roles": [str(r) for r in sorted(message.mentions_pinged.roles)],
            "attachments": [a.payload() for a in message.attachments],
            "embeds": message.embeds,
            "components": message.components,
            "pinned": False,
            "type": 0,
            "flags": message.flags,
            "reactions": [
                {
                    "count": 1,
                    "me": True,
                    "emoji": {"id": None, "name": name},
                    "burst_colors": [],
                    "count_details": {"burst": 0, "normal": 1},
                    "me_burst": False,
                }
                for name in message.reactions
            ],
        }
        if message.nonce is not None:
            payload["nonce"] = message.nonce
        if message.webhook_id is not None:
            payload["webhook_id"] = str(message.webhook_id)
            payload["application_id"] = str(self.application_id)
        if message.interaction_id is not None:
            metadata = self.interaction_metadata_payload(message.interaction_id)
            # 23: a reply to a context menu command; 20 to the others.
            payload["type"] = 23 if metadata.get("target_message_id") else 20
            payload["interaction_metadata"] = metadata
        if message.message_reference is not None:
            payload["message_reference"] = message.message_reference
            payload["type"] = 19
        if message.thread_id is not None and message.thread_id in self.channels:
            payload["thread"] = self.thread_payload(self.channels[message.thread_id])
            payload["flags"] = message.flags | FLAG_HAS_THREAD
        if gateway and message.guild_id is not None:
            payload["guild_id"] = str(message.guild_id)
            guild = self.guilds.get(message.guild_id)
            if guild is not None and message.author_id in guild.member_ids:
                payload["member"] = self.member_payload(guild, message.author_id, with_user=False)
        return payload


def _role_payload(
    role_id: int, name: str, permissions: int, position: int, *, mentionable: bool
) -> dict[str, Any]:
    return {
        "id": str(role_id),
        "name": name,
        "permissions": str(permissions),
        "position": position,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "managed": False,
        "mentionable": mentionable,
        "icon": None,
        "unicode_emoji": None,
        "flags": 0,
    }


def _permission_string(value: object) -> str | None:
    return None if value is None else str(value)
