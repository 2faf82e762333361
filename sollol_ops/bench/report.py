"""The bench's results as text and as markdown sections merged into an existing file (docs/benchmarks.md);
the tables' cells are sollol_ops.bench.tables."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sollol_ops.bench.settings import NO_LATENCY_NOTE
from sollol_ops.bench.tables import (
    GATEWAY_SECTIONS,
    INVENTORY_SECTION,
    SPECULATIVE_SECTIONS,
    STAGING_HEADERS,
    STAGING_NOTE,
    STAGING_TITLE,
    compact_table,
    comparison_text,
    fmt_stat,
    staging_rows,
)


def render_text(doc: dict[str, Any]) -> str:
    from sollol_ops.ui import table

    m = doc["machine"]
    headers, cells = compact_table(doc["rows"])
    lines = [
        f"machine: {m['cpu_model']}, {m['cores']} cores, {m['ram_mib']:,} MiB RAM, llama.cpp {m['llama_cpp_version']}"
        f" (RPC {m['rpc_protocol']}); load average {m['loadavg_start'][0]} -> {(m['loadavg_end'] or ['?'])[0]}",
        f"settings: {doc['settings']['repeats']} repeat(s), {doc['settings']['tokens']} generated / "
        f"{doc['settings']['prompt_tokens']} prompt tokens, ctx {doc['settings']['ctx']}; median (min-max); "
        "x = ratio to the local-only baseline of the same model in this run (gateway sections: to the section's "
        "first row)",
    ]
    own = (*GATEWAY_SECTIONS, *SPECULATIVE_SECTIONS, INVENTORY_SECTION)  # sections with tables of their own
    shard = [r for r in doc["rows"] if r["section"] not in own]
    groups = [shard] + [[r for r in doc["rows"] if r["section"] == key] for key in own]
    for rows in groups:
        if rows:
            headers, cells = compact_table(rows)
            lines += ["", table(headers, cells, right=(1, *range(4, len(headers))))]
    if doc["comparisons"]:
        lines += ["", "comparisons (ratio = b / a):"]
        lines += [f"  {comparison_text(c)}" for c in doc["comparisons"]]
    if doc.get("staging"):
        lines += ["", "staging (first load unstaged vs. staged vs. warm):"]
        lines.append(table(STAGING_HEADERS, staging_rows(doc), right=(1, *range(3, len(STAGING_HEADERS)))))
    lines += [f"note: {n}" for n in doc["notes"]]
    notes = doc.get("section_notes", {})
    lines += [f"note ({key}): {n}" for key in SPECULATIVE_SECTIONS for n in notes.get(key, [])]
    lines.append(f"wall time: {doc['wall_s']:.1f}s")
    return "\n".join(lines)


def _value(comparison: dict[str, Any], key: str) -> str:
    """A compared median with its unit: seconds for *_s metrics, tokens/s for *_tps."""
    value = comparison[key]
    return f"{value:.1f} tok/s" if comparison["metric"].endswith("_tps") else f"{value:.3f} s"


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(out)


def grid_summary(rows: Sequence[dict[str, Any]], rounds: int) -> list[str]:
    """sollol defaults against upstream defaults and the best grid cell, per metric that matters."""
    grid = [r for r in rows if r["section"] == "grid"]
    by_name = {r["settings"]: r for r in grid}
    ours, upstream = by_name.get("sollol defaults"), by_name.get("upstream defaults")
    if ours is None:
        return []
    out = [
        "",
        f"Each cell: {rounds} round(s), the cells interleaved round by round (a burst of other load hits every "
        "cell alike); per round a cold and a warm load with one query each, so each rate has twice as many "
        "samples. sollol defaults against upstream's and the best cell, by median:",
        "",
        "| metric | sollol defaults | upstream defaults | best cell | defaults / best | defaults / upstream |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (("gen_tps", "GEN tok/s"), ("prompt_tps", "PROMPT tok/s")):
        scored = [(r["metrics"][name]["median"], r) for r in grid if name in r["metrics"]]
        if not scored or name not in ours["metrics"]:
            continue
        best_value, best = max(scored, key=lambda x: x[0])
        mine = ours["metrics"][name]["median"]
        up = upstream["metrics"][name]["median"] if upstream and name in upstream["metrics"] else None
        out.append(
            f"| {label} | {fmt_stat(ours, name, 1)} | {fmt_stat(upstream, name, 1) if upstream else '-'} | "
            f"{best['settings']}: {fmt_stat(best, name, 1)} | {mine / best_value:.2f}x | "
            f"{'-' if not up else f'{mine / up:.2f}x'} |"
        )
    return out


UP_PHASES_TITLE = "## Where `up` spends its time"


def _fmt(stat: dict[str, Any] | None, digits: int = 3) -> str:
    if stat is None:
        return "-"
    if stat["n"] == 1 or stat["min"] == stat["max"]:
        return f"{stat['median']:.{digits}f}"
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"


def up_phases_markdown(doc: dict[str, Any], machine: str) -> str | None:
    """Each phase of `sollol-ops up` (its SOLLOL_OPS_TRACE lines), before vs. after when --up-before was given."""
    entries = doc.get("up_phases") or []
    if not entries:
        return None
    body = [UP_PHASES_TITLE, "", machine, ""]
    body.append(
        "Each `up` ran traced (`SOLLOL_OPS_TRACE=1`, what `up --timings` prints): one line per phase, back to back; "
        '"interpreter + imports" runs from the kernel\'s start time of the process (10 ms resolution) to the '
        "command's first line. \"wall\" is the bench's own clock from spawning the command to its return, the "
        "figure of the coordinator section; the raw llama-server's wall is spawn to /health 200. Seconds, median "
        "(min-max)."
    )
    for model in dict.fromkeys(e["model"] for e in entries):
        by_label = {e["label"]: e["phases"] for e in entries if e["model"] == model}
        labels = [x for x in by_label if x != "raw llama-server --rpc"]
        names = list(dict.fromkeys(n for x in labels for n in by_label[x]))
        names = [n for n in names if not n.startswith("wall")] + [n for n in names if n.startswith("wall")]
        rows = [[n, *(_fmt(by_label[x].get(n)) for x in labels)] for n in names]
        raw = by_label.get("raw llama-server --rpc", {})
        if "wall: spawn to return" in raw:  # the reference, the same in every column
            stat = _fmt(raw["wall: spawn to return"])
            rows.append(["raw llama-server --rpc: spawn to /health 200", *(stat for _ in labels)])
        body += ["", f"{model}:", "", _md_table(["phase", *labels], rows)]
    return "\n".join(body).rstrip() + "\n"


SECTION_TITLES = {
    "sharding": "## Sharding vs. a single node",
    "coordinator": "## Persistent coordinator vs. per-query start",
    "links": "## Links and the rpc-server cache",
    "grid": "## Defaults vs. tuned settings",
    "gateway": "## Gateway vs. direct to llama-server",
    "gateway-pool": "## Gateway pool: 2 members vs. 1",
    "ondemand": "## Sharded models on demand through the gateway",
    "coordinator-device": "## The coordinator as a device: coordinator + 1 worker vs. 2 workers",
    INVENTORY_SECTION: "## Reading a big inventory: first read vs. the cache",
    "speculative": "## Speculative decoding on a sharded model",
    "placement": "## Placement from measured speed vs. llama.cpp's memory split",
}


def public_command(command: str) -> str:
    """The command as docs show it: this machine's home directory written `~` (no machine path in docs)."""
    home = str(Path.home())
    return command.replace(home + "/", "~/") if home not in ("/", "") else command


def render_markdown(doc: dict[str, Any], plot: str | None = None) -> dict[str, str]:
    """Markdown sections keyed by their `## ` heading, for the sections this run has rows for."""
    m, s = doc["machine"], doc["settings"]
    machine = (
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['ram_mib']:,} MiB RAM, kernel {m['kernel']}, "
        f"llama.cpp {m['llama_cpp_version']} (RPC protocol {m['rpc_protocol']}); load average "
        f"{m['loadavg_start'][0]} at the start, {(m['loadavg_end'] or ['?'])[0]} at the end (other work shares "
        f"these cores, so figures are noisy). Command: `{public_command(doc['command'])}` ({s['repeats']} repeat(s), "
        f"{s['tokens']} generated / {s['prompt_tokens']} prompt tokens, ctx {s['ctx']}; run took "
        f"{doc['wall_s']:.0f} s). Cells: median (min-max); `x`: ratio to the local-only baseline of the same "
        "model measured in the same run."
    )
    sections: dict[str, str] = {}
    for key, title in SECTION_TITLES.items():
        rows = [r for r in doc["rows"] if r["section"] == key]
        if not rows or all(r["setup"] == "baseline" for r in rows):
            continue  # a run of baselines only (e.g. --links without none) leaves this section alone
        if key in ("links", "grid"):  # show the baseline and loopback reference rows too
            refs = [
                r
                for r in doc["rows"]
                if r["section"] == "sharding"
                and r["model"] in {x["model"] for x in rows}
                and (r["setup"] == "baseline" or r["backends"] == rows[0]["backends"])
            ]
            rows = refs + rows
        gateway = key in (*GATEWAY_SECTIONS, INVENTORY_SECTION)  # comparisons with the goal
        reference = "ratio to the first row of this section (the reference: " + rows[0]["settings"] + ")"
        head = machine.replace("ratio to the local-only baseline of the same model measured in the same run", reference)
        if key == INVENTORY_SECTION:  # no model, no tokens: rounds only
            head = head.replace(reference, "ratio to the first read of the same inventory").replace(
                f"({s['repeats']} repeat(s), {s['tokens']} generated / {s['prompt_tokens']} prompt tokens, "
                f"ctx {s['ctx']}; ",
                f"({s['repeats']} round(s); ",
            )
        body = [title, "", head if gateway else machine, ""]
        body.append(_md_table(*compact_table(rows)))
        comps = [c for c in doc["comparisons"] if c.get("section", "coordinator") == key]
        if comps and (gateway or any(c.get("goal") for c in comps)):
            body += ["", "| model | what | a | b | ratio b/a | goal | met |", "|---|---|---|---|---|---|---|"]
            body += [_comparison_row(c) for c in comps]
        elif comps:
            body += ["", "| model | what | metric | a | b | ratio b/a |", "|---|---|---|---|---|---|"]
            body += [
                f"| {c['model']} | {c['what']} | {c['metric']} | {c['a']}: {_value(c, 'a_median')} | "
                f"{c['b']}: {_value(c, 'b_median')} | {c['ratio']:.2f}x |"
                for c in comps
            ]
        for note in doc.get("section_notes", {}).get(key, []):
            body += ["", note]
        if key == "links":
            body += ["", f"Note: {NO_LATENCY_NOTE}. COLD: fresh rpc-servers with an empty `-c` cache (filling it); "
                     "WARM: llama-server restarted against the same rpc-servers (cache filled); NO -c: rpc-servers "
                     "without the cache. The cache only holds tensors over 10 MiB."]  # fmt: skip
        if key == "coordinator-device":
            body += ["", "Same cores, same threads: with t = cores / 2, `2 workers` runs two rpc-servers `-t t` "
                     "holding every layer (llama-server `-t t` only embeds and samples); `coordinator + 1 worker` "
                     "runs one rpc-server `-t t` and llama-server `-t t` whose CPU keeps the leading layers "
                     "(`--coordinator-memory`). Every slot offers the same memory, so both split the layers "
                     "equally. At least 3 interleaved rounds of cold load + query and warm load + query."]  # fmt: skip
        if key == "grid":
            body += ["", "Upstream defaults: rpc-server without `-t` (half the cores), llama-server with `--rpc` "
                     "`-ngl 99` and its own split, threads and batch size."]  # fmt: skip
            body += grid_summary(rows, s.get("grid_repeats", s["repeats"]))
        if key == "sharding":
            body += ["", "All setups share this host's cores: `N rpc` runs N rpc-servers (cores split between them) "
                     "and llama-server side by side, so on one machine the ratios show what RPC and thread "
                     "placement cost or save, not what extra hardware buys."]  # fmt: skip
        if key == "sharding" and plot:
            body += ["", f"![cost vs. model size]({plot})"]
        body += [f"\n_{n}_" for n in doc["notes"] if key != "links" or n != NO_LATENCY_NOTE]
        sections[title] = "\n".join(body).rstrip() + "\n"
    if doc.get("staging"):
        body = [STAGING_TITLE, "", machine, "", _md_table(STAGING_HEADERS, staging_rows(doc)), "", STAGING_NOTE]
        sections[STAGING_TITLE] = "\n".join(body).rstrip() + "\n"
    if (phases := up_phases_markdown(doc, machine)) is not None:
        sections[UP_PHASES_TITLE] = phases
    return sections


def _comparison_row(c: dict[str, Any]) -> str:
    unit = c.get("unit") or ("tok/s" if c["metric"].endswith("_tps") else "s")
    digits = 1 if unit == "tok/s" else 3
    met = "-" if c.get("met") is None else ("yes" if c["met"] else "no")
    ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2f}x"
    return (
        f"| {c['model']} | {c['what']} | {c['a']}: {c['a_median']:.{digits}f} {unit} | {c['b']}: "
        f"{c['b_median']:.{digits}f} {unit} | {ratio} | {c.get('goal') or '-'} | {met} |"
    )


def merge_markdown(existing: str, sections: dict[str, str], title: str = "# Benchmarks") -> str:
    """Replace the `## ` sections this run wrote, keep every other section (in place), append new ones."""
    if not existing.strip():
        existing = f"{title}\n"
    parts = re.split(r"(?m)^(?=## )", existing)
    out, seen = [], set()
    for part in parts:
        heading = part.splitlines()[0].strip() if part.startswith("## ") else None
        if heading in sections:
            out.append(sections[heading].rstrip() + "\n\n")
            seen.add(heading)
        else:
            out.append(part if part.endswith("\n\n") or not part.startswith("## ") else part.rstrip() + "\n\n")
    for heading, text in sections.items():
        if heading not in seen:
            if out and not out[-1].endswith("\n\n"):
                out[-1] = out[-1].rstrip() + "\n\n"
            out.append(text.rstrip() + "\n\n")
    return "".join(out).rstrip() + "\n"
