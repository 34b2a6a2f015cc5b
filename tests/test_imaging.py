"""bot.imaging: every image a user might attach ends as the exact frame, or a clear refusal."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import io
import json
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin

import bot.imaging as imaging
from bot.catalog import CATALOG, Preset
from bot.errors import ImageRejected, user_message
from bot.imaging import (
    SUPPORTED_FORMATS,
    FitMode,
    ImageFitter,
    ImageLimits,
    PreparedImage,
    detect_format,
    estimate_decode_bytes,
    fit_processes,
    prepare_image,
)
from tests.images import (
    BLUE,
    GREEN,
    QUADRANT_COLOURS,
    RED,
    WHITE,
    YELLOW,
    big_png,
    bmp,
    close_to,
    decode,
    display_p3_icc,
    encode,
    linear_rgb_icc,
    mean_colour,
    patch_png_size,
    photo,
    psnr,
    quadrants,
    solid,
    with_orientation,
)

SORA_PRO = CATALOG["openai/sora-2-pro-i2v"]
P720 = SORA_PRO.preset("720p")  # 1280x720 / 720x1280
P1080 = SORA_PRO.preset("1080p")  # 1792x1024 / 1024x1792
VEO_1080 = CATALOG["google/veo-3.1-i2v"].preset("1080p")  # 1920x1080
SEEDANCE_480 = CATALOG["bytedance/seedance-2-0"].preset("480p")  # 854x480

# A colour survives a JPEG round trip within this distance (per channel, region mean).
TOL = 12
# Pillow saves HEIC through pillow-heif's plugin, registered under this name.
PILLOW_NAME = {"HEIC": "HEIF"}
# What every "not a picture" refusal tells the member to send instead.
ACCEPTED = "JPEG, PNG, WebP, GIF, BMP, HEIC or AVIF"


def prepared(
    data: bytes, preset: Preset = P720, **kwargs: Any
) -> tuple[PreparedImage, Image.Image]:
    result = prepare_image(data, preset=preset, **kwargs)
    frame = decode(result.jpeg)
    assert frame.format == "JPEG"
    assert frame.mode == "RGB"
    assert frame.size == (result.width, result.height)
    return result, frame


def rejected(data: bytes, code: str, **kwargs: Any) -> str:
    kwargs.setdefault("preset", P720)
    with pytest.raises(ImageRejected) as caught:
        prepare_image(data, **kwargs)
    assert caught.value.code == code, caught.value.reason
    return str(caught.value.reason)  # the English rendering of a translatable message


def centre(frame: Image.Image, frac: float = 0.1) -> tuple[float, ...]:
    w, h = frame.size
    dx, dy = int(w * frac), int(h * frac)
    return mean_colour(frame, (w // 2 - dx, h // 2 - dy, w // 2 + dx, h // 2 + dy))


def quadrant_means(frame: Image.Image) -> list[tuple[float, ...]]:
    """Mean colour near the middle of each quadrant: TL, TR, BL, BR."""
    w, h = frame.size
    out = []
    for cy in (h // 4, 3 * h // 4):
        for cx in (w // 4, 3 * w // 4):
            out.append(mean_colour(frame, (cx - w // 10, cy - h // 10, cx + w // 10, cy + h // 10)))
    return out


def assert_quadrants(frame: Image.Image, colours: tuple[Any, ...] = QUADRANT_COLOURS) -> None:
    for seen, want in zip(quadrant_means(frame), colours, strict=True):
        assert close_to(seen, want, TOL), (seen, want)


# --- sizes and orientation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "source", "orientation", "size"),
    [
        (P720, (1600, 1200), "landscape", (1280, 720)),
        (P720, (1200, 1600), "portrait", (720, 1280)),
        (P1080, (3000, 2000), "landscape", (1792, 1024)),
        (P1080, (2000, 3000), "portrait", (1024, 1792)),
        (VEO_1080, (2400, 1800), "landscape", (1920, 1080)),
        (VEO_1080, (900, 1600), "portrait", (1080, 1920)),
        (SEEDANCE_480, (640, 480), "landscape", (854, 480)),
    ],
)
def test_photos_come_out_at_the_exact_preset_size(
    preset: Preset, source: tuple[int, int], orientation: str, size: tuple[int, int]
) -> None:
    result, _ = prepared(encode(photo(source), "JPEG", quality=90), preset)
    assert result.orientation == orientation
    assert (result.width, result.height) == size
    assert result.source_size == source
    assert result.source_format == "JPEG"


def test_square_image_counts_as_landscape_on_auto() -> None:
    result, _ = prepared(encode(solid(RED, (800, 800)), "PNG"))
    assert result.orientation == "landscape"


@pytest.mark.parametrize("choice", ["landscape", "portrait"])
def test_explicit_orientation_is_honoured_whatever_the_image_shape(choice: str) -> None:
    for source in ((1600, 900), (900, 1600)):
        result, frame = prepared(encode(quadrants(source), "PNG"), orientation=choice)
        assert result.orientation == choice
        assert frame.size == P720.size(result.orientation)
        assert close_to(centre(frame, 0.02), (128, 128, 128), 130)  # still the picture


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_for_all_eight_values(orientation: int) -> None:
    scene = quadrants((900, 600))  # upright landscape scene, a colour per quadrant
    result, frame = prepared(with_orientation(scene, orientation))
    assert result.orientation == "landscape"
    assert result.source_size == (900, 600)
    assert_quadrants(frame)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_portrait_photo_becomes_a_portrait_frame(orientation: int) -> None:
    # A phone held upright stores a landscape sensor image plus "rotate me" in EXIF.
    scene = quadrants((600, 900))
    data = with_orientation(scene, orientation)
    stored = decode(data).size
    assert stored == ((900, 600) if orientation in (6, 8) else (600, 900))
    result, frame = prepared(data)
    assert result.orientation == "portrait"
    assert frame.size == (720, 1280)
    assert result.source_size == (600, 900)
    assert_quadrants(frame)  # red corner marker really is top-left again


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_exif_orientation_in_png_and_webp_is_applied(fmt: str) -> None:
    scene = quadrants((600, 900))
    result, frame = prepared(with_orientation(scene, 6, fmt))
    assert result.orientation == "portrait"
    assert_quadrants(frame)


def test_large_rotated_jpeg_takes_the_fast_path_without_losing_detail() -> None:
    # 4000x2250 stored, EXIF 6: the draft size must be chosen for the *rotated* frame.
    scene = photo((2250, 4000), seed=3)
    data = with_orientation(scene, 6)
    result, frame = prepared(data)
    assert (result.orientation, frame.size) == ("portrait", (720, 1280))
    reference = ImageOps.fit(scene, (720, 1280), Image.Resampling.LANCZOS)
    assert psnr(frame, reference) >= 35  # as sharp as resizing the full image


@pytest.mark.parametrize(("preset", "source"), [(P1080, (4000, 3000)), (P720, (3200, 2400))])
def test_fast_path_matches_a_full_resolution_resize(
    preset: Preset, source: tuple[int, int]
) -> None:
    data = encode(photo(source, seed=5), "JPEG", quality=90)
    with Image.open(io.BytesIO(data)) as full:
        reference = ImageOps.fit(full.convert("RGB"), preset.landscape, Image.Resampling.LANCZOS)
    _, frame = prepared(data, preset)
    assert psnr(frame, reference) >= 35


# --- colour modes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmyk", "rgb"),
    [
        ((0, 255, 255, 0), RED),
        ((255, 0, 255, 0), GREEN),
        ((0, 0, 255, 0), YELLOW),
        ((0, 0, 0, 0), WHITE),
        ((0, 0, 0, 255), (0, 0, 0)),
    ],
)
def test_cmyk_jpeg_colours_come_out_right(cmyk: tuple[int, int, int, int], rgb: Any) -> None:
    data = encode(solid(cmyk, mode="CMYK"), "JPEG", quality=95)
    assert b"Adobe" in data[:200]  # Photoshop-style inverted CMYK, the common case
    _, frame = prepared(data)
    assert close_to(centre(frame), rgb, TOL)


def test_transparent_area_of_rgba_png_becomes_white_not_black() -> None:
    im = Image.new("RGBA", (800, 600), (0, 0, 0, 0))  # transparent black "garbage"
    im.paste((0, 0, 255, 255), (400, 0, 800, 600))  # right half opaque blue
    _, frame = prepared(encode(im, "PNG"))
    w, h = frame.size
    assert close_to(mean_colour(frame, (20, 20, w // 2 - 60, h - 20)), WHITE, 3)
    assert close_to(mean_colour(frame, (w // 2 + 60, 20, w - 20, h - 20)), BLUE, TOL)


def test_half_transparent_pixels_blend_with_white() -> None:
    _, frame = prepared(encode(Image.new("RGBA", (640, 480), (255, 0, 0, 128)), "PNG"))
    assert close_to(centre(frame), (255, 127, 127), TOL)  # pink, not dark red


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_becomes_white(fmt: str) -> None:
    im = Image.new("P", (800, 600), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (400, 0, 800, 600))  # right half red, left half palette index 0 (black)
    _, frame = prepared(encode(im, fmt, transparency=0))
    w, h = frame.size
    assert close_to(mean_colour(frame, (20, 20, w // 2 - 60, h - 20)), WHITE, 3)
    assert close_to(mean_colour(frame, (w // 2 + 60, 20, w - 20, h - 20)), RED, TOL)


def test_greyscale_with_alpha_la_becomes_white_where_transparent() -> None:
    im = Image.new("LA", (800, 600), (0, 0))
    im.paste((100, 255), (400, 0, 800, 600))
    _, frame = prepared(encode(im, "PNG"))
    w, h = frame.size
    assert close_to(mean_colour(frame, (20, 20, w // 2 - 60, h - 20)), WHITE, 3)
    assert close_to(mean_colour(frame, (w // 2 + 60, 20, w - 20, h - 20)), (100, 100, 100), 4)


@pytest.mark.parametrize(("value16", "value8"), [(32768, 128), (65535, 255), (4096, 16), (0, 0)])
def test_16_bit_greyscale_png_is_scaled_not_clipped(value16: int, value8: int) -> None:
    data = encode(Image.new("I;16", (640, 480), value16), "PNG")
    assert data[24] == 16  # IHDR bit depth: a real 16-bit file
    _, frame = prepared(data)
    assert close_to(centre(frame), (value8,) * 3, 2)


def test_16_bit_gradient_keeps_its_shades() -> None:
    im = Image.linear_gradient("L").resize((640, 480)).convert("I").point(lambda v: v * 257)
    _, frame = prepared(encode(im.convert("I;16"), "PNG"))
    # linear_gradient runs black (top) to white (bottom); clipping would make most of it white.
    rows = [mean_colour(frame, (0, y, 1280, y + 20))[0] for y in (0, 350, 700)]
    assert rows[0] < 40 and 100 < rows[1] < 160 and rows[2] > 215


def test_one_bit_image_keeps_black_and_white() -> None:
    im = Image.new("1", (800, 600), 1)
    im.paste(0, (0, 0, 400, 600))
    _, frame = prepared(encode(im, "BMP"))
    w, h = frame.size
    assert close_to(mean_colour(frame, (20, 20, w // 2 - 60, h - 20)), (0, 0, 0), 3)
    assert close_to(mean_colour(frame, (w // 2 + 60, 20, w - 20, h - 20)), WHITE, 3)


@pytest.mark.parametrize(
    ("im", "fmt", "expected"),
    [
        (solid(90, mode="L"), "PNG", (90, 90, 90)),
        (solid(90, mode="L"), "JPEG", (90, 90, 90)),
        (solid(RED).convert("P"), "PNG", RED),
        (solid(GREEN).convert("P"), "GIF", GREEN),
        (solid((200, 120, 40)).convert("YCbCr"), "JPEG", (200, 120, 40)),
        (solid((200, 120, 40)), "BMP", (200, 120, 40)),
        (solid((200, 120, 40)), "WEBP", (200, 120, 40)),
    ],
    ids=["L-png", "L-jpeg", "P-png", "P-gif", "YCbCr-jpeg", "bmp", "webp"],
)
def test_other_modes_and_formats_keep_their_colour(
    im: Image.Image, fmt: str, expected: Any
) -> None:
    result, frame = prepared(encode(im, fmt))
    assert result.source_format == fmt
    assert close_to(centre(frame), expected, TOL)


def test_embedded_icc_profile_is_converted_to_srgb() -> None:
    # 50% in a linear-light space is sRGB ~188; a profile-blind pipeline would keep 128.
    data = encode(solid((128, 128, 128)), "PNG", icc_profile=linear_rgb_icc())
    _, frame = prepared(data)
    assert close_to(centre(frame), (188, 188, 188), 3)


def test_embedded_icc_profile_in_jpeg_is_converted_too() -> None:
    data = encode(solid((128, 128, 128)), "JPEG", quality=95, icc_profile=linear_rgb_icc())
    _, frame = prepared(data)
    assert close_to(centre(frame), (188, 188, 188), 4)


@pytest.mark.parametrize("icc", [b"not a profile at all", linear_rgb_icc()[:200]])
def test_broken_icc_profile_is_ignored_not_fatal(icc: bytes) -> None:
    _, frame = prepared(encode(solid((128, 64, 32)), "PNG", icc_profile=icc))
    assert close_to(centre(frame), (128, 64, 32), 3)


def test_rgb_profile_on_a_greyscale_image_is_ignored() -> None:
    data = encode(solid(90, mode="L"), "PNG", icc_profile=linear_rgb_icc())
    _, frame = prepared(data)
    assert close_to(centre(frame), (90, 90, 90), 3)


# --- formats ------------------------------------------------------------------------------------


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [solid(c) for c in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    _, frame = prepared(data)
    assert close_to(centre(frame), RED, TOL)


def test_animated_webp_uses_the_first_frame() -> None:
    frames = [solid(c) for c in (BLUE, RED, GREEN)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    result, frame = prepared(data)
    assert result.source_format == "WEBP"
    assert close_to(centre(frame), BLUE, TOL)


def test_multi_picture_jpeg_counts_as_jpeg_and_uses_the_first_picture() -> None:
    data = encode(solid(RED), "MPO", save_all=True, append_images=[solid(BLUE)])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    result, frame = prepared(data)
    assert result.source_format == "JPEG"
    assert close_to(centre(frame), RED, TOL)


@pytest.mark.parametrize(
    ("im", "fmt", "params"),
    [
        (photo((800, 600)), "JPEG", {"quality": 90}),
        (photo((800, 600)), "JPEG", {"quality": 90, "progressive": True}),
        (photo((800, 600)), "PNG", {}),
        (photo((800, 600)), "WEBP", {"quality": 90}),  # VP8 (lossy)
        (photo((800, 600)), "WEBP", {"lossless": True}),  # VP8L
        (photo((800, 600)).convert("RGBA"), "WEBP", {"quality": 90}),  # VP8X + alpha
        (photo((800, 600)), "GIF", {}),
        (photo((800, 600)), "BMP", {}),
    ],
    ids=[
        "jpeg",
        "jpeg-progressive",
        "png",
        "webp-lossy",
        "webp-lossless",
        "webp-alpha",
        "gif",
        "bmp",
    ],
)
def test_each_supported_format_is_detected_and_prepared(
    im: Image.Image, fmt: str, params: dict[str, Any]
) -> None:
    data = encode(im, fmt, **params)
    assert detect_format(data) == fmt
    result, frame = prepared(data)
    assert result.source_format == fmt
    assert result.source_size == (800, 600)
    expected = ImageOps.fit(im.convert("RGB"), (1280, 720), Image.Resampling.LANCZOS)
    assert psnr(frame, expected) >= 28  # the same picture (GIF is dithered to 256 colours)


def test_format_comes_from_the_bytes_not_the_name() -> None:
    # A PNG uploaded as "photo.jpg" with content type image/jpeg: only the bytes are consulted.
    data = encode(solid(RED), "PNG")
    assert detect_format(data) == "PNG"
    result, _ = prepared(data)
    assert result.source_format == "PNG"


def test_supported_formats_cover_the_common_ones() -> None:
    assert {"JPEG", "PNG", "WEBP", "GIF", "BMP"} <= SUPPORTED_FORMATS


# --- fitting ------------------------------------------------------------------------------------


def test_crop_keeps_the_centre_and_trims_the_sides() -> None:
    im = Image.new("RGB", (3000, 1000), BLUE)  # 3:1, wider than 16:9
    im.paste(GREEN, (1300, 300, 1700, 700))  # centre marker
    im.paste(RED, (0, 0, 300, 1000))  # left edge strip, outside any 16:9 centre crop
    _, frame = prepared(encode(im, "PNG"))
    assert close_to(centre(frame, 0.05), GREEN, TOL)
    assert close_to(mean_colour(frame, (0, 0, 20, 720)), BLUE, TOL)  # the red strip is gone


def test_crop_fills_the_frame_edge_to_edge() -> None:
    _, frame = prepared(encode(solid(RED, (1000, 1000)), "PNG"))
    for box in ((0, 0, 8, 720), (1272, 0, 1280, 720), (0, 0, 1280, 4), (0, 716, 1280, 720)):
        assert close_to(mean_colour(frame, box), RED, TOL)


def test_pad_shows_the_whole_image_over_a_blurred_darkened_copy() -> None:
    source = quadrants((1000, 1000))  # square: pad leaves bars left and right of a 720x720 box
    _, frame = prepared(encode(source, "PNG"), fit="pad")
    assert frame.size == (1280, 720)
    inner = frame.crop((280, 0, 1000, 720))
    assert_quadrants(inner)  # all four corners of the source are visible, undistorted
    for corner, colour in zip(
        [(284, 4), (995, 4), (284, 715), (995, 715)], QUADRANT_COLOURS, strict=True
    ):
        x, y = corner
        assert close_to(mean_colour(frame, (x - 4, y - 4, x + 4, y + 4)), colour, 40)
    for bar in ((0, 0, 270, 720), (1010, 0, 1280, 720)):
        r, g, b = mean_colour(frame, bar)
        assert r + g + b > 90, "bars must not be black"
        assert max(r, g, b) < 200, "bars are darkened so the picture stands out"


def test_pad_background_is_made_from_the_image_itself() -> None:
    im = Image.new("RGB", (1000, 1000), (40, 200, 40))
    _, frame = prepared(encode(im, "PNG"), fit="pad")
    r, g, b = mean_colour(frame, (0, 0, 250, 720))
    assert g > r + 40 and g > b + 40  # green bars for a green picture


def test_pad_with_same_shape_is_the_whole_image() -> None:
    _, frame = prepared(encode(quadrants((1600, 900)), "PNG"), fit="pad")
    assert_quadrants(frame)


def test_pad_portrait_image_in_landscape_frame() -> None:
    result, frame = prepared(
        encode(quadrants((900, 1600)), "PNG"), orientation="landscape", fit="pad"
    )
    assert (result.orientation, frame.size) == ("landscape", (1280, 720))
    # 900x1600 scaled to 405x720, centred: x 437..842
    assert_quadrants(frame.crop((437, 0, 842, 720)))


def test_small_image_is_scaled_up_to_the_frame() -> None:
    _, frame = prepared(encode(quadrants((320, 256)), "PNG"), P1080)
    assert frame.size == (1792, 1024)
    assert_quadrants(frame)


# --- output -------------------------------------------------------------------------------------


def test_output_is_a_high_quality_444_jpeg_without_metadata() -> None:
    exif = Image.Exif()
    exif[0x8825] = {2: (51.0, 30.0, 0.0)}  # GPS latitude: must not leave with the frame
    exif[0x010F] = "PhoneMaker"
    data = encode(photo((1600, 1200)), "JPEG", quality=95, exif=exif.tobytes())
    result, frame = prepared(data)
    assert JpegImagePlugin.get_sampling(frame) == 0  # 4:4:4, chroma edges intact
    assert not frame.getexif()
    assert b"PhoneMaker" not in result.jpeg


def test_typical_photo_at_1080p_stays_under_3_mb() -> None:
    result, _ = prepared(encode(photo((4000, 3000), seed=7), "JPEG", quality=92), P1080)
    assert len(result.jpeg) < 3 * 1024 * 1024


def test_pure_noise_is_re_encoded_to_stay_under_3_mb() -> None:
    noise = Image.merge("RGB", [Image.effect_noise((1920, 1080), 100) for _ in range(3)])
    result, frame = prepared(encode(noise, "PNG"), VEO_1080)
    assert frame.size == (1920, 1080)
    assert len(result.jpeg) <= 3 * 1024 * 1024


def test_data_uri_decodes_back_to_the_same_jpeg() -> None:
    result, _ = prepared(encode(solid(RED), "PNG"))
    uri = result.data_uri()
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    assert base64.b64decode(uri[len(prefix) :], validate=True) == result.jpeg


def test_repr_does_not_dump_the_jpeg_bytes_into_logs() -> None:
    result, _ = prepared(encode(solid(RED), "PNG"))
    assert len(repr(result)) < 300


# --- refusals -----------------------------------------------------------------------------------


def test_over_the_byte_limit_is_refused_before_anything_else() -> None:
    data = b"\xff\xd8\xff" + b"\0" * (20 * 1024 * 1024)  # 20 MB + 3 bytes
    reason = rejected(data, "too_large")
    assert reason == "The image is 20.1 MB; the limit is 20 MB."


def test_byte_limit_is_configurable() -> None:
    data = encode(photo((800, 600)), "PNG")
    reason = rejected(data, "too_large", limits=ImageLimits(max_bytes=100_000))
    assert "0.1 MB" in reason


def test_tiny_image_is_refused_with_its_size() -> None:
    reason = rejected(encode(solid(RED, (200, 150)), "PNG"), "too_small")
    assert "200×150" in reason and "256" in reason


def test_long_thin_image_is_refused_on_its_shorter_side() -> None:
    reason = rejected(encode(solid(RED, (3000, 120)), "PNG"), "too_small")
    assert "3000×120" in reason


def test_minimum_side_is_inclusive_and_configurable() -> None:
    prepared(encode(solid(RED, (256, 256)), "PNG"))
    rejected(encode(solid(RED, (300, 300)), "PNG"), "too_small", limits=ImageLimits(min_side=512))


def _refuse_open(*args: Any, **kwargs: Any) -> Any:
    """Stands in for Image.open: opening (WebP allocates its canvas here) is already too late."""
    raise AssertionError("Image.open called: the header check should have refused first")


def test_png_header_claiming_huge_dimensions_is_refused_without_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bomb = patch_png_size(encode(solid(RED, (300, 300)), "PNG"), 100_000, 100_000)
    monkeypatch.setattr(Image, "open", _refuse_open)
    reason = rejected(bomb, "too_many_pixels")
    assert "100000×100000" in reason and "(10,000.0 MP)" in reason and "limit is 50.0 MP" in reason


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("PNG", {}),
        ("GIF", {}),
        ("BMP", {}),
        ("WEBP", {}),
        ("WEBP", {"lossless": True}),
        ("WEBP", {"exif": b"Exif\0\0"}),
    ],
    ids=["jpeg", "jpeg-progressive", "png", "gif", "bmp", "webp-vp8", "webp-vp8l", "webp-vp8x"],
)
def test_pixel_limit_is_read_from_every_header_without_decoding(
    fmt: str, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = encode(solid(RED, (1200, 1000)), fmt, **params)
    monkeypatch.setattr(Image, "open", _refuse_open)  # only now: encode() above needs Pillow
    reason = rejected(data, "too_many_pixels", limits=ImageLimits(max_pixels=1_000_000))
    assert "1200×1000" in reason and "(1.2 MP)" in reason and "limit is 1.0 MP" in reason


def test_huge_jpeg_header_is_refused_with_default_limits() -> None:
    data = bytearray(encode(solid(RED, (300, 300)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")
    reason = rejected(bytes(data), "too_many_pixels")
    assert "60000×60000" in reason


def test_pillow_global_limits_are_left_alone() -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    prepared(encode(solid(RED), "PNG"))
    rejected(
        encode(solid(RED, (1200, 1000)), "PNG"),
        "too_many_pixels",
        limits=ImageLimits(max_pixels=10),
    )
    assert before == (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_truncated_file_is_refused_as_corrupt(fmt: str) -> None:
    data = encode(photo((800, 600)), fmt)
    reason = rejected(data[: len(data) // 2], "corrupt")
    assert {"WEBP": "WebP"}.get(fmt, fmt) in reason and "damaged or incomplete" in reason


def test_valid_header_with_garbage_after_it_is_corrupt() -> None:
    data = encode(solid(RED), "PNG")
    reason = rejected(data[:33] + bytes(range(256)) * 4, "corrupt")
    assert "PNG" in reason


@pytest.mark.parametrize(
    "data",
    [
        b"Hello! This is a text file, not a picture.\n" * 20,
        bytes(random.Random(4).randrange(256) for _ in range(5000)),
        b"BM but actually just text that starts with BM\n" * 5,
        b"%PDF-1.7\n" + b"\0" * 1000,
        b"<svg xmlns='http://www.w3.org/2000/svg'></svg>",
    ],
    ids=["text", "random", "bm-text", "pdf", "svg"],
)
def test_non_images_are_refused_naming_the_formats_that_work(data: bytes) -> None:
    assert detect_format(data) is None
    reason = rejected(data, "not_image")
    assert ACCEPTED in reason


def test_empty_file_is_not_an_image() -> None:
    assert "empty" in rejected(b"", "not_image")


@pytest.mark.parametrize(
    ("head", "name", "phrase"),
    [
        (b"II*\0\x08\0\0\0", "TIFF", "is a TIFF image"),
        (b"MM\0*\0\0\0\x08", "TIFF", "is a TIFF image"),
        (b"II+\0\x08\0\0\0\x10\0\0\0\0\0\0\0", "TIFF", "is a TIFF image"),  # BigTIFF
        (b"MM\0+\0\x08\0\0\0\0\0\0\0\0\0\x10", "TIFF", "is a TIFF image"),  # BigTIFF
        (b"\xff\x0a\xfa\x7f\x01\x90\x08", "JPEG XL", "is a JPEG XL image"),
        (b"\0\0\0\x0cJXL \r\n\x87\n\0\0\0\x14ftypjxl ", "JPEG XL", "is a JPEG XL image"),
        (b"\0\0\0\x0cjP  \r\n\x87\n\0\0\0\x14ftypjp2 ", "JPEG 2000", "is a JPEG 2000 image"),
        (b"8BPS\0\x01\0\0\0\0\0\0\0\x03", "PSD", "is a Photoshop (PSD) image"),
    ],
    ids=[
        "tiff-le",
        "tiff-be",
        "bigtiff-le",
        "bigtiff-be",
        "jxl-codestream",
        "jxl-container",
        "jpeg2000",
        "psd",
    ],
)
def test_known_but_unsupported_formats_are_named_in_plain_english(
    head: bytes, name: str, phrase: str
) -> None:
    data = head + b"\0" * 2000
    assert detect_format(data) == name
    reason = rejected(data, "not_image")
    assert phrase in reason and ACCEPTED in reason


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        ((7100, 7100), "(50.5 MP)"),
        ((3_000_000, 2_000_000), "(6,000,000.0 MP)"),
        ((2**31 - 1, 2**31 - 1), "(4,611,686,014,132.5 MP)"),  # the largest a PNG can claim
    ],
)
def test_megapixels_are_printed_as_readable_numbers(size: tuple[int, int], shown: str) -> None:
    bomb = patch_png_size(encode(solid(RED, (300, 300)), "PNG"), *size)
    reason = rejected(bomb, "too_many_pixels")
    assert shown in reason and "the limit is 50.0 MP" in reason
    assert "e+" not in reason


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (bmp((300, 300), bits=24, compression=4), "(JPEG compression)"),
        (bmp((300, 300), bits=24, compression=5), "(PNG compression)"),
        (bmp((300, 300), bits=2), "(2 bits per pixel)"),  # Windows CE
        (bmp((300, 300), bits=64), "(64 bits per pixel)"),
        (bmp((300, 300), bits=32, compression=6, masks=(0xFF0000, 0xFF00, 0xFF, 0xFF << 24)), ""),
        # X4R4G4B4 bit fields: valid, but a layout Pillow has no unpacker for (it says so).
        (bmp((300, 300), bits=16, compression=3, masks=(0xF00, 0xF0, 0xF)), ""),
    ],
    ids=["jpeg-inside", "png-inside", "2-bit", "64-bit", "alpha-bitfields", "rgb444-bitfields"],
)
def test_valid_but_unusual_bmp_is_named_as_such_not_damaged(data: bytes, detail: str) -> None:
    assert detect_format(data) == "BMP"
    reason = rejected(data, "unsupported_variant")
    assert "a kind of BMP the bot can't read" in reason and detail in reason
    assert "damaged" not in reason
    assert reason.endswith(".") and len(reason) < 200


def test_the_bmp_builder_makes_readable_bmps() -> None:
    # The control for the test above: the same builder with ordinary settings is accepted.
    for params in (
        {"bits": 24},
        {"bits": 8},
        {"bits": 16, "compression": 3, "masks": (0xF800, 0x7E0, 0x1F)},
    ):
        _, frame = prepared(bmp((300, 300), **params))
        assert close_to(centre(frame), (0, 0, 0), 2)


def test_twelve_bit_jpeg_is_named_as_a_kind_the_bot_cannot_read() -> None:
    data = bytearray(encode(photo((800, 600)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 1] = 0xC1  # extended sequential ...
    data[sof + 4] = 12  # ... with 12-bit samples (medical and scientific cameras)
    reason = rejected(bytes(data), "unsupported_variant")
    assert "a kind of JPEG the bot can't read (12-bit samples)" in reason


def _bad_inputs() -> list[tuple[str, bytes, dict[str, Any]]]:
    png = encode(photo((800, 600)), "PNG")
    return [
        ("too_large", png, {"limits": ImageLimits(max_bytes=1000)}),
        ("not_image", b"just some text", {}),
        ("too_many_pixels", patch_png_size(png, 20_000, 20_000), {}),
        ("corrupt", png[: len(png) // 3], {}),
        ("too_small", encode(solid(RED, (100, 80)), "PNG"), {}),
    ]


@pytest.mark.parametrize(("code", "data", "kwargs"), _bad_inputs(), ids=lambda v: str(v)[:12])
def test_reasons_are_friendly_sentences_with_numbers(
    code: str, data: bytes, kwargs: dict[str, Any]
) -> None:
    reason = rejected(data, code, **kwargs)
    assert re.search(r"\d", reason), reason
    assert not re.search(r"Error|Exception|Traceback|PIL|Pillow|errno|struct", reason), reason
    assert len(reason) < 200 and reason.endswith(".")
    with pytest.raises(ImageRejected) as caught:
        prepare_image(data, preset=P720, **kwargs)
    assert str(user_message(caught.value)) == reason


# --- robustness ---------------------------------------------------------------------------------


def _mutations(data: bytes, rng: random.Random, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        b = bytearray(data)
        for _ in range(rng.randrange(1, 6)):
            # Mostly in the headers, where parsers are most fragile.
            pos = rng.randrange(min(len(b), 300)) if rng.random() < 0.7 else rng.randrange(len(b))
            b[pos] = rng.randrange(256)
        out.append(
            bytes(b[: rng.randrange(len(b) // 2, len(b) + 1)]) if rng.random() < 0.3 else bytes(b)
        )
    return out


@pytest.mark.parametrize("fmt", sorted(SUPPORTED_FORMATS))
def test_damaged_files_never_raise_anything_but_image_rejected(fmt: str) -> None:
    rng = random.Random(fmt)
    im = photo((320, 288), seed=2)
    data = encode(im.convert("RGBA") if fmt == "PNG" else im, PILLOW_NAME.get(fmt, fmt))
    for sample in _mutations(data, rng, 60):
        try:
            result = prepare_image(sample, preset=SEEDANCE_480)
        except ImageRejected as exc:
            # A mutated header may also describe a real variant Pillow has no decoder for.
            allowed = {
                "not_image",
                "corrupt",
                "too_many_pixels",
                "too_small",
                "unsupported_variant",
            }
            assert exc.code in allowed
            assert exc.reason
        else:
            assert decode(result.jpeg).size == SEEDANCE_480.size(result.orientation)


def test_concurrent_calls_give_the_same_frames_as_serial_ones() -> None:
    # The service runs prepare_image in worker threads; results must not bleed into each other.
    jobs: list[tuple[bytes, FitMode]] = []
    for i, fmt in enumerate(["JPEG", "PNG", "WEBP", "GIF", "BMP", "JPEG"]):
        jobs.append((encode(photo((900 + 100 * i, 700), seed=i), fmt), "pad" if i % 2 else "crop"))

    def run(job: tuple[bytes, FitMode]) -> bytes:
        return prepare_image(job[0], preset=P720, fit=job[1]).jpeg

    serial = [run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        parallel = list(pool.map(run, jobs * 3))
    assert parallel == serial * 3


# --- memory -------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
MB = 1000 * 1000


def _webp_claiming(size: tuple[int, int]) -> bytes:
    """A WebP whose extended header (VP8X) claims a canvas of `size`."""
    data = bytearray(encode(solid((255, 0, 0, 128), (300, 300), "RGBA"), "WEBP"))
    assert data[12:16] == b"VP8X"  # alpha needs the extended header
    data[24:27] = (size[0] - 1).to_bytes(3, "little")
    data[27:30] = (size[1] - 1).to_bytes(3, "little")
    return bytes(data)


def test_decode_memory_is_estimated_from_the_header_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = big_png(7000, 7000)  # 16-bit grey: under 1 MB on disk, 98 MB as decoded pixels
    assert len(data) < 1_000_000
    monkeypatch.setattr(Image, "open", _refuse_open)
    need = estimate_decode_bytes(data, preset=P720)
    assert need is not None and 98 * MB <= need <= 140 * MB
    # The same picture kept 8-bit needs half the pixel memory: the estimate knows the mode.
    eight = estimate_decode_bytes(big_png(7000, 7000, depth=8), preset=P720)
    assert eight is not None and need - eight >= 45 * MB


def test_image_needing_more_memory_than_one_fit_may_use_is_refused_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A WebP decodes through several full-size canvases: 49 MP would need ~800 MB.
    data = _webp_claiming((7000, 7000))
    monkeypatch.setattr(Image, "open", _refuse_open)
    reason = rejected(data, "too_many_pixels")
    assert "7000×7000 pixels (49.0 MP)" in reason and "a WebP that large" in reason
    found = re.search(r"up to about ([\d.]+) MP", reason)
    assert found, reason
    # The size the member is told would work really does.
    side = int((float(found.group(1)) * 1_000_000) ** 0.5)
    need = estimate_decode_bytes(_webp_claiming((side, side)), preset=P720)
    assert need is not None and need <= ImageLimits().max_decode_bytes
    assert not re.search(r"Error|bytes|MiB|decoder", reason)


def test_progressive_jpeg_is_costed_with_its_full_size_coefficient_buffers() -> None:
    # libjpeg keeps every DCT coefficient of a progressive JPEG at full size, whatever the
    # reduced scale it decodes to; a baseline JPEG of the same picture decodes in a stream.
    im = photo((3000, 2000), seed=4)
    baseline = encode(im, "JPEG", quality=90)
    progressive = encode(im, "JPEG", quality=90, progressive=True)
    limits = ImageLimits(max_decode_bytes=36 * 1024 * 1024)  # baseline ~29 MiB, progressive ~46
    result, _ = prepared(baseline, limits=limits)
    assert result.source_size == (3000, 2000)
    reason = rejected(progressive, "too_many_pixels", limits=limits)
    assert "a progressive JPEG that large" in reason


def test_gif_frame_larger_than_its_screen_is_counted_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pillow grows the canvas to hold a first frame that overflows the logical screen.
    data = bytearray(encode(solid(GREEN, (1200, 1000)).convert("P"), "GIF"))
    data[6:10] = (300).to_bytes(2, "little") + (300).to_bytes(2, "little")
    monkeypatch.setattr(Image, "open", _refuse_open)
    reason = rejected(bytes(data), "too_many_pixels", limits=ImageLimits(max_pixels=1_000_000))
    assert "1200×1000" in reason


# Strips of ~40 rows instead of ~8 MB, so that small test images cross many strip boundaries.
SMALL_STRIPS = 256 * 1024


def test_16_bit_png_converted_strip_by_strip_has_no_seams(monkeypatch: pytest.MonkeyPatch) -> None:
    # A vertical ramp shows any row that is lost, doubled or mis-scaled at a strip boundary.
    monkeypatch.setattr(imaging, "_STRIP_BYTES", SMALL_STRIPS)
    _, frame = prepared(big_png(1600, 1200), P720)
    grey = frame.convert("L")
    # The crop keeps the middle 900 of the 1200 rows (16:9 of 1600 wide), rows 150..1049.
    for y in range(720):
        source_row = 150 + (y + 0.5) * 900 / 720 - 0.5
        expected = source_row / 1199 * 255
        assert abs(grey.getpixel((640, y)) - expected) <= 1.5, y  # type: ignore[operator]


@pytest.mark.parametrize(("fit", "size"), [("crop", (3000, 2000)), ("pad", (2400, 1600))])
def test_transparent_photo_fitted_in_strips_matches_a_whole_image_resize(
    fit: FitMode, size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 3000 wide is reduced by 2 before the resize, 2400 is not: both paths, many strips each.
    monkeypatch.setattr(imaging, "_STRIP_BYTES", SMALL_STRIPS)
    im = photo((size[0] // 2, size[1] // 2), seed=9).resize(size).convert("RGBA")
    im.putalpha(Image.linear_gradient("L").resize(size).point(lambda v: 60 + v * 3 // 4))
    _, frame = prepared(encode(im, "PNG", compress_level=1), P720, fit=fit)
    if fit == "crop":
        whole = ImageOps.fit(im, (1280, 720), Image.Resampling.LANCZOS)
        box = (0, 0, 1280, 720)
    else:  # 3:2 in 16:9: the whole picture, 1080x720, centred between bars
        whole = im.resize((1080, 720), Image.Resampling.LANCZOS)
        box = (100, 0, 1180, 720)
    reference = Image.new("RGB", whole.size, WHITE)
    reference.paste(whole, mask=whole.getchannel("A"))
    assert psnr(frame.crop(box), reference) >= 35


_PEAK_CHILD = r"""
import ctypes, json, sys
from bot.catalog import CATALOG
from bot.imaging import estimate_decode_bytes, prepare_image

def status_kib(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))

preset = CATALOG["openai/sora-2-pro-i2v"].preset("720p")
trim = ctypes.CDLL("libc.so.6").malloc_trim
report = {}
for path in sys.argv[1:]:
    data = open(path, "rb").read()
    trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to what is resident now
    before = status_kib("VmRSS")
    prepare_image(data, preset=preset)
    report[path] = [status_kib("VmHWM") - before, estimate_decode_bytes(data, preset=preset)]
print(json.dumps(report))
"""


def test_every_decode_path_stays_within_its_memory_estimate(tmp_path: Path) -> None:
    # 3000x3000 of each pixel layout the formats can carry, fitted in a fresh process whose
    # peak RSS is measured around each fit. A full-size converted copy (what the old pipeline
    # made of 16-bit, palette, alpha and 1-bit images) would break the estimate.
    side = (3000, 3000)
    palette = Image.linear_gradient("L").resize(side).convert("P")
    cases = {
        "grey1.png": big_png(*side, depth=1),
        "grey8.png": big_png(*side, depth=8),
        "grey16.png": big_png(*side, depth=16),
        "rgb16.png": big_png(*side, depth=16, colour_type=2),
        "palette-trns.png": big_png(*side, depth=8, colour_type=3),
        "la8.png": big_png(*side, depth=8, colour_type=4),
        "la16.png": big_png(*side, depth=16, colour_type=4),
        "rgba16.png": big_png(*side, depth=16, colour_type=6),
        "palette.gif": encode(palette, "GIF", transparency=0),
        "cmyk-progressive.jpg": encode(
            solid((9, 9, 9, 9), (2400, 2400), "CMYK"), "JPEG", progressive=True
        ),
        "rgb-444-progressive.jpg": encode(
            solid(RED, (2400, 2400)), "JPEG", progressive=True, subsampling=0
        ),
        "lossless.webp": encode(solid(RED, side), "WEBP", lossless=True),
        # Their heaviest 8-bit layouts (HEIC smaller: x265 takes seconds over a large frame).
        "alpha.heic": encode(solid((9, 9, 9, 99), (2000, 2000), "RGBA"), "HEIF"),
        "alpha.avif": encode(solid((9, 9, 9, 99), side, "RGBA"), "AVIF", speed=10),
        "444.avif": encode(solid(RED, side), "AVIF", speed=10, subsampling="4:4:4"),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_CHILD, *cases],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for name, (peak_kib, estimate) in json.loads(out.stdout).items():
        assert peak_kib * 1024 <= estimate, (name, peak_kib // 1024, estimate // 1024**2)


_TWENTY_CHILD = r"""
import asyncio, json, os, sys
from pathlib import Path
from bot.catalog import CATALOG
from bot.imaging import ImageFitter

def peak_bytes(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024

def family(pid):
    # This process, its fit-process server and the fit processes (the server's children).
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, grown = {pid}, True
    while grown:
        more = {child for child, parent in parents.items() if parent in found} - found
        found |= more
        grown = bool(more)
    return found

async def main(data):
    fitter = ImageFitter()  # the defaults the bot runs with
    preset = CATALOG["openai/sora-2-pro-i2v"].preset("720p")
    results = await asyncio.gather(
        *(fitter.fit(data, preset=preset, fit="pad" if i % 2 else "crop") for i in range(20)),
        return_exceptions=True,
    )
    # Each process's own peak, added up: at least what they ever held at one moment.
    processes = family(os.getpid())
    peak = sum(peak_bytes(pid) for pid in processes)
    fitter.close()
    return {
        "frames": [[r.width, r.height] for r in results if not isinstance(r, BaseException)],
        "failed": [type(r).__name__ for r in results if isinstance(r, BaseException)],
        "processes": len(processes),
        "peak_bytes": peak,
    }

print(json.dumps(asyncio.run(main(open(sys.argv[1], "rb").read()))))
"""


def test_twenty_16_bit_7000px_pngs_at_once_all_fit_in_under_400_mb(tmp_path: Path) -> None:
    # Issue 7 item 8: a 109 KiB 16-bit greyscale PNG of 7000x7000 took 486 MiB to fit, six at
    # once 2.5 GiB. Twenty members sending one at the same moment now all get their frame,
    # and the bot's process and its fit processes together stay under 400 MB.
    path = tmp_path / "bomb.png"
    path.write_bytes(big_png(7000, 7000))
    out = subprocess.run(
        [sys.executable, "-c", _TWENTY_CHILD, str(path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    report = json.loads(out.stdout)
    assert report["failed"] == []
    assert report["frames"] == [[1280, 720]] * 20
    assert report["processes"] >= 3  # the bot, the fit-process server and its fit processes
    assert report["peak_bytes"] < 400 * MB, report["peak_bytes"] / MB


# --- ImageFitter: one memory budget for the whole process ---------------------------------------


class Gate:
    """Wraps the fitting step (run in the fitter's threads): records how many run at once and
    holds each one until the test lets it go."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, hold: bool = True) -> None:
        self.loop = asyncio.get_running_loop()
        self.entered: asyncio.Queue[None] = asyncio.Queue()
        self.open = threading.Event()
        if not hold:
            self.open.set()
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        real = imaging._prepare_checked

        def gated(*args: Any) -> PreparedImage:
            with self.lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            try:
                self.loop.call_soon_threadsafe(self.entered.put_nowait, None)
                assert self.open.wait(timeout=30), "the test never opened the gate"
                return real(*args)
            finally:
                with self.lock:
                    self.active -= 1

        monkeypatch.setattr(imaging, "_prepare_checked", gated)


def fit_threads(max_workers: int) -> ThreadPoolExecutor:
    """Fit workers a Gate can hold: threads of this process (the bot's are processes)."""
    return ThreadPoolExecutor(max_workers=max_workers)


class WatchedFitter(ImageFitter):
    """An ImageFitter that tells the test when a fit has passed its checks and asks for room
    (it is in the queue, or running, by the time the test hears of it). Its fits run in
    threads, so that a Gate can hold them."""

    def __init__(self, *, budget_bytes: int = 10**12, max_concurrent: int = 2) -> None:
        super().__init__(
            budget_bytes=budget_bytes, max_concurrent=max_concurrent, workers=fit_threads
        )
        self.arrived: asyncio.Queue[int] = asyncio.Queue()

    async def _admit(self, cost: int) -> None:
        self.arrived.put_nowait(cost)
        await super()._admit(cost)

    async def arrivals(self, count: int) -> None:
        async with asyncio.timeout(10):
            for _ in range(count):
                await self.arrived.get()


@pytest.fixture
async def fitter() -> AsyncIterator[WatchedFitter]:
    f = WatchedFitter()
    yield f
    f.close()


async def test_fitter_gives_the_same_frame_as_prepare_image() -> None:
    fitter = ImageFitter()  # fit processes, as the bot runs them
    await fitter.start()
    try:
        data = encode(photo((900, 700)), "PNG")
        result = await fitter.fit(data, preset=P720, fit="pad", orientation="portrait")
        assert result == prepare_image(data, preset=P720, fit="pad", orientation="portrait")
        with pytest.raises(ImageRejected) as caught:  # refusals come back as themselves
            await fitter.fit(encode(photo((900, 700)), "PNG")[:2000], preset=P720)
        assert caught.value.code == "corrupt" and "damaged" in str(user_message(caught.value))
    finally:
        fitter.close()


def dying_fit_processes(max_workers: int) -> Executor:
    """Fit processes that the OS ends 10 ms after they start (SIGALRM's default action), as
    the OOM killer or a crash in a decoder would: mid-fit, or before the fit is picked up."""
    return ProcessPoolExecutor(
        max_workers=max_workers,
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=functools.partial(signal.setitimer, signal.ITIMER_REAL, 0.01),
    )


async def test_a_fit_process_that_dies_costs_nobody_their_image() -> None:
    made: list[str] = []

    def first_ones_die(max_workers: int) -> Executor:
        made.append("dying" if not made else "healthy")
        return (dying_fit_processes if len(made) == 1 else fit_processes)(max_workers)

    fitter = ImageFitter(workers=first_ones_die)
    try:
        data = encode(photo((2400, 1600)), "PNG")
        results = await asyncio.gather(*(fitter.fit(data, preset=P720) for _ in range(3)))
        assert made == ["dying", "healthy"]  # the broken pool was replaced once, not per fit
        assert all(r == prepare_image(data, preset=P720) for r in results)
        assert (fitter.running, fitter.waiting, fitter.reserved_bytes) == (0, 0, 0)
    finally:
        fitter.close()


async def test_an_image_whose_fit_keeps_dying_is_refused_kindly() -> None:
    fitter = ImageFitter(workers=dying_fit_processes)
    try:
        with pytest.raises(ImageRejected) as caught:
            await fitter.fit(encode(photo((2400, 1600)), "PNG"), preset=P720)
        assert caught.value.code == "fit_crashed"
        text = str(user_message(caught.value))
        assert "try again" in text and "Broken" not in text and "process" not in text
        assert (fitter.running, fitter.waiting, fitter.reserved_bytes) == (0, 0, 0)
    finally:
        fitter.close()


async def test_fitter_never_runs_more_than_max_concurrent_and_answers_everyone(
    fitter: WatchedFitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch)
    jobs = [
        asyncio.create_task(fitter.fit(encode(solid(c), "PNG"), preset=P720))
        for c in (RED, GREEN, BLUE, YELLOW, WHITE)
    ]
    await fitter.arrivals(5)
    await gate.entered.get()
    await gate.entered.get()
    assert fitter.waiting == 3  # queued, not refused
    assert (fitter.running, gate.active) == (2, 2)
    gate.open.set()
    results = await asyncio.gather(*jobs)
    for result, colour in zip(results, (RED, GREEN, BLUE, YELLOW, WHITE), strict=True):
        assert close_to(centre(decode(result.jpeg)), colour, TOL)
    assert gate.peak == 2
    assert (fitter.running, fitter.waiting, fitter.reserved_bytes) == (0, 0, 0)


async def test_fits_that_together_exceed_the_memory_budget_take_turns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = encode(photo((1600, 1200)), "PNG")
    need = estimate_decode_bytes(data, preset=P720)
    assert need is not None
    fitter = WatchedFitter(budget_bytes=need * 2 - 1, max_concurrent=4)  # room for one only
    gate = Gate(monkeypatch)
    jobs = [asyncio.create_task(fitter.fit(data, preset=P720)) for _ in range(3)]
    await fitter.arrivals(3)
    await gate.entered.get()
    assert fitter.waiting == 2
    assert (fitter.running, fitter.reserved_bytes) == (1, need)
    gate.open.set()
    results = await asyncio.gather(*jobs)
    assert len({r.jpeg for r in results}) == 1
    assert gate.peak == 1
    fitter.close()


async def test_image_estimated_above_the_whole_budget_still_runs_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fitter = ImageFitter(budget_bytes=1, max_concurrent=4, workers=fit_threads)
    gate = Gate(monkeypatch, hold=False)
    results = await asyncio.gather(
        *(fitter.fit(encode(solid(RED), "PNG"), preset=P720) for _ in range(3))
    )
    assert [r.width for r in results] == [1280] * 3
    assert gate.peak == 1
    fitter.close()


async def test_refusals_come_back_at_once_while_the_budget_is_full(
    fitter: WatchedFitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch)
    busy = [asyncio.create_task(fitter.fit(encode(solid(RED), "PNG"), preset=P720)) for _ in "ab"]
    await fitter.arrivals(2)
    await gate.entered.get()
    await gate.entered.get()
    with pytest.raises(ImageRejected) as caught:
        await fitter.fit(b"not an image at all", preset=P720)
    assert caught.value.code == "not_image"
    with pytest.raises(ImageRejected) as caught:
        await fitter.fit(_webp_claiming((7000, 7000)), preset=P720)
    assert caught.value.code == "too_many_pixels"
    assert fitter.waiting == 0
    gate.open.set()
    await asyncio.gather(*busy)


async def test_a_member_who_gives_up_while_waiting_leaves_the_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fitter = WatchedFitter(max_concurrent=1)
    gate = Gate(monkeypatch)
    first = asyncio.create_task(fitter.fit(encode(solid(RED), "PNG"), preset=P720))
    await gate.entered.get()
    quitter = asyncio.create_task(fitter.fit(encode(solid(GREEN), "PNG"), preset=P720))
    await fitter.arrivals(2)
    last = asyncio.create_task(fitter.fit(encode(solid(BLUE), "PNG"), preset=P720))
    await fitter.arrivals(1)
    assert fitter.waiting == 2
    quitter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await quitter
    assert fitter.waiting == 1
    gate.open.set()
    assert close_to(centre(decode((await last).jpeg)), BLUE, TOL)
    await first
    assert quitter.cancelled()
    assert (fitter.running, fitter.waiting, fitter.reserved_bytes) == (0, 0, 0)
    fitter.close()


async def test_a_cancelled_fit_keeps_its_memory_until_its_thread_is_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A thread cannot be stopped: its image stays in memory until it ends, so the budget must
    # not hand that memory to the next member when the first one's command is cancelled.
    fitter = WatchedFitter(max_concurrent=1)
    gate = Gate(monkeypatch)
    first = asyncio.create_task(fitter.fit(encode(solid(RED), "PNG"), preset=P720))
    await gate.entered.get()
    second = asyncio.create_task(fitter.fit(encode(solid(GREEN), "PNG"), preset=P720))
    await fitter.arrivals(2)
    assert fitter.waiting == 1
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (fitter.running, fitter.waiting, gate.active) == (1, 1, 1)
    gate.open.set()
    assert close_to(centre(decode((await second).jpeg)), GREEN, TOL)
    assert gate.peak == 1
    assert (fitter.running, fitter.reserved_bytes) == (0, 0)
    fitter.close()


# --- pictures people attach: HEIC (iPhone), AVIF, APNG ------------------------------------------


def _heif_with_size(data: bytes, width: int, height: int) -> bytes:
    """The same HEIC/AVIF with item properties (`ispe`) that claim another size."""
    out = bytearray(data)
    at = out.find(b"ispe")
    assert at > 0
    while at > 0:
        out[at + 8 : at + 16] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
        at = out.find(b"ispe", at + 4)
    return bytes(out)


@pytest.mark.parametrize("fmt", ["HEIC", "AVIF"])
@pytest.mark.parametrize("orientation", [6, 8])
def test_heic_and_avif_photos_turned_by_exif_come_out_upright(fmt: str, orientation: int) -> None:
    # A phone stores a portrait photo sideways and says how to turn it: in HEIF files as an
    # `irot` item property, with the EXIF orientation saying the same (both are written here).
    scene = quadrants((360, 480))
    data = with_orientation(scene, orientation, PILLOW_NAME.get(fmt, fmt))
    assert detect_format(data) == fmt
    result, frame = prepared(data)
    assert result.source_format == fmt
    assert result.source_size == (360, 480)
    assert (result.width, result.height) == (720, 1280)  # portrait, at the preset size
    assert_quadrants(frame)  # red top-left, green top-right: upright, not mirrored


@pytest.mark.parametrize("fmt", ["HEIC", "AVIF"])
def test_display_p3_photo_comes_out_in_srgb(fmt: str) -> None:
    # iPhones tag their photos Display P3: the same numbers mean a redder red than in sRGB.
    im = solid((220, 80, 60))
    data = encode(im, PILLOW_NAME.get(fmt, fmt), icc_profile=display_p3_icc(), quality=95)
    _, frame = prepared(data)
    assert close_to(centre(frame), (238, 65, 48), 4), centre(frame)


def test_generic_heif_brand_is_told_apart_by_its_compatible_brands() -> None:
    # Some encoders write only "mif1" as the major brand and name the codec among the others.
    avif = bytearray(encode(quadrants((400, 300)), "AVIF"))
    assert avif[8:12] == b"avif"
    avif[8:12] = b"mif1"
    assert detect_format(bytes(avif)) == "AVIF"
    assert_quadrants(prepared(bytes(avif))[1])
    heic = encode(quadrants((400, 300)), "HEIF")
    assert detect_format(heic) == "HEIC"
    assert detect_format(b"\0\0\0\x18ftypisom\0\0\0\0isommp42" + b"\0" * 100) is None  # a video


def test_animated_png_uses_the_first_frame() -> None:
    frames = [solid(c) for c in (GREEN, RED, BLUE)]
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    result, frame = prepared(data)
    assert result.source_format == "PNG"
    assert close_to(centre(frame), GREEN, TOL)


def test_animated_avif_uses_the_first_frame() -> None:
    frames = [solid(c) for c in (BLUE, GREEN, RED)]
    data = encode(frames[0], "AVIF", save_all=True, append_images=frames[1:], duration=100)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    result, frame = prepared(data)
    assert result.source_format == "AVIF"
    assert close_to(centre(frame), BLUE, TOL)


def test_heic_and_avif_are_supported_and_listed() -> None:
    assert {"HEIC", "AVIF"} <= SUPPORTED_FORMATS
    reason = rejected(b"\0\0\0\x0cJXL \r\n\x87\n" + b"\0" * 500, "not_image")
    assert reason == (
        "That file (1 KB) is a JPEG XL image, which the bot can't use. "
        "Please send a JPEG, PNG, WebP, GIF, BMP, HEIC or AVIF image."
    )


def test_iphone_photo_sizes_fit_the_memory_a_picture_may_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 12 MP (most iPhones) and 24 MP (the default since the iPhone 15) HEIC photos are fitted;
    # the estimate comes from the header alone.
    small = encode(quadrants((400, 300)), "HEIF")
    monkeypatch.setattr(Image, "open", _refuse_open)
    for size in ((4032, 3024), (5712, 4284)):
        need = estimate_decode_bytes(_heif_with_size(small, *size), preset=P1080)
        assert need is not None and need <= ImageLimits().max_decode_bytes, size
    twelve = estimate_decode_bytes(_heif_with_size(small, 4032, 3024), preset=P720)
    assert twelve is not None and 12 * 7 * MB <= twelve <= 12 * 12 * MB + 30 * MB


@pytest.mark.parametrize("fmt", ["HEIC", "AVIF"])
def test_huge_heic_or_avif_is_refused_from_its_header_with_a_size_that_works(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 48 MP iPhone "HEIF Max" photo: under the pixel limit, but libheif decodes it whole.
    small = encode(quadrants((400, 300)), PILLOW_NAME.get(fmt, fmt))
    data = _heif_with_size(small, 8064, 6048)
    monkeypatch.setattr(Image, "open", _refuse_open)  # refused before anything is decoded
    reason = rejected(data, "too_many_pixels")
    assert "8064×6048 pixels (48.8 MP)" in reason
    assert f"{'a HEIC' if fmt == 'HEIC' else 'an AVIF'} that large" in reason
    found = re.search(r"up to about ([\d.]+) MP", reason)
    assert found, reason
    side = int((float(found.group(1)) * 1_000_000) ** 0.5)
    need = estimate_decode_bytes(_heif_with_size(small, side, side), preset=P720)
    assert need is not None and need <= ImageLimits().max_decode_bytes
    # Over the pixel limit it is the pixel count that is named, as for every format.
    assert "the limit is 50.0 MP" in rejected(_heif_with_size(small, 9000, 9000), "too_many_pixels")


_KILLED_BOT = r"""
import asyncio, multiprocessing, time
from bot.imaging import ImageFitter

async def main():
    fitter = ImageFitter()
    await fitter.start()
    print(" ".join(str(child.pid) for child in multiprocessing.active_children()), flush=True)
    time.sleep(120)

if __name__ == "__main__":
    asyncio.run(main())
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit status may never be collected here)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_fit_processes_end_when_the_bot_is_killed(tmp_path: Path) -> None:
    # SIGKILL (or the OOM killer) gives the bot no chance to stop its fit processes; they and
    # their process server must not live on, idle, after it (each restart would add more).
    script = tmp_path / "bot_like.py"
    script.write_text(_KILLED_BOT)
    bot = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert bot.stdout is not None
        workers = [int(pid) for pid in bot.stdout.readline().split()]
        stat = Path(f"/proc/{workers[0]}/stat").read_text()
        server = int(stat.rsplit(")", 1)[1].split()[1])
    finally:
        bot.kill()
        bot.wait()
    assert len(workers) == 2 and server != bot.pid
    helpers = [*workers, server]
    deadline = time.monotonic() + 15
    while any(map(_running, helpers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in helpers if _running(pid)], "fit processes outlived the bot"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process priorities")
async def test_fits_run_below_the_event_loop_so_a_busy_machine_serves_the_loop_first() -> None:
    loop_niceness = os.getpriority(os.PRIO_PROCESS, 0)
    earlier = {child.pid for child in multiprocessing.active_children()}
    fitter = ImageFitter(max_concurrent=2)
    try:
        await fitter.start()
        workers = [c for c in multiprocessing.active_children() if c.pid not in earlier]
        results = await asyncio.gather(
            *(fitter.fit(encode(solid(RED), "PNG"), preset=P720) for _ in range(3))
        )
        niceness = [os.getpriority(os.PRIO_PROCESS, worker.pid or 0) for worker in workers]
    finally:
        fitter.close()
    assert [r.width for r in results] == [1280] * 3
    assert len(workers) == 2  # started before the first member's image arrived
    assert niceness == [min(19, loop_niceness + imaging.FIT_NICENESS)] * 2
    # Only the fit processes: the bot's own process keeps its priority.
    assert os.getpriority(os.PRIO_PROCESS, 0) == loop_niceness
