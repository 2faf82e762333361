"""What the Ollama and OpenAI model routes share: their parts, and a request routed (its sharded model
waited for) before it is served upstream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from sollol_ops.gateway.call import Call
from sollol_ops.gateway.loading import LEFT_WHILE_LOADING, Loading, Waiting
from sollol_ops.gateway.pool import normalize
from sollol_ops.gateway.routing import Router, Target
from sollol_ops.gateway.upstream import Upstream


class ModelRoutes:
    """The base of OllamaRoutes and OpenAIRoutes: the body limit, the router, the shard's waits, the upstream."""

    def __init__(self, max_body: int, router: Router, loading: Loading, upstream: Upstream) -> None:
        self.max_body = max_body
        self.router = router
        self.loading = loading
        self.upstream = upstream

    def targets(self, call: Call, model: str) -> list[Target]:
        """Where `model` is served (Router.targets), the call's model named."""
        targets = self.router.targets(model)
        call.model = normalize(model)
        return targets

    async def when_ready(
        self,
        request: Request,
        call: Call,
        targets: list[Target],
        serve: Callable[[list[Target]], Awaitable[Response]],
        keep_alive: Any = None,
        progress: str = "",
    ) -> Response:
        """`serve` the request on its targets: at once, once its sharded model is served, or behind a stream
        of loading progress (Loading.relay); 499 when the client left while it waited."""
        got = await self.loading.targets(request, call, targets, keep_alive, progress)
        if got is None:
            return call.left(LEFT_WHILE_LOADING)
        if isinstance(got, Waiting):
            return self.loading.relay(call, got, serve)
        return await serve(got)
