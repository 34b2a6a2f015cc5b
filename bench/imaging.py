"""Benchmark bot.imaging.prepare_image against the naive Pillow pipeline.

Run from anywhere: `python bench/imaging.py [--runs N] [--source WxH]`. Builds a photo-like
JPEG in memory (12 megapixels unless --source says otherwise), then for each target size
measures the median wall time of
  naive: full decode -> convert("RGB") -> one LANCZOS cover-crop resize -> JPEG encode
  ours:  prepare_image (DCT-scaled decode + reduce() + one BICUBIC resize -> JPEG encode)
with the same JPEG settings, the PSNR between the two outputs, and each pipeline's peak memory
(resident-set growth, measured in a fresh subprocess because tracemalloc cannot see Pillow's C
allocations). Prints a Markdown table (its figures are in the README).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import PIL
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps, ImageStat, features

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.catalog import CATALOG, Preset  # noqa: E402
from bot.imaging import JPEG_QUALITY, JPEG_SUBSAMPLING, prepare_image  # noqa: E402

SOURCE_SIZE = (4000, 3000)
TARGETS: dict[str, Preset] = {
    "1792x1024": CATALOG["openai/sora-2-pro-i2v"].preset("1080p"),
    "1280x720": CATALOG["openai/sora-2-pro-i2v"].preset("720p"),
}


def build_photo(size: tuple[int, int] = SOURCE_SIZE, seed: int = 12) -> bytes:
    """A deterministic photo-like JPEG: sky and ground gradients, blurred and sharp shapes,
    fine texture and sensor noise, so that JPEG sizes and decode costs are realistic."""
    rng = random.Random(seed)
    w, h = size
    ramp = Image.linear_gradient("L").resize(size, Image.Resampling.BILINEAR)
    vignette = ImageOps.invert(Image.radial_gradient("L").resize(size, Image.Resampling.BILINEAR))
    sky = Image.merge(
        "RGB",
        (
            ramp.point(lambda v: 70 + v // 3),
            ramp.point(lambda v: 120 + v // 3),
            ramp.point(lambda v: 235 - v // 6),
        ),
    )
    img = sky.copy()
    draw = ImageDraw.Draw(img)
    horizon = int(h * 0.55)
    draw.rectangle((0, horizon, w, h), fill=(92, 110, 60))
    # Distant soft shapes (hills, clouds), then blur them like an out-of-focus background.
    for _ in range(60):
        x, y = rng.randrange(w), rng.randrange(int(h * 0.7))
        rx, ry = rng.randrange(80, 700), rng.randrange(40, 300)
        shade = rng.randrange(60, 250)
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=(shade, shade, min(255, shade + 20)))
    img = img.filter(ImageFilter.GaussianBlur(12))
    draw = ImageDraw.Draw(img)
    # Sharp foreground detail: "buildings" with windows, branches, a few lettered signs.
    for _ in range(40):
        x0, y0 = rng.randrange(w), rng.randrange(horizon - 600, h)
        bw, bh = rng.randrange(80, 400), rng.randrange(150, 900)
        colour = (rng.randrange(40, 220), rng.randrange(40, 200), rng.randrange(40, 180))
        draw.rectangle((x0, y0 - bh, x0 + bw, y0), fill=colour, outline=(20, 20, 20), width=3)
        for wx in range(x0 + 10, x0 + bw - 20, 30):
            for wy in range(y0 - bh + 10, y0 - 20, 40):
                lit = rng.random() < 0.4
                draw.rectangle(
                    (wx, wy, wx + 14, wy + 22), fill=(250, 230, 150) if lit else (30, 40, 60)
                )
    for _ in range(300):
        x, y = rng.randrange(w), rng.randrange(horizon, h)
        draw.line(
            (x, y, x + rng.randrange(-120, 120), y - rng.randrange(20, 200)),
            fill=(rng.randrange(20, 90), rng.randrange(50, 120), rng.randrange(10, 60)),
            width=rng.randrange(1, 5),
        )
    for _ in range(25):
        x, y = rng.randrange(w - 400), rng.randrange(h - 100)
        draw.text((x, y), f"OPEN 24H  CAFÉ  No.{rng.randrange(100)}", fill=(255, 255, 255))
    # Texture (grass, foliage) and sensor noise, both per channel.
    texture = Image.effect_noise(size, 30).filter(ImageFilter.GaussianBlur(1.2))
    bands = []
    for band in img.split():
        band = ImageChops.add(band, texture, scale=1.0, offset=-128)
        band = ImageChops.add(band, Image.effect_noise(size, 6), scale=1.0, offset=-128)
        bands.append(ImageChops.multiply(band, vignette.point(lambda v: 150 + v * 105 // 255)))
    photo = Image.merge("RGB", bands)
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def naive(data: bytes, size: tuple[int, int]) -> bytes:
    """The obvious pipeline: decode everything, then one LANCZOS cover-crop resize."""
    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
    frame = ImageOps.fit(rgb, size, method=Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    frame.save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
    return buf.getvalue()


def ours(data: bytes, target: str) -> bytes:
    return prepare_image(data, preset=TARGETS[target], orientation="landscape").jpeg


def psnr(a: bytes, b: bytes) -> float:
    with Image.open(io.BytesIO(a)) as ia, Image.open(io.BytesIO(b)) as ib:
        return psnr_images(ia, ib)


def psnr_images(a: Image.Image, b: Image.Image) -> float:
    if a.size != b.size:
        raise SystemExit(f"size mismatch: {a.size} vs {b.size}")
    rms = ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).rms
    mse = sum(r * r for r in rms) / len(rms)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def median_seconds(fns: dict[str, Callable[[], bytes]], runs: int) -> dict[str, float]:
    """Median time of each function; runs are interleaved so background load hits all alike."""
    for fn in fns.values():
        fn()  # warm-up: imports, plugin init, page faults
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_rss_growth_mb(photo_path: Path, pipeline: str, target: str) -> float:
    """Run one pipeline in a fresh interpreter; report how far its peak RSS rose."""
    result = subprocess.run(
        [sys.executable, __file__, "--child", pipeline, target, str(photo_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return float(result.stdout.strip())


def _peak_rss_kib() -> int:
    # VmHWM is this process's own high-water mark; ru_maxrss would include the parent's RSS,
    # which Linux carries over into a forked child.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(pipeline: str, target: str, photo_path: str) -> None:
    data = Path(photo_path).read_bytes()
    # Warm the imports and plugin registry on a tiny image so the baseline excludes them.
    tiny = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiny, "JPEG")
    Image.open(io.BytesIO(tiny.getvalue())).load()
    before = _peak_rss_kib()
    if pipeline == "naive":
        naive(data, TARGETS[target].landscape)
    else:
        ours(data, target)
    print(f"{(_peak_rss_kib() - before) / 1024:.1f}")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"Pillow {PIL.__version__}, libjpeg-turbo {features.version('libjpeg_turbo')}"
    )


def _decode(data: bytes, draft: tuple[int, int] | None) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    if draft is not None:
        im.draft("RGB", draft)
    im.load()
    return im


def _fit(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    return ImageOps.fit(im, size, method=Image.Resampling.LANCZOS)


def _jpeg(im: Image.Image, optimize: bool) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING, optimize=optimize)
    return buf.getvalue()


def stage_table(photo: bytes, source: tuple[int, int], runs: int) -> list[str]:
    """Where the time goes at 1792x1024: each step alone, on the full and the 1/2-scale decode."""
    # Steps are timed on their own, so they need not add up exactly to the pipeline medians.
    size = TARGETS["1792x1024"].landscape
    cover = max(size[0] / source[0], size[1] / source[1])
    needed = (math.ceil(source[0] * cover), math.ceil(source[1] * cover))
    full, half = _decode(photo, None), _decode(photo, needed)
    frame_full, frame_half = _fit(full, size), _fit(half, size)
    steps: dict[str, Callable[[], object]] = {
        "decode, full size": partial(_decode, photo, None),
        f"decode, DCT-scaled to {half.size[0]}x{half.size[1]}": partial(_decode, photo, needed),
        'convert("RGB") copy of the full image': partial(full.convert, "RGB"),
        "LANCZOS cover resize from full size": partial(_fit, full, size),
        f"LANCZOS cover resize from {half.size[0]}x{half.size[1]}": partial(_fit, half, size),
        "JPEG encode q93 4:4:4, optimize": partial(_jpeg, frame_half, True),
        "JPEG encode q93 4:4:4, no optimize": partial(_jpeg, frame_half, False),
    }
    rows = []
    for label, fn in steps.items():
        fn()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        # Best of N: these single steps are short, and other processes only ever add time.
        rows.append(f"| {label} | {min(times) * 1000:.0f} ms |")
    pre = psnr_images(frame_full, frame_half)
    rows.append(f"| (PSNR of the two resized frames before JPEG encoding: {pre:.1f} dB) | |")
    return rows


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per pipeline (median)")
    parser.add_argument(
        "--source", default="4000x3000", help="size of the synthetic photo, WxH (default 12 MP)"
    )
    parser.add_argument("--child", nargs=3, metavar=("PIPELINE", "TARGET", "PHOTO"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0

    started = time.perf_counter()
    source = parse_size(args.source)
    photo = build_photo(source)
    print(
        f"source: {source[0]}x{source[1]} JPEG q90, {len(photo) / 1e6:.2f} MB "
        f"(built in {time.perf_counter() - started:.1f} s); {args.runs} runs each"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {machine()}; load average {load:.2f}; {datetime.now(UTC):%Y-%m-%d}")
    rows = []
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        photo_path = Path(tmp) / "photo.jpg"
        photo_path.write_bytes(photo)
        for target, preset in TARGETS.items():
            size = preset.landscape
            medians = median_seconds(
                {"naive": partial(naive, photo, size), "ours": partial(ours, photo, target)},
                args.runs,
            )
            slow, fast = medians["naive"], medians["ours"]
            ref, out = naive(photo, size), ours(photo, target)
            quality = psnr(ref, out)
            mem_naive = peak_rss_growth_mb(photo_path, "naive", target)
            mem_ours = peak_rss_growth_mb(photo_path, "ours", target)
            speedup = slow / fast
            ok = ok and speedup >= 3 and quality >= 35 and len(out) < 3 * 1024 * 1024
            rows.append(
                f"| {target} | {slow * 1000:.0f} ms | {fast * 1000:.0f} ms | {speedup:.1f}× "
                f"| {quality:.1f} dB | {mem_naive:.0f} MB | {mem_ours:.0f} MB "
                f"| {len(out) / 1e6:.2f} MB |"
            )
    print()
    print(
        "| target | naive (median) | prepare_image (median) | speedup | PSNR vs naive "
        "| peak RSS naive | peak RSS ours | output JPEG |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print(f"| step (1792x1024 target) | best of {args.runs} |")
    print("|---|---|")
    print("\n".join(stage_table(photo, source, args.runs)))
    print()
    print(
        f"goals (speedup >= 3x, PSNR >= 35 dB, output < 3 MB): {'met' if ok else 'NOT met'}; "
        f"total {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
