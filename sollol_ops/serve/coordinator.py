"""The coordinator: one persistent llama-server serving a model over the cluster's rpc-servers.

State lives in $XDG_STATE_HOME/sollol-ops/coordinator.json (pid + kernel start time, so a reused pid is
never mistaken for ours), its log in coordinator.log next to it.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sollol_ops import procs
from sollol_ops.cluster.placement import Plan
from sollol_ops.cluster.toolchain import Toolchain
from sollol_ops.errors import CoordinatorError, StateError, ToolchainError
from sollol_ops.paths import state_dir
from sollol_ops.serve import llama_server, statefile
from sollol_ops.serve.llama_server import Distribution, StartOptions

MIB = 1 << 20


@dataclass
class LeftOut:
    """A backend of the inventory that a degraded coordinator was started without (unhealthy at its start)."""

    host: str
    endpoint: str
    status: str
    detail: str

    def describe(self) -> str:
        return f"{self.host} ({self.endpoint}, {self.status} at start)"


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
    skipped: list[LeftOut] = field(default_factory=list)  # degraded: started without these (sollol_skip_unhealthy)

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
        return not procs.is_loopback(self.host)

    @property
    def endpoint(self) -> str:
        return llama_server.base_url(self.host, self.port)

    @property
    def openai_base(self) -> str:
        return f"{self.endpoint}/v1"


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


def plan_rows(plan: Plan) -> list[dict[str, Any]]:
    return [
        {
            "endpoint": s.slot.endpoint,
            "host": s.slot.backend.host if s.slot.backend is not None else "coordinator",
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
    toolchain: Toolchain,
    blob: Path,
    plan: Plan,
    opts: StartOptions,
    model: str,
    digest: str,
    root: Path | None = None,
    skipped: list[LeftOut] | None = None,
) -> CoordinatorState:
    argv = llama_server.command(toolchain, blob, opts, plan)
    log = _prepare_log(root)
    state, _ = _spawn_recorded(
        argv,
        root,
        log,
        lambda pid: _state(pid, argv, blob, plan, opts, model, digest, log, False, skipped or []),
        False,
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
    skipped: list[LeftOut],
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
        skipped=list(skipped),
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
    skipped: list[LeftOut] | None = None,
) -> int:
    """Run llama-server attached (for a systemd unit): signals are forwarded, state removed on exit."""
    argv = llama_server.command(toolchain, blob, opts, plan)
    log = _prepare_log(root)
    state, started = _spawn_recorded(
        argv, root, log, lambda pid: _state(pid, argv, blob, plan, opts, model, digest, log, True, skipped or []), True
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


def health(state: CoordinatorState, timeout: float = 1.0) -> int | None:
    return llama_server.health(state.endpoint, timeout)


def wait_ready(
    state: CoordinatorState, timeout: float = 600.0, on_progress: Callable[[float, str], None] | None = None
) -> float:
    """Poll /health until 200; CoordinatorError with the log's last error when it dies or times out."""
    return llama_server.wait_ready(state.endpoint, lambda: is_alive(state), Path(state.log), timeout, on_progress)


def distribution(state: CoordinatorState) -> Distribution:
    try:
        text = Path(state.log).read_text(errors="replace")
    except OSError:
        text = ""
    return llama_server.parse_distribution(text, state.kv_per_layer)


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
    """One chat completion against the coordinator, streamed; a request that makes no progress for
    ``stall_timeout`` seconds (a frozen worker) ends in Stalled naming the suspected backend."""
    try:
        return llama_server.stream_chat(
            state.endpoint, [{"role": "user", "content": prompt}], max_tokens, stall_timeout, on_token=on_token
        ).text
    except llama_server.Stalled as exc:
        raise Stalled(stall_message(state, stall_timeout)) from exc


def is_stalled(state: CoordinatorState, window: float) -> bool:
    return llama_server.is_stalled(state.endpoint, window)


def blocked_on(state: CoordinatorState) -> list[str]:
    return llama_server.blocked_on(state.pid, state.backends)


def lost_backends(state: CoordinatorState) -> list[str]:
    return llama_server.lost_backends(state.pid, state.backends)


def last_error(state: CoordinatorState) -> str:
    return llama_server.last_error(Path(state.log))


def http_started(state: CoordinatorState) -> bool:
    """Whether llama-server got as far as its HTTP server: it logs `load_model:` right after starting it
    (the RPC devices of --rpc are contacted before, so a backend that does not answer holds it up there)."""
    try:
        with open(state.log, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return True  # no log to tell: say what /health says
    return b"load_model:" in head


def uptime(state: CoordinatorState) -> float:
    return max(0.0, time.time() - state.started_at)
