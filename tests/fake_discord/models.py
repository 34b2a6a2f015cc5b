"""Plain data held by the fake Discord: snowflakes, permission bits and the recorded objects."""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

DISCORD_EPOCH_MS = 1420070400000

# Permission bits (Discord's values).
CREATE_INSTANT_INVITE = 1 << 0
ADMINISTRATOR = 1 << 3
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
SEND_TTS_MESSAGES = 1 << 12
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
USE_EXTERNAL_EMOJIS = 1 << 18
MANAGE_ROLES = 1 << 28
USE_APPLICATION_COMMANDS = 1 << 31
CREATE_PUBLIC_THREADS = 1 << 35
CREATE_PRIVATE_THREADS = 1 << 36
SEND_MESSAGES_IN_THREADS = 1 << 38

ALL_PERMISSIONS = (1 << 51) - 1
"""What the guild owner and holders of Administrator get: every bit, in every channel."""

DEFAULT_BOT_PERMISSIONS = (
    VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | CREATE_PUBLIC_THREADS
    | SEND_MESSAGES_IN_THREADS
)
"""What the bot may do in a channel unless a test says otherwise."""

MEMBER_PERMISSIONS = DEFAULT_BOT_PERMISSIONS | ADD_REACTIONS | USE_APPLICATION_COMMANDS
"""The @everyone role's permissions (what an ordinary member gets)."""

# What discord.py's implicit rules strip when sending is not allowed.
_NEEDS_SEND = SEND_TTS_MESSAGES | MENTION_EVERYONE | EMBED_LINKS | ATTACH_FILES

# Gateway intents Discord treats as privileged.
PRIVILEGED_INTENTS = (1 << 1) | (1 << 8) | (1 << 15)

# Channel types.
GUILD_TEXT = 0
DM = 1
GROUP_DM = 3
PUBLIC_THREAD = 11
PRIVATE_THREAD = 12
THREAD_TYPES = frozenset({10, PUBLIC_THREAD, PRIVATE_THREAD})

# Message flags.
FLAG_HAS_THREAD = 1 << 5
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7

DM_UPLOAD_LIMIT = 10 * 1024 * 1024


def implicit_permissions(raw: int, *, thread: bool) -> int:
    """Apply Discord's implicit denies the way discord.py's ``permissions_for`` does."""
    send_bit = SEND_MESSAGES_IN_THREADS if thread else SEND_MESSAGES
    if not raw & send_bit:
        raw &= ~_NEEDS_SEND
    if not raw & VIEW_CHANNEL:
        return 0
    return raw


class SnowflakeFactory:
    """Unique, increasing snowflakes carrying the real current time (as Discord's do)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        """A new snowflake for ``now``."""
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        with self._lock:
            self._last = max((ms << 22) | (1 << 17), self._last + 1)
            return self._last

    def next_on_shard(self, shard_id: int, shard_count: int) -> int:
        """A new snowflake whose guild would live on ``shard_id`` of ``shard_count``
        (Discord: ``(guild_id >> 22) % shard_count``); at most a few ms ahead of now."""
        snowflake = self.next()
        ms = snowflake >> 22
        ms += (shard_id - ms) % shard_count
        with self._lock:
            self._last = max((ms << 22) | (1 << 17), self._last + 1)
            return self._last


def snowflake_time(snowflake: int) -> datetime:
    """The creation time encoded in a snowflake."""
    return datetime.fromtimestamp(((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000, tz=UTC)


def iso(moment: datetime) -> str:
    """Discord's ISO 8601 timestamp format."""
    return moment.isoformat()


def utcnow() -> datetime:
    """Timezone-aware now."""
    return datetime.now(UTC)


class DiscordError(Exception):
    """An error answer in Discord's shape: ``{"message": ..., "code": ...}`` with a status."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        errors: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {message} (code {code})")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body Discord would send."""
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def missing_permissions() -> DiscordError:
    """403 Missing Permissions (50013)."""
    return DiscordError(403, 50013, "Missing Permissions")


def missing_access() -> DiscordError:
    """403 Missing Access (50001)."""
    return DiscordError(403, 50001, "Missing Access")


def invalid_form(field_name: str, message: str, code: str = "BASE_TYPE_INVALID") -> DiscordError:
    """400 Invalid Form Body (50035) with Discord's nested ``errors`` object."""
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(field_name.split(".")):
        errors = {part: errors}
    return DiscordError(400, 50035, "Invalid Form Body", errors=errors)


@dataclass
class FakeUser:
    """A Discord user (the bot itself or a test user)."""

    id: int
    username: str
    bot: bool = False
    global_name: str | None = None
    accepts_dms: bool = True
    """False: the bot's messages to this user's DM channel are refused (403, code 50007)."""
    locale: str = "en-US"
    """The language of the user's Discord client: an interaction's ``locale``."""


@dataclass
class FakeRole:
    """A guild role (not @everyone, whose id is the guild's and whose permissions are fixed)."""

    id: int
    guild_id: int
    name: str
    permissions: int = 0
    position: int = 1
    mentionable: bool = False


@dataclass
class FakeGuild:
    """A guild; its @everyone role has the guild's id."""

    id: int
    name: str
    owner_id: int
    filesize_limit: int
    joined_at: datetime
    member_ids: list[int] = field(default_factory=list)
    roles: dict[int, FakeRole] = field(default_factory=dict)
    """The guild's own roles by id (@everyone is implicit)."""
    member_roles: dict[int, list[int]] = field(default_factory=dict)
    """User id -> the role ids they hold (never @everyone), in the order given."""
    bot_member: bool = True
    """False: a server that has not installed the bot, reached only through members' own
    installs (the bot gets no events from it and has no access to its channels)."""
    preferred_locale: str = "en-US"
    """The server's preferred language: ``preferred_locale``, an interaction's ``guild_locale``."""


@dataclass
class FakeChannel:
    """A text channel, public/private thread or DM channel."""

    id: int
    type: int
    name: str
    guild_id: int | None = None
    parent_id: int | None = None
    bot_permissions: int = DEFAULT_BOT_PERMISSIONS
    position: int = 0
    owner_id: int | None = None
    recipient_id: int | None = None
    recipient_ids: list[int] = field(default_factory=list)
    """A group DM's members (the bot is never one: it is reached through user installs)."""
    auto_archive_duration: int = 1440
    archived: bool = False
    created_at: datetime = field(default_factory=utcnow)
    message_count: int = 0
    overwrites: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Member and role permission overwrites: target id -> (allow, deny). The guild's id is
    @everyone; the bot's own overwrite comes from ``bot_permissions``."""

    @property
    def is_thread(self) -> bool:
        """Whether this is a thread."""
        return self.type in THREAD_TYPES


@dataclass
class FakeAttachment:
    """A stored file, served from the fake CDN."""

    id: int
    filename: str
    data: bytes
    content_type: str | None
    url: str
    description: str | None = None
    width: int | None = None
    height: int | None = None
    ephemeral: bool = False
    removed: bool = False
    """True once its message was deleted or an edit dropped it: the CDN answers 404."""
    sign: Callable[[str], str] | None = field(default=None, repr=False, compare=False)
    """Turns ``url`` into a signed, expiring CDN link (set by the world that stores it)."""

    @property
    def size(self) -> int:
        """Size in bytes."""
        return len(self.data)

    def signed_url(self) -> str:
        """A fresh link as Discord hands out: ``url?ex=..&is=..&hm=..&`` (unsigned if no signer)."""
        return self.url if self.sign is None else self.sign(self.url)

    def payload(self) -> dict[str, Any]:
        """The attachment object as Discord sends it (with a freshly signed URL)."""
        url = self.signed_url()
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": url,
            "proxy_url": url,
        }
        if self.content_type is not None:
            data["content_type"] = self.content_type
        if self.description is not None:
            data["description"] = self.description
        if self.width is not None and self.height is not None:
            data["width"] = self.width
            data["height"] = self.height
        if self.ephemeral:
            data["ephemeral"] = True
        return data


@dataclass(frozen=True)
class Mentions:
    """Who a message actually pinged."""

    users: frozenset[int] = frozenset()
    roles: frozenset[int] = frozenset()
    everyone: bool = False

    @property
    def nobody(self) -> bool:
        """True when nobody was pinged."""
        return not (self.users or self.roles or self.everyone)


_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
_EVERYONE = re.compile(r"@(everyone|here)\b")


def compute_mentions(
    content: str, allowed_mentions: dict[str, Any] | None, *, replied_user_id: int | None = None
) -> Mentions:
    """Apply Discord's allowed_mentions rules to ``content``.

    Absent allowed_mentions means everything in the content is parsed. The bot is assumed to
    hold Mention Everyone (worst case), so a missing allowed_mentions is always visible.
    """
    users = {int(m) for m in _USER_MENTION.findall(content)}
    roles = {int(m) for m in _ROLE_MENTION.findall(content)}
    everyone = bool(_EVERYONE.search(content))
    if allowed_mentions is None:
        replied = {replied_user_id} if replied_user_id is not None else set()
        return Mentions(frozenset(users | replied), frozenset(roles), everyone)
    parse = set(allowed_mentions.get("parse") or [])
    allowed_users = {int(u) for u in allowed_mentions.get("users") or []}
    allowed_roles = {int(r) for r in allowed_mentions.get("roles") or []}
    if "users" not in parse:
        users &= allowed_users
    if "roles" not in parse:
        roles &= allowed_roles
    if replied_user_id is not None and allowed_mentions.get("replied_user"):
        users.add(replied_user_id)
    return Mentions(frozenset(users), frozenset(roles), everyone and "everyone" in parse)


@dataclass(frozen=True)
class MessageVersion:
    """A message as it was before an edit."""

    content: str
    embeds: list[dict[str, Any]]
    attachments: list[FakeAttachment]
    components: list[dict[str, Any]]
    flags: int
    replaced_at: datetime
    """When the edit that replaced this version happened."""


@dataclass
class FakeMessage:
    """A message as the fake stores it, with edits applied and the earlier versions kept."""

    id: int
    channel_id: int
    guild_id: int | None
    author_id: int
    content: str
    embeds: list[dict[str, Any]]
    attachments: list[FakeAttachment]
    components: list[dict[str, Any]]
    flags: int
    nonce: str | None
    allowed_mentions: dict[str, Any] | None
    mentions_pinged: Mentions
    created_at: datetime
    source: str
    """"channel" (bot token), "interaction_response", "followup" or "user"."""
    tts: bool = False
    edited_at: datetime | None = None
    """Discord's edited_timestamp (stays None when a deferred 'thinking' response is filled)."""
    history: list[MessageVersion] = field(default_factory=list)
    """Earlier versions, oldest first."""
    webhook_id: int | None = None
    interaction_id: int | None = None
    message_reference: dict[str, Any] | None = None
    thread_id: int | None = None
    deleted: bool = False
    reactions: list[str] = field(default_factory=list)

    @property
    def ephemeral(self) -> bool:
        """Whether the message has the ephemeral flag (64)."""
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        """Whether this is a deferred response still showing 'thinking'."""
        return bool(self.flags & FLAG_LOADING)

    @property
    def edit_timestamps(self) -> list[datetime]:
        """When each edit happened, oldest first."""
        return [version.replaced_at for version in self.history]

    def attachment(self, filename: str) -> FakeAttachment:
        """The attachment with that filename (AssertionError if absent)."""
        for attachment in self.attachments:
            if attachment.filename == filename:
                return attachment
        names = [a.filename for a in self.attachments]
        raise AssertionError(f"message {self.id} has no attachment {filename!r} (has {names})")

    def snapshot(self, replaced_at: datetime) -> MessageVersion:
        """The current version, about to be replaced by an edit at ``replaced_at``."""
        return MessageVersion(
            content=self.content,
            embeds=list(self.embeds),
            attachments=list(self.attachments),
            components=list(self.components),
            flags=self.flags,
            replaced_at=replaced_at,
        )


@dataclass(frozen=True)
class ModalField:
    """One input of a modal the bot showed: a text input, or a select inside a label."""

    custom_id: str
    type: int
    """4 text input; 3, 5, 6, 7, 8 selects."""
    label: str | None
    """The label component's text, else the text input's own (deprecated) label."""
    value: str | None = None
    """The pre-filled text (text inputs)."""
    style: int | None = None
    """1 short, 2 paragraph (text inputs)."""
    required: bool = True
    min_length: int | None = None
    max_length: int | None = None
    placeholder: str | None = None
    options: tuple[str, ...] = ()
    """The option values of a string select."""
    min_values: int = 1
    max_values: int = 1
    wrapped_in_label: bool = False
    """True for discord.py's ``ui.Label`` layout (type 18), False for an action row (type 1)."""


@dataclass(frozen=True)
class FakeModal:
    """A modal the bot answered an interaction with (callback type 9)."""

    custom_id: str
    title: str
    components: list[dict[str, Any]]
    """The top-level components exactly as the bot sent them."""
    fields: list[ModalField]
    """Every input, in order."""

    def field(self, custom_id: str) -> ModalField:
        """The input with that custom id (AssertionError if absent)."""
        for item in self.fields:
            if item.custom_id == custom_id:
                return item
        ids = [f.custom_id for f in self.fields]
        raise AssertionError(f"modal {self.custom_id!r} has no input {custom_id!r} (has {ids})")

    @property
    def values(self) -> dict[str, str | None]:
        """custom_id -> pre-filled value of each text input."""
        return {f.custom_id: f.value for f in self.fields if f.type == 4}


@dataclass
class FakeInteraction:
    """An interaction the fake sent to the bot, and what the bot did with it."""

    id: int
    token: str
    application_id: int
    name: str
    user_id: int
    guild_id: int | None
    channel_id: int
    payload: dict[str, Any]
    created_at: datetime
    sent_at: float | None = None
    """``time.monotonic()`` when INTERACTION_CREATE went out (deadlines count from here)."""
    acknowledged_at: datetime | None = None
    """When the accepted callback arrived, or None."""
    acknowledged_monotonic: float | None = None
    """``time.monotonic()`` of the accepted callback, or None."""
    response_type: int | None = None
    deferred_ephemeral: bool = False
    original_message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    expired: bool = False
    callbacks: list[int] = field(default_factory=list)
    """Status codes of every callback attempt."""
    modal: FakeModal | None = None
    """The modal shown in answer (callback type 9), or None."""
    _lookup: Callable[[int], FakeMessage | None] | None = field(default=None, repr=False)

    @property
    def ack_delay(self) -> float | None:
        """Seconds between dispatch and acknowledgement."""
        if self.sent_at is None or self.acknowledged_monotonic is None:
            return None
        return self.acknowledged_monotonic - self.sent_at

    @property
    def deferred(self) -> bool:
        """Whether the response was a defer (type 5 or 6)."""
        return self.response_type in (5, 6)

    def original_response(self) -> FakeMessage | None:
        """The original response message (after a thinking defer: its edited state)."""
        if self.original_message_id is None or self._lookup is None:
            return None
        return self._lookup(self.original_message_id)

    def followups(self) -> list[FakeMessage]:
        """Followup messages other than the original response, in order."""
        if self._lookup is None:
            return []
        found = (self._lookup(mid) for mid in self.followup_ids)
        return [m for m in found if m is not None]

    def responses(self) -> list[FakeMessage]:
        """Original response (if any) then followups."""
        original = self.original_response()
        return ([original] if original else []) + self.followups()


@dataclass(frozen=True)
class UploadedFile:
    """One ``files[n]`` part of a multipart request."""

    field_name: str
    filename: str
    content_type: str | None
    data: bytes


@dataclass
class RecordedRequest:
    """One HTTP request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    files: list[UploadedFile]
    received_at: float
    """``time.monotonic()`` on arrival."""
    timestamp: datetime
    route: str | None = None
    """The OpenAPI path template matched, or None."""
    status: int | None = None
    injected: bool = False
    """True when the answer came from ``fail_next``."""

    @classmethod
    def arriving(cls, request: web.Request, path: str) -> RecordedRequest:
        """The record of a request as it arrives (body and outcome are filled in later)."""
        return cls(
            method=request.method,
            path=path,
            query=dict(request.query),
            headers=dict(request.headers),
            json=None,
            files=[],
            received_at=time.monotonic(),
            timestamp=utcnow(),
        )

    @property
    def authorized(self) -> bool:
        """Whether it carried an Authorization header."""
        return "Authorization" in self.headers


@dataclass
class FailureRule:
    """A pending ``fail_next`` injection."""

    method: str
    pattern: re.Pattern[str]
    status: int
    remaining: int
    body: dict[str, Any] | None
    headers: dict[str, str] = field(default_factory=dict)


_ids = itertools.count(1)


def new_session_id() -> str:
    """A gateway session id."""
    return f"fake-session-{next(_ids)}-{int(time.time() * 1000)}"
