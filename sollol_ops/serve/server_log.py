"""What llama-server's log says: its last line and last error, and where the layers went (the buffer sizes
per device of its `-lv 4` log)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20

_NOISE = re.compile(r"^[\d.]+ [A-Z] ")


def _strip(line: str) -> str:
    return _NOISE.sub("", line).strip()


def last_line(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return _strip(lines[-1])[:160] if lines else ""


def last_error(log: Path) -> str:
    try:
        lines = [_strip(ln) for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    for ln in reversed(lines):
        if re.search(r"error|failed|mismatch|unable|cannot|out of memory", ln, re.I):
            return ln[:200]
    return lines[-1][:200] if lines else "empty log"


# --------------------------------------------------------------------------- distribution from the log

_MODEL_BUF = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB")
_KV_BUF = re.compile(r"llama_kv_cache:\s+(\S+) KV buffer size =\s+([\d.]+) MiB")
_COMPUTE_BUF = re.compile(r"(?:sched_reserve|llama_context):\s+(\S+) compute buffer size =\s+([\d.]+) MiB")
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_RPC_NAME = re.compile(r"^RPC\d+\[(.+)\]$")
# llama-server loads a draft model after its target; the buffers logged from here on are the draft's.
_DRAFT_START = "loading draft model"


@dataclass
class DeviceUse:
    name: str  # endpoint for RPC devices; `coordinator CPU` (CPU, CPU_Mapped, CUDA_Host, ...), `coordinator CUDA0`
    model_mib: float = 0.0
    kv_mib: float = 0.0
    compute_mib: float = 0.0
    layers: int | None = None

    @property
    def is_rpc(self) -> bool:
        return ":" in self.name


@dataclass
class Distribution:
    devices: list[DeviceUse]
    offloaded: tuple[int, int] | None
    draft: DeviceUse | None = None  # the draft model's buffers (all on the coordinator), when it has one

    def rpc(self) -> list[DeviceUse]:
        return [d for d in self.devices if d.is_rpc]


def parse_distribution(log_text: str, kv_per_layer: int | None = None) -> Distribution:
    """Where the layers went, from llama-server's -lv 4 log (buffer sizes per device)."""
    devices: dict[str, DeviceUse] = {}

    def dev(raw: str) -> DeviceUse:
        m = _RPC_NAME.match(raw)
        if m:
            name = m.group(1)
        elif raw.startswith("CPU") or raw.endswith("_Host"):  # host memory, pinned (CUDA_Host) or not
            name = "coordinator CPU"
        else:
            name = f"coordinator {raw}"
        return devices.setdefault(name, DeviceUse(name))

    offloaded = None
    draft: DeviceUse | None = None
    for line in log_text.splitlines():
        if _DRAFT_START in line:
            draft = DeviceUse("draft")
        if draft is not None:
            _add_draft(draft, line)
        elif m := _MODEL_BUF.search(line):
            dev(m.group(1)).model_mib += float(m.group(2))
        elif m := _KV_BUF.search(line):
            dev(m.group(1)).kv_mib += float(m.group(2))
        elif m := _COMPUTE_BUF.search(line):
            dev(m.group(1)).compute_mib += float(m.group(2))
        elif m := _OFFLOADED.search(line):
            offloaded = (int(m.group(1)), int(m.group(2)))
    if kv_per_layer:
        for d in devices.values():
            if d.is_rpc or d.kv_mib > 0:  # the coordinator's rows have layers when it keeps some
                d.layers = round(d.kv_mib * MIB / kv_per_layer)
    ordered = sorted(devices.values(), key=lambda d: (not d.is_rpc, 0))
    return Distribution(ordered, offloaded, draft)


def _add_draft(draft: DeviceUse, line: str) -> None:
    if m := _MODEL_BUF.search(line):
        draft.model_mib += float(m.group(2))
    elif m := _KV_BUF.search(line):
        draft.kv_mib += float(m.group(2))
    elif m := _COMPUTE_BUF.search(line):
        draft.compute_mib += float(m.group(2))


def read_distribution(log: Path, kv_per_layer: int | None = None) -> Distribution:
    """parse_distribution of the log file (empty when it cannot be read)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        text = ""
    return parse_distribution(text, kv_per_layer)


def http_started(log: Path) -> bool:
    """Whether llama-server got as far as its HTTP server: it logs `load_model:` right after starting it
    (the RPC devices of --rpc are contacted before, so a backend that does not answer holds it up there)."""
    try:
        with open(log, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return True  # no log to tell: say what /health says
    return b"load_model:" in head
