"""Parallel slots (-np) from the memory a placement leaves: each slot gets --ctx-size of context, llama-server
the total (it splits --ctx-size across its slots)."""

from __future__ import annotations

import pytest
from placementparts import GIB, model_info

from sollol_ops.cluster.inventory import Backend
from sollol_ops.cluster.parallel import AUTO, MAX_AUTO_SLOTS, fit_parallel, room_for_slots
from sollol_ops.cluster.placement import MIB, Slot, plan_placement
from sollol_ops.errors import PlacementError

CTX = 4096


def slots(*usable: int) -> list[Slot]:
    return [
        Slot(Backend(f"w{i}", f"10.0.0.{i + 1}", 50052), 0, f"RPC{i}", u, "declared cap") for i, u in enumerate(usable)
    ]


def one_slot_need() -> tuple[int, int]:
    """What each of two equal devices needs for one slot of CTX, and the KV cache of one slot there."""
    plan = plan_placement(model_info(), slots(GIB, GIB), CTX)
    worst = max(plan.shares, key=lambda s: s.need_bytes)
    return worst.need_bytes, worst.kv_bytes


def test_plenty_of_memory_gives_the_most_auto_slots_and_the_total_context() -> None:
    plan, n = fit_parallel(model_info(), slots(4 * GIB, 4 * GIB), CTX, "m", AUTO)
    assert n == MAX_AUTO_SLOTS and plan.n_ctx == CTX * MAX_AUTO_SLOTS
    assert plan.kv_per_layer == model_info().kv_cache_bytes(CTX * n) // 30
    assert any(f"{n} parallel slots of ctx {CTX}" in note for note in plan.notes)


def test_slots_are_what_the_memory_left_holds() -> None:
    need, kv = one_slot_need()
    room = need + int(1.5 * kv)  # one more KV cache fits on each device, not two
    plan, n = fit_parallel(model_info(), slots(room, room), CTX, "m", AUTO)
    assert n == 2 and plan.n_ctx == 2 * CTX and all(s.fits for s in plan.shares)
    assert room_for_slots(plan_placement(model_info(), slots(room, room), CTX)) == 2


def test_no_room_for_a_second_slot_keeps_one() -> None:
    need, kv = one_slot_need()
    plan, n = fit_parallel(model_info(), slots(need + kv // 2, need + kv // 2), CTX, "m", AUTO)
    assert n == 1 and plan.n_ctx == CTX and any("1 slot" in note for note in plan.notes)


def test_an_explicit_np_wins_and_is_refused_when_it_does_not_fit() -> None:
    plan, n = fit_parallel(model_info(), slots(4 * GIB, 4 * GIB), CTX, "m", 7)
    assert n == 7 and plan.n_ctx == 7 * CTX  # beyond the auto cap: asked for
    need, kv = one_slot_need()
    with pytest.raises(PlacementError, match=r"-np 3: 3 slots of ctx 4096 each"):
        fit_parallel(model_info(), slots(need + kv, need + kv), CTX, "m", 3)


def test_one_slot_that_does_not_fit_is_the_placement_refusal() -> None:
    with pytest.raises(PlacementError, match="does not fit"):
        fit_parallel(model_info(), slots(64 * MIB), CTX, "m", AUTO)
