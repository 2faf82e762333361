"""GGUF header mutations, and a driver that runs many of them through the CLI's entry point in one process.

tests/model/test_gguf_fuzz.py imports the mutation half (so it can replay any mutation through the real CLI)
and runs this file as a script under a memory limit:

    python tests/support/gguf_fuzz_driver.py STORE REF BLOB SEED FIRST COUNT RECORDS

Mutation i (seeded by SEED and i, so each one can be replayed alone) is written over the header of
BLOB in place (its size never changes), then `sollol-ops resolve REF --json` runs through
`sollol_ops.cli.main.main` exactly as the console script does, with stdout and stderr captured; so does
`sollol-ops models --json` for every fourth mutation. One JSON record per run is appended to RECORDS as
it finishes: a run that kills the process shows as the mutation after the last record.

The header map (`header_fields`) is this file's own walk of the GGUF layout, not sollol_ops's parser.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STRING, ARRAY = 8, 9
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
MODELS_EVERY = 4


@dataclass(frozen=True)
class Field:
    """One field of the header: what it is, where, how wide, its value, and the key it belongs to."""

    kind: str
    offset: int
    size: int
    value: int
    key: str = ""


def header_fields(data: bytes) -> tuple[list[Field], int]:
    """Every count, length, type and scalar of a little-endian GGUF v3 header, and where the header ends."""
    fields: list[Field] = []
    pos = 0

    def take(kind: str, fmt: str, key: str = "") -> int:
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, data, pos)
        size = struct.calcsize(fmt)
        fields.append(Field(kind, pos, size, value, key))
        pos += size
        return value

    def text(kind: str, key: str = "") -> str:
        nonlocal pos
        length = take(kind, "Q", key)
        pos += length
        return data[pos - length : pos].decode("utf-8", "replace")

    assert data[:4] == b"GGUF" and struct.unpack_from("<I", data, 4)[0] == 3, "not a little-endian GGUF v3"
    pos = 8
    n_tensors = take("tensor_count", "Q")
    n_kv = take("kv_count", "Q")
    for _ in range(n_kv):
        key = text("key_length")
        vtype = take("value_type", "I", key)
        if vtype == STRING:
            text("string_length", key)
        elif vtype == ARRAY:
            item = take("array_type", "I", key)
            count = take("array_count", "Q", key)
            if item == STRING:
                for _ in range(count):
                    text("array_string_length", key)
            else:
                pos += count * SCALAR_SIZES[item]
        else:
            size = SCALAR_SIZES[vtype]
            take("scalar", {1: "B", 2: "H", 4: "I", 8: "Q"}[size], key)
    for _ in range(n_tensors):
        start = pos + 8
        name = text("tensor_name_length")
        fields.append(Field("tensor_name", start, len(name.encode()), 0, name))
        n_dims = take("n_dims", "I", name)
        for _ in range(n_dims):
            take("dim", "Q", name)
        take("tensor_type", "I", name)
        take("tensor_offset", "Q", name)
    return fields, pos + (-pos % 32)


INTERESTING = (0, 1, 2, 3, 7, 8, 31, 32, 63, 64, 255, 256, 4095, 4096, 65535, 65536, 1 << 20, 2**31 - 1, 2**31,
               2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1)  # fmt: skip


def _set(data: bytearray, field: Field, value: int) -> None:
    fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[field.size]
    struct.pack_into("<" + fmt, data, field.offset, value % (1 << (8 * field.size)))


def _field_value(field: Field, rng: random.Random, file_size: int) -> int:
    choice = rng.randrange(5)
    if choice == 0:
        return field.value + rng.choice((-1, 1, 2, 8, 1000))
    if choice == 1:
        return rng.choice((file_size, file_size - field.offset, file_size * 2, field.value * 2))
    if choice == 2:
        return rng.getrandbits(8 * field.size)
    return rng.choice(INTERESTING)


def mutate(header: bytes, fields: list[Field], file_size: int, rng: random.Random) -> tuple[bytes, str]:
    """One deterministic mutation of `header` (same length): a field set to an edge value, a new
    value or tensor type, a renamed tensor, or flipped bytes. Returns the bytes and what changed."""
    data = bytearray(header)
    by_kind: dict[str, list[Field]] = {}
    for f in fields:
        by_kind.setdefault(f.kind, []).append(f)
    how = rng.choices(("field", "block_count", "type", "rename", "bytes"), weights=(6, 1, 2, 1, 3))[0]
    if how == "field":
        kind = rng.choice(sorted(k for k in by_kind if k != "tensor_name"))
        field = rng.choice(by_kind[kind])
        value = _field_value(field, rng, file_size)
        _set(data, field, value)
        return bytes(data), f"{kind} of {field.key or '-'} at {field.offset}: {field.value} -> {value}"
    if how == "block_count":
        field = next(f for f in by_kind["scalar"] if f.key.endswith(".block_count"))
        value = rng.choice((0, 1, 29, 31, 65536, 65537, 2**31 - 1, 2**32 - 1))
        _set(data, field, value)
        return bytes(data), f"block_count: {field.value} -> {value}"
    if how == "type":
        field = rng.choice(by_kind["value_type"] + by_kind["array_type"] + by_kind["tensor_type"])
        value = rng.choice((*range(16), 30, 39, 255, 2**31))
        _set(data, field, value)
        return bytes(data), f"{field.kind} of {field.key} at {field.offset}: {field.value} -> {value}"
    if how == "rename":
        field = rng.choice(by_kind["tensor_name"])
        old = field.key
        if rng.random() < 0.5 and old.startswith("blk."):
            index = old.split(".")[1]
            new = old.replace(f"blk.{index}.", "blk." + "9" * len(index) + ".", 1)
        else:
            new = rng.choice([t.key for t in by_kind["tensor_name"] if len(t.key) == len(old)])  # a duplicate
            if rng.random() < 0.3:
                new = "\xff" * len(old)  # not UTF-8 once encoded as latin-1
        data[field.offset : field.offset + field.size] = new.encode("latin-1")[: field.size]
        return bytes(data), f"tensor name {old!r} -> {new!r}"
    n_flips = rng.randint(1, 8)
    spots = []
    for _ in range(n_flips):
        anchor = rng.choice(fields)
        spot = min(len(data) - 1, anchor.offset + rng.randrange(-2, 10))
        data[max(spot, 0)] = rng.randrange(256)
        spots.append(spot)
    return bytes(data), f"bytes at {sorted(spots)}"


def mutation(header: bytes, fields: list[Field], file_size: int, seed: int, index: int) -> tuple[bytes, str]:
    return mutate(header, fields, file_size, random.Random(f"{seed}/{index}"))


def run_entry(args: list[str]) -> tuple[int, str, str]:
    """`sollol-ops ARGS` through the console script's entry point: (exit code, stdout, stderr)."""
    from sollol_ops.cli.main import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli_main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def facts(command: str, code: int, stdout: str) -> dict[str, Any] | None:
    """What a successful `resolve --json` says about the GGUF, in a few numbers (else None)."""
    if command != "resolve" or code != 0:
        return None
    info = json.loads(stdout)["gguf"]
    return {
        "architecture": info["architecture"],
        "block_count": info["block_count"],
        "layers": len(info["layer_bytes"]),
        "tensor_bytes": info["tensor_bytes"],
    }


def main(argv: list[str]) -> int:
    store, ref, blob_name, seed, first, count, records = argv
    blob = Path(blob_name)
    file_size = blob.stat().st_size
    with blob.open("rb") as fh:
        head = fh.read(4 << 20)
    fields, end = header_fields(head)
    header = head[:end]
    fd = os.open(blob, os.O_WRONLY)
    try:
        with open(records, "a", encoding="utf-8") as log:
            for i in range(int(first), int(first) + int(count)):
                mutated, what = mutation(header, fields, file_size, int(seed), i)
                os.pwrite(fd, mutated, 0)
                commands = [["resolve", ref, "--json"]] + ([["models", "--json"]] if i % MODELS_EVERY == 0 else [])
                for command in commands:
                    start = time.monotonic()
                    code, out, err = run_entry([*command, "--ollama-models", store])
                    seconds = round(time.monotonic() - start, 3)
                    record = {"index": i, "mutation": what, "command": command[0], "code": code, "stderr": err,
                              "facts": facts(command[0], code, out), "seconds": seconds}  # fmt: skip
                    log.write(json.dumps(record) + "\n")
                    log.flush()
    finally:
        os.pwrite(fd, header, 0)
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
