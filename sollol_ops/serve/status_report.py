"""What `sollol-ops status` reports: the recorded coordinator as it really is, and every backend of the
inventory (those our live coordinator holds are not probed), with the staging ledger."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sollol_ops.cluster import rpc
from sollol_ops.cluster.inventory import Cluster
from sollol_ops.errors import CheckFailed
from sollol_ops.serve import incident, server_http
from sollol_ops.serve.coordinator import Coordinator, CoordinatorPhase, LeftOut
from sollol_ops.serve.draft import DraftStatus, draft_status
from sollol_ops.serve.incident import Incident
from sollol_ops.serve.server_log import Distribution
from sollol_ops.stage import ledger


@dataclass(frozen=True)
class BackendStatus:
    host: str
    endpoint: str
    status: str
    version: str | None
    devices: list[rpc.DeviceMemory]
    detail: str


@dataclass(frozen=True)
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
    state: CoordinatorPhase = CoordinatorPhase.NOT_RUNNING
    detail: str = ""
    suspects: list[str] = field(default_factory=list)  # the backend a stalled coordinator waits on
    lost: list[str] = field(default_factory=list)  # backends that closed their connection to it
    degraded: bool = False  # started without some backends of the inventory (sollol_skip_unhealthy)
    skipped: list[LeftOut] = field(default_factory=list)  # those backends, as they were at its start
    progress: dict[str, Any] = field(default_factory=dict)  # while loading: elapsed_s, log (llama-server's last line)
    draft: DraftStatus | None = None  # its draft for speculative decoding and the acceptance so far

    @property
    def degraded_note(self) -> str:
        without = ", ".join(lo.describe() for lo in self.skipped)
        return f"degraded: runs on {len(self.backends)} backend(s), without {without}"


@dataclass(frozen=True)
class StatusReport:
    coordinator: CoordinatorStatus
    backends: list[BackendStatus]
    inventory: str | None
    staged: list[dict[str, Any]] = field(default_factory=list)  # the staging ledger (sollol_ops.stage.ledger)
    incident: Incident | None = None  # the last heal or stall stop (serve/incident.py): history, not a problem

    def problems(self, require_coordinator: bool = False) -> list[str]:
        """What `status --check` fails on: a coordinator that exists but is not serving (or none, when
        required), and every backend that is neither ready nor held by our coordinator."""
        out = []
        c = self.coordinator
        if c.state not in (CoordinatorPhase.SERVING, CoordinatorPhase.NOT_RUNNING):
            out.append(f"coordinator {c.model or ''} is {c.state}: {c.detail}".replace("  ", " "))
        elif c.state is CoordinatorPhase.NOT_RUNNING and require_coordinator:
            out.append("no coordinator is running (start one with `sollol-ops up MODEL`)")
        if c.degraded and c.state is not CoordinatorPhase.NOT_RUNNING:
            fix = "`sollol-ops heal` once they are back"
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
    """The recorded coordinator as it really is (Coordinator.condition). A recorded one that is gone stays
    reported as `exited` (with the log's last error) until `down` or the next `up`."""
    home = Coordinator(root)
    state = home.load()
    if state is None:
        return CoordinatorStatus(running=False, healthy=False)
    now = home.condition(state, stall_timeout)
    draft = None
    if state.draft is not None:
        answering = now.phase in (CoordinatorPhase.SERVING, CoordinatorPhase.STALLED)
        draft = draft_status(state.draft, server_http.draft_counters(state.endpoint) if answering else None)
    return CoordinatorStatus(
        running=now.phase is not CoordinatorPhase.EXITED,
        healthy=now.phase is CoordinatorPhase.SERVING,
        model=state.model,
        pid=state.pid,
        endpoint=state.openai_base,
        listen=state.listen,
        exposed=state.exposed,
        uptime_s=now.uptime_s,
        backends=list(state.backends),
        distribution=now.distribution,
        log=state.log,
        state=now.phase,
        detail=now.detail,
        suspects=now.suspects,
        lost=now.lost,
        degraded=bool(state.skipped),
        skipped=list(state.skipped),
        progress=now.progress,
        draft=draft,
    )


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
        if coord.state is not CoordinatorPhase.NOT_RUNNING and b.endpoint in {lo.endpoint for lo in coord.skipped}:
            detail = f"{detail}; left out of {coord.model}'s coordinator (degraded)".lstrip("; ")
        rows.append(BackendStatus(b.host, b.endpoint, r.status.value, r.version, r.devices, detail))
    staged = ledger.staged_summary(ledger.load_ledger(root))
    return StatusReport(coord, rows, str(cluster.inventory), staged, incident.load(root))
