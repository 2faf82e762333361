"""The coordinator's lifecycle as library calls (up, foreground, status), and the one path from a model
to a llama-server command line (resolve -> probe -> plan -> command) that `up` and the benchmark share.
The CLI commands call only this module; they render what it returns."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from sollol_ops import procs
from sollol_ops.cluster import rpc
from sollol_ops.cluster.inventory import HOST_DEVICE, Backend, Cluster, Coordinator
from sollol_ops.cluster.placement import Plan, build_slots, is_local_address, plan_placement
from sollol_ops.cluster.toolchain import Toolchain, find_toolchain
from sollol_ops.errors import BackendError, CheckFailed, CoordinatorError, PlacementError, UsageError
from sollol_ops.model.gguf_info import GGUFInfo, read_gguf
from sollol_ops.model.ollama import ResolvedModel, resolve_model
from sollol_ops.serve import coordinator, llama_server, statefile
from sollol_ops.serve.coordinator import CoordinatorState, LeftOut
from sollol_ops.serve.llama_server import Distribution, StartOptions


@dataclass
class UpRequest:
    model: str
    opts: StartOptions = field(default_factory=StartOptions)
    ollama_models: str | None = None
    dry_run: bool = False
    replace: bool = False
    skip_unhealthy: bool | None = None  # None: the inventory's sollol_skip_unhealthy
    timeout: float = 600.0
    coordinator_memory_mib: int | None = None  # `up --coordinator-memory`: overrides the inventory's
    coordinator_device: str | None = None  # `up --coordinator-device`


class Outcome(StrEnum):
    ALREADY_RUNNING = "already-running"
    DRY_RUN = "dry-run"
    FOREGROUND = "foreground"
    STARTED = "started"


@dataclass
class UpOutcome:
    kind: Outcome
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
    opts: StartOptions | None = None


class Reporter:
    """Progress sink; the CLI subclasses it to draw. The library calls these and nothing else."""

    def step(self, message: str) -> None:  # pragma: no cover - default is silent
        pass

    def loading(self, elapsed: float, last_log_line: str) -> None:  # pragma: no cover
        pass

    def warn(self, message: str) -> None:
        statefile.warn_stderr(message)

    def phase(self, name: str) -> None:
        """The phase ``name`` of `up` has just ended (`up --timings` prints each one's duration)."""


def describe_backend_problem(backend: Backend, result: rpc.ProbeResult) -> str:
    return f"{backend.host} ({backend.endpoint}) is {result.status.value}: {result.detail}"


def check_backends(
    backends: Sequence[Backend], skip_unhealthy: bool, reporter: Reporter
) -> tuple[list[tuple[Backend, rpc.ProbeResult]], list[tuple[Backend, rpc.ProbeResult]]]:
    reporter.step(f"probing {len(backends)} backend(s)")
    results = rpc.probe_all([b.endpoint for b in backends])
    pairs = list(zip(backends, results, strict=True))
    bad = [(b, r) for b, r in pairs if not r.ok]
    problems = "; ".join(describe_backend_problem(b, r) for b, r in bad)
    if bad and not skip_unhealthy:
        raise BackendError(
            f"{problems}; fix them (systemctl status sollol-rpc-server), or allow a degraded start on the healthy "
            "backends: --skip-unhealthy, or sollol_skip_unhealthy=true in the inventory"
        )
    good = [(b, r) for b, r in pairs if r.ok]
    if not good:
        raise BackendError("no healthy backend left: " + problems)
    if bad:
        reporter.warn(
            f"starting degraded on {len(good)} of {len(pairs)} backends, without {problems} "
            "(skip-unhealthy is on; `sollol-ops status` names them)"
        )
    return good, bad


def left_out(skipped: Sequence[tuple[Backend, rpc.ProbeResult]]) -> list[LeftOut]:
    return [LeftOut(b.host, b.endpoint, r.status.value, r.detail) for b, r in skipped]


@dataclass
class Prepared:
    """A model placed on backends: what to run and why."""

    probes: list[tuple[Backend, rpc.ProbeResult]]
    skipped: list[tuple[Backend, rpc.ProbeResult]]
    plan: Plan
    command: list[str]


def coordinator_offer(cluster: Cluster, memory_mib: int | None = None, device: str | None = None) -> Coordinator | None:
    """What this machine, as the coordinator, offers to the model's layers: the inventory's
    sollol_coordinator_memory_mib / _device (Cluster.offering_coordinator), overridden by `up`'s
    --coordinator-memory / --coordinator-device. None: nothing (every layer on the rpc-servers)."""
    offer = cluster.offering_coordinator(is_local_address)
    if memory_mib is not None:
        offer = dataclasses.replace(offer or Coordinator("this host", "127.0.0.1"), memory_mib=memory_mib)
    if device is not None and offer is not None:
        offer = dataclasses.replace(offer, device=device)
    if offer is None or offer.memory_mib <= 0:
        if device is not None:
            raise UsageError(
                f"--coordinator-device {device} without memory to offer: pass --coordinator-memory MIB "
                "(or set sollol_coordinator_memory_mib on the coordinator's host)"
            )
        return None
    return offer


def plan_command(
    model: str,
    blob: Path,
    info: GGUFInfo,
    backends: Sequence[Backend],
    opts: StartOptions,
    toolchain: Toolchain,
    skip_unhealthy: bool = False,
    reporter: Reporter | None = None,
    coordinator: Coordinator | None = None,
) -> Prepared:
    """Probe the backends, plan placement (with the coordinator's own device when it offers memory),
    build the llama-server command: the one path from a model to a sharded llama-server, shared by `up`
    and the benchmark."""
    reporter = reporter or Reporter()
    probes, skipped = check_backends(backends, skip_unhealthy, reporter)
    local_devices = []
    if coordinator is not None and coordinator.memory_mib > 0:
        reporter.step(f"the coordinator offers {coordinator.memory_mib:,} MiB of {coordinator.device}")
        if coordinator.device != HOST_DEVICE:
            local_devices = llama_server.list_devices(toolchain)
    reporter.phase("backend probes")
    slots = build_slots(probes, coordinator=coordinator, local_devices=local_devices)
    try:
        plan = plan_placement(info, slots, opts.n_ctx, model)
    except PlacementError as exc:
        if not skipped:
            raise
        without = ", ".join(lo.describe() for lo in left_out(skipped))
        raise PlacementError(f"{exc} (on the {len(probes)} healthy backend(s), without {without})") from exc
    prepared = Prepared(probes, skipped, plan, llama_server.command(toolchain, blob, opts, plan))
    reporter.phase("placement")
    return prepared


def _running(root: Path | None) -> CoordinatorState | None:
    state = coordinator.load_state(root)
    if state is not None and not coordinator.is_alive(state):
        coordinator.clear_state(root)  # stale: the process is gone (or the pid is no longer ours)
        return None
    return state


def exposure_warning(opts: StartOptions) -> str | None:
    """The warning `up` gives when llama-server will listen beyond loopback."""
    if procs.is_loopback(opts.host):
        return None
    keyed = any(a == "--api-key" or a.startswith(("--api-key=", "--api-key-file")) for a in opts.extra_args)
    where = "every interface" if opts.host in ("0.0.0.0", "::", "") else opts.host
    if keyed:
        return f"llama-server will listen on {where} (port {opts.port}), protected by the --api-key given"
    return (
        f"llama-server will listen on {where} (port {opts.port}) with no API key: anyone who can reach this host "
        "can use the model; firewall the port or add --server-arg=--api-key --server-arg=KEY"
    )


def up(
    req: UpRequest,
    cluster: Cluster,
    reporter: Reporter | None = None,
    root: Path | None = None,
    toolchain: Toolchain | None = None,
    foreground: bool = False,
) -> UpOutcome:
    """Resolve, probe, plan, start and wait, under the coordinator lock (one `up` at a time)."""
    reporter = reporter or Reporter()
    llama_server.check_extra_args(req.opts.extra_args)
    if req.dry_run:
        return _up(req, cluster, reporter, root, toolchain, foreground)
    with coordinator.start_lock(req.model, root):
        reporter.phase("lock")
        return _up(req, cluster, reporter, root, toolchain, foreground)


def _up(
    req: UpRequest,
    cluster: Cluster,
    reporter: Reporter,
    root: Path | None,
    toolchain: Toolchain | None,
    foreground: bool,
) -> UpOutcome:
    resolved = resolve_model(req.model, req.ollama_models)
    reporter.phase("model: manifest + GGUF header")
    model = resolved.ref
    opts = dataclasses.replace(req.opts, alias=req.opts.alias or model)
    running = _running(root)
    if running is not None and running.model == model and running.digest == resolved.digest and not foreground:
        return UpOutcome(Outcome.ALREADY_RUNNING, model, state=running, resolved=resolved)
    if running is not None and not req.replace and not req.dry_run:
        raise CoordinatorError(
            f"{running.model} is already served at {running.openai_base} (pid {running.pid}); "
            f"pass --replace to serve {model} instead, or run `sollol-ops down`"
        )
    info = resolved.gguf or read_gguf(resolved.blob)
    toolchain = toolchain or find_toolchain()
    reporter.phase("state check + toolchain")
    outcome = UpOutcome(Outcome.DRY_RUN, model, resolved=resolved, info=info, opts=opts)
    if running is not None and req.replace and not req.dry_run:
        reporter.step(f"stopping {running.model} (pid {running.pid}) to serve {model}")
        coordinator.stop(root)
        outcome.replaced = running.model
    if not req.dry_run and procs.port_in_use(opts.host, opts.port):
        raise CoordinatorError(f"port {opts.port} on {opts.host} is already in use by another process; pass --port")
    skip = cluster.skip_unhealthy if req.skip_unhealthy is None else req.skip_unhealthy
    offer = coordinator_offer(cluster, req.coordinator_memory_mib, req.coordinator_device)
    prepared = plan_command(model, resolved.blob, info, cluster.backends, opts, toolchain, skip, reporter, offer)
    outcome.probes, outcome.skipped = prepared.probes, prepared.skipped
    outcome.plan, outcome.command = prepared.plan, prepared.command
    if req.dry_run:
        return outcome
    if warning := exposure_warning(opts):
        reporter.warn(warning)
    if foreground:
        outcome.kind = Outcome.FOREGROUND
        return outcome
    reporter.step(f"starting llama-server on {opts.host}:{opts.port}")
    state = coordinator.start_detached(
        toolchain, resolved.blob, outcome.plan, opts, model, resolved.digest, root, left_out(outcome.skipped)
    )
    reporter.phase("state file + spawn")
    try:
        outcome.ready_s = coordinator.wait_ready(state, timeout=req.timeout, on_progress=reporter.loading)
    except CoordinatorError:
        coordinator.stop(root, timeout=5)
        raise
    reporter.phase("readiness wait")
    outcome.kind = Outcome.STARTED
    outcome.state = state
    outcome.distribution = coordinator.distribution(state)
    reporter.phase("distribution from the log")
    return outcome


def run_foreground(
    outcome: UpOutcome,
    root: Path | None = None,
    on_ready: Callable[[CoordinatorState], None] | None = None,
    ready_timeout: float = 600.0,
    toolchain: Toolchain | None = None,
) -> int:
    """Run the planned llama-server attached (a systemd unit's main process), holding the coordinator
    lock for its whole life; returns its exit code."""
    assert outcome.kind is Outcome.FOREGROUND and outcome.plan and outcome.resolved and outcome.opts
    with coordinator.start_lock(outcome.model, root):
        running = _running(root)
        if running is not None:
            raise CoordinatorError(
                f"{running.model} is already served at {running.openai_base} (pid {running.pid}); "
                "run `sollol-ops down` first"
            )
        return coordinator.run_foreground(
            toolchain or find_toolchain(),
            outcome.resolved.blob,
            outcome.plan,
            outcome.opts,
            outcome.model,
            outcome.resolved.digest,
            root,
            on_ready=on_ready,
            ready_timeout=ready_timeout,
            skipped=left_out(outcome.skipped),
        )


plan_rows = coordinator.plan_rows


def down(root: Path | None = None, timeout: float = 15.0) -> coordinator.Stopped | None:
    """Stop the recorded coordinator (only a process proven ours is signalled); None: nothing recorded."""
    return coordinator.stop(root, timeout)


def ask(prompt: str, max_tokens: int = 64, stall_timeout: float = 120.0, root: Path | None = None) -> str:
    """One chat completion against the running coordinator (streamed, with a stall time-out)."""
    state = coordinator.load_state(root)
    if state is None or not coordinator.is_alive(state):
        raise CoordinatorError("no coordinator running; start one with `sollol-ops up MODEL`")
    return coordinator.chat(state, prompt, max_tokens=max_tokens, stall_timeout=stall_timeout)


def log_path(root: Path | None = None) -> Path:
    """The coordinator's llama-server log (the last run's, kept after `down`)."""
    path = coordinator.log_path(root)
    if not path.is_file():
        raise CoordinatorError(f"no coordinator log at {path}; start one with `sollol-ops up MODEL`")
    return path


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
    listen: str | None = None
    exposed: bool = False
    uptime_s: float | None = None
    backends: list[str] = field(default_factory=list)
    distribution: Distribution | None = None
    log: str | None = None
    state: str = "not running"  # serving | loading | unhealthy | stalled | backend-lost | exited | not running
    detail: str = ""
    suspects: list[str] = field(default_factory=list)  # the backend a stalled coordinator waits on
    lost: list[str] = field(default_factory=list)  # backends that closed their connection to it
    degraded: bool = False  # started without some backends of the inventory (sollol_skip_unhealthy)
    skipped: list[LeftOut] = field(default_factory=list)  # those backends, as they were at its start
    progress: dict[str, Any] = field(default_factory=dict)  # while loading: elapsed_s, log (llama-server's last line)

    @property
    def degraded_note(self) -> str:
        without = ", ".join(lo.describe() for lo in self.skipped)
        return f"degraded: runs on {len(self.backends)} backend(s), without {without}"


@dataclass
class StatusReport:
    coordinator: CoordinatorStatus
    backends: list[BackendStatus]
    inventory: str | None
    staged: list[dict[str, Any]] = field(default_factory=list)  # the staging ledger (sollol_ops.stage.ledger)

    def problems(self, require_coordinator: bool = False) -> list[str]:
        """What `status --check` fails on: a coordinator that exists but is not serving (or none, when
        required), and every backend that is neither ready nor held by our coordinator."""
        out = []
        c = self.coordinator
        if c.state not in ("serving", "not running"):
            out.append(f"coordinator {c.model or ''} is {c.state}: {c.detail}".replace("  ", " "))
        elif c.state == "not running" and require_coordinator:
            out.append("no coordinator is running (start one with `sollol-ops up MODEL`)")
        if c.degraded and c.state != "not running":
            fix = f"`sollol-ops up {c.model} --replace` once they are back"
            out.append(f"coordinator {c.model} is {c.degraded_note} ({fix})")
        for b in self.backends:
            if b.status not in (rpc.Status.READY.value, rpc.Status.SERVING.value):
                out.append(f"{b.host} ({b.endpoint}) is {b.status}: {b.detail}")
        return out

    def check(self, require_coordinator: bool = False) -> None:
        problems = self.problems(require_coordinator)
        if problems:
            raise CheckFailed(f"{len(problems)} problem(s): " + "; ".join(problems))


def coordinator_status(root: Path | None = None, stall_timeout: float = 10.0) -> CoordinatorStatus:
    """The recorded coordinator as it really is. A recorded one that is gone stays reported as
    `exited` (with the log's last error) until `down` or the next `up`. A healthy one with requests in
    flight that completes no model step for ``stall_timeout`` is `stalled`, with the backend it waits
    on as suspect."""
    state = coordinator.load_state(root)
    if state is None:
        return CoordinatorStatus(running=False, healthy=False)
    base = CoordinatorStatus(
        running=True,
        healthy=False,
        model=state.model,
        pid=state.pid,
        endpoint=state.openai_base,
        listen=state.listen,
        exposed=state.exposed,
        backends=list(state.backends),
        log=state.log,
        degraded=bool(state.skipped),
        skipped=list(state.skipped),
    )
    if not coordinator.is_alive(state):
        base.running = False
        base.state = "exited"
        base.detail = f"pid {state.pid} is gone; last log line: {coordinator.last_error(state)}"
        return base
    base.uptime_s = round(coordinator.uptime(state), 1)
    base.distribution = coordinator.distribution(state)
    code = coordinator.health(state)
    base.lost = coordinator.lost_backends(state)
    if base.lost:
        base.state = "backend-lost"
        base.detail = (
            f"{', '.join(base.lost)} closed the connection (the rpc-server died or restarted); the next request "
            "will fail: `sollol-ops down`, check the worker, `sollol-ops up` again"
        )
    elif code == 503 or (code is None and not coordinator.http_started(state)):
        line = llama_server.last_line(Path(state.log))
        base.state, base.progress = "loading", {"elapsed_s": base.uptime_s, "log": line}
        what = "loading the model" if code == 503 else "starting (contacting its RPC backends; not answering yet)"
        base.detail = f"llama-server is {what} ({base.uptime_s:.0f}s so far; last log line: {line or '-'})"
    elif code != 200:
        base.state = "unhealthy"
        base.detail = f"/health answered {code}" if code else "/health does not answer"
    elif coordinator.is_stalled(state, stall_timeout):
        base.state = "stalled"
        base.suspects = coordinator.blocked_on(state)
        base.detail = coordinator.stall_message(state, stall_timeout)
    else:
        base.healthy, base.state = True, "serving"
    return base


def status(
    cluster: Cluster,
    root: Path | None = None,
    probe: Callable[..., list] = rpc.probe_all,
    stall_timeout: float = 10.0,
) -> StatusReport:
    """Coordinator and every backend. A backend our live coordinator holds is `serving` and is not
    probed (its turn belongs to the coordinator; each probe would only wait in its accept queue);
    when the coordinator is stalled, the backend it waits on is reported `stalled`."""
    coord = coordinator_status(root, stall_timeout)
    held = set(coord.backends) if coord.running else set()
    to_probe = [b for b in cluster.backends if b.endpoint not in held]
    results = dict(zip([b.endpoint for b in to_probe], probe([b.endpoint for b in to_probe]), strict=True))
    rows = []
    for b in cluster.backends:
        if b.endpoint in coord.lost:
            detail = f"closed its connection to {coord.model}'s coordinator (rpc-server died or restarted)"
            rows.append(BackendStatus(b.host, b.endpoint, "lost", None, [], detail))
            continue
        if b.endpoint in coord.suspects:
            detail = f"held by {coord.model}, which has been waiting for its reply for over {stall_timeout:g}s"
            rows.append(BackendStatus(b.host, b.endpoint, "stalled", None, [], detail))
            continue
        if b.endpoint in held:
            rows.append(BackendStatus(b.host, b.endpoint, rpc.Status.SERVING.value, None, [], f"held by {coord.model}"))
            continue
        r = results[b.endpoint]
        detail = r.detail
        if coord.state != "not running" and b.endpoint in {lo.endpoint for lo in coord.skipped}:
            detail = f"{detail}; left out of {coord.model}'s coordinator (degraded)".lstrip("; ")
        rows.append(BackendStatus(b.host, b.endpoint, r.status.value, r.version, r.devices, detail))
    from sollol_ops.stage import ledger

    return StatusReport(coord, rows, str(cluster.inventory), ledger.staged_summary(ledger.load_ledger(root)))
