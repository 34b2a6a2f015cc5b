"""Models that disappear: when the provider rejects a model as unknown or unavailable, new
requests for it are refused for a while with the names of models that work; jobs already
running are not affected (they keep polling on their recorded model).

Kept in the database (`meta`), so every process sharing it knows at once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from datetime import datetime, timedelta

from bot.catalog import CATALOG
from bot.errors import (
    InputRejected,
    ProviderError,
    ProviderNotFound,
    ProviderServerError,
    ProviderValidationError,
)
from bot.i18n import _t
from bot.store import JobStore, require_aware

log = logging.getLogger(__name__)

KEY_PREFIX = "model_unavailable:"

# How long a rejected model stays off. Long enough not to charge members for requests that will
# fail; short enough that a model back from maintenance returns the same hour.
UNAVAILABLE_SECONDS = 60 * 60

# The provider's words for a model it does not know or cannot run (contract §6): an enum error on
# the `model` field, "The model is under maintenance", "not found", "deprecated", "shut down".
_GONE_WORDS = re.compile(
    r"maintenance|unavailable|not (?:found|available|supported)|deprecated|shut ?down|"
    r"no longer|discontinued|does not exist",
    re.IGNORECASE,
)


def rejects_model(exc: ProviderError) -> bool:
    """Whether a submit error says the model itself is unknown or unavailable."""
    message = exc.message or ""
    if isinstance(exc, ProviderValidationError):
        # "Body validation error! model: Invalid enum value. Expected … received '…'"
        return bool(re.search(r"\bmodel\b", message, re.IGNORECASE)) and bool(
            re.search(r"invalid enum|received|unknown|not (?:found|supported)", message, re.I)
        )
    if isinstance(exc, ProviderNotFound | ProviderServerError):
        return bool(re.search(r"\bmodel\b", message, re.IGNORECASE)) and bool(
            _GONE_WORDS.search(message)
        )
    return False


class ModelUnavailable(InputRejected):
    def __init__(self, label: str, working: list[str]) -> None:
        self.label = label
        if working:
            reason = _t(
                "{model} is not available at the video service right now. Models that work: "
                "{choices}. Nothing was spent.",
                model=label,
                choices=", ".join(working),
            )
        else:
            reason = _t(
                "{model} is not available at the video service right now. Models that work: "
                "none right now, please try later. Nothing was spent.",
                model=label,
            )
        super().__init__(reason)


class ModelHealth:
    """Which catalogue models the provider has lately refused, and until when."""

    def __init__(self, store: JobStore, *, unavailable_seconds: float = UNAVAILABLE_SECONDS):
        self.store = store
        self.period = timedelta(seconds=unavailable_seconds)

    async def mark_unavailable(self, model: str, *, now: datetime) -> bool:
        """Take `model` off for a while; True if it was available until now (announce once)."""
        now = require_aware(now, "now")
        was = await self._until(model, now)
        await self.store.set_meta(KEY_PREFIX + model, (now + self.period).isoformat())
        if was is None:
            log.warning("model %s refused by the provider; off until %s", model, now + self.period)
        return was is None

    async def unavailable(self, *, now: datetime) -> dict[str, datetime]:
        """Models currently off, with the time they are tried again."""
        now = require_aware(now, "now")
        found: dict[str, datetime] = {}
        for key, value in (await self.store.meta_with_prefix(KEY_PREFIX)).items():
            until = _parse(value)
            if until is not None and until > now:
                found[key.removeprefix(KEY_PREFIX)] = until
        return found

    async def check(self, model: str, *, now: datetime) -> None:
        """Refuse a model that is off, naming the ones that work."""
        off = await self.unavailable(now=now)
        if model in off:
            spec = CATALOG.get(model)
            raise ModelUnavailable(spec.label if spec else model, working_labels(off))

    async def _until(self, model: str, now: datetime) -> datetime | None:
        until = _parse(await self.store.get_meta(KEY_PREFIX + model))
        return until if until is not None and until > now else None


def working_labels(off: Collection[str]) -> list[str]:
    """The catalogue's models that are not off, by label."""
    return [spec.label for spec in CATALOG.values() if spec.id not in off]


def _parse(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return require_aware(datetime.fromisoformat(value), "until")
    except ValueError:
        return None
