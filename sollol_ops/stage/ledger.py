"""The staging ledger: per model and rpc-server, the cache files staged with their size and sha256.

It lives in ``$XDG_STATE_HOME/sollol-ops/staging.json``, read and written under a lock.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sollol_ops.serve import statefile
from sollol_ops.stage.worker import StagedFile

LEDGER_WHAT = "staging ledger"


@dataclass
class LedgerFile:
    tensor: str
    file: str
    size: int
    sha256: str


@dataclass
class LedgerEntry:
    model: str
    digest: str
    endpoint: str
    cache_dir: str
    where: str  # "this host", or "ansible:<inventory host>"
    staged_at: float
    files: list[LedgerFile] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class Ledger:
    entries: list[LedgerEntry] = field(default_factory=list)

    def record(self, entry: LedgerEntry) -> None:
        self.entries = [e for e in self.entries if (e.digest, e.endpoint) != (entry.digest, entry.endpoint)]
        self.entries.append(entry)

    def needed(self, endpoint: str, cache_dir: str) -> set[str]:
        return {f.file for e in self.entries if (e.endpoint, e.cache_dir) == (endpoint, cache_dir) for f in e.files}


def ledger_path(root: Path | None = None) -> Path:
    from sollol_ops.paths import state_dir

    return (root or state_dir()) / "staging.json"


def load_ledger(root: Path | None = None, warn: statefile.Warn = statefile.warn_stderr) -> Ledger:
    return statefile.load(ledger_path(root), Ledger, LEDGER_WHAT, warn) or Ledger()


def save_ledger(ledger: Ledger, root: Path | None = None) -> None:
    statefile.write(ledger_path(root), ledger, LEDGER_WHAT)


def ledger_lock(root: Path | None = None) -> contextlib.AbstractContextManager[None]:
    return statefile.exclusive(ledger_path(root).with_suffix(".lock"), "sollol-ops stage", "the staging ledger")


@dataclass
class StageResult:
    endpoint: str
    cache_dir: str
    layers: list[int]
    output: bool
    files: list[StagedFile]

    @property
    def new_bytes(self) -> int:
        return sum(f.size for f in self.files if f.new)


def record(model: str, digest: str, where: str, results: Sequence[StageResult], root: Path | None = None) -> None:
    """Record staged files in the ledger (one entry per model and rpc-server, replacing an older one)."""
    with ledger_lock(root):
        ledger = load_ledger(root)
        for r in results:
            if not r.files:  # nothing over 10 MiB goes to this rpc-server: nothing to record
                continue
            files = [LedgerFile(f.tensor, f.file, f.size, f.sha256) for f in r.files]
            ledger.record(LedgerEntry(model, digest, r.endpoint, r.cache_dir, where, time.time(), files))
        save_ledger(ledger, root)


def staged_summary(ledger: Ledger) -> list[dict[str, object]]:
    """One row per ledger entry, for `status` and `models`."""
    return [
        {
            "model": e.model,
            "digest": e.digest,
            "endpoint": e.endpoint,
            "where": e.where,
            "cache_dir": e.cache_dir,
            "files": len(e.files),
            "bytes": e.bytes,
            "staged_at": e.staged_at,
            "files_detail": [vars(f) for f in e.files],
        }
        for e in ledger.entries
    ]
