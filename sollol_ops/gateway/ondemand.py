"""Sharded models on demand: the gateway starts the coordinator for the model a request asks for (through
lifecycle.up, the code of `sollol-ops up`), queues requests while it loads, stops it after keep_alive,
swaps between sharded models one at a time (requests grouped by model), and notices one that dies.

Everything here runs on the gateway's event loop; the blocking parts (lifecycle.up, coordinator.stop,
the liveness checks) run in worker threads."""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sollol_ops.cluster import facts as cluster_vars
from sollol_ops.cluster.inventory import Cluster
from sollol_ops.errors import ModelNotFound, SollolError
from sollol_ops.gateway.errors import ApiError
from sollol_ops.gateway.healing import Healer
from sollol_ops.gateway.keepalive import FOREVER
from sollol_ops.gateway.ondemand_status import OnDemandStatus, Phase
from sollol_ops.gateway.pool import normalize
from sollol_ops.gateway.priority import Priority, admit, slots_of
from sollol_ops.serve import coordinator, heal, lifecycle, server_log, server_proc
from sollol_ops.serve.command import StartOptions
from sollol_ops.serve.coordinator import CoordinatorState

log = logging.getLogger("sollol_ops.gateway")


@dataclass
class OnDemandSettings:
    opts: StartOptions = field(default_factory=StartOptions)  # how a coordinator the gateway starts runs
    keep_alive: float | None = 300.0  # default keep_alive (seconds; None: forever)
    # Requests waiting for a sharded model (loading or swapping); beyond: 503.
    queue_size: int = cluster_vars.GATEWAY_QUEUE_SIZE
    load_timeout: float = 600.0  # lifecycle.up's own wait for llama-server to be ready
    skip_unhealthy: bool | None = None  # None: the inventory's sollol_skip_unhealthy
    loading_progress: bool = False  # streamed requests that wait for a load get progress chunks (app.py)
    watch_interval: float = 1.0  # liveness checks of the serving coordinator
    retry_after: int = 5
    heal: str | None = None  # sollol_heal for its coordinator (gateway/healing.py); None: the inventory's
    stall_timeout: float | None = None  # None: the inventory's sollol_stall_timeout


@dataclass
class Ticket:
    """A request's place in the queue for a sharded model; `fut` resolves to its Lease (or an ApiError)."""

    name: str
    keep_alive: float | None
    fut: asyncio.Future[Lease]
    priority: Priority = Priority.INTERACTIVE
    seq: int = 0  # order of arrival


@dataclass
class Lease:
    """One admitted request on the coordinator; `release` once when it finishes."""

    manager: OnDemand
    state: CoordinatorState
    gen: int
    done: bool = False
    priority: Priority = Priority.INTERACTIVE

    def release(self, failed: bool = False) -> None:
        if not self.done:
            self.done = True
            self.manager.release(self, failed)


class _Reporter(lifecycle.Reporter):
    def __init__(self, manager: OnDemand, model: str) -> None:
        self.manager = manager
        self.model = model

    def step(self, message: str) -> None:
        log.info("loading %s: %s", self.model, message)
        self.manager.progress = {"step": message, "elapsed_s": round(time.monotonic() - self.manager.load_t0, 1)}

    def loading(self, elapsed: float, last_log_line: str) -> None:
        self.manager.progress = {"step": "llama-server loading", "elapsed_s": round(elapsed, 1), "log": last_log_line}

    def warn(self, message: str) -> None:
        log.warning("loading %s: %s", self.model, message)


class OnDemand:
    """The one sharded model: phases idle -> loading -> serving -> draining -> stopping -> idle."""

    def __init__(
        self,
        settings: OnDemandSettings,
        cluster: Callable[[], Cluster],
        ollama_models: str | None = None,
        root: Path | None = None,
    ) -> None:
        self.settings = settings
        self.cluster = cluster
        self.ollama_models = ollama_models
        self.root = root
        self.phase = Phase.IDLE
        self.current: str | None = None
        self.state: CoordinatorState | None = None
        self.owned = False  # started by this gateway (keep_alive applies) or adopted (`sollol-ops up`)
        self.gen = 0  # bumps with every coordinator the manager serves from
        self.inflight = 0
        self.queue: list[Ticket] = []
        self.keep_alive: float | None = settings.keep_alive
        self.idle_since = time.monotonic()
        self.progress: dict[str, Any] = {}
        self.load_t0 = 0.0
        self.loads = self.swaps = self.unloads = self.deaths = 0
        self.last_error = ""
        self.stopped = asyncio.Event()
        self._busy: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._background: collections.Counter[int] = collections.Counter()  # gen -> background leases in flight
        self._seq = itertools.count()
        self._group_end: tuple[int, int] | None = None  # (gen, seq): the last ticket served before a swap
        self.healer = Healer(cluster, settings.heal, settings.stall_timeout, root)

    # ---------------------------------------------------------------- lifecycle of the manager

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every scheduling step (the gateway refreshes its gauges)."""
        self._listeners.append(callback)

    def start(self) -> None:
        self._adopt(coordinator.Coordinator(self.root).load(warn=lambda m: log.warning("%s", m)))
        self._watch = asyncio.get_running_loop().create_task(self._watcher())

    async def close(self) -> None:
        for task in (self._watch, self._busy):
            if task is not None:
                task.cancel()
        for t in self.queue:
            if not t.fut.done():
                t.fut.set_exception(ApiError(503, "the gateway is shutting down"))
        self.queue.clear()

    def _adopt(self, state: CoordinatorState | None) -> None:
        if state is None or not coordinator.is_alive(state):
            return
        self.gen += 1
        self.current, self.state, self.phase, self.owned = normalize(state.model), state, Phase.SERVING, False
        self.inflight = 0
        self.idle_since = time.monotonic()
        log.info("adopted the running coordinator for %s (pid %d)", state.model, state.pid)

    # ---------------------------------------------------------------- requests

    def enqueue(self, model: str, keep_alive: float | None, priority: Priority = Priority.INTERACTIVE) -> Ticket:
        """Join the queue for `model`: its ticket is already done when the model is served now with a slot
        free for it (gateway.priority). ApiError 503 (with Retry-After) when the queue is full."""
        name = normalize(model)
        waiting = len(self.queue)
        served_now = self.phase == Phase.SERVING and self.current == name
        if waiting >= self.settings.queue_size and not served_now:
            raise ApiError(
                503,
                f"{waiting} requests already wait for a sharded model (--queue-size {self.settings.queue_size}); "
                "retry later",
                headers={"Retry-After": str(self.settings.retry_after)},
            )
        ticket = Ticket(name, keep_alive, asyncio.get_running_loop().create_future(), priority, next(self._seq))
        self.queue.append(ticket)
        self._kick()
        return ticket

    async def wait(self, ticket: Ticket) -> Lease:
        try:
            return await asyncio.shield(ticket.fut)
        except asyncio.CancelledError:  # the client left while waiting
            self.abandon(ticket)
            raise

    def abandon(self, ticket: Ticket) -> None:
        """The request of `ticket` is gone before it used its lease: leave the queue, or give the lease back."""
        if ticket in self.queue:
            self.queue.remove(ticket)
        elif ticket.fut.done() and not ticket.fut.cancelled() and ticket.fut.exception() is None:
            ticket.fut.result().release()
        self._kick()

    def progress_line(self, name: str) -> str:
        """One line on what a request for `name` waits for: the load's step, its seconds so far and
        llama-server's last log line, or the swap it waits behind."""
        name = normalize(name)
        if self.current == name and self.phase == Phase.LOADING:
            p = self.progress
            line = f"loading {name}: {p.get('step', 'starting')}, {time.monotonic() - self.load_t0:.0f}s so far"
            return line + (f"; llama-server: {p['log']}" if p.get("log") else "")
        if self.current not in (None, name) and self.phase in (Phase.SERVING, Phase.DRAINING, Phase.STOPPING):
            return f"waiting for {self.current} to finish {self.inflight} request(s) and unload, then loading {name}"
        if self.current == name and self.phase == Phase.SERVING:
            return f"waiting for a free slot of {name} ({self.inflight} request(s) in flight)"
        return f"waiting to load {name}"

    def release(self, lease: Lease, failed: bool) -> None:
        """A lease given back (Lease.release): one request fewer in flight; a failed one gets a check soon."""
        if lease.gen == self.gen:
            self.inflight -= 1
            self._background[lease.gen] -= lease.priority is Priority.BACKGROUND
            if self.inflight == 0:
                self.idle_since = time.monotonic()
        if failed and lease.gen == self.gen and self._watch is not None:
            self._check_soon()
        self._kick()

    async def unload(self, model: str) -> bool:
        """keep_alive 0 without a prompt: stop the model once its requests in flight are done (only a
        coordinator this gateway started). True when it was loaded and is now stopped."""
        name = normalize(model)
        if self.current != name or not self.owned or self.phase not in (Phase.SERVING, Phase.DRAINING):
            return False
        self.keep_alive = 0.0
        gen = self.gen
        self._kick()
        while self.gen == gen and self.current == name:
            self.stopped.clear()
            await self.stopped.wait()
        return True

    # ---------------------------------------------------------------- the scheduler

    def _kick(self) -> None:
        if self.phase == Phase.SERVING:
            assert self.state is not None
            self.queue = [t for t in self.queue if not t.fut.done()]  # left while queued
            slots = slots_of(self.state.command)  # no more at once than llama-server has slots: interactive first
            group = self._group()  # requests grouped by model: those queued before another model's, first
            for t in admit(group, self.current, self.inflight, self._background[self.gen], slots):
                self.queue.remove(t)
                self.inflight += 1
                self._background[self.gen] += t.priority is Priority.BACKGROUND
                self.keep_alive = t.keep_alive
                t.fut.set_result(Lease(self, self.state, self.gen, priority=t.priority))
            if self._group_end is not None and not self._group():  # its group is served: swap
                self._group_end = None
                self.phase = Phase.DRAINING  # another sharded model waits: serve no more of this one
                log.info(
                    "swap from %s to %s once %d request(s) finish", self.current, self.queue[0].name, self.inflight
                )
            elif self.inflight == 0 and self.owned and self._expired():
                self.phase = Phase.DRAINING
        if self.phase == Phase.DRAINING and self.inflight == 0 and self._busy is None:
            self.phase = Phase.STOPPING
            swap = bool(self.queue) and self.queue[0].name != self.current
            self._busy = asyncio.get_running_loop().create_task(self._stop(swap))
        if self.phase == Phase.IDLE and self.queue and self._busy is None:
            name = self.queue[0].name
            self.phase, self.current, self.state, self.progress = Phase.LOADING, name, None, {}
            self.load_t0 = time.monotonic()
            self._busy = asyncio.get_running_loop().create_task(self._load(name))
        for callback in self._listeners:
            callback()

    def _group(self) -> list[Ticket]:
        """The queued tickets of the served model to admit before a swap: all of them, or once another model
        waits, those that came before (the group ends with the last of them then)."""
        mine = [t for t in self.queue if t.name == self.current]
        if not any(t.name != self.current for t in self.queue):
            self._group_end = None
            return mine
        if self._group_end is None or self._group_end[0] != self.gen:
            self._group_end = (self.gen, max((t.seq for t in mine), default=-1))
        return [t for t in mine if t.seq <= self._group_end[1]]

    def _expired(self) -> bool:
        if self.keep_alive is FOREVER:
            return False
        return time.monotonic() - self.idle_since >= self.keep_alive

    async def _stop(self, swap: bool) -> None:
        name = self.current
        try:
            why = "to swap" if swap else f"idle for keep_alive {self.keep_alive:g}s"
            log.info("stopping the coordinator for %s (%s)", name, why)
            await asyncio.to_thread(coordinator.Coordinator(self.root).stop)
            if swap:
                self.swaps += 1
            else:
                self.unloads += 1
        except (SollolError, OSError) as exc:
            log.warning("stopping the coordinator for %s: %s", name, exc)
        finally:
            self._to_idle()
            self._busy = None
            self._kick()

    def _to_idle(self) -> None:
        self.gen += 1
        self.phase, self.current, self.state, self.owned, self.inflight = Phase.IDLE, None, None, False, 0
        self.stopped.set()

    async def _load(self, name: str) -> None:
        req = lifecycle.UpRequest(
            name,
            self.settings.opts,
            self.ollama_models,
            replace=True,
            skip_unhealthy=self.settings.skip_unhealthy,
            timeout=self.settings.load_timeout,
        )
        try:
            reporter = _Reporter(self, name)
            outcome = await asyncio.to_thread(lambda: lifecycle.up(req, self.cluster(), reporter, self.root))
        except Exception as exc:  # a refusal (probes, placement, lock) or a failed start: the waiters' answer
            status = (404 if isinstance(exc, ModelNotFound) else 503) if isinstance(exc, SollolError) else 500
            message = str(exc) if isinstance(exc, SollolError) else f"{type(exc).__name__}: {exc}"
            self.last_error = message
            log.warning("loading %s failed: %s", name, message)
            self._to_idle()
            for t in [t for t in self.queue if t.name == name]:
                self.queue.remove(t)
                if not t.fut.done():
                    t.fut.set_exception(
                        ApiError(status, f"cannot load {name}: {message}", route="shard", node="coordinator")
                    )
            self._busy = None
            self._kick()
            return
        assert outcome.state is not None
        self.gen += 1
        self.state, self.phase, self.inflight = outcome.state, Phase.SERVING, 0
        self.owned = outcome.kind is lifecycle.Outcome.STARTED
        self.idle_since = time.monotonic()
        self.last_error = ""
        if self.owned:
            self.loads += 1
            log.info("loaded %s in %.1fs (pid %d)", name, time.monotonic() - self.load_t0, outcome.state.pid)
        self._busy = None
        self._kick()

    # ---------------------------------------------------------------- watching the coordinator

    def _check_soon(self) -> None:
        asyncio.get_running_loop().create_task(self._check())

    async def _watcher(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_interval)
            try:
                await self._check()
                self._kick()  # keep_alive expiry
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the coordinator watch failed")

    async def _check(self) -> None:
        """Serving: is the coordinator still there, and are its backends? A coordinator that died or lost a
        backend is stopped (its requests in flight see their connection close: an error in the API's
        shape) and the next request starts it again; so is a stalled one, and a degraded one is loaded again when
        its backends are back (_heal). Idle: adopt one started by hand."""
        if self._busy is not None:
            return
        if self.phase == Phase.IDLE:
            state = await asyncio.to_thread(coordinator.Coordinator(self.root).load, lambda m: None)
            if self.phase == Phase.IDLE and self._busy is None:
                self._adopt(state)
            return
        if self.phase not in (Phase.SERVING, Phase.DRAINING) or self.state is None:
            return
        state, gen = self.state, self.gen
        alive = await asyncio.to_thread(coordinator.is_alive, state)
        lost = await asyncio.to_thread(server_proc.lost_backends, state.pid, state.backends) if alive else []
        recorded = await asyncio.to_thread(coordinator.Coordinator(self.root).load, lambda m: None)
        if gen != self.gen or self._busy is not None:
            return
        if alive and not lost and recorded is not None and recorded.pid == state.pid:
            return await self._heal(state, gen)
        if (alive and not lost) or (recorded is None and self.inflight == 0):  # `up --replace` or `down` by hand
            log.warning("the coordinator for %s was replaced or stopped outside the gateway", self.current)
            self._to_idle()
            self._adopt(recorded)
            return
        self.deaths += 1
        why = f"lost backend(s) {', '.join(lost)}" if lost else f"llama-server (pid {state.pid}) exited"
        self.last_error = f"the coordinator for {self.current} failed: {why}: {server_log.last_error(Path(state.log))}"
        log.warning(
            "%s; %d request(s) in flight get an error; the next request starts it again", self.last_error, self.inflight
        )
        self.phase = Phase.STOPPING
        self._busy = asyncio.get_running_loop().create_task(self._stop_dead())

    async def _heal(self, state: CoordinatorState, gen: int) -> None:
        """sollol_heal (gateway/healing.py): a stalled coordinator is stopped as a dead one is; a degraded one
        this gateway started, with nothing in flight or queued, is stopped and loaded again on the backends back."""
        verdict = await self.healer.verdict(state, self.owned and self.inflight == 0 and not self.queue)
        if verdict is None or gen != self.gen or self._busy is not None:
            return
        if verdict.action is heal.Action.RELOAD and (self.inflight or self.queue or self.phase != Phase.SERVING):
            return
        if verdict.action is heal.Action.STOP:
            self.deaths += 1
            self.last_error = f"the coordinator for {self.current} failed: {verdict.message}"
        self.phase = Phase.STOPPING
        reload = self.current if verdict.action is heal.Action.RELOAD else None
        self._busy = asyncio.get_running_loop().create_task(self._stop_dead(reload))
        await self.healer.record(verdict, state, self.inflight)

    async def _stop_dead(self, reload: str | None = None) -> None:
        try:
            await asyncio.to_thread(coordinator.Coordinator(self.root).stop, 5)
        except (SollolError, OSError) as exc:
            log.warning("stopping the failed coordinator: %s", exc)
        finally:
            self._to_idle()
            self._busy = None
            if reload is not None:  # healed: the same model again, on the backends that answer now
                self.phase, self.current, self.progress, self.load_t0 = Phase.LOADING, reload, {}, time.monotonic()
                self._busy = asyncio.get_running_loop().create_task(self._load(reload))
            self._kick()

    # ---------------------------------------------------------------- reporting

    def describe(self) -> OnDemandStatus:
        expires = None
        if self.phase == Phase.SERVING and self.owned and self.keep_alive is not FOREVER and self.inflight == 0:
            expires = round(max(0.0, self.keep_alive - (time.monotonic() - self.idle_since)), 1)
        return OnDemandStatus(
            model=self.current,
            phase=self.phase,
            owned=self.owned,
            endpoint=self.state.endpoint if self.state else None,
            pid=self.state.pid if self.state else None,
            in_flight=self.inflight,
            queued=dict(collections.Counter(t.name for t in self.queue)),
            keep_alive_s=self.keep_alive,
            expires_in_s=expires,
            progress=self.progress if self.phase == Phase.LOADING else {},
            degraded=bool(self.state and self.state.skipped),
            skipped_backends=[lo.describe() for lo in self.state.skipped] if self.state else [],
            loads=self.loads,
            swaps=self.swaps,
            unloads=self.unloads,
            deaths=self.deaths,
            last_error=self.last_error,
            heals=self.healer.heals,
        )
