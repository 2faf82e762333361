"""Talking to the upstreams: the first target that takes a request (failover before the first byte), and its
answer relayed as it comes, without buffering, cancelled upstream when the client disconnects."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sollol_ops.gateway.call import Call
from sollol_ops.gateway.errors import ApiError, body_for, upstream_message
from sollol_ops.gateway.pool import Pool
from sollol_ops.gateway.routing import Target

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
NDJSON = "application/x-ndjson"


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


async def watching(receive: Receive, work: Awaitable[Any]) -> tuple[bool, Any]:
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


class Upstream:
    """Requests sent to the pool's nodes or the coordinator, on the gateway's one HTTP client."""

    def __init__(self, http: Callable[[], httpx.AsyncClient], pool: Pool) -> None:
        self.http = http
        self.pool = pool

    async def open(
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
                try:
                    resp = await self.http().send(req, stream=True)
                except httpx.RemoteProtocolError:  # a kept-alive connection the server had just closed: no byte
                    resp = await self.http().send(req, stream=True)  # of an answer came; once more, afresh
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

    async def refusal(self, call: Call, api: str, resp: httpx.Response) -> Response:
        """An upstream's 4xx/5xx answer, read and answered in the API's error shape."""
        raw = await resp.aread()
        await resp.aclose()
        return call.fail(api, ApiError(resp.status_code, upstream_message(raw, resp.status_code)))

    def passthrough(self, call: Call, resp: httpx.Response, stream: bool) -> Relay:
        """The upstream's answer as it is (same API on both sides), bytes relayed as they arrive."""

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.aiter_raw():
                    call.first_byte()
                    call.keep_tail(chunk)
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
