"""The job store's behaviour, each test on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

import bot.store
from bot.jobs import Job, JobState, NewJob, Outcome
from bot.store import (
    JobStore,
    create_store_engine,
    current_revision,
    head_revision,
    jobs,
    metadata,
    normalize_url,
    upgrade_database,
)

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
BIG_SNOWFLAKE = 1_234_567_890_123_456_789  # > 2**60, like real Discord ids
IMAGE = bytes(range(256)) * 40 + b"\x00\xff"  # every byte value, NULs included


def new_job(**overrides: object) -> NewJob:
    values: dict[str, object] = {
        "requester_id": BIG_SNOWFLAKE,
        "guild_id": BIG_SNOWFLAKE + 1,
        "channel_id": BIG_SNOWFLAKE + 2,
        "model": "openai/sora-2-i2v",
        "prompt": "Zoom out slowly 🚀✨ — ça tourne, 回転する",
        "duration": 4,
        "resolution": "720p",
        "orientation": "landscape",
        "fit": "crop",
        "image_width": 1280,
        "image_height": 720,
        "image_data": IMAGE,
        "upload_limit_bytes": 25 * 1024 * 1024,
        "estimated_usd": 0.4,
        "thread_id": BIG_SNOWFLAKE + 3,
        "status_message_id": BIG_SNOWFLAKE + 4,
        "interaction_id": BIG_SNOWFLAKE + 5,
    }
    values.update(overrides)
    return NewJob(**values)  # type: ignore[arg-type]


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[JobStore]:
    opened = await JobStore.open(store_url)
    try:
        yield opened
    finally:
        await opened.close()


async def polling_job(store: JobStore, next_poll_at: datetime, **overrides: object) -> Job:
    job = await store.create(new_job(**overrides), now=T0)
    moved = await store.transition(
        job.id,
        from_states=[JobState.SUBMITTING],
        to_state=JobState.POLLING,
        now=T0,
        provider_job_id=f"gen-{job.id}",
        next_poll_at=next_poll_at,
    )
    assert moved is not None
    return moved


async def finished_job(store: JobStore) -> Job:
    job = await polling_job(store, T0)
    done = await store.transition(
        job.id,
        from_states=[JobState.POLLING],
        to_state=JobState.TO_DELIVER,
        now=T0,
        outcome=Outcome.VIDEO,
        result_url="https://cdn.example/video.mp4",
        next_poll_at=None,
    )
    assert done is not None
    return done


# --- records -------------------------------------------------------------------------------------


async def test_create_then_get_round_trips_every_field(store: JobStore) -> None:
    created = await store.create(new_job(), now=T0)

    assert created.id > 0
    assert created.state is JobState.SUBMITTING
    assert created.outcome is None
    assert (created.submit_attempts, created.poll_attempts, created.delivery_attempts) == (0, 0, 0)
    assert created.created_at == created.updated_at == T0
    for field in dataclasses.fields(NewJob):
        assert getattr(created, field.name) == getattr(new_job(), field.name), field.name
    assert await store.get(created.id) == created


async def test_every_job_field_survives_a_write_and_read(store: JobStore) -> None:
    job = await store.create(new_job(guild_id=None, thread_id=None), now=T0)
    plus_two = timezone(timedelta(hours=2))
    changes = {
        "outcome": Outcome.FAILED,
        "provider_job_id": "gen_abc123",
        "provider_status": "generating",
        "submit_attempts": 2,
        "poll_attempts": 7,
        "consecutive_errors": 1,
        "next_poll_at": T0 + timedelta(seconds=30),
        "result_url": "https://cdn.example/v.mp4?sig=x",
        "error_message": "Ошибка 💥",
        "cost_usd": 1.25,
        "delivery_worker": "worker-a",
        # Another zone on the way in: the same instant, in UTC, on the way out.
        "delivery_lease_until": datetime(2025, 1, 1, 15, 0, tzinfo=plus_two),
        "delivery_message_id": BIG_SNOWFLAKE + 9,
        "submitted_at": T0 + timedelta(seconds=1),
        "finished_at": T0 + timedelta(seconds=2),
        "delivered_at": T0 + timedelta(seconds=3),
        "image_data": None,
    }
    now = T0 + timedelta(minutes=5)
    updated = await store.transition(
        job.id, from_states=[JobState.SUBMITTING], to_state=JobState.DONE, now=now, **changes
    )

    assert updated is not None
    assert updated == await store.get(job.id)
    assert updated.state is JobState.DONE
    assert updated.updated_at == now
    assert updated.created_at == T0
    assert updated.guild_id is None and updated.thread_id is None
    assert updated.delivery_channel_id == updated.channel_id
    for name, value in changes.items():
        assert getattr(updated, name) == value, name
    assert updated.delivery_lease_until == datetime(2025, 1, 1, 13, 0, tzinfo=UTC)
    for field in dataclasses.fields(Job):
        value = getattr(updated, field.name)
        if isinstance(value, datetime):
            assert value.tzinfo is UTC, field.name


async def test_get_unknown_job_is_none(store: JobStore) -> None:
    assert await store.get(987_654_321) is None


async def test_naive_datetimes_are_rejected(store: JobStore) -> None:
    naive = datetime(2025, 1, 1, 12, 0)  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.create(new_job(), now=naive)
    job = await store.create(new_job(), now=T0)
    with pytest.raises(ValueError, match="next_poll_at"):
        await store.transition(
            job.id, from_states=[JobState.SUBMITTING], now=T0, next_poll_at=naive
        )
    with pytest.raises(ValueError):
        await store.due_for_poll(naive, limit=10)
    assert await store.get(job.id) == job


# --- compare-and-set -----------------------------------------------------------------------------


async def test_transition_from_the_wrong_state_changes_nothing(store: JobStore) -> None:
    job = await store.create(new_job(), now=T0)
    later = T0 + timedelta(seconds=10)

    missed = await store.transition(
        job.id,
        from_states=[JobState.POLLING, JobState.TO_DELIVER],
        to_state=JobState.DONE,
        now=later,
        error_message="should not be written",
    )

    assert missed is None
    assert await store.get(job.id) == job
    moved = await store.transition(
        job.id, from_states=[JobState.SUBMITTING], to_state=JobState.POLLING, now=later
    )
    assert moved is not None
    assert (moved.state, moved.updated_at) == (JobState.POLLING, later)
    # The same move again loses: the job is no longer where the caller thought.
    assert (
        await store.transition(
            job.id, from_states=[JobState.SUBMITTING], to_state=JobState.POLLING, now=later
        )
        is None
    )
    assert (
        await store.transition(job.id + 1000, from_states=[JobState.SUBMITTING], now=later) is None
    )


async def test_transition_only_accepts_job_fields(store: JobStore) -> None:
    job = await store.create(new_job(), now=T0)
    for bad in ({"no_such_field": 1}, {"state": JobState.DONE}, {"id": 5}, {"updated_at": T0}):
        with pytest.raises(TypeError):
            await store.transition(job.id, from_states=[JobState.SUBMITTING], now=T0, **bad)
    assert await store.get(job.id) == job


# --- the loop's queries --------------------------------------------------------------------------


async def test_due_for_poll_is_due_polling_jobs_oldest_first(store: JobStore) -> None:
    late = await polling_job(store, T0 - timedelta(seconds=5))
    later = await polling_job(store, T0 - timedelta(seconds=60))
    exactly_now = await polling_job(store, T0)
    await polling_job(store, T0 + timedelta(seconds=1))  # not yet due
    await store.create(new_job(), now=T0 - timedelta(hours=1))  # submitting: not polled
    await finished_job(store)  # to_deliver: not polled

    due = await store.due_for_poll(T0, limit=10)
    assert [job.id for job in due] == [later.id, late.id, exactly_now.id]
    assert [job.id for job in await store.due_for_poll(T0, limit=2)] == [later.id, late.id]
    assert await store.due_for_poll(T0 - timedelta(hours=1), limit=10) == []
    assert await store.next_wakeup() == T0 - timedelta(seconds=60)


async def test_next_wakeup_without_polling_jobs_is_none(store: JobStore) -> None:
    await store.create(new_job(), now=T0)
    assert await store.next_wakeup() is None


async def test_count_active_counts_only_this_users_unfinished_jobs(store: JobStore) -> None:
    user, other = BIG_SNOWFLAKE, BIG_SNOWFLAKE + 100
    assert await store.count_active(user) == 0
    await store.create(new_job(requester_id=user), now=T0)
    await polling_job(store, T0, requester_id=user)
    finished = await polling_job(store, T0, requester_id=user)
    await store.transition(
        finished.id, from_states=[JobState.POLLING], to_state=JobState.DONE, now=T0
    )
    await store.create(new_job(requester_id=other), now=T0)

    assert await store.count_active(user) == 2
    assert await store.count_active(other) == 1


async def test_unsubmitted_and_submit_leases(store: JobStore) -> None:
    first = await store.create(new_job(), now=T0)
    second = await store.create(new_job(), now=T0 + timedelta(seconds=1))
    await polling_job(store, T0)

    assert [job.id for job in await store.unsubmitted(limit=10)] == [first.id, second.id]
    assert [job.id for job in await store.due_for_submit(T0, limit=10)] == [first.id, second.id]

    leased = await store.claim_submit(first.id, now=T0, lease_seconds=60)
    assert leased is not None
    assert (leased.submit_attempts, leased.next_poll_at) == (1, T0 + timedelta(seconds=60))
    # Leased: neither due nor claimable again until the lease runs out.
    assert (
        await store.claim_submit(first.id, now=T0 + timedelta(seconds=30), lease_seconds=60) is None
    )
    assert [job.id for job in await store.due_for_submit(T0, limit=10)] == [second.id]
    after = T0 + timedelta(seconds=61)
    assert first.id in [job.id for job in await store.due_for_submit(after, limit=10)]
    again = await store.claim_submit(first.id, now=after, lease_seconds=60)
    assert again is not None and again.submit_attempts == 2


# --- delivery: exactly once ----------------------------------------------------------------------


async def test_ten_concurrent_claims_have_exactly_one_winner(store: JobStore) -> None:
    job = await finished_job(store)

    results = await asyncio.gather(
        *(store.claim_delivery(job.id, worker=f"w{i}", now=T0, lease_seconds=60) for i in range(10))
    )

    winners = [result for result in results if result is not None]
    assert len(winners) == 1
    winner = winners[0]
    assert winner.state is JobState.DELIVERING
    assert winner.delivery_attempts == 1
    assert winner.delivery_lease_until == T0 + timedelta(seconds=60)
    assert await store.get(job.id) == winner


async def test_two_workers_on_one_database_claim_exactly_once(
    store: JobStore, store_url: str
) -> None:
    job = await finished_job(store)
    second_worker = await JobStore.open(store_url)
    try:
        claims = [
            worker.claim_delivery(job.id, worker=name, now=T0, lease_seconds=60)
            for _ in range(5)
            for worker, name in ((store, "worker-a"), (second_worker, "worker-b"))
        ]
        results = await asyncio.gather(*claims)
    finally:
        await second_worker.close()

    winners = [result for result in results if result is not None]
    assert len(winners) == 1
    assert winners[0].delivery_worker in ("worker-a", "worker-b")
    stored = await store.get(job.id)
    assert stored is not None and stored.delivery_attempts == 1


async def test_two_processes_claiming_polls_split_the_due_jobs(
    store: JobStore, store_url: str
) -> None:
    due = [await polling_job(store, T0 - timedelta(seconds=i)) for i in range(12)]
    later = await polling_job(store, T0 + timedelta(minutes=5))
    second_process = await JobStore.open(store_url)
    try:
        rounds = await asyncio.gather(
            *(
                worker.claim_due_polls(T0, worker=name, lease_seconds=30, limit=3)
                for _ in range(4)
                for worker, name in ((store, "worker-a"), (second_process, "worker-b"))
            )
        )
    finally:
        await second_process.close()

    claimed = [job for batch in rounds for job in batch]
    # Every due job polled once, by one worker; the job not yet due by nobody.
    assert sorted(job.id for job in claimed) == sorted(job.id for job in due)
    assert later.id not in {job.id for job in claimed}
    for job in claimed:
        stored = await store.get(job.id)
        assert stored is not None
        assert stored.poll_worker == job.poll_worker
        assert stored.next_poll_at == T0 + timedelta(seconds=30)  # the lease
        # Handed back as planned, for the timeout accounting.
        assert job.next_poll_at == next(d.next_poll_at for d in due if d.id == job.id)
    assert await store.claim_due_polls(T0, worker="worker-c", lease_seconds=30, limit=50) == []


async def test_two_processes_claiming_submits_split_the_due_jobs(
    store: JobStore, store_url: str
) -> None:
    due = [await store.create(new_job(), now=T0 + timedelta(seconds=i)) for i in range(12)]
    await polling_job(store, T0)  # at the provider already: not a submit
    now = T0 + timedelta(minutes=1)
    second_process = await JobStore.open(store_url)
    try:
        # Four claims of three, two per process, all at the same moment: exactly the due set.
        rounds = await asyncio.gather(
            *(
                worker.claim_due_submits(now, worker=name, lease_seconds=30, limit=3)
                for _ in range(2)
                for worker, name in ((store, "worker-a"), (second_process, "worker-b"))
            )
        )
    finally:
        await second_process.close()

    # No claim came back short (nobody read a job another was taking), none twice.
    assert [len(batch) for batch in rounds] == [3, 3, 3, 3]
    claimed = [job for batch in rounds for job in batch]
    assert sorted(job.id for job in claimed) == [job.id for job in due]
    for batch, name in zip(rounds, ["worker-a", "worker-b"] * 2, strict=True):
        for job in batch:
            assert (job.submit_worker, job.submit_attempts) == (name, 1)
            assert job.next_poll_at == now + timedelta(seconds=30)  # the lease
            assert await store.get(job.id) == job
    assert await store.claim_due_submits(now, worker="worker-c", lease_seconds=30, limit=50) == []
    # Once the leases lapse (the workers died), the jobs are due again, oldest first.
    later = now + timedelta(seconds=31)
    again = await store.claim_due_submits(later, worker="worker-c", lease_seconds=30, limit=2)
    assert [(job.id, job.submit_attempts) for job in again] == [(due[0].id, 2), (due[1].id, 2)]


async def test_two_processes_claiming_deliveries_split_the_finished_jobs(
    store: JobStore, store_url: str
) -> None:
    finished = [await finished_job(store) for _ in range(12)]
    second_process = await JobStore.open(store_url)
    try:
        rounds = await asyncio.gather(
            *(
                worker.claim_due_deliveries(T0, worker=name, lease_seconds=60, limit=3)
                for _ in range(2)
                for worker, name in ((store, "worker-a"), (second_process, "worker-b"))
            )
        )
    finally:
        await second_process.close()

    assert [len(batch) for batch in rounds] == [3, 3, 3, 3]
    claimed = [job for batch in rounds for job in batch]
    assert sorted(job.id for job in claimed) == [job.id for job in finished]
    for batch, name in zip(rounds, ["worker-a", "worker-b"] * 2, strict=True):
        for job in batch:
            assert (job.state, job.delivery_worker, job.delivery_attempts) == (
                JobState.DELIVERING,
                name,
                1,
            )
            assert job.delivery_lease_until == T0 + timedelta(seconds=60)
            assert await store.get(job.id) == job
    during = T0 + timedelta(seconds=30)
    assert await store.claim_due_deliveries(during, worker="c", lease_seconds=60, limit=50) == []
    # worker-a died: after its leases lapse its jobs go to the next claimer, except the ones
    # that claimer says it is posting already.
    after = T0 + timedelta(seconds=61)
    mine = [job.id for job in claimed][:2]
    taken = await store.claim_due_deliveries(
        after, worker="c", lease_seconds=60, limit=50, skip=mine
    )
    assert sorted(job.id for job in taken) == [job.id for job in finished if job.id not in mine]
    assert all(job.delivery_attempts == 2 for job in taken)


async def test_batch_claims_without_returning_behave_the_same(store: JobStore) -> None:
    store._returning = False  # SQLite < 3.35
    first, second = await finished_job(store), await finished_job(store)
    [claimed] = await store.claim_due_deliveries(T0, worker="a", lease_seconds=60, limit=1)
    assert claimed == await store.get(first.id)
    assert (claimed.state, claimed.delivery_worker) == (JobState.DELIVERING, "a")
    waiting = await store.create(new_job(), now=T0)
    [leased] = await store.claim_due_submits(T0, worker="a", lease_seconds=60, limit=5)
    assert leased == await store.get(waiting.id) and leased.submit_worker == "a"
    assert [job.id for job in await store.due_for_delivery(T0, limit=5)] == [second.id]


async def test_poll_lease_is_renewed_by_its_worker_and_taken_over_when_it_lapses(
    store: JobStore,
) -> None:
    job = await polling_job(store, T0)
    [claimed] = await store.claim_due_polls(T0, worker="a", lease_seconds=3, limit=5)
    assert claimed.id == job.id

    # While "a" holds it, it is not due for anyone; "a" may renew, "b" may not.
    assert (
        await store.claim_due_polls(T0 + timedelta(seconds=2), worker="b", lease_seconds=3, limit=5)
        == []
    )
    assert await store.hold_poll(job.id, worker="a", now=T0 + timedelta(seconds=2), lease_seconds=3)
    assert not await store.hold_poll(job.id, worker="b", now=T0, lease_seconds=3)
    assert (
        await store.claim_due_polls(T0 + timedelta(seconds=4), worker="b", lease_seconds=3, limit=5)
        == []
    )

    # "a" died: once its lease lapses, "b" takes the poll, and "a" can no longer renew.
    [taken] = await store.claim_due_polls(
        T0 + timedelta(seconds=6), worker="b", lease_seconds=3, limit=5
    )
    assert taken.id == job.id and taken.poll_worker == "b"
    assert not await store.hold_poll(
        job.id, worker="a", now=T0 + timedelta(seconds=6), lease_seconds=3
    )


async def test_live_lease_holds_and_expired_lease_moves_to_another_worker(store: JobStore) -> None:
    job = await finished_job(store)
    assert [j.id for j in await store.due_for_delivery(T0, limit=10)] == [job.id]
    first = await store.claim_delivery(job.id, worker="worker-a", now=T0, lease_seconds=60)
    assert first is not None

    during = T0 + timedelta(seconds=30)
    assert await store.due_for_delivery(during, limit=10) == []
    assert (
        await store.claim_delivery(job.id, worker="worker-b", now=during, lease_seconds=60) is None
    )

    after = T0 + timedelta(seconds=61)
    assert [j.id for j in await store.due_for_delivery(after, limit=10)] == [job.id]
    second = await store.claim_delivery(job.id, worker="worker-b", now=after, lease_seconds=60)
    assert second is not None
    assert (second.delivery_worker, second.delivery_attempts) == ("worker-b", 2)

    # worker-a wakes up late: its lease is gone, so it must not mark the job delivered.
    assert not await store.finish_delivery(job.id, worker="worker-a", now=after, message_id=1)
    assert await store.finish_delivery(
        job.id, worker="worker-b", now=after, message_id=BIG_SNOWFLAKE
    )
    done = await store.get(job.id)
    assert done is not None
    assert (done.state, done.delivered_at, done.delivery_message_id) == (
        JobState.DONE,
        after,
        BIG_SNOWFLAKE,
    )
    assert await store.due_for_delivery(after + timedelta(days=1), limit=10) == []
    # Done is terminal for delivery: nobody can claim or finish it again.
    assert (
        await store.claim_delivery(job.id, worker="worker-c", now=after, lease_seconds=60) is None
    )
    assert not await store.finish_delivery(job.id, worker="worker-b", now=after, message_id=None)


async def test_finish_delivery_needs_a_claim(store: JobStore) -> None:
    job = await finished_job(store)
    assert not await store.finish_delivery(job.id, worker="worker-a", now=T0, message_id=None)
    assert (await store.get(job.id)) == job


async def test_without_returning_the_fallback_behaves_the_same(store: JobStore) -> None:
    # What runs on SQLite < 3.35: UPDATE, then re-read in the same transaction.
    store._returning = False
    job = await finished_job(store)
    assert job.state is JobState.TO_DELIVER
    assert await store.transition(job.id, from_states=[JobState.POLLING], now=T0) is None
    results = await asyncio.gather(
        *(store.claim_delivery(job.id, worker=f"w{i}", now=T0, lease_seconds=60) for i in range(5))
    )
    assert len([r for r in results if r is not None]) == 1


# --- meta ----------------------------------------------------------------------------------------


async def test_meta_values_are_stored_and_replaced(store: JobStore) -> None:
    assert await store.get_meta("fingerprint") is None
    await store.set_meta("fingerprint", "abc")
    await store.set_meta("fingerprint", "def")
    assert await store.get_meta("fingerprint") == "def"


# --- schema, migrations, durability --------------------------------------------------------------


def _schema_differences(connection: Connection) -> list[object]:
    # bot.spending and bot.guild_settings put their tables on bot.store.metadata when imported.
    importlib.import_module("bot.spending")
    importlib.import_module("bot.guild_settings")
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_migrated_schema_equals_the_table_definition(store: JobStore) -> None:
    async with store.engine.connect() as conn:
        differences = await conn.run_sync(_schema_differences)
    assert differences == []


async def test_upgrade_in_place_keeps_old_rows(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await upgrade_database(store_url, "0001")
    assert await current_revision(store_url) == "0001"
    old = dataclasses.asdict(new_job())
    for later in (
        "interaction_id",
        "parent_job_id",
        "chain_length",
        "end_image_data",
        "delivery_target",
        "interaction_token",
        "interaction_expires_at",
        "origin_guild_id",
        "member_language",
        "public_language",
    ):
        del old[later]
    engine = create_store_engine(store_url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(
                jobs.insert().values(
                    **old, state=JobState.POLLING, created_at=T0, updated_at=T0, next_poll_at=T0
                )
            )
            job_id = result.inserted_primary_key[0]  # type: ignore[index]
    finally:
        await engine.dispose()

    caplog.set_level(logging.INFO, logger="alembic")
    store = await JobStore.open(store_url)
    try:
        assert await current_revision(store_url) == head_revision()
        job = await store.get(job_id)
        assert job is not None
        assert (job.state, job.prompt, job.image_data) == (JobState.POLLING, old["prompt"], IMAGE)
        assert job.cost_usd is None and job.interaction_id is None
        assert [j.id for j in await store.due_for_poll(T0, limit=5)] == [job_id]
        updated = await store.transition(
            job_id, from_states=[JobState.POLLING], now=T0, cost_usd=0.8, interaction_id=7
        )
        assert updated is not None and (updated.cost_usd, updated.interaction_id) == (0.8, 7)
    finally:
        await store.close()
    assert "Running upgrade 0001 -> 0002" in caplog.text

    caplog.clear()
    again = await JobStore.open(store_url)
    await again.close()
    assert "Running upgrade" not in caplog.text  # already at head: nothing to do
    assert await current_revision(store_url) == head_revision()


async def test_migrations_run_off_the_event_loop(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Alembic's script loading and upgrade are synchronous; on the loop they held it ~0.2 s
    # (gateway heartbeats, interactions and polls of a process already running all wait).
    upgrade_threads: list[int] = []
    real_upgrade = bot.store._run_upgrade

    def recording_upgrade(connection: Connection, revision: str) -> None:
        upgrade_threads.append(threading.get_ident())
        real_upgrade(connection, revision)

    monkeypatch.setattr(bot.store, "_run_upgrade", recording_upgrade)
    opened = await JobStore.open(store_url)
    try:
        assert await opened.get(1) is None
    finally:
        await opened.close()
    assert upgrade_threads and threading.get_ident() not in upgrade_threads


async def test_jobs_survive_closing_and_reopening(store_url: str) -> None:
    first = await JobStore.open(store_url)
    job = await polling_job(first, T0 + timedelta(seconds=5))
    await first.set_meta("k", "v")
    await first.close()

    reopened = await JobStore.open(store_url, migrate=False)
    try:
        assert await reopened.get(job.id) == job
        assert await reopened.get_meta("k") == "v"
        assert await reopened.next_wakeup() == T0 + timedelta(seconds=5)
    finally:
        await reopened.close()


# --- SQLite specifics and URLs -------------------------------------------------------------------


def test_database_urls_are_normalised() -> None:
    assert normalize_url("postgres://u:p@h:5432/d") == "postgresql+asyncpg://u:p@h:5432/d"
    assert normalize_url("postgresql://u@h/d") == "postgresql+asyncpg://u@h/d"
    assert normalize_url("postgresql+asyncpg://u@h/d") == "postgresql+asyncpg://u@h/d"
    assert normalize_url("sqlite:///./data/x.db") == "sqlite+aiosqlite:///./data/x.db"
    with pytest.raises(ValueError) as caught:
        normalize_url("mysql://user:hunter2@h/d")
    assert "hunter2" not in str(caught.value)


async def test_sqlite_file_is_created_with_wal_and_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "animate.db"
    store = await JobStore.open(f"sqlite:///{path}")  # the raw form is accepted too
    try:
        async with store.engine.connect() as conn:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
            timeout = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar()
    finally:
        await store.close()
    assert path.exists()
    assert (mode, timeout) == ("wal", 10_000)
    # The file is an ordinary SQLite database that other tools can read.
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
    raw.close()


async def test_open_with_a_password_does_not_log_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bot.store")
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises
        await JobStore.open("postgresql://bot:hunter2@127.0.0.1:1/nowhere")
    assert "hunter2" not in caplog.text


def test_schema_exposes_big_ids() -> None:
    for name in ("requester_id", "guild_id", "channel_id", "thread_id", "interaction_id"):
        assert isinstance(jobs.c[name].type, sa.BigInteger), name


# --- PostgreSQL connections ----------------------------------------------------------------------


async def _backend_pid(engine: sa.ext.asyncio.AsyncEngine) -> int:
    async with engine.connect() as conn:
        pid = int((await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one())
        await conn.execute(sa.text("SELECT 1"))  # hold it across another round trip
        return pid


async def _connections_to(engine: sa.ext.asyncio.AsyncEngine) -> int:
    async with engine.connect() as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        return int((await conn.execute(sa.text(query))).scalar_one())


async def test_postgres_keeps_pool_size_connections_open_from_the_start(
    fresh_postgres_url: str,
) -> None:
    store = await JobStore.open(fresh_postgres_url, pool_size=3)
    try:
        assert await _connections_to(store.engine) == 3  # opened at start, not under load
        first = await asyncio.gather(*(_backend_pid(store.engine) for _ in range(12)))
        second = await asyncio.gather(*(_backend_pid(store.engine) for _ in range(12)))
        # Twelve at once share the three connections, and they are the same ones each time:
        # nothing was opened for a burst and closed after it.
        assert len(set(first) | set(second)) <= 3
        assert await _connections_to(store.engine) == 3
    finally:
        await store.close()


def _options(url: str, env: dict[str, str] | None = None) -> tuple[sa.URL, dict[str, object]]:
    return bot.store.postgres_connect_options(sa.make_url(url), env or {})


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://u:pw@127.0.0.1:5432/app",
        "postgresql+asyncpg://u:pw@localhost/app",
        "postgresql+asyncpg://u:pw@[::1]:5432/app",
        "postgresql+asyncpg://u@/app?host=/var/run/postgresql",
        "postgresql+asyncpg://u@/app",
    ],
)
def test_a_server_on_this_machine_is_not_offered_tls(url: str) -> None:
    assert _options(url) == (sa.make_url(url), {"ssl": False})


def test_a_remote_server_keeps_asyncpgs_default_tls() -> None:
    url = "postgresql+asyncpg://u:pw@db.example.com:5432/app"
    assert _options(url) == (sa.make_url(url), {})
    # No host in the URL, but PGHOST names a remote one.
    assert _options("postgresql+asyncpg://u@/app", {"PGHOST": "db.example.com"})[1] == {}


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://u:pw@127.0.0.1:5432/app?ssl=require",
        "postgresql+asyncpg://u:pw@db.example.com/app?ssl=verify-full",
    ],
)
def test_an_explicit_ssl_setting_is_left_to_asyncpg(url: str) -> None:
    assert _options(url) == (sa.make_url(url), {})


def test_pgsslmode_in_the_environment_is_respected_for_local_servers() -> None:
    url = "postgresql+asyncpg://u:pw@127.0.0.1:5432/app"
    assert _options(url, {"PGSSLMODE": "require"}) == (sa.make_url(url), {})


@pytest.mark.parametrize("mode", ["require", "verify-full", "disable"])
def test_libpq_sslmode_in_the_url_becomes_asyncpgs_ssl(mode: str) -> None:
    for host in ("127.0.0.1", "db.example.com"):
        url = f"postgresql+asyncpg://u:pw@{host}:5432/app"
        assert _options(f"{url}?sslmode={mode}") == (sa.make_url(url), {"ssl": mode})


async def test_an_explicit_sslmode_is_obeyed_by_the_real_server(fresh_postgres_url: str) -> None:
    # The test server speaks no TLS: "disable" works, "require" must fail, not be overridden
    # by the loopback default. (asyncpg itself refuses a `sslmode` argument.)
    store = await JobStore.open(fresh_postgres_url + "?sslmode=disable", pool_size=1)
    await store.close()
    with pytest.raises(ConnectionError, match="SSL"):
        await JobStore.open(fresh_postgres_url + "?sslmode=require", migrate=False, pool_size=1)


async def _migrated_store(url: str, ping_after_idle_seconds: float) -> JobStore:
    await upgrade_database(url)
    engine = create_store_engine(url, pool_size=2, ping_after_idle_seconds=ping_after_idle_seconds)
    return JobStore(engine)


async def test_connections_in_use_are_not_pinged_before_every_transaction(
    fresh_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

    pings: list[object] = []
    original = asyncpg_dialect.AsyncAdapt_asyncpg_connection.ping

    def counted(self: object) -> None:
        pings.append(self)
        original(self)  # type: ignore[arg-type]

    monkeypatch.setattr(asyncpg_dialect.AsyncAdapt_asyncpg_connection, "ping", counted)
    store = await _migrated_store(fresh_postgres_url, ping_after_idle_seconds=600)
    try:
        for number in range(20):
            await store.set_meta("counter", str(number))
        assert await store.get_meta("counter") == "19"
        assert pings == []  # one round trip less per transaction
    finally:
        await store.close()


async def test_a_connection_the_server_dropped_while_idle_is_replaced_before_use(
    fresh_postgres_url: str, postgres_server: object
) -> None:
    import asyncpg

    store = await _migrated_store(fresh_postgres_url, ping_after_idle_seconds=0)
    try:
        await asyncio.gather(*(_backend_pid(store.engine) for _ in range(2)))  # both made
        admin = await asyncpg.connect(
            fresh_postgres_url.replace("postgresql+asyncpg://", "postgresql://")
        )
        try:
            # A database restart, as the pool sees it: every connection it holds is gone.
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        await store.set_meta("after", "restart")  # no error: the dead connection was replaced
        assert await store.get_meta("after") == "restart"
    finally:
        await store.close()
