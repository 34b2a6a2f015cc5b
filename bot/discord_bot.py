"""The discord.py Bot: builds the core's resources in async code, loads the cogs, syncs commands
deliberately and closes everything in order. The only core module besides the launcher that
imports discord.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from typing import Any

import aiohttp
import discord
import yarl
from discord.ext import commands

from bot.config import Settings
from bot.guild_settings import BotDefaults, GuildSettings
from bot.metrics import (
    NO_METRICS,
    HealthChecks,
    Metrics,
    MetricsServer,
    database_answers,
    refresh_database_figures,
)
from bot.provider import ProviderClient
from bot.service import Clock, JobService
from bot.spending import Spending
from bot.store import JobStore
from cogs.language import CatalogTranslator

log = logging.getLogger(__name__)

# Explicit, so a typo fails loudly instead of running a bot without its command.
EXTENSIONS = ("cogs.animate", "cogs.results", "cogs.admin", "cogs.jobs")
COMMANDS_FINGERPRINT_KEY = "global_commands_fingerprint"


def point_discord_at(settings: Settings) -> None:
    """Honour DISCORD_API_BASE_URL / DISCORD_GATEWAY_URL (a proxy in front of Discord, or tests).

    discord.py reads both from class attributes; the interaction webhooks use the same Route.
    """
    discord.http.Route.BASE = settings.discord_api_base_url
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


class DatabaseUnavailable(Exception):
    """The job store could not be opened at start-up; ``__cause__`` says why."""


class AnimateBot(commands.Bot):
    service: JobService
    store: JobStore
    spending: Spending
    guild_settings: GuildSettings
    session: aiohttp.ClientSession

    def __init__(
        self,
        settings: Settings,
        *,
        sync_mode: str = "auto",
        clock: Clock | None = None,
        **options: Any,
    ) -> None:
        # No privileged intents: slash commands need none of them.
        intents = discord.Intents.none()
        intents.guilds = True
        options.setdefault("guild_ready_timeout", 2.0)
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            # Nobody is pinged unless a message explicitly allows it (only the requester).
            allowed_mentions=discord.AllowedMentions.none(),
            **options,
        )
        self.settings = settings
        self.sync_mode = sync_mode
        self._clock = clock
        self.metrics: Metrics = Metrics() if settings.metrics_port is not None else NO_METRICS
        self.metrics_server: MetricsServer | None = None

    async def setup_hook(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=15, sock_read=self.settings.http_timeout_seconds
        )
        self.session = aiohttp.ClientSession(timeout=timeout)
        try:
            self.store = await JobStore.open(
                self.settings.database_url, pool_size=self.settings.database_pool_size
            )
        except Exception as exc:
            # Marked, so the launcher can tell a database problem from a Discord one.
            raise DatabaseUnavailable(self.settings.safe_database_url) from exc
        provider = ProviderClient(
            self.session,
            base_url=self.settings.aimlapi_base_url,
            api_key=self.settings.aimlapi_key,
            video_hosts=self.settings.video_url_hosts,
            metrics=self.metrics,
        )
        self.service = JobService(
            settings=self.settings,
            store=self.store,
            provider=provider,
            clock=self._clock,
            metrics=self.metrics,
        )
        self.metrics.set_worker(self.service.worker_id)
        # Image fits run in processes of their own: started now, not by the first members.
        await self.service.fitter.start()
        defaults = BotDefaults.from_settings(self.settings)
        self.guild_settings = GuildSettings(self.store.engine, defaults)
        self.spending = Spending(
            self.store.engine, defaults, model_prices=self.settings.model_prices
        )
        # Command names, descriptions and choices in the members' languages (bot/locales).
        await self.tree.set_translator(CatalogTranslator())
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self.start_metrics_server()
        await self.sync_commands(force=self.sync_mode == "force")
        # Everything loaded so far (modules, commands, catalogues: ~120,000 objects) lives as
        # long as the process: keep it out of the cyclic collector's full passes, which
        # otherwise hold the event loop 70-270 ms each under load (bench/load.py).
        gc.freeze()

    # --- metrics and health (bot/metrics.py); the Discord-specific parts live here ----------------

    async def start_metrics_server(self) -> None:
        """Serve /metrics and /healthz when METRICS_PORT is set. A port that cannot be bound is
        logged and the bot runs on without it: posting videos matters more than being watched."""
        if self.settings.metrics_port is None:
            return
        server = MetricsServer(
            self.metrics,
            HealthChecks(
                gateway=self.gateway_problem,
                database=lambda: database_answers(self.store.engine),
            ),
            host=self.settings.metrics_host,
            port=self.settings.metrics_port,
            refresh=self._refresh_metrics,
        )
        try:
            await server.start()
        except OSError as exc:
            log.error(
                "metrics: cannot listen on %s:%s (%s); running without /metrics and /healthz",
                self.settings.metrics_host,
                self.settings.metrics_port,
                exc.strerror or type(exc).__name__,
            )
            return
        self.metrics_server = server

    def gateway_problem(self) -> str | None:
        """Why this process's Discord gateway connection is not usable, or None when it is."""
        if self.is_closed():
            return "the bot is shutting down"
        if not self.is_ready():
            return "not connected to the Discord gateway yet"
        if self.ws is None or not self.ws.open:
            return "the Discord gateway connection is down (reconnecting)"
        return None

    async def _refresh_metrics(self) -> None:
        self.metrics.set_gateway_latency(self.latency)
        now = self.service.clock.now()
        await refresh_database_figures(
            self.metrics, self.store.engine, self.spending.month_totals, now
        )

    async def sync_commands(self, *, force: bool = False) -> None:
        """Dev guild: every start (instant, cheap). Global: only when the definitions changed."""
        if self.settings.dev_guild_id is not None:
            guild = discord.Object(id=self.settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d command(s) to the dev guild %s", len(synced), guild.id)
            if not force:
                return
        fingerprint = await self.commands_fingerprint()
        if not force and await self.store.get_meta(COMMANDS_FINGERPRINT_KEY) == fingerprint:
            log.info("global commands unchanged since the last sync; not syncing")
            return
        synced = await self.tree.sync()
        await self.store.set_meta(COMMANDS_FINGERPRINT_KEY, fingerprint)
        log.info("synced %d global command(s)", len(synced))

    async def commands_fingerprint(self) -> str:
        """What a sync would send, translations included (a new translation is a change)."""
        translator = self.tree.translator
        commands_ = self.tree.get_commands()
        if translator is None:
            dicts = [command.to_dict(self.tree) for command in commands_]
        else:
            dicts = [
                await command.get_translated_payload(self.tree, translator) for command in commands_
            ]
        payload = sorted(dicts, key=lambda c: str(c.get("name")))
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    async def close(self) -> None:
        # Loops stop first (cogs unload), then the network session, then the store.
        for extension in tuple(self.extensions):
            try:
                await self.unload_extension(extension)
            except Exception:
                log.exception("failed to unload %s", extension)
        await super().close()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if hasattr(self, "session"):
            await self.session.close()
        if hasattr(self, "store"):
            await self.store.close()


class ShardedAnimateBot(AnimateBot, commands.AutoShardedBot):
    """The same bot on several gateway connections (Discord shards) in one process.

    Discord sends each server's interactions to the shard (guild_id >> 22) % shard_count, so
    the shards a process connects decide which servers it answers; the jobs in the database are
    shared, and any process may submit, poll and deliver any of them.
    """

    def gateway_problem(self) -> str | None:
        """Why this process's gateway connections are not usable, or None when all are up."""
        if self.is_closed():
            return "the bot is shutting down"
        if not self.is_ready():
            return "not connected to the Discord gateway yet"
        down = sorted(shard_id for shard_id, shard in self.shards.items() if shard.is_closed())
        if down:
            listed = ", ".join(map(str, down))
            return f"the Discord gateway connection of shard {listed} is down (reconnecting)"
        return None


def build_bot(settings: Settings, **options: Any) -> AnimateBot:
    """The bot for these settings: one gateway connection, or the shards SHARD_COUNT and
    SHARD_IDS name (SHARD_COUNT=auto: as many as Discord recommends, from GET /gateway/bot)."""
    if settings.shard_count is None:
        return AnimateBot(settings, **options)
    if settings.shard_count == "auto":
        return ShardedAnimateBot(settings, **options)
    shard_ids = settings.shard_ids or tuple(range(settings.shard_count))
    return ShardedAnimateBot(
        settings, shard_count=settings.shard_count, shard_ids=list(shard_ids), **options
    )
