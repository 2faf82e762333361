"""Speak llama.cpp's RPC wire protocol to classify backends: ready, busy, down or incompatible.

Wire format (little-endian, packed): request ``u8 cmd | u64 size | payload``, reply ``u64 size | payload``.
HELLO (14) must come first: 24 bytes of connection caps in, ``major, minor, patch, pad`` + 24 caps out.
DEVICE_COUNT (15): nothing in, ``u32`` out. GET_DEVICE_MEMORY (11): ``u32`` device in, ``u64 free, u64 total``.

Every probe ends in bounded time
--------------------------------
All waits of one probe (name resolution, both connects, every read and write) share one `Deadline`
(``deadline_s``, 10 s by default); each reply must also complete within ``reply_timeout``. Replies
are checked against their exact size before a byte of them is read, and a server announcing more
than `MAX_DEVICES` devices is reported incompatible. `probe_all` probes up to `MAX_PARALLEL`
endpoints at once, so for that many endpoints its total time is one probe's deadline.

Why a probe can never kill an rpc-server
-----------------------------------------
rpc-server serves one client at a time; further connections wait in the kernel's accept queue. If a
client sends a request while queued and then closes its socket normally (FIN), the server, when it
finally gets to it, writes its reply into a connection in CLOSE_WAIT: the first write draws a reset,
the second raises SIGPIPE, and rpc-server (which neither ignores SIGPIPE nor uses MSG_NOSIGNAL) dies.
So the probe never *closes* on an unanswered request:

1. Knock: connect and half-close (FIN) without sending a byte. A free server accepts at once, reads
   EOF where it expects the HELLO byte, and closes without writing anything: we see EOF and know it is
   free. A server held by another client stays silent: we report ``busy`` and close. When it later
   accepts our knock it again reads EOF and closes quietly: no write, no SIGPIPE.
2. Only then connect again and send HELLO, DEVICE_COUNT and GET_DEVICE_MEMORY, reading every reply,
   and close normally.
3. Whenever the probe gives up with a request unanswered (another client took the server between 1
   and 2 and our HELLO sits in its queue; a stalled or hostile server; the deadline), it *aborts* the
   connection: SO_LINGER 0, so the kernel sends a reset (RST) and no FIN. The server's socket then
   carries ECONNRESET, and its next write fails with that error, not with EPIPE: no SIGPIPE, and the
   server goes on to its next client. Nothing outlives the probe; there is no helper process.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, BinaryIO

CMD_ALLOC_BUFFER = 0
CMD_BUFFER_GET_BASE = 3
CMD_FREE_BUFFER = 4
CMD_SET_TENSOR = 6
CMD_GET_DEVICE_MEMORY = 11
CMD_HELLO = 14
CMD_DEVICE_COUNT = 15
CONN_CAPS_SIZE = 24
HELLO_REPLY_SIZE = 4 + CONN_CAPS_SIZE

# The protocol of the pinned llama.cpp build (0c1e57098): the client accepts major == 7, minor <= 0.
CLIENT_PROTOCOL: tuple[int, int, int] = (7, 0, 0)

# A HELLO reply of another protocol version may have another size; nothing sane sends more than this.
_MAX_HELLO_REPLY = 1024
# More devices than any machine has: a server announcing more is not a sane rpc-server.
MAX_DEVICES = 256
# The whole probe of one endpoint, all waits together.
DEFAULT_DEADLINE_S = 10.0
# probe_all probes this many endpoints at once (more than any inventory here has).
MAX_PARALLEL = 256
_RECV_CHUNK = 1 << 20

# struct rpc_tensor of ggml-rpc.cpp (packed): id, type, buffer, ne[4] u32, nb[4] u32, op, op_params[16],
# flags, src[10], view_src, view_offs, data, name[64], use_count. 296 bytes.
RPC_TENSOR = struct.Struct("<QIQ4I4II16iiQQQQQQQQQQQQQ64si")
GGML_TYPE_I8 = 24
# Bytes per row of the 2-D I8 tensor a raw upload is described as (ne is u32: one row could not say > 4 GiB).
UPLOAD_ROW = 1 << 16


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


class _Closed(Exception):
    """The peer closed the connection before a full reply."""


class _Malformed(Exception):
    """A reply of a size the protocol does not allow: not read, the connection is aborted."""


class _Stalled(Exception):
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


def _settimeout(sock: socket.socket, limit: Deadline, received: int = 0) -> None:
    left = limit.left()
    if left <= 0:
        raise _Stalled(received, limit)
    sock.settimeout(left)


def _recv_exact(sock: socket.socket, n: int, limit: Deadline) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        _settimeout(sock, limit, len(buf))
        try:
            chunk = sock.recv(min(n - len(buf), _RECV_CHUNK))
        except TimeoutError:
            raise _Stalled(len(buf), limit) from None
        if not chunk:
            raise _Closed()
        buf += chunk
    return bytes(buf)


def _send(sock: socket.socket, data: bytes | memoryview, limit: Deadline) -> None:
    """sendall within the deadline (since Python 3.5 a socket timeout bounds the whole sendall)."""
    _settimeout(sock, limit)
    try:
        sock.sendall(data)
    except TimeoutError:
        raise _Stalled(0, limit, sending=True) from None


def _read_reply(sock: socket.socket, cmd: int, limit: Deadline, *, size: int | None, max_size: int | None) -> bytes:
    (n,) = struct.unpack("<Q", _recv_exact(sock, 8, limit))
    name = COMMAND_NAMES.get(cmd, str(cmd))
    if size is not None and n != size:
        raise _Malformed(f"reply of {n} bytes to {name} (expected {size})")
    if max_size is not None and n > max_size:
        raise _Malformed(f"reply of {n} bytes to {name} (at most {max_size} expected)")
    try:
        return _recv_exact(sock, n, limit)
    except _Stalled as exc:
        raise _Stalled(exc.received + 8, limit) from None


def _request(
    sock: socket.socket,
    cmd: int,
    payload: bytes,
    limit: Deadline,
    *,
    size: int | None = None,
    max_size: int | None = None,
) -> bytes:
    """Send one request and read its whole reply, whose size must be `size` (or at most `max_size`)."""
    _send(sock, struct.pack("<BQ", cmd, len(payload)) + payload, limit)
    return _read_reply(sock, cmd, limit, size=size, max_size=max_size)


def _abort(sock: socket.socket) -> None:
    """Close with a reset (RST), not a FIN: the way to leave a request unanswered (module docstring)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


Address = tuple[int, int, int, str, Any]


def _resolve(host: str, port: int, limit: Deadline) -> list[Address]:
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


def _connect(addrs: Sequence[Address], limit: Deadline) -> socket.socket:
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


def _down_reason(exc: OSError, waited: float) -> str:
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


def _stall_reason(exc: _Stalled, operation: str = "probe") -> str:
    waited = f"{exc.limit.seconds:g}s"
    if exc.sending:
        what = f"stopped taking our request (not sent within {waited})"
    elif exc.received:
        what = f"stopped mid-reply ({exc.received} bytes in {waited}: stalled, or sending too slowly)"
    else:
        what = f"stopped answering (no reply within {waited})"
    return f"{operation} deadline of {waited} passed: {what}" if exc.limit.overall else what


def _knock(
    addrs: Sequence[Address], deadline: Deadline, connect_timeout: float, turn_timeout: float
) -> tuple[Status, str] | None:
    """None when the server gave us a turn at once; else the status to report."""
    part = deadline.within(connect_timeout)
    try:
        sock = _connect(addrs, part)
    except OSError as exc:
        return Status.DOWN, _down_reason(exc, part.seconds)
    try:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno in (errno.ENOTCONN, errno.ECONNRESET):
                return Status.DOWN, "connection reset (at once)"
            raise
        turn = deadline.within(turn_timeout)
        busy = (
            Status.BUSY,
            f"accepts connections but is held by another client (no turn within {turn.seconds:g}s)",
        )
        if turn.passed:
            return busy
        sock.settimeout(turn.left())
        try:
            data = sock.recv(1)
        except TimeoutError:
            return busy
        except ConnectionResetError:
            return Status.DOWN, "connection reset"
        if data:
            return Status.INCOMPATIBLE, "not a llama.cpp rpc-server (it spoke first)"
        return None
    except OSError as exc:
        return Status.DOWN, exc.strerror or type(exc).__name__
    finally:
        sock.close()  # we sent no request: a plain close leaves the server nothing to answer


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


class SessionFailed(Exception):
    """A session ended early: the status and detail to report, the stage it reached, the version if known."""

    def __init__(self, status: Status, detail: str, stage: str, version: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.stage, self.version = status, detail, stage, version


@dataclass
class Session:
    """A connection that got the server's turn and a compatible HELLO. `request` sends one command and
    reads its reply within the per-reply time-out and the overall deadline. Set `clean` once every
    request was answered and read: the session then closes normally, else it aborts with a reset (a
    real rpc-server survives a reset, not a close with a request unanswered)."""

    sock: socket.socket
    version: str
    deadline: Deadline
    reply_timeout: float
    stage: str = "hello"
    clean: bool = False

    def request(self, cmd: int, payload: bytes = b"", size: int | None = None) -> bytes:
        return _request(self.sock, cmd, payload, self.deadline.within(self.reply_timeout), size=size)

    def send_only(self, cmd: int, payload: bytes) -> None:
        """A command the server does not answer (SET_TENSOR, FREE_BUFFER): a failure closes the connection,
        which the next request's reply then shows."""
        _send(self.sock, struct.pack("<BQ", cmd, len(payload)) + payload, self.deadline.within(self.reply_timeout))

    def alloc_buffer(self, device: int, size: int) -> tuple[int, int]:
        """ALLOC_BUFFER on `device`: (remote buffer, its base address); BufferRefused when it has no room."""
        ptr, got = struct.unpack("<QQ", self.request(CMD_ALLOC_BUFFER, struct.pack("<IQ", device, size), size=16))
        if ptr == 0 or got < size:
            raise BufferRefused(f"could not allocate {size / 2**20:,.1f} MiB on device {device}")
        (base,) = struct.unpack("<Q", self.request(CMD_BUFFER_GET_BASE, struct.pack("<Q", ptr), size=8))
        return ptr, base

    def free_buffer(self, ptr: int) -> None:
        self.send_only(CMD_FREE_BUFFER, struct.pack("<Q", ptr))

    def sync(self) -> None:
        """A round trip (DEVICE_COUNT): every command sent before it has been carried out (a command the
        server refuses makes it close the connection, so this then fails)."""
        self.request(CMD_DEVICE_COUNT, size=4)

    def upload_from_file(
        self, buffer: int, base: int, source: BinaryIO, offset: int, size: int, *, cache: bool
    ) -> None:
        """SET_TENSOR of the `size` bytes at `offset` of the file `source` into the buffer at `base`, streamed with
        sendfile. With `cache`, the cache flag is set: a server run with -c stores exactly these bytes as
        <cache dir>/<FNV-1a of them>, as for a weight upload by llama.cpp's client after a cache miss."""
        rows = -(-size // UPLOAD_ROW)
        nb = (1, UPLOAD_ROW, UPLOAD_ROW * rows, UPLOAD_ROW * rows)
        tensor = RPC_TENSOR.pack(
            1,
            GGML_TYPE_I8,
            buffer,
            UPLOAD_ROW,
            rows,
            1,
            1,
            *nb,
            0,
            *([0] * 16),
            0,
            *([0] * 10),
            0,
            0,
            base,
            b"sollol-stage",
            0,
        )
        header = tensor + struct.pack("<BQ", 1 if cache else 0, 0)
        limit = self.deadline.within(self.reply_timeout)
        _send(self.sock, struct.pack("<BQ", CMD_SET_TENSOR, len(header) + size) + header, limit)
        _settimeout(self.sock, limit)
        try:
            sent = self.sock.sendfile(source, offset, size)
        except TimeoutError:
            raise _Stalled(0, limit, sending=True) from None
        if sent != size:
            raise _Closed()


def upload_alloc_size(size: int) -> int:
    """The buffer `upload_from_file` needs for an upload of `size` bytes (whole rows of UPLOAD_ROW)."""
    return -(-size // UPLOAD_ROW) * UPLOAD_ROW


class BufferRefused(Exception):
    """ALLOC_BUFFER answered with no buffer (the device has no room)."""


@contextlib.contextmanager
def session(
    endpoint: str,
    deadline: Deadline,
    *,
    connect_timeout: float,
    turn_timeout: float,
    reply_timeout: float,
    client_protocol: tuple[int, int, int] = CLIENT_PROTOCOL,
    activity: tuple[str, str] = ("probe", "probing"),
) -> Iterator[Session]:
    """Resolve, knock (never queue a request on a held server), connect, HELLO; yield the session.
    Every way it can end early, in here or in the caller's block, becomes SessionFailed: a network
    condition is a status, never an exception of the socket layer."""
    stage = "resolve"
    try:
        host, port = split_endpoint(endpoint)
        addrs = _resolve(host, port, deadline)
    except ValueError:
        raise SessionFailed(Status.DOWN, f"not host:port: {endpoint!r}", stage) from None
    except OSError as exc:
        raise SessionFailed(Status.DOWN, _down_reason(exc, deadline.seconds), stage) from None
    stage = "knock"
    knocked = _knock(addrs, deadline, connect_timeout, turn_timeout)
    if knocked is not None:
        raise SessionFailed(*knocked, stage)
    stage = "connect"
    part = deadline.within(connect_timeout)
    try:
        sock = _connect(addrs, part)
    except OSError as exc:
        raise SessionFailed(Status.DOWN, _down_reason(exc, part.seconds), stage) from None
    current: Session | None = None
    clean = False
    try:
        stage = "hello"
        try:
            reply = _request(
                sock, CMD_HELLO, bytes(CONN_CAPS_SIZE), deadline.within(reply_timeout), max_size=_MAX_HELLO_REPLY
            )
        except _Stalled as exc:
            if exc.received or exc.sending:
                raise
            raise SessionFailed(
                Status.BUSY, f"another client took the server while we were {activity[1]}", stage
            ) from None
        except (_Closed, ConnectionResetError):
            raise SessionFailed(
                Status.INCOMPATIBLE, "closed the connection on HELLO (protocol older than 3.x?)", stage
            ) from None
        vtext, problem = hello_version(reply, client_protocol)
        if problem is not None:
            clean = True
            raise SessionFailed(Status.INCOMPATIBLE, problem, stage, vtext or None)
        current = Session(sock, vtext, deadline, reply_timeout)
        yield current
        clean = current.clean
    except _Stalled as exc:
        raise SessionFailed(
            Status.DOWN, _stall_reason(exc, activity[0]), _stage(current, stage), _version(current)
        ) from None
    except (_Closed, ConnectionResetError, BrokenPipeError):
        raise SessionFailed(
            Status.DOWN, f"closed the connection mid-{activity[0]}", _stage(current, stage), _version(current)
        ) from None
    except _Malformed as exc:
        raise SessionFailed(
            Status.INCOMPATIBLE, f"malformed reply: {exc}", _stage(current, stage), _version(current)
        ) from None
    except SessionFailed:
        clean = clean or (current is not None and current.clean)
        raise
    except OSError as exc:
        raise SessionFailed(
            Status.DOWN, exc.strerror or type(exc).__name__, _stage(current, stage), _version(current)
        ) from None
    finally:
        if clean:
            sock.close()
        else:
            _abort(sock)


def _stage(current: Session | None, stage: str) -> str:
    return current.stage if current is not None else stage


def _version(current: Session | None) -> str | None:
    return current.version if current is not None else None


def probe(
    endpoint: str,
    *,
    connect_timeout: float = 2.0,
    turn_timeout: float = 1.0,
    reply_timeout: float = 5.0,
    deadline_s: float = DEFAULT_DEADLINE_S,
    client_protocol: tuple[int, int, int] = CLIENT_PROTOCOL,
) -> ProbeResult:
    """Classify one backend within `deadline_s` seconds, all waits together (each connect at most
    `connect_timeout`, the knock's turn `turn_timeout`, each reply `reply_timeout`). Never raises for
    network conditions; never closes on an unanswered request (it aborts with a reset instead)."""
    t0 = time.monotonic()

    def result(status: Status, detail: str = "", version: str | None = None, devices=()) -> ProbeResult:
        return ProbeResult(endpoint, status, version, list(devices), detail, (time.monotonic() - t0) * 1000)

    try:
        with session(
            endpoint,
            Deadline(deadline_s),
            connect_timeout=connect_timeout,
            turn_timeout=turn_timeout,
            reply_timeout=reply_timeout,
            client_protocol=client_protocol,
        ) as s:
            (count,) = struct.unpack("<I", s.request(CMD_DEVICE_COUNT, size=4))
            if count > MAX_DEVICES:
                s.clean = True
                insane = f"announces {count} devices (more than {MAX_DEVICES}): not a sane rpc-server"
                return result(Status.INCOMPATIBLE, insane, s.version)
            devices = []
            for index in range(count):
                free, total = struct.unpack("<QQ", s.request(CMD_GET_DEVICE_MEMORY, struct.pack("<I", index), size=16))
                devices.append(DeviceMemory(index, free, total))
            s.clean = True
            return result(Status.READY, f"{count} device(s)", s.version, devices)
    except SessionFailed as failed:
        return result(failed.status, failed.detail, failed.version)


def probe_all(endpoints: Sequence[str] | Iterable[str], **kwargs: Any) -> list[ProbeResult]:
    """Probe every endpoint concurrently; results in input order. Up to MAX_PARALLEL endpoints are
    probed at once, so the total time is bounded by one probe's deadline (`deadline_s`)."""
    items = list(endpoints)
    if not items:
        return []
    results: list[ProbeResult | BaseException | None] = [None] * len(items)
    pending = iter(range(len(items)))
    lock = threading.Lock()

    def worker() -> None:  # plain threads: concurrent.futures would cost `up` ~5-10 ms of imports
        while True:
            with lock:
                i = next(pending, None)
            if i is None:
                return
            try:
                results[i] = probe(items[i], **kwargs)
            except Exception as exc:  # re-raised in the caller, as ThreadPoolExecutor.map would
                results[i] = exc

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(MAX_PARALLEL, len(items)) - 1)]
    for t in threads:
        t.start()
    worker()  # this thread probes too
    for t in threads:
        t.join()
    out = []
    for r in results:
        if isinstance(r, BaseException):
            raise r
        assert r is not None
        out.append(r)
    return out
