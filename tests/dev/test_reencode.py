"""The benchmark's bigger target: the SmolLM2 Q4_1 test model re-encoded to F32 keeps its tokenizer, its
tensors (names, shapes, dequantized values) and every metadata key but the file type."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from fixtures_gguf import model_blob, write_tiny_gguf

from sollol_ops.dev.reencode import reencode
from sollol_ops.errors import GGUFError
from sollol_ops.model.gguf_info import read_gguf


@pytest.mark.model
def test_smollm2_re_encoded_to_f32_keeps_tokenizer_tensors_and_metadata(smollm2_store: Path, tmp_path: Path) -> None:
    src = model_blob(smollm2_store, "smollm2:135m")
    dst = reencode(src, tmp_path / "f32.gguf", "f32")
    before, after = gguf.GGUFReader(src), gguf.GGUFReader(dst)
    assert read_gguf(dst).file_type_name == "F32"
    assert {t.tensor_type for t in after.tensors} == {gguf.GGMLQuantizationType.F32}
    keys = set(before.fields) - {"general.file_type"}
    assert keys <= set(after.fields)
    tokens = "tokenizer.ggml.tokens"
    assert list(before.fields[tokens].contents()) == list(after.fields[tokens].contents())
    assert before.fields["tokenizer.chat_template"].contents() == after.fields["tokenizer.chat_template"].contents()
    by_name = {t.name: t for t in after.tensors}
    assert [t.name for t in before.tensors] == list(by_name)
    for t in before.tensors[:6]:
        out = by_name[t.name]
        assert list(out.shape) == list(t.shape)
        np.testing.assert_array_equal(
            gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1), np.asarray(out.data).reshape(-1)
        )
    assert dst.stat().st_size > 4 * src.stat().st_size


def test_a_file_that_is_not_gguf_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(GGUFError, match="not a readable GGUF"):
        reencode(bad, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_an_unknown_target_type_is_refused(tmp_path: Path) -> None:
    src = write_tiny_gguf(tmp_path / "tiny.gguf")
    with pytest.raises(GGUFError, match="use one of f32, f16"):
        reencode(src, tmp_path / "out.gguf", "q2")


def test_f16_keeps_one_dimensional_tensors_in_f32(tmp_path: Path) -> None:
    src = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = gguf.GGUFReader(reencode(src, tmp_path / "f16.gguf", "f16"))
    types = {t.name: t.tensor_type for t in out.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
