"""Measure an rpc-server's compute speed over the RPC protocol: timed matrix-vector products in the model's weight
type, the work a worker does for every generated token.

Decoding one token multiplies each weight matrix of a layer by one activation vector: the time is set by how fast
the device streams its weights (memory bandwidth) plus a small cost per graph node and per graph. So, on one
connection, only when the server is free (the probe's knock first, see `sollol_ops.cluster.rpc`):

1. HELLO, DEVICE_COUNT, GET_DEVICE_MEMORY (the device must exist and have room), then `rtt_samples` round trips
   (DEVICE_COUNT; median) so that the network can be taken out of every timing.
2. ALLOC_BUFFER of one buffer for everything, BUFFER_GET_BASE, BUFFER_CLEAR (zero weights: no denormals, and
   nothing is uploaded: the link's speed plays no part).
3. Three graphs of MUL_MAT nodes (weights of `ROW`-element rows times one F32 vector, as in decode), each sent
   once with GRAPH_COMPUTE (the server builds it, a warm-up), then timed `repeats` times with GRAPH_RECOMPUTE
   followed by DEVICE_COUNT: the server handles requests in order and computes synchronously, so that reply
   comes when the graph is done. Each timing is send to reply, less one round trip; the figure is the fastest.
   - one tiny node: the cost of running a graph at all (`dispatch_ms`);
   - `MANY_NODES` tiny nodes: the cost per node (`node_us`), as a layer has tens of small operations;
   - `BIG_NODES` nodes over `weight_bytes` of weights (64 MiB: more than a CPU's caches, as a model's layers
     are): the time per byte of weights (`ns_per_byte`), what sets the pace of decode.
4. FREE_BUFFER, a last GET_DEVICE_MEMORY, and a normal close after every reply was read.

Every tensor lies inside the buffer the server gave us and every MUL_MAT has the shapes ggml requires: a graph
that broke either rule would make rpc-server abort (GGML_ASSERT), and a measurement must never kill a worker.
Network conditions and misbehaving peers never raise: they come back as a `SpeedResult` whose `status` says why
(busy, down, incompatible) and whose `stage` says where it stopped, within `deadline_s`.
"""

from __future__ import annotations

import re
import statistics
import struct
import time
from dataclasses import dataclass, field

from sollol_ops.cluster import wire
from sollol_ops.cluster.rpc import CLIENT_PROTOCOL, MAX_DEVICES, Deadline, Session, SessionFailed, Status, session
from sollol_ops.errors import UsageError
from sollol_ops.model.gguf_header import GGML_QUANT_SIZES, GGMLQuantizationType

MIB = 1 << 20
GGML_OP_MUL_MAT = 29  # enum ggml_op of the pinned build (ggml/include/ggml.h)
GGML_TYPE_F32 = 0
GGML_TENSOR_FLAG_COMPUTE = 16  # a node without it is skipped by the backends (ggml.h)
# Elements per weight row: a multiple of every block size (256) and of the CUDA backend's row padding (512).
ROW = 4096
ALIGN = 4096  # every tensor starts at a multiple of this inside the buffer (any device's alignment divides it)
DEFAULT_WEIGHT_BYTES = 64 * MIB
MIN_WEIGHT_BYTES = 1 * MIB
MAX_WEIGHT_BYTES = 1 << 30
BIG_NODES = 4
TINY_ROWS = 32
MANY_NODES = 32
DEFAULT_DEADLINE_S = 120.0
# The big graph is recomputed back to back for at least this long (5 periods of the kernel's default 100 ms CFS
# quota period), at most MAX_SUSTAIN_REPEATS times.
SUSTAIN_S = 0.5
MAX_SUSTAIN_REPEATS = 400
# Compute nodes of one transformer block in llama.cpp's decode graph (norms, projections, rope, attention, the
# feed-forward, residuals): what a layer costs beyond streaming its weights, in units of `node_us`.
NODES_PER_LAYER = 20
# Weight types whose MUL_MAT every backend of the pinned build computes; others are measured as FALLBACK_TYPE.
MEASURABLE = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
FALLBACK_TYPE = "Q4_K"


def measure_type(file_type_name: str) -> str:
    """The weight type to measure for a model of GGUFInfo.file_type_name ('Q4_K_M' -> 'Q4_K', 'Q4_1' -> 'Q4_1'):
    its main matrices' type, or FALLBACK_TYPE for a type outside MEASURABLE (IQ*, ternary, ...)."""
    name = file_type_name.upper()
    if name in MEASURABLE:
        return name
    m = re.match(r"^(Q[2-8]_[01K])", name)
    return m.group(1) if m and m.group(1) in MEASURABLE else FALLBACK_TYPE


@dataclass(frozen=True)
class ComputeSpeed:
    """What one token costs on a device, as measured: `ns_per_byte` per byte of weights, `node_us` per graph node,
    `dispatch_ms` per graph (once per token for a worker that holds any layer)."""

    ggml_type: str
    ns_per_byte: float
    node_us: float
    dispatch_ms: float
    weight_bytes: int = 0  # weights of the timed big graph
    samples_ms: tuple[float, ...] = ()  # the big graph's timings

    @property
    def ms_per_gib(self) -> float:
        """Milliseconds to stream one GiB of weights (the speed as `plan` prints it; lower is faster)."""
        return self.ns_per_byte * (1 << 30) / 1e6

    def token_ms(self, weight_bytes: int, layers: int) -> float:
        """The predicted compute time per token of `layers` layers holding `weight_bytes` (0 layers: nothing)."""
        if layers <= 0 and weight_bytes <= 0:
            return 0.0
        return self.dispatch_ms + layers * NODES_PER_LAYER * self.node_us / 1000 + weight_bytes * self.ns_per_byte / 1e6


@dataclass(frozen=True)
class SpeedResult:
    endpoint: str
    device: int
    status: Status  # READY: the server was free and answered; else busy / down / incompatible
    stage: str  # where it ended: resolve, knock, connect, hello, devices, rtt, alloc, clear, compute, free, done
    detail: str = ""
    version: str | None = None
    speed: ComputeSpeed | None = None
    device_total: int = 0  # the device's total memory, which identifies it in the cache
    rtt_ms: float | None = None
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is Status.READY and self.speed is not None


@dataclass(frozen=True)
class _Tensor:
    id: int
    ggml_type: int
    ne: tuple[int, int, int, int]
    nb: tuple[int, int, int, int]
    offset: int
    nbytes: int
    op: int = 0
    src: tuple[int, ...] = ()


@dataclass
class _Layout:
    """The tensors of the three graphs, placed in one buffer; `size` bytes in all."""

    ggml_type: int
    row_bytes: int
    size: int = 0
    tensors: dict[int, _Tensor] = field(default_factory=dict)

    def _add(self, ggml_type: int, ne: tuple[int, int, int, int], nb: tuple[int, int, int, int], nbytes: int,
             op: int = 0, src: tuple[int, ...] = ()) -> _Tensor:  # fmt: skip
        tensor = _Tensor(len(self.tensors) + 1, ggml_type, ne, nb, self.size, nbytes, op, src)
        self.tensors[tensor.id] = tensor
        self.size += -(-nbytes // ALIGN) * ALIGN
        return tensor

    def vector(self) -> _Tensor:
        return self._add(GGML_TYPE_F32, (ROW, 1, 1, 1), (4, ROW * 4, ROW * 4, ROW * 4), ROW * 4)

    def weight(self, rows: int) -> _Tensor:
        _, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(self.ggml_type)]
        size = self.row_bytes * rows
        return self._add(self.ggml_type, (ROW, rows, 1, 1), (type_size, self.row_bytes, size, size), size)

    def matmul(self, weight: _Tensor, x: _Tensor) -> _Tensor:
        rows = weight.ne[1]
        return self._add(GGML_TYPE_F32, (rows, 1, 1, 1), (4, rows * 4, rows * 4, rows * 4), rows * 4,
                         GGML_OP_MUL_MAT, (weight.id, x.id))  # fmt: skip


def _layout(ggml_type: str, weight_bytes: int) -> tuple[_Layout, list[list[_Tensor]]]:
    qtype = GGMLQuantizationType[ggml_type]
    block, type_size = GGML_QUANT_SIZES[qtype]
    layout = _Layout(int(qtype), ROW // block * type_size)
    x = layout.vector()
    tiny = layout.weight(TINY_ROWS)
    one = [layout.matmul(tiny, x)]
    many = [layout.matmul(tiny, x) for _ in range(MANY_NODES)]
    rows = max(1, weight_bytes // BIG_NODES // layout.row_bytes)
    big = [layout.matmul(layout.weight(rows), x) for _ in range(BIG_NODES)]
    return layout, [one, many, big]


def _graph(layout: _Layout, nodes: list[_Tensor], device: int, buffer: int, base: int) -> bytes:
    """GRAPH_COMPUTE's payload: the nodes and every tensor they use, each inside the buffer at `base`."""
    used: dict[int, _Tensor] = {}
    for node in nodes:
        used[node.id] = node
        for src in node.src:
            used[src] = layout.tensors[src]
    packed = []
    for t in used.values():
        assert t.offset + t.nbytes <= layout.size  # inside the buffer, or rpc-server would abort
        src = list(t.src) + [0] * (10 - len(t.src))
        flags = GGML_TENSOR_FLAG_COMPUTE if t.op else 0
        fields = (t.id, t.ggml_type, buffer, *t.ne, *t.nb, t.op, *([0] * 16), flags, *src, 0, 0, base + t.offset)
        packed.append(wire.RPC_TENSOR.pack(*fields, b"sollol-speed", 0))
    head = struct.pack("<II", device, len(nodes)) + struct.pack(f"<{len(nodes)}Q", *(n.id for n in nodes))
    return head + struct.pack("<I", len(packed)) + b"".join(packed)


def _timed(s: Session, graph: bytes, device: int, repeats: int, rtt_s: float, sustain_s: float = 0.0) -> list[float]:
    """Send `graph` once (the server builds it), then time `repeats` recomputes of it: seconds each, rtt out; and
    more, up to MAX_SUSTAIN_REPEATS, until they add up to `sustain_s` of back-to-back work."""
    wire.send_command(s.sock, wire.CMD_GRAPH_COMPUTE, graph, s.deadline.within(s.reply_timeout))
    s.sync()
    samples: list[float] = []
    while len(samples) < repeats or (sum(samples) < sustain_s and len(samples) < MAX_SUSTAIN_REPEATS):
        t = time.perf_counter()
        wire.send_command(s.sock, wire.CMD_GRAPH_RECOMPUTE, struct.pack("<I", device), s.deadline)
        s.sync()
        samples.append(max(time.perf_counter() - t - rtt_s, 0.0))
    return samples


def measure_compute(
    endpoint: str,
    ggml_type: str = FALLBACK_TYPE,
    *,
    device: int = 0,
    weight_bytes: int = DEFAULT_WEIGHT_BYTES,
    repeats: int = 7,
    rtt_samples: int = 5,
    connect_timeout: float = 2.0,
    turn_timeout: float = 1.0,
    reply_timeout: float = 30.0,
    deadline_s: float = DEFAULT_DEADLINE_S,
    client_protocol: tuple[int, int, int] = CLIENT_PROTOCOL,
) -> SpeedResult:
    """The compute speed of `device` of the rpc-server at `endpoint` for weights of `ggml_type` (one of
    MEASURABLE), all within `deadline_s` seconds (each reply within `reply_timeout`: a recompute of the big graph
    must take less). Never raises for network conditions (UsageError for arguments out of range); leaves the
    server as it found it."""
    if ggml_type not in MEASURABLE:
        raise UsageError(f"cannot measure weights of type {ggml_type}; one of {', '.join(MEASURABLE)}")
    if not MIN_WEIGHT_BYTES <= weight_bytes <= MAX_WEIGHT_BYTES:
        raise UsageError(f"weight_bytes must be {MIN_WEIGHT_BYTES}..{MAX_WEIGHT_BYTES}, got {weight_bytes}")
    if repeats < 1 or rtt_samples < 1:
        raise UsageError(f"repeats and rtt_samples must be at least 1, got {repeats} and {rtt_samples}")
    layout, graphs = _layout(ggml_type, weight_bytes)
    big_bytes = sum(layout.tensors[n.src[0]].nbytes for n in graphs[2])
    t0 = time.monotonic()
    current: Session | None = None
    rtts: list[float] = []
    total = 0

    def result(status: Status, detail: str = "", stage: str | None = None, version: str | None = None,
               speed: ComputeSpeed | None = None) -> SpeedResult:  # fmt: skip
        return SpeedResult(
            endpoint,
            device,
            status,
            stage or (current.stage if current else "resolve"),
            detail,
            version or (current.version if current else None),
            speed,
            total,
            statistics.median(rtts) * 1000 if rtts else None,
            time.monotonic() - t0,
        )

    try:
        with session(
            endpoint,
            Deadline(deadline_s),
            connect_timeout=connect_timeout,
            turn_timeout=turn_timeout,
            reply_timeout=reply_timeout,
            client_protocol=client_protocol,
            activity=("measurement", "measuring"),
        ) as s:
            current = s
            s.stage = "devices"
            count = s.device_count()
            if count > MAX_DEVICES or device >= count:
                s.clean = True
                return result(Status.INCOMPATIBLE, f"announces {count} device(s), no device {device} to measure")
            memory = s.device_memory(device)
            total = memory.total
            if memory.free < layout.size:
                s.clean = True
                return result(
                    Status.READY,
                    f"device {device} has {memory.free / MIB:,.0f} MiB free, the measurement needs "
                    f"{layout.size / MIB:,.0f} MiB",
                )
            s.stage = "rtt"
            for _ in range(rtt_samples):
                t = time.perf_counter()
                s.device_count()
                rtts.append(time.perf_counter() - t)
            rtt_s = statistics.median(rtts)
            s.stage = "alloc"
            ptr, got = s.allocate(device, layout.size)
            if ptr == 0:
                s.clean = True
                return result(Status.READY, f"could not allocate {layout.size / MIB:,.0f} MiB on device {device}")
            if got < layout.size:
                return result(Status.INCOMPATIBLE, f"allocated {got} bytes where {layout.size} were asked for")
            base = s.buffer_base(ptr)
            s.stage = "clear"
            wire.send_command(s.sock, wire.CMD_BUFFER_CLEAR, struct.pack("<QB", ptr, 0), s.deadline)
            s.sync()
            s.stage = "compute"
            timings = [
                _timed(s, _graph(layout, g, device, ptr, base), device, repeats, rtt_s, SUSTAIN_S if i == 2 else 0.0)
                for i, g in enumerate(graphs)
            ]
            s.stage = "free"
            s.free_buffer(ptr)
            s.device_memory(device)
            s.clean = True
            s.stage = "done"
    except SessionFailed as failed:
        return result(failed.status, failed.detail, failed.stage, failed.version)
    # The fixed parts from the fastest of the small graphs' timings: interference (other processes on the device,
    # the network) only ever slows a run down. The weights' part from the big graph's sustained mean over at least
    # SUSTAIN_S of back-to-back work: a worker under a CPU quota (a container's limit, cgroup CFS) runs a short
    # burst at full speed and is throttled after, as decoding token after token is; its fastest run would hide it.
    one, many, big = min(timings[0]), min(timings[1]), timings[2]
    node_s = max(0.0, (many - one) / (MANY_NODES - 1))
    sustained = statistics.fmean(big)
    # The big graph less its fixed part; never under half of it, should a slow tiny run have inflated that part.
    work_s = max(sustained - one - (BIG_NODES - 1) * node_s, sustained / 2, 1e-9)
    speed = ComputeSpeed(
        ggml_type,
        work_s / big_bytes * 1e9,
        node_s * 1e6,
        max(0.0, one - node_s) * 1000,
        big_bytes,
        tuple(b * 1000 for b in big),
    )
    detail = f"{speed.ms_per_gib:,.1f} ms/GiB of {ggml_type} weights, {speed.node_us:.1f} us/node"
    return result(Status.READY, detail, "done", speed=speed)
