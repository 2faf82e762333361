"""Measure the link to an rpc-server over the RPC protocol itself: round trip and upload throughput.

Only when the server is free (the probe's knock first, see `sollol_ops.cluster.rpc`), on one connection:

1. HELLO, then DEVICE_COUNT (the device must exist).
2. Round trip: `rtt_samples` GET_DEVICE_MEMORY requests, each timed from send to full reply; median.
3. Throughput: ALLOC_BUFFER of the payload size on the device, BUFFER_GET_BASE, then `uploads` times
   one SET_TENSOR that uploads the payload into a tensor spanning the buffer, followed by
   BUFFER_GET_BASE: the server handles requests in order, so that reply means every byte arrived and
   was stored. An upload's time is send start to that reply, less one round trip. The throughput is
   the best upload's: interference (other traffic, a busy CPU at either end) only ever slows an
   upload down, so the fastest one is the closest to what the link carries.
4. FREE_BUFFER, then a last GET_DEVICE_MEMORY (FREE_BUFFER has no reply; a server that fails to free
   closes the connection instead of answering), and a normal close after every reply was read.

Every command is a method of `rpc.Session` (the request layouts are `sollol_ops.cluster.wire`'s); the upload
is a 1-D F32 tensor spanning the buffer, without the cache flag: the server writes nothing to its tensor cache.

The server is left as found: the buffer is freed, and if the measurement stops early (deadline, a
stalled server) the connection is aborted with a reset, which makes rpc-server end the session and
free whatever the session allocated, without the SIGPIPE a plain close could cause. Network
conditions never raise: they come back as a `LinkResult` whose `status` says why (busy, down,
incompatible) and whose `stage` says where it stopped.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from sollol_ops.cluster.rpc import CLIENT_PROTOCOL, MAX_DEVICES, Deadline, Session, SessionFailed, Status, session
from sollol_ops.errors import UsageError

MIN_PAYLOAD = 4096
MAX_PAYLOAD = 1 << 30  # rpc_tensor strides are u32; a GiB is far more than a stable measure needs
DEFAULT_PAYLOAD = 32 << 20
DEFAULT_DEADLINE_S = 60.0


@dataclass(frozen=True)
class LinkResult:
    endpoint: str
    status: Status  # READY: the server was free and answered; else busy / down / incompatible
    stage: str  # where it ended: resolve, knock, connect, hello, devices, rtt, alloc, upload, free, done
    detail: str = ""
    version: str | None = None
    rtt_ms: float | None = None  # median of rtt_samples_ms
    rtt_samples_ms: tuple[float, ...] = ()
    throughput_bps: float | None = None  # payload bits per second of the best upload, one round trip out
    throughput_samples_bps: tuple[float, ...] = ()  # every completed upload's
    payload_bytes: int = 0  # bytes per upload (0 when no upload completed)
    upload_s: float | None = None  # the best upload's time, the throughput is computed from
    elapsed_s: float = 0.0  # the whole measurement, knock to close

    @property
    def ok(self) -> bool:
        """Both round trip and throughput were measured."""
        return self.status is Status.READY and self.throughput_bps is not None


def measure_link(
    endpoint: str,
    size_bytes: int = DEFAULT_PAYLOAD,
    *,
    rtt_samples: int = 5,
    uploads: int = 1,
    device: int = 0,
    connect_timeout: float = 2.0,
    turn_timeout: float = 1.0,
    reply_timeout: float = 5.0,
    deadline_s: float = DEFAULT_DEADLINE_S,
    client_protocol: tuple[int, int, int] = CLIENT_PROTOCOL,
) -> LinkResult:
    """Round trip (median of `rtt_samples` small requests) and upload throughput (best of `uploads`
    uploads of `size_bytes` with SET_TENSOR into a buffer allocated for it on `device`) to the
    rpc-server at `endpoint`, all within `deadline_s` seconds. Small replies must each come within
    `reply_timeout`; the uploads have the rest of the deadline, so pick a payload the link carries
    `uploads` times in well under it (32 MiB: ~3 s at 100 Mbit/s).
    Never raises for network conditions (UsageError for arguments out of range); leaves the server as
    it found it."""
    if not MIN_PAYLOAD <= size_bytes <= MAX_PAYLOAD:
        raise UsageError(f"size_bytes must be {MIN_PAYLOAD}..{MAX_PAYLOAD}, got {size_bytes}")
    if rtt_samples < 1 or uploads < 1:
        raise UsageError(f"rtt_samples and uploads must be at least 1, got {rtt_samples} and {uploads}")
    size = size_bytes - size_bytes % 4
    t0 = time.monotonic()
    deadline = Deadline(deadline_s)
    samples: list[float] = []
    current: Session | None = None

    def result(
        status: Status, detail: str = "", stage: str | None = None, version: str | None = None, **measured: object
    ) -> LinkResult:
        rtt = statistics.median(samples) if samples else None
        return LinkResult(
            endpoint,
            status,
            stage or (current.stage if current else "resolve"),
            detail,
            version or (current.version if current else None),
            rtt,
            tuple(samples),
            elapsed_s=time.monotonic() - t0,
            **measured,  # type: ignore[arg-type]
        )

    try:
        with session(
            endpoint,
            deadline,
            connect_timeout=connect_timeout,
            turn_timeout=turn_timeout,
            reply_timeout=reply_timeout,
            client_protocol=client_protocol,
            activity=("measurement", "measuring"),
        ) as s:
            current = s
            s.stage = "devices"
            count = s.device_count()
            if count > MAX_DEVICES:
                s.clean = True
                return result(Status.INCOMPATIBLE, f"announces {count} devices (more than {MAX_DEVICES})")
            if device >= count:
                s.clean = True
                return result(Status.INCOMPATIBLE, f"has {count} device(s), no device {device}")

            s.stage = "rtt"
            for _ in range(rtt_samples):
                t = time.perf_counter()
                s.device_memory(device)
                samples.append((time.perf_counter() - t) * 1000)
            rtt_s = statistics.median(samples) / 1000

            s.stage = "alloc"
            remote_ptr, remote_size = s.allocate(device, size)
            if remote_ptr == 0:
                s.clean = True
                return result(
                    Status.READY, f"the server could not allocate {size / (1 << 20):.1f} MiB on device {device}"
                )
            if remote_size < size:
                return result(Status.INCOMPATIBLE, f"allocated {remote_size} bytes where {size} were asked for")
            base = s.buffer_base(remote_ptr)

            s.stage = "upload"
            payload = memoryview(bytes(size))
            times: list[float] = []
            for _ in range(uploads):
                t_up = time.perf_counter()
                s.upload_bytes(remote_ptr, base, payload)  # returns once the server stored every byte
                times.append(max(time.perf_counter() - t_up - rtt_s, 1e-6))
            upload_s = min(times)

            s.stage = "free"
            s.free_buffer(remote_ptr)
            s.device_memory(device)
            s.clean = True
            s.stage = "done"
            return result(
                Status.READY,
                f"{size * 8 / upload_s / 1e6:,.1f} Mbit/s (best of {uploads}), round trip {rtt_s * 1000:.3f} ms",
                throughput_bps=size * 8 / upload_s,
                throughput_samples_bps=tuple(size * 8 / t for t in times),
                payload_bytes=size,
                upload_s=upload_s,
            )
    except SessionFailed as failed:
        stage = failed.stage
        detail = failed.detail
        if stage == "upload" and failed.status is Status.DOWN:
            sent = current.sent if current else 0
            detail = f"{detail}; {sent / (1 << 20):.1f} of {size / (1 << 20):.1f} MiB handed to the network"
        return result(failed.status, detail, stage, failed.version)
