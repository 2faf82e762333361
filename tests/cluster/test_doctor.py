"""`sollol-ops doctor` against real parts: a healthy local cluster, a stopped worker, a worker of another
protocol version, and an rpc-server behind a tbf-shaped link in a network namespace."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from helpers import Local, assert_clean_failure, run_cli
from rpcdouble import RpcDouble

from sollol_ops import procs
from sollol_ops.cluster.local import wait_ready
from sollol_ops.cluster.toolchain import find_toolchain
from sollol_ops.dev.netlab import NetLab

pytestmark = [pytest.mark.toolchain, pytest.mark.model, pytest.mark.slow]


def checks(proc: object) -> dict[tuple[str, str], dict]:
    data = json.loads(proc.stdout)  # type: ignore[attr-defined]
    return {(c["check"], c["target"]): c for c in data["checks"]}


def test_doctor_on_a_healthy_local_cluster(local2: Local) -> None:
    proc = local2.cli("doctor", "smollm2:135m", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = checks(proc)
    statuses = {k: c["status"] for k, c in found.items()}
    for endpoint in local2.endpoints:
        target = next(t for (name, t) in found if name == "reachable" and endpoint in t)
        assert statuses[("reachable", target)] == "ok"
        assert statuses[("protocol", target)] == "ok"
        assert "RPC 7.0.0" in found[("protocol", target)]["detail"]
        assert statuses[("link", target)] == "ok", found[("link", target)]
    assert [c for c in found.values() if c["check"] == "unit" and c["status"] != "ok"] == []
    assert found[("memory", "smollm2:135m")]["status"] == "ok"
    assert "fits" in found[("memory", "smollm2:135m")]["detail"]
    # the link figures are kept for the gateway's page (serve/doctor_links.py)
    kept = json.loads((Path(local2.env["XDG_STATE_HOME"]) / "sollol-ops/doctor-links.json").read_text())["links"]
    assert sorted(f["endpoint"] for f in kept) == sorted(local2.endpoints)
    assert all(f["throughput_bps"] > 0 and f["rtt_ms"] > 0 for f in kept), kept
    # the human form: an aligned table, no advice lines when all is well
    proc = local2.cli("doctor", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split()[:4] == ["CHECK", "TARGET", "STATUS", "DETAIL"]


def test_doctor_with_a_stopped_worker(local2: Local) -> None:
    stopped = local2.endpoints[1]
    os.killpg(local2.pids[1], signal.SIGKILL)
    proc = local2.cli("doctor", timeout=120)
    err = assert_clean_failure(proc, "reachable", stopped)
    assert proc.returncode == 14, err
    assert f"FAIL reachable local-{stopped.rsplit(':', 1)[1]} ({stopped}): start it" in proc.stdout
    # the process check of the local cluster notices it too
    assert any(line.startswith("FAIL unit") for line in proc.stdout.splitlines()), proc.stdout


def test_doctor_with_a_worker_of_another_protocol(sollol_env: dict[str, str], tmp_path: Path) -> None:
    with RpcDouble(version=(6, 1, 0)) as double:
        inv = tmp_path / "inv.ini"
        inv.write_text(f"[rpc_servers]\nold ansible_host=127.0.0.1 sollol_rpc_port={double.port}\n")
        proc = run_cli("-i", str(inv), "doctor", "--no-hosts", "--json", env=sollol_env, timeout=120)
    assert proc.returncode == 14
    found = checks(proc)
    protocol = found[("protocol", f"old ({double.endpoint})")]
    assert protocol["status"] == "fail" and "6.1.0" in protocol["detail"]
    assert "upgrade.yml" in protocol["advice"]


@pytest.mark.netns
def test_doctor_measures_a_shaped_link(sollol_env: dict[str, str], tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("network-namespace tests need root (CI runs as root)")
    rpc = find_toolchain().rpc_server
    with NetLab(1, subnet_base="10.215") as lab:
        lab.shape("100mbit")
        pid = procs.spawn_detached(
            lab.exec_argv(0, [str(rpc), "-H", lab.address(0), "-p", "50052", "-t", "1"]), tmp_path / "rpc.log"
        )
        try:
            endpoint = f"{lab.address(0)}:50052"
            wait_ready([endpoint], timeout=20)
            inv = tmp_path / "inv.ini"
            inv.write_text(f"[rpc_servers]\nslow ansible_host={lab.address(0)}\n")
            proc = run_cli(
                "-i", str(inv), "doctor", "--no-hosts", "--link-mib", "24", "--json", env=sollol_env, timeout=180
            )
        finally:
            os.killpg(pid, signal.SIGKILL)
    assert proc.returncode == 14, proc.stderr
    link = checks(proc)[("link", f"slow ({endpoint})")]
    assert link["status"] == "fail" and "below the 1.00 Gbit/s minimum" in link["detail"], link
    mbit = float(link["detail"].split(" Mbit/s")[0])
    assert 80 <= mbit <= 120, f"measured {mbit} Mbit/s on a 100 Mbit/s tbf link"
