from __future__ import annotations

import pytest

from bot.catalog import CATALOG, DEFAULT_MODEL_ID
from bot.errors import InputRejected


def test_sora_presets_match_the_contract() -> None:
    pro = CATALOG["openai/sora-2-pro-i2v"]
    assert pro.preset("720p").size("landscape") == (1280, 720)
    assert pro.preset("720p").size("portrait") == (720, 1280)
    assert pro.preset("1080p").size("landscape") == (1792, 1024)
    assert pro.preset("1080p").size("portrait") == (1024, 1792)
    standard = CATALOG["openai/sora-2-i2v"]
    assert list(standard.resolutions) == ["720p"]
    assert DEFAULT_MODEL_ID == "openai/sora-2-pro-i2v"


def test_at_least_four_other_models() -> None:
    others = [m for m in CATALOG if not m.startswith("openai/")]
    assert len(others) >= 4


def test_sora_request_shape() -> None:
    body = CATALOG["openai/sora-2-pro-i2v"].build_request(
        prompt="waves roll in",
        image_url="data:image/jpeg;base64,AAAA",
        duration=8,
        resolution="1080p",
        orientation="portrait",
    )
    assert body == {
        "model": "openai/sora-2-pro-i2v",
        "prompt": "waves roll in",
        "image_url": "data:image/jpeg;base64,AAAA",
        "duration": 8,
        "resolution": "1080p",
        "aspect_ratio": "9:16",
    }
    assert type(body["duration"]) is int


def test_models_without_aspect_or_resolution_fields_do_not_send_them() -> None:
    body = CATALOG["klingai/video-v2-6-pro-image-to-video"].build_request(
        prompt="p",
        image_url="https://x/y.jpg",
        duration=5,
        resolution="1080p",
        orientation="landscape",
    )
    assert "aspect_ratio" not in body and "resolution" not in body
    assert body["duration"] == 5


@pytest.mark.parametrize(
    ("model", "duration", "resolution", "words"),
    [
        ("openai/sora-2-i2v", 4, "1080p", "720p"),
        ("openai/sora-2-pro-i2v", 5, "720p", "4, 8 or 12"),
        ("google/veo-3.1-i2v", 12, "720p", "4, 6 or 8"),
    ],
)
def test_shapes_the_provider_would_reject_are_never_built(
    model: str, duration: int, resolution: str, words: str
) -> None:
    with pytest.raises(InputRejected) as info:
        CATALOG[model].build_request(
            prompt="p",
            image_url="https://x",
            duration=duration,
            resolution=resolution,
            orientation="landscape",
        )
    assert words in str(info.value.reason)  # English rendering of the message


def test_prompt_limits() -> None:
    kling = CATALOG["klingai/video-v2-6-pro-image-to-video"]
    with pytest.raises(InputRejected, match="2500"):
        kling.check(prompt="x" * 2501, duration=5, resolution="1080p")
    with pytest.raises(InputRejected, match="prompt"):
        kling.check(prompt="   ", duration=5, resolution="1080p")


def test_price_estimates_where_known() -> None:
    pro = CATALOG["openai/sora-2-pro-i2v"]
    assert pro.estimate_usd(duration=4, resolution="720p") == 1.2
    assert pro.estimate_usd(duration=12, resolution="1080p") == 6.0
    assert CATALOG["google/veo-3.1-i2v"].estimate_usd(duration=8, resolution="720p") is None


def test_every_entry_is_consistent() -> None:
    for spec in CATALOG.values():
        assert spec.default_resolution in spec.resolutions, spec.id
        assert spec.default_duration in spec.durations, spec.id
        for preset in spec.resolutions.values():
            w, h = preset.size("landscape")
            assert w > h and preset.size("portrait") == (h, w), spec.id
        assert spec.typical_seconds > 0
