"""Money accounting: estimates, limits, reservations, settlement, refunds and the credits pause.

Every database test runs on SQLite and on a real PostgreSQL server (`store_url`).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from bot.catalog import CATALOG
from bot.errors import InputRejected, TooManyActiveJobs, user_message
from bot.guild_settings import BotDefaults, GuildSettings, ServerPaused
from bot.jobs import JobState, NewJob, Outcome
from bot.spending import (
    CooldownActive,
    LedgerKind,
    LimitReached,
    PriceUnknown,
    Spending,
    SubmissionsPaused,
    estimate_usd,
    ledger,
    next_month,
)
from bot.store import JobStore

# 2025-03-14 15:00 UTC, a Friday in the middle of a month.
NOW = datetime(2025, 3, 14, 15, 0, tzinfo=UTC)
TOMORROW = datetime(2025, 3, 15, tzinfo=UTC)
NEXT_MONTH = datetime(2025, 4, 1, tzinfo=UTC)
MEMBER = 1_234_567_890_123_456_789
OTHER = MEMBER + 1
GUILD = 987_654_321_098_765_432
ADMIN = 42
ROLE_GOLD, ROLE_SILVER, ROLE_MUTED = 11, 12, 13

NO_LIMITS = BotDefaults()
DEFAULTS = BotDefaults(
    member_daily_usd=3.0,
    member_monthly_usd=20.0,
    guild_monthly_usd=50.0,
    bot_monthly_usd=100.0,
    max_active=0,
    cooldown_seconds=0,
)


def spending_for(store: JobStore, defaults: BotDefaults = DEFAULTS) -> Spending:
    return Spending(store.engine, defaults)


async def ledger_total(store: JobStore) -> int:
    async with store.engine.connect() as conn:
        value = (await conn.execute(sa.select(sa.func.sum(ledger.c.amount_micro_usd)))).scalar()
    return int(value or 0)


async def ledger_rows(store: JobStore) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(ledger))).scalar())


def timestamp_of(text: str) -> datetime:
    match = re.search(r"<t:(\d+):R>", text)
    assert match, text
    return datetime.fromtimestamp(int(match.group(1)), UTC)


def new_job(requester_id: int = MEMBER, guild_id: int | None = GUILD) -> NewJob:
    return NewJob(
        requester_id=requester_id,
        guild_id=guild_id,
        channel_id=5,
        model="openai/sora-2-i2v",
        prompt="waves",
        duration=4,
        resolution="720p",
        orientation="landscape",
        fit="crop",
        image_width=1280,
        image_height=720,
        image_data=b"jpeg",
        upload_limit_bytes=25 * 1024 * 1024,
        estimated_usd=0.4,
    )


# --- estimates -----------------------------------------------------------------------------------


def test_estimate_uses_the_catalogue_then_model_prices() -> None:
    sora_pro = CATALOG["openai/sora-2-pro-i2v"]
    seedance = CATALOG["bytedance/seedance-2-0"]
    assert estimate_usd(sora_pro, 4, "720p", {}) == 1.2
    assert estimate_usd(sora_pro, 12, "1080p", {}) == 6.0
    assert estimate_usd(seedance, 5, "720p", {}) is None
    prices = {"bytedance/seedance-2-0": 0.1, "bytedance/seedance-2-0:1080p": 0.25}
    assert estimate_usd(seedance, 5, "720p", prices) == 0.5
    assert estimate_usd(seedance, 5, "1080p", prices) == 1.25
    # The operator can correct a catalogue price that changed.
    assert estimate_usd(sora_pro, 4, "720p", {"openai/sora-2-pro-i2v:720p": 0.35}) == 1.4


# --- each limit refuses, with its words ----------------------------------------------------------


@pytest.mark.parametrize(
    ("defaults", "spent_before", "estimate", "label", "left", "resets"),
    [
        (replace(NO_LIMITS, member_daily_usd=2.0), 1.2, 1.2, "your daily allowance", 0.8, TOMORROW),
        (
            replace(NO_LIMITS, member_monthly_usd=2.0),
            1.2,
            1.2,
            "your monthly allowance",
            0.8,
            NEXT_MONTH,
        ),
        (
            replace(NO_LIMITS, guild_monthly_usd=2.0),
            1.2,
            1.2,
            "this server's monthly budget",
            0.8,
            NEXT_MONTH,
        ),
        (
            replace(NO_LIMITS, bot_monthly_usd=2.0),
            1.2,
            1.2,
            "the bot's monthly budget",
            0.8,
            NEXT_MONTH,
        ),
    ],
)
async def test_each_limit_refuses_naming_itself_what_is_left_and_when_it_resets(
    store: JobStore,
    defaults: BotDefaults,
    spent_before: float,
    estimate: float,
    label: str,
    left: float,
    resets: datetime,
) -> None:
    spending = spending_for(store, defaults)
    # Someone else spent first for the server and bot budgets; the member for their own.
    spender = MEMBER if label.startswith("your") else OTHER
    await spending.reserve(requester_id=spender, guild_id=GUILD, estimate_usd=spent_before, now=NOW)
    before = await ledger_rows(store)

    with pytest.raises(LimitReached) as refused:
        await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=estimate, now=NOW)

    text = str(user_message(refused.value))
    assert isinstance(refused.value, InputRejected)
    assert label in text
    assert f"${left:.2f} left" in text
    assert f"${estimate:.2f}" in text
    assert timestamp_of(text) == resets
    assert "UTC" in text
    assert await ledger_rows(store) == before  # nothing recorded for a refusal


async def test_the_longest_lasting_limit_is_named_when_several_refuse(store: JobStore) -> None:
    spending = spending_for(store, replace(NO_LIMITS, member_daily_usd=1, member_monthly_usd=1))
    with pytest.raises(LimitReached) as refused:
        await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1.2, now=NOW)
    assert str(refused.value.label) == "your monthly allowance"
    assert refused.value.resets_at == NEXT_MONTH


async def test_zero_means_no_limit_and_an_exact_fit_is_accepted(store: JobStore) -> None:
    spending = spending_for(store, replace(NO_LIMITS, member_daily_usd=2.4))
    for _ in range(2):
        await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1.2, now=NOW)
    with pytest.raises(LimitReached):
        await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=0.01, now=NOW)
    unlimited = spending_for(store, NO_LIMITS)
    await unlimited.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=500, now=NOW)


async def test_day_and_month_boundaries_are_utc(store: JobStore) -> None:
    spending = spending_for(store, replace(NO_LIMITS, member_daily_usd=1.2, member_monthly_usd=3))
    late = datetime(2025, 3, 31, 23, 59, 59, tzinfo=UTC)
    await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1.2, now=late)
    with pytest.raises(LimitReached):
        await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1.2, now=late)
    # One second later it is a new day and a new month in UTC.
    new_month = datetime(2025, 4, 1, tzinfo=UTC)
    await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1.2, now=new_month)
    assert next_month(datetime(2025, 12, 31, 12, tzinfo=UTC)) == datetime(2026, 1, 1, tzinfo=UTC)


# --- roles, servers and DMs ----------------------------------------------------------------------


async def test_the_most_generous_role_allowance_wins(store: JobStore) -> None:
    defaults = replace(NO_LIMITS, member_daily_usd=1.0)
    spending = spending_for(store, defaults)
    settings = GuildSettings(store.engine, defaults)
    await settings.set_role_limit(
        GUILD, ROLE_SILVER, member_daily_usd=2.0, member_monthly_usd=None, actor_id=ADMIN, now=NOW
    )
    await settings.set_role_limit(
        GUILD, ROLE_GOLD, member_daily_usd=5.0, member_monthly_usd=None, actor_id=ADMIN, now=NOW
    )
    await settings.set_role_limit(
        GUILD, ROLE_MUTED, member_daily_usd=0.5, member_monthly_usd=None, actor_id=ADMIN, now=NOW
    )

    # Gold and silver: gold's $5 applies.
    await spending.reserve(
        requester_id=MEMBER,
        guild_id=GUILD,
        role_ids=[ROLE_SILVER, ROLE_GOLD],
        estimate_usd=4.8,
        now=NOW,
    )
    # Without roles the server's $1 applies; with only the restrictive role, $0.50.
    with pytest.raises(LimitReached, match=r"\$1\.00 left"):
        await spending.reserve(requester_id=OTHER, guild_id=GUILD, estimate_usd=1.2, now=NOW)
    with pytest.raises(LimitReached, match=r"\$0\.50 left"):
        await spending.reserve(
            requester_id=OTHER, guild_id=GUILD, role_ids=[ROLE_MUTED], estimate_usd=0.6, now=NOW
        )
    limits = await spending.limits(
        requester_id=MEMBER, guild_id=GUILD, role_ids=[ROLE_GOLD], now=NOW
    )
    assert limits[0].limit_usd == 5.0 and limits[0].left_usd == pytest.approx(0.2)


async def test_a_role_with_no_limit_is_the_most_generous(store: JobStore) -> None:
    defaults = replace(NO_LIMITS, member_daily_usd=1.0)
    spending = spending_for(store, defaults)
    await GuildSettings(store.engine, defaults).set_role_limit(
        GUILD, ROLE_GOLD, member_daily_usd=0, member_monthly_usd=None, actor_id=ADMIN, now=NOW
    )
    await spending.reserve(
        requester_id=MEMBER,
        guild_id=GUILD,
        role_ids=[ROLE_GOLD, ROLE_SILVER],
        estimate_usd=50,
        now=NOW,
    )


async def test_server_settings_take_effect_at_once(store: JobStore) -> None:
    spending = spending_for(store, replace(NO_LIMITS, guild_monthly_usd=1.0))
    settings = GuildSettings(store.engine, spending.defaults)
    with pytest.raises(LimitReached, match="this server's monthly budget"):
        await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1.2, now=NOW)
    await settings.update(GUILD, {"guild_monthly_usd": 10}, actor_id=ADMIN, now=NOW)
    await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1.2, now=NOW)
    # Another server still has the bot's default budget.
    with pytest.raises(LimitReached):
        await spending.reserve(requester_id=MEMBER, guild_id=GUILD + 1, estimate_usd=1.2, now=NOW)


async def test_in_dms_only_member_and_bot_limits_apply(store: JobStore) -> None:
    defaults = replace(NO_LIMITS, member_daily_usd=3.0, guild_monthly_usd=0.5, bot_monthly_usd=5)
    spending = spending_for(store, defaults)
    # The server budget of $0.50 would refuse this in a server; a DM has no server budget.
    dm = await spending.reserve(requester_id=MEMBER, guild_id=None, estimate_usd=1.2, now=NOW)
    assert dm.guild_id is None
    with pytest.raises(LimitReached, match="this server's monthly budget"):
        await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1.2, now=NOW)
    # The member's allowance counts what they spent anywhere, DMs included.
    await spending.reserve(requester_id=MEMBER, guild_id=None, estimate_usd=1.2, now=NOW)
    with pytest.raises(LimitReached, match="your daily allowance"):
        await spending.reserve(requester_id=MEMBER, guild_id=None, estimate_usd=1.2, now=NOW)
    with pytest.raises(LimitReached, match="the bot's monthly budget"):
        await spending.reserve(requester_id=OTHER, guild_id=None, estimate_usd=2.7, now=NOW)
    limits = await spending.limits(requester_id=MEMBER, guild_id=None, now=NOW)
    assert [s.key for s in limits] == ["member_daily", "member_monthly", "bot_monthly"]


async def test_unknown_price_is_refused_only_while_a_money_limit_applies(store: JobStore) -> None:
    limited = spending_for(store, replace(NO_LIMITS, bot_monthly_usd=100))
    with pytest.raises(PriceUnknown) as refused:
        await limited.reserve(
            requester_id=MEMBER,
            guild_id=GUILD,
            estimate_usd=None,
            now=NOW,
            model_label="Veo 3.1",
            resolution="1080p",
        )
    assert "Veo 3.1 at 1080p" in str(user_message(refused.value))
    assert "MODEL_PRICES" in str(user_message(refused.value))

    free = spending_for(store, NO_LIMITS)
    held = await free.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=None, now=NOW)
    assert held.amount_usd == 0


# --- active jobs, cooldown, pause ----------------------------------------------------------------


async def test_unfinished_videos_and_pending_reservations_count_toward_max_active(
    store: JobStore,
) -> None:
    spending = spending_for(store, replace(NO_LIMITS, max_active=2))
    await store.create(new_job(), now=NOW)
    pending = await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1, now=NOW)
    with pytest.raises(TooManyActiveJobs):
        await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1, now=NOW)
    # A request that failed before it was recorded frees its place.
    assert await spending.release(pending.id, now=NOW)
    again = await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1, now=NOW)
    # Once linked to its job, the job is what counts (not twice).
    job = await store.create(new_job(), now=NOW)
    await spending.attach(again.id, job.id)
    await store.transition(
        job.id, from_states=[JobState.SUBMITTING], to_state=JobState.DONE, now=NOW
    )
    await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1, now=NOW)
    # A reservation whose process died long ago does not block the member for ever.
    later = NOW + timedelta(hours=1)
    await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1, now=later)


async def test_cooldown_counts_from_the_last_accepted_request(store: JobStore) -> None:
    spending = spending_for(store, replace(NO_LIMITS, cooldown_seconds=30))
    first = await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1, now=NOW)
    soon = NOW + timedelta(seconds=10)
    with pytest.raises(CooldownActive) as refused:
        await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1, now=soon)
    assert timestamp_of(str(user_message(refused.value))) == NOW + timedelta(seconds=30)
    # Others are not slowed down by this member.
    await spending.reserve(requester_id=OTHER, guild_id=GUILD, estimate_usd=1, now=soon)
    # A request released (refused later, or refunded) does not hold the member back.
    await spending.release(first.id, now=soon)
    await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1, now=soon)


async def test_out_of_credits_pauses_every_submission_and_is_announced_once(
    store: JobStore,
) -> None:
    spending = spending_for(store)
    other_worker = spending_for(store)
    until = NOW + timedelta(minutes=10)
    announced = await asyncio.gather(
        *(worker.pause_submissions(until, now=NOW) for worker in [spending, other_worker] * 5)
    )
    assert announced.count(True) == 1
    assert await other_worker.submissions_paused(NOW) == until
    with pytest.raises(SubmissionsPaused) as refused:
        await spending.reserve(requester_id=MEMBER, guild_id=None, estimate_usd=1, now=NOW)
    text = str(user_message(refused.value))
    assert "out of credits" in text and timestamp_of(text) == until
    # Extending a running pause is not a new announcement; an expired one then is.
    assert not await spending.pause_submissions(until + timedelta(minutes=5), now=NOW)
    after = until + timedelta(minutes=6)
    assert await spending.submissions_paused(after) is None
    await spending.reserve(requester_id=MEMBER, guild_id=None, estimate_usd=1, now=after)
    assert await spending.pause_submissions(after + timedelta(minutes=10), now=after)
    await spending.resume_submissions()
    assert await spending.submissions_paused(after) is None


# --- settlement, refunds, sums -------------------------------------------------------------------


async def test_a_paused_server_accepts_nothing_until_resumed(store: JobStore) -> None:
    spending = spending_for(store)
    settings = GuildSettings(store.engine, spending.defaults)
    await settings.update(GUILD, {"paused": True}, actor_id=1, now=NOW)
    with pytest.raises(ServerPaused) as refused:
        await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1, now=NOW)
    assert "admins have paused" in str(user_message(refused.value))
    assert await ledger_rows(store) == 0
    await spending.reserve(requester_id=MEMBER, guild_id=GUILD + 1, estimate_usd=1, now=NOW)
    await settings.update(GUILD, {"paused": False}, actor_id=1, now=NOW)
    await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1, now=NOW)


async def test_settle_and_release_close_a_reservation_exactly_once(store: JobStore) -> None:
    spending = spending_for(store)
    held = await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1.2, now=NOW)
    assert (
        await spending.usage(requester_id=MEMBER, guild_id=GUILD, now=NOW)
    ).member_today_usd == 1.2

    results = await asyncio.gather(
        *(spending.settle(held.id, 0.96, now=NOW) for _ in range(5)),
        *(spending.release(held.id, now=NOW) for _ in range(5)),
    )
    assert results.count(True) == 1
    total = await ledger_total(store)
    assert total in (960_000, 0)  # the settle or the release won, never both, never twice
    assert not await spending.settle(held.id, 5.0, now=NOW)
    assert not await spending.release(held.id, now=NOW)
    assert await ledger_total(store) == total
    assert not await spending.settle(999_999, 1.0, now=NOW)  # unknown: nothing happens


async def test_settle_without_a_reported_cost_keeps_the_estimate(store: JobStore) -> None:
    spending = spending_for(store)
    held = await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1.2, now=NOW)
    assert await spending.settle(held.id, None, now=NOW)
    assert await ledger_total(store) == 1_200_000
    bad = await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=0.4, now=NOW)
    assert await spending.settle(bad.id, float("nan"), now=NOW)  # a nonsense cost: the estimate
    assert await ledger_total(store) == 1_600_000


async def test_a_late_settlement_counts_on_the_day_the_video_was_accepted(store: JobStore) -> None:
    spending = spending_for(store)
    accepted = datetime(2025, 3, 31, 23, 59, tzinfo=UTC)
    held = await spending.reserve(
        requester_id=MEMBER, guild_id=GUILD, estimate_usd=1.2, now=accepted
    )
    await spending.settle(held.id, 1.5, now=accepted + timedelta(minutes=3))
    march = await spending.usage(requester_id=MEMBER, guild_id=GUILD, now=accepted)
    april = await spending.usage(
        requester_id=MEMBER, guild_id=GUILD, now=accepted + timedelta(minutes=3)
    )
    assert (march.member_today_usd, march.member_month_usd) == (1.5, 1.5)
    assert (april.member_today_usd, april.member_month_usd, april.bot_month_usd) == (0, 0, 0)


async def test_usage_and_top_spenders_are_exact_sums(store: JobStore) -> None:
    spending = spending_for(store, NO_LIMITS)
    for _ in range(10):  # 10 × $0.10 is not exactly $1.00 in floating point; here it is
        held = await spending.reserve(
            requester_id=MEMBER, guild_id=GUILD, estimate_usd=0.1, now=NOW
        )
    await spending.settle(held.id, 0.1, now=NOW)
    other = await spending.reserve(requester_id=OTHER, guild_id=GUILD, estimate_usd=2.5, now=NOW)
    await spending.reserve(requester_id=OTHER, guild_id=None, estimate_usd=0.3, now=NOW)
    await spending.reserve(requester_id=OTHER, guild_id=GUILD, estimate_usd=0.7, now=NOW)
    await spending.release(other.id, now=NOW)
    yesterday = NOW - timedelta(days=1)
    await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=0.2, now=yesterday)
    last_month = datetime(2025, 2, 28, tzinfo=UTC)
    await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=9, now=last_month)

    usage = await spending.usage(requester_id=MEMBER, guild_id=GUILD, now=NOW)
    assert (usage.member_today_usd, usage.member_month_usd) == (1.0, 1.2)
    assert (usage.guild_month_usd, usage.bot_month_usd) == (1.9, 2.2)
    assert await spending.top_spenders(guild_id=GUILD, now=NOW) == [(MEMBER, 1.2), (OTHER, 0.7)]
    dm_usage = await spending.usage(requester_id=OTHER, guild_id=None, now=NOW)
    assert dm_usage.guild_month_usd is None and dm_usage.member_today_usd == 1.0


async def test_reconcile_settles_refunds_and_releases_finished_jobs_once(store: JobStore) -> None:
    spending = spending_for(store, NO_LIMITS)

    async def finished(outcome: Outcome, cost: float | None, submitted: bool) -> int:
        job = await store.create(new_job(), now=NOW)
        held = await spending.reserve(
            requester_id=MEMBER, guild_id=GUILD, estimate_usd=1.0, now=NOW, job_id=job.id
        )
        assert held.job_id == job.id
        await store.transition(
            job.id,
            from_states=[JobState.SUBMITTING],
            to_state=JobState.TO_DELIVER,
            now=NOW,
            outcome=outcome,
            cost_usd=cost,
            provider_job_id="gen-1" if submitted else None,
        )
        return job.id

    video = await finished(Outcome.VIDEO, 0.8, submitted=True)
    video_no_cost = await finished(Outcome.VIDEO, None, submitted=True)
    failed = await finished(Outcome.FAILED, 0.5, submitted=True)
    never_sent = await finished(Outcome.FAILED, None, submitted=False)
    running = await store.create(new_job(), now=NOW)
    await spending.reserve(
        requester_id=MEMBER, guild_id=GUILD, estimate_usd=1.0, now=NOW, job_id=running.id
    )

    assert await spending.reconcile(now=NOW, refund_failed_jobs=True) == 4
    assert await spending.reconcile(now=NOW, refund_failed_jobs=True) == 0
    # video 0.80 + video 1.00 (estimate) + refunded 0 + never sent 0 + running 1.00 held
    assert await ledger_total(store) == 2_800_000
    assert not await spending.release_job(video, now=NOW)
    assert not await spending.settle_job(never_sent, 1.0, now=NOW)
    for job_id in (video_no_cost, failed):
        assert not await spending.settle_job(job_id, 9.0, now=NOW)

    # With refunds off, a failure the provider charged for stays charged.
    no_refund = await finished(Outcome.TIMED_OUT, None, submitted=True)
    assert await spending.reconcile(now=NOW, refund_failed_jobs=False) == 1
    assert await ledger_total(store) == 3_800_000
    assert not await spending.release_job(no_refund, now=NOW)


async def test_reservations_never_recorded_are_released_after_a_while(store: JobStore) -> None:
    spending = spending_for(store)
    orphan = await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1, now=NOW)
    job = await store.create(new_job(), now=NOW)
    linked = await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1, now=NOW)
    await spending.attach(linked.id, job.id)
    assert await spending.release_unlinked(now=NOW, older_than_seconds=300) == 0
    later = NOW + timedelta(minutes=6)
    assert await spending.release_unlinked(now=later, older_than_seconds=300) == 1
    assert not await spending.release(orphan.id, now=later)
    assert (await spending.reservation_for_job(job.id)) is not None
    assert await ledger_total(store) == 1_000_000


# --- the race ------------------------------------------------------------------------------------


FITS_TWO = replace(NO_LIMITS, member_daily_usd=2.4)


async def _race(workers: list[Spending], store: JobStore) -> None:
    attempts = [
        workers[i % len(workers)].reserve(
            requester_id=MEMBER, guild_id=GUILD, estimate_usd=1.2, now=NOW
        )
        for i in range(20)
    ]
    results = await asyncio.gather(*attempts, return_exceptions=True)

    accepted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(accepted) == 2
    assert len(refused) == 18
    for error in refused:
        assert isinstance(error, LimitReached), repr(error)
        assert "your daily allowance" in str(user_message(error))
        assert "$0.00 left" in str(user_message(error))
    assert await ledger_total(store) == 2_400_000
    assert await ledger_rows(store) == 2
    usage = await workers[0].usage(requester_id=MEMBER, guild_id=GUILD, now=NOW)
    assert usage.member_today_usd == 2.4


async def test_twenty_simultaneous_requests_that_fit_two_accept_exactly_two(
    store: JobStore,
) -> None:
    await _race([spending_for(store, FITS_TWO)], store)


async def test_two_processes_on_one_database_accept_exactly_two(
    store: JobStore, store_url: str
) -> None:
    # Two engines with their own connection pools: what two bot processes would have. Each
    # request gets a Spending of its own, so no in-process queue orders them: only the
    # database does.
    second = await JobStore.open(store_url)
    try:
        workers = [spending_for(engine, FITS_TWO) for engine in (store, second) for _ in range(10)]
        await _race(workers, store)
    finally:
        await second.close()


async def test_ledger_rows_record_who_what_and_when(store: JobStore) -> None:
    spending = spending_for(store)
    job = await store.create(new_job(), now=NOW)
    held = await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=1.2, now=NOW)
    await spending.attach(held.id, job.id)
    later = NOW + timedelta(minutes=2)
    assert await spending.settle_job(job.id, 1.0, now=later, note="video")
    async with store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(ledger).order_by(ledger.c.id))).mappings().all()
    assert [(r["kind"], r["amount_micro_usd"]) for r in rows] == [
        (LedgerKind.RESERVE, 1_200_000),
        (LedgerKind.SETTLE, -200_000),
    ]
    for row in rows:
        assert (row["job_id"], row["requester_id"], row["guild_id"]) == (job.id, MEMBER, GUILD)
        assert row["spent_at"] == NOW
    assert rows[1]["created_at"] == later and rows[1]["reservation_id"] == held.id
