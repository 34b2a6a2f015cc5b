"""Video files on PyAV: probe, re-encode to fit an upload limit, last frame, join clips.

Discord-free and synchronous: every function here is CPU-bound, so callers run them with
`asyncio.to_thread`. Each call opens its own containers and codecs and shares no state, so calls
may run in several threads at once (PyAV releases the GIL while FFmpeg decodes and encodes).

Outputs are H.264 (libx264) + AAC in mp4 with the index ('moov') before the data ('mdat', the
`+faststart` muxer flag), so Discord can start playing before the whole file has arrived.

Fitting a size (`fit_to_size`): the bitrate comes from the byte budget and the duration, after
keeping back a safety margin (container index, AAC overshoot, rate-control error). The picture is
made smaller only when the video bitrate at full size would fall below QUALITY_FLOOR_BPP bits per
pixel per frame; the short side never goes below MIN_SHORT_SIDE (or the source's own, if smaller).
When even that would need fewer bits than the floor, nothing fits and the caller posts the link.
"""

from __future__ import annotations

import functools
import io
import itertools
import math
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.video.frame import PictureType, VideoFrame
from av.video.stream import VideoStream
from PIL import Image

from bot.errors import MediaUnreadable
from bot.i18n import Message, _t

# --- the quality floor and the byte budget -------------------------------------------------

QUALITY_FLOOR_BPP = 0.05
"""Least video bits per pixel per frame we accept (a judgment, not a standard). For H.264 about
0.1 bpp is a common "good" figure; at half that, smooth generated footage still looks clean, and
below it blocking and smeared detail start to show. bench/reencode.py measures 43 dB PSNR-Y at
the floor on its clip. Example: 1792×1024 at 24 fps needs 2.2 Mbit/s; in 10 MiB that keeps full
size up to 34 s, then the picture shrinks, down to 630×360 at 3 min 52 s; longer gets the link."""

MIN_SHORT_SIDE = 360
"""Smallest picture we scale down to (short side, pixels). Smaller than this a chat embed looks
worse than following the link, so we give up instead."""

SAFETY_FRACTION = 0.04
"""Share of the byte budget kept back for rate-control error: with the tolerance set below,
x264's one-pass average bitrate lands within about 1% of its target over a whole clip."""

MUX_FIXED_BYTES = 4 * 1024
MUX_BYTES_PER_PACKET = 12
"""mp4 index and headers: a fixed part plus per-packet table entries (sizes, times, offsets)."""

AUDIO_OVERSHOOT = 1.05
"""FFmpeg's AAC encoder follows its bitrate loosely; reserve a little more than asked."""

X264_PRESET = "superfast"
"""Re-encodes a 12 s 1792×1024 clip in about half its duration on two cores (bench/reencode.py).
"veryfast" gains ~0.3 dB PSNR for ~1.7× the time; "ultrafast" is ~1.4× faster but ~2 dB worse."""

JOIN_CRF = 20
"""Quality for joined clips: visually close to the sources; fit_to_size trims it if needed."""

_AUDIO_RATE = 48_000
_SEEK_BACK_SECONDS = 3.0

_Writer = Callable[[OutputContainer], None]


class VideoError(MediaUnreadable):
    """The file is not a video we can read. The message is safe to show: no paths, no details."""

    def __init__(self, reason: Message | None = None) -> None:
        super().__init__(reason if reason is not None else _t("The video file could not be read."))


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    duration_seconds: float
    has_audio: bool
    size_bytes: int


@dataclass(frozen=True)
class EncodePlan:
    """What fit_to_size will ask the encoders for."""

    width: int
    height: int
    video_bps: int
    audio_bps: int


# --- probe --------------------------------------------------------------------------------------


def probe(path: Path) -> VideoInfo:
    with _open_input(path) as container:
        video = _video_stream(container)
        return VideoInfo(
            width=video.codec_context.width,
            height=video.codec_context.height,
            duration_seconds=_duration(container, video),
            has_audio=bool(container.streams.audio),
            size_bytes=path.stat().st_size,
        )


# --- fit to size ----------------------------------------------------------------------------------


def plan_encode(
    *,
    width: int,
    height: int,
    fps: float,
    duration_seconds: float,
    has_audio: bool,
    max_bytes: int,
) -> EncodePlan | None:
    """Bitrates and picture size for a file of at most `max_bytes`, or None below the floor."""
    if duration_seconds <= 0 or fps <= 0:
        return None
    packets = duration_seconds * fps
    if has_audio:
        packets += duration_seconds * _AUDIO_RATE / 1024
    overhead = MUX_FIXED_BYTES + MUX_BYTES_PER_PACKET * packets
    usable_bits = (max_bytes * (1 - SAFETY_FRACTION) - overhead) * 8
    total_bps = usable_bits / duration_seconds
    audio_bps = 0
    if has_audio:
        # Sound matters less than picture once bits are scarce, but below 64 kbit/s AAC stereo
        # turns watery; the floor check below decides whether what is left is enough.
        audio_bps = (
            128_000 if total_bps >= 2_000_000 else 96_000 if total_bps >= 800_000 else 64_000
        )
    video_bps = total_bps - audio_bps * AUDIO_OVERSHOOT
    if video_bps <= 0:
        return None
    bpp = video_bps / (width * height * fps)
    # H.264 in 4:2:0 needs even sides: an odd source loses one row or column.
    out_width, out_height = _even(width), _even(height)
    if bpp < QUALITY_FLOOR_BPP:
        scale = math.sqrt(bpp / QUALITY_FLOOR_BPP)
        smallest = min(MIN_SHORT_SIDE, out_width, out_height)
        out_width, out_height = _even(width * scale), _even(height * scale)
        if min(out_width, out_height) < smallest:
            return None
    return EncodePlan(out_width, out_height, int(video_bps), audio_bps)


def fit_to_size(
    src: Path, dest: Path, max_bytes: int, *, preset: str = X264_PRESET
) -> VideoInfo | None:
    """Re-encode `src` into `dest` (H.264 + AAC, faststart) no larger than `max_bytes`.

    Always re-encodes, even when `src` is already small enough. Checks the real size afterwards
    and, if it is over, tries once more with the budget cut by the overshoot. Returns the info of
    `dest`, or None (no file at `dest`) when no encode at or above the quality floor fits.
    """
    with _open_input(src) as container:
        video = _video_stream(container)
        fps = float(_frame_rate(video))
        duration = _duration(container, video)
        width, height = video.codec_context.width, video.codec_context.height
        has_audio = bool(container.streams.audio)
    budget = max_bytes
    for _attempt in range(2):
        plan = plan_encode(
            width=width,
            height=height,
            fps=fps,
            duration_seconds=duration,
            has_audio=has_audio,
            max_bytes=budget,
        )
        if plan is None:
            break
        size = _write_atomically(dest, functools.partial(_reencode, src, plan=plan, preset=preset))
        if size <= max_bytes:
            return probe(dest)
        # Over: aim lower by the overshoot, plus a little, and try exactly once more.
        budget = int(budget * max_bytes / size * 0.97)
    dest.unlink(missing_ok=True)
    return None


def _reencode(src: Path, out: OutputContainer, *, plan: EncodePlan, preset: str) -> None:
    with _open_input(src) as container:
        video_in = _video_stream(container)
        video_in.thread_type = "AUTO"
        audio_in = container.streams.audio[0] if container.streams.audio else None
        video_out = _add_h264(out, plan.width, plan.height, _frame_rate(video_in), preset)
        video_out.codec_context.time_base = video_in.time_base or Fraction(1, 90_000)
        video_out.bit_rate = plan.video_bps
        # One-pass average bitrate; a tight tolerance keeps x264 close to the target over a short
        # clip (by default it ran up to 4% over on 12 s of busy footage, now within 1%).
        video_out.options = {**video_out.options, "x264-params": "ratetol=0.1"}
        audio_out = None
        if audio_in is not None:
            audio_out = out.add_stream(
                "aac", rate=audio_in.codec_context.sample_rate or _AUDIO_RATE
            )
            audio_out.bit_rate = plan.audio_bps
        streams = (video_in, audio_in) if audio_in is not None else (video_in,)
        for frame in _decoded(container, streams):
            if isinstance(frame, VideoFrame):
                frame.pict_type = PictureType.NONE  # let x264 place keyframes, not the source
                out.mux(video_out.encode(frame))
            elif audio_out is not None:
                out.mux(audio_out.encode(frame))
        out.mux(video_out.encode(None))
        if audio_out is not None:
            out.mux(audio_out.encode(None))


# --- last frame -----------------------------------------------------------------------------------


def last_frame_jpeg(path: Path, *, quality: int = 92) -> bytes:
    """The last decodable frame as RGB JPEG bytes."""
    with _open_input(path) as container:
        video = _video_stream(container)
        video.thread_type = "AUTO"
        last = None
        end = _duration(container, video)
        if end > _SEEK_BACK_SECONDS and video.time_base is not None:
            # Decode only the tail: seek to a keyframe a little before the end.
            target = (end - _SEEK_BACK_SECONDS) / video.time_base + (video.start_time or 0)
            try:
                container.seek(int(target), stream=video, backward=True)
                last = _last_video_frame(container, video)
            except av.FFmpegError:
                last = None
        if last is None:
            container.seek(0, stream=video, backward=True)
            last = _last_video_frame(container, video)
        if last is None:
            raise VideoError(_t("The video has no picture to continue from."))
        image = frame_to_image(last)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def frame_to_image(frame: VideoFrame) -> Image.Image:
    """A decoded frame as an RGB Pillow image (colour conversion by FFmpeg's swscale)."""
    rgb = frame.reformat(format="rgb24")
    plane = rgb.planes[0]
    return Image.frombytes(
        "RGB", (rgb.width, rgb.height), bytes(plane), "raw", "RGB", plane.line_size
    )


def _last_video_frame(container: InputContainer, video: VideoStream) -> VideoFrame | None:
    last: VideoFrame | None = None
    for frame in _decoded(container, (video,)):
        if isinstance(frame, VideoFrame):
            last = frame
    return last


# --- join -----------------------------------------------------------------------------------------


def join(clips: Sequence[Path], dest: Path) -> VideoInfo:
    """Concatenate `clips` in order into one mp4 at the first clip's size and frame rate.

    Other sizes are scaled to it (stretched: Extend's clips share one size anyway). The sound is
    kept when any clip has it; a clip without sound contributes silence of its own length, and
    each clip's sound is cut or padded to its picture so the two never drift apart.
    """
    if not clips:
        raise ValueError("join needs at least one clip")
    with _open_input(clips[0]) as first:
        first_video = _video_stream(first)
        width = _even(first_video.codec_context.width)
        height = _even(first_video.codec_context.height)
        fps = _frame_rate(first_video)
    with_audio = False
    audio_rate = _AUDIO_RATE
    for clip in clips:
        with _open_input(clip) as container:
            _video_stream(container)
            if container.streams.audio and not with_audio:
                with_audio = True
                audio_rate = container.streams.audio[0].codec_context.sample_rate or _AUDIO_RATE
    _write_atomically(
        dest,
        functools.partial(
            _join_into,
            clips=clips,
            size=(width, height),
            fps=fps,
            audio_rate=audio_rate if with_audio else None,
        ),
    )
    return probe(dest)


def _join_into(
    out: OutputContainer,
    *,
    clips: Sequence[Path],
    size: tuple[int, int],
    fps: Fraction,
    audio_rate: int | None,
) -> None:
    video_out = _add_h264(out, size[0], size[1], fps, X264_PRESET)
    video_out.codec_context.time_base = 1 / fps
    video_out.options = {**video_out.options, "crf": str(JOIN_CRF)}
    audio_out: AudioStream | None = None
    if audio_rate is not None:
        audio_out = out.add_stream("aac", rate=audio_rate, layout="stereo")
        audio_out.bit_rate = 128_000
    frames_written = 0
    samples_written = 0
    for clip in clips:
        with _open_input(clip) as container:
            video_in = _video_stream(container)
            video_in.thread_type = "AUTO"
            for frame in _resampled_video(container, video_in, fps):
                frame.pts = frames_written
                frame.time_base = video_out.codec_context.time_base
                frame.pict_type = PictureType.NONE
                out.mux(video_out.encode(frame))
                frames_written += 1
        if audio_out is not None and audio_rate is not None:
            # The clip's sound spans exactly up to the end of its last output frame.
            clip_end = round(frames_written / fps * audio_rate)
            for chunk in _clip_audio(clip, audio_rate, clip_end - samples_written):
                chunk.pts = samples_written
                chunk.time_base = Fraction(1, audio_rate)
                out.mux(audio_out.encode(chunk))
                samples_written += chunk.samples
    out.mux(video_out.encode(None))
    if audio_out is not None:
        out.mux(audio_out.encode(None))


def _resampled_video(
    container: InputContainer, video: VideoStream, fps: Fraction
) -> Iterator[VideoFrame]:
    """The clip's frames at `fps`: each output slot shows the latest source frame due by then."""
    slot = 1 / fps
    tolerance = float(slot) / 4  # timestamps in real files jitter by a tick or two
    source_rate = _frame_rate(video)
    base_pts: int | None = None
    held: VideoFrame | None = None
    emitted = 0
    last_time = 0.0
    for index, frame in enumerate(_decoded(container, (video,))):
        if not isinstance(frame, VideoFrame):
            continue
        if frame.pts is not None and frame.time_base is not None:
            base_pts = frame.pts if base_pts is None else base_pts
            time = float((frame.pts - base_pts) * frame.time_base)
        else:
            time = index / float(source_rate)
        while held is not None and emitted * float(slot) < time - tolerance:
            yield held
            emitted += 1
        held, last_time = frame, time
    if held is None:
        return
    clip_slots = max(emitted + 1, round((last_time + 1 / float(source_rate)) * float(fps)))
    while emitted < clip_slots:
        yield held
        emitted += 1


def _clip_audio(clip: Path, rate: int, wanted: int) -> Iterator[AudioFrame]:
    """Exactly `wanted` samples of the clip's sound as stereo float planes; silence fills gaps."""
    if wanted <= 0:
        return
    resampler = AudioResampler(format="fltp", layout="stereo", rate=rate)
    given = 0
    with _open_input(clip) as container:
        if container.streams.audio:
            audio = container.streams.audio[0]
            # None at the end drains what the resampler still holds.
            sources = itertools.chain(_decoded(container, (audio,)), [None])
            for source in sources:
                if source is not None and not isinstance(source, AudioFrame):
                    continue
                for frame in resampler.resample(source):
                    if given >= wanted:
                        break
                    if given + frame.samples > wanted:
                        frame = _first_samples(frame, wanted - given)
                    yield frame
                    given += frame.samples
                if given >= wanted:
                    break
    while given < wanted:
        count = min(1024, wanted - given)
        yield _silence(count, rate)
        given += count


def _first_samples(frame: AudioFrame, count: int) -> AudioFrame:
    cut = AudioFrame(format="fltp", layout="stereo", samples=count)
    for source, target in zip(frame.planes, cut.planes, strict=True):
        target.update(bytes(source)[: count * 4])
    cut.sample_rate = frame.sample_rate
    return cut


def _silence(count: int, rate: int) -> AudioFrame:
    frame = AudioFrame(format="fltp", layout="stereo", samples=count)
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    frame.sample_rate = rate
    return frame


# --- shared plumbing ------------------------------------------------------------------------------


def _open_input(path: Path) -> InputContainer:
    try:
        return av.open(str(path), "r")
    except av.FFmpegError as exc:
        raise VideoError() from exc


def _video_stream(container: InputContainer) -> VideoStream:
    if not container.streams.video:
        raise VideoError(_t("The file has no video in it."))
    video = container.streams.video[0]
    if not video.codec_context.width or not video.codec_context.height:
        raise VideoError()
    return video


def _frame_rate(video: VideoStream) -> Fraction:
    rate = video.average_rate or video.guessed_rate
    if rate is None or rate <= 0 or rate > 240:
        return Fraction(24)
    return Fraction(rate)


def _duration(container: InputContainer, video: VideoStream) -> float:
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    if video.duration is not None and video.time_base is not None and video.duration > 0:
        return float(video.duration * video.time_base)
    raise VideoError(_t("The video's length could not be read."))


def _decoded(
    container: InputContainer, streams: tuple[VideoStream | AudioStream, ...]
) -> Iterator[VideoFrame | AudioFrame]:
    """Frames in demux order. A damaged packet is skipped, as players do; an unreadable file
    raises VideoError."""
    try:
        for packet in container.demux(streams):
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                continue
            for frame in frames:
                if isinstance(frame, VideoFrame | AudioFrame):
                    yield frame
    except av.FFmpegError as exc:
        raise VideoError() from exc


def _add_h264(
    out: OutputContainer, width: int, height: int, fps: Fraction, preset: str
) -> VideoStream:
    stream = out.add_stream("libx264", rate=fps)
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p"
    stream.thread_count = 0  # one x264 thread set per core
    stream.options = {"preset": preset}
    return stream


def _write_atomically(dest: Path, write: _Writer) -> int:
    """Run `write` into a temporary file beside `dest`, then move it into place; returns the
    size. Nothing half-written is ever left at `dest`."""
    partial = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
    try:
        with av.open(str(partial), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            write(out)
        os.replace(partial, dest)
    except av.FFmpegError as exc:
        raise VideoError() from exc
    finally:
        partial.unlink(missing_ok=True)
    return dest.stat().st_size


def _even(value: float) -> int:
    return max(2, int(value) // 2 * 2)
