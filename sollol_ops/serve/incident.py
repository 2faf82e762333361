"""The last incident: one small record, next to the coordinator's state, of the last time the coordinator was
healed (reloaded on the full set of rpc-servers) or stopped for a stall, so that `status` can say what
happened and when, after the fact. Written by serve/heal.py and the gateway's watcher."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from sollol_ops.errors import StateError
from sollol_ops.paths import state_dir
from sollol_ops.serve import statefile


class IncidentKind(StrEnum):
    HEALED = "healed"  # a degraded coordinator reloaded on the backends that answer again
    STALLED = "stalled"  # a stalled coordinator stopped, so that its clients get an error


@dataclass
class Incident:
    at: float
    kind: str
    model: str
    message: str  # one line: what was done and why
    suspects: list[str] = field(default_factory=list)  # the backend a stalled coordinator waited on
    by: str = ""  # who acted: `sollol-ops heal`, the gateway, `up --foreground`

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.at))
        return f"{when}: {self.message}" + (f" (by {self.by})" if self.by else "")


def path(root: Path | None = None) -> Path:
    return (root or state_dir()) / "incident.json"


def load(root: Path | None = None) -> Incident | None:
    return statefile.load(path(root), Incident, "the last incident record", lambda _m: None)


def record(incident: Incident, root: Path | None = None, warn: statefile.Warn = statefile.warn_stderr) -> None:
    """Keep ``incident`` as the last one; a state directory that cannot take it costs a warning, not the heal."""
    try:
        statefile.write(path(root), incident, "the last incident record")
    except StateError as exc:
        warn(str(exc))


def stall_line(model: str, seconds: float, suspects: list[str]) -> str:
    """`stopped smollm2:135m after 60 s stalled on 127.0.0.1:50053 (frozen?)`."""
    on = f"on {', '.join(suspects)} (frozen?)" if suspects else "(no backend could be singled out)"
    return f"stopped {model} after {seconds:.0f} s stalled {on}"
