"""A local stand-in for the AI/ML API video endpoints, built from aiml-contract.md §9.

It listens on 127.0.0.1 (random port), checks the Bearer key, validates Sora bodies per §2,
answers errors with the §6 body, serves scripted §4 poll bodies and the finished mp4 from its own
URL (no auth). Tests script it (`script_next_job`, `fail_next`) and inspect what it received
(`jobs`, `requests`). Use the `fake_provider` fixture, or start one by hand.

Result links (set through `script_next_job`, or on a `FakeJob` before it completes):

* `trickle_every=N` (seconds, real time) serves the video `trickle_bytes` at a time with a pause
  of N seconds after each chunk, Content-Length announced up front: a download that hangs.
* `redirect_hops=n` hands out a link that redirects n times on this server before the video;
  `redirect_to=URL` makes the file URL answer `redirect_status` (302) to URL instead, e.g. to an
  `OutsideServer` (a stand-in for a metadata endpoint or another internal service).
* `result_url=URL` hands out any link verbatim; `padded_video_url(job, length)` builds a link of
  exactly `length` characters that this server still serves (a long signed-CDN-style URL).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import secrets
import string
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pytest
from aiohttp import web
from PIL import Image, UnidentifiedImageError

GENERATIONS_PATH = "/v2/video/generations"

# §6 default messages.
DEFAULT_MESSAGES: dict[int, str] = {
    400: "Body validation error!",
    401: (
        "This request requires a valid API key. You can create a new API key on the Billing "
        "page: https://aimlapi.com/app/keys"
    ),
    403: (
        "You've run out of credits. Please top up your balance or update your payment method "
        "to continue: https://aimlapi.com/app/billing/"
    ),
    404: "Not Found",
    413: "Request Entity Too Large",
    429: "Too Many Requests",
    500: "Internal server error",
    502: "Bad Gateway",
    503: "Service unavailable",
    504: "Generation timeout",
}

# §2: per Sora model: image required?, allowed resolutions, default resolution.
SORA_MODELS: dict[str, tuple[bool, tuple[str, ...], str]] = {
    "openai/sora-2-t2v": (False, ("720p",), "720p"),
    "openai/sora-2-i2v": (True, ("720p",), "720p"),
    "openai/sora-2-pro-t2v": (False, ("720p", "1080p"), "1080p"),
    "openai/sora-2-pro-i2v": (True, ("720p", "1080p"), "1080p"),
}
ASPECT_RATIOS = ("16:9", "9:16")
DURATIONS = (4, 8, 12)
# §2 preset table: the input image must match exactly.
PRESET_SIZES: dict[tuple[str, str], tuple[int, int]] = {
    ("720p", "16:9"): (1280, 720),
    ("720p", "9:16"): (720, 1280),
    ("1080p", "16:9"): (1792, 1024),
    ("1080p", "9:16"): (1024, 1792),
}
SORA_FIELDS = frozenset({"model", "prompt", "image_url", "resolution", "aspect_ratio", "duration"})
SIZE_MISMATCH = "Inpaint image must match the requested width and height"
DEFAULT_SCRIPT: tuple[str, ...] = ("queued", "generating", "completed")
DEFAULT_ERROR: dict[str, Any] = {
    "name": "GenerationError",
    "message": "The video could not be made",
}


def tiny_mp4(extra: int = 0) -> bytes:
    """Bytes that look like an mp4 (an ftyp box, then padding); not a playable file."""
    ftyp = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
    payload = b"fake video payload " * 8 + b"\x00" * extra
    free = (8 + len(payload)).to_bytes(4, "big") + b"free" + payload
    return ftyp + free


ScriptEntry = str | dict[str, Any]
VideoShape = Literal["object", "array", "string"]
FaultTarget = Literal["POST", "GET", "VIDEO"]


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    """Decoded query parameters."""
    raw_query: str
    """The query string exactly as sent (to check URL-encoding)."""
    headers: dict[str, str]
    """Every header except Authorization (its value is never stored)."""
    authorization: bool
    """Whether an Authorization header was sent at all."""
    json: Any
    time: float
    finished: float | None = None
    """When the answer was ready (None: still being handled, or dropped)."""


@dataclass
class FakeJob:
    id: str
    model: str
    body: dict[str, Any]
    """The body as received, unknown fields included."""
    unknown_fields: list[str]
    statuses: list[ScriptEntry]
    video: bytes
    video_shape: VideoShape
    error: dict[str, Any] | None
    created_at: float
    file_token: str
    served: list[str] = field(default_factory=list)
    """The status of every poll answer, in order."""
    polls: int = 0
    url_served_at: float | None = None
    cursor: int = 0
    complete_after: float | None = None
    """Seconds after creation before "completed" may be served (None: the global setting)."""
    result_url: str | None = None
    """Handed out verbatim as the video link instead of this server's own (any URL)."""
    redirect_hops: int = 0
    """The handed-out link redirects this many times on this server before the file."""
    redirect_to: str | None = None
    """The file URL answers `redirect_status` with this Location instead of the video."""
    redirect_status: int = 302
    trickle_every: float | None = None
    """Real seconds between chunks of the video (None: send it at once)."""
    trickle_bytes: int = 1


@dataclass
class _Script:
    statuses: list[ScriptEntry]
    video: bytes | None
    error: dict[str, Any] | None
    video_shape: VideoShape
    post_body: Callable[[str], dict[str, Any]] | None
    complete_after: float | None = None
    link: dict[str, Any] = field(default_factory=dict)
    """FakeJob result-link fields (result_url, redirect_*, trickle_*)."""


@dataclass
class _Fault:
    status: int | None
    message: str | None
    body: dict[str, Any] | str | None
    drop_connection: bool
    delay: float


class _Invalid(Exception):
    def __init__(self, detail: str, *, prefix: bool = True) -> None:
        super().__init__(detail)
        self.message = f"Body validation error!\n{detail}" if prefix else detail


class FakeProvider:
    def __init__(
        self,
        *,
        api_key: str = "test-key",
        post_status: int = 200,
        check_image_size: bool = True,
        image_check_mode: Literal["sync", "async"] = "sync",
        max_body_bytes: int = 25 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Injectable so simulations on a fake clock see jobs finish in simulated time.
        self.clock = clock
        self.api_key = api_key
        self.post_status = post_status
        self.check_image_size = check_image_size
        # §9: a size mismatch can be a 400 on POST ("sync") or a later status:"error" ("async").
        self.image_check_mode = image_check_mode
        self.max_body_bytes = max_body_bytes
        self.video_ttl: float | None = None
        # False: serve videos chunked, without Content-Length (to test mid-stream limits).
        self.video_content_length = True
        self.jobs: dict[str, FakeJob] = {}
        self.requests: list[RecordedRequest] = []
        # Seconds each poll (GET) takes to answer, so polls of one job by two clients at the
        # same moment show as overlapping [time, finished] intervals.
        self.poll_latency = 0.0
        self._completion_time: float | None = None
        self._scripts: deque[_Script] = deque()
        self._faults: dict[FaultTarget, deque[_Fault]] = {
            "POST": deque(),
            "GET": deque(),
            "VIDEO": deque(),
        }
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self, *, port: int = 0) -> None:
        app = web.Application(client_max_size=self.max_body_bytes * 2)
        app.router.add_post(GENERATIONS_PATH, self._handle_post)
        app.router.add_get(GENERATIONS_PATH, self._handle_get)
        app.router.add_get("/files/{name}", self._handle_video)
        app.router.add_get("/hop/{hops:\\d+}/{name}", self._handle_hop)
        # A short shutdown timeout: delayed handlers must not hold up test teardown.
        runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        self._runner = runner
        host, bound_port = runner.addresses[0][:2]
        self.base_url = f"http://{host}:{bound_port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- scripting -----------------------------------------------------------------------------

    def script_next_job(
        self,
        statuses: list[ScriptEntry],
        *,
        video: bytes | None = None,
        error: dict[str, Any] | None = None,
        video_shape: VideoShape = "object",
        post_body: Callable[[str], dict[str, Any]] | None = None,
        complete_after: float | None = None,
        result_url: str | None = None,
        redirect_hops: int = 0,
        redirect_to: str | None = None,
        redirect_status: int = 302,
        trickle_every: float | None = None,
        trickle_bytes: int = 1,
    ) -> None:
        """The next created job answers polls with `statuses`, one per GET (the last repeats).

        Entries are status strings or whole body dicts (sent verbatim). `post_body(job_id)`
        replaces the POST answer (e.g. an already terminal status, or `generation_id`).
        `complete_after` holds "completed" back until that many seconds (on `clock`) after
        creation. The link options are described in the module doc and on FakeJob.
        """
        if not statuses:
            raise ValueError("statuses must not be empty")
        if trickle_bytes < 1 or redirect_hops < 0:
            raise ValueError("trickle_bytes must be positive and redirect_hops not negative")
        link = {
            "result_url": result_url,
            "redirect_hops": redirect_hops,
            "redirect_to": redirect_to,
            "redirect_status": redirect_status,
            "trickle_every": trickle_every,
            "trickle_bytes": trickle_bytes,
        }
        self._scripts.append(
            _Script(list(statuses), video, error, video_shape, post_body, complete_after, link)
        )

    def fail_next(
        self,
        method: FaultTarget,
        *,
        status: int | None = None,
        count: int = 1,
        message: str | None = None,
        body: dict[str, Any] | str | None = None,
        drop_connection: bool = False,
        delay: float = 0.0,
    ) -> None:
        """Inject faults into the next `count` requests of `method`.

        With `status`, answer it with the §6 body (`message` or the default text), or with
        `body` instead (a dict as JSON, a str verbatim as HTML). With `drop_connection`, close the
        connection without an answer: before doing anything when `status` is given, or after
        handling the request normally when it is not (the POST case: the job exists but its
        answer is lost). `delay` waits first (for client time-outs).
        """
        if status is None and not drop_connection and delay <= 0:
            raise ValueError("give a status, drop_connection or a delay")
        for _ in range(count):
            self._faults[method].append(_Fault(status, message, body, drop_connection, delay))

    def set_completion_time(self, seconds: float | None) -> None:
        """Jobs complete only `seconds` after creation; until then they read "generating"."""
        self._completion_time = seconds

    # --- observation helpers -------------------------------------------------------------------

    def count(self, method: str, path_prefix: str = GENERATIONS_PATH) -> int:
        return sum(
            1 for r in self.requests if r.method == method and r.path.startswith(path_prefix)
        )

    @property
    def video_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.startswith("/files/")]

    def video_url(self, job: FakeJob) -> str:
        """The link a completed poll hands out for `job` (see the module doc)."""
        if job.result_url is not None:
            return job.result_url
        if job.redirect_hops > 0:
            return f"{self.base_url}/hop/{job.redirect_hops}/{job.file_token}.mp4"
        return self.file_url(job)

    def file_url(self, job: FakeJob) -> str:
        """Where the job's bytes are served (or, with `redirect_to`, redirected from)."""
        return f"{self.base_url}/files/{job.file_token}.mp4"

    def padded_video_url(self, job: FakeJob, length: int) -> str:
        """A link to the job's file of exactly `length` characters (a long query string, which
        the file route ignores), for `result_url`."""
        plain = self.file_url(job) + "?sig="
        if length < len(plain) + 1:
            raise ValueError(f"length must be at least {len(plain) + 1}")
        return plain + "a" * (length - len(plain))

    # --- handlers ------------------------------------------------------------------------------

    async def _handle_post(self, request: web.Request) -> web.StreamResponse:
        raw, too_large = await self._read_limited(request)
        parsed: Any = None
        if not too_large:
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = None
        self._record(request, parsed)
        fault = await self._take_fault("POST")
        if fault is not None and fault.status is not None:
            return await self._fault_response(request, fault)
        response = self._create(request, raw, parsed, too_large)
        if fault is not None and fault.drop_connection:
            return self._drop(request)
        return response

    def _create(
        self, request: web.Request, raw: bytes, parsed: Any, too_large: bool
    ) -> web.StreamResponse:
        if not self._authorized(request):
            return self._error(request, 401)
        if too_large:
            return self._error(request, 413)
        if not raw:
            return self._error(request, 400, "Body validation error!\nRequired")
        if not isinstance(parsed, dict):
            return self._error(request, 400, "Body validation error!\nExpected object")
        try:
            model, unknown, mismatch = self._validate(parsed)
        except _Invalid as exc:
            return self._error(request, 400, exc.message)
        script = self._scripts.popleft() if self._scripts else None
        statuses: list[ScriptEntry] = list(script.statuses) if script else list(DEFAULT_SCRIPT)
        error = script.error if script else None
        if mismatch and self.image_check_mode == "async":
            statuses = ["queued", "error"]
            error = {"name": "GenerationError", "message": SIZE_MISMATCH}
        job = FakeJob(
            id=f"video_{secrets.token_hex(24)}:{model}",
            model=model,
            body=parsed,
            unknown_fields=unknown,
            statuses=statuses,
            video=script.video if script and script.video is not None else tiny_mp4(),
            video_shape=script.video_shape if script else "object",
            error=error,
            created_at=self.clock(),
            file_token=secrets.token_hex(8),
            complete_after=script.complete_after if script else None,
            **(script.link if script else {}),
        )
        self.jobs[job.id] = job
        body = script.post_body(job.id) if script and script.post_body else None
        if body is None:
            body = {"id": job.id, "status": "queued"}
        return web.json_response(body, status=self.post_status)

    async def _handle_get(self, request: web.Request) -> web.StreamResponse:
        recorded = self._record(request, None)
        fault = await self._take_fault("GET")
        if fault is not None and fault.status is not None:
            return await self._fault_response(request, fault)
        if self.poll_latency > 0:
            await asyncio.sleep(self.poll_latency)
        response = self._poll(request)
        recorded.finished = self.clock()
        if fault is not None and fault.drop_connection:
            return self._drop(request)
        return response

    def _poll(self, request: web.Request) -> web.StreamResponse:
        # GET needs no Content-Type (§1); only the key and the id matter.
        if not self._authorized(request):
            return self._error(request, 401)
        generation_id = request.query.get("generation_id", "")  # already URL-decoded
        if not generation_id:
            return self._error(request, 400, "Query validation error!\ngeneration_id: Required")
        job = self.jobs.get(generation_id)
        if job is None:
            return self._error(request, 404, "Generation not found")
        return web.json_response(self._next_body(job))

    def _next_body(self, job: FakeJob) -> dict[str, Any]:
        job.polls += 1
        entry = job.statuses[min(job.cursor, len(job.statuses) - 1)]
        status = entry if isinstance(entry, str) else str(entry.get("status"))
        elapsed = self.clock() - job.created_at
        hold = job.complete_after if job.complete_after is not None else self._completion_time
        if status == "completed" and hold is not None and elapsed < hold:
            # Not time yet: stay pending and do not advance the script.
            job.served.append("generating")
            return {"id": job.id, "status": "generating"}
        job.cursor += 1
        job.served.append(status)
        if isinstance(entry, dict):
            return dict(entry)
        body: dict[str, Any] = {"id": job.id, "status": status}
        if status == "completed":
            url = self.video_url(job)
            if job.url_served_at is None:
                job.url_served_at = self.clock()
            shaped: Any = {"url": url}
            if job.video_shape == "array":
                shaped = [{"url": url}]
            elif job.video_shape == "string":
                shaped = url
            body["video"] = shaped
        elif status in ("error", "failed"):
            body["video"] = None
            body["error"] = job.error if job.error is not None else dict(DEFAULT_ERROR)
        return body

    async def _handle_video(self, request: web.Request) -> web.StreamResponse:
        self._record(request, None)
        fault = await self._take_fault("VIDEO")
        if fault is not None and fault.status is not None:
            return await self._fault_response(request, fault)
        name = request.match_info["name"]
        job = next((j for j in self.jobs.values() if f"{j.file_token}.mp4" == name), None)
        if job is None:
            return web.Response(status=404, text="NoSuchKey")
        if self.video_ttl is not None:
            served_at = job.url_served_at if job.url_served_at is not None else job.created_at
            if self.clock() - served_at > self.video_ttl:
                # Like a signed CDN link past its expiry.
                return web.Response(status=403, text="AccessDenied: Request has expired")
        if job.redirect_to is not None:
            raise _redirect(job.redirect_status, job.redirect_to)
        if fault is not None and fault.drop_connection:
            return await self._drop_mid_stream(request, job.video)
        if job.trickle_every is not None:
            return await self._trickle(request, job)
        if self.video_content_length:
            return web.Response(body=job.video, content_type="video/mp4")
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(job.video), 16 * 1024):
            await response.write(job.video[start : start + 16 * 1024])
        await response.write_eof()
        return response

    async def _handle_hop(self, request: web.Request) -> web.StreamResponse:
        self._record(request, None)
        hops = int(request.match_info["hops"])
        name = request.match_info["name"]
        job = next((j for j in self.jobs.values() if f"{j.file_token}.mp4" == name), None)
        if job is None:
            return web.Response(status=404, text="NoSuchKey")
        # Relative Locations, as CDNs often send them.
        target = f"/hop/{hops - 1}/{name}" if hops > 1 else f"/files/{name}"
        raise _redirect(job.redirect_status, target)

    async def _trickle(self, request: web.Request, job: FakeJob) -> web.StreamResponse:
        """A CDN that stalls: the whole length is announced, the bytes come very slowly."""
        assert job.trickle_every is not None
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.content_length = len(job.video)
        await response.prepare(request)
        try:
            for start in range(0, len(job.video), job.trickle_bytes):
                await response.write(job.video[start : start + job.trickle_bytes])
                await asyncio.sleep(job.trickle_every)
            await response.write_eof()
        except ConnectionError:
            pass  # the client gave up, which is what a trickle test wants to see
        return response

    # --- validation (§2) -----------------------------------------------------------------------

    def _validate(self, body: dict[str, Any]) -> tuple[str, list[str], bool]:
        """Return (model, unknown field names, image size mismatch) or raise _Invalid."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _Invalid("model: Required")
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise _Invalid(_type_error("prompt", "string", prompt))
        if model not in SORA_MODELS:
            # Other catalogue models: the generic documented shape only.
            for field_name in ("image_url", "last_image_url", "tail_image_url"):
                if body.get(field_name) is not None:
                    _check_uri(body[field_name])
            generic = (*SORA_FIELDS, "last_image_url")
            return model, sorted(k for k in body if k not in generic), False
        needs_image, resolutions, default_resolution = SORA_MODELS[model]
        known = set(SORA_FIELDS) if needs_image else set(SORA_FIELDS) - {"image_url"}
        unknown = sorted(k for k in body if k not in known)
        resolution = body.get("resolution", default_resolution)
        _check_enum("resolution", resolution, resolutions)
        aspect = body.get("aspect_ratio", "16:9")
        _check_enum("aspect_ratio", aspect, ASPECT_RATIOS)
        duration = body.get("duration", 4)
        if not isinstance(duration, int) or isinstance(duration, bool):
            raise _Invalid(_type_error("duration", "number", duration))
        if duration not in DURATIONS:
            raise _Invalid(
                f'Invalid enum value. Expected 4 | 8 | 12, received {duration} at "duration"'
            )
        if not needs_image:
            return model, unknown, False
        image = body.get("image_url")
        if image is None:
            raise _Invalid('Required at "image_url"')
        _check_uri(image)
        mismatch = False
        if self.check_image_size and isinstance(image, str) and image.startswith("data:"):
            size = _data_uri_size(image)
            mismatch = size != PRESET_SIZES[(str(resolution), str(aspect))]
            if mismatch and self.image_check_mode == "sync":
                raise _Invalid(SIZE_MISMATCH, prefix=False)
        return model, unknown, mismatch

    # --- plumbing ------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _read_limited(self, request: web.Request) -> tuple[bytes, bool]:
        """Read the body, noting (but draining) anything past max_body_bytes."""
        chunks: list[bytes] = []
        total = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            total += len(chunk)
            if total <= self.max_body_bytes:
                chunks.append(chunk)
        # Draining the rest lets the client finish sending and actually read the 413.
        return b"".join(chunks), total > self.max_body_bytes

    def _record(self, request: web.Request, parsed: Any) -> RecordedRequest:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            raw_query=request.raw_path.partition("?")[2],
            headers=headers,
            authorization="Authorization" in request.headers,
            json=parsed,
            time=self.clock(),
        )
        self.requests.append(recorded)
        return recorded

    async def _take_fault(self, method: FaultTarget) -> _Fault | None:
        queue = self._faults[method]
        if not queue:
            return None
        fault = queue.popleft()
        if fault.delay > 0:
            await asyncio.sleep(fault.delay)
        return fault

    async def _fault_response(self, request: web.Request, fault: _Fault) -> web.StreamResponse:
        assert fault.status is not None
        if fault.drop_connection:
            return self._drop(request)
        if isinstance(fault.body, str):
            return web.Response(status=fault.status, text=fault.body, content_type="text/html")
        if isinstance(fault.body, dict):
            return web.json_response(fault.body, status=fault.status)
        return self._error(request, fault.status, fault.message)

    def _error(self, request: web.Request, status: int, message: str | None = None) -> web.Response:
        """The §6 error body."""
        text = message if message is not None else DEFAULT_MESSAGES.get(status, "Error")
        body = {
            "requestId": _nanoid(),
            "statusCode": status,
            "timestamp": datetime.now(UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "path": request.path,
            "message": text,
        }
        return web.json_response(body, status=status)

    def _drop(self, request: web.Request) -> web.StreamResponse:
        # Close the socket without a byte of answer; the client sees a server disconnect.
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=204)

    async def _drop_mid_stream(self, request: web.Request, video: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.content_length = len(video)
        await response.prepare(request)
        await response.write(video[: len(video) // 2])
        await asyncio.sleep(0.01)
        if request.transport is not None:
            request.transport.abort()
        return response


def _redirect(status: int, location: str) -> web.HTTPException:
    kinds: dict[int, type[web.HTTPMove]] = {
        301: web.HTTPMovedPermanently,
        302: web.HTTPFound,
        303: web.HTTPSeeOther,
        307: web.HTTPTemporaryRedirect,
        308: web.HTTPPermanentRedirect,
    }
    return kinds[status](location=location)


class OutsideServer:
    """A server on 127.0.0.1 that is NOT the provider: a cloud metadata endpoint, an admin
    page, another internal service. It answers every GET with 200 and mp4-looking bytes, so a
    client that wrongly follows a link here would visibly succeed; `requests` lists the paths
    it was asked for (it must stay empty)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.path_qs)
        return web.Response(body=tiny_mp4(), content_type="video/mp4")


def _type_error(name: str, expected: str, value: object) -> str:
    received = "undefined" if value is None else _js_type(value)
    return f'Expected {expected}, received {received} at "{name}"'


def _js_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _check_enum(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        expected = " | ".join(f"'{a}'" for a in allowed)
        raise _Invalid(f"Invalid enum value. Expected {expected}, received '{value}' at \"{name}\"")


def _check_uri(value: object) -> None:
    if not isinstance(value, str):
        raise _Invalid(_type_error("image_url", "string", value))
    if not value.startswith(("http://", "https://", "data:")):
        raise _Invalid('Invalid url at "image_url"')


def _data_uri_size(uri: str) -> tuple[int, int]:
    header, sep, payload = uri.partition(",")
    if not sep or not header.endswith(";base64"):
        raise _Invalid('Invalid base64 image at "image_url"')
    try:
        raw = base64.b64decode(payload, validate=True)
        with Image.open(io.BytesIO(raw)) as image:
            return image.size
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        raise _Invalid('Could not decode the image at "image_url"') from None


_ALPHABET = string.ascii_letters + string.digits


def _nanoid() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(21))


# Named through `name=` so a test module can import it without its parameters shadowing the
# import; as a plugin (pytest_plugins = ["tests.fake_provider"]) it is `fake_provider` too.
@pytest.fixture(name="fake_provider")
async def fake_provider_fixture() -> AsyncIterator[FakeProvider]:
    """A started FakeProvider with the default key "test-key"; closed after the test."""
    fake = FakeProvider()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()
