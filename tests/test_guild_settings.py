"""Per-server settings: effective values, validated changes with audit text, roles and access.

Every database test runs on SQLite and on a real PostgreSQL server (`store_url`).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Connection

from bot.guild_settings import BotDefaults, GuildSettings, SettingRejected, build_config
from bot.i18n import render
from bot.store import JobStore, alembic_config, create_store_engine, upgrade_database

NOW = datetime(2025, 3, 14, 15, 0, tzinfo=UTC)
GUILD = 987_654_321_098_765_432
ADMIN = 1_234_567_890_123_456_789
CHANNEL_A, CHANNEL_B, THREAD = 101, 102, 103
ROLE_A, ROLE_B = 201, 202

DEFAULTS = BotDefaults(
    member_daily_usd=3.0,
    member_monthly_usd=20.0,
    guild_monthly_usd=50.0,
    bot_monthly_usd=100.0,
    confirm_above_usd=2.0,
    max_active=3,
    cooldown_seconds=30,
)


def en(value: object) -> str:
    """A message or value as an English reader sees it."""
    return render(value, "en")


@pytest.fixture
def settings(store: JobStore) -> GuildSettings:
    return GuildSettings(store.engine, DEFAULTS)


async def test_a_new_server_has_the_bot_defaults(settings: GuildSettings) -> None:
    config = await settings.get(GUILD)
    assert config.member_daily_usd.value == 3.0 and not config.member_daily_usd.own
    assert config.guild_monthly_usd.value == 50.0
    assert config.default_model.value == "openai/sora-2-pro-i2v"
    assert (config.paused, config.log_channel_id, config.role_limits) == (False, None, ())
    assert all("bot default" in en(line) for line in config.lines()[:9])
    # The bot budget is shown, not changeable.
    assert "$100.00" in "\n".join(map(en, config.lines()))


async def test_a_change_is_the_servers_own_and_described_for_the_audit_line(
    settings: GuildSettings,
) -> None:
    changes = await settings.update(
        GUILD, {"member_daily_usd": 5, "max_active": 0}, actor_id=ADMIN, now=NOW
    )

    assert [en(c.describe()) for c in changes] == [
        f"<@{ADMIN}> changed the member daily allowance from $3.00 (bot default) to $5.00.",
        f"<@{ADMIN}> changed unfinished videos per member from 3 (bot default) to no limit.",
    ]
    config = await settings.get(GUILD)
    assert config.member_daily_usd.value == 5.0 and config.member_daily_usd.own
    assert config.max_active.value == 0 and config.max_active.own
    assert "member daily allowance: $5.00 (this server)" in en(config.lines()[0])
    # Another server is untouched.
    assert not (await settings.get(GUILD + 1)).member_daily_usd.own


async def test_a_negative_value_returns_to_the_bot_default(settings: GuildSettings) -> None:
    await settings.update(
        GUILD, {"guild_monthly_usd": 10, "cooldown_seconds": 0}, actor_id=ADMIN, now=NOW
    )
    changes = await settings.update(
        GUILD, {"guild_monthly_usd": -1, "cooldown_seconds": -5}, actor_id=ADMIN, now=NOW
    )
    assert [(en(c.before), en(c.after)) for c in changes] == [
        ("$10.00", "$50.00 (bot default)"),
        ("none", "30 s (bot default)"),
    ]
    config = await settings.get(GUILD)
    assert not config.guild_monthly_usd.own and config.guild_monthly_usd.value == 50.0


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"member_daily_usd": float("nan")}, "not nan"),
        ({"member_monthly_usd": float("inf")}, "not inf"),
        ({"guild_monthly_usd": 1e12}, "not a sensible"),
        ({"max_active": 10**6}, "too large"),
        ({"cooldown_seconds": 2.5}, "whole number"),
        ({"default_model": "openai/dall-e"}, "not a model"),
        ({"default_resolution": "1080p", "default_model": "openai/sora-2-i2v"}, "does not offer"),
        ({"default_duration": 5}, "not 5"),
    ],
)
async def test_bad_values_are_refused_in_one_line_and_change_nothing(
    settings: GuildSettings, changes: dict[str, object], words: str
) -> None:
    await settings.update(GUILD, {"member_daily_usd": 4}, actor_id=ADMIN, now=NOW)
    before = await settings.get(GUILD)
    with pytest.raises(SettingRejected) as refused:
        # A good value alongside a bad one is not applied either.
        await settings.update(GUILD, {**changes, "confirm_above_usd": 1}, actor_id=ADMIN, now=NOW)
    assert words in en(refused.value.reason)
    assert "\n" not in en(refused.value.reason)
    assert await settings.get(GUILD) == before


async def test_defaults_follow_the_model(settings: GuildSettings) -> None:
    await settings.update(
        GUILD,
        {
            "default_model": "google/veo-3.1-i2v",
            "default_resolution": "1080p",
            "default_duration": 6,
        },
        actor_id=ADMIN,
        now=NOW,
    )
    config = await settings.get(GUILD)
    assert (config.default_model.value, config.default_resolution.value) == (
        "google/veo-3.1-i2v",
        "1080p",
    )
    assert config.default_duration.value == 6
    # Sora 2 has no 1080p and no 6 s: the server's choices are dropped, and the audit says so.
    changes = await settings.update(
        GUILD, {"default_model": "openai/sora-2-i2v"}, actor_id=ADMIN, now=NOW
    )
    assert [en(c.setting) for c in changes] == [
        "the default model",
        "the default resolution",
        "the default duration",
    ]
    config = await settings.get(GUILD)
    assert (config.default_resolution.value, config.default_duration.value) == ("720p", 4)


async def test_pause_and_log_channel(settings: GuildSettings) -> None:
    changes = await settings.update(
        GUILD, {"paused": True, "log_channel_id": CHANNEL_A}, actor_id=ADMIN, now=NOW
    )
    assert [(en(c.before), en(c.after)) for c in changes] == [
        ("no", "yes"),
        ("none", f"<#{CHANNEL_A}>"),
    ]
    config = await settings.get(GUILD)
    assert config.paused and config.log_channel_id == CHANNEL_A
    await settings.update(GUILD, {"paused": False, "log_channel_id": None}, actor_id=ADMIN, now=NOW)
    config = await settings.get(GUILD)
    assert not config.paused and config.log_channel_id is None


async def test_setting_the_same_value_says_so(settings: GuildSettings) -> None:
    await settings.update(GUILD, {"member_daily_usd": 5}, actor_id=ADMIN, now=NOW)
    (change,) = await settings.update(GUILD, {"member_daily_usd": 5.0}, actor_id=ADMIN, now=NOW)
    assert not change.changed
    assert en(change.describe()) == f"<@{ADMIN}> left the member daily allowance at $5.00."


async def test_role_limits_most_generous_and_removal(settings: GuildSettings) -> None:
    change = await settings.set_role_limit(
        GUILD, ROLE_A, member_daily_usd=5, member_monthly_usd=None, actor_id=ADMIN, now=NOW
    )
    assert en(change.describe()) == (
        f"<@{ADMIN}> changed the allowance of <@&{ROLE_A}> from none to "
        "daily $5.00, monthly server's."
    )
    await settings.set_role_limit(
        GUILD, ROLE_B, member_daily_usd=1, member_monthly_usd=40, actor_id=ADMIN, now=NOW
    )
    config = await settings.get(GUILD)
    assert config.allowance([ROLE_A, ROLE_B]) == (5.0, 40.0)
    assert config.allowance([ROLE_A]) == (5.0, 20.0)  # monthly: the server's
    assert config.allowance([ROLE_B]) == (1.0, 40.0)  # a role may also restrict
    assert config.allowance([]) == (3.0, 20.0)
    with pytest.raises(SettingRejected):
        await settings.set_role_limit(
            GUILD, ROLE_A, member_daily_usd=float("nan"), member_monthly_usd=None,
            actor_id=ADMIN, now=NOW,
        )  # fmt: skip
    removed = await settings.remove_role_limit(GUILD, ROLE_A, actor_id=ADMIN)
    assert en(removed.after) == "none" and en(removed.before).startswith("daily $5.00")
    assert (await settings.get(GUILD)).allowance([ROLE_A]) == (3.0, 20.0)


async def test_access_by_channel_and_role(settings: GuildSettings) -> None:
    config = await settings.get(GUILD)
    assert config.access.refusal(channel_ids=[CHANNEL_B], role_ids=[]) is None  # open by default

    change = await settings.set_access(GUILD, "channel", CHANNEL_A, allowed=True, actor_id=ADMIN)
    assert (en(change.before), en(change.after)) == ("every channel", f"<#{CHANNEL_A}>")
    await settings.set_access(GUILD, "role", ROLE_A, allowed=True, actor_id=ADMIN)
    access = (await settings.get(GUILD)).access

    refusal = access.refusal(channel_ids=[CHANNEL_B], role_ids=[ROLE_A])
    assert refusal is not None and f"<#{CHANNEL_A}>" in en(refusal)
    refusal = access.refusal(channel_ids=[CHANNEL_A], role_ids=[ROLE_B])
    assert refusal is not None and f"<@&{ROLE_A}>" in en(refusal)
    assert access.refusal(channel_ids=[CHANNEL_A], role_ids=[ROLE_A]) is None
    # In a thread, its parent channel counts.
    assert access.refusal(channel_ids=[THREAD, CHANNEL_A], role_ids=[ROLE_A]) is None
    # A deleted channel or role drops out: a list left empty restricts nothing.
    assert (
        access.refusal(
            channel_ids=[CHANNEL_B], role_ids=[], existing_channels=[CHANNEL_B], existing_roles=[]
        )
        is None
    )

    await settings.set_access(GUILD, "channel", CHANNEL_A, allowed=False, actor_id=ADMIN)
    cleared = await settings.clear_access(GUILD, "role", actor_id=ADMIN)
    assert (en(cleared.before), en(cleared.after)) == (f"<@&{ROLE_A}>", "everyone")
    assert (await settings.get(GUILD)).access.refusal(channel_ids=[CHANNEL_B], role_ids=[]) is None


async def test_a_deleted_channel_or_role_is_forgotten(settings: GuildSettings) -> None:
    await settings.set_access(GUILD, "channel", CHANNEL_A, allowed=True, actor_id=ADMIN)
    await settings.set_access(GUILD, "role", ROLE_A, allowed=True, actor_id=ADMIN)
    await settings.set_role_limit(
        GUILD, ROLE_A, member_daily_usd=5, member_monthly_usd=None, actor_id=ADMIN, now=NOW
    )
    await settings.update(GUILD, {"log_channel_id": CHANNEL_A}, actor_id=ADMIN, now=NOW)
    await settings.forget(GUILD, channel_id=CHANNEL_A, role_id=ROLE_A)
    config = await settings.get(GUILD)
    assert config.access.channel_ids == frozenset() and config.access.role_ids == frozenset()
    assert config.role_limits == () and config.log_channel_id is None


async def test_concurrent_changes_each_see_the_previous_value(settings: GuildSettings) -> None:
    results = await asyncio.gather(
        *(
            settings.update(GUILD, {"member_daily_usd": value}, actor_id=ADMIN, now=NOW)
            for value in range(1, 11)
        )
    )
    # Every change saw the one before it: the befores and afters form one chain.
    befores = sorted(en(c.before) for (c,) in results)
    afters = sorted(en(c.after) for (c,) in results)
    assert len(set(afters)) == 10
    assert len(set(befores) - set(afters)) == 1  # only the bot default is not someone's after


def test_confirmation_threshold() -> None:
    config = build_config(DEFAULTS, GUILD, None)
    assert not config.needs_confirmation(1.2)
    assert config.needs_confirmation(2.0)  # at or above
    assert not config.needs_confirmation(None)
    never = build_config(replace(DEFAULTS, confirm_above_usd=0), GUILD, None)
    assert not never.needs_confirmation(100)


def test_in_dms_the_bot_defaults_apply() -> None:
    config = build_config(DEFAULTS, None, None)
    assert config.guild_id is None
    assert config.allowance([ROLE_A]) == (3.0, 20.0)
    assert config.any_money_limit
    assert not build_config(BotDefaults(), None, None).any_money_limit


# --- the migration -------------------------------------------------------------------------------


def _downgrade(connection: Connection, revision: str) -> None:
    command.downgrade(alembic_config(connection), revision)


def _tables(connection: Connection) -> set[str]:
    return set(sa.inspect(connection).get_table_names())


async def test_migration_0005_upgrades_a_0004_database_and_can_be_undone(store_url: str) -> None:
    await upgrade_database(store_url, "0004")
    store = await JobStore.open(store_url)
    try:
        await GuildSettings(store.engine, DEFAULTS).update(
            GUILD, {"member_daily_usd": 5}, actor_id=ADMIN, now=NOW
        )
    finally:
        await store.close()
    engine = create_store_engine(store_url)
    try:
        async with engine.begin() as conn:
            assert {
                "ledger",
                "guild_settings",
                "role_limits",
                "guild_access",
            } <= await conn.run_sync(_tables)
            await conn.run_sync(_downgrade, "0004")
        async with engine.connect() as conn:
            left = await conn.run_sync(_tables)
        assert {"ledger", "guild_settings", "role_limits", "guild_access"}.isdisjoint(left)
        assert "jobs" in left
    finally:
        await engine.dispose()


async def test_log_channels_lists_every_server_with_one(settings: GuildSettings) -> None:
    await settings.update(GUILD, {"log_channel_id": CHANNEL_A}, actor_id=ADMIN, now=NOW)
    await settings.update(GUILD + 1, {"log_channel_id": CHANNEL_B}, actor_id=ADMIN, now=NOW)
    await settings.update(GUILD + 2, {"paused": True}, actor_id=ADMIN, now=NOW)
    assert await settings.log_channels() == {GUILD: CHANNEL_A, GUILD + 1: CHANNEL_B}
