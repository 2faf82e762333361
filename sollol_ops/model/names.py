"""Ollama model names: `host/namespace/name:tag` parsed and printed, and the installed names close to one."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sollol_ops.errors import UsageError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")
_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,253}(:[0-9]{1,5})?$")


@dataclass(frozen=True)
class ModelRef:
    """A model name in its four parts; printed as Ollama prints it (default host and namespace left out)."""

    host: str
    namespace: str
    name: str
    tag: str

    def __str__(self) -> str:
        if self.host != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.name}:{self.tag}"
        if self.namespace != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.name}:{self.tag}"
        return f"{self.name}:{self.tag}"

    def manifest_relpath(self) -> Path:
        return Path("manifests", self.host, self.namespace, self.name, self.tag)


def _check_part(text: str, what: str, value: str, pattern: re.Pattern[str]) -> str:
    if not value:
        raise UsageError(f"bad model name {text!r}: empty {what}")
    if not pattern.match(value):
        raise UsageError(
            f"bad model name {text!r}: {what} {value!r} must be letters, digits, '_', '.', '-'"
            " (starting with a letter or digit)"
        )
    return value


def _split_tag(text: str, last: str) -> tuple[str, str]:
    if ":" not in last:
        return last, DEFAULT_TAG
    name, tag = last.split(":", 1)
    if not tag:
        raise UsageError(f"bad model name {text!r}: empty tag after ':'")
    return name, tag


def parse_model_ref(text: str) -> ModelRef:
    """`name`, `name:tag`, `namespace/name:tag` or `host/namespace/name:tag`."""
    if not text or not text.strip():
        raise UsageError(f"bad model name {text!r}: give a name like smollm2:135m")
    if any(c.isspace() for c in text):
        raise UsageError(f"bad model name {text!r}: no whitespace allowed")
    parts = text.split("/")
    if len(parts) > 3:
        raise UsageError(f"bad model name {text!r}: at most host/namespace/name:tag")
    name, tag = _split_tag(text, parts[-1])
    host = parts[0] if len(parts) == 3 else DEFAULT_HOST
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    return ModelRef(
        host=_check_part(text, "host", host, _HOST),
        namespace=_check_part(text, "namespace", namespace, _PART),
        name=_check_part(text, "name", name, _PART),
        tag=_check_part(text, "tag", tag, _TAG),
    )


def suggest(ref: ModelRef, installed: Sequence[str], limit: int = 3) -> list[str]:
    """Installed names close to `ref`: other tags of the same name first, then difflib matches."""
    names = list(dict.fromkeys(installed))
    same_name = [n for n in names if _same_model(n, ref)]
    by_lower = {n.lower(): n for n in names}
    import difflib  # only for a model that is not found

    close = difflib.get_close_matches(str(ref).lower(), list(by_lower), n=limit, cutoff=0.6)
    return list(dict.fromkeys(same_name + [by_lower[c] for c in close]))[:limit]


def _same_model(text: str, ref: ModelRef) -> bool:
    try:
        other = parse_model_ref(text)
    except UsageError:
        return False
    return (other.host, other.namespace, other.name.lower()) == (ref.host, ref.namespace, ref.name.lower())
