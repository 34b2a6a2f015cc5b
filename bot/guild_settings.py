"""Each server's own settings: limits, role allowances, access lists, defaults, pause, log channel.

Discord-free. A row holds only what a server's admins chose; NULL means "the bot's default", so
an operator who changes a default in the environment reaches every server that has not chosen
otherwise. Every change is validated first (a bad value changes nothing), applied in one
transaction with the row locked, and returned as a `SettingChange` that says who changed what
from what to what, for the audit line. Whether the actor may change settings, and whether a role
or channel belongs to the server, is the Discord layer's check; here everything is keyed by
guild id.

Money is in US dollars; 0 means "no limit". The bot-wide monthly budget (BOT_MONTHLY_USD) is the
operator's alone and cannot be changed from a server.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.catalog import CATALOG, ModelSpec
from bot.config import Settings
from bot.errors import InputRejected
from bot.i18n import ENGLISH, Message, Money, Text, _t, render
from bot.store import _SQLITE_IMMEDIATE, UTCDateTime, metadata, require_aware

T = TypeVar("T")

Shown = Message | Money
"""A setting's value as an admin reads it: words ("no limit"), or an amount in their format."""

# Larger values are typos (or tests of the bot), not budgets anyone means.
MAX_USD = 100_000.0
MAX_ACTIVE_LIMIT = 1_000
MAX_COOLDOWN_SECONDS = 7 * 24 * 3600

AccessKind = Literal["channel", "role"]

# --- schema (must match migration 0005) ----------------------------------------------------------

guild_settings = sa.Table(
    "guild_settings",
    metadata,
    sa.Column("guild_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("member_daily_usd", sa.Double(), nullable=True),
    sa.Column("member_monthly_usd", sa.Double(), nullable=True),
    sa.Column("guild_monthly_usd", sa.Double(), nullable=True),
    sa.Column("confirm_above_usd", sa.Double(), nullable=True),
    sa.Column("max_active", sa.Integer(), nullable=True),
    sa.Column("cooldown_seconds", sa.Integer(), nullable=True),
    sa.Column("default_model", sa.Text(), nullable=True),
    sa.Column("default_resolution", sa.Text(), nullable=True),
    sa.Column("default_duration", sa.Integer(), nullable=True),
    sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("log_channel_id", sa.BigInteger(), nullable=True),
    sa.Column("updated_by", sa.BigInteger(), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=True),
)

# A role's own allowance; NULL in a column means "the server's allowance" for that period.
role_limits = sa.Table(
    "role_limits",
    metadata,
    sa.Column("guild_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("role_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("member_daily_usd", sa.Double(), nullable=True),
    sa.Column("member_monthly_usd", sa.Double(), nullable=True),
    sa.Column("updated_by", sa.BigInteger(), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=True),
)

# Where /animate may be used (kind "channel") and by whom (kind "role").
# No rows of a kind: no restriction of that kind.
guild_access = sa.Table(
    "guild_access",
    metadata,
    sa.Column("guild_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("target_id", sa.BigInteger(), primary_key=True, autoincrement=False),
)


# --- errors --------------------------------------------------------------------------------------


class SettingRejected(InputRejected):
    """An admin's value cannot be used; nothing was changed. The reason is one line."""


class ServerPaused(InputRejected):
    def __init__(self) -> None:
        super().__init__(
            _t(
                "This server's admins have paused /animate. Videos already being made will "
                "still arrive."
            )
        )


# --- values --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BotDefaults:
    """The operator's settings that servers start from (and, for the bot budget, cannot change)."""

    member_daily_usd: float = 0.0
    member_monthly_usd: float = 0.0
    guild_monthly_usd: float = 0.0
    bot_monthly_usd: float = 0.0
    confirm_above_usd: float = 0.0
    max_active: int = 0
    cooldown_seconds: int = 0
    default_model: str = "openai/sora-2-pro-i2v"
    default_resolution: str = "720p"
    default_duration: int = 4

    @classmethod
    def from_settings(cls, settings: Settings) -> BotDefaults:
        return cls(
            member_daily_usd=settings.member_daily_usd,
            member_monthly_usd=settings.member_monthly_usd,
            guild_monthly_usd=settings.guild_monthly_usd,
            bot_monthly_usd=settings.bot_monthly_usd,
            confirm_above_usd=settings.confirm_above_usd,
            max_active=settings.max_active_jobs_per_user,
            cooldown_seconds=settings.cooldown_seconds,
            default_model=settings.default_model,
            default_resolution=settings.default_resolution,
            default_duration=settings.default_duration,
        )


@dataclass(frozen=True)
class Effective(Generic[T]):
    """A setting in force: its value, and whether it is the server's own or the bot's default."""

    value: T
    own: bool


@dataclass(frozen=True)
class RoleLimit:
    role_id: int
    member_daily_usd: float | None
    """None: the server's daily allowance applies to this role."""
    member_monthly_usd: float | None


@dataclass(frozen=True)
class AccessLists:
    channel_ids: frozenset[int] = frozenset()
    role_ids: frozenset[int] = frozenset()

    def refusal(
        self,
        *,
        channel_ids: Collection[int],
        role_ids: Collection[int],
        existing_channels: Collection[int] | None = None,
        existing_roles: Collection[int] | None = None,
    ) -> Message | None:
        """Why a member may not use /animate here, or None when they may.

        `channel_ids`: the channel and, in a thread, its parent. `existing_*`: the server's live
        channels and roles, when known; a deleted one simply drops out of its list (and a list
        left empty means no restriction).
        """
        channels = _live(self.channel_ids, existing_channels)
        roles = _live(self.role_ids, existing_roles)
        if channels and not channels & set(channel_ids):
            places = ", ".join(f"<#{c}>" for c in sorted(channels))
            return _t("In this server /animate can be used only in {places}.", places=places)
        if roles and not roles & set(role_ids):
            names = ", ".join(f"<@&{r}>" for r in sorted(roles))
            return _t(
                "In this server /animate is for members with one of these roles: {roles}.",
                roles=names,
            )
        return None


def _live(ids: frozenset[int], existing: Collection[int] | None) -> set[int]:
    return set(ids) if existing is None else {i for i in ids if i in existing}


@dataclass(frozen=True)
class GuildConfig:
    """Every setting in force in one server (or, with guild_id None, in DMs)."""

    guild_id: int | None
    member_daily_usd: Effective[float]
    member_monthly_usd: Effective[float]
    guild_monthly_usd: Effective[float]
    bot_monthly_usd: float
    confirm_above_usd: Effective[float]
    max_active: Effective[int]
    cooldown_seconds: Effective[int]
    default_model: Effective[str]
    default_resolution: Effective[str]
    default_duration: Effective[int]
    paused: bool = False
    log_channel_id: int | None = None
    role_limits: tuple[RoleLimit, ...] = ()
    access: AccessLists = field(default_factory=AccessLists)

    def allowance(self, role_ids: Iterable[int]) -> tuple[float, float]:
        """(daily, monthly) allowance in USD for a member with these roles; 0 = no limit.

        The most generous among the member's roles with an allowance, per period; the
        server's allowance when none of their roles has one.
        """
        held = set(role_ids)
        limits = [limit for limit in self.role_limits if limit.role_id in held]
        if not limits:
            return self.member_daily_usd.value, self.member_monthly_usd.value
        daily = _most_generous(
            self.member_daily_usd.value if r.member_daily_usd is None else r.member_daily_usd
            for r in limits
        )
        monthly = _most_generous(
            self.member_monthly_usd.value if r.member_monthly_usd is None else r.member_monthly_usd
            for r in limits
        )
        return daily, monthly

    def needs_confirmation(self, estimate_usd: float | None) -> bool:
        """Ask the member first: the estimate is at or above the threshold (0: never ask)."""
        threshold = self.confirm_above_usd.value
        return estimate_usd is not None and threshold > 0 and estimate_usd >= threshold

    @property
    def any_money_limit(self) -> bool:
        return any(
            value > 0
            for value in (
                self.member_daily_usd.value,
                self.member_monthly_usd.value,
                self.guild_monthly_usd.value if self.guild_id is not None else 0.0,
                self.bot_monthly_usd,
            )
        ) or any(
            (r.member_daily_usd or 0) > 0 or (r.member_monthly_usd or 0) > 0
            for r in self.role_limits
        )

    def lines(self) -> list[Message]:
        """One line per setting for `/animate-admin show`, each marked own or bot default."""
        out: list[Message] = []
        for name in _EFFECTIVE_NAMES:
            spec, setting = SETTINGS[name], getattr(self, name)
            value = spec.show(setting.value)
            if setting.own:
                out.append(_t("{setting}: {value} (this server)", setting=spec.label, value=value))
            else:
                out.append(_t("{setting}: {value} (bot default)", setting=spec.label, value=value))
        out.append(
            _t(
                "the bot's monthly budget (all servers): {value}",
                value=_usd_limit(self.bot_monthly_usd),
            )
        )
        out.append(_t("paused: yes") if self.paused else _t("paused: no"))
        if self.log_channel_id is None:
            out.append(_t("log channel: none"))
        else:
            out.append(_t("log channel: <#{channel}>", channel=self.log_channel_id))
        for limit in self.role_limits:
            out.append(
                _t(
                    "role <@&{role}>: daily {daily}, monthly {monthly}",
                    role=limit.role_id,
                    daily=_role_usd(limit.member_daily_usd),
                    monthly=_role_usd(limit.member_monthly_usd),
                )
            )
        channels: Message = ", ".join(f"<#{c}>" for c in sorted(self.access.channel_ids))
        roles: Message = ", ".join(f"<@&{r}>" for r in sorted(self.access.role_ids))
        out.append(
            _t(
                "/animate allowed in: {channels}; for: {roles}",
                channels=channels or _t("all"),
                roles=roles or _t("everyone"),
            )
        )
        return out


def _most_generous(values: Iterable[float]) -> float:
    collected = list(values)
    return 0.0 if any(v <= 0 for v in collected) else max(collected)


def _usd(value: float) -> Money:
    # Whole cents, as settings have always been shown.
    return Money(round(max(value, 0.0), 2))


def _usd_limit(value: float) -> Shown:
    return _t("no limit") if value <= 0 else _usd(value)


def _role_usd(value: float | None) -> Shown:
    return _t("server's") if value is None else _usd_limit(value)


@dataclass(frozen=True)
class SettingChange:
    """One change, for the audit line: who changed what from what to what."""

    guild_id: int
    actor_id: int
    setting: Message
    before: Shown
    after: Shown

    @property
    def changed(self) -> bool:
        # Compared as shown: the same words in one language are the same in every other.
        return render(self.before, ENGLISH) != render(self.after, ENGLISH)

    def describe(self) -> Text:
        # A user mention for the log channel; the Discord layer sends it with pings disabled.
        if not self.changed:
            return _t(
                "<@{actor}> left {setting} at {after}.",
                actor=self.actor_id,
                setting=self.setting,
                after=self.after,
            )
        return _t(
            "<@{actor}> changed {setting} from {before} to {after}.",
            actor=self.actor_id,
            setting=self.setting,
            before=self.before,
            after=self.after,
        )


# --- setting definitions and validation ----------------------------------------------------------


@dataclass(frozen=True)
class _SettingSpec:
    label: Message
    kind: Literal["usd", "count", "seconds", "model", "resolution", "duration", "flag", "channel"]

    def show(self, value: Any) -> Shown:
        if value is None:
            return _t("none")
        if self.kind == "usd":
            return _usd_limit(float(value))
        if self.kind == "count":
            return _t("no limit") if value <= 0 else str(value)
        if self.kind == "seconds":
            return _t("none") if value <= 0 else _t("{seconds} s", seconds=value)
        if self.kind == "duration":
            return _t("{seconds} s", seconds=value)
        if self.kind == "flag":
            return _t("yes") if value else _t("no")
        if self.kind == "channel":
            return f"<#{value}>"
        return str(value)


SETTINGS: Mapping[str, _SettingSpec] = {
    "member_daily_usd": _SettingSpec(_t("the member daily allowance"), "usd"),
    "member_monthly_usd": _SettingSpec(_t("the member monthly allowance"), "usd"),
    "guild_monthly_usd": _SettingSpec(_t("this server's monthly budget"), "usd"),
    "confirm_above_usd": _SettingSpec(_t("ask to confirm at or above"), "usd"),
    "max_active": _SettingSpec(_t("unfinished videos per member"), "count"),
    "cooldown_seconds": _SettingSpec(_t("the wait between a member's requests"), "seconds"),
    "default_model": _SettingSpec(_t("the default model"), "model"),
    "default_resolution": _SettingSpec(_t("the default resolution"), "resolution"),
    "default_duration": _SettingSpec(_t("the default duration"), "duration"),
    "paused": _SettingSpec(_t("paused"), "flag"),
    "log_channel_id": _SettingSpec(_t("the log channel"), "channel"),
}
# Settings with a bot default behind them (the rest are the server's alone).
_EFFECTIVE_NAMES = (
    "member_daily_usd",
    "member_monthly_usd",
    "guild_monthly_usd",
    "confirm_above_usd",
    "max_active",
    "cooldown_seconds",
    "default_model",
    "default_resolution",
    "default_duration",
)


def validate_usd(label: Message, value: float | None) -> float | None:
    """None or negative: back to the default (None); 0: no limit; NaN, inf, huge: refused."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingRejected(_t("{setting} must be an amount in US dollars.", setting=label))
    if math.isnan(value) or math.isinf(value):
        raise SettingRejected(
            _t(
                "{setting} must be an amount in US dollars, not {value}.",
                setting=label,
                value=str(value),
            )
        )
    if value < 0:
        return None
    if value > MAX_USD:
        raise SettingRejected(
            _t(
                "{amount} is not a sensible {setting}; the most accepted is {most}.",
                # Babel cannot format amounts beyond ~1e26; an absurd one reads fine as 1e+300.
                amount=_usd(value) if value <= MAX_USD * 1e6 else f"${value:.6g}",
                setting=label,
                most=_usd(MAX_USD),
            )
        )
    return float(value)


def _validate_whole(label: Message, value: object, maximum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingRejected(_t("{setting} must be a whole number.", setting=label))
    if value < 0:
        return None
    if value > maximum:
        raise SettingRejected(
            _t(
                "{value} is too large for {setting}; the most accepted is {most}.",
                value=value,
                setting=label,
                most=maximum,
            )
        )
    return value


def _validate(name: str, value: object) -> object:
    spec = SETTINGS[name]
    if spec.kind == "usd":
        return validate_usd(spec.label, value)  # type: ignore[arg-type]
    if spec.kind == "count":
        return _validate_whole(spec.label, value, MAX_ACTIVE_LIMIT)
    if spec.kind == "seconds":
        return _validate_whole(spec.label, value, MAX_COOLDOWN_SECONDS)
    if spec.kind == "model":
        if value is None:
            return None
        if not isinstance(value, str) or value not in CATALOG:
            raise SettingRejected(_t("{model} is not a model this bot offers.", model=repr(value)))
        return value
    if spec.kind == "resolution":
        if value is None:
            return None
        if not isinstance(value, str):
            raise SettingRejected(_t("The resolution must be one of the model's, such as 720p."))
        return value
    if spec.kind == "duration":
        return _validate_whole(spec.label, value, 3600)
    if spec.kind == "flag":
        if not isinstance(value, bool):
            raise SettingRejected(_t("{setting} must be yes or no.", setting=spec.label))
        return value
    # channel
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SettingRejected(_t("The log channel must be a channel of this server."))
    return value


# --- reading -------------------------------------------------------------------------------------


def _effective(own: T | None, default: T) -> Effective[T]:
    return Effective(default, False) if own is None else Effective(own, True)


def build_config(
    defaults: BotDefaults,
    guild_id: int | None,
    row: Mapping[str, Any] | None,
    roles: Iterable[RoleLimit] = (),
    access: AccessLists | None = None,
) -> GuildConfig:
    """The settings in force from a guild_settings row (None: no row, or DMs) and the defaults."""
    own: Mapping[str, Any] = row or {}
    model = _effective(own.get("default_model"), defaults.default_model)
    if model.value not in CATALOG:  # a model the catalogue dropped since it was chosen
        model = Effective(defaults.default_model, False)
    spec = CATALOG[model.value]
    resolution = _effective(own.get("default_resolution"), defaults.default_resolution)
    if resolution.value not in spec.resolutions:
        resolution = Effective(spec.default_resolution, False)
    duration = _effective(own.get("default_duration"), defaults.default_duration)
    if duration.value not in spec.durations:
        duration = Effective(spec.default_duration, False)
    return GuildConfig(
        guild_id=guild_id,
        member_daily_usd=_effective(own.get("member_daily_usd"), defaults.member_daily_usd),
        member_monthly_usd=_effective(own.get("member_monthly_usd"), defaults.member_monthly_usd),
        guild_monthly_usd=_effective(own.get("guild_monthly_usd"), defaults.guild_monthly_usd),
        bot_monthly_usd=defaults.bot_monthly_usd,
        confirm_above_usd=_effective(own.get("confirm_above_usd"), defaults.confirm_above_usd),
        max_active=_effective(own.get("max_active"), defaults.max_active),
        cooldown_seconds=_effective(own.get("cooldown_seconds"), defaults.cooldown_seconds),
        default_model=model,
        default_resolution=resolution,
        default_duration=duration,
        paused=bool(own.get("paused", False)),
        log_channel_id=own.get("log_channel_id"),
        role_limits=tuple(roles),
        access=access or AccessLists(),
    )


# Built once: building a statement costs more than running it, and reserving runs these.
_GUILD_ROW = sa.select(guild_settings).where(guild_settings.c.guild_id == sa.bindparam("guild_id"))
_ROLE_ROWS = (
    sa.select(role_limits)
    .where(role_limits.c.guild_id == sa.bindparam("guild_id"))
    .order_by(role_limits.c.role_id)
)
_SOME_ROLE_ROWS = _ROLE_ROWS.where(
    role_limits.c.role_id.in_(sa.bindparam("role_ids", expanding=True))
)


async def load_config(
    conn: AsyncConnection,
    guild_id: int | None,
    defaults: BotDefaults,
    *,
    only_roles: Collection[int] | None = None,
    with_access: bool = True,
) -> GuildConfig:
    """A server's settings, read on the caller's connection (inside its transaction, if any).

    `only_roles`: read just these roles' allowances (a member's, when reserving: fewer rows).
    `with_access=False` skips the access lists (not needed to reserve money).
    """
    if guild_id is None:
        return build_config(defaults, None, None)
    row = (await conn.execute(_GUILD_ROW, {"guild_id": guild_id})).mappings().one_or_none()
    roles: list[RoleLimit] = []
    if only_roles is None or only_roles:
        if only_roles is None:
            role_rows = await conn.execute(_ROLE_ROWS, {"guild_id": guild_id})
        else:
            params = {"guild_id": guild_id, "role_ids": list(only_roles)}
            role_rows = await conn.execute(_SOME_ROLE_ROWS, params)
        roles = [
            RoleLimit(r["role_id"], r["member_daily_usd"], r["member_monthly_usd"])
            for r in role_rows.mappings()
        ]
    access = AccessLists()
    if with_access:
        access_rows = (
            await conn.execute(
                sa.select(guild_access.c.kind, guild_access.c.target_id).where(
                    guild_access.c.guild_id == guild_id
                )
            )
        ).all()
        access = AccessLists(
            channel_ids=frozenset(t for k, t in access_rows if k == "channel"),
            role_ids=frozenset(t for k, t in access_rows if k == "role"),
        )
    return build_config(defaults, guild_id, None if row is None else dict(row), roles, access)


# --- the service ---------------------------------------------------------------------------------


class GuildSettings:
    """Read and change server settings. Each method is one short transaction."""

    def __init__(self, engine: AsyncEngine, defaults: BotDefaults) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        self.defaults = defaults
        # SQLite: write transactions take the write lock up front (see bot.store).
        self._write_engine = engine.execution_options(**{_SQLITE_IMMEDIATE: True})

    async def get(self, guild_id: int | None) -> GuildConfig:
        async with self._engine.connect() as conn:
            return await load_config(conn, guild_id, self.defaults)

    async def update(
        self, guild_id: int, changes: Mapping[str, object], *, actor_id: int, now: datetime
    ) -> list[SettingChange]:
        """Apply several settings at once, all or nothing.

        Values: None or a negative number returns a setting to the bot's default; 0 means no
        limit. A value that cannot be right (NaN, infinite, absurdly large, unknown model, a
        resolution or duration the default model does not offer) raises SettingRejected and
        changes nothing. Changing the default model drops the server's default resolution and
        duration if the new model does not offer them (reported as changes too).
        """
        now = require_aware(now, "now")
        unknown = sorted(set(changes) - set(SETTINGS))
        if unknown:
            raise TypeError(f"not guild settings: {', '.join(unknown)}")
        values = {name: _validate(name, value) for name, value in changes.items()}
        async with self._write_engine.begin() as conn:
            before_row = await self._locked_row(conn, guild_id)
            after_row = {**before_row, **values}
            _check_choices(after_row, values, self.defaults)
            before = build_config(self.defaults, guild_id, before_row)
            after = build_config(self.defaults, guild_id, after_row)
            await conn.execute(
                guild_settings.update()
                .where(guild_settings.c.guild_id == guild_id)
                .values(
                    {name: after_row[name] for name in SETTINGS}
                    | {"updated_by": actor_id, "updated_at": now}
                )
            )
        touched = [n for n in SETTINGS if n in values or after_row[n] != before_row[n]]
        return [
            SettingChange(
                guild_id,
                actor_id,
                SETTINGS[name].label,
                _shown(before, name),
                _shown(after, name),
            )
            for name in touched
        ]

    async def set_role_limit(
        self,
        guild_id: int,
        role_id: int,
        *,
        member_daily_usd: float | None,
        member_monthly_usd: float | None,
        actor_id: int,
        now: datetime,
    ) -> SettingChange:
        """A role's own allowance (None or negative: the server's allowance for that period)."""
        now = require_aware(now, "now")
        daily = validate_usd(_t("a role's daily allowance"), member_daily_usd)
        monthly = validate_usd(_t("a role's monthly allowance"), member_monthly_usd)
        key = sa.and_(role_limits.c.guild_id == guild_id, role_limits.c.role_id == role_id)
        async with self._write_engine.begin() as conn:
            old = (
                (await conn.execute(sa.select(role_limits).where(key).with_for_update()))
                .mappings()
                .one_or_none()
            )
            values = {
                "member_daily_usd": daily,
                "member_monthly_usd": monthly,
                "updated_by": actor_id,
                "updated_at": now,
            }
            if old is None:
                await conn.execute(
                    role_limits.insert().values(guild_id=guild_id, role_id=role_id, **values)
                )
            else:
                await conn.execute(role_limits.update().where(key).values(values))
        return SettingChange(
            guild_id,
            actor_id,
            _t("the allowance of <@&{role}>", role=role_id),
            _role_text(None if old is None else dict(old)),
            _role_text({"member_daily_usd": daily, "member_monthly_usd": monthly}),
        )

    async def remove_role_limit(
        self, guild_id: int, role_id: int, *, actor_id: int
    ) -> SettingChange:
        key = sa.and_(role_limits.c.guild_id == guild_id, role_limits.c.role_id == role_id)
        async with self._write_engine.begin() as conn:
            old = (
                (await conn.execute(sa.select(role_limits).where(key).with_for_update()))
                .mappings()
                .one_or_none()
            )
            await conn.execute(role_limits.delete().where(key))
        return SettingChange(
            guild_id,
            actor_id,
            _t("the allowance of <@&{role}>", role=role_id),
            _role_text(None if old is None else dict(old)),
            _t("none"),
        )

    async def set_access(
        self, guild_id: int, kind: AccessKind, target_id: int, *, allowed: bool, actor_id: int
    ) -> SettingChange:
        """Add a channel or role to (allowed=True) or remove it from the server's access list."""
        if kind not in ("channel", "role"):
            raise ValueError(f"kind must be channel or role, got {kind!r}")
        key = sa.and_(
            guild_access.c.guild_id == guild_id,
            guild_access.c.kind == kind,
            guild_access.c.target_id == target_id,
        )
        async with self._write_engine.begin() as conn:
            before = await self._access(conn, guild_id, kind)
            if allowed:
                await conn.execute(
                    _insert(self._dialect, guild_access)
                    .values(guild_id=guild_id, kind=kind, target_id=target_id)
                    .on_conflict_do_nothing()
                )
            else:
                await conn.execute(guild_access.delete().where(key))
            after = await self._access(conn, guild_id, kind)
        label = _access_label(kind)
        return SettingChange(
            guild_id, actor_id, label, _access_text(kind, before), _access_text(kind, after)
        )

    async def clear_access(
        self, guild_id: int, kind: AccessKind, *, actor_id: int
    ) -> SettingChange:
        """Lift a restriction: every channel (kind "channel") or everyone (kind "role")."""
        async with self._write_engine.begin() as conn:
            before = await self._access(conn, guild_id, kind)
            await conn.execute(
                guild_access.delete().where(
                    guild_access.c.guild_id == guild_id, guild_access.c.kind == kind
                )
            )
        label = _access_label(kind)
        return SettingChange(
            guild_id, actor_id, label, _access_text(kind, before), _access_text(kind, frozenset())
        )

    async def log_channels(self) -> dict[int, int]:
        """Every server that has a log channel: guild id → channel id (bot-wide notices)."""
        query = sa.select(guild_settings.c.guild_id, guild_settings.c.log_channel_id).where(
            guild_settings.c.log_channel_id.is_not(None)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {int(guild_id): int(channel_id) for guild_id, channel_id in rows}

    async def forget(
        self, guild_id: int, *, channel_id: int | None = None, role_id: int | None = None
    ) -> None:
        """A channel or role was deleted on Discord: drop it from every list of the server."""
        async with self._write_engine.begin() as conn:
            if channel_id is not None:
                await conn.execute(
                    guild_access.delete().where(
                        guild_access.c.guild_id == guild_id,
                        guild_access.c.kind == "channel",
                        guild_access.c.target_id == channel_id,
                    )
                )
                await conn.execute(
                    guild_settings.update()
                    .where(
                        guild_settings.c.guild_id == guild_id,
                        guild_settings.c.log_channel_id == channel_id,
                    )
                    .values(log_channel_id=None)
                )
            if role_id is not None:
                await conn.execute(
                    guild_access.delete().where(
                        guild_access.c.guild_id == guild_id,
                        guild_access.c.kind == "role",
                        guild_access.c.target_id == role_id,
                    )
                )
                await conn.execute(
                    role_limits.delete().where(
                        role_limits.c.guild_id == guild_id, role_limits.c.role_id == role_id
                    )
                )

    # --- helpers ----------------------------------------------------------------------------------

    async def _locked_row(self, conn: AsyncConnection, guild_id: int) -> dict[str, Any]:
        """The guild's row, created empty if missing, locked until commit (PostgreSQL)."""
        await conn.execute(
            _insert(self._dialect, guild_settings)
            .values(guild_id=guild_id)
            .on_conflict_do_nothing()
        )
        row = (
            (
                await conn.execute(
                    sa.select(guild_settings)
                    .where(guild_settings.c.guild_id == guild_id)
                    .with_for_update()
                )
            )
            .mappings()
            .one()
        )
        return {name: row[name] for name in SETTINGS}

    async def _access(
        self, conn: AsyncConnection, guild_id: int, kind: AccessKind
    ) -> frozenset[int]:
        rows = await conn.execute(
            sa.select(guild_access.c.target_id).where(
                guild_access.c.guild_id == guild_id, guild_access.c.kind == kind
            )
        )
        return frozenset(int(v) for v in rows.scalars())


def _check_choices(
    row: dict[str, Any], changed: Mapping[str, object], defaults: BotDefaults
) -> None:
    """Resolution and duration must suit the server's model; an older choice that no longer
    does is dropped when the model changes, a new one is refused."""
    model_id = row["default_model"] or defaults.default_model
    spec: ModelSpec = CATALOG.get(model_id) or CATALOG[defaults.default_model]
    resolution = row["default_resolution"]
    if resolution is not None and resolution not in spec.resolutions:
        if "default_resolution" in changed:
            raise SettingRejected(
                _t(
                    "{model} does not offer {resolution}; choose {choices}.",
                    model=spec.label,
                    resolution=resolution,
                    choices=", ".join(spec.resolutions),
                )
            )
        row["default_resolution"] = None
    duration = row["default_duration"]
    if duration is not None and duration not in spec.durations:
        if "default_duration" in changed:
            raise SettingRejected(
                _t(
                    "{model} makes videos of {choices} seconds, not {duration}.",
                    model=spec.label,
                    choices=", ".join(map(str, spec.durations)),
                    duration=duration,
                )
            )
        row["default_duration"] = None


def _shown(config: GuildConfig, name: str) -> Shown:
    spec = SETTINGS[name]
    if name in _EFFECTIVE_NAMES:
        setting: Effective[Any] = getattr(config, name)
        text = spec.show(setting.value)
        return text if setting.own else _t("{value} (bot default)", value=text)
    return spec.show(getattr(config, name))


def _role_text(row: Mapping[str, Any] | None) -> Message:
    if row is None:
        return _t("none")
    return _t(
        "daily {daily}, monthly {monthly}",
        daily=_role_usd(row["member_daily_usd"]),
        monthly=_role_usd(row["member_monthly_usd"]),
    )


def _access_label(kind: AccessKind) -> Text:
    if kind == "channel":
        return _t("the channels where /animate works")
    return _t("who may use /animate")


def _access_text(kind: AccessKind, ids: frozenset[int]) -> Message:
    if not ids:
        return _t("every channel") if kind == "channel" else _t("everyone")
    mark = "#" if kind == "channel" else "@&"
    return ", ".join(f"<{mark}{i}>" for i in sorted(ids))


def _insert(dialect: str, table: sa.Table) -> Any:
    """INSERT with ON CONFLICT support for the backend."""
    if dialect == "postgresql":
        return pg_dialect.insert(table)
    return sqlite_dialect.insert(table)
