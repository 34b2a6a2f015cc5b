"""What spend accounting adds to accepting a job, p50 and p99, with 1 and 20 simultaneous requests.

Each round, N members ask at the same moment, twice: once accepted the old way (the job is
recorded), once with accounting (the estimate is reserved against every limit — all on, with
role allowances, so the whole check runs — then the job is recorded and the reservation linked
to it). The difference is what accounting adds. Settling, which happens later when the provider
reports the cost, is timed on its own. The ledger is first filled with a busy month of rows, so the
sums are not over an empty table. Runs on SQLite (a temporary file) and on PostgreSQL (a
throwaway server started like the tests do, or --postgres-url).

    python bench/accounting.py [--rounds 25] [--seed-rows 20000]
                               [--postgres-url URL | --no-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.guild_settings import BotDefaults, GuildSettings
from bot.jobs import NewJob
from bot.spending import LedgerKind, Spending, ledger
from bot.store import JobStore
from tests.postgres import PostgresUnavailable, running_postgres

T = TypeVar("T")

CONCURRENT = 20
GUILDS = 20
START = datetime(2025, 3, 2, tzinfo=UTC)
ROLE_GOLD, ROLE_SILVER = 11, 12
# Every limit on and generous enough that nothing is refused: the full check, every time.
DEFAULTS = BotDefaults(
    member_daily_usd=1_000,
    member_monthly_usd=10_000,
    guild_monthly_usd=50_000,
    bot_monthly_usd=99_000,
    max_active=1_000,
    cooldown_seconds=1,
)


@dataclass
class Timings:
    plain: list[float] = field(default_factory=list)
    """Accepting a job without accounting: recording it."""
    accepted: list[float] = field(default_factory=list)
    """Accepting a job with accounting: reserve, record, attach."""
    reserve: list[float] = field(default_factory=list)
    settle: list[float] = field(default_factory=list)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def timed(work: Callable[[], Awaitable[T]]) -> tuple[T, float]:
    started = time.perf_counter()
    result = await work()
    return result, (time.perf_counter() - started) * 1000


def new_job(member: int, guild: int) -> NewJob:
    return NewJob(
        requester_id=member,
        guild_id=guild,
        channel_id=1,
        model="openai/sora-2-pro-i2v",
        prompt="bench",
        duration=4,
        resolution="720p",
        orientation="landscape",
        fit="crop",
        image_width=1280,
        image_height=720,
        image_data=b"\xff" * 1024,
        upload_limit_bytes=25 * 1024 * 1024,
        estimated_usd=1.2,
    )


async def seed(store: JobStore, rows: int) -> None:
    """A busy month: settled reservations spread over members, servers and days."""
    batch = []
    for i in range(rows // 2):
        when = START + timedelta(minutes=i % (10 * 24 * 60))
        common = {
            "requester_id": 10_000 + i % 500,
            "guild_id": 1 + i % GUILDS,
            "spent_at": when,
            "created_at": when,
        }
        batch.append({**common, "kind": LedgerKind.RESERVE, "amount_micro_usd": 1_200_000})
    async with store.engine.begin() as conn:
        await conn.execute(ledger.insert(), batch)
        reserve_ids = (await conn.execute(ledger.select().with_only_columns(ledger.c.id))).scalars()
        closes = [
            {
                "kind": LedgerKind.SETTLE,
                "reservation_id": rid,
                "requester_id": 0,
                "amount_micro_usd": -200_000,
                "spent_at": START,
                "created_at": START,
            }
            for rid in reserve_ids
        ]
        await conn.execute(ledger.insert(), closes)
    if store.engine.dialect.name == "postgresql":
        # What autovacuum does soon after on a live server: fresh statistics and visibility map.
        async with store.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("VACUUM ANALYZE ledger")
    settings = GuildSettings(store.engine, DEFAULTS)
    for guild in range(1, GUILDS + 1):
        await settings.set_role_limit(
            guild, ROLE_GOLD, member_daily_usd=2_000, member_monthly_usd=None, actor_id=1, now=START
        )
        await settings.set_role_limit(
            guild, ROLE_SILVER, member_daily_usd=1_500, member_monthly_usd=None, actor_id=1,
            now=START,
        )  # fmt: skip


async def accept_plain(store: JobStore, member: int, guild: int, now: datetime) -> float:
    _, ms = await timed(lambda: store.create(new_job(member, guild), now=now))
    return ms


async def accept_with_accounting(
    spending: Spending, store: JobStore, member: int, guild: int, now: datetime, out: Timings
) -> None:
    started = time.perf_counter()
    reservation, reserve_ms = await timed(
        lambda: spending.reserve(
            requester_id=member,
            guild_id=guild,
            role_ids=(ROLE_GOLD, ROLE_SILVER),
            estimate_usd=1.2,
            now=now,
        )
    )
    job = await store.create(new_job(member, guild), now=now)
    await spending.attach(reservation.id, job.id)
    out.accepted.append((time.perf_counter() - started) * 1000)
    out.reserve.append(reserve_ms)


async def settle_one(spending: Spending, reservation_id: int, now: datetime, out: Timings) -> None:
    _, ms = await timed(lambda: spending.settle(reservation_id, 1.0, now=now))
    out.settle.append(ms)


async def run_backend(url: str, rounds: int, seed_rows: int, concurrent: int) -> Timings:
    store = await JobStore.open(url)
    try:
        await seed(store, seed_rows)
        spending = Spending(store.engine, DEFAULTS)
        timings = Timings()
        base = 1 + 1_000 * concurrent  # members of their own, if runs share a database
        members = range(base, base + concurrent)
        # One warm-up round of each kind fills the connection pool and statement caches.
        warm = Timings()
        await asyncio.gather(*(accept_plain(store, m, 1, START) for m in members))
        await asyncio.gather(
            *(accept_with_accounting(spending, store, m, 1, START, warm) for m in members)
        )
        for round_no in range(rounds):
            now = START + timedelta(days=10, minutes=round_no + 1)
            guilds = [1 + i % GUILDS for i in range(concurrent)]
            plain = await asyncio.gather(
                *(accept_plain(store, m, g, now) for m, g in zip(members, guilds, strict=True))
            )
            timings.plain.extend(plain)
            await asyncio.gather(
                *(
                    accept_with_accounting(spending, store, m, g, now, timings)
                    for m, g in zip(members, guilds, strict=True)
                )
            )
            # Settling happens later, when the provider reports; measured on its own.
            async with store.engine.connect() as conn:
                open_ids = (
                    await conn.execute(
                        sa.select(ledger.c.id).where(
                            ledger.c.kind == LedgerKind.RESERVE,
                            ledger.c.spent_at == now,
                            ledger.c.requester_id.in_(list(members)),
                        )
                    )
                ).scalars()
                ids = list(open_ids)
            await asyncio.gather(*(settle_one(spending, rid, now, timings) for rid in ids))
        return timings
    finally:
        await store.close()


def report(name: str, concurrent: int, timings: Timings) -> str:
    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} / {percentile(values, 0.99):.1f} ms"

    added_p50 = statistics.median(timings.accepted) - statistics.median(timings.plain)
    added_p99 = percentile(timings.accepted, 0.99) - percentile(timings.plain, 0.99)
    return (
        f"| {name} | {concurrent} | {cell(timings.plain)} | {cell(timings.accepted)} | "
        f"{added_p50:.1f} / {added_p99:.1f} ms | {cell(timings.reserve)} | {cell(timings.settle)} |"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--seed-rows", type=int, default=20_000)
    parser.add_argument(
        "--postgres-url", help="use this PostgreSQL database instead of starting one"
    )
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()

    rows = [
        "| backend | simultaneous | accept without accounting (record) p50 / p99 "
        "| accept with accounting (reserve + record + attach) p50 / p99 | added p50 / p99 "
        "| of which reserve p50 / p99 | settle (later) p50 / p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        for concurrent in (1, CONCURRENT):
            db = f"{url}.{concurrent}"
            timings = await run_backend(db, args.rounds, args.seed_rows, concurrent)
            rows.append(report("SQLite", concurrent, timings))
    if not args.no_postgres:
        if args.postgres_url:
            for concurrent in (1, CONCURRENT):
                timings = await run_backend(args.postgres_url, args.rounds, 0, concurrent)
                rows.append(report("PostgreSQL", concurrent, timings))
        else:
            try:
                with running_postgres() as server:
                    for concurrent in (1, CONCURRENT):
                        name = f"bench{concurrent}"
                        await asyncio.to_thread(server._create_database, name)
                        timings = await run_backend(
                            server.url_for(name), args.rounds, args.seed_rows, concurrent
                        )
                        rows.append(report("PostgreSQL", concurrent, timings))
            except PostgresUnavailable as exc:
                rows.append(f"| PostgreSQL | skipped: {exc} | | | | | |")
    print(
        f"{args.rounds} rounds of N simultaneous requests, ledger seeded with "
        f"{args.seed_rows} rows this month:"
    )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
