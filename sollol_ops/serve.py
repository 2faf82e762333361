"""`up` and `status` as library calls: resolve, probe, plan, start, wait; the CLI only renders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sollol_ops import coordinator, procs, rpc
from sollol_ops.coordinator import CoordinatorState, Distribution, StartOptions
from sollol_ops.errors import BackendError, CoordinatorError
from sollol_ops.gguf_info import GGUFInfo, read_gguf
from sollol_ops.inventory import Backend, Cluster
from sollol_ops.ollama import ResolvedModel, resolve_model
from sollol_ops.placement import Plan, build_slots, plan_placement
from sollol_ops.toolchain import Toolchain, find_toolchain


@dataclass
class UpRequest:
    model: str
    opts: StartOptions = field(default_factory=StartOptions)
    ollama_models: str | None = None
    dry_run: bool = False
    replace: bool = False
    skip_unhealthy: bool = False
    timeout: float = 600.0


@dataclass
class UpOutcome:
    kind: str  # "already-running" | "dry-run" | "started"
    model: str
    state: CoordinatorState | None = None
    resolved: ResolvedModel | None = None
    info: GGUFInfo | None = None
    probes: list[tuple[Backend, rpc.ProbeResult]] = field(default_factory=list)
    skipped: list[tuple[Backend, rpc.ProbeResult]] = field(default_factory=list)
    plan: Plan | None = None
    command: list[str] = field(default_factory=list)
    ready_s: float | None = None
    distribution: Distribution | None = None
    replaced: str | None = None


class Reporter:
    """Progress sink; the CLI subclasses it to draw. The library calls these and nothing else."""

    def step(self, message: str) -> None:  # pragma: no cover - default is silent
        pass

    def loading(self, elapsed: float, last_log_line: str) -> None:  # pragma: no cover
        pass


def describe_backend_problem(backend: Backend, result: rpc.ProbeResult) -> str:
    return f"{backend.host} ({backend.endpoint}) is {result.status.value}: {result.detail}"


def check_backends(
    cluster: Cluster, skip_unhealthy: bool, reporter: Reporter
) -> tuple[list[tuple[Backend, rpc.ProbeResult]], list[tuple[Backend, rpc.ProbeResult]]]:
    reporter.step(f"probing {len(cluster.backends)} backend(s)")
    results = rpc.probe_all([b.endpoint for b in cluster.backends])
    pairs = list(zip(cluster.backends, results, strict=True))
    bad = [(b, r) for b, r in pairs if not r.ok]
    if bad and not skip_unhealthy:
        problems = "; ".join(describe_backend_problem(b, r) for b, r in bad)
        raise BackendError(f"{problems}; fix them (systemctl status sollol-rpc-server) or pass --skip-unhealthy")
    good = [(b, r) for b, r in pairs if r.ok]
    if not good:
        raise BackendError("no healthy backend left: " + "; ".join(describe_backend_problem(b, r) for b, r in bad))
    return good, bad


def _running(root: Path | None) -> CoordinatorState | None:
    state = coordinator.load_state(root)
    if state is not None and not coordinator.is_alive(state):
        coordinator.clear_state(root)  # stale: the process is gone
        return None
    return state


def up(
    req: UpRequest,
    cluster: Cluster,
    reporter: Reporter | None = None,
    root: Path | None = None,
    toolchain: Toolchain | None = None,
    foreground: bool = False,
) -> UpOutcome:
    reporter = reporter or Reporter()
    resolved = resolve_model(req.model, req.ollama_models)
    model = resolved.ref
    running = _running(root)
    if running is not None and running.model == model and running.digest == resolved.digest and not foreground:
        return UpOutcome("already-running", model, state=running, resolved=resolved)
    if running is not None and not req.replace and not req.dry_run:
        raise CoordinatorError(
            f"{running.model} is already served at {running.openai_base} (pid {running.pid}); "
            f"pass --replace to serve {model} instead, or run `sollol-ops down`"
        )
    info = resolved.gguf or read_gguf(resolved.blob)
    toolchain = toolchain or find_toolchain()
    outcome = UpOutcome("dry-run", model, resolved=resolved, info=info)
    if running is not None and req.replace and not req.dry_run:
        reporter.step(f"stopping {running.model} (pid {running.pid}) to serve {model}")
        coordinator.stop(root)
        outcome.replaced = running.model
    if not req.dry_run and procs.port_in_use(req.opts.host, req.opts.port):
        raise CoordinatorError(
            f"port {req.opts.port} on {req.opts.host} is already in use by another process; pass --port"
        )
    outcome.probes, outcome.skipped = check_backends(cluster, req.skip_unhealthy, reporter)
    slots = build_slots(outcome.probes)
    outcome.plan = plan_placement(info, slots, req.opts.n_ctx, model)
    if req.opts.alias is None:
        req.opts.alias = model
    outcome.command = coordinator.build_command(toolchain, resolved.blob, outcome.plan, req.opts)
    if req.dry_run:
        return outcome
    if foreground:
        outcome.kind = "foreground"
        return outcome
    reporter.step(f"starting llama-server on {req.opts.host}:{req.opts.port}")
    state = coordinator.start_detached(toolchain, resolved.blob, outcome.plan, req.opts, model, resolved.digest, root)
    try:
        outcome.ready_s = coordinator.wait_ready(state, timeout=req.timeout, on_progress=reporter.loading)
    except CoordinatorError:
        coordinator.stop(root, timeout=5)
        raise
    outcome.kind = "started"
    outcome.state = state
    outcome.distribution = coordinator.distribution(state)
    return outcome


# --------------------------------------------------------------------------- status


@dataclass
class BackendStatus:
    host: str
    endpoint: str
    status: str
    version: str | None
    devices: list[rpc.DeviceMemory]
    detail: str


@dataclass
class CoordinatorStatus:
    running: bool
    healthy: bool
    model: str | None = None
    pid: int | None = None
    endpoint: str | None = None
    uptime_s: float | None = None
    backends: list[str] = field(default_factory=list)
    distribution: Distribution | None = None
    log: str | None = None


@dataclass
class StatusReport:
    coordinator: CoordinatorStatus
    backends: list[BackendStatus]
    inventory: str | None


def coordinator_status(root: Path | None = None) -> CoordinatorStatus:
    state = _running(root)
    if state is None:
        return CoordinatorStatus(running=False, healthy=False)
    return CoordinatorStatus(
        running=True,
        healthy=coordinator.health(state) == 200,
        model=state.model,
        pid=state.pid,
        endpoint=state.openai_base,
        uptime_s=round(coordinator.uptime(state), 1),
        backends=list(state.backends),
        distribution=coordinator.distribution(state),
        log=state.log,
    )


def status(cluster: Cluster, root: Path | None = None, probe: Callable[..., list] = rpc.probe_all) -> StatusReport:
    """Coordinator and every backend. A backend our live coordinator holds is `serving` and is not
    probed (its turn belongs to the coordinator; each probe would only wait in its accept queue)."""
    coord = coordinator_status(root)
    held = set(coord.backends) if coord.running else set()
    to_probe = [b for b in cluster.backends if b.endpoint not in held]
    results = dict(zip([b.endpoint for b in to_probe], probe([b.endpoint for b in to_probe]), strict=True))
    rows = []
    for b in cluster.backends:
        if b.endpoint in held:
            rows.append(BackendStatus(b.host, b.endpoint, rpc.Status.SERVING.value, None, [], f"held by {coord.model}"))
            continue
        r = results[b.endpoint]
        rows.append(BackendStatus(b.host, b.endpoint, r.status.value, r.version, r.devices, r.detail))
    return StatusReport(coord, rows, str(cluster.inventory))
