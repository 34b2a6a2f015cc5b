"""The core's words for members are translatable messages: English exactly as before, values
(sizes, durations) formatted for the reader's language, and reasons stored with a job render in
the language of whoever reads them later. The catalogues are still empty, so a translation is
installed here for the duration of a test."""

from __future__ import annotations

import gettext
import io
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import pytest
from PIL import Image

from bot import i18n
from bot.catalog import CATALOG
from bot.errors import (
    GenerationFailed,
    ImageRejected,
    JobTimedOut,
    ProviderRateLimited,
    ProviderValidationError,
    TooManyActiveJobs,
    user_message,
)
from bot.i18n import Message, Text, from_stored, render
from bot.imaging import ImageLimits, prepare_image
from bot.jobs import Job
from bot.provider import VideoLinkRefused
from bot.timing import about_seconds, describe_seconds
from tests import test_service
from tests.test_service import VIDEO, RecordingDelivery, World

P720 = CATALOG["openai/sora-2-pro-i2v"].preset("720p")

world = test_service.world  # the job service on a real SQLite file and the fake provider


class _Catalogue(gettext.NullTranslations):
    def __init__(self, entries: Mapping[str, str]) -> None:
        super().__init__()
        self.entries = dict(entries)

    def gettext(self, message: str) -> str:
        return self.entries.get(message, message)

    def ngettext(self, msgid1: str, msgid2: str, n: int) -> str:
        english = msgid1 if n == 1 else msgid2
        return self.entries.get(english, english)


@pytest.fixture
def german(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Mapping[str, str]], None]]:
    """Install German translations for some msgids (the .po files are filled later)."""
    original = i18n._translations

    def install(entries: Mapping[str, str]) -> None:
        catalogue = _Catalogue(entries)
        monkeypatch.setattr(
            i18n,
            "_translations",
            lambda language: catalogue if language == "de" else original(language),
        )

    yield install


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def _refusal(data: bytes, **kwargs: object) -> Message:
    with pytest.raises(ImageRejected) as caught:
        prepare_image(data, preset=P720, **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


# --- image refusals ------------------------------------------------------------------------------


def test_a_size_refusal_reads_as_before_in_english_and_in_german_with_a_decimal_comma() -> None:
    reason = _refusal(b"\xff\xd8" + b"\0" * (20 * 1024 * 1024 + 100_000))
    assert render(reason, "en") == "The image is 20.1 MB; the limit is 20 MB."
    assert render(reason, "de") == "Das Bild ist 20,1 MB groß; das Limit liegt bei 20 MB."
    assert str(user_message(ImageRejected("too_large", reason))) == str(reason)


def test_megapixels_follow_the_readers_digits(german: Callable[[Mapping[str, str]], None]) -> None:
    reason = _refusal(_png((1200, 1000)), limits=ImageLimits(max_pixels=1_000_000))
    english = (
        "The image is 1200×1000 pixels (1.2 MP); the limit is 1.0 MP. "
        "Please send a smaller version."
    )
    assert render(reason, "en") == english
    german(
        {
            "The image is {width}×{height} pixels ({megapixels}); the limit is {limit}. "
            "Please send a smaller version.": "Das Bild hat {width}×{height} Pixel ({megapixels}); "
            "erlaubt sind {limit}. Bitte schicke eine kleinere Version."
        }
    )
    assert render(reason, "de") == (
        "Das Bild hat 1200×1000 Pixel (1,2 MP); erlaubt sind 1,0 MP. "
        "Bitte schicke eine kleinere Version."
    )


def test_a_file_that_is_no_image_names_the_formats_in_the_readers_words(
    german: Callable[[Mapping[str, str]], None],
) -> None:
    reason = _refusal(b"%PDF-1.7\n" + b"\0" * 1000)
    assert str(reason).endswith("Please send a JPEG, PNG, WebP, GIF, BMP, HEIC or AVIF image.")
    german({"{others} or {last}": "{others} oder {last}"})
    assert render(reason, "de").endswith("JPEG, PNG, WebP, GIF, BMP, HEIC oder AVIF image.")


# --- error texts ---------------------------------------------------------------------------------


def test_provider_errors_render_in_german_once_translated(
    german: Callable[[Mapping[str, str]], None],
) -> None:
    busy = user_message(ProviderRateLimited("Too Many Requests", status=429))
    refused = user_message(ProviderValidationError("Body validation error!\n  bad prompt"))
    foreign = user_message(
        VideoLinkRefused(
            i18n._t("the video link does not point to the video service's own servers")
        )
    )
    assert str(busy) == "The video service is busy right now. Please try again later."
    assert (
        str(refused)
        == "The video service did not accept this request: Body validation error! bad prompt"
    )
    assert str(foreign) == (
        "The video service returned an error: "
        "the video link does not point to the video service's own servers"
    )
    german(
        {
            "The video service is busy right now. Please try again later.": (
                "Der Videodienst ist gerade ausgelastet. Bitte versuche es später noch einmal."
            ),
            "The video service did not accept this request: {detail}": (
                "Der Videodienst hat die Anfrage nicht angenommen: {detail}"
            ),
            "The video service returned an error: {detail}": "Fehler des Videodienstes: {detail}",
            "the video link does not point to the video service's own servers": (
                "der Link zeigt nicht auf die Server des Videodienstes"
            ),
        }
    )
    assert render(busy, "de").startswith("Der Videodienst ist gerade ausgelastet.")
    # The provider's own words are not ours to translate; ours around them are.
    assert render(refused, "de") == (
        "Der Videodienst hat die Anfrage nicht angenommen: Body validation error! bad prompt"
    )
    assert render(foreign, "de") == (
        "Fehler des Videodienstes: der Link zeigt nicht auf die Server des Videodienstes"
    )


def test_counts_choose_singular_or_plural() -> None:
    assert str(user_message(TooManyActiveJobs(3))) == (
        "You already have 3 videos in progress. Please wait for one to finish."
    )
    assert str(user_message(TooManyActiveJobs(1))) == (
        "You already have 1 video in progress. Please wait for it to finish."
    )
    assert str(user_message(JobTimedOut(600))) == (
        "No video arrived after 10 minutes, so the bot stopped waiting."
    )
    assert str(user_message(JobTimedOut(50))) == (
        "No video arrived after 1 minute, so the bot stopped waiting."
    )


def test_a_typical_time_is_a_duration_in_the_readers_language() -> None:
    assert render(about_seconds(100), "en") == "1 min 40 sec"
    assert render(about_seconds(101), "de") == "1 Min., 40 Sek."
    assert render(about_seconds(44), "en") == "45 sec"
    assert describe_seconds(100) == "1 min 40 s"  # logs keep the short English form


# --- stored with the job -------------------------------------------------------------------------


async def test_a_failure_reason_is_stored_and_read_back_still_translatable(
    world: World, german: Callable[[Mapping[str, str]], None]
) -> None:
    world.provider.script_next_job(
        ["queued", "error"],
        error={"name": "GenerationError", "message": "Input image contains a human face"},
    )
    job = await world.animate()
    await world.run_for(200)
    [post] = world.delivery.for_job(job.id)
    assert post.detail == "The video could not be made: Input image contains a human face"
    # A new store on the same file: what the next process (or /show days later) reads.
    from bot.store import JobStore

    other = await JobStore.open(world.db_url)
    try:
        stored = await other.get(job.id)
    finally:
        await other.close()
    assert stored is not None
    reason = from_stored(stored.error_message)
    assert isinstance(reason, Text)
    assert str(reason) == post.detail
    german({"The video could not be made: {reason}": "Das Video ließ sich nicht machen: {reason}"})
    assert render(reason, "de") == (
        "Das Video ließ sich nicht machen: Input image contains a human face"
    )
    assert str(user_message(GenerationFailed("x"))) == "The video could not be made: x"


async def test_a_delivery_note_is_stored_translatable(
    world: World, german: Callable[[Mapping[str, str]], None]
) -> None:
    job = await world.animate()
    world.delivery.gone_channels.update({333, 444})
    world.delivery.dms_closed = True
    await world.run_for(400)
    stored = await world.store.get(job.id)
    assert stored is not None
    note = from_stored(stored.delivery_note)
    english = "The bot could not post the result: the channel is gone and your DMs are closed."
    assert str(note) == english
    german({english: "Das Ergebnis ließ sich nicht posten: Kanal weg, DMs geschlossen."})
    assert render(note, "de") == "Das Ergebnis ließ sich nicht posten: Kanal weg, DMs geschlossen."


@dataclass
class _KeepingDelivery(RecordingDelivery):
    """Keeps what the service hands over as it is (the Discord layer renders it)."""

    reasons: list[Message] = field(default_factory=list)

    async def post_link(self, job: Job, url: str, reason: Message) -> int:
        self.reasons.append(reason)
        return await super().post_link(job, url, reason)


async def test_the_reason_for_a_link_reaches_the_discord_layer_as_a_message(
    world: World, german: Callable[[Mapping[str, str]], None]
) -> None:
    delivery = _KeepingDelivery()
    world.delivery = delivery
    world.provider.script_next_job(["completed"], video=VIDEO * 4)
    job = await world.animate(upload_limit_bytes=len(VIDEO))
    await world.run_for(200)
    assert [p.kind for p in delivery.for_job(job.id)] == ["link"]
    [reason] = delivery.reasons
    msgid = (
        "The video is larger than this server's {size} MB upload limit, so here is the "
        "provider's link instead."
    )
    assert isinstance(reason, Text) and reason.msgid == msgid
    assert str(reason) == (
        "The video is larger than this server's 0 MB upload limit, so here is the provider's "
        "link instead."
    )
    german({msgid: "Das Video ist größer als das Upload-Limit von {size} MB; hier ist der Link."})
    assert (
        render(reason, "de")
        == "Das Video ist größer als das Upload-Limit von 0 MB; hier ist der Link."
    )
