"""The speed planner with made-up speeds and links (no binaries): slow workers get fewer layers or none, a worker
behind a slow link is left out when its hop costs more than it saves, every plan fits and is what llama.cpp will
do with its --tensor-split, and the split is the optimum of the cost model (checked against brute force). Also
the cache of measured speeds (hostile files are ignored with one warning) and the inventory's sollol_placement."""

from __future__ import annotations

import itertools
import json
import os
import random
from pathlib import Path

import pytest
from placementparts import GIB, model_info

from sollol_ops.cluster import speed_cache
from sollol_ops.cluster.inventory import Backend, Placement, cluster_from_inventory_data
from sollol_ops.cluster.link import LinkResult
from sollol_ops.cluster.placement import MIB, Slot, layer_counts, plan_for_split, plan_placement
from sollol_ops.cluster.rpc import Status
from sollol_ops.cluster.speed import ComputeSpeed, SpeedResult, measure_type
from sollol_ops.cluster.speed_cache import LinkFigures
from sollol_ops.cluster.speed_plan import CostModel, SlotCost, choose, counts_of, plan_from_counts, speed_split
from sollol_ops.cluster.toolchain import Toolchain
from sollol_ops.errors import InventoryError, PlacementError

N_CTX = 1024
FAST = ComputeSpeed("Q4_1", ns_per_byte=0.2, node_us=5.0, dispatch_ms=0.05)
SLOW = ComputeSpeed("Q4_1", ns_per_byte=0.8, node_us=20.0, dispatch_ms=0.2)  # 4x slower
LAN = LinkFigures(rtt_ms=0.2, mb_per_s=110)


def rpc_slot(i: int, usable_mib: int = 120) -> Slot:
    """An rpc-server device. 120 MiB holds 18 layers of the made-up model with its output, 28 without: two are
    needed for the whole model."""
    return Slot(Backend(f"w{i}", f"10.0.0.{i + 1}", 50052), 0, f"RPC{i}", usable_mib * MIB, "declared cap")


def host_slot(usable_mib: int) -> Slot:
    return Slot(None, 0, "CPU", usable_mib * MIB, "sollol_coordinator_memory_mib")


def fits(plan) -> bool:
    return all(s.fits for s in plan.shares)


def test_a_4x_slower_worker_is_left_out_when_the_others_hold_the_model() -> None:
    info, slots = model_info(), [rpc_slot(0), rpc_slot(1), rpc_slot(2)]
    memory = plan_placement(info, slots, N_CTX)
    choice = speed_split(info, slots, [SlotCost(FAST, LAN), SlotCost(FAST, LAN), SlotCost(SLOW, LAN)], N_CTX, memory)
    assert choice.predicted.counts[2] == 0 and counts_of(memory, slots)[2] > 0
    assert choice.left_out == ["RPC2"]
    assert choice.reasons["RPC2"].startswith("left out: 4.0x slower than RPC")
    assert "ms/token more than they save" in choice.reasons["RPC2"]
    assert choice.predicted.ms_per_token < choice.memory.ms_per_token
    assert fits(choice.plan) and "10.0.0.3:50052" not in choice.plan.rpc_endpoints
    assert any("split by measured speed" in n for n in choice.plan.notes)


def test_a_4x_slower_worker_that_is_needed_gets_fewer_layers() -> None:
    info, slots = model_info(), [rpc_slot(0), rpc_slot(1)]
    memory = plan_placement(info, slots, N_CTX)
    choice = speed_split(info, slots, [SlotCost(SLOW, LAN), SlotCost(FAST, LAN)], N_CTX, memory)
    by_memory = counts_of(memory, slots)
    assert 0 < choice.predicted.counts[0] < by_memory[0]
    assert choice.reasons["RPC0"].startswith("down-weighted: 4.0x slower than RPC1")
    assert fits(choice.plan) and choice.predicted.ms_per_token < choice.memory.ms_per_token


@pytest.mark.parametrize(("rtt_ms", "used"), [(20.0, False), (0.2, True)])
def test_a_worker_behind_a_slow_link_is_left_out_when_its_hop_costs_more(rtt_ms: float, used: bool) -> None:
    """RPC2 computes twice as fast as the others: behind a 20 ms round trip it is not worth its hop (the hop costs
    more than its compute saves), on the LAN it is."""
    faster = ComputeSpeed("Q4_1", ns_per_byte=0.1, node_us=2.5, dispatch_ms=0.05)
    info, slots = model_info(), [rpc_slot(0), rpc_slot(1), rpc_slot(2)]
    costs = [SlotCost(FAST, LAN), SlotCost(FAST, LAN), SlotCost(faster, LinkFigures(rtt_ms, 110))]
    choice = speed_split(info, slots, costs, N_CTX, plan_placement(info, slots, N_CTX))
    assert (choice.predicted.counts[2] > 0) is used
    if not used:
        assert choice.reasons["RPC2"].startswith("left out: its link (round trip 20.00 ms, 110 MB/s) would add")
    assert fits(choice.plan)


def _brute_force(model: CostModel, slots: list[Slot], info) -> float:
    n, best = info.block_count + 1, float("inf")
    for cuts in itertools.combinations_with_replacement(range(n + 1), len(slots) - 1):
        counts = [b - a for a, b in zip((0, *cuts), (*cuts, n), strict=True)]
        if slots[0].on_host and counts[0] == n:
            continue
        used = [(s, c) for s, c in zip(slots, counts, strict=True) if c]
        plan = plan_for_split(info, [s for s, _ in used], [float(c) for _, c in used], N_CTX)
        if fits(plan):
            best = min(best, model.predict(counts).ms_per_token)
    return best


@pytest.mark.parametrize("seed", range(8))
def test_the_split_is_the_cost_models_optimum(seed: int) -> None:
    """Every split of a 6-layer model over 3 slots (the coordinator's CPU first for odd seeds), random speeds,
    links and memory: the planner's prediction is the least of all that fit."""
    rnd = random.Random(seed)
    info = model_info(n_layer=6, layer_mib=8, embd_mib=12)
    slots = [host_slot(rnd.randint(60, 120))] if seed % 2 else []
    slots += [rpc_slot(i, rnd.randint(60, 120)) for i in range(3 - len(slots))]
    costs = [
        SlotCost(
            ComputeSpeed("Q4_1", rnd.uniform(0.1, 1.0), rnd.uniform(1, 30), rnd.uniform(0, 0.5)),
            None if s.backend is None else LinkFigures(rnd.uniform(0.05, 5), rnd.uniform(5, 1000)),
        )
        for s in slots
    ]
    model = CostModel(info, slots, costs, N_CTX)
    best = model.best()
    brute = _brute_force(model, slots, info)
    if best is None:
        assert brute == float("inf")
        return
    assert best.ms_per_token == pytest.approx(brute)
    assert fits(plan_from_counts(info, slots, best.counts, N_CTX))


@pytest.mark.parametrize("n_layer", [30, 61, 80, 127])
def test_a_split_of_layer_counts_is_what_llama_cpp_assigns(n_layer: int) -> None:
    rnd = random.Random(n_layer)
    info = model_info(n_layer=n_layer, layer_mib=0.5, embd_mib=1)
    for host in (False, True):
        slots = ([host_slot(8192)] if host else []) + [rpc_slot(i, 8192) for i in range(4)]
        for _ in range(50):
            cuts = sorted(rnd.randint(0, n_layer + 1) for _ in range(len(slots) - 1))
            counts = [b - a for a, b in zip((0, *cuts), (*cuts, n_layer + 1), strict=True)]
            if (host and counts[0] == n_layer + 1) or not any(counts[int(host) :]):
                continue
            plan = plan_from_counts(info, slots, counts, N_CTX)
            used = [s.slot for s in plan.shares]
            assert layer_counts(used, [s.split for s in plan.shares], n_layer) == [c for c in counts if c]


def test_a_split_that_does_not_fit_is_refused_with_the_numbers() -> None:
    info, slots = model_info(), [rpc_slot(0), rpc_slot(1)]
    with pytest.raises(PlacementError, match=r"does not fit: 10\.0\.0\.2:50052 \(RPC1\) needs [0-9,]+ of 120 MiB"):
        plan_from_counts(info, slots, [1, 30], N_CTX)
    with pytest.raises(PlacementError, match="must give the 31 layers"):
        plan_from_counts(info, slots, [1, 1], N_CTX)


def test_a_fast_worker_takes_every_layer_it_can_hold() -> None:
    """Decode runs the layers one after another: a faster device saves time on every layer it holds."""
    info, slots = model_info(), [rpc_slot(0, 4096), rpc_slot(1, 4096)]
    choice = speed_split(
        info, slots, [SlotCost(SLOW, LAN), SlotCost(FAST, LAN)], N_CTX, plan_placement(info, slots, N_CTX)
    )
    assert choice.predicted.counts == (0, 31)


# ------------------------------------------------------------------------------------------- the plan `up` runs


@pytest.fixture
def toolchain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Toolchain:
    """A toolchain in a roles/llama_cpp prefix (build id `b1`), and the cache in tmp_path."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bin_dir = tmp_path / "data/sollol-ops/llama.cpp/b1/bin"
    bin_dir.mkdir(parents=True)
    for name in ("llama-server", "ggml-rpc-server"):
        (bin_dir / name).write_text("")
    return Toolchain(bin_dir / "ggml-rpc-server", bin_dir / "llama-server", None)


def _cache_speeds(slots: list[Slot], speeds: list[ComputeSpeed], build: str = "b1") -> None:
    cache = speed_cache.load()
    for slot, speed in zip(slots, speeds, strict=True):
        assert slot.backend is not None
        endpoint = slot.backend.endpoint
        cache.record_speed(build, SpeedResult(endpoint, 0, Status.READY, "done", speed=speed, device_total=GIB))
        cache.record_link(LinkResult(endpoint, Status.READY, "done", rtt_ms=0.2, throughput_bps=880e6))
    cache.save()


def test_up_uses_the_speed_split_once_every_worker_is_measured(toolchain: Toolchain) -> None:
    info, slots = model_info(), [rpc_slot(0), rpc_slot(1), rpc_slot(2)]
    totals = {(s.backend.endpoint, 0): GIB for s in slots if s.backend}
    warnings: list[str] = []

    def plan(placement: Placement | None):
        return choose(plan_placement(info, slots, N_CTX), info, slots, totals, placement, toolchain, warnings.append)

    assert "no speed measured for RPC0, RPC1, RPC2" in plan(Placement.SPEED).notes[-1]
    _cache_speeds(slots[:2], [FAST, FAST])
    assert "no speed measured for RPC2 " in plan(Placement.SPEED).notes[-1]
    _cache_speeds(slots, [FAST, FAST, SLOW])
    chosen = plan(Placement.SPEED)
    assert chosen.notes[0].startswith("split by measured speed") and "10.0.0.3:50052" not in chosen.rpc_endpoints
    assert any(n.startswith("RPC2 left out: 4.0x slower") for n in chosen.notes)
    assert plan(Placement.MEMORY).notes[-1] == "split by memory (sollol_placement=memory)"
    assert plan(None).notes == ["split proportional to usable memory"]
    other_machine = {k: 2 * GIB for k in totals}  # another device behind the same address: not its figure
    memory = choose(plan_placement(info, slots, N_CTX), info, slots, other_machine, Placement.SPEED, toolchain)
    assert "no speed measured for RPC0, RPC1, RPC2" in memory.notes[-1]
    assert warnings == []


@pytest.mark.parametrize(
    "content",
    [
        b"not json {",
        b"[1, 2]",
        json.dumps({"format": 99}).encode(),
        json.dumps({"format": 1, "compute": {"k": {"ggml_type": "Q4_1", "ns_per_byte": "fast"}}}).encode(),
        json.dumps({"format": 1, "links": {"e": {"rtt_ms": 1, "mb_per_s": -5}}}).encode(),
        b'{"format": 1, "compute": {"k": {"ggml_type": "Q4_1", "ns_per_byte": NaN}}}',
        b"[" * 100_000 + b"]" * 100_000,
        b" " * (speed_cache.MAX_CACHE_BYTES + 1),
        json.dumps({"format": 1, "links": {str(i): {} for i in range(speed_cache.MAX_ENTRIES + 1)}}).encode(),
    ],
    ids=["garbage", "list", "format", "string", "negative", "nan", "deep", "huge", "entries"],
)
def test_a_hostile_cache_is_ignored_with_one_warning(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "speed.json"
    path.write_bytes(content)
    warnings: list[str] = []
    cache = speed_cache.load(path, warnings.append)
    assert cache.compute == {} and cache.links == {}
    assert len(warnings) == 1 and "ignoring the speed cache" in warnings[0] and "--measure" in warnings[0]


def test_a_cache_that_is_not_a_regular_file_is_ignored(tmp_path: Path) -> None:
    fifo, link, warnings = tmp_path / "fifo", tmp_path / "link", []
    os.mkfifo(fifo)  # opening it for reading must not block
    link.symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_text(json.dumps({"format": 1}))
    for path in (fifo, link, tmp_path):
        assert speed_cache.load(path, warnings.append).compute == {}
    assert len(warnings) == 3
    assert speed_cache.load(tmp_path / "absent.json", warnings.append).compute == {} and len(warnings) == 3


def test_the_cache_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "speed.json"
    cache = speed_cache.SpeedCache(path)
    cache.record_speed("b1", SpeedResult("h:1", 2, Status.READY, "done", speed=FAST, device_total=GIB))
    cache.record_link(LinkResult("h:1", Status.READY, "done", rtt_ms=0.5, throughput_bps=8e8))
    cache.save()
    again = speed_cache.load(path)
    assert again.speed("b1", "h:1", 2, "Q4_1", GIB) == FAST
    assert again.speed("b2", "h:1", 2, "Q4_1", GIB) is None  # another build
    assert again.speed("b1", "h:1", 2, "Q4_K", GIB) is None  # another weight type
    assert again.link("h:1") == LinkFigures(0.5, 100.0, again.links["h:1"].measured_at)


@pytest.mark.parametrize(
    ("name", "measured"), [("Q4_1", "Q4_1"), ("Q4_K_M", "Q4_K"), ("Q6_K", "Q6_K"), ("F16", "F16"), ("IQ2_XS", "Q4_K")]
)
def test_the_measured_weight_type(name: str, measured: str) -> None:
    assert measure_type(name) == measured


def _inventory(**all_vars: object) -> dict:
    return {"_meta": {"hostvars": {"w": {**all_vars}}}, "rpc_servers": {"hosts": ["w"]}}


def test_sollol_placement_in_the_inventory() -> None:
    assert cluster_from_inventory_data(_inventory(), Path("i")).placement is Placement.SPEED
    assert cluster_from_inventory_data(_inventory(sollol_placement="memory"), Path("i")).placement is Placement.MEMORY
    with pytest.raises(InventoryError, match="sollol_placement must be one of speed, memory, got 'fastest'"):
        cluster_from_inventory_data(_inventory(sollol_placement="fastest"), Path("i"))


def test_a_worker_left_out_of_the_middle_renames_the_devices_after_it() -> None:
    """Reproduces the benchmark's `invalid device: RPC2`: with w1 left out, --rpc lists w0 and w2, whose device
    llama.cpp names RPC1; the plan must say so (and counts_of still finds each slot)."""
    info, slots = model_info(), [rpc_slot(i, 4096) for i in range(3)]
    plan = plan_from_counts(info, slots, [20, 0, 11], N_CTX)
    assert plan.rpc_endpoints == ["10.0.0.1:50052", "10.0.0.3:50052"]
    assert plan.devices == ["RPC0", "RPC1"]
    assert counts_of(plan, slots) == [20, 0, 11]


def test_every_device_of_a_listed_server_counts_in_the_numbering() -> None:
    """rpc-server -d A,B exposes two devices: leaving out the first server shifts both of the second's."""
    two = Backend("w1", "10.0.0.2", 50052)
    slots = [rpc_slot(0, 4096), Slot(two, 0, "RPC1", 4096 * MIB, "x"), Slot(two, 1, "RPC2", 4096 * MIB, "x")]
    plan = plan_from_counts(model_info(), slots, [0, 16, 15], N_CTX)
    assert plan.devices == ["RPC0", "RPC1"]
    plan = plan_from_counts(model_info(), slots, [10, 0, 21], N_CTX)
    assert plan.devices == ["RPC0", "RPC2"]
