"""The gateway's ASGI application (Starlette): its parts wired together and the table of its routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sollol_ops.cluster.inventory import Cluster
from sollol_ops.gateway.actions import Actions
from sollol_ops.gateway.auth import check_key
from sollol_ops.gateway.call import Call
from sollol_ops.gateway.catalog import Catalog
from sollol_ops.gateway.cluster_view import ClusterView
from sollol_ops.gateway.errors import ApiError, body_for
from sollol_ops.gateway.events import Events
from sollol_ops.gateway.listings import Listings
from sollol_ops.gateway.loading import Loading
from sollol_ops.gateway.metrics import Metrics
from sollol_ops.gateway.models_admin import ModelsAdmin
from sollol_ops.gateway.ollama_routes import OllamaRoutes
from sollol_ops.gateway.ondemand import OnDemand
from sollol_ops.gateway.ondemand_status import Phase
from sollol_ops.gateway.openai_routes import OpenAIRoutes
from sollol_ops.gateway.pool import Pool
from sollol_ops.gateway.requests_log import RequestLog
from sollol_ops.gateway.routing import GatewayConfig, Router
from sollol_ops.gateway.series import Series
from sollol_ops.gateway.status import GatewayStatus
from sollol_ops.gateway.ui import Page
from sollol_ops.gateway.upstream import Upstream

log = logging.getLogger("sollol_ops.gateway")

Handler = Callable[[Request, Call], Awaitable[Response]]


class Gateway:
    """The parts of one gateway (router, upstream, the route handlers) and the HTTP client they share."""

    def __init__(
        self,
        config: GatewayConfig,
        pool: Pool,
        catalog: Catalog,
        shard: OnDemand | None = None,
        cluster: Callable[[], Cluster] | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.catalog = catalog
        self.router = Router(config, pool, catalog)
        self.shard = shard if self.router.uses_shard else None
        self.router.on_demand = self.shard is not None
        self.metrics = Metrics()
        self.client: httpx.AsyncClient | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        upstream = Upstream(self.http, pool)
        loading = Loading(self.shard, self.router)
        self.ollama = OllamaRoutes(config.max_body, self.router, loading, upstream)
        self.openai = OpenAIRoutes(config.max_body, self.router, loading, upstream)
        self.listings = Listings(config.max_body, self.router, self.shard, self.http)
        self.status = GatewayStatus(self.router, self.shard, self.metrics)
        self.admin = ModelsAdmin(self.router, pool, catalog, self.http, config.coordinator_ollama_url)
        if self.shard is not None:
            self.shard.subscribe(self.status.refresh_gauges)
        # The page (/ui): recent requests, the counters' series, the cluster's view, the event stream, actions.
        self.requests = RequestLog()
        self.series = Series(self.metrics)
        od = self.shard
        loading = (lambda: od.phase == Phase.LOADING) if od is not None else (lambda: False)
        root = od.root if od is not None else catalog.state_root
        self.view = ClusterView(cluster if self.router.uses_shard else None, pool, root, loading)
        self.page = Page(self.status, self.shard, self.requests, self.series, self.view, bool(config.api_key))
        self.events = Events(self.page.streamed, self.view)
        self.page.clients = lambda: self.events.clients
        self.actions = Actions(self.router, self.shard)
        for part in (self.requests, self.series, self.view, *([self.shard] if self.shard is not None else [])):
            part.subscribe(self.events.changed)

    def http(self) -> httpx.AsyncClient:
        assert self.client is not None, "gateway not started"
        return self.client

    def stopping(self) -> None:
        """The server was told to stop (any thread, a signal handler too): end the page's event streams."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.events.close)

    async def startup(self) -> None:
        self.loop = asyncio.get_running_loop()
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        timeout = httpx.Timeout(connect=5.0, read=None, write=60.0, pool=None)
        self.client = httpx.AsyncClient(timeout=timeout, limits=limits, headers={"Accept-Encoding": "identity"})
        self.pool.start(self.client)
        if self.shard is not None:
            self.shard.start()
        self.series.start()

    async def shutdown(self) -> None:
        await self.series.stop()
        await self.view.close()
        if self.shard is not None:
            await self.shard.close()
        await self.pool.stop()
        if self.client is not None:
            await self.client.aclose()

    def endpoint(
        self, api: str, name: str, handler: Handler, auth: bool = True
    ) -> Callable[[Request], Awaitable[Response]]:
        """`handler` with its Call, the API key checked (`auth`), and every error answered in the API's shape."""

        async def run(request: Request) -> Response:
            call = Call(self.metrics, self.pool, request, name)
            try:
                if auth:
                    check_key(request, self.config.api_key)
                call.list_in(self.requests)  # after the key: a caller without it cannot fill the page's list
                return await handler(request, call)
            except ApiError as exc:
                return call.fail(api, exc)
            except Exception as exc:  # a bug: the API's error shape and one line, never a dropped connection
                log.exception("internal error on %s %s", request.method, request.url.path)
                return call.fail(api, ApiError(500, f"internal error: {type(exc).__name__}: {exc}"))

        return run


async def not_found(request: Request, exc: Exception) -> Response:
    api = "openai" if request.url.path.startswith("/v1/") else "ollama"
    code = getattr(exc, "status_code", 404)
    message = "method not allowed" if code == 405 else f"{request.url.path} not found"
    log.warning("%s %s %d error=%r", request.method, request.url.path, code, message)
    return Response(
        body_for(api, code, message),
        status_code=code,
        media_type="application/json",
        headers={"X-Sollol-Route": "gateway", "X-Sollol-Node": "gateway"},
    )


def create_app(gw: Gateway) -> Starlette:
    ep, o, oa = gw.endpoint, "ollama", "openai"
    about, listings, ollama, openai, page = gw.status, gw.listings, gw.ollama, gw.openai, gw.page
    routes = [
        Route("/", ep(o, "root", about.root, auth=False), methods=["GET", "HEAD"]),
        Route("/health", ep(o, "health", about.health, auth=False), methods=["GET"]),
        Route("/api/version", ep(o, "version", about.version), methods=["GET"]),
        Route("/api/tags", ep(o, "tags", listings.tags), methods=["GET"]),
        Route("/api/ps", ep(o, "ps", listings.ps), methods=["GET"]),
        Route("/api/show", ep(o, "show", listings.show), methods=["POST"]),
        Route("/api/chat", ep(o, "chat", ollama.proxy), methods=["POST"]),
        Route("/api/generate", ep(o, "generate", ollama.proxy), methods=["POST"]),
        Route("/api/embed", ep(o, "embed", ollama.proxy), methods=["POST"]),
        Route("/api/embeddings", ep(o, "embeddings", ollama.proxy), methods=["POST"]),
        Route("/api/pull", ep(o, "pull", gw.admin.pull), methods=["POST"]),  # model management: models_admin
        Route("/api/delete", ep(o, "delete", gw.admin.delete), methods=["DELETE"]),
        Route("/api/copy", ep(o, "copy", gw.admin.copy), methods=["POST"]),
        Route("/v1/models", ep(oa, "models", listings.v1_models), methods=["GET"]),
        Route("/v1/chat/completions", ep(oa, "chat.completions", openai.proxy), methods=["POST"]),
        Route("/v1/completions", ep(oa, "completions", openai.proxy), methods=["POST"]),
        Route("/v1/embeddings", ep(oa, "embeddings", openai.proxy), methods=["POST"]),
        Route("/metrics", ep(o, "metrics", about.prometheus), methods=["GET"]),
        Route("/gateway/status", ep(o, "status", page.report), methods=["GET"]),
        Route("/gateway/events", ep(o, "events", gw.events.stream), methods=["GET"]),
        Route("/gateway/load", ep(o, "load", gw.actions.load), methods=["POST"]),
        Route("/gateway/unload", ep(o, "unload", gw.actions.unload), methods=["POST"]),
        Route("/ui", ep(o, "ui", page.page, auth=False), methods=["GET"]),
        Route("/ui/{name}", ep(o, "ui", page.page, auth=False), methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.startup()
        try:
            yield
        finally:
            await gw.shutdown()

    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})
