"""Fuzz the GGUF header reader with a few hundred mutations of the real SmolLM2 header (issue 9).

The store under test holds a sparse copy of the real model: its 1.8 MB header, then zeros up to the
real size (98 MB, a few MB on disk), laid out by `devstore` like `ollama pull` would. Mutations (see
tests/support/gguf_fuzz_driver.py) set counts, lengths, types and values to edge values, rename tensors and
flip bytes, deterministically from SEED. Every run must end in exit 0 (with sane facts), 4, 5 or 7,
at most one line on stderr and no traceback or internal error, in bounded time under 1 GiB of address
space. Most mutations go through the CLI entry point in one driver process; a sample goes through
the real `sollol-ops` command, one process each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import gguf_fuzz_driver
import pytest
from fixtures_gguf import model_blob, snapshot
from gguf_fuzz_driver import MODELS_EVERY, facts, header_fields, mutation
from helpers import GIB, run_bounded, run_cli_bounded

from sollol_ops.dev.devstore import lay_out_store
from sollol_ops.model.gguf_info import MAX_BLOCKS

pytestmark = [pytest.mark.model, pytest.mark.slow]

SEED = 9
COUNT = 300
CLI_SAMPLE = range(0, COUNT, 25)  # 12 mutations through the real command
REF = "fuzz:135m"
ALLOWED = {0, 4, 5, 7}
DRIVER = Path(gguf_fuzz_driver.__file__)  # tests/support
BOUND_S = 20.0


class FuzzStore:
    def __init__(self, root: Path, blob: Path, header: bytes) -> None:
        self.root = root
        self.blob = blob
        self.header = header
        self.size = blob.stat().st_size
        self.fields, _ = header_fields(header)

    def write(self, data: bytes) -> None:
        with self.blob.open("r+b") as fh:
            fh.write(data)


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory: pytest.TempPathFactory, smollm2_store: Path) -> FuzzStore:
    real = model_blob(smollm2_store, "smollm2:135m")
    with real.open("rb") as fh:
        head = fh.read(4 << 20)
    _, end = header_fields(head)
    work = tmp_path_factory.mktemp("gguf-fuzz")
    sparse = work / "smollm2-sparse.gguf"
    with sparse.open("wb") as fh:
        fh.write(head[:end])
        fh.truncate(real.stat().st_size)
    written = lay_out_store(work / "store", REF, sparse, link="hardlink")
    sparse.unlink()
    return FuzzStore(work / "store", written.blob, head[:end])


def _env(tmp_path: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), "OLLAMA_MODELS": "", "XDG_CACHE_HOME": str(tmp_path / "cache")}


def problem(record: dict[str, Any], file_size: int) -> str | None:
    """What is wrong with one run's outcome, or None."""
    code, err = record["code"], record["stderr"]
    if code not in ALLOWED:
        return f"exit {code}"
    if "Traceback" in err or "internal error" in err:
        return "traceback or internal error"
    if record["seconds"] > BOUND_S:
        return f"took {record['seconds']} s"
    if code != 0:
        return None if len(err.strip().splitlines()) == 1 else f"{len(err.strip().splitlines())} lines on stderr"
    if err.strip():
        return "exit 0 with something on stderr"
    if record["command"] == "resolve":
        facts = record["facts"]
        if not (0 <= facts["block_count"] <= MAX_BLOCKS and facts["layers"] <= MAX_BLOCKS):
            return f"exit 0 with {facts['block_count']} blocks"
        if not 0 <= facts["tensor_bytes"] <= file_size or not facts["architecture"]:
            return "exit 0 with facts the file cannot hold"
    return None


def _report(bad: list[tuple[dict[str, Any], str]]) -> str:
    return "\n".join(
        f"#{r['index']} {r['command']} [{r['mutation']}]: {why}; stderr={r['stderr'][:300]!r}" for r, why in bad
    )


def test_header_mutations_through_the_cli_entry(fuzz_store: FuzzStore, smollm2_store: Path, tmp_path: Path) -> None:
    before = snapshot(smollm2_store / "manifests")
    records_file = tmp_path / "records.jsonl"
    argv = [sys.executable, str(DRIVER), str(fuzz_store.root), REF, str(fuzz_store.blob), str(SEED), "0", str(COUNT)]
    proc = run_bounded([*argv, str(records_file)], env=_env(tmp_path), memory=GIB, timeout=300)
    records = [json.loads(line) for line in records_file.read_text().splitlines()] if records_file.exists() else []
    done = records[-1]["index"] if records else -1
    assert proc.returncode == 0, f"driver died (exit {proc.returncode}) after mutation {done}: {proc.stderr[-2000:]}"
    assert len(records) == COUNT + len(range(0, COUNT, MODELS_EVERY))

    bad = [(r, why) for r in records if (why := problem(r, fuzz_store.size)) is not None]
    assert not bad, f"{len(bad)} bad runs:\n{_report(bad[:15])}"
    codes = [r["code"] for r in records if r["command"] == "resolve"]
    assert codes.count(5) > COUNT // 4 and codes.count(0) > COUNT // 20, f"a fuzz that barely varies: {codes}"
    assert fuzz_store.blob.read_bytes()[: len(fuzz_store.header)] == fuzz_store.header, "header not restored"
    assert snapshot(smollm2_store / "manifests") == before


def test_header_mutations_through_the_real_command(fuzz_store: FuzzStore, tmp_path: Path) -> None:
    bad = []
    try:
        for i in CLI_SAMPLE:
            mutated, what = mutation(fuzz_store.header, fuzz_store.fields, fuzz_store.size, SEED, i)
            fuzz_store.write(mutated)
            commands = [["resolve", REF, "--json"]] + ([["models", "--json"]] if i % 100 == 0 else [])
            for command in commands:
                proc = run_cli_bounded(*command, "--ollama-models", str(fuzz_store.root), env=_env(tmp_path))
                record = {"index": i, "mutation": what, "command": command[0], "code": proc.returncode,
                          "stderr": proc.stderr, "facts": facts(command[0], proc.returncode, proc.stdout),
                          "seconds": 0}  # fmt: skip
                if (why := problem(record, fuzz_store.size)) is not None:
                    bad.append((record, why))
    finally:
        fuzz_store.write(fuzz_store.header)
    assert not bad, _report(bad)
