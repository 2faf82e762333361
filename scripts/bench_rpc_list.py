#!/usr/bin/env python3
"""Wall time of `sollol-ops -i INV rpc-list` against `ansible-inventory -i INV --list`, same inventory, same run.

The inventory is generated into a temp dir: 16 rpc_servers hosts in two child groups (gpu, cpu), a
coordinator, group_vars files and a per-group directory, host_vars, and one GPU host with two rpc-server
instances. XDG_CACHE_HOME points into the temp dir, so the user's cache is neither read nor touched.

Three commands run N times each, interleaved round-robin so that drift of the machine hits all alike:
  - baseline: `ansible-inventory -i INV --list`
  - sollol-ops cold: `sollol-ops -i INV rpc-list` with an empty cache (a fresh XDG_CACHE_HOME per run)
  - sollol-ops warm: the same with the cache filled by an earlier call
The very first sollol-ops call of the run (empty cache, nothing in the OS page cache from earlier
sollol-ops runs) is reported on its own as well. Ratios are sollol-ops / ansible-inventory medians.

    .venv/bin/python scripts/bench_rpc_list.py [-n 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_HOSTS = 16


def find_exe(name: str) -> list[str]:
    local = Path(sys.executable).parent / name
    if local.is_file():
        return [str(local)]
    found = shutil.which(name)
    if found:
        return [found]
    if name == "sollol-ops":
        return [sys.executable, "-m", "sollol_ops.cli.main"]
    sys.exit(f"bench_rpc_list: {name} not found (activate the venv or install ansible-core)")


def write_inventory(root: Path) -> tuple[Path, str]:
    """The generated inventory and the rpc-list it must produce."""
    gpu = [f"gpu{i:02d}" for i in range(1, 5)]
    cpu = [f"cpu{i:02d}" for i in range(1, N_HOSTS - len(gpu) + 1)]
    lines = ["[coordinator]", "coord ansible_host=10.20.0.1", "", "[gpu]"]
    lines += [f"{h} ansible_host=10.20.1.{i}" for i, h in enumerate(gpu, 1)]
    lines += ["", "[cpu]"]
    lines += [f"{h} ansible_host=10.20.2.{i}" for i, h in enumerate(cpu, 1)]
    lines += ["", "[rpc_servers:children]", "gpu", "cpu", "", "[all:vars]", "ansible_user=admin", ""]
    inventory = root / "inventory.ini"
    inventory.write_text("\n".join(lines))
    (root / "group_vars" / "gpu").mkdir(parents=True)
    (root / "group_vars" / "gpu" / "backend.yml").write_text("llama_cpp_backend: cuda\n")
    (root / "group_vars" / "gpu" / "memory.yml").write_text("sollol_rpc_memory_mib: 22000\n")
    (root / "group_vars" / "cpu.yml").write_text("sollol_rpc_weight: 0.5\nsollol_rpc_port: 50060\n")
    (root / "host_vars").mkdir()
    (root / "host_vars" / "gpu01.yml").write_text(
        "sollol_rpc_instances:\n"
        "  - {port: 50052, device: CUDA0, memory_mib: 22000}\n"
        "  - {port: 50053, device: CUDA1, memory_mib: 22000}\n"
    )
    (root / "host_vars" / "cpu01.yml").write_text("sollol_rpc_address: 10.30.2.1\n")
    endpoints = ["10.20.1.1:50052", "10.20.1.1:50053"]
    endpoints += [f"10.20.1.{i}:50052" for i in range(2, len(gpu) + 1)]
    endpoints += ["10.30.2.1:50060"] + [f"10.20.2.{i}:50060" for i in range(2, len(cpu) + 1)]
    return inventory, ",".join(endpoints)


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bench_rpc_list: {' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return elapsed, proc.stdout


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10, help="repeats of each command (default 10)")
    parser.add_argument("--out", type=Path, help="write the markdown table here (default: stdout)")
    args = parser.parse_args()
    if args.n < 1:
        parser.error("-n must be >= 1")

    load_start = os.getloadavg()[0]
    sollol = find_exe("sollol-ops")
    ansible_inventory = find_exe("ansible-inventory")
    with tempfile.TemporaryDirectory(prefix="bench-rpc-list-") as tmp:
        tmpdir = Path(tmp)
        work = tmpdir / "inv"
        work.mkdir()
        inventory, expected = write_inventory(work)
        base_env = {k: v for k, v in os.environ.items() if k not in ("SOLLOL_INVENTORY", "ANSIBLE_CONFIG")}

        def env_with_cache(name: str) -> dict[str, str]:
            return {**base_env, "XDG_CACHE_HOME": str(tmpdir / name)}

        baseline_cmd = [*ansible_inventory, "-i", str(inventory), "--list"]
        sollol_cmd = [*sollol, "-i", str(inventory), "rpc-list"]

        # The first call of the run: empty cache. It also fills the cache the warm runs use.
        first, out = timed(sollol_cmd, env_with_cache("warm-cache"), work)
        if out.strip() != expected:
            sys.exit(f"bench_rpc_list: rpc-list printed {out.strip()!r}, expected {expected!r}")
        hosts = len(json.loads(timed(baseline_cmd, base_env, work)[1])["_meta"]["hostvars"])  # also a warm-up

        samples: dict[str, list[float]] = {"baseline": [], "cold": [], "warm": []}
        for i in range(args.n):
            samples["baseline"].append(timed(baseline_cmd, base_env, work)[0])
            samples["cold"].append(timed(sollol_cmd, env_with_cache(f"cold-{i}"), work)[0])
            samples["warm"].append(timed(sollol_cmd, env_with_cache("warm-cache"), work)[0])
        leftovers = sorted(p.name for p in work.iterdir()) != ["group_vars", "host_vars", "inventory.ini"]
        if leftovers:
            sys.exit("bench_rpc_list: something was written next to the inventory")

    load_end = os.getloadavg()[0]
    stats = {k: summary(v) for k, v in samples.items()}
    base = stats["baseline"]["median"]
    rows = [
        ("`ansible-inventory -i INV --list` (baseline)", stats["baseline"], args.n),
        ("`sollol-ops -i INV rpc-list`, empty cache", stats["cold"], args.n),
        ("`sollol-ops -i INV rpc-list`, warm cache", stats["warm"], args.n),
    ]
    out_lines = [
        f"Inventory: {N_HOSTS} rpc_servers hosts ({hosts} hosts in all, with the coordinator) in gpu/cpu child groups,",
        "group_vars (file + per-group directory), host_vars, one host with 2 rpc-server instances",
        f"({len(expected.split(','))} backends). N={args.n} runs of each command, interleaved; wall time of the whole",
        f"process. Python {platform.python_version()}; sollol-ops and ansible-inventory from the same environment.",
        f"{os.cpu_count()} CPUs; 1-minute load average {load_start:.1f} at the start, {load_end:.1f} at the end.",
        "",
        "| command | N | median ms | min-max ms | ratio to baseline (median) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, s, n in rows:
        out_lines.append(
            f"| {label} | {n} | {ms(s['median'])} | {ms(s['min'])}-{ms(s['max'])} | {s['median'] / base:.2f} |"
        )
    out_lines.append(
        f"| `sollol-ops -i INV rpc-list`, first call of the run (empty cache) | 1 | {ms(first)} | - | "
        f"{first / base:.2f} |"
    )
    text = "\n".join(out_lines) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
