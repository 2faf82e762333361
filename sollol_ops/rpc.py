"""Speak llama.cpp's RPC wire protocol to classify backends: ready, busy, down or incompatible.

Wire format (little-endian, packed): request ``u8 cmd | u64 size | payload``, reply ``u64 size | payload``.
HELLO (14) must come first: 24 bytes of connection caps in, ``major, minor, patch, pad`` + 24 caps out.
DEVICE_COUNT (15): nothing in, ``u32`` out. GET_DEVICE_MEMORY (11): ``u32`` device in, ``u64 free, u64 total``.

Why a probe can never kill an rpc-server
-----------------------------------------
rpc-server serves one client at a time; further connections wait in the kernel's accept queue. If a
client sends a request while queued and then goes away, the server, when it finally gets to it, writes
its reply into a closed socket and dies of SIGPIPE. So the probe never leaves a *request* behind:

1. Knock: connect and half-close (FIN) without sending a byte. A free server accepts at once, reads
   EOF where it expects the HELLO byte, and closes without writing anything: we see EOF and know it is
   free. A server held by another client stays silent: we report ``busy`` and close. When it later
   accepts our knock it again reads EOF and closes quietly: no write, no SIGPIPE.
2. Only then connect again and send HELLO, DEVICE_COUNT and GET_DEVICE_MEMORY, reading every reply.
   If another client grabbed the server between 1 and 2 (a coordinator opening its connections), our
   HELLO sits in the queue; rather than drop it, the socket is handed to a small detached drainer
   process (``sollol_ops._drain``) that waits to read the reply and then closes cleanly.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum

CMD_GET_DEVICE_MEMORY = 11
CMD_HELLO = 14
CMD_DEVICE_COUNT = 15
CONN_CAPS_SIZE = 24
HELLO_REPLY_SIZE = 4 + CONN_CAPS_SIZE

# The protocol of the pinned llama.cpp build (0c1e57098): the client accepts major == 7, minor <= 0.
CLIENT_PROTOCOL: tuple[int, int, int] = (7, 0, 0)

# Upper bound on what a sane server sends for the replies we ask for.
_MAX_REPLY = 1 << 16


class Status(StrEnum):
    READY = "ready"
    BUSY = "busy"
    DOWN = "down"
    INCOMPATIBLE = "incompatible"
    SERVING = "serving"  # busy, but held by our own running coordinator (set by the status layer)


@dataclass(frozen=True)
class DeviceMemory:
    index: int
    free: int
    total: int


@dataclass(frozen=True)
class ProbeResult:
    endpoint: str
    status: Status
    version: str | None = None
    devices: list[DeviceMemory] = field(default_factory=list)
    detail: str = ""
    latency_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.READY


class _Closed(Exception):
    """The peer closed the connection before a full reply."""


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise _Closed()
        buf += chunk
    return bytes(buf)


def _request(sock: socket.socket, cmd: int, payload: bytes = b"") -> bytes:
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
    if size > _MAX_REPLY:
        raise ValueError(f"reply of {size} bytes to command {cmd}")
    return _recv_exact(sock, size)


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _down_reason(exc: OSError, connect_timeout: float) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listening)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return (
            f"no answer connecting within {connect_timeout:g}s (host unreachable or port filtered, or its "
            "accept queue is full: held by a client with others waiting)"
        )
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror}"
    return exc.strerror or type(exc).__name__


def _knock(host: str, port: int, connect_timeout: float, turn_timeout: float) -> tuple[Status, str] | None:
    """None when the server gave us a turn at once; else the status to report."""
    try:
        sock = _connect(host, port, connect_timeout)
    except OSError as exc:
        return Status.DOWN, _down_reason(exc, connect_timeout)
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(turn_timeout)
        try:
            data = sock.recv(1)
        except TimeoutError:
            return (
                Status.BUSY,
                f"accepts connections but is held by another client (no turn within {turn_timeout:g}s)",
            )
        except ConnectionResetError:
            return Status.DOWN, "connection reset"
        if data:
            return Status.INCOMPATIBLE, "not a llama.cpp rpc-server (it spoke first)"
        return None
    finally:
        sock.close()


def _hand_to_drainer(sock: socket.socket, patience_s: float) -> None:
    """Keep a queued HELLO's socket open in a detached process until the server answers it."""
    fd = sock.fileno()
    try:
        subprocess.Popen(
            [sys.executable, "-m", "sollol_ops._drain", str(fd), str(patience_s)],
            pass_fds=(fd,),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        pass


def version_compatible(version: tuple[int, int, int], client: tuple[int, int, int] = CLIENT_PROTOCOL) -> bool:
    return version[0] == client[0] and version[1] <= client[1]


def probe(
    endpoint: str,
    *,
    connect_timeout: float = 2.0,
    turn_timeout: float = 1.0,
    reply_timeout: float = 5.0,
    client_protocol: tuple[int, int, int] = CLIENT_PROTOCOL,
    drain_patience_s: float = 6 * 3600,
) -> ProbeResult:
    """Classify one backend. Never raises for network conditions; never leaves a request unread."""
    t0 = time.monotonic()
    host, port = split_endpoint(endpoint)

    def result(status: Status, detail: str = "", version: str | None = None, devices=()) -> ProbeResult:
        return ProbeResult(endpoint, status, version, list(devices), detail, (time.monotonic() - t0) * 1000)

    knocked = _knock(host, port, connect_timeout, turn_timeout)
    if knocked is not None:
        return result(*knocked)

    try:
        sock = _connect(host, port, connect_timeout)
    except OSError as exc:
        return result(Status.DOWN, _down_reason(exc, connect_timeout))
    handed_off = False
    try:
        sock.settimeout(reply_timeout)
        try:
            reply = _request(sock, CMD_HELLO, bytes(CONN_CAPS_SIZE))
        except TimeoutError:
            handed_off = True
            _hand_to_drainer(sock, drain_patience_s)
            return result(Status.BUSY, "another client took the server while we were probing")
        except (_Closed, ConnectionResetError):
            return result(Status.INCOMPATIBLE, "closed the connection on HELLO (protocol older than 3.x?)")
        if len(reply) < 3:
            return result(Status.INCOMPATIBLE, f"unexpected HELLO reply of {len(reply)} bytes")
        version = tuple(reply[:3])
        vtext = ".".join(str(v) for v in version)
        if len(reply) != HELLO_REPLY_SIZE or not version_compatible(version, client_protocol):  # type: ignore[arg-type]
            want = ".".join(str(v) for v in client_protocol)
            return result(
                Status.INCOMPATIBLE,
                f"RPC protocol {vtext}, this build speaks {want}: run the same llama.cpp build everywhere "
                "(ansible-playbook playbooks/upgrade.yml)",
                vtext,
            )
        (count,) = struct.unpack("<I", _request(sock, CMD_DEVICE_COUNT))
        devices = []
        for index in range(count):
            free, total = struct.unpack("<QQ", _request(sock, CMD_GET_DEVICE_MEMORY, struct.pack("<I", index)))
            devices.append(DeviceMemory(index, free, total))
        return result(Status.READY, f"{count} device(s)", vtext, devices)
    except TimeoutError:
        return result(Status.DOWN, f"stopped answering (no reply within {reply_timeout:g}s)")
    except (_Closed, ConnectionResetError, BrokenPipeError):
        return result(Status.DOWN, "closed the connection mid-probe")
    except (ValueError, struct.error) as exc:
        return result(Status.INCOMPATIBLE, f"malformed reply: {exc}")
    except OSError as exc:
        return result(Status.DOWN, exc.strerror or type(exc).__name__)
    finally:
        if not handed_off:
            sock.close()


def probe_all(endpoints: Sequence[str] | Iterable[str], **kwargs: float) -> list[ProbeResult]:
    """Probe every endpoint concurrently; results in input order. Total time ~ the slowest probe."""
    items = list(endpoints)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(items))) as pool:
        return list(pool.map(lambda e: probe(e, **kwargs), items))  # type: ignore[arg-type]
