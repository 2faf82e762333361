"""The Ollama API's model routes (/api/chat, /api/generate, /api/embed, /api/embeddings): relayed as they are
to an Ollama upstream, translated to and from OpenAI for the others (llama-server, the coordinator)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sollol_ops.gateway import streams, translate
from sollol_ops.gateway.bodies import read_json
from sollol_ops.gateway.call import Call
from sollol_ops.gateway.errors import ApiError
from sollol_ops.gateway.keepalive import parse_keep_alive
from sollol_ops.gateway.limits import default_limit, refuse_shard_embeddings
from sollol_ops.gateway.loading import load_answer
from sollol_ops.gateway.model_routes import ModelRoutes
from sollol_ops.gateway.priority import classify
from sollol_ops.gateway.routing import Target
from sollol_ops.gateway.upstream import NDJSON, STREAM_HEADERS, Relay, watching


class OllamaRoutes(ModelRoutes):
    """Ollama's generation and embedding requests, routed, waited for when sharded, answered upstream."""

    async def proxy(self, request: Request, call: Call) -> Response:
        """/api/chat, /api/generate, /api/embed, /api/embeddings."""
        body = await read_json(request, self.max_body)
        kind = call.endpoint
        if kind in ("chat", "generate"):  # the user's own, or a background task; a limit where none is set
            call.priority = classify(body, request.headers)
            default_limit(body, "ollama", self.router.config.default_num_predict)
        if kind == "chat":
            t = translate.chat_request(body)
        elif kind == "generate":
            t = translate.generate_request(body)
        else:
            t = translate.embed_request(body, legacy=kind == "embeddings")
        targets = self.targets(call, t.model)
        if kind in ("embed", "embeddings"):
            refuse_shard_embeddings(targets[0].route, self.router.config.embeddings)
        raw = json.dumps(body).encode()
        bare = kind == "generate" and not body.get("prompt") and not body.get("images")
        if bare and self.loading.shard is not None and targets[0].route == "shard" and not targets[0].url:
            return await self.loading.load_or_unload(request, call, body, targets, t.model, t.stream)
        progress = kind if t.stream and kind in ("chat", "generate") else ""
        return await self.when_ready(
            request,
            call,
            targets,
            lambda got: self.serve(request, call, body, t, raw, bare, got),
            body.get("keep_alive"),
            progress,
        )

    async def serve(
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
            unload = parse_keep_alive(body.get("keep_alive"), None) == 0
            return load_answer(call, t.model, "unload" if unload else "load", t.stream)
        notes = {}
        if t.ignored:
            notes["X-Sollol-Ignored-Options"] = ",".join(t.ignored)

        def build(target: Target) -> tuple[str, bytes]:
            if target.api == "ollama":
                return request.url.path, raw
            return t.path, json.dumps(t.body).encode()

        resp = await self.upstream.open(call, targets, build)
        target = call.target
        assert target is not None
        if resp.status_code >= 400:
            return await self.upstream.refusal(call, "ollama", resp)
        if target.api == "ollama":
            relay = self.upstream.passthrough(call, resp, t.stream)
            relay.headers.update(notes)
            return relay
        if t.kind in ("embed", "embeddings"):
            disconnected, data = await watching(request.receive, resp.aread())
            await resp.aclose()
            call.first_byte()
            if disconnected:
                return call.left()
            try:
                answer = translate.embed_answer(t, json.loads(data), time.perf_counter() - call.t0)
            except ValueError:
                return call.fail("ollama", ApiError(502, f"{target.node_name} sent an invalid embeddings answer"))
            call.finish(200)
            return JSONResponse(answer, headers=call.headers(notes))
        conv = streams.OllamaStream(t, started=call.t0)
        if t.stream:
            return self.ndjson_stream(call, resp, conv, notes)
        disconnected, failure = await watching(request.receive, self.drain(call, resp, conv))
        await resp.aclose()
        if disconnected:
            return call.left()
        if failure is not None:
            return call.fail("ollama", failure)
        answer = conv.final(aggregate=True)
        call.tokens = answer.get("eval_count")
        call.finish(200)
        return JSONResponse(answer, headers=call.headers(notes))

    async def drain(self, call: Call, resp: httpx.Response, conv: streams.OllamaStream) -> ApiError | None:
        """A whole OpenAI answer fed through `conv` (a request not streamed); the error that broke it off."""
        buf = bytearray()
        try:
            async for chunk in resp.aiter_raw():
                call.first_byte()
                for payload in streams.sse_events(buf, chunk):
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
        self, call: Call, resp: httpx.Response, conv: streams.OllamaStream, notes: dict[str, str]
    ) -> Relay:
        """An OpenAI stream relayed as Ollama's NDJSON, line by line as it comes."""
        state = {"error": ""}

        async def chunks() -> AsyncIterator[bytes]:
            buf = bytearray()
            try:
                async for chunk in resp.aiter_raw():
                    call.first_byte()
                    lines = [json.dumps(line) + "\n" for p in streams.sse_events(buf, chunk) for line in conv.feed(p)]
                    if lines:
                        yield "".join(lines).encode()
                if not conv.finished:
                    raise ApiError(502, f"{call.node} ended the answer before its end")
                final = conv.final()
                call.tokens = final.get("eval_count")
                yield (json.dumps(final) + "\n").encode()
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
