"""Turn the raw bytes of a user's attachment into exactly the frame a video model needs.

Everything here is pure and synchronous (the service runs it with `asyncio.to_thread`) and
touches no global Pillow state, so concurrent calls are safe. Bad input always ends in
`ImageRejected`, whose reason is shown to the user as it is.

Pipeline: check bytes -> sniff format -> read the size from the header and refuse bombs before
any pixel is decoded -> decode (JPEG at a reduced DCT scale when the source is much larger) ->
integer `reduce()` -> EXIF rotation -> one BICUBIC resize to the exact size -> flatten alpha
over white and convert to sRGB at the output size (cheaper than at source size) -> JPEG.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
import struct
from dataclasses import dataclass, field
from typing import Literal

# Importing the plugins registers them now, so Image.open(formats=[...]) never has to run
# Pillow's lazy global plugin initialisation from several threads at once.
from PIL import (
    BmpImagePlugin,  # noqa: F401
    ExifTags,
    GifImagePlugin,  # noqa: F401
    Image,
    ImageCms,
    ImageEnhance,
    ImageFilter,
    JpegImagePlugin,  # noqa: F401
    PngImagePlugin,  # noqa: F401
    WebPImagePlugin,  # noqa: F401
    features,
)

from bot.catalog import Orientation, Preset
from bot.errors import ImageRejected

OrientationChoice = Literal["auto", "landscape", "portrait"]
FitMode = Literal["crop", "pad"]

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP"})
_FORMATS_TEXT = "JPEG, PNG, WebP, GIF or BMP"

JPEG_QUALITY = 93
# 4:4:4: no chroma subsampling, so thin coloured edges reach the model intact.
JPEG_SUBSAMPLING = 0
# The frame travels base64-encoded in the request body and is stored with the job; a noisy
# image that would exceed this is re-encoded once with the usual web settings instead.
MAX_JPEG_BYTES = 3 * 1024 * 1024
_FALLBACK_QUALITY = 85
_FALLBACK_SUBSAMPLING = 2  # 4:2:0

# Keep at least this multiple of the output size before the final resize: integer
# `reduce()` is a box filter, and leaving the final filter >= 2x of room keeps the result
# indistinguishable from resizing the full image (see bench/imaging.py).
_REDUCE_GAP = 2.0
# JPEG DCT scaling (1/2, 1/4, 1/8) is a proper frequency-domain downscale, so only the
# output size itself has to be kept.
_DRAFT_GAP = 1.0

WHITE = (255, 255, 255)
# Pad mode: the background is the image itself, shrunk, blurred and darkened.
_PAD_BG_SHRINK = 8
_PAD_BG_BLUR = 2.5
_PAD_BG_BRIGHTNESS = 0.55

# Errors Pillow raises for malformed data (plugins raise the odd ones from their parsers).
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    struct.error,
)
_BOMB_ERRORS: tuple[type[BaseException], ...] = (
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,  # raised rather than printed when warnings are errors
)

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = frozenset({5, 6, 7, 8})
_HAVE_CMS = features.check_module("littlecms2")
_ICC_SPACE_FOR_MODE = {"RGB": "RGB", "CMYK": "CMYK", "L": "GRAY"}


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    """Decompression-bomb guard, checked from the file header before anything is decoded."""
    min_side: int = 256
    """Below 256 px on the shorter side, filling a 720p frame means upscaling more than 2.8x
    (4x for 1080p): the video would start from visible mush. That is mostly thumbnails,
    icons and emoji, which the user can easily replace with the original."""


@dataclass(frozen=True)
class PreparedImage:
    jpeg: bytes = field(repr=False)
    """The fitted frame: baseline JPEG, RGB, exactly width x height, no metadata (no GPS)."""
    width: int
    height: int
    orientation: Orientation
    source_format: str
    source_size: tuple[int, int]
    """Size of the user's image after EXIF orientation."""

    def data_uri(self) -> str:
        return jpeg_data_uri(self.jpeg)


def jpeg_data_uri(jpeg: bytes) -> str:
    """A JPEG as the provider takes it: a data URI in `image_url` (contract §2)."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


# --- format sniffing ------------------------------------------------------------------------

_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})


def detect_format(data: bytes) -> str | None:
    """The image format, from magic numbers only (file names and content types can lie).

    Recognises a few formats we do not accept (HEIC, AVIF, TIFF) so the refusal can name them.
    """
    head = bytes(data[:32])
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"  # includes MPO (multi-picture JPEG from phones and 3D cameras)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    # "BM" alone is too weak (a text file may start with it): also require a known DIB header.
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in _HEIF_BRANDS:
            return "HEIC"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def _header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) read straight from the header, or None if it cannot be found.

    Needed because Pillow's WebP plugin allocates the whole canvas while *opening* the file.
    """
    try:
        if fmt == "PNG" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
        elif fmt == "GIF":
            w, h = struct.unpack("<HH", data[6:10])
        elif fmt == "BMP":
            if int.from_bytes(data[14:18], "little") == 12:
                w, h = struct.unpack("<HH", data[18:22])
            else:
                w, h = struct.unpack("<ii", data[18:26])
        elif fmt == "WEBP":
            return _webp_size(data)
        elif fmt == "JPEG":
            return _jpeg_size(data)
        else:
            return None
    except struct.error:
        return None
    return (abs(w), abs(h)) if w and h else None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return (
            int.from_bytes(data[24:27], "little") + 1,
            int.from_bytes(data[27:30], "little") + 1,
        )
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", data[26:30])
        return (w & 0x3FFF, h & 0x3FFF)
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    return None


# Start-of-frame markers carry the size; C4 (DHT), C8 (reserved) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the marker segments up to the first frame header (SOF)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        i += 2
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            continue
        if marker in (0xD9, 0xDA):  # end of image / scan data before any frame header
            return None
        length = int.from_bytes(data[i : i + 2], "big")
        if marker in _JPEG_SOF and i + 7 <= n:
            h, w = struct.unpack(">HH", data[i + 3 : i + 7])
            return (w, h) if w and h else None  # height 0 means "defined later" (DNL)
        if length < 2:
            return None
        i += length
    return None


# --- user-facing reasons --------------------------------------------------------------------


def _mb(n: int) -> str:
    value = math.ceil(n / (1024 * 1024) * 10) / 10  # round up: 20 MB + 1 byte is not "20.0 MB"
    return f"{value:g} MB"


def _kb_or_mb(n: int) -> str:
    return f"{math.ceil(n / 1024)} KB" if n < 1024 * 1024 else _mb(n)


def _megapixels(n: int) -> str:
    return f"{math.ceil(n / 100_000) / 10:g}"


def _not_image(data: bytes, fmt: str | None) -> ImageRejected:
    if not data:
        return ImageRejected(
            "not_image", f"The file is empty (0 bytes). Please send a {_FORMATS_TEXT} image."
        )
    what = f"a {fmt} image, which the bot can't use" if fmt else "not an image the bot can read"
    return ImageRejected(
        "not_image",
        f"That file ({_kb_or_mb(len(data))}) is {what}. Please send a {_FORMATS_TEXT} image.",
    )


def _corrupt(data: bytes, fmt: str) -> ImageRejected:
    return ImageRejected(
        "corrupt",
        f"This {fmt} file ({_kb_or_mb(len(data))}) is damaged or incomplete, so it can't be "
        "read. Try saving it again or sending the original.",
    )


def _check_pixels(size: tuple[int, int], limits: ImageLimits) -> None:
    w, h = size
    if w * h > limits.max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            f"The image is {w}×{h} pixels ({_megapixels(w * h)} megapixels); the limit is "
            f"{_megapixels(limits.max_pixels)} megapixels. Please send a smaller version.",
        )
    if min(w, h) < limits.min_side:
        raise ImageRejected(
            "too_small",
            f"The image is only {w}×{h} pixels; it needs to be at least {limits.min_side} "
            "pixels on its shorter side. Please send a larger version.",
        )


# --- the pipeline ---------------------------------------------------------------------------


def prepare_image(
    data: bytes,
    *,
    preset: Preset,
    orientation: OrientationChoice = "auto",
    fit: FitMode = "crop",
    limits: ImageLimits = ImageLimits(),  # frozen, so one shared default is safe
) -> PreparedImage:
    """Check, decode and fit `data` to `preset`; raise ImageRejected for anything unusable."""
    if len(data) > limits.max_bytes:
        raise ImageRejected(
            "too_large", f"The image is {_mb(len(data))}; the limit is {_mb(limits.max_bytes)}."
        )
    fmt = detect_format(data)
    if fmt not in SUPPORTED_FORMATS:
        raise _not_image(data, fmt)
    header = _header_size(data, fmt)
    if header is not None:
        _check_pixels(header, limits)

    try:
        decoded = _decode(data, fmt, preset, orientation, fit, limits)
    except ImageRejected:
        raise
    except _BOMB_ERRORS:
        # Pillow's own (global) guard fired: our header reader found no size, or an operator
        # set max_pixels above Pillow's limit.
        raise ImageRejected(
            "too_many_pixels",
            "The image has too many pixels to open safely; please send one under "
            f"{_megapixels(limits.max_pixels)} megapixels.",
        ) from None
    except _DECODE_ERRORS:
        raise _corrupt(data, fmt) from None

    im = decoded.image
    try:
        target = preset.size(decoded.orientation)
        fitter = _fit_crop if fit == "crop" else _fit_pad
        frame = fitter(im, target, decoded.colour)
    finally:
        im.close()
    try:
        jpeg = _encode(frame)
    finally:
        frame.close()
    return PreparedImage(
        jpeg=jpeg,
        width=target[0],
        height=target[1],
        orientation=decoded.orientation,
        source_format=fmt,
        source_size=decoded.source_size,
    )


@dataclass
class _Decoded:
    image: Image.Image
    """Upright, mode L/LA/RGB/RGBA/CMYK, possibly pre-shrunk but still >= what the fit needs."""
    orientation: Orientation
    source_size: tuple[int, int]
    colour: _ColourFix


def _decode(
    data: bytes,
    fmt: str,
    preset: Preset,
    orientation: OrientationChoice,
    fit: FitMode,
    limits: ImageLimits,
) -> _Decoded:
    src = Image.open(io.BytesIO(data), formats=[fmt])
    im: Image.Image = src  # the latest stage; _swap closes the earlier ones
    try:
        _check_pixels(src.size, limits)  # again, from Pillow's parse, in case ours found nothing
        icc = src.info.get("icc_profile")
        stored = src.size
        if fmt == "JPEG":
            # Orientation comes from the APP1 header here, so the draft size can account for it.
            exif = _exif_orientation(src)
            choice, scale = _plan(stored, exif, preset, orientation, fit)
            want = (
                math.ceil(stored[0] * scale * _DRAFT_GAP),
                math.ceil(stored[1] * scale * _DRAFT_GAP),
            )
            if want[0] < stored[0] and want[1] < stored[1]:
                src.draft(src.mode, want)  # decode at 1/2, 1/4 or 1/8 scale, still >= want
            src.load()
        else:
            src.load()  # first frame of an animation; PNG may keep its EXIF after the pixels
            exif = _exif_orientation(src)
            choice, scale = _plan(stored, exif, preset, orientation, fit)
        im = _swap(im, _normalise_mode(im))
        # `scale` is relative to the stored size; the draft may already have done part of it.
        factor = math.floor(im.size[0] / (stored[0] * scale * _REDUCE_GAP))
        if factor >= 2:
            im = _swap(im, im.reduce(factor))
        if exif in _TRANSPOSE:
            im = _swap(im, im.transpose(_TRANSPOSE[exif]))
    except BaseException:
        im.close()
        raise
    source_size = (stored[1], stored[0]) if exif in _SWAPS_SIDES else stored
    return _Decoded(im, choice, source_size, _ColourFix(icc if isinstance(icc, bytes) else None))


def _exif_orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:
        return 1  # a broken EXIF block should not cost the user their upload
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _plan(
    stored: tuple[int, int],
    exif: int,
    preset: Preset,
    choice: OrientationChoice,
    fit: FitMode,
) -> tuple[Orientation, float]:
    """The output orientation and the scale the source needs (output px per source px)."""
    w, h = (stored[1], stored[0]) if exif in _SWAPS_SIDES else stored
    orientation: Orientation = (
        choice if choice != "auto" else ("portrait" if h > w else "landscape")
    )
    tw, th = preset.size(orientation)
    # Crop covers the frame (the larger ratio); pad fits inside it (the smaller one).
    scale = max(tw / w, th / h) if fit == "crop" else min(tw / w, th / h)
    return orientation, scale


def _swap(old: Image.Image, new: Image.Image) -> Image.Image:
    """Free the previous stage's pixels as soon as the next stage exists (peak memory)."""
    if new is not old:
        old.close()
    return new


_SIXTEEN_BIT_GREY = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def _normalise_mode(im: Image.Image) -> Image.Image:
    """A mode that reduce/resize handle properly: L, LA, RGB, RGBA or CMYK."""
    mode = im.mode
    keyed = im.info.get("transparency") is not None
    if mode in _SIXTEEN_BIT_GREY:
        # convert("L") would clip every value above 255 to white; scale 0..65535 instead.
        return im.convert("I").point(lambda v: v / 257).convert("L")
    if mode in ("P", "PA") or (keyed and mode in ("1", "L", "RGB")):
        # Palette and colour-key transparency become real alpha (resize on P is nearest).
        return im.convert("RGBA" if keyed or mode == "PA" else "RGB")
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK"):
        return im
    if mode in ("1", "F"):
        return im.convert("L")
    if mode == "La":
        return im.convert("LA")
    if mode == "RGBa":
        return im.convert("RGBA")
    return im.convert("RGB")  # YCbCr, RGBX, LAB, HSV, ...


class _ColourFix:
    """Flatten alpha over white and convert to sRGB, built once per image and used on the
    (small) output pieces only."""

    def __init__(self, icc: bytes | None) -> None:
        self._icc = icc if _HAVE_CMS else None
        self._transforms: dict[str, ImageCms.ImageCmsTransform | None] = {}

    def apply(self, im: Image.Image) -> Image.Image:
        """`im` as RGB in sRGB. Consumes `im`: it is closed unless it is returned."""
        if im.mode in ("RGBA", "LA"):
            base = "L" if im.mode == "LA" else "RGB"
            flat = Image.new(base, im.size, 255 if base == "L" else WHITE)
            flat.paste(im.convert(base), mask=im.getchannel("A"))
            im = _swap(im, flat)
        transform = self._transform(im.mode)
        if transform is not None:
            # An unusable profile is skipped: the untagged colours are still a fair rendering.
            with contextlib.suppress(ImageCms.PyCMSError, ValueError, OSError):
                im = _swap(im, transform.apply(im))
        return im if im.mode == "RGB" else _swap(im, im.convert("RGB"))

    def _transform(self, mode: str) -> ImageCms.ImageCmsTransform | None:
        if self._icc is None or mode not in _ICC_SPACE_FOR_MODE:
            return None
        if mode not in self._transforms:
            self._transforms[mode] = self._build(mode)
        return self._transforms[mode]

    def _build(self, mode: str) -> ImageCms.ImageCmsTransform | None:
        if self._icc is None:
            return None
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(self._icc))
            if source.profile.xcolor_space.strip() != _ICC_SPACE_FOR_MODE[mode]:
                return None  # e.g. an RGB profile on a greyscale image: ignore it
            # A fresh sRGB profile per image, so no LittleCMS handle is shared between threads.
            srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
            return ImageCms.buildTransform(source, srgb, mode, "RGB")
        except (ImageCms.PyCMSError, ValueError, OSError, TypeError):
            return None


def _cover_box(size: tuple[int, int], target: tuple[int, int]) -> tuple[float, float, float, float]:
    """The centred region of `size` with the target's aspect ratio."""
    w, h = size
    tw, th = target
    if w * th > h * tw:  # wider than the target: trim the sides
        bw = h * tw / th
        return ((w - bw) / 2, 0.0, (w + bw) / 2, float(h))
    bh = w * th / tw
    return (0.0, (h - bh) / 2, float(w), (h + bh) / 2)


def _fit_crop(im: Image.Image, target: tuple[int, int], colour: _ColourFix) -> Image.Image:
    box = _cover_box(im.size, target)
    # BICUBIC: the source is already DCT-scaled/reduced to under ~2x the target, where it is
    # visually the same as LANCZOS (PSNR in bench/imaging.py) and a third cheaper.
    return colour.apply(im.resize(target, Image.Resampling.BICUBIC, box=box))


def _fit_pad(im: Image.Image, target: tuple[int, int], colour: _ColourFix) -> Image.Image:
    tw, th = target
    w, h = im.size
    scale = min(tw / w, th / h)
    inner = (min(tw, max(1, round(w * scale))), min(th, max(1, round(h * scale))))

    # Background: a tiny cover-crop, blurred and darkened, then smoothly enlarged. Blurring at
    # 1/8 scale is cheap and looks like a very wide blur once enlarged.
    small = (max(1, tw // _PAD_BG_SHRINK), max(1, th // _PAD_BG_SHRINK))
    box = _cover_box(im.size, small)
    bg = colour.apply(im.resize(small, Image.Resampling.BILINEAR, box=box, reducing_gap=2.0))
    bg = _swap(bg, bg.filter(ImageFilter.GaussianBlur(_PAD_BG_BLUR)))
    bg = _swap(bg, ImageEnhance.Brightness(bg).enhance(_PAD_BG_BRIGHTNESS))
    bg = _swap(bg, bg.resize(target, Image.Resampling.BICUBIC))
    fg = colour.apply(im.resize(inner, Image.Resampling.LANCZOS))
    bg.paste(fg, ((tw - inner[0]) // 2, (th - inner[1]) // 2))
    fg.close()
    return bg


def _encode(frame: Image.Image) -> bytes:
    jpeg = _save_jpeg(frame, JPEG_QUALITY, JPEG_SUBSAMPLING)
    if len(jpeg) > MAX_JPEG_BYTES:
        jpeg = _save_jpeg(frame, _FALLBACK_QUALITY, _FALLBACK_SUBSAMPLING)
    return jpeg


def _save_jpeg(frame: Image.Image, quality: int, subsampling: int) -> bytes:
    buf = io.BytesIO()
    # No `optimize`: a second Huffman pass costs ~25 % of the encode for ~1.5 % of size.
    frame.save(buf, "JPEG", quality=quality, subsampling=subsampling)
    return buf.getvalue()
