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
--stage (with shaped --links) adds, per rate: the first load on fresh rpc-servers with empty caches of their
own (unstaged), then on fresh empty caches `sollol-ops stage` run inside each worker's namespace from a pack
(sollol_ops.stage.staging), the first load (staged) and a warm load; bytes sent into the namespaces are counted on
the veths, and the unstaged load is compared with the link limit (bytes sent / rate).
--grid compares sollol-ops defaults, upstream defaults and a small grid (rpc-server/llama-server thread
pairs, two batch sizes) on the first model, --grid-repeats rounds (default --repeats), the cells
interleaved round by round.
--coordinator-device compares, on the first model, coordinator + 1 worker (the coordinator's CPU keeps layers)
with 2 workers on the same cores and threads (module coordinator_device), in at least 3 interleaved rounds.

--speculative compares, on the first model re-encoded to F32 (the target) sharded over 2 rpc-servers, plain generation
with a draft model (the model as given, on the coordinator's CPU) and with n-gram drafting, on loopback, behind
delay relays of 0.3 ms and 2 ms one way, and behind tbf 1 Gbit + 0.3 ms (module speculative); --placement compares
the speed planner's split with llama.cpp's memory split and at least 20 swept splits on an uneven cluster of 3
rpc-servers, one in a CPU quota and one behind a slower link (module placement).

--gateway measures the gateway instead (sollol_ops.bench.gateway, on the first model, loopback parts only):
TTFT and generation tokens/s through `sollol-ops gateway` (OpenAI and Ollama routes) vs. direct to the same
llama-server pool member; a pool of 2 members vs. 1 (each llama-server -t 1 pinned to its own core) under 4
concurrent streamed clients; and, in shard mode over --backends' largest count of loopback rpc-servers, the
first request's TTFT (a load on demand) vs. `sollol-ops up` + the request by hand, a repeated and a new
request on the loaded model, and a swap between two store names of the model. Each comparison carries the
issue's goal and whether it was met.

Models are Ollama refs (the user's stores) or synthetic llama models `synthetic:<layers>x<n_embd>[-f16|-q8_0]`
(random weights, real 1B-class shapes: n_ff = 2.75 n_embd, 64-wide heads, 8 query heads per KV head,
SmolLM2's tokenizer and chat template copied from the smollm2:135m GGUF), written once into
$XDG_CACHE_HOME/sollol-ops/bench/ and laid out in a temporary Ollama store of this run, never the user's.

Modules: settings (BenchConfig, option parsers, Settings, the grid), stats (Stat, summarize, ratios), models
(the models measured), backends (rpc-servers: loopback, namespaces, inventory; the Reaper), server (everything
llama-server: command line, /health, streamed chat), runs (the Bench: rows and sections), coordinator_device
(coordinator + 1 worker vs. 2 workers), gateway (the GatewayBench: the --gateway sections), session (run_bench:
the whole session and its JSON document), report (text and markdown), plotting (the PNG plot).

JSON schema (`--json`, "schema": "sollol-ops-bench/1"):
  schema: str; started_at: float (unix); wall_s: float; command: str
  machine: {cpu_model: str, cores: int, ram_mib: int, kernel: str, llama_cpp_version: str,
            rpc_protocol: str, loadavg_start: [float x3], loadavg_end: [float x3]}
  settings: {repeats, tokens, prompt_tokens, ctx, grid_repeats: int; backends: [int]; links: [str];
             grid, stage, gateway, coordinator_device, use_inventory: bool}
  models: [{ref: str, synthetic: bool, size_mib: float, layers: int, n_embd: int, file_type: str, params: int}]
  rows: [{section: "sharding" | "links" | "coordinator" | "grid" | "coordinator-device" | "speculative" | "placement"
                 | "gateway" | "gateway-pool" | "ondemand",
          model: str, size_mib: float,
          setup: "baseline" | "rpc"          (sharding sections)
               | "direct" | "gateway" | "by hand"  (gateway sections: to llama-server itself, through
                                            `sollol-ops gateway`, `sollol-ops up` + a request by hand),
          backends: int (rpc-servers; 0 for the baseline and the pool sections),
          members: int (gateway sections only: pool members behind the gateway; 0 in "ondemand"),
          link: "local" | "loopback" | "bridge" | "<rate>" (e.g. "1gbit"), settings: str,
          metrics: {NAME: {median: float, min: float, max: float, n: int}},
          ratios: {NAME: float | null},    # row median / baseline median of the same model in this run;
                                           # gateway sections: / the section's first row (its reference)
          loadavg_1m: float}]              # the host's 1-minute load average when the row was finished
     "speculative" / "placement" rows: link "loopback" | "0.3ms" | "2ms" | "1gbit+0.3ms" | "uneven"; metrics load_s,
     ttft_s, gen_tps; accept_rate (drafted tokens accepted / drafted), identical (1.0: the greedy answer matched plain
     generation's of the same round), pred_tps (the speed planner's predicted tokens/s for that split).
     metric NAMEs: load_cold_s, load_warm_s, load_nocache_s, ready_s (seconds to /health 200 or to `up`
     returning), ttft_s (seconds), prompt_tps, gen_tps (tokens/s); prompt_n, gen_n (tokens per query).
     The baseline of load_nocache_s is load_cold_s, of ready_s is load_warm_s; others: the same name.
     Gateway sections, as the client sees them: ttft_s (request sent to the first content chunk; "ondemand":
     including the load, or for "by hand" from starting `sollol-ops up`), gen_tps ((gen_n - 1) / (last content
     chunk - first content chunk)), gen_n (generated tokens as the server reports them at the end of the
     stream; "gateway-pool": all clients of one batch), agg_tps (all clients' tokens / the batch's wall time),
     wall_s (one batch, first request sent to last token).
  comparisons: [{section: str, model: str, what: str, a: str, b: str (row settings), metric: str,
                 unit: "s" | "tok/s", a_median: float, b_median: float,
                 ratio: float,           # = b_median / a_median (of the unrounded row medians)
                 goal: str | null,       # the issue's goal on the ratio, e.g. "<= 1.05x" (gateway sections)
                 met: bool | null}]      # whether the ratio meets it
  notes: [str]                           # about the whole run
  section_notes: {SECTION: [str]}        # how a section was measured (the --gateway sections)
  staging: [{model: str, size_mib: float, backends: int, link: "<rate>",
             metrics: {"unstaged" | "staged" | "warm": {load_s | sent_mib: STAT}},  # STAT as in rows
             stage_s: STAT | null,     # writing the packs + staging on the workers (ahead of time)
             staged_over_unstaged: float | null,   # staged first load / unstaged first load (medians)
             link_limit_s: float,      # unstaged MiB sent (median) / link rate
             link_use: float | null}]  # link_limit_s / unstaged first load (median)
  up_phases: [{model: str, label: "sollol-ops up" | "sollol-ops up (before)" | "raw llama-server --rpc",
               phases: {PHASE: {median, min, max: float, n: int}}}]   # seconds; PHASE as `up --timings`
               # prints it, plus "wall: spawn to return" and, from the warm-up, the inventory's empty-cache run
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
