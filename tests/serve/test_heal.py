"""Self-healing of the coordinator (issue 20), with two real rpc-servers, a real llama-server and SmolLM2:
a coordinator started degraded goes back to the full set once the rpc-server left out is back (`sollol-ops
heal`, and `up --foreground` by itself), and one stalled on a frozen rpc-server (SIGSTOP) is stopped so that
its client gets an error instead of waiting forever (`heal`, and `up --foreground`, which then exits non-zero
for the unit's Restart=on-failure). Every process the tests freeze, kill or restart is one they started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO, Local
from ports import free_port

from sollol_ops import procs
from sollol_ops.cluster import local as local_cluster
from sollol_ops.cluster.toolchain import find_toolchain
from sollol_ops.errors import CoordinatorError
from sollol_ops.serve import server_http

pytestmark = [pytest.mark.toolchain, pytest.mark.model, pytest.mark.slow]

MODEL = "smollm2:135m"
LEFT_OUT = 1  # the rpc-server that is down at the start, or frozen


def wait_until(predicate, deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {deadline_s:g}s waiting for {what}")


def state_file(cluster: Local) -> Path:
    return Path(cluster.env["XDG_STATE_HOME"]) / "sollol-ops" / "coordinator.json"


def recorded(cluster: Local) -> dict:
    try:
        return json.loads(state_file(cluster).read_text())
    except (OSError, ValueError):
        return {}


def status(cluster: Local) -> dict:
    proc = cluster.cli("status", "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


class Restarted:
    """rpc-servers this test started again on the port of one it killed (as systemd's Restart= would)."""

    def __init__(self, cluster: Local) -> None:
        self.cluster = cluster
        self.servers: list[local_cluster.LocalServer] = []

    def kill(self, i: int) -> None:
        os.kill(self.cluster.pids[i], signal.SIGKILL)
        wait_until(lambda: not procs.is_alive(self.cluster.pids[i]), 10, "the killed rpc-server to be gone")

    def start(self, i: int) -> None:
        root = Path(self.cluster.env["XDG_STATE_HOME"]) / "sollol-ops" / "local"
        port = int(self.cluster.endpoints[i].rsplit(":", 1)[1])
        spec = local_cluster.RpcServerSpec("127.0.0.1", port, 1, root / f"rpc-{port}-again.log")
        server = local_cluster.start_rpc_server(find_toolchain(), spec)
        self.servers.append(server)
        self.cluster.pids[i] = server.pid
        local_cluster.wait_ready([self.cluster.endpoints[i]], 30)

    def stop(self) -> None:
        for s in self.servers:
            procs.stop_process(s.pid, s.start_time, timeout=5, argv0=s.argv0)


@pytest.fixture
def restarted(local2: Local) -> Iterator[Restarted]:
    r = Restarted(local2)
    yield r
    local2.cli("down", "--timeout", "5")
    r.stop()


class Client:
    """One streamed chat request to the coordinator's own endpoint, in a thread: its error, or its text."""

    def __init__(self, endpoint: str) -> None:
        self.error: Exception | None = None
        self.text: str | None = None

        def run() -> None:
            try:
                messages = [{"role": "user", "content": "Count from one to two hundred."}]
                self.text = server_http.stream_chat(endpoint, messages, 400, stall_timeout=600).text
            except Exception as exc:  # what the client sees is the point
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def ended(self, deadline_s: float) -> bool:
        self.thread.join(deadline_s)
        return not self.thread.is_alive()


def in_flight(endpoint: str) -> bool:
    return ((server_http.metrics(endpoint, timeout=2) or {}).get("requests_processing") or 0) > 0


def frozen(pid: int):
    """SIGSTOP an rpc-server this test started, SIGCONT it at the end whatever happens."""

    class Frozen:
        def __enter__(self) -> None:
            os.kill(pid, signal.SIGSTOP)

        def __exit__(self, *exc: object) -> None:
            os.kill(pid, signal.SIGCONT)

    return Frozen()


def foreground(cluster: Local, inventory: str, port: int, log: Path, *extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "sollol_ops.cli.main", "-i", inventory, "up", MODEL, "--foreground"]
    argv += ["--port", str(port), "-c", "512", "-t", "1", *extra]
    with open(log, "w") as err:
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=err, text=True, env={**os.environ, **cluster.env}, cwd=REPO
        )
    wait_until(lambda: "ready: " in log.read_text() or proc.poll() is not None, 120, "up --foreground to be ready")
    assert proc.poll() is None, log.read_text()
    return proc


def with_vars(cluster: Local, path: Path, **values: object) -> str:
    text = Path(cluster.inventory).read_text()
    path.write_text(text + "\n[all:vars]\n" + "".join(f"{k}={v}\n" for k, v in values.items()))
    return str(path)


# --------------------------------------------------------------------------- degraded -> the full set


def test_heal_moves_a_degraded_coordinator_back_to_the_full_set(local2: Local, restarted: Restarted) -> None:
    back = local2.endpoints[LEFT_OUT]
    restarted.kill(LEFT_OUT)
    port = str(free_port())
    up = local2.cli("up", MODEL, "--port", port, "-c", "512", "-t", "1", "--skip-unhealthy", "--json")
    assert up.returncode == 0, up.stderr
    assert recorded(local2)["backends"] == [local2.endpoints[0]]
    check = local2.cli("status", "--check")
    assert check.returncode == 14 and "degraded" in check.stderr and "sollol-ops heal" in check.stderr, check.stderr

    early = local2.cli("heal")  # the backend is still down: nothing to do, and nothing done
    assert early.returncode == 0, early.stderr
    assert early.stdout.startswith("nothing to heal:") and back in early.stdout and "not answer" in early.stdout
    pid = recorded(local2)["pid"]

    restarted.start(LEFT_OUT)
    assert local2.cli("status", "--check").returncode == 14  # back, yet the coordinator stays degraded by itself
    healed = local2.cli("heal", "--json", timeout=180)
    assert healed.returncode == 0, healed.stderr
    out = json.loads(healed.stdout)
    assert out["action"] == "reload" and out["returned"] == [back], out
    assert sorted(out["backends"]) == sorted(local2.endpoints), out
    assert recorded(local2)["pid"] != pid and recorded(local2)["skipped"] == []

    check = local2.cli("status", "--check")
    assert check.returncode == 0, check.stderr
    report = status(local2)
    assert report["coordinator"]["state"] == "serving" and report["coordinator"]["degraded"] is False
    assert report["incident"]["kind"] == "healed" and back in report["incident"]["message"], report["incident"]
    assert "last incident:" in local2.cli("status").stdout
    assert local2.cli("ask", "Say hi.", "--max-tokens", "4").returncode == 0

    again = local2.cli("heal")
    assert again.returncode == 0 and "nothing to heal" in again.stdout and "not degraded" in again.stdout


def test_up_foreground_goes_back_to_the_full_set_by_itself(local2: Local, restarted: Restarted, tmp_path: Path) -> None:
    back = local2.endpoints[LEFT_OUT]
    restarted.kill(LEFT_OUT)
    inventory = with_vars(local2, tmp_path / "auto.ini", sollol_skip_unhealthy="true")  # sollol_heal: auto (default)
    port = free_port()
    proc = foreground(local2, inventory, port, tmp_path / "foreground.log")
    try:
        assert recorded(local2)["backends"] == [local2.endpoints[0]]
        restarted.start(LEFT_OUT)
        wait_until(lambda: sorted(recorded(local2).get("backends", [])) == sorted(local2.endpoints), 90,
                   "up --foreground to start again on both rpc-servers")  # fmt: skip
        assert proc.poll() is None, "the unit's process restarted llama-server in place, it did not exit"
        assert recorded(local2)["skipped"] == [] and recorded(local2)["foreground"] is True
        wait_until(lambda: server_http.health(server_http.base_url("127.0.0.1", port)) == 200, 60, "ready again")
        assert local2.cli("status", "--check").returncode == 0
        log = (tmp_path / "foreground.log").read_text()
        assert f"healing {MODEL}: {back} answer(s) again" in log, log
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


# --------------------------------------------------------------------------- stalled -> stopped


def test_heal_stops_a_coordinator_stalled_on_a_frozen_rpc_server(local2: Local, restarted: Restarted) -> None:
    port = free_port()
    up = local2.cli("up", MODEL, "--port", str(port), "-c", "512", "-t", "1", "--json")
    assert up.returncode == 0, up.stderr
    endpoint = server_http.base_url("127.0.0.1", port)
    suspect = local2.endpoints[LEFT_OUT]
    with frozen(local2.pids[LEFT_OUT]):
        client = Client(endpoint)
        wait_until(lambda: in_flight(endpoint), 30, "the request to be in flight")
        healed = local2.cli("heal", "--stall-timeout", "3", "--json", timeout=120)
        assert healed.returncode == 0, healed.stderr
        out = json.loads(healed.stdout)
        assert out["action"] == "stop" and out["suspects"] == [suspect], out
        assert f"stalled on {suspect} (frozen?)" in out["message"], out
        assert client.ended(30), "the client still waits after its coordinator was stopped"
        assert isinstance(client.error, CoordinatorError), (client.error, client.text)
    report = status(local2)
    assert report["coordinator"]["state"] == "not running"
    assert report["incident"]["kind"] == "stalled" and report["incident"]["suspects"] == [suspect]
    table = local2.cli("status").stdout
    assert "last incident: " in table and f"stopped {MODEL} after 3 s stalled on {suspect} (frozen?)" in table


def test_up_foreground_stops_a_stall_and_exits_non_zero_for_its_unit(
    local2: Local, restarted: Restarted, tmp_path: Path
) -> None:
    inventory = with_vars(local2, tmp_path / "stall.ini", sollol_stall_timeout=3)
    port = free_port()
    log = tmp_path / "foreground.log"
    proc = foreground(local2, inventory, port, log)
    suspect = local2.endpoints[LEFT_OUT]
    try:
        with frozen(local2.pids[LEFT_OUT]):
            client = Client(server_http.base_url("127.0.0.1", port))
            assert proc.wait(90) == 8, log.read_text()  # CoordinatorError: the unit's Restart=on-failure
            assert client.ended(30), "the client still waits after its coordinator was stopped"
            assert isinstance(client.error, CoordinatorError), (client.error, client.text)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    assert f"stalled on {suspect} (frozen?)" in text and "Restart=on-failure" in text, text
    assert not state_file(local2).exists()
    assert status(local2)["incident"]["suspects"] == [suspect]
