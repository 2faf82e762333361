"""`sollol-ops bench --inventory-hosts N,...`: how long reading a big inventory takes, first and from the cache.

Issue 20: an inventory of ~95k hosts took 161 s to read and still 106 s from the cache (the hosts of a group
were collected into a list searched once per host: quadratic). Per host count this writes an INI inventory
(`write_inventory`: rpc_servers as two child groups, a coordinator, group_vars files, host_vars, one host with
two rpc-server instances) and measures, round by round (--repeats, interleaved):

- "first read": `load_cluster` in this process with an empty cache (its own XDG_CACHE_HOME): ansible-inventory
  runs, its JSON is cached, the cluster is built;
- "cached read": `load_cluster` again on the filled cache (no ansible-inventory);
- "rpc-list, cached": `sollol-ops -i INV rpc-list` as its own process on the filled cache, what a user waits
  for (interpreter start-up and imports included).

Each read is checked (the backends it must find). The goal of the issue, "10k hosts cached < 2 s", is reported
met or not for each host count of 10,000 or more (on the cached read, median).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sollol_ops.bench.base import BenchBase
from sollol_ops.bench.models import BenchModel
from sollol_ops.bench.stats import ratio, round_or_none, summarize
from sollol_ops.bench.tables import INVENTORY_SECTION
from sollol_ops.errors import BenchError

SECTION = INVENTORY_SECTION
GOAL_HOSTS = 10_000
GOAL_S = 2.0
READS = ("first read", "cached read", "rpc-list, cached")
MAX_HOSTS = 1 << 20


def _address(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def write_inventory(root: Path, n_hosts: int) -> tuple[Path, int]:
    """An inventory of `n_hosts` rpc_servers hosts (and a coordinator) under `root`; its path and the number
    of backends it declares (one host runs two rpc-server instances)."""
    if not 2 <= n_hosts <= MAX_HOSTS:
        raise BenchError(f"--inventory-hosts: {n_hosts} is out of range 2..{MAX_HOSTS}")
    root.mkdir(parents=True, exist_ok=True)
    n_gpu = max(1, n_hosts // 10)
    lines = ["[coordinator]", "coord ansible_host=10.255.255.254", "", "[gpu]"]
    lines += [f"gpu{i} ansible_host={_address(i + 1)}" for i in range(n_gpu)]
    lines += ["", "[cpu]"]
    lines += [f"cpu{i} ansible_host={_address(n_gpu + i + 1)}" for i in range(n_hosts - n_gpu)]
    lines += ["", "[rpc_servers:children]", "gpu", "cpu", "", "[all:vars]", "ansible_user=admin", ""]
    inventory = root / "inventory.ini"
    inventory.write_text("\n".join(lines))
    (root / "group_vars" / "gpu").mkdir(parents=True, exist_ok=True)
    (root / "group_vars" / "gpu" / "backend.yml").write_text("llama_cpp_backend: cuda\nsollol_rpc_memory_mib: 22000\n")
    (root / "group_vars" / "cpu.yml").write_text("sollol_rpc_weight: 0.5\nsollol_rpc_port: 50060\n")
    (root / "host_vars").mkdir(exist_ok=True)
    (root / "host_vars" / "gpu0.yml").write_text(
        "sollol_rpc_instances:\n  - {port: 50052, device: CUDA0}\n  - {port: 50053, device: CUDA1}\n"
    )
    return inventory, n_hosts + 1


@contextlib.contextmanager
def _cache_home(path: Path) -> Iterator[dict[str, str]]:
    """XDG_CACHE_HOME pointed at `path` for this process (the inventory cache lives below it); the env."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(path)
    try:
        yield dict(os.environ)
    finally:
        if previous is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = previous


def _load(inventory: Path, expected: int) -> float:
    from sollol_ops.cluster.inventory import load_cluster

    t0 = time.perf_counter()
    cluster = load_cluster(inventory)
    elapsed = time.perf_counter() - t0
    if len(cluster.backends) != expected:
        raise BenchError(f"read {len(cluster.backends)} backends from {inventory}, expected {expected}")
    return elapsed


def _rpc_list(inventory: Path, expected: int, env: dict[str, str]) -> float:
    exe = Path(sys.executable).parent / "sollol-ops"
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "sollol_ops.cli.main"]
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, "-i", str(inventory), "rpc-list"], capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0 or proc.stdout.strip().count(",") + 1 != expected:
        raise BenchError(f"sollol-ops rpc-list failed on {inventory}: {proc.stderr.strip()[-300:]}")
    return elapsed


class InventoryBench(BenchBase):
    """The inventory section: rows per host count and read, the goal's comparison."""

    def run(self, models: Sequence[BenchModel]) -> None:
        for n_hosts in self.cfg.inventory_hosts:
            self._measure(n_hosts)
        self.section_notes[SECTION] = [
            "First read: `load_cluster` with an empty inventory cache (ansible-inventory runs, its JSON is cached); "
            "cached read: `load_cluster` again (the cache is hit); rpc-list, cached: `sollol-ops -i INV rpc-list` "
            "as its own process on the filled cache (interpreter and imports included). Generated INI inventory: "
            "rpc_servers as gpu/cpu child groups, group_vars, host_vars, one host with 2 rpc-server instances. "
            f"Goal (issue 20): {GOAL_HOSTS:,} hosts read from the cache in under {GOAL_S:g} s."
        ]

    def _measure(self, n_hosts: int) -> None:
        root = self.work / f"inventory-{n_hosts}"
        inventory, expected = write_inventory(root, n_hosts)
        samples: dict[str, list[float]] = {read: [] for read in READS}
        self.say(f"== inventory of {n_hosts:,} hosts: {self.cfg.repeats} round(s)")
        for r in range(self.cfg.repeats):
            cache = root / f"cache-{r}"
            with _cache_home(cache) as env:
                samples["first read"].append(_load(inventory, expected))
                samples["cached read"].append(_load(inventory, expected))
                samples["rpc-list, cached"].append(_rpc_list(inventory, expected, env))
            shutil.rmtree(cache, ignore_errors=True)
            self.say(f"   round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in samples.items()))
        rows = [self._row(n_hosts, read, samples[read]) for read in READS]
        first = rows[0]["metrics"]["read_s"]["median"]
        for row in rows:
            row["ratios"] = {"read_s": round_or_none(ratio(row["metrics"]["read_s"]["median"], first))}
        self.rows += rows
        if n_hosts >= GOAL_HOSTS:
            self._goal(n_hosts, rows[0], rows[1])

    def _row(self, n_hosts: int, read: str, values: list[float]) -> dict[str, Any]:
        stat = summarize(values)
        assert stat is not None
        return {
            "section": SECTION,
            "model": f"{n_hosts:,} hosts",
            "size_mib": 0.0,
            "setup": read,
            "backends": 0,
            "members": 0,
            "link": "local",
            "settings": read,
            "metrics": {"read_s": {"median": stat.median, "min": stat.min, "max": stat.max, "n": stat.n}},
            "ratios": {},
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }

    def _goal(self, n_hosts: int, first: dict[str, Any], cached: dict[str, Any]) -> None:
        a, b = first["metrics"]["read_s"]["median"], cached["metrics"]["read_s"]["median"]
        self.comparisons.append(
            {
                "section": SECTION,
                "model": first["model"],
                "what": "cached read vs. first read",
                "a": first["settings"],
                "b": cached["settings"],
                "metric": "read_s",
                "unit": "s",
                "a_median": round(a, 6),
                "b_median": round(b, 6),
                "ratio": round_or_none(ratio(b, a)),
                "goal": f"cached < {GOAL_S:g} s",
                "met": b < GOAL_S,
            }
        )
