"""What a bench run is asked for (BenchConfig, the option parsers, link labels) and how one row starts its
servers (Settings, the --grid settings)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sollol_ops.errors import BenchError
from sollol_ops.inventory import Backend
from sollol_ops.netlab import RATE

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
    stage: bool = False  # with shaped --links: first load unstaged vs. staged vs. warm (sollol_ops.staging)
    gateway: bool = False  # the gateway's sections (sollol_ops.bench.gateway) instead of the sharding ones
    coordinator_device: bool = False
    use_inventory: bool = False
    inventory_backends: list[Backend] = field(default_factory=list)
    ollama_models: str | None = None
    timeout: float = 300.0
    command: str = "sollol-ops bench"


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


def link_label(link: str) -> str:
    return "loopback" if link == "none" else link


@dataclass
class Settings:
    """How rpc-servers and llama-server are started for one row."""

    name: str = "sollol defaults"
    rpc_threads: int | None = 0  # 0: sollol default (cores // k); None: upstream default (no -t)
    server_threads: int | None = None  # None: sollol default (all cores) / upstream: no --threads
    batch: int | None = None
    upstream: bool = False  # no --device/--tensor-split/--threads/--fit off: llama-server's own defaults
    backend_mib: int | None = None  # sollol_rpc_memory_mib of every rpc-server (None: their usable memory)
    coordinator_mib: int = 0  # memory the coordinator's CPU offers to layers (0: none)

    def rpc_threads_for(self, k: int) -> int | None:
        if self.rpc_threads == 0:
            return max(1, (os.cpu_count() or 1) // k)
        return self.rpc_threads


def grid_settings() -> list[Settings]:
    out = [Settings(), Settings("upstream defaults", rpc_threads=None, upstream=True)]
    for rt in (1, 2):
        for st in (1, 2):
            for b in (256, 512):
                out.append(Settings(f"rpc -t {rt}, server -t {st}, -b {b}", rt, st, b))
    return out
