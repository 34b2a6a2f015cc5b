"""ProviderClient against the real fake server (tests/fake_provider.py), over real HTTP.

Backoff never sleeps for real: `sleep` is a recorder and `random` is fixed.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import pathlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from PIL import Image
from yarl import URL

from bot import provider as provider_module
from bot.catalog import CATALOG, Orientation
from bot.config import DEFAULT_VIDEO_URL_HOSTS, Secret
from bot.errors import (
    ProviderAuthError,
    ProviderCreditsError,
    ProviderError,
    ProviderNotFound,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
    ProviderUnavailable,
    ProviderValidationError,
    VideoTooLarge,
)
from bot.provider import (
    MAX_REDIRECTS,
    GenerationState,
    NotAVideo,
    ProviderClient,
    RetryPolicy,
    VideoLinkRefused,
    VideoUrlPolicy,
    parse_generation,
    provider_message,
)
from tests.fake_provider import (
    DEFAULT_MESSAGES,
    SIZE_MISMATCH,
    FakeProvider,
    OutsideServer,
    tiny_mp4,
)

KEY = "test-key"


class SleepRecorder:
    """Stands in for asyncio.sleep: records each delay and returns at once."""

    def __init__(self, hook: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.delays: list[float] = []
        self._hook = hook

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self._hook is not None:
            await self._hook(len(self.delays))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
def sleeper() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def client(
    session: aiohttp.ClientSession, fake_provider: FakeProvider, sleeper: SleepRecorder
) -> ProviderClient:
    return make_client(session, fake_provider.base_url, sleeper)


def make_client(
    session: aiohttp.ClientSession,
    base_url: str,
    sleeper: SleepRecorder,
    *,
    key: str = KEY,
    retry: RetryPolicy | None = None,
    random: Callable[[], float] = lambda: 0.5,
) -> ProviderClient:
    return ProviderClient(
        session,
        base_url=base_url,
        api_key=Secret(key),
        retry=retry or RetryPolicy(),
        sleep=sleeper,
        random=random,
    )


_IMAGES: dict[tuple[int, int], str] = {}


def data_uri(size: tuple[int, int]) -> str:
    if size not in _IMAGES:
        buffer = io.BytesIO()
        Image.new("RGB", size, (40, 90, 160)).save(buffer, format="JPEG", quality=60)
        _IMAGES[size] = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    return _IMAGES[size]


def sora_body(
    *,
    model: str = "openai/sora-2-pro-i2v",
    resolution: str = "720p",
    orientation: Orientation = "landscape",
    duration: int = 4,
    prompt: str = "the waves roll in slowly",
) -> dict[str, Any]:
    spec = CATALOG[model]
    size = spec.preset(resolution).size(orientation)
    return spec.build_request(
        prompt=prompt,
        image_url=data_uri(size),
        duration=duration,
        resolution=resolution,
        orientation=orientation,
    )


def kling_body() -> dict[str, Any]:
    return CATALOG["klingai/video-v2-6-pro-image-to-video"].build_request(
        prompt="a cat stretches",
        image_url="https://example.invalid/cat.jpg",
        duration=5,
        resolution="1080p",
        orientation="landscape",
    )


async def poll_states(client: ProviderClient, generation_id: str, n: int) -> list[GenerationState]:
    return [await client.fetch(generation_id) for _ in range(n)]


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def files_in(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(folder.iterdir())


@pytest.fixture
def dest(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "downloads"
    path.mkdir()
    return path


# --- §5 statuses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status", ["queued", "generating", "waiting", "active", "processing", "in_progress"]
)
async def test_pending_statuses(
    client: ProviderClient, fake_provider: FakeProvider, status: str
) -> None:
    fake_provider.script_next_job([status])
    created = await client.submit(sora_body())
    state = await client.fetch(created.id)
    assert (state.kind, state.status, state.video_url, state.error) == (
        "pending",
        status,
        None,
        None,
    )


@pytest.mark.parametrize("shape", ["object", "array", "string"])
async def test_completed_reads_the_url_in_every_shape(
    client: ProviderClient, fake_provider: FakeProvider, shape: Any
) -> None:
    fake_provider.script_next_job(["completed"], video_shape=shape)
    created = await client.submit(sora_body())
    state = await client.fetch(created.id)
    assert state.kind == "completed"
    assert state.video_url == fake_provider.video_url(fake_provider.jobs[created.id])
    assert state.error is None


@pytest.mark.parametrize(
    "entry",
    [
        {"status": "completed"},
        {"status": "completed", "video": None},
        {"status": "completed", "video": {"url": ""}},
        {"status": "completed", "video": []},
        {"status": "completed", "video": {"url": "ftp://example.invalid/v.mp4"}},
    ],
)
async def test_completed_without_a_url_is_a_failure(
    client: ProviderClient, fake_provider: FakeProvider, entry: dict[str, Any]
) -> None:
    fake_provider.script_next_job([entry])
    created = await client.submit(sora_body())
    state = await client.fetch(created.id)
    assert state.kind == "failed"
    assert state.video_url is None
    assert state.error is not None and "without a video" in state.error
    # The body had no id: the id we asked for is kept.
    assert state.id == created.id


async def test_error_with_name_and_message(
    client: ProviderClient, fake_provider: FakeProvider
) -> None:
    fake_provider.script_next_job(
        ["queued", "error"], error={"name": "GenerationError", "message": "moderation blocked it"}
    )
    created = await client.submit(sora_body())
    states = await poll_states(client, created.id, 2)
    assert [s.kind for s in states] == ["pending", "failed"]
    assert states[1].error == "moderation blocked it"
    assert states[1].status == "error"


async def test_error_with_detail_list(client: ProviderClient, fake_provider: FakeProvider) -> None:
    fake_provider.script_next_job(
        ["error"],
        error={
            "detail": [
                {
                    "loc": ["body", "image_url"],
                    "msg": "Could not detect face in the image",
                    "type": "face_detection_error",
                    "input": "https://example.invalid/x.jpg",
                }
            ]
        },
    )
    created = await client.submit(sora_body())
    state = await client.fetch(created.id)
    assert (state.kind, state.error) == ("failed", "Could not detect face in the image")


async def test_error_with_odd_json_is_stringified_and_clipped(
    client: ProviderClient, fake_provider: FakeProvider
) -> None:
    fake_provider.script_next_job(["error"], error={"code": 42, "hint": "x" * 1000})
    created = await client.submit(sora_body())
    state = await client.fetch(created.id)
    assert state.kind == "failed"
    assert state.error is not None
    assert '"code": 42' in state.error
    assert len(state.error) <= 300


async def test_error_without_error_object_has_a_generic_reason(
    client: ProviderClient, fake_provider: FakeProvider
) -> None:
    fake_provider.script_next_job([{"status": "error"}])
    created = await client.submit(sora_body())
    state = await client.fetch(created.id)
    assert state.kind == "failed"
    assert state.error == "the video service reported 'error'"


async def test_failed_status(client: ProviderClient, fake_provider: FakeProvider) -> None:
    fake_provider.script_next_job(["failed"], error={"code": "moderation", "message": "no faces"})
    created = await client.submit(sora_body())
    state = await client.fetch(created.id)
    assert (state.kind, state.status, state.error) == ("failed", "failed", "no faces")


async def test_unknown_status_is_a_failure(
    client: ProviderClient, fake_provider: FakeProvider
) -> None:
    fake_provider.script_next_job(["weird"])
    created = await client.submit(sora_body())
    state = await client.fetch(created.id)
    assert state.kind == "failed"
    assert state.status == "weird"
    assert state.error == "unexpected status 'weird' from the video service"


async def test_non_monotonic_sequence(client: ProviderClient, fake_provider: FakeProvider) -> None:
    fake_provider.script_next_job(
        ["generating", "queued", "queued", "generating", "waiting", "active", "completed"]
    )
    created = await client.submit(sora_body())
    states = await poll_states(client, created.id, 8)
    assert [s.status for s in states] == [
        "generating",
        "queued",
        "queued",
        "generating",
        "waiting",
        "active",
        "completed",
        "completed",  # the last entry repeats
    ]
    assert [s.kind for s in states[:6]] == ["pending"] * 6
    assert states[-1].kind == "completed"
    assert fake_provider.jobs[created.id].polls == 8


async def test_default_script_is_queued_generating_completed(
    client: ProviderClient, fake_provider: FakeProvider
) -> None:
    created = await client.submit(sora_body())
    assert (created.status, created.kind) == ("queued", "pending")
    states = await poll_states(client, created.id, 3)
    assert [s.status for s in states] == ["queued", "generating", "completed"]
    assert states[-1].video_url is not None


async def test_usd_spent_is_read_from_meta(
    client: ProviderClient, fake_provider: FakeProvider
) -> None:
    fake_provider.script_next_job(
        [
            {
                "status": "completed",
                "video": {"url": "https://cdn.example.invalid/v.mp4"},
                "meta": {"usage": {"credits_used": 3900000, "usd_spent": 1.95}},
            }
        ]
    )
    created = await client.submit(sora_body())
    state = await client.fetch(created.id)
    assert state.usd_spent == pytest.approx(1.95)
    assert created.usd_spent is None


async def test_completion_time_keeps_jobs_pending(
    client: ProviderClient, fake_provider: FakeProvider
) -> None:
    fake_provider.set_completion_time(3600)
    created = await client.submit(sora_body())
    states = await poll_states(client, created.id, 4)
    assert [s.status for s in states] == ["queued", "generating", "generating", "generating"]
    fake_provider.set_completion_time(None)
    assert (await client.fetch(created.id)).kind == "completed"


# --- POST answers ----------------------------------------------------------------------------


async def test_post_already_terminal(client: ProviderClient, fake_provider: FakeProvider) -> None:
    fake_provider.script_next_job(
        ["error"],
        post_body=lambda job_id: {
            "id": job_id,
            "status": "error",
            "error": {"name": "GenerationError", "message": "rejected at once"},
        },
    )
    state = await client.submit(sora_body())
    assert (state.kind, state.error) == ("failed", "rejected at once")

    fake_provider.script_next_job(
        ["completed"],
        post_body=lambda job_id: {
            "id": job_id,
            "status": "completed",
            "video": {"url": "https://cdn.example.invalid/done.mp4"},
            "meta": {"usage": {"usd_spent": "1.20"}},
        },
    )
    state = await client.submit(sora_body())
    assert (state.kind, state.video_url) == ("completed", "https://cdn.example.invalid/done.mp4")
    assert state.usd_spent == pytest.approx(1.2)


@pytest.mark.parametrize("post_status", [200, 201, 202])
async def test_any_2xx_on_post_is_accepted(
    session: aiohttp.ClientSession, sleeper: SleepRecorder, post_status: int
) -> None:
    fake = FakeProvider(post_status=post_status)
    await fake.start()
    try:
        state = await make_client(session, fake.base_url, sleeper).submit(sora_body())
    finally:
        await fake.close()
    assert state.id in fake.jobs
    assert (state.status, state.kind) == ("queued", "pending")


async def test_id_falls_back_to_generation_id(
    client: ProviderClient, fake_provider: FakeProvider
) -> None:
    fake_provider.script_next_job(
        ["queued"], post_body=lambda job_id: {"generation_id": job_id, "status": "queued"}
    )
    state = await client.submit(sora_body())
    assert state.id in fake_provider.jobs


async def test_post_without_status_is_assumed_queued(
    client: ProviderClient, fake_provider: FakeProvider
) -> None:
    fake_provider.script_next_job(["queued"], post_body=lambda job_id: {"id": job_id})
    state = await client.submit(sora_body())
    assert (state.id in fake_provider.jobs, state.kind) == (True, "pending")


@pytest.mark.parametrize(
    "body",
    [{"status": "queued"}, {"id": "", "status": "queued"}, "<html>ok</html>", {"id": None}],
)
async def test_2xx_post_without_id_is_a_plain_provider_error(
    client: ProviderClient,
    fake_provider: FakeProvider,
    sleeper: SleepRecorder,
    body: dict[str, Any] | str,
) -> None:
    fake_provider.fail_next("POST", status=200, body=body)
    with pytest.raises(ProviderError) as info:
        await client.submit(sora_body())
    assert type(info.value) is ProviderError
    assert info.value.status == 200
    assert fake_provider.count("POST") == 1
    assert sleeper.delays == []


async def test_error_body_behind_a_2xx_with_string_status_code(
    client: ProviderClient, fake_provider: FakeProvider
) -> None:
    # §6: the docs show statusCode as a string; it must not crash the parser.
    fake_provider.fail_next(
        "POST", status=200, body={"statusCode": "403", "message": "You've run out of credits."}
    )
    with pytest.raises(ProviderCreditsError) as info:
        await client.submit(sora_body())
    assert info.value.message == "You've run out of credits."


# --- HTTP errors (§6) --------------------------------------------------------------------------

SUBMIT_ERRORS: list[tuple[int, type[ProviderError]]] = [
    (400, ProviderValidationError),
    (401, ProviderAuthError),
    (403, ProviderCreditsError),
    (404, ProviderNotFound),
    (413, ProviderValidationError),
    (422, ProviderValidationError),
    (429, ProviderRateLimited),
    (500, ProviderServerError),
    (502, ProviderServerError),
    (503, ProviderServerError),
    (504, ProviderTimeout),
    (418, ProviderError),
]


@pytest.mark.parametrize(("status", "expected"), SUBMIT_ERRORS)
async def test_submit_http_errors_are_typed_and_carry_the_message(
    client: ProviderClient,
    fake_provider: FakeProvider,
    status: int,
    expected: type[ProviderError],
) -> None:
    fake_provider.fail_next("POST", status=status, message=f"provider says {status}", count=10)
    with pytest.raises(ProviderError) as info:
        await client.submit(sora_body())
    assert type(info.value) is expected
    assert info.value.status == status
    assert f"provider says {status}" in info.value.message
    if status == 413:
        assert info.value.message.startswith("image too large for the provider")
    assert fake_provider.jobs == {}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, ProviderValidationError),
        (401, ProviderAuthError),
        (403, ProviderCreditsError),
        (404, ProviderNotFound),
    ],
)
@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_client_errors_are_never_retried(
    client: ProviderClient,
    fake_provider: FakeProvider,
    sleeper: SleepRecorder,
    status: int,
    expected: type[ProviderError],
    method: Any,
) -> None:
    created = await client.submit(sora_body())
    fake_provider.fail_next(method, status=status, count=10)
    with pytest.raises(expected) as info:
        if method == "POST":
            await client.submit(sora_body())
        else:
            await client.fetch(created.id)
    # The default §6 text reaches the exception.
    assert info.value.message == DEFAULT_MESSAGES[status]
    assert fake_provider.count(method) == (2 if method == "POST" else 1)
    assert sleeper.delays == []


async def test_openai_style_error_body(client: ProviderClient, fake_provider: FakeProvider) -> None:
    fake_provider.fail_next(
        "POST",
        status=400,
        body={"error": {"message": "Unsupported value: 'seconds'", "type": "invalid_request"}},
    )
    with pytest.raises(ProviderValidationError) as info:
        await client.submit(sora_body())
    assert info.value.message == "Unsupported value: 'seconds'"


async def test_non_json_error_body_is_clipped_raw_text(
    client: ProviderClient, fake_provider: FakeProvider, sleeper: SleepRecorder
) -> None:
    page = "<html><body><h1>502 Bad Gateway</h1>" + "<p>nginx</p>" * 100 + "</body></html>"
    fake_provider.fail_next("POST", status=502, body=page)
    with pytest.raises(ProviderServerError) as info:
        await client.submit(sora_body())
    assert info.value.message.startswith("<html><body><h1>502 Bad Gateway</h1>")
    assert len(info.value.message) <= 300
    assert sleeper.delays == []


async def test_empty_error_body_gets_a_generic_message(
    client: ProviderClient, fake_provider: FakeProvider
) -> None:
    fake_provider.fail_next("GET", status=404, body="")
    created = await client.submit(sora_body())
    with pytest.raises(ProviderNotFound) as info:
        await client.fetch(created.id)
    assert info.value.message == "the video service returned no error message"


async def test_unreadable_poll_body_is_a_server_error(
    client: ProviderClient, fake_provider: FakeProvider
) -> None:
    created = await client.submit(sora_body())
    fake_provider.fail_next("GET", status=200, body="<html>maintenance</html>")
    with pytest.raises(ProviderServerError):
        await client.fetch(created.id)
    fake_provider.fail_next("GET", status=200, body={"id": created.id})
    with pytest.raises(ProviderServerError):
        await client.fetch(created.id)


def test_message_parsing_helpers() -> None:
    assert provider_message('{"message": "a", "error": {"message": "b"}}') == "a"
    assert provider_message('{"message": "", "error": {"message": "b"}}') == "b"
    assert provider_message('{"message": ["x", "y"]}') == "x; y"
    assert provider_message('{"statusCode": "429"}') == '{"statusCode": "429"}'
    assert provider_message("   ") == "the video service returned no error message"
    assert provider_message("[1, 2]") == "[1, 2]"
    state = parse_generation({"status": 7}, generation_id="g")
    assert (state.id, state.status, state.kind) == ("g", "7", "failed")
    state = parse_generation(
        {"id": "x", "status": "COMPLETED", "video": "https://a/b.mp4", "meta": {"usage": []}},
        generation_id="g",
    )
    assert (state.id, state.kind, state.usd_spent) == ("x", "completed", None)


# --- retries on polls --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_poll_retries_transient_statuses(
    client: ProviderClient, fake_provider: FakeProvider, sleeper: SleepRecorder, status: int
) -> None:
    created = await client.submit(sora_body())
    fake_provider.fail_next("GET", status=status, count=2)
    state = await client.fetch(created.id)
    assert state.status == "queued"
    assert fake_provider.count("GET") == 3
    # random() is fixed at 0.5: half of 0.5, 1.0.
    assert sleeper.delays == [0.25, 0.5]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (429, ProviderRateLimited),
        (500, ProviderServerError),
        (502, ProviderServerError),
        (503, ProviderServerError),
        # On a poll, 504 is a gateway hiccup, not "the generation timed out".
        (504, ProviderServerError),
    ],
)
async def test_poll_gives_up_after_attempts(
    client: ProviderClient,
    fake_provider: FakeProvider,
    sleeper: SleepRecorder,
    status: int,
    expected: type[ProviderError],
) -> None:
    created = await client.submit(sora_body())
    fake_provider.fail_next("GET", status=status, count=10, message="still broken")
    with pytest.raises(ProviderError) as info:
        await client.fetch(created.id)
    assert type(info.value) is expected
    assert info.value.message == "still broken"
    assert fake_provider.count("GET") == 4
    assert sleeper.delays == [0.25, 0.5, 1.0]


async def test_backoff_grows_and_is_capped(
    session: aiohttp.ClientSession, fake_provider: FakeProvider
) -> None:
    sleeper = SleepRecorder()
    client = make_client(
        session,
        fake_provider.base_url,
        sleeper,
        retry=RetryPolicy(attempts=7, base_delay=1.0, max_delay=4.0),
        random=lambda: 1.0,
    )
    created = await client.submit(sora_body())
    fake_provider.fail_next("GET", status=503, count=10)
    with pytest.raises(ProviderServerError):
        await client.fetch(created.id)
    assert sleeper.delays == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert fake_provider.count("GET") == 7


async def test_backoff_is_fully_jittered(
    session: aiohttp.ClientSession, fake_provider: FakeProvider
) -> None:
    draws: Iterator[float] = iter([0.1, 0.9, 0.0])
    sleeper = SleepRecorder()
    client = make_client(session, fake_provider.base_url, sleeper, random=lambda: next(draws))
    created = await client.submit(sora_body())
    fake_provider.fail_next("GET", status=500, count=10)
    with pytest.raises(ProviderServerError):
        await client.fetch(created.id)
    # uniform(0, ceiling) with ceilings 0.5, 1, 2.
    assert sleeper.delays == pytest.approx([0.05, 0.9, 0.0])


async def test_poll_retries_dropped_connections(
    client: ProviderClient, fake_provider: FakeProvider, sleeper: SleepRecorder
) -> None:
    created = await client.submit(sora_body())
    # aiohttp itself resends an idempotent GET once on a dropped connection, so two drops
    # make one failed attempt of ours.
    fake_provider.fail_next("GET", status=500, drop_connection=True, count=2)
    state = await client.fetch(created.id)
    assert state.kind == "pending"
    assert sleeper.delays == [0.25]


async def test_poll_gives_up_on_a_dead_connection(
    client: ProviderClient, fake_provider: FakeProvider, sleeper: SleepRecorder
) -> None:
    created = await client.submit(sora_body())
    fake_provider.fail_next("GET", status=500, drop_connection=True, count=100)
    with pytest.raises(ProviderUnavailable) as info:
        await client.fetch(created.id)
    assert isinstance(info.value.__cause__, aiohttp.ServerDisconnectedError)
    assert sleeper.delays == [0.25, 0.5, 1.0]


async def test_poll_retries_a_read_timeout(
    fake_provider: FakeProvider, sleeper: SleepRecorder
) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=0.2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = make_client(session, fake_provider.base_url, sleeper)
        created = await client.submit(sora_body())
        fake_provider.fail_next("GET", delay=1.0)
        state = await client.fetch(created.id)
    assert state.kind == "pending"
    assert sleeper.delays == [0.25]


async def test_poll_on_a_closed_port_is_unavailable(
    session: aiohttp.ClientSession, sleeper: SleepRecorder
) -> None:
    client = make_client(session, f"http://127.0.0.1:{closed_port()}", sleeper)
    with pytest.raises(ProviderUnavailable):
        await client.fetch("video_x:openai/sora-2-pro-i2v")
    assert len(sleeper.delays) == 3


# --- retries on submit -------------------------------------------------------------------------


async def test_submit_retries_429(
    client: ProviderClient, fake_provider: FakeProvider, sleeper: SleepRecorder
) -> None:
    fake_provider.fail_next("POST", status=429, count=2)
    state = await client.submit(sora_body())
    assert fake_provider.count("POST") == 3
    assert list(fake_provider.jobs) == [state.id]
    assert sleeper.delays == [0.25, 0.5]


async def test_submit_gives_up_on_429(
    client: ProviderClient, fake_provider: FakeProvider, sleeper: SleepRecorder
) -> None:
    fake_provider.fail_next("POST", status=429, count=10)
    with pytest.raises(ProviderRateLimited) as info:
        await client.submit(sora_body())
    assert info.value.message == "Too Many Requests"
    assert fake_provider.count("POST") == 4
    assert fake_provider.jobs == {}
    assert len(sleeper.delays) == 3


async def test_submit_retries_connection_refused_then_gives_up(
    session: aiohttp.ClientSession, sleeper: SleepRecorder
) -> None:
    client = make_client(session, f"http://127.0.0.1:{closed_port()}", sleeper)
    with pytest.raises(ProviderUnavailable) as info:
        await client.submit(sora_body())
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectorError)
    assert sleeper.delays == [0.25, 0.5, 1.0]


async def test_submit_retries_connection_refused_until_the_server_is_up(
    session: aiohttp.ClientSession,
) -> None:
    port = closed_port()
    fake = FakeProvider()

    async def start_server(calls: int) -> None:
        if calls == 1:
            await fake.start(port=port)

    sleeper = SleepRecorder(hook=start_server)
    client = make_client(session, f"http://127.0.0.1:{port}", sleeper)
    try:
        state = await client.submit(sora_body())
    finally:
        await fake.close()
    assert sleeper.delays == [0.25]
    assert list(fake.jobs) == [state.id]
    assert fake.count("POST") == 1


async def test_submit_retries_waiting_for_a_connection_that_never_opened(
    fake_provider: FakeProvider,
) -> None:
    """A connect time-out (here: no free pooled connection) also means nothing was sent."""
    connector = aiohttp.TCPConnector(limit=1)
    timeout = aiohttp.ClientTimeout(total=None, connect=0.2)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        blocker_client = make_client(session, fake_provider.base_url, SleepRecorder())
        created = await blocker_client.submit(sora_body())
        fake_provider.fail_next("GET", delay=0.6)
        blocker = asyncio.create_task(blocker_client.fetch(created.id))
        await asyncio.sleep(0.05)  # let the poll take the only connection

        async def wait_for_blocker(calls: int) -> None:
            await blocker

        sleeper = SleepRecorder(hook=wait_for_blocker)
        client = make_client(session, fake_provider.base_url, sleeper)
        state = await client.submit(sora_body())
    assert len(sleeper.delays) == 1
    assert fake_provider.count("POST") == 2
    assert set(fake_provider.jobs) == {created.id, state.id}


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_submit_does_not_retry_5xx(
    client: ProviderClient, fake_provider: FakeProvider, sleeper: SleepRecorder, status: int
) -> None:
    fake_provider.fail_next("POST", status=status, count=10)
    with pytest.raises(ProviderServerError):
        await client.submit(sora_body())
    assert fake_provider.count("POST") == 1
    assert sleeper.delays == []


async def test_submit_504_is_a_generation_timeout_not_retried(
    client: ProviderClient, fake_provider: FakeProvider, sleeper: SleepRecorder
) -> None:
    fake_provider.fail_next("POST", status=504, count=10)
    with pytest.raises(ProviderTimeout) as info:
        await client.submit(sora_body())
    assert info.value.message == "Generation timeout"
    assert fake_provider.count("POST") == 1
    assert sleeper.delays == []


async def test_submit_does_not_retry_a_connection_dropped_after_sending(
    client: ProviderClient, fake_provider: FakeProvider, sleeper: SleepRecorder
) -> None:
    # The fake creates the job, then loses the answer: a resend would pay twice.
    fake_provider.fail_next("POST", drop_connection=True, count=10)
    with pytest.raises(ProviderUnavailable) as info:
        await client.submit(sora_body())
    assert "not resubmitted" in info.value.message
    assert fake_provider.count("POST") == 1
    assert len(fake_provider.jobs) == 1  # the orphan, and no second one
    assert sleeper.delays == []


async def test_submit_does_not_retry_a_read_timeout(
    fake_provider: FakeProvider, sleeper: SleepRecorder
) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=0.2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = make_client(session, fake_provider.base_url, sleeper)
        fake_provider.fail_next("POST", delay=1.0)
        with pytest.raises(ProviderUnavailable) as info:
            await client.submit(sora_body())
    assert isinstance(info.value.__cause__, asyncio.TimeoutError)
    assert fake_provider.count("POST") == 1
    assert sleeper.delays == []


# --- the request itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "resolution", "orientation", "duration"),
    [
        ("openai/sora-2-pro-i2v", "720p", "landscape", 4),
        ("openai/sora-2-pro-i2v", "1080p", "portrait", 12),
        ("openai/sora-2-pro-i2v", "1080p", "landscape", 8),
        ("openai/sora-2-i2v", "720p", "portrait", 8),
    ],
)
async def test_request_body_is_exactly_the_catalog_request(
    client: ProviderClient,
    fake_provider: FakeProvider,
    model: str,
    resolution: str,
    orientation: Orientation,
    duration: int,
) -> None:
    body = sora_body(model=model, resolution=resolution, orientation=orientation, duration=duration)
    state = await client.submit(body)
    job = fake_provider.jobs[state.id]
    assert job.body == body
    assert job.unknown_fields == []
    assert job.model == model and state.id.endswith(f":{model}")
    request = fake_provider.requests[-1]
    assert request.json == body
    assert type(request.json["duration"]) is int
    assert request.authorization is True
    assert request.headers["Content-Type"].startswith("application/json")


async def test_other_catalog_models_use_the_generic_shape(
    client: ProviderClient, fake_provider: FakeProvider
) -> None:
    body = kling_body()
    state = await client.submit(body)
    assert fake_provider.jobs[state.id].body == body
    assert fake_provider.jobs[state.id].unknown_fields == []


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"duration": "4"}, 'Expected number, received string at "duration"'),
        ({"duration": 5}, "Expected 4 | 8 | 12, received 5"),
        ({"duration": True}, 'Expected number, received boolean at "duration"'),
        ({"aspect_ratio": "1:1"}, "received '1:1' at \"aspect_ratio\""),
        ({"resolution": "480p"}, "received '480p' at \"resolution\""),
        ({"prompt": None}, 'Expected string, received undefined at "prompt"'),
        ({"image_url": None}, 'Required at "image_url"'),
        ({"image_url": "ftp://example.invalid/a.jpg"}, 'Invalid url at "image_url"'),
        ({"image_url": "data:image/jpeg;base64,not-base64!"}, "image_url"),
        ({"model": None}, "model: Required"),
    ],
)
async def test_the_fake_rejects_bodies_outside_the_contract(
    client: ProviderClient,
    fake_provider: FakeProvider,
    sleeper: SleepRecorder,
    change: dict[str, Any],
    words: str,
) -> None:
    body = {**sora_body(), **change}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(ProviderValidationError) as info:
        await client.submit(body)
    assert info.value.message.startswith("Body validation error!\n")
    assert words in info.value.message
    assert fake_provider.jobs == {}
    assert sleeper.delays == []


async def test_sora_2_offers_only_720p(client: ProviderClient) -> None:
    body = {**sora_body(model="openai/sora-2-i2v"), "resolution": "1080p"}
    with pytest.raises(ProviderValidationError, match="Expected '720p', received '1080p'"):
        await client.submit(body)


async def test_image_size_must_match_the_preset(client: ProviderClient) -> None:
    body = {**sora_body(resolution="1080p"), "image_url": data_uri((1280, 720))}
    with pytest.raises(ProviderValidationError) as info:
        await client.submit(body)
    assert info.value.message == SIZE_MISMATCH


async def test_image_size_mismatch_can_surface_later(
    session: aiohttp.ClientSession, sleeper: SleepRecorder
) -> None:
    fake = FakeProvider(image_check_mode="async")
    await fake.start()
    try:
        client = make_client(session, fake.base_url, sleeper)
        created = await client.submit({**sora_body(), "image_url": data_uri((720, 1280))})
        states = await poll_states(client, created.id, 2)
    finally:
        await fake.close()
    assert [s.kind for s in states] == ["pending", "failed"]
    assert states[1].error == SIZE_MISMATCH


async def test_unknown_fields_are_ignored_but_recorded(
    client: ProviderClient, fake_provider: FakeProvider
) -> None:
    state = await client.submit({**sora_body(), "seed": 7, "negative_prompt": "blur"})
    assert fake_provider.jobs[state.id].unknown_fields == ["negative_prompt", "seed"]


async def test_oversized_body_is_413_and_not_retried(
    client: ProviderClient, fake_provider: FakeProvider, sleeper: SleepRecorder
) -> None:
    fake_provider.max_body_bytes = 20_000
    body = {**sora_body(), "image_url": "data:image/jpeg;base64," + "A" * 60_000}
    with pytest.raises(ProviderValidationError) as info:
        await client.submit(body)
    assert info.value.status == 413
    assert info.value.message.startswith("image too large for the provider")
    assert fake_provider.count("POST") == 1
    assert sleeper.delays == []


async def test_generation_id_with_colon_round_trips(
    client: ProviderClient, fake_provider: FakeProvider
) -> None:
    created = await client.submit(sora_body())
    assert ":" in created.id and "/" in created.id
    state = await client.fetch(created.id)
    assert state.id == created.id
    request = fake_provider.requests[-1]
    assert request.query == {"generation_id": created.id}
    # A GET carries no body, so it needs (and sends) no Content-Type.
    assert "Content-Type" not in request.headers
    assert request.authorization is True


async def test_generation_id_is_url_encoded(
    client: ProviderClient, fake_provider: FakeProvider
) -> None:
    odd = "video_ab:c/d e+f&g=h#i?j%k"
    with pytest.raises(ProviderNotFound):
        await client.fetch(odd)
    request = fake_provider.requests[-1]
    assert request.query == {"generation_id": odd}
    assert "&g=" not in request.raw_query and "#" not in request.raw_query


async def test_the_fake_requires_generation_id_and_the_key(
    session: aiohttp.ClientSession, fake_provider: FakeProvider
) -> None:
    url = fake_provider.base_url + "/v2/video/generations"
    headers = {"Authorization": f"Bearer {KEY}"}
    async with session.get(url, headers=headers) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["statusCode"] == 400 and body["path"] == "/v2/video/generations"
    assert set(body) == {"requestId", "statusCode", "timestamp", "path", "message"}
    async with session.get(url, params={"generation_id": "x"}) as resp:
        assert resp.status == 401
        assert (await resp.json())["message"] == DEFAULT_MESSAGES[401]


# --- download ----------------------------------------------------------------------------------


async def finished_video_url(client: ProviderClient, fake: FakeProvider, video: bytes) -> str:
    fake.script_next_job(["completed"], video=video)
    created = await client.submit(sora_body())
    state = await client.fetch(created.id)
    assert state.video_url is not None
    return state.video_url


async def test_download_streams_to_a_file_without_auth(
    client: ProviderClient, fake_provider: FakeProvider, dest: pathlib.Path
) -> None:
    video = tiny_mp4(extra=300_000)
    url = await finished_video_url(client, fake_provider, video)
    result = await client.download(url, dest, max_bytes=len(video))
    assert result.path.parent == dest
    assert result.path.read_bytes() == video
    assert result.size == len(video)
    assert result.content_type == "video/mp4"
    assert video[4:8] == b"ftyp"
    [request] = fake_provider.video_requests
    assert request.authorization is False


async def test_download_refuses_by_content_length(
    client: ProviderClient,
    fake_provider: FakeProvider,
    dest: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    video = tiny_mp4(extra=100_000)
    url = await finished_video_url(client, fake_provider, video)
    opened: list[pathlib.Path] = []
    real_open_temp = provider_module._open_temp

    def spy(folder: pathlib.Path) -> Any:
        opened.append(folder)
        return real_open_temp(folder)

    monkeypatch.setattr(provider_module, "_open_temp", spy)
    with pytest.raises(VideoTooLarge) as info:
        await client.download(url, dest, max_bytes=len(video) - 1)
    assert info.value.limit == len(video) - 1
    assert opened == []  # refused on the header, before any byte was written
    assert files_in(dest) == []


async def test_download_stops_mid_stream_and_deletes_the_partial_file(
    client: ProviderClient, fake_provider: FakeProvider, dest: pathlib.Path
) -> None:
    fake_provider.video_content_length = False
    video = tiny_mp4(extra=400_000)
    url = await finished_video_url(client, fake_provider, video)
    with pytest.raises(VideoTooLarge):
        await client.download(url, dest, max_bytes=100_000)
    assert files_in(dest) == []
    # Within the limit, the same chunked answer is fine.
    result = await client.download(url, dest, max_bytes=len(video))
    assert result.path.read_bytes() == video


async def test_download_retries_a_503(
    client: ProviderClient,
    fake_provider: FakeProvider,
    sleeper: SleepRecorder,
    dest: pathlib.Path,
) -> None:
    video = tiny_mp4(extra=1000)
    url = await finished_video_url(client, fake_provider, video)
    fake_provider.fail_next("VIDEO", status=503)
    result = await client.download(url, dest, max_bytes=10_000_000)
    assert result.path.read_bytes() == video
    assert len(fake_provider.video_requests) == 2
    assert sleeper.delays == [0.25]
    assert files_in(dest) == [result.path]


async def test_download_retries_a_truncated_stream_without_leftovers(
    client: ProviderClient,
    fake_provider: FakeProvider,
    sleeper: SleepRecorder,
    dest: pathlib.Path,
) -> None:
    video = tiny_mp4(extra=200_000)
    url = await finished_video_url(client, fake_provider, video)
    fake_provider.fail_next("VIDEO", drop_connection=True)
    result = await client.download(url, dest, max_bytes=10_000_000)
    assert result.path.read_bytes() == video
    assert sleeper.delays == [0.25]
    assert files_in(dest) == [result.path]


async def test_download_gives_up_after_attempts(
    client: ProviderClient,
    fake_provider: FakeProvider,
    sleeper: SleepRecorder,
    dest: pathlib.Path,
) -> None:
    url = await finished_video_url(client, fake_provider, tiny_mp4())
    fake_provider.fail_next("VIDEO", status=502, count=10)
    with pytest.raises(ProviderServerError):
        await client.download(url, dest, max_bytes=10_000_000)
    assert len(fake_provider.video_requests) == 4
    assert len(sleeper.delays) == 3
    assert files_in(dest) == []


async def test_expired_video_link_is_not_retried(
    client: ProviderClient,
    fake_provider: FakeProvider,
    sleeper: SleepRecorder,
    dest: pathlib.Path,
) -> None:
    url = await finished_video_url(client, fake_provider, tiny_mp4())
    fake_provider.video_ttl = -1.0
    with pytest.raises(ProviderNotFound) as info:
        await client.download(url, dest, max_bytes=10_000_000)
    assert info.value.status == 403
    assert "expired" in info.value.message
    assert sleeper.delays == []


# --- secrets -----------------------------------------------------------------------------------

SECRET = "sk-live-THIS-MUST-NEVER-LEAK-0123456789"


def _all_text(exc: BaseException) -> str:
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen), repr(seen.args)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


async def test_the_key_never_leaks_into_errors_or_logs(
    session: aiohttp.ClientSession, sleeper: SleepRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeProvider(api_key="another-key")
    await fake.start()
    try:
        client = make_client(session, fake.base_url, sleeper, key=SECRET)
        assert SECRET not in repr(client)
        failures: list[BaseException] = []
        with pytest.raises(ProviderAuthError) as auth_info:
            await client.submit(sora_body())
        failures.append(auth_info.value)
        with pytest.raises(ProviderAuthError) as auth_info:
            await client.fetch("video_x:openai/sora-2-pro-i2v")
        failures.append(auth_info.value)
        # A provider that echoes the key back still cannot make us repeat it.
        fake.fail_next("POST", status=400, message=f"bad key {SECRET} in request")
        with pytest.raises(ProviderValidationError) as echo_info:
            await client.submit(sora_body())
        failures.append(echo_info.value)
        assert "bad key ******** in request" in echo_info.value.message
        fake.fail_next("GET", status=503, count=10, message=f"upstream saw {SECRET}")
        with pytest.raises(ProviderServerError) as retry_info:
            await client.fetch("video_x:openai/sora-2-pro-i2v")
        failures.append(retry_info.value)
        # Transport failures too (their text comes from aiohttp, which must not hold headers).
        dead = make_client(session, f"http://127.0.0.1:{closed_port()}", sleeper, key=SECRET)
        with pytest.raises(ProviderUnavailable) as dead_info:
            await dead.submit(sora_body())
        failures.append(dead_info.value)
    finally:
        await fake.close()
    for failure in failures:
        assert SECRET not in _all_text(failure)
    assert caplog.records, "the failures should have been logged"
    assert SECRET not in caplog.text
    for record in caplog.records:
        assert SECRET not in record.getMessage()
    assert not any(SECRET in str(r.headers) for r in fake.requests)


async def test_logs_never_hold_the_image(
    client: ProviderClient, fake_provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = sora_body()
    payload = body["image_url"].split(",", 1)[1]
    fake_provider.fail_next("POST", status=400, message=f"cannot use {body['image_url']}")
    with pytest.raises(ProviderValidationError) as info:
        await client.submit(body)
    await client.submit(body)
    assert payload[:400] not in caplog.text
    assert len(info.value.message) <= 1000
    assert max(len(r.getMessage()) for r in caplog.records) < 1000


# --- the video link is the provider's, or it is not fetched (SSRF) -----------------------------


@pytest.fixture
async def outside() -> AsyncIterator[OutsideServer]:
    server = OutsideServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def completed_link(client: ProviderClient, fake: FakeProvider, **link: Any) -> str:
    fake.script_next_job(["completed"], **link)
    created = await client.submit(sora_body())
    state = await client.fetch(created.id)
    assert state.kind == "completed" and state.video_url is not None
    return state.video_url


@pytest.mark.parametrize(
    "link",
    [
        "{outside}/latest/meta-data/iam/security-credentials/",
        "http://169.254.169.254/latest/meta-data/",
        "https://evil.example/v.mp4",
        "https://cdn.aimlapi.com.evil.example/v.mp4",
        "http://cdn.aimlapi.com/v.mp4",
        "http://localhost:{fake_port}/files/x.mp4",
    ],
)
async def test_a_result_link_off_the_provider_is_never_fetched(
    client: ProviderClient,
    fake_provider: FakeProvider,
    outside: OutsideServer,
    sleeper: SleepRecorder,
    dest: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
    link: str,
) -> None:
    port = fake_provider.base_url.rsplit(":", 1)[1]
    url = link.format(outside=outside.base_url, fake_port=port)
    got = await completed_link(client, fake_provider, result_url=url)
    assert got == url
    assert client.video_url_allowed(url) is False
    with pytest.raises(VideoLinkRefused) as info:
        await client.download(url, dest, max_bytes=10_000_000)
    assert outside.requests == []
    assert fake_provider.video_requests == []
    assert files_in(dest) == []
    assert sleeper.delays == []  # a refusal is an answer, not a hiccup
    # Members see no host name; the operator's log has it.
    assert "evil" not in info.value.message and "169.254" not in info.value.message
    assert "refused the video link" in caplog.text


@pytest.mark.parametrize(
    "target",
    [
        "{outside}/latest/meta-data/",
        "http://169.254.169.254/computeMetadata/v1/",
        "https://evil.example/v.mp4",
        "http://[::ffff:127.0.0.1]:{outside_port}/admin",
    ],
)
@pytest.mark.parametrize("status", [302, 307])
async def test_a_redirect_off_the_provider_is_refused(
    client: ProviderClient,
    fake_provider: FakeProvider,
    outside: OutsideServer,
    sleeper: SleepRecorder,
    dest: pathlib.Path,
    target: str,
    status: int,
) -> None:
    location = target.format(
        outside=outside.base_url, outside_port=outside.base_url.rsplit(":", 1)[1]
    )
    url = await completed_link(client, fake_provider, redirect_to=location, redirect_status=status)
    assert client.video_url_allowed(url) is True  # the link itself is the provider's
    with pytest.raises(VideoLinkRefused):
        await client.download(url, dest, max_bytes=10_000_000)
    assert len(fake_provider.video_requests) == 1
    assert outside.requests == []
    assert files_in(dest) == []
    assert sleeper.delays == []


async def test_redirects_within_the_provider_are_followed(
    client: ProviderClient, fake_provider: FakeProvider, dest: pathlib.Path
) -> None:
    video = tiny_mp4(extra=5000)
    url = await completed_link(client, fake_provider, video=video, redirect_hops=MAX_REDIRECTS)
    result = await client.download(url, dest, max_bytes=10_000_000)
    assert result.path.read_bytes() == video
    link_requests = [r for r in fake_provider.requests if not r.path.startswith("/v2/")]
    assert [r.path.split("/")[1] for r in link_requests] == ["hop"] * MAX_REDIRECTS + ["files"]
    assert not any(r.authorization for r in link_requests)


async def test_too_many_redirects_are_refused(
    client: ProviderClient, fake_provider: FakeProvider, dest: pathlib.Path
) -> None:
    url = await completed_link(client, fake_provider, redirect_hops=MAX_REDIRECTS + 1)
    with pytest.raises(VideoLinkRefused, match="redirected more than"):
        await client.download(url, dest, max_bytes=10_000_000)
    assert fake_provider.video_requests == []  # the file itself was never reached
    assert files_in(dest) == []


@pytest.mark.parametrize("content_length", [True, False])
@pytest.mark.parametrize(
    "payload", [b"<html><body>Access denied</body></html>" * 50, b"\x89PNG\r\n\x1a\n" * 9, b"ftyp"]
)
async def test_bytes_that_are_not_an_mp4_are_refused(
    client: ProviderClient,
    fake_provider: FakeProvider,
    sleeper: SleepRecorder,
    dest: pathlib.Path,
    payload: bytes,
    content_length: bool,
) -> None:
    fake_provider.video_content_length = content_length
    url = await completed_link(client, fake_provider, video=payload)
    with pytest.raises(NotAVideo) as info:
        await client.download(url, dest, max_bytes=10_000_000)
    assert "mp4" in info.value.message
    assert files_in(dest) == []
    assert len(fake_provider.video_requests) == 1
    assert sleeper.delays == []


def test_the_policy_allows_only_https_on_the_providers_hosts() -> None:
    policy = VideoUrlPolicy.build("https://api.aimlapi.com", DEFAULT_VIDEO_URL_HOSTS)
    allowed = [
        "https://cdn.aimlapi.com/generations/hedgehog/1759870057414-7a63.mp4",
        "https://CDN.aimlapi.com./v.mp4?X-Tos-Expires=86400",
        "https://eu.cdn.aimlapi.com/v.mp4",
        "https://cdn.aimlapi.com:443/v.mp4",
        "https://api.aimlapi.com/files/v.mp4",
    ]
    refused = [
        "http://cdn.aimlapi.com/v.mp4",  # https only when the provider is https
        "http://api.aimlapi.com/files/v.mp4",
        "https://xcdn.aimlapi.com/v.mp4",  # a suffix matches at a dot only
        "https://cdn.aimlapi.com.evil.example/v.mp4",
        "https://aimlapi.com/v.mp4",
        "https://cdn.aimlapi.com:8443/v.mp4",
        "https://api.aimlapi.com:8443/v.mp4",
        "https://user:pw@cdn.aimlapi.com/v.mp4",
        "https://127.0.0.1/v.mp4",
        "https://[::1]/v.mp4",
        "ftp://cdn.aimlapi.com/v.mp4",
        "/relative/v.mp4",
    ]
    assert policy.local_provider is False
    assert [u for u in allowed if policy.refusal(URL(u)) is not None] == []
    assert [u for u in refused if policy.refusal(URL(u)) is None] == []


def test_a_local_provider_is_trusted_on_its_own_origin_only() -> None:
    policy = VideoUrlPolicy.build("http://127.0.0.1:8080", ["cdn.example.com"])
    assert policy.local_provider is True
    assert policy.refusal(URL("http://127.0.0.1:8080/files/v.mp4")) is None
    for url in (
        "http://127.0.0.1:8081/files/v.mp4",
        "https://127.0.0.1:8080/files/v.mp4",
        "http://127.0.0.2:8080/files/v.mp4",
        "http://cdn.example.com/v.mp4",
        "http://169.254.169.254/latest/meta-data/",
    ):
        assert policy.refusal(URL(url)) is not None, url
    assert policy.trusts_any_address("127.0.0.1", 8080)
    assert not policy.trusts_any_address("127.0.0.1", 8081)
    # A public provider never makes private addresses acceptable.
    public = VideoUrlPolicy.build("https://api.aimlapi.com", DEFAULT_VIDEO_URL_HOSTS)
    assert not public.trusts_any_address("api.aimlapi.com", 443)


class StaticResolver(AbstractResolver):
    """Answers every name with fixed addresses, so no test needs real DNS."""

    def __init__(self, *answers: str) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
            for address in self.answers
        ]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "answers",
    [
        ("127.0.0.1",),
        ("10.1.2.3",),
        ("169.254.169.254",),
        ("93.184.216.34", "192.168.0.5"),
        ("::1",),
        ("::ffff:127.0.0.1",),
        ("fd00::1",),
    ],
)
async def test_an_allowed_name_resolving_to_a_private_address_is_never_connected(
    session: aiohttp.ClientSession,
    sleeper: SleepRecorder,
    dest: pathlib.Path,
    answers: tuple[str, ...],
) -> None:
    # DNS rebinding: the name is on the allow-list, its answer is not. The check runs on the
    # addresses aiohttp is about to connect to; had it not, the 127.0.0.1 answer would reach a
    # closed port here and come back as a retried ProviderUnavailable instead.
    dns = StaticResolver(*answers)
    client = ProviderClient(
        session,
        base_url="https://api.example.com",
        api_key=Secret(KEY),
        sleep=sleeper,
        video_hosts=["cdn.example.com"],
        resolver=lambda: dns,
    )
    with pytest.raises(VideoLinkRefused):
        await client.download("https://cdn.example.com/v.mp4", dest, max_bytes=1000)
    assert dns.asked == ["cdn.example.com"]
    assert sleeper.delays == []


async def test_public_answers_pass_the_address_check() -> None:
    policy = VideoUrlPolicy.build("https://api.example.com", ["cdn.example.com"])
    inner = StaticResolver("93.184.216.34", "2606:2800:220:1::1")
    guarded = provider_module._GuardedResolver(inner, policy, owns_inner=False)
    answers = await guarded.resolve("cdn.example.com", 443)
    assert [a["host"] for a in answers] == ["93.184.216.34", "2606:2800:220:1::1"]


# --- fake provider: links for other tests ------------------------------------------------------


async def test_the_fake_serves_a_two_thousand_character_link(
    client: ProviderClient, fake_provider: FakeProvider, dest: pathlib.Path
) -> None:
    video = tiny_mp4(extra=100)
    fake_provider.script_next_job(["completed"], video=video)
    created = await client.submit(sora_body())
    job = fake_provider.jobs[created.id]
    job.result_url = fake_provider.padded_video_url(job, 2000)
    state = await client.fetch(created.id)
    assert state.video_url is not None and len(state.video_url) == 2000
    result = await client.download(state.video_url, dest, max_bytes=10_000)
    assert result.path.read_bytes() == video


async def test_the_fake_can_trickle_a_video(
    client: ProviderClient, fake_provider: FakeProvider, dest: pathlib.Path
) -> None:
    video = tiny_mp4(extra=200)
    quick = await completed_link(
        client, fake_provider, video=video, trickle_every=0.001, trickle_bytes=64
    )
    assert (await client.download(quick, dest, max_bytes=10_000)).path.read_bytes() == video
    stalled = await completed_link(client, fake_provider, video=video, trickle_every=60)
    # A caller's deadline cancels the download and leaves no partial file behind.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await client.download(stalled, dest, max_bytes=10_000)
    assert len(files_in(dest)) == 1  # only the quick one


# --- the key never leaves the client, whatever text it hides in ---------------------------------


def _state_text(state: GenerationState) -> str:
    return repr(state) + str(state.video_url) + str(state.error) + state.status + state.id


async def test_a_key_inside_generation_statuses_goes_no_further(
    session: aiohttp.ClientSession, sleeper: SleepRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeProvider(api_key=SECRET)
    await fake.start()
    escaped = "".join(f"\\u{ord(c):04x}" for c in SECRET)  # JSON escapes hide it from a grep
    states: list[GenerationState] = []
    try:
        client = make_client(session, fake.base_url, sleeper, key=SECRET)
        fake.script_next_job(
            ["queued", "error"],
            error={"name": "GenerationError", "message": f"upstream rejected key {SECRET}"},
        )
        created = await client.submit(sora_body())
        states += await poll_states(client, created.id, 2)
        # At the 300-character clip: the key must not survive even in part.
        fake.script_next_job(["failed"], error={"message": "x" * 290 + SECRET})
        states.append(await client.fetch((await client.submit(sora_body())).id))
        fake.script_next_job([{"status": f"odd-{SECRET}", "error": {"detail": SECRET}}])
        states.append(await client.fetch((await client.submit(sora_body())).id))
        fake.script_next_job(
            ["error"],
            post_body=lambda job_id: {"id": job_id, "status": "error", "error": SECRET},
        )
        states.append(await client.submit(sora_body()))
        created = await client.submit(sora_body())
        fake.fail_next(
            "GET",
            status=200,
            body='{"status": "error", "error": {"message": "key: ' + escaped + '"}}',
        )
        states.append(await client.fetch(created.id))
        fake.script_next_job(
            [{"status": "completed", "video": {"url": f"{fake.base_url}/f?k={SECRET}"}}]
        )
        states.append(await client.fetch((await client.submit(sora_body())).id))
    finally:
        await fake.close()
    assert [s.kind for s in states] == ["pending"] + ["failed"] * 5 + ["completed"]
    assert states[1].error == "upstream rejected key ********"
    assert states[5].error == "key: ********"
    for state in states:
        assert SECRET[:8] not in _state_text(state)
    assert SECRET[:8] not in caplog.text


async def test_a_key_at_a_clip_boundary_leaves_no_prefix_in_errors_or_logs(
    session: aiohttp.ClientSession, sleeper: SleepRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeProvider(api_key=SECRET)
    await fake.start()
    failures: list[BaseException] = []
    try:
        client = make_client(session, fake.base_url, sleeper, key=SECRET)
        # The exception message is clipped at 1,000 characters, the logged body at 200.
        fake.fail_next("POST", status=400, message="y" * 990 + SECRET)
        with pytest.raises(ProviderValidationError) as validation:
            await client.submit(sora_body())
        failures.append(validation.value)
        fake.fail_next("POST", status=502, body="z" * 188 + SECRET)
        with pytest.raises(ProviderServerError) as server:
            await client.submit(sora_body())
        failures.append(server.value)
    finally:
        await fake.close()
    for failure in failures:
        assert SECRET[:8] not in _all_text(failure)
    assert "HTTP 502" in caplog.text
    assert SECRET[:8] not in caplog.text
