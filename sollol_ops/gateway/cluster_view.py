"""The cluster as the gateway's page shows it: the coordinator with its layers, every rpc-server with its state
(the rules of `sollol-ops status`: a backend the live coordinator holds is never probed, its turn is the
coordinator's), the pool nodes, and the link figures `doctor` measured last.

Refreshed once a second while a page watches (`watching`), on demand otherwise. A backend seen up since the
gateway started and gone now (refused, or closed its connection to the coordinator) is `lost`; one never seen up
is `down`. While the shard loads a model, the rpc-servers are not probed (the load talks to them)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from sollol_ops.cluster import rpc
from sollol_ops.cluster.inventory import Cluster
from sollol_ops.errors import SollolError
from sollol_ops.gateway.pool import Node, Pool
from sollol_ops.serve import doctor_links, status_report
from sollol_ops.ui import to_jsonable

log = logging.getLogger("sollol_ops.gateway")

EVERY_S = 1.0
STALL_TIMEOUT_S = 10.0


class BackendState(StrEnum):
    """An rpc-server on the page (the values of `sollol-ops status`, plus `lost`)."""

    READY = "ready"
    BUSY = "busy"
    SERVING = "serving"
    STALLED = "stalled"
    LOST = "lost"  # seen up since the gateway started, gone now
    DOWN = "down"
    INCOMPATIBLE = "incompatible"


UP = {BackendState.READY, BackendState.BUSY, BackendState.SERVING, BackendState.STALLED}


def quick_probe(endpoints: list[str]) -> list[rpc.ProbeResult]:
    """rpc.probe_all with short bounds: the page's view refreshes every second."""
    return rpc.probe_all(endpoints, connect_timeout=0.5, turn_timeout=0.5, reply_timeout=1.0, deadline_s=1.5)


def pool_node(node: Node) -> dict[str, Any]:
    """A pool node as the page shows it: its description and one state (ready, busy, degraded, down)."""
    d = node.describe()
    if not node.healthy:
        state = "down"
    elif node.breaker_open:
        state = "degraded"  # answers its health checks, but its requests failed: the breaker keeps it out
    else:
        state = "busy" if node.outstanding else "ready"
    return {**d, "state": state}


class ClusterView:
    """The last view of the coordinator and the rpc-servers; `refresh` reads it again (one at a time)."""

    def __init__(
        self,
        cluster: Callable[[], Cluster] | None,
        pool: Pool,
        root: Path | None = None,
        loading: Callable[[], bool] = lambda: False,
    ) -> None:
        self.cluster = cluster
        self.pool = pool
        self.root = root
        self.loading = loading
        self.view: dict[str, Any] = {"checked_at": None, "coordinator": None, "backends": [], "error": ""}
        self.checked = 0.0  # monotonic time of the last refresh
        self.watchers = 0
        self._seen_up: dict[str, str] = {}  # endpoint -> the last state it was seen up in
        self._backends: dict[str, dict[str, Any]] = {}
        self._devices: dict[str, tuple[list[Any], float]] = {}  # endpoint -> its devices when last probed, when
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback` after each refresh that changed the view."""
        self._listeners.append(callback)

    async def refresh(self, max_age: float = 0.0) -> dict[str, Any]:
        """The view, read again unless it is at most `max_age` seconds old (concurrent callers share one read)."""
        async with self._lock:
            if self.view["checked_at"] is not None and time.monotonic() - self.checked <= max_age:
                return self.view
            loading = self.loading()
            try:
                view = await asyncio.to_thread(self._read, loading)
            except Exception as exc:  # a bug must not end the page's stream: say it in the view
                log.exception("reading the cluster for the page failed")
                view = {**self.view, "error": f"{type(exc).__name__}: {exc}"}
            self.checked = time.monotonic()
            before = {k: v for k, v in self.view.items() if k != "checked_at"}
            self.view = view
        if {k: v for k, v in view.items() if k != "checked_at"} != before:
            for callback in self._listeners:
                callback()
        return view

    def _read(self, loading: bool) -> dict[str, Any]:
        error = ""
        backends: list[Any] = []
        try:
            cluster = self.cluster() if self.cluster is not None else None
        except SollolError as exc:
            cluster, error = None, str(exc)
        if cluster is None or loading:  # no rpc-servers to probe, or not now: the coordinator alone
            coord = status_report.coordinator_status(self.root, STALL_TIMEOUT_S)
            if cluster is not None:
                known = [b.endpoint for b in cluster.backends]
                rows = [self._backends[e] for e in known if e in self._backends]
                return self._view(coord, rows, [], error)
            return self._view(coord, [], [], error)
        report = status_report.status(cluster, self.root, probe=quick_probe, stall_timeout=STALL_TIMEOUT_S)
        links = doctor_links.load(self.root)
        for b in report.backends:
            backends.append(self._backend(b, links.get(b.endpoint)))
        self._backends = {b["endpoint"]: b for b in backends}
        return self._view(report.coordinator, backends, report.staged, error)

    def _backend(self, b: status_report.BackendStatus, link: doctor_links.LinkFigure | None) -> dict[str, Any]:
        state = BackendState(b.status)
        detail = b.detail
        if state in UP:
            self._seen_up[b.endpoint] = state
        elif state is BackendState.LOST:
            self._seen_up.setdefault(b.endpoint, BackendState.SERVING)
        elif state is BackendState.DOWN and b.endpoint in self._seen_up:
            state = BackendState.LOST
            detail = f"was {self._seen_up[b.endpoint]}, gone now: {detail}"
        row = to_jsonable(b)
        row.update(state=state.value, detail=detail, link=to_jsonable(link), devices_as_of=None)
        if row["devices"]:
            self._devices[b.endpoint] = (row["devices"], time.time())
        elif b.endpoint in self._devices:  # held by the coordinator (not probed): its memory as last probed
            row["devices"], row["devices_as_of"] = self._devices[b.endpoint][0], round(self._devices[b.endpoint][1], 2)
        return row

    def _view(
        self, coord: status_report.CoordinatorStatus, backends: list[Any], staged: list[Any], error: str
    ) -> dict[str, Any]:
        c = to_jsonable(coord)
        c["draft"] = to_jsonable(getattr(coord, "draft", None))  # the draft model, where the coordinator has one
        return {
            "checked_at": round(time.time(), 2),
            "coordinator": c,
            "backends": backends,
            "staged": staged,
            "error": error,
        }

    def pool_nodes(self) -> list[dict[str, Any]]:
        return [pool_node(n) for n in self.pool.nodes]

    # ---------------------------------------------------------------- while a page watches

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """Refresh every EVERY_S seconds while at least one page watches."""
        self.watchers += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            yield
        finally:
            self.watchers -= 1
            if self.watchers == 0 and self._task is not None:
                self._task.cancel()
                self._task = None

    async def _run(self) -> None:
        while self.watchers > 0:
            t0 = time.monotonic()
            await self.refresh(max_age=EVERY_S / 2)
            await asyncio.sleep(max(0.1, EVERY_S - (time.monotonic() - t0)))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
