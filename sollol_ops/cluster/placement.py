"""Memory-aware placement: which device gets which layers, as an explicit --device / --tensor-split / -ngl.

llama.cpp assigns the n_layer repeating blocks plus the output layer (n_layer + 1 "GPU layers") by
cumulative split fractions: layer il goes to the first device whose cumulative share exceeds
il / (n_layer + 1). We compute the split from usable memory per device, predict the outcome with the
same rule, and refuse up front, with the numbers, when weights + KV cache + compute buffers do not fit.

The coordinator may offer memory of its own (sollol_coordinator_memory_mib, docs/inventory.md). A GPU
of the coordinator (CUDA0, ... of `llama-server --list-devices`) is one more --device, first in the list.
Its CPU cannot be a --device (llama.cpp refuses CPU devices there): host memory takes layers through
-ngl instead. With `-ngl N`, the first n_layer + 1 - N layers stay on the CPU and the N others are split
over the devices by --tensor-split with the same rule (src/llama-model.cpp, load_tensors). The CPU slot
therefore comes first: its share of the split decides how many leading layers it keeps.
"""

from __future__ import annotations

import bisect
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sollol_ops.cluster.inventory import HOST_DEVICE, Backend, Coordinator
from sollol_ops.cluster.rpc import ProbeResult
from sollol_ops.errors import PlacementError
from sollol_ops.model.gguf_info import GGUFInfo

MIB = 1 << 20
# Offloading more than ~75% of a CPU server's RAM has crashed rpc-servers (upstream reports).
CPU_REPORTED_FRACTION = 0.75
GPU_HEADROOM_FRACTION = 0.05


@dataclass(frozen=True)
class Slot:
    """One device able to take layers: a device of an rpc-server, or one of the coordinator's own."""

    backend: Backend | None  # None: the coordinator's own device
    device_index: int  # index of the device inside its rpc-server
    # llama.cpp device name: RPC<n>, numbered over --rpc endpoints and their devices; the coordinator's
    # device as `llama-server --list-devices` names it (CUDA0, ...), or CPU for its host memory
    name: str
    usable_bytes: int
    source: str  # where usable_bytes came from
    weight: float | None = None  # declared relative share (sollol_rpc_weight)

    @property
    def is_coordinator(self) -> bool:
        return self.backend is None

    @property
    def on_host(self) -> bool:
        """The coordinator's CPU: layers through -ngl, not a --device."""
        return self.backend is None and self.name == HOST_DEVICE

    @property
    def endpoint(self) -> str:
        """The rpc-server's address, or `coordinator CPU` / `coordinator CUDA0` (as the distribution names it)."""
        return self.backend.endpoint if self.backend is not None else f"coordinator {self.name}"


@dataclass
class Share:
    slot: Slot
    split: float
    layers: int
    has_output: bool
    weight_bytes: int
    kv_bytes: int
    compute_bytes: int

    @property
    def need_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.compute_bytes

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.slot.usable_bytes


@dataclass
class Plan:
    shares: list[Share]
    n_ctx: int
    n_layer: int
    local_bytes: int  # stays on the coordinator's CPU (input embeddings)
    kv_per_layer: int
    notes: list[str] = field(default_factory=list)

    @property
    def devices(self) -> list[str]:
        """The --device list: every slot but the coordinator's CPU."""
        return [s.slot.name for s in self.shares if not s.slot.on_host]

    @property
    def tensor_split(self) -> list[float]:
        return [s.split for s in self.shares if not s.slot.on_host]

    @property
    def host_layers(self) -> int:
        """Layers (of the n_layer + 1) kept on the coordinator's CPU; 0 without a CPU slot."""
        return sum(s.layers + s.has_output for s in self.shares if s.slot.on_host)

    @property
    def n_gpu_layers(self) -> int | None:
        """-ngl when the coordinator's CPU keeps layers; None: every layer is offloaded (-ngl 999)."""
        if not any(s.slot.on_host for s in self.shares):
            return None
        return self.n_layer + 1 - self.host_layers

    @property
    def rpc_endpoints(self) -> list[str]:
        out: list[str] = []
        for s in self.shares:
            if s.slot.backend is not None and s.slot.backend.endpoint not in out:
                out.append(s.slot.backend.endpoint)
        return out


def mem_available_bytes(meminfo: str | None = None) -> int:
    text = meminfo if meminfo is not None else Path("/proc/meminfo").read_text()
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise PlacementError("cannot read MemAvailable from /proc/meminfo")


def is_local_address(address: str) -> bool:
    if address.startswith("127.") or address in ("localhost", "::1"):
        return True
    try:
        return (
            address in {socket.gethostname(), socket.getfqdn()}
            or address in socket.gethostbyname_ex(socket.gethostname())[2]
        )
    except OSError:
        return False


@dataclass(frozen=True)
class LocalDevice:
    """A device of the coordinator's own llama.cpp, as `llama-server --list-devices` prints it."""

    name: str
    description: str
    total: int
    free: int


def coordinator_slot(coordinator: Coordinator, available: int, local_devices: Sequence[LocalDevice] = ()) -> Slot:
    """The coordinator's offer as a slot: what it declares, bounded by what it really has free (the host's
    MemAvailable for CPU, the device's free memory less 5% for a GPU)."""
    offered = coordinator.memory_mib * MIB
    if coordinator.device == HOST_DEVICE:
        if offered <= available:
            return Slot(None, 0, HOST_DEVICE, offered, "sollol_coordinator_memory_mib")
        return Slot(None, 0, HOST_DEVICE, available, "MemAvailable (this host)")
    found = next((d for d in local_devices if d.name == coordinator.device), None)
    if found is None:
        names = ", ".join(d.name for d in local_devices) or "none"
        raise PlacementError(
            f"the coordinator's device {coordinator.device} is not one llama-server lists here (--list-devices: "
            f"{names}); set sollol_coordinator_device to one of them or to {HOST_DEVICE}"
        )
    free = int(found.free * (1 - GPU_HEADROOM_FRACTION))
    if offered <= free:
        return Slot(None, 0, found.name, offered, "sollol_coordinator_memory_mib")
    return Slot(None, 0, found.name, free, "device free - 5%")


def build_slots(
    probes: Sequence[tuple[Backend, ProbeResult]],
    *,
    local_available: int | None = None,
    facts_available: dict[str, int] | None = None,
    coordinator: Coordinator | None = None,
    local_devices: Sequence[LocalDevice] = (),
) -> list[Slot]:
    """Slots in --rpc order with their usable memory, after the coordinator's own when it offers memory.

    CPU devices report total RAM as free, so for them: a declared cap (sollol_rpc_memory_mib), else for
    rpc-servers on this machine MemAvailable split between them, else the host's free memory from
    inventory facts, else 75% of the reported RAM (flagged in the plan's source column). A coordinator
    offering its CPU memory takes its part of MemAvailable first; local rpc-servers share the rest.
    """
    facts_available = facts_available or {}
    local_cpu = [b for b, r in probes if b.is_cpu and is_local_address(b.address) and not b.memory_mib]
    slots: list[Slot] = []
    offering = coordinator is not None and coordinator.memory_mib > 0
    host_cpu = offering and coordinator is not None and coordinator.device == HOST_DEVICE
    available: int | None = local_available
    if local_cpu or host_cpu:
        available = local_available if local_available is not None else mem_available_bytes()
    if offering and coordinator is not None:
        slot = coordinator_slot(coordinator, available or 0, local_devices)
        slots.append(slot)
        if host_cpu and available is not None:
            available = max(0, available - slot.usable_bytes)
    index = 0
    for backend, result in probes:
        for dev in result.devices:
            reported = dev.free
            if backend.memory_mib:
                usable, source = min(backend.memory_mib * MIB, reported), "declared cap"
            elif backend.is_cpu and backend in local_cpu:
                avail = available or 0
                usable, source = avail // max(1, len(local_cpu)), f"MemAvailable/{len(local_cpu)} (this host)"
                if host_cpu:
                    source = f"(MemAvailable - coordinator)/{len(local_cpu)}"
            elif backend.is_cpu and backend.host in facts_available:
                usable, source = facts_available[backend.host], "host facts"
            elif backend.is_cpu:
                usable, source = int(reported * CPU_REPORTED_FRACTION), "75% of reported RAM"
            else:
                usable, source = int(reported * (1 - GPU_HEADROOM_FRACTION)), "device free - 5%"
            slots.append(Slot(backend, dev.index, f"RPC{index}", usable, source, backend.weight))
            index += 1
    return slots


def compute_reserve_bytes(info: GGUFInfo, n_ubatch: int = 512) -> int:
    """Conservative per-device compute buffer: activations of one micro-batch plus a fixed margin."""
    return 32 * MIB + n_ubatch * max(info.embedding_length, 1) * 4 * 8


def _f32(x: float) -> float:
    """x rounded to a C float: llama.cpp computes the split points in single precision."""
    return float(struct.unpack("f", struct.pack("f", x))[0])


def assign_layers(splits: Sequence[float], n_layer: int) -> list[int]:
    """llama.cpp's rule: layer il (0..n_layer, the last being the output layer) goes to the first device
    whose cumulative split exceeds il / (n_layer + 1). Returns each device's count of the n_layer+1.
    Computed in single precision as llama.cpp does, so a boundary case lands where it lands there."""
    acc, cumulative = 0.0, []
    for s in splits:
        acc = _f32(acc + _f32(s))
        cumulative.append(acc)
    if acc <= 0:
        raise PlacementError("tensor split sums to zero")
    cumulative = [_f32(c / acc) for c in cumulative]
    counts = [0] * len(splits)
    n_gpu = n_layer + 1
    for il in range(n_gpu):
        device = min(bisect.bisect_right(cumulative, _f32(il / n_gpu)), len(splits) - 1)
        counts[device] += 1
    return counts


def layer_counts(slots: Sequence[Slot], splits: Sequence[float], n_layer: int) -> list[int]:
    """Each slot's count of the n_layer + 1 layers, as llama.cpp will assign them from our command line.
    Devices only: the rule above over --tensor-split. With the coordinator's CPU first: its share of the
    split says how many leading layers it keeps (-ngl = the rest), and llama.cpp then splits the
    -ngl layers over the devices by their --tensor-split alone."""
    if not slots or not slots[0].on_host:
        return assign_layers(splits, n_layer)
    host = assign_layers(splits, n_layer)[0]
    if len(slots) == 1:
        return [n_layer + 1]
    return [host, *assign_layers(splits[1:], n_layer - host)]


def _shares(info: GGUFInfo, slots: Sequence[Slot], splits: Sequence[float], n_ctx: int) -> list[Share]:
    counts = layer_counts(slots, splits, info.block_count)
    kv_per_layer = info.kv_cache_bytes(n_ctx) // max(1, info.block_count)
    compute = compute_reserve_bytes(info)
    shares, layer = [], 0
    for slot, split, count in zip(slots, splits, counts, strict=True):
        blocks = range(layer, min(layer + count, info.block_count))
        has_output = layer + count > info.block_count
        weight = sum(info.layer_bytes[i] for i in blocks) + (info.output_bytes if has_output else 0)
        if slot.on_host:
            weight += info.token_embd_bytes  # the input embeddings always stay in host memory
        shares.append(Share(slot, split, len(blocks), has_output, weight, kv_per_layer * len(blocks), compute))
        layer += count
    return shares


def plan_for_split(
    info: GGUFInfo, slots: Sequence[Slot], splits: Sequence[float], n_ctx: int, notes: Sequence[str] = ()
) -> Plan:
    """The plan of an explicit --tensor-split over `slots` (the coordinator's CPU first, if any), fitting or not
    (each Share says whether it fits): what llama.cpp will do with that command line."""
    return Plan(
        _shares(info, slots, splits, n_ctx),
        n_ctx,
        info.block_count,
        info.token_embd_bytes,
        info.kv_cache_bytes(n_ctx) // max(1, info.block_count),
        list(notes),
    )


def plan_placement(info: GGUFInfo, slots: Sequence[Slot], n_ctx: int, model: str = "the model") -> Plan:
    if not slots:
        raise PlacementError("no usable RPC backend to place layers on")
    weights = [s.weight for s in slots]
    if all(weights):
        base = [float(w) for w in weights]  # type: ignore[arg-type]
        notes = ["split from declared sollol_rpc_weight"]
    else:
        base = [max(s.usable_bytes, 1) / MIB for s in slots]
        notes = ["split proportional to usable memory"]
        rpc_weights = [s.weight for s in slots if not s.is_coordinator]
        if len(rpc_weights) < len(slots) and rpc_weights and all(rpc_weights):
            notes.append("sollol_rpc_weight set aside: the coordinator's share comes from its memory")
    splits = [round(b / sum(base), 4) for b in base]
    shares = _shares(info, slots, splits, n_ctx)
    for _ in range(20):  # the output layer can tip the last device over: shift share away from overflows
        over = [not s.fits for s in shares]
        if not any(over) or all(over):
            break
        splits = [
            round(s.split * min(1.0, s.slot.usable_bytes / max(1, s.need_bytes)) * (0.98 if o else 1.0), 4)
            for s, o in zip(shares, over, strict=True)
        ]
        shares = _shares(info, slots, splits, n_ctx)
    plan = plan_for_split(info, slots, splits, n_ctx, notes)
    if not all(s.fits for s in shares):
        detail = ", ".join(
            f"{s.slot.endpoint} needs {s.need_bytes / MIB:,.0f} of {s.slot.usable_bytes / MIB:,.0f} MiB "
            f"({s.slot.source})"
            for s in shares
            if not s.fits
        )
        hint = " / sollol_coordinator_memory_mib" if any(s.is_coordinator for s in slots) else ""
        placed = info.tensor_bytes - (0 if any(s.on_host for s in slots) else info.token_embd_bytes)
        total_need = placed + info.kv_cache_bytes(n_ctx)
        raise PlacementError(
            f"{model} does not fit: weights {placed / MIB:,.0f} MiB + KV cache "
            f"{info.kv_cache_bytes(n_ctx) / MIB:,.0f} MiB at ctx {n_ctx} + compute "
            f"{compute_reserve_bytes(info) * len(slots) / MIB:,.0f} MiB = "
            f"{(total_need + compute_reserve_bytes(info) * len(slots)) / MIB:,.0f} MiB, backends offer "
            f"{sum(s.usable_bytes for s in slots) / MIB:,.0f} MiB ({detail}); lower --ctx-size, add backends, "
            f"or raise sollol_rpc_memory_mib{hint}"
        )
    return plan


def describe_backend_problem(backend: Backend, result: ProbeResult) -> str:
    """One unhealthy backend, as `up` and `stage` name it when they refuse to plan on it."""
    return f"{backend.host} ({backend.endpoint}) is {result.status.value}: {result.detail}"
