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
