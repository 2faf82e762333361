"""The GGUF header reader: key/values and the tensor table of a GGUF file, parsed with bounds checks.

The header is parsed here with `struct` over a read-only memory map, using the `gguf` package's
constants (value types, tensor types and their block sizes, file types). `gguf.GGUFReader` reads the
same facts but builds a numpy view per tokenizer string: about 3 s for a 135M model, where this
parser skips the token arrays and takes a few tens of milliseconds. Tensor data is never read.

Every count and length in the header is bounded before it sizes anything: by what the rest of the
file can hold (each item takes at least a few bytes) and by limits no real model comes near, the
same ones llama.cpp's own loader enforces where it has them (keys, tensor names, dimensions). A
violation is a one-line GGUFError naming the field and the file, in bounded time and memory.
The facts derived from a header (layers, sizes, file type) are sollol_ops.model.gguf_info.
"""

from __future__ import annotations

import importlib.util
import mmap
import os
import stat
import struct
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO, TypeVar

from sollol_ops.errors import GGUFError


def _load_gguf_constants() -> ModuleType:
    """The gguf package's `constants` module without running the package's __init__, which imports numpy
    and its reader/writer (0.3-0.4 s at every command start); constants.py needs only the standard
    library. Falls back to the normal import when the package is laid out differently."""
    name = "gguf.constants"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("gguf")
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / "constants.py" if locations else None
    if path is None or not path.is_file():
        import gguf.constants

        return gguf.constants
    module_spec = importlib.util.spec_from_file_location("_sollol_gguf_constants", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


_constants = _load_gguf_constants()
GGML_QUANT_SIZES = _constants.GGML_QUANT_SIZES
GGUF_DEFAULT_ALIGNMENT = _constants.GGUF_DEFAULT_ALIGNMENT
GGMLQuantizationType = _constants.GGMLQuantizationType
GGUFValueType = _constants.GGUFValueType
LlamaFileType = _constants.LlamaFileType

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 8
MAX_STORED_ARRAY = 4096  # small integer arrays (per-layer head counts) are kept; bigger ones skipped
MAX_KEPT_STRING = 1 << 20  # longer string values (an embedded tokenizer.json) are skipped, not kept
# Limits on header counts and lengths (real models: tens of keys, a few thousand tensors, < 200 blocks,
# vocabularies < 300k). llama.cpp rejects tensor names of GGML_MAX_NAME (64) bytes or more.
MAX_KEYS = 1 << 16
MAX_KEY_BYTES = (1 << 16) - 1  # the GGUF spec's limit
MAX_TENSORS = 1 << 16
MAX_TENSOR_NAME_BYTES = 63
MAX_ARRAY_ITEMS = 1 << 22  # string arrays are walked item by item: this bounds the time
MAX_DIM = (1 << 63) - 1  # dimensions and element counts are int64 in ggml
# The fewest bytes one key/value pair (8-byte length, >= 1-byte key, 4-byte type, >= 1-byte value)
# and one tensor info (8-byte name length, 4-byte n_dims, 4-byte type, 8-byte offset) can take.
MIN_KV_BYTES = 14
MIN_TENSOR_INFO_BYTES = 24

_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
    GGUFValueType.BOOL: "?",
}
# What a malformed header can still raise past the bounds checks; all become GGUFError.
_PARSE_ERRORS = (ValueError, IndexError, KeyError, OverflowError, RecursionError, struct.error, MemoryError)


class _Corrupt(Exception):
    """Internal: the header cannot be parsed; becomes a GGUFError naming the file."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    type_name: str
    shape: tuple[int, ...]
    n_elements: int
    n_bytes: int
    offset: int  # relative to the start of the data section


@dataclass(frozen=True)
class StringArray:
    """Where a string array the header skips (a tokenizer's tokens) lies: its first item's file offset."""

    offset: int
    count: int


@dataclass(frozen=True)
class Header:
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorEntry]
    data_offset: int
    string_arrays: dict[str, StringArray] = field(default_factory=dict)  # metadata key -> where (value None)


class _Cursor:
    """Bounds-checked reads from a buffer; any overrun is a truncated header."""

    def __init__(self, buf: mmap.mmap | bytes, order: str) -> None:
        self.buf = buf
        self.order = order
        self.pos = 0
        self.string_arrays: dict[str, StringArray] = {}

    def unpack(self, fmt: str) -> Any:
        st = struct.Struct(self.order + fmt)
        end = self.pos + st.size
        if end > len(self.buf):
            raise _Corrupt(f"header ends early at offset {self.pos}")
        (value,) = st.unpack_from(self.buf, self.pos)
        self.pos = end
        return value

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def skip(self, n_bytes: int, what: str = "") -> None:
        if n_bytes < 0 or n_bytes > self.remaining:
            where = f"{what}: " if what else ""
            raise _Corrupt(f"{where}{n_bytes} bytes at offset {self.pos} run past the end of the file")
        self.pos += n_bytes

    def _text(self, length: int, what: str) -> str:
        start = self.pos
        self.skip(length, f"{what} (a string of {length} bytes)")
        try:
            return self.buf[start : self.pos].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Corrupt(f"{what} at offset {start} is not UTF-8") from exc

    def string(self, what: str, keep_limit: int) -> str | None:
        """A length-prefixed UTF-8 string; None (skipped, not decoded) when longer than `keep_limit`."""
        length = self.unpack("Q")
        if length > keep_limit:
            self.skip(length, f"{what} (a string of {length} bytes)")
            return None
        return self._text(length, what)

    def name(self, what: str, limit: int) -> str:
        """A key or tensor name of at most `limit` bytes, checked before anything is read."""
        length = self.unpack("Q")
        if length > limit:
            raise _Corrupt(f"{what} is {length} bytes long (the limit is {limit})")
        return self._text(length, what)


def _value_type(raw: int, where: int, key: str) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError as exc:
        raise _Corrupt(f"metadata key {key}: unknown value type {raw} at offset {where}") from exc


def _skip_strings(cur: _Cursor, count: int, key: str) -> None:
    """Skip `count` length-prefixed strings without decoding them (token lists: tens of thousands)."""
    if count > MAX_ARRAY_ITEMS:
        raise _Corrupt(f"metadata key {key}: array of {count} items is over the limit of {MAX_ARRAY_ITEMS}")
    if count * 8 > cur.remaining:
        raise _Corrupt(f"metadata key {key}: array of {count} items is more than the {cur.remaining} bytes left hold")
    length = struct.Struct(cur.order + "Q")
    buf, end, pos = cur.buf, len(cur.buf), cur.pos
    for i in range(count):
        if pos + 8 > end:
            raise _Corrupt(f"metadata key {key}: item {i} of {count} runs past the end of the file")
        (n,) = length.unpack_from(buf, pos)
        pos += 8 + n
        if pos > end:
            raise _Corrupt(f"metadata key {key}: item {i} of {count} ({n} bytes) runs past the end of the file")
    cur.pos = pos


def _read_array(cur: _Cursor, key: str) -> Any:
    item_type = _value_type(cur.unpack("I"), cur.pos, key)
    count = cur.unpack("Q")
    fmt = _SCALAR_FORMATS.get(item_type)
    if fmt is not None:
        size = struct.calcsize(fmt)
        start = cur.pos
        cur.skip(count * size, f"metadata key {key} (an array of {count} items)")
        if count <= MAX_STORED_ARRAY and item_type != GGUFValueType.BOOL:
            return list(struct.unpack_from(f"{cur.order}{count}{fmt}", cur.buf, start))
        return None
    if item_type == GGUFValueType.STRING:
        start = cur.pos
        _skip_strings(cur, count, key)
        cur.string_arrays[key] = StringArray(start, count)
        return None
    raise _Corrupt(f"metadata key {key} is an array of arrays (llama.cpp rejects those)")


def _read_value(cur: _Cursor, vtype: GGUFValueType, key: str) -> Any:
    if vtype == GGUFValueType.STRING:
        return cur.string(f"metadata key {key}", keep_limit=MAX_KEPT_STRING)
    if vtype == GGUFValueType.ARRAY:
        return _read_array(cur, key)
    fmt = _SCALAR_FORMATS.get(vtype)
    if fmt is None:
        raise _Corrupt(f"metadata key {key}: unhandled value type {vtype.name} at offset {cur.pos}")
    return cur.unpack(fmt)


def _read_metadata(cur: _Cursor, kv_count: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for i in range(kv_count):
        key = cur.name(f"key #{i}", MAX_KEY_BYTES)
        if not key:
            raise _Corrupt(f"key #{i} is empty")
        if key in metadata:
            raise _Corrupt(f"duplicate metadata key {key} (key #{i})")
        vtype = _value_type(cur.unpack("I"), cur.pos - 4, key)
        metadata[key] = _read_value(cur, vtype, key)
    return metadata


def _tensor_type(raw: int, name: str) -> GGMLQuantizationType:
    try:
        return GGMLQuantizationType(raw)
    except ValueError as exc:
        raise _Corrupt(f"tensor {name!r} has unknown type {raw}") from exc


def _read_tensor(cur: _Cursor, index: int) -> TensorEntry:
    name = cur.name(f"tensor #{index} name", MAX_TENSOR_NAME_BYTES)
    n_dims = cur.unpack("I")
    if n_dims > MAX_DIMS:
        raise _Corrupt(f"tensor {name!r} has {n_dims} dimensions (the limit is {MAX_DIMS})")
    shape = tuple(cur.unpack("Q") for _ in range(n_dims))
    ttype = _tensor_type(cur.unpack("I"), name)
    offset = cur.unpack("Q")
    n_elements = 1
    for dim in shape:
        if dim > MAX_DIM:
            raise _Corrupt(f"tensor {name!r} has a dimension of {dim} (over int64)")
        n_elements *= dim
    if n_elements > MAX_DIM:
        raise _Corrupt(f"tensor {name!r} has {n_elements} elements (over int64)")
    if offset > MAX_DIM:
        raise _Corrupt(f"tensor {name!r} has data offset {offset} (over int64)")
    block_size, type_size = GGML_QUANT_SIZES[ttype]
    if n_elements % block_size:
        raise _Corrupt(f"tensor {name!r} has {n_elements} elements, not a multiple of {block_size}")
    n_bytes = n_elements // block_size * type_size
    return TensorEntry(name, ttype.name, shape, n_elements, n_bytes, offset)


def _byte_order(buf: mmap.mmap | bytes) -> str:
    (version,) = struct.unpack_from("<I", buf, 4)
    return ">" if version & 0xFFFF == 0 else "<"


def _alignment(metadata: Mapping[str, Any]) -> int:
    align = metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise _Corrupt(f"general.alignment {align!r} is not a power of two")
    return align


def _check_count(field: str, count: int, limit: int, min_bytes: int, remaining: int) -> None:
    if count > limit:
        raise _Corrupt(f"header {field} {count} is over the limit of {limit}")
    if count * min_bytes > remaining:
        raise _Corrupt(
            f"header {field} {count} is more than the file can hold ({min_bytes}+ bytes each, {remaining} bytes left)"
        )


def _parse_header(buf: mmap.mmap | bytes) -> Header:
    cur = _Cursor(buf, _byte_order(buf))
    cur.skip(4)
    version = cur.unpack("I")
    if version not in SUPPORTED_VERSIONS:
        raise _Corrupt(f"GGUF version {version} is not supported (only {SUPPORTED_VERSIONS})")
    tensor_count = cur.unpack("Q")
    kv_count = cur.unpack("Q")
    _check_count("tensor count", tensor_count, MAX_TENSORS, MIN_TENSOR_INFO_BYTES, cur.remaining)
    _check_count("key count", kv_count, MAX_KEYS, MIN_KV_BYTES, cur.remaining)
    metadata = _read_metadata(cur, kv_count)
    _check_count("tensor count", tensor_count, MAX_TENSORS, MIN_TENSOR_INFO_BYTES, cur.remaining)
    tensors: list[TensorEntry] = []
    names: set[str] = set()
    for i in range(tensor_count):
        tensor = _read_tensor(cur, i)
        if tensor.name in names:
            raise _Corrupt(f"duplicate tensor {tensor.name!r} (tensor #{i})")
        names.add(tensor.name)
        tensors.append(tensor)
    align = _alignment(metadata)
    data_offset = -(-cur.pos // align) * align
    return Header(version, metadata, tensors, data_offset, cur.string_arrays)


def _check_data_fits(header: Header, file_size: int) -> None:
    for t in header.tensors:
        end = header.data_offset + t.offset + t.n_bytes
        if end > file_size:
            raise _Corrupt(f"tensor {t.name!r} ends at byte {end} but the file has {file_size} bytes")


def _open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading; only a regular file (O_NONBLOCK: a FIFO must not wait for a writer)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise GGUFError(f"cannot read {path}: not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    fh = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        fh.close()
        raise GGUFError(f"cannot read {path}: not a regular file")
    return fh


def _parse_file(path: Path) -> tuple[Header, int]:
    with _open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 8:
            head = fh.read(8)
            if head[:4] != MAGIC:
                raise GGUFError(f"{path} is not a GGUF file (magic {head[:4]!r})")
            raise _Corrupt(f"only {size} bytes")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != MAGIC:
                raise GGUFError(f"{path} is not a GGUF file (magic {bytes(buf[:4])!r})")
            header = _parse_header(buf)
    _check_data_fits(header, size)
    return header, size


@dataclass(frozen=True)
class TensorTable:
    """Where each tensor's bytes are in the file: the data section starts at `data_offset`."""

    path: Path
    data_offset: int
    tensors: list[TensorEntry]

    def file_offset(self, tensor: TensorEntry) -> int:
        return self.data_offset + tensor.offset


T = TypeVar("T")


def read_checked(path: Path, build: Callable[[Path, Header, int], T]) -> T:
    """`build(path, header, file size)` on the GGUF at `path`; every failure is a one-line GGUFError naming the file."""
    try:
        header, size = _parse_file(path)
        return build(path, header, size)
    except GGUFError:
        raise
    except _Corrupt as exc:
        raise GGUFError(f"{path} is truncated or corrupt: {exc}") from exc
    except OSError as exc:
        raise GGUFError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except _PARSE_ERRORS as exc:
        raise GGUFError(f"{path} is truncated or corrupt: {type(exc).__name__}: {exc}") from exc


def read_string_items(path: str | Path, where: StringArray, first: int, stop: int) -> list[bytes]:
    """Items first..stop-1 of a string array the header skipped (its raw UTF-8 bytes), each bounds-checked;
    a one-line GGUFError when they run past the end (the file changed since its header was read)."""
    path = Path(path)
    stop = min(stop, where.count)
    out: list[bytes] = []
    try:
        with _open_regular(path) as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            length = struct.Struct(_byte_order(buf) + "Q")
            pos, end = where.offset, len(buf)
            for i in range(stop):
                n = length.unpack_from(buf, pos)[0] if pos + 8 <= end else end
                if pos + 8 + n > end:
                    raise GGUFError(f"{path} is truncated or corrupt: string item {i} runs past the end of the file")
                if i >= first:
                    out.append(bytes(buf[pos + 8 : pos + 8 + n]))
                pos += 8 + n
    except (OSError, ValueError) as exc:
        raise GGUFError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    return out


def read_tensor_table(path: str | Path) -> TensorTable:
    """The tensor table of the GGUF at `path` (same checks and one-line errors as read_gguf)."""
    return read_checked(Path(path), lambda p, header, _size: TensorTable(p, header.data_offset, header.tensors))
