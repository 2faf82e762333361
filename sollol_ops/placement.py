"""Memory-aware placement: which RPC device gets which layers, as an explicit --device / --tensor-split.

llama.cpp assigns the n_layer repeating blocks plus the output layer (n_layer + 1 "GPU layers") by
cumulative split fractions: layer il goes to the first device whose cumulative share exceeds
il / (n_layer + 1). We compute the split from usable memory per device, predict the outcome with the
same rule, and refuse up front, with the numbers, when weights + KV cache + compute buffers do not fit.
"""

from __future__ import annotations

import bisect
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sollol_ops.errors import PlacementError
from sollol_ops.gguf_info import GGUFInfo
from sollol_ops.inventory import Backend
from sollol_ops.rpc import ProbeResult

MIB = 1 << 20
# Offloading more than ~75% of a CPU server's RAM has crashed rpc-servers (upstream reports).
CPU_REPORTED_FRACTION = 0.75
GPU_HEADROOM_FRACTION = 0.05


@dataclass(frozen=True)
class Slot:
    """One RPC device able to take layers."""

    backend: Backend
    device_index: int  # index of the device inside its rpc-server
    name: str  # llama.cpp device name: RPC<n>, numbered over --rpc endpoints and their devices
    usable_bytes: int
    source: str  # where usable_bytes came from


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
        return [s.slot.name for s in self.shares]

    @property
    def tensor_split(self) -> list[float]:
        return [s.split for s in self.shares]

    @property
    def rpc_endpoints(self) -> list[str]:
        out: list[str] = []
        for s in self.shares:
            if s.slot.backend.endpoint not in out:
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


def build_slots(
    probes: Sequence[tuple[Backend, ProbeResult]],
    *,
    local_available: int | None = None,
    facts_available: dict[str, int] | None = None,
) -> list[Slot]:
    """Slots in --rpc order with their usable memory.

    CPU devices report total RAM as free, so for them: a declared cap (sollol_rpc_memory_mib), else for
    rpc-servers on this machine MemAvailable split between them, else the host's free memory from
    inventory facts, else 75% of the reported RAM (flagged in the plan's source column).
    """
    facts_available = facts_available or {}
    local_cpu = [b for b, r in probes if b.is_cpu and is_local_address(b.address) and not b.memory_mib]
    slots: list[Slot] = []
    index = 0
    for backend, result in probes:
        for dev in result.devices:
            reported = dev.free
            if backend.memory_mib:
                usable, source = min(backend.memory_mib * MIB, reported), "declared cap"
            elif backend.is_cpu and backend in local_cpu:
                avail = local_available if local_available is not None else mem_available_bytes()
                usable, source = avail // max(1, len(local_cpu)), f"MemAvailable/{len(local_cpu)} (this host)"
            elif backend.is_cpu and backend.host in facts_available:
                usable, source = facts_available[backend.host], "host facts"
            elif backend.is_cpu:
                usable, source = int(reported * CPU_REPORTED_FRACTION), "75% of reported RAM"
            else:
                usable, source = int(reported * (1 - GPU_HEADROOM_FRACTION)), "device free - 5%"
            slots.append(Slot(backend, dev.index, f"RPC{index}", usable, source))
            index += 1
    return slots


def compute_reserve_bytes(info: GGUFInfo, n_ubatch: int = 512) -> int:
    """Conservative per-device compute buffer: activations of one micro-batch plus a fixed margin."""
    return 32 * MIB + n_ubatch * max(info.embedding_length, 1) * 4 * 8


def assign_layers(splits: Sequence[float], n_layer: int) -> list[int]:
    """llama.cpp's rule: layer il (0..n_layer, the last being the output layer) goes to the first device
    whose cumulative split exceeds il / (n_layer + 1). Returns each device's count of the n_layer+1."""
    total = sum(splits)
    if total <= 0:
        raise PlacementError("tensor split sums to zero")
    cumulative, acc = [], 0.0
    for s in splits:
        acc += s / total
        cumulative.append(acc)
    counts = [0] * len(splits)
    n_gpu = n_layer + 1
    for il in range(n_gpu):
        device = min(bisect.bisect_right(cumulative, il / n_gpu), len(splits) - 1)
        counts[device] += 1
    return counts


def _shares(info: GGUFInfo, slots: Sequence[Slot], splits: Sequence[float], n_ctx: int) -> list[Share]:
    counts = assign_layers(splits, info.block_count)
    kv_per_layer = info.kv_cache_bytes(n_ctx) // max(1, info.block_count)
    compute = compute_reserve_bytes(info)
    shares, layer = [], 0
    for slot, split, count in zip(slots, splits, counts, strict=True):
        blocks = range(layer, min(layer + count, info.block_count))
        has_output = layer + count > info.block_count
        weight = sum(info.layer_bytes[i] for i in blocks) + (info.output_bytes if has_output else 0)
        shares.append(Share(slot, split, len(blocks), has_output, weight, kv_per_layer * len(blocks), compute))
        layer += count
    return shares


def plan_placement(info: GGUFInfo, slots: Sequence[Slot], n_ctx: int, model: str = "the model") -> Plan:
    if not slots:
        raise PlacementError("no usable RPC backend to place layers on")
    weights = [s.backend.weight for s in slots]
    if all(weights):
        base = [float(w) for w in weights]  # type: ignore[arg-type]
        notes = ["split from declared sollol_rpc_weight"]
    else:
        base = [max(s.usable_bytes, 1) / MIB for s in slots]
        notes = ["split proportional to usable memory"]
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
    plan = Plan(
        shares,
        n_ctx,
        info.block_count,
        info.token_embd_bytes,
        info.kv_cache_bytes(n_ctx) // max(1, info.block_count),
        notes,
    )
    if not all(s.fits for s in shares):
        detail = ", ".join(
            f"{s.slot.backend.endpoint} needs {s.need_bytes / MIB:,.0f} of {s.slot.usable_bytes / MIB:,.0f} MiB "
            f"({s.slot.source})"
            for s in shares
            if not s.fits
        )
        total_need = info.tensor_bytes - info.token_embd_bytes + info.kv_cache_bytes(n_ctx)
        raise PlacementError(
            f"{model} does not fit: weights {(info.tensor_bytes - info.token_embd_bytes) / MIB:,.0f} MiB + KV cache "
            f"{info.kv_cache_bytes(n_ctx) / MIB:,.0f} MiB at ctx {n_ctx} + compute "
            f"{compute_reserve_bytes(info) * len(slots) / MIB:,.0f} MiB = "
            f"{(total_need + compute_reserve_bytes(info) * len(slots)) / MIB:,.0f} MiB, backends offer "
            f"{sum(s.usable_bytes for s in slots) / MIB:,.0f} MiB ({detail}); lower --ctx-size, add backends, "
            "or raise sollol_rpc_memory_mib"
        )
    return plan
