"""A scripted RPC server speaking llama.cpp's real wire format, for what cannot run here: another
protocol version, or GPU devices with given memory. Serves one client at a time, like rpc-server.

It also keeps buffers like rpc-server does (ALLOC_BUFFER, BUFFER_GET_BASE, SET_TENSOR, FREE_BUFFER, with
the same checks, closing the connection where rpc-server would), and records what a client left: the
buffers still allocated when a client went away (`left_allocated`) and the bytes each upload stored."""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field

# rpc_tensor of protocol 7.0.0: id, type, buffer, ne[4], nb[4] (u32), op, op_params[16], flags, src[10],
# view_src, view_offs, data, name[64], use_count
RPC_TENSOR = struct.Struct("<QIQ4I4II16ii10QQQQ64si")
NEXT_PTR = 0x7F00_0000_0000
BASE_OFFSET = 0x40


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
    uploads: list[int] = field(default_factory=list)  # bytes stored by each SET_TENSOR
    left_allocated: list[int] = field(default_factory=list)  # per finished connection: buffers not freed
    commands: list[int] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)  # requests that would abort a real rpc-server

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
        buffers: dict[int, int] = {}  # remote_ptr -> size; base = remote_ptr + BASE_OFFSET
        try:
            self._session(conn, buffers)
        finally:
            self.left_allocated.append(len(buffers))  # rpc-server frees them when the client leaves

    def _session(self, conn: socket.socket, buffers: dict[int, int]) -> None:
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
            self.commands.append(cmd)
            if cmd == 14:
                self._reply(conn, bytes(self.version) + b"\0" + bytes(24))
            elif cmd == 15:
                self._reply(conn, struct.pack("<I", len(self.devices)))
            elif cmd == 11:
                (index,) = struct.unpack("<I", payload)
                free, total = self.devices[index]
                self._reply(conn, struct.pack("<QQ", free, total))
            elif cmd == 0:  # ALLOC_BUFFER
                device, size = struct.unpack("<IQ", payload)
                if device >= len(self.devices):
                    return
                ptr = 0
                if size <= self.devices[device][0]:
                    ptr = NEXT_PTR + 0x10000 * self.connections + 0x100 * len(buffers)
                    buffers[ptr] = size
                self._reply(conn, struct.pack("<QQ", ptr, size if ptr else 0))
            elif cmd == 3:  # BUFFER_GET_BASE
                (ptr,) = struct.unpack("<Q", payload)
                if ptr not in buffers:
                    return
                self._reply(conn, struct.pack("<Q", ptr + BASE_OFFSET))
            elif cmd == 4:  # FREE_BUFFER: no reply
                (ptr,) = struct.unpack("<Q", payload)
                if buffers.pop(ptr, None) is None:
                    return
            elif cmd == 6:  # SET_TENSOR: no reply
                if not self._set_tensor(payload, buffers):
                    return
            else:
                return

    def _set_tensor(self, payload: bytes, buffers: dict[int, int]) -> bool:
        """rpc-server's checks: a known buffer, a valid type, and data that lies inside the buffer."""
        if len(payload) < RPC_TENSOR.size + 9:
            return False
        fields = RPC_TENSOR.unpack_from(payload)
        ttype, buffer, ne, nb, data = fields[1], fields[2], fields[3:7], fields[7:11], fields[-3]
        _, offset = struct.unpack_from("<BQ", payload, RPC_TENSOR.size)
        size = len(payload) - RPC_TENSOR.size - 9
        if ttype != 0 or buffer not in buffers:  # only F32 here
            return False
        nbytes = 4 + sum((n - 1) * s for n, s in zip(ne, nb, strict=True))
        base, end = buffer + BASE_OFFSET, buffer + BASE_OFFSET + buffers[buffer]
        if data < base or data + nbytes > end:  # rpc-server aborts (GGML_ASSERT) here: record it
            self.violations.append(f"tensor outside its buffer: {data:#x} + {nbytes} vs [{base:#x}, {end:#x})")
            return False
        if data + offset < base or data + offset >= end or size > end - data - offset:
            return False
        self.uploads.append(size)
        return True
