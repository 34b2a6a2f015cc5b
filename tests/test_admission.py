"""The admission path with real money checks: many requests at once, on SQLite and PostgreSQL,
from one worker or two (two processes' worth) sharing one database.

What a member and an operator would notice: exactly as many videos as the allowance pays for
reach the provider, every other request is refused by name, and the ledger adds up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from bot.admission import Admission, Requester
from bot.config import Settings
from bot.errors import ProviderServerError, ProviderValidationError, TooManyActiveJobs
from bot.guild_settings import BotDefaults, GuildSettings
from bot.i18n import Message
from bot.jobs import Job
from bot.model_health import ModelHealth, ModelUnavailable, rejects_model
from bot.provider import ProviderClient, RetryPolicy
from bot.service import AnimateRequest, Conversation, JobService
from bot.spending import LimitReached, Spending
from bot.store import JobStore
from tests.fake_provider import FakeProvider
from tests.test_service import FakeClock, photo

PRICE = 1.20  # Sora 2 Pro, 720p, 4 s
MEMBER = 111
GUILD = 222
CHANNEL = 333


async def _no_sleep(_: float) -> None:
    return None


class _Notices(list[str]):
    async def append_async(self, text: Message) -> None:
        self.append(str(text))  # English


notices = _Notices()


@dataclass
class Worker:
    """One bot process's worth: its own engine, store, service and admission."""

    store: JobStore
    admission: Admission
    clock: FakeClock

    async def close(self) -> None:
        self.admission.service.fitter.close()
        await self.store.close()


async def _worker(
    url: str, settings: Settings, provider: FakeProvider, session: aiohttp.ClientSession
) -> Worker:
    store = await JobStore.open(url)
    clock = FakeClock()
    client = ProviderClient(
        session,
        base_url=provider.base_url,
        api_key=settings.aimlapi_key,
        retry=RetryPolicy(attempts=2),
        sleep=_no_sleep,
    )
    service = JobService(
        settings=settings, store=store, provider=client, clock=clock, retry_sleep=_no_sleep
    )
    defaults = BotDefaults.from_settings(settings)
    admission = Admission(
        settings=settings,
        service=service,
        spending=Spending(store.engine, defaults),
        guild_settings=GuildSettings(store.engine, defaults),
        clock=clock,
        notify_servers=notices.append_async,
        models=ModelHealth(store),
    )
    return Worker(store, admission, clock)


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    fake = FakeProvider()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


def settings_for(provider: FakeProvider, **extra: str) -> Settings:
    values = {
        "DISCORD_TOKEN": "t",
        "AIMLAPI_KEY": "test-key",
        "AIMLAPI_BASE_URL": provider.base_url,
        "MEMBER_DAILY_USD": f"{2 * PRICE:.2f}",  # exactly two default videos
        "MEMBER_MONTHLY_USD": "0",
        "GUILD_MONTHLY_USD": "0",
        "BOT_MONTHLY_USD": "0",
        "COOLDOWN_SECONDS": "0",
        "MAX_ACTIVE_JOBS_PER_USER": "50",
    }
    values.update(extra)
    return Settings.from_env(values)


async def _announce(job: Job) -> Conversation:
    return Conversation(thread_id=None, status_message_id=None)


async def _request_once(worker: Worker, model: str | None = None) -> Job | BaseException:
    requester = Requester(user_id=MEMBER, guild_id=GUILD, channel_ids={CHANNEL})
    try:
        quote = await worker.admission.quote(
            requester, prompt="waves", model=model, duration=None, resolution=None
        )
        request = AnimateRequest(
            image=photo(),
            prompt="waves",
            requester_id=MEMBER,
            guild_id=GUILD,
            channel_id=CHANNEL,
            upload_limit_bytes=10 * 1024 * 1024,
        )
        return await worker.admission.admit(requester, quote, request, _announce)
    except Exception as exc:
        return exc


@pytest.mark.parametrize("workers", [1, 2], ids=["one worker", "two workers"])
async def test_twenty_requests_at_once_only_the_paid_two_reach_the_provider(
    store_url: str, provider: FakeProvider, workers: int
) -> None:
    settings = settings_for(provider)
    async with aiohttp.ClientSession() as session:
        pool = [await _worker(store_url, settings, provider, session) for _ in range(workers)]
        try:
            results = await asyncio.gather(*(_request_once(pool[i % workers]) for i in range(20)))
            accepted = [r for r in results if isinstance(r, Job)]
            refused = [r for r in results if isinstance(r, LimitReached)]
            usage = await pool[0].admission.spending.usage(
                requester_id=MEMBER, guild_id=GUILD, now=FakeClock().now()
            )
        finally:
            for worker in pool:
                await worker.close()
    assert len(accepted) == 2, [type(r).__name__ for r in results]
    assert len(refused) == 18
    assert all("daily allowance" in str(r) for r in refused)
    assert len(provider.jobs) == 2  # submitted, and paid for, exactly twice
    assert usage.member_today_usd == pytest.approx(2 * PRICE, abs=1e-9)


async def test_a_refused_submit_gives_the_money_back(
    store_url: str, provider: FakeProvider
) -> None:
    provider.fail_next("POST", status=400, message="prompt rejected")
    settings = settings_for(provider)
    async with aiohttp.ClientSession() as session:
        worker = await _worker(store_url, settings, provider, session)
        try:
            result = await _request_once(worker)
            usage = await worker.admission.spending.usage(
                requester_id=MEMBER, guild_id=GUILD, now=FakeClock().now()
            )
        finally:
            await worker.close()
    assert not isinstance(result, Job)
    assert usage.member_today_usd == 0


async def test_the_servers_default_model_is_used_when_none_is_chosen(
    store_url: str, provider: FakeProvider
) -> None:
    settings = settings_for(provider, MEMBER_DAILY_USD="0")
    async with aiohttp.ClientSession() as session:
        worker = await _worker(store_url, settings, provider, session)
        try:
            await worker.admission.guild_settings.update(
                GUILD,
                {"default_model": "openai/sora-2-i2v"},
                actor_id=1,
                now=FakeClock().now(),
            )
            requester = Requester(user_id=MEMBER, guild_id=GUILD, channel_ids={CHANNEL})
            quote = await worker.admission.quote(
                requester, prompt="waves", model=None, duration=None, resolution=None
            )
            in_dm = await worker.admission.quote(
                Requester(user_id=MEMBER, guild_id=None, channel_ids={1}),
                prompt="waves",
                model=None,
                duration=None,
                resolution=None,
            )
        finally:
            await worker.close()
    assert quote.spec.id == "openai/sora-2-i2v" and quote.estimate_usd == pytest.approx(0.40)
    assert in_dm.spec.id == settings.default_model


async def test_a_model_the_provider_refuses_is_taken_off_and_the_rest_named(
    store_url: str, provider: FakeProvider
) -> None:
    notices.clear()
    provider.fail_next(
        "POST",
        status=400,
        message="Body validation error!\nmodel: Invalid enum value. Expected 'openai/sora-2-i2v',"
        " received 'openai/sora-2-pro-i2v'",
    )
    settings = settings_for(provider, MEMBER_DAILY_USD="0")
    async with aiohttp.ClientSession() as session:
        worker = await _worker(store_url, settings, provider, session)
        try:
            refused = await _request_once(worker)
            posts_after_first = provider.count("POST")
            again = await _request_once(worker)  # refused at once, nothing sent
            posts_after_again = provider.count("POST")
            other = await _request_once(worker, model="openai/sora-2-i2v")
            worker.clock.advance(3601)
            later = await _request_once(worker)  # tried again after the hour
        finally:
            await worker.close()
    assert isinstance(refused, ModelUnavailable) and "Sora 2 Pro" in str(refused)
    assert "Models that work" in str(refused) and "Sora 2," in str(refused) + ","
    assert isinstance(again, ModelUnavailable) and posts_after_again == posts_after_first
    assert posts_after_first == 1
    assert isinstance(other, Job)
    assert isinstance(later, Job)
    assert len(notices) == 1 and "Sora 2 Pro" in notices[0]  # servers told once


def test_which_provider_errors_mean_the_model_is_gone() -> None:
    gone = ProviderValidationError(
        "Body validation error!\nmodel: Invalid enum value. Expected 'a', received 'b'",
        status=400,
    )
    maintenance = ProviderServerError(
        "The model is under maintenance, please contact us at help@aimlapi.com.", status=500
    )
    busy = ProviderServerError("Service unavailable", status=503)
    prompt = ProviderValidationError("Body validation error!\nprompt: Required", status=400)
    assert rejects_model(gone) and rejects_model(maintenance)
    assert not rejects_model(busy) and not rejects_model(prompt)


async def test_a_servers_own_unfinished_video_limit_wins_over_the_bot_default(
    store_url: str, provider: FakeProvider
) -> None:
    settings = settings_for(provider, MEMBER_DAILY_USD="0", MAX_ACTIVE_JOBS_PER_USER="1")
    async with aiohttp.ClientSession() as session:
        worker = await _worker(store_url, settings, provider, session)
        try:
            await worker.admission.guild_settings.update(
                GUILD, {"max_active": 3}, actor_id=1, now=worker.clock.now()
            )
            results = [await _request_once(worker) for _ in range(4)]
        finally:
            await worker.close()
    assert [isinstance(r, Job) for r in results] == [True, True, True, False]
    assert isinstance(results[3], TooManyActiveJobs) and "3 videos" in str(results[3])
