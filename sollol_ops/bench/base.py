"""What every bench of a session collects (rows, comparisons, notes: the lists of the JSON document) and the
prompts its queries send."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sollol_ops.bench.backends import Reaper
from sollol_ops.bench.models import BenchModel
from sollol_ops.bench.settings import BenchConfig
from sollol_ops.bench.stats import ratio, round_or_none
from sollol_ops.cluster.toolchain import Toolchain

_TEXT = (
    "the quick brown fox jumps over a lazy dog while seven small birds sing about rain and "
    "sunlight in an old green garden near the river where children play every summer"
)


def make_prompt(n_tokens: int, salt: int) -> str:
    vocab = _TEXT.split()
    words = [vocab[(i * 7 + salt) % len(vocab)] for i in range(max(1, n_tokens - 12))]
    return f"Request {salt}: continue this text. " + " ".join(words)


class BenchBase:
    """What every bench of a session collects, the lists of the JSON document (sollol_ops.bench): one
    constructor for the sharding Bench and the GatewayBench, so the session reads the same fields of both."""

    def __init__(
        self, cfg: BenchConfig, toolchain: Toolchain, work: Path, log: Callable[[str], None] = lambda _m: None
    ) -> None:
        self.cfg, self.toolchain, self.work, self.say = cfg, toolchain, work, log
        self.reaper = Reaper()
        self.logs = work / "logs"
        self.rows: list[dict[str, Any]] = []
        self.comparisons: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.section_notes: dict[str, list[str]] = {}
        self.staging: list[dict[str, Any]] = []
        self.up_phases: dict[str, dict[str, dict[str, list[float]]]] = {}  # model -> label -> phase -> samples

    def add_comparison(
        self,
        section: str,
        model: BenchModel,
        what: str,
        a: dict[str, Any],
        b: dict[str, Any],
        metric: str,
        goal: tuple[str, float] | None = None,
    ) -> None:
        """b against a on `metric` (ratio of the row medians), with the issue's goal when there is one."""
        am, bm = a["metrics"].get(metric), b["metrics"].get(metric)
        if not am or not bm:
            return
        value = round_or_none(ratio(bm["median"], am["median"]))
        met = None
        if goal is not None and value is not None:
            met = value <= goal[1] if goal[0] == "<=" else value >= goal[1]
        self.comparisons.append(
            {
                "section": section,
                "model": model.ref,
                "what": what,
                "a": a["settings"],
                "b": b["settings"],
                "metric": metric,
                "unit": "tok/s" if metric.endswith("_tps") else "s",
                "a_median": round(am["median"], 6),  # as the rows show them (rounded only for the text)
                "b_median": round(bm["median"], 6),
                "ratio": value,
                "goal": None if goal is None else f"{goal[0]} {goal[1]:g}x",
                "met": met,
            }
        )

    def run(self, models: Sequence[BenchModel]) -> None:
        raise NotImplementedError
