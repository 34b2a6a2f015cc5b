"""Client for the AI/ML API video endpoints (contract: docs/aiml-contract.md).

Three calls: `submit` (POST /v2/video/generations), `fetch` (GET ...?generation_id=) and
`download` (GET the public video link). Every HTTP or transport problem becomes a typed
`ProviderError` from bot.errors carrying the provider's own message (§6), so callers never see
aiohttp exceptions, KeyError or JSONDecodeError.

Retry rules, and why:

* `fetch` and `download` are reads: repeating them is harmless. They retry HTTP 429, every 5xx
  (a 504 on a poll is a gateway hiccup, not the generation timing out) and transport failures
  (connection refused/reset/dropped, time-outs, truncated bodies) with exponential backoff and
  full jitter, `RetryPolicy.attempts` tries in total, then raise ProviderRateLimited,
  ProviderServerError or ProviderUnavailable. 400/401/403/404 are answers, not accidents, and are
  never retried.
* `submit` costs money: a retry must never be able to create a second paid job. It retries only
  when the provider certainly created nothing: the connection could not be established
  (ClientConnectorError / ConnectionTimeoutError: no byte of the request was sent) or HTTP 429
  (rejected before a job exists). A 5xx, a read time-out or a connection dropped after the body
  was sent may hide a created job, so those raise at once. A 504 on submit is the provider's
  "Generation timeout" and becomes ProviderTimeout.

The API key is sent only to `base_url`, never to the video link (a public CDN URL), and is
scrubbed from any provider text before it reaches an exception or a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
import random as _random
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, NoReturn, TypeVar

import aiohttp

from bot.config import Secret
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

log = logging.getLogger(__name__)

T = TypeVar("T")

GENERATIONS_PATH = "/v2/video/generations"

GenerationKind = Literal["pending", "completed", "failed"]

# §5: legacy and upstream (OpenAI) names count as pending too; the order is not monotonic.
PENDING_STATUSES = frozenset(
    {"queued", "generating", "waiting", "active", "processing", "in_progress"}
)
FAILED_STATUSES = frozenset({"error", "failed"})

_ERROR_TEXT_LIMIT = 300
_MESSAGE_LIMIT = 1000
_LOG_BODY_LIMIT = 200
_CHUNK_SIZE = 64 * 1024
_GENERIC_MESSAGE = "the video service returned no error message"


@dataclass(frozen=True)
class GenerationState:
    """One snapshot of a generation job, as the POST or GET response described it."""

    id: str
    status: str
    """The raw status string, for logs and the job record."""
    kind: GenerationKind
    video_url: str | None
    error: str | None
    """Why the job failed (only when kind == "failed")."""
    usd_spent: float | None


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    """Total tries for one call (the first try included)."""
    base_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, retry_index: int, draw: float) -> float:
        """Full jitter: uniform(0, min(max_delay, base_delay * 2**n)) spreads out clients
        that failed together, so they do not all come back at the same instant."""
        # The exponent is capped so a long retry budget cannot overflow the float.
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(retry_index, 60))
        return max(0.0, draw) * ceiling


@dataclass(frozen=True)
class DownloadedVideo:
    path: pathlib.Path
    size: int
    content_type: str | None


@dataclass(frozen=True)
class _Reply:
    status: int
    text: str


class _Retry(Exception):
    """Internal: this attempt failed in a way that is safe to repeat."""

    def __init__(self, error: ProviderError, reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason


class ProviderClient:
    """Talks to the AI/ML API. `sleep` and `random` are injectable so tests never wait."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: Secret,
        retry: RetryPolicy = RetryPolicy(),  # frozen, so one shared default is safe
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if retry.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._retry = retry
        self._sleep = sleep
        self._random = random

    def __repr__(self) -> str:
        return f"ProviderClient(base_url={self._base_url!r})"

    @property
    def _endpoint(self) -> str:
        return self._base_url + GENERATIONS_PATH

    def _api_headers(self) -> dict[str, str]:
        # Built per request so the revealed key never sits in a long-lived attribute.
        return {"Authorization": f"Bearer {self._api_key.reveal()}", "Accept": "application/json"}

    # --- submit --------------------------------------------------------------------------------

    async def submit(self, body: dict[str, Any]) -> GenerationState:
        """Create a generation. Retries only where no job can have been created (module doc)."""
        model = body.get("model")
        attempts = self._retry.attempts
        for attempt in range(attempts):
            try:
                async with self._session.post(
                    self._endpoint, json=body, headers=self._api_headers()
                ) as resp:
                    reply = _Reply(resp.status, await _read_text(resp))
            except aiohttp.ClientConnectorCertificateError as exc:
                # A certificate problem will not fix itself in a second.
                raise ProviderUnavailable(f"TLS certificate rejected: {exc}") from exc
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # The connection never opened, so nothing was sent and no job exists.
                error = ProviderUnavailable(f"could not connect to the video service: {exc}")
                if attempt + 1 >= attempts:
                    raise error from exc
                await self._backoff("POST", attempt, f"connect failed ({type(exc).__name__})")
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                # The request may have reached the provider: the job may exist. Never resend.
                raise ProviderUnavailable(
                    f"the connection failed after the request was sent ({_describe(exc)}); "
                    "the job may or may not exist, so it was not resubmitted"
                ) from exc
            if reply.status == 429 and attempt + 1 < attempts:
                # A 429 is decided before any job is created, so trying again costs nothing.
                await self._backoff("POST", attempt, "HTTP 429")
                continue
            if 200 <= reply.status < 300:
                state = self._parse_created(reply)
                log.info(
                    "provider: submitted %s as %s (status %s, HTTP %s)",
                    model,
                    state.id,
                    state.status,
                    reply.status,
                )
                return state
            self._log_reply("POST", reply)
            raise self._http_error(reply, operation="submit")
        raise AssertionError("unreachable")  # pragma: no cover

    def _parse_created(self, reply: _Reply) -> GenerationState:
        data = _json_or_none(reply.text)
        if not isinstance(data, dict):
            self._log_reply("POST", reply)
            raise ProviderError(
                "the video service accepted the request but its answer was not a JSON object",
                status=reply.status,
            )
        generation_id = _nonempty_str(data.get("id")) or _nonempty_str(data.get("generation_id"))
        if generation_id is None:
            self._log_reply("POST", reply)
            code = _status_code_in_body(data)
            if code is not None and code >= 400:
                # An error body behind a 2xx status: honour the code it carries.
                raise self._http_error(_Reply(code, reply.text), operation="submit")
            raise ProviderError(
                "the video service accepted the request but returned no generation id",
                status=reply.status,
            )
        if data.get("status") is None:
            # The job exists (it has an id); assume it is queued and let polling tell the truth.
            data = {**data, "status": "queued"}
        return parse_generation(data, generation_id=generation_id)

    # --- fetch ---------------------------------------------------------------------------------

    async def fetch(self, generation_id: str) -> GenerationState:
        """Poll one generation. Safe to repeat, so transient failures are retried."""

        async def attempt() -> GenerationState:
            reply = await self._get_reply(generation_id)
            if _retryable_status(reply.status):
                self._log_reply("GET", reply)
                raise _Retry(self._http_error(reply, operation="poll"), f"HTTP {reply.status}")
            if not 200 <= reply.status < 300:
                self._log_reply("GET", reply)
                raise self._http_error(reply, operation="poll")
            data = _json_or_none(reply.text)
            if not isinstance(data, dict) or _nonempty_str(data.get("status")) is None:
                self._log_reply("GET", reply)
                # The job probably still exists; a garbled answer is the provider's fault.
                raise ProviderServerError(
                    "the video service returned a status response without a readable status",
                    status=reply.status,
                )
            return parse_generation(data, generation_id=generation_id)

        state = await self._with_retries("GET", attempt)
        log.debug("provider: %s is %s (%s)", state.id, state.status, state.kind)
        return state

    async def _get_reply(self, generation_id: str) -> _Reply:
        try:
            async with self._session.get(
                self._endpoint,
                params={"generation_id": generation_id},  # aiohttp URL-encodes the ':' in ids
                headers=self._api_headers(),
            ) as resp:
                return _Reply(resp.status, await _read_text(resp))
        except aiohttp.ClientError as exc:
            _raise_transport(exc)
        except TimeoutError as exc:
            _raise_transport(exc)

    # --- download ------------------------------------------------------------------------------

    async def download(
        self, url: str, dest_dir: pathlib.Path, *, max_bytes: int
    ) -> DownloadedVideo:
        """Stream the video into a new file in `dest_dir`.

        No Authorization header: the link is public, and the key must never reach a CDN.
        Raises VideoTooLarge (and leaves no file behind) past `max_bytes`, checking
        Content-Length first so an oversized file is refused without reading it.
        """

        async def attempt() -> DownloadedVideo:
            return await self._download_once(url, dest_dir, max_bytes=max_bytes)

        video = await self._with_retries("VIDEO", attempt)
        log.info("provider: downloaded %d bytes (%s)", video.size, video.content_type)
        return video

    async def _download_once(
        self, url: str, dest_dir: pathlib.Path, *, max_bytes: int
    ) -> DownloadedVideo:
        try:
            async with self._session.get(url, headers={"Accept": "video/*, */*"}) as resp:
                if _retryable_status(resp.status) or not 200 <= resp.status < 300:
                    reply = _Reply(resp.status, await _read_text(resp, limit=4096))
                    self._log_reply("VIDEO", reply)
                    error = self._download_error(reply)
                    if _retryable_status(resp.status):
                        raise _Retry(error, f"HTTP {resp.status}")
                    raise error
                declared = resp.content_length
                if declared is not None and declared > max_bytes:
                    log.info("provider: video declares %d bytes, limit %d", declared, max_bytes)
                    raise VideoTooLarge(max_bytes)
                return await _stream_to_file(resp, dest_dir, max_bytes=max_bytes)
        except aiohttp.InvalidURL as exc:
            raise ProviderError(f"the video link is not a valid URL: {exc}") from exc
        except aiohttp.ClientError as exc:
            _raise_transport(exc)
        except TimeoutError as exc:
            _raise_transport(exc)

    def _download_error(self, reply: _Reply) -> ProviderError:
        message = self._message(reply.text)
        if reply.status == 429:
            return ProviderRateLimited(message, status=429)
        if reply.status >= 500:
            return ProviderServerError(message, status=reply.status)
        if reply.status in (403, 404, 410):
            # CDNs answer an expired link with 403 or 404; it is gone either way.
            return ProviderNotFound(
                f"the video link has expired or does not exist: {message}", status=reply.status
            )
        return ProviderError(f"the video link could not be fetched: {message}", status=reply.status)

    # --- shared machinery ----------------------------------------------------------------------

    async def _with_retries(self, label: str, call: Callable[[], Awaitable[T]]) -> T:
        attempts = self._retry.attempts
        for attempt in range(attempts):
            try:
                return await call()
            except _Retry as retry:
                if attempt + 1 >= attempts:
                    log.warning(
                        "provider: %s failed after %d attempts (%s)", label, attempts, retry.reason
                    )
                    raise retry.error from retry.__cause__
                await self._backoff(label, attempt, retry.reason)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _backoff(self, label: str, attempt: int, reason: str) -> None:
        delay = self._retry.delay(attempt, self._random())
        log.warning(
            "provider: %s attempt %d/%d failed (%s); retrying in %.2f s",
            label,
            attempt + 1,
            self._retry.attempts,
            reason,
            delay,
        )
        await self._sleep(delay)

    def _message(self, text: str) -> str:
        return _redact(provider_message(text), self._api_key)

    def _http_error(self, reply: _Reply, *, operation: Literal["submit", "poll"]) -> ProviderError:
        """The typed error for a non-2xx API answer, carrying the provider's message (§6)."""
        status = reply.status
        message = self._message(reply.text)
        if status in (400, 422):
            return ProviderValidationError(message, status=status)
        if status == 413:
            return ProviderValidationError(
                f"image too large for the provider ({message})", status=status
            )
        if status == 401:
            return ProviderAuthError(message, status=status)
        if status == 403:
            return ProviderCreditsError(message, status=status)
        if status == 404:
            return ProviderNotFound(message, status=status)
        if status == 429:
            return ProviderRateLimited(message, status=status)
        if status == 504 and operation == "submit":
            return ProviderTimeout(message, status=status)
        if status >= 500:
            return ProviderServerError(message, status=status)
        return ProviderError(message, status=status)

    def _log_reply(self, label: str, reply: _Reply) -> None:
        # Clipped and scrubbed: bodies can be long HTML pages, and never carry secrets to logs.
        log.warning(
            "provider: %s answered HTTP %s: %s",
            label,
            reply.status,
            _redact(_clip(reply.text, _LOG_BODY_LIMIT), self._api_key),
        )


# --- parsing (pure functions, also used by tests) -----------------------------------------------


def parse_generation(data: Mapping[str, Any], *, generation_id: str) -> GenerationState:
    """Turn a §4 body into a GenerationState; tolerant of every shape the contract lists."""
    job_id = _nonempty_str(data.get("id")) or _nonempty_str(data.get("generation_id"))
    raw_status = data.get("status")
    status = raw_status if isinstance(raw_status, str) else str(raw_status)
    video_url = _video_url(data.get("video"))
    usd = _usd_spent(data.get("meta"))
    normalized = status.strip().lower()
    kind: GenerationKind
    error: str | None = None
    if normalized in PENDING_STATUSES:
        kind = "pending"
    elif normalized == "completed" and video_url is not None:
        kind = "completed"
    elif normalized == "completed":
        kind, error = "failed", "the video service finished without a video"
    elif normalized in FAILED_STATUSES:
        kind = "failed"
        error = _failure_reason(data.get("error")) or f"the video service reported '{status}'"
    else:
        kind = "failed"
        error = f"unexpected status {status!r} from the video service"
        detail = _failure_reason(data.get("error"))
        if detail:
            error = f"{error}: {detail}"
    return GenerationState(
        id=job_id or generation_id,
        status=status,
        kind=kind,
        video_url=video_url if kind == "completed" else None,
        error=error,
        usd_spent=usd,
    )


def provider_message(text: str) -> str:
    """§6: body.message, then body.error.message, then the raw text (clipped), else generic."""
    data = _json_or_none(text)
    if isinstance(data, dict):
        message = _message_value(data.get("message"))
        if message:
            return message
        error = data.get("error")
        if isinstance(error, dict):
            message = _message_value(error.get("message"))
            if message:
                return message
        elif isinstance(error, str) and error.strip():
            return _clip(error, _ERROR_TEXT_LIMIT)
    stripped = text.strip()
    if stripped:
        return _clip(stripped, _ERROR_TEXT_LIMIT)
    return _GENERIC_MESSAGE


def _message_value(value: object) -> str | None:
    text: str | None = None
    if isinstance(value, str) and value.strip():
        text = value.strip()
    # NestJS-style validation answers carry a list of strings.
    elif isinstance(value, list):
        parts = [str(v) for v in value if isinstance(v, str | int | float) and str(v).strip()]
        text = "; ".join(parts) or None
    if text is None:
        return None
    # Kept as written (the 400 detail follows a newline) but bounded: a provider echoing a
    # multi-megabyte data URI must not turn into a multi-megabyte exception or log line.
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"


def _video_url(video: object) -> str | None:
    """§4: `video` may be {url}, [{url}, ...] or a bare string."""
    candidate: object = video
    if isinstance(candidate, list):
        candidate = candidate[0] if candidate else None
    if isinstance(candidate, dict):
        candidate = candidate.get("url")
    url = _nonempty_str(candidate)
    # Only web links are downloadable; anything else counts as "no video".
    if url is None or not url.lower().startswith(("https://", "http://")):
        return None
    return url


def _failure_reason(error: object) -> str | None:
    """§4: error.message, error.detail[0].msg, else the error JSON itself (clipped)."""
    if error is None:
        return None
    if isinstance(error, str):
        return _clip(error, _ERROR_TEXT_LIMIT) if error.strip() else None
    if isinstance(error, dict):
        message = _nonempty_str(error.get("message"))
        if message:
            return _clip(message, _ERROR_TEXT_LIMIT)
        detail = error.get("detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            msg = _nonempty_str(detail[0].get("msg"))
            if msg:
                return _clip(msg, _ERROR_TEXT_LIMIT)
        if isinstance(detail, str) and detail.strip():
            return _clip(detail, _ERROR_TEXT_LIMIT)
    try:
        dumped = json.dumps(error, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        dumped = repr(error)
    if dumped in ("{}", "[]", '""'):
        return None
    return _clip(dumped, _ERROR_TEXT_LIMIT)


def _usd_spent(meta: object) -> float | None:
    if not isinstance(meta, dict):
        return None
    usage = meta.get("usage")
    if not isinstance(usage, dict):
        return None
    value = usage.get("usd_spent")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return None


def _status_code_in_body(data: Mapping[str, Any]) -> int | None:
    """`statusCode` is a number in real bodies but a string in a doc example (§6)."""
    value = data.get("statusCode")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _nonempty_str(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # JSONDecodeError, and odd inputs such as lone surrogates
        return None


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _redact(text: str, key: Secret) -> str:
    # Defence in depth: should a provider ever echo the key, it still goes no further.
    secret = key.reveal()
    return text.replace(secret, "********") if secret else text


def _retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _raise_transport(exc: BaseException) -> NoReturn:
    """Map a transport failure of a read-only call: retry the transient ones."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        raise ProviderUnavailable(f"TLS certificate rejected: {exc}") from exc
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | TimeoutError):
        error = ProviderUnavailable(f"the video service could not be reached ({_describe(exc)})")
        raise _Retry(error, type(exc).__name__) from exc
    raise ProviderError(f"the request to the video service failed ({_describe(exc)})") from exc


async def _read_text(resp: aiohttp.ClientResponse, *, limit: int | None = None) -> str:
    raw = await resp.read() if limit is None else await resp.content.read(limit)
    return raw.decode("utf-8", errors="replace")


async def _stream_to_file(
    resp: aiohttp.ClientResponse, dest_dir: pathlib.Path, *, max_bytes: int
) -> DownloadedVideo:
    handle, path = _open_temp(dest_dir)
    size = 0
    try:
        with handle:
            async for chunk in resp.content.iter_chunked(_CHUNK_SIZE):
                size += len(chunk)
                if size > max_bytes:
                    log.info("provider: video passed the %d byte limit mid-stream", max_bytes)
                    raise VideoTooLarge(max_bytes)
                # A 64 KiB write lands in the page cache in microseconds; a thread hop per
                # chunk would cost more than it saves.
                handle.write(chunk)
    except BaseException:
        # Partial files are useless and may be large: never leave one behind.
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    if size == 0:
        with contextlib.suppress(OSError):
            path.unlink()
        raise ProviderError("the video link returned an empty file", status=resp.status)
    return DownloadedVideo(path=path, size=size, content_type=resp.content_type or None)


def _open_temp(dest_dir: pathlib.Path) -> tuple[BinaryIO, pathlib.Path]:
    fd, name = tempfile.mkstemp(prefix="video-", suffix=".mp4", dir=dest_dir)
    return os.fdopen(fd, "wb"), pathlib.Path(name)
