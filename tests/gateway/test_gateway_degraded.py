"""A backend lost while the gateway serves a sharded model (issue 12, item 4), with real parts: three local
rpc-servers, the coordinators the gateway starts, `sollol-ops status` and `up`.

With the inventory's `sollol_skip_unhealthy=true` the gateway reloads the model degraded on the two
rpc-servers left, and says so (its /api/ps, `sollol-ops status`, the coordinator's state); without it the
answer is the refusal naming the host; a model that does not fit the rest is refused either way."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gatewayparts import MODEL, GatewayProc, wait_until
from helpers import Local, run_cli
from ondemandparts import od, revive
from ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.toolchain, pytest.mark.model]

MESSAGES = [{"role": "user", "content": "Name a colour."}]
OPTS = {"num_predict": 4, "temperature": 0}
CAP_MIB = 110  # at ctx 4096 SmolLM2 fits three such backends (needs <= 105 MiB each) but not two (235 > 220 MiB)
LOST = 1  # the rpc-server killed (w1)
RPC_SERVERS = 3  # the module's local rpc-servers (conftest.local)


def write_inventory(path: Path, local: Local, extra: str = "", skip: bool = True) -> str:
    lines = ["[rpc_servers]"]
    for i, endpoint in enumerate(local.endpoints):
        lines.append(f"w{i} ansible_host=127.0.0.1 sollol_rpc_port={endpoint.split(':')[1]}{extra}")
    lines += ["", "[coordinator]", "localhost ansible_connection=local", ""]
    lines += ["[all:vars]", f"sollol_skip_unhealthy={'true' if skip else 'false'}", ""]
    path.write_text("\n".join(lines))
    return str(path)


@pytest.fixture(scope="module")
def inventories(env: dict[str, Any], local: Local) -> dict[str, str]:
    root: Path = env["root"]
    return {
        "skip": write_inventory(root / "skip.ini", local),
        "capped": write_inventory(root / "capped.ini", local, f" sollol_rpc_memory_mib={CAP_MIB}"),
        "strict": write_inventory(root / "strict.ini", local, skip=False),
    }


@pytest.fixture(scope="module")
def gw(env: dict[str, Any], inventories: dict[str, str]) -> Iterator[GatewayProc]:
    args = ["--coordinator-port", str(free_port()), "-c", "1024", "-t", "1"]
    proc = GatewayProc(env["env"], Path(inventories["skip"]), env["root"], "degraded", *args)
    yield proc
    proc.stop()


def chat(gw: GatewayProc) -> httpx.Response:
    body = {"model": MODEL, "messages": MESSAGES, "options": OPTS, "stream": False}
    return httpx.post(f"{gw.url}/api/chat", json=body, timeout=300)


def lost_name(local: Local) -> str:
    return f"w{LOST} ({local.endpoints[LOST]}"


# --------------------------------------------------------------------------- in order: they share the cluster


def test_the_capped_inventory_fits_all_three(local: Local, inventories: dict[str, str], env: dict[str, Any]) -> None:
    """The premise of the last test: with every backend up, the capped inventory fits the model."""
    proc = run_cli("-i", inventories["capped"], "up", MODEL, "-c", "4096", "--dry-run", env=env["env"])
    assert proc.returncode == 0, proc.stderr
    assert "RPC2" in proc.stdout


def test_a_lost_backend_reloads_degraded_when_the_inventory_allows_it(
    gw: GatewayProc, local: Local, env: dict[str, Any], inventories: dict[str, str]
) -> None:
    r = chat(gw)
    assert r.status_code == 200, r.text
    s = od(gw)
    assert s["phase"] == "serving" and not s["degraded"] and s["skipped_backends"] == []
    deaths = s["deaths"]
    os.kill(local.pids[LOST], signal.SIGKILL)  # mid-service: the coordinator holds all three
    wait_until(lambda: od(gw)["deaths"] == deaths + 1, 15, "the gateway to notice the lost backend")
    wait_until(lambda: od(gw)["phase"] == "idle", 30, "the coordinator that lost a backend to be stopped")
    revive(local, env, down=(LOST,))

    r = chat(gw)  # the next request: loaded again on the two left
    assert r.status_code == 200 and r.json()["message"]["content"], r.text
    s = od(gw)
    assert s["phase"] == "serving" and s["degraded"], s
    assert [lost_name(local) in b for b in s["skipped_backends"]] == [True], s["skipped_backends"]
    assert any("starting degraded on 2 of 3 backends" in line and lost_name(local) in line for line in gw.log_lines())

    ps = httpx.get(f"{gw.url}/api/ps", timeout=10).json()["models"]
    entry = next(m for m in ps if m["model"] == MODEL)
    assert entry["degraded"] is True and lost_name(local) in entry["skipped_backends"][0], entry

    st = run_cli("-i", inventories["skip"], "status", "--json", env=env["env"])
    assert st.returncode == 0, st.stderr
    coord = json.loads(st.stdout)["coordinator"]
    assert coord["state"] == "serving" and coord["degraded"] is True, coord
    assert [(lo["host"], lo["endpoint"], lo["status"]) for lo in coord["skipped"]] == [
        (f"w{LOST}", local.endpoints[LOST], "down")
    ]
    assert sorted(coord["backends"]) == sorted(e for i, e in enumerate(local.endpoints) if i != LOST)
    table = run_cli("-i", inventories["skip"], "status", env=env["env"])
    assert "DEGRADED" in table.stdout and f"without {lost_name(local)}, down at start)" in table.stdout, table.stdout
    assert "left out of" in table.stdout
    check = run_cli("-i", inventories["skip"], "status", "--check", env=env["env"])
    assert check.returncode == 14 and "degraded" in check.stderr and lost_name(local) in check.stderr

    r = httpx.post(f"{gw.url}/api/generate", json={"model": MODEL, "keep_alive": 0, "stream": False}, timeout=60)
    assert r.status_code == 200 and r.json()["done_reason"] == "unload", r.text
    wait_until(lambda: od(gw)["phase"] == "idle", 30, "the degraded coordinator to be unloaded")


def test_without_the_setting_the_refusal_names_the_host(
    gw: GatewayProc, local: Local, env: dict[str, Any], inventories: dict[str, str]
) -> None:
    assert od(gw)["phase"] == "idle"
    # --no-skip-unhealthy overrides the inventory's true; the strict inventory says false itself
    for inventory, args in ((inventories["skip"], ["--no-skip-unhealthy"]), (inventories["strict"], [])):
        strict = GatewayProc(env["env"], Path(inventory), env["root"], "strict", *args, "-c", "1024", "-t", "1")
        try:
            r = chat(strict)
            err = r.json()["error"]
            assert r.status_code == 503 and f"{lost_name(local)}) is down" in err, r.text
            assert "sollol_skip_unhealthy=true" in err and "--skip-unhealthy" in err
        finally:
            strict.stop()


def test_a_model_that_does_not_fit_the_rest_is_refused_even_with_the_setting(
    local: Local, env: dict[str, Any], inventories: dict[str, str]
) -> None:
    capped = GatewayProc(env["env"], Path(inventories["capped"]), env["root"], "capped", "-c", "4096", "-t", "1")
    try:
        r = chat(capped)
        err = r.json()["error"]
        assert r.status_code == 503 and f"cannot load {MODEL}: {MODEL} does not fit" in err, r.text
        assert f"on the 2 healthy backend(s), without {lost_name(local)}, down at start)" in err
    finally:
        capped.stop()
    # `sollol-ops up` reads the same inventory setting and gives the same refusal (exit 7: placement)
    port = str(free_port())
    up = run_cli("-i", inventories["capped"], "up", MODEL, "-c", "4096", "--port", port, env=env["env"])
    assert up.returncode == 7 and "does not fit" in up.stderr and lost_name(local) in up.stderr, up.stderr
    assert "starting degraded on 2 of 3 backends" in up.stderr
    assert not (Path(env["env"]["XDG_STATE_HOME"]) / "sollol-ops" / "coordinator.json").exists()
