"""The models a bench run measures: Ollama refs, or synthetic models laid out in a temporary store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sollol_ops.bench.settings import BenchConfig
from sollol_ops.dev.synthetic import parse_synthetic, synthetic_store
from sollol_ops.errors import BenchError, SollolError
from sollol_ops.model.gguf_info import GGUFInfo, read_gguf
from sollol_ops.model.ollama import resolve_model

MIB = 1 << 20


@dataclass
class BenchModel:
    ref: str  # as given (synthetic:... for synthetic models)
    resolved_ref: str
    blob: Path
    info: GGUFInfo
    synthetic: bool

    @property
    def size_mib(self) -> float:
        return round(self.info.file_size / MIB, 1)

    def describe(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "synthetic": self.synthetic,
            "size_mib": self.size_mib,
            "layers": self.info.block_count,
            "n_embd": self.info.embedding_length,
            "file_type": self.info.file_type_name,
            "params": self.info.parameter_count,
        }


def tokenizer_source(ollama_models: str | None) -> Path:
    try:
        return resolve_model("smollm2:135m", ollama_models).blob
    except SollolError as exc:
        raise BenchError(
            f"synthetic models copy their tokenizer from smollm2:135m, which is missing ({exc}); run `make model`"
        ) from exc


def resolve_models(cfg: BenchConfig, store: Path) -> list[BenchModel]:
    specs = {m: parse_synthetic(m) for m in cfg.models}
    wanted = [s for s in specs.values() if s is not None]
    if wanted:
        synthetic_store(wanted, store, tokenizer_source(cfg.ollama_models))
    out = []
    for ref, spec in specs.items():
        r = resolve_model(spec.ref, store) if spec is not None else resolve_model(ref, cfg.ollama_models)
        out.append(BenchModel(ref, r.ref, r.blob, r.gguf or read_gguf(r.blob), spec is not None))
    return out
