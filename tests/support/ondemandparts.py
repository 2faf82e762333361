"""Shared parts of the gateway tests over real rpc-servers and the coordinators the gateway starts (on demand,
progress, degraded): the gateway's on_demand status, and rpc-servers restarted as systemd would."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gatewayparts import GatewayProc
from helpers import Local

from sollol_ops.cluster import local as local_cluster
from sollol_ops.cluster.toolchain import find_toolchain


def od(gw: GatewayProc) -> dict[str, Any]:
    return gw.status()["on_demand"]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def revive(local: Local, env: dict[str, Any], down: Iterable[int] = (), held: Iterable[int] = ()) -> None:
    """What systemd's Restart=on-failure does for a real worker: an rpc-server whose client vanished while
    it wrote its reply dies of SIGPIPE (docs/cli.md), so restart any that died, on the same port; those in
    `down` (killed by the test) stay down. Those in `held` (a coordinator's) are not probed afterwards."""
    down = set(down)
    root = Path(env["env"]["XDG_STATE_HOME"]) / "sollol-ops" / "local"
    state = local_cluster.load(root)
    assert state is not None
    for i, server in enumerate(state.servers):
        if i in down or not gone(local.pids[i]):
            continue
        spec = local_cluster.RpcServerSpec(state.host, server.port, state.threads, root / f"rpc-{server.port}.log")
        new = local_cluster.start_rpc_server(find_toolchain(), spec)
        local.revived.append(new)  # type: ignore[attr-defined]
        local.pids[i] = new.pid
    local_cluster.wait_ready([e for i, e in enumerate(local.endpoints) if i not in down | set(held)], 30)
