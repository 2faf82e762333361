"""The gateway's ASGI application (Starlette): Ollama and OpenAI routes, routing by model to the pool or
the sharded coordinator, streams relayed without buffering and cancelled upstream when the client leaves."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from sollol_ops import __version__
from sollol_ops.gateway import translate
from sollol_ops.gateway.catalog import Catalog
from sollol_ops.gateway.errors import ApiError, body_for, upstream_message
from sollol_ops.gateway.metrics import Metrics
from sollol_ops.gateway.ondemand import Lease, OnDemand, Ticket, parse_keep_alive
from sollol_ops.gateway.pool import Node, Pool, normalize
from sollol_ops.serve.coordinator import CoordinatorState

log = logging.getLogger("sollol_ops.gateway")

# What /api/version reports: the Ollama API level this gateway implements (clients parse it as integers).
OLLAMA_API_VERSION = "0.6.0"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
NDJSON = "application/x-ndjson"


@dataclass
class GatewayConfig:
    mode: str  # shard | pool | hybrid
    pins: dict[str, str] = field(default_factory=dict)
    api_key: str | None = None
    max_body: int = 32 << 20


@dataclass
class Waiting:
    """A streamed request queued for its sharded model, to be answered with loading progress first."""

    ticket: Ticket
    kind: str  # chat | generate (Ollama) | chat.completions (OpenAI)


PROGRESS_EVERY = 2.0  # seconds between progress chunks when the load reports nothing new
PROGRESS_POLL = 0.25
_SO_FAR = re.compile(r"\d+s so far")


@dataclass
class Target:
    route: str  # pool | shard
    node_name: str
    url: str
    api: str  # ollama | openai (what the upstream speaks)
    node: Node | None = None


# --------------------------------------------------------------------------- routing


class Router:
    def __init__(self, config: GatewayConfig, pool: Pool, catalog: Catalog) -> None:
        self.config = config
        self.pool = pool
        self.catalog = catalog
        self.pins = {normalize(k): v for k, v in config.pins.items()}
        self.on_demand = False  # the shard route loads store models itself (Gateway.shard)

    @property
    def uses_pool(self) -> bool:
        return self.config.mode in ("pool", "hybrid")

    @property
    def uses_shard(self) -> bool:
        return self.config.mode in ("shard", "hybrid")

    def coordinator_target(self, state: CoordinatorState) -> Target:
        return Target("shard", f"coordinator@{state.listen}", state.endpoint, "openai")

    def targets(self, model: str) -> list[Target]:
        """Where `model` can be served, best first; ApiError 404 (nobody has it) or 503 (nobody can now)."""
        name = normalize(model)
        pin = self.pins.get(name)
        pool_ok = self.uses_pool and pin != "shard"
        shard_ok = self.uses_shard and pin != "pool"
        looked: list[str] = []
        unavailable: list[str] = []
        store = self.catalog.models() if shard_ok else {}
        if pool_ok:
            size = store[name].size if name in store else None
            nodes = self.pool.candidates(name, size)
            if nodes:
                return [Target("pool", n.name, n.url, n.api, n) for n in nodes]
            looked.append("pool nodes " + (", ".join(n.name for n in self.pool.nodes) or "(none)"))
            for n in self.pool.holders(name):
                if not n.usable():
                    why = "breaker open" if n.breaker_open else f"unhealthy: {n.last_error or 'not checked yet'}"
                    unavailable.append(f"pool node {n.name} ({why})")
                elif not n.fits(name, size):
                    unavailable.append(f"pool node {n.name} (does not fit its sollol_ollama_memory_mib)")
        if shard_ok and self.on_demand and name in store:
            return [Target("shard", "coordinator", "", "openai")]  # the gateway loads it (OnDemand)
        if shard_ok:
            state = self.catalog.running()
            if state is not None and normalize(state.model) == name:
                return [self.coordinator_target(state)]
            roots = ", ".join(str(r) for r in self.catalog.roots()) or "no store found"
            looked.append(f"the coordinator's store ({roots})")
            if name in store:
                if state is None:
                    unavailable.append(
                        f"the coordinator's store, but no coordinator is running (`sollol-ops up {name}`)"
                    )
                else:
                    unavailable.append(
                        f"the coordinator's store, but the coordinator serves {state.model} "
                        f"(`sollol-ops up {name} --replace`)"
                    )
        if unavailable:
            raise ApiError(503, f"model '{model}' is in {'; '.join(unavailable)}")
        where = " and ".join(looked) or "nowhere (no pool nodes and no coordinator in this mode)"
        pin_note = f" (pinned to {pin})" if pin else ""
        raise ApiError(404, f"model '{model}' not found{pin_note}; looked in {where}")


# --------------------------------------------------------------------------- one request


class Call:
    """Book-keeping of one request: metrics, the one log line, pool accounting."""

    def __init__(self, gw: Gateway, request: Request, endpoint: str) -> None:
        self.gw = gw
        self.method = request.method
        self.path = request.url.path
        self.endpoint = endpoint
        self.t0 = time.perf_counter()
        self.model = "-"
        self.route = "gateway"
        self.node = "gateway"
        self.target: Target | None = None
        self.ttft: float | None = None
        self.error = ""
        self.done = False
        self.queued = False
        self.lease: Lease | None = None

    def bind(self, target: Target) -> None:
        self.target = target
        self.route, self.node = target.route, target.node_name
        self.gw.metrics.in_flight.labels(self.route, self.node).inc()
        self.gw.metrics.queued.labels(self.route, self.node).inc()
        self.queued = True
        if target.node is not None:
            self.gw.pool.acquire(target.node)

    def unbind(self) -> None:
        if self.target is None:
            return
        self.gw.metrics.in_flight.labels(self.route, self.node).dec()
        if self.queued:
            self.gw.metrics.queued.labels(self.route, self.node).dec()
            self.queued = False
        if self.target.node is not None:
            self.gw.pool.release(self.target.node)
        self.target = None

    def first_byte(self) -> None:
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.t0
            if self.queued:
                self.gw.metrics.queued.labels(self.route, self.node).dec()
                self.queued = False

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"X-Sollol-Route": self.route, "X-Sollol-Node": self.node, **(extra or {})}

    def finish(self, status: int, note: str = "") -> None:
        if self.done:
            return
        self.done = True
        self.unbind()
        if self.lease is not None:
            self.lease.release(failed=status >= 500 or bool(self.error))
        total = time.perf_counter() - self.t0
        m = self.gw.metrics
        m.requests.labels(self.endpoint, self.route, self.model, self.node, str(status)).inc()
        m.duration.labels(self.route, self.model, self.node).observe(total)
        if self.ttft is not None:
            m.ttft.labels(self.route, self.model, self.node).observe(self.ttft)
        detail = f" error={self.error!r}" if self.error else ""
        line = "%s %s %d route=%s node=%s model=%s %.3fs%s%s"
        args = (self.method, self.path, status, self.route, self.node, self.model, total, detail, note)
        (log.warning if status >= 400 or self.error else log.info)(line, *args)


class Relay:
    """An ASGI response that relays an async iterator of bytes as it comes (no buffering), watching the
    client: when it disconnects, the iteration is cancelled and `close` runs (it closes the upstream)."""

    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        chunks: AsyncIterator[bytes],
        close: Callable[[bool], Awaitable[None]],
    ) -> None:
        self.status = status
        self.headers = headers
        self.chunks = chunks
        self.close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        disconnected = complete = False
        try:
            await send({"type": "http.response.start", "status": self.status, "headers": raw})
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    nonlocal disconnected
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    if not complete:  # servers also report a disconnect once the response is complete
                        disconnected = True
                        tg.cancel_scope.cancel()

                tg.start_soon(watch)
                async for chunk in self.chunks:
                    if chunk:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                complete = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
        except OSError:
            disconnected = True
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    await self.chunks.aclose()  # type: ignore[attr-defined]
                await self.close(disconnected)


async def _watching(receive: Receive, work: Awaitable[Any]) -> tuple[bool, Any]:
    """Run `work` unless the client disconnects first: (disconnected, result)."""
    result: Any = None
    disconnected = False
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            nonlocal result
            result = await work
            tg.cancel_scope.cancel()

        async def watch() -> None:
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected = True
            tg.cancel_scope.cancel()

        tg.start_soon(run)
        tg.start_soon(watch)
    return disconnected, result


# --------------------------------------------------------------------------- the gateway


class Gateway:
    def __init__(self, config: GatewayConfig, pool: Pool, catalog: Catalog, shard: OnDemand | None = None) -> None:
        self.config = config
        self.pool = pool
        self.catalog = catalog
        self.router = Router(config, pool, catalog)
        self.shard = shard if self.router.uses_shard else None
        self.router.on_demand = self.shard is not None
        self.metrics = Metrics()
        self.client: httpx.AsyncClient | None = None

    # ---------------------------------------------------------------- plumbing

    def http(self) -> httpx.AsyncClient:
        assert self.client is not None, "gateway not started"
        return self.client

    async def startup(self) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        timeout = httpx.Timeout(connect=5.0, read=None, write=60.0, pool=None)
        self.client = httpx.AsyncClient(timeout=timeout, limits=limits, headers={"Accept-Encoding": "identity"})
        self.pool.start(self.client)
        if self.shard is not None:
            self.shard._on_change = self.refresh_gauges
            self.shard.start()

    async def shutdown(self) -> None:
        if self.shard is not None:
            await self.shard.close()
        await self.pool.stop()
        if self.client is not None:
            await self.client.aclose()

    def error(self, call: Call, api: str, exc: ApiError) -> Response:
        call.error = exc.message
        if exc.route != "gateway":
            call.route, call.node = exc.route, exc.node
        call.finish(exc.status)
        return Response(
            body_for(api, exc.status, exc.message),
            status_code=exc.status,
            media_type="application/json",
            headers=call.headers(exc.headers),
        )

    async def shard_targets(
        self, request: Request, call: Call, targets: list[Target], keep_alive: Any = None, progress: str = ""
    ) -> list[Target] | Waiting | None:
        """A store model on the shard route: wait until the gateway serves it (loading or swapping to it);
        the lease is the call's until it finishes. None when the client left while waiting. With `progress`
        (the stream's kind) and --loading-progress, a request that must wait is answered at once by a stream
        of progress chunks (Waiting: relay_while_loading)."""
        if self.shard is None or targets[0].route != "shard" or targets[0].url:
            return targets
        shard = self.shard
        ka = parse_keep_alive(keep_alive, shard.settings.keep_alive)
        call.route, call.node = "shard", "coordinator"
        ticket = shard.enqueue(call.model, ka)  # ApiError 503 when the queue is full
        if progress and shard.settings.loading_progress and not ticket.fut.done():
            return Waiting(ticket, progress)

        async def wait() -> Lease | ApiError:
            try:
                return await shard.wait(ticket)
            except ApiError as exc:
                return exc

        disconnected, got = await _watching(request.receive, wait())
        if isinstance(got, Lease):
            call.lease = got
        if disconnected:
            return None
        if isinstance(got, ApiError):
            raise got
        assert isinstance(got, Lease)
        return [self.router.coordinator_target(got.state)]

    def relay_while_loading(
        self, call: Call, waiting: Waiting, serve: Callable[[list[Target]], Awaitable[Response]]
    ) -> Relay:
        """The stream of a request that waits for its sharded model (--loading-progress): progress chunks in
        the API's reasoning/thinking field (translate.progress_chunk) at once and whenever the load moves on
        (at least every PROGRESS_EVERY s), then the answer's own stream from `serve`. A refusal or an upstream
        error after this began is the stream's last event, in the API's error shape."""
        assert self.shard is not None
        shard, ticket, kind = self.shard, waiting.ticket, waiting.kind
        sse = kind == "chat.completions"
        api = "openai" if sse else "ollama"
        inner: list[Relay] = []
        status = {"code": 200}

        def failed(exc: ApiError) -> bytes:
            call.error, status["code"] = exc.message, exc.status
            return translate.stream_error(sse, body_for(api, exc.status, exc.message))

        async def chunks() -> AsyncIterator[bytes]:
            leased = False
            try:
                sent, last = None, 0.0
                while True:
                    line = shard.progress_line(call.model)
                    key = _SO_FAR.sub("", line)
                    if key != sent or time.monotonic() - last >= PROGRESS_EVERY:
                        yield translate.progress_chunk(kind, call.model, line + "\n")
                        sent, last = key, time.monotonic()
                    if ticket.fut.done():
                        break
                    await asyncio.wait([ticket.fut], timeout=PROGRESS_POLL)
                exc = ticket.fut.exception()
                if exc is not None:
                    yield failed(exc if isinstance(exc, ApiError) else ApiError(500, f"{type(exc).__name__}: {exc}"))
                    return
                call.lease, leased = ticket.fut.result(), True
                try:
                    answer = await serve([self.router.coordinator_target(call.lease.state)])
                except ApiError as exc:
                    yield failed(exc)
                    return
                except Exception as exc:  # a bug: the API's error shape and one line, as create_app's handlers
                    log.exception("internal error on %s %s", call.method, call.path)
                    yield failed(ApiError(500, f"internal error: {type(exc).__name__}: {exc}"))
                    return
                if isinstance(answer, Relay):
                    inner.append(answer)
                    async for chunk in answer.chunks:
                        yield chunk
                else:  # an error answered before any of the answer (already logged): the stream's last event
                    yield translate.stream_error(sse, bytes(answer.body))
            finally:
                if not leased:
                    shard.abandon(ticket)
                for relay in inner:
                    with contextlib.suppress(Exception):
                        await relay.chunks.aclose()  # type: ignore[attr-defined]

        async def close(disconnected: bool) -> None:
            if inner:
                await inner[0].close(disconnected)
            else:
                call.finish(499 if disconnected else status["code"], " (client left)" if disconnected else "")

        ctype = "text/event-stream" if sse else NDJSON
        return Relay(200, call.headers({"Content-Type": ctype, **STREAM_HEADERS}), chunks(), close)

    def left_while_waiting(self, call: Call) -> Response:
        call.finish(499, " (client left while the model loaded)")
        return Response(status_code=499)

    def check_key(self, request: Request) -> None:
        key = self.config.api_key
        if not key:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if not given:
            raise ApiError(401, "missing API key: send Authorization: Bearer KEY")
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise ApiError(401, "invalid API key")

    async def read_json(self, request: Request) -> dict[str, Any]:
        limit = self.config.max_body
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise ApiError(413, f"request body of {int(length)} bytes is over the gateway's limit of {limit} bytes")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise ApiError(413, f"request body is over the gateway's limit of {limit} bytes")
        if not raw.strip():
            raise ApiError(400, "missing request body")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"invalid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    # ---------------------------------------------------------------- upstream

    async def open_upstream(
        self, call: Call, targets: list[Target], build: Callable[[Target], tuple[str, bytes]]
    ) -> httpx.Response:
        """Send the request to the first target that takes it. A connection failure or a 5xx answer moves
        on to the next target (nothing has reached the client yet); a 4xx is the client's and is kept."""
        last: ApiError | None = None
        for target in targets:
            path, content = build(target)
            call.bind(target)
            try:
                req = self.http().build_request(
                    "POST", target.url + path, content=content, headers={"Content-Type": "application/json"}
                )
                resp = await self.http().send(req, stream=True)
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}".strip(": ")
                last = ApiError(502, f"{target.node_name} failed: {why}", route=target.route, node=target.node_name)
                if target.node is not None:
                    self.pool.request_failed(target.node, why)
                call.unbind()
                continue
            if resp.status_code >= 500 and target.node is not None and target is not targets[-1]:
                raw = await resp.aread()
                await resp.aclose()
                why = f"HTTP {resp.status_code}: {upstream_message(raw, resp.status_code)}"
                if resp.status_code != 501:
                    self.pool.request_failed(target.node, why)
                last = ApiError(502, f"{target.node_name}: {why}", route=target.route, node=target.node_name)
                call.unbind()
                continue
            if target.node is not None and resp.status_code < 500:
                self.pool.request_succeeded(target.node)
            return resp
        assert last is not None
        raise last

    async def upstream_error(self, call: Call, api: str, resp: httpx.Response) -> Response:
        raw = await resp.aread()
        await resp.aclose()
        return self.error(call, api, ApiError(resp.status_code, upstream_message(raw, resp.status_code)))

    def passthrough(self, call: Call, resp: httpx.Response, stream: bool) -> Relay:
        """The upstream's answer as it is (same API on both sides), bytes relayed as they arrive."""

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.aiter_raw():
                    call.first_byte()
                    yield chunk
            except httpx.HTTPError as exc:  # the upstream died mid-answer: say so in the API's shape
                call.error = f"{call.node} broke off the answer: {type(exc).__name__}"
                if not stream:
                    raise
                if ctype.startswith("text/event-stream"):
                    yield b"data: " + body_for("openai", 502, call.error) + b"\n\n"
                elif ctype.startswith(NDJSON):
                    yield json.dumps({"error": call.error}).encode() + b"\n"

        async def close(disconnected: bool) -> None:
            await resp.aclose()
            call.finish(499 if disconnected else resp.status_code, " (client left)" if disconnected else "")

        ctype = resp.headers.get("content-type", "application/json")

        headers = call.headers({"Content-Type": resp.headers.get("content-type", "application/json")})
        if stream:
            headers.update(STREAM_HEADERS)
        return Relay(resp.status_code, headers, chunks(), close)

    # ---------------------------------------------------------------- handlers

    async def proxy_ollama(self, request: Request, call: Call) -> Response:
        """/api/chat, /api/generate, /api/embed, /api/embeddings."""
        body = await self.read_json(request)
        kind = call.endpoint
        if kind == "chat":
            t = translate.chat_request(body)
        elif kind == "generate":
            t = translate.generate_request(body)
        else:
            t = translate.embed_request(body, legacy=kind == "embeddings")
        targets = self.router.targets(t.model)
        call.model = normalize(t.model)
        raw = json.dumps(body).encode()
        bare = kind == "generate" and not body.get("prompt") and not body.get("images")
        if bare and self.shard is not None and targets[0].route == "shard" and not targets[0].url:
            return await self.load_or_unload(request, call, body, targets, t.model, t.stream)
        progress = kind if t.stream and kind in ("chat", "generate") else ""
        got = await self.shard_targets(request, call, targets, body.get("keep_alive"), progress)
        if got is None:
            return self.left_while_waiting(call)
        if isinstance(got, Waiting):
            return self.relay_while_loading(
                call, got, lambda targets: self.serve_ollama(request, call, body, t, raw, bare, targets)
            )
        return await self.serve_ollama(request, call, body, t, raw, bare, got)

    async def serve_ollama(
        self,
        request: Request,
        call: Call,
        body: dict[str, Any],
        t: translate.Translated,
        raw: bytes,
        bare: bool,
        targets: list[Target],
    ) -> Response:
        """An Ollama request, once routed (and its sharded model served): upstream, translated if needed."""
        if bare and targets[0].api == "openai":
            # Ollama's load (empty prompt) and unload (keep_alive 0) requests: an OpenAI upstream keeps its
            # model loaded for its whole life, so both are answered at once.
            call.route, call.node = targets[0].route, targets[0].node_name
            unload = str(body.get("keep_alive")) in ("0", "0s", "0m", "0.0")
            answer = {"model": t.model, "created_at": translate.now_rfc3339(), "response": "", "done": True}
            answer["done_reason"] = "unload" if unload else "load"
            call.finish(200)
            if t.stream:
                return Response(json.dumps(answer) + "\n", media_type=NDJSON, headers=call.headers(STREAM_HEADERS))
            return JSONResponse(answer, headers=call.headers())
        notes = {}
        if t.ignored:
            notes["X-Sollol-Ignored-Options"] = ",".join(t.ignored)

        def build(target: Target) -> tuple[str, bytes]:
            if target.api == "ollama":
                return request.url.path, raw
            return t.path, json.dumps(t.body).encode()

        resp = await self.open_upstream(call, targets, build)
        target = call.target
        assert target is not None
        if resp.status_code >= 400:
            return await self.upstream_error(call, "ollama", resp)
        if target.api == "ollama":
            relay = self.passthrough(call, resp, t.stream)
            relay.headers.update(notes)
            return relay
        if t.kind in ("embed", "embeddings"):
            disconnected, data = await _watching(request.receive, resp.aread())
            await resp.aclose()
            call.first_byte()
            if disconnected:
                call.finish(499, " (client left)")
                return Response(status_code=499)
            try:
                answer = translate.embed_answer(t, json.loads(data), time.perf_counter() - call.t0)
            except ValueError:
                return self.error(
                    call, "ollama", ApiError(502, f"{target.node_name} sent an invalid embeddings answer")
                )
            call.finish(200)
            return JSONResponse(answer, headers=call.headers(notes))
        conv = translate.OllamaStream(t, started=call.t0)
        if t.stream:
            return self.ndjson_stream(call, resp, conv, notes)
        disconnected, failure = await _watching(request.receive, self._drain(call, resp, conv))
        await resp.aclose()
        if disconnected:
            call.finish(499, " (client left)")
            return Response(status_code=499)
        if failure is not None:
            return self.error(call, "ollama", failure)
        call.finish(200)
        return JSONResponse(conv.final(aggregate=True), headers=call.headers(notes))

    async def load_or_unload(
        self, request: Request, call: Call, body: dict[str, Any], targets: list[Target], model: str, stream: bool
    ) -> Response:
        """Ollama's load (`/api/generate` without a prompt) and unload (the same with keep_alive 0) of a
        sharded model: loaded and answered when ready; unloaded once its requests in flight finish."""
        assert self.shard is not None
        ka = parse_keep_alive(body.get("keep_alive"), self.shard.settings.keep_alive)
        if ka == 0:
            call.route, call.node = "shard", "coordinator"
            await self.shard.unload(call.model)
            reason = "unload"
        else:
            got = await self.shard_targets(request, call, targets, body.get("keep_alive"))
            if got is None:
                return self.left_while_waiting(call)
            call.route, call.node = got[0].route, got[0].node_name
            reason = "load"
        answer = {"model": model, "created_at": translate.now_rfc3339(), "response": "", "done": True}
        answer["done_reason"] = reason
        call.finish(200)
        if stream:
            return Response(json.dumps(answer) + "\n", media_type=NDJSON, headers=call.headers(STREAM_HEADERS))
        return JSONResponse(answer, headers=call.headers())

    async def _drain(self, call: Call, resp: httpx.Response, conv: translate.OllamaStream) -> ApiError | None:
        buf = bytearray()
        try:
            async for chunk in resp.aiter_raw():
                call.first_byte()
                for payload in translate.sse_events(buf, chunk):
                    for _ in conv.feed(payload):
                        pass
        except ApiError as exc:
            return exc
        except httpx.HTTPError as exc:
            return ApiError(502, f"{call.node} broke off the answer: {type(exc).__name__}")
        if not conv.finished:
            return ApiError(502, f"{call.node} ended the answer before its end")
        return None

    def ndjson_stream(
        self, call: Call, resp: httpx.Response, conv: translate.OllamaStream, notes: dict[str, str]
    ) -> Relay:
        state = {"error": ""}

        async def chunks() -> AsyncIterator[bytes]:
            buf = bytearray()
            try:
                async for chunk in resp.aiter_raw():
                    call.first_byte()
                    lines = [json.dumps(line) + "\n" for p in translate.sse_events(buf, chunk) for line in conv.feed(p)]
                    if lines:
                        yield "".join(lines).encode()
                if not conv.finished:
                    raise ApiError(502, f"{call.node} ended the answer before its end")
                yield (json.dumps(conv.final()) + "\n").encode()
            except ApiError as exc:
                state["error"] = exc.message
                yield (json.dumps({"error": exc.message}) + "\n").encode()
            except httpx.HTTPError as exc:
                state["error"] = f"{call.node} broke off the answer: {type(exc).__name__}"
                yield (json.dumps({"error": state["error"]}) + "\n").encode()

        async def close(disconnected: bool) -> None:
            await resp.aclose()
            call.error = state["error"]
            call.finish(499 if disconnected else 200, " (client left)" if disconnected else "")

        return Relay(200, call.headers({"Content-Type": NDJSON, **STREAM_HEADERS, **notes}), chunks(), close)

    async def proxy_openai(self, request: Request, call: Call) -> Response:
        """/v1/chat/completions, /v1/completions, /v1/embeddings: passed through to the chosen upstream
        (Ollama serves the same /v1 API), SSE relayed as it comes."""
        body = await self.read_json(request)
        model = translate.check_model(body)
        stream = translate.check_stream(body, False)
        targets = self.router.targets(model)
        call.model = normalize(model)
        raw = json.dumps(body).encode()
        progress = "chat.completions" if stream and call.endpoint == "chat.completions" else ""
        got = await self.shard_targets(request, call, targets, progress=progress)
        if got is None:
            return self.left_while_waiting(call)
        if isinstance(got, Waiting):
            return self.relay_while_loading(
                call, got, lambda targets: self.serve_openai(request, call, raw, stream, targets)
            )
        return await self.serve_openai(request, call, raw, stream, got)

    async def serve_openai(
        self, request: Request, call: Call, raw: bytes, stream: bool, targets: list[Target]
    ) -> Response:
        """An OpenAI request, once routed (and its sharded model served): passed through upstream."""
        resp = await self.open_upstream(call, targets, lambda target: (request.url.path, raw))
        if resp.status_code >= 400:
            return await self.upstream_error(call, "openai", resp)
        if stream:
            return self.passthrough(call, resp, stream)

        async def whole() -> bytes | ApiError:  # not streamed: an upstream that dies mid-answer is a 502
            try:
                return await resp.aread()
            except httpx.HTTPError as exc:
                return ApiError(502, f"{call.node} broke off the answer: {type(exc).__name__}")

        disconnected, data = await _watching(request.receive, whole())
        await resp.aclose()
        call.first_byte()
        if disconnected:
            call.finish(499, " (client left)")
            return Response(status_code=499)
        if isinstance(data, ApiError):
            return self.error(call, "openai", data)
        ctype = resp.headers.get("content-type", "application/json")
        call.finish(resp.status_code)
        return Response(data, status_code=resp.status_code, media_type=ctype, headers=call.headers())

    # ---------------------------------------------------------------- listings

    def served(self) -> dict[str, dict[str, Any]]:
        """Every model the gateway can serve (name -> Ollama tags entry + owner), de-duplicated."""
        out: dict[str, dict[str, Any]] = {}
        if self.router.uses_pool:
            for node in self.pool.nodes:
                for name, entry in node.models.items():
                    if self.router.pins.get(name) != "shard" and name not in out:
                        out[name] = {**entry, "name": name, "model": name, "owned_by": f"pool:{node.name}"}
        if self.router.uses_shard:
            for name, sm in self.catalog.models().items():
                if self.router.pins.get(name) != "pool" and name not in out:
                    out[name] = {**sm.tags_entry(), "owned_by": "coordinator"}
            state = self.catalog.running()
            if state is not None and normalize(state.model) not in out:
                name = normalize(state.model)
                out[name] = {"name": name, "model": name, "size": 0, "digest": state.digest, "owned_by": "coordinator"}
        return out

    async def tags(self, request: Request, call: Call) -> Response:
        models = [{k: v for k, v in e.items() if k != "owned_by"} for e in self.served().values()]
        call.finish(200)
        return JSONResponse({"models": models}, headers=call.headers())

    async def v1_models(self, request: Request, call: Call) -> Response:
        entries = list(self.served().values())
        call.finish(200)
        return JSONResponse(translate.openai_models(entries), headers=call.headers())

    async def ps(self, request: Request, call: Call) -> Response:
        models = []
        if self.router.uses_pool:
            for node in self.pool.nodes:
                if node.usable():
                    models += [{**entry, "node": node.name} for entry in node.loaded.values()]
        od = self.shard.describe() if self.shard is not None else None
        if od is not None and od["phase"] in ("loading", "stopping") and od["model"]:
            sm = self.catalog.models().get(od["model"])
            models.append(
                {
                    "name": od["model"],
                    "model": od["model"],
                    "size": sm.size if sm else 0,
                    "size_vram": 0,
                    "digest": sm.resolved.digest.removeprefix("sha256:") if sm else "",
                    "details": sm.details() if sm else {},
                    "expires_at": translate.now_rfc3339(),
                    "node": "coordinator",
                    "status": od["phase"],
                    "progress": od["progress"],
                }
            )
        elif self.router.uses_shard and (state := self.catalog.running()) is not None:
            name = normalize(state.model)
            expires = "9999-12-31T23:59:59Z"
            if od is not None and od["expires_in_s"] is not None:
                until = time.time() + od["expires_in_s"]
                expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until))
            sm = self.catalog.models().get(name)
            models.append(
                {
                    "name": name,
                    "model": name,
                    "size": sm.size if sm else 0,
                    "size_vram": 0,
                    "digest": state.digest.removeprefix("sha256:"),
                    "details": sm.details() if sm else {},
                    "expires_at": expires,
                    "context_length": state.n_ctx,
                    "node": f"coordinator@{state.listen}",
                    "status": "serving" if od is None else od["phase"],
                    "degraded": bool(state.skipped),  # started without some rpc-servers (sollol_skip_unhealthy)
                    "skipped_backends": [lo.describe() for lo in state.skipped],
                }
            )
        call.finish(200)
        return JSONResponse({"models": models}, headers=call.headers())

    async def show(self, request: Request, call: Call) -> Response:
        body = await self.read_json(request)
        model = body.get("model") or body.get("name")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model is required" if not model else "model must be a string")
        targets = self.router.targets(model)
        call.model = name = normalize(model)
        target = targets[0]
        call.route, call.node = target.route, target.node_name
        if target.api == "ollama":
            resp = await self.http().post(f"{target.url}/api/show", json=body, timeout=10.0)
            call.finish(resp.status_code)
            ctype = resp.headers.get("content-type", "application/json")
            return Response(resp.content, status_code=resp.status_code, media_type=ctype, headers=call.headers())
        sm = self.catalog.models().get(name)
        if sm is not None:
            state = self.catalog.running()
            answer = sm.show(state.n_ctx if state and target.route == "shard" else None)
        else:
            answer = await self._show_openai(target, name)
        call.finish(200)
        return JSONResponse(answer, headers=call.headers())

    async def _show_openai(self, target: Target, name: str) -> dict[str, Any]:
        """/api/show for a model only an OpenAI node has: what llama-server says about itself (/props)."""
        entry = target.node.models.get(name, {}) if target.node else {}
        props: dict[str, Any] = {}
        with contextlib.suppress(httpx.HTTPError, ValueError):
            r = await self.http().get(f"{target.url}/props", timeout=5.0)
            if r.status_code == 200:
                props = r.json()
        n_ctx = (props.get("default_generation_settings") or {}).get("n_ctx")
        return {
            "license": "",
            "modelfile": "",
            "parameters": f"num_ctx {n_ctx}" if n_ctx else "",
            "template": props.get("chat_template", ""),
            "details": entry.get("details", {"format": "gguf"}),
            "model_info": {"general.architecture": entry.get("details", {}).get("family", "")},
            "capabilities": ["completion"],
        }

    def status(self) -> dict[str, Any]:
        state = self.catalog.running()
        return {
            "mode": self.config.mode,
            "pins": self.router.pins,
            "pool": [n.describe() for n in self.pool.nodes],
            "coordinator": None if state is None else {"model": state.model, "endpoint": state.endpoint},
            "on_demand": None if self.shard is None else self.shard.describe(),
        }

    def refresh_gauges(self) -> None:
        m = self.metrics
        for n in self.pool.nodes:
            m.node_healthy.labels(n.name, n.api).set(1 if n.healthy else 0)
            m.node_breaker.labels(n.name).set(1 if n.breaker_open else 0)
            m.node_outstanding.labels(n.name).set(n.outstanding)
        m.coordinator_up.set(1 if self.router.uses_shard and self.catalog.running() else 0)
        if self.shard is not None:
            od = self.shard
            m.shard_loads.set(od.loads)
            m.shard_swaps.set(od.swaps)
            m.shard_unloads.set(od.unloads)
            m.shard_failures.set(od.deaths)
            m.shard_waiting.set(len(od.queue))
            m.shard_loading.set(1 if od.phase == "loading" else 0)


# --------------------------------------------------------------------------- the application


def create_app(gw: Gateway) -> Starlette:
    def endpoint(
        api: str, name: str, handler: Callable[[Request, Call], Awaitable[Response]], auth: bool = True
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            call = Call(gw, request, name)
            try:
                if auth:
                    gw.check_key(request)
                return await handler(request, call)
            except ApiError as exc:
                return gw.error(call, api, exc)
            except Exception as exc:  # a bug: the API's error shape and one line, never a dropped connection
                log.exception("internal error on %s %s", request.method, request.url.path)
                return gw.error(call, api, ApiError(500, f"internal error: {type(exc).__name__}: {exc}"))

        return run

    async def root(request: Request, call: Call) -> Response:
        call.finish(200)
        return PlainTextResponse("Ollama is running", headers=call.headers())

    async def health(request: Request, call: Call) -> Response:
        call.finish(200)
        return JSONResponse({"status": "ok"}, headers=call.headers())

    async def version(request: Request, call: Call) -> Response:
        call.finish(200)
        return JSONResponse({"version": OLLAMA_API_VERSION, "sollol_ops": __version__}, headers=call.headers())

    async def metrics(request: Request, call: Call) -> Response:
        gw.refresh_gauges()
        call.finish(200)
        return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4", headers=call.headers())

    async def status(request: Request, call: Call) -> Response:
        call.finish(200)
        return JSONResponse(gw.status(), headers=call.headers())

    o, oa = "ollama", "openai"
    routes = [
        Route("/", endpoint(o, "root", root, auth=False), methods=["GET", "HEAD"]),
        Route("/health", endpoint(o, "health", health, auth=False), methods=["GET"]),
        Route("/api/version", endpoint(o, "version", version), methods=["GET"]),
        Route("/api/tags", endpoint(o, "tags", gw.tags), methods=["GET"]),
        Route("/api/ps", endpoint(o, "ps", gw.ps), methods=["GET"]),
        Route("/api/show", endpoint(o, "show", gw.show), methods=["POST"]),
        Route("/api/chat", endpoint(o, "chat", gw.proxy_ollama), methods=["POST"]),
        Route("/api/generate", endpoint(o, "generate", gw.proxy_ollama), methods=["POST"]),
        Route("/api/embed", endpoint(o, "embed", gw.proxy_ollama), methods=["POST"]),
        Route("/api/embeddings", endpoint(o, "embeddings", gw.proxy_ollama), methods=["POST"]),
        Route("/v1/models", endpoint(oa, "models", gw.v1_models), methods=["GET"]),
        Route("/v1/chat/completions", endpoint(oa, "chat.completions", gw.proxy_openai), methods=["POST"]),
        Route("/v1/completions", endpoint(oa, "completions", gw.proxy_openai), methods=["POST"]),
        Route("/v1/embeddings", endpoint(oa, "embeddings", gw.proxy_openai), methods=["POST"]),
        Route("/metrics", endpoint(o, "metrics", metrics), methods=["GET"]),
        Route("/gateway/status", endpoint(o, "status", status), methods=["GET"]),
    ]

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

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.startup()
        try:
            yield
        finally:
            await gw.shutdown()

    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})
