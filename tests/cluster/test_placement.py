"""Placement: llama.cpp's layer rule, usable memory per device kind, refusals with numbers."""

from __future__ import annotations

import pytest
from placementparts import GIB, model_info, refusal
from rpcdouble import RpcDouble

from sollol_ops.cluster import rpc
from sollol_ops.cluster.inventory import Backend
from sollol_ops.cluster.placement import MIB, assign_layers, build_slots, plan_placement
from sollol_ops.serve.server_log import parse_distribution


@pytest.mark.parametrize(
    ("splits", "n_layer", "expected"),
    [
        ([1, 1], 30, [16, 15]),  # observed with real llama-server: 16 blocks / 14 blocks + output
        ([1, 1, 1], 30, [11, 10, 10]),
        ([3, 1], 30, [24, 7]),
        ([1], 30, [31]),
        ([1, 0, 1], 30, [16, 0, 15]),
    ],
)
def test_assign_layers_follows_llama_cpp(splits: list[float], n_layer: int, expected: list[int]) -> None:
    assert assign_layers(splits, n_layer) == expected


def _probe(devices: list[tuple[int, int]], endpoint: str = "10.0.0.1:50052") -> rpc.ProbeResult:
    return rpc.ProbeResult(
        endpoint, rpc.Status.READY, "7.0.0", [rpc.DeviceMemory(i, f, t) for i, (f, t) in enumerate(devices)]
    )


def test_usable_memory_per_device_kind() -> None:
    cpu_remote = Backend("a", "10.0.0.1", 50052)
    cpu_capped = Backend("b", "10.0.0.2", 50052, memory_mib=4096)
    gpu = Backend("c", "10.0.0.3", 50052, backend="cuda")
    local = Backend("d", "127.0.0.1", 50052)
    slots = build_slots(
        [
            (cpu_remote, _probe([(16 * GIB, 16 * GIB)])),
            (cpu_capped, _probe([(16 * GIB, 16 * GIB)])),
            (gpu, _probe([(10 * GIB, 12 * GIB), (20 * GIB, 24 * GIB)])),
            (local, _probe([(24 * GIB, 24 * GIB)])),
        ],
        local_available=8 * GIB,
    )
    assert [s.name for s in slots] == ["RPC0", "RPC1", "RPC2", "RPC3", "RPC4"]
    assert slots[0].usable_bytes == 12 * GIB and slots[0].source == "75% of reported RAM"
    assert slots[1].usable_bytes == 4 * GIB and slots[1].source == "declared cap"
    assert slots[2].usable_bytes == int(10 * GIB * 0.95) and slots[3].usable_bytes == int(20 * GIB * 0.95)
    assert slots[4].usable_bytes == 8 * GIB and "MemAvailable" in slots[4].source


def test_split_follows_memory_and_predicts_bytes() -> None:
    big, small = Backend("big", "10.0.0.1", 1, memory_mib=3000), Backend("small", "10.0.0.2", 1, memory_mib=1000)
    slots = build_slots([(big, _probe([(GIB, GIB)] * 1)), (small, _probe([(GIB, GIB)]))])
    # declared caps above what is reported are capped at the reported free memory
    assert [s.usable_bytes for s in slots] == [GIB, 1000 * MIB]
    slots = build_slots([(big, _probe([(8 * GIB, 8 * GIB)])), (small, _probe([(8 * GIB, 8 * GIB)]))])
    plan = plan_placement(model_info(), slots, n_ctx=2048)
    assert plan.tensor_split == [0.75, 0.25]
    assert [s.layers for s in plan.shares] == [24, 6]
    assert plan.shares[-1].has_output and not plan.shares[0].has_output
    assert plan.shares[0].weight_bytes == 24 * 2 * MIB
    assert plan.shares[1].weight_bytes == 6 * 2 * MIB + 28 * MIB


def test_declared_weights_override_memory() -> None:
    a = Backend("a", "10.0.0.1", 1, weight=1.0)
    b = Backend("b", "10.0.0.2", 1, weight=2.0)
    slots = build_slots([(a, _probe([(8 * GIB, 8 * GIB)])), (b, _probe([(8 * GIB, 8 * GIB)]))])
    plan = plan_placement(model_info(), slots, n_ctx=512)
    assert plan.tensor_split == pytest.approx([0.3333, 0.6667], abs=1e-3)


def test_output_layer_overflow_shifts_share_away() -> None:
    """Equal memory, but the last device also holds the 28 MiB output head: the split must move."""
    a = Backend("a", "10.0.0.1", 1, memory_mib=110)
    b = Backend("b", "10.0.0.2", 1, memory_mib=110)
    slots = build_slots([(a, _probe([(GIB, GIB)])), (b, _probe([(GIB, GIB)]))])
    plan = plan_placement(model_info(n_layer=30, layer_mib=1.0), slots, n_ctx=256)
    assert all(s.fits for s in plan.shares)
    assert plan.shares[0].layers > plan.shares[1].layers


def test_refusal_carries_the_numbers() -> None:
    a = Backend("a", "10.0.0.1", 1, memory_mib=50)
    slots = build_slots([(a, _probe([(GIB, GIB)]))])
    text = refusal(slots, n_ctx=4096)
    assert "big:1b does not fit" in text and "ctx 4096" in text and "backends offer 50 MiB" in text
    assert "10.0.0.1:1 needs" in text and "declared cap" in text


def test_gpu_double_devices_become_separate_slots() -> None:
    """Two GPUs behind one rpc-server (a test double: no GPU here) speak the real wire format."""
    with RpcDouble(devices=[(6 * GIB, 8 * GIB), (2 * GIB, 8 * GIB)]) as double:
        result = rpc.probe(double.endpoint)
    host, port = rpc.split_endpoint(double.endpoint)
    slots = build_slots([(Backend("gpu", host, port, backend="cuda"), result)])
    plan = plan_placement(model_info(), slots, n_ctx=1024)
    assert plan.devices == ["RPC0", "RPC1"]
    assert plan.tensor_split == pytest.approx([0.75, 0.25], abs=1e-3)
    assert plan.rpc_endpoints == [double.endpoint]


LOG = """\
0.00.356.440 I load_tensors: offloaded 31/31 layers to GPU
0.00.356.450 I load_tensors:   CPU_Mapped model buffer size =    28.69 MiB
0.00.356.452 I load_tensors: RPC0[127.0.0.1:51001] model buffer size =    33.82 MiB
0.00.356.453 I load_tensors: RPC0[127.0.0.1:51002] model buffer size =    58.28 MiB
0.00.583.928 I llama_kv_cache: RPC0[127.0.0.1:51001] KV buffer size =    24.00 MiB
0.00.611.442 I llama_kv_cache: RPC0[127.0.0.1:51002] KV buffer size =    21.00 MiB
0.00.634.864 I sched_reserve: RPC0[127.0.0.1:51001] compute buffer size =    24.91 MiB
0.00.634.868 I sched_reserve: RPC0[127.0.0.1:51002] compute buffer size =    24.91 MiB
0.00.634.869 I sched_reserve:        CPU compute buffer size =    13.67 MiB
"""


def test_parse_distribution_from_a_real_log_excerpt() -> None:
    dist = parse_distribution(LOG, kv_per_layer=int(1.5 * MIB))
    rpc_rows = {d.name: d for d in dist.rpc()}
    assert rpc_rows["127.0.0.1:51001"].layers == 16 and rpc_rows["127.0.0.1:51002"].layers == 14
    assert rpc_rows["127.0.0.1:51002"].model_mib == pytest.approx(58.28)
    cpu = next(d for d in dist.devices if not d.is_rpc)
    assert cpu.model_mib == pytest.approx(28.69) and cpu.compute_mib == pytest.approx(13.67)
    assert dist.offloaded == (31, 31)
