"""The pack `stage --via-ansible` writes for each worker: the tensors' exact bytes, wherever the temporary
directory is (it is rarely on the Ollama store's filesystem: /tmp is a tmpfs on Debian 13 and in podman's systemd
containers, where Molecule found the defect)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sollol_ops.model.gguf_header import read_tensor_table
from sollol_ops.model.ollama import resolve_model
from sollol_ops.stage.shares import WorkerShare
from sollol_ops.stage.staging import write_pack

pytestmark = [pytest.mark.model]

SHM = Path("/dev/shm")


@pytest.mark.parametrize("where", ["in the temporary directory", "on another filesystem"])
def test_pack_holds_the_tensors_bytes(smollm2_store: Path, tmp_path: Path, where: str) -> None:
    """copy_file_range fails with EXDEV across filesystems (store on disk, temporary directory on a tmpfs): the
    pack must still be written, byte for byte (it was `internal error: OSError: [Errno 18]`)."""
    blob = resolve_model("smollm2:135m", smollm2_store).blob
    table = read_tensor_table(blob)
    share = WorkerShare("10.0.0.1:50052", 0, [0], True, table.tensors)
    big = share.cached  # the tensors over the staging threshold: SmolLM2's token_embd.weight, 30 MB
    assert big, "the test needs a tensor over the staging threshold"
    if where == "in the temporary directory":
        directory = tmp_path / "pack"  # on the model's filesystem where /tmp is not a tmpfs: copy_file_range
    else:
        directory = Path(os.environ.get("SOLLOL_TEST_OTHER_FS", SHM)) / f"sollol-pack-{os.getpid()}"
        assert os.stat(directory.parent).st_dev != os.stat(blob).st_dev, (
            f"{directory.parent} is on the model's filesystem: set SOLLOL_TEST_OTHER_FS to a directory on another one"
        )
    try:
        pack, manifest = write_pack(share, table, directory)
        pieces = json.loads(manifest.read_text())["pieces"]
        with open(blob, "rb") as src, open(pack, "rb") as got:
            for t, piece in zip(big, pieces, strict=True):
                src.seek(table.file_offset(t))
                got.seek(piece["offset"])
                assert piece["size"] == t.n_bytes and got.read(t.n_bytes) == src.read(t.n_bytes), t.name
        assert pack.stat().st_size == sum(t.n_bytes for t in big)
    finally:
        for f in directory.glob("*"):
            f.unlink()
        if directory.exists():
            directory.rmdir()
