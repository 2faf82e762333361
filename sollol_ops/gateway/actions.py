"""The operator's actions on the gateway's page, behind the API key: `POST /gateway/load {"model": NAME}` loads a
sharded model from the store (answered at once: the load's progress is in the status and the event stream),
`POST /gateway/unload {"model": NAME}` stops the coordinator serving it once its requests in flight finish."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sollol_ops.gateway.bodies import read_json
from sollol_ops.gateway.call import Call
from sollol_ops.gateway.errors import ApiError
from sollol_ops.gateway.ondemand import OnDemand
from sollol_ops.gateway.pool import normalize
from sollol_ops.gateway.routing import Router

log = logging.getLogger("sollol_ops.gateway")

MAX_BODY = 4096


class Actions:
    """Load and unload, on the on-demand shard (the coordinator this gateway starts)."""

    def __init__(self, router: Router, shard: OnDemand | None) -> None:
        self.router = router
        self.shard = shard
        self._loads: set[asyncio.Task[None]] = set()

    async def _model(self, request: Request, call: Call) -> tuple[OnDemand, str]:
        body = await read_json(request, MAX_BODY)
        model = body.get("model")
        if not isinstance(model, str) or not model.strip():
            raise ApiError(400, 'send {"model": NAME}')
        call.model = normalize(model)
        if self.shard is None:
            raise ApiError(409, "this gateway loads no sharded models (pool mode, or --no-load-on-demand)")
        return self.shard, call.model

    async def load(self, request: Request, call: Call) -> Response:
        """Queue the load of a store model that the shard route serves; 202 at once, 200 when already served."""
        shard, model = await self._model(request, call)
        targets = self.router.targets(model)  # ApiError 404 when no one has it
        if targets[0].route != "shard" or targets[0].url:
            where = targets[0].node_name
            raise ApiError(409, f"{model} is served by {where}, not loaded by this gateway")
        call.route, call.node = "shard", "coordinator"
        ticket = shard.enqueue(model, shard.settings.keep_alive)  # ApiError 503 when the queue is full
        if ticket.fut.done() and ticket.fut.exception() is None:
            ticket.fut.result().release()
            call.finish(200)
            return JSONResponse({"model": model, "status": "loaded"}, headers=call.headers())

        async def wait() -> None:
            try:
                lease = await shard.wait(ticket)
                lease.release()
            except ApiError as exc:
                log.warning("load of %s from the page failed: %s", model, exc.message)

        task = asyncio.get_running_loop().create_task(wait())
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)
        call.finish(202)
        return JSONResponse({"model": model, "status": "loading"}, status_code=202, headers=call.headers())

    async def unload(self, request: Request, call: Call) -> Response:
        """Stop the coordinator serving `model` (keep_alive 0); 409 for one `sollol-ops up` started."""
        shard, model = await self._model(request, call)
        call.route, call.node = "shard", "coordinator"
        if shard.current == model and not shard.owned:
            raise ApiError(409, f"{model} was started by `sollol-ops up`: stop it with `sollol-ops down`")
        unloaded = await shard.unload(model)
        if not unloaded:
            raise ApiError(409, f"{model} is not loaded")
        call.finish(200)
        return JSONResponse({"model": model, "status": "unloaded"}, headers=call.headers())
