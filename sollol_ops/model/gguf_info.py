"""Facts about a GGUF file (architecture, layers, sizes) derived from its header (sollol_ops.model.gguf_header)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sollol_ops.errors import GGUFError
from sollol_ops.model.gguf_header import Header, LlamaFileType, TensorEntry, read_checked

MAX_BLOCKS = 1 << 16  # block_count and the N of blk.N.* tensor names
MAX_U32 = (1 << 32) - 1  # architecture sizes (context, embedding, heads) are uint32 in llama.cpp
_BLOCK_TENSOR = re.compile(r"^blk\.([0-9]+)\.")


@dataclass
class GGUFInfo:
    path: Path
    architecture: str
    name: str | None
    block_count: int
    context_length: int
    embedding_length: int
    head_count: int
    head_count_kv: int
    file_type: int
    file_type_name: str
    tensor_bytes: int
    layer_bytes: list[int]
    other_bytes: int
    file_size: int
    key_length: int | None = None
    value_length: int | None = None
    size_label: str | None = None
    parameter_count: int = 0
    tensor_count: int = 0
    version: int = 3
    # Non-block tensors that placement needs: the input embedding always stays on the coordinator's CPU;
    # the output head goes to the device of the last layer (a tied model reuses token_embd there).
    token_embd_bytes: int = 0
    output_bytes: int = 0
    vocab_size: int = 0

    def per_layer_bytes_avg(self) -> int:
        """Mean bytes of one repeating block (0 when the model has none)."""
        return sum(self.layer_bytes) // len(self.layer_bytes) if self.layer_bytes else 0

    def head_dims(self) -> tuple[int, int]:
        """(K, V) width of one attention head."""
        default = self.embedding_length // self.head_count if self.head_count else 0
        return (self.key_length or default, self.value_length or default)

    def kv_cache_bytes(self, n_ctx: int, bytes_per_elem: int = 2) -> int:
        """K and V cache for `n_ctx` tokens over all blocks (f16 elements by default)."""
        k_dim, v_dim = self.head_dims()
        return self.block_count * n_ctx * self.head_count_kv * (k_dim + v_dim) * bytes_per_elem

    def estimate_total_bytes(self, n_ctx: int, bytes_per_elem: int = 2) -> int:
        """Weights plus KV cache; compute buffers are not included."""
        return self.tensor_bytes + self.kv_cache_bytes(n_ctx, bytes_per_elem)


def _int_key(
    metadata: Mapping[str, Any], key: str, path: Path, required: bool = True, high: int = MAX_U32
) -> int | None:
    value = metadata.get(key)
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        if min(value) < 0:
            raise GGUFError(f"{path}: metadata key {key} has a negative entry ({min(value)})")
        value = max(value)  # per-layer values (e.g. head counts): the largest bounds memory
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= high:
            raise GGUFError(f"{path}: metadata key {key} = {value} is out of range 0..{high}")
        return value
    if value is None and not required:
        return None
    detail = "missing" if value is None else f"not an integer ({value!r})"
    raise GGUFError(f"{path}: metadata key {key} is {detail}")


def _layer_accounting(tensors: list[TensorEntry], block_count: int, path: Path) -> tuple[list[int], int]:
    layers = [0] * block_count  # block_count <= MAX_BLOCKS
    other = 0
    for t in tensors:
        match = _BLOCK_TENSOR.match(t.name)
        if match is None:
            other += t.n_bytes
            continue
        digits = match.group(1)
        if len(digits) > len(str(MAX_BLOCKS)) or int(digits) >= MAX_BLOCKS:
            raise GGUFError(f"{path}: tensor {t.name!r} has layer index {digits}, over the limit of {MAX_BLOCKS - 1}")
        index = int(digits)
        if index >= len(layers):
            layers.extend([0] * (index + 1 - len(layers)))
        layers[index] += t.n_bytes
    return layers, other


def _dominant_type(tensors: list[TensorEntry]) -> str:
    totals: dict[str, int] = {}
    for t in tensors:
        if len(t.shape) >= 2:
            totals[t.type_name] = totals.get(t.type_name, 0) + t.n_bytes
    return max(totals, key=lambda k: totals[k]) if totals else "unknown"


def file_type_label(file_type: int, tensors: list[TensorEntry] | None = None) -> str:
    """'Q4_1' for LlamaFileType.MOSTLY_Q4_1, 'F32' for ALL_F32; guessed from tensors when unknown."""
    try:
        ftype = LlamaFileType(file_type)
    except ValueError:
        return f"unknown({file_type})"
    if ftype == LlamaFileType.GUESSED:
        return _dominant_type(tensors or [])
    return ftype.name.removeprefix("MOSTLY_").removeprefix("ALL_")


def _build_info(path: Path, header: Header, file_size: int) -> GGUFInfo:
    md = header.metadata
    arch = md.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise GGUFError(f"{path}: metadata key general.architecture is missing")
    block_count = _int_key(md, f"{arch}.block_count", path, high=MAX_BLOCKS) or 0
    head_count = _int_key(md, f"{arch}.attention.head_count", path) or 0
    head_count_kv = _int_key(md, f"{arch}.attention.head_count_kv", path, required=False)
    raw_ftype = _int_key(md, "general.file_type", path, required=False)
    file_type = int(LlamaFileType.GUESSED) if raw_ftype is None else raw_ftype
    layers, other = _layer_accounting(header.tensors, block_count, path)
    name = md.get("general.name")
    size_label = md.get("general.size_label")
    return GGUFInfo(
        path=path,
        architecture=arch,
        name=name if isinstance(name, str) else None,
        block_count=block_count,
        context_length=_int_key(md, f"{arch}.context_length", path) or 0,
        embedding_length=_int_key(md, f"{arch}.embedding_length", path) or 0,
        head_count=head_count,
        head_count_kv=head_count if head_count_kv is None else head_count_kv,
        file_type=file_type,
        file_type_name=file_type_label(file_type, header.tensors),
        tensor_bytes=sum(t.n_bytes for t in header.tensors),
        layer_bytes=layers,
        other_bytes=other,
        file_size=file_size,
        key_length=_int_key(md, f"{arch}.attention.key_length", path, required=False),
        value_length=_int_key(md, f"{arch}.attention.value_length", path, required=False),
        size_label=size_label if isinstance(size_label, str) else None,
        parameter_count=sum(t.n_elements for t in header.tensors),
        tensor_count=len(header.tensors),
        version=header.version,
        token_embd_bytes=_named_bytes(header.tensors, "token_embd.weight"),
        output_bytes=_named_bytes(header.tensors, "output.weight") or _named_bytes(header.tensors, "token_embd.weight"),
        vocab_size=_vocab_size(header.tensors),
    )


def _named_bytes(tensors: list[TensorEntry], name: str) -> int:
    return next((t.n_bytes for t in tensors if t.name == name), 0)


def _vocab_size(tensors: list[TensorEntry]) -> int:
    embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
    return embd.shape[-1] if embd is not None and embd.shape else 0


def read_gguf(path: str | Path) -> GGUFInfo:
    """Read the header of the GGUF at `path`; every failure is a one-line GGUFError naming the file."""
    return read_checked(Path(path), _build_info)
