"""The gateway WebSocket: HELLO, heartbeats, IDENTIFY/READY/GUILD_CREATE, RESUME and dispatches.

Frames are plain JSON text even when the client asks for ``compress=zlib-stream`` (discord.py
only inflates binary frames). Events are filtered by the intents the session identified with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .models import PRIVILEGED_INTENTS, new_session_id
from .world import World

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_MS = 41250

# Which intent an event needs (None: always delivered).
_GUILDS = 1 << 0
_GUILD_MEMBERS = 1 << 1
_GUILD_MESSAGES = 1 << 9
_DIRECT_MESSAGES = 1 << 12
_MESSAGE_EVENTS = frozenset({"MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE"})
_GUILD_EVENTS = frozenset(
    {
        "GUILD_CREATE",
        "CHANNEL_CREATE",
        "CHANNEL_UPDATE",
        "CHANNEL_DELETE",
        "THREAD_CREATE",
        "THREAD_UPDATE",
        "THREAD_DELETE",
        "GUILD_ROLE_CREATE",
        "GUILD_ROLE_UPDATE",
        "GUILD_ROLE_DELETE",
    }
)
_MEMBER_EVENTS = frozenset({"GUILD_MEMBER_ADD", "GUILD_MEMBER_UPDATE", "GUILD_MEMBER_REMOVE"})


def _required_intent(event: str, data: dict[str, Any]) -> int | None:
    if event in _MESSAGE_EVENTS:
        return _GUILD_MESSAGES if data.get("guild_id") else _DIRECT_MESSAGES
    if event in _GUILD_EVENTS:
        return _GUILDS
    if event in _MEMBER_EVENTS:
        return _GUILD_MEMBERS  # privileged: a bot without it never hears of role changes
    return None


@dataclass
class GatewaySession:
    """One WebSocket connection from a client."""

    ws: web.WebSocketResponse
    session_id: str | None = None
    seq: int = 0
    ready: bool = False
    intents: int = 0
    identify: dict[str, Any] | None = None
    resumed: bool = False
    closed: bool = False
    sent: list[dict[str, Any]] = field(default_factory=list)
    """Every payload sent to the client, in order."""
    received: list[dict[str, Any]] = field(default_factory=list)
    """Every payload received from the client, in order."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    async def _send(self, payload: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        self.sent.append(payload)
        try:
            await self.ws.send_str(json.dumps(payload))
        except (ConnectionError, RuntimeError) as exc:
            log.debug("gateway send failed: %s", exc)

    async def send_op(self, op: int, data: Any) -> None:
        """Send a non-dispatch opcode."""
        async with self.lock:
            await self._send({"op": op, "d": data, "s": None, "t": None})

    async def dispatch_many(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Send dispatches back to back (nothing else interleaves), with increasing ``s``."""
        async with self.lock:
            for event, data in events:
                self.seq += 1
                await self._send({"op": 0, "d": data, "s": self.seq, "t": event})

    def wants(self, event: str, data: dict[str, Any]) -> bool:
        """Whether the session's intents include this event."""
        needed = _required_intent(event, data)
        return needed is None or bool(self.intents & needed)

    @property
    def shard(self) -> tuple[int, int]:
        """``(shard_id, shard_count)`` from IDENTIFY; ``(0, 1)`` when it named none."""
        raw = (self.identify or {}).get("shard")
        if isinstance(raw, list) and len(raw) == 2:
            return int(raw[0]), int(raw[1])
        return 0, 1

    def owns(self, guild_id: int | None) -> bool:
        """Discord's rule: a guild's events go to shard ``(guild_id >> 22) % shard_count``;
        DMs go to shard 0."""
        shard_id, shard_count = self.shard
        if guild_id is None:
            return shard_id == 0
        return (guild_id >> 22) % max(shard_count, 1) == shard_id


def _guild_of(event: str, data: dict[str, Any]) -> int | None:
    raw = data.get("id") if event == "GUILD_CREATE" else data.get("guild_id")
    return int(raw) if raw is not None else None


class GatewayHub:
    """All gateway sessions over the fake's lifetime (bots may disconnect and come back)."""

    def __init__(self, world: World, *, token: str, url: Callable[[], str]) -> None:
        self._world = world
        self._token = token
        self._url = url
        self.sessions: list[GatewaySession] = []
        self.identifies: list[dict[str, Any]] = []
        """Every IDENTIFY ``d`` received (token included)."""
        self.resumes: list[dict[str, Any]] = []
        """Every RESUME ``d`` received."""
        self.allowed_privileged_intents = 0
        """Privileged intents enabled for the application; others close the socket with 4014."""
        self.recommended_shards = 1
        """What GET /gateway/bot recommends (what discord.py's automatic sharding uses)."""
        self._changed = asyncio.Event()

    @property
    def live(self) -> list[GatewaySession]:
        """Open sessions that completed IDENTIFY or RESUME."""
        return [s for s in self.sessions if s.ready and not s.closed and not s.ws.closed]

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The ``/gateway`` WebSocket endpoint."""
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        session = GatewaySession(ws=ws)
        self.sessions.append(session)
        await session.send_op(10, {"heartbeat_interval": HEARTBEAT_INTERVAL_MS, "_trace": []})
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await self._on_payload(session, json.loads(msg.data))
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            session.closed = True
            self._changed.set()
        return ws

    async def _on_payload(self, session: GatewaySession, payload: dict[str, Any]) -> None:
        session.received.append(payload)
        op = payload.get("op")
        data = payload.get("d")
        if op == 1:
            await session.send_op(11, None)
        elif op == 2:
            await self._identify(session, data or {})
        elif op == 6:
            await self._resume(session, data or {})
        elif op == 8:
            await self._request_members(session, data or {})
        elif op in (3, 4):
            return  # presence / voice state: nothing to do
        else:
            await session.ws.close(code=4001, message=b"Unknown opcode.")

    async def _identify(self, session: GatewaySession, data: dict[str, Any]) -> None:
        self.identifies.append(data)
        if data.get("token") != self._token:
            await session.ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = int(data.get("intents") or 0)
        if intents & PRIVILEGED_INTENTS & ~self.allowed_privileged_intents:
            await session.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        session.identify = data
        session.intents = intents
        session.session_id = new_session_id()
        world = self._world
        guilds = [g for g in world.guilds.values() if g.bot_member and session.owns(g.id)]
        ready: dict[str, Any] = {
            "v": 10,
            "user": world.bot_user_payload(),
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self._url(),
            "application": {"id": str(world.application_id), "flags": 1 << 19},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "_trace": ["fake-discord"],
        }
        if "shard" in data:
            ready["shard"] = data["shard"]
        events = [("READY", ready)]
        if intents & _GUILDS:
            events += [("GUILD_CREATE", world.guild_create_payload(g)) for g in guilds]
        session.ready = True
        await session.dispatch_many(events)
        self._changed.set()

    async def _resume(self, session: GatewaySession, data: dict[str, Any]) -> None:
        self.resumes.append(data)
        previous = next(
            (s for s in reversed(self.sessions) if s.session_id == data.get("session_id")), None
        )
        if data.get("token") != self._token or previous is None:
            await session.send_op(9, False)
            return
        previous.closed = True
        session.session_id = previous.session_id
        session.seq = previous.seq
        session.intents = previous.intents
        session.identify = previous.identify
        session.resumed = True
        session.ready = True
        await session.dispatch_many([("RESUMED", {"_trace": ["fake-discord"]})])
        self._changed.set()

    async def _request_members(self, session: GatewaySession, data: dict[str, Any]) -> None:
        guild_ids = data.get("guild_id")
        if not isinstance(guild_ids, list):
            guild_ids = [guild_ids]
        events = []
        for raw in guild_ids:
            guild = self._world.guilds.get(int(raw))
            if guild is None:
                continue
            chunk: dict[str, Any] = {
                "guild_id": str(guild.id),
                "members": [self._world.member_payload(guild, uid) for uid in guild.member_ids],
                "chunk_index": 0,
                "chunk_count": 1,
                "not_found": [],
            }
            if data.get("nonce") is not None:
                chunk["nonce"] = data["nonce"]
            events.append(("GUILD_MEMBERS_CHUNK", chunk))
        await session.dispatch_many(events)

    async def dispatch(self, event: str, data: dict[str, Any]) -> int:
        """Send an event to every live session that wants it and owns its guild's shard;
        returns how many got it."""
        delivered = 0
        guild_id = _guild_of(event, data)
        if event != "INTERACTION_CREATE" and not (
            self._world.bot_in_guild(guild_id) and self._world.bot_in_channel(data)
        ):
            return 0  # a server or group DM without the bot: only interactions reach it
        for session in self.live:
            if session.wants(event, data) and session.owns(guild_id):
                await session.dispatch_many([(event, data)])
                delivered += 1
        return delivered

    async def wait_until_live(self, within: float) -> GatewaySession:
        """The newest live session, waiting up to ``within`` seconds for one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            live = self.live
            if live:
                return live[-1]
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"no bot is connected to the fake gateway after {within:.1f}s "
                    f"({len(self.sessions)} connection(s) so far, "
                    f"{len(self.identifies)} IDENTIFY)"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.05))

    async def send_reconnect(self) -> None:
        """Ask every live client to reconnect (op 7); discord.py then RESUMEs."""
        for session in self.live:
            await session.send_op(7, None)

    async def close(self, code: int = 1001) -> None:
        """Close every open socket."""
        for session in self.sessions:
            if not session.ws.closed:
                with contextlib.suppress(Exception):
                    await session.ws.close(code=code, message=b"Fake Discord closing.")
            session.closed = True
