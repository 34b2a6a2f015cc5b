"""Real mp4 clips made with PyAV, for tests/test_video.py and bench/reencode.py.

Each clip has moving content (a textured background panning and zooming, a bright disc crossing the
frame, a colour wash that changes with time), so its first and last frames differ and an encoder
has real work to do; with `audio` it carries a stereo tone whose pitch rises over the clip.
"""

from __future__ import annotations

import math
import random
from array import array
from fractions import Fraction
from pathlib import Path

import av
from PIL import Image, ImageChops, ImageDraw, ImageFilter

AUDIO_RATE = 48_000
_AUDIO_CHUNK = 1024


def make_test_clip(
    dest: Path,
    *,
    width: int,
    height: int,
    seconds: float,
    fps: int = 24,
    audio: bool = True,
    pattern_seed: int = 0,
    crf: int = 23,
    preset: str = "ultrafast",
    keyframe_every: int | None = None,
    pixel_format: str = "yuv420p",
) -> Path:
    """Write an H.264/AAC mp4 at `dest`. Lower `crf` makes a larger file (bench: over 10 MiB).
    Odd sizes need `pixel_format="yuv444p"` (4:2:0 needs even sides)."""
    rng = random.Random(pattern_seed)
    texture = _texture(width * 2, height, rng)
    tint = tuple(rng.randrange(40, 216) for _ in range(3))
    frame_count = max(1, round(seconds * fps))
    with av.open(str(dest), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, pixel_format
        video.options = {"crf": str(crf), "preset": preset}
        if keyframe_every is not None:
            video.gop_size = keyframe_every
        audio_stream = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo") if audio else None
        for index in range(frame_count):
            progress = index / max(1, frame_count - 1)
            picture = _picture(texture, width, height, progress, tint)
            frame = _video_frame(picture)
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio_stream is not None:
            for audio_frame in _tone(frame_count / fps, pattern_seed):
                out.mux(audio_stream.encode(audio_frame))
            out.mux(audio_stream.encode(None))
    return dest


def _texture(width: int, height: int, rng: random.Random) -> Image.Image:
    """Blurred noise in colour: detail an encoder must spend bits on, like real footage."""
    layers = [
        Image.effect_noise((width, height), 60 + rng.random() * 30).filter(
            ImageFilter.GaussianBlur(1.2 + rng.random())
        )
        for _ in range(3)
    ]
    return Image.merge("RGB", layers)


def _picture(
    texture: Image.Image, width: int, height: int, progress: float, tint: tuple[int, ...]
) -> Image.Image:
    # Pan and zoom in together: motion an encoder cannot predict by shifting blocks alone.
    zoom = 1 - 0.25 * progress
    crop_w, crop_h = width * zoom, height * zoom
    left = progress * (texture.width - crop_w)
    top = (height - crop_h) / 2
    frame = texture.resize(
        (width, height), Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h)
    )
    wash = Image.new(
        "RGB",
        (width, height),
        (round(tint[0] * (1 - progress)), tint[1], round(tint[2] * progress + 40)),
    )
    frame = ImageChops.blend(frame, wash, 0.55)
    radius = max(4, height // 6)
    centre_x = round(radius + progress * (width - 2 * radius))
    centre_y = round(height / 2 + math.sin(progress * math.pi * 2) * height / 4)
    ImageDraw.Draw(frame).ellipse(
        (centre_x - radius, centre_y - radius, centre_x + radius, centre_y + radius),
        fill=(255, 255, round(255 * progress)),
    )
    return frame


def _video_frame(picture: Image.Image) -> av.VideoFrame:
    frame = av.VideoFrame(picture.width, picture.height, "rgb24")
    plane = frame.planes[0]
    row = picture.width * 3
    data = picture.tobytes()
    if plane.line_size != row:  # FFmpeg pads rows to its alignment
        padding = bytes(plane.line_size - row)
        data = b"".join(data[y * row : (y + 1) * row] + padding for y in range(picture.height))
    plane.update(data)
    return frame


def _tone(seconds: float, seed: int) -> list[av.AudioFrame]:
    total = round(seconds * AUDIO_RATE)
    base = 330.0 + 40 * (seed % 5)
    frames: list[av.AudioFrame] = []
    phase = 0.0
    for start in range(0, total, _AUDIO_CHUNK):
        count = min(_AUDIO_CHUNK, total - start)
        samples = array("f")
        for offset in range(count):
            pitch = base * (1 + (start + offset) / max(1, total))  # rises an octave
            phase += 2 * math.pi * pitch / AUDIO_RATE
            samples.append(0.3 * math.sin(phase))
        frame = av.AudioFrame(format="fltp", layout="stereo", samples=count)
        for plane in frame.planes:
            plane.update(samples.tobytes())
        frame.sample_rate = AUDIO_RATE
        frame.pts = start
        frame.time_base = Fraction(1, AUDIO_RATE)
        frames.append(frame)
    return frames
