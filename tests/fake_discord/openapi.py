"""Request-body validation against Discord's OpenAPI 3.1 document (discord/discord-api-spec).

The document ships with the fake (``discord-openapi.json.gz``, provenance in SPEC.md). It is
loaded once per process and path, and a missing or broken one raises SpecUnavailable rather than
validating nothing. One validator per operation is compiled on first use. Schemas are JSON
Schema 2020-12, resolved through a `referencing` registry holding the whole document, so
``#/components/schemas/...`` references work from any operation.
"""

from __future__ import annotations

import copy
import gzip
import json
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, by_relevance
from referencing import Registry
from referencing.jsonschema import DRAFT202012

_SPEC_URI = "urn:discord-openapi"
_LOCK = threading.Lock()
_SPECS: dict[Path, OpenApiSpec] = {}


def _pointer(*parts: str) -> str:
    return "/".join(quote(p.replace("~", "~0").replace("/", "~1"), safe="") for p in parts)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}... ({len(text)} chars)"


class OpenApiSpec:
    """One loaded OpenAPI document with lazily compiled request-body validators."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self._registry: Registry[Any] = Registry().with_resource(
            _SPEC_URI, DRAFT202012.create_resource(document)
        )
        self._validators: dict[tuple[str, str], Draft202012Validator | None] = {}
        self._lock = threading.Lock()

    def has_operation(self, method: str, template: str) -> bool:
        """Whether the document describes ``method template``."""
        return method.lower() in self.document.get("paths", {}).get(template, {})

    def _validator(self, method: str, template: str) -> Draft202012Validator | None:
        key = (method.lower(), template)
        with self._lock:
            if key in self._validators:
                return self._validators[key]
            operation = self.document.get("paths", {}).get(template, {}).get(key[0])
            validator = None
            content = (operation or {}).get("requestBody", {}).get("content", {})
            if "application/json" in content:
                ref = f"{_SPEC_URI}#/" + _pointer(
                    "paths",
                    template,
                    key[0],
                    "requestBody",
                    "content",
                    "application/json",
                    "schema",
                )
                validator = Draft202012Validator({"$ref": ref}, registry=self._registry)
            self._validators[key] = validator
            return validator

    def validate(self, method: str, template: str, body: Any) -> list[str]:
        """Readable problems with ``body`` for that operation; empty when it validates."""
        validator = self._validator(method, template)
        if validator is None:
            return []
        body = normalise_known_deviations(body)
        problems = []
        for error in validator.iter_errors(body):
            leaf = _most_specific(error)
            where = leaf.json_path
            message = leaf.message
            if len(message) > 200:
                message = message.replace(repr(leaf.instance), _short(leaf.instance))
            problems.append(f"{method.upper()} {template}: {where}: {message}")
        return problems


def _leaf_count(errors: list[ValidationError]) -> int:
    return sum(_leaf_count(list(e.context)) if e.context else 1 for e in errors)


def _other_variant(errors: list[ValidationError]) -> bool:
    """A branch that failed because the instance is another variant (``type`` tag, or null)."""
    for error in errors:
        path = list(error.relative_path)
        if error.validator in ("enum", "const") and path == ["type"]:
            return True
        if error.validator == "type" and error.validator_value == "null" and not path:
            return True
    return False


def _most_specific(error: ValidationError) -> ValidationError:
    """Descend anyOf/oneOf failures into the branch that matches the instance's variant."""
    while error.context:
        branches: dict[Any, list[ValidationError]] = defaultdict(list)
        for sub in error.context:
            branches[sub.schema_path[0] if sub.schema_path else None].append(sub)
        candidates = [subs for subs in branches.values() if not _other_variant(subs)]
        if not candidates:
            return error
        chosen = min(candidates, key=_leaf_count)
        error = max(chosen, key=by_relevance())
    return error


def _stringify(container: dict[str, Any], key: str) -> None:
    value = container.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        container[key] = str(value)
    elif isinstance(value, list):
        container[key] = [
            str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value
        ]


def _normalise_ids(container: dict[str, Any]) -> None:
    for key in list(container):
        if key.endswith("_id"):
            _stringify(container, key)


def _normalise_message(message: Any) -> None:
    if not isinstance(message, dict):
        return
    _normalise_ids(message)
    for attachment in message.get("attachments") or []:
        if isinstance(attachment, dict):
            _stringify(attachment, "id")
    mentions = message.get("allowed_mentions")
    if isinstance(mentions, dict):
        _stringify(mentions, "users")
        _stringify(mentions, "roles")
    reference = message.get("message_reference")
    if isinstance(reference, dict):
        _normalise_ids(reference)
    for key in ("sticker_ids", "applied_tags"):
        _stringify(message, key)


def normalise_known_deviations(body: Any) -> Any:
    """Turn the snowflakes discord.py sends as JSON numbers into the strings the spec expects.

    discord.py sends attachment ids (file indexes and existing ids), ``*_id`` fields (such as
    ``recipient_id`` and message_reference ids), allowed_mentions user/role ids, sticker ids and
    applied tags as numbers; Discord accepts both, the spec documents strings. Nothing else is
    changed.
    """
    if not isinstance(body, dict):
        return body
    body = copy.deepcopy(body)
    _normalise_message(body)
    _normalise_message(body.get("data"))
    _normalise_message(body.get("message"))
    return body


class SpecUnavailable(RuntimeError):
    """The OpenAPI document could not be loaded; the fake refuses to run without it."""


def load_spec(path: Path) -> OpenApiSpec:
    """The spec at ``path`` (plain or ``.gz`` JSON, cached per process).

    Raises SpecUnavailable when the file is missing, unreadable or not an OpenAPI document:
    without it every "no violations" assertion would silently check nothing.
    """
    resolved = path.resolve()
    with _LOCK:
        if resolved in _SPECS:
            return _SPECS[resolved]
        try:
            raw = resolved.read_bytes()
            if resolved.suffix == ".gz":
                raw = gzip.decompress(raw)
            document = json.loads(raw)
        except (OSError, EOFError, ValueError) as exc:
            raise SpecUnavailable(
                f"cannot load Discord's OpenAPI document from {resolved}: {exc}"
            ) from exc
        if not isinstance(document, dict) or not isinstance(document.get("paths"), dict):
            raise SpecUnavailable(f"{resolved} is not an OpenAPI document (no 'paths')")
        spec = OpenApiSpec(document)
        _SPECS[resolved] = spec
        return spec
