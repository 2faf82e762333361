"""How many parallel slots (llama-server `-np`) a placement leaves room for, each with its own context.

llama-server of the pinned llama.cpp (0c1e57098) splits `--ctx-size` across its slots: without a unified KV
cache (its default when -np is given), each slot gets n_ctx / n_parallel (src/llama-context.cpp: n_ctx_seq),
and the KV cache holds n_ctx cells in all. sollol-ops' `--ctx-size` is the context of one slot, what each
request gets: llama-server is started with `--ctx-size CTX x SLOTS --parallel SLOTS` and the placement is
planned for the KV cache of CTX x SLOTS. With `-np` left to sollol-ops (AUTO), the slots are sized from the
memory the placement of one slot leaves on every device: as many as fit, at most MAX_AUTO_SLOTS (llama-server's
own `-np -1` is 4). An explicit `-np N` wins, and is refused when it does not fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sollol_ops.cluster.placement import Plan, Slot, plan_for_split, plan_placement
from sollol_ops.errors import PlacementError
from sollol_ops.model.gguf_info import GGUFInfo

AUTO = 0  # StartOptions.parallel: sized from the memory left after placement
MAX_AUTO_SLOTS = 4


def room_for_slots(plan: Plan) -> int:
    """Slots of plan.n_ctx each that the memory left on every device holds: 1 (the planned one) plus the KV
    caches of plan.n_ctx that fit on each device beside what it already needs (the fewest over the devices)."""
    extra = None
    for share in plan.shares:
        if share.kv_bytes <= 0:
            continue  # no layers here: its KV cache does not grow
        left = share.slot.usable_bytes - share.need_bytes
        fits = max(0, left) // share.kv_bytes
        extra = fits if extra is None else min(extra, fits)
    return 1 + (extra if extra is not None else MAX_AUTO_SLOTS)


def fit_parallel(
    info: GGUFInfo,
    slots: Sequence[Slot],
    n_ctx: int,
    model: str,
    wanted: int = AUTO,
    choose: Callable[[Plan], Plan] = lambda plan: plan,
) -> tuple[Plan, int]:
    """The placement for `wanted` slots of `n_ctx` each (an explicit -np), or with AUTO the most slots up to
    MAX_AUTO_SLOTS that fit; the plan (sized for n_ctx x slots) and the slot count. PlacementError when
    even one slot (or the explicit count) does not fit. `choose` turns the memory plan into the one that runs
    (the speed planner's split, speed_plan.choose): with AUTO the slots are sized from the memory *its* split
    leaves, and kept to that split, so extra slots never bring back a worker the planner left out."""
    if wanted != AUTO:
        try:
            plan = plan_placement(info, slots, n_ctx * wanted, model)
        except PlacementError as exc:
            raise PlacementError(f"{exc} (-np {wanted}: {wanted} slots of ctx {n_ctx} each)") from exc
        return choose(plan), wanted
    memory = plan_placement(info, slots, n_ctx, model)
    plan = choose(memory)
    by_speed = plan is not memory  # choose() returns the memory plan itself when it keeps it
    count = min(MAX_AUTO_SLOTS, room_for_slots(plan))
    while count > 1:  # the split shifts with the KV cache: the plan itself must fit
        try:
            if by_speed:  # the same split, a bigger KV cache
                bigger = plan_for_split(info, [s.slot for s in plan.shares], plan.tensor_split, n_ctx * count,
                                        plan.notes)  # fmt: skip
                if not all(s.fits for s in bigger.shares):
                    raise PlacementError("does not fit")
            else:
                bigger = plan_placement(info, slots, n_ctx * count, model)
                bigger.notes = [*plan.notes, *(n for n in bigger.notes if n not in plan.notes)]  # choose()'s notes
        except PlacementError:
            count -= 1
            continue
        bigger.notes.append(f"{count} parallel slots of ctx {n_ctx} (sized from the memory left after placement)")
        return bigger, count
    plan.notes.append(f"1 slot of ctx {n_ctx} (no memory left for a second one's KV cache)")
    return plan, 1
