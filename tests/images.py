"""In-memory test images for tests/test_imaging.py: nothing is read from disk."""

from __future__ import annotations

import io
import math
import random
import struct
import zlib
from typing import Any

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageStat

RGB = tuple[int, int, int]
RED: RGB = (255, 0, 0)
GREEN: RGB = (0, 255, 0)
BLUE: RGB = (0, 0, 255)
YELLOW: RGB = (255, 255, 0)
WHITE: RGB = (255, 255, 255)
# Top-left, top-right, bottom-left, bottom-right: every flip and rotation moves them apart.
QUADRANT_COLOURS: tuple[RGB, RGB, RGB, RGB] = (RED, GREEN, BLUE, YELLOW)


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def solid(colour: Any, size: tuple[int, int] = (640, 480), mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def quadrants(
    size: tuple[int, int], colours: tuple[RGB, RGB, RGB, RGB] = QUADRANT_COLOURS
) -> Image.Image:
    w, h = size
    im = Image.new("RGB", size)
    draw = ImageDraw.Draw(im)
    tl, tr, bl, br = colours
    draw.rectangle((0, 0, w // 2 - 1, h // 2 - 1), fill=tl)
    draw.rectangle((w // 2, 0, w - 1, h // 2 - 1), fill=tr)
    draw.rectangle((0, h // 2, w // 2 - 1, h - 1), fill=bl)
    draw.rectangle((w // 2, h // 2, w - 1, h - 1), fill=br)
    return im


# How a camera stores an upright scene for each EXIF orientation value (EXIF 2.3, tag 0x0112):
# the inverse of the transform a viewer applies. 6 means "rotate 90° clockwise to view", so the
# sensor data is the scene turned 90° anticlockwise (Pillow's ROTATE_90 is anticlockwise).
_STORE_FOR_ORIENTATION = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def with_orientation(scene: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    """Encode `scene` as a camera would: pixels stored sideways/flipped, EXIF says how to fix."""
    method = _STORE_FOR_ORIENTATION[orientation]
    stored = scene if method is None else scene.transpose(method)
    exif = Image.Exif()
    exif[0x0112] = orientation
    params: dict[str, Any] = {"exif": exif.tobytes()}
    if fmt == "JPEG":
        params["quality"] = 95
    elif fmt == "WEBP":
        params["lossless"] = True
    return encode(stored, fmt, **params)


def photo(size: tuple[int, int], seed: int = 1) -> Image.Image:
    """Photo-like content (gradient, sharp shapes, texture, noise) for quality comparisons."""
    rng = random.Random(seed)
    w, h = size
    ramp = Image.linear_gradient("L").resize(size)
    im = Image.merge(
        "RGB", (ramp, ramp.transpose(Image.Transpose.ROTATE_180), ramp.point(lambda v: v // 2 + 60))
    )
    draw = ImageDraw.Draw(im)
    for _ in range(80):
        x, y = rng.randrange(w), rng.randrange(h)
        r = rng.randrange(10, max(11, w // 8))
        fill = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        else:
            draw.rectangle((x - r, y - r // 2, x + r, y + r // 2), fill=fill, outline=(0, 0, 0))
    noise = Image.effect_noise(size, 12).filter(ImageFilter.GaussianBlur(0.8))
    return Image.merge("RGB", [ImageChops.add(b, noise, offset=-128) for b in im.split()])


def patch_png_size(png: bytes, width: int, height: int) -> bytes:
    """The same PNG with a header that claims another size (CRC fixed, so it looks valid)."""
    assert png[12:16] == b"IHDR"
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def linear_rgb_icc() -> bytes:
    """A minimal ICC v2 display profile: sRGB primaries, but linear (gamma 1.0) curves.

    Pixels tagged with it must be brightened on conversion to sRGB: linear 50% grey is
    sRGB ~188, so an untouched 128 proves the profile was ignored.
    """

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ \0\0\0\0" + s15(x) + s15(y) + s15(z)

    text = b"linear sRGB test\0"
    desc = (
        b"desc\0\0\0\0"
        + struct.pack(">I", len(text))
        + text
        + b"\0" * 8  # no Unicode description
        + b"\0\0\0"  # no ScriptCode description
        + b"\0" * 67
    )
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, 0x0100) + b"\0\0"  # gamma 1.0
    d50 = (0.9642, 1.0, 0.8249)
    tags = [
        (b"desc", desc),
        (b"wtpt", xyz(*d50)),
        (b"rXYZ", xyz(0.4361, 0.2225, 0.0139)),  # sRGB primaries adapted to D50
        (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
        (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + b"\0\0\0\0"
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + b"\0" * 12  # date
        + b"acsp"
        + b"\0" * 24  # platform, flags, manufacturer, model, attributes
        + b"\0\0\0\0"  # perceptual intent
        + s15(d50[0])
        + s15(d50[1])
        + s15(d50[2])
    )
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + body


def decode(jpeg: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(jpeg))
    im.load()
    return im


def mean_colour(im: Image.Image, box: tuple[int, int, int, int]) -> tuple[float, ...]:
    """Mean of each band inside box (left, top, right, bottom)."""
    return tuple(ImageStat.Stat(im.crop(box)).mean)


def close_to(actual: tuple[float, ...], expected: tuple[float, ...], tolerance: float) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def psnr(a: Image.Image, b: Image.Image) -> float:
    rms = ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).rms
    mse = sum(r * r for r in rms) / len(rms)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
