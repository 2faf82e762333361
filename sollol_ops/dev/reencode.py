"""A bigger model with the same vocabulary and the same answers: a GGUF re-encoded to F32 or F16.

The benchmark of speculative decoding needs a target that costs clearly more per token than its draft and
shares its tokenizer. The SmolLM2 test model (Q4_1, 98 MB) dequantized to F32 (~540 MB) is that target: the same
weights up to quantization, so a greedy draft from the Q4_1 original agrees with it on most tokens, and each
of its tokens reads ~5x the bytes. Every metadata key is kept (tokenizer, chat template) but the file type.

Run as `python -m sollol_ops.dev.reencode SRC DST --type f32|f16`; the benchmark calls `reencode()`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sollol_ops.errors import GGUFError, SollolError

FILE_TYPES = {"f32": 0, "f16": 1}  # llama_ftype: LLAMA_FTYPE_ALL_F32, LLAMA_FTYPE_MOSTLY_F16
_SKIPPED_KEYS = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture", "general.file_type"}


def _field_value(field: object) -> tuple[object, object, object | None]:
    """(value, value type, array element type) of a GGUFReader field, as GGUFWriter.add_key_value takes it."""
    import gguf

    types = field.types  # type: ignore[attr-defined]
    main = types[0]
    if main == gguf.GGUFValueType.ARRAY:
        sub = types[-1]
        if sub == gguf.GGUFValueType.ARRAY:
            raise GGUFError(f"metadata key {field.name}: nested arrays are not re-encoded")  # type: ignore[attr-defined]
        return list(field.contents()), main, sub  # type: ignore[attr-defined]
    return field.contents(), main, None  # type: ignore[attr-defined]


def reencode(src: Path, dst: Path, to: str = "f32") -> Path:
    """Write `src` with every tensor dequantized to `to` ("f32" or "f16") into `dst` (atomically). 1-D tensors
    (norms) stay F32, as llama.cpp's own converter writes them."""
    import gguf

    if to not in FILE_TYPES:
        raise GGUFError(f"cannot re-encode to {to!r}: use one of {', '.join(FILE_TYPES)}")
    try:
        reader = gguf.GGUFReader(src)
    except (OSError, ValueError) as exc:
        raise GGUFError(f"{src}: not a readable GGUF file ({exc})") from exc
    arch_field = reader.get_field("general.architecture")
    if arch_field is None:
        raise GGUFError(f"{src}: no general.architecture key")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, str(arch_field.contents()))
    try:
        for name, field in reader.fields.items():
            if name in _SKIPPED_KEYS or name.startswith("GGUF."):
                continue
            value, vtype, sub = _field_value(field)
            writer.add_key_value(name, value, vtype, sub_type=sub)  # type: ignore[arg-type]
        writer.add_file_type(FILE_TYPES[to])
        for tensor in reader.tensors:
            data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            shape = [int(d) for d in reversed(tensor.shape)]  # GGUF lists ne0 first, numpy the outer dim
            data = np.ascontiguousarray(data, dtype=np.float32).reshape(shape)
            if to == "f16" and data.ndim > 1:
                data = data.astype(np.float16)
            writer.add_tensor(tensor.name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(dst)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return dst


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--type", choices=sorted(FILE_TYPES), default="f32")
    args = parser.parse_args(argv)
    try:
        reencode(args.src, args.dst, args.type)
    except SollolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(args.dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
