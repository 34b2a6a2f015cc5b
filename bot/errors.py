"""Domain errors, and the one place that turns them into words for users.

Core code raises these with data attached; `user_message()` turns them into a translatable
`Message` (rendered in the reader's language by the Discord layer). Nothing here (or in any
error text) may contain a secret: provider messages are shown to users, our keys never are.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.i18n import Message, _t, _tn


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

    def __init__(self, reason: Message) -> None:
        self.reason = reason
        super().__init__(str(reason))  # English, for logs


class ImageRejected(InputRejected):
    """The attachment is not an image we can use. `code` says which check failed."""

    def __init__(self, code: str, reason: Message) -> None:
        self.code = code
        super().__init__(reason)

    def __reduce__(self) -> tuple[type[ImageRejected], tuple[str, Message]]:
        # Raised in a fit process and re-raised here: rebuilt from what it was made of.
        return (type(self), (self.code, self.reason))


class TooManyActiveJobs(InputRejected):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            _tn(
                "You already have {count} video in progress. Please wait for it to finish.",
                "You already have {count} videos in progress. Please wait for one to finish.",
                limit,
            )
        )


# --- provider problems ---------------------------------------------------------------------------


class ProviderError(BotError):
    """The AI/ML API refused or failed a request. `message` is the provider's own text (or, where
    the provider said nothing usable, ours); `detail` is the same as shown to members: our own
    words stay translatable there, while `message` is their English (logs, pattern checks)."""

    retryable = False

    def __init__(self, message: Message, *, status: int | None = None) -> None:
        self.detail = message
        self.message = str(message)
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

    def __init__(self, reason: Message, *, status: str | None = None) -> None:
        self.reason = reason
        self.status = status
        super().__init__(str(reason))


class JobTimedOut(BotError):
    def __init__(self, waited_seconds: float) -> None:
        self.waited_seconds = waited_seconds
        super().__init__(f"no result after {waited_seconds:.0f} s")


class MediaUnreadable(BotError):
    """A video (or other media) the bot cannot read; `reason` is safe to show."""

    def __init__(self, reason: Message) -> None:
        self.reason = reason
        super().__init__(str(reason))


class VideoTooLarge(BotError):
    """The finished video is bigger than we are willing to download."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"video larger than {limit} bytes")


def user_message(exc: BaseException) -> Message:
    """Short, friendly words for a user. The only place error types become user-facing text."""
    if isinstance(exc, InputRejected):
        return exc.reason
    if isinstance(exc, ProviderValidationError):
        return _t(
            "The video service did not accept this request: {detail}", detail=_clip(exc.detail)
        )
    if isinstance(exc, ProviderAuthError):
        return _t("The bot's video service key is not working. A server admin needs to fix it.")
    if isinstance(exc, ProviderCreditsError):
        return _t(
            "The bot's video service account is out of credits. A server admin needs to top it up."
        )
    if isinstance(exc, ProviderRateLimited):
        return _t("The video service is busy right now. Please try again later.")
    if isinstance(exc, ProviderTimeout):
        return _t("The video service took too long and gave up on this video.")
    if isinstance(exc, ProviderServerError | ProviderUnavailable):
        return _t("The video service is having trouble. Please try again later.")
    if isinstance(exc, ProviderError):
        return _t("The video service returned an error: {detail}", detail=_clip(exc.detail))
    if isinstance(exc, GenerationFailed):
        return _t("The video could not be made: {reason}", reason=_clip(exc.reason))
    if isinstance(exc, JobTimedOut):
        minutes = max(1, round(exc.waited_seconds / 60))
        return _tn(
            "No video arrived after {count} minute, so the bot stopped waiting.",
            "No video arrived after {count} minutes, so the bot stopped waiting.",
            minutes,
        )
    if isinstance(exc, MediaUnreadable):
        return exc.reason
    if isinstance(exc, VideoTooLarge):
        return _t("The finished video is too large for the bot to fetch.")
    return _t("Something went wrong on our side. Sorry! The error has been logged.")


def _clip(text: Message, limit: int = 300) -> Message:
    """The provider's own words, on one line and not too long; our messages are short already."""
    if not isinstance(text, str):
        return text
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
