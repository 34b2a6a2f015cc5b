"""bot.imaging: every image a user might attach ends as the exact frame, or a clear refusal."""

from __future__ import annotations

import base64
import io
import random
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin

from bot.catalog import CATALOG, Preset
from bot.errors import ImageRejected, user_message
from bot.imaging import (
    SUPPORTED_FORMATS,
    FitMode,
    ImageLimits,
    PreparedImage,
    detect_format,
    prepare_image,
)
from tests.images import (
    BLUE,
    GREEN,
    QUADRANT_COLOURS,
    RED,
    WHITE,
    YELLOW,
    close_to,
    decode,
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
    return caught.value.reason


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
    assert "100000×100000" in reason and "10000 megapixels" in reason and "50 megapixels" in reason


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
    assert "1200×1000" in reason and "1.2 megapixels" in reason and "1 megapixels" in reason


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
    assert fmt in reason and "damaged or incomplete" in reason


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
    assert "JPEG, PNG, WebP, GIF or BMP" in reason


def test_empty_file_is_not_an_image() -> None:
    assert "empty" in rejected(b"", "not_image")


@pytest.mark.parametrize(
    ("head", "name"),
    [
        (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic", "HEIC"),
        (b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf", "AVIF"),
        (b"II*\0\x08\0\0\0", "TIFF"),
    ],
)
def test_known_but_unsupported_formats_are_named(head: bytes, name: str) -> None:
    data = head + b"\0" * 2000
    assert detect_format(data) == name
    reason = rejected(data, "not_image")
    assert name in reason and "JPEG, PNG, WebP, GIF or BMP" in reason


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
    assert user_message(caught.value) == reason


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
    data = encode(im.convert("RGBA") if fmt == "PNG" else im, fmt)
    for sample in _mutations(data, rng, 60):
        try:
            result = prepare_image(sample, preset=SEEDANCE_480)
        except ImageRejected as exc:
            assert exc.code in {"not_image", "corrupt", "too_many_pixels", "too_small"}
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
