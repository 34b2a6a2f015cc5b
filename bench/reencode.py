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
    parser.add_argument("--runs", type=int, default=1, help="best of N runs per preset")
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
            f"Source: {info.width}×{info.height}, {info.duration_seconds:.2f} s, "
            f"audio: {info.has_audio}, {info.size_bytes / 2**20:.1f} MiB; limit 10 MiB; "
            f"{os.cpu_count()} CPUs\n"
        )
        print("| x264 preset | wall time | × clip duration | output | of limit | size | PSNR-Y |")
        print("|---|---|---|---|---|---|---|")
        for preset in args.presets:
            dest = folder / f"fit-{preset}.mp4"
            timings = []
            result = None
            for _ in range(args.runs):
                started = time.perf_counter()
                result = video.fit_to_size(source, dest, LIMIT, preset=preset)
                timings.append(time.perf_counter() - started)
            wall = min(timings)
            if result is None:
                print(
                    f"| {preset} | {wall:.2f} s | {wall / info.duration_seconds:.2f} | "
                    "did not fit | | | |"
                )
                continue
            print(
                f"| {preset} | {wall:.2f} s | {wall / info.duration_seconds:.2f} | "
                f"{result.size_bytes / 2**20:.2f} MiB | {result.size_bytes / LIMIT:.1%} | "
                f"{result.width}×{result.height} | {psnr_luma(source, dest):.2f} dB |"
            )


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
