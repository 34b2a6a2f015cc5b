"""Money: estimates, a ledger, limits checked and reserved atomically, settlement and refunds.

Discord-free. Every figure the bot shows is a sum over the `ledger` table; nothing is kept only
in memory. A request's life in the ledger:

    reserve (+estimate) ──► settle (+actual − estimate)      the provider charged
                       └──► release (−estimate)             nothing was charged, or refunded

So the sum of a reservation's rows is what it costs right now: the estimate while the video is
being made, the real cost once settled, 0 once released. Each reservation is closed at most
once: a unique index on `reservation_id` admits one settle-or-release row, so a retried settle,
a settle racing a release, or two workers doing either, record exactly one.

Every row carries the reservation's time in `spent_at`, and the day and month sums (UTC) filter
on it, so a video accepted at 23:59 and settled at 00:01 counts on the day it was accepted.

Race-freedom: every write to the ledger runs in one transaction that first takes a database
lock — SQLite: BEGIN IMMEDIATE (the database's single write lock); PostgreSQL: one
transaction-scoped advisory lock (`pg_advisory_xact_lock`). Under it `reserve` reads the server's
settings, the member's unfinished jobs and last request, and the day/month sums, then inserts the
reservation. Two requests racing — in one process or in several sharing the database — are
therefore checked one after the other, and a limit that fits only one admits only one.
Amounts are stored as whole micro-dollars, so sums are exact on every backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.catalog import ModelSpec
from bot.errors import InputRejected, TooManyActiveJobs
from bot.guild_settings import BotDefaults, GuildConfig, ServerPaused, load_config
from bot.i18n import Message, Money, Text, _t
from bot.jobs import ACTIVE_STATES, Outcome
from bot.store import (
    _ID,
    _SQLITE_IMMEDIATE,
    StrEnumType,
    UTCDateTime,
    jobs,
    meta,
    metadata,
    require_aware,
)

log = logging.getLogger(__name__)

MICROS_PER_USD = 1_000_000

# Any constant works; it only has to be the same in every process sharing the database (and
# differ from bot.store's migration lock).
_PG_LEDGER_LOCK = 0x616E696D6C656467  # "animledg"

PAUSE_KEY = "submissions_paused_until"


class LedgerKind(StrEnum):
    RESERVE = "reserve"
    SETTLE = "settle"
    RELEASE = "release"


# --- schema (must match migration 0005) ----------------------------------------------------------

ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("kind", StrEnumType(LedgerKind), nullable=False),
    # Set on settle and release rows: the reserve row they close. Unique: closed at most once.
    sa.Column("reservation_id", sa.BigInteger(), nullable=True),
    sa.Column("job_id", sa.BigInteger(), nullable=True),
    sa.Column("requester_id", sa.BigInteger(), nullable=False),
    sa.Column("guild_id", sa.BigInteger(), nullable=True),
    sa.Column("amount_micro_usd", sa.BigInteger(), nullable=False),
    sa.Column("spent_at", UTCDateTime(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("note", sa.Text(), nullable=True),
    sa.UniqueConstraint("reservation_id", name="uq_ledger_reservation_id"),
    # The sums read only these indexes (the amount is in them): the whole bot this month, one
    # member, one server.
    sa.Index("ix_ledger_spent_at", "spent_at", "amount_micro_usd"),
    sa.Index("ix_ledger_requester_id_spent_at", "requester_id", "spent_at", "amount_micro_usd"),
    sa.Index("ix_ledger_guild_id_spent_at", "guild_id", "spent_at", "amount_micro_usd"),
    sa.Index("ix_ledger_job_id", "job_id"),
)


# --- money ---------------------------------------------------------------------------------------


def to_micros(usd: float) -> int:
    return round(usd * MICROS_PER_USD)


def to_usd(micros: int) -> float:
    return micros / MICROS_PER_USD


def money(usd: float) -> Money:
    """An amount for user text, as the bot has always shown it: whole cents, never negative
    (so float sums such as 0.1 + 0.2 do not show their last digits)."""
    return Money(round(max(usd, 0.0), 2))


def estimate_usd(
    spec: ModelSpec, duration: int, resolution: str, model_prices: Mapping[str, float]
) -> float | None:
    """Price per second × seconds, or None when nobody knows the price.

    MODEL_PRICES (`model:resolution`, then `model`) wins over the catalogue, so an operator can
    correct a price that changed as well as add one the catalogue lacks.
    """
    for key in (f"{spec.id}:{resolution}", spec.id):
        if key in model_prices:
            return round(model_prices[key] * duration, 6)
    return spec.estimate_usd(duration=duration, resolution=resolution)


def unix_time(moment: datetime) -> int:
    """The value of a `<t:{ts}:R>` placeholder (the markup itself stays in the message)."""
    return int(moment.timestamp())


def day_start(now: datetime) -> datetime:
    return require_aware(now).replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: datetime) -> datetime:
    return day_start(now).replace(day=1)


def next_day(now: datetime) -> datetime:
    return day_start(now) + timedelta(days=1)


def next_month(now: datetime) -> datetime:
    start = month_start(now)
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


# --- errors (InputRejected: the existing mapping shows the reason, nothing was spent) ------------


class LimitReached(InputRejected):
    """The estimate does not fit a spending limit."""

    def __init__(
        self,
        *,
        limit: str,
        label: Message,
        left_usd: float,
        estimate_usd: float,
        resets_at: datetime,
    ) -> None:
        self.limit = limit
        self.label = label
        self.left_usd = left_usd
        self.estimate_usd = estimate_usd
        self.resets_at = resets_at
        super().__init__(
            _limit_refusal(limit, money(estimate_usd), money(left_usd), unix_time(resets_at))
        )


def _limit_refusal(limit: str, estimate: Money, left: Money, resets: int) -> Text:
    # One whole sentence per limit: translators need the sentence, not a noun to slot in.
    if limit == "member_daily":
        return _t(
            "This video would cost about {estimate}, but your daily allowance has {left} "
            "left. It resets <t:{resets}:R> (days and months run on UTC). Nothing was spent.",
            estimate=estimate,
            left=left,
            resets=resets,
        )
    if limit == "member_monthly":
        return _t(
            "This video would cost about {estimate}, but your monthly allowance has {left} "
            "left. It resets <t:{resets}:R> (days and months run on UTC). Nothing was spent.",
            estimate=estimate,
            left=left,
            resets=resets,
        )
    if limit == "guild_monthly":
        return _t(
            "This video would cost about {estimate}, but this server's monthly budget has "
            "{left} left. It resets <t:{resets}:R> (days and months run on UTC). "
            "Nothing was spent.",
            estimate=estimate,
            left=left,
            resets=resets,
        )
    return _t(
        "This video would cost about {estimate}, but the bot's monthly budget has {left} "
        "left. It resets <t:{resets}:R> (days and months run on UTC). Nothing was spent.",
        estimate=estimate,
        left=left,
        resets=resets,
    )


class PriceUnknown(InputRejected):
    def __init__(self, model_label: Message, resolution: Message) -> None:
        self.model_label = model_label
        super().__init__(
            _t(
                "The bot does not know what {model} at {resolution} costs, and spending "
                "limits are on, so it cannot be used here. Choose another model, or ask the "
                "bot's owner to set its price (MODEL_PRICES). Nothing was spent.",
                model=model_label,
                resolution=resolution,
            )
        )


class CooldownActive(InputRejected):
    def __init__(self, ready_at: datetime, cooldown_seconds: int) -> None:
        self.ready_at = ready_at
        super().__init__(
            _t(
                "Please wait {seconds} s between videos; you can start the next one "
                "<t:{ready}:R>. Nothing was spent.",
                seconds=cooldown_seconds,
                ready=unix_time(ready_at),
            )
        )


class SubmissionsPaused(InputRejected):
    def __init__(self, until: datetime) -> None:
        self.until = until
        super().__init__(
            _t(
                "The bot's video service account is out of credits, so new videos are paused "
                "until <t:{until}:R>. Videos already being made will still arrive.",
                until=unix_time(until),
            )
        )


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reservation:
    id: int
    requester_id: int
    guild_id: int | None
    amount_usd: float
    job_id: int | None
    created_at: datetime


@dataclass(frozen=True)
class LimitStatus:
    """One money limit as a member sees it."""

    key: str
    """member_daily, member_monthly, guild_monthly or bot_monthly."""
    label: Message
    """Plain words: "your daily allowance", "this server's monthly budget", … (translatable)."""
    limit_usd: float
    """0: no limit."""
    spent_usd: float
    """Settled costs plus what is held for videos in progress."""
    resets_at: datetime

    @property
    def left_usd(self) -> float | None:
        """None when there is no limit."""
        return None if self.limit_usd <= 0 else max(0.0, self.limit_usd - self.spent_usd)


@dataclass(frozen=True)
class Usage:
    member_today_usd: float
    member_month_usd: float
    guild_month_usd: float | None
    """None in DMs."""
    bot_month_usd: float


# --- the service ---------------------------------------------------------------------------------


class Spending:
    """Reserve, settle, release and sum money; pause submissions when credits run out.

    `unlinked_grace_seconds`: how long a reservation without a job (the request is still being
    fitted and recorded) counts as an unfinished video for `max_active`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        defaults: BotDefaults,
        *,
        model_prices: Mapping[str, float] | None = None,
        unlinked_grace_seconds: float = 300.0,
    ) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        self.defaults = defaults
        self.model_prices: Mapping[str, float] = dict(model_prices or {})
        self.unlinked_grace = timedelta(seconds=unlinked_grace_seconds)
        # SQLite: write transactions take the write lock up front (see bot.store).
        self._write_engine = engine.execution_options(**{_SQLITE_IMMEDIATE: True})
        # Not for correctness (the database lock is that, across processes): this process's
        # own contenders wait here, cheaply and in order, instead of each holding a pooled
        # connection while waiting for the database lock (PostgreSQL), or sleeping in SQLite's
        # polling busy handler (up to 100 ms a turn). SQLite queues every write, PostgreSQL
        # only the locked ones.
        self._locked_queue = asyncio.Lock()
        self._sqlite = self._dialect == "sqlite"

    def estimate(self, spec: ModelSpec, duration: int, resolution: str) -> float | None:
        return estimate_usd(spec, duration, resolution, self.model_prices)

    # --- reserving ------------------------------------------------------------------------------

    async def reserve(
        self,
        *,
        requester_id: int,
        guild_id: int | None,
        estimate_usd: float | None,
        now: datetime,
        role_ids: Collection[int] = (),
        model_label: Message | None = None,
        resolution: str = "",
        job_id: int | None = None,
        note: str | None = None,
    ) -> Reservation:
        """Check every limit and hold the estimate, in one locked transaction.

        Refuses (an InputRejected subclass, nothing recorded) when submissions are paused (out
        of credits, or the server's admins paused /animate), the member's cooldown has not
        passed, they have `max_active` unfinished videos, the price is unknown while a money
        limit applies, or the estimate does not fit any one of: the member's daily and monthly
        allowance (most generous role, else the server's, else the bot's), the server's monthly
        budget, the bot's monthly budget. In DMs (guild_id None) only the member and bot limits
        apply. 0 means no limit.

        The server's settings are read in the same transaction, just before the lock on
        PostgreSQL: a change an admin commits at that very instant applies from the next request.
        """
        now = require_aware(now, "now")
        if estimate_usd is not None and not (math.isfinite(estimate_usd) and estimate_usd >= 0):
            raise ValueError(f"estimate_usd must be a finite amount >= 0, got {estimate_usd}")
        amount = 0 if estimate_usd is None else to_micros(estimate_usd)
        async with self._locked_queue, self._write_engine.begin() as conn:
            # Read before the lock on PostgreSQL (SQLite already holds it): the settings in
            # force when the request arrived.
            config = await load_config(
                conn, guild_id, self.defaults, only_roles=role_ids, with_access=False
            )
            if config.paused:
                raise ServerPaused()
            limits = _money_limits(config, role_ids)
            cooldown = config.cooldown_seconds.value
            await self._lock(conn)
            figures = await _figures(
                conn,
                requester_id=requester_id,
                guild_id=guild_id,
                now=now,
                pending_since=now - self.unlinked_grace,
                accepted_since=now - timedelta(seconds=cooldown) if cooldown > 0 else None,
                sums={key for key, limit in limits.items() if limit > 0},
            )
            paused_until = _pause_time(figures.paused_until, now)
            if paused_until is not None:
                raise SubmissionsPaused(paused_until)
            if cooldown > 0 and figures.last_accepted is not None:
                ready_at = figures.last_accepted + timedelta(seconds=cooldown)
                if now < ready_at:
                    raise CooldownActive(ready_at, cooldown)
            max_active = config.max_active.value
            if max_active > 0 and figures.active_jobs + figures.pending >= max_active:
                raise TooManyActiveJobs(max_active)
            if estimate_usd is None and any(limit > 0 for limit in limits.values()):
                raise PriceUnknown(
                    model_label if model_label is not None else _t("this model"),
                    resolution or _t("this resolution"),
                )
            _check_fits(_statuses(figures, limits, now), amount)
            row = {
                "kind": LedgerKind.RESERVE,
                "reservation_id": None,
                "job_id": job_id,
                "requester_id": requester_id,
                "guild_id": guild_id,
                "amount_micro_usd": amount,
                "spent_at": now,
                "created_at": now,
                "note": note,
            }
            inserted = (await conn.execute(_INSERT_LEDGER, row)).inserted_primary_key
            if not inserted:
                raise RuntimeError("the reservation's id could not be read back")
        return Reservation(int(inserted[0]), requester_id, guild_id, to_usd(amount), job_id, now)

    async def attach(self, reservation_id: int, job_id: int) -> None:
        """Link a reservation made before the job row existed to that job."""
        async with self._queue(), self._write_engine.begin() as conn:
            await conn.execute(
                ledger.update()
                .where(
                    sa.or_(ledger.c.id == reservation_id, ledger.c.reservation_id == reservation_id)
                )
                .values(job_id=job_id)
            )

    # --- closing --------------------------------------------------------------------------------

    async def settle(
        self,
        reservation_id: int,
        actual_usd: float | None,
        *,
        now: datetime,
        note: str | None = None,
    ) -> bool:
        """Replace the estimate with the provider's real cost (None: keep the estimate).

        True if this call closed the reservation; False if it was already settled or released
        (or does not exist), in which case nothing changes.
        """
        if actual_usd is not None and not (math.isfinite(actual_usd) and actual_usd >= 0):
            log.warning("reservation %s: ignoring reported cost %r", reservation_id, actual_usd)
            actual_usd = None
        return await self._close(reservation_id, LedgerKind.SETTLE, actual_usd, now, note)

    async def release(self, reservation_id: int, *, now: datetime, note: str | None = None) -> bool:
        """Give the whole estimate back (nothing was charged, or the job is refunded)."""
        return await self._close(reservation_id, LedgerKind.RELEASE, None, now, note)

    async def reservation_for_job(self, job_id: int) -> Reservation | None:
        query = (
            sa.select(ledger)
            .where(ledger.c.job_id == job_id, ledger.c.kind == LedgerKind.RESERVE)
            .order_by(ledger.c.id.desc())
            .limit(1)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().one_or_none()
        return None if row is None else _reservation(dict(row))

    async def settle_job(
        self, job_id: int, actual_usd: float | None, *, now: datetime, note: str | None = None
    ) -> bool:
        reservation = await self.reservation_for_job(job_id)
        if reservation is None:
            return False
        return await self.settle(reservation.id, actual_usd, now=now, note=note)

    async def release_job(self, job_id: int, *, now: datetime, note: str | None = None) -> bool:
        reservation = await self.reservation_for_job(job_id)
        if reservation is None:
            return False
        return await self.release(reservation.id, now=now, note=note)

    async def reconcile(self, *, now: datetime, refund_failed_jobs: bool, limit: int = 100) -> int:
        """Close the reservations of every job whose outcome is known; returns how many.

        Safe to run on every background pass and from several workers (closing is exactly-once),
        so a crash between a job ending and its settlement is repaired on the next pass:
        a video → settled at the provider's cost (the estimate if none was reported); never at
        the provider (no provider id) → released; failed or timed out → released when
        `refund_failed_jobs`, else settled like a video.
        """
        query = (
            sa.select(ledger.c.id, jobs.c.outcome, jobs.c.cost_usd, jobs.c.provider_job_id)
            .select_from(ledger.join(jobs, jobs.c.id == ledger.c.job_id))
            .where(
                ledger.c.kind == LedgerKind.RESERVE,
                ~_closed(ledger.c.id),
                jobs.c.outcome.is_not(None),
            )
            .order_by(ledger.c.id)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        closed = 0
        for reservation_id, outcome, cost_usd, provider_job_id in rows:
            if provider_job_id is None:
                done = await self.release(
                    reservation_id, now=now, note="never reached the provider"
                )
            elif outcome not in (Outcome.VIDEO, Outcome.CANCELLED) and refund_failed_jobs:
                # (A job cancelled after the provider had it may still be charged: kept.)
                done = await self.release(reservation_id, now=now, note=f"refund: {outcome}")
            else:
                done = await self.settle(reservation_id, cost_usd, now=now, note=str(outcome))
            closed += done
        return closed

    async def release_unlinked(self, *, now: datetime, older_than_seconds: float) -> int:
        """Release reservations never linked to a job (the process died between reserving and
        recording) once they are older than `older_than_seconds`; returns how many."""
        now = require_aware(now, "now")
        cutoff = now - timedelta(seconds=older_than_seconds)
        query = sa.select(ledger.c.id).where(
            ledger.c.kind == LedgerKind.RESERVE,
            ledger.c.job_id.is_(None),
            ledger.c.created_at < cutoff,
            ~_closed(ledger.c.id),
        )
        async with self._engine.connect() as conn:
            ids = (await conn.execute(query)).scalars().all()
        released = 0
        for reservation_id in ids:
            released += await self.release(reservation_id, now=now, note="never recorded")
        return released

    # --- figures --------------------------------------------------------------------------------

    async def usage(self, *, requester_id: int, guild_id: int | None, now: datetime) -> Usage:
        async with self._engine.connect() as conn:
            figures = await _figures(
                conn, requester_id=requester_id, guild_id=guild_id, now=now, sums=_ALL_SUMS
            )
        return Usage(
            member_today_usd=to_usd(figures.member_daily),
            member_month_usd=to_usd(figures.member_monthly),
            guild_month_usd=None if guild_id is None else to_usd(figures.guild_monthly),
            bot_month_usd=to_usd(figures.bot_monthly),
        )

    async def limits(
        self,
        *,
        requester_id: int,
        guild_id: int | None,
        now: datetime,
        role_ids: Collection[int] = (),
    ) -> list[LimitStatus]:
        """Every money limit that applies to this member here, with what is spent and left."""
        async with self._engine.connect() as conn:
            config = await load_config(conn, guild_id, self.defaults)
            figures = await _figures(
                conn, requester_id=requester_id, guild_id=guild_id, now=now, sums=_ALL_SUMS
            )
        return _statuses(figures, _money_limits(config, role_ids), now)

    async def top_spenders(
        self, *, guild_id: int, now: datetime, limit: int = 10
    ) -> list[tuple[int, float]]:
        """(member id, USD this month) in this server, biggest first."""
        total = sa.func.sum(ledger.c.amount_micro_usd)
        query = (
            sa.select(ledger.c.requester_id, total)
            .where(ledger.c.guild_id == guild_id, ledger.c.spent_at >= month_start(now))
            .group_by(ledger.c.requester_id)
            .having(total > 0)
            .order_by(total.desc(), ledger.c.requester_id)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(int(member), to_usd(int(micros))) for member, micros in rows]

    async def month_totals(self, now: datetime) -> tuple[float, float]:
        """(held, settled) USD of the whole bot for reservations made this UTC month: held is
        what unfinished videos reserve, settled what finished ones cost (released ones: 0).
        Their sum is what BOT_MONTHLY_USD is checked against."""
        reserve = ledger.alias("reserve")
        closer = ledger.alias("closer")
        amount = reserve.c.amount_micro_usd
        held = sa.func.sum(sa.case((closer.c.id.is_(None), amount), else_=0))
        settled = sa.func.sum(
            sa.case(
                (closer.c.kind == LedgerKind.SETTLE, amount + closer.c.amount_micro_usd), else_=0
            )
        )
        query = (
            sa.select(sa.func.coalesce(held, 0), sa.func.coalesce(settled, 0))
            .select_from(reserve.outerjoin(closer, closer.c.reservation_id == reserve.c.id))
            .where(
                reserve.c.kind == LedgerKind.RESERVE,
                reserve.c.spent_at >= month_start(require_aware(now, "now")),
            )
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).one()
        return to_usd(int(row[0])), to_usd(int(row[1]))

    # --- out-of-credits pause -------------------------------------------------------------------

    async def pause_submissions(self, until: datetime, *, now: datetime) -> bool:
        """Pause new submissions bot-wide until `until`.

        True only for the call that started the pause (none was in force), so of many jobs and
        workers hitting "out of credits" at once exactly one announces it. A later `until`
        extends a running pause without a second announcement.
        """
        until = require_aware(until, "until")
        now = require_aware(now, "now")
        async with self._locked_queue, self._write_engine.begin() as conn:
            await self._lock(conn)
            current = _pause_time(await _pause_value(conn), now)
            if current is not None and current >= until:
                return False
            await conn.execute(
                _upsert(self._dialect, meta, {"key": PAUSE_KEY, "value": until.isoformat()}, "key")
            )
        return current is None

    async def resume_submissions(self) -> None:
        async with self._queue(), self._write_engine.begin() as conn:
            await conn.execute(meta.delete().where(meta.c.key == PAUSE_KEY))

    async def submissions_paused(self, now: datetime) -> datetime | None:
        """Until when new submissions are paused, or None."""
        async with self._engine.connect() as conn:
            return _pause_time(await _pause_value(conn), require_aware(now, "now"))

    # --- internals ------------------------------------------------------------------------------

    def _queue(self) -> contextlib.AbstractAsyncContextManager[object]:
        """Where an unlocked write waits its turn: SQLite has one writer at a time anyway."""
        return self._locked_queue if self._sqlite else contextlib.nullcontext()

    async def _lock(self, conn: AsyncConnection) -> None:
        # SQLite: the transaction began with BEGIN IMMEDIATE, which already is the lock.
        if self._dialect == "postgresql":
            await conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LEDGER_LOCK}
            )

    async def _close(
        self,
        reservation_id: int,
        kind: LedgerKind,
        actual_usd: float | None,
        now: datetime,
        note: str | None,
    ) -> bool:
        # No ledger lock: the unique reservation_id is what makes closing exactly-once, and a
        # close only ever records money already spent or given back.
        now = require_aware(now, "now")
        query = sa.select(ledger, _closed(ledger.c.id).label("closed")).where(
            ledger.c.id == reservation_id, ledger.c.kind == LedgerKind.RESERVE
        )
        try:
            async with self._queue(), self._write_engine.begin() as conn:
                row = (await conn.execute(query)).mappings().one_or_none()
                if row is None:
                    log.warning("no reservation %s to %s", reservation_id, kind)
                    return False
                if row["closed"]:
                    return False
                reserved = int(row["amount_micro_usd"])
                if kind == LedgerKind.RELEASE:
                    delta = -reserved
                else:
                    delta = 0 if actual_usd is None else to_micros(actual_usd) - reserved
                await conn.execute(
                    ledger.insert().values(
                        kind=kind,
                        reservation_id=reservation_id,
                        job_id=row["job_id"],
                        requester_id=row["requester_id"],
                        guild_id=row["guild_id"],
                        amount_micro_usd=delta,
                        spent_at=row["spent_at"],
                        created_at=now,
                        note=note,
                    )
                )
        except sa.exc.IntegrityError:
            return False  # another worker closed it between our check and our insert
        return True


# A statement built once: building one costs more than running it.
_INSERT_LEDGER = ledger.insert()

# --- queries and checks --------------------------------------------------------------------------

_ALL_SUMS = frozenset({"member_daily", "member_monthly", "guild_monthly", "bot_monthly"})


@dataclass(frozen=True)
class _Figures:
    paused_until: str | None
    last_accepted: datetime | None
    active_jobs: int
    pending: int
    member_daily: int
    member_monthly: int
    guild_monthly: int
    bot_monthly: int


def _closed(reservation: sa.ColumnElement[Any]) -> sa.Exists:
    """A settle or release row closes this reservation."""
    closer = sa.alias(ledger, "closer")
    return sa.exists().where(closer.c.reservation_id == reservation)


def _released(reservation: sa.ColumnElement[Any]) -> sa.Exists:
    closer = sa.alias(ledger, "released")
    return sa.exists().where(
        closer.c.reservation_id == reservation, closer.c.kind == LedgerKind.RELEASE
    )


async def _figures(
    conn: AsyncConnection,
    *,
    requester_id: int,
    guild_id: int | None,
    now: datetime,
    sums: Collection[str],
    pending_since: datetime | None = None,
    accepted_since: datetime | None = None,
) -> _Figures:
    """Everything one reservation checks, in one statement (one snapshot, one round trip).

    Only the sums in `sums` are computed (a limit of 0 needs none); the others read 0.
    """
    now = require_aware(now, "now")
    query = _figures_query(
        frozenset(sums), with_guild=guild_id is not None, with_cooldown=accepted_since is not None
    )
    params = {
        "requester_id": requester_id,
        "guild_id": guild_id,
        "day": day_start(now),
        "month": month_start(now),
        "pending_since": pending_since or now,
        "accepted_since": accepted_since or now,
    }
    row = (await conn.execute(query, params)).one()
    return _Figures(
        paused_until=None if row[0] is None else str(row[0]),
        last_accepted=row[1],
        active_jobs=int(row[2]),
        pending=int(row[3]),
        member_daily=int(row[4]),
        member_monthly=int(row[5]),
        guild_monthly=int(row[6]),
        bot_monthly=int(row[7]),
    )


@functools.cache
def _figures_query(
    sums: frozenset[str], *, with_guild: bool, with_cooldown: bool
) -> sa.Select[Any]:
    """The figures statement for one shape, built once (building it costs more than running
    it); values come as bound parameters."""
    amount = ledger.c.amount_micro_usd
    mine = ledger.c.requester_id == sa.bindparam("requester_id")
    day = sa.bindparam("day", type_=UTCDateTime())
    month = sa.bindparam("month", type_=UTCDateTime())
    zero = sa.literal(0, sa.BigInteger())

    def total(wanted: str, *conditions: sa.ColumnElement[bool]) -> sa.ColumnElement[Any]:
        if wanted not in sums:
            return zero
        subquery = sa.select(sa.func.coalesce(sa.func.sum(amount), 0)).where(*conditions)
        return subquery.scalar_subquery()

    reserve = ledger.c.kind == LedgerKind.RESERVE
    # A reserve row's spent_at is its creation time; bounding by it keeps these lookups to
    # the member's recent rows in the index.
    last_accepted: sa.ColumnElement[Any] = sa.null()
    if with_cooldown:
        since = sa.bindparam("accepted_since", type_=UTCDateTime())
        last_accepted = (
            sa.select(sa.func.max(ledger.c.spent_at))
            .where(mine, reserve, ledger.c.spent_at > since, ~_released(ledger.c.id))
            .scalar_subquery()
        )
    active_jobs = (
        sa.select(sa.func.count())
        .select_from(jobs)
        .where(
            jobs.c.requester_id == sa.bindparam("requester_id"),
            jobs.c.state.in_(ACTIVE_STATES),
        )
        .scalar_subquery()
    )
    # Requests reserved but not yet recorded as jobs are unfinished videos too.
    pending = (
        sa.select(sa.func.count())
        .select_from(ledger)
        .where(
            mine,
            reserve,
            ledger.c.job_id.is_(None),
            ledger.c.spent_at > sa.bindparam("pending_since", type_=UTCDateTime()),
            ~_closed(ledger.c.id),
        )
        .scalar_subquery()
    )
    guild_total = (
        total(
            "guild_monthly",
            ledger.c.guild_id == sa.bindparam("guild_id"),
            ledger.c.spent_at >= month,
        )
        if with_guild
        else zero
    )
    return sa.select(
        sa.select(meta.c.value).where(meta.c.key == PAUSE_KEY).scalar_subquery(),
        last_accepted,
        active_jobs,
        pending,
        total("member_daily", mine, ledger.c.spent_at >= day),
        total("member_monthly", mine, ledger.c.spent_at >= month),
        guild_total,
        total("bot_monthly", ledger.c.spent_at >= month),
    )


def _money_limits(config: GuildConfig, role_ids: Collection[int]) -> dict[str, float]:
    """The money limits in force for this member here, by key (0: none)."""
    daily, monthly = config.allowance(role_ids)
    limits = {"member_daily": daily, "member_monthly": monthly}
    if config.guild_id is not None:  # in DMs there is no server budget
        limits["guild_monthly"] = config.guild_monthly_usd.value
    limits["bot_monthly"] = config.bot_monthly_usd
    return limits


_LABELS: dict[str, Message] = {
    "member_daily": _t("your daily allowance"),
    "member_monthly": _t("your monthly allowance"),
    "guild_monthly": _t("this server's monthly budget"),
    "bot_monthly": _t("the bot's monthly budget"),
}


def _statuses(figures: _Figures, limits: Mapping[str, float], now: datetime) -> list[LimitStatus]:
    spent = {
        "member_daily": figures.member_daily,
        "member_monthly": figures.member_monthly,
        "guild_monthly": figures.guild_monthly,
        "bot_monthly": figures.bot_monthly,
    }
    return [
        LimitStatus(
            key,
            _LABELS[key],
            limit,
            to_usd(spent[key]),
            next_day(now) if key == "member_daily" else next_month(now),
        )
        for key, limit in limits.items()
    ]


def _check_fits(statuses: list[LimitStatus], amount: int) -> None:
    failing = [
        s
        for s in statuses
        if s.limit_usd > 0 and to_micros(s.spent_usd) + amount > to_micros(s.limit_usd)
    ]
    if not failing:
        return
    # Name the limit that lasts longest: saying "resets tomorrow" while the monthly budget
    # would still refuse tomorrow would mislead.
    worst = max(failing, key=lambda s: s.resets_at)
    left = worst.left_usd
    raise LimitReached(
        limit=worst.key,
        label=worst.label,
        left_usd=0.0 if left is None else left,
        estimate_usd=to_usd(amount),
        resets_at=worst.resets_at,
    )


async def _pause_value(conn: AsyncConnection) -> str | None:
    raw = (
        await conn.execute(sa.select(meta.c.value).where(meta.c.key == PAUSE_KEY))
    ).scalar_one_or_none()
    return None if raw is None else str(raw)


def _pause_time(raw: str | None, now: datetime) -> datetime | None:
    if raw is None:
        return None
    try:
        until = datetime.fromisoformat(raw)
    except ValueError:
        log.warning("ignoring an unreadable %s value in meta", PAUSE_KEY)
        return None
    until = until if until.tzinfo else until.replace(tzinfo=UTC)
    return until if until > now else None


def _reservation(row: Mapping[str, Any]) -> Reservation:
    return Reservation(
        id=int(row["id"]),
        requester_id=int(row["requester_id"]),
        guild_id=row["guild_id"],
        amount_usd=to_usd(int(row["amount_micro_usd"])),
        job_id=row["job_id"],
        created_at=row["created_at"],
    )


def _upsert(dialect: str, table: sa.Table, values: dict[str, Any], key: str) -> Any:
    insert = pg_dialect.insert(table) if dialect == "postgresql" else sqlite_dialect.insert(table)
    return insert.values(values).on_conflict_do_update(
        index_elements=[table.c[key]], set_={k: v for k, v in values.items() if k != key}
    )
