"""The measured speeds, cached in the user's cache dir (`speed.json`): compute per (build id, rpc-server, device,
weight type), from `sollol_ops.cluster.speed`, and the link to each rpc-server, from `sollol_ops.cluster.link`.
`sollol-ops plan --measure` writes them; `plan` and `up` read them.

The build id is the coordinator's llama.cpp build (the directory roles/llama_cpp installed it in, else its
`--version` line): a cluster runs one build everywhere (`doctor` checks the protocol), and another build may
compute at another speed, so its figures are not reused. A device's total memory is kept with its figure: another
machine behind the same address is not taken for the one measured.

The file is read strictly and bounded: it must be a regular file of at most MAX_CACHE_BYTES holding the expected
shape; anything else (corrupt, hostile, another format) is ignored with one warning, as if nothing were measured,
and `--measure` replaces it. It is written atomically (a private temporary file, then rename).
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sollol_ops.cluster.link import LinkResult
from sollol_ops.cluster.speed import ComputeSpeed, SpeedResult
from sollol_ops.cluster.toolchain import Toolchain, default_prefixes
from sollol_ops.errors import StateError
from sollol_ops.paths import cache_dir

CACHE_NAME = "speed.json"
FORMAT = 1
MAX_CACHE_BYTES = 4 << 20
MAX_ENTRIES = 4096
MAX_FIGURE = 1e12  # no sane figure is larger (ns per byte, us per node, ms, MB/s)

Warn = Callable[[str], None]


@dataclass(frozen=True)
class LinkFigures:
    """The link to one rpc-server as `doctor` measures it: round trip, and upload payload in MB/s."""

    rtt_ms: float
    mb_per_s: float
    measured_at: float = 0.0

    @property
    def bytes_per_s(self) -> float:
        return self.mb_per_s * 1e6


@dataclass(frozen=True)
class CachedSpeed:
    speed: ComputeSpeed
    device_total: int
    measured_at: float = 0.0


@dataclass
class SpeedCache:
    path: Path
    compute: dict[str, CachedSpeed] = field(default_factory=dict)
    links: dict[str, LinkFigures] = field(default_factory=dict)

    @staticmethod
    def key(build: str, endpoint: str, device: int, ggml_type: str) -> str:
        return f"{build}|{endpoint}|{device}|{ggml_type}"

    def speed(self, build: str, endpoint: str, device: int, ggml_type: str, device_total: int) -> ComputeSpeed | None:
        """The cached figure for this device, None when never measured (or measured on another machine there)."""
        found = self.compute.get(self.key(build, endpoint, device, ggml_type))
        if found is None or (device_total and found.device_total != device_total):
            return None
        return found.speed

    def link(self, endpoint: str) -> LinkFigures | None:
        return self.links.get(endpoint)

    def record_speed(self, build: str, result: SpeedResult) -> None:
        if result.speed is not None:
            key = self.key(build, result.endpoint, result.device, result.speed.ggml_type)
            self.compute[key] = CachedSpeed(result.speed, result.device_total, time.time())

    def record_link(self, result: LinkResult) -> None:
        if result.ok and result.rtt_ms is not None and result.throughput_bps:
            self.links[result.endpoint] = LinkFigures(result.rtt_ms, result.throughput_bps / 8e6, time.time())

    def save(self) -> None:
        """Write the cache atomically (StateError when its directory cannot be written)."""
        compute = {
            k: {**asdict(v.speed), "device_total": v.device_total, "measured_at": v.measured_at}
            for k, v in self.compute.items()
        }
        data = {"format": FORMAT, "compute": compute, "links": {k: asdict(v) for k, v in self.links.items()}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".speed-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f, indent=1)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StateError(f"cannot write the speed cache {self.path}: {exc.strerror or exc}") from exc


def default_path() -> Path:
    return cache_dir() / CACHE_NAME


def build_id(toolchain: Toolchain) -> str:
    """The coordinator's llama.cpp build: its directory under a roles/llama_cpp prefix (PREFIX/<id>/bin), else the
    build in `llama-server --version` (ToolchainError when that does not run)."""
    real = toolchain.llama_server.resolve()
    for prefix in default_prefixes():
        try:
            return real.relative_to(prefix.resolve()).parts[0]
        except (ValueError, IndexError, OSError):
            continue
    version = toolchain.version().removeprefix("version:").strip()
    return version.rsplit("(", 1)[-1].rstrip(")") or version


class _Bad(Exception):
    """The cache file is not what this module writes."""


def _figure(entry: Mapping[str, Any], name: str) -> float:
    value = entry.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Bad(f"{name} is not a number")
    if not 0 <= value <= MAX_FIGURE:
        raise _Bad(f"{name} is out of range")
    return float(value)


def _speed(entry: Any) -> CachedSpeed:
    if not isinstance(entry, Mapping):
        raise _Bad("an entry is not an object")
    ggml_type = entry.get("ggml_type")
    if not isinstance(ggml_type, str) or len(ggml_type) > 16:
        raise _Bad("ggml_type is not a type name")
    total = _figure(entry, "device_total")
    speed = ComputeSpeed(
        ggml_type,
        _figure(entry, "ns_per_byte"),
        _figure(entry, "node_us"),
        _figure(entry, "dispatch_ms"),
        int(_figure(entry, "weight_bytes")),
    )
    return CachedSpeed(speed, int(total), _figure(entry, "measured_at"))


def _link(entry: Any) -> LinkFigures:
    if not isinstance(entry, Mapping):
        raise _Bad("an entry is not an object")
    mb_per_s = _figure(entry, "mb_per_s")
    if mb_per_s <= 0:
        raise _Bad("mb_per_s is not positive")
    return LinkFigures(_figure(entry, "rtt_ms"), mb_per_s, _figure(entry, "measured_at"))


def _read_bounded(path: Path) -> bytes | None:
    """The file's bytes; None when there is none; _Bad when it is not a regular file of a sane size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _Bad(exc.strerror or type(exc).__name__) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Bad("not a regular file")
        if info.st_size > MAX_CACHE_BYTES:
            raise _Bad(f"{info.st_size:,} bytes, more than the {MAX_CACHE_BYTES:,} a cache can hold")
        data = os.read(fd, MAX_CACHE_BYTES + 1)
    except OSError as exc:
        raise _Bad(exc.strerror or type(exc).__name__) from None
    finally:
        os.close(fd)
    if len(data) > MAX_CACHE_BYTES:
        raise _Bad(f"more than the {MAX_CACHE_BYTES:,} bytes a cache can hold")
    return data


def load(path: Path | None = None, warn: Warn | None = None) -> SpeedCache:
    """The cache at `path` (default: the user's); an unusable file is ignored (with one warning through `warn`)."""
    path = path or default_path()
    cache = SpeedCache(path)
    try:
        raw = _read_bounded(path)
        if raw is None:
            return cache
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise _Bad("not JSON") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise _Bad(f"not a speed cache of format {FORMAT}")
        compute, links = data.get("compute", {}), data.get("links", {})
        if not isinstance(compute, dict) or not isinstance(links, dict):
            raise _Bad("compute and links must be objects")
        if len(compute) + len(links) > MAX_ENTRIES:
            raise _Bad(f"more than {MAX_ENTRIES} entries")
        cache.compute = {str(k): _speed(v) for k, v in compute.items()}
        cache.links = {str(k): _link(v) for k, v in links.items()}
    except _Bad as exc:
        if warn is not None:
            warn(f"ignoring the speed cache {path} ({exc}); `sollol-ops plan MODEL --measure` writes a new one")
        return SpeedCache(path)
    return cache
