"""Ollama's keep_alive: a number of seconds or a Go duration, parsed into seconds (None: keep loaded)."""

from __future__ import annotations

import re
from typing import Any

from sollol_ops.gateway.errors import ApiError

FOREVER = None  # a keep_alive of "keep it loaded"
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: Any, default: float | None) -> float | None:
    """Ollama's keep_alive: a number of seconds or a Go duration ("5m", "1h30m", "0", "-1"); negative
    means keep loaded (None here), absent means the default. ApiError 400 for anything else."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise ApiError(400, "keep_alive must be a duration string or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)
        except ValueError:
            parts = _PART.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise ApiError(400, f"keep_alive {value!r} is not a duration (such as 5m, 30s, 0 or -1)") from None
            seconds = sign * sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ApiError(400, "keep_alive must be a duration string or a number of seconds")
    return FOREVER if seconds < 0 else seconds
