"""The coordinator: one persistent llama-server serving a model over the cluster's rpc-servers.

State lives in $XDG_STATE_HOME/sollol-ops/coordinator.json (pid + kernel start time, so a reused pid is
never mistaken for ours), its log in coordinator.log next to it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sollol_ops import procs, statefile
from sollol_ops.errors import CoordinatorError, StateError, ToolchainError, UsageError
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

    def __post_init__(self) -> None:
        if self.pid <= 0:
            raise statefile.ShapeError(f"pid {self.pid} is not a process id")
        if not self.command:
            raise statefile.ShapeError("command is empty")

    @property
    def listen(self) -> str:
        """Where llama-server really listens (0.0.0.0 / :: mean every interface)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def exposed(self) -> bool:
        return not is_loopback(self.host)

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


def lock_path(root: Path | None = None) -> Path:
    return (root or default_root()) / "coordinator.lock"


def start_lock(model: str, root: Path | None = None) -> Any:
    """Held from the first check to a recorded, ready coordinator: of two `up`s, one wins, the other
    is told who holds it (statefile.LockHeld). The kernel releases it if the holder dies."""
    return statefile.exclusive(lock_path(root), f"sollol-ops up {model}", "the coordinator lock")


def load_state(root: Path | None = None, warn: statefile.Warn = statefile.warn_stderr) -> CoordinatorState | None:
    """The recorded coordinator, or None. A corrupt state file is set aside with one warning line."""
    return statefile.load(state_path(root), CoordinatorState, "coordinator state", warn)


def save_state(state: CoordinatorState, root: Path | None = None) -> None:
    statefile.write(state_path(root), state, "the coordinator state")


def clear_state(root: Path | None = None) -> None:
    statefile.remove(state_path(root))


def is_alive(state: CoordinatorState) -> bool:
    """Alive and provably the llama-server we started (pid, kernel start time and program)."""
    return procs.is_ours(state.pid, state.start_time, state.command[0])


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def health(state: CoordinatorState, timeout: float = 1.0) -> int | None:
    """HTTP status of /health (200 ready, 503 loading), None when nothing answers."""
    try:
        with urllib.request.urlopen(f"{state.endpoint}/health", timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError, ValueError):
        return None


# llama-server flags that sollol-ops sets itself, from its own options or its plan. Passing one again through
# --server-arg would make llama-server do something other than what the state file, `status` and the
# placement table say (llama.cpp takes the last occurrence), so they are refused.
MANAGED_FLAGS: dict[str, str] = {
    "--host": "--host",
    "--port": "--port",
    "-m": "the MODEL argument",
    "--model": "the MODEL argument",
    "--rpc": "the inventory",
    "-dev": "the placement plan",
    "--device": "the placement plan",
    "-ts": "the placement plan",
    "--tensor-split": "the placement plan",
    "-ngl": "the placement plan",
    "--n-gpu-layers": "the placement plan",
    "--gpu-layers": "the placement plan",
    "-c": "--ctx-size",
    "--ctx-size": "--ctx-size",
    "-np": "--parallel",
    "--parallel": "--parallel",
    "-t": "--threads",
    "--threads": "--threads",
    "-a": "the model name",
    "--alias": "the model name",
    "-lv": "the log level sollol-ops parses",
    "--log-verbosity": "the log level sollol-ops parses",
    "--log-file": "the coordinator log sollol-ops parses",
}


def check_extra_args(extra: list[str]) -> None:
    """UsageError when a --server-arg repeats a flag sollol-ops manages."""
    for arg in extra:
        flag = arg.split("=", 1)[0]
        if flag in MANAGED_FLAGS:
            raise UsageError(
                f"--server-arg {arg} conflicts with what sollol-ops sets itself; use {MANAGED_FLAGS[flag]} instead"
            )


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


def _prepare_log(root: Path | None) -> Path:
    log = log_path(root)
    try:
        log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        log.write_text("")  # one log per run: the distribution is parsed from it
    except OSError as exc:
        raise statefile.cannot_write("the coordinator log", log.parent, exc) from exc
    return log


def _spawn_recorded(
    argv: list[str], root: Path | None, log: Path, record: Callable[[int], CoordinatorState], foreground: bool
) -> tuple[CoordinatorState, subprocess.Popen[bytes] | None]:
    """Start llama-server only once its state can be recorded: the state file's room is reserved
    (written and synced) first, so a full or read-only state directory fails before anything runs;
    if the final write still fails, the process just started is stopped before the error is raised."""
    with statefile.reserve(state_path(root), record(1 << 22), "the coordinator state") as slot:
        proc: subprocess.Popen[bytes] | None = None
        try:
            if foreground:
                with open(log, "ab") as log_file:
                    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
                pid = proc.pid
            else:
                pid = procs.spawn_detached(argv, log)
        except OSError as exc:
            raise ToolchainError(f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
        state = record(pid)
        try:
            slot.commit(state)
        except StateError:
            procs.stop_process(pid, state.start_time, timeout=5, group=not foreground)
            if proc is not None:
                proc.wait()
            raise
    return state, proc


def start_detached(
    toolchain: Toolchain, blob: Path, plan: Plan, opts: StartOptions, model: str, digest: str, root: Path | None = None
) -> CoordinatorState:
    argv = build_command(toolchain, blob, plan, opts)
    log = _prepare_log(root)
    state, _ = _spawn_recorded(
        argv, root, log, lambda pid: _state(pid, argv, blob, plan, opts, model, digest, log, foreground=False), False
    )
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
    log = _prepare_log(root)
    state, started = _spawn_recorded(
        argv, root, log, lambda pid: _state(pid, argv, blob, plan, opts, model, digest, log, foreground=True), True
    )
    assert started is not None
    proc = started

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


@dataclass
class Stopped:
    state: CoordinatorState
    was_running: bool  # False: it had exited already, or its pid is no longer provably ours (not signalled)


def stop(root: Path | None = None, timeout: float = 15.0) -> Stopped | None:
    """SIGTERM, wait, SIGKILL, only if the recorded process is provably ours; remove the state.
    None when nothing was recorded."""
    state = load_state(root)
    if state is None:
        return None
    was_running = procs.stop_process(
        state.pid, state.start_time, timeout=timeout, group=not state.foreground, argv0=state.command[0]
    )
    clear_state(root)
    return Stopped(state, was_running)


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


class Stalled(CoordinatorError):
    """The coordinator made no progress for the stall time-out; names the backend it waits on, if known."""


def stall_message(state: CoordinatorState, seconds: float) -> str:
    suspects = blocked_on(state)
    if suspects:
        who = "; suspected backend: " + ", ".join(suspects) + " (llama-server is waiting for its reply)"
    else:
        who = "; no backend could be singled out"
    return (
        f"the coordinator ({state.model}, pid {state.pid}) made no progress for {seconds:g}s: stalled{who}; "
        "check that worker (`sollol-ops status`, systemctl status sollol-rpc-server there), then "
        "`sollol-ops down` and `up` again"
    )


def chat(
    state: CoordinatorState,
    prompt: str,
    max_tokens: int = 64,
    stall_timeout: float = 120.0,
    on_token: Callable[[str], None] | None = None,
) -> str:
    """One OpenAI chat completion, streamed, against the coordinator; returns the answer text.
    Each read waits at most ``stall_timeout`` seconds: a request that makes no progress that long (a
    frozen worker: llama.cpp's RPC client itself never times out) ends in Stalled, not a hang."""
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
        }
    ).encode()
    host = state.endpoint.removeprefix("http://").rsplit(":", 1)[0]
    conn = http.client.HTTPConnection(host, state.port, timeout=stall_timeout)
    parts: list[str] = []
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            detail = resp.read(4096).decode(errors="replace")
            raise CoordinatorError(f"chat completion at {state.openai_base} failed: HTTP {resp.status} {detail[:200]}")
        while True:
            line = resp.readline(1 << 20)
            if not line:
                raise CoordinatorError(
                    f"the coordinator at {state.openai_base} ended the answer before its end (did it die? "
                    "`sollol-ops status`, `sollol-ops logs`)"
                )
            text = line.decode(errors="replace").strip()
            if not text.startswith("data:"):
                continue
            payload = text[5:].strip()
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece:
                    parts.append(piece)
                    if on_token is not None:
                        on_token(piece)
    except TimeoutError as exc:
        raise Stalled(stall_message(state, stall_timeout)) from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise CoordinatorError(f"chat completion at {state.openai_base} failed: {reason}") from exc
    finally:
        conn.close()
    return "".join(parts)


def _metrics(state: CoordinatorState, timeout: float) -> dict[str, float] | None:
    """llama-server's Prometheus counters (`--metrics`), or None when they cannot be read."""
    try:
        with urllib.request.urlopen(f"{state.endpoint}/metrics", timeout=timeout) as resp:
            text = resp.read(1 << 20).decode(errors="replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("llamacpp:"):
            with contextlib.suppress(ValueError):
                values[name[9:]] = float(value)
    return values


def is_stalled(state: CoordinatorState, window: float, poll: float = 0.25) -> bool:
    """True when requests are in flight but llama-server completes no model step (its `n_decode_total`
    counter stands still) for ``window`` seconds. Returns as soon as a step completes, so a busy,
    progressing coordinator costs one or two polls; an idle one costs a single read."""
    first = _metrics(state, timeout=min(window, 5.0))
    if not first or first.get("requests_processing", 0) <= 0:
        return False
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        time.sleep(poll)
        now = _metrics(state, timeout=min(window, 5.0))
        if now is None:
            continue
        if now.get("requests_processing", 0) <= 0 or now.get("n_decode_total") != first.get("n_decode_total"):
            return False
    return True


# Syscalls a thread blocked reading a socket sits in, by machine (x86_64, aarch64).
_READ_SYSCALLS = {"x86_64": {0, 45, 47}, "aarch64": {63, 207, 212}}


TCP_ESTABLISHED, TCP_CLOSE_WAIT = 1, 8


def _socket_peers(pid: int) -> dict[int, tuple[str, int, int]]:
    """fd -> (remote address, port, TCP state) of pid's TCP sockets, from /proc."""
    inodes: dict[int, int] = {}
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[int(target[8:-1])] = int(fd)
    except OSError:
        return {}
    peers: dict[int, tuple[str, int, int]] = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or int(fields[9]) not in inodes:
                continue
            addr_hex, port_hex = fields[2].split(":")
            raw = bytes.fromhex(addr_hex)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = socket.inet_ntop(family, raw)
            if address.startswith("::ffff:"):
                address = address[7:]
            peers[inodes[int(fields[9])]] = (address, int(port_hex, 16), int(fields[3], 16))
    return peers


def _backend_of(state: CoordinatorState, address: str, port: int) -> str | None:
    for endpoint in state.backends:
        host, _, p = endpoint.rpartition(":")
        if int(p) == port and address in _addresses(host.strip("[]")):
            return endpoint
    return None


def lost_backends(state: CoordinatorState) -> list[str]:
    """Backends whose rpc-server closed its connection to our llama-server (the socket sits in
    CLOSE_WAIT: the worker process died or was restarted); llama.cpp only notices on the next request,
    which then fails."""
    lost = set()
    for address, port, tcp_state in _socket_peers(state.pid).values():
        if tcp_state == TCP_CLOSE_WAIT and (endpoint := _backend_of(state, address, port)):
            lost.add(endpoint)
    return [b for b in state.backends if b in lost]


def _addresses(host: str) -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return set()


def blocked_on(state: CoordinatorState) -> list[str]:
    """The coordinator's backends that one of llama-server's threads is blocked reading from (from
    /proc/PID/task/*/syscall; empty when that is not readable or no thread waits on a backend)."""
    reads = _READ_SYSCALLS.get(os.uname().machine, set())
    waiting_fds: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{state.pid}/task")
    except OSError:
        return []
    for tid in tasks:
        try:
            fields = Path(f"/proc/{state.pid}/task/{tid}/syscall").read_text().split()
        except OSError:
            continue
        if len(fields) >= 2 and fields[0].isdigit() and int(fields[0]) in reads:
            waiting_fds.add(int(fields[1], 16))
    if not waiting_fds:
        return []
    peers = _socket_peers(state.pid)
    suspects = {_backend_of(state, peers[fd][0], peers[fd][1]) for fd in waiting_fds if fd in peers}
    return [b for b in state.backends if b in suspects]


def uptime(state: CoordinatorState) -> float:
    return max(0.0, time.time() - state.started_at)
