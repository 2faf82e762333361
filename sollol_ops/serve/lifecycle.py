"""The coordinator's lifecycle as library calls (up, foreground, down, ask, logs), and the one path from a
model to a llama-server command line (resolve -> probe -> plan -> command) that `up` and the benchmark
share. The CLI commands call only this module and status_report (`status`); they render what they return."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from sollol_ops import procs
from sollol_ops.cluster import rpc, speed_plan
from sollol_ops.cluster.inventory import HOST_DEVICE, Backend, Cluster, Coordinator, Placement
from sollol_ops.cluster.parallel import fit_parallel
from sollol_ops.cluster.placement import Plan, build_slots, describe_backend_problem, is_local_address
from sollol_ops.cluster.toolchain import Toolchain, find_toolchain
from sollol_ops.errors import BackendError, CoordinatorError, PlacementError, UsageError
from sollol_ops.model.gguf_info import GGUFInfo, read_gguf
from sollol_ops.model.ollama import ResolvedModel, resolve_model
from sollol_ops.serve import command, coordinator, statefile
from sollol_ops.serve import draft as drafting
from sollol_ops.serve.command import StartOptions
from sollol_ops.serve.coordinator import CoordinatorState, Launch, LeftOut, Stopped
from sollol_ops.serve.draft import NO_DRAFT, Draft
from sollol_ops.serve.server_log import Distribution


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
    draft: str | None = None  # `up --draft`: a draft model, ngram or none; None: the inventory's sollol_draft_models
    restart: bool = False  # with replace: start it again even when it serves this model (serve/heal.py)


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
    draft: Draft = NO_DRAFT


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
    draft: Draft = NO_DRAFT
    opts: StartOptions | None = None  # the options it starts with: -np sized (cluster.parallel)


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
    draft: Draft = NO_DRAFT,
    placement: Placement | None = None,
) -> Prepared:
    """Probe the backends, plan placement (with the coordinator's own device when it offers memory, less
    what a draft model takes of it; by measured speed with `placement` speed, cluster/speed_plan.py; None: by
    memory, no note), build the llama-server command: the one path from a model to a sharded llama-server,
    shared by `up` and the benchmark."""
    reporter = reporter or Reporter()
    probes, skipped = check_backends(backends, skip_unhealthy, reporter)
    local_devices = []
    if coordinator is not None and coordinator.memory_mib > 0:
        reporter.step(f"the coordinator offers {coordinator.memory_mib:,} MiB of {coordinator.device}")
        if coordinator.device != HOST_DEVICE:
            local_devices = command.list_devices(toolchain)
    reporter.phase("backend probes")
    room = drafting.host_room(draft, coordinator)  # a draft outside the offer takes host memory first
    slots = build_slots(probes, coordinator=coordinator, local_devices=local_devices, local_available=room)
    slots, draft_notes = drafting.fit(draft, slots, info)
    totals = {(b.endpoint, d.index): d.total for b, r in probes for d in r.devices}

    def choose(memory_plan: Plan) -> Plan:  # by measured speed where sollol_placement says so (speed_plan.choose)
        return speed_plan.choose(memory_plan, info, slots, totals, placement, toolchain, reporter.warn)

    try:  # -np: given, or as many as the chosen split leaves room for
        plan, parallel = fit_parallel(info, slots, opts.n_ctx, model, opts.parallel, choose)
    except PlacementError as exc:
        if not skipped:
            raise
        without = ", ".join(lo.describe() for lo in left_out(skipped))
        raise PlacementError(f"{exc} (on the {len(probes)} healthy backend(s), without {without})") from exc
    plan.notes += draft_notes
    opts = dataclasses.replace(opts, parallel=parallel)
    argv = command.command(toolchain, blob, opts, plan, draft=draft)
    prepared = Prepared(probes, skipped, plan, argv, draft, opts)
    reporter.phase("placement")
    return prepared


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
    command.check_extra_args(req.opts.extra_args)
    home = coordinator.Coordinator(root)
    if req.dry_run:
        return _up(req, cluster, reporter, home, toolchain, foreground)
    with home.lock(req.model):
        reporter.phase("lock")
        return _up(req, cluster, reporter, home, toolchain, foreground)


def _up(
    req: UpRequest,
    cluster: Cluster,
    reporter: Reporter,
    home: coordinator.Coordinator,
    toolchain: Toolchain | None,
    foreground: bool,
) -> UpOutcome:
    resolved = resolve_model(req.model, req.ollama_models)
    reporter.phase("model: manifest + GGUF header")
    model = resolved.ref
    opts = dataclasses.replace(
        req.opts, alias=req.opts.alias or model, embeddings=req.opts.embeddings or cluster.embeddings
    )
    choice, source = drafting.choose(req.draft, cluster.draft_models, model)
    running = home.running()
    same = running is not None and running.model == model and running.digest == resolved.digest
    if (
        same
        and running is not None
        and drafting.same_choice(running.draft, choice)
        and not foreground
        and not req.restart
    ):
        return UpOutcome(Outcome.ALREADY_RUNNING, model, state=running, resolved=resolved)
    if running is not None and not req.replace and not req.dry_run:
        other = f" with draft {running.draft.choice if running.draft else 'none'}" if same else ""
        raise CoordinatorError(
            f"{running.model} is already served{other} at {running.openai_base} (pid {running.pid}); "
            f"pass --replace to serve {model}{f' with draft {choice}' if same else ''} instead, "
            "or run `sollol-ops down`"
        )
    info = resolved.gguf or read_gguf(resolved.blob)
    offer = coordinator_offer(cluster, req.coordinator_memory_mib, req.coordinator_device)
    draft = drafting.resolve(choice, source, resolved, info, opts.n_ctx, req.ollama_models, offer)
    toolchain = toolchain or find_toolchain()
    reporter.phase("state check + toolchain")
    outcome = UpOutcome(Outcome.DRY_RUN, model, resolved=resolved, info=info, opts=opts, draft=draft)
    if running is not None and req.replace and not req.dry_run:
        reporter.step(f"stopping {running.model} (pid {running.pid}) to serve {model}")
        home.stop()
        outcome.replaced = running.model
    if not req.dry_run and procs.port_in_use(opts.host, opts.port):
        raise CoordinatorError(f"port {opts.port} on {opts.host} is already in use by another process; pass --port")
    skip = cluster.skip_unhealthy if req.skip_unhealthy is None else req.skip_unhealthy
    prepared = plan_command(
        model, resolved.blob, info, cluster.backends, opts, toolchain, skip, reporter, offer, draft, cluster.placement
    )
    outcome.probes, outcome.skipped = prepared.probes, prepared.skipped
    outcome.plan, outcome.command = prepared.plan, prepared.command
    outcome.opts = opts = prepared.opts or opts
    if req.dry_run:
        return outcome
    if warning := exposure_warning(opts):
        reporter.warn(warning)
    if warning := drafting.size_warning(draft, info):
        reporter.warn(warning)
    if foreground:
        outcome.kind = Outcome.FOREGROUND
        return outcome
    reporter.step(f"starting llama-server on {opts.host}:{opts.port}")
    launch = Launch(toolchain, resolved.blob, outcome.plan, opts, model, resolved.digest, left_out(outcome.skipped))
    state = home.start(dataclasses.replace(launch, draft=draft, request=recorded_request(req, model, opts)))
    reporter.phase("state file + spawn")
    try:
        outcome.ready_s = home.wait_ready(state, timeout=req.timeout, on_progress=reporter.loading)
    except CoordinatorError:
        home.stop(timeout=5)
        raise
    reporter.phase("readiness wait")
    outcome.kind = Outcome.STARTED
    outcome.state = state
    outcome.distribution = home.distribution(state)
    reporter.phase("distribution from the log")
    return outcome


def recorded_request(req: UpRequest, model: str, opts: StartOptions) -> dict[str, Any]:
    """The request as the coordinator's state keeps it (JSON), so that `sollol-ops heal` can start it again."""
    done = dataclasses.replace(req, model=model, opts=opts, dry_run=False, replace=False, restart=False)
    return json.loads(json.dumps(dataclasses.asdict(done), default=str))


def run_foreground(
    outcome: UpOutcome,
    root: Path | None = None,
    on_ready: Callable[[CoordinatorState], None] | None = None,
    ready_timeout: float = 600.0,
    toolchain: Toolchain | None = None,
    watch: Callable[[CoordinatorState], bool] | None = None,
) -> int:
    """Run the planned llama-server attached (a systemd unit's main process), holding the coordinator
    lock for its whole life; returns its exit code."""
    assert outcome.kind is Outcome.FOREGROUND and outcome.plan and outcome.resolved and outcome.opts
    home = coordinator.Coordinator(root)
    with home.lock(outcome.model):
        running = home.running()
        if running is not None:
            raise CoordinatorError(
                f"{running.model} is already served at {running.openai_base} (pid {running.pid}); "
                "run `sollol-ops down` first"
            )
        launch = Launch(
            toolchain or find_toolchain(),
            outcome.resolved.blob,
            outcome.plan,
            outcome.opts,
            outcome.model,
            outcome.resolved.digest,
            left_out(outcome.skipped),
            outcome.draft,
        )
        return home.run_foreground(launch, on_ready=on_ready, ready_timeout=ready_timeout, watch=watch)


def down(root: Path | None = None, timeout: float = 15.0) -> Stopped | None:
    """Stop the recorded coordinator (only a process proven ours is signalled); None: nothing recorded."""
    return coordinator.Coordinator(root).stop(timeout)


def ask(prompt: str, max_tokens: int = 64, stall_timeout: float = 120.0, root: Path | None = None) -> str:
    """One chat completion against the running coordinator (streamed, with a stall time-out)."""
    state = coordinator.Coordinator(root).load()
    if state is None or not coordinator.is_alive(state):
        raise CoordinatorError("no coordinator running; start one with `sollol-ops up MODEL`")
    return coordinator.chat(state, prompt, max_tokens=max_tokens, stall_timeout=stall_timeout)


def log_path(root: Path | None = None) -> Path:
    """The coordinator's llama-server log (the last run's, kept after `down`)."""
    path = coordinator.Coordinator(root).log_path
    if not path.is_file():
        raise CoordinatorError(f"no coordinator log at {path}; start one with `sollol-ops up MODEL`")
    return path
