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
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, 0x0100) + b"\0\0"  # gamma 1.0
    srgb_primaries = ((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141))
    return _rgb_icc(b"linear sRGB test", srgb_primaries, curve)


def display_p3_icc() -> bytes:
    """Display P3 as iPhones tag their photos: P3 primaries (adapted to D50), sRGB's curve.

    P3 (220, 80, 60) is sRGB ~(238, 65, 48): redder than sRGB can say with the same numbers.
    """
    table = [_srgb_to_linear(i / 1023) for i in range(1024)]
    curve = b"curv\0\0\0\0" + struct.pack(">I", len(table))
    curve += b"".join(struct.pack(">H", round(v * 65535)) for v in table)
    p3_primaries = ((0.5151, 0.2412, -0.0011), (0.2919, 0.6922, 0.0419), (0.1572, 0.0666, 0.7841))
    return _rgb_icc(b"Display P3 test", p3_primaries, curve)


def _srgb_to_linear(v: float) -> float:
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


def _rgb_icc(name: bytes, primaries: tuple[tuple[float, float, float], ...], curve: bytes) -> bytes:
    """A minimal ICC v2 RGB display profile with the given colorants and one curve for all."""

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ \0\0\0\0" + s15(x) + s15(y) + s15(z)

    text = name + b"\0"
    desc = (
        b"desc\0\0\0\0"
        + struct.pack(">I", len(text))
        + text
        + b"\0" * 8  # no Unicode description
        + b"\0\0\0"  # no ScriptCode description
        + b"\0" * 67
    )
    d50 = (0.9642, 1.0, 0.8249)
    tags = [
        (b"desc", desc),
        (b"wtpt", xyz(*d50)),
        (b"rXYZ", xyz(*primaries[0])),  # colorants adapted to D50
        (b"gXYZ", xyz(*primaries[1])),
        (b"bXYZ", xyz(*primaries[2])),
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


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def big_png(width: int, height: int, *, depth: int = 16, colour_type: int = 0) -> bytes:
    """A valid PNG of any size, written row by row without ever holding its pixels: a vertical
    ramp (each row one value), so it compresses to almost nothing, like the 109 KiB 16-bit
    7000x7000 file of issue 7 (a memory bomb within every byte limit).

    colour_type: 0 grey, 2 RGB, 3 palette (a grey palette, index 0 transparent), 4 grey+alpha,
    6 RGBA; depth as PNG allows for it (1, 2, 4, 8, 16).
    """
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    row_bytes = math.ceil(width * channels * depth / 8)
    top = (1 << depth) - 1
    packer = zlib.compressobj(1)
    parts = []
    for y in range(height):
        value = y * top // max(1, height - 1)
        if depth >= 8:
            row = value.to_bytes(depth // 8, "big") * (width * channels)
        else:  # 1, 2 or 4 bits per sample: the value repeated in every slot of each byte
            byte = 0
            for shift in range(0, 8, depth):
                byte |= value << shift
            row = bytes([byte]) * row_bytes
        parts.append(packer.compress(b"\0" + row))  # filter type 0 (None)
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    chunks = [_png_chunk(b"IHDR", header)]
    if colour_type == 3:
        chunks.append(_png_chunk(b"PLTE", bytes(v for i in range(256) for v in (i, i, i))))
        chunks.append(_png_chunk(b"tRNS", b"\0"))
    chunks += [_png_chunk(b"IDAT", b"".join(parts)), _png_chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def bmp(
    size: tuple[int, int],
    *,
    bits: int,
    compression: int = 0,
    masks: tuple[int, ...] = (),
) -> bytes:
    """A BMP (BITMAPINFOHEADER) of black pixels with any bit depth, compression and bit-field
    masks, valid or not as the caller chooses: for variants no encoder at hand writes."""
    width, height = size
    pixels = bytes(((width * bits + 31) // 32) * 4 * height)
    extra = b"".join(struct.pack("<I", m) for m in masks)
    palette = bytes(4 << bits) if 0 < bits <= 8 else b""
    offset = 14 + 40 + len(extra) + len(palette)
    dib = struct.pack(
        "<IiiHHIIiiII", 40, width, height, 1, bits, compression, len(pixels), 2835, 2835, 0, 0
    )
    file_header = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return file_header + dib + extra + palette + pixels
