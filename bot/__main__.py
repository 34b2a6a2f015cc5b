"""Launcher: `python -m bot` runs the bot; `python -m bot sync` forces a command sync and exits.

Loads `.env` (the real environment wins), validates settings (exit 2 with every problem listed,
no traceback), logs to stdout, then runs until stopped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import discord
from dotenv import load_dotenv

from bot.config import Settings
from bot.errors import ConfigError

log = logging.getLogger("bot")

USAGE = "usage: python -m bot [sync]"


def configure_logging(level: str) -> None:
    # stdout only: the worker's platform collects it; files on an ephemeral disk would be lost.
    handler = logging.StreamHandler(sys.stdout)
    discord.utils.setup_logging(handler=handler, level=getattr(logging, level), root=True)
    # discord.py logs every gateway event at DEBUG; keep it at INFO even when we debug.
    logging.getLogger("discord").setLevel(max(logging.INFO, getattr(logging, level)))


async def run(settings: Settings, *, sync_only: bool) -> None:
    from bot.discord_bot import AnimateBot, point_discord_at

    point_discord_at(settings)
    bot = AnimateBot(settings, sync_mode="force" if sync_only else "auto")
    token = settings.discord_token.reveal()
    async with bot:
        if sync_only:
            await bot.login(token)  # setup_hook runs here and syncs
            return
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runner = asyncio.create_task(bot.start(token), name="discord-bot")
        stopper = asyncio.create_task(stop.wait(), name="stop-signal")
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            log.info("stop signal received; shutting down")
            await bot.close()
        stopper.cancel()
        await runner  # re-raises a crash of the bot itself


def main(argv: list[str]) -> int:
    if argv not in ([], ["sync"]):
        print(USAGE, file=sys.stderr)
        return 2
    # The working directory's .env, not one found by walking up from this file.
    load_dotenv(Path.cwd() / ".env", override=False)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    log.info("starting (model %s, database %s)", settings.default_model, settings.safe_database_url)
    try:
        asyncio.run(run(settings, sync_only=argv == ["sync"]))
    except discord.LoginFailure:
        log.error("Discord rejected DISCORD_TOKEN. Check the token in your environment or .env.")
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
