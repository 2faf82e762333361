"""The OpenAI API's model routes (/v1/chat/completions, /v1/completions, /v1/embeddings): passed through to
the chosen upstream (Ollama serves the same /v1 API), SSE relayed as it comes."""

from __future__ import annotations

import json

import httpx
from starlette.requests import Request
from starlette.responses import Response

from sollol_ops.gateway import translate
from sollol_ops.gateway.bodies import read_json
from sollol_ops.gateway.call import Call
from sollol_ops.gateway.errors import ApiError
from sollol_ops.gateway.limits import default_limit, refuse_shard_embeddings
from sollol_ops.gateway.model_routes import ModelRoutes
from sollol_ops.gateway.priority import classify
from sollol_ops.gateway.routing import Target
from sollol_ops.gateway.upstream import watching


class OpenAIRoutes(ModelRoutes):
    """OpenAI's generation and embedding requests, routed, waited for when sharded, passed through upstream."""

    async def proxy(self, request: Request, call: Call) -> Response:
        """/v1/chat/completions, /v1/completions, /v1/embeddings: passed through to the chosen upstream
        (Ollama serves the same /v1 API), SSE relayed as it comes."""
        body = await read_json(request, self.max_body)
        model = translate.check_model(body)
        stream = translate.check_stream(body, False)
        if call.endpoint in ("chat.completions", "completions"):  # as on the Ollama routes
            call.priority = classify(body, request.headers)
            default_limit(body, "openai", self.router.config.default_num_predict)
        targets = self.targets(call, model)
        if call.endpoint == "embeddings":
            refuse_shard_embeddings(targets[0].route, self.router.config.embeddings)
        raw = json.dumps(body).encode()
        progress = "chat.completions" if stream and call.endpoint == "chat.completions" else ""
        return await self.when_ready(
            request, call, targets, lambda got: self.serve(request, call, raw, stream, got), progress=progress
        )

    async def serve(self, request: Request, call: Call, raw: bytes, stream: bool, targets: list[Target]) -> Response:
        """An OpenAI request, once routed (and its sharded model served): passed through upstream."""
        resp = await self.upstream.open(call, targets, lambda target: (request.url.path, raw))
        if resp.status_code >= 400:
            return await self.upstream.refusal(call, "openai", resp)
        if stream:
            return self.upstream.passthrough(call, resp, stream)

        async def whole() -> bytes | ApiError:  # not streamed: an upstream that dies mid-answer is a 502
            try:
                return await resp.aread()
            except httpx.HTTPError as exc:
                return ApiError(502, f"{call.node} broke off the answer: {type(exc).__name__}")

        disconnected, data = await watching(request.receive, whole())
        await resp.aclose()
        call.first_byte()
        if disconnected:
            return call.left()
        if isinstance(data, ApiError):
            return call.fail("openai", data)
        ctype = resp.headers.get("content-type", "application/json")
        call.keep_tail(data)
        call.finish(resp.status_code)
        return Response(data, status_code=resp.status_code, media_type=ctype, headers=call.headers())
