"""--placement: the speed planner's split against llama.cpp's memory split and a sweep of candidate splits, on a
deliberately uneven cluster.

Three rpc-servers on loopback, each `-t 1` and declaring the same memory (so the memory split is equal thirds):
RPC0 as is; RPC1 behind the delay relay (0.5 ms one way: the slower link); RPC2 inside a cgroup CPU quota of a
quarter core (sollol_ops.dev.cpuquota: the slow worker). The target is the first model re-encoded to F32 (as in
--speculative), whose per-token cost is mostly reading weights. The planner's inputs are measured in this run the
way `sollol-ops plan --measure` measures them (compute over RPC, the link through the relay), into a cache file of
this run's own. Every candidate split (the planner's, the memory split, and at least 20 swept layer counts) is
loaded through serve/command.py and queried, the rounds interleaved; the rows give the measured and the predicted
generation tok/s. Goals: the planner within 5% of the best swept split, and >= 1.2x the memory split.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sollol_ops import procs
from sollol_ops.bench.backends import RPC_PORT_LOOPBACK, wait_rpc_ready
from sollol_ops.bench.models import BenchModel
from sollol_ops.bench.speculative import Relays, target_model
from sollol_ops.cluster import link as rpc_link
from sollol_ops.cluster import rpc, speed, speed_cache
from sollol_ops.cluster.inventory import Backend
from sollol_ops.cluster.local import RpcServerSpec, rpc_server_argv
from sollol_ops.cluster.placement import build_slots, plan_placement
from sollol_ops.cluster.speed_plan import CostModel, counts_of, plan_from_counts, slot_costs, speed_split
from sollol_ops.dev import cpuquota
from sollol_ops.errors import BenchError, PlacementError
from sollol_ops.serve import command
from sollol_ops.serve.command import StartOptions

if TYPE_CHECKING:
    from sollol_ops.bench.harness import Harness

SECTION = "placement"
SLOW_QUOTA = 0.25  # cores for the slow worker
SLOW_LINK_MS = 0.5  # one way, in front of the second worker
OFFER_MIB = 2048  # what every worker declares: equal memory, so llama.cpp's split is equal thirds
MIN_SWEEP = 20
MIN_ROUNDS = 2
GOAL_BEST = (">=", 0.95)
GOAL_MEMORY = (">=", 1.2)


def sweep(n_layers: int, count: int = 3) -> list[list[int]]:
    """At least MIN_SWEEP distinct splits of n_layers (with the output) over `count` workers, from giving the last
    worker nothing to an equal share, the others' layers split in several ratios."""
    out: list[list[int]] = []
    last_shares = [0, 1, 2, 4, 6, n_layers // count]
    for last in dict.fromkeys(last_shares):
        rest = n_layers - last
        for frac in (1.0, 0.75, 0.55, 0.35):
            first = max(1, round(rest * frac))
            split = [first, rest - first] + [0] * (count - 3) + [last]
            if split not in out:
                out.append(split)
    return out


@contextlib.contextmanager
def _cluster(bench: Harness, cache: Path) -> Iterator[list[str]]:
    """The three uneven rpc-servers (loopback), the relay in front of the second: the endpoints to dial."""
    quota = cpuquota.CpuQuota("bench-slow", SLOW_QUOTA)
    relays = Relays(bench)
    pids: list[int] = []
    try:
        ports = procs.free_ports("127.0.0.1", 3, RPC_PORT_LOOPBACK)
        logs = []
        for i, port in enumerate(ports):
            spec = RpcServerSpec("127.0.0.1", port, 1, bench.logs / f"rpc-uneven-{i}.log", cache / f"w{i}")
            (cache / f"w{i}").mkdir(parents=True, exist_ok=True)
            argv = rpc_server_argv(bench.toolchain, spec)
            env = {**os.environ, "LLAMA_CACHE": str(cache / f"w{i}")}
            pids.append(bench.reaper.spawn(quota.wrap(argv) if i == 2 else argv, spec.log, env))
            logs.append(spec.log)
        endpoints = [f"127.0.0.1:{p}" for p in ports]
        wait_rpc_ready(endpoints, pids, logs, 30.0)
        endpoints[1] = relays.start([endpoints[1]], SLOW_LINK_MS)[0]
        yield endpoints
    finally:
        relays.stop()
        for pid in pids:
            bench.reaper.stop(pid)
        quota.remove()


def _measure(endpoints: Sequence[str], ggml_type: str, cache_path: Path, build: str) -> speed_cache.SpeedCache:
    """Each worker's compute and link, measured as `plan --measure` does, into this run's own cache file."""
    cache = speed_cache.load(cache_path)
    for endpoint in endpoints:
        result = speed.measure_compute(endpoint, ggml_type)
        if not result.ok:
            raise BenchError(f"measuring {endpoint} failed: {result.detail}")
        cache.record_speed(build, result)
        link = rpc_link.measure_link(endpoint, 8 << 20, uploads=3)
        if not link.ok:
            raise BenchError(f"measuring the link to {endpoint} failed: {link.detail}")
        cache.record_link(link)
    return cache


def run(bench: Harness, model: BenchModel) -> None:
    """Rows of every candidate split and the comparisons planner vs. best swept and planner vs. memory split."""
    notes = bench.section_notes.setdefault(SECTION, [])
    if (why := cpuquota.available()) is not None:
        notes.append(f"not measured: the slow worker needs a CPU quota ({why})")
        return
    target = target_model(model)
    bench.say(f"== placement on an uneven cluster: {target.ref}")
    info, build = target.info, speed_cache.build_id(bench.toolchain)
    ggml_type = speed.measure_type(info.file_type_name)
    with _cluster(bench, bench.work / "rpc-cache-uneven") as endpoints:
        backends = [Backend(f"w{i}", *_split(e), memory_mib=OFFER_MIB) for i, e in enumerate(endpoints)]
        probes = list(zip(backends, rpc.probe_all(endpoints), strict=True))
        if not all(r.ok for _, r in probes):
            raise BenchError("an rpc-server of the uneven cluster did not answer its probe")
        slots = build_slots(probes)
        memory_plan = plan_placement(info, slots, bench.cfg.ctx, target.ref)
        cache = _measure(endpoints, ggml_type, bench.work / "speed.json", build)
        totals = {(b.endpoint, d.index): d.total for b, r in probes for d in r.devices}
        costs, missing = slot_costs(slots, totals, cache, build, ggml_type)
        if missing or any(c is None for c in costs):
            raise BenchError("the planner lacks a measured cost for a worker")
        known = [c for c in costs if c is not None]
        choice = speed_split(info, slots, known, bench.cfg.ctx, memory_plan)
        model_costs = CostModel(info, slots, known, bench.cfg.ctx)
        memory_counts = counts_of(memory_plan, slots)
        candidates: dict[str, list[int]] = {"planner": choice.predicted.counts, "memory": memory_counts}
        for split in sweep(info.block_count + 1):
            candidates.setdefault(f"sweep {'/'.join(map(str, split))}", split)
        plans = {}
        for name, counts in candidates.items():
            try:
                plans[name] = plan_from_counts(info, slots, counts, bench.cfg.ctx)
            except PlacementError as exc:
                notes.append(f"{name}: not run ({exc})")
        samples: dict[str, dict[str, list[float]]] = {name: {} for name in plans}
        for r in range(max(MIN_ROUNDS, bench.cfg.repeats)):
            for name, plan in plans.items():
                port = bench.port()
                opts = StartOptions(port=port, n_ctx=bench.cfg.ctx, threads=1, alias=target.resolved_ref)
                server = bench.load(command.command(bench.toolchain, target.blob, opts, plan), port, "uneven")
                try:
                    q = bench.query(server, salt=r)
                finally:
                    bench.unload(server)
                acc = samples[name]
                acc.setdefault("load_s", []).append(server.ready_s)
                acc.setdefault("ttft_s", []).append(q.ttft_s)
                if q.gen_tps is not None:
                    acc.setdefault("gen_tps", []).append(q.gen_tps)
                acc.setdefault("pred_tps", []).append(model_costs.predict(candidates[name]).tokens_per_s)
    rows = {
        name: bench.add_row(SECTION, target, "rpc", 3, "uneven", _label(name, candidates[name]), acc)
        for name, acc in samples.items()
    }
    swept = [rows[n] for n in rows if n.startswith("sweep")]
    best = max(swept, key=lambda row: row["metrics"].get("gen_tps", {}).get("median", 0.0))
    bench.add_comparison(SECTION, target, "planner vs. best swept split", best, rows["planner"], "gen_tps", GOAL_BEST)
    memory = rows["memory"]
    bench.add_comparison(SECTION, target, "planner vs. memory split", memory, rows["planner"], "gen_tps", GOAL_MEMORY)
    notes.append(
        f"Uneven cluster: 3 rpc-servers -t 1 declaring {OFFER_MIB} MiB each; w1 behind a {SLOW_LINK_MS} ms one-way "
        f"delay relay, w2 in a CPU quota of {SLOW_QUOTA} core. The planner's figures were measured in this run "
        f"({', '.join(f'{s.name} {c.speed.ms_per_gib:.0f} ms/GiB' for s, c in zip(slots, known, strict=True))}); "
        f"its reasons: {'; '.join(f'{k} {v}' for k, v in choice.reasons.items()) or 'none'}. "
        f"{len(swept)} swept splits; best swept: {best['settings']}. Splits are layer counts (of n_layer + 1) per "
        "worker w0/w1/w2; PRED tok/s is the planner's prediction for that split."
    )


def _split(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.rsplit(":", 1)
    return host, int(port)


def _label(name: str, counts: Sequence[int]) -> str:
    split = "/".join(map(str, counts))
    return name if name.startswith("sweep") else f"{name} {split}"
