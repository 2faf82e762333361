"""A local cluster for the demo, tests and benchmarks: N rpc-servers on one host plus a matching inventory."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sollol_ops import procs, rpc
from sollol_ops.errors import BackendError, UsageError
from sollol_ops.paths import cache_dir, state_dir
from sollol_ops.toolchain import Toolchain, find_toolchain


@dataclass
class LocalServer:
    port: int
    pid: int
    start_time: int | None
    log: str


@dataclass
class LocalCluster:
    host: str
    servers: list[LocalServer]
    inventory: str
    threads: int
    cache: bool
    root: str = ""

    @property
    def endpoints(self) -> list[str]:
        return [f"{self.host}:{s.port}" for s in self.servers]


@dataclass
class RpcServerSpec:
    host: str
    port: int
    threads: int
    log: Path
    cache_dir: Path | None = None
    device: str | None = None
    extra: list[str] = field(default_factory=list)


def rpc_server_argv(toolchain: Toolchain, spec: RpcServerSpec) -> list[str]:
    argv = [str(toolchain.rpc_server), "-H", spec.host, "-p", str(spec.port), "-t", str(spec.threads)]
    if spec.cache_dir is not None:
        argv.append("-c")
    if spec.device:
        argv += ["-d", spec.device]
    return argv + spec.extra


def start_rpc_server(toolchain: Toolchain, spec: RpcServerSpec) -> LocalServer:
    env = dict(os.environ)
    if spec.cache_dir is not None:
        spec.cache_dir.mkdir(parents=True, exist_ok=True)
        env["LLAMA_CACHE"] = str(spec.cache_dir)
    pid = procs.spawn_detached(rpc_server_argv(toolchain, spec), spec.log, env=env)
    return LocalServer(spec.port, pid, procs.process_start_time(pid), str(spec.log))


def wait_ready(endpoints: list[str], timeout: float = 30.0) -> list[rpc.ProbeResult]:
    deadline = time.monotonic() + timeout
    while True:
        results = rpc.probe_all(endpoints, connect_timeout=1.0, turn_timeout=1.0)
        if all(r.ok for r in results):
            return results
        if time.monotonic() > deadline:
            bad = ", ".join(f"{r.endpoint} {r.status.value} ({r.detail})" for r in results if not r.ok)
            raise BackendError(f"local rpc-servers not ready after {timeout:g}s: {bad}")
        time.sleep(0.1)


def _state_file(root: Path) -> Path:
    return root / "cluster.json"


def default_root() -> Path:
    return state_dir() / "local"


def load(root: Path | None = None) -> LocalCluster | None:
    root = root or default_root()
    try:
        data = json.loads(_state_file(root).read_text())
    except (OSError, ValueError):
        return None
    data["servers"] = [LocalServer(**s) for s in data["servers"]]
    return LocalCluster(**data)


def write_inventory(path: Path, host: str, ports: list[int], threads: int) -> None:
    lines = [
        "# Written by `sollol-ops local start`: local rpc-servers for the demo and tests.",
        "[rpc_servers]",
    ]
    lines += [f"local-{p} ansible_host={host} sollol_rpc_port={p}" for p in ports]
    lines += ["", "[coordinator]", "localhost ansible_connection=local", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def start(
    count: int,
    *,
    host: str = "127.0.0.1",
    base_port: int = 50052,
    threads: int | None = None,
    cache: bool = True,
    root: Path | None = None,
    toolchain: Toolchain | None = None,
    timeout: float = 30.0,
) -> LocalCluster:
    """Start `count` rpc-servers on consecutive free ports, cores split between them."""
    if count < 1 or count > 64:
        raise UsageError(f"local cluster size must be 1..64, got {count}")
    root = root or default_root()
    existing = load(root)
    if existing and any(procs.is_alive(s.pid, s.start_time) for s in existing.servers):
        raise UsageError(
            f"a local cluster is already running ({', '.join(existing.endpoints)}); run `sollol-ops local stop` first"
        )
    toolchain = toolchain or find_toolchain()
    ncpu = os.cpu_count() or 1
    threads = threads or max(1, ncpu // count)
    ports = procs.free_ports(host, count, base_port)
    rpc_cache = cache_dir() / "rpc-cache" if cache else None
    servers = [
        start_rpc_server(toolchain, RpcServerSpec(host, p, threads, root / f"rpc-{p}.log", rpc_cache)) for p in ports
    ]
    inventory = root / "inventory.ini"
    write_inventory(inventory, host, ports, threads)
    cluster = LocalCluster(host, servers, str(inventory), threads, cache, str(root))
    _state_file(root).write_text(json.dumps(asdict(cluster), indent=2))
    try:
        wait_ready(cluster.endpoints, timeout)
    except BackendError:
        stop(root)
        raise
    return cluster


def stop(root: Path | None = None) -> int:
    """Stop the local cluster's rpc-servers; returns how many were running."""
    root = root or default_root()
    cluster = load(root)
    if cluster is None:
        return 0
    stopped = sum(procs.stop_process(s.pid, s.start_time, timeout=5) for s in cluster.servers)
    _state_file(root).unlink(missing_ok=True)
    return stopped
