"""A scripted RPC server speaking llama.cpp's real wire format, for what cannot run here: another
protocol version, or GPU devices with given memory. Serves one client at a time, like rpc-server."""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


@dataclass
class RpcDouble:
    version: tuple[int, int, int] = (7, 0, 0)
    devices: list[tuple[int, int]] = field(default_factory=lambda: [(8 << 30, 8 << 30)])  # (free, total)
    host: str = "127.0.0.1"
    port: int = 0
    connections: int = 0

    def __post_init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.host, self.port))
        self._sock.listen(1)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> RpcDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        try:
            socket.create_connection((self.host, self.port), timeout=1).close()
        except OSError:
            pass
        self._sock.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                self._client(conn)

    def _reply(self, conn: socket.socket, payload: bytes) -> None:
        conn.sendall(struct.pack("<Q", len(payload)) + payload)

    def _client(self, conn: socket.socket) -> None:
        first = True
        while True:
            header = _recv_exact(conn, 9)
            if header is None:
                return
            cmd, size = struct.unpack("<BQ", header)
            payload = _recv_exact(conn, size) if size else b""
            if payload is None:
                return
            if first and cmd != 14:
                return
            first = False
            if cmd == 14:
                self._reply(conn, bytes(self.version) + b"\0" + bytes(24))
            elif cmd == 15:
                self._reply(conn, struct.pack("<I", len(self.devices)))
            elif cmd == 11:
                (index,) = struct.unpack("<I", payload)
                free, total = self.devices[index]
                self._reply(conn, struct.pack("<QQ", free, total))
            else:
                return
