"""What each rpc-server is sent when a model loads as `up` places it: its share of the layers and tensors.

A share holds its layers' repeating blocks ``blk.<i>.*`` and, for the share holding the output layer,
``output.weight`` (or ``token_embd.weight`` for a model with tied embeddings: llama.cpp loads a duplicate of it
there). Only tensors larger than llama.cpp's HASH_THRESHOLD (10 MiB) go through the rpc-server's cache.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sollol_ops.cluster.placement import Plan
from sollol_ops.model.gguf_header import TensorEntry, TensorTable
from sollol_ops.stage.worker import HASH_THRESHOLD, Piece

_BLOCK = re.compile(r"^blk\.(\d+)\.")


@dataclass
class WorkerShare:
    """The uploads one rpc-server receives when the model loads (its devices' layers, maybe the output)."""

    endpoint: str
    device: int
    layers: list[int]
    output: bool
    tensors: list[TensorEntry]

    @property
    def cached(self) -> list[TensorEntry]:
        """The tensors that go through its cache (larger than HASH_THRESHOLD)."""
        return [t for t in self.tensors if t.n_bytes > HASH_THRESHOLD]

    def pieces(self, table: TensorTable) -> list[Piece]:
        return [Piece(t.name, table.file_offset(t), t.n_bytes) for t in self.cached]


def output_tensor_names(table: TensorTable) -> list[str]:
    names = {t.name for t in table.tensors}
    head = "output.weight" if "output.weight" in names else "token_embd.weight"
    return [n for n in (head, "output_norm.weight") if n in names]


def worker_shares(plan: Plan, table: TensorTable) -> list[WorkerShare]:
    """Per rpc-server (in --rpc order), the tensors llama.cpp will upload to it for this plan."""
    by_layer: dict[int, list[TensorEntry]] = {}
    for t in table.tensors:
        m = _BLOCK.match(t.name)
        if m:
            by_layer.setdefault(int(m.group(1)), []).append(t)
    out: dict[str, WorkerShare] = {}
    layer = 0
    for share in plan.shares:
        endpoint = share.slot.backend.endpoint
        ws = out.setdefault(endpoint, WorkerShare(endpoint, share.slot.device_index, [], False, []))
        layers = list(range(layer, layer + share.layers))
        layer += share.layers
        ws.layers += layers
        for i in layers:
            ws.tensors += by_layer.get(i, [])
        if share.has_output:
            ws.output = True
            wanted = set(output_tensor_names(table))
            ws.tensors += [t for t in table.tensors if t.name in wanted]
    return list(out.values())


def describe_plan(shares: Sequence[WorkerShare]) -> list[dict[str, object]]:
    return [
        {
            "endpoint": s.endpoint,
            "layers": f"{s.layers[0]}-{s.layers[-1]}" if s.layers else "-",
            "output": s.output,
            "tensors": len(s.tensors),
            "cached_tensors": len(s.cached),
            "cached_bytes": sum(t.n_bytes for t in s.cached),
            "always_sent_bytes": sum(t.n_bytes for t in s.tensors if t.n_bytes <= HASH_THRESHOLD),
        }
        for s in shares
    ]
