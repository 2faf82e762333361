"""Where Ollama stores are looked for: --ollama-models, then $OLLAMA_MODELS, then the default roots."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from sollol_ops.errors import UsageError

DEFAULT_ROOTS: tuple[str, ...] = ("~/.ollama/models", "/usr/share/ollama/.ollama/models")


def _expand(path: str | Path, env: Mapping[str, str]) -> Path:
    text = str(path)
    if text == "~" or text.startswith("~/"):
        home = env.get("HOME") or str(Path.home())
        text = home + text[1:]
    return Path(os.path.abspath(text))


def _dedupe(paths: Sequence[Path]) -> list[Path]:
    seen: set[str] = set()
    out: list[Path] = []
    for path in paths:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            out.append(path)
    return out


def candidate_roots(
    explicit: str | Path | None, env: Mapping[str, str], defaults: Sequence[str | Path] = DEFAULT_ROOTS
) -> list[Path]:
    """Every place searched, in order: --ollama-models, $OLLAMA_MODELS, then `defaults`."""
    wanted: list[str | Path] = []
    if explicit:
        wanted.append(explicit)
    if env.get("OLLAMA_MODELS"):
        wanted.append(env["OLLAMA_MODELS"])
    wanted.extend(defaults)
    return _dedupe([_expand(p, env) for p in wanted])


def _may_exist(root: Path) -> bool:
    """A directory, or a path we cannot look at: only what the OS says is absent (or a file) is left out.

    A root behind a directory we may not search is kept, so that reading it fails naming the reason
    instead of the store silently reading as empty.
    """
    try:
        return stat.S_ISDIR(os.stat(root).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True


def store_roots(
    explicit: str | Path | None, env: Mapping[str, str], defaults: Sequence[str | Path] = DEFAULT_ROOTS
) -> list[Path]:
    """The candidate roots that exist. An explicit root that is not a directory is a UsageError."""
    if explicit and not _may_exist(_expand(explicit, env)):
        raise UsageError(f"--ollama-models {explicit}: no such directory")
    return [p for p in candidate_roots(explicit, env, defaults) if _may_exist(p)]
