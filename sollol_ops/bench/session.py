"""One whole bench session: the machine, a work directory, the Bench over the models; the JSON document
(schema in the sollol_ops.bench docstring)."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sollol_ops.bench.base import BenchBase
from sollol_ops.bench.gateway import GatewayBench
from sollol_ops.bench.inventory_read import InventoryBench
from sollol_ops.bench.models import resolve_models
from sollol_ops.bench.runs import Bench
from sollol_ops.bench.settings import BenchConfig
from sollol_ops.bench.stats import summarize
from sollol_ops.cluster.rpc import CLIENT_PROTOCOL
from sollol_ops.cluster.toolchain import Toolchain, find_toolchain
from sollol_ops.errors import BenchError, SollolError
from sollol_ops.paths import cache_dir

SCHEMA = "sollol-ops-bench/1"


def machine_info(toolchain: Toolchain | None) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) // 1024
    version = "unknown"
    if toolchain is not None:
        with contextlib.suppress(SollolError):
            version = toolchain.version().removeprefix("version:").strip()
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count() or 1,
        "ram_mib": ram,
        "kernel": platform.release(),
        "llama_cpp_version": version,
        "rpc_protocol": ".".join(str(v) for v in CLIENT_PROTOCOL),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "loadavg_end": None,
    }


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so processes, namespaces and the bridge are still removed."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    root = cache_dir() / "bench" / f"run-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        yield root
    except BaseException:
        kept = root.parent / "failed-logs"  # the logs of the last failed run, for `sollol-ops bench` errors
        shutil.rmtree(kept, ignore_errors=True)
        with contextlib.suppress(OSError):
            shutil.copytree(root / "logs", kept)
        raise
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """The whole benchmark session; returns the JSON document described in the sollol_ops.bench docstring."""
    if cfg.repeats < 1 or cfg.tokens < 1 or cfg.prompt_tokens < 1:
        raise BenchError("--repeats, --tokens and --prompt-tokens must be at least 1")
    if cfg.gateway and (
        cfg.grid
        or cfg.coordinator_device
        or cfg.speculative
        or cfg.placement
        or cfg.use_inventory
        or cfg.links != ["none"]
    ):
        raise BenchError(
            "--gateway starts its own loopback parts: leave out --grid, --coordinator-device, --speculative, "
            "--placement, --links, --use-inventory"
        )
    if cfg.inventory_hosts and (cfg.models or cfg.gateway):
        raise BenchError("--inventory-hosts reads generated inventories only: leave out MODEL and --gateway")
    if not cfg.inventory_hosts and not cfg.models:
        raise BenchError("name at least one MODEL (or pass --inventory-hosts N,...)")
    if (cfg.speculative or cfg.placement) and cfg.use_inventory:
        raise BenchError("--speculative and --placement start their own rpc-servers: leave out --use-inventory")
    toolchain = None if cfg.inventory_hosts else find_toolchain()  # the inventory bench runs no llama.cpp
    started = time.time()
    t0 = time.perf_counter()
    machine = machine_info(toolchain)
    with _workdir() as work, _sigterm_interrupts():
        models = resolve_models(cfg, work / "store")
        kind = InventoryBench if cfg.inventory_hosts else GatewayBench if cfg.gateway else Bench
        bench: BenchBase = kind(cfg, toolchain, work, log)  # type: ignore[arg-type]
        bench.run(models)
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "schema": SCHEMA,
        "started_at": round(started, 3),
        "wall_s": round(time.perf_counter() - t0, 2),
        "command": cfg.command,
        "machine": machine,
        "settings": {
            "repeats": cfg.repeats,
            "tokens": cfg.tokens,
            "prompt_tokens": cfg.prompt_tokens,
            "ctx": cfg.ctx,
            "backends": cfg.backends,
            "links": cfg.links,
            "grid": cfg.grid,
            "stage": cfg.stage,
            "gateway": cfg.gateway,
            "coordinator_device": cfg.coordinator_device,
            "speculative": cfg.speculative,
            "placement": cfg.placement,
            "grid_repeats": cfg.grid_repeats or cfg.repeats,
            "use_inventory": cfg.use_inventory,
            "inventory_hosts": cfg.inventory_hosts,
        },
        "models": [m.describe() for m in models],
        "rows": bench.rows,
        "comparisons": bench.comparisons,
        "staging": bench.staging,
        "up_phases": [
            {
                "model": model,
                "label": label,
                "phases": {name: asdict(st) for name, vals in phases.items() if (st := summarize(vals)) is not None},
            }
            for model, by_label in bench.up_phases.items()
            for label, phases in by_label.items()
        ],
        "notes": bench.notes,
        "section_notes": bench.section_notes,
    }
