"""Compute-speed measurement over the RPC protocol: against a real rpc-server on loopback (every weight type it
can be asked for, the server left as found), a busy one, and scripted peers that misbehave at each step of the
measurement (each ends it in bounded time with a status, never an exception)."""

from __future__ import annotations

import socket
import struct
import time
import uuid
from pathlib import Path

import hostile
import pytest
from hostile import HostilePeer
from speedparts import worker

from sollol_ops import procs
from sollol_ops.cluster import rpc
from sollol_ops.cluster.local import LocalServer
from sollol_ops.cluster.speed import MEASURABLE, MIN_WEIGHT_BYTES, measure_compute
from sollol_ops.errors import UsageError

MIB = 1 << 20
BUSY, DOWN, INCOMPATIBLE, READY = rpc.Status.BUSY, rpc.Status.DOWN, rpc.Status.INCOMPATIBLE, rpc.Status.READY


@pytest.fixture
def leak_mark(monkeypatch: pytest.MonkeyPatch) -> str:
    mark = uuid.uuid4().hex
    monkeypatch.setenv(hostile.LEAK_MARK_VAR, mark)
    return mark


# ------------------------------------------------------------------------------ a scripted worker and its faults


FAULTS: dict[str, tuple[rpc.Status, str, str]] = {
    "alloc_garbage": (INCOMPATIBLE, "alloc", "malformed reply: reply of"),
    "short_alloc": (INCOMPATIBLE, "alloc", "allocated"),
    "compute_closes": (DOWN, "compute", "closed the connection mid-measurement"),
    "compute_stalls": (DOWN, "compute", "measurement deadline of 3s passed: stopped answering"),
    "sync_garbage": (INCOMPATIBLE, "compute", "malformed reply: reply of 8 bytes to DEVICE_COUNT"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_worker_misbehaving_mid_measurement_ends_it(fault: str, leak_mark: str) -> None:
    status, stage, phrase = FAULTS[fault]
    with HostilePeer(worker(fault)) as peer:
        t0 = time.monotonic()
        result = measure_compute(peer.endpoint, "Q4_1", weight_bytes=4 * MIB, deadline_s=3.0, reply_timeout=10.0)
        elapsed = time.monotonic() - t0
    assert (result.status, result.stage) == (status, stage), result
    assert phrase in result.detail and result.speed is None and not result.ok, result
    assert elapsed < 15.0, f"a 3 s deadline took {elapsed:.1f}s"
    assert hostile.marked_processes(leak_mark) == []


@pytest.mark.parametrize(
    ("script", "status", "stage"),
    [("silent", BUSY, "knock"), ("garbage_hello", INCOMPATIBLE, "hello"), ("endless_devices", INCOMPATIBLE, "devices")],
)
def test_peers_that_are_no_worker_are_not_measured(script: str, status: rpc.Status, stage: str) -> None:
    with HostilePeer(getattr(hostile, script)) as peer:
        result = measure_compute(peer.endpoint, deadline_s=3.0)
    assert (result.status, result.stage) == (status, stage), result


def test_a_device_without_room_is_not_measured() -> None:
    with HostilePeer(worker(free=8 * MIB)) as peer:
        result = measure_compute(peer.endpoint, weight_bytes=64 * MIB)
    assert result.status is READY and result.speed is None and "the measurement needs" in result.detail, result


def test_usage_errors_raise() -> None:
    with pytest.raises(UsageError, match="cannot measure weights of type IQ2_XS"):
        measure_compute("127.0.0.1:1", "IQ2_XS")
    with pytest.raises(UsageError, match="weight_bytes"):
        measure_compute("127.0.0.1:1", weight_bytes=MIN_WEIGHT_BYTES - 1)
    with pytest.raises(UsageError, match="repeats"):
        measure_compute("127.0.0.1:1", repeats=0)


# ------------------------------------------------------------------------------ real rpc-servers


@pytest.mark.toolchain
def test_a_real_server_is_measured_in_every_weight_type_and_left_as_found(rpc_server: tuple[str, LocalServer]) -> None:
    """Each type's graph is one rpc-server computes (a wrong one would make it abort): after all of them it is alive,
    free, and its log shows no error."""
    endpoint, server = rpc_server
    for ggml_type in MEASURABLE:
        result = measure_compute(endpoint, ggml_type, weight_bytes=MIN_WEIGHT_BYTES, repeats=1)
        assert result.ok and result.stage == "done" and result.version == "7.0.0", (ggml_type, result)
        assert result.speed is not None and result.speed.ggml_type == ggml_type
        assert result.speed.ns_per_byte > 0 and result.speed.weight_bytes > 0
        assert procs.is_alive(server.pid, server.start_time), f"rpc-server died on {ggml_type}"
    assert rpc.probe(endpoint).status is READY
    log = Path(server.log).read_text(errors="replace")
    assert "error" not in log.lower() and "abort" not in log.lower(), log[-2000:]


@pytest.mark.toolchain
def test_a_real_server_streams_its_weights_in_the_timed_graph(rpc_server: tuple[str, LocalServer]) -> None:
    """64 MiB of weights take longer per recompute than 1 MiB (the graph really computes; no timing bound)."""
    endpoint, _ = rpc_server
    small = measure_compute(endpoint, "Q4_1", weight_bytes=1 * MIB, repeats=3)
    big = measure_compute(endpoint, "Q4_1", weight_bytes=64 * MIB, repeats=3)
    assert small.speed is not None and big.speed is not None, (small, big)
    assert min(big.speed.samples_ms) > min(small.speed.samples_ms)


@pytest.mark.toolchain
def test_a_busy_real_server_is_not_measured(rpc_server: tuple[str, LocalServer]) -> None:
    endpoint, server = rpc_server
    host, port = rpc.split_endpoint(endpoint)
    holder = socket.create_connection((host, port), timeout=5)
    holder.sendall(struct.pack("<BQ", 14, 24) + bytes(24))
    assert len(holder.recv(64)) >= 8
    try:
        result = measure_compute(endpoint, turn_timeout=0.5)
    finally:
        holder.close()
    assert result.status is BUSY and result.stage == "knock", result
    time.sleep(0.5)
    assert procs.is_alive(server.pid, server.start_time)
    assert rpc.probe(endpoint).status is READY
