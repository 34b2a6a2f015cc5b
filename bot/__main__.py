"""Launcher: `python -m bot` runs the bot; `python -m bot sync` forces a command sync and exits.

Loads `.env` (the real environment wins), validates settings (exit 2 with every problem listed,
no traceback), logs to stdout, then runs until stopped.

Start-up problems (Discord or the database out of reach, a DNS failure, a refused login) are
logged as one line each, never a traceback; so are discord.py's own gateway retries. Where
waiting can help (network, DNS, a database that is not up yet) the whole start is tried again
with exponential backoff; when the attempts run out the exit code is 1, so a supervisor may
restart later. Where waiting cannot help (a bad token, a bad URL, a refused database login) the
exit code is 2 at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
import discord
from dotenv import load_dotenv

from bot.config import Settings, mask_url_password
from bot.errors import ConfigError

if TYPE_CHECKING:
    from bot.discord_bot import AnimateBot

log = logging.getLogger("bot")

USAGE = "usage: python -m bot [sync]"

EXIT_GAVE_UP = 1
"""A start-up problem that waiting might fix persisted through every attempt."""
EXIT_CANNOT_HELP = 2
"""Configuration or a start-up problem that waiting cannot fix (token, URL, database login)."""


@dataclass(frozen=True)
class StartupRetry:
    """How long start-up keeps trying when waiting can help.

    The defaults wait 1, 2, 4, 8, 16, 30 and 30 s between 8 attempts: about 1.5 minutes, enough
    for a network or a database that comes up together with the bot.
    """

    attempts: int = 8
    first_delay: float = 1.0
    max_delay: float = 30.0

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return float(min(self.max_delay, self.first_delay * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class StartupProblem:
    """What went wrong, in one sentence for the operator, and whether waiting can help."""

    message: str
    transient: bool


class StartupFailed(Exception):
    """Start-up gave up; the message is the one line to log."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def configure_logging(level: str, gateway_url: str | None = None) -> None:
    # stdout only: the worker's platform collects it; files on an ephemeral disk would be lost.
    handler = logging.StreamHandler(sys.stdout)
    discord.utils.setup_logging(handler=handler, level=getattr(logging, level), root=True)
    # discord.py logs every gateway event at DEBUG; keep it at INFO even when we debug.
    logging.getLogger("discord").setLevel(max(logging.INFO, getattr(logging, level)))
    if gateway_url is not None:
        logging.getLogger("discord.client").addFilter(GatewayRetryInOneLine(gateway_url))
        # A sharded bot retries each shard's connection itself (discord.shard), likewise.
        logging.getLogger("discord.shard").addFilter(GatewayRetryInOneLine(gateway_url))


class GatewayRetryInOneLine(logging.Filter):
    """discord.py retries a lost gateway itself, with backoff, but logs each retry with a full
    traceback. A network problem gets one line with the reason instead."""

    def __init__(self, gateway_url: str) -> None:
        super().__init__()
        self.gateway_url = gateway_url

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        retrying = ("Attempting a reconnect", "Failed to connect for shard_id")
        if error is not None and str(record.msg).startswith(retrying):
            reason = explain_gateway_error(error, self.gateway_url)
            if reason is not None:
                record.msg = f"{record.getMessage()}. {reason}"
                record.args = ()
                record.exc_info = None
                record.exc_text = None
        return True


# --- explaining start-up failures ----------------------------------------------------------------


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and everything it wraps (SQLAlchemy's `.orig`, `__cause__`, `__context__`)."""
    found: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or any(current is seen for seen in found):
            continue
        found.append(current)
        orig = getattr(current, "orig", None)
        pending += [orig if isinstance(orig, BaseException) else None]
        pending += [current.__cause__, current.__context__]
    return found


def _os_reason(error: BaseException | None) -> str:
    """A few words for a connection error, without the exception's own text."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ConnectionResetError):
        return "connection reset"
    if isinstance(error, socket.gaierror):
        return "host name not found"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return "connection failed"


def explain_gateway_error(error: BaseException, gateway_url: str) -> str | None:
    """One sentence for a network failure on Discord's gateway; None for anything else."""
    url = mask_url_password(gateway_url)
    check = "Check the network connection, or DISCORD_GATEWAY_URL if you set it."
    if isinstance(error, aiohttp.ClientConnectorError):
        if isinstance(error.os_error, socket.gaierror):
            return f"Cannot look up the address of {error.host} (DNS) to reach {url}. {check}"
        reason = _os_reason(error.os_error)
        return f"Cannot reach the Discord gateway at {url} ({reason}). {check}"
    if isinstance(error, discord.ConnectionClosed):
        return f"The Discord gateway closed the connection (code {error.code})."
    if isinstance(error, aiohttp.ClientError | OSError | TimeoutError):
        return f"The connection to the Discord gateway at {url} failed ({_os_reason(error)})."
    return None  # anything else may be a bug: keep its traceback


def explain_discord_failure(exc: BaseException, settings: Settings) -> StartupProblem | None:
    """One line for a failure talking to Discord's REST API at start-up, or None if unknown."""
    url = mask_url_password(settings.discord_api_base_url)
    check = "Check the network connection, or DISCORD_API_BASE_URL if you set it."
    if isinstance(exc, discord.LoginFailure):
        return StartupProblem(
            "Discord rejected DISCORD_TOKEN. Check the token in your environment or .env.",
            transient=False,
        )
    if isinstance(exc, aiohttp.ClientSSLError):
        return StartupProblem(
            f"The secure connection to Discord at {url} failed (TLS certificate or handshake). "
            "Check DISCORD_API_BASE_URL and the machine's CA certificates.",
            transient=False,
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc, aiohttp.ClientConnectorDNSError) or isinstance(
            exc.os_error, socket.gaierror
        ):
            return StartupProblem(
                f"Cannot look up the address of {exc.host} (DNS) to reach Discord at {url}. "
                + check,
                transient=True,
            )
        return StartupProblem(
            f"Cannot reach Discord at {url} ({_os_reason(exc.os_error)}). " + check,
            transient=True,
        )
    if isinstance(exc, aiohttp.InvalidURL):
        return StartupProblem(f"DISCORD_API_BASE_URL {url!r} is not a usable URL.", transient=False)
    if isinstance(exc, aiohttp.ClientConnectionError | TimeoutError):
        reason = "no answer in time" if isinstance(exc, TimeoutError) else "connection lost"
        return StartupProblem(
            f"Discord at {url} did not answer ({reason}). " + check, transient=True
        )
    if isinstance(exc, discord.DiscordServerError):
        return StartupProblem(
            f"Discord at {url} answered with a server error (HTTP {exc.status}).", transient=True
        )
    if isinstance(exc, discord.HTTPException):
        detail = f": {exc.text[:120]}" if exc.text else ""
        return StartupProblem(
            f"Discord at {url} refused a start-up request with HTTP {exc.status}{detail}. "
            "Check DISCORD_API_BASE_URL and DEV_GUILD_ID, and that the bot was invited with "
            "the applications.commands scope.",
            transient=False,
        )
    return None


def explain_database_failure(exc: BaseException, settings: Settings) -> StartupProblem | None:
    """One line for a failure opening the job store, or None if unknown (a bug: traceback)."""
    url = settings.safe_database_url
    try:
        parts = urlsplit(settings.database_url)
        host, user = parts.hostname, parts.username
    except ValueError:
        host = user = None
    causes = _causes(exc)
    if settings.database_url.startswith("sqlite"):
        for cause in causes:
            if isinstance(cause, OSError | sqlite3.Error):
                what = _os_reason(cause) if isinstance(cause, OSError) else str(cause)[:120]
                return StartupProblem(
                    f"Cannot open the SQLite database {url} ({what}). Check that DATABASE_URL "
                    "names a file in a folder the bot may write to.",
                    transient=False,
                )
        return None
    for cause in causes:
        sqlstate = getattr(cause, "sqlstate", None)
        if not isinstance(sqlstate, str):
            continue
        if sqlstate == "28P01":
            return StartupProblem(
                f"The database at {url} refused the login: wrong password for user {user!r}. "
                "Check the password in DATABASE_URL.",
                transient=False,
            )
        if sqlstate.startswith("28"):
            return StartupProblem(
                f"The database at {url} refused the login for user {user!r} (unknown user or "
                "not allowed to connect). Check the user in DATABASE_URL.",
                transient=False,
            )
        if sqlstate == "3D000":
            return StartupProblem(
                f"The database named in DATABASE_URL ({url}) does not exist on that server.",
                transient=False,
            )
        if sqlstate in ("57P03", "53300") or sqlstate.startswith("08"):
            return StartupProblem(
                f"The database at {url} is not accepting connections yet (PostgreSQL error "
                f"{sqlstate}).",
                transient=True,
            )
        if sqlstate == "42501":
            return StartupProblem(
                f"The database user {user!r} at {url} may not create or change the bot's "
                "tables (permission denied). Grant it rights on the database's public schema.",
                transient=False,
            )
    for cause in causes:
        if isinstance(cause, socket.gaierror):
            return StartupProblem(
                f"Cannot look up the address of the database host {host} (DNS). "
                "Check the network, or the host in DATABASE_URL.",
                transient=True,
            )
        if isinstance(cause, OSError):
            return StartupProblem(
                f"Cannot reach the database at {url} ({_os_reason(cause)}). Check that the "
                "database server is running and DATABASE_URL names it.",
                transient=True,
            )
        if isinstance(cause, ValueError | OverflowError):
            return StartupProblem(
                f"DATABASE_URL ({url}) is not a usable database URL.", transient=False
            )
    return None


def explain_startup_failure(exc: BaseException, settings: Settings) -> StartupProblem | None:
    """One line for a known start-up failure; None for anything else (a bug keeps its traceback)."""
    from bot.discord_bot import DatabaseUnavailable

    if isinstance(exc, DatabaseUnavailable):
        return explain_database_failure(exc, settings)
    return explain_discord_failure(exc, settings)


# --- running -------------------------------------------------------------------------------------


async def serve(bot: AnimateBot) -> None:
    """Connect to the gateway and run until a stop signal or a crash of the bot itself."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = asyncio.create_task(bot.connect(), name="discord-bot")
    stopper = asyncio.create_task(stop.wait(), name="stop-signal")
    done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if stopper in done:
        log.info("stop signal received; shutting down")
        await bot.close()
    stopper.cancel()
    await runner  # re-raises a crash of the bot itself


async def start_once(settings: Settings, *, sync_only: bool) -> StartupProblem | None:
    """One whole start (log in, open the store, sync, serve); a known failure is returned.

    A fresh bot each time: a half-started one (sessions, store) is closed by `async with`.
    """
    from bot.discord_bot import build_bot

    bot = build_bot(settings, sync_mode="force" if sync_only else "auto")
    async with bot:
        try:
            await bot.login(settings.discord_token.reveal())  # setup_hook runs here
        except Exception as exc:
            problem = explain_startup_failure(exc, settings)
            if problem is None:
                raise
            return problem
        if not sync_only:
            try:
                await serve(bot)
            except Exception as exc:
                if bot.ws is not None:
                    raise  # it was connected: not a start-up failure
                # discord.py 2.7 crashes (AttributeError) retrying a first connection that
                # failed; the network error it was handling is in the exception's context.
                for cause in _causes(exc):
                    reason = explain_gateway_error(cause, settings.discord_gateway_url)
                    if reason is not None:
                        return StartupProblem(reason, transient=True)
                raise
    return None


async def run(settings: Settings, *, sync_only: bool, retry: StartupRetry | None = None) -> None:
    from bot.discord_bot import point_discord_at

    retry = retry or StartupRetry()
    point_discord_at(settings)
    attempt = 1
    while (problem := await start_once(settings, sync_only=sync_only)) is not None:
        if not problem.transient:
            raise StartupFailed(problem.message, EXIT_CANNOT_HELP)
        if attempt >= retry.attempts:
            plural = "s" if attempt != 1 else ""
            raise StartupFailed(
                f"{problem.message} Gave up after {attempt} attempt{plural}.", EXIT_GAVE_UP
            )
        delay = retry.delay_after(attempt)
        log.warning(
            "%s Trying again in %g s (attempt %d of %d).",
            problem.message,
            delay,
            attempt,
            retry.attempts,
        )
        await asyncio.sleep(delay)
        attempt += 1


def main(argv: list[str], *, retry: StartupRetry | None = None) -> int:
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
    configure_logging(settings.log_level, settings.discord_gateway_url)
    log.info("starting (model %s, database %s)", settings.default_model, settings.safe_database_url)
    # The bot's modules (discord.py, SQLAlchemy, Alembic, Pillow, PyAV) take ~2 s to import;
    # done here, before the event loop runs, rather than by run() with the loop held.
    import bot.discord_bot  # noqa: F401
    from bot.i18n import load_catalogues

    load_catalogues()
    # All of that lives as long as the process: out of the cyclic collector's full passes,
    # which would otherwise walk it while the bot sets up (bot.discord_bot freezes again then).
    gc.freeze()

    try:
        asyncio.run(run(settings, sync_only=argv == ["sync"], retry=retry))
    except StartupFailed as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
