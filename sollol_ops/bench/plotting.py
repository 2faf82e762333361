"""The bench's plot (matplotlib, optional): generation rate and cold load against model size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sollol_ops.bench.tables import median_of, who
from sollol_ops.errors import BenchError


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise BenchError("--plot needs matplotlib: pip install matplotlib (or pip install 'sollol-ops[plot]')") from exc


def plot(doc: dict[str, Any], path: Path) -> None:
    """Generation rate and cold load time against model size, one line per setup."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[str, list[tuple[float, float | None, float | None]]] = {}
    for r in doc["rows"]:
        if r["section"] not in ("sharding", "links") or r["settings"] not in ("plain llama-server", "sollol defaults"):
            continue
        series.setdefault(who(r), []).append((r["size_mib"], median_of(r, "gen_tps"), median_of(r, "load_cold_s")))
    for label, pts in series.items():
        pts.sort()
        xs = [p[0] for p in pts]
        ax1.plot(xs, [p[1] for p in pts], marker="o", label=label)
        ax2.plot(xs, [p[2] for p in pts], marker="o", label=label)
    ax1.set(xlabel="model size (MiB)", ylabel="generation tok/s (median)", title="Generation rate")
    ax2.set(xlabel="model size (MiB)", ylabel="seconds to ready (median)", title="Cold load")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    m = doc["machine"]
    fig.suptitle(
        f"sollol-ops bench: {m['cpu_model']}, {m['cores']} cores, llama.cpp {m['llama_cpp_version']}", fontsize=9
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
