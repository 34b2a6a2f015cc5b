"""A Discord-compatible fake server for end-to-end tests of the real discord.py client.

REST (``/api/v10``), the gateway WebSocket (``/gateway``) and a CDN (``/cdn``) on 127.0.0.1.
Point discord.py at it with ``discord.http.Route.BASE = fake.rest_base_url`` and
``DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)`` (``harness.run_bot`` does
both), then build a world, invoke commands as a user and observe what the bot posted.
Behaviour follows Discord's: the 3 s acknowledge deadline, 15-minute interaction tokens,
permissions (roles, channel overwrites, Administrator, the owner), upload limits,
allowed_mentions, signed expiring CDN links, modals, context menus, and OpenAPI validation of
every request body.
"""

from __future__ import annotations

from .models import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    ATTACH_FILES,
    CREATE_PRIVATE_THREADS,
    CREATE_PUBLIC_THREADS,
    DEFAULT_BOT_PERMISSIONS,
    EMBED_LINKS,
    MANAGE_CHANNELS,
    MANAGE_GUILD,
    MANAGE_MESSAGES,
    MANAGE_ROLES,
    MENTION_EVERYONE,
    PRIVILEGED_INTENTS,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    SEND_MESSAGES_IN_THREADS,
    VIEW_CHANNEL,
    FakeAttachment,
    FakeInteraction,
    FakeMessage,
    FakeModal,
    FakeRole,
    Mentions,
    MessageVersion,
    ModalField,
    RecordedRequest,
    UploadedFile,
)
from .openapi import SpecUnavailable
from .server import DEFAULT_OPENAPI_SPEC, FakeDiscord

__all__ = [
    "ADMINISTRATOR",
    "ALL_PERMISSIONS",
    "ATTACH_FILES",
    "CREATE_PRIVATE_THREADS",
    "CREATE_PUBLIC_THREADS",
    "DEFAULT_BOT_PERMISSIONS",
    "DEFAULT_OPENAPI_SPEC",
    "EMBED_LINKS",
    "MANAGE_CHANNELS",
    "MANAGE_GUILD",
    "MANAGE_MESSAGES",
    "MANAGE_ROLES",
    "MENTION_EVERYONE",
    "PRIVILEGED_INTENTS",
    "READ_MESSAGE_HISTORY",
    "SEND_MESSAGES",
    "SEND_MESSAGES_IN_THREADS",
    "VIEW_CHANNEL",
    "FakeAttachment",
    "FakeDiscord",
    "FakeInteraction",
    "FakeMessage",
    "FakeModal",
    "FakeRole",
    "Mentions",
    "MessageVersion",
    "ModalField",
    "RecordedRequest",
    "SpecUnavailable",
    "UploadedFile",
]
