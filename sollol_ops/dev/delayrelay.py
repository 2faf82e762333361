"""A TCP relay that adds a fixed one-way delay in each direction: LAN-like latency in front of an rpc-server.

This kernel has no netem, so the benchmark puts one of these in front of each rpc-server it wants "far away":
every chunk read from one side is written to the other `delay` seconds after it arrived, in order, both ways,
so a request/response round trip costs 2 x delay more (0.3 ms one way ~ a wired LAN, 2 ms ~ Wi-Fi). Threads
and time.sleep, not asyncio: its selector rounds timeouts up to whole milliseconds, which would turn 0.3 ms
into 1 ms. Memory is bounded (MAX_QUEUED chunks of at most CHUNK bytes per direction; a full queue stops
reading, so TCP pushes back on the sender).

Run as `python -m sollol_ops.dev.delayrelay --listen 127.0.0.1:PORT --to HOST:PORT --delay-ms 0.3`; it prints
`listening HOST:PORT` once it accepts connections and runs until SIGTERM/SIGINT. Only used by the benchmark and
the tests, towards addresses they started themselves.
"""

from __future__ import annotations

import argparse
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence

CHUNK = 256 * 1024
MAX_QUEUED = 256  # chunks per direction: at most 64 MiB in flight


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
    """Copy src -> dst, each chunk written `delay` s after it was read (two threads: reader and writer)."""
    pending: queue.Queue[tuple[float, bytes | None]] = queue.Queue(MAX_QUEUED)

    def read() -> None:
        try:
            while data := src.recv(CHUNK):
                pending.put((time.perf_counter() + delay, data))
        except OSError:
            pass
        pending.put((time.perf_counter() + delay, None))  # end of stream

    def write() -> None:
        try:
            while True:
                due, data = pending.get()
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                if data is None:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        except OSError:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=write, daemon=True).start()


def _serve_client(client: socket.socket, target: tuple[str, int], delay: float) -> None:
    try:
        upstream = socket.create_connection(target, timeout=10)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    for s in (client, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _pipe(client, upstream, delay)
    _pipe(upstream, client, delay)


def serve(listen: tuple[str, int], target: tuple[str, int], delay: float, ready: threading.Event | None = None) -> None:
    """Accept on `listen` forever, relaying every connection to `target` with `delay` seconds each way."""
    with socket.create_server(listen, reuse_port=False) as server:
        host, port = server.getsockname()[:2]
        print(f"listening {host}:{port}", flush=True)
        if ready is not None:
            ready.set()
        while True:
            client, _ = server.accept()
            _serve_client(client, target, delay)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept on")
    parser.add_argument("--to", required=True, help="HOST:PORT to relay to")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay added in each direction")
    args = parser.parse_args(argv)
    try:
        listen, target = _split(args.listen), _split(args.to)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not 0 <= args.delay_ms <= 10_000:
        print("error: --delay-ms must be between 0 and 10000", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve(listen, target, args.delay_ms / 1000)
    except OSError as exc:
        print(f"error: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
