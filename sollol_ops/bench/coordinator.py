"""The section "coordinator" of the sharding bench: a persistent coordinator vs. one started per query, and
`sollol-ops up` (traced, and the --up-before tree's) vs. a raw llama-server --rpc to ready."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import sollol_ops
from sollol_ops import timings
from sollol_ops.bench.backends import RpcBackends
from sollol_ops.bench.harness import Harness
from sollol_ops.bench.models import BenchModel
from sollol_ops.bench.server import server_argv, upstream_argv
from sollol_ops.bench.settings import Settings
from sollol_ops.errors import BenchError

UP_AFTER = "sollol-ops up"
UP_BEFORE = "sollol-ops up (before)"
RAW = "raw llama-server --rpc"
WALL = "wall: spawn to return"
INVENTORY_COLD = "inventory, empty cache (ansible-inventory; warm-up run)"


def rows(bench: Harness, model: BenchModel, backends: RpcBackends, k: int, link: str) -> None:
    """Persistent coordinator vs per-query start; `sollol-ops up` vs raw llama-server to ready."""
    settings = Settings()
    endpoints = backends.start(k, settings.rpc_threads_for(k), bench.work / "rpc-cache-coord")
    try:
        prompt_salt = 999
        server = bench.serve(model, endpoints, settings, "persistent")
        persistent: dict[str, list[float]] = {}
        try:
            bench.query(server, prompt_salt, cache_prompt=True)  # the query a user repeats
            for _ in range(bench.cfg.repeats):  # its prompt is cached: only TTFT means something here
                persistent.setdefault("ttft_s", []).append(bench.query(server, prompt_salt, True).ttft_s)
        finally:
            bench.unload(server)
        per_query: dict[str, list[float]] = {"ttft_s": []}
        for _ in range(bench.cfg.repeats):
            port = bench.port()
            t0 = time.perf_counter()
            server = bench.load(
                server_argv(bench.toolchain, model, port, endpoints, settings, bench.cfg.ctx), port, "per-query"
            )
            try:
                q = bench.query(server, prompt_salt, cache_prompt=True)
                per_query["ttft_s"].append(time.perf_counter() - t0 - q.total_s + q.ttft_s)
                per_query.setdefault("ready_s", []).append(server.ready_s)
            finally:
                bench.unload(server)
        a = bench.add_row("coordinator", model, "rpc", k, link, "persistent coordinator", persistent)
        b = bench.add_row("coordinator", model, "rpc", k, link, "coordinator per query", per_query)
        bench.add_comparison("coordinator", model, "TTFT of a repeated query", a, b, "ttft_s")
        up, raw = _up_vs_raw(bench, model, endpoints)
        a = bench.add_row("coordinator", model, "rpc", k, link, "raw llama-server --rpc", {"ready_s": raw})
        b = bench.add_row("coordinator", model, "rpc", k, link, "sollol-ops up", {"ready_s": up})
        bench.add_comparison("coordinator", model, "start to ready", a, b, "ready_s")
    finally:
        backends.stop()


def _up_env(bench: Harness) -> dict[str, str]:
    env = dict(os.environ)
    env.update(XDG_STATE_HOME=str(bench.work / "up-state"), XDG_CACHE_HOME=str(bench.work / "up-cache"))
    env.pop("SOLLOL_INVENTORY", None)
    env[timings.TRACE_ENV] = "1"
    if env.pop("PYTHONDONTWRITEBYTECODE", None):
        # An installed sollol-ops has compiled bytecode; without it every `up` would compile its modules.
        env["PYTHONPYCACHEPREFIX"] = str(bench.work / "pycache")
        note = "`up` ran with a bytecode cache (PYTHONDONTWRITEBYTECODE was set here), as an installed package has"
        if note not in bench.notes:
            bench.notes.append(note)
    return env


def _up_vs_raw(bench: Harness, model: BenchModel, endpoints: Sequence[str]) -> tuple[list[float], list[float]]:
    """Repeats of `sollol-ops up` (and of the --up-before tree's) and of a raw llama-server --rpc, interleaved;
    each `up` traced (SOLLOL_OPS_TRACE=1), its phases kept in bench.up_phases."""
    inv = bench.work / "up-inventory.ini"
    hosts = [e.rsplit(":", 1) for e in endpoints]
    lines = ["[rpc_servers]"] + [f"bench-{i} ansible_host={h} sollol_rpc_port={p}" for i, (h, p) in enumerate(hosts)]
    inv.write_text("\n".join([*lines, "", "[coordinator]", "localhost ansible_connection=local", ""]))
    # Each tree's `up` imports that tree's sollol_ops, and only it: PYTHONPATH names the tree and -P keeps
    # Python from putting the working directory (a checkout has sollol_ops/ in it) before it.
    env = dict(_up_env(bench), PYTHONPATH=str(Path(sollol_ops.__file__).resolve().parent.parent))
    store = str(model.blob.parent.parent)
    trees: list[tuple[str, dict[str, str]]] = [(UP_AFTER, env)]
    if bench.cfg.up_before is not None:
        # its own inventory cache, so that its warm-up pays for ansible-inventory as the other one does
        before = dict(env, PYTHONPATH=str(bench.cfg.up_before), XDG_CACHE_HOME=str(bench.work / "up-cache-before"))
        trees.insert(0, (UP_BEFORE, before))
    cli = [sys.executable, "-P", "-m", "sollol_ops.cli.main", "-i", str(inv)]
    times: dict[str, list[float]] = {label: [] for label, _ in trees}
    phases = bench.up_phases.setdefault(model.ref, {})
    for label, tree_env in trees:
        # Warm-up, as an operator's first look would be: fills the inventory cache (ansible-inventory runs
        # once) and the bytecode cache. Its inventory phase is kept as the empty-cache figure.
        argv = [*cli, "up", model.resolved_ref, "--dry-run", "-c", str(bench.cfg.ctx), "--ollama-models", store]
        proc = subprocess.run(argv, capture_output=True, text=True, env=tree_env, timeout=bench.cfg.timeout)
        if proc.returncode != 0:
            raise BenchError(f"`sollol-ops up --dry-run` failed in the bench: {_untimed(proc.stderr)[:300]}")
        for name, seconds in timings.parse_lines(proc.stderr):
            if name == "inventory":
                phases.setdefault(label, {}).setdefault(INVENTORY_COLD, []).append(seconds)
    raw_times = []
    for r in range(bench.cfg.repeats):
        for label, tree_env in trees if r % 2 == 0 else trees[::-1]:  # neither always runs first
            port = bench.port()
            argv = [*cli, "up", model.resolved_ref, "--port", str(port), "-c", str(bench.cfg.ctx)]
            argv += ["--ollama-models", store, "--timeout", str(bench.cfg.timeout)]
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, env=tree_env, timeout=bench.cfg.timeout)
                times[label].append(time.perf_counter() - t0)
            finally:
                subprocess.run([*cli, "down"], capture_output=True, env=tree_env, timeout=60, check=False)
            if proc.returncode != 0:
                raise BenchError(f"`sollol-ops up` failed in the bench: {_untimed(proc.stderr)[:300]}")
            acc = phases.setdefault(label, {})
            for name, seconds in timings.parse_lines(proc.stderr):
                acc.setdefault(name, []).append(seconds)
            acc.setdefault(WALL, []).append(times[label][-1])
        port = bench.port()
        server = bench.load(upstream_argv(bench.toolchain, model, port, endpoints, bench.cfg.ctx), port, "raw")
        raw_times.append(server.ready_s)
        bench.unload(server)
        phases.setdefault(RAW, {}).setdefault(WALL, []).append(server.ready_s)
    if UP_BEFORE in times:
        bench.add_row("coordinator", model, "rpc", len(endpoints), "loopback", UP_BEFORE, {"ready_s": times[UP_BEFORE]})
    return times[UP_AFTER], raw_times


def _untimed(stderr: str) -> str:
    """A traced command's stderr without its timing lines (what is left is the error)."""
    return " ".join(ln for ln in stderr.strip().splitlines() if not ln.startswith(timings.PREFIX))
