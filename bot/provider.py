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

The API key is sent only to `base_url`, never to the video link (a public CDN URL). Every text
the provider sends (bodies, statuses, error messages, ids, links) is scrubbed of the key as soon
as it is read, before it is parsed, clipped, stored, logged or shown.

The video link comes from the provider and is not trusted (SSRF): `download` fetches only from
the provider's own hosts (`VideoUrlPolicy`: the AIMLAPI_BASE_URL host plus VIDEO_URL_HOSTS), over
https, follows redirects itself (each hop checked, at most `MAX_REDIRECTS`), connects only to
public addresses (checked on the resolved addresses the connection really uses, so a DNS answer
that changes between check and connect cannot slip through), and keeps the file only when it
starts like an mp4. A local provider (an http://127.0.0.1 base URL, as in the tests) may serve
its own links over http from its own address; nothing else on that machine is reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import json
import logging
import os
import pathlib
import random as _random
import socket
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Concatenate, Literal, NoReturn, ParamSpec, TypeVar

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

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
from bot.i18n import _t
from bot.metrics import NO_METRICS, Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

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
_SCRUBBED = "********"

MAX_REDIRECTS = 5
"""Redirect hops `download` follows from the result link (each one checked) before giving up."""
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_LOCAL_HOST_NAMES = frozenset({"localhost", "localhost.localdomain"})
# Shown to members (via user_message), so it names no host: the log line has the detail.
_REFUSED_MESSAGE = _t("the video link does not point to the video service's own servers")
_MP4_MAGIC = b"ftyp"


class VideoLinkRefused(ProviderError):
    """The result link, or a redirect from it, leads outside the provider's own hosts, over
    plain http, or to a private/loopback address. Nothing was fetched from there; the link
    should not be shown to members either (`ProviderClient.video_url_allowed`)."""


class NotAVideo(ProviderError):
    """The result link served something that does not start like an mp4 (no `ftyp` box)."""


@dataclass(frozen=True)
class VideoUrlPolicy:
    """Which links `download` may fetch. Pure, so it can be tested without a network.

    Allowed: https on port 443 to a host equal to, or under, one of `host_suffixes`; or the
    provider's own origin (scheme, host and port of AIMLAPI_BASE_URL). Plain http only for that
    origin and only when the base URL itself is http. No user:password in links, and never an
    address that is not public, unless the base URL itself is a loopback/private address or
    `localhost` (a local provider, as in the tests) and the link is on that very origin.
    """

    base_scheme: str
    base_host: str
    base_port: int
    host_suffixes: tuple[str, ...]
    local_provider: bool

    @classmethod
    def build(cls, base_url: str, host_suffixes: Iterable[str]) -> VideoUrlPolicy:
        base = URL(base_url)
        host = _normal_host(base.raw_host or "")
        if base.scheme not in ("http", "https") or not host or base.port is None:
            raise ValueError("the provider base URL must be an absolute http(s) URL")
        suffixes = tuple(sorted({_normal_host(h) for h in host_suffixes if _normal_host(h)}))
        address = _ip_or_none(host)
        local = host in _LOCAL_HOST_NAMES or (address is not None and not _is_public(address))
        return cls(base.scheme, host, base.port, suffixes, local)

    def refusal(self, url: URL) -> str | None:
        """Why `url` may not be fetched (words for logs), or None when it may."""
        if not url.absolute or url.scheme not in ("http", "https"):
            return "not an absolute http(s) link"
        if url.user is not None or url.password is not None:
            return "the link carries credentials"
        host = _normal_host(url.raw_host or "")
        port = url.port
        if self.is_provider_origin(url.scheme, host, port):
            return None
        if url.scheme != "https":
            return "plain http outside the provider's own origin"
        if not self._under_suffix(host):
            return f"host {host!r} is not one of the provider's hosts"
        if port != 443:
            return f"port {port} on a CDN host"
        address = _ip_or_none(host)
        if address is not None and not _is_public(address):
            return f"address {address} is not public"
        return None

    def is_provider_origin(self, scheme: str, host: str, port: int | None) -> bool:
        return (scheme, _normal_host(host), port) == (
            self.base_scheme,
            self.base_host,
            self.base_port,
        )

    def trusts_any_address(self, host: str, port: int) -> bool:
        """A local provider's own origin may live on a loopback or private address."""
        return (
            self.local_provider and _normal_host(host) == self.base_host and port == self.base_port
        )

    def _under_suffix(self, host: str) -> bool:
        return any(host == s or host.endswith("." + s) for s in self.host_suffixes)


def _normal_host(host: str) -> str:
    # One trailing dot names the same host; case never matters in DNS.
    return host.strip().lower().rstrip(".").lstrip(".")


def _ip_or_none(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        # ::ffff:127.0.0.1 and 2002:7f00:1:: reach IPv4 addresses; judge those instead.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return _is_public(embedded)
    return address.is_global and not address.is_multicast


class _AddressRefused(OSError):
    """Raised by the guarded resolver; aiohttp wraps OSErrors as ClientConnectorDNSError."""

    def __init__(self, host: str, addresses: list[str]) -> None:
        found = ", ".join(addresses) or "nothing"
        super().__init__(f"{host} resolves to non-public addresses ({found})")
        self.host = host


class _GuardedResolver(AbstractResolver):
    """Checks every address a download is about to connect to.

    aiohttp connects to exactly the addresses its resolver returns, so checking them here (and
    not in a separate look-up before the request) leaves no window for a DNS answer that
    changes in between (DNS rebinding). Links with an IP literal skip resolvers entirely; the
    policy checks those itself.
    """

    def __init__(
        self, inner: AbstractResolver, policy: VideoUrlPolicy, *, owns_inner: bool
    ) -> None:
        self._inner = inner
        self._policy = policy
        self._owns_inner = owns_inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._policy.trusts_any_address(host, port):
            return results
        refused = [r["host"] for r in results if not _public_text(r["host"])]
        if refused or not results:
            # One bad address taints the answer: refuse rather than pick the good ones.
            raise _AddressRefused(host, refused)
        return results

    async def close(self) -> None:
        if self._owns_inner:
            await self._inner.close()


def _public_text(host: str) -> bool:
    address = _ip_or_none(host)
    return address is not None and _is_public(address)


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


def _measured(
    operation: str,
) -> Callable[
    [Callable[Concatenate[ProviderClient, P], Coroutine[Any, Any, T]]],
    Callable[Concatenate[ProviderClient, P], Coroutine[Any, Any, T]],
]:
    """Time a public call (retries included) and count its error class, in `self.metrics`."""

    def wrap(
        method: Callable[Concatenate[ProviderClient, P], Coroutine[Any, Any, T]],
    ) -> Callable[Concatenate[ProviderClient, P], Coroutine[Any, Any, T]]:
        @functools.wraps(method)
        async def measured(self: ProviderClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
            with self.metrics.provider_call(operation):
                return await method(self, *args, **kwargs)

        return measured

    return wrap


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
        video_hosts: Iterable[str] = DEFAULT_VIDEO_URL_HOSTS,
        resolver: Callable[[], AbstractResolver] | None = None,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        """`video_hosts`: host suffixes (besides the base URL's host) that may serve result
        links (VIDEO_URL_HOSTS). `resolver` makes the DNS resolver downloads use (a test seam;
        default: aiohttp's), whose answers are checked before any connection is made."""
        if retry.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._retry = retry
        self._sleep = sleep
        self._random = random
        self._video_policy = VideoUrlPolicy.build(self._base_url, video_hosts)
        self._resolver_factory = resolver
        self.metrics = metrics

    def __repr__(self) -> str:
        return f"ProviderClient(base_url={self._base_url!r})"

    @property
    def _endpoint(self) -> str:
        return self._base_url + GENERATIONS_PATH

    def _api_headers(self) -> dict[str, str]:
        # Built per request so the revealed key never sits in a long-lived attribute.
        return {"Authorization": f"Bearer {self._api_key.reveal()}", "Accept": "application/json"}

    # --- submit --------------------------------------------------------------------------------

    @_measured("submit")
    async def submit(self, body: dict[str, Any]) -> GenerationState:
        """Create a generation. Retries only where no job can have been created (module doc)."""
        model = body.get("model")
        attempts = self._retry.attempts
        for attempt in range(attempts):
            try:
                async with self._session.post(
                    self._endpoint, json=body, headers=self._api_headers()
                ) as resp:
                    reply = _Reply(resp.status, self._scrub(await _read_text(resp)))
            except aiohttp.ClientConnectorCertificateError as exc:
                # A certificate problem will not fix itself in a second.
                raise ProviderUnavailable(
                    f"TLS certificate rejected: {self._scrub(str(exc))}"
                ) from exc
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # The connection never opened, so nothing was sent and no job exists.
                error = ProviderUnavailable(
                    f"could not connect to the video service: {self._scrub(str(exc))}"
                )
                if attempt + 1 >= attempts:
                    raise error from exc
                await self._backoff("POST", attempt, f"connect failed ({type(exc).__name__})")
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                # The request may have reached the provider: the job may exist. Never resend.
                raise ProviderUnavailable(
                    f"the connection failed after the request was sent ({self._describe(exc)}); "
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
        data = self._decode(reply.text)
        if not isinstance(data, dict):
            self._log_reply("POST", reply)
            raise ProviderError(
                _t("the video service accepted the request but its answer was not a JSON object"),
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
                _t("the video service accepted the request but returned no generation id"),
                status=reply.status,
            )
        if data.get("status") is None:
            # The job exists (it has an id); assume it is queued and let polling tell the truth.
            data = {**data, "status": "queued"}
        return self._scrub_state(parse_generation(data, generation_id=generation_id))

    # --- fetch ---------------------------------------------------------------------------------

    @_measured("poll")
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
            data = self._decode(reply.text)
            if not isinstance(data, dict) or _nonempty_str(data.get("status")) is None:
                self._log_reply("GET", reply)
                # The job probably still exists; a garbled answer is the provider's fault.
                raise ProviderServerError(
                    "the video service returned a status response without a readable status",
                    status=reply.status,
                )
            return self._scrub_state(parse_generation(data, generation_id=generation_id))

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
                return _Reply(resp.status, self._scrub(await _read_text(resp)))
        except aiohttp.ClientError as exc:
            self._raise_transport(exc)
        except TimeoutError as exc:
            self._raise_transport(exc)

    # --- download ------------------------------------------------------------------------------

    def video_url_allowed(self, url: str) -> bool:
        """Whether `download` would start fetching `url` (the link itself; redirects and DNS
        answers are checked during the download). A refused link should not be posted either."""
        try:
            return self._video_policy.refusal(URL(url)) is None
        except ValueError:
            return False

    @_measured("download")
    async def download(
        self, url: str, dest_dir: pathlib.Path, *, max_bytes: int
    ) -> DownloadedVideo:
        """Stream the video into a new file in `dest_dir`.

        No Authorization header: the link is public, and the key must never reach a CDN.
        Raises VideoTooLarge (and leaves no file behind) past `max_bytes`, checking
        Content-Length first so an oversized file is refused without reading it.
        Raises VideoLinkRefused when the link or a redirect leaves the provider's hosts
        (module doc), and NotAVideo when the bytes are not an mp4; neither is retried.
        """

        async def attempt() -> DownloadedVideo:
            return await self._download_once(url, dest_dir, max_bytes=max_bytes)

        video = await self._with_retries("VIDEO", attempt)
        log.info("provider: downloaded %d bytes (%s)", video.size, video.content_type)
        return video

    async def _download_once(
        self, url: str, dest_dir: pathlib.Path, *, max_bytes: int
    ) -> DownloadedVideo:
        current = self._checked_video_url(url, hop=0)
        try:
            async with self._video_session() as session:
                for hop in range(1, MAX_REDIRECTS + 2):
                    # Redirects are followed here, not by aiohttp, so every hop is checked.
                    async with session.get(
                        current, headers={"Accept": "video/*, */*"}, allow_redirects=False
                    ) as resp:
                        if resp.status in _REDIRECT_STATUSES:
                            current = self._redirect_target(current, resp, hop=hop)
                            continue
                        return await self._save_video(resp, dest_dir, max_bytes=max_bytes)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, _AddressRefused):
                log.warning("provider: refused a video link: %s", self._scrub(str(exc.os_error)))
                raise VideoLinkRefused(_REFUSED_MESSAGE) from None
            self._raise_transport(exc)
        except aiohttp.InvalidURL:
            # The exception would repeat the link, which is the provider's text.
            raise ProviderError("the video link is not a valid URL") from None
        except aiohttp.ClientError as exc:
            self._raise_transport(exc)
        except TimeoutError as exc:
            self._raise_transport(exc)
        log.warning("provider: the video link redirected more than %d times", MAX_REDIRECTS)
        raise VideoLinkRefused(
            _t("the video link redirected more than {count} times", count=MAX_REDIRECTS)
        )

    async def _save_video(
        self, resp: aiohttp.ClientResponse, dest_dir: pathlib.Path, *, max_bytes: int
    ) -> DownloadedVideo:
        if not 200 <= resp.status < 300:
            reply = _Reply(resp.status, self._scrub(await _read_text(resp, limit=4096)))
            self._log_reply("VIDEO", reply)
            error = self._download_error(reply)
            if _retryable_status(resp.status):
                raise _Retry(error, f"HTTP {resp.status}")
            raise error
        declared = resp.content_length
        if declared is not None and declared > max_bytes:
            log.info("provider: video declares %d bytes, limit %d", declared, max_bytes)
            raise VideoTooLarge(max_bytes)
        video = await _stream_to_file(resp, dest_dir, max_bytes=max_bytes)
        content_type = self._scrub(video.content_type) if video.content_type else None
        return dataclasses.replace(video, content_type=content_type)

    def _checked_video_url(self, url: str | URL, *, hop: int) -> URL:
        try:
            parsed = url if isinstance(url, URL) else URL(url)
            reason = self._video_policy.refusal(parsed)
        except ValueError:
            parsed, reason = None, "not a valid URL"
        if reason is not None or parsed is None:
            where = "the video link" if hop == 0 else f"redirect {hop} of the video link"
            log.warning("provider: refused %s: %s", where, self._scrub(reason or "invalid"))
            raise VideoLinkRefused(_REFUSED_MESSAGE)
        return parsed

    def _redirect_target(self, current: URL, resp: aiohttp.ClientResponse, *, hop: int) -> URL:
        location = resp.headers.get("Location", "").strip()
        if not location:
            raise ProviderError(
                f"the video link answered HTTP {resp.status} without a Location", status=resp.status
            )
        try:
            target = current.join(URL(location))
        except ValueError:
            target = None
        if target is None:
            raise VideoLinkRefused(_REFUSED_MESSAGE)
        return self._checked_video_url(target, hop=hop)

    @contextlib.asynccontextmanager
    async def _video_session(self) -> AsyncIterator[aiohttp.ClientSession]:
        """A session of its own per download: its resolver checks every address it connects
        to, and it shares no cookies or connections with the API session."""
        factory = self._resolver_factory
        owns_inner = factory is None
        inner = aiohttp.DefaultResolver() if factory is None else factory()
        resolver = _GuardedResolver(inner, self._video_policy, owns_inner=owns_inner)
        connector = aiohttp.TCPConnector(resolver=resolver, limit=2)
        try:
            async with aiohttp.ClientSession(
                connector=connector,
                timeout=self._session.timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
            ) as session:
                yield session
        finally:
            await resolver.close()

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

    # --- scrubbing: the key never leaves this client --------------------------------------------

    def _scrub(self, text: str) -> str:
        """Remove the key from provider text. Done before any clipping, so a key cut in half
        by a length limit cannot leave its first characters behind."""
        secret = self._api_key.reveal()
        if not secret:
            return text
        text = text.replace(secret, _SCRUBBED)
        quoted = urllib.parse.quote(secret, safe="")
        return text.replace(quoted, _SCRUBBED) if quoted != secret else text

    def _scrub_json(self, value: Any) -> Any:
        # JSON escapes (\u0041...) hide the key from the raw-text scrub; the decoded strings
        # show it.
        if isinstance(value, str):
            return self._scrub(value)
        if isinstance(value, list):
            return [self._scrub_json(v) for v in value]
        if isinstance(value, dict):
            return {self._scrub(str(k)): self._scrub_json(v) for k, v in value.items()}
        return value

    def _decode(self, text: str) -> Any:
        return self._scrub_json(_json_or_none(text))

    def _scrub_state(self, state: GenerationState) -> GenerationState:
        """Every string of a GenerationState is stored, logged or shown by the job service."""
        return dataclasses.replace(
            state,
            id=self._scrub(state.id),
            status=self._scrub(state.status),
            video_url=self._scrub(state.video_url) if state.video_url is not None else None,
            error=self._scrub(state.error) if state.error is not None else None,
        )

    def _describe(self, exc: BaseException) -> str:
        return self._scrub(_describe(exc))

    def _raise_transport(self, exc: BaseException) -> NoReturn:
        """Map a transport failure of a read-only call: retry the transient ones."""
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            raise ProviderUnavailable(f"TLS certificate rejected: {self._scrub(str(exc))}") from exc
        if isinstance(
            exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | TimeoutError
        ):
            error = ProviderUnavailable(
                f"the video service could not be reached ({self._describe(exc)})"
            )
            raise _Retry(error, type(exc).__name__) from exc
        raise ProviderError(
            _t(
                "the request to the video service failed ({problem})",
                problem=self._describe(exc),
            )
        ) from exc

    def _message(self, text: str) -> str:
        # Scrubbed before provider_message clips it, and again for decoded JSON escapes.
        return self._scrub(provider_message(self._scrub(text)))

    def _http_error(self, reply: _Reply, *, operation: Literal["submit", "poll"]) -> ProviderError:
        """The typed error for a non-2xx API answer, carrying the provider's message (§6)."""
        status = reply.status
        message = self._message(reply.text)
        if status in (400, 422):
            return ProviderValidationError(message, status=status)
        if status == 413:
            return ProviderValidationError(
                _t("image too large for the provider ({message})", message=message), status=status
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
            _clip(self._scrub(reply.text), _LOG_BODY_LIMIT),
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


def _retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _read_text(resp: aiohttp.ClientResponse, *, limit: int | None = None) -> str:
    raw = await resp.read() if limit is None else await resp.content.read(limit)
    return raw.decode("utf-8", errors="replace")


async def _stream_to_file(
    resp: aiohttp.ClientResponse, dest_dir: pathlib.Path, *, max_bytes: int
) -> DownloadedVideo:
    handle, path = _open_temp(dest_dir)
    size = 0
    head = b""
    try:
        with handle:
            async for chunk in resp.content.iter_chunked(_CHUNK_SIZE):
                size += len(chunk)
                if size > max_bytes:
                    log.info("provider: video passed the %d byte limit mid-stream", max_bytes)
                    raise VideoTooLarge(max_bytes)
                if len(head) < 8:
                    # Checked on the first bytes, so an HTML page is not read to the end.
                    head += chunk[: 8 - len(head)]
                    if len(head) == 8:
                        _require_mp4(head, resp.status)
                # A 64 KiB write lands in the page cache in microseconds; a thread hop per
                # chunk would cost more than it saves.
                handle.write(chunk)
    except BaseException:
        # Partial files are useless and may be large: never leave one behind.
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    if size == 0 or len(head) < 8:
        with contextlib.suppress(OSError):
            path.unlink()
        if size == 0:
            raise ProviderError("the video link returned an empty file", status=resp.status)
        _require_mp4(head, resp.status)
    return DownloadedVideo(path=path, size=size, content_type=resp.content_type or None)


def _require_mp4(head: bytes, status: int) -> None:
    """An ISO BMFF file (mp4) opens with a box whose type, at offset 4, is `ftyp`."""
    if head[4:8] != _MP4_MAGIC:
        log.warning("provider: the video link served something that is not an mp4")
        raise NotAVideo("the video link did not return an mp4 file", status=status)


def _open_temp(dest_dir: pathlib.Path) -> tuple[BinaryIO, pathlib.Path]:
    fd, name = tempfile.mkstemp(prefix="video-", suffix=".mp4", dir=dest_dir)
    return os.fdopen(fd, "wb"), pathlib.Path(name)
