"""Domain errors, and the one place that turns them into words for users.

Core code raises these with data attached; `user_message()` renders them. Nothing here (or in any
error text) may contain a secret: provider messages are shown to users, our keys never are.
"""

from __future__ import annotations

from collections.abc import Sequence


class BotError(Exception):
    """Base for every error the bot expects and knows how to explain."""


class ConfigError(BotError):
    """One or more settings are missing or malformed."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"Configuration problems:\n{lines}\nSee .env.example for every setting and its format."
        )


# --- input problems: caught before any money is spent -------------------------------------------


class InputRejected(BotError):
    """The user's request cannot be accepted as it is; nothing was submitted."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ImageRejected(InputRejected):
    """The attachment is not an image we can use. `code` says which check failed."""

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        super().__init__(reason)


class TooManyActiveJobs(InputRejected):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"You already have {limit} videos in progress. Please wait for one to finish."
        )


# --- provider problems ---------------------------------------------------------------------------


class ProviderError(BotError):
    """The AI/ML API refused or failed a request. `message` is the provider's own text."""

    retryable = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.message = message
        self.status = status
        super().__init__(f"{type(self).__name__} (HTTP {status}): {message}")


class ProviderValidationError(ProviderError):
    """400: the provider rejected the request body."""


class ProviderAuthError(ProviderError):
    """401: the API key is missing or invalid (an operator problem, not the user's)."""


class ProviderCreditsError(ProviderError):
    """403: the account is out of credits."""


class ProviderNotFound(ProviderError):
    """404: unknown generation id or route."""


class ProviderRateLimited(ProviderError):
    retryable = True


class ProviderServerError(ProviderError):
    retryable = True


class ProviderTimeout(ProviderError):
    """504 "Generation timeout": the provider gave up on the generation."""


class ProviderUnavailable(ProviderError):
    """The provider could not be reached at all (connection refused, reset, time-out)."""

    retryable = True


class GenerationFailed(BotError):
    """The job ran at the provider and ended without a video (status error/failed/unknown)."""

    def __init__(self, reason: str, *, status: str | None = None) -> None:
        self.reason = reason
        self.status = status
        super().__init__(reason)


class JobTimedOut(BotError):
    def __init__(self, waited_seconds: float) -> None:
        self.waited_seconds = waited_seconds
        super().__init__(f"no result after {waited_seconds:.0f} s")


class MediaUnreadable(BotError):
    """A video (or other media) the bot cannot read; `reason` is safe to show."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class VideoTooLarge(BotError):
    """The finished video is bigger than we are willing to download."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"video larger than {limit} bytes")


_SUPPORT_HINT = "Please try again later."


def user_message(exc: BaseException) -> str:
    """Short, friendly words for a user. The only place error types become user-facing text."""
    if isinstance(exc, InputRejected):
        return exc.reason
    if isinstance(exc, ProviderValidationError):
        return f"The video service did not accept this request: {_clip(exc.message)}"
    if isinstance(exc, ProviderAuthError):
        return "The bot's video service key is not working. A server admin needs to fix it."
    if isinstance(exc, ProviderCreditsError):
        return (
            "The bot's video service account is out of credits. A server admin needs to top it up."
        )
    if isinstance(exc, ProviderRateLimited):
        return f"The video service is busy right now. {_SUPPORT_HINT}"
    if isinstance(exc, ProviderTimeout):
        return "The video service took too long and gave up on this video."
    if isinstance(exc, ProviderServerError | ProviderUnavailable):
        return f"The video service is having trouble. {_SUPPORT_HINT}"
    if isinstance(exc, ProviderError):
        return f"The video service returned an error: {_clip(exc.message)}"
    if isinstance(exc, GenerationFailed):
        return f"The video could not be made: {_clip(exc.reason)}"
    if isinstance(exc, JobTimedOut):
        minutes = max(1, round(exc.waited_seconds / 60))
        return f"No video arrived after {minutes} minutes, so the bot stopped waiting."
    if isinstance(exc, MediaUnreadable):
        return exc.reason
    if isinstance(exc, VideoTooLarge):
        return "The finished video is too large for the bot to fetch."
    return "Something went wrong on our side. Sorry! The error has been logged."


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
