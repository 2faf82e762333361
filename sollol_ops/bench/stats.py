"""Statistics of the bench's samples: median and spread, ratios to the baseline of the same run."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

BASELINE_OF = {"load_nocache_s": "load_cold_s", "ready_s": "load_warm_s"}


@dataclass(frozen=True)
class Stat:
    median: float
    min: float
    max: float
    n: int


def summarize(values: Sequence[float]) -> Stat | None:
    """Median and spread (min-max) of the samples; None when there are none."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return Stat(statistics.median(vals), min(vals), max(vals), len(vals))


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base, None when either is missing or base is zero."""
    if value is None or base is None or base == 0:
        return None
    return value / base


def row_ratios(metrics: dict[str, Stat], baseline: dict[str, Stat] | None) -> dict[str, float | None]:
    """Each metric's median over the baseline's (see BASELINE_OF for the metrics it lacks)."""
    out: dict[str, float | None] = {}
    for name, stat in metrics.items():
        if name in ("prompt_n", "gen_n"):
            continue
        base = (baseline or {}).get(BASELINE_OF.get(name, name))
        out[name] = None if base is None else round_or_none(ratio(stat.median, base.median), 3)
    return out


def round_or_none(value: float | None, digits: int = 3) -> float | None:
    """`value` rounded to `digits`, None kept."""
    return None if value is None else round(value, digits)
