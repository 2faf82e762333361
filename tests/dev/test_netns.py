"""`up` across test hosts in network namespaces: rpc-servers on their own addresses behind a bridge,
the coordinator outside, an inventory naming those addresses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from groups import kill_groups
from helpers import run_cli
from ports import free_port

from sollol_ops import procs
from sollol_ops.cluster.local import wait_ready
from sollol_ops.cluster.toolchain import find_toolchain
from sollol_ops.dev.netlab import NetLab
from sollol_ops.serve.coordinator import CoordinatorState, chat

pytestmark = [pytest.mark.netns, pytest.mark.toolchain, pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _root_only() -> None:
    if os.geteuid() != 0:
        pytest.fail("network-namespace tests need root (CI runs as root)")


def test_up_across_network_namespaces(sollol_env: dict[str, str], tmp_path: Path) -> None:
    rpc = find_toolchain().rpc_server
    with NetLab(3, subnet_base="10.214") as lab:
        pids = []
        try:
            for i in range(3):
                argv = lab.exec_argv(i, [str(rpc), "-H", lab.address(i), "-p", "50052", "-t", "1"])
                pids.append(procs.spawn_detached(argv, tmp_path / f"rpc{i}.log"))
            endpoints = [f"{lab.address(i)}:50052" for i in range(3)]
            wait_ready(endpoints, timeout=20)
            inv = tmp_path / "inventory.ini"
            inv.write_text(
                "[rpc_servers]\n"
                + "".join(f"ws{i} ansible_host={lab.address(i)}\n" for i in range(3))
                + "\n[coordinator]\nlocalhost ansible_connection=local\n"
            )
            port = free_port()
            proc = run_cli(
                "-i", str(inv), "up", "smollm2:135m", "--port", str(port), "-c", "1024", "--json", env=sollol_env
            )
            assert proc.returncode == 0, proc.stderr
            out = json.loads(proc.stdout)
            rpc_rows = {d["name"]: d for d in out["distribution"]["devices"] if ":" in d["name"]}
            assert sorted(rpc_rows) == sorted(endpoints)
            assert all(d["layers"] > 0 for d in rpc_rows.values())
            # remote CPU backends: usable memory is 75% of the RAM they report (no cap declared)
            assert {p["usable_source"] for p in out["plan"]} == {"75% of reported RAM"}
            state_file = Path(sollol_env["XDG_STATE_HOME"]) / "sollol-ops/coordinator.json"
            state = CoordinatorState(**json.loads(state_file.read_text()))
            assert chat(state, "Say hi.", max_tokens=8).strip()
            status = json.loads(run_cli("-i", str(inv), "status", "--json", env=sollol_env).stdout)
            assert [b["status"] for b in status["backends"]] == ["serving"] * 3
            assert run_cli("down", env=sollol_env).returncode == 0
            assert not procs.is_alive(state.pid, state.start_time)
        finally:
            run_cli("down", "--timeout", "5", env=sollol_env)
            kill_groups(pids)
