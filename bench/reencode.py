"""Re-encoding a too-large video to fit Discord's 10 MiB upload limit: time, size and quality.

Makes a 12-second 1792×1024 clip with sound (textured, moving picture; encoded at a high quality
so the file is well over 10 MiB), then runs bot.video.fit_to_size on it with a 10 MiB limit.
Reports wall time as a fraction of the clip's duration (goal: at most 0.5, i.e. twice as fast as
playing it), the output size against the limit, and the PSNR of the result against the source
(luma, every frame decoded from both files, from the mean squared error over the whole clip).

    python bench/reencode.py [--presets superfast veryfast] [--seconds 12] [--runs 1]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import av
from av.video.frame import VideoFrame
from PIL import Image, ImageChops, ImageStat

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot import video
from tests.videos import make_test_clip

LIMIT = 10 * 1024 * 1024
WIDTH, HEIGHT = 1792, 1024
SOURCE_CRF = 14  # high quality, so the source is far over the limit (about 27 MB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=[video.X264_PRESET])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--runs", type=int, default=1, help="best of N runs per encode")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = make_test_clip(
            folder / "source.mp4",
            width=WIDTH,
            height=HEIGHT,
            seconds=args.seconds,
            audio=True,
            crf=SOURCE_CRF,
        )
        info = video.probe(source)
        assert info.size_bytes > LIMIT, "the source must be over the limit"
        print(
            f"Source: {info.width}×{info.height}, {info.duration_seconds:.2f} s, 24 fps, "
            f"audio: {info.has_audio}, {info.size_bytes / 2**20:.1f} MiB; "
            f"{os.cpu_count()} CPUs\n"
        )

        print("Fit to 10 MiB:\n")
        print(HEADER)
        for preset in args.presets:
            print(fit_row(source, info, folder, LIMIT, preset, args.runs, label=preset))

        floor_limit = smallest_full_size_limit(info)
        print(f"\nSmaller budgets ({video.X264_PRESET}):\n")
        print(HEADER)
        for label, limit in (
            (f"at the floor: {floor_limit / 2**20:.2f} MiB", floor_limit),
            (f"half that: {floor_limit / 2**21:.2f} MiB", floor_limit // 2),
        ):
            print(fit_row(source, info, folder, limit, video.X264_PRESET, args.runs, label=label))

        print("\nExtend helpers:\n")
        print("| operation | wall time |")
        print("|---|---|")
        started = time.perf_counter()
        jpeg = video.last_frame_jpeg(source)
        print(
            f"| last_frame_jpeg ({len(jpeg) // 1024} KiB JPEG) | "
            f"{time.perf_counter() - started:.2f} s |"
        )
        started = time.perf_counter()
        joined = video.join([source, source], folder / "joined.mp4")
        wall = time.perf_counter() - started
        print(
            f"| join 2 × {info.duration_seconds:.0f} s → {joined.duration_seconds:.1f} s, "
            f"{joined.size_bytes / 2**20:.1f} MiB | {wall:.2f} s "
            f"({wall / joined.duration_seconds:.2f} × duration) |"
        )


HEADER = (
    "| encode | wall time | × clip duration | output | of limit | picture | bits/pixel | PSNR-Y |\n"
    "|---|---|---|---|---|---|---|---|"
)


def fit_row(
    source: Path,
    info: video.VideoInfo,
    folder: Path,
    limit: int,
    preset: str,
    runs: int,
    *,
    label: str,
) -> str:
    dest = folder / "fitted.mp4"
    timings = []
    result = None
    for _ in range(runs):
        started = time.perf_counter()
        result = video.fit_to_size(source, dest, limit, preset=preset)
        timings.append(time.perf_counter() - started)
    wall = min(timings)
    ratio = wall / info.duration_seconds
    if result is None:
        return f"| {label} | {wall:.2f} s | {ratio:.2f} | did not fit | | | | |"
    with av.open(str(dest)) as container:
        video_bytes = sum(packet.size for packet in container.demux(video=0))
    bpp = video_bytes * 8 / (result.duration_seconds * result.width * result.height * 24)
    return (
        f"| {label} | {wall:.2f} s | {ratio:.2f} | {result.size_bytes / 2**20:.2f} MiB | "
        f"{result.size_bytes / limit:.1%} | {result.width}×{result.height} | {bpp:.3f} | "
        f"{psnr_luma(source, dest):.2f} dB |"
    )


def smallest_full_size_limit(info: video.VideoInfo) -> int:
    """The smallest byte limit that still keeps the full picture size (the quality floor)."""
    low, high = 1, LIMIT
    while low < high:
        middle = (low + high) // 2
        plan = video.plan_encode(
            width=info.width,
            height=info.height,
            fps=24.0,
            duration_seconds=info.duration_seconds,
            has_audio=info.has_audio,
            max_bytes=middle,
        )
        if plan is not None and (plan.width, plan.height) == (info.width, info.height):
            high = middle
        else:
            low = middle + 1
    return low


def psnr_luma(reference: Path, distorted: Path) -> float:
    """PSNR of the luma plane over all frames, paired in order (both files are constant rate)."""
    squared_error = 0.0
    pixels = 0
    with av.open(str(reference)) as ref, av.open(str(distorted)) as dis:
        ref_frames = ref.decode(ref.streams.video[0])
        dis_frames = dis.decode(dis.streams.video[0])
        for ref_frame, dis_frame in zip(ref_frames, dis_frames, strict=True):
            a = _luma(ref_frame)
            b = _luma(dis_frame)
            if b.size != a.size:
                b = b.resize(a.size, Image.Resampling.BICUBIC)
            stat = ImageStat.Stat(ImageChops.difference(a, b))
            squared_error += stat.sum2[0]
            pixels += a.width * a.height
    mse = squared_error / pixels
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _luma(frame: VideoFrame) -> Image.Image:
    gray = frame.reformat(format="gray")
    plane = gray.planes[0]
    return Image.frombytes(
        "L", (gray.width, gray.height), bytes(plane), "raw", "L", plane.line_size
    )


if __name__ == "__main__":
    main()
