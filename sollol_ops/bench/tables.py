"""The cells of the bench's tables: per-row figures and labels, the compact, gateway and staging tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def median_of(row: dict[str, Any], name: str) -> float | None:
    stat = row["metrics"].get(name)
    return None if stat is None else stat["median"]


def fmt_stat(row: dict[str, Any], name: str, digits: int = 2) -> str:
    stat = row["metrics"].get(name)
    if stat is None:
        return "-"
    if stat["n"] == 1 or stat["min"] == stat["max"]:
        return f"{stat['median']:.{digits}f}"
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"


def fmt_ratio(row: dict[str, Any], name: str) -> str:
    value = row["ratios"].get(name)
    return "-" if value is None else f"{value:.2f}x"


def who(row: dict[str, Any]) -> str:
    return "local only" if row["setup"] == "baseline" else f"{row['backends']} rpc ({row['link']})"


TABLE_HEADERS = (
    "MODEL", "MiB", "SETUP", "SETTINGS", "COLD LOAD s", "WARM LOAD s", "NO -c LOAD s",
    "PROMPT tok/s", "GEN tok/s", "GEN x", "TTFT s", "TTFT x", "READY s", "LOAD x",
)  # fmt: skip


def compact_table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells, leaving out the metric columns no row has a value in."""
    if rows and rows[0]["section"] in GATEWAY_SECTIONS:
        return _compact(GATEWAY_HEADERS, gateway_rows(rows))
    if rows and rows[0]["section"] == INVENTORY_SECTION:
        return list(INVENTORY_HEADERS), inventory_rows(rows)
    if rows and rows[0]["section"] in SPECULATIVE_SECTIONS:
        return _compact(SPECULATIVE_HEADERS, speculative_rows(rows))
    return _compact(TABLE_HEADERS, table_rows(rows))


def _compact(headers: Sequence[str], cells: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    keep = [i for i in range(len(headers)) if i < 4 or any(row[i] != "-" for row in cells)]
    return [headers[i] for i in keep], [[row[i] for i in keep] for row in cells]


GATEWAY_SECTIONS = ("gateway", "gateway-pool", "ondemand")
SPECULATIVE_SECTIONS = ("speculative", "placement")
SPECULATIVE_HEADERS = (
    "MODEL", "MiB", "LINK", "SETTINGS", "LOAD s", "TTFT s", "GEN tok/s", "PRED tok/s", "ACCEPTED", "IDENTICAL",
    "LOAD 1m",
)  # fmt: skip


def speculative_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Cells of the speculative and placement sections: the link, the generation rate, the draft acceptance
    rate, the share of rounds whose greedy answer matched the plain one, and the planner's predicted rate."""
    return [
        [
            r["model"],
            f"{r['size_mib']:,.0f}",
            f"{r['backends']} rpc ({r['link']})",
            r["settings"],
            fmt_stat(r, "load_s", 1),
            fmt_stat(r, "ttft_s", 3),
            fmt_stat(r, "gen_tps", 1),
            fmt_stat(r, "pred_tps", 1),
            fmt_stat(r, "accept_rate", 2),
            fmt_stat(r, "identical", 2),
            f"{r['loadavg_1m']:.2f}",
        ]
        for r in rows
    ]


GATEWAY_HEADERS = (
    "MODEL", "MiB", "SETUP", "SETTINGS", "TTFT s", "TTFT x", "GEN tok/s", "GEN x", "AGG tok/s", "AGG x", "LOAD 1m",
)  # fmt: skip


INVENTORY_SECTION = "inventory"  # sollol_ops.bench.inventory_read
INVENTORY_HEADERS = ("HOSTS", "READ", "SECONDS", "x FIRST READ", "LOAD 1m")


def inventory_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Cells of the inventory section: seconds median (min-max), x = ratio to the first read."""
    return [
        [r["model"], r["setup"], fmt_stat(r, "read_s", 3), fmt_ratio(r, "read_s"), f"{r['loadavg_1m']:.2f}"]
        for r in rows
    ]


def _where(row: dict[str, Any]) -> str:
    if row["backends"]:
        return f"{row['setup']} ({row['backends']} rpc, {row['link']})"
    return f"{row['setup']} ({row['members']} member{'s' if row['members'] != 1 else ''})"


def gateway_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Cells of the gateway sections; `x`: ratio to the section's first (reference) row."""
    return [
        [
            r["model"],
            f"{r['size_mib']:,.0f}",
            _where(r),
            r["settings"],
            fmt_stat(r, "ttft_s", 3),
            fmt_ratio(r, "ttft_s"),
            fmt_stat(r, "gen_tps", 1),
            fmt_ratio(r, "gen_tps"),
            fmt_stat(r, "agg_tps", 1),
            fmt_ratio(r, "agg_tps"),
            f"{r['loadavg_1m']:.2f}",
        ]
        for r in rows
    ]


def comparison_text(c: dict[str, Any]) -> str:
    unit = c.get("unit") or ("tok/s" if c["metric"].endswith("_tps") else "s")
    digits = 1 if unit == "tok/s" else 3
    goal = c.get("goal")
    verdict = "" if goal is None else f" (goal {goal}: {'met' if c.get('met') else 'not met'})"
    ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2f}x"
    return (
        f"{c['model']}: {c['what']}: {c['a']} {c['a_median']:.{digits}f} {unit} vs {c['b']} "
        f"{c['b_median']:.{digits}f} {unit} -> {ratio}{verdict}"
    )


def table_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in rows:
        load_ratio = r["ratios"].get("load_cold_s") or r["ratios"].get("ready_s")
        out.append(
            [
                r["model"],
                f"{r['size_mib']:,.0f}",
                who(r),
                r["settings"],
                fmt_stat(r, "load_cold_s"),
                fmt_stat(r, "load_warm_s"),
                fmt_stat(r, "load_nocache_s"),
                fmt_stat(r, "prompt_tps", 1),
                fmt_stat(r, "gen_tps", 1),
                fmt_ratio(r, "gen_tps"),
                fmt_stat(r, "ttft_s", 3),
                fmt_ratio(r, "ttft_s"),
                fmt_stat(r, "ready_s"),
                "-" if load_ratio is None else f"{load_ratio:.2f}x",
            ]
        )
    return out


STAGING_TITLE = "## Staging: first load unstaged vs. staged vs. warm"
STAGING_HEADERS = (
    "MODEL", "MiB", "LINK", "FIRST LOAD UNSTAGED s", "MiB SENT", "LINK LIMIT s", "LINK USE",
    "STAGING s (ahead)", "FIRST LOAD STAGED s", "MiB SENT", "STAGED x", "WARM LOAD s", "MiB SENT",
)  # fmt: skip


def _stat(stat: dict[str, Any] | None, digits: int = 2) -> str:
    if not stat:
        return "-"
    if stat["n"] == 1 or stat["min"] == stat["max"]:
        return f"{stat['median']:.{digits}f}"
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"


def staging_rows(doc: dict[str, Any]) -> list[list[str]]:
    out = []
    for r in doc.get("staging", []):
        m = r["metrics"]
        out.append(
            [
                r["model"],
                f"{r['size_mib']:,.0f}",
                f"{r['backends']} rpc ({r['link']})",
                _stat(m["unstaged"].get("load_s")),
                _stat(m["unstaged"].get("sent_mib"), 0),
                f"{r['link_limit_s']:.2f}",
                "-" if r["link_use"] is None else f"{r['link_use']:.2f}",
                _stat(r.get("stage_s")),
                _stat(m["staged"].get("load_s")),
                _stat(m["staged"].get("sent_mib"), 0),
                "-" if r["staged_over_unstaged"] is None else f"{r['staged_over_unstaged']:.2f}x",
                _stat(m["warm"].get("load_s")),
                _stat(m["warm"].get("sent_mib"), 0),
            ]
        )
    return out


STAGING_NOTE = (
    "UNSTAGED: fresh rpc-servers with empty `-c` caches of their own, first load (every tensor crosses the "
    "link and fills the cache). STAGED: fresh rpc-servers with empty caches, `sollol-ops stage` run inside each "
    "worker's namespace from a pack file (loopback there: nothing crosses the link), then the first load. WARM: "
    "llama-server restarted against the staged servers. MiB SENT: bytes this machine sent into the namespaces "
    "during the load (veth counters). LINK LIMIT: unstaged MiB sent / link rate (llama.cpp uploads tensors one "
    "after another, so the links do not add up); LINK USE = limit / unstaged load (goal >= 0.85). STAGED x = "
    "staged / unstaged first load (goal <= 0.25x at 100 Mbit). STAGING s: the pack write and the upload on the "
    "workers, done ahead of time, not part of any load."
)
