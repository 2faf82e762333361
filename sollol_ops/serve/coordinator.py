"""The coordinator: one class, Coordinator, owns a persistent llama-server serving a model over the cluster's
rpc-servers: its state file, lock and log, starting and stopping it, and what it is doing (health, stall,
lost backends, the layer distribution).

State lives in $XDG_STATE_HOME/sollol-ops/coordinator.json (pid + kernel start time, so a reused pid is
never mistaken for ours), its log in coordinator.log next to it.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from sollol_ops import procs
from sollol_ops.cluster.placement import Plan
from sollol_ops.cluster.toolchain import Toolchain
from sollol_ops.errors import CoordinatorError, StateError, ToolchainError
from sollol_ops.paths import state_dir
from sollol_ops.serve import command, server_http, server_log, server_proc, statefile
from sollol_ops.serve.command import StartOptions
from sollol_ops.serve.draft import NO_DRAFT, Draft, DraftState
from sollol_ops.serve.server_http import Stalled
from sollol_ops.serve.server_log import Distribution

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
    draft: DraftState | None = None  # its draft for speculative decoding (serve/draft.py); None: none
    request: dict[str, Any] = field(default_factory=dict)  # the `up` request, to start it again (serve/heal.py)

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
        return server_http.base_url(self.host, self.port)

    @property
    def openai_base(self) -> str:
        return f"{self.endpoint}/v1"


class CoordinatorPhase(StrEnum):
    """What a recorded coordinator is doing (`status`)."""

    SERVING = "serving"
    LOADING = "loading"
    UNHEALTHY = "unhealthy"
    STALLED = "stalled"
    BACKEND_LOST = "backend-lost"
    EXITED = "exited"
    NOT_RUNNING = "not running"


@dataclass(frozen=True)
class Condition:
    """A recorded coordinator as it really is: its phase, why, and what was seen on the way."""

    phase: CoordinatorPhase
    detail: str = ""
    uptime_s: float | None = None
    distribution: Distribution | None = None
    suspects: list[str] = field(default_factory=list)  # the backend a stalled coordinator waits on
    lost: list[str] = field(default_factory=list)  # backends that closed their connection to it
    progress: dict[str, Any] = field(default_factory=dict)  # while loading: elapsed_s, log (its last line)


@dataclass(frozen=True)
class Launch:
    """What to start: a model's blob placed by a plan, with llama-server's options."""

    toolchain: Toolchain
    blob: Path
    plan: Plan
    opts: StartOptions
    model: str
    digest: str
    skipped: list[LeftOut] = field(default_factory=list)
    draft: Draft = NO_DRAFT
    request: dict[str, Any] = field(default_factory=dict)

    def argv(self) -> list[str]:
        return command.command(self.toolchain, self.blob, self.opts, self.plan, draft=self.draft)

    def record(self, *, pid: int, argv: list[str], log: Path, foreground: bool) -> CoordinatorState:
        return CoordinatorState(
            pid=pid,
            start_time=procs.process_start_time(pid),
            host=self.opts.host,
            port=self.opts.port,
            model=self.model,
            digest=self.digest,
            blob=str(self.blob),
            backends=self.plan.rpc_endpoints,
            command=argv,
            started_at=time.time(),
            log=str(log),
            n_ctx=self.opts.n_ctx,
            kv_per_layer=self.plan.kv_per_layer,
            foreground=foreground,
            plan=plan_rows(self.plan),
            skipped=list(self.skipped),
            draft=self.draft.state(),
            request=dict(self.request),
        )


@dataclass(frozen=True)
class Stopped:
    state: CoordinatorState
    was_running: bool  # False: it had exited already, or its pid is no longer provably ours (not signalled)


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


def is_alive(state: CoordinatorState) -> bool:
    """Alive and provably the llama-server we started (pid, kernel start time and program)."""
    return procs.is_ours(state.pid, state.start_time, state.command[0])


def stall_message(state: CoordinatorState, seconds: float) -> str:
    suspects = server_proc.blocked_on(state.pid, state.backends)
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
        return server_http.stream_chat(
            state.endpoint, [{"role": "user", "content": prompt}], max_tokens, stall_timeout, on_token=on_token
        ).text
    except Stalled as exc:
        raise Stalled(stall_message(state, stall_timeout)) from exc


def _wait_watched(
    proc: subprocess.Popen[bytes], state: CoordinatorState, watch: Callable[[CoordinatorState], bool] | None
) -> int:
    """Wait for an attached llama-server; stop it (SIGTERM, SIGKILL after 15 s) once ``watch`` says so."""
    while watch is not None:
        try:
            return proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        if watch(state):
            proc.terminate()
            try:
                return proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                break
    return proc.wait()


class Coordinator:
    """The coordinator recorded under ``root`` (default $XDG_STATE_HOME/sollol-ops): its state file, lock
    and log, the llama-server they record, and what that process is doing."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or state_dir()

    @property
    def state_path(self) -> Path:
        return self.root / "coordinator.json"

    @property
    def log_path(self) -> Path:
        return self.root / "coordinator.log"

    @property
    def lock_path(self) -> Path:
        return self.root / "coordinator.lock"

    def lock(self, model: str) -> AbstractContextManager[None]:
        """Held from the first check to a recorded, ready coordinator: of two `up`s, one wins, the other
        is told who holds it (statefile.LockHeld). The kernel releases it if the holder dies."""
        return statefile.exclusive(self.lock_path, f"sollol-ops up {model}", "the coordinator lock")

    def load(self, warn: statefile.Warn = statefile.warn_stderr) -> CoordinatorState | None:
        """The recorded coordinator, or None. A corrupt state file is set aside with one warning line."""
        return statefile.load(self.state_path, CoordinatorState, "coordinator state", warn)

    def clear(self) -> None:
        statefile.remove(self.state_path)

    def running(self) -> CoordinatorState | None:
        """The recorded coordinator when it is alive; a stale record (the process is gone, or the pid is
        no longer ours) is removed."""
        state = self.load()
        if state is not None and not is_alive(state):
            self.clear()
            return None
        return state

    def _prepare_log(self) -> Path:
        log = self.log_path
        try:
            log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            log.write_text("")  # one log per run: the distribution is parsed from it
        except OSError as exc:
            raise statefile.cannot_write("the coordinator log", log.parent, exc) from exc
        return log

    def _spawn_recorded(
        self, launch: Launch, foreground: bool
    ) -> tuple[CoordinatorState, subprocess.Popen[bytes] | None]:
        """Start llama-server only once its state can be recorded: the state file's room is reserved
        (written and synced) first, so a full or read-only state directory fails before anything runs;
        if the final write still fails, the process just started is stopped before the error is raised."""
        argv = launch.argv()
        log = self._prepare_log()
        template = launch.record(pid=1 << 22, argv=argv, log=log, foreground=foreground)
        with statefile.reserve(self.state_path, template, "the coordinator state") as slot:
            proc: subprocess.Popen[bytes] | None = None
            try:
                if foreground:
                    with open(log, "ab") as log_file:
                        proc = subprocess.Popen(
                            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
                        )
                    pid = proc.pid
                else:
                    pid = procs.spawn_detached(argv, log)
            except OSError as exc:
                raise ToolchainError(f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
            state = launch.record(pid=pid, argv=argv, log=log, foreground=foreground)
            try:
                slot.commit(state)
            except StateError:
                procs.stop_process(pid, state.start_time, timeout=5, group=not foreground)
                if proc is not None:
                    proc.wait()
                raise
        return state, proc

    def start(self, launch: Launch) -> CoordinatorState:
        """Start llama-server detached and record it (not yet ready: see wait_ready)."""
        state, _ = self._spawn_recorded(launch, foreground=False)
        return state

    def run_foreground(
        self,
        launch: Launch,
        on_ready: Callable[[CoordinatorState], None] | None = None,
        ready_timeout: float = 600.0,
        watch: Callable[[CoordinatorState], bool] | None = None,
    ) -> int:
        """Run llama-server attached (for a systemd unit): signals are forwarded, state removed on exit. Once
        ready, ``watch`` is asked every second; when it answers True, llama-server is stopped (serve/heal.py)."""
        state, started = self._spawn_recorded(launch, foreground=True)
        assert started is not None
        proc = started

        def forward(signum: int, _frame: object) -> None:
            proc.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            if on_ready is not None:
                try:
                    self.wait_ready(state, timeout=ready_timeout)
                    on_ready(state)
                except CoordinatorError:
                    if proc.poll() is None:
                        raise
            return _wait_watched(proc, state, watch)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
            self.clear()

    def stop(self, timeout: float = 15.0) -> Stopped | None:
        """SIGTERM, wait, SIGKILL, only if the recorded process is provably ours; remove the state.
        None when nothing was recorded."""
        state = self.load()
        if state is None:
            return None
        was_running = procs.stop_process(
            state.pid, state.start_time, timeout=timeout, group=not state.foreground, argv0=state.command[0]
        )
        self.clear()
        return Stopped(state, was_running)

    def wait_ready(
        self, state: CoordinatorState, timeout: float = 600.0, on_progress: Callable[[float, str], None] | None = None
    ) -> float:
        """Poll /health until 200; CoordinatorError with the log's last error when it dies or times out."""
        return server_http.wait_ready(state.endpoint, lambda: is_alive(state), Path(state.log), timeout, on_progress)

    def distribution(self, state: CoordinatorState) -> Distribution:
        return server_log.read_distribution(Path(state.log), state.kv_per_layer)

    def condition(self, state: CoordinatorState, stall_timeout: float = 10.0) -> Condition:
        """What the recorded coordinator is doing. Gone: `exited` (with the log's last error). Alive and
        healthy, with requests in flight but no model step for ``stall_timeout``: `stalled`, with the
        backend it waits on as suspect."""
        log = Path(state.log)
        if not is_alive(state):
            return Condition(
                CoordinatorPhase.EXITED, f"pid {state.pid} is gone; last log line: {server_log.last_error(log)}"
            )
        uptime = round(max(0.0, time.time() - state.started_at), 1)
        seen: dict[str, Any] = {"uptime_s": uptime, "distribution": self.distribution(state)}
        code = server_http.health(state.endpoint)
        lost = server_proc.lost_backends(state.pid, state.backends)
        if lost:
            detail = (
                f"{', '.join(lost)} closed the connection (the rpc-server died or restarted); the next request "
                "will fail: `sollol-ops down`, check the worker, `sollol-ops up` again"
            )
            return Condition(CoordinatorPhase.BACKEND_LOST, detail, lost=lost, **seen)
        if code == 503 or (code is None and not server_log.http_started(log)):
            line = server_log.last_line(log)
            what = "loading the model" if code == 503 else "starting (contacting its RPC backends; not answering yet)"
            detail = f"llama-server is {what} ({uptime:.0f}s so far; last log line: {line or '-'})"
            return Condition(CoordinatorPhase.LOADING, detail, progress={"elapsed_s": uptime, "log": line}, **seen)
        if code != 200:
            detail = f"/health answered {code}" if code else "/health does not answer"
            return Condition(CoordinatorPhase.UNHEALTHY, detail, **seen)
        if server_http.is_stalled(state.endpoint, stall_timeout):
            suspects = server_proc.blocked_on(state.pid, state.backends)
            return Condition(CoordinatorPhase.STALLED, stall_message(state, stall_timeout), suspects=suspects, **seen)
        return Condition(CoordinatorPhase.SERVING, **seen)
