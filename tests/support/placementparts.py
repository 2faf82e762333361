"""What the placement tests share: a GGUFInfo of a made-up model with even layers (no file behind it), and
the refusal a plan for it that does not fit raises."""

from __future__ import annotations

from pathlib import Path

import pytest

from sollol_ops.cluster.placement import MIB, Slot, plan_placement
from sollol_ops.errors import PlacementError
from sollol_ops.model.gguf_info import GGUFInfo

GIB = 1 << 30


def model_info(n_layer: int = 30, layer_mib: float = 2.0, embd_mib: float = 28.0) -> GGUFInfo:
    """A SmolLM2-shaped model of n_layer layers of layer_mib each, with tied embeddings of embd_mib."""
    return GGUFInfo(
        path=Path("x.gguf"), architecture="llama", name=None, block_count=n_layer, context_length=8192,
        embedding_length=576, head_count=9, head_count_kv=3, file_type=3, file_type_name="Q4_1",
        tensor_bytes=int((n_layer * layer_mib + embd_mib) * MIB), layer_bytes=[int(layer_mib * MIB)] * n_layer,
        other_bytes=int(embd_mib * MIB), file_size=0, token_embd_bytes=int(embd_mib * MIB),
        output_bytes=int(embd_mib * MIB),
    )  # fmt: skip


def refusal(slots: list[Slot], n_ctx: int, model: str = "big:1b") -> str:
    """The one-line PlacementError that plan_placement raises for a made-up model that does not fit `slots`."""
    with pytest.raises(PlacementError) as err:
        plan_placement(model_info(), slots, n_ctx=n_ctx, model=model)
    return str(err.value)
