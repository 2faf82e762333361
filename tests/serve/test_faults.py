"""Faults while serving, with real rpc-servers, a real llama-server and the real SmolLM2 model: concurrent
`up`s, a full or read-only state directory, a frozen worker, kill -9 of each process. Each ends in a
definite error or result in bounded time, with no orphan or untracked process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, Local, assert_clean_failure
from ports import free_port

from sollol_ops import procs

pytestmark = [pytest.mark.toolchain, pytest.mark.model, pytest.mark.slow]


def llama_servers(port: int) -> list[int]:
    """Pids of llama-server processes listening on our test port (ours or untracked)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        args = procs.cmdline(int(entry.name))
        if (
            args
            and args[0].endswith("llama-server")
            and "--port" in args
            and args[args.index("--port") + 1] == str(port)
        ):
            found.append(int(entry.name))
    return found


def state(cluster: Local) -> dict:
    return json.loads((Path(cluster.env["XDG_STATE_HOME"]) / "sollol-ops/coordinator.json").read_text())


def popen_cli(cluster: Local, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sollol_ops.cli.main", "-i", cluster.inventory, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **cluster.env},
        cwd=REPO,
    )


def up(cluster: Local, port: int, *extra: str) -> dict:
    proc = cluster.cli("up", "smollm2:135m", "--port", str(port), "-c", "512", "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_concurrent_ups_have_one_winner(local2: Local) -> None:
    ports = [free_port() for _ in range(3)]
    racers = [popen_cli(local2, "up", "smollm2:135m", "--port", str(p), "-c", "512", "--json") for p in ports]
    results = [(r.wait(timeout=120), *r.communicate()) for r in racers]
    started = [json.loads(out) for rc, out, _ in results if rc == 0 and json.loads(out)["kind"] == "started"]
    assert len(started) == 1, results
    for rc, out, err in results:
        if rc == 0:
            assert json.loads(out)["kind"] in ("started", "already-running"), out
        else:
            assert rc == 8 and "coordinator lock is held by pid" in err and "sollol-ops up smollm2:135m" in err, err
            assert len(err.strip().splitlines()) == 1
    running = [pid for p in ports for pid in llama_servers(p)]
    assert running == [state(local2)["pid"]], "a llama-server runs that the state does not record"
    assert local2.cli("down").returncode == 0
    assert not [pid for p in ports for pid in llama_servers(p)]


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_full_or_read_only_state_dir_spawns_nothing(local2: Local, fault: str, tmp_path: Path) -> None:
    """The coordinator's state directory is a tiny tmpfs, filled up or read-only, in a private mount
    namespace (the local cluster keeps its own state elsewhere)."""
    port = free_port()
    state_home = tmp_path / "coordinator-state"
    state_dir = state_home / "sollol-ops"
    state_dir.mkdir(parents=True)
    setup = f"mount -t tmpfs -o size=64k,mode=0700 tmpfs {state_dir}"
    if fault == "full":
        setup += f" && (dd if=/dev/zero of={state_dir}/filler bs=4k 2>/dev/null; true)"
    else:
        setup += f" && mount -o remount,ro,bind {state_dir}"
    cli = f"{sys.executable} -m sollol_ops.cli.main -i {local2.inventory} up smollm2:135m --port {port} -c 512"
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", f"{setup} && exec {cli}"],
        capture_output=True,
        text=True,
        env={**os.environ, **local2.env, "XDG_STATE_HOME": str(state_home)},
        cwd=REPO,
        timeout=120,
    )
    err = assert_clean_failure(proc, "sollol-ops: error: cannot")
    assert proc.returncode == 13, err
    assert ("No space left" in err) if fault == "full" else ("Read-only" in err), err
    time.sleep(0.5)
    assert llama_servers(port) == [], "llama-server was spawned although its state could not be recorded"


def test_a_frozen_worker_is_reported_as_a_stall_naming_it(local2: Local) -> None:
    port = free_port()
    up(local2, port)
    frozen = local2.endpoints[1]
    frozen_pid = local2.pids[1]
    os.kill(frozen_pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        proc = local2.cli("ask", "Count from one to twenty.", "--max-tokens", "32", "--stall-timeout", "3", timeout=60)
        assert time.monotonic() - t0 < 30
        err = assert_clean_failure(proc, "stalled", frozen)
        assert proc.returncode == 8, err

        proc = local2.cli("status", "--json", "--stall-timeout", "2", timeout=60)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["coordinator"]["state"] == "stalled", report["coordinator"]
        assert report["coordinator"]["suspects"] == [frozen]
        rows = {b["endpoint"]: b["status"] for b in report["backends"]}
        assert rows == {local2.endpoints[0]: "serving", frozen: "stalled"}, rows

        proc = local2.cli("status", "--check", "--stall-timeout", "2", timeout=60)
        assert proc.returncode == 14
        assert "stalled" in proc.stderr and frozen in proc.stderr
    finally:
        os.kill(frozen_pid, signal.SIGCONT)
    assert local2.cli("down", "--timeout", "5").returncode == 0
    assert llama_servers(port) == []


def test_kill_9_of_llama_server(local2: Local) -> None:
    port = free_port()
    up(local2, port)
    pid = int(state(local2)["pid"])
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    proc = local2.cli("status", "--check")
    assert proc.returncode == 14
    assert "exited" in proc.stderr and f"pid {pid}" in proc.stderr
    proc = local2.cli("ask", "hi")
    assert_clean_failure(proc, "no coordinator running")
    # the next up replaces the dead record and serves
    out = up(local2, port)
    assert out["kind"] == "started"
    assert local2.cli("status", "--check").returncode == 0
    assert local2.cli("down").returncode == 0
    assert llama_servers(port) == []


def test_kill_9_of_a_worker_while_serving(local2: Local) -> None:
    port = free_port()
    up(local2, port)
    lost = local2.endpoints[0]
    os.kill(local2.pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    report: dict = {}
    while time.monotonic() < deadline:
        report = json.loads(local2.cli("status", "--json").stdout)
        if report["coordinator"]["state"] == "backend-lost":
            break
        time.sleep(0.2)
    assert report["coordinator"]["state"] == "backend-lost", report["coordinator"]
    assert report["coordinator"]["lost"] == [lost]
    proc = local2.cli("status", "--check")
    assert proc.returncode == 14 and lost in proc.stderr
    # a request now fails with an error, in bounded time, instead of hanging
    proc = local2.cli("ask", "hi", "--stall-timeout", "10", timeout=60)
    assert_clean_failure(proc)
    local2.cli("down", "--timeout", "5")
    assert llama_servers(port) == []


def test_kill_9_of_up_while_loading_leaves_a_tracked_coordinator(local2: Local) -> None:
    port = free_port()
    racer = popen_cli(local2, "up", "smollm2:135m", "--port", str(port), "-c", "512")
    state_file = Path(local2.env["XDG_STATE_HOME"]) / "sollol-ops/coordinator.json"
    deadline = time.monotonic() + 60
    while not state_file.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    racer.kill()
    racer.communicate()
    assert state_file.exists(), "up never recorded its coordinator"
    # the lock died with its holder; the coordinator it started is tracked, and down stops it
    assert llama_servers(port) == [state(local2)["pid"]]
    proc = local2.cli("down", "--timeout", "5")
    assert proc.returncode == 0 and "stopped" in proc.stdout
    assert llama_servers(port) == []
    assert local2.cli("up", "smollm2:135m", "--port", str(port), "-c", "512", "--dry-run").returncode == 0


def test_status_calls_a_coordinator_held_up_by_a_frozen_backend_at_start_loading(
    rpc_server: tuple[str, object], smollm2_store: Path, tmp_path: Path
) -> None:
    """llama-server contacts its RPC devices before it starts its HTTP server: with the only rpc-server
    frozen (SIGSTOP) after the probe, it never answers /health. `status` calls it loading (starting), with
    its progress, not unhealthy; the gateway's loads show the same way in `sollol-ops status`."""
    from sollol_ops.cluster.inventory import Backend
    from sollol_ops.cluster.toolchain import find_toolchain
    from sollol_ops.model.gguf_info import read_gguf
    from sollol_ops.model.ollama import resolve_model
    from sollol_ops.serve import coordinator, lifecycle, status_report
    from sollol_ops.serve.command import StartOptions
    from sollol_ops.serve.coordinator import Launch

    endpoint, server = rpc_server
    host, port = endpoint.rsplit(":", 1)
    resolved = resolve_model("smollm2:135m", smollm2_store)
    opts = StartOptions(port=free_port(), n_ctx=512, threads=1)
    toolchain = find_toolchain()
    prepared = lifecycle.plan_command(
        "smollm2:135m", resolved.blob, read_gguf(resolved.blob), [Backend("w0", host, int(port))], opts, toolchain
    )
    root = tmp_path / "state"
    os.kill(server.pid, signal.SIGSTOP)  # type: ignore[attr-defined]
    try:
        home = coordinator.Coordinator(root)
        st = home.start(Launch(toolchain, resolved.blob, prepared.plan, opts, "smollm2:135m", resolved.digest))
        status = status_report.coordinator_status(root)
        assert status.running and status.state == "loading", status
        assert "starting (contacting its RPC backends; not answering yet)" in status.detail
        assert status.progress["elapsed_s"] is not None and coordinator.is_alive(st)
    finally:
        home.stop(timeout=5)
        os.kill(server.pid, signal.SIGCONT)  # type: ignore[attr-defined]
    assert llama_servers(opts.port) == []
