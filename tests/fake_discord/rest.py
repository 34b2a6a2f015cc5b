"""REST API of the fake: routing, recording, validation, fault injection and the handlers."""

from __future__ import annotations

import asyncio
import json
import re
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from .models import (
    ATTACH_FILES,
    CREATE_PRIVATE_THREADS,
    CREATE_PUBLIC_THREADS,
    DM,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    GUILD_TEXT,
    MANAGE_MESSAGES,
    MEMBER_PERMISSIONS,
    PRIVATE_THREAD,
    PUBLIC_THREAD,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    SEND_MESSAGES_IN_THREADS,
    VIEW_CHANNEL,
    DiscordError,
    FakeAttachment,
    FakeChannel,
    FakeInteraction,
    FakeMessage,
    FakeModal,
    ModalField,
    RecordedRequest,
    UploadedFile,
    compute_mentions,
    invalid_form,
    missing_access,
    missing_permissions,
    utcnow,
)

if TYPE_CHECKING:
    from .server import FakeDiscord

MAX_CONTENT = 2000
NONCE_WINDOW = timedelta(minutes=5)
SUPPRESS_EMBEDS = 1 << 2
SUPPRESS_NOTIFICATIONS = 1 << 12
IS_VOICE_MESSAGE = 1 << 13
IS_COMPONENTS_V2 = 1 << 15
CHANNEL_MESSAGE_FLAGS = (
    SUPPRESS_EMBEDS | SUPPRESS_NOTIFICATIONS | IS_VOICE_MESSAGE | IS_COMPONENTS_V2
)
INTERACTION_MESSAGE_FLAGS = CHANNEL_MESSAGE_FLAGS | FLAG_EPHEMERAL
ARCHIVE_DURATIONS = frozenset({60, 1440, 4320, 10080})


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer with Content-Type exactly ``application/json`` (no charset)."""
    response = web.Response(status=status, body=json.dumps(body).encode(), headers=headers)
    response.headers["Content-Type"] = "application/json"
    return response


@dataclass
class Call:
    """One matched REST request, as the handlers see it."""

    record: RecordedRequest
    params: dict[str, str]
    body: Any
    files: list[UploadedFile]

    def snowflake(self, name: str) -> int:
        """A path parameter as a snowflake (400 Invalid Form Body when it is not one)."""
        raw = self.params[name]
        if not raw.isdigit():
            raise invalid_form(name, f'Value "{raw}" is not snowflake.', "NUMBER_TYPE_COERCE")
        return int(raw)

    def query(self, name: str) -> str | None:
        """A query parameter."""
        return self.record.query.get(name)

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object ({} when absent; 400 when it is something else)."""
        if self.body is None:
            return {}
        if not isinstance(self.body, dict):
            raise DiscordError(400, 50109, "The request body contains invalid JSON.")
        return self.body


@dataclass
class Reply:
    """What a handler answers: JSON body (None: 204 No Content), status and extra headers."""

    body: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Call], Awaitable[Reply]]


@dataclass(frozen=True)
class Route:
    """A REST route: the OpenAPI path template it implements and whether it needs the bot token."""

    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler
    bot_auth: bool


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[a-z_]+\})", template)
    regex = "".join(f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{regex}$")


def _not_empty(
    content: str,
    embeds: list[Any],
    attachments: list[Any],
    components: list[Any],
    extra: bool = False,
) -> None:
    if not (content or embeds or attachments or components or extra):
        raise DiscordError(400, 50006, "Cannot send an empty message")


def _check_content(content: Any) -> str:
    if content is None:
        return ""
    text = str(content)
    if len(text) > MAX_CONTENT:
        raise invalid_form(
            "content", f"Must be {MAX_CONTENT} or fewer in length.", "BASE_TYPE_MAX_LENGTH"
        )
    return text


def _check_allowed_mentions(allowed: Any) -> dict[str, Any] | None:
    if allowed is None:
        return None
    if not isinstance(allowed, dict):
        raise invalid_form("allowed_mentions", "Must be an object.", "MODEL_TYPE_CONVERT")
    parse = set(allowed.get("parse") or [])
    for kind in ("users", "roles"):
        if kind in parse and allowed.get(kind):
            raise invalid_form(
                f"allowed_mentions.{kind}",
                f'parse:["{kind}"] and {kind}: [ids...] are mutually exclusive.',
                "MENTIONS_PARSE_CONFLICT",
            )
    return allowed


class RestApi:
    """The REST half of the fake. State lives on the owning :class:`FakeDiscord`."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self.world = fake.world
        bot, hook = True, False  # needs the bot token / interaction token in the path
        cmds = "/applications/{application_id}/commands"
        gcmds = "/applications/{application_id}/guilds/{guild_id}/commands"
        wh = "/webhooks/{webhook_id}/{webhook_token}"
        msgs = "/channels/{channel_id}/messages"
        table: list[tuple[str, str, Handler, bool]] = [
            ("GET", "/users/@me", self.get_me, bot),
            ("GET", "/users/@me/guilds", self.get_my_guilds, bot),
            ("POST", "/users/@me/channels", self.create_dm, bot),
            ("GET", "/users/{user_id}", self.get_user, bot),
            ("GET", "/oauth2/applications/@me", self.get_application, bot),
            ("GET", "/applications/@me", self.get_application, bot),
            ("GET", "/gateway", self.get_gateway, hook),
            ("GET", "/gateway/bot", self.get_gateway_bot, bot),
            ("GET", cmds, self.list_commands, bot),
            ("PUT", cmds, self.put_commands, bot),
            ("POST", cmds, self.upsert_command, bot),
            ("GET", cmds + "/{command_id}", self.get_command, bot),
            ("PATCH", cmds + "/{command_id}", self.edit_command, bot),
            ("DELETE", cmds + "/{command_id}", self.delete_command, bot),
            ("GET", gcmds + "/permissions", self.command_permissions, bot),
            ("GET", gcmds, self.list_commands, bot),
            ("PUT", gcmds, self.put_commands, bot),
            ("POST", gcmds, self.upsert_command, bot),
            ("GET", gcmds + "/{command_id}", self.get_command, bot),
            ("PATCH", gcmds + "/{command_id}", self.edit_command, bot),
            ("DELETE", gcmds + "/{command_id}", self.delete_command, bot),
            ("POST", "/interactions/{interaction_id}/{interaction_token}/callback",
             self.interaction_callback, hook),
            ("GET", wh + "/messages/@original", self.get_webhook_message, hook),
            ("PATCH", wh + "/messages/@original", self.edit_webhook_message, hook),
            ("DELETE", wh + "/messages/@original", self.delete_webhook_message, hook),
            ("GET", wh + "/messages/{message_id}", self.get_webhook_message, hook),
            ("PATCH", wh + "/messages/{message_id}", self.edit_webhook_message, hook),
            ("DELETE", wh + "/messages/{message_id}", self.delete_webhook_message, hook),
            ("POST", wh, self.execute_webhook, hook),
            ("GET", "/channels/{channel_id}", self.get_channel, bot),
            ("GET", msgs, self.list_messages, bot),
            ("POST", msgs, self.create_message, bot),
            ("GET", msgs + "/{message_id}", self.get_message, bot),
            ("PATCH", msgs + "/{message_id}", self.edit_message, bot),
            ("DELETE", msgs + "/{message_id}", self.delete_message, bot),
            ("POST", msgs + "/{message_id}/threads", self.thread_from_message, bot),
            ("PUT", msgs + "/{message_id}/reactions/{emoji_name}/@me", self.add_reaction, bot),
            ("DELETE", msgs + "/{message_id}/reactions/{emoji_name}/@me",
             self.remove_reaction, bot),
            ("POST", "/channels/{channel_id}/threads", self.create_thread, bot),
            ("POST", "/channels/{channel_id}/typing", self.no_content, bot),
            ("PUT", "/channels/{channel_id}/thread-members/@me", self.no_content, bot),
            ("DELETE", "/channels/{channel_id}/thread-members/@me", self.no_content, bot),
            ("GET", "/guilds/{guild_id}", self.get_guild, bot),
            ("GET", "/guilds/{guild_id}/channels", self.get_guild_channels, bot),
            ("GET", "/guilds/{guild_id}/roles", self.get_guild_roles, bot),
            ("GET", "/guilds/{guild_id}/roles/{role_id}", self.get_guild_role, bot),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self.get_member, bot),
        ]  # fmt: skip
        self.routes = [
            Route(method, template, _compile(template), handler, needs_bot)
            for method, template, handler, needs_bot in table
        ]

    # ----- plumbing -----

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """The first route for ``method path``."""
        for route in self.routes:
            if route.method != method:
                continue
            found = route.pattern.match(path)
            if found:
                return route, found.groupdict()
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Entry point for every ``/api/v*/...`` request."""
        fake = self.fake
        path = "/" + request.match_info["tail"]
        record = RecordedRequest.arriving(request, path)
        fake.recorded_requests.append(record)
        try:
            record.json, record.files = await _read_body(request)
        except DiscordError as exc:
            record.status = exc.status
            return json_response(exc.status, exc.body())
        matched = self.match(request.method, path)
        if matched is not None:
            record.route = matched[0].template
            fake.validate_body(request.method, matched[0].template, record.json)
        injected = fake.take_failure(request.method, path)
        if injected is not None:
            record.injected = True
            record.status = injected.status
            return injected
        if matched is None:
            fake.unhandled_routes.append(f"{request.method} {path}")
            record.status = 404
            return json_response(404, {"message": "404: Not Found", "code": 0})
        route, params = matched
        if route.bot_auth and request.headers.get("Authorization") != f"Bot {fake.bot_token}":
            record.status = 401
            return json_response(401, {"message": "401: Unauthorized", "code": 0})
        call = Call(record=record, params=params, body=record.json, files=record.files)
        try:
            reply = await route.handler(call)
        except DiscordError as exc:
            record.status = exc.status
            return json_response(exc.status, exc.body(), exc.headers)
        except Exception as exc:
            # A bug in the fake: answer 400 (a 5xx would make discord.py retry for ~25 s).
            fake.internal_errors.append(
                f"{request.method} {path}: {''.join(traceback.format_exception(exc))}"
            )
            record.status = 400
            return json_response(
                400, {"message": f"Fake Discord internal error: {exc!r}", "code": 0}
            )
        record.status = reply.status if reply.body is not None else 204
        hold = fake.take_hold(request.method, path)
        if hold > 0:
            await asyncio.sleep(hold)
        if reply.body is None:
            return web.Response(status=204, headers=reply.headers)
        return json_response(reply.status, reply.body, reply.headers)

    async def no_content(self, call: Call) -> Reply:
        """Accept and answer 204 (typing, joining a thread)."""
        if "channel_id" in call.params:
            self.world.channel(call.snowflake("channel_id"))
        return Reply()

    # ----- users, application, gateway -----

    async def get_me(self, call: Call) -> Reply:
        """GET /users/@me."""
        return Reply(self.world.bot_user_payload())

    async def get_user(self, call: Call) -> Reply:
        """GET /users/{id}."""
        return Reply(self.world.user_payload(self.world.user(call.snowflake("user_id"))))

    async def get_my_guilds(self, call: Call) -> Reply:
        """GET /users/@me/guilds."""
        return Reply(
            [
                {
                    "id": str(g.id),
                    "name": g.name,
                    "icon": None,
                    "banner": None,
                    "owner": False,
                    "permissions": str(MEMBER_PERMISSIONS),
                    "features": [],
                }
                for g in self.world.guilds.values()
                if g.bot_member
            ]
        )

    async def create_dm(self, call: Call) -> Reply:
        """POST /users/@me/channels: the DM channel with a user."""
        recipient = call.json_object().get("recipient_id")
        if recipient is None:
            raise invalid_form("recipient_id", "This field is required", "BASE_TYPE_REQUIRED")
        channel = self.world.dm_channel(int(recipient))
        return Reply(self.world.channel_payload(channel))

    async def get_application(self, call: Call) -> Reply:
        """GET /oauth2/applications/@me."""
        world = self.world
        return Reply(
            {
                "id": str(world.application_id),
                "name": world.bot.username,
                "icon": None,
                "description": "A bot under test",
                "summary": "",
                "type": None,
                "bot_public": False,
                "bot_require_code_grant": False,
                "verify_key": world.verify_key,
                "flags": 1 << 19,
                "owner": world.user_payload(world.owner),
                "team": None,
                "bot": world.user_payload(world.bot),
                "redirect_uris": [],
                "interactions_endpoint_url": None,
                "tags": [],
                "install_params": None,
                "integration_types_config": {"0": {}},
                "approximate_guild_count": len(world.guilds),
            }
        )

    async def get_gateway(self, call: Call) -> Reply:
        """GET /gateway."""
        return Reply({"url": self.fake.gateway_url})

    async def get_gateway_bot(self, call: Call) -> Reply:
        """GET /gateway/bot (used by AutoShardedClient)."""
        return Reply(
            {
                "url": self.fake.gateway_url,
                "shards": self.fake.gateway.recommended_shards,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        )

    # ----- application commands -----

    def _command_scope(self, call: Call) -> int | None:
        if call.snowflake("application_id") != self.world.application_id:
            raise missing_access()
        if "guild_id" not in call.params:
            return None
        guild_id = call.snowflake("guild_id")
        if guild_id not in self.world.guilds:
            raise missing_access()
        return guild_id

    async def list_commands(self, call: Call) -> Reply:
        """GET global or guild commands."""
        return Reply(self.world.commands.in_scope(self._command_scope(call)))

    async def put_commands(self, call: Call) -> Reply:
        """PUT (bulk overwrite) global or guild commands: what ``tree.sync()`` does."""
        scope = self._command_scope(call)
        if not isinstance(call.body, list):
            raise DiscordError(400, 50109, "The request body contains invalid JSON.")
        names = [(c.get("type", 1), c.get("name")) for c in call.body if isinstance(c, dict)]
        if len(names) != len(set(names)):
            raise invalid_form(
                "0.name",
                "Application command names must be unique",
                "APPLICATION_COMMANDS_DUPLICATE_NAME",
            )
        return Reply(self.world.commands.overwrite(scope, call.body))

    async def upsert_command(self, call: Call) -> Reply:
        """POST one command."""
        scope = self._command_scope(call)
        return Reply(self.world.commands.upsert(scope, call.json_object()), status=201)

    async def get_command(self, call: Call) -> Reply:
        """GET one command."""
        scope = self._command_scope(call)
        return Reply(self.world.commands.get(scope, call.snowflake("command_id")))

    async def edit_command(self, call: Call) -> Reply:
        """PATCH one command."""
        scope = self._command_scope(call)
        command_id = call.snowflake("command_id")
        return Reply(self.world.commands.edit(scope, command_id, call.json_object()))

    async def delete_command(self, call: Call) -> Reply:
        """DELETE one command."""
        scope = self._command_scope(call)
        self.world.commands.delete(scope, call.snowflake("command_id"))
        return Reply()

    async def command_permissions(self, call: Call) -> Reply:
        """GET guild command permissions (none set)."""
        self._command_scope(call)
        return Reply([])

    # ----- messages: shared rules -----

    def _check_can_post(self, channel: FakeChannel, *, files: bool) -> None:
        if channel.type == DM:
            if (
                channel.recipient_id is not None
                and not self.world.user(channel.recipient_id).accepts_dms
            ):
                raise DiscordError(403, 50007, "Cannot send messages to this user")
            return
        raw = self.world.bot_raw_permissions(channel)
        if not raw & VIEW_CHANNEL:
            raise missing_access()
        needed = SEND_MESSAGES_IN_THREADS if channel.is_thread else SEND_MESSAGES
        if files:
            needed |= ATTACH_FILES
        if raw & needed != needed:
            raise missing_permissions()

    def _check_can_read(self, channel: FakeChannel) -> int:
        if channel.type == DM:
            return VIEW_CHANNEL | READ_MESSAGE_HISTORY
        raw = self.world.bot_raw_permissions(channel)
        if not raw & VIEW_CHANNEL:
            raise missing_access()
        return raw

    def _check_upload(self, channel: FakeChannel, files: list[UploadedFile], limit: int) -> None:
        if sum(len(f.data) for f in files) > limit:
            raise DiscordError(413, 40005, "Request entity too large")

    def _new_attachments(
        self,
        body: dict[str, Any],
        files: list[UploadedFile],
        channel: FakeChannel,
        *,
        ephemeral: bool = False,
    ) -> list[FakeAttachment]:
        entries = {
            str(a.get("id")): a for a in body.get("attachments") or [] if isinstance(a, dict)
        }
        stored = []
        for index, upload in enumerate(files):
            match = re.fullmatch(r"files\[(\d+)\]", upload.field_name)
            key = match.group(1) if match else str(index)
            entry = entries.get(key, {})
            stored.append(
                self.world.store_attachment(
                    upload.data,
                    str(entry.get("filename") or upload.filename),
                    None
                    if upload.content_type == "application/octet-stream"
                    else upload.content_type,
                    cdn_base_url=self.fake.cdn_base_url,
                    folder=f"attachments/{channel.id}",
                    description=entry.get("description"),
                    ephemeral=ephemeral,
                )
            )
        return stored

    def _find_nonce_duplicate(
        self, channel: FakeChannel, author_id: int, nonce: str | None
    ) -> FakeMessage | None:
        if nonce is None:
            return None
        horizon = utcnow() - NONCE_WINDOW
        for message in reversed(self.world.channel_history(channel.id, include_hidden=True)):
            if message.created_at < horizon:
                break
            if message.author_id == author_id and message.nonce == nonce and not message.deleted:
                return message
        return None

    def build_message(
        self,
        channel: FakeChannel,
        body: dict[str, Any],
        files: list[UploadedFile],
        *,
        source: str,
        upload_limit: int,
        allowed_flags: int,
        interaction: FakeInteraction | None = None,
        extra_flags: int = 0,
        allow_empty: bool = False,
    ) -> FakeMessage:
        """Validate a message body the way Discord does and store the new message."""
        content = _check_content(body.get("content"))
        embeds = list(body.get("embeds") or [])
        components = list(body.get("components") or [])
        allowed = _check_allowed_mentions(body.get("allowed_mentions"))
        extra = bool(body.get("sticker_ids") or body.get("poll"))
        if not allow_empty:
            _not_empty(content, embeds, files, components, extra)
        self._check_upload(channel, files, upload_limit)
        flags = (int(body.get("flags") or 0) & allowed_flags) | extra_flags
        reference = body.get("message_reference")
        replied_user: int | None = None
        if isinstance(reference, dict) and reference.get("message_id") is not None:
            referenced = self.world.messages.get(int(reference["message_id"]))
            if referenced is None or referenced.deleted:
                if reference.get("fail_if_not_exists", True):
                    raise invalid_form(
                        "message_reference", "Unknown message", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE"
                    )
            else:
                replied_user = referenced.author_id
                reference = {
                    "type": 0,
                    "message_id": str(referenced.id),
                    "channel_id": str(referenced.channel_id),
                    **({"guild_id": str(referenced.guild_id)} if referenced.guild_id else {}),
                }
        else:
            reference = None
        ephemeral = bool(flags & FLAG_EPHEMERAL)
        message = FakeMessage(
            id=self.world.snowflakes.next(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author_id=self.world.bot.id,
            content=content,
            embeds=embeds,
            attachments=self._new_attachments(body, files, channel, ephemeral=ephemeral),
            components=components,
            flags=flags,
            nonce=str(body["nonce"]) if body.get("nonce") is not None else None,
            allowed_mentions=allowed,
            mentions_pinged=compute_mentions(content, allowed, replied_user_id=replied_user),
            created_at=utcnow(),
            source=source,
            tts=bool(body.get("tts", False)),
            webhook_id=self.world.application_id if interaction is not None else None,
            interaction_id=interaction.id if interaction is not None else None,
            message_reference=reference,
        )
        self.world.add_message(message)
        return message

    def apply_edit(
        self,
        message: FakeMessage,
        body: dict[str, Any],
        files: list[UploadedFile],
        *,
        upload_limit: int,
    ) -> None:
        """Apply a PATCH body to a message, keeping the previous version in its history."""
        channel = self.world.channel(message.channel_id)
        content = _check_content(body["content"]) if "content" in body else message.content
        embeds = list(body.get("embeds") or []) if "embeds" in body else message.embeds
        components = (
            list(body.get("components") or []) if "components" in body else message.components
        )
        self._check_upload(channel, files, upload_limit)
        attachments = list(message.attachments)
        dropped: list[FakeAttachment] = []
        if body.get("attachments") is not None:
            keep = {str(a.get("id")) for a in body["attachments"] if isinstance(a, dict)}
            dropped = [a for a in attachments if str(a.id) not in keep]
            attachments = [a for a in attachments if str(a.id) in keep]
        attachments += self._new_attachments(body, files, channel, ephemeral=message.ephemeral)
        _not_empty(content, embeds, attachments, components)
        allowed = (
            _check_allowed_mentions(body.get("allowed_mentions"))
            if "allowed_mentions" in body
            else message.allowed_mentions
        )
        now = utcnow()
        was_loading = message.loading
        message.history.append(message.snapshot(now))
        message.content, message.embeds, message.components = content, embeds, components
        message.attachments = attachments
        for attachment in dropped:
            attachment.removed = True  # Discord deletes a file an edit drops
        message.allowed_mentions = allowed
        if body.get("flags") is not None:
            message.flags = (message.flags & ~SUPPRESS_EMBEDS) | (
                int(body["flags"]) & SUPPRESS_EMBEDS
            )
        if was_loading:
            # The deferred "thinking" message becomes the real response: it pings now.
            message.flags &= ~FLAG_LOADING
            message.mentions_pinged = compute_mentions(content, allowed)
        else:
            message.edited_at = now

    async def delete(self, message: FakeMessage) -> None:
        """Delete a message: gone from history, its files gone from the CDN."""
        message.deleted = True
        for attachment in message.attachments:
            attachment.removed = True
        await self.announce("MESSAGE_DELETE", message)

    async def announce(self, event: str, message: FakeMessage) -> None:
        """Dispatch MESSAGE_CREATE/UPDATE/DELETE (never for ephemeral messages)."""
        if message.ephemeral:
            return
        if event == "MESSAGE_DELETE":
            data: dict[str, Any] = {"id": str(message.id), "channel_id": str(message.channel_id)}
            if message.guild_id is not None:
                data["guild_id"] = str(message.guild_id)
        else:
            data = self.world.message_payload(message, gateway=True)
        await self.fake.gateway.dispatch(event, data)

    # ----- channels and messages (bot token) -----

    async def get_channel(self, call: Call) -> Reply:
        """GET /channels/{id}."""
        channel = self.world.channel(call.snowflake("channel_id"))
        self._check_can_read(channel)
        return Reply(self.world.channel_payload(channel))

    async def list_messages(self, call: Call) -> Reply:
        """GET /channels/{id}/messages: newest first, with limit/before/after/around."""
        channel = self.world.channel(call.snowflake("channel_id"))
        raw = self._check_can_read(channel)
        limit_text = call.query("limit") or "50"
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
            raise invalid_form("limit", "Int value should be between 1 and 100.", "NUMBER_TYPE_MAX")
        limit = int(limit_text)
        if not raw & READ_MESSAGE_HISTORY:
            return Reply([])
        history = self.world.channel_history(channel.id, include_hidden=False)
        before, after, around = (call.query(k) for k in ("before", "after", "around"))
        if around is not None:
            pivot = int(around)
            older = [m for m in history if m.id < pivot][-(limit // 2) :] if limit > 1 else []
            newer = [m for m in history if m.id >= pivot][: limit - len(older)]
            chosen = older + newer
        elif after is not None:
            chosen = [m for m in history if m.id > int(after)][:limit]
        elif before is not None:
            older = [m for m in history if m.id < int(before)]
            chosen = older[-limit:]
        else:
            chosen = history[-limit:]
        return Reply([self.world.message_payload(m) for m in reversed(chosen)])

    async def get_message(self, call: Call) -> Reply:
        """GET /channels/{id}/messages/{id}."""
        channel = self.world.channel(call.snowflake("channel_id"))
        raw = self._check_can_read(channel)
        if not raw & READ_MESSAGE_HISTORY:
            raise missing_access()
        message = self.world.message(channel.id, call.snowflake("message_id"))
        if message.ephemeral:
            raise DiscordError(404, 10008, "Unknown Message")
        return Reply(self.world.message_payload(message))

    async def create_message(self, call: Call) -> Reply:
        """POST /channels/{id}/messages (JSON or multipart)."""
        channel = self.world.channel(call.snowflake("channel_id"))
        self._check_can_post(channel, files=bool(call.files))
        body = call.json_object()
        if body.get("enforce_nonce"):
            duplicate = self._find_nonce_duplicate(channel, self.world.bot.id, body.get("nonce"))
            if duplicate is not None:
                return Reply(self.world.message_payload(duplicate))
        message = self.build_message(
            channel,
            body,
            call.files,
            source="channel",
            upload_limit=self.world.upload_limit(channel),
            allowed_flags=CHANNEL_MESSAGE_FLAGS,
        )
        await self.announce("MESSAGE_CREATE", message)
        return Reply(self.world.message_payload(message))

    async def edit_message(self, call: Call) -> Reply:
        """PATCH /channels/{id}/messages/{id} (JSON or multipart): own messages only."""
        channel = self.world.channel(call.snowflake("channel_id"))
        raw = self._check_can_read(channel)
        message = self.world.message(channel.id, call.snowflake("message_id"))
        if message.author_id != self.world.bot.id or message.ephemeral:
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        if call.files and channel.type != DM and not raw & ATTACH_FILES:
            raise missing_permissions()
        self.apply_edit(
            message, call.json_object(), call.files, upload_limit=self.world.upload_limit(channel)
        )
        await self.announce("MESSAGE_UPDATE", message)
        return Reply(self.world.message_payload(message))

    async def delete_message(self, call: Call) -> Reply:
        """DELETE /channels/{id}/messages/{id}: own messages, or with Manage Messages."""
        channel = self.world.channel(call.snowflake("channel_id"))
        raw = self._check_can_read(channel)
        message = self.world.message(channel.id, call.snowflake("message_id"))
        if message.author_id != self.world.bot.id and not raw & MANAGE_MESSAGES:
            raise missing_permissions()
        await self.delete(message)
        return Reply()

    async def add_reaction(self, call: Call) -> Reply:
        """PUT a reaction as the bot."""
        channel = self.world.channel(call.snowflake("channel_id"))
        self._check_can_read(channel)
        message = self.world.message(channel.id, call.snowflake("message_id"))
        emoji = call.params["emoji_name"]
        if emoji not in message.reactions:
            message.reactions.append(emoji)
        return Reply()

    async def remove_reaction(self, call: Call) -> Reply:
        """DELETE the bot's reaction."""
        channel = self.world.channel(call.snowflake("channel_id"))
        message = self.world.message(channel.id, call.snowflake("message_id"))
        if call.params["emoji_name"] in message.reactions:
            message.reactions.remove(call.params["emoji_name"])
        return Reply()

    # ----- threads -----

    def _thread_options(self, body: dict[str, Any]) -> tuple[str, int]:
        name = body.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise invalid_form(
                "name", "Must be between 1 and 100 in length.", "BASE_TYPE_BAD_LENGTH"
            )
        duration = int(body.get("auto_archive_duration") or 1440)
        if duration not in ARCHIVE_DURATIONS:
            raise invalid_form(
                "auto_archive_duration",
                "Value must be one of {60, 1440, 4320, 10080}.",
                "BASE_TYPE_CHOICES",
            )
        return name, duration

    def _check_thread_parent(self, channel: FakeChannel, needed: int) -> None:
        if channel.type != GUILD_TEXT:
            raise DiscordError(400, 50024, "Cannot execute action on this channel type")
        raw = self.world.bot_raw_permissions(channel)
        if not raw & VIEW_CHANNEL:
            raise missing_access()
        if not raw & needed:
            raise missing_permissions()

    async def thread_from_message(self, call: Call) -> Reply:
        """POST /channels/{id}/messages/{id}/threads: the thread gets the message's id."""
        channel = self.world.channel(call.snowflake("channel_id"))
        self._check_thread_parent(channel, CREATE_PUBLIC_THREADS)
        message = self.world.message(channel.id, call.snowflake("message_id"))
        if message.thread_id is not None:
            raise DiscordError(400, 160004, "A thread has already been created for this message")
        name, duration = self._thread_options(call.json_object())
        thread = self.world.add_thread(
            channel,
            name,
            owner_id=self.world.bot.id,
            thread_id=message.id,
            auto_archive_duration=duration,
        )
        message.thread_id = thread.id
        await self.fake.announce_thread(thread)
        await self.announce("MESSAGE_UPDATE", message)
        return Reply(self.world.thread_payload(thread), status=201)

    async def create_thread(self, call: Call) -> Reply:
        """POST /channels/{id}/threads (no starter message; private unless type 11)."""
        channel = self.world.channel(call.snowflake("channel_id"))
        body = call.json_object()
        kind = int(body.get("type") or PRIVATE_THREAD)
        if kind not in (PUBLIC_THREAD, PRIVATE_THREAD):
            raise invalid_form("type", "Value must be one of {11, 12}.", "BASE_TYPE_CHOICES")
        needed = CREATE_PUBLIC_THREADS if kind == PUBLIC_THREAD else CREATE_PRIVATE_THREADS
        self._check_thread_parent(channel, needed)
        name, duration = self._thread_options(body)
        thread = self.world.add_thread(
            channel, name, owner_id=self.world.bot.id, kind=kind, auto_archive_duration=duration
        )
        await self.fake.announce_thread(thread)
        return Reply(self.world.thread_payload(thread), status=201)

    # ----- guilds -----

    async def get_guild(self, call: Call) -> Reply:
        """GET /guilds/{id}."""
        guild = self.world.guild(call.snowflake("guild_id"))
        payload = self.world.guild_payload(guild)
        if call.query("with_counts") in ("true", "1", "True"):
            payload["approximate_member_count"] = len(guild.member_ids)
            payload["approximate_presence_count"] = 0
        return Reply(payload)

    async def get_guild_channels(self, call: Call) -> Reply:
        """GET /guilds/{id}/channels."""
        guild = self.world.guild(call.snowflake("guild_id"))
        return Reply([self.world.channel_payload(c) for c in self.world.guild_channels(guild.id)])

    async def get_guild_roles(self, call: Call) -> Reply:
        """GET /guilds/{id}/roles."""
        guild = self.world.guild(call.snowflake("guild_id"))
        return Reply(self.world.roles_payload(guild))

    async def get_guild_role(self, call: Call) -> Reply:
        """GET /guilds/{id}/roles/{id}."""
        guild = self.world.guild(call.snowflake("guild_id"))
        role_id = call.snowflake("role_id")
        if role_id == guild.id:
            return Reply(self.world.everyone_role_payload(guild))
        return Reply(self.world.role_payload(self.world.role(guild.id, role_id)))

    async def get_member(self, call: Call) -> Reply:
        """GET /guilds/{id}/members/{id}."""
        guild = self.world.guild(call.snowflake("guild_id"))
        user_id = call.snowflake("user_id")
        if user_id not in guild.member_ids:
            raise DiscordError(404, 10007, "Unknown Member")
        return Reply(self.world.member_payload(guild, user_id))

    # ----- interactions and their webhooks (no Authorization) -----

    async def interaction_callback(self, call: Call) -> Reply:
        """POST /interactions/{id}/{token}/callback: acknowledge within the deadline, once."""
        fake = self.fake
        interaction = fake.interactions_by_id.get(call.snowflake("interaction_id"))
        if interaction is None or interaction.token != call.params["interaction_token"]:
            raise DiscordError(404, 10062, "Unknown interaction")
        try:
            reply = await self._acknowledge(interaction, call)
        except DiscordError as exc:
            interaction.callbacks.append(exc.status)
            raise
        interaction.callbacks.append(reply.status if reply.body is not None else 204)
        return reply

    async def _acknowledge(self, interaction: FakeInteraction, call: Call) -> Reply:
        fake = self.fake
        if interaction.acknowledged_at is not None:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        now = time.monotonic()
        sent_at = interaction.sent_at if interaction.sent_at is not None else now
        if interaction.expired or now - sent_at > fake.ack_deadline:
            raise DiscordError(404, 10062, "Unknown interaction")
        body = call.json_object()
        kind = body.get("type")
        data = body.get("data") or {}
        if not isinstance(data, dict):
            raise invalid_form("data", "Must be an object.", "MODEL_TYPE_CONVERT")
        channel = self.world.channel(interaction.channel_id)
        limit = self.world.upload_limit(channel)
        message: FakeMessage | None = None
        component_message = interaction.payload.get("message")
        if kind == 4:
            message = self.build_message(
                channel,
                data,
                call.files,
                source="interaction_response",
                upload_limit=limit,
                allowed_flags=INTERACTION_MESSAGE_FLAGS,
                interaction=interaction,
            )
            interaction.original_message_id = message.id
        elif kind == 5:
            ephemeral = bool(int(data.get("flags") or 0) & FLAG_EPHEMERAL)
            message = self.build_message(
                channel,
                {},
                [],
                source="interaction_response",
                upload_limit=limit,
                allowed_flags=0,
                interaction=interaction,
                extra_flags=FLAG_LOADING | (FLAG_EPHEMERAL if ephemeral else 0),
                allow_empty=True,
            )
            interaction.deferred_ephemeral = ephemeral
            interaction.original_message_id = message.id
        elif kind == 6:
            if component_message is not None:
                interaction.original_message_id = int(component_message["id"])
        elif kind == 7 and component_message is not None:
            target = self.world.message(channel.id, int(component_message["id"]))
            interaction.original_message_id = target.id
            self.apply_edit(target, data, call.files, upload_limit=limit)
            await self.announce("MESSAGE_UPDATE", target)
            message = target
        elif kind == 9:
            # Discord offers a modal only in answer to a command or a component, never to a
            # modal submit (nor to a ping or autocomplete).
            if interaction.payload["type"] not in (2, 3):
                raise DiscordError(400, 40043, "Interaction response type is not valid here")
            interaction.modal = parse_modal(data)
        elif kind != 8:
            raise DiscordError(400, 40043, "Interaction response type is not valid here")
        interaction.acknowledged_monotonic = time.monotonic()
        interaction.acknowledged_at = utcnow()
        interaction.response_type = int(kind)
        if message is not None and kind in (4, 5):
            await self.announce("MESSAGE_CREATE", message)
        if call.query("with_response") not in ("1", "true", "True"):
            return Reply()
        meta: dict[str, Any] = {"id": str(interaction.id), "type": interaction.payload["type"]}
        if message is not None:
            meta.update(
                response_message_id=str(message.id),
                response_message_loading=message.loading,
                response_message_ephemeral=message.ephemeral,
            )
        answer: dict[str, Any] = {"interaction": meta}
        if message is not None:
            answer["resource"] = {"type": kind, "message": self.world.message_payload(message)}
        else:
            answer["resource"] = {"type": kind}
        return Reply(answer)

    def _webhook_interaction(self, call: Call) -> FakeInteraction:
        if call.snowflake("webhook_id") != self.world.application_id:
            raise DiscordError(404, 10015, "Unknown Webhook")
        interaction = self.fake.interactions_by_token.get(call.params["webhook_token"])
        if interaction is None or self.fake.token_expired(interaction):
            raise DiscordError(401, 50027, "Invalid Webhook Token")
        return interaction

    def _webhook_target(self, call: Call, interaction: FakeInteraction) -> FakeMessage:
        raw = call.params.get("message_id")
        if raw is None:
            if interaction.original_message_id is None:
                raise DiscordError(404, 10008, "Unknown Message")
            message_id = interaction.original_message_id
        else:
            message_id = call.snowflake("message_id")
            if message_id != interaction.original_message_id and (
                message_id not in interaction.followup_ids
            ):
                raise DiscordError(404, 10008, "Unknown Message")
        message = self.world.messages.get(message_id)
        if message is None or message.deleted:
            raise DiscordError(404, 10008, "Unknown Message")
        return message

    async def get_webhook_message(self, call: Call) -> Reply:
        """GET @original or a followup."""
        interaction = self._webhook_interaction(call)
        return Reply(self.world.message_payload(self._webhook_target(call, interaction)))

    async def edit_webhook_message(self, call: Call) -> Reply:
        """PATCH @original or a followup (fills a deferred 'thinking' response)."""
        interaction = self._webhook_interaction(call)
        message = self._webhook_target(call, interaction)
        channel = self.world.channel(message.channel_id)
        self.apply_edit(
            message, call.json_object(), call.files, upload_limit=self.world.upload_limit(channel)
        )
        await self.announce("MESSAGE_UPDATE", message)
        return Reply(self.world.message_payload(message))

    async def delete_webhook_message(self, call: Call) -> Reply:
        """DELETE @original or a followup."""
        interaction = self._webhook_interaction(call)
        message = self._webhook_target(call, interaction)
        await self.delete(message)
        return Reply()

    async def execute_webhook(self, call: Call) -> Reply:
        """POST /webhooks/{app}/{token}: a followup (the first after a thinking defer edits it)."""
        interaction = self._webhook_interaction(call)
        if interaction.acknowledged_at is None:
            raise DiscordError(404, 10015, "Unknown Webhook")
        channel = self.world.channel(interaction.channel_id)
        limit = self.world.upload_limit(channel)
        body = call.json_object()
        original = interaction.original_response()
        if original is not None and original.loading and not original.deleted:
            self.apply_edit(original, body, call.files, upload_limit=limit)
            await self.announce("MESSAGE_UPDATE", original)
            message = original
        else:
            message = self.build_message(
                channel,
                body,
                call.files,
                source="followup",
                upload_limit=limit,
                allowed_flags=INTERACTION_MESSAGE_FLAGS,
                interaction=interaction,
            )
            interaction.followup_ids.append(message.id)
            await self.announce("MESSAGE_CREATE", message)
        if call.query("wait") not in ("1", "true", "True"):
            return Reply()
        return Reply(self.world.message_payload(message))


_SELECT_TYPES = frozenset({3, 5, 6, 7, 8})


def parse_modal(data: dict[str, Any]) -> FakeModal:
    """The modal of a type 9 callback, checked the way Discord checks it (the OpenAPI
    validation has already recorded shape problems): every input has a unique custom id, and a
    text input in an action row carries its own label."""
    components = data.get("components")
    if not isinstance(components, list) or not components:
        raise invalid_form("data.components", "This field is required", "BASE_TYPE_REQUIRED")
    fields: list[ModalField] = []
    for index, top in enumerate(components):
        where = f"data.components.{index}"
        if not isinstance(top, dict):
            raise invalid_form(where, "Must be an object.", "MODEL_TYPE_CONVERT")
        kind = top.get("type")
        if kind == 1:
            inner = top.get("components") or []
            if len(inner) != 1 or not isinstance(inner[0], dict) or inner[0].get("type") != 4:
                raise invalid_form(
                    f"{where}.components",
                    "An action row in a modal holds exactly one text input.",
                    "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                )
            if not inner[0].get("label"):
                raise invalid_form(
                    f"{where}.components.0.label", "This field is required", "BASE_TYPE_REQUIRED"
                )
            fields.append(_modal_field(inner[0], str(inner[0]["label"]), wrapped=False))
        elif kind == 18:
            child = top.get("component")
            if not isinstance(child, dict):
                raise invalid_form(
                    f"{where}.component", "This field is required", "BASE_TYPE_REQUIRED"
                )
            fields.append(_modal_field(child, str(top.get("label") or ""), wrapped=True))
        elif kind != 10:  # a text display has nothing to fill in
            raise invalid_form(
                f"{where}.type",
                f"Component type {kind} is not allowed in a modal.",
                "COMPONENT_TYPE_INVALID",
            )
    ids = [f.custom_id for f in fields]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise invalid_form(
            "data.components",
            f"Component custom id cannot be duplicated: {duplicated}",
            "COMPONENT_CUSTOM_ID_DUPLICATED",
        )
    return FakeModal(
        custom_id=str(data.get("custom_id") or ""),
        title=str(data.get("title") or ""),
        components=components,
        fields=fields,
    )


def _modal_field(component: dict[str, Any], label: str, *, wrapped: bool) -> ModalField:
    kind = int(component.get("type") or 0)
    custom_id = component.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise invalid_form("custom_id", "This field is required", "BASE_TYPE_REQUIRED")
    if kind == 4:
        return ModalField(
            custom_id=custom_id,
            type=4,
            label=label,
            value=component.get("value"),
            style=int(component.get("style") or 1),
            required=bool(component.get("required", True)),
            min_length=component.get("min_length"),
            max_length=component.get("max_length"),
            placeholder=component.get("placeholder"),
            wrapped_in_label=wrapped,
        )
    options = tuple(
        str(o.get("value")) for o in component.get("options") or [] if isinstance(o, dict)
    )
    min_values = int(component.get("min_values", 1) or 0)
    return ModalField(
        custom_id=custom_id,
        type=kind,
        label=label,
        required=bool(component.get("required", True)) and min_values > 0,
        placeholder=component.get("placeholder"),
        options=options,
        min_values=min_values,
        max_values=int(component.get("max_values") or 1),
        wrapped_in_label=wrapped,
    )


async def _read_body(request: web.Request) -> tuple[Any, list[UploadedFile]]:
    """(JSON body or payload_json, uploaded files) of a request."""
    content_type = request.content_type
    if content_type == "multipart/form-data":
        payload: Any = None
        files: list[UploadedFile] = []
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            name = part.name or ""
            data = await part.read()
            if name == "payload_json":
                payload = _parse_json(bytes(data))
            elif part.filename is not None or name.startswith("file"):
                files.append(
                    UploadedFile(
                        field_name=name,
                        filename=part.filename or name,
                        content_type=part.headers.get("Content-Type"),
                        data=bytes(data),
                    )
                )
        return payload, files
    raw = await request.read()
    if not raw:
        return None, []
    if content_type == "application/json":
        return _parse_json(raw), []
    return None, []


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise DiscordError(400, 50109, "The request body contains invalid JSON.") from None
