"""The rpc-servers a bench row shards over: spawned on loopback, inside network namespaces, or the inventory's;
and the Reaper that stops every process the bench starts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sollol_ops import procs
from sollol_ops.cluster import facts as cluster_vars
from sollol_ops.cluster import local as local_cluster
from sollol_ops.cluster.inventory import Backend
from sollol_ops.cluster.local import RpcServerSpec
from sollol_ops.cluster.toolchain import Toolchain
from sollol_ops.dev.netlab import NetLab
from sollol_ops.errors import BenchError, SollolError
from sollol_ops.serve import server_log

NETNS_SUBNET = "10.213"
# Loopback rpc-servers are searched from here: below the kernel's ephemeral range (32768-60999 by default), so an
# outgoing connection cannot take the port between the free-port check and rpc-server's bind (a busy port makes
# rpc-server print "Failed to create server socket" and exit 0).
RPC_PORT_LOOPBACK = 29400
RPC_PORT_NETNS = cluster_vars.DEFAULT_PORT


class Reaper:
    """Every process the bench starts, stopped on exit whatever happens (exceptions, Ctrl-C)."""

    def __init__(self) -> None:
        self.pids: dict[int, int | None] = {}

    def spawn(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> int:
        pid = procs.spawn_detached(argv, log, env=env)
        self.pids[pid] = procs.process_start_time(pid)
        return pid

    def stop(self, pid: int, timeout: float = 10.0) -> None:
        start = self.pids.pop(pid, None)
        procs.stop_process(pid, start, timeout=timeout)

    def stop_all(self) -> None:
        for pid in list(self.pids):
            self.stop(pid, timeout=5.0)


class RpcBackends:
    """Start and stop k rpc-servers; endpoints as host:port."""

    kind = "loopback"
    fresh = True  # whether start() gives new processes with the cache dir asked for

    def start(self, k: int, threads: int | None, cache: Path | None) -> list[str]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


def _rpc_argv(toolchain: Toolchain, spec: RpcServerSpec, threads: int | None) -> list[str]:
    argv = local_cluster.rpc_server_argv(toolchain, spec)
    if threads is None:  # upstream default: no -t (half the cores)
        i = argv.index("-t")
        del argv[i : i + 2]
    return argv


def wait_rpc_ready(endpoints: list[str], pids: Sequence[int], logs: Sequence[Path], timeout: float) -> None:
    """local_cluster.wait_ready, failing with the log of an rpc-server that died instead of a bare timeout."""
    try:
        local_cluster.wait_ready(endpoints, timeout)
    except SollolError as exc:
        dead = [(e, log) for e, pid, log in zip(endpoints, pids, logs, strict=True) if not procs.is_alive(pid)]
        detail = "; ".join(f"{e} exited: {server_log.last_line(log)} (log {log})" for e, log in dead)
        raise BenchError(f"{exc}{'; ' + detail if detail else ''}") from exc


def _rpc_env(cache: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        env["LLAMA_CACHE"] = str(cache)
    return env


class SpawnedBackends(RpcBackends):
    """rpc-servers this run spawned (tracked by pid, stopped through the reaper)."""

    reaper: Reaper
    pids: list[int]

    def stop(self) -> None:
        for pid in self.pids:
            self.reaper.stop(pid)
        self.pids = []


class LoopbackBackends(SpawnedBackends):
    def __init__(self, toolchain: Toolchain, reaper: Reaper, logs: Path, timeout: float) -> None:
        self.toolchain, self.reaper, self.logs, self.timeout = toolchain, reaper, logs, timeout
        self.pids: list[int] = []

    def start(self, k: int, threads: int | None, cache: Path | None) -> list[str]:
        self.stop()
        ports = procs.free_ports("127.0.0.1", k, RPC_PORT_LOOPBACK)
        logs = []
        for port in ports:
            spec = RpcServerSpec("127.0.0.1", port, threads or 1, self.logs / f"rpc-{port}.log", cache)
            self.pids.append(self.reaper.spawn(_rpc_argv(self.toolchain, spec, threads), spec.log, _rpc_env(cache)))
            logs.append(spec.log)
        endpoints = [f"127.0.0.1:{p}" for p in ports]
        wait_rpc_ready(endpoints, self.pids, logs, self.timeout)
        return endpoints


class InventoryBackends(RpcBackends):
    """The inventory's running rpc-servers: nothing is started or stopped, caches are what they are."""

    kind = "inventory"
    fresh = False

    def __init__(self, backends: Sequence[Backend]) -> None:
        self.backends = list(backends)

    def start(self, k: int, threads: int | None, cache: Path | None) -> list[str]:
        if k > len(self.backends):
            raise BenchError(f"--backends asks for {k} but the inventory lists {len(self.backends)}")
        endpoints = [b.endpoint for b in self.backends[:k]]
        local_cluster.wait_ready(endpoints, 10.0)
        return endpoints

    def stop(self) -> None:
        pass


class NetnsBackends(SpawnedBackends):
    """rpc-servers inside the namespaces of a NetLab, one per namespace, bound to its address."""

    kind = "netns"

    def __init__(self, toolchain: Toolchain, reaper: Reaper, logs: Path, timeout: float, count: int) -> None:
        self.lab = NetLab(count, prefix=f"sb{os.getpid() % 10_000_000}", subnet_base=NETNS_SUBNET)
        self.toolchain, self.reaper, self.logs, self.timeout = toolchain, reaper, logs, timeout
        self.pids: list[int] = []

    def up(self) -> None:
        self.lab.up()

    def shape(self, rate: str | None) -> None:
        self.lab.shape(rate)

    def start(self, k: int, threads: int | None, cache: Path | None, own_caches: bool = False) -> list[str]:
        """k rpc-servers; with `own_caches` each gets LLAMA_CACHE=<cache>/ns<i> (see cache_dir), else all share
        <cache>."""
        self.stop()
        if k > self.lab.count:
            raise BenchError(f"the namespace lab has {self.lab.count} namespaces, {k} asked")
        endpoints, logs = [], []
        for i in range(k):
            home = cache / f"ns{i}" if cache is not None and own_caches else cache
            spec = RpcServerSpec(self.lab.address(i), RPC_PORT_NETNS, threads or 1, self.logs / f"rpc-ns{i}.log", home)
            argv = self.lab.exec_argv(i, _rpc_argv(self.toolchain, spec, threads))
            self.pids.append(self.reaper.spawn(argv, spec.log, _rpc_env(home)))
            endpoints.append(f"{self.lab.address(i)}:{RPC_PORT_NETNS}")
            logs.append(spec.log)
        wait_rpc_ready(endpoints, self.pids, logs, self.timeout)
        return endpoints

    @staticmethod
    def cache_dir(cache: Path, i: int) -> Path:
        """The tensor cache of server i started with own_caches (rpc-server appends /rpc to LLAMA_CACHE)."""
        return cache / f"ns{i}" / "rpc"

    def tx_bytes(self, i: int) -> int:
        """Bytes this machine has sent into namespace i (the host end of its veth)."""
        return int(Path(f"/sys/class/net/{self.lab.host_veth(i)}/statistics/tx_bytes").read_text())

    def down(self) -> None:
        self.stop()
        self.lab.down()
