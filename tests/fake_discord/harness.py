"""Run a real discord.py bot against a :class:`FakeDiscord` inside a test."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import discord
import yarl

from .server import FakeDiscord


class _ErrorCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class BotRun:
    """A running bot: its ``start()`` task and the errors discord.py logged meanwhile."""

    bot: discord.Client
    task: asyncio.Task[None]
    logged_errors: list[logging.LogRecord] = field(default_factory=list)
    """ERROR records from the ``discord`` loggers (e.g. 'Ignoring exception in command')."""

    def check(self) -> None:
        """Raise if the bot's task has died."""
        if self.task.done() and not self.task.cancelled() and self.task.exception() is not None:
            raise AssertionError("the bot's start() task died") from self.task.exception()

    def error_messages(self) -> list[str]:
        """Logged errors with their exception, as text."""
        out = []
        for record in self.logged_errors:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += f": {record.exc_info[1]!r}"
            out.append(text)
        return out


@contextlib.asynccontextmanager
async def run_bot(
    bot: discord.Client,
    fake: FakeDiscord,
    *,
    ready_timeout: float = 10.0,
    close_timeout: float = 10.0,
) -> AsyncIterator[BotRun]:
    """Point discord.py at ``fake``, start ``bot`` and wait for on_ready; clean up on exit.

    The bot's ``start()`` task is watched: if it dies (say a KeyError while parsing a dispatch)
    its exception is raised here, and ``fake.wait_for`` fails at once instead of timing out.
    ``Route.BASE`` and ``DEFAULT_GATEWAY`` are restored afterwards.
    """
    saved_base = discord.http.Route.BASE
    saved_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fake.rest_base_url
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    collector = _ErrorCollector()
    discord_logger = logging.getLogger("discord")
    discord_logger.addHandler(collector)
    task: asyncio.Task[None] = asyncio.create_task(bot.start(fake.bot_token), name="fake-bot")
    run = BotRun(bot=bot, task=task, logged_errors=collector.records)
    fake.watch(task)
    try:
        await _wait_ready(bot, task, ready_timeout, fake)
        yield run
        run.check()
    finally:
        fake.unwatch(task)
        try:
            await asyncio.wait_for(bot.close(), timeout=close_timeout)
        finally:
            if not task.done():
                task.cancel()
            await asyncio.wait({task}, timeout=close_timeout)
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: raised above or reported by check()
            discord_logger.removeHandler(collector)
            discord.http.Route.BASE = saved_base
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved_gateway


async def _wait_ready(
    bot: discord.Client, task: asyncio.Task[None], limit: float, fake: FakeDiscord
) -> None:
    ready = asyncio.create_task(bot.wait_until_ready())
    try:
        done, _ = await asyncio.wait(
            {task, ready}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        if not ready.done():
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready
    if ready in done:
        return
    if task in done:
        exc = task.exception() if not task.cancelled() else None
        if exc is not None:
            raise exc
        raise AssertionError("the bot stopped before it was ready")
    raise AssertionError(f"the bot was not ready after {limit:.1f}s\n" + fake.summary())
