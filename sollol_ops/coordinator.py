"""The coordinator: one persistent llama-server serving a model over the cluster's rpc-servers.

State lives in $XDG_STATE_HOME/sollol-ops/coordinator.json (pid + kernel start time, so a reused pid is
never mistaken for ours), its log in coordinator.log next to it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sollol_ops import procs
from sollol_ops.errors import CoordinatorError
from sollol_ops.paths import state_dir
from sollol_ops.placement import Plan
from sollol_ops.toolchain import Toolchain

MIB = 1 << 20


@dataclass
class CoordinatorState:
    pid: int
    start_time: int | None
    host: str
    port: int
    model: str
    digest: str
    blob: str
    backends: list[str]
    command: list[str]
    started_at: float
    log: str
    n_ctx: int
    kv_per_layer: int
    foreground: bool = False
    plan: list[dict[str, Any]] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def openai_base(self) -> str:
        return f"{self.endpoint}/v1"


@dataclass
class StartOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    n_ctx: int = 4096
    parallel: int = 1
    threads: int | None = None
    extra_args: list[str] = field(default_factory=list)
    alias: str | None = None


def default_root() -> Path:
    return state_dir()


def state_path(root: Path | None = None) -> Path:
    return (root or default_root()) / "coordinator.json"


def log_path(root: Path | None = None) -> Path:
    return (root or default_root()) / "coordinator.log"


def load_state(root: Path | None = None) -> CoordinatorState | None:
    try:
        data = json.loads(state_path(root).read_text())
        return CoordinatorState(**data)
    except (OSError, ValueError, TypeError):
        return None


def save_state(state: CoordinatorState, root: Path | None = None) -> None:
    path = state_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(path)


def clear_state(root: Path | None = None) -> None:
    state_path(root).unlink(missing_ok=True)


def is_alive(state: CoordinatorState) -> bool:
    return procs.is_alive(state.pid, state.start_time)


def health(state: CoordinatorState, timeout: float = 1.0) -> int | None:
    """HTTP status of /health (200 ready, 503 loading), None when nothing answers."""
    try:
        with urllib.request.urlopen(f"{state.endpoint}/health", timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError, ValueError):
        return None


def build_command(toolchain: Toolchain, blob: Path, plan: Plan, opts: StartOptions) -> list[str]:
    threads = opts.threads or max(1, os.cpu_count() or 1)
    argv = [
        str(toolchain.llama_server),
        "--model", str(blob),
        "--rpc", ",".join(plan.rpc_endpoints),
        "--device", ",".join(plan.devices),
        "--tensor-split", ",".join(f"{s:g}" for s in plan.tensor_split),
        "--n-gpu-layers", "999",
        "--fit", "off",
        "--ctx-size", str(opts.n_ctx),
        "--parallel", str(opts.parallel),
        "--threads", str(threads),
        "--host", opts.host,
        "--port", str(opts.port),
        "--metrics",
        "-lv", "4",
    ]  # fmt: skip
    if opts.alias:
        argv += ["--alias", opts.alias]
    return argv + list(opts.extra_args)


def plan_rows(plan: Plan) -> list[dict[str, Any]]:
    return [
        {
            "endpoint": s.slot.backend.endpoint,
            "host": s.slot.backend.host,
            "device": s.slot.name,
            "split": s.split,
            "layers": s.layers,
            "output_layer": s.has_output,
            "weights_mib": round(s.weight_bytes / MIB, 1),
            "kv_mib": round(s.kv_bytes / MIB, 1),
            "compute_mib": round(s.compute_bytes / MIB, 1),
            "need_mib": round(s.need_bytes / MIB, 1),
            "usable_mib": round(s.slot.usable_bytes / MIB, 1),
            "usable_source": s.slot.source,
        }
        for s in plan.shares
    ]


def start_detached(
    toolchain: Toolchain, blob: Path, plan: Plan, opts: StartOptions, model: str, digest: str, root: Path | None = None
) -> CoordinatorState:
    argv = build_command(toolchain, blob, plan, opts)
    log = log_path(root)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")  # one log per run: the distribution is parsed from it
    pid = procs.spawn_detached(argv, log)
    state = _state(pid, argv, blob, plan, opts, model, digest, log, foreground=False)
    save_state(state, root)
    return state


def _state(
    pid: int,
    argv: list[str],
    blob: Path,
    plan: Plan,
    opts: StartOptions,
    model: str,
    digest: str,
    log: Path,
    foreground: bool,
) -> CoordinatorState:
    return CoordinatorState(
        pid=pid,
        start_time=procs.process_start_time(pid),
        host=opts.host,
        port=opts.port,
        model=model,
        digest=digest,
        blob=str(blob),
        backends=plan.rpc_endpoints,
        command=argv,
        started_at=time.time(),
        log=str(log),
        n_ctx=opts.n_ctx,
        kv_per_layer=plan.kv_per_layer,
        foreground=foreground,
        plan=plan_rows(plan),
    )


def run_foreground(
    toolchain: Toolchain,
    blob: Path,
    plan: Plan,
    opts: StartOptions,
    model: str,
    digest: str,
    root: Path | None = None,
    on_ready: Callable[[CoordinatorState], None] | None = None,
    ready_timeout: float = 600.0,
) -> int:
    """Run llama-server attached (for a systemd unit): signals are forwarded, state removed on exit."""
    argv = build_command(toolchain, blob, plan, opts)
    log = log_path(root)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    state = _state(proc.pid, argv, blob, plan, opts, model, digest, log, foreground=True)
    save_state(state, root)

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        if on_ready is not None:
            try:
                wait_ready(state, timeout=ready_timeout)
                on_ready(state)
            except CoordinatorError:
                if proc.poll() is None:
                    raise
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        clear_state(root)


def wait_ready(
    state: CoordinatorState, timeout: float = 600.0, on_progress: Callable[[float, str], None] | None = None
) -> float:
    """Poll /health until 200. Raises with the log's last error when the server dies or times out."""
    t0 = time.monotonic()
    while True:
        elapsed = time.monotonic() - t0
        if not is_alive(state):
            raise CoordinatorError(f"llama-server exited while loading: {last_error(Path(state.log))}")
        code = health(state, timeout=1.0)
        if code == 200:
            return elapsed
        if elapsed > timeout:
            raise CoordinatorError(
                f"llama-server not ready after {timeout:g}s (see `sollol-ops logs`); last: {last_line(Path(state.log))}"
            )
        if on_progress is not None:
            on_progress(elapsed, last_line(Path(state.log)))
        time.sleep(0.1)


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


def stop(root: Path | None = None, timeout: float = 15.0) -> CoordinatorState | None:
    """SIGTERM, wait, SIGKILL; remove the state. Returns the state that was stopped (None: nothing ran)."""
    state = load_state(root)
    if state is None:
        return None
    procs.stop_process(state.pid, state.start_time, timeout=timeout, group=not state.foreground)
    clear_state(root)
    return state


# --------------------------------------------------------------------------- distribution from the log

_MODEL_BUF = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB")
_KV_BUF = re.compile(r"llama_kv_cache:\s+(\S+) KV buffer size =\s+([\d.]+) MiB")
_COMPUTE_BUF = re.compile(r"(?:sched_reserve|llama_context):\s+(\S+) compute buffer size =\s+([\d.]+) MiB")
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_RPC_NAME = re.compile(r"^RPC\d+\[(.+)\]$")


@dataclass
class DeviceUse:
    name: str  # endpoint for RPC devices, CPU_Mapped / CPU for the coordinator
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

    def rpc(self) -> list[DeviceUse]:
        return [d for d in self.devices if d.is_rpc]


def parse_distribution(log_text: str, kv_per_layer: int | None = None) -> Distribution:
    """Where the layers went, from llama-server's -lv 4 log (buffer sizes per device)."""
    devices: dict[str, DeviceUse] = {}

    def dev(raw: str) -> DeviceUse:
        m = _RPC_NAME.match(raw)
        name = m.group(1) if m else ("coordinator CPU" if raw.startswith("CPU") else raw)
        return devices.setdefault(name, DeviceUse(name))

    offloaded = None
    for line in log_text.splitlines():
        if m := _MODEL_BUF.search(line):
            dev(m.group(1)).model_mib += float(m.group(2))
        elif m := _KV_BUF.search(line):
            dev(m.group(1)).kv_mib += float(m.group(2))
        elif m := _COMPUTE_BUF.search(line):
            dev(m.group(1)).compute_mib += float(m.group(2))
        elif m := _OFFLOADED.search(line):
            offloaded = (int(m.group(1)), int(m.group(2)))
    if kv_per_layer:
        for d in devices.values():
            if d.is_rpc:
                d.layers = round(d.kv_mib * MIB / kv_per_layer)
    ordered = sorted(devices.values(), key=lambda d: (not d.is_rpc, 0))
    return Distribution(ordered, offloaded)


def distribution(state: CoordinatorState) -> Distribution:
    try:
        text = Path(state.log).read_text(errors="replace")
    except OSError:
        text = ""
    return parse_distribution(text, state.kv_per_layer)


def chat(state: CoordinatorState, prompt: str, max_tokens: int = 64, timeout: float = 120.0) -> str:
    """One OpenAI-style chat completion against the coordinator; returns the answer text."""
    body = json.dumps(
        {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0}
    ).encode()
    req = urllib.request.Request(
        f"{state.openai_base}/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CoordinatorError(f"chat completion at {state.openai_base} failed: {exc}") from exc
    return str(data["choices"][0]["message"]["content"])


def uptime(state: CoordinatorState) -> float:
    return max(0.0, time.time() - state.started_at)
