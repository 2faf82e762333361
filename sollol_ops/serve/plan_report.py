"""`sollol-ops plan MODEL [--measure]`: the placement `up` would use and why. Per slot its usable memory, its
measured compute speed and link, the layers the memory split and the speed split give it, the predicted ms/token of
both, and the workers left out (or down-weighted) with the reason; `--measure` measures first and caches.

The measurements: each rpc-server device's compute over the RPC protocol (`cluster/speed.py`) and its link as
`doctor` measures it (`cluster/link.py`); the coordinator's own device (when it offers memory) through a temporary
rpc-server of this machine's build on loopback, with the threads llama-server would compute with. One at a time:
rpc-servers on one host share its cores, and a measurement must not compete with another.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sollol_ops import procs
from sollol_ops.cluster import link as rpc_link
from sollol_ops.cluster import speed, speed_cache
from sollol_ops.cluster.inventory import HOST_DEVICE, Backend, Cluster, Placement
from sollol_ops.cluster.local import RpcServerSpec, start_rpc_server, wait_ready
from sollol_ops.cluster.placement import Plan, Slot, build_slots, plan_placement
from sollol_ops.cluster.rpc import ProbeResult
from sollol_ops.cluster.speed_cache import SpeedCache
from sollol_ops.cluster.speed_plan import COORDINATOR_ENDPOINT, SpeedChoice, counts_of, slot_costs, speed_split
from sollol_ops.cluster.toolchain import Toolchain, find_toolchain
from sollol_ops.errors import BackendError, SollolError
from sollol_ops.model.gguf_info import read_gguf
from sollol_ops.model.ollama import resolve_model
from sollol_ops.serve import command, lifecycle

MIB = 1 << 20
LINK_BYTES = 8 * MIB  # per upload; best of LINK_UPLOADS
LINK_UPLOADS = 3
COORDINATOR_PORT_SEARCH = 29700  # the temporary rpc-server's port is the first free one from here (loopback)


@dataclass(frozen=True)
class PlanRequest:
    model: str
    ollama_models: str | None = None
    n_ctx: int = 4096
    measure: bool = False
    skip_unhealthy: bool | None = None  # None: the inventory's sollol_skip_unhealthy
    coordinator_memory_mib: int | None = None
    coordinator_device: str | None = None
    weight_bytes: int = speed.DEFAULT_WEIGHT_BYTES
    link_bytes: int = LINK_BYTES
    cache_path: Path | None = None  # default: the user's cache dir


@dataclass(frozen=True)
class WorkerRow:
    """One slot as `plan` shows it."""

    slot: str  # RPC0, ..., or the coordinator's CPU / CUDA0
    endpoint: str
    usable_bytes: int
    usable_from: str
    ms_per_gib: float | None  # compute: ms to stream a GiB of weights (None: never measured)
    node_us: float | None
    rtt_ms: float | None  # link (None: the coordinator's own device, or never measured)
    mb_per_s: float | None
    memory_layers: int  # of the n_layer + 1, in llama.cpp's memory-proportional split
    speed_layers: int | None  # in the speed split (None: not planned by speed)
    note: str = ""


@dataclass
class PlanReport:
    model: str
    layers: int
    file_type: str
    measured_as: str  # the weight type the compute figures are for
    build: str
    placement: Placement  # sollol_placement
    used: str  # the split `up` uses: speed or memory
    workers: list[WorkerRow]
    speed_ms: float | None  # predicted ms/token of the speed split
    memory_ms: float | None  # predicted ms/token of the memory split (None: not measured)
    left_out: list[str] = field(default_factory=list)  # "RPC2 (127.0.0.1:50054) left out: why"
    unmeasured: list[str] = field(default_factory=list)
    measured: list[str] = field(default_factory=list)  # what --measure measured now
    skipped: list[str] = field(default_factory=list)  # unhealthy backends left aside (skip-unhealthy)
    notes: list[str] = field(default_factory=list)
    rpc: list[str] = field(default_factory=list)  # the plan `up` runs: --rpc, --device, --tensor-split
    devices: list[str] = field(default_factory=list)
    tensor_split: list[float] = field(default_factory=list)


def _measure_rpc(
    cache: SpeedCache, build: str, ggml_type: str, slots: Sequence[Slot], req: PlanRequest, reporter: lifecycle.Reporter
) -> tuple[list[str], list[str]]:
    """Measure each rpc-server slot's compute and each endpoint's link into `cache`: (what was measured, failures)."""
    done, failed, linked = [], [], set()
    for slot in slots:
        if slot.backend is None:
            continue
        endpoint = slot.backend.endpoint
        reporter.step(f"measuring the compute speed of {slot.name} ({endpoint}, device {slot.device_index})")
        result = speed.measure_compute(endpoint, ggml_type, device=slot.device_index, weight_bytes=req.weight_bytes)
        if not result.ok:
            failed.append(f"{slot.name} ({endpoint}): {result.status.value} at {result.stage}, {result.detail}")
            continue
        cache.record_speed(build, result)
        done.append(f"{slot.name} compute: {result.detail}")
        if endpoint in linked:
            continue
        linked.add(endpoint)
        reporter.step(f"measuring the link to {endpoint}")
        link = rpc_link.measure_link(endpoint, req.link_bytes, uploads=LINK_UPLOADS)
        if not link.ok:
            failed.append(f"the link to {endpoint}: {link.status.value} at {link.stage}, {link.detail}")
            continue
        cache.record_link(link)
        done.append(f"{endpoint} link: {link.detail}")
    return done, failed


def _measure_coordinator(
    cache: SpeedCache, build: str, ggml_type: str, slot: Slot, toolchain: Toolchain, threads: int, req: PlanRequest
) -> str:
    """The coordinator's own device, through a temporary rpc-server of this build on loopback (stopped after)."""
    port = procs.free_ports("127.0.0.1", 1, COORDINATOR_PORT_SEARCH)[0]
    device = None if slot.name == HOST_DEVICE else slot.name
    with tempfile.TemporaryDirectory(prefix="sollol-plan-") as tmp:
        spec = RpcServerSpec("127.0.0.1", port, threads, Path(tmp) / "rpc.log", device=device)
        server = start_rpc_server(toolchain, spec)
        try:
            endpoint = f"127.0.0.1:{port}"
            wait_ready([endpoint], timeout=30)
            result = speed.measure_compute(endpoint, ggml_type, weight_bytes=req.weight_bytes)
        finally:
            procs.stop_process(server.pid, server.start_time, timeout=5, argv0=server.argv0)
    if not result.ok:
        raise BackendError(f"measuring the coordinator's {slot.name} failed: {result.detail}")
    key = f"{COORDINATOR_ENDPOINT}:{slot.name}"
    cache.record_speed(build, speed.SpeedResult(key, 0, result.status, result.stage, speed=result.speed))
    return f"coordinator {slot.name} compute ({threads} threads): {result.detail}"


def _rows(slots: Sequence[Slot], memory_plan: Plan, costs: Sequence, choice: SpeedChoice | None) -> list[WorkerRow]:
    memory_counts = counts_of(memory_plan, slots)
    rows = []
    for i, slot in enumerate(slots):
        cost = costs[i]
        link = cost.link if cost is not None else None
        rows.append(
            WorkerRow(
                slot.name,
                slot.endpoint,
                slot.usable_bytes,
                slot.source,
                cost.speed.ms_per_gib if cost is not None else None,
                cost.speed.node_us if cost is not None else None,
                link.rtt_ms if link is not None else None,
                link.mb_per_s if link is not None else None,
                memory_counts[i],
                choice.predicted.counts[i] if choice is not None else None,
                (choice.reasons.get(slot.name, "") if choice is not None else "")
                or ("" if cost is not None else "not measured"),
            )
        )
    return rows


def plan(
    req: PlanRequest,
    cluster: Cluster,
    reporter: lifecycle.Reporter | None = None,
    toolchain: Toolchain | None = None,
) -> PlanReport:
    """Resolve, probe, plan by memory, (measure,) plan by speed, and compare: what `plan` prints."""
    reporter = reporter or lifecycle.Reporter()
    resolved = resolve_model(req.model, req.ollama_models)
    info = resolved.gguf or read_gguf(resolved.blob)
    toolchain = toolchain or find_toolchain()
    build = speed_cache.build_id(toolchain)
    ggml_type = speed.measure_type(info.file_type_name)
    offer = lifecycle.coordinator_offer(cluster, req.coordinator_memory_mib, req.coordinator_device)
    skip = cluster.skip_unhealthy if req.skip_unhealthy is None else req.skip_unhealthy
    probes, skipped = lifecycle.check_backends(cluster.backends, skip, reporter)
    local_devices = command.list_devices(toolchain) if offer is not None and offer.device != HOST_DEVICE else []
    slots = build_slots(probes, coordinator=offer, local_devices=local_devices)
    memory_plan = plan_placement(info, slots, req.n_ctx, resolved.ref)
    cache = speed_cache.load(req.cache_path, warn=reporter.warn)
    measured: list[str] = []
    if req.measure:
        measured, failed = _measure_rpc(cache, build, ggml_type, slots, req, reporter)
        for slot in slots:
            if slot.backend is None:
                threads = command.default_threads(memory_plan.rpc_endpoints, 1 if slot.on_host else 0)
                reporter.step(f"measuring the coordinator's {slot.name} through a temporary rpc-server")
                try:
                    measured.append(_measure_coordinator(cache, build, ggml_type, slot, toolchain, threads, req))
                except SollolError as exc:
                    failed.append(str(exc))
        cache.save()
        if failed:
            raise BackendError("measuring failed: " + "; ".join(failed) + " (the others' figures were cached)")
    totals = _totals(probes)
    costs, missing = slot_costs(slots, totals, cache, build, ggml_type)
    choice = None
    if not missing:
        choice = speed_split(info, slots, [c for c in costs if c is not None], req.n_ctx, memory_plan)
    used = "speed" if choice is not None and cluster.placement is Placement.SPEED else "memory"
    chosen = choice.plan if used == "speed" and choice is not None else memory_plan
    return PlanReport(
        model=resolved.ref,
        layers=info.block_count,
        file_type=info.file_type_name,
        measured_as=ggml_type,
        build=build,
        placement=cluster.placement,
        used=used,
        workers=_rows(slots, memory_plan, costs, choice),
        speed_ms=choice.predicted.ms_per_token if choice is not None else None,
        memory_ms=choice.memory.ms_per_token if choice is not None else None,
        left_out=[f"{s.name} ({s.endpoint}) {choice.reasons[s.name]}" for s in slots if s.name in choice.left_out]
        if choice is not None
        else [],
        unmeasured=[f"{s.name} ({s.endpoint})" for s in missing],
        measured=measured,
        skipped=[lo.describe() for lo in lifecycle.left_out(skipped)],
        notes=list(chosen.notes),
        rpc=chosen.rpc_endpoints,
        devices=chosen.devices,
        tensor_split=chosen.tensor_split,
    )


def _totals(probes: Sequence[tuple[Backend, ProbeResult]]) -> dict[tuple[str, int], int]:
    return {(b.endpoint, d.index): d.total for b, r in probes for d in r.devices}
