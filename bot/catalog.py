"""The image-to-video models the bot can use, as data, and the request each one accepts.

Facts come from docs/aiml-i2v-catalog.md (schemas at aimlapi/api-docs f14fa72) and
docs/aiml-contract.md. Requests are built only from an entry here, so a request whose shape the
provider would reject is never sent (and never paid for). To switch a server to another model,
set DEFAULT_MODEL to one of these ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from bot.errors import InputRejected
from bot.i18n import Message, _t

Orientation = Literal["landscape", "portrait"]
ORIENTATIONS: tuple[Orientation, ...] = ("landscape", "portrait")
DEFAULT_MODEL_ID = "openai/sora-2-pro-i2v"


@dataclass(frozen=True)
class Preset:
    """Exact input image size for each orientation at one resolution."""

    landscape: tuple[int, int]
    portrait: tuple[int, int]

    def size(self, orientation: Orientation) -> tuple[int, int]:
        return self.landscape if orientation == "landscape" else self.portrait


def _preset(width: int, height: int) -> Preset:
    return Preset(landscape=(width, height), portrait=(height, width))


@dataclass(frozen=True)
class ModelSpec:
    id: str
    label: str
    resolutions: Mapping[str, Preset]
    default_resolution: str
    durations: tuple[int, ...]
    default_duration: int
    typical_seconds: float
    """Documented typical processing time; drives the poll schedule."""
    image_field: str = "image_url"
    duration_field: str = "duration"
    # Every catalogued model types `duration` as a JSON integer (the schema defaults are strings,
    # a documented inconsistency; we always send an int).
    duration_type: type = int
    resolution_field: str | None = "resolution"
    """None: the model has no resolution parameter; the preset only decides the input size."""
    aspect_field: str | None = "aspect_ratio"
    """None: the model follows the image's shape, so we pre-crop to 16:9 or 9:16."""
    prompt_max_length: int | None = None
    usd_per_second: Mapping[str, float] | None = None
    """Price per output second by resolution, where known."""
    last_image_field: str | None = None
    """The request field for an end frame (`last_image_url`, `tail_image_url`), if the model
    takes one."""
    last_image_required: bool = False

    def preset(self, resolution: str) -> Preset:
        try:
            return self.resolutions[resolution]
        except KeyError:
            raise InputRejected(
                _t(
                    "{model} does not offer {resolution}; choose {choices}.",
                    model=self.label,
                    resolution=resolution,
                    choices=_or_list(list(self.resolutions)),
                )
            ) from None

    def check(self, *, prompt: str, duration: int, resolution: str) -> None:
        """Raise InputRejected (nothing spent) if these choices do not fit this model."""
        self.preset(resolution)
        if duration not in self.durations:
            raise InputRejected(
                _t(
                    "{model} makes videos of {choices} seconds, not {duration}.",
                    model=self.label,
                    choices=_or_list([str(d) for d in self.durations]),
                    duration=duration,
                )
            )
        if not prompt.strip():
            raise InputRejected(_t("Please describe the motion you want in the prompt."))
        if self.prompt_max_length is not None and len(prompt) > self.prompt_max_length:
            raise InputRejected(
                _t(
                    "The prompt is {length} characters; {model} accepts at most {limit}.",
                    length=len(prompt),
                    model=self.label,
                    limit=self.prompt_max_length,
                )
            )

    def build_request(
        self,
        *,
        prompt: str,
        image_url: str,
        duration: int,
        resolution: str,
        orientation: Orientation,
        last_image_url: str | None = None,
    ) -> dict[str, Any]:
        """The JSON body for POST /v2/video/generations, with documented fields only."""
        self.check(prompt=prompt, duration=duration, resolution=resolution)
        body: dict[str, Any] = {"model": self.id, "prompt": prompt, self.image_field: image_url}
        if last_image_url is not None:
            if self.last_image_field is None:
                raise InputRejected(_t("{model} does not take an end frame.", model=self.label))
            body[self.last_image_field] = last_image_url
        body[self.duration_field] = self.duration_type(duration)
        if self.resolution_field is not None:
            body[self.resolution_field] = resolution
        if self.aspect_field is not None:
            body[self.aspect_field] = "16:9" if orientation == "landscape" else "9:16"
        return body

    def estimate_usd(self, *, duration: int, resolution: str) -> float | None:
        if self.usd_per_second is None or resolution not in self.usd_per_second:
            return None
        return round(self.usd_per_second[resolution] * duration, 2)


def _or_list(items: list[str]) -> Message:
    if len(items) == 1:
        return items[0]
    return _t("{others} or {last}", others=", ".join(items[:-1]), last=items[-1])


_SORA_720 = _preset(1280, 720)
# "1080p" on Sora 2 Pro is OpenAI's legacy 1792x1024 size, not 1920x1080 (contract §2).
_SORA_PRO_1080 = _preset(1792, 1024)
_HD = _preset(1280, 720)
_FULL_HD = _preset(1920, 1080)
_SD_480 = _preset(854, 480)

_MODELS = (
    ModelSpec(
        id="openai/sora-2-pro-i2v",
        label="Sora 2 Pro",
        resolutions={"720p": _SORA_720, "1080p": _SORA_PRO_1080},
        default_resolution="1080p",
        durations=(4, 8, 12),
        default_duration=4,
        typical_seconds=90,
        usd_per_second={"720p": 0.30, "1080p": 0.50},
    ),
    ModelSpec(
        id="openai/sora-2-i2v",
        label="Sora 2",
        resolutions={"720p": _SORA_720},
        default_resolution="720p",
        durations=(4, 8, 12),
        default_duration=4,
        typical_seconds=90,
        usd_per_second={"720p": 0.10},
    ),
    ModelSpec(
        id="google/veo-3.1-i2v",
        label="Veo 3.1",
        resolutions={"720p": _HD, "1080p": _FULL_HD},
        default_resolution="1080p",
        durations=(4, 6, 8),
        default_duration=8,
        typical_seconds=90,
    ),
    ModelSpec(
        # First and last frame both required (docs/aiml-i2v-catalog.md, row 30).
        id="google/veo-3.1-first-last-image-to-video",
        label="Veo 3.1 (first + last frame)",
        resolutions={"720p": _HD, "1080p": _FULL_HD},
        default_resolution="1080p",
        durations=(4, 6, 8),
        default_duration=8,
        typical_seconds=90,
        last_image_field="last_image_url",
        last_image_required=True,
    ),
    ModelSpec(
        id="google/veo-3.1-i2v-fast",
        label="Veo 3.1 Fast",
        resolutions={"720p": _HD, "1080p": _FULL_HD},
        default_resolution="1080p",
        durations=(4, 6, 8),
        default_duration=8,
        # Undocumented; assumed no slower than Veo 3.1.
        typical_seconds=90,
    ),
    ModelSpec(
        id="klingai/video-v2-6-pro-image-to-video",
        label="Kling 2.6 Pro",
        # No resolution or aspect parameter: the output follows the image, so we pre-crop.
        resolutions={"1080p": _FULL_HD},
        default_resolution="1080p",
        durations=(5, 10),
        default_duration=5,
        typical_seconds=110,
        resolution_field=None,
        aspect_field=None,
        prompt_max_length=2500,
    ),
    ModelSpec(
        id="alibaba/wan-2-7-i2v",
        label="Wan 2.7",
        resolutions={"720p": _HD, "1080p": _FULL_HD},
        default_resolution="1080p",
        durations=(5, 10, 15),
        default_duration=5,
        typical_seconds=64,
        aspect_field=None,
    ),
    ModelSpec(
        id="bytedance/seedance-2-0",
        label="Seedance 2.0",
        resolutions={"480p": _SD_480, "720p": _HD, "1080p": _FULL_HD},
        default_resolution="720p",
        durations=tuple(range(4, 16)),
        default_duration=5,
        typical_seconds=139,
        last_image_field="last_image_url",
    ),
    ModelSpec(
        id="x-ai/grok-imagine-video-1.5-preview",
        label="Grok Imagine 1.5 (preview)",
        resolutions={"480p": _SD_480, "720p": _HD, "1080p": _FULL_HD},
        default_resolution="720p",
        durations=tuple(range(1, 16)),
        default_duration=6,
        typical_seconds=64,
    ),
)

CATALOG: Mapping[str, ModelSpec] = MappingProxyType({m.id: m for m in _MODELS})
