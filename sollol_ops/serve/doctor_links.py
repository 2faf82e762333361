"""The link figures `sollol-ops doctor` measured last, one per rpc-server, kept in the state directory (private,
atomic) so that the gateway's page can show them next to each worker."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from sollol_ops.paths import state_dir
from sollol_ops.serve import statefile

WHAT = "the doctor's link figures"


@dataclass(frozen=True)
class LinkFigure:
    endpoint: str
    throughput_bps: float
    rtt_ms: float
    measured_at: float  # epoch seconds


@dataclass(frozen=True)
class LinkFigures:
    links: list[LinkFigure] = field(default_factory=list)


def path(root: Path | None = None) -> Path:
    return (root or state_dir()) / "doctor-links.json"


def load(root: Path | None = None) -> dict[str, LinkFigure]:
    """The last figure of each endpoint measured (none when doctor never measured one here)."""
    got = statefile.load(path(root), LinkFigures, WHAT, warn=lambda m: None)
    return {f.endpoint: f for f in got.links} if got is not None else {}


def record(measured: dict[str, tuple[float, float]], root: Path | None = None) -> None:
    """Keep endpoint -> (throughput in bit/s, round trip in ms), replacing those endpoints' older figures."""
    now = time.time()
    figures = load(root)
    for endpoint, (bps, rtt) in measured.items():
        figures[endpoint] = LinkFigure(endpoint, float(bps), float(rtt), now)
    statefile.write(path(root), LinkFigures(sorted(figures.values(), key=lambda f: f.endpoint)), WHAT)
