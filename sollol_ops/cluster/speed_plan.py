"""The speed planner: the split of a model's layers over the slots (and which slots to leave out) that minimises
the predicted time per generated token, while every model byte, its KV cache and a compute reserve still fit each
slot's usable memory (`sollol_ops.cluster.placement`'s memory model).

The cost model (docs/placement.md, "Placement by measured speed"), per token:

- each slot that holds layers: its measured compute (`ComputeSpeed.token_ms`: a fixed cost per graph, a cost per
  graph node, `NODES_PER_LAYER` nodes per layer, and its weights' bytes times its time per byte);
- each rpc-server that holds layers: one hop, the activation (n_embd x 4 bytes) sent to it and back, one round trip
  plus 2 x activation / bandwidth (the link figures `doctor` measures); the coordinator's own devices: none;
- the slot with the output layer: the logits (n_vocab x 4 bytes) back over its link.

llama.cpp gives layers to the devices in --device order, each a contiguous run, so the best split is a shortest
path over (slot, first layer) found by dynamic programming; a slot given no layer is left out of --rpc/--device.
The split is written as a --tensor-split of the layer counts themselves, which llama.cpp's rule
(`placement.assign_layers`) maps back to exactly those counts (checked).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sollol_ops.cluster import speed_cache
from sollol_ops.cluster.inventory import Placement
from sollol_ops.cluster.placement import (
    MIB,
    Plan,
    Slot,
    compute_reserve_bytes,
    layer_counts,
    plan_for_split,
)
from sollol_ops.cluster.speed import NODES_PER_LAYER, ComputeSpeed, measure_type
from sollol_ops.cluster.speed_cache import LinkFigures, SpeedCache
from sollol_ops.cluster.toolchain import Toolchain
from sollol_ops.errors import PlacementError
from sollol_ops.model.gguf_info import GGUFInfo

# Why a slot is left out or given fewer layers: "slower" when its time per byte is more than SLOWER_RATIO times the
# fastest used slot's; "its link" when its hop costs more than SLOW_LINK_RATIO times the used slots' dearest hop.
SLOWER_RATIO = 1.05
SLOW_LINK_RATIO = 1.5


@dataclass(frozen=True)
class SlotCost:
    """What using one slot costs per token: its compute speed, and for an rpc-server the link to it."""

    speed: ComputeSpeed
    link: LinkFigures | None = None  # None: the coordinator's own device (no hop)

    def hop_ms(self, activation_bytes: int) -> float:
        if self.link is None:
            return 0.0
        return self.link.rtt_ms + 2 * activation_bytes / self.link.bytes_per_s * 1000

    def transfer_ms(self, n_bytes: int) -> float:
        return 0.0 if self.link is None else n_bytes / self.link.bytes_per_s * 1000


@dataclass(frozen=True)
class SlotPart:
    """One slot's part of a predicted token."""

    layers: int  # of the n_layer + 1 (the output layer counted)
    weight_bytes: int
    compute_ms: float
    hop_ms: float

    @property
    def ms(self) -> float:
        return self.compute_ms + self.hop_ms


@dataclass(frozen=True)
class Prediction:
    counts: tuple[int, ...]  # layers of the n_layer + 1 per slot, in slot order
    parts: tuple[SlotPart, ...]

    @property
    def ms_per_token(self) -> float:
        return sum(p.ms for p in self.parts)

    @property
    def tokens_per_s(self) -> float:
        return 1000 / self.ms_per_token if self.ms_per_token > 0 else math.inf


class CostModel:
    """The predicted cost of a split of `info`'s layers over `slots`, each with its `SlotCost`."""

    def __init__(self, info: GGUFInfo, slots: Sequence[Slot], costs: Sequence[SlotCost], n_ctx: int) -> None:
        if len(slots) != len(costs):
            raise ValueError("one SlotCost per slot")
        self.info, self.slots, self.costs = info, list(slots), list(costs)
        self.n_layer = info.block_count
        self.units = [*info.layer_bytes[: self.n_layer], info.output_bytes]  # position n_layer: the output layer
        self.units += [0] * (self.n_layer + 1 - len(self.units))
        self.prefix = [0]
        for b in self.units:
            self.prefix.append(self.prefix[-1] + b)
        self.kv_per_layer = info.kv_cache_bytes(n_ctx) // max(1, self.n_layer)
        self.reserve = compute_reserve_bytes(info)
        self.activation = max(info.embedding_length, 1) * 4
        self.logits = info.vocab_size * 4

    @property
    def positions(self) -> int:
        return self.n_layer + 1

    def _blocks(self, p: int, q: int) -> int:
        return min(q, self.n_layer) - min(p, self.n_layer)

    def need_bytes(self, i: int, p: int, q: int) -> int:
        """Memory slot i needs for positions [p, q) (the input embeddings too on the coordinator's CPU)."""
        weights = self.prefix[q] - self.prefix[p] + (self.info.token_embd_bytes if self.slots[i].on_host else 0)
        return weights + self.kv_per_layer * self._blocks(p, q) + self.reserve

    def fits(self, i: int, p: int, q: int) -> bool:
        return self.need_bytes(i, p, q) <= self.slots[i].usable_bytes

    def part(self, i: int, p: int, q: int) -> SlotPart:
        if q <= p:
            return SlotPart(0, 0, 0.0, 0.0)
        cost = self.costs[i]
        weights = self.prefix[q] - self.prefix[p]
        hop = cost.hop_ms(self.activation) + (cost.transfer_ms(self.logits) if q == self.positions else 0.0)
        return SlotPart(q - p, weights, cost.speed.token_ms(weights, self._blocks(p, q)), hop)

    def parts_hop(self, i: int) -> float:
        """The hop of slot i per token (0 for the coordinator's own devices)."""
        return self.costs[i].hop_ms(self.activation)

    def predict(self, counts: Sequence[int]) -> Prediction:
        """The predicted token of `counts` (layers of the n_layer + 1 per slot, in slot order)."""
        if len(counts) != len(self.slots) or sum(counts) != self.positions or min(counts) < 0:
            raise PlacementError(
                f"a split must give the {self.positions} layers (with the output) to the {len(self.slots)} slots, "
                f"got {list(counts)}"
            )
        parts, p = [], 0
        for i, c in enumerate(counts):
            parts.append(self.part(i, p, p + c))
            p += c
        return Prediction(tuple(counts), tuple(parts))

    def best(self, forced: int | None = None) -> Prediction | None:
        """The split of least predicted ms/token that fits every slot (`forced`: that slot must take a layer);
        None when none fits. The coordinator's CPU never takes the output layer (-ngl would be 0: no sharding)."""
        n, n_layer, prefix, kv = self.positions, self.n_layer, self.prefix, self.kv_per_layer
        inf = math.inf
        cost = [0.0] + [inf] * n  # cost[p]: least cost with positions [0, p) given to the slots so far
        choice: list[list[int]] = []  # choice[i][q]: the p slot i's run began at (q == p: slot i left out)
        for i, slot in enumerate(self.slots):
            new = [inf] * (n + 1) if forced == i else list(cost)
            back = [-1] * (n + 1) if forced == i else list(range(n + 1))
            # The cost of positions [p, q) on slot i, fixed + per byte + per layer (+ the logits with the output),
            # and its fit, in the same terms as part() and fits(), hoisted out of the inner loop.
            c_i = self.costs[i]
            per_byte = c_i.speed.ns_per_byte / 1e6
            per_layer = NODES_PER_LAYER * c_i.speed.node_us / 1000
            fixed = c_i.speed.dispatch_ms + c_i.hop_ms(self.activation)
            logits = c_i.transfer_ms(self.logits)
            room = slot.usable_bytes - self.reserve - (self.info.token_embd_bytes if slot.on_host else 0)
            last = n - 1 if slot.on_host else n  # the coordinator's CPU never takes the output layer
            for p in range(n):
                if cost[p] == inf:
                    continue
                mp = min(p, n_layer)
                base = cost[p] + fixed - per_byte * prefix[p] - per_layer * mp
                limit = room + prefix[p] + kv * mp
                for q in range(p + 1, last + 1):
                    mq = min(q, n_layer)
                    if prefix[q] + kv * mq > limit:
                        break
                    c = base + per_byte * prefix[q] + per_layer * mq + (logits if q == n else 0.0)
                    if c < new[q]:
                        new[q], back[q] = c, p
            cost = new
            choice.append(back)
        if cost[n] == inf:
            return None
        counts, q = [0] * len(self.slots), n
        for i in range(len(self.slots) - 1, -1, -1):
            p = choice[i][q]
            counts[i], q = q - p, p
        return self.predict(counts)


def counts_of(plan: Plan, slots: Sequence[Slot]) -> list[int]:
    """Each slot's layers (of the n_layer + 1) in `plan`; 0 for a slot the plan does not use."""
    by_slot = {_identity(s.slot): s.layers + s.has_output for s in plan.shares}
    return [by_slot.get(_identity(slot), 0) for slot in slots]


def _identity(slot: Slot) -> tuple[object, ...]:
    """A slot whatever llama.cpp names it in a given --rpc list: its server and device, or the coordinator's."""
    return (slot.backend, slot.device_index) if slot.backend is not None else (None, slot.name)


def plan_from_counts(
    info: GGUFInfo, slots: Sequence[Slot], counts: Sequence[int], n_ctx: int, notes: Sequence[str] = ()
) -> Plan:
    """The Plan giving each slot `counts[i]` of the n_layer + 1 layers (0: left out), as a --tensor-split of the
    counts that llama.cpp maps back to exactly them; PlacementError when a slot would not fit, naming the numbers."""
    if len(counts) != len(slots) or sum(counts) != info.block_count + 1 or min(counts, default=0) < 0:
        raise PlacementError(
            f"a split must give the {info.block_count + 1} layers (with the output) to the {len(slots)} slots, "
            f"got {list(counts)}"
        )
    used = [(s, c) for s, c in zip(slots, counts, strict=True) if c > 0]
    if not used or all(s.on_host for s, _ in used):
        raise PlacementError("a split must give layers to at least one device besides the coordinator's CPU")
    kept = renumbered(slots, [s for s, _ in used])
    splits = [float(c) for _, c in used]
    if layer_counts(kept, splits, info.block_count) != [c for _, c in used]:  # llama.cpp's rule, in single precision
        raise PlacementError(f"the split {[c for _, c in used]} does not map back to itself under llama.cpp's rule")
    plan = plan_for_split(info, kept, splits, n_ctx, notes)
    over = [s for s in plan.shares if not s.fits]
    if over:
        detail = ", ".join(
            f"{s.slot.endpoint} ({s.slot.name}) needs {s.need_bytes / MIB:,.0f} of {s.slot.usable_bytes / MIB:,.0f} MiB"
            for s in over
        )
        raise PlacementError(f"the split {[c for _, c in used]} does not fit: {detail}")
    return plan


def renumbered(slots: Sequence[Slot], kept: Sequence[Slot]) -> list[Slot]:
    """`kept` with their llama.cpp device names as a --rpc list of only the kept rpc-servers numbers them:
    RPC<n> counts every device of each listed endpoint in order, so leaving a server out renames those after it."""
    endpoints = list(dict.fromkeys(s.backend.endpoint for s in kept if s.backend is not None))
    offsets, n = {}, 0
    for endpoint in endpoints:
        offsets[endpoint] = n
        n += sum(1 for s in slots if s.backend is not None and s.backend.endpoint == endpoint)
    return [
        dataclasses.replace(s, name=f"RPC{offsets[s.backend.endpoint] + s.device_index}") if s.backend else s
        for s in kept
    ]


@dataclass
class SpeedChoice:
    """The speed planner's answer: the plan, its prediction, the memory plan's over the same slots, and why each
    slot given fewer layers than by memory (or none) got them."""

    slots: list[Slot]
    plan: Plan
    predicted: Prediction
    memory: Prediction
    reasons: dict[str, str] = field(default_factory=dict)  # slot name -> why it was left out / down-weighted

    @property
    def left_out(self) -> list[str]:
        return [s.name for s, c in zip(self.slots, self.predicted.counts, strict=True) if c == 0]


def _reason(model: CostModel, i: int, chosen: Prediction, memory_count: int) -> str | None:
    """Why slot i got fewer layers than by memory (or none), in one phrase: slower compute, a slow link, no room."""
    count = chosen.counts[i]
    if count >= memory_count and count > 0:
        return None
    used = [j for j, c in enumerate(chosen.counts) if c > 0 and j != i]
    fastest = min(used, key=lambda j: model.costs[j].speed.ns_per_byte, default=None)
    ratio = model.costs[i].speed.ns_per_byte / model.costs[fastest].speed.ns_per_byte if fastest is not None else 1.0
    slower = f"{ratio:.1f}x slower than {model.slots[fastest].name}" if fastest is not None else ""
    link, hop = model.costs[i].link, model.parts_hop(i)
    slow_link = link is not None and hop > SLOW_LINK_RATIO * max((model.parts_hop(j) for j in used), default=0.0)
    where = f"round trip {link.rtt_ms:.2f} ms, {link.mb_per_s:,.0f} MB/s" if link is not None else ""
    if count > 0:
        layers = f"{count} layers, by memory {memory_count}"
        if ratio > SLOWER_RATIO:
            return f"down-weighted: {slower} ({layers})"
        if slow_link:
            return f"down-weighted: its link ({where}) is slower than the others' ({layers})"
        return f"down-weighted: a split of equal predicted speed ({layers})"
    smallest = min(model.need_bytes(i, p, p + 1) for p in range(model.n_layer)) if model.n_layer else 0
    usable = model.slots[i].usable_bytes
    if smallest > usable:
        return f"left out: no room for one layer (needs {smallest / MIB:,.0f} of {usable / MIB:,.0f} MiB)"
    forced = model.best(forced=i)
    if forced is None:
        return "left out: giving it a layer leaves no split that fits the others"
    more = forced.ms_per_token - chosen.ms_per_token
    layers = forced.counts[i]
    its = f"its {layers} layer{'s' if layers != 1 else ''}"
    slowness_ms = forced.parts[i].compute_ms * (1 - 1 / ratio) if ratio > 1 else 0.0
    if slow_link and hop >= slowness_ms:
        return f"left out: its link ({where}) would add {hop:.2f} ms/token, more than {its} save ({more:+.2f} in all)"
    if ratio > SLOWER_RATIO:
        return f"left out: {slower}, {its} would cost {more:.2f} ms/token more than they save"
    return f"left out: not needed, the others hold the model at least as fast ({more:+.2f} ms/token with it)"


def speed_split(
    info: GGUFInfo, slots: Sequence[Slot], costs: Sequence[SlotCost], n_ctx: int, memory_plan: Plan
) -> SpeedChoice:
    """The speed-optimal plan over `slots` (with their costs), compared with `memory_plan` (llama.cpp's
    memory-proportional split over the same slots). PlacementError when no split fits."""
    model = CostModel(info, slots, costs, n_ctx)
    best = model.best()
    if best is None:
        raise PlacementError("no split over the measured slots fits the model")
    memory_counts = counts_of(memory_plan, slots)
    memory = model.predict(memory_counts)
    if memory.ms_per_token <= best.ms_per_token:  # a tie (or rounding): keep llama.cpp's own split
        best = memory
    reasons = {
        slots[i].name: r for i in range(len(slots)) if (r := _reason(model, i, best, memory_counts[i])) is not None
    }
    notes = [
        f"split by measured speed: {best.ms_per_token:.2f} ms/token predicted, memory split "
        f"{memory.ms_per_token:.2f} (sollol_placement=speed)",
        *(f"{name} {why}" for name, why in reasons.items()),
    ]
    plan = plan_from_counts(info, slots, best.counts, n_ctx, notes)
    return SpeedChoice(list(slots), plan, best, memory, reasons)


# The cache's endpoint for the coordinator's own devices (measured through a temporary rpc-server on loopback).
COORDINATOR_ENDPOINT = "coordinator"


def slot_costs(
    slots: Sequence[Slot], totals: Mapping[tuple[str, int], int], cache: SpeedCache, build: str, ggml_type: str
) -> tuple[list[SlotCost | None], list[Slot]]:
    """Each slot's cached cost (None where there is none) and the slots that lack one. `totals`: each rpc-server
    device's total memory by (endpoint, device index), as its probe reported it."""
    costs: list[SlotCost | None] = []
    for slot in slots:
        if slot.backend is None:
            speed = cache.speed(build, f"{COORDINATOR_ENDPOINT}:{slot.name}", 0, ggml_type, 0)
            costs.append(SlotCost(speed) if speed is not None else None)
            continue
        endpoint = slot.backend.endpoint
        speed = cache.speed(build, endpoint, slot.device_index, ggml_type, totals.get((endpoint, slot.device_index), 0))
        link = cache.link(endpoint)
        costs.append(SlotCost(speed, link) if speed is not None and link is not None else None)
    return costs, [s for s, c in zip(slots, costs, strict=True) if c is None]


def choose(
    memory_plan: Plan,
    info: GGUFInfo,
    slots: Sequence[Slot],
    totals: Mapping[tuple[str, int], int],
    placement: Placement | None,
    toolchain: Toolchain,
    warn: Callable[[str], None] | None = None,
) -> Plan:
    """The plan `up` runs: with sollol_placement=speed and every slot's speed cached, the speed split; else
    `memory_plan`. The plan's notes say which was used and why (placement None: `memory_plan` as it is)."""
    if placement is None:
        return memory_plan
    if placement is Placement.MEMORY:
        memory_plan.notes.append("split by memory (sollol_placement=memory)")
        return memory_plan
    cache = speed_cache.load(warn=warn)
    build, ggml_type = speed_cache.build_id(toolchain), measure_type(info.file_type_name)
    costs, missing = slot_costs(slots, totals, cache, build, ggml_type)
    if missing:
        names = ", ".join(s.name for s in missing)
        memory_plan.notes.append(f"split by memory: no speed measured for {names} (sollol-ops plan MODEL --measure)")
        return memory_plan
    try:
        return speed_split(info, slots, [c for c in costs if c is not None], memory_plan.n_ctx, memory_plan).plan
    except PlacementError as exc:
        memory_plan.notes.append(f"split by memory: {exc}")
        return memory_plan
