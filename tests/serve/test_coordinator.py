"""`up` / `status` / `down` / `logs` with real rpc-servers, a real llama-server and the real SmolLM2 model."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from helpers import Local, assert_clean_failure, run_cli
from ports import free_port
from rpcdouble import RpcDouble

from sollol_ops import procs, timings
from sollol_ops.dev.devstore import write_store
from sollol_ops.model.ollama import resolve_model

UP_PHASES = [
    "interpreter + imports",
    "inventory",
    "lock",
    "model: manifest + GGUF header",
    "state check + toolchain",
    "backend probes",
    "placement",
    "state file + spawn",
    "readiness wait",
    "distribution from the log",
    "output",
]


def _serve_and_check(cluster: Local, n: int, *extra: str) -> None:
    port = free_port()
    proc = cluster.cli("up", "smollm2:135m", "--port", str(port), "-c", "1024", "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    if "--timings" in extra:  # every phase once, in order, on stderr; stdout stays the JSON document
        phases = timings.parse_lines(proc.stderr)
        assert [name for name, _ in phases] == UP_PHASES
        assert all(seconds >= 0 for _, seconds in phases)
        assert "sollol-ops: timing: total " in proc.stderr
    out = json.loads(proc.stdout)
    assert out["kind"] == "started"
    assert out["command"][out["command"].index("--threads") + 1] == "1"  # its rpc-servers share this host
    rpc_rows = [d for d in out["distribution"]["devices"] if ":" in d["name"]]
    assert sorted(d["name"] for d in rpc_rows) == sorted(cluster.endpoints)
    assert all(d["layers"] > 0 and d["model_mib"] > 0 for d in rpc_rows), rpc_rows
    assert sum(d["layers"] for d in rpc_rows) == 30
    # the plan predicted what llama.cpp did
    assert [p["layers"] for p in out["plan"]] == [d["layers"] for d in rpc_rows]

    from sollol_ops.serve.coordinator import CoordinatorState, chat

    state = CoordinatorState(
        **json.loads((Path(cluster.env["XDG_STATE_HOME"]) / "sollol-ops/coordinator.json").read_text())
    )
    answer = chat(state, "Name a colour.", max_tokens=16)
    assert answer.strip(), "empty completion"

    status = json.loads(cluster.cli("status", "--json").stdout)
    assert status["coordinator"]["running"] and status["coordinator"]["healthy"]
    assert [b["status"] for b in status["backends"]] == ["serving"] * n

    logs = run_cli("logs", "-n", "400", env=cluster.env)
    assert "model buffer size" in logs.stdout

    down = run_cli("down", env=cluster.env)
    assert down.returncode == 0 and "stopped smollm2:135m" in down.stdout
    assert not procs.is_alive(state.pid, state.start_time)
    assert not _llama_server_running(state.blob, port)
    status = json.loads(cluster.cli("status", "--json").stdout)
    assert not status["coordinator"]["running"]
    assert [b["status"] for b in status["backends"]] == ["ready"] * n


def _llama_server_running(blob: str, port: int) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if blob.encode() in args and str(port).encode() in args:
            stat = (cmdline.parent / "stat").read_text()
            if not stat[stat.rfind(")") + 2 :].startswith("Z"):
                return True
    return False


@pytest.mark.toolchain
@pytest.mark.model
@pytest.mark.slow
def test_up_on_two_local_rpc_servers(local2: Local) -> None:
    _serve_and_check(local2, 2, "--timings")


@pytest.mark.toolchain
@pytest.mark.model
@pytest.mark.slow
def test_up_on_three_local_rpc_servers(local3: Local) -> None:
    _serve_and_check(local3, 3)


@pytest.mark.toolchain
@pytest.mark.model
def test_up_twice_same_model_is_a_noop_and_other_model_needs_replace(local2: Local, tmp_path: Path) -> None:
    # a second model name in a second store root (the user's store is never written)
    store = tmp_path / "store2"
    blob = resolve_model("smollm2:135m", local2.env["OLLAMA_MODELS"]).blob
    write_store(store, "smollm2:other", blob, link="hardlink")
    env = {**local2.env, "OLLAMA_MODELS": str(store)}
    port = free_port()
    first = local2.cli("up", "smollm2:135m", "--port", str(port), "-c", "512")
    assert first.returncode == 0, first.stderr
    again = local2.cli("up", "smollm2:135m", "--port", str(port), "-c", "512")
    assert again.returncode == 0 and "already served" in again.stdout
    other = run_cli("-i", local2.inventory, "up", "smollm2:other", "--port", str(port), env=env)
    assert_clean_failure(other, "smollm2:135m is already served", "--replace")
    swapped = run_cli(
        "-i", local2.inventory, "up", "smollm2:other", "--port", str(port), "-c", "512", "--replace", env=env
    )
    assert swapped.returncode == 0, swapped.stderr
    assert "replaced smollm2:135m" in swapped.stdout


@pytest.mark.toolchain
@pytest.mark.model
def test_refuses_a_down_backend_by_name(local2: Local, tmp_path: Path) -> None:
    dead = free_port()
    inv = tmp_path / "inv.ini"
    inv.write_text(
        "[rpc_servers]\n"
        + "".join(
            f"w{i} ansible_host=127.0.0.1 sollol_rpc_port={e.split(':')[1]}\n" for i, e in enumerate(local2.endpoints)
        )
        + f"ghost ansible_host=127.0.0.1 sollol_rpc_port={dead}\n"
    )
    proc = run_cli("-i", str(inv), "up", "smollm2:135m", "--port", str(free_port()), env=local2.env)
    assert_clean_failure(proc, f"ghost (127.0.0.1:{dead}) is down", "--skip-unhealthy")
    assert proc.returncode == 6
    # --skip-unhealthy serves on the two that are up
    proc = run_cli(
        "-i", str(inv), "up", "smollm2:135m", "--port", str(free_port()), "-c", "512",
        "--skip-unhealthy", "--json", env=local2.env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [s["endpoint"] for s in out["skipped"]] == [f"127.0.0.1:{dead}"]
    assert sorted(d["name"] for d in out["distribution"]["devices"] if ":" in d["name"]) == sorted(local2.endpoints)


@pytest.mark.model
def test_refuses_an_incompatible_backend_by_name(sollol_env: dict[str, str], tmp_path: Path) -> None:
    with RpcDouble(version=(6, 2, 0)) as old:
        inv = tmp_path / "inv.ini"
        inv.write_text(f"[rpc_servers]\nold-box ansible_host=127.0.0.1 sollol_rpc_port={old.port}\n")
        proc = run_cli("-i", str(inv), "up", "smollm2:135m", "--dry-run", env=sollol_env)
    assert_clean_failure(proc, f"old-box (127.0.0.1:{old.port}) is incompatible", "RPC protocol 6.2.0")


@pytest.mark.toolchain
@pytest.mark.model
def test_refuses_a_port_in_use(local2: Local) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = local2.cli("up", "smollm2:135m", "--port", str(port))
    assert_clean_failure(proc, f"port {port} on 127.0.0.1 is already in use", "--port")


@pytest.mark.model
def test_model_not_found_suggests_near_matches(sollol_env: dict[str, str], tmp_path: Path) -> None:
    inv = tmp_path / "inv.ini"
    inv.write_text("[rpc_servers]\nw ansible_host=127.0.0.1\n")
    proc = run_cli("-i", str(inv), "up", "smollm2:136m", env=sollol_env)
    assert_clean_failure(proc, "smollm2:136m", "ollama pull", "did you mean", "smollm2:135m")


@pytest.mark.toolchain
@pytest.mark.model
def test_model_that_cannot_fit_shows_the_numbers(local2: Local, tmp_path: Path) -> None:
    inv = tmp_path / "inv.ini"
    inv.write_text(
        "[rpc_servers]\n"
        + "".join(
            f"w{i} ansible_host=127.0.0.1 sollol_rpc_port={e.split(':')[1]} sollol_rpc_memory_mib=60\n"
            for i, e in enumerate(local2.endpoints)
        )
    )
    proc = run_cli("-i", str(inv), "up", "smollm2:135m", "-c", "8192", env=local2.env)
    err = assert_clean_failure(proc, "smollm2:135m does not fit", "KV cache", "ctx 8192", "backends offer 120 MiB")
    assert "declared cap" in err
    assert proc.returncode == 7


@pytest.mark.toolchain
@pytest.mark.model
def test_dry_run_prints_plan_and_starts_nothing(local2: Local) -> None:
    proc = local2.cli("up", "smollm2:135m", "--dry-run", "-c", "2048")
    assert proc.returncode == 0, proc.stderr
    assert "--tensor-split" in proc.stdout and "--device RPC0,RPC1" in proc.stdout
    assert not (Path(local2.env["XDG_STATE_HOME"]) / "sollol-ops/coordinator.json").exists()
    assert "timing:" not in proc.stderr  # only when asked for
    env = {**local2.env, timings.TRACE_ENV: "1"}
    traced = run_cli("-i", local2.inventory, "up", "smollm2:135m", "--dry-run", env=env)
    assert traced.returncode == 0, traced.stderr
    names = [name for name, _ in timings.parse_lines(traced.stderr)]
    assert names == [
        p for p in UP_PHASES if p not in ("lock", "state file + spawn", "readiness wait", "distribution from the log")
    ]


@pytest.mark.model
def test_down_and_logs_without_a_coordinator(sollol_env: dict[str, str]) -> None:
    assert "no coordinator running" in run_cli("down", env=sollol_env).stdout
    assert_clean_failure(run_cli("logs", env=sollol_env), "no coordinator log")


@pytest.mark.model
def test_status_json_with_a_down_backend(sollol_env: dict[str, str], tmp_path: Path) -> None:
    inv = tmp_path / "inv.ini"
    inv.write_text(f"[rpc_servers]\nw ansible_host=127.0.0.1 sollol_rpc_port={free_port()}\n")
    proc = run_cli("-i", str(inv), "status", "--json", env=sollol_env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["coordinator"]["running"] is False
    assert report["backends"][0]["status"] == "down"
    assert os.path.samefile(report["inventory"], inv)


@pytest.mark.toolchain
@pytest.mark.model
def test_foreground_runs_attached_and_forwards_sigterm(local2: Local) -> None:
    """What a systemd unit runs: attached, ready line on stderr, SIGTERM ends llama-server and the state."""
    import signal
    import subprocess
    import sys
    import time

    from helpers import REPO

    port = free_port()
    env = {**os.environ, **local2.env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sollol_ops.cli.main", "-i", local2.inventory, "up", "smollm2:135m",
         "--foreground", "--port", str(port), "-c", "512"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    state_file = Path(local2.env["XDG_STATE_HOME"]) / "sollol-ops/coordinator.json"
    try:
        deadline = time.monotonic() + 60
        ready = ""
        while time.monotonic() < deadline and "ready:" not in ready:
            line = proc.stderr.readline()
            if not line:
                break
            ready += line
        assert f"ready: http://127.0.0.1:{port}/v1" in ready, ready
        state = json.loads(state_file.read_text())
        assert state["foreground"] is True
        status = json.loads(local2.cli("status", "--json").stdout)
        assert status["coordinator"]["healthy"]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not state_file.exists()
    assert not procs.is_alive(state["pid"], state["start_time"])
    assert not procs.port_in_use("127.0.0.1", port)
