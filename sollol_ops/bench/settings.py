"""What a bench run is asked for (BenchConfig, the option parsers) and how one row starts its
servers (Settings, the --grid settings)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sollol_ops.cluster import facts as cluster_vars
from sollol_ops.cluster.inventory import Backend
from sollol_ops.dev.netlab import RATE
from sollol_ops.errors import BenchError

NO_LATENCY_NOTE = (
    "no latency emulation: this kernel has no netem qdisc, so shaped links limit the rate (tc tbf) "
    "and add no delay (bridge round trip ~0.05 ms)"
)


@dataclass
class BenchConfig:
    models: list[str]
    backends: list[int] = field(default_factory=lambda: [1, 2])
    repeats: int = 3
    tokens: int = 32
    prompt_tokens: int = 128
    ctx: int = 1024
    links: list[str] = field(default_factory=lambda: ["none"])
    grid: bool = False
    stage: bool = False  # with shaped --links: first load unstaged vs. staged vs. warm (sollol_ops.stage.staging)
    gateway: bool = False  # the gateway's sections (sollol_ops.bench.gateway) instead of the sharding ones
    coordinator_device: bool = False
    placement: bool = False  # the speed planner vs. the memory split and a sweep (sollol_ops.bench.placement)
    speculative: bool = False  # speculative decoding vs. plain on a sharded F32 target (sollol_ops.bench.speculative)
    grid_repeats: int | None = None  # rounds of the --grid cells (default: repeats)
    use_inventory: bool = False
    inventory_backends: list[Backend] = field(default_factory=list)
    ollama_models: str | None = None
    timeout: float = 300.0
    command: str = "sollol-ops bench"
    up_before: Path | None = None  # a source tree (its sollol_ops) whose `up` is measured too: before vs. after
    inventory_hosts: list[int] = field(default_factory=list)  # instead: reading inventories of these sizes


def parse_int_list(text: str, what: str, lo: int = 1, hi: int = 16) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise BenchError(f"{what} must be a comma-separated list of integers, got {text!r}") from exc
    if not values or any(not lo <= v <= hi for v in values):
        raise BenchError(f"{what} must list integers in {lo}..{hi}, got {text!r}")
    return sorted(set(values))


def parse_links(text: str) -> list[str]:
    """`none` (loopback), `bridge` (namespaces, unshaped) or a tc rate such as 1gbit / 100mbit."""
    links = [x.strip().lower() for x in text.split(",") if x.strip()]
    for link in links:
        if link not in ("none", "bridge") and not RATE.match(link):
            raise BenchError(f"--links: {link!r} is not none, bridge or a rate like 1gbit / 100mbit")
    if not links:
        raise BenchError("--links is empty")
    return list(dict.fromkeys(links))


@dataclass
class Settings:
    """How rpc-servers and llama-server are started for one row."""

    name: str = "sollol defaults"
    rpc_threads: int | None = 0  # 0: sollol default (cluster_vars.rpc_threads); None: upstream default (no -t)
    server_threads: int | None = None  # None: sollol default (serve.command.default_threads) / upstream: no --threads
    batch: int | None = None
    upstream: bool = False  # no --device/--tensor-split/--threads/--fit off: llama-server's own defaults
    backend_mib: int | None = None  # sollol_rpc_memory_mib of every rpc-server (None: their usable memory)
    coordinator_mib: int = 0  # memory the coordinator's CPU offers to layers (0: none)

    def rpc_threads_for(self, k: int) -> int | None:
        if self.rpc_threads == cluster_vars.RPC_THREADS_AUTO:  # k rpc-servers on this host, as `local start` runs them
            return cluster_vars.rpc_threads(os.cpu_count() or 1, k)
        return self.rpc_threads


def grid_settings() -> list[Settings]:
    """sollol-ops' defaults, upstream's, every rpc-server/llama-server thread pair up to the host's cores
    (llama.cpp's own batch sizes), and two batch sizes at one thread each."""
    out = [Settings(), Settings("upstream defaults", rpc_threads=None, upstream=True)]
    cores = max(1, os.cpu_count() or 1)
    counts = sorted({1, max(1, cores // 2), cores})
    for rt in counts:
        for st in counts:
            out.append(Settings(f"rpc -t {rt}, server -t {st}", rt, st))
    for b in (256, 512):
        out.append(Settings(f"rpc -t 1, server -t 1, -b {b}", 1, 1, b))
    return out
