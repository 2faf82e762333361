"""`sollol-ops bench`: what sharding over llama.cpp RPC costs, measured against one plain node in the same run.

For each model: a local-only baseline (plain llama-server, no RPC), then 1..N rpc-servers (a loopback
cluster started here, cores split between them; or the inventory's running backends with
--use-inventory). Per setup and repeat: a cold load (fresh rpc-servers, empty tensor cache: its own
LLAMA_CACHE directory), one streamed query, a warm load (llama-server restarted against the same
rpc-servers, whose `-c` cache the cold load filled), a second query; the repeats of the baseline and
the sharded setups are interleaved (round r of every setup, then round r+1). Queries stream
/v1/chat/completions (time to the first content chunk = TTFT) and read prompt and generation rates
from the `timings` llama-server sends in the last chunk (prompt cache off, ignore_eos on, so every
query processes the whole prompt and generates exactly --tokens tokens).

Also measured, on the largest backend count: TTFT of a repeated query on a persistent coordinator vs.
a coordinator started per query (spawn llama-server --rpc, wait /health, query, kill: time from spawn
to first token), and `sollol-ops up` to ready vs. a raw `llama-server --rpc` to ready on the same
backends, each `up` traced phase by phase (SOLLOL_OPS_TRACE=1; --up-before TREE times that source tree's
`up` too, interleaved: before vs. after). `up` runs as an operator's would after a first look: one
`up --dry-run` first fills the inventory cache (its ansible-inventory run is reported as a phase of its
own) and, where PYTHONDONTWRITEBYTECODE is set, `up` gets a bytecode cache, as an installed package has.
--links adds setups whose rpc-servers run in network namespaces behind veth + a bridge,
each link shaped with `tc tbf` at the given rate on both veth ends ("bridge": namespaces, no
shaping); those rows add a load without the rpc-server cache (-c off). There is no latency emulation:
this kernel has no netem, so shaped links have the rate limit and ~0.05 ms bridge latency only.
--grid compares sollol-ops defaults, upstream defaults and a small grid (rpc-server/llama-server thread
pairs, two batch sizes) on the first model, --grid-repeats rounds (default --repeats), the cells
interleaved round by round.

Models are Ollama refs (the user's stores) or synthetic llama models `synthetic:<layers>x<n_embd>[-f16|-q8_0]`
(random weights, real 1B-class shapes: n_ff = 2.75 n_embd, 64-wide heads, 8 query heads per KV head,
SmolLM2's tokenizer and chat template copied from the smollm2:135m GGUF), written once into
$XDG_CACHE_HOME/sollol-ops/bench/ and laid out in a temporary Ollama store of this run, never the user's.

Modules: settings (BenchConfig, option parsers, Settings, the grid), stats (Stat, summarize, ratios), models
(the models measured), backends (rpc-servers: loopback, namespaces, inventory; the Reaper), server (everything
llama-server: command line, /health, streamed chat), runs (the Bench: rows and sections), session (run_bench:
the whole session and its JSON document), report (text and markdown), plotting (the PNG plot).

JSON schema (`--json`, "schema": "sollol-ops-bench/1"):
  schema: str; started_at: float (unix); wall_s: float; command: str
  machine: {cpu_model: str, cores: int, ram_mib: int, kernel: str, llama_cpp_version: str,
            rpc_protocol: str, loadavg_start: [float x3], loadavg_end: [float x3]}
  settings: {repeats, tokens, prompt_tokens, ctx, grid_repeats: int; backends: [int]; links: [str];
             grid, use_inventory: bool}
  models: [{ref: str, synthetic: bool, size_mib: float, layers: int, n_embd: int, file_type: str, params: int}]
  rows: [{section: "sharding" | "links" | "coordinator" | "grid",
          model: str, size_mib: float,
          setup: "baseline" | "rpc",        backends: int (0 for the baseline),
          link: "local" | "loopback" | "bridge" | "<rate>" (e.g. "1gbit"), settings: str,
          metrics: {NAME: {median: float, min: float, max: float, n: int}},
          ratios: {NAME: float | null},    # row median / baseline median of the same model in this run
          loadavg_1m: float}]              # the host's 1-minute load average when the row was finished
     metric NAMEs: load_cold_s, load_warm_s, load_nocache_s, ready_s (seconds to /health 200 or to `up`
     returning), ttft_s (seconds), prompt_tps, gen_tps (tokens/s); prompt_n, gen_n (tokens per query).
     The baseline of load_nocache_s is load_cold_s, of ready_s is load_warm_s; others: the same name.
  comparisons: [{model: str, what: str, a: str, b: str, metric: str, a_median: float, b_median: float,
                 ratio: float}]          # ratio = b_median / a_median
  up_phases: [{model: str, label: "sollol-ops up" | "sollol-ops up (before)" | "raw llama-server --rpc",
               phases: {PHASE: {median, min, max: float, n: int}}}]   # seconds; PHASE as `up --timings`
               # prints it, plus "wall: spawn to return" and, from the warm-up, the inventory's empty-cache run
  notes: [str]
"""

from __future__ import annotations

from sollol_ops.bench.models import tokenizer_source
from sollol_ops.bench.plotting import plot, require_matplotlib
from sollol_ops.bench.report import merge_markdown, render_markdown, render_text
from sollol_ops.bench.session import SCHEMA, run_bench
from sollol_ops.bench.settings import BenchConfig, parse_int_list, parse_links
from sollol_ops.bench.stats import Stat, ratio, row_ratios, summarize

__all__ = [
    "SCHEMA",
    "BenchConfig",
    "Stat",
    "merge_markdown",
    "parse_int_list",
    "parse_links",
    "plot",
    "ratio",
    "render_markdown",
    "render_text",
    "require_matplotlib",
    "row_ratios",
    "run_bench",
    "summarize",
    "tokenizer_source",
]
