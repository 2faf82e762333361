"""The delay relay the benchmark puts in front of rpc-servers: bytes arrive intact and in order, every round trip
costs at least twice the one-way delay, and bad arguments are one-line errors."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from ports import free_port


def _echo_server() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


@pytest.fixture
def relay() -> Iterator[tuple[int, float]]:
    server, target = _echo_server()
    port, delay_ms = free_port(), 2.0
    proc = subprocess.Popen(
        [sys.executable, "-m", "sollol_ops.dev.delayrelay", "--listen", f"127.0.0.1:{port}",
         "--to", f"127.0.0.1:{target}", "--delay-ms", str(delay_ms)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"listening 127.0.0.1:{port}")
        yield port, delay_ms
    finally:
        proc.terminate()
        proc.wait(10)
        server.close()


def _round_trip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(1 << 20)
        assert chunk, "relay closed the connection"
        got += chunk
    return got


def test_bytes_arrive_intact_in_order_through_the_relay(relay: tuple[int, float]) -> None:
    port, _ = relay
    payload = os.urandom(3 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        assert _round_trip(sock, payload) == payload
        assert _round_trip(sock, b"x") == b"x"


def test_each_round_trip_costs_at_least_twice_the_one_way_delay(relay: tuple[int, float]) -> None:
    port, delay_ms = relay
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for _ in range(20):
            t0 = time.perf_counter()
            _round_trip(sock, b"ping")
            rtts.append((time.perf_counter() - t0) * 1000)
    # A lower bound only: the relay must add the delay; load on the machine can only add more.
    assert min(rtts) >= 2 * delay_ms * 0.95, rtts
    assert statistics.median(rtts) >= 2 * delay_ms


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nowhere", "--to", "127.0.0.1:1", "--delay-ms", "1"], "is not HOST:PORT"),
        (["--listen", "127.0.0.1:1", "--to", "127.0.0.1:99999", "--delay-ms", "1"], "is not HOST:PORT"),
        (["--listen", "127.0.0.1:1", "--to", "127.0.0.1:2", "--delay-ms", "-1"], "between 0 and 10000"),
    ],
)
def test_bad_arguments_are_one_line_errors(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sollol_ops.dev.delayrelay", *args], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_a_busy_listen_port_is_a_one_line_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "sollol_ops.dev.delayrelay", "--listen", f"127.0.0.1:{port}",
             "--to", "127.0.0.1:1", "--delay-ms", "1"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert proc.returncode == 1 and "cannot listen" in proc.stderr and "Traceback" not in proc.stderr
