"""A request for a sharded model the gateway loads on demand (OnDemand): waiting for it (the client watched),
the loading progress streamed meanwhile (--loading-progress), and Ollama's load and unload requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sollol_ops.gateway import streams, translate
from sollol_ops.gateway.call import Call
from sollol_ops.gateway.errors import ApiError, body_for
from sollol_ops.gateway.keepalive import parse_keep_alive
from sollol_ops.gateway.ondemand import Lease, OnDemand, Ticket
from sollol_ops.gateway.routing import Router, Target
from sollol_ops.gateway.upstream import NDJSON, STREAM_HEADERS, Relay, watching

log = logging.getLogger("sollol_ops.gateway")

PROGRESS_EVERY = 2.0  # seconds between progress chunks when the load reports nothing new
PROGRESS_POLL = 0.25
_SO_FAR = re.compile(r"\d+s so far")
LEFT_WHILE_LOADING = " (client left while the model loaded)"


@dataclass
class Waiting:
    """A streamed request queued for its sharded model, to be answered with loading progress first."""

    ticket: Ticket
    kind: str  # chat | generate (Ollama) | chat.completions (OpenAI)


def load_answer(call: Call, model: str, reason: str, stream: bool) -> Response:
    """The answer to Ollama's load (`/api/generate` without a prompt) or unload (the same with keep_alive 0):
    done at once, with done_reason `load` or `unload`."""
    answer = {"model": model, "created_at": translate.now_rfc3339(), "response": "", "done": True}
    answer["done_reason"] = reason
    call.finish(200)
    if stream:
        return Response(json.dumps(answer) + "\n", media_type=NDJSON, headers=call.headers(STREAM_HEADERS))
    return JSONResponse(answer, headers=call.headers())


class Loading:
    """The shard route's waits: the store model a request asks for is served first (loaded or swapped in)."""

    def __init__(self, shard: OnDemand | None, router: Router) -> None:
        self.shard = shard
        self.router = router

    async def targets(
        self, request: Request, call: Call, targets: list[Target], keep_alive: Any = None, progress: str = ""
    ) -> list[Target] | Waiting | None:
        """A store model on the shard route: wait until the gateway serves it (loading or swapping to it);
        the lease is the call's until it finishes. None when the client left while waiting. With `progress`
        (the stream's kind) and --loading-progress, a request that must wait is answered at once by a stream
        of progress chunks (Waiting: relay)."""
        if self.shard is None or targets[0].route != "shard" or targets[0].url:
            return targets
        shard = self.shard
        ka = parse_keep_alive(keep_alive, shard.settings.keep_alive)
        call.route, call.node = "shard", "coordinator"
        ticket = shard.enqueue(call.model, ka, call.priority)  # ApiError 503 when the queue is full
        if progress and shard.settings.loading_progress and not ticket.fut.done():
            return Waiting(ticket, progress)

        async def wait() -> Lease | ApiError:
            try:
                return await shard.wait(ticket)
            except ApiError as exc:
                return exc

        disconnected, got = await watching(request.receive, wait())
        if isinstance(got, Lease):
            call.lease = got
        if disconnected:
            return None
        if isinstance(got, ApiError):
            raise got
        assert isinstance(got, Lease)
        return [self.router.coordinator_target(got.state)]

    def relay(self, call: Call, waiting: Waiting, serve: Callable[[list[Target]], Awaitable[Response]]) -> Relay:
        """The stream of a request that waits for its sharded model (--loading-progress): progress chunks in
        the API's reasoning/thinking field (streams.progress_chunk) at once and whenever the load moves on
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
            return streams.stream_error(sse, body_for(api, exc.status, exc.message))

        async def chunks() -> AsyncIterator[bytes]:
            leased = False
            try:
                sent, last = None, 0.0
                while True:
                    line = shard.progress_line(call.model)
                    key = _SO_FAR.sub("", line)
                    if key != sent or time.monotonic() - last >= PROGRESS_EVERY:
                        yield streams.progress_chunk(kind, call.model, line + "\n")
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
                    yield streams.stream_error(sse, bytes(answer.body))
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
            got = await self.targets(request, call, targets, body.get("keep_alive"))
            if got is None:
                return call.left(LEFT_WHILE_LOADING)
            call.route, call.node = got[0].route, got[0].node_name
            reason = "load"
        return load_answer(call, model, reason, stream)
