"""What the gateway says about itself: /, /health, /api/version, /gateway/status and /metrics (its gauges)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from sollol_ops import __version__
from sollol_ops.gateway.call import Call
from sollol_ops.gateway.catalog import draft_of
from sollol_ops.gateway.metrics import Metrics
from sollol_ops.gateway.ondemand import OnDemand
from sollol_ops.gateway.ondemand_status import Phase
from sollol_ops.gateway.routing import Router

# What /api/version reports: the Ollama API level this gateway implements (clients parse it as integers).
OLLAMA_API_VERSION = "0.6.0"


class GatewayStatus:
    """The gateway's mode, pins, pool nodes and sharded model, as JSON and as Prometheus gauges."""

    def __init__(self, router: Router, shard: OnDemand | None, metrics: Metrics) -> None:
        self.router = router
        self.shard = shard
        self.metrics = metrics

    def status(self) -> dict[str, Any]:
        state = self.router.catalog.running()
        return {
            "mode": self.router.config.mode,
            "pins": self.router.pins,
            "pool": [n.describe() for n in self.router.pool.nodes],
            "coordinator": None if state is None else {"model": state.model, "endpoint": state.endpoint},
            "on_demand": None if self.shard is None else self.shard.describe().to_json(),
        }

    def refresh_gauges(self) -> None:
        m = self.metrics
        for n in self.router.pool.nodes:
            m.node_healthy.labels(n.name, n.api).set(1 if n.healthy else 0)
            m.node_breaker.labels(n.name).set(1 if n.breaker_open else 0)
            m.node_outstanding.labels(n.name).set(n.outstanding)
        m.coordinator_up.set(1 if self.router.uses_shard and self.router.catalog.running() else 0)
        if self.shard is not None:
            od = self.shard
            m.copy_shard_counts({"loads": od.loads, "swaps": od.swaps, "unloads": od.unloads, "failures": od.deaths})
            m.shard_waiting.set(len(od.queue))
            m.shard_loading.set(1 if od.phase == Phase.LOADING else 0)

    async def root(self, request: Request, call: Call) -> Response:
        call.finish(200)
        return PlainTextResponse("Ollama is running", headers=call.headers())

    async def health(self, request: Request, call: Call) -> Response:
        call.finish(200)
        return JSONResponse({"status": "ok"}, headers=call.headers())

    async def version(self, request: Request, call: Call) -> Response:
        call.finish(200)
        return JSONResponse({"version": OLLAMA_API_VERSION, "sollol_ops": __version__}, headers=call.headers())

    async def prometheus(self, request: Request, call: Call) -> Response:
        self.refresh_gauges()
        state = self.router.catalog.running() if self.router.uses_shard else None
        draft = await draft_of(state) if state is not None else None
        self.metrics.draft.current = (state.model, draft) if state is not None and draft is not None else None
        call.finish(200)
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4", headers=call.headers())

    async def report(self, request: Request, call: Call) -> Response:
        call.finish(200)
        return JSONResponse(self.status(), headers=call.headers())
