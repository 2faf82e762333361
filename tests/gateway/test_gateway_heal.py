"""The gateway's watcher heals the coordinator it serves (issue 20, sollol_heal: auto), with real parts: two local
rpc-servers, the coordinators the gateway starts, `sollol-ops status`.

A coordinator loaded degraded (one rpc-server down, sollol_skip_unhealthy) is loaded again on both once the
missing one answers and nothing is in flight; one stalled on a frozen rpc-server (SIGSTOP) longer than
sollol_stall_timeout is stopped, its client gets an error instead of waiting forever, the log and `status` name
the frozen rpc-server, and the next request loads it again."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from gatewayparts import MODEL, GatewayProc, wait_until
from helpers import Local, run_cli
from ondemandparts import gone, od, revive
from ports import free_port

from sollol_ops.cluster import rpc

pytestmark = [pytest.mark.slow, pytest.mark.toolchain, pytest.mark.model]

RPC_SERVERS = 2  # the module's local rpc-servers (conftest.local)
LEFT_OUT = 1


def write_inventory(path: Path, local: Local, **values: object) -> Path:
    lines = ["[rpc_servers]"]
    lines += [f"w{i} ansible_host=127.0.0.1 sollol_rpc_port={e.split(':')[1]}" for i, e in enumerate(local.endpoints)]
    lines += ["", "[coordinator]", "localhost ansible_connection=local", "", "[all:vars]"]
    lines += [f"{k}={v}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def chat(gw: GatewayProc, timeout: float = 300) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Name a colour."}], "stream": False}
    return httpx.post(f"{gw.url}/api/chat", json={**body, "options": {"num_predict": 4}}, timeout=timeout)


def gateway(env: dict[str, Any], inventory: Path, name: str) -> GatewayProc:
    args = ["--coordinator-port", str(free_port()), "-c", "512", "-t", "1"]
    return GatewayProc(env["env"], inventory, env["root"], name, *args)


def status(env: dict[str, Any], inventory: Path, *args: str) -> Any:
    return run_cli("-i", str(inventory), "status", *args, env=env["env"], timeout=60)


def test_a_degraded_coordinator_is_loaded_again_on_both_when_the_missing_one_is_back(
    local: Local, env: dict[str, Any]
) -> None:
    inventory = write_inventory(env["root"] / "degraded.ini", local, sollol_skip_unhealthy="true")
    back = local.endpoints[LEFT_OUT]
    os.kill(local.pids[LEFT_OUT], signal.SIGKILL)  # an rpc-server of the module's local cluster
    wait_until(lambda: gone(local.pids[LEFT_OUT]), 10, "the killed rpc-server to be gone")
    gw = gateway(env, inventory, "heal-degraded")
    try:
        r = chat(gw)
        assert r.status_code == 200, r.text
        assert od(gw)["degraded"] is True and od(gw).get("heals", 0) == 0
        assert status(env, inventory, "--check").returncode == 14

        revive(local, env, held=[i for i in range(RPC_SERVERS) if i != LEFT_OUT])  # the one left out starts again

        def healed() -> bool:
            return od(gw)["phase"] == "serving" and not od(gw)["degraded"]

        wait_until(healed, 90, "the gateway to load the degraded coordinator again on both rpc-servers")
        s = od(gw)
        assert s["heals"] == 1 and s["skipped_backends"] == [] and s["deaths"] == 0, s
        assert any(f"healing {MODEL}: {back} answer(s) again" in line for line in gw.log_lines())

        check = status(env, inventory, "--check")
        assert check.returncode == 0, check.stderr
        report = json.loads(status(env, inventory, "--json").stdout)
        assert sorted(report["coordinator"]["backends"]) == sorted(local.endpoints)
        assert report["incident"]["kind"] == "healed" and report["incident"]["by"] == "the gateway"
        assert chat(gw).status_code == 200
    finally:
        gw.stop()
        run_cli("down", "--timeout", "5", env=env["env"])


def test_a_stalled_coordinator_is_stopped_and_loaded_again_by_the_next_request(
    local: Local, env: dict[str, Any]
) -> None:
    revive(local, env)
    inventory = write_inventory(env["root"] / "stall.ini", local, sollol_stall_timeout=3)
    suspect = local.endpoints[LEFT_OUT]
    gw = gateway(env, inventory, "heal-stall")
    try:
        assert chat(gw).status_code == 200
        deaths = od(gw)["deaths"]
        answer: dict[str, Any] = {}

        def ask() -> None:
            try:
                answer["status"] = chat(gw, timeout=600).status_code
            except httpx.HTTPError as exc:
                answer["error"] = exc

        os.kill(local.pids[LEFT_OUT], signal.SIGSTOP)
        try:
            client = threading.Thread(target=ask, daemon=True)
            client.start()
            wait_until(lambda: od(gw)["deaths"] == deaths + 1, 60, "the gateway to stop the stalled coordinator")
            client.join(30)
            assert not client.is_alive(), "the client still waits after its coordinator was stopped"
            assert answer.get("status", 0) >= 500 or "error" in answer, answer
            assert f"stalled on {suspect} (frozen?)" in od(gw)["last_error"]
            assert any(f"stalled on {suspect} (frozen?)" in line for line in gw.log_lines())
            wait_until(lambda: od(gw)["phase"] == "idle", 30, "the stalled coordinator to be stopped")
            table = status(env, inventory).stdout
            assert "last incident: " in table and f"stalled on {suspect} (frozen?)" in table, table
        finally:
            os.kill(local.pids[LEFT_OUT], signal.SIGCONT)
        # an rpc-server whose client vanished while it was frozen may die of SIGPIPE once it runs again
        pid = local.pids[LEFT_OUT]
        wait_until(lambda: gone(pid) or rpc.probe(suspect).ok, 30, "the thawed rpc-server to answer or die")
        revive(local, env)
        r = chat(gw)
        assert r.status_code == 200 and r.json()["message"]["content"], r.text
    finally:
        gw.stop()
        run_cli("down", "--timeout", "5", env=env["env"])
