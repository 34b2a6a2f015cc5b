"""Turn the raw bytes of a user's attachment into exactly the frame a video model needs.

`prepare_image` is pure and synchronous and touches no global Pillow state, so concurrent calls
are safe; `ImageFitter` runs it in worker processes under one memory budget for the whole bot.
Bad input always ends in `ImageRejected`, whose reason is shown to the user as it is.

Pipeline: check bytes -> sniff format -> read size, pixel layout and variant from the header ->
refuse bombs and estimate the decode memory before any pixel is decoded -> decode in the file's
own mode (JPEG at a reduced DCT scale when the source is much larger; HEIC through pillow-heif,
AVIF through Pillow's libavif plugin, both whole) -> read the decoded image
in strips of rows, each converted to a working mode (L, La, RGB, RGBa, CMYK: premultiplied alpha,
16-bit and palette images made 8-bit) and reduced by an integer factor -> one resize to the exact
size, strip by strip -> alpha over white, sRGB and EXIF rotation on the small output -> JPEG.
Working in strips means no converted or rotated full-size copy ever exists: the peak is the
decoded image itself plus a few MB (see `estimate_decode_bytes`).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import ctypes
import functools
import io
import math
import multiprocessing
import os
import select
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Literal

# Importing the plugins registers them now, so Image.open(formats=[...]) never has to run
# Pillow's lazy global plugin initialisation from several threads at once.
from PIL import (
    AvifImagePlugin,
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
from bot.i18n import Message, Number, Text, _t

try:
    # HEIC/HEIF (iPhone photos) through libheif. Registering the opener is Pillow's global
    # plugin table, done once here like the imports above. Thumbnails, depth maps and other
    # auxiliary images are never used, so libheif is not asked to read them.
    import pillow_heif

    pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
    _HAVE_HEIF = True
except ImportError:  # the bot still runs without it; HEIC is then refused by name
    _HAVE_HEIF = False

OrientationChoice = Literal["auto", "landscape", "portrait"]
FitMode = Literal["crop", "pad"]

# In the order a refusal lists them. HEIC comes from pillow-heif, AVIF from Pillow's own
# plugin (libavif); either is left out, and refused by name, where its library is missing.
_FORMAT_ORDER = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "HEIC", "AVIF")
_AVAILABLE = {"HEIC": _HAVE_HEIF, "AVIF": AvifImagePlugin.SUPPORTED and features.check("avif")}
SUPPORTED_FORMATS = frozenset(f for f in _FORMAT_ORDER if _AVAILABLE.get(f, True))
_FORMAT_NAMES = {"WEBP": "WebP", "PSD": "Photoshop (PSD)"}
# Pillow's name for a format where it differs from ours (pillow-heif registers "HEIF").
_PILLOW_FORMATS = {"HEIC": "HEIF"}


def _or_list(names: list[str]) -> Message:
    if len(names) < 2:
        return names[0]
    return _t("{others} or {last}", others=", ".join(names[:-1]), last=names[-1])


_FORMATS_TEXT = _or_list([_FORMAT_NAMES.get(f, f) for f in _FORMAT_ORDER if f in SUPPORTED_FORMATS])
"""What a refusal tells the member to send: "JPEG, PNG, WebP, GIF, BMP, HEIC or AVIF"."""

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

# Decoded rows are converted and reduced this many bytes (in the working mode) at a time.
_STRIP_BYTES = 8 * 1024 * 1024
MIB = 1024 * 1024

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
    RuntimeError,  # libavif's and libheif's decode failures, as Pillow and pillow-heif raise them
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
    max_decode_bytes: int = 256 * MIB
    """Memory one image may need while it is fitted, estimated from its header before anything
    is decoded. Every PNG, GIF, BMP, baseline JPEG and 4:2:0 progressive JPEG under the default
    `max_pixels` fits; what does not is a WebP over ~15 MP (libwebp keeps ~16 bytes per pixel),
    a 4:4:4 or CMYK progressive JPEG over ~30-40 MP (full-size coefficient buffers), an 8-bit
    HEIC over ~30 MP (a 12 or 24 MP iPhone photo fits, a 48 MP one does not: neither libheif
    nor libavif decodes at a reduced scale) and an AVIF over ~23 MP. Those are refused with the
    size that would work."""


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
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_GENERIC_BRANDS = frozenset({b"mif1", b"msf1", b"mif2", b"miaf"})
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic TIFF, then BigTIFF
_JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
_JP2_CONTAINER = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def detect_format(data: bytes) -> str | None:
    """The image format, from magic numbers only (file names and content types can lie).

    Recognises a few formats we do not accept (TIFF, JPEG XL, JPEG 2000, PSD) so the refusal
    can name them.
    """
    head = bytes(data[:32])
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"  # includes MPO (multi-picture JPEG from phones and 3D cameras)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"  # includes APNG
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    # "BM" alone is too weak (a text file may start with it): also require a known DIB header.
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if head[4:8] == b"ftyp":
        return _heif_kind(data)
    if head[:4] in _TIFF_MAGIC:
        return "TIFF"  # BigTIFF is a TIFF to the people who send it
    if head.startswith((b"\xff\x0a", _JXL_CONTAINER)):
        return "JPEG XL"
    if head.startswith((b"\xff\x4f\xff\x51", _JP2_CONTAINER)):
        return "JPEG 2000"
    if head.startswith(b"8BPS"):
        return "PSD"
    return None


def _heif_kind(data: bytes) -> str | None:
    """HEIC or AVIF, from the brands of the `ftyp` box. A file may carry only the generic
    HEIF brand as its major brand and say what it holds among the compatible ones."""
    size = int.from_bytes(data[:4], "big")
    end = min(len(data), size if size >= 16 else 16)
    brands = {bytes(data[8:12])} | {bytes(data[i : i + 4]) for i in range(16, end - 3, 4)}
    if bytes(data[8:12]) in _AVIF_BRANDS or (
        bytes(data[8:12]) not in _HEIC_BRANDS and brands & _AVIF_BRANDS
    ):
        return "AVIF"
    if brands & (_HEIC_BRANDS | _HEIF_GENERIC_BRANDS):
        return "HEIC"  # a HEIF that is not AVIF is, in practice, an HEVC photo
    return None  # an MP4, MOV or 3GP video, say


# --- what the header says -------------------------------------------------------------------


@dataclass(frozen=True)
class _JpegFrame:
    size: tuple[int, int]
    components: int
    sampling: tuple[tuple[int, int], ...]
    """(horizontal, vertical) sampling factor of each component."""
    precision: int
    marker: int
    """The start-of-frame marker: C0/C1 baseline/extended, C2 progressive, ..."""
    buffered: bool
    """libjpeg keeps every DCT coefficient of the whole image (progressive or multi-scan)."""


@dataclass(frozen=True)
class _Header:
    size: tuple[int, int] | None
    """(width, height), or None where only Pillow's parser can find it."""
    bytes_per_pixel: float
    """Decoded bytes per pixel while loading: Pillow's mode plus the decoder's own canvases."""
    kind: Message
    """How a refusal names this kind of file: "PNG", "16-bit PNG", "progressive JPEG", ..."""
    unsupported: Message | None = None
    """A valid variant of the format that Pillow cannot decode, e.g. "JPEG compression"."""
    jpeg: _JpegFrame | None = None


# Pillow keeps RGB, RGBA, LA, CMYK and 32-bit modes at 4 bytes per pixel, "1", L and P at 1.
_PIL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# Measured peak while loading (Pillow 13, libwebp 1.6): WebP goes through libwebp's animation
# decoder (two canvases) plus its own decode buffer and a bytes copy of the frame.
_WEBP_BYTES_PER_PIXEL = 16.0
# GIF's first frame may be composited onto a full-size canvas beside the frame itself.
_GIF_BYTES_PER_PIXEL = 2.0
# PNG colour type -> (bytes per pixel for 8-bit and lower depths, for 16-bit).
_PNG_BYTES = {0: (1, 2), 2: (4, 4), 3: (1, 1), 4: (4, 4), 6: (4, 4)}
_JPEG_HIERARCHICAL = frozenset({0xC5, 0xC6, 0xC7, 0xCD, 0xCE, 0xCF})
_JPEG_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
# Valid BMP variants Pillow has no decoder for (other values mean a broken header).
_BMP_UNSUPPORTED_DEPTHS = frozenset({0, 2, 64})
_BMP_UNSUPPORTED_COMPRESSION: dict[int, Message] = {
    4: _t("JPEG compression"),
    5: _t("PNG compression"),
    6: _t("alpha bit fields"),
    11: _t("CMYK colours"),
    12: _t("CMYK colours"),
    13: _t("CMYK colours"),
}
_JPEG_UNSUPPORTED_PRECISION = frozenset({12, 16})


def _read_header(data: bytes, fmt: str) -> _Header:
    """Size, decoded memory and variant, straight from the header. Needed because Pillow's
    WebP plugin allocates the whole canvas while *opening* the file, and because the memory a
    decode will take must be known before it starts."""
    try:
        if fmt == "PNG":
            return _png_header(data)
        if fmt == "GIF":
            return _Header(_gif_size(data), _GIF_BYTES_PER_PIXEL, "GIF")
        if fmt == "BMP":
            return _bmp_header(data)
        if fmt == "WEBP":
            return _Header(_webp_size(data), _WEBP_BYTES_PER_PIXEL, "WebP")
        if fmt == "JPEG":
            return _jpeg_header(data)
        if fmt in ("HEIC", "AVIF"):
            return _heif_header(data, fmt)
    except struct.error:
        pass
    return _Header(None, 4, _FORMAT_NAMES.get(fmt, fmt))


def _bits_kind(bits: int, fmt: str) -> Text:
    return _t("{bits}-bit {format}", bits=bits, format=fmt)


def _nonzero(w: int, h: int) -> tuple[int, int] | None:
    return (abs(w), abs(h)) if w and h else None


def _png_header(data: bytes) -> _Header:
    if data[12:16] != b"IHDR":
        return _Header(None, 4, "PNG")
    w, h, depth, colour = struct.unpack(">IIBB", data[16:26])
    low, high = _PNG_BYTES.get(colour, (4, 4))
    kind = _bits_kind(16, "PNG") if depth == 16 else "PNG"
    return _Header(_nonzero(w, h), high if depth == 16 else low, kind)


def _gif_size(data: bytes) -> tuple[int, int] | None:
    """The canvas Pillow allocates: the logical screen, grown to hold the first frame."""
    w, h, flags = struct.unpack("<HHB", data[6:11])
    i = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global colour table
    while i < len(data) and data[i] == 0x21:  # extensions: label, then sub-blocks to a 0
        i += 2
        while i < len(data) and data[i]:
            i += data[i] + 1
        i += 1
    if i < len(data) and data[i] == 0x2C:  # the first image descriptor
        left, top, fw, fh = struct.unpack("<HHHH", data[i + 1 : i + 9])
        w, h = max(w, left + fw), max(h, top + fh)
    return _nonzero(w, h)


def _bmp_header(data: bytes) -> _Header:
    dib = int.from_bytes(data[14:18], "little")
    if dib == 12:
        w, h, _planes, bits = struct.unpack("<HHHH", data[18:26])
        compression = 0
    else:
        w, h, _planes, bits, compression = struct.unpack("<iiHHI", data[18:34])
    unsupported = _BMP_UNSUPPORTED_COMPRESSION.get(compression)
    if unsupported is None and bits in _BMP_UNSUPPORTED_DEPTHS:
        unsupported = _t("{bits} bits per pixel", bits=bits)
    return _Header(_nonzero(w, h), 1 if bits <= 8 else 4, "BMP", unsupported)


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


def _jpeg_header(data: bytes) -> _Header:
    frame = _jpeg_frame(data)
    if frame is None:
        return _Header(None, 4, "JPEG")
    unsupported: Message | None = None
    if frame.marker in _JPEG_HIERARCHICAL:
        unsupported = _t("hierarchical coding")
    elif frame.precision in _JPEG_UNSUPPORTED_PRECISION:
        unsupported = _t("{bits}-bit samples", bits=frame.precision)
    kind: Message = _t("progressive JPEG") if frame.marker in _JPEG_PROGRESSIVE else "JPEG"
    per_pixel = 1 if frame.components == 1 else 4
    return _Header(frame.size, per_pixel, kind, unsupported, frame)


# Start-of-frame markers carry the size; C4 (DHT), C8 (reserved) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_frame(data: bytes) -> _JpegFrame | None:
    """Walk the marker segments to the frame header (SOF) and the first scan header (SOS)."""
    i, n = 2, len(data)
    sof: tuple[int, int, int, int, tuple[tuple[int, int], ...]] | None = None
    while i + 4 <= n:
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        i += 2
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            continue
        if marker == 0xD9:
            break
        length = int.from_bytes(data[i : i + 2], "big")
        if marker == 0xDA:  # the first scan: is it the only one?
            if sof is None:
                return None
            in_scan = data[i + 2] if i + 2 < n else 0
            return _jpeg_frame_from(sof, buffered=in_scan < len(sof[4]))
        if marker in _JPEG_SOF and sof is None and i + 8 <= n:
            precision, h, w, count = struct.unpack(">BHHB", data[i + 2 : i + 8])
            if not (w and h):
                return None  # height 0 means "defined later" (DNL): let Pillow find it
            factors = tuple(
                (data[j] >> 4, data[j] & 0x0F) for j in range(i + 9, min(n, i + 9 + 3 * count), 3)
            )
            sof = (marker, precision, w, h, factors)
        if length < 2:
            break
        i += length
    return None if sof is None else _jpeg_frame_from(sof, buffered=False)


def _jpeg_frame_from(
    sof: tuple[int, int, int, int, tuple[tuple[int, int], ...]], *, buffered: bool
) -> _JpegFrame:
    marker, precision, w, h, sampling = sof
    return _JpegFrame(
        size=(w, h),
        components=len(sampling),
        sampling=sampling,
        precision=precision,
        marker=marker,
        buffered=buffered or marker in _JPEG_PROGRESSIVE,
    )


def _jpeg_coefficient_bytes(frame: _JpegFrame) -> int:
    """What libjpeg allocates to keep every DCT coefficient of a progressive or multi-scan
    JPEG: 64 two-byte coefficients per 8x8 block of each component, at full size whatever
    the DCT scale of the output."""
    w, h = frame.size
    hmax = max((hs for hs, _ in frame.sampling), default=1) or 1
    vmax = max((vs for _, vs in frame.sampling), default=1) or 1
    blocks = 0
    for hs, vs in frame.sampling:
        blocks += math.ceil(w * max(hs, 1) / hmax / 8) * math.ceil(h * max(vs, 1) / vmax / 8)
    return blocks * 128


# --- HEIC and AVIF (ISO base media file format) ----------------------------------------------


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, body start, body end) of each box in data[start:end]; stops at a broken one."""
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        body = i + 8
        if size == 1:  # a 64-bit size follows the type
            size = int.from_bytes(data[body : body + 8], "big")
            body += 8
        elif size == 0:  # to the end of the enclosing box
            size = end - i
        if size < body - i:
            return
        yield kind, body, min(end, i + size)
        i += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    return next(((b, e) for k, b, e in _boxes(data, start, end) if k == kind), None)


@dataclass(frozen=True)
class _HeifImage:
    """The primary image, from its item properties: what libheif or libavif will decode."""

    size: tuple[int, int] | None
    """Coded size (`ispe`), before any rotation (`irot`)."""
    quarter_turns: int
    bits: int
    chroma_planes: float
    """Chroma samples per pixel: 0 (monochrome), 0.5 (4:2:0), 1 (4:2:2) or 2 (4:4:4)."""
    alpha: bool


def _heif_primary(data: bytes) -> _HeifImage | None:
    meta = _child(data, 0, len(data), b"meta")
    if meta is None:
        return None
    start, end = meta[0] + 4, meta[1]  # a full box: version and flags first
    pitm = _child(data, start, end, b"pitm")
    iprp = _child(data, start, end, b"iprp")
    if pitm is None or iprp is None:
        return None
    primary = struct.unpack_from(">H" if data[pitm[0]] == 0 else ">I", data, pitm[0] + 4)[0]
    ipco = _child(data, *iprp, b"ipco")
    if ipco is None:
        return None
    properties = list(_boxes(data, *ipco))
    size, turns, bits, chroma = None, 0, 8, 0.5
    for index in _heif_associations(data, iprp, primary):
        if not 1 <= index <= len(properties):
            continue
        kind, b, e = properties[index - 1]
        if kind == b"ispe" and e - b >= 12:
            size = _nonzero(*struct.unpack_from(">II", data, b + 4))
        elif kind == b"irot" and e > b:
            turns = data[b] & 3
        elif kind == b"pixi" and e - b >= 6:
            bits = max(bits, max(data[b + 5 : min(e, b + 5 + data[b + 4])], default=8))
        elif kind == b"av1C" and e - b >= 3:
            flags = data[b + 2]
            bits = max(bits, 12 if flags & 0x20 else 10 if flags & 0x40 else 8)
            chroma = 0.0 if flags & 0x10 else {3: 0.5, 2: 1.0}.get((flags >> 2) & 3, 2.0)
        elif kind == b"hvcC" and e - b >= 19:
            chroma = {0: 0.0, 1: 0.5, 2: 1.0}.get(data[b + 16] & 3, 2.0)
            bits = max(bits, 8 + (data[b + 17] & 7))
    # An alpha plane is a separate auxiliary image; its type URN is enough to know it is there.
    alpha = b"auxiliary:alpha" in data[start:end] or b"hevc:2015:auxid:1" in data[start:end]
    return _HeifImage(size, turns, bits, chroma, alpha)


def _heif_associations(data: bytes, iprp: tuple[int, int], item: int) -> list[int]:
    """Indexes (1-based, into `ipco`) of the properties of `item`, from every `ipma` box."""
    found: list[int] = []
    for kind, b, e in _boxes(data, *iprp):
        if kind != b"ipma":
            continue
        version, wide = data[b], data[b + 3] & 1
        count = int.from_bytes(data[b + 4 : b + 8], "big")
        i = b + 8
        for _ in range(count):
            if i >= e:
                break
            item_id = struct.unpack_from(">H" if version < 1 else ">I", data, i)[0]
            i += 2 if version < 1 else 4
            n = data[i]
            i += 1
            for _ in range(n):
                if wide:
                    index = int.from_bytes(data[i : i + 2], "big") & 0x7FFF
                    i += 2
                else:
                    index = data[i] & 0x7F
                    i += 1
                if item_id == item:
                    found.append(index)
    return found


# Measured (Pillow 13, libavif 1.4 with dav1d, pillow-heif 1.8 with libheif 1.23 and libde265),
# 8- and 10-bit, 4:2:0 and 4:4:4, with and without alpha: the peak grows by at most the figure
# of _heif_header's formula per pixel, less than this margin.
_HEIC_MARGIN_BYTES_PER_PIXEL = 1.0
_AVIF_MARGIN_BYTES_PER_PIXEL = 2.0
# When the properties cannot be read: 10-bit 4:4:4 with alpha, the heaviest a photo carries.
_HEIF_FALLBACK_BYTES_PER_PIXEL = 21.0


def _heif_header(data: bytes, fmt: str) -> _Header:
    """Size and decode memory of a HEIC or AVIF. Neither decoder can decode at a reduced
    scale: the whole picture is decoded to planes (YCbCr, maybe 16-bit, maybe an alpha plane),
    converted to interleaved 8-bit RGB(A) and copied into Pillow's 4-byte pixels."""
    try:
        image = _heif_primary(data)
    except IndexError:  # a box cut short
        image = None
    if image is None:
        return _Header(None, _HEIF_FALLBACK_BYTES_PER_PIXEL, fmt)
    sample = 2 if image.bits > 8 else 1
    planes = (1 + image.chroma_planes + (1 if image.alpha else 0)) * sample
    channels = 4 if image.alpha else 3
    if fmt == "HEIC":
        # libde265's picture and libheif's copy of it beside the RGB(A) they become; then that
        # RGB(A) copied into Pillow's 4-byte pixels once the planes are gone.
        per_pixel = max(2 * planes + channels, channels + 4) + _HEIC_MARGIN_BYTES_PER_PIXEL
    else:
        # dav1d's picture stays while its RGB(A) (as a bytes object) is copied into Pillow's.
        per_pixel = planes + channels + 4 + _AVIF_MARGIN_BYTES_PER_PIXEL
    kind = _bits_kind(image.bits, fmt) if image.bits > 8 else fmt
    size = image.size
    if size is not None and fmt == "HEIC" and image.quarter_turns % 2:
        size = (size[1], size[0])  # libheif turns the image upright: Pillow sees it turned
    return _Header(size, per_pixel, kind)


# --- memory ---------------------------------------------------------------------------------

# Beyond the decoded image: the strips in flight (a native crop, its conversion and
# reduction) and the resize's intermediate rows. Measured up to 14 MiB; the rest is margin.
_WORK_BYTES = 2 * _STRIP_BYTES


def _output_bytes(preset: Preset) -> int:
    w, h = preset.landscape
    return w * h * 4 * 2  # the frame and the next stage of it (colour, pad background, encode)


def _draft_scale(stored: tuple[int, int], want: tuple[int, int]) -> int:
    """The DCT scale Pillow's JPEG `draft` picks for `want` (largest of 8, 4, 2, 1 that keeps
    the image at least `want`)."""
    if want[0] >= stored[0] or want[1] >= stored[1]:
        return 1
    room = min(stored[0] // max(1, want[0]), stored[1] // max(1, want[1]))
    return next(s for s in (8, 4, 2, 1) if room >= s)


def _draft_want(
    stored: tuple[int, int], exif: int, preset: Preset, choice: OrientationChoice, fit: FitMode
) -> tuple[int, int]:
    _, scale = _plan(stored, exif, preset, choice, fit)
    return (
        math.ceil(stored[0] * scale * _DRAFT_GAP),
        math.ceil(stored[1] * scale * _DRAFT_GAP),
    )


def _decode_bytes(
    header: _Header,
    size: tuple[int, int],
    preset: Preset,
    orientation: OrientationChoice,
    fit: FitMode,
) -> int:
    w, h = size
    pixels = w * h
    frame = header.jpeg
    if frame is not None:
        # The EXIF orientation is not known yet: take the draft for either way of reading it.
        scale = min(
            _draft_scale(size, _draft_want(size, exif, preset, orientation, fit)) for exif in (1, 6)
        )
        pixels = math.ceil(w / scale) * math.ceil(h / scale)
    total = pixels * header.bytes_per_pixel + _WORK_BYTES + _output_bytes(preset)
    if frame is not None and frame.buffered:
        total += _jpeg_coefficient_bytes(frame)
    return math.ceil(total)


def estimate_decode_bytes(
    data: bytes,
    *,
    preset: Preset,
    orientation: OrientationChoice = "auto",
    fit: FitMode = "crop",
) -> int | None:
    """Peak memory (bytes above what the process already uses) that fitting `data` will take,
    read from the header alone; None when the header does not say (unsupported or unreadable).
    """
    fmt = detect_format(data)
    if fmt not in SUPPORTED_FORMATS:
        return None
    header = _read_header(data, fmt)
    if header.size is None:
        return None
    return _decode_bytes(header, header.size, preset, orientation, fit)


# --- user-facing reasons --------------------------------------------------------------------


def _mb(n: int) -> Text:
    value = math.ceil(n / (1024 * 1024) * 10) / 10  # round up: 20 MB + 1 byte is not "20.0 MB"
    return _t("{size} MB", size=Number(value, 0 if value.is_integer() else 1))


def _kb_or_mb(n: int) -> Text:
    # Plain digits for KB (under 1025): "1024 KB" as before, not "1,024 KB".
    return _t("{size} KB", size=math.ceil(n / 1024)) if n < 1024 * 1024 else _mb(n)


def _megapixels(n: int) -> Text:
    """Rounded up, so a count over a limit never prints as the limit itself: "49.0 MP"."""
    return _t("{megapixels} MP", megapixels=Number(math.ceil(n / 100_000) / 10, 1))


def _megapixels_down(n: float) -> Text:
    return _t("{megapixels} MP", megapixels=Number(math.floor(n / 100_000) / 10, 1))


def _takes_an(noun: Message) -> bool:
    """Whether English says "an" before it, by how it sounds: "an AVIF", "a HEIC", "an 8-bit"."""
    english = str(noun)
    return english[:1].upper() in "AEIOU" or english.startswith(("8", "11", "18"))


def _not_image(data: bytes, fmt: str | None) -> ImageRejected:
    if not data:
        return ImageRejected(
            "not_image",
            _t(
                "The file is empty (0 bytes). Please send a {formats} image.",
                formats=_FORMATS_TEXT,
            ),
        )
    size = _kb_or_mb(len(data))
    if fmt is None:
        reason = _t(
            "That file ({size}) is not an image the bot can read. Please send a {formats} image.",
            size=size,
            formats=_FORMATS_TEXT,
        )
    elif _takes_an(_display(fmt)):
        reason = _t(
            "That file ({size}) is an {format} image, which the bot can't use. "
            "Please send a {formats} image.",
            size=size,
            format=_display(fmt),
            formats=_FORMATS_TEXT,
        )
    else:
        reason = _t(
            "That file ({size}) is a {format} image, which the bot can't use. "
            "Please send a {formats} image.",
            size=size,
            format=_display(fmt),
            formats=_FORMATS_TEXT,
        )
    return ImageRejected("not_image", reason)


def _fit_crashed() -> ImageRejected:
    return ImageRejected(
        "fit_crashed",
        _t(
            "Something went wrong while the bot was preparing this image. "
            "Please try again, or send a smaller image."
        ),
    )


def _display(fmt: str) -> str:
    return _FORMAT_NAMES.get(fmt, fmt)


def _corrupt(data: bytes, fmt: str) -> ImageRejected:
    return ImageRejected(
        "corrupt",
        _t(
            "This {format} file ({size}) is damaged or incomplete, so it can't be read. "
            "Try saving it again or sending the original.",
            format=_display(fmt),
            size=_kb_or_mb(len(data)),
        ),
    )


def _unsupported(data: bytes, fmt: str, detail: Message | None) -> ImageRejected:
    name = _display(fmt)
    size = _kb_or_mb(len(data))
    if detail is None:
        reason = _t(
            "This {format} file ({size}) is a kind of {format} the bot can't read. "
            "Please save it again as an ordinary JPEG or PNG and send that.",
            format=name,
            size=size,
        )
    else:
        reason = _t(
            "This {format} file ({size}) is a kind of {format} the bot can't read ({detail}). "
            "Please save it again as an ordinary JPEG or PNG and send that.",
            format=name,
            size=size,
            detail=detail,
        )
    return ImageRejected("unsupported_variant", reason)


def _check_pixels(size: tuple[int, int], limits: ImageLimits) -> None:
    w, h = size
    if w * h > limits.max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            _t(
                "The image is {width}×{height} pixels ({megapixels}); the limit is {limit}. "
                "Please send a smaller version.",
                width=w,
                height=h,
                megapixels=_megapixels(w * h),
                limit=_megapixels(limits.max_pixels),
            ),
        )
    if min(w, h) < limits.min_side:
        raise ImageRejected(
            "too_small",
            _t(
                "The image is only {width}×{height} pixels; it needs to be at least {min_side} "
                "pixels on its shorter side. Please send a larger version.",
                width=w,
                height=h,
                min_side=limits.min_side,
            ),
        )


def _check_memory(
    header: _Header,
    size: tuple[int, int],
    preset: Preset,
    orientation: OrientationChoice,
    fit: FitMode,
    limits: ImageLimits,
) -> int:
    """The estimated decode memory, or a refusal naming the size that would fit."""
    need = _decode_bytes(header, size, preset, orientation, fit)
    if need <= limits.max_decode_bytes:
        return need
    w, h = size
    fixed = _decode_bytes(header, (1, 1), preset, orientation, fit)
    per_pixel = max(1e-9, (need - fixed) / (w * h))
    room = max(0.0, (limits.max_decode_bytes - fixed) / per_pixel)
    if _takes_an(header.kind):
        reason = _t(
            "The image is {width}×{height} pixels ({megapixels}); an {kind} that large needs "
            "more memory than the bot can spend on one picture. Please send a smaller version "
            "(up to about {fitting}) or a JPEG.",
            width=w,
            height=h,
            megapixels=_megapixels(w * h),
            kind=header.kind,
            fitting=_megapixels_down(room),
        )
    else:
        reason = _t(
            "The image is {width}×{height} pixels ({megapixels}); a {kind} that large needs "
            "more memory than the bot can spend on one picture. Please send a smaller version "
            "(up to about {fitting}) or a JPEG.",
            width=w,
            height=h,
            megapixels=_megapixels(w * h),
            kind=header.kind,
            fitting=_megapixels_down(room),
        )
    raise ImageRejected("too_many_pixels", reason)


# --- the pipeline ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Checked:
    """What the cheap checks learned: all of them passed."""

    fmt: str
    header: _Header
    decode_bytes: int | None
    """Estimated peak memory of the fit, None when the header does not give the size."""


def _check(
    data: bytes,
    preset: Preset,
    orientation: OrientationChoice,
    fit: FitMode,
    limits: ImageLimits,
) -> _Checked:
    """Every refusal that needs no decoding, in the order a member would want to hear it."""
    if len(data) > limits.max_bytes:
        raise ImageRejected(
            "too_large",
            _t(
                "The image is {size}; the limit is {limit}.",
                size=_mb(len(data)),
                limit=_mb(limits.max_bytes),
            ),
        )
    fmt = detect_format(data)
    if fmt not in SUPPORTED_FORMATS:
        raise _not_image(data, fmt)
    header = _read_header(data, fmt)
    if header.unsupported is not None:
        raise _unsupported(data, fmt, header.unsupported)
    need = None
    if header.size is not None:
        _check_pixels(header.size, limits)
        need = _check_memory(header, header.size, preset, orientation, fit, limits)
    return _Checked(fmt, header, need)


def prepare_image(
    data: bytes,
    *,
    preset: Preset,
    orientation: OrientationChoice = "auto",
    fit: FitMode = "crop",
    limits: ImageLimits = ImageLimits(),  # frozen, so one shared default is safe
) -> PreparedImage:
    """Check, decode and fit `data` to `preset`; raise ImageRejected for anything unusable."""
    checked = _check(data, preset, orientation, fit, limits)
    return _prepare_checked(data, checked, preset, orientation, fit, limits)


def _prepare_checked(
    data: bytes,
    checked: _Checked,
    preset: Preset,
    orientation: OrientationChoice,
    fit: FitMode,
    limits: ImageLimits,
) -> PreparedImage:
    fmt = checked.fmt
    try:
        fitted = _decode_and_fit(data, checked, preset, orientation, fit, limits)
    except ImageRejected:
        raise
    except _BOMB_ERRORS:
        # Pillow's own (global) guard fired: our header reader found no size, or an operator
        # set max_pixels above Pillow's limit.
        raise ImageRejected(
            "too_many_pixels",
            _t(
                "The image has too many pixels to open safely; please send one under {limit}.",
                limit=_megapixels(limits.max_pixels),
            ),
        ) from None
    except _DECODE_ERRORS as exc:
        # Pillow says "Unsupported ..." for valid variants it has no decoder for (a BMP
        # bitfield layout, say); anything else is a broken file.
        if "unsupported" in str(exc).lower():
            raise _unsupported(data, fmt, None) from None
        raise _corrupt(data, fmt) from None

    frame = fitted.frame
    try:
        jpeg = _encode(frame)
    finally:
        frame.close()
    return PreparedImage(
        jpeg=jpeg,
        width=frame.width,
        height=frame.height,
        orientation=fitted.orientation,
        source_format=fmt,
        source_size=fitted.source_size,
    )


@dataclass
class _Fitted:
    frame: Image.Image
    """RGB, sRGB, upright, exactly the preset size."""
    orientation: Orientation
    source_size: tuple[int, int]


def _decode_and_fit(
    data: bytes,
    checked: _Checked,
    preset: Preset,
    orientation: OrientationChoice,
    fit: FitMode,
    limits: ImageLimits,
) -> _Fitted:
    """Decode in the file's own mode and fit it. The decoded image (and for WebP the decoder's
    canvases) lives only inside this call, so it is gone before the JPEG is encoded."""
    pillow_format = _PILLOW_FORMATS.get(checked.fmt, checked.fmt)
    with Image.open(io.BytesIO(data), formats=[pillow_format]) as src:
        stored = src.size
        _check_pixels(stored, limits)  # again, from Pillow's parse, in case ours found nothing
        if checked.decode_bytes is None or stored != checked.header.size:
            header = _header_from_pillow(checked.header, src)
            _check_memory(header, stored, preset, orientation, fit, limits)
        icc = src.info.get("icc_profile")
        if checked.fmt == "JPEG":
            # Orientation comes from the APP1 header here, so the draft size can account for it.
            exif = _exif_orientation(src)
            want = _draft_want(stored, exif, preset, orientation, fit)
            if _draft_scale(stored, want) > 1:
                src.draft(src.mode, want)  # decode at 1/2, 1/4 or 1/8 scale, still >= want
            src.load()
        else:
            # The first frame of an animation (GIF, APNG, WebP, AVIF sequence); PNG may keep
            # its EXIF after the pixels. A HEIC comes out of libheif already turned upright
            # (its `irot`/`imir`) with the EXIF orientation reset; an AVIF's turn is given as
            # the EXIF orientation by Pillow, so it is applied below like any other.
            src.load()
            exif = _exif_orientation(src)
        choice, scale = _plan(stored, exif, preset, orientation, fit)
        # `scale` is relative to the stored size; the draft may already have done part of it.
        factor = max(1, math.floor(src.size[0] / (stored[0] * scale * _REDUCE_GAP)))
        strips = _Strips(src, factor)
        target = preset.size(choice)
        # Fit in the stored orientation and turn only the small result upright.
        stored_target = (target[1], target[0]) if exif in _SWAPS_SIDES else target
        colour = _ColourFix(icc if isinstance(icc, bytes) else None)
        frame = (_fit_crop if fit == "crop" else _fit_pad)(strips, stored_target, colour)
    if exif in _TRANSPOSE:
        frame = _swap(frame, frame.transpose(_TRANSPOSE[exif]))
    source_size = (stored[1], stored[0]) if exif in _SWAPS_SIDES else stored
    return _Fitted(frame, choice, source_size)


def _header_from_pillow(header: _Header, src: Image.Image) -> _Header:
    """Our header reader found no size: cost the decode from Pillow's parse instead."""
    per_pixel = max(header.bytes_per_pixel, _PIL_BYTES.get(src.mode, 4))
    return _Header(src.size, per_pixel, header.kind, header.unsupported, header.jpeg)


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


def _sixteen_to_eight(value: float) -> float:
    return value / 257 + 0.5  # Pillow truncates: + 0.5 rounds


_WORKING_MODES = frozenset({"L", "La", "RGB", "RGBa", "CMYK"})


def _to_working_mode(im: Image.Image) -> Image.Image:
    """`im` (a strip) in a mode that reduce/resize handle properly and cheaply: L, RGB, CMYK,
    or La/RGBa (alpha premultiplied, as Pillow's own resize does, so transparent pixels'
    hidden colours do not bleed into the edges). Returns `im` itself when it already is."""
    mode = im.mode
    keyed = im.info.get("transparency") is not None
    if mode in _SIXTEEN_BIT_GREY:
        # Scale 0..65535 to 0..255, rounded (convert("L") alone would clip everything above
        # 255 to white). A scale-and-offset point runs in C; a lookup table would be rebuilt
        # in Python on every strip.
        scaled = _swap_keep(im, im.convert("I"), lambda i: i.point(_sixteen_to_eight))
        return _swap(scaled, scaled.convert("L"))
    if mode in ("P", "PA") or (keyed and mode in ("1", "L", "RGB")):
        # Palette and colour-key transparency become real alpha (resize on P is nearest).
        if keyed or mode == "PA":
            return _swap_keep(im, im.convert("RGBA"), lambda i: i.convert("RGBa"))
        return im.convert("RGB")
    if mode in _WORKING_MODES:
        return im
    if mode == "LA":
        return im.convert("La")
    if mode == "RGBA":
        return im.convert("RGBa")
    if mode in ("1", "F"):
        return im.convert("L")
    return im.convert("RGB")  # YCbCr, RGBX, LAB, HSV, ...


def _swap_keep(
    source: Image.Image, middle: Image.Image, step: Callable[[Image.Image], Image.Image]
) -> Image.Image:
    """`step(middle)`, closing `middle` (never `source`) once it is done."""
    try:
        return step(middle)
    finally:
        if middle is not source:
            middle.close()


_FILTER_REACH = {
    Image.Resampling.BILINEAR: 1.0,
    Image.Resampling.BICUBIC: 2.0,
    Image.Resampling.LANCZOS: 3.0,
}


class _Strips:
    """The decoded image seen as if it were converted to a working mode and reduced by
    `factor`, read a strip of rows at a time so that no full-size copy ever exists."""

    def __init__(self, im: Image.Image, factor: int) -> None:
        self._im = im
        self._factor = factor
        w, h = im.size
        self.size = (-(-w // factor), -(-h // factor))  # reduce() rounds up
        # Already in a working mode at full scale: resize straight from the decoded image
        # (Pillow's resize only touches the rows a box needs), no strip copies at all.
        self._direct = (
            factor == 1 and im.mode in ("L", "RGB", "CMYK") and "transparency" not in im.info
        )
        # Reduced rows per strip: _STRIP_BYTES at 8 bytes per source pixel, the heaviest stage
        # (two 4-byte copies: 16-bit grey as 32-bit and scaled, RGBA and its premultiplied form).
        self._rows_per_strip = max(1, _STRIP_BYTES // (w * 8 * factor))

    def rows(self, top: int, bottom: int) -> Image.Image:
        """Reduced rows [top, bottom) in the working mode. Strips start on multiples of the
        factor, so reducing them one by one gives exactly the rows of reducing the whole."""
        f = self._factor
        w, h = self._im.size
        strip = self._im.crop((0, top * f, w, min(h, bottom * f)))
        if f > 1 and strip.mode in _SIXTEEN_BIT_GREY:
            # reduce() has no 16-bit mode: reduce as 32-bit, then scale the smaller result.
            strip = _swap(strip, strip.convert("I"))
            strip = _swap(strip, strip.reduce(f))
            return _swap(strip, _to_working_mode(strip))
        strip = _swap(strip, _to_working_mode(strip))
        if f > 1:
            strip = _swap(strip, strip.reduce(f))
        return strip

    def resize(
        self,
        size: tuple[int, int],
        box: tuple[float, float, float, float],
        resample: Image.Resampling,
    ) -> Image.Image:
        """Like `resize(size, resample, box)` on the whole reduced image, output rows a strip at
        a time. Each strip carries the filter's reach above and below it, so every output row
        sees the same source rows (and weights) as in one whole-image resize."""
        tw, th = size
        _, y0, _, y1 = box
        step = (y1 - y0) / th  # source rows per output row
        reach = _FILTER_REACH[resample] * max(step, 1.0) + 2  # +2: Pillow's window rounding
        per_strip = max(8, math.floor((self._rows_per_strip - 2 * reach) / step))
        out: Image.Image | None = None
        try:
            for top in range(0, th, per_strip):
                bottom = min(th, top + per_strip)
                part = self._resize_rows(tw, top, bottom, box, step, reach, resample)
                if out is None:
                    out = Image.new(part.mode, size)
                out.paste(part, (0, top))
                part.close()
        except BaseException:
            if out is not None:
                out.close()
            raise
        if out is None:  # cannot happen: presets are never 0 pixels high
            raise ValueError("resize to an empty frame")
        return out

    def _resize_rows(
        self,
        width: int,
        top: int,
        bottom: int,
        box: tuple[float, float, float, float],
        step: float,
        reach: float,
        resample: Image.Resampling,
    ) -> Image.Image:
        """Output rows [top, bottom) of the resize of `box` to `width` x (rows of box / step)."""
        x0, y0, x1, _ = box
        sy0, sy1 = y0 + top * step, y0 + bottom * step
        if self._direct:
            return self._im.resize((width, bottom - top), resample, box=(x0, sy0, x1, sy1))
        r0 = max(0, math.floor(sy0 - reach))
        r1 = min(self.size[1], math.ceil(sy1 + reach))
        strip = self.rows(r0, r1)
        try:
            return strip.resize(
                (width, bottom - top),
                resample,
                box=(x0, max(0.0, sy0 - r0), x1, min(float(r1 - r0), sy1 - r0)),
            )
        finally:
            strip.close()


class _ColourFix:
    """Flatten alpha over white and convert to sRGB, built once per image and used on the
    (small) output pieces only."""

    def __init__(self, icc: bytes | None) -> None:
        self._icc = icc if _HAVE_CMS else None
        self._transforms: dict[str, ImageCms.ImageCmsTransform | None] = {}

    def apply(self, im: Image.Image) -> Image.Image:
        """`im` as RGB in sRGB. Consumes `im`: it is closed unless it is returned."""
        if im.mode in ("RGBa", "La"):
            im = _swap(im, im.convert("RGBA" if im.mode == "RGBa" else "LA"))
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


def _fit_crop(src: _Strips, target: tuple[int, int], colour: _ColourFix) -> Image.Image:
    # BICUBIC: the source is already DCT-scaled/reduced to under ~2x the target, where it is
    # visually the same as LANCZOS (PSNR in bench/imaging.py) and a third cheaper.
    return colour.apply(src.resize(target, _cover_box(src.size, target), Image.Resampling.BICUBIC))


def _fit_pad(src: _Strips, target: tuple[int, int], colour: _ColourFix) -> Image.Image:
    tw, th = target
    w, h = src.size
    scale = min(tw / w, th / h)
    inner = (min(tw, max(1, round(w * scale))), min(th, max(1, round(h * scale))))
    fg = src.resize(inner, (0.0, 0.0, float(w), float(h)), Image.Resampling.LANCZOS)

    # Background: a tiny cover-crop of the picture, blurred and darkened, then smoothly
    # enlarged. It is cut from the fitted picture (one pass over the source, not two); blurring
    # at 1/8 scale is cheap and looks like a very wide blur once enlarged.
    small = (max(1, tw // _PAD_BG_SHRINK), max(1, th // _PAD_BG_SHRINK))
    bg = colour.apply(fg.resize(small, Image.Resampling.BILINEAR, box=_cover_box(fg.size, small)))
    bg = _swap(bg, bg.filter(ImageFilter.GaussianBlur(_PAD_BG_BLUR)))
    bg = _swap(bg, ImageEnhance.Brightness(bg).enhance(_PAD_BG_BRIGHTNESS))
    bg = _swap(bg, bg.resize(target, Image.Resampling.BICUBIC))
    fg = colour.apply(fg)
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


def _prepare_and_trim(
    data: bytes,
    checked: _Checked,
    preset: Preset,
    orientation: OrientationChoice,
    fit: FitMode,
    limits: ImageLimits,
) -> PreparedImage:
    try:
        return _prepare_checked(data, checked, preset, orientation, fit, limits)
    finally:
        _give_memory_back()


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None on other C libraries (there, nothing to do)."""
    with contextlib.suppress(OSError, AttributeError):
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
        return trim
    return None


_MALLOC_TRIM = _find_malloc_trim()


def _give_memory_back() -> None:
    """Return the pages of freed images to the system now. glibc keeps freed memory in the
    freeing thread's arena, and a few fit workers each keeping their largest image adds up to
    several times the budget of RSS (measured with threads: 593 MiB instead of 263 for 20
    fits)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


# --- running fits under one memory budget ----------------------------------------------------

DEFAULT_FIT_BUDGET_BYTES = 256 * MIB
"""Estimated decode memory of all fits running at once. With the process's own ~30-80 MB this
keeps image fitting under ~400 MB of RSS however many members send images together."""
DEFAULT_MAX_CONCURRENT_FITS = max(2, min(4, os.cpu_count() or 2))
"""Fit processes at once: more than cores buys nothing."""

FIT_NICENESS = 10
"""How much lower than the bot's own process the fit processes ask the OS to run them."""


def _start_fit_process(bot_pid: int) -> None:
    """Set up a fit process: below the bot's priority, and gone when the bot is.

    Priority: lower by FIT_NICENESS. When the cores are busy, the event loop then gets one as
    soon as it has work (answering Discord, polls) and fits take what is left: otherwise each
    fit held the loop off its core for tens of milliseconds under load (bench/load.py). With
    cores to spare nothing changes.

    Lifetime: a fit process waits for work on a pipe it holds both ends of, and holds the
    process server's "bot alive" pipe open, so neither noticed a bot killed with SIGKILL (or by
    the OOM killer): both lived on, idle, forever, and each restart added more. A thread here
    waits for the bot to end and then ends this process; once all have, the server ends too.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.nice(FIT_NICENESS)
    threading.Thread(
        target=_end_with, args=(bot_pid,), name="end-with-the-bot", daemon=True
    ).start()


def _end_with(pid: int) -> None:
    try:
        watched = os.pidfd_open(pid)  # Linux: readable once the process has ended
    except (AttributeError, OSError):
        watched = None
    if watched is not None:
        select.select([watched], [], [])
    elif os.name == "posix":
        while _alive(pid):
            time.sleep(1.0)
    else:
        return  # Windows: os.kill(pid, 0) would not ask, it would act
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def fit_processes(max_workers: int) -> Executor:
    """The bot's fit workers: processes (see ImageFitter), each below the event loop's
    priority. They are forked from a server process that has imported only this module (cheap
    to start; nothing of the bot's state, sockets or threads comes along); where there is no
    fork (Windows) each is a fresh interpreter."""
    context: multiprocessing.context.BaseContext
    if "forkserver" in multiprocessing.get_all_start_methods():
        server = multiprocessing.get_context("forkserver")
        server.set_forkserver_preload([__name__])
        context = server
    else:
        context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(
        max_workers=max_workers,
        mp_context=context,
        initializer=_start_fit_process,
        initargs=(os.getpid(),),
    )


def _started() -> None:
    # Held a moment, so that each of the warm-up calls gets a process of its own.
    time.sleep(0.2)


class ImageFitter:
    """Runs `prepare_image` in worker processes, for the whole bot process, so that the images
    being fitted at any moment need at most `budget_bytes` between them (estimated from each
    file's header before it is decoded) and at most `max_concurrent` run at once.

    Processes, not threads: a fit thread takes the GIL back between Pillow's C steps (every
    decoded chunk, resized strip and encoded block), and a fit thread running below the event
    loop's priority was often paused by the OS while holding it, which held the event loop
    too: most event-loop stalls over 50 ms under bench/load.py had a fit thread running Python.
    A fit process that dies (a hostile image, the OOM killer) costs its own request only.

    Fits start in arrival order; a member whose image does not fit into what is left waits for
    a running one to finish, and nobody is refused for being busy. An image estimated above the
    whole budget (only possible if `ImageLimits.max_decode_bytes` exceeds it) runs alone.
    Refusals that need no decoding (size, format, pixel count) come back at once, unqueued.
    """

    def __init__(
        self,
        *,
        budget_bytes: int = DEFAULT_FIT_BUDGET_BYTES,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT_FITS,
        workers: Callable[[int], Executor] = fit_processes,
    ) -> None:
        """`workers(n)` makes the executor that runs up to n fits at once (tests that hold a
        fit midway use threads, which share the test's memory)."""
        if budget_bytes < 1 or max_concurrent < 1:
            raise ValueError("ImageFitter needs a positive budget and concurrency")
        self.budget_bytes = budget_bytes
        self.max_concurrent = max_concurrent
        self._in_use = 0
        self._running = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._threads: set[asyncio.Task[PreparedImage]] = set()
        self._workers = workers
        self._executor = workers(max_concurrent)

    async def start(self) -> None:
        """Start every fit process now, off the event loop. Otherwise the first fits start
        them: each start waits for the process server (up to a second for the first), and that
        wait held the event loop for 150-200 ms under bench/load.py."""
        await asyncio.to_thread(self._start_workers)

    def _start_workers(self) -> None:
        for started in [self._executor.submit(_started) for _ in range(self.max_concurrent)]:
            started.result()

    def close(self) -> None:
        """Let the workers end once the fits in progress are done (not waited for)."""
        self._executor.shutdown(wait=False)

    @property
    def running(self) -> int:
        """Fits whose thread is running now."""
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def reserved_bytes(self) -> int:
        """Estimated decode memory of the running fits."""
        return self._in_use

    async def fit(
        self,
        data: bytes,
        *,
        preset: Preset,
        orientation: OrientationChoice = "auto",
        fit: FitMode = "crop",
        limits: ImageLimits = ImageLimits(),
    ) -> PreparedImage:
        """`prepare_image(data, ...)`, once there is room for it; raises ImageRejected."""
        # Header parsing is cheap but loops over the file's segments: off the event loop too.
        checked = await asyncio.to_thread(_check, data, preset, orientation, fit, limits)
        cost = min(self.budget_bytes, checked.decode_bytes or limits.max_decode_bytes)
        await self._admit(cost)
        # The thread cannot be stopped once started, so its memory is given back when it ends,
        # even if the member's command is cancelled while it runs (hence the shield).
        thread = asyncio.ensure_future(
            self._run(cost, data, checked, preset, orientation, fit, limits)
        )
        self._threads.add(thread)
        thread.add_done_callback(self._forget)
        return await asyncio.shield(thread)

    async def _run(
        self,
        cost: int,
        data: bytes,
        checked: _Checked,
        preset: Preset,
        orientation: OrientationChoice,
        fit: FitMode,
        limits: ImageLimits,
    ) -> PreparedImage:
        loop = asyncio.get_running_loop()
        work = functools.partial(_prepare_and_trim, data, checked, preset, orientation, fit, limits)
        try:
            for attempt in range(2):
                executor = self._executor
                try:
                    return await loop.run_in_executor(executor, work)
                except BrokenProcessPool:
                    # A fit process died (this image, or another one fitted alongside): the
                    # pool is unusable; the first to notice starts a new one, and each fit
                    # that was running tries once more there.
                    if self._executor is executor:
                        executor.shutdown(wait=False)
                        self._executor = self._workers(self.max_concurrent)
                    if attempt == 1:
                        raise _fit_crashed() from None
            raise AssertionError("unreachable")
        finally:
            self._release(cost)

    def _forget(self, thread: asyncio.Task[PreparedImage]) -> None:
        self._threads.discard(thread)
        if not thread.cancelled():
            thread.exception()  # retrieved: a refusal nobody waits for any more is not an error

    def _has_room(self, cost: int) -> bool:
        return self._running < self.max_concurrent and self._in_use + cost <= self.budget_bytes

    def _take(self, cost: int) -> None:
        self._in_use += cost
        self._running += 1

    async def _admit(self, cost: int) -> None:
        if not self._waiters and self._has_room(cost):
            self._take(cost)
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (cost, turn)
        self._waiters.append(entry)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release(cost)  # admitted in the same instant as cancelled: hand it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()  # the next in line may fit where this one did not
            raise

    def _release(self, cost: int) -> None:
        self._in_use -= cost
        self._running -= 1
        self._wake()

    def _wake(self) -> None:
        # Strictly in order: a large image at the head is not overtaken by small ones forever.
        while self._waiters and self._has_room(self._waiters[0][0]):
            cost, turn = self._waiters.popleft()
            if turn.done():  # cancelled while waiting
                continue
            self._take(cost)
            turn.set_result(None)
