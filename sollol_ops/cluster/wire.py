"""llama.cpp's RPC wire format and the socket I/O that carries it, every wait within a `Deadline`.

Wire format (little-endian, packed): request ``u8 cmd | u64 size | payload``, reply ``u64 size | payload``.
HELLO (14) must come first: 24 bytes of connection caps in, ``major, minor, patch, pad`` + 24 caps out.
DEVICE_COUNT (15): nothing in, ``u32`` out. GET_DEVICE_MEMORY (11): ``u32`` device in, ``u64 free, u64 total``.
ALLOC_BUFFER (0): ``u32 device, u64 size`` in, ``u64 remote_ptr, u64 remote_size`` out (remote_ptr 0: failed).
BUFFER_GET_BASE (3): ``u64 remote_ptr`` in, ``u64 base`` out. FREE_BUFFER (4): ``u64 remote_ptr`` in, no reply.
SET_TENSOR (6): ``rpc_tensor | u8 cache_flag | u64 offset | data`` in, no reply (see `RPC_TENSOR`).
BUFFER_CLEAR (5): ``u64 remote_ptr, u8 value`` in, no reply. GRAPH_COMPUTE (10): ``u32 device | u32 n_nodes |
u64 node ids | u32 n_tensors | rpc_tensor...`` in, no reply; GRAPH_RECOMPUTE (16): ``u32 device`` in, no reply
(the graph last sent again). `sollol_ops.cluster.speed` times them.

Replies are checked against their exact size before a byte of them is read. Standard library only: the
staging client (`sollol_ops.stage.worker`) is copied to workers with this module.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

CMD_ALLOC_BUFFER = 0
CMD_BUFFER_GET_BASE = 3
CMD_FREE_BUFFER = 4
CMD_BUFFER_CLEAR = 5
CMD_SET_TENSOR = 6
CMD_GRAPH_COMPUTE = 10
CMD_GET_DEVICE_MEMORY = 11
CMD_HELLO = 14
CMD_DEVICE_COUNT = 15
CMD_GRAPH_RECOMPUTE = 16
CONN_CAPS_SIZE = 24
HELLO_REPLY_SIZE = 4 + CONN_CAPS_SIZE

# The protocol of the pinned llama.cpp build (0c1e57098): the client accepts major == 7, minor <= 0.
CLIENT_PROTOCOL: tuple[int, int, int] = (7, 0, 0)

# A HELLO reply of another protocol version may have another size; nothing sane sends more than this.
MAX_HELLO_REPLY = 1024
_RECV_CHUNK = 1 << 20

# struct rpc_tensor of ggml-rpc.cpp (packed): id, type, buffer, ne[4] u32, nb[4] u32, op, op_params[16],
# flags, src[10], view_src, view_offs, data, name[64], use_count. 296 bytes.
RPC_TENSOR = struct.Struct("<QIQ4I4II16ii10QQQQ64si")
GGML_TYPE_F32 = 0
GGML_TYPE_I8 = 24
# Bytes per row of the 2-D I8 tensor a raw upload is described as (ne is u32: one row could not say > 4 GiB).
UPLOAD_ROW = 1 << 16

COMMAND_NAMES = {
    0: "ALLOC_BUFFER",
    1: "GET_ALIGNMENT",
    2: "GET_MAX_SIZE",
    3: "BUFFER_GET_BASE",
    4: "FREE_BUFFER",
    5: "BUFFER_CLEAR",
    6: "SET_TENSOR",
    7: "SET_TENSOR_HASH",
    8: "GET_TENSOR",
    9: "COPY_TENSOR",
    10: "GRAPH_COMPUTE",
    11: "GET_DEVICE_MEMORY",
    12: "INIT_TENSOR",
    13: "GET_ALLOC_SIZE",
    14: "HELLO",
    15: "DEVICE_COUNT",
    16: "GRAPH_RECOMPUTE",
    17: "MEMSET_TENSOR",
}


def _plain_tensor(
    buffer: int, base: int, ggml_type: int, ne: tuple[int, int, int, int], nb: tuple[int, int, int, int], name: bytes
) -> bytes:
    """The rpc_tensor of a plain tensor (no op, no sources, not a view) of shape `ne`, strides `nb`, at `base`
    of the remote `buffer`."""
    return RPC_TENSOR.pack(1, ggml_type, buffer, *ne, *nb, 0, *([0] * 16), 0, *([0] * 10), 0, 0, base, name, 0)


def rows_tensor(buffer: int, base: int, size: int) -> bytes:
    """`size` raw bytes at `base` of `buffer` as a 2-D I8 tensor of UPLOAD_ROW-byte rows (any size; the buffer
    must hold `upload_alloc_size(size)`)."""
    rows = -(-size // UPLOAD_ROW)
    nb = (1, UPLOAD_ROW, UPLOAD_ROW * rows, UPLOAD_ROW * rows)
    return _plain_tensor(buffer, base, GGML_TYPE_I8, (UPLOAD_ROW, rows, 1, 1), nb, b"sollol-stage")


def floats_tensor(buffer: int, base: int, size: int) -> bytes:
    """`size` bytes (a multiple of 4) at `base` of `buffer` as a 1-D F32 tensor of exactly that size."""
    return _plain_tensor(buffer, base, GGML_TYPE_F32, (size // 4, 1, 1, 1), (4, size, size, size), b"sollol-link")


def upload_alloc_size(size: int) -> int:
    """The buffer an upload of `size` bytes described as UPLOAD_ROW-byte rows needs (whole rows)."""
    return -(-size // UPLOAD_ROW) * UPLOAD_ROW


class Deadline:
    """A wall-clock budget shared by every wait of one operation: each wait gets at most the time left.

    `within(cap)` gives a part of the operation (one connect, one reply) that may take at most `cap`
    seconds and never outlasts the whole; its `overall` says whether the whole's end is the binding one.
    """

    def __init__(self, seconds: float, *, end: float | None = None, overall: bool = True) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds if end is None else end
        self.overall = overall

    def left(self) -> float:
        return self.end - time.monotonic()

    @property
    def passed(self) -> bool:
        return self.left() <= 0

    def within(self, cap: float) -> Deadline:
        end = time.monotonic() + cap
        if end < self.end:
            return Deadline(cap, end=end, overall=False)
        return Deadline(self.seconds, end=self.end, overall=self.overall)


class Closed(Exception):
    """The peer closed the connection before a full reply."""


class Malformed(Exception):
    """A reply of a size the protocol does not allow: not read, the connection is aborted."""


class Stalled(Exception):
    """No complete reply before the deadline (`received` bytes of it had arrived), or, `sending`, the
    peer stopped taking our request."""

    def __init__(self, received: int, limit: Deadline, sending: bool = False) -> None:
        super().__init__(received)
        self.received = received
        self.limit = limit
        self.sending = sending


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


def settimeout(sock: socket.socket, limit: Deadline, received: int = 0) -> None:
    left = limit.left()
    if left <= 0:
        raise Stalled(received, limit)
    sock.settimeout(left)


def recv_exact(sock: socket.socket, n: int, limit: Deadline) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        settimeout(sock, limit, len(buf))
        try:
            chunk = sock.recv(min(n - len(buf), _RECV_CHUNK))
        except TimeoutError:
            raise Stalled(len(buf), limit) from None
        if not chunk:
            raise Closed()
        buf += chunk
    return bytes(buf)


def send(sock: socket.socket, data: bytes | memoryview, limit: Deadline) -> None:
    """sendall within the deadline (since Python 3.5 a socket timeout bounds the whole sendall)."""
    settimeout(sock, limit)
    try:
        sock.sendall(data)
    except TimeoutError:
        raise Stalled(0, limit, sending=True) from None


def send_command(sock: socket.socket, cmd: int, payload: bytes, limit: Deadline, *, size: int | None = None) -> None:
    """The header and `payload` of one request; `size`: the whole payload's, when more of it follows."""
    send(sock, struct.pack("<BQ", cmd, len(payload) if size is None else size) + payload, limit)


def read_reply(sock: socket.socket, cmd: int, limit: Deadline, *, size: int | None, max_size: int | None) -> bytes:
    (n,) = struct.unpack("<Q", recv_exact(sock, 8, limit))
    name = COMMAND_NAMES.get(cmd, str(cmd))
    if size is not None and n != size:
        raise Malformed(f"reply of {n} bytes to {name} (expected {size})")
    if max_size is not None and n > max_size:
        raise Malformed(f"reply of {n} bytes to {name} (at most {max_size} expected)")
    try:
        return recv_exact(sock, n, limit)
    except Stalled as exc:
        raise Stalled(exc.received + 8, limit) from None


def request(
    sock: socket.socket,
    cmd: int,
    payload: bytes,
    limit: Deadline,
    *,
    size: int | None = None,
    max_size: int | None = None,
) -> bytes:
    """Send one request and read its whole reply, whose size must be `size` (or at most `max_size`)."""
    send_command(sock, cmd, payload, limit)
    return read_reply(sock, cmd, limit, size=size, max_size=max_size)


def abort(sock: socket.socket) -> None:
    """Close with a reset (RST), not a FIN: the way to leave a request unanswered (see `sollol_ops.cluster.rpc`)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


Address = tuple[int, int, int, str, Any]


def resolve(host: str, port: int, limit: Deadline) -> list[Address]:
    """getaddrinfo within the deadline: names are resolved in a daemon thread that is left behind
    (it ends with the resolver's own time-out) if the deadline passes first."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    box: list[list[Address] | OSError] = []

    def run() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True, name=f"resolve {host}")
    thread.start()
    thread.join(max(0.0, limit.left()))
    if not box:
        raise socket.gaierror(socket.EAI_AGAIN, f"no answer from the resolver within {limit.seconds:g}s")
    if isinstance(box[0], OSError):
        raise box[0]
    return box[0]


def connect(addrs: Sequence[Address], limit: Deadline) -> socket.socket:
    """Connect to the first address that answers within the deadline; raises OSError (TimeoutError)."""
    error: OSError = TimeoutError("connect")
    for family, type_, proto, _, sockaddr in addrs:
        left = limit.left()
        if left <= 0:
            break
        sock = socket.socket(family, type_, proto)
        try:
            sock.settimeout(left)
            sock.connect(sockaddr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


def down_reason(exc: OSError, waited: float) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listening)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return (
            f"no answer connecting within {waited:g}s (host unreachable or port filtered, or its "
            "accept queue is full: held by a client with others waiting)"
        )
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror}"
    return exc.strerror or type(exc).__name__


def stall_reason(exc: Stalled, operation: str = "probe") -> str:
    waited = f"{exc.limit.seconds:g}s"
    if exc.sending:
        what = f"stopped taking our request (not sent within {waited})"
    elif exc.received:
        what = f"stopped mid-reply ({exc.received} bytes in {waited}: stalled, or sending too slowly)"
    else:
        what = f"stopped answering (no reply within {waited})"
    return f"{operation} deadline of {waited} passed: {what}" if exc.limit.overall else what


def version_compatible(version: tuple[int, int, int], client: tuple[int, int, int] = CLIENT_PROTOCOL) -> bool:
    return version[0] == client[0] and version[1] <= client[1]


def hello_version(reply: bytes, client_protocol: tuple[int, int, int]) -> tuple[str, str | None]:
    """(version text, None) for a compatible HELLO reply, else (version text, why not)."""
    if len(reply) < 3:
        return "", f"unexpected HELLO reply of {len(reply)} bytes"
    version = (reply[0], reply[1], reply[2])
    vtext = ".".join(str(v) for v in version)
    if len(reply) != HELLO_REPLY_SIZE or not version_compatible(version, client_protocol):
        want = ".".join(str(v) for v in client_protocol)
        return vtext, (
            f"RPC protocol {vtext}, this build speaks {want}: run the same llama.cpp build everywhere "
            "(ansible-playbook playbooks/upgrade.yml)"
        )
    return vtext, None
