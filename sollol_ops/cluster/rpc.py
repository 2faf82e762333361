"""Sessions that can never kill an rpc-server, and the probe classifying backends: ready, busy, down, incompatible.

The wire format and the socket I/O are `sollol_ops.cluster.wire`'s; this module is standard library only
too (the staging client runs on workers with it).

Every probe ends in bounded time
--------------------------------
All waits of one probe (name resolution, both connects, every read and write) share one `Deadline`
(``deadline_s``, 10 s by default); each reply must also complete within ``reply_timeout``. A server
announcing more than `MAX_DEVICES` devices is reported incompatible. `probe_all` probes up to `MAX_PARALLEL`
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

from sollol_ops.cluster import wire
from sollol_ops.cluster.wire import CLIENT_PROTOCOL, Deadline, split_endpoint

# More devices than any machine has: a server announcing more is not a sane rpc-server.
MAX_DEVICES = 256
# The whole probe of one endpoint, all waits together.
DEFAULT_DEADLINE_S = 10.0
# probe_all probes this many endpoints at once (more than any inventory here has).
MAX_PARALLEL = 256
_UPLOAD_CHUNK = 1 << 20


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


def _knock(
    addrs: Sequence[wire.Address], deadline: Deadline, connect_timeout: float, turn_timeout: float
) -> tuple[Status, str] | None:
    """None when the server gave us a turn at once; else the status to report."""
    part = deadline.within(connect_timeout)
    try:
        sock = wire.connect(addrs, part)
    except OSError as exc:
        return Status.DOWN, wire.down_reason(exc, part.seconds)
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


class SessionFailed(Exception):
    """A session ended early: the status and detail to report, the stage it reached, the version if known."""

    def __init__(self, status: Status, detail: str, stage: str, version: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.stage, self.version = status, detail, stage, version


@dataclass
class Session:
    """A connection that got the server's turn and a compatible HELLO. Each method sends one command and
    reads its reply (if it has one) within the per-reply time-out and the overall deadline. Set `clean` once
    every request was answered and read: the session then closes normally, else it aborts with a reset (a
    real rpc-server survives a reset, not a close with a request unanswered)."""

    sock: socket.socket
    version: str
    deadline: Deadline
    reply_timeout: float
    stage: str = "hello"
    clean: bool = False
    sent: int = 0  # bytes of the last upload's data handed to the network

    def request(
        self, cmd: int, payload: bytes = b"", size: int | None = None, *, limit: Deadline | None = None
    ) -> bytes:
        """One command and its reply of `size` bytes, within `limit` (default: the per-reply time-out)."""
        if limit is None:
            limit = self.deadline.within(self.reply_timeout)
        return wire.request(self.sock, cmd, payload, limit, size=size)

    def device_count(self) -> int:
        (count,) = struct.unpack("<I", self.request(wire.CMD_DEVICE_COUNT, size=4))
        return count

    def device_memory(self, index: int) -> DeviceMemory:
        reply = self.request(wire.CMD_GET_DEVICE_MEMORY, struct.pack("<I", index), size=16)
        return DeviceMemory(index, *struct.unpack("<QQ", reply))

    def allocate(self, device: int, size: int) -> tuple[int, int]:
        """ALLOC_BUFFER of `size` bytes on `device`: (remote buffer, the size it got); buffer 0: no room."""
        ptr, got = struct.unpack("<QQ", self.request(wire.CMD_ALLOC_BUFFER, struct.pack("<IQ", device, size), 16))
        return int(ptr), int(got)

    def buffer_base(self, ptr: int, *, limit: Deadline | None = None) -> int:
        (base,) = struct.unpack("<Q", self.request(wire.CMD_BUFFER_GET_BASE, struct.pack("<Q", ptr), 8, limit=limit))
        return base

    def alloc_buffer(self, device: int, size: int) -> tuple[int, int]:
        """ALLOC_BUFFER on `device`: (remote buffer, its base address); BufferRefused when it has no room."""
        ptr, got = self.allocate(device, size)
        if ptr == 0 or got < size:
            raise BufferRefused(f"could not allocate {size / 2**20:,.1f} MiB on device {device}")
        return ptr, self.buffer_base(ptr)

    def free_buffer(self, ptr: int) -> None:
        """FREE_BUFFER, which has no reply: a server that fails to free closes the connection instead, which the
        next request's reply then shows."""
        wire.send_command(
            self.sock, wire.CMD_FREE_BUFFER, struct.pack("<Q", ptr), self.deadline.within(self.reply_timeout)
        )

    def sync(self) -> None:
        """A round trip (DEVICE_COUNT): every command sent before it has been carried out (a command the
        server refuses makes it close the connection, so this then fails)."""
        self.device_count()

    def _set_tensor(self, tensor: bytes, size: int, cache: bool, limit: Deadline) -> None:
        """SET_TENSOR's header: `size` bytes of data follow it. With `cache`, the cache flag is set: a server run
        with -c stores exactly those bytes as <cache dir>/<FNV-1a of them>."""
        header = tensor + struct.pack("<BQ", 1 if cache else 0, 0)
        wire.send_command(self.sock, wire.CMD_SET_TENSOR, header, limit, size=len(header) + size)
        self.sent = 0

    def upload_from_file(
        self, buffer: int, base: int, source: BinaryIO, offset: int, size: int, *, cache: bool
    ) -> None:
        """SET_TENSOR of the `size` bytes at `offset` of the file `source` into the buffer at `base` (which holds
        `wire.upload_alloc_size(size)`), streamed with sendfile. With `cache`, as for a weight upload by
        llama.cpp's client after a cache miss."""
        limit = self.deadline.within(self.reply_timeout)
        self._set_tensor(wire.rows_tensor(buffer, base, size), size, cache, limit)
        wire.settimeout(self.sock, limit)
        try:
            self.sent = self.sock.sendfile(source, offset, size)
        except TimeoutError:
            raise wire.Stalled(0, limit, sending=True) from None
        if self.sent != size:
            raise wire.Closed()

    def upload_bytes(self, buffer: int, base: int, data: memoryview) -> None:
        """SET_TENSOR of `data` (a whole number of floats) into the buffer at `base`, as a 1-D F32 tensor without
        the cache flag, then a BUFFER_GET_BASE whose reply means every byte arrived and was stored. Both within
        the session's whole deadline, not one reply's time-out: an upload takes as long as the link needs."""
        size = len(data)
        self._set_tensor(wire.floats_tensor(buffer, base, size), size, False, self.deadline)
        while self.sent < size:
            chunk = data[self.sent : self.sent + _UPLOAD_CHUNK]
            wire.send(self.sock, chunk, self.deadline)
            self.sent += len(chunk)
        self.buffer_base(buffer, limit=self.deadline)


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
        addrs = wire.resolve(host, port, deadline)
    except ValueError:
        raise SessionFailed(Status.DOWN, f"not host:port: {endpoint!r}", stage) from None
    except OSError as exc:
        raise SessionFailed(Status.DOWN, wire.down_reason(exc, deadline.seconds), stage) from None
    stage = "knock"
    knocked = _knock(addrs, deadline, connect_timeout, turn_timeout)
    if knocked is not None:
        raise SessionFailed(*knocked, stage)
    stage = "connect"
    part = deadline.within(connect_timeout)
    try:
        sock = wire.connect(addrs, part)
    except OSError as exc:
        raise SessionFailed(Status.DOWN, wire.down_reason(exc, part.seconds), stage) from None
    current: Session | None = None
    clean = False
    try:
        stage = "hello"
        try:
            reply = wire.request(
                sock,
                wire.CMD_HELLO,
                bytes(wire.CONN_CAPS_SIZE),
                deadline.within(reply_timeout),
                max_size=wire.MAX_HELLO_REPLY,
            )
        except wire.Stalled as exc:
            if exc.received or exc.sending:
                raise
            raise SessionFailed(
                Status.BUSY, f"another client took the server while we were {activity[1]}", stage
            ) from None
        except (wire.Closed, ConnectionResetError):
            raise SessionFailed(
                Status.INCOMPATIBLE, "closed the connection on HELLO (protocol older than 3.x?)", stage
            ) from None
        vtext, problem = wire.hello_version(reply, client_protocol)
        if problem is not None:
            clean = True
            raise SessionFailed(Status.INCOMPATIBLE, problem, stage, vtext or None)
        current = Session(sock, vtext, deadline, reply_timeout)
        yield current
        clean = current.clean
    except wire.Stalled as exc:
        raise SessionFailed(
            Status.DOWN, wire.stall_reason(exc, activity[0]), _stage(current, stage), _version(current)
        ) from None
    except (wire.Closed, ConnectionResetError, BrokenPipeError):
        raise SessionFailed(
            Status.DOWN, f"closed the connection mid-{activity[0]}", _stage(current, stage), _version(current)
        ) from None
    except wire.Malformed as exc:
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
            wire.abort(sock)


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
            count = s.device_count()
            if count > MAX_DEVICES:
                s.clean = True
                insane = f"announces {count} devices (more than {MAX_DEVICES}): not a sane rpc-server"
                return result(Status.INCOMPATIBLE, insane, s.version)
            devices = [s.device_memory(index) for index in range(count)]
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
