"""Where sollol-ops keeps its own files (XDG base directories)."""

from __future__ import annotations

import os
from pathlib import Path


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


def cache_dir() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache") / "sollol-ops"


def state_dir() -> Path:
    return _xdg("XDG_STATE_HOME", ".local/state") / "sollol-ops"
