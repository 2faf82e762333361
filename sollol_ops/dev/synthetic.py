"""Synthetic llama models for benchmarks: random weights with real 1B-class shapes, a real tokenizer.

`synthetic:<layers>x<n_embd>[-f16|-q8_0]` names one; n_ff = 2.75 n_embd, 64-wide heads, 8 query heads per
KV head, SmolLM2's tokenizer and chat template copied from the smollm2:135m GGUF. Written once into
$XDG_CACHE_HOME/sollol-ops/bench/ and laid out in a temporary Ollama store, never the user's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sollol_ops.errors import BenchError
from sollol_ops.paths import cache_dir

SYNTHETIC_PREFIX = "synthetic:"
SYNTHETIC_VERSION = "1"


@dataclass(frozen=True)
class SyntheticSpec:
    layers: int
    n_embd: int
    ftype: str = "q8_0"  # "f16" | "q8_0"

    @property
    def n_ff(self) -> int:
        return round(self.n_embd * 2.75 / 256) * 256

    @property
    def heads(self) -> int:
        return max(1, self.n_embd // 64)

    @property
    def heads_kv(self) -> int:
        return max(1, self.heads // 8)

    @property
    def ref(self) -> str:
        return f"synthetic-{self.layers}x{self.n_embd}:{self.ftype.replace('_', '-')}"

    @property
    def label(self) -> str:
        return f"{SYNTHETIC_PREFIX}{self.layers}x{self.n_embd}-{self.ftype}"


def parse_synthetic(text: str) -> SyntheticSpec | None:
    """`synthetic:<layers>x<n_embd>[-f16|-q8_0]` -> spec; None for an ordinary model ref."""
    if not text.startswith(SYNTHETIC_PREFIX):
        return None
    m = re.fullmatch(r"(\d+)x(\d+)(?:-(f16|q8_0))?", text[len(SYNTHETIC_PREFIX) :].lower())
    if not m:
        raise BenchError(f"{text!r}: synthetic models are written synthetic:<layers>x<n_embd>[-f16|-q8_0]")
    spec = SyntheticSpec(int(m.group(1)), int(m.group(2)), m.group(3) or "q8_0")
    if not (1 <= spec.layers <= 64 and 64 <= spec.n_embd <= 8192 and spec.n_embd % 64 == 0):
        raise BenchError(f"{text!r}: layers must be 1..64 and n_embd a multiple of 64 in 64..8192")
    return spec


def read_tokenizer(path: Path) -> list[tuple[str, Any, Any, Any]]:
    """The tokenizer.* keys of a GGUF as (key, value, type, sub_type) for GGUFWriter.add_key_value."""
    from gguf import GGUFReader, GGUFValueType

    out = []
    for key, fld in GGUFReader(path).fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = fld.types[0]
        sub = fld.types[1] if vtype == GGUFValueType.ARRAY and len(fld.types) > 1 else None
        out.append((key, fld.contents(), vtype, sub))
    return out


def _q8_0_bytes(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Random Q8_0 data: per 32-value block an f16 scale then 32 int8 quants (34 bytes)."""
    blocks = cols // 32
    data = np.empty((rows, blocks, 34), dtype=np.uint8)
    data[:, :, :2] = np.frombuffer(np.float16(0.0008).tobytes(), dtype=np.uint8)
    data[:, :, 2:] = rng.integers(-127, 128, size=(rows, blocks, 32), dtype=np.int8).view(np.uint8)
    return data.reshape(rows, blocks * 34)


def write_synthetic_gguf(
    path: Path, spec: SyntheticSpec, tokenizer: Sequence[tuple[str, Any, Any, Any]], vocab: int | None = None
) -> Path:
    """A llama GGUF with random weights of the spec's shapes (output tied to token_embd)."""
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

    vocab = vocab or next((len(v) for k, v, _t, _s in tokenizer if k == "tokenizer.ggml.tokens"), 0)
    if vocab <= 0:
        raise BenchError("the tokenizer source has no tokenizer.ggml.tokens")
    rng = np.random.default_rng(spec.layers * 100003 + spec.n_embd)
    q8 = spec.ftype == "q8_0"
    e, ff, head_dim = spec.n_embd, spec.n_ff, spec.n_embd // spec.heads
    kv = spec.heads_kv * head_dim

    def matrix(rows: int, cols: int) -> tuple[np.ndarray, Any]:
        if q8:
            return _q8_0_bytes(rng, rows, cols), GGMLQuantizationType.Q8_0
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16), None

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = GGUFWriter(tmp, "llama")
    writer.add_name(f"sollol-ops synthetic {spec.layers}x{spec.n_embd} {spec.ftype}")
    writer.add_block_count(spec.layers)
    writer.add_context_length(4096)
    writer.add_embedding_length(e)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(spec.heads)
    writer.add_head_count_kv(spec.heads_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(LlamaFileType.MOSTLY_Q8_0 if q8 else LlamaFileType.MOSTLY_F16)
    for key, value, vtype, sub in tokenizer:
        writer.add_key_value(key, value, vtype, sub_type=sub)

    def add(name: str, pair: tuple[np.ndarray, Any]) -> None:
        data, raw = pair
        writer.add_tensor(name, data, raw_dtype=raw)

    ones = np.ones(e, dtype=np.float32)
    add("token_embd.weight", matrix(vocab, e))
    for i in range(spec.layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        add(f"blk.{i}.attn_q.weight", matrix(e, e))
        add(f"blk.{i}.attn_k.weight", matrix(kv, e))
        add(f"blk.{i}.attn_v.weight", matrix(kv, e))
        add(f"blk.{i}.attn_output.weight", matrix(e, e))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        add(f"blk.{i}.ffn_gate.weight", matrix(ff, e))
        add(f"blk.{i}.ffn_up.weight", matrix(ff, e))
        add(f"blk.{i}.ffn_down.weight", matrix(e, ff))
    writer.add_tensor("output_norm.weight", ones)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    tmp.replace(path)
    return path


def synthetic_store(specs: Sequence[SyntheticSpec], store: Path, tokenizer_source: Path) -> None:
    """Write missing synthetic GGUFs into the bench cache, then lay them out in the temporary `store`."""
    from sollol_ops.dev.devstore import CHATML_TEMPLATE, write_store

    cache = cache_dir() / "bench"
    tokenizer: list[tuple[str, Any, Any, Any]] | None = None
    for spec in specs:
        gguf = cache / f"synthetic-v{SYNTHETIC_VERSION}-{spec.layers}x{spec.n_embd}-{spec.ftype}.gguf"
        if not gguf.is_file():
            tokenizer = tokenizer or read_tokenizer(tokenizer_source)
            write_synthetic_gguf(gguf, spec, tokenizer)
        write_store(store, spec.ref, gguf, template=CHATML_TEMPLATE, params={"stop": ["<|im_end|>"]}, link="hardlink")
