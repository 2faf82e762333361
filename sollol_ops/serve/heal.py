"""Self-healing of the coordinator: a degraded one is started again on the full set of rpc-servers once those
left out answer a probe and no request is in flight; a stalled one (requests in flight, no model step) is
stopped, so that its clients get an error instead of waiting forever, naming the backend it waits on.

`sollol-ops heal` calls heal() once, by hand. With `sollol_heal: auto` the gateway's watcher and
`up --foreground` (sollol-coordinator.service) ask a Watch on every tick and act on its Verdict themselves.
Each act leaves a record (serve/incident.py) that `status` shows.

Only the backends a coordinator was started without are probed: an rpc-server serves one client at a time,
so a probe of one the coordinator holds would only wait behind it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from sollol_ops.cluster import rpc
from sollol_ops.cluster.inventory import Cluster
from sollol_ops.errors import CoordinatorError
from sollol_ops.serve import incident, lifecycle, server_http, server_proc
from sollol_ops.serve.command import StartOptions
from sollol_ops.serve.coordinator import Coordinator, CoordinatorPhase, CoordinatorState, is_alive

AUTO, MANUAL = "auto", "manual"
BY_HAND, BY_UNIT = "sollol-ops heal", "sollol-ops up --foreground"
PROBE_EVERY = 5.0  # seconds between two probes of the backends a degraded coordinator runs without


class Action(StrEnum):
    NOTHING = "nothing"
    RELOAD = "reload"  # degraded, and backends left out answer again: start it again on them
    STOP = "stop"  # stalled longer than the stall time-out


@dataclass(frozen=True)
class Verdict:
    action: Action
    message: str
    backends: list[str] = field(default_factory=list)  # RELOAD: those back; STOP: the suspects


@dataclass(frozen=True)
class HealOutcome:
    """What `sollol-ops heal` did (`--json`)."""

    action: Action
    model: str | None
    message: str
    backends: list[str] = field(default_factory=list)  # the coordinator's backends afterwards
    returned: list[str] = field(default_factory=list)
    suspects: list[str] = field(default_factory=list)


def returned(state: CoordinatorState, probe: Callable[..., list[rpc.ProbeResult]] = rpc.probe_all) -> list[str]:
    """The backends a degraded coordinator was started without that answer a probe now."""
    left = [lo.endpoint for lo in state.skipped if lo.endpoint not in state.backends]
    if not left:
        return []
    return [r.endpoint for r in probe(left, connect_timeout=1.0, turn_timeout=1.0, reply_timeout=2.0) if r.ok]


class StallClock:
    """How long the coordinator has had requests in flight without completing a model step, from its
    /metrics (`requests_processing`, `n_decode_total`) read once per observe()."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.steps: float | None = None
        self.processing = 0.0  # the last reading's requests in flight (or deferred)

    def observe(self, url: str) -> float:
        """Seconds stalled so far (0: progressing or idle). A /metrics that does not answer while requests
        were in flight counts as no progress (llama-server answers it from the loop that is stuck)."""
        now = time.monotonic()
        m = server_http.metrics(url, timeout=2.0)
        if m is None:
            return now - self.since if self.since is not None else 0.0
        self.processing = m.get("requests_processing", 0.0) + m.get("requests_deferred", 0.0)
        if m.get("requests_processing", 0.0) <= 0:
            self.since = self.steps = None
            return 0.0
        steps = m.get("n_decode_total")
        if self.since is None or steps != self.steps:
            self.since, self.steps = now, steps
            return 0.0
        return now - self.since


class Watch:
    """sollol_heal auto on a schedule: check() once per tick gives what to do with the coordinator now."""

    def __init__(self, stall_timeout: float, probe: Callable[..., list[rpc.ProbeResult]] = rpc.probe_all) -> None:
        self.stall_timeout = stall_timeout
        self.probe = probe
        self.clock = StallClock()
        self.probed = float("-inf")
        self.pid: int | None = None

    def check(self, state: CoordinatorState, idle: bool = True) -> Verdict | None:
        """STOP when stalled for stall_timeout; RELOAD when degraded, left-out backends answer again and no
        request is in flight (``idle``: the caller's own count; the coordinator's /metrics are read too)."""
        if state.pid != self.pid:
            self.pid, self.clock, self.probed = state.pid, StallClock(), float("-inf")
        stalled = self.clock.observe(state.endpoint)
        if stalled >= self.stall_timeout:
            suspects = server_proc.blocked_on(state.pid, state.backends)
            return Verdict(Action.STOP, incident.stall_line(state.model, stalled, suspects), suspects)
        if not state.skipped or not idle or self.clock.processing > 0:
            return None
        if time.monotonic() - self.probed < PROBE_EVERY:
            return None
        self.probed = time.monotonic()
        back = returned(state, self.probe)
        if not back:
            return None
        return Verdict(Action.RELOAD, f"{', '.join(back)} answer(s) again", back)


def reload_line(model: str, back: list[str], state: CoordinatorState | None) -> str:
    where = f"on {len(state.backends)} backend(s) ({', '.join(state.backends)})" if state else "again"
    still = (
        f"; still degraded without {', '.join(lo.endpoint for lo in state.skipped)}" if state and state.skipped else ""
    )
    return f"reloaded {model} {where}: {', '.join(back)} answer(s) again{still}"


def up_request(state: CoordinatorState) -> lifecycle.UpRequest:
    """The request the coordinator was started with, to start it again (replacing it)."""
    rec = dict(state.request)
    if not rec:
        raise CoordinatorError(
            f"the coordinator for {state.model} (pid {state.pid}) was started without a recorded request (an older "
            f"sollol-ops): run `sollol-ops up {state.model} --replace` with its options"
        )
    known = {f.name for f in dataclasses.fields(StartOptions)}
    opts = StartOptions(**{k: v for k, v in (rec.pop("opts", None) or {}).items() if k in known})
    names = {f.name for f in dataclasses.fields(lifecycle.UpRequest)} - {"opts"}
    req = lifecycle.UpRequest(opts=opts, **{k: v for k, v in rec.items() if k in names})
    return dataclasses.replace(req, replace=True, restart=True, dry_run=False, skip_unhealthy=True)


def heal(
    cluster: Cluster,
    stall_timeout: float,
    reporter: lifecycle.Reporter | None = None,
    root: Path | None = None,
    probe: Callable[..., list[rpc.ProbeResult]] = rpc.probe_all,
) -> HealOutcome:
    """`sollol-ops heal`: stalled for ``stall_timeout`` (measured now) -> stop it; degraded, backends left out
    answer again and nothing in flight -> start it again on them; else nothing, saying why."""
    home = Coordinator(root)
    state = home.load()
    if state is None or not is_alive(state):
        return HealOutcome(Action.NOTHING, None, "nothing to heal: no coordinator running")
    now = home.condition(state, stall_timeout)
    if now.phase is CoordinatorPhase.STALLED:
        _managed(state, "stop it")
        message = incident.stall_line(state.model, stall_timeout, now.suspects)
        home.stop(timeout=5)
        note(incident.IncidentKind.STALLED, state.model, message, BY_HAND, root, now.suspects)
        return HealOutcome(Action.STOP, state.model, message, suspects=now.suspects)
    if now.phase is not CoordinatorPhase.SERVING:
        return HealOutcome(
            Action.NOTHING, state.model, f"nothing to heal: {state.model} is {now.phase}: {now.detail}", state.backends
        )
    if not state.skipped:
        return HealOutcome(
            Action.NOTHING,
            state.model,
            f"nothing to heal: {state.model} is {now.phase}, not degraded",
            list(state.backends),
        )
    back = returned(state, probe)
    missing = ", ".join(lo.endpoint for lo in state.skipped)
    if not back:
        return HealOutcome(
            Action.NOTHING,
            state.model,
            f"nothing to heal: {state.model} runs degraded without {missing}, which do(es) not answer yet",
            list(state.backends),
        )
    if _busy(state):
        return HealOutcome(
            Action.NOTHING,
            state.model,
            f"nothing to heal now: {missing} answer(s) again but "
            f"{state.model} has requests in flight; run `sollol-ops heal` again when it is idle",
            list(state.backends),
            back,
        )
    _managed(state, "start it again on the full set")
    outcome = lifecycle.up(up_request(state), cluster, reporter, root)
    message = reload_line(state.model, back, outcome.state)
    note(incident.IncidentKind.HEALED, state.model, message, BY_HAND, root)
    after = list(outcome.state.backends) if outcome.state else []
    return HealOutcome(Action.RELOAD, state.model, message, after, back)


def note(
    kind: incident.IncidentKind, model: str, message: str, by: str, root: Path | None, suspects: Sequence[str] = ()
) -> None:
    """Keep what was done as the last incident (`status` shows it)."""
    incident.record(incident.Incident(time.time(), kind, model, message, list(suspects), by), root)


def _busy(state: CoordinatorState) -> bool:
    m = server_http.metrics(state.endpoint, timeout=2.0) or {}
    return m.get("requests_processing", 0.0) + m.get("requests_deferred", 0.0) > 0


def _managed(state: CoordinatorState, what: str) -> None:
    if state.foreground:
        raise CoordinatorError(
            f"the coordinator for {state.model} runs attached to `sollol-ops up --foreground` (a unit: "
            f"sollol-coordinator.service); restart that to {what} (`systemctl restart sollol-coordinator`), or set "
            "sollol_heal=auto and it does so itself"
        )


def run_foreground(
    outcome: lifecycle.UpOutcome,
    req: lifecycle.UpRequest,
    cluster: Cluster,
    reporter: lifecycle.Reporter,
    on_ready: Callable[[CoordinatorState], None] | None = None,
    root: Path | None = None,
) -> int:
    """`up --foreground` with sollol_heal auto: a degraded llama-server whose left-out backends answer again
    is stopped and started again on them, in this process; a stalled one is stopped and CoordinatorError
    raised, a non-zero exit that the unit's Restart=on-failure answers by starting it again."""
    while True:
        watch = Watch(cluster.stall_timeout) if cluster.heal == AUTO else None
        seen: list[Verdict] = []

        def check(state: CoordinatorState, watch: Watch | None = watch, seen: list[Verdict] = seen) -> bool:
            verdict = watch.check(state) if watch is not None else None
            if verdict is not None:
                seen.append(verdict)
            return verdict is not None

        code = lifecycle.run_foreground(outcome, root, on_ready, req.timeout, watch=check if watch else None)
        if not seen:
            return code
        verdict = seen[0]
        if verdict.action is Action.STOP:
            kind, message = incident.IncidentKind.STALLED, verdict.message
        else:
            reporter.warn(f"healing {outcome.model}: {verdict.message}; starting it again on them")
            outcome = lifecycle.up(
                dataclasses.replace(req, skip_unhealthy=True), cluster, reporter, root, foreground=True
            )
            kind, message = incident.IncidentKind.HEALED, f"restarting {outcome.model}: {verdict.message}"
        note(kind, outcome.model, message, BY_UNIT, root, verdict.backends)
        if verdict.action is Action.STOP:
            raise CoordinatorError(f"{message}; exiting so that the unit starts it again (Restart=on-failure)")
