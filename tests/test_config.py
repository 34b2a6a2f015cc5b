from __future__ import annotations

import logging

import pytest

from bot.config import Settings
from bot.errors import ConfigError

REQUIRED = {"DISCORD_TOKEN": "discord-secret-token", "AIMLAPI_KEY": "aiml-secret-key"}


def test_defaults_from_required_keys_only() -> None:
    settings = Settings.from_env(REQUIRED)
    assert settings.aimlapi_base_url == "https://api.aimlapi.com"
    assert settings.discord_api_base_url == "https://discord.com/api/v10"
    assert settings.discord_gateway_url == "wss://gateway.discord.gg/"
    assert settings.default_model == "openai/sora-2-pro-i2v"
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert settings.dev_guild_id is None
    assert settings.default_duration == 4


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(
            {
                "POLL_TICK_SECONDS": "soon",
                "DEV_GUILD_ID": "my-server",
                "DEFAULT_MODEL": "openai/dall-e",
                "AIMLAPI_BASE_URL": "ftp://x",
                "LOG_LEVEL": "LOUD",
                "MAX_IMAGE_BYTES": "-5",
            }
        )
    text = str(info.value)
    for key in (
        "DISCORD_TOKEN",
        "AIMLAPI_KEY",
        "POLL_TICK_SECONDS",
        "DEV_GUILD_ID",
        "DEFAULT_MODEL",
        "AIMLAPI_BASE_URL",
        "LOG_LEVEL",
        "MAX_IMAGE_BYTES",
    ):
        assert key in text
    assert len(info.value.problems) == 8
    assert ".env.example" in text


def test_postgres_urls_are_normalised_for_asyncpg() -> None:
    for raw in ("postgres://u:pw@db:5432/app", "postgresql://u:pw@db:5432/app"):
        settings = Settings.from_env({**REQUIRED, "DATABASE_URL": raw})
        assert settings.database_url == "postgresql+asyncpg://u:pw@db:5432/app"
        assert "pw" not in settings.safe_database_url


def test_default_resolution_must_suit_default_model() -> None:
    with pytest.raises(ConfigError, match="1080p"):
        Settings.from_env(
            {**REQUIRED, "DEFAULT_MODEL": "openai/sora-2-i2v", "DEFAULT_RESOLUTION": "1080p"}
        )
    switched = Settings.from_env({**REQUIRED, "DEFAULT_MODEL": "google/veo-3.1-i2v"})
    assert switched.default_model_spec.label == "Veo 3.1"
    assert switched.default_resolution == "720p"
    assert switched.default_duration == 4


def test_secrets_never_show(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.from_env({**REQUIRED, "DATABASE_URL": "postgres://bot:db-password@db/app"})
    caplog.set_level(logging.DEBUG)
    logging.getLogger("test").info("settings: %s %r", settings, settings)
    shown = repr(settings) + str(settings) + caplog.text
    for secret in ("discord-secret-token", "aiml-secret-key", "db-password"):
        assert secret not in shown
    assert settings.discord_token.reveal() == "discord-secret-token"


def test_bad_values_do_not_echo_secrets() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**REQUIRED, "DATABASE_URL": "mysql://root:hunter2@db/app"})
    assert "hunter2" not in str(info.value)


def test_video_url_hosts_default_to_the_documented_cdn_and_can_be_listed() -> None:
    assert Settings.from_env(REQUIRED).video_url_hosts == ("cdn.aimlapi.com",)
    settings = Settings.from_env(
        {**REQUIRED, "VIDEO_URL_HOSTS": " cdn.aimlapi.com, .Media.Example.COM. ,"}
    )
    assert settings.video_url_hosts == ("cdn.aimlapi.com", "media.example.com")


@pytest.mark.parametrize(
    "raw", ["com", "*.example.com", "10.0.0.1", "https://cdn.example.com", "cdn.example.com:443"]
)
def test_video_url_hosts_must_be_host_names(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**REQUIRED, "VIDEO_URL_HOSTS": raw})
    assert "VIDEO_URL_HOSTS" in str(info.value)


# --- costs and limits ----------------------------------------------------------------------------


def test_spending_defaults_are_conservative() -> None:
    settings = Settings.from_env(REQUIRED)
    assert (settings.member_daily_usd, settings.member_monthly_usd) == (3.0, 20.0)
    assert (settings.guild_monthly_usd, settings.bot_monthly_usd) == (50.0, 100.0)
    assert (settings.confirm_above_usd, settings.confirm_timeout_seconds) == (2.0, 300.0)
    assert settings.cooldown_seconds == 30
    assert settings.refund_failed_jobs is True
    assert dict(settings.model_prices) == {}


def test_spending_keys_are_parsed() -> None:
    settings = Settings.from_env(
        {
            **REQUIRED,
            "MEMBER_DAILY_USD": "0",  # no limit
            "MEMBER_MONTHLY_USD": "$12.50",
            "GUILD_MONTHLY_USD": "75",
            "BOT_MONTHLY_USD": "1000",
            "CONFIRM_ABOVE_USD": "0.5",
            "CONFIRM_TIMEOUT_SECONDS": "120",
            "COOLDOWN_SECONDS": "0",
            "REFUND_FAILED_JOBS": "off",
            "MODEL_PRICES": (
                " google/veo-3.1-i2v = 0.40 , bytedance/seedance-2-0:1080p=0.25,"
                "openai/sora-2-pro-i2v:720p=0.35"
            ),
        }
    )
    assert settings.member_daily_usd == 0.0
    assert settings.member_monthly_usd == 12.5
    assert (settings.guild_monthly_usd, settings.bot_monthly_usd) == (75.0, 1000.0)
    assert (settings.confirm_above_usd, settings.confirm_timeout_seconds) == (0.5, 120.0)
    assert settings.cooldown_seconds == 0
    assert settings.refund_failed_jobs is False
    assert dict(settings.model_prices) == {
        "google/veo-3.1-i2v": 0.40,
        "bytedance/seedance-2-0:1080p": 0.25,
        "openai/sora-2-pro-i2v:720p": 0.35,
    }


@pytest.mark.parametrize(
    ("key", "raw", "words"),
    [
        ("MEMBER_DAILY_USD", "-1", "positive amount"),
        ("MEMBER_MONTHLY_USD", "nan", "positive amount"),
        ("GUILD_MONTHLY_USD", "inf", "positive amount"),
        ("BOT_MONTHLY_USD", "1e9", "at most"),
        ("CONFIRM_ABOVE_USD", "two dollars", "US dollars"),
        ("CONFIRM_TIMEOUT_SECONDS", "0", "greater than 0"),
        ("COOLDOWN_SECONDS", "1.5", "whole number"),
        ("REFUND_FAILED_JOBS", "maybe", "true or false"),
        ("MODEL_PRICES", "openai/dall-e=0.1", "catalogue model"),
        ("MODEL_PRICES", "google/veo-3.1-i2v", "model=price"),
        ("MODEL_PRICES", "google/veo-3.1-i2v:4k=0.4", "not '4k'"),
        ("MODEL_PRICES", "google/veo-3.1-i2v=cheap", "USD per second"),
        ("MODEL_PRICES", "google/veo-3.1-i2v=-0.4", "between 0 and"),
    ],
)
def test_bad_spending_values_are_named(key: str, raw: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**REQUIRED, key: raw})
    assert len(info.value.problems) == 1
    assert key in info.value.problems[0]
    assert words in info.value.problems[0]


def test_database_pool_size_defaults_to_ten_and_can_be_set() -> None:
    assert Settings.from_env(REQUIRED).database_pool_size == 10
    settings = Settings.from_env({**REQUIRED, "DATABASE_POOL_SIZE": "24"})
    assert settings.database_pool_size == 24


@pytest.mark.parametrize("raw", ["0", "-3", "many"])
def test_database_pool_size_must_be_a_positive_whole_number(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**REQUIRED, "DATABASE_POOL_SIZE": raw})
    assert len(info.value.problems) == 1
    assert "DATABASE_POOL_SIZE" in info.value.problems[0]


def test_pool_size_is_documented_in_the_example_file() -> None:
    from pathlib import Path

    example = (Path(__file__).resolve().parents[1] / ".env.example").read_text()
    assert "\nDATABASE_POOL_SIZE=10\n" in example
