"""Typed settings, read once from the environment (or any mapping) and validated together.

Nothing here reads `os.environ` at import time: the launcher builds `Settings.from_env(os.environ)`
after loading `.env`, and tests pass a plain dict.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from bot.catalog import CATALOG, DEFAULT_MODEL_ID, ModelSpec
from bot.errors import ConfigError

T = TypeVar("T")

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./data/animate.db"
# Where AI/ML API result videos are documented to live (aiml-contract §4, §8).
DEFAULT_VIDEO_URL_HOSTS: tuple[str, ...] = ("cdn.aimlapi.com",)


class Secret:
    """A string that never shows itself in `repr`, `str`, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    discord_token: Secret = field(repr=False)
    aimlapi_key: Secret = field(repr=False)
    aimlapi_base_url: str = "https://api.aimlapi.com"
    # Hosts (and their subdomains) besides AIMLAPI_BASE_URL's that may serve result videos.
    video_url_hosts: tuple[str, ...] = DEFAULT_VIDEO_URL_HOSTS
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)
    # PostgreSQL connections this process keeps open; more work at once waits its turn.
    database_pool_size: int = 10
    discord_api_base_url: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg/"
    dev_guild_id: int | None = None
    default_model: str = DEFAULT_MODEL_ID
    # 720p by default: Sora 2 Pro at 1080p costs 5/3 as much per second.
    default_resolution: str = "720p"
    default_duration: int = 4
    # How often the background loop looks for due work (seconds); the per-job schedule decides
    # when a job is actually polled.
    poll_tick_seconds: float = 2.0
    # "adaptive": few polls before the model's typical time, close ones after; "fixed": every
    # POLL_MIN_INTERVAL_SECONDS.
    poll_schedule: str = "adaptive"
    # Close polls, where videos usually finish, every 2 s (the loop's tick): half of all videos
    # are noticed within 2 s (bench/poll_schedule.py).
    poll_min_interval_seconds: float = 2.0
    poll_max_interval_seconds: float = 30.0
    job_timeout_seconds: float = 1200.0
    max_concurrent_polls: int = 8
    # Leases are renewed while their work runs, so a short one is safe and lets another worker
    # take over a dead process's jobs quickly.
    lease_seconds: float = 30.0
    # A submit whose answer was lost (crash, database away) is sent again only this long after
    # its worker's lease ran out: the provider has no idempotency key, so it may be paid twice.
    submit_in_flight_grace_seconds: float = 120.0
    max_concurrent_deliveries: int = 4
    # Each job's fitted picture is kept this long for the result buttons (Again, Edit prompt).
    image_retention_days: float = 30.0
    # How many times a clip may be extended (the chain then has MAX_EXTENDS + 1 clips).
    max_extends: int = 3
    # A download that has not finished by then (a stalled CDN) is given up and linked instead.
    download_timeout_seconds: float = 300.0
    max_active_jobs_per_user: int = 3
    # Spending limits in USD; 0 means no limit. Small on purpose: one default video (Sora 2 Pro,
    # 720p, 4 s) costs $1.20, and every limit can be raised once the bill is understood.
    member_daily_usd: float = 3.0
    member_monthly_usd: float = 20.0
    guild_monthly_usd: float = 50.0
    bot_monthly_usd: float = 100.0
    # Ask the member to confirm at or above this estimate (0: never ask).
    confirm_above_usd: float = 2.0
    confirm_timeout_seconds: float = 300.0
    cooldown_seconds: int = 30
    refund_failed_jobs: bool = True
    # USD per second by "model" or "model:resolution"; wins over the catalogue's prices.
    model_prices: Mapping[str, float] = field(default_factory=dict, hash=False)
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    min_image_side: int = 256
    max_video_bytes: int = 200 * 1024 * 1024
    http_timeout_seconds: float = 60.0
    log_level: str = "INFO"
    # Discord shards this process connects. None: one connection (a bot in fewer than 2,500
    # servers); "auto": as many as Discord recommends (discord.py's automatic sharding); a
    # number: that many in all, of which this process runs `shard_ids` (default: every one).
    shard_count: int | Literal["auto"] | None = None
    shard_ids: tuple[int, ...] | None = None
    # Prometheus /metrics and /healthz: off unless a port is set. Loopback by default: the
    # figures are operational detail, so exposing them beyond the machine is a choice.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    @property
    def default_model_spec(self) -> ModelSpec:
        return CATALOG[self.default_model]

    @property
    def safe_database_url(self) -> str:
        """The database URL with any password masked, for logs."""
        return mask_url_password(self.database_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from a mapping; raise one ConfigError listing every problem."""
        reader = _Reader(env)
        token = reader.required("DISCORD_TOKEN")
        key = reader.required("AIMLAPI_KEY")
        values: dict[str, Any] = {
            "aimlapi_base_url": reader.url(
                "AIMLAPI_BASE_URL", cls.aimlapi_base_url, ("http", "https")
            ),
            "video_url_hosts": reader.get("VIDEO_URL_HOSTS", cls.video_url_hosts, _host_suffixes),
            "database_url": reader.database_url("DATABASE_URL"),
            "database_pool_size": reader.get(
                "DATABASE_POOL_SIZE", cls.database_pool_size, _positive_int
            ),
            "discord_api_base_url": reader.url(
                "DISCORD_API_BASE_URL", cls.discord_api_base_url, ("http", "https")
            ),
            "discord_gateway_url": reader.url(
                "DISCORD_GATEWAY_URL", cls.discord_gateway_url, ("ws", "wss")
            ),
            "dev_guild_id": reader.optional("DEV_GUILD_ID", _snowflake),
            "default_model": reader.get("DEFAULT_MODEL", cls.default_model, _model_id),
            "default_resolution": reader.get("DEFAULT_RESOLUTION", cls.default_resolution, str),
            "default_duration": reader.get("DEFAULT_DURATION", cls.default_duration, _positive_int),
            "poll_tick_seconds": reader.get(
                "POLL_TICK_SECONDS", cls.poll_tick_seconds, _positive_float
            ),
            "poll_schedule": reader.get("POLL_SCHEDULE", cls.poll_schedule, _poll_schedule),
            "poll_min_interval_seconds": reader.get(
                "POLL_MIN_INTERVAL_SECONDS", cls.poll_min_interval_seconds, _positive_float
            ),
            "poll_max_interval_seconds": reader.get(
                "POLL_MAX_INTERVAL_SECONDS", cls.poll_max_interval_seconds, _positive_float
            ),
            "job_timeout_seconds": reader.get(
                "JOB_TIMEOUT_SECONDS", cls.job_timeout_seconds, _positive_float
            ),
            "max_concurrent_polls": reader.get(
                "MAX_CONCURRENT_POLLS", cls.max_concurrent_polls, _positive_int
            ),
            "lease_seconds": reader.get("LEASE_SECONDS", cls.lease_seconds, _lease_seconds),
            "submit_in_flight_grace_seconds": reader.get(
                "SUBMIT_IN_FLIGHT_GRACE_SECONDS",
                cls.submit_in_flight_grace_seconds,
                _positive_float,
            ),
            "image_retention_days": reader.get(
                "IMAGE_RETENTION_DAYS", cls.image_retention_days, _positive_float
            ),
            "max_extends": reader.get("MAX_EXTENDS", cls.max_extends, _positive_int),
            "max_concurrent_deliveries": reader.get(
                "MAX_CONCURRENT_DELIVERIES", cls.max_concurrent_deliveries, _positive_int
            ),
            "download_timeout_seconds": reader.get(
                "DOWNLOAD_TIMEOUT_SECONDS", cls.download_timeout_seconds, _positive_float
            ),
            "max_active_jobs_per_user": reader.get(
                "MAX_ACTIVE_JOBS_PER_USER", cls.max_active_jobs_per_user, _positive_int
            ),
            "member_daily_usd": reader.get("MEMBER_DAILY_USD", cls.member_daily_usd, _usd_limit),
            "member_monthly_usd": reader.get(
                "MEMBER_MONTHLY_USD", cls.member_monthly_usd, _usd_limit
            ),
            "guild_monthly_usd": reader.get("GUILD_MONTHLY_USD", cls.guild_monthly_usd, _usd_limit),
            "bot_monthly_usd": reader.get("BOT_MONTHLY_USD", cls.bot_monthly_usd, _usd_limit),
            "confirm_above_usd": reader.get("CONFIRM_ABOVE_USD", cls.confirm_above_usd, _usd_limit),
            "confirm_timeout_seconds": reader.get(
                "CONFIRM_TIMEOUT_SECONDS", cls.confirm_timeout_seconds, _positive_float
            ),
            "cooldown_seconds": reader.get(
                "COOLDOWN_SECONDS", cls.cooldown_seconds, _whole_seconds
            ),
            "refund_failed_jobs": reader.get("REFUND_FAILED_JOBS", cls.refund_failed_jobs, _flag),
            "model_prices": reader.get("MODEL_PRICES", _NO_PRICES, _model_prices),
            "max_image_bytes": reader.get("MAX_IMAGE_BYTES", cls.max_image_bytes, _positive_int),
            "max_image_pixels": reader.get("MAX_IMAGE_PIXELS", cls.max_image_pixels, _positive_int),
            "min_image_side": reader.get("MIN_IMAGE_SIDE", cls.min_image_side, _positive_int),
            "max_video_bytes": reader.get("MAX_VIDEO_BYTES", cls.max_video_bytes, _positive_int),
            "http_timeout_seconds": reader.get(
                "HTTP_TIMEOUT_SECONDS", cls.http_timeout_seconds, _positive_float
            ),
            "log_level": reader.get("LOG_LEVEL", cls.log_level, _log_level),
            "shard_count": reader.optional("SHARD_COUNT", _shard_count),
            "shard_ids": reader.optional("SHARD_IDS", _shard_ids),
            "metrics_port": reader.optional("METRICS_PORT", _port),
            "metrics_host": reader.get("METRICS_HOST", cls.metrics_host, _bind_address),
        }
        _check_model_defaults(reader, values)
        if values.get("poll_min_interval_seconds", 0) > values.get(
            "poll_max_interval_seconds", 1e9
        ):
            reader.problems.append(
                "POLL_MIN_INTERVAL_SECONDS must not be larger than POLL_MAX_INTERVAL_SECONDS"
            )
        _check_shards(reader, values)
        if reader.problems or token is None or key is None:
            raise ConfigError(reader.problems)
        return cls(discord_token=Secret(token), aimlapi_key=Secret(key), **values)


def mask_url_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


class _Reader:
    """Collects problems instead of stopping at the first one."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def _raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or not value.strip():
            return None
        return value.strip()

    def required(self, name: str) -> str | None:
        value = self._raw(name)
        if value is None:
            self.problems.append(f"{name} is required but not set")
        return value

    def get(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            self.problems.append(f"{name} {exc}")
            return default

    def optional(self, name: str, parse: Callable[[str], T]) -> T | None:
        raw = self._raw(name)
        if raw is None:
            return None
        try:
            return parse(raw)
        except ValueError as exc:
            self.problems.append(f"{name} {exc}")
            return None

    def url(self, name: str, default: str, schemes: tuple[str, ...]) -> str:
        def parse(raw: str) -> str:
            scheme, sep, rest = raw.partition("://")
            if not sep or scheme.lower() not in schemes or not rest:
                raise ValueError(
                    f"must be a {' or '.join(schemes)} URL, got {mask_url_password(raw)!r}"
                )
            return raw.rstrip("/") if scheme.lower() in ("http", "https") else raw

        return self.get(name, default, parse)

    def database_url(self, name: str) -> str:
        def parse(raw: str) -> str:
            scheme = raw.partition("://")[0].lower()
            if scheme in ("postgres", "postgresql", "postgresql+asyncpg"):
                return "postgresql+asyncpg://" + raw.partition("://")[2]
            if scheme in ("sqlite", "sqlite+aiosqlite"):
                return "sqlite+aiosqlite://" + raw.partition("://")[2]
            raise ValueError("must start with sqlite:// or postgres(ql)://")

        return self.get(name, DEFAULT_DATABASE_URL, parse)


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {value}")
    return value


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"must be a number, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"must be greater than 0, got {raw}")
    return value


MIN_LEASE_SECONDS = 3.0


def _lease_seconds(raw: str) -> float:
    value = _positive_float(raw)
    if value < MIN_LEASE_SECONDS:
        # Renewal happens every third of a lease; shorter would race the database's own latency.
        raise ValueError(f"must be at least {MIN_LEASE_SECONDS:.0f} seconds, got {raw}")
    return value


def _host_suffixes(raw: str) -> tuple[str, ...]:
    hosts: list[str] = []
    for entry in raw.split(","):
        host = entry.strip().lower().strip(".")
        if not host:
            continue
        labels = host.split(".")
        # Two labels at least: a bare "com" would let every .com site serve "videos".
        if len(labels) < 2 or labels[-1].isdigit() or not all(map(_is_dns_label, labels)):
            raise ValueError(
                f"must be comma-separated host names such as cdn.aimlapi.com, got {entry.strip()!r}"
            )
        hosts.append(host)
    if not hosts:
        raise ValueError("must name at least one host")
    return tuple(hosts)


def _is_dns_label(label: str) -> bool:
    return (
        0 < len(label) <= 63
        and label.isascii()
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isalnum() or c == "-" for c in label)
    )


def _port(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 65535:
        raise ValueError(f"must be a TCP port from 1 to 65535, got {raw!r}")
    return int(raw)


def _bind_address(raw: str) -> str:
    """An IP address to listen on (0.0.0.0 or :: for every interface), or a host name."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(raw))
    if raw.endswith(".") or not all(map(_is_dns_label, raw.split("."))):
        raise ValueError(f"must be an IP address such as 127.0.0.1 or 0.0.0.0, got {raw!r}")
    return raw.lower()


def _shard_count(raw: str) -> int | Literal["auto"]:
    if raw.lower() == "auto":
        return "auto"
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ValueError(f"must be a whole number of at least 1, or auto, got {raw!r}")
    return int(raw)


def _shard_ids(raw: str) -> tuple[int, ...]:
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    if not parts or not all(part.isascii() and part.isdigit() for part in parts):
        raise ValueError(f"must be shard numbers separated by commas, such as 0,1; got {raw!r}")
    ids = tuple(int(part) for part in parts)
    if len(set(ids)) != len(ids):
        raise ValueError(f"names a shard twice: {raw!r}")
    return ids


def _check_shards(reader: _Reader, values: dict[str, Any]) -> None:
    count, ids = values.get("shard_count"), values.get("shard_ids")
    if ids is None:
        return
    if count is None or count == "auto":
        reader.problems.append("SHARD_IDS needs SHARD_COUNT set to a number (the shards in all)")
    elif max(ids) >= count:
        reader.problems.append(
            f"SHARD_IDS must be below SHARD_COUNT ({count}): shards are numbered 0 to "
            f"{count - 1}, got {','.join(map(str, ids))}"
        )


def _snowflake(raw: str) -> int:
    if not raw.isdigit():
        raise ValueError(f"must be a numeric Discord id, got {raw!r}")
    return int(raw)


def _model_id(raw: str) -> str:
    if raw not in CATALOG:
        raise ValueError(f"is not a known model: {raw!r} (known: {', '.join(CATALOG)})")
    return raw


def _poll_schedule(raw: str) -> str:
    if raw not in ("adaptive", "fixed"):
        raise ValueError(f"must be adaptive or fixed, got {raw!r}")
    return raw


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {raw!r}")
    return level


def _check_model_defaults(reader: _Reader, values: dict[str, Any]) -> None:
    """The default resolution and duration must be valid for the default model."""
    spec = CATALOG[values["default_model"]]
    if values["default_resolution"] not in spec.resolutions:
        if "DEFAULT_RESOLUTION" in reader.env and reader.env["DEFAULT_RESOLUTION"].strip():
            reader.problems.append(
                f"DEFAULT_RESOLUTION {values['default_resolution']!r} is not offered by "
                f"{spec.id} (choose from {', '.join(spec.resolutions)})"
            )
        values["default_resolution"] = spec.default_resolution
    if values["default_duration"] not in spec.durations:
        if "DEFAULT_DURATION" in reader.env and reader.env["DEFAULT_DURATION"].strip():
            reader.problems.append(
                f"DEFAULT_DURATION {values['default_duration']} is not offered by {spec.id} "
                f"(choose from {', '.join(map(str, spec.durations))})"
            )
        values["default_duration"] = spec.default_duration


# --- spending settings ---------------------------------------------------------------------------

# Larger values are typos, not budgets: refusing them beats silently allowing any spend.
MAX_USD_SETTING = 100_000.0
MAX_USD_PER_SECOND = 100.0
_NO_PRICES: Mapping[str, float] = MappingProxyType({})


def _usd_limit(raw: str) -> float:
    try:
        value = float(raw.removeprefix("$"))
    except ValueError:
        raise ValueError(f"must be an amount in US dollars (0 = no limit), got {raw!r}") from None
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ValueError(f"must be 0 (no limit) or a positive amount in US dollars, got {raw!r}")
    if value > MAX_USD_SETTING:
        raise ValueError(f"must be at most {MAX_USD_SETTING:.0f} US dollars, got {raw!r}")
    return value


def _whole_seconds(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"must be a whole number of seconds, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"must be 0 (none) or more, got {value}")
    return value


def _flag(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def _model_prices(raw: str) -> Mapping[str, float]:
    """`model=usd_per_second` or `model:resolution=usd_per_second`, comma-separated."""
    prices: dict[str, float] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        key, sep, price_text = (text.strip() for text in item.partition("="))
        model_id, _, resolution = key.partition(":")
        spec = CATALOG.get(model_id)
        if not sep or spec is None:
            raise ValueError(
                f"entry {item!r} must be model=price or model:resolution=price with a "
                f"catalogue model id (known: {', '.join(CATALOG)})"
            )
        if resolution and resolution not in spec.resolutions:
            raise ValueError(
                f"entry {item!r}: {model_id} offers {', '.join(spec.resolutions)}, "
                f"not {resolution!r}"
            )
        try:
            price = float(price_text)
        except ValueError:
            raise ValueError(f"entry {item!r}: the price must be USD per second") from None
        if math.isnan(price) or not 0 <= price <= MAX_USD_PER_SECOND:
            raise ValueError(
                f"entry {item!r}: the price must be between 0 and {MAX_USD_PER_SECOND:.0f} "
                "USD per second"
            )
        prices[key] = price
    return MappingProxyType(prices)
