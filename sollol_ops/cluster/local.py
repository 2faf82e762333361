"""A local cluster for the demo, tests and benchmarks: N rpc-servers on one host plus a matching inventory."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sollol_ops import procs
from sollol_ops.cluster import facts as cluster_vars
from sollol_ops.cluster import rpc
from sollol_ops.cluster.toolchain import Toolchain, find_toolchain
from sollol_ops.errors import BackendError, StateError, UsageError
from sollol_ops.paths import cache_dir, state_dir
from sollol_ops.serve import statefile


@dataclass
class LocalServer:
    port: int
    pid: int
    start_time: int | None
    log: str
    argv0: str | None = None  # the program, so a reused pid is never signalled


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
        """What a client on this host dials (a wildcard bind is reached on loopback)."""
        return [f"{dial_address(self.host)}:{s.port}" for s in self.servers]


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
    argv = rpc_server_argv(toolchain, spec)
    pid = procs.spawn_detached(argv, spec.log, env=env)
    return LocalServer(spec.port, pid, procs.process_start_time(pid), str(spec.log), argv[0])


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


def load(root: Path | None = None, warn: statefile.Warn = statefile.warn_stderr) -> LocalCluster | None:
    """The recorded local cluster, or None; a corrupt file is set aside with one warning line."""
    return statefile.load(_state_file(root or default_root()), LocalCluster, "local cluster state", warn)


def dial_address(host: str) -> str:
    """The address a client on this host dials for a server bound to ``host``: a wildcard bind (every
    interface) is reached on loopback; any other address as it is."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return "::1" if host == "::" else host


def exposure_warning(host: str) -> str | None:
    if procs.is_loopback(host):
        return None
    where = "every interface" if host in ("0.0.0.0", "::", "") else host
    return (
        f"rpc-server has no authentication and will listen on {where}: anyone who can reach this host can "
        "allocate its memory, run graphs on it and crash it; bind 127.0.0.1 or firewall the ports to the coordinator"
    )


def write_inventory(path: Path, host: str, ports: list[int], threads: int) -> None:
    lines = [
        "# Written by `sollol-ops local start`: local rpc-servers for the demo and tests.",
        f"[{cluster_vars.RPC_GROUP}]",
    ]
    lines += [f"local-{p} ansible_host={host} sollol_rpc_port={p}" for p in ports]
    lines += ["", f"[{cluster_vars.COORDINATOR_GROUP}]", "localhost ansible_connection=local", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def start(
    count: int,
    *,
    host: str = "127.0.0.1",
    base_port: int = cluster_vars.DEFAULT_PORT,
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
    with statefile.exclusive(root / "cluster.lock", f"sollol-ops local start {count}", "the local cluster lock"):
        existing = load(root)
        if existing and any(procs.is_ours(s.pid, s.start_time, s.argv0) for s in existing.servers):
            raise UsageError(
                f"a local cluster is already running ({', '.join(existing.endpoints)}); run `sollol-ops local stop` "
                "first"
            )
        toolchain = toolchain or find_toolchain()
        ncpu = os.cpu_count() or 1
        threads = threads or cluster_vars.rpc_threads(ncpu, count)
        ports = procs.free_ports(host, count, base_port)
        rpc_cache = cache_dir() / "rpc-cache" if cache else None
        inventory = root / "inventory.ini"
        cluster = LocalCluster(host, [], str(inventory), threads, cache, str(root))
        with statefile.reserve(_state_file(root), _template(cluster, count), "the local cluster state") as slot:
            try:
                for p in ports:
                    spec = RpcServerSpec(host, p, threads, root / f"rpc-{p}.log", rpc_cache)
                    cluster.servers.append(start_rpc_server(toolchain, spec))
                write_inventory(inventory, dial_address(host), ports, threads)
                slot.commit(cluster)
            except (OSError, StateError) as exc:
                for s in cluster.servers:
                    procs.stop_process(s.pid, s.start_time, timeout=5, argv0=s.argv0)
                if isinstance(exc, StateError):
                    raise
                raise statefile.cannot_write("the local cluster", root, exc) from exc
    try:
        wait_ready(cluster.endpoints, timeout)
    except BackendError:
        stop(root)
        raise
    return cluster


def _template(cluster: LocalCluster, count: int) -> LocalCluster:
    """The largest state file `count` servers can need, to reserve its room before any starts."""
    big = LocalServer(65535, 1 << 22, 1 << 62, str(Path(cluster.root) / "rpc-65535.log"), "x" * 4096)
    return LocalCluster(cluster.host, [big] * count, cluster.inventory, cluster.threads, cluster.cache, cluster.root)


def stop(root: Path | None = None) -> int:
    """Stop the local cluster's rpc-servers; returns how many were running."""
    root = root or default_root()
    cluster = load(root)
    if cluster is None:
        return 0
    stopped = sum(procs.stop_process(s.pid, s.start_time, timeout=5, argv0=s.argv0) for s in cluster.servers)
    statefile.remove(_state_file(root))
    return stopped
