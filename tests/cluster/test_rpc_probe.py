"""The RPC probe against real ggml-rpc-server processes (and a scripted server for other versions)."""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
import uuid
from pathlib import Path

import hostile
import pytest
from ports import free_port
from rpcdouble import RpcDouble

from sollol_ops import procs
from sollol_ops.cluster import rpc, wire
from sollol_ops.cluster.local import LocalServer


def _hold(endpoint: str) -> socket.socket:
    """Another client (like a coordinator) attached to the server: HELLO answered, connection kept."""
    host, port = rpc.split_endpoint(endpoint)
    sock = socket.create_connection((host, port), timeout=5)
    sock.sendall(struct.pack("<BQ", 14, 24) + bytes(24))
    assert len(sock.recv(64)) >= 8
    return sock


def _queued_hello(endpoint: str) -> socket.socket:
    """A HELLO sent while another client holds the server: it stays queued, unanswered."""
    host, port = rpc.split_endpoint(endpoint)
    sock = socket.create_connection((host, port), timeout=1)
    sock.sendall(struct.pack("<BQ", 14, 24) + bytes(24))
    with pytest.raises(TimeoutError):
        sock.recv(8)
    return sock


def _mem_total_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal")


@pytest.mark.toolchain
def test_ready_with_version_and_memory(rpc_server: tuple[str, LocalServer]) -> None:
    endpoint, _ = rpc_server
    result = rpc.probe(endpoint)
    assert result.status is rpc.Status.READY, result
    assert result.version == "7.0.0"
    assert len(result.devices) == 1
    dev = result.devices[0]
    # a CPU device reports the host's total RAM as both free and total
    assert dev.total == dev.free
    assert abs(dev.total - _mem_total_bytes()) < 0.05 * _mem_total_bytes()


@pytest.mark.toolchain
def test_busy_while_held_and_server_survives(rpc_server: tuple[str, LocalServer]) -> None:
    endpoint, server = rpc_server
    holder = _hold(endpoint)
    try:
        first = rpc.probe(endpoint, turn_timeout=0.5)
        second = rpc.probe(endpoint, turn_timeout=0.5)
        assert first.status is rpc.Status.BUSY, first
        assert second.status is rpc.Status.BUSY, second
        assert "held by another client" in first.detail
    finally:
        holder.close()
    time.sleep(0.5)  # the server now accepts our queued knocks: it must read EOF and go on, not die
    assert procs.is_alive(server.pid, server.start_time), "rpc-server died after being probed while busy"
    assert rpc.probe(endpoint).status is rpc.Status.READY


@pytest.mark.toolchain
def test_a_naive_probe_would_kill_the_server(rpc_server: tuple[str, LocalServer]) -> None:
    """Why the probe knocks first: a HELLO left queued by a client that gives up kills rpc-server."""
    endpoint, server = rpc_server
    holder = _hold(endpoint)
    naive = _queued_hello(endpoint)
    naive.close()
    holder.close()
    assert _wait_dead(server, 5.0), "expected SIGPIPE death of rpc-server"


def _wait_dead(server: LocalServer, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while procs.is_alive(server.pid, server.start_time) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not procs.is_alive(server.pid, server.start_time)


@pytest.mark.toolchain
def test_a_queued_hello_aborted_with_a_reset_leaves_the_server_alive(rpc_server: tuple[str, LocalServer]) -> None:
    """The other half of the naive probe above: the same queued HELLO, abandoned with a reset (RST, what
    the probe does) instead of a FIN, does not kill the server when it gets to it."""
    endpoint, server = rpc_server
    holder = _hold(endpoint)
    queued = _queued_hello(endpoint)
    wire.abort(queued)
    holder.close()
    assert not _wait_dead(server, 2.0), "rpc-server died after a queued HELLO was aborted with a reset"
    assert rpc.probe(endpoint).status is rpc.Status.READY


@pytest.mark.toolchain
def test_an_unanswered_request_aborted_mid_session_leaves_the_server_alive(rpc_server: tuple[str, LocalServer]) -> None:
    """A probe that gives up while the server it is talking to has not answered yet (a stalled server,
    the deadline): the server answers into the reset connection later and must live on."""
    endpoint, server = rpc_server
    host, port = rpc.split_endpoint(endpoint)
    sock = socket.create_connection((host, port), timeout=5)
    sock.sendall(struct.pack("<BQ", 14, 24) + bytes(24))
    assert len(sock.recv(64)) >= 8
    os.kill(server.pid, signal.SIGSTOP)  # the server waits in recv() for our next request
    try:
        sock.sendall(struct.pack("<BQ", 11, 4) + struct.pack("<I", 0))  # GET_DEVICE_MEMORY, never read
        wire.abort(sock)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert not _wait_dead(server, 2.0), "rpc-server died answering a request aborted with a reset"
    assert rpc.probe(endpoint).status is rpc.Status.READY


@pytest.mark.toolchain
def test_a_hello_queued_by_the_race_is_withdrawn(rpc_server: tuple[str, LocalServer], monkeypatch) -> None:
    """The race: the server is taken between knock and HELLO. The probe reports busy within its time
    limits, leaves no process behind, and the server survives reaching the withdrawn HELLO."""
    endpoint, server = rpc_server
    holder = _hold(endpoint)
    mark = uuid.uuid4().hex
    monkeypatch.setenv(hostile.LEAK_MARK_VAR, mark)
    monkeypatch.setattr(rpc, "_knock", lambda *a, **k: None)  # pretend the knock found it free
    t0 = time.monotonic()
    result = rpc.probe(endpoint, reply_timeout=0.5)
    assert time.monotonic() - t0 < 10
    assert result.status is rpc.Status.BUSY and "took the server" in result.detail
    assert hostile.marked_processes(mark) == []
    holder.close()
    assert not _wait_dead(server, 2.0), "rpc-server died: the queued HELLO was dropped with a FIN"
    monkeypatch.undo()
    assert rpc.probe(endpoint).status is rpc.Status.READY


def test_down_on_a_closed_port() -> None:
    port = free_port()
    result = rpc.probe(f"127.0.0.1:{port}")
    assert result.status is rpc.Status.DOWN
    assert "refused" in result.detail


@pytest.mark.parametrize(
    ("version", "status"),
    [
        ((6, 9, 0), rpc.Status.INCOMPATIBLE),
        ((7, 1, 0), rpc.Status.INCOMPATIBLE),  # newer minor than this client
        ((8, 0, 0), rpc.Status.INCOMPATIBLE),
        ((7, 0, 5), rpc.Status.READY),  # patch differences are compatible
    ],
)
def test_protocol_versions(version: tuple[int, int, int], status: rpc.Status) -> None:
    with RpcDouble(version=version) as double:
        result = rpc.probe(double.endpoint)
    assert result.status is status, result
    assert result.version == ".".join(map(str, version))
    if status is rpc.Status.INCOMPATIBLE:
        assert "this build speaks 7.0.0" in result.detail


def test_scripted_gpu_devices_are_reported() -> None:
    gib = 1 << 30
    with RpcDouble(devices=[(10 * gib, 12 * gib), (20 * gib, 24 * gib)]) as double:
        result = rpc.probe(double.endpoint)
    assert result.ok
    assert [(d.free, d.total) for d in result.devices] == [(10 * gib, 12 * gib), (20 * gib, 24 * gib)]


@pytest.mark.toolchain
def test_probe_all_is_concurrent_and_ordered(rpc_server: tuple[str, LocalServer]) -> None:
    endpoint, _ = rpc_server
    closed = f"127.0.0.1:{free_port()}"
    with RpcDouble(version=(6, 0, 0)) as old:
        holder_double = RpcDouble()
        with holder_double:
            hold = _hold(holder_double.endpoint)
            results = rpc.probe_all([endpoint, closed, old.endpoint, holder_double.endpoint], turn_timeout=1.0)
            hold.close()
    assert [r.status for r in results] == [
        rpc.Status.READY,
        rpc.Status.DOWN,
        rpc.Status.INCOMPATIBLE,
        rpc.Status.BUSY,
    ]
