"""bot.video on real mp4 files made with PyAV (tests/videos.py): what a member would see in Discord.

A fitted upload must really be under the limit, still be a playable mp4 with its sound and its
length, and start playing before it has fully arrived ('moov' before 'mdat'). Extend's first
frame must be the clip's real last frame, and a joined chain must show each clip in order.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import av
import pytest
from PIL import Image, ImageChops, ImageStat

from bot import video
from bot.video import VideoError
from tests.videos import make_test_clip

FPS = 24
ONE_FRAME = 1 / FPS


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {
        # crf 12: a high-quality source, several times larger than the limits used below.
        "busy": make_test_clip(
            folder / "busy.mp4", width=640, height=360, seconds=3, crf=12, pattern_seed=1
        ),
        "small": make_test_clip(folder / "small.mp4", width=320, height=180, seconds=2),
        # Keyframes every second, so finding the last frame can seek near the end.
        "long": make_test_clip(
            folder / "long.mp4",
            width=320,
            height=180,
            seconds=5,
            pattern_seed=3,
            keyframe_every=FPS,
        ),
        "silent": make_test_clip(
            folder / "silent.mp4",
            width=320,
            height=180,
            seconds=1.5,
            fps=30,
            audio=False,
            pattern_seed=2,
        ),
        "wide": make_test_clip(
            folder / "wide.mp4", width=1280, height=720, seconds=1, crf=12, pattern_seed=4
        ),
    }


# --- helpers: read results the way a player would ---------------------------------------------


def frames_of(path: Path) -> list[Image.Image]:
    with av.open(str(path)) as container:
        return [video.frame_to_image(frame) for frame in container.decode(video=0)]


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel, 0..255."""
    if a.size != b.size:
        b = b.resize(a.size, Image.Resampling.BICUBIC)
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


def top_level_boxes(path: Path) -> list[str]:
    """The mp4 file's top-level box types in file order."""
    data = path.read_bytes()
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            (size,) = struct.unpack(">Q", data[offset + 8 : offset + 16])
        elif size == 0:
            size = len(data) - offset
        boxes.append(kind.decode("latin-1"))
        offset += size
    return boxes


def stream_summary(path: Path) -> dict[str, Any]:
    with av.open(str(path)) as container:
        v = container.streams.video[0]
        audio = container.streams.audio
        assert v.duration is not None and v.time_base is not None
        return {
            "format": container.format.name,
            "video_codec": v.codec_context.name,
            "audio_codec": audio[0].codec_context.name if audio else None,
            "video_seconds": float(v.duration * v.time_base),
            "size": (v.codec_context.width, v.codec_context.height),
        }


def assert_plays_inline(path: Path) -> None:
    boxes = top_level_boxes(path)
    assert "moov" in boxes and "mdat" in boxes
    assert boxes.index("moov") < boxes.index("mdat"), boxes


# --- probe ----------------------------------------------------------------------------------------


def test_probe_reads_size_length_and_sound(clips: dict[str, Path]) -> None:
    info = video.probe(clips["small"])
    assert (info.width, info.height, info.has_audio) == (320, 180, True)
    assert info.duration_seconds == pytest.approx(2.0, abs=ONE_FRAME)
    assert info.size_bytes == clips["small"].stat().st_size
    assert video.probe(clips["silent"]).has_audio is False


@pytest.mark.parametrize(
    "call",
    [
        video.probe,
        lambda p: video.fit_to_size(p, p.with_suffix(".out.mp4"), 1_000_000),
        video.last_frame_jpeg,
        lambda p: video.join([p], p.with_suffix(".joined.mp4")),
    ],
    ids=["probe", "fit_to_size", "last_frame_jpeg", "join"],
)
def test_garbage_is_a_friendly_video_error(tmp_path: Path, call: Callable[[Path], Any]) -> None:
    garbage = tmp_path / "secret-name.mp4"
    garbage.write_bytes(b"this is not a video at all " * 200)
    with pytest.raises(VideoError) as caught:
        call(garbage)
    assert "secret-name" not in str(caught.value)
    assert str(tmp_path) not in str(caught.value)
    assert not list(tmp_path.glob("*.part")), "no half-written file is left behind"


# --- fit_to_size ----------------------------------------------------------------------------------


def test_oversized_clip_is_reencoded_under_the_limit(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    source = clips["busy"]
    limit = 150_000
    assert source.stat().st_size > 2 * limit
    dest = tmp_path / "fitted.mp4"

    info = video.fit_to_size(source, dest, limit)

    assert info is not None
    assert info == video.probe(dest)
    assert dest.stat().st_size <= limit
    # The budget is above the quality floor at full size, so the picture keeps its size.
    assert (info.width, info.height) == (640, 360)
    before, after = stream_summary(source), stream_summary(dest)
    assert after["format"].startswith("mov,mp4")
    assert (after["video_codec"], after["audio_codec"]) == ("h264", "aac")
    assert after["video_seconds"] == pytest.approx(before["video_seconds"], abs=2 * ONE_FRAME)
    assert info.duration_seconds == pytest.approx(3.0, abs=2 * ONE_FRAME)
    assert info.has_audio
    assert len(frames_of(dest)) == 3 * FPS
    assert_plays_inline(dest)
    # Not a stretched budget: the encode uses most of what it was allowed.
    assert dest.stat().st_size > 0.8 * limit


def test_tight_budget_lowers_the_resolution_and_keeps_the_shape(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    source = clips["wide"]  # 1280×720, 1 s
    full_size_floor_bytes = 0.05 * 1280 * 720 * FPS / 8
    limit = int(full_size_floor_bytes * 0.6)  # 60% of the floor's bits at full size
    dest = tmp_path / "smaller.mp4"

    info = video.fit_to_size(source, dest, limit)

    assert info is not None
    assert dest.stat().st_size <= limit
    assert 360 <= info.height < 720
    assert info.width / info.height == pytest.approx(16 / 9, rel=0.02)
    assert info.has_audio
    assert_plays_inline(dest)


def test_when_nothing_acceptable_fits_there_is_no_file(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    dest = tmp_path / "fitted.mp4"
    dest.write_bytes(b"an older file at the destination")

    assert video.fit_to_size(clips["small"], dest, 12_000) is None

    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_an_encode_over_the_limit_is_retried_lower_once(
    clips: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Planning for 30% more bytes than allowed makes the first encode come out too large.
    monkeypatch.setattr(video, "SAFETY_FRACTION", -0.3)
    attempts: list[int] = []
    real_reencode = video._reencode

    def counted(*args: Any, **kwargs: Any) -> None:
        attempts.append(kwargs["plan"].video_bps)
        real_reencode(*args, **kwargs)

    monkeypatch.setattr(video, "_reencode", counted)
    dest = tmp_path / "fitted.mp4"
    limit = 150_000

    info = video.fit_to_size(clips["busy"], dest, limit)

    assert info is not None and dest.stat().st_size <= limit
    assert len(attempts) == 2 and attempts[1] < attempts[0]


def test_plan_keeps_full_size_above_the_floor_and_gives_up_below_the_smallest_size() -> None:
    common: dict[str, Any] = {"fps": 24.0, "duration_seconds": 12.0, "has_audio": True}
    ten_mib = 10 * 1024 * 1024

    full = video.plan_encode(width=1792, height=1024, max_bytes=ten_mib, **common)
    assert full is not None and (full.width, full.height) == (1792, 1024)
    assert full.audio_bps == 128_000
    budget_bits = (full.video_bps + full.audio_bps) * 12
    assert 0.9 * ten_mib * 8 < budget_bits < ten_mib * 8

    scaled = video.plan_encode(width=1792, height=1024, max_bytes=ten_mib // 8, **common)
    assert scaled is not None and 360 <= scaled.height < 1024
    assert scaled.video_bps / (scaled.width * scaled.height * 24) >= video.QUALITY_FLOOR_BPP

    assert video.plan_encode(width=1792, height=1024, max_bytes=200_000, **common) is None


def test_odd_sized_source_is_fitted_and_joined_at_even_size(tmp_path: Path) -> None:
    odd = make_test_clip(
        tmp_path / "odd.mp4", width=321, height=181, seconds=1, pixel_format="yuv444p"
    )

    fitted = video.fit_to_size(odd, tmp_path / "fitted.mp4", 60_000)
    joined = video.join([odd, odd], tmp_path / "joined.mp4")

    assert fitted is not None and (fitted.width, fitted.height) == (320, 180)
    assert (joined.width, joined.height) == (320, 180)


def test_fits_run_side_by_side_in_threads(clips: dict[str, Path], tmp_path: Path) -> None:
    dests = [tmp_path / f"fit-{i}.mp4" for i in range(3)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda d: video.fit_to_size(clips["small"], d, 60_000), dests))
    for dest, info in zip(dests, results, strict=True):
        assert info is not None and info.size_bytes <= 60_000
        assert len(frames_of(dest)) == 2 * FPS


# --- last frame -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small", "long"])  # "long" decodes only the tail after a seek
def test_last_frame_is_the_clip_s_real_last_frame(clips: dict[str, Path], name: str) -> None:
    source_frames = frames_of(clips[name])

    jpeg = video.last_frame_jpeg(clips[name])

    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.mode == "RGB"
    assert image.size == source_frames[-1].size
    assert mean_difference(image, source_frames[-1]) < 3
    assert mean_difference(image, source_frames[0]) > 20, "the test clip must change over time"


# --- join -----------------------------------------------------------------------------------------


def test_join_plays_the_clips_in_order_with_sound_throughout(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    first, second = clips["small"], clips["silent"]  # 2 s with sound, then 1.5 s at 30 fps without
    dest = tmp_path / "chain.mp4"

    info = video.join([first, second], dest)

    assert info == video.probe(dest)
    assert (info.width, info.height) == (320, 180)
    assert info.duration_seconds == pytest.approx(3.5, abs=2 * ONE_FRAME)
    assert info.has_audio
    with av.open(str(dest)) as container:
        audio = container.streams.audio[0]
        assert audio.duration is not None and audio.time_base is not None
        assert float(audio.duration * audio.time_base) == pytest.approx(3.5, abs=0.05)
        v = container.streams.video[0]
        assert v.average_rate == FPS
    joined = frames_of(dest)
    assert len(joined) == round(3.5 * FPS)
    assert mean_difference(joined[0], frames_of(first)[0]) < 3
    assert mean_difference(joined[2 * FPS - 1], frames_of(first)[-1]) < 3
    assert mean_difference(joined[2 * FPS], frames_of(second)[0]) < 3
    assert mean_difference(joined[-1], frames_of(second)[-1]) < 3
    assert_plays_inline(dest)


def test_join_scales_a_clip_of_another_size_to_the_first(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    info = video.join([clips["small"], clips["wide"]], tmp_path / "chain.mp4")

    assert (info.width, info.height) == (320, 180)
    assert info.duration_seconds == pytest.approx(3.0, abs=2 * ONE_FRAME)
    last = frames_of(tmp_path / "chain.mp4")[-1]
    assert mean_difference(last, frames_of(clips["wide"])[-1]) < 6
