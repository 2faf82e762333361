"""Hostile peers: the probe (library and `sollol-ops status`) ends with a definite status in bounded
time, never a traceback, and leaves no process behind, whatever the peer on the other end does."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import hostile
import pytest
from helpers import run_cli
from hostile import HostilePeer
from ports import free_port

from sollol_ops import procs
from sollol_ops.cluster import rpc, wire

# Generous bound on one probe with default settings: its own deadline is 10 s.
PROBE_BOUND_S = 30.0
# `sollol-ops status` over all the peers at once: interpreter start, ansible-inventory, concurrent probes.
CLI_BOUND_S = 90.0

BUSY, DOWN, INCOMPATIBLE = rpc.Status.BUSY, rpc.Status.DOWN, rpc.Status.INCOMPATIBLE

# script -> (status, a phrase the detail must contain)
CASES: dict[str, tuple[rpc.Status, str]] = {
    "silent": (BUSY, "held by another client"),
    "stalls_after_hello": (BUSY, "took the server"),
    "drips_replies": (DOWN, "mid-reply"),
    "endless_devices": (INCOMPATIBLE, "4294967295 devices"),
    "oversized_hello": (INCOMPATIBLE, "reply of"),
    "oversized_device_count": (INCOMPATIBLE, "reply of"),
    "garbage_reply": (INCOMPATIBLE, "reply of"),
    "garbage_hello": (INCOMPATIBLE, "RPC protocol 222.173.190"),
    "speaks_first": (INCOMPATIBLE, "spoke first"),
    "resets": (DOWN, "reset"),
    "resets_on_hello": (INCOMPATIBLE, "HELLO"),
    "closes_mid_hello": (INCOMPATIBLE, "HELLO"),
    "closes_mid_device_count": (DOWN, "closed the connection"),
    "stalls_on_device_count": (DOWN, "stopped answering"),
    "stalls_mid_device_memory": (DOWN, "mid-reply"),
}


@pytest.fixture
def leak_mark(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A mark in this process's environment: anything the probe starts inherits it and can be found."""
    mark = uuid.uuid4().hex
    monkeypatch.setenv(hostile.LEAK_MARK_VAR, mark)
    yield mark


def _bounded(fn: Callable[[], rpc.ProbeResult], limit: float) -> tuple[rpc.ProbeResult, float]:
    """Run fn in a thread; fail the test (instead of hanging) when it does not return within limit."""
    box: list[rpc.ProbeResult | BaseException] = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # reported below as the test failure
            box.append(exc)

    t0 = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    elapsed = time.monotonic() - t0
    assert box, f"the probe did not end within {limit:g}s"
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0], elapsed


@pytest.mark.parametrize("script", sorted(CASES))
def test_library_probe_ends_definitely(script: str, leak_mark: str) -> None:
    status, phrase = CASES[script]
    with HostilePeer(getattr(hostile, script)) as peer:
        result, elapsed = _bounded(lambda: rpc.probe(peer.endpoint), PROBE_BOUND_S)
        left = hostile.marked_processes(leak_mark)
    assert result.status is status, result
    assert phrase in result.detail, result
    assert elapsed < PROBE_BOUND_S
    assert left == [], f"the probe left processes behind: {left}"


def test_probe_deadline_covers_every_read(leak_mark: str) -> None:
    """A peer that drips its reply within every per-read timeout is cut off by the probe's deadline."""
    with HostilePeer(hostile.drips_replies) as peer:
        result, elapsed = _bounded(lambda: rpc.probe(peer.endpoint, deadline_s=2.0, reply_timeout=5.0), PROBE_BOUND_S)
    assert result.status is DOWN and "deadline" in result.detail, result
    assert elapsed < 10.0, "a 2 s deadline must end the probe well before 10 s"


def test_probe_all_is_bounded_by_one_deadline(leak_mark: str) -> None:
    scripts = [hostile.drips_replies, hostile.stalls_after_hello, hostile.stalls_mid_device_memory, hostile.silent]
    peers = [HostilePeer(s) for s in scripts]
    for p in peers:
        p.__enter__()
    try:
        t0 = time.monotonic()
        results = rpc.probe_all([p.endpoint for p in peers], deadline_s=3.0)
        elapsed = time.monotonic() - t0
    finally:
        for p in peers:
            p.close()
    assert [r.status for r in results] == [DOWN, BUSY, DOWN, BUSY], results
    assert elapsed < 10.0, f"four probes with a 3 s deadline took {elapsed:.1f}s"
    assert hostile.marked_processes(leak_mark) == []


def _inventory(path: Path, peers: list[HostilePeer]) -> Path:
    lines = ["[rpc_servers]"]
    lines += [f"{p.name} ansible_host={p.host} sollol_rpc_port={p.port}" for p in peers]
    lines += ["", "[coordinator]", "localhost ansible_connection=local", ""]
    path.write_text("\n".join(lines))
    return path


def test_status_cli_over_hostile_peers(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    drainers_before = set(hostile.drain_processes())
    peers = [HostilePeer(getattr(hostile, name), name=name.replace("_", "-")) for name in sorted(CASES)]
    for p in peers:
        p.__enter__()
    try:
        env = {
            "XDG_STATE_HOME": str(tmp_path / "state"),
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "SOLLOL_INVENTORY": "",
            hostile.LEAK_MARK_VAR: mark,
        }
        inv = _inventory(tmp_path / "inventory.ini", peers)
        t0 = time.monotonic()
        proc = run_cli("-i", str(inv), "status", "--json", env=env, timeout=CLI_BOUND_S)
        elapsed = time.monotonic() - t0
        left = hostile.marked_processes(mark)
    finally:
        for p in peers:
            p.close()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    got = {b["host"]: (b["status"], b["detail"]) for b in report["backends"]}
    for name, (status, phrase) in CASES.items():
        st, detail = got[name.replace("_", "-")]
        assert st == status.value and phrase in detail, (name, st, detail)
    assert elapsed < CLI_BOUND_S
    assert left == [], f"`status` left processes behind: {left}"
    assert set(hostile.drain_processes()) <= drainers_before, "a detached drainer was left behind"


# ---------------------------------------------------- a real rpc-server (`sollol-ops local`), frozen


@pytest.fixture
def local_rpc(tmp_path: Path) -> Iterator[tuple[str, int, Path, dict[str, str]]]:
    """One real rpc-server started with `sollol-ops local start`: (endpoint, pid, inventory, env)."""
    root = tmp_path / "local"
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CACHE_HOME": str(tmp_path / "cache"), "SOLLOL_INVENTORY": ""}
    port = free_port()
    start = ["local", "start", "1", "--base-port", str(port), "--threads", "1", "--no-cache", "--dir", str(root)]
    proc = run_cli(*start, "--json", env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    cluster = json.loads(proc.stdout)
    server = cluster["servers"][0]
    pid, start_time = server["pid"], server["start_time"]
    try:
        yield f"127.0.0.1:{server['port']}", pid, Path(cluster["inventory"]), env
    finally:
        if procs.is_alive(pid, start_time):
            os.kill(pid, signal.SIGCONT)
        run_cli("local", "stop", "--dir", str(root), env=env, timeout=60)
        assert not procs.is_alive(pid, start_time)


@pytest.mark.toolchain
def test_frozen_rpc_server(local_rpc: tuple[str, int, Path, dict[str, str]], leak_mark: str) -> None:
    """SIGSTOP: the kernel still accepts connections, nothing answers. Library probe and `status` say
    busy in bounded time; after SIGCONT the server answers the queued knocks quietly and is ready."""
    endpoint, pid, inventory, env = local_rpc
    os.kill(pid, signal.SIGSTOP)
    try:
        result, elapsed = _bounded(lambda: rpc.probe(endpoint), PROBE_BOUND_S)
        assert result.status is BUSY, result
        t0 = time.monotonic()
        proc = run_cli("-i", str(inventory), "status", "--json", env={**env, hostile.LEAK_MARK_VAR: leak_mark})
        cli_elapsed = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert "Traceback" not in proc.stderr and proc.returncode == 0, proc.stderr
    [backend] = json.loads(proc.stdout)["backends"]
    assert backend["status"] == "busy", backend
    assert elapsed < PROBE_BOUND_S and cli_elapsed < CLI_BOUND_S
    assert hostile.marked_processes(leak_mark) == []
    time.sleep(0.5)
    assert procs.is_alive(pid), "rpc-server died after being probed while frozen"
    assert rpc.probe(endpoint).status is rpc.Status.READY


@pytest.mark.toolchain
def test_rpc_server_frozen_between_knock_and_hello(
    local_rpc: tuple[str, int, Path, dict[str, str]], leak_mark: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The knock found the server free, then it froze: the HELLO goes unanswered. The probe withdraws
    it (reset) and says busy; the server, thawed, reaches the withdrawn HELLO and lives on."""
    endpoint, pid, _, _ = local_rpc
    os.kill(pid, signal.SIGSTOP)
    try:
        with monkeypatch.context() as m:
            m.setattr(rpc, "_knock", lambda *a, **k: None)
            result, elapsed = _bounded(lambda: rpc.probe(endpoint), PROBE_BOUND_S)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert result.status is BUSY and "took the server" in result.detail, result
    assert elapsed < PROBE_BOUND_S
    assert hostile.marked_processes(leak_mark) == []
    time.sleep(0.5)
    assert procs.is_alive(pid), "rpc-server died reaching a withdrawn HELLO"
    assert rpc.probe(endpoint).status is rpc.Status.READY


def test_a_reset_that_arrives_before_the_knock_half_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer resets the connection before the knock's shutdown(): that is `down`, not an OSError."""
    connect = wire.connect

    def connect_then_wait(*args: object, **kwargs: object):
        sock = connect(*args, **kwargs)
        time.sleep(0.3)  # the reset arrives meanwhile
        return sock

    monkeypatch.setattr(wire, "connect", connect_then_wait)
    with HostilePeer(hostile.resets) as peer:
        result, _ = _bounded(lambda: rpc.probe(peer.endpoint), PROBE_BOUND_S)
    assert result.status is DOWN and "reset" in result.detail, result
