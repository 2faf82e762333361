"""Refuse an inventory whose YAML aliases would blow up when Ansible expands them (a "billion laughs" file)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sollol_ops.errors import InventoryError

# YAML aliases may expand an inventory by at most this many nodes (a "billion laughs" file expands to
# 9**9 strings from a few hundred bytes: refused before Ansible sees it).
MAX_ALIAS_EXPANSION = 100_000
YAML_SUFFIXES = ("", ".yml", ".yaml", ".json")


def _yaml_candidates(path: Path) -> Iterator[Path]:
    """Every file Ansible may read as YAML for this inventory: the source(s) and group_vars/host_vars."""
    if path.is_file():
        yield path
        base = path.parent
    else:
        base = path
        for dirpath, dirnames, names in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if Path(dirpath) != path or d not in ("group_vars", "host_vars"))
            yield from (Path(dirpath) / name for name in sorted(names))
    for vars_dir in (base / "group_vars", base / "host_vars"):
        for dirpath, dirnames, names in os.walk(vars_dir):
            dirnames.sort()
            yield from (Path(dirpath) / name for name in sorted(names))


def _alias_expansion(events: Iterator[Any], limit: int) -> int:
    """How many nodes the aliases of a YAML event stream add once expanded; stops once past `limit`.

    Streams parser events (no objects are built): each anchored node's expanded size is recorded when
    it ends, and each alias adds that size less the one node it is. ValueError on a recursive alias.
    """
    added = 0
    sizes: dict[str, int] = {}  # anchor -> expanded size of its node (capped: past the limit we stop)
    open_anchors: set[str] = set()
    import yaml  # only when an inventory is read by ansible-inventory: a cached one needs no YAML

    stack: list[list[Any]] = [[0, None]]  # per open collection: [expanded size so far, its anchor]
    for event in events:
        if isinstance(event, yaml.DocumentStartEvent):
            sizes.clear()  # anchors are per document
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor in open_anchors:
                raise ValueError(f"alias *{event.anchor} refers to the node it is in")
            size = sizes.get(event.anchor, 1)  # an undefined alias is Ansible's to report
            stack[-1][0] += size
            added += size - 1
            if added > limit:
                return added
        elif isinstance(event, yaml.ScalarEvent):
            stack[-1][0] += 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            if event.anchor:
                open_anchors.add(event.anchor)
            stack.append([1, event.anchor])
        elif isinstance(event, yaml.CollectionEndEvent):
            size, anchor = stack.pop()
            size = min(size, limit + 2)
            if anchor:
                open_anchors.discard(anchor)
                sizes[anchor] = size
            stack[-1][0] += size
    return added


def _read_yaml(path: Path) -> bytes | None:
    """The bytes of a regular file named like YAML, opened without blocking (a FIFO would wait); else None."""
    if path.suffix.lower() not in YAML_SUFFIXES:
        return None
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            return fh.read()
    except OSError:
        return None  # Ansible reports what it cannot read


def check_yaml_aliases(path: Path, limit: int = MAX_ALIAS_EXPANSION) -> None:
    """Refuse an inventory whose YAML aliases expand it by more than `limit` nodes, or recursively.

    Only parser events are looked at (nothing is built); a file that does not parse is left to
    Ansible, which names the error. Files without both '&' and '*' cannot alias and are not parsed.
    """
    import yaml  # see _alias_expansion

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: fast, and caps nesting depth
    for f in _yaml_candidates(path):
        data = _read_yaml(f)
        if data is None or b"&" not in data or b"*" not in data:
            continue
        try:
            added = _alias_expansion(yaml.parse(data, Loader=loader), limit)
        except ValueError as exc:
            raise InventoryError(f"inventory file {f}: {exc}; YAML aliases must not refer to themselves") from exc
        except (yaml.YAMLError, UnicodeError, RecursionError):
            continue
        if added > limit:
            raise InventoryError(
                f"inventory file {f}: YAML aliases expand it by more than {limit:,} nodes "
                "(an alias bomb?); write the values out or use fewer aliases"
            )
