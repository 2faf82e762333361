"""What the gateway can serve and serves now: Ollama's /api/tags, /api/ps and /api/show, OpenAI's /v1/models."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sollol_ops.gateway import translate
from sollol_ops.gateway.bodies import read_json
from sollol_ops.gateway.call import Call
from sollol_ops.gateway.catalog import Catalog, draft_of
from sollol_ops.gateway.errors import ApiError
from sollol_ops.gateway.ondemand import OnDemand
from sollol_ops.gateway.ondemand_status import Phase
from sollol_ops.gateway.pool import Pool, normalize
from sollol_ops.gateway.routing import Router, Target
from sollol_ops.ui import to_jsonable


class Listings:
    """The models of the pool's nodes and of the coordinator's store, de-duplicated, and the running ones."""

    def __init__(
        self,
        max_body: int,
        router: Router,
        shard: OnDemand | None,
        http: Callable[[], httpx.AsyncClient],
    ) -> None:
        self.max_body = max_body
        self.router = router
        self.pool: Pool = router.pool
        self.catalog: Catalog = router.catalog
        self.shard = shard
        self.http = http

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
        if od is not None and od.phase in (Phase.LOADING, Phase.STOPPING) and od.model:
            sm = self.catalog.models().get(od.model)
            models.append(
                {
                    "name": od.model,
                    "model": od.model,
                    "size": sm.size if sm else 0,
                    "size_vram": 0,
                    "digest": sm.resolved.digest.removeprefix("sha256:") if sm else "",
                    "details": sm.details() if sm else {},
                    "expires_at": translate.now_rfc3339(),
                    "node": "coordinator",
                    "status": od.phase,
                    "progress": od.progress,
                }
            )
        elif self.router.uses_shard and (state := self.catalog.running()) is not None:
            name = normalize(state.model)
            expires = "9999-12-31T23:59:59Z"
            if od is not None and od.expires_in_s is not None:
                until = time.time() + od.expires_in_s
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
                    "status": "serving" if od is None else od.phase,
                    "degraded": bool(state.skipped),  # started without some rpc-servers (sollol_skip_unhealthy)
                    "skipped_backends": [lo.describe() for lo in state.skipped],
                    # speculative decoding (sollol_draft_models): its draft and acceptance; None without one
                    "draft": to_jsonable(await draft_of(state)),
                }
            )
        call.finish(200)
        return JSONResponse({"models": models}, headers=call.headers())

    async def show(self, request: Request, call: Call) -> Response:
        body = await read_json(request, self.max_body)
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
            answer = await self.show_openai(target, name)
        call.finish(200)
        return JSONResponse(answer, headers=call.headers())

    async def show_openai(self, target: Target, name: str) -> dict[str, Any]:
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
